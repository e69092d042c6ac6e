//! Hand-written policy modules in the WebAssembly text format that speak
//! the policy ABI, with parts that tests replace to make them misbehave.
//!
//! One source for two crates: `mod wat_guest` of the policy host's tests
//! (`module/core/tests/policy`) and, through `#[path]`, of the integration
//! tests' `tests/tests/policy_support`. It needs only `lockwarden_sdk::abi`
//! and the `wat` crate.
#![allow(dead_code)]

use lockwarden_sdk::abi::{self, Decision};

/// Where `lockwarden_buffer` puts the input: the upper half of the first page.
pub const INPUT: u32 = 0x8000;
/// Where the canned answer of `lockwarden_configure` lives.
const CONFIGURED: u32 = 0x100;
/// Where canned decisions live.
const CANNED: u32 = 0x200;
/// Where code-built outputs are written.
const SCRATCH: u32 = 0x400;

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

/// A policy module in WAT: every part is text that a test may replace.
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
        let ok = abi::encode(&abi::Configured::Ok).expect("encode");
        let (configure, data) = canned(CONFIGURED, &ok);
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
        self.returning_bytes(&abi::encode(decision).expect("encode"))
    }

    /// This guest, answering `bytes` (which need not decode) as its decision.
    pub fn returning_bytes(mut self, bytes: &[u8]) -> Guest {
        let (body, data) = canned(CANNED, bytes);
        self.evaluate = body;
        self.data.push_str(&data);
        self
    }

    /// This guest with `prelude` run at the start of every evaluation.
    pub fn before_evaluate(mut self, prelude: &str) -> Guest {
        self.evaluate = format!("{prelude}\n{}", self.evaluate);
        self
    }

    /// This guest with `prelude` run at the start of `lockwarden_configure`.
    pub fn before_configure(mut self, prelude: &str) -> Guest {
        self.configure = format!("{prelude}\n{}", self.configure);
        self
    }

    /// A policy answering `Clamp(n)`, `n` counting its evaluations since
    /// instantiation, that traps when the key starts with `t`: its answers
    /// show whether the instance was rebuilt.
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

    /// A policy answering `Clamp(waiters + 1)`, for fewer than 127 waiters
    /// (`waiters`, the request's last field, is then its last byte).
    pub fn waiters_plus_one() -> Guest {
        let mut guest = Guest::allow();
        guest.evaluate = clamp_to(&format!(
            "(i32.add (i32.const 1) (i32.load8_u (i32.add (local.get $len) (i32.const {}))))",
            INPUT - 1
        ));
        guest
    }

    /// A policy answering `Clamp(1 + (ttl_ms & 0x7f))` for a request whose
    /// key is 1 byte and owner 2 bytes (`ttl_ms`'s first varint byte is
    /// then the request's seventh).
    pub fn ttl_low_bits_plus_one() -> Guest {
        let mut guest = Guest::allow();
        guest.evaluate = clamp_to(&format!(
            "(i32.add (i32.const 1) (i32.and (i32.load8_u (i32.const {})) (i32.const 0x7f)))",
            INPUT + 6
        ));
        guest
    }

    /// A policy that loops `iterations` times (about 5 fuel each), then
    /// allows.
    pub fn busy(iterations: u32) -> Guest {
        Guest::allow().before_evaluate(&spin(iterations))
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
}

/// A function body returning canned output at `at`, and the data segment
/// holding it.
fn canned(at: u32, bytes: &[u8]) -> (String, String) {
    (
        format!("(i64.const {})", pack(at, bytes.len())),
        format!(r#"(data (i32.const {at}) "{}")"#, literal(bytes)),
    )
}

/// Instructions looping `iterations` times (about 5 fuel each). They declare
/// the local `$i`, so they go first in a function body (see
/// [`Guest::before_evaluate`], [`Guest::before_configure`]).
pub fn spin(iterations: u32) -> String {
    format!(
        "(local $i i32)
         (loop $l
           (local.set $i (i32.add (local.get $i) (i32.const 1)))
           (br_if $l (i32.lt_u (local.get $i) (i32.const {iterations}))))"
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
