//! The WebAssembly policy host.
//!
//! A policy is a core Wasm module speaking the ABI of
//! [`lockwarden_sdk::abi`]: no imports, a linear memory, four exported
//! functions and an optional fifth (`lockwarden_request_fields`, the optional
//! request fields it reads). The host runs inside `redis-server` on its main thread, so
//! nothing a policy does may crash or hang the server:
//!
//! * the engine never installs signal handlers (traps are detected by explicit
//!   checks in the generated code, see [`PolicyEngine`]);
//! * every call into a policy (instantiation, configuration, evaluation) runs
//!   under a fuel budget, a linear-memory cap and a fixed stack limit
//!   ([`EvalLimits`], [`MAX_WASM_STACK_BYTES`]);
//! * everything read back from guest memory is bounds-checked and decoded
//!   defensively; a misbehaving policy is an [`EvalFailure`], never a panic.
//!
//! The life of a policy:
//!
//! 1. [`PolicyEngine::compile`] (may run on a background thread) checks and
//!    compiles the module, instantiates it once, checks its ABI version, asks
//!    which optional request fields it reads and configures it with its
//!    settings, giving a [`CompiledPolicy`] or a [`LoadError`].
//! 2. [`Registry::install`] (main thread) makes it live, in load order.
//! 3. [`Registry::evaluate`] asks every policy whose key glob matches, reusing
//!    the same instance call after call. After a failure the instance is
//!    rebuilt from the compiled module and the stored settings; if that
//!    fails, the policy is broken and the rebuild is retried at most once a
//!    second.
//!
//! [`PolicyRunner`] and the `lockwarden-policy` command-line tool run a policy
//! through the same code outside Redis, for policy authors.

mod engine;
mod error;
mod registry;
mod runner;
mod specs;

pub use engine::{
    COMPILE_HEADROOM_BYTES, CompiledPolicy, MAX_FUNCTION_BYTES, MAX_INPUT_BYTES, MAX_NESTING,
    MAX_TABLE_ELEMENTS, MAX_WASM_STACK_BYTES, PolicyEngine, check_compile_headroom,
    check_module_size,
};
pub use error::{EvalFailure, LoadError};
pub use registry::{Evaluation, Note, PolicyInfo, Registry};
pub use runner::{DEFAULT_MAX_MODULE_BYTES, PolicyRunner};
pub use specs::{decode_specs, encode_specs};

use std::fmt;

/// What a policy's denials do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Denials and clamps take effect.
    #[default]
    Enforce,
    /// The policy only observes: a would-be denial or clamp is counted and
    /// reported as a [`Note`], and the command proceeds unchanged. A failure
    /// of an audit policy is reported the same way, whatever the
    /// [`FailureMode`].
    Audit,
}

impl Mode {
    /// The lower-case name used in replies and logs (`enforce`, `audit`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a policy failure (trap, fuel or memory exhausted, malformed decision,
/// broken instance) means for the command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum FailureMode {
    /// Fail closed: the command fails with a `POLICY` error.
    #[default]
    Deny,
    /// Fail open: the failure is reported as a [`Note`] and the remaining
    /// policies decide.
    Allow,
}

impl FailureMode {
    /// The lower-case name used in configuration and logs (`deny`, `allow`).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Deny => "deny",
            FailureMode::Allow => "allow",
        }
    }
}

impl fmt::Display for FailureMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resources one call into a policy may use. They bound every call:
/// instantiation, configuration and each evaluation.
///
/// Instantiation copies the module's data segments into its memory at one
/// unit of fuel per byte, and a start function runs under the same budget. A failing policy is rebuilt (instantiated and
/// configured again) within the same command, each step with a fresh
/// budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvalLimits {
    /// Wasm fuel for one call (roughly one unit per executed instruction).
    pub fuel: u64,
    /// Largest size of the policy's linear memory, in bytes.
    pub memory_bytes: u64,
}

impl EvalLimits {
    /// The server's defaults (`lockwarden.policy-fuel`,
    /// `lockwarden.policy-memory-kb`): one million fuel (about a millisecond
    /// of guest code at worst) and 4 MiB of linear memory. A Rust policy's
    /// memory starts with its shadow stack (1 MiB by default on wasm32; this
    /// repository builds its policies with 128 KiB) and its static data.
    pub const DEFAULT: EvalLimits = EvalLimits {
        fuel: 1_000_000,
        memory_bytes: 4 << 20,
    };
}

impl Default for EvalLimits {
    fn default() -> Self {
        EvalLimits::DEFAULT
    }
}

/// Everything needed to (re)load a policy: what `LOCK.POLICY LOAD` was given.
/// This is what is persisted and replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicySpec {
    /// The policy's name: 1 to [`PolicySpec::MAX_NAME_LEN`] characters from
    /// `A-Z a-z 0-9 _ - . :`.
    pub name: String,
    /// Glob (see [`lockwarden_sdk::glob_match`]) of the lock keys the policy
    /// sees; `b"*"` for all keys.
    pub keys: Vec<u8>,
    /// Enforce or audit.
    pub mode: Mode,
    /// Settings passed to `lockwarden_configure` (JSON for SDK policies; empty
    /// means `{}`).
    pub settings: Vec<u8>,
    /// The module's bytes.
    pub wasm: Vec<u8>,
}

impl PolicySpec {
    /// Longest policy name, in bytes.
    pub const MAX_NAME_LEN: usize = 64;

    /// Checks the name rules of [`PolicySpec::name`].
    pub fn check_name(name: &str) -> Result<(), LoadError> {
        let valid_char =
            |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':');
        if name.is_empty() || name.len() > Self::MAX_NAME_LEN || !name.bytes().all(valid_char) {
            return Err(LoadError::new(format!(
                "invalid policy name '{name}': use 1 to {} characters from A-Z a-z 0-9 _ - . :",
                Self::MAX_NAME_LEN
            )));
        }
        Ok(())
    }
}
