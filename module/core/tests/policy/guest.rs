//! Hand-written policy modules (WAT) that speak the ABI, with parts that
//! tests replace to make them misbehave.

use lockwarden_core::policy::{CompiledPolicy, EvalLimits, Mode, PolicyEngine, PolicySpec};
use lockwarden_sdk::abi::{self, Caller, Decision, Holder, Operation, Request};
use std::sync::OnceLock;

/// Where `lockwarden_buffer` puts the input: the upper half of the first page.
pub const INPUT: u32 = 0x8000;
/// Where the canned answer of `lockwarden_configure` lives.
const CONFIGURED: u32 = 0x100;
/// Where canned decisions live.
const CANNED: u32 = 0x200;
/// Where code-built outputs are written.
const SCRATCH: u32 = 0x400;

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

/// The module size limit used by tests.
pub const MAX_MODULE: usize = 1 << 20;

/// The `i64` an ABI function returns for output at `ptr` of `len` bytes.
pub fn pack(ptr: u32, len: usize) -> i64 {
    abi::Output {
        ptr,
        len: len as u32,
    }
    .pack()
}

/// A WAT string literal holding `bytes`.
fn literal(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A policy module: every part is WAT text that a test may replace.
#[derive(Clone)]
pub struct Guest {
    /// Module fields that must come first (imports).
    pub imports: String,
    /// The `memory` export's declaration.
    pub memory: String,
    /// Body of `lockwarden_abi_version: () -> i32`.
    pub version: String,
    /// Body of `lockwarden_buffer: (param $len i32) -> i32`.
    pub buffer: String,
    /// Body of `lockwarden_configure: (param $len i32) -> i64`.
    pub configure: String,
    /// Body of `lockwarden_evaluate: (param $len i32) -> i64`.
    pub evaluate: String,
    /// More module fields (functions, globals, data, start).
    pub extra: String,
    /// The data segments of canned answers.
    data: String,
}

impl Guest {
    /// A well-behaved policy that accepts any settings and answers `decision`.
    pub fn answering(decision: &Decision) -> Guest {
        let (configure, data) = canned(CONFIGURED, &abi::encode(&abi::Configured::Ok).unwrap());
        Guest {
            imports: String::new(),
            memory: r#"(memory (export "memory") 1)"#.into(),
            version: format!("(i32.const {})", abi::ABI_VERSION),
            buffer: format!("(i32.const {INPUT})"),
            configure,
            evaluate: String::new(),
            extra: String::new(),
            data,
        }
        .returning(decision)
    }

    pub fn allow() -> Guest {
        Guest::answering(&Decision::Allow)
    }

    pub fn deny(reason: &str) -> Guest {
        Guest::answering(&Decision::Deny(reason.into()))
    }

    pub fn clamp(ttl_ms: u64) -> Guest {
        Guest::answering(&Decision::Clamp(ttl_ms))
    }

    /// This guest, answering `decision` from a data segment.
    pub fn returning(self, decision: &Decision) -> Guest {
        self.returning_bytes(&abi::encode(decision).unwrap())
    }

    /// This guest, answering `bytes` (which need not decode) as its decision.
    pub fn returning_bytes(mut self, bytes: &[u8]) -> Guest {
        let (body, data) = canned(CANNED, bytes);
        self.evaluate = body;
        self.data.push_str(&data);
        self
    }

    /// A policy that answers `Clamp(n)` where `n` counts its evaluations
    /// since instantiation, and traps when the key starts with `t`: its
    /// answers show whether the instance was rebuilt.
    pub fn counter() -> Guest {
        let mut guest = Guest::allow();
        guest.extra = "(global $n (mut i32) (i32.const 0))".into();
        guest.evaluate = format!(
            "(global.set $n (i32.add (global.get $n) (i32.const 1)))
             {trap_on_t}
             {clamp}",
            trap_on_t = if_key_starts_with(b't', "(unreachable)"),
            clamp = clamp_to("(global.get $n)"),
        );
        guest
    }

    pub fn wat(&self) -> String {
        format!(
            r#"(module
  {imports}
  {memory}
  (func (export "lockwarden_abi_version") (result i32) {version})
  (func (export "lockwarden_buffer") (param $len i32) (result i32) {buffer})
  (func (export "lockwarden_configure") (param $len i32) (result i64) {configure})
  (func (export "lockwarden_evaluate") (param $len i32) (result i64) {evaluate})
  {extra}
  {data}
)"#,
            imports = self.imports,
            memory = self.memory,
            version = self.version,
            buffer = self.buffer,
            configure = self.configure,
            evaluate = self.evaluate,
            extra = self.extra,
            data = self.data,
        )
    }

    pub fn wasm(&self) -> Vec<u8> {
        wat::parse_str(self.wat()).unwrap_or_else(|e| panic!("{e}\n{}", self.wat()))
    }

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

/// A function body returning canned output at `at`, and the data segment
/// holding it.
fn canned(at: u32, bytes: &[u8]) -> (String, String) {
    (
        format!("(i64.const {})", pack(at, bytes.len())),
        format!(r#"(data (i32.const {at}) "{}")"#, literal(bytes)),
    )
}

/// Runs `then` if the first key byte is `byte` (keys shorter than 128 bytes:
/// the request starts with the operation and the key's one-byte length).
pub fn if_key_starts_with(byte: u8, then: &str) -> String {
    format!(
        "(if (i32.eq (i32.load8_u (i32.const {})) (i32.const {byte})) (then {then}))",
        INPUT + 2
    )
}

/// Instructions answering `Clamp(value)` for an `i32` expression below 128.
pub fn clamp_to(value: &str) -> String {
    format!(
        "(i32.store8 (i32.const {SCRATCH}) (i32.const 2))
         (i32.store8 (i32.const {}) {value})
         (i64.const {})",
        SCRATCH + 1,
        pack(SCRATCH, 2)
    )
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
