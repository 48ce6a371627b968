//! Stop strings over streamed text: text that might be the start of a stop string is held back until
//! the next pieces show whether it is, so a stop string is never streamed, even in part.

/// What to emit after a piece of text arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopCheck {
    /// Text safe to emit now.
    pub emit: String,
    /// The stop string found, if any: generation ends and the text from it on is dropped.
    pub stopped: Option<String>,
}

/// Watches streamed text for any of a set of stop strings.
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not emitted: a suffix that is a prefix of some stop string.
    pending: String,
}

impl StopMatcher {
    /// A matcher for these stop strings (empty ones are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
        }
    }

    /// Adds a piece of text: returns what can be emitted and whether a stop string was completed.
    pub fn push(&mut self, piece: &str) -> StopCheck {
        if self.stops.is_empty() {
            return StopCheck {
                emit: piece.to_string(),
                stopped: None,
            };
        }
        self.pending.push_str(piece);
        // The earliest stop string in the pending text wins.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at);
        if let Some((at, stop)) = found {
            let emit = self.pending[..at].to_string();
            let stop = stop.clone();
            self.pending.clear();
            return StopCheck {
                emit,
                stopped: Some(stop),
            };
        }
        let hold = self.held_suffix_len();
        let split = self.pending.len() - hold;
        let emit = self.pending[..split].to_string();
        self.pending.drain(..split);
        StopCheck {
            emit,
            stopped: None,
        }
    }

    /// Emits the held text at the end of generation (it did not turn into a stop string).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length in bytes of the longest suffix of the pending text that is a proper prefix of a stop string.
    fn held_suffix_len(&self) -> usize {
        let text = &self.pending;
        let mut best = 0;
        for stop in &self.stops {
            let longest = stop.len().saturating_sub(1).min(text.len());
            for len in (best + 1..=longest).rev() {
                let start = text.len() - len;
                if text.is_char_boundary(start) && stop.starts_with(&text[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for piece in pieces {
            let check = m.push(piece);
            out.push_str(&check.emit);
            if check.stopped.is_some() {
                return (out, check.stopped);
            }
        }
        out.push_str(&m.flush());
        (out, None)
    }

    #[test]
    fn stop_string_across_pieces_is_never_emitted() {
        let (out, stop) = run(&["\nUser:"], &["Hi", " there", "\nUs", "er", ": more"]);
        assert_eq!(out, "Hi there");
        assert_eq!(stop.as_deref(), Some("\nUser:"));
    }

    #[test]
    fn false_starts_are_released() {
        let stops = ["END"];
        let mut m = StopMatcher::new(&stops.map(String::from));
        assert_eq!(m.push("an E").emit, "an ");
        assert_eq!(m.push("N").emit, "");
        assert_eq!(m.push("x").emit, "ENx");
        assert_eq!(run(&["END"], &["the E", "N"]), ("the EN".to_string(), None));
    }

    #[test]
    fn earliest_stop_wins_and_multibyte_is_kept_whole() {
        let (out, stop) = run(&["b", "日本"], &["é日", "本 b"]);
        assert_eq!(out, "é");
        assert_eq!(stop.as_deref(), Some("日本"));
        let (out, stop) = run(&["é!"], &["café", " ok"]);
        assert_eq!((out.as_str(), stop), ("café ok", None));
    }
}
