//! Every error a lock command can return, with its machine-readable code.
//!
//! Redis error replies start with a code word (`WRONGTYPE`, `READONLY`, ...);
//! lockwarden's do too, so clients can branch on the first word:
//!
//! | code       | meaning |
//! |------------|---------|
//! | `ERR`      | malformed command: arity, numbers, options (nothing changed) |
//! | `NOTHELD`  | release/extend of a lock nobody holds (expired or never taken) |
//! | `NOTOWNER` | release/extend by someone who is not the holder, or with a stale `FENCE` token |
//! | `TTLMAX`   | TTL above `lockwarden.max-ttl-ms` while `lockwarden.clamp-ttl` is `no` |
//! | `TTLMIN`   | TTL below `lockwarden.min-ttl-ms` (after any policy clamp) |
//! | `DENIED`   | a policy denied the command |
//! | `POLICY`   | a policy failed (trap, fuel, memory, bad decision) under `policy-failure deny` |
//! | `WRONGTYPE`| the key holds a value that is not a lock |
//! | `BADPOLICY`| `LOCK.POLICY LOAD` refused a module or its settings |
//! | `READONLY` | a lock or policy write sent to a replica (also with `replica-read-only no`): the primary decides |
//! | `TOKENS`   | no fencing token is left: the high-water mark is at the maximum (only a forged lease restored with `RESTORE` can do that) |
//! | `OOM`      | `LOCK.POLICY LOAD` with too little room under `maxmemory` for the compile |

use std::fmt;

/// A lock command's failure. Nothing changes when a command fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockError {
    /// Malformed command (`ERR`). The message is complete, without the code.
    Syntax(String),
    /// Nobody holds the lock.
    NotHeld,
    /// Someone else holds the lock.
    NotOwner,
    /// The caller holds the lock but presented another fencing token.
    StaleFence {
        /// The token in the command.
        given: u64,
        /// The current token.
        current: u64,
    },
    /// The TTL is above the maximum and clamping is off.
    TtlMax {
        /// The TTL asked for (after any policy clamp).
        requested: u64,
        /// `lockwarden.max-ttl-ms`.
        max: u64,
    },
    /// The TTL is below the minimum.
    TtlMin {
        /// The TTL asked for (after any policy clamp).
        requested: u64,
        /// `lockwarden.min-ttl-ms`.
        min: u64,
    },
    /// A policy denied the command.
    Denied {
        /// The policy's name.
        policy: String,
        /// The policy's reason.
        reason: String,
    },
    /// The key holds a value that is not a lock.
    WrongType,
    /// `LOCK.POLICY LOAD` refused a module or its settings.
    BadPolicy(String),
    /// A lock or policy write sent to a replica: only the primary decides
    /// (a replica with `replica-read-only no` would otherwise grant locks
    /// its primary knows nothing of).
    ReadOnly,
    /// The token clock's high-water mark is at [`crate::clock::MAX_TOKEN`]:
    /// no larger token exists.
    TokensExhausted,
    /// `LOCK.POLICY LOAD` with less room under `maxmemory` than a compile
    /// may take (see [`crate::policy::COMPILE_HEADROOM_BYTES`]).
    CompileMemory {
        /// The room a compile needs, bytes.
        needed: u64,
        /// The room left, bytes.
        left: u64,
    },
    /// A policy could not be evaluated.
    Policy {
        /// The policy's name.
        policy: String,
        /// What went wrong (trap, fuel exhausted, memory limit, bad decision).
        cause: String,
    },
}

impl LockError {
    /// The code word the error reply starts with.
    pub fn code(&self) -> &'static str {
        match self {
            LockError::Syntax(_) => "ERR",
            LockError::NotHeld => "NOTHELD",
            LockError::NotOwner | LockError::StaleFence { .. } => "NOTOWNER",
            LockError::TtlMax { .. } => "TTLMAX",
            LockError::TtlMin { .. } => "TTLMIN",
            LockError::Denied { .. } => "DENIED",
            LockError::Policy { .. } => "POLICY",
            LockError::WrongType => "WRONGTYPE",
            LockError::BadPolicy(_) => "BADPOLICY",
            LockError::ReadOnly => "READONLY",
            LockError::TokensExhausted => "TOKENS",
            LockError::CompileMemory { .. } => "OOM",
        }
    }

    /// A syntax error with the given message.
    pub fn syntax(message: impl Into<String>) -> Self {
        LockError::Syntax(message.into())
    }
}

impl fmt::Display for LockError {
    /// The full error reply text: code word, then the explanation.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.code())?;
        match self {
            LockError::Syntax(m) => f.write_str(m),
            LockError::NotHeld => {
                f.write_str("the lock is not held (it expired or was never acquired)")
            }
            LockError::NotOwner => f.write_str("the lock is held by another owner"),
            LockError::StaleFence { given, current } => write!(
                f,
                "fencing token {given} is not the current token {current}"
            ),
            LockError::TtlMax { requested, max } => write!(
                f,
                "ttl {requested} ms is above lockwarden.max-ttl-ms {max} (set lockwarden.clamp-ttl yes to clamp instead)"
            ),
            LockError::TtlMin { requested, min } => {
                write!(f, "ttl {requested} ms is below lockwarden.min-ttl-ms {min}")
            }
            LockError::Denied { policy, reason } => {
                write!(f, "policy {}: {}", Clean(policy), Clean(reason))
            }
            LockError::Policy { policy, cause } => {
                write!(f, "policy {} failed: {}", Clean(policy), Clean(cause))
            }
            LockError::WrongType => {
                f.write_str("Operation against a key holding the wrong kind of value")
            }
            LockError::BadPolicy(m) => write!(f, "{}", Clean(m)),
            LockError::ReadOnly => {
                f.write_str("this node is a replica: locks and policies change on the primary only")
            }
            LockError::TokensExhausted => write!(
                f,
                "no fencing token is left: the high-water mark is {} (was a forged lease restored?)",
                crate::clock::MAX_TOKEN
            ),
            LockError::CompileMemory { needed, left } => write!(
                f,
                "compiling a policy takes up to {} MiB for a moment (64 MiB for each compile running, this one included), counted in used_memory, and only {} MiB are left under maxmemory: raise maxmemory for the load",
                needed >> 20,
                left >> 20
            ),
        }
    }
}

impl std::error::Error for LockError {}

/// Longest policy-supplied text put into an error reply, in characters.
pub const MAX_REASON_CHARS: usize = 256;

/// Displays policy-supplied text safely inside a one-line error reply:
/// control characters become spaces, and long text is cut.
struct Clean<'a>(&'a str);

impl fmt::Display for Clean<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write;
        for (i, c) in self.0.chars().enumerate() {
            if i == MAX_REASON_CHARS {
                return f.write_str("...");
            }
            f.write_char(if c.is_control() { ' ' } else { c })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reply_starts_with_its_code_word() {
        let errors = [
            LockError::syntax("wrong number of arguments for 'lock.acquire' command"),
            LockError::NotHeld,
            LockError::NotOwner,
            LockError::StaleFence {
                given: 1,
                current: 2,
            },
            LockError::TtlMax {
                requested: 2,
                max: 1,
            },
            LockError::TtlMin {
                requested: 1,
                min: 2,
            },
            LockError::Denied {
                policy: "p".into(),
                reason: "r".into(),
            },
            LockError::Policy {
                policy: "p".into(),
                cause: "c".into(),
            },
            LockError::WrongType,
            LockError::BadPolicy("imports present".into()),
            LockError::TokensExhausted,
            LockError::CompileMemory {
                needed: 64 << 20,
                left: 8 << 20,
            },
        ];
        for e in errors {
            let text = e.to_string();
            assert!(text.starts_with(&format!("{} ", e.code())), "{text}");
            assert!(!text.contains('\n') && !text.contains('\r'), "{text}");
        }
    }

    #[test]
    fn policy_text_is_made_one_line_and_bounded() {
        let e = LockError::Denied {
            policy: "evil\r\n".into(),
            reason: "x\r\n-ERR injected".repeat(100),
        };
        let text = e.to_string();
        assert!(!text.contains('\n') && !text.contains('\r'));
        assert!(text.len() < MAX_REASON_CHARS + 64, "{}", text.len());
    }
}
