//! Why a policy could not be loaded or evaluated.

use std::fmt;

/// Longest [`LoadError`] message, in characters (longer ones are cut).
const MAX_LOAD_MESSAGE_CHARS: usize = 1024;

/// A policy could not be loaded: its module, its exports, its ABI version or
/// its settings were refused, or it failed while starting.
///
/// Displays as one line starting with the code word `BADPOLICY `.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadError {
    message: String,
}

impl LoadError {
    /// An error with the given explanation, made one line and bounded.
    pub(crate) fn new(message: impl AsRef<str>) -> Self {
        LoadError {
            message: one_line(message.as_ref(), MAX_LOAD_MESSAGE_CHARS),
        }
    }

    /// The explanation, without the code word.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BADPOLICY {}", self.message)
    }
}

impl std::error::Error for LoadError {}

/// Why one evaluation of a policy produced no decision.
///
/// Displays as the cause used in `POLICY` errors and notes, for example
/// `fuel exhausted (limit 1000000)` or `trap: wasm `unreachable` instruction
/// executed`.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EvalFailure {
    /// The call ran out of fuel (an endless or too long computation).
    FuelExhausted {
        /// The fuel the call was given.
        fuel: u64,
    },
    /// The policy tried to grow its linear memory beyond the limit, then
    /// failed.
    MemoryLimit {
        /// The limit, in bytes.
        limit_bytes: u64,
    },
    /// The policy trapped (`unreachable`, a panic, out-of-bounds access,
    /// stack exhaustion, ...). The text describes the trap.
    Trap(String),
    /// The runtime refused something other than by a trap (for example a
    /// table larger than [`MAX_TABLE_ELEMENTS`](super::MAX_TABLE_ELEMENTS) at
    /// instantiation, or host memory exhausted).
    Runtime(String),
    /// `lockwarden_buffer` returned a buffer outside the policy's memory.
    BadBuffer(String),
    /// The output of `lockwarden_evaluate` lies outside the policy's memory or
    /// is not a postcard-encoded [`lockwarden_sdk::Decision`].
    MalformedDecision(String),
    /// The request cannot be given to policies (it is too large).
    Request(String),
    /// The policy's instance failed and could not be rebuilt; the policy fails
    /// until it is replaced or unloaded. The text says why the rebuild failed.
    Unavailable(String),
}

impl fmt::Display for EvalFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalFailure::FuelExhausted { fuel } => write!(f, "fuel exhausted (limit {fuel})"),
            EvalFailure::MemoryLimit { limit_bytes } => {
                write!(f, "memory limit of {} KiB exceeded", limit_bytes / 1024)
            }
            EvalFailure::Trap(what) => write!(f, "trap: {what}"),
            EvalFailure::Runtime(what) => write!(f, "runtime error: {what}"),
            EvalFailure::BadBuffer(what) => write!(f, "bad input buffer: {what}"),
            EvalFailure::MalformedDecision(what) => write!(f, "malformed decision: {what}"),
            EvalFailure::Request(what) => write!(f, "request refused: {what}"),
            EvalFailure::Unavailable(why) => {
                write!(
                    f,
                    "instance unavailable (its rebuild is retried every second): {why}"
                )
            }
        }
    }
}

impl std::error::Error for EvalFailure {}

/// `text` as one line of at most `max_chars` characters: control characters
/// (newlines included) become spaces and the cut is marked with `...`.
pub(crate) fn one_line(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars));
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            out.push_str("...");
            break;
        }
        out.push(if c.is_control() { ' ' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_bounded_line() {
        let e = LoadError::new(format!("policy rejected: {}", "a\r\nb".repeat(1000)));
        let text = e.to_string();
        assert!(text.starts_with("BADPOLICY policy rejected: a  b"));
        assert!(!text.contains(['\r', '\n']));
        assert!(text.chars().count() <= "BADPOLICY ".len() + MAX_LOAD_MESSAGE_CHARS + 3);
        assert_eq!(one_line("ok", 2), "ok");
        assert_eq!(one_line("abc", 2), "ab...");
    }
}
