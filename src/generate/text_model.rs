//! A decoder with its tokenizer and chat template: what `wick generate`, `wick quickstart` and
//! library users need to go from text to text.
//!
//! ```no_run
//! # fn demo() -> wick::Result<()> {
//! use wick::generate::{GenerateOptions, Prompt, TextModel};
//! let path = wick::formats::fetch::ensure_default_chat_model()?;
//! let model = TextModel::open(&path, &Default::default())?;
//! let prompt = Prompt::Chat { system: None, user: "What is the capital of France?" };
//! let out = model.generate(&prompt, &GenerateOptions::default(), |t| print!("{}", t.text))?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use crate::formats::validate::check_tensors;
use crate::formats::{open_model, ChatMessage, ChatTemplate, LoadOptions, TextTokenizer};
use crate::generate::detokenizer::TokenDecoder;
use crate::generate::generator::{
    generate, GenerateOptions, GeneratedToken, Generation, TokenStream,
};
use crate::models::llama::{expected_tensors, Llama};
use crate::{Error, Result};

impl TokenDecoder for TextTokenizer {
    fn decode(&self, ids: &[u32]) -> Result<String> {
        self.decode_skip_special(ids)
    }
}

/// What to feed the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt<'a> {
    /// The text as is, no template; BOS in front only where the model's metadata asks for it
    /// (`add_bos_token`), as llama.cpp does.
    Raw(&'a str),
    /// One user message (after an optional system message) through the model's chat template, with
    /// the assistant header appended. The template writes any BOS it wants, so none is added
    /// (HF `apply_chat_template` behaviour).
    Chat {
        system: Option<&'a str>,
        user: &'a str,
    },
    /// A whole conversation (system, user and assistant turns in order) through the chat template,
    /// with the assistant header appended; no BOS added, as for `Chat`.
    Messages(&'a [ChatMessage]),
}

/// A loaded decoder, its tokenizer and chat template.
#[derive(Debug)]
pub struct TextModel {
    /// The GGUF file or HF directory it came from.
    pub path: PathBuf,
    pub model: Llama,
    pub tokenizer: TextTokenizer,
    pub chat_template: Option<ChatTemplate>,
}

impl TextModel {
    /// Opens a GGUF file or an HF directory, validates its tensors against the config, and loads it.
    pub fn open(path: &Path, options: &LoadOptions) -> Result<Self> {
        let files = open_model(path, options)?;
        check_tensors(files.weights.as_ref(), &expected_tensors(&files.config))?;
        let model = Llama::load(&files.config, files.weights.as_ref(), options)?;
        #[cfg(feature = "cuda")]
        crate::generate::cuda_decode::attach(
            &model,
            &files.config,
            files.weights.as_ref(),
            options,
        );
        Ok(Self {
            path: files.path,
            model,
            tokenizer: files.tokenizer,
            chat_template: files.chat_template,
        })
    }

    /// The token ids of a prompt.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        match prompt {
            Prompt::Raw(text) => self.tokenizer.encode(text, self.tokenizer.add_bos()),
            Prompt::Chat { system, user } => {
                let text = self.chat_text(*system, user)?;
                self.tokenizer.encode(&text, false)
            }
            Prompt::Messages(messages) => {
                let text = self.messages_text(messages)?;
                self.tokenizer.encode(&text, false)
            }
        }
    }

    /// The chat template rendered for one exchange, ending with the assistant header.
    pub fn chat_text(&self, system: Option<&str>, user: &str) -> Result<String> {
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(ChatMessage::new("system", system));
        }
        messages.push(ChatMessage::new("user", user));
        self.messages_text(&messages)
    }

    /// The chat template rendered for a conversation, ending with the assistant header.
    pub fn messages_text(&self, messages: &[ChatMessage]) -> Result<String> {
        let template = self.chat_template.as_ref().ok_or_else(|| {
            Error::InvalidRequest(format!(
                "{} has no chat template: use a raw prompt",
                self.path.display()
            ))
        })?;
        template.render(
            messages,
            true,
            self.tokenizer.bos_token().unwrap_or(""),
            self.tokenizer.eos_token().unwrap_or(""),
        )
    }

    /// Generates from a prompt, calling `on_token` as each token comes.
    pub fn generate(
        &self,
        prompt: &Prompt,
        options: &GenerateOptions,
        on_token: impl FnMut(&GeneratedToken),
    ) -> Result<Generation> {
        let ids = self.prompt_ids(prompt)?;
        generate(&self.model, Some(&self.tokenizer), &ids, options, on_token)
    }

    /// An iterator over the tokens generated from a prompt.
    pub fn stream(&self, prompt: &Prompt, options: &GenerateOptions) -> Result<TokenStream<'_>> {
        let ids = self.prompt_ids(prompt)?;
        TokenStream::new(&self.model, Some(&self.tokenizer), &ids, options)
    }
}
