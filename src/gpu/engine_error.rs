//! Errors of wick's CUDA engines (decode, batch decode, training, their profiles): a failed driver
//! call (allocation, copy, synchronize) or kernel launch becomes [`crate::Error::Candle`] whose
//! context names the engine and what it was doing. One definition for every engine; each engine
//! names itself once (`const ERR: EngineErrors = EngineErrors("CUDA decode engine");`).

use crate::Error;

/// The name an engine's errors carry.
#[derive(Debug, Clone, Copy)]
pub struct EngineErrors(pub &'static str);

impl EngineErrors {
    /// A driver call of the engine failed while doing `what`.
    pub fn driver(self, what: &str, e: impl std::fmt::Debug) -> Error {
        Error::Candle {
            context: format!("{}: {what}", self.0),
            source: candle_core::Error::Msg(format!("{e:?}")),
        }
    }

    /// Maps a failed launch of `what` (for `map_err`).
    pub fn launch(self, what: &'static str) -> impl Fn(candle_core::Error) -> Error {
        move |source| Error::Candle {
            context: format!("{}: launching {what}", self.0),
            source,
        }
    }
}
