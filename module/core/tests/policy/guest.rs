//! The policy host's side of the hand-written policy modules: the shared
//! engine and limits, compiling a [`Guest`] (from `wat_guest.rs`, which the
//! integration tests share), and requests to evaluate.

use lockwarden_core::policy::{CompiledPolicy, EvalLimits, Mode, PolicyEngine, PolicySpec};
use lockwarden_sdk::abi::{Caller, Holder, Operation, Request};
use std::sync::OnceLock;

pub use crate::wat_guest::*;

/// The engine shared by all tests.
pub fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::new().expect("engine"))
}

/// Limits for tests: generous fuel, a small memory.
pub const LIMITS: EvalLimits = EvalLimits {
    fuel: 100_000,
    memory_bytes: 1 << 20,
};

/// [`LIMITS`] with `fuel` instead.
pub fn with_fuel(fuel: u64) -> EvalLimits {
    EvalLimits { fuel, ..LIMITS }
}

/// The module size limit used by tests.
pub const MAX_MODULE: usize = 1 << 20;

impl Guest {
    /// A spec of this guest, for all keys, enforcing, without settings.
    pub fn spec(&self, name: &str) -> PolicySpec {
        PolicySpec {
            name: name.into(),
            keys: b"*".to_vec(),
            mode: Mode::Enforce,
            settings: Vec::new(),
            wasm: self.wasm(),
        }
    }

    /// Compiles this guest with [`Guest::spec`].
    pub fn compile(&self, name: &str) -> CompiledPolicy {
        engine()
            .compile(self.spec(name), MAX_MODULE, LIMITS)
            .expect("compile")
    }
}

/// An acquire of `key` by `worker-1` for 30 s, lock free.
pub fn acquire(key: &[u8]) -> Request<'_> {
    Request {
        op: Operation::Acquire,
        key,
        owner: b"worker-1",
        ttl_ms: 30_000,
        now_ms: 1_800_000_000_000,
        holder: None,
        caller: Caller {
            client_id: 7,
            user: b"default",
        },
        waiters: 0,
    }
}

/// A release of `key` by its holder `worker-1`.
pub fn release(key: &[u8]) -> Request<'_> {
    Request {
        op: Operation::Release,
        ttl_ms: 0,
        holder: Some(Holder {
            owner: b"worker-1",
            token: 9,
            held_ms: 100,
            extensions: 0,
        }),
        ..acquire(key)
    }
}
