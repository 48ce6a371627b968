//! Incremental detokenization: turning a growing list of token ids into text pieces, one per token,
//! without ever splitting a UTF-8 character.
//!
//! A byte-level BPE token can carry half of a multi-byte character (an emoji is often 2-4 tokens), and
//! SentencePiece decoders drop or add spaces depending on what precedes a token, so decoding each token
//! alone gives wrong text. As in HF text-generation-inference, the detokenizer decodes a short window
//! `tokens[prefix..]` and emits what it adds to the decoding of `tokens[prefix..read]`, holding
//! everything back while the window's text ends in U+FFFD (the replacement a decoder writes for
//! incomplete bytes). `flush` emits whatever is left at the end, replacement characters included.

use crate::Result;

/// Anything that turns token ids into text (a tokenizer).
pub trait TokenDecoder {
    /// Decodes ids into text, special tokens (BOS, EOS, chat markers) skipped.
    fn decode(&self, ids: &[u32]) -> Result<String>;
}

/// Context tokens kept before the new ones, so a decoder sees what precedes a token (leading spaces).
const CONTEXT_TOKENS: usize = 4;

/// The state of one stream of tokens.
#[derive(Debug, Clone, Default)]
pub struct Detokenizer {
    tokens: Vec<u32>,
    /// Start of the decoding window.
    prefix: usize,
    /// Tokens before `read` have had their text emitted.
    read: usize,
}

impl Detokenizer {
    /// A detokenizer for tokens that follow `context` (e.g. the prompt's last tokens): the context is
    /// decoded for spacing but never emitted.
    pub fn new(context: &[u32]) -> Self {
        let context = &context[context.len().saturating_sub(CONTEXT_TOKENS)..];
        Self {
            tokens: context.to_vec(),
            prefix: 0,
            read: context.len(),
        }
    }

    /// Adds one token and returns the text it completes: possibly empty (bytes held back), possibly
    /// more than the token's own text (held bytes completed).
    pub fn push(&mut self, decoder: &dyn TokenDecoder, id: u32) -> Result<String> {
        self.tokens.push(id);
        let before = decoder.decode(&self.tokens[self.prefix..self.read])?;
        let now = decoder.decode(&self.tokens[self.prefix..])?;
        if now.len() > before.len()
            && now.is_char_boundary(before.len())
            && !now.ends_with('\u{FFFD}')
        {
            let piece = now[before.len()..].to_string();
            self.prefix = self.read;
            self.read = self.tokens.len();
            // Tokens before the window are never decoded again.
            self.tokens.drain(..self.prefix);
            self.read -= self.prefix;
            self.prefix = 0;
            Ok(piece)
        } else {
            Ok(String::new())
        }
    }

    /// Emits whatever is held back (incomplete bytes come out as U+FFFD) and empties the window.
    pub fn flush(&mut self, decoder: &dyn TokenDecoder) -> Result<String> {
        if self.read == self.tokens.len() {
            return Ok(String::new());
        }
        let before = decoder.decode(&self.tokens[self.prefix..self.read])?;
        let now = decoder.decode(&self.tokens[self.prefix..])?;
        self.prefix = self.tokens.len();
        self.read = self.tokens.len();
        Ok(match now.get(before.len()..) {
            Some(piece) if now.starts_with(&before) => piece.to_string(),
            _ => now,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level decoder: token id = one byte, decoded like byte-level BPE decoders do
    /// (`String::from_utf8_lossy`), so a multi-byte character spans several tokens.
    struct Bytes;

    impl TokenDecoder for Bytes {
        fn decode(&self, ids: &[u32]) -> Result<String> {
            let bytes: Vec<u8> = ids.iter().map(|&i| i as u8).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
    }

    fn stream(text: &str, context: &[u32]) -> Vec<String> {
        let mut d = Detokenizer::new(context);
        let mut pieces: Vec<String> = text
            .bytes()
            .map(|b| d.push(&Bytes, b as u32).unwrap())
            .collect();
        pieces.push(d.flush(&Bytes).unwrap());
        pieces
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let text = "héllo 日本語 🎉 ok";
        let pieces = stream(text, &[]);
        assert_eq!(pieces.concat(), text);
        for piece in &pieces {
            assert!(!piece.contains('\u{FFFD}'), "split character in {pieces:?}");
        }
        // The 4 bytes of 🎉 produce three empty pieces, then the whole character.
        let emoji_start = text.find('🎉').unwrap();
        assert_eq!(&pieces[emoji_start..emoji_start + 4], ["", "", "", "🎉"]);
    }

    #[test]
    fn context_is_not_emitted() {
        let context: Vec<u32> = "prompt: ".bytes().map(u32::from).collect();
        assert_eq!(stream("réponse", &context).concat(), "réponse");
    }

    #[test]
    fn incomplete_bytes_at_the_end_are_flushed_as_replacement() {
        let mut d = Detokenizer::new(&[]);
        assert_eq!(d.push(&Bytes, b'a' as u32).unwrap(), "a");
        assert_eq!(d.push(&Bytes, 0xE6).unwrap(), "");
        assert_eq!(d.flush(&Bytes).unwrap(), "\u{FFFD}");
        assert_eq!(d.flush(&Bytes).unwrap(), "");
    }
}
