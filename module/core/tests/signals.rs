//! The policy engine installs no signal handlers: Redis keeps its own crash
//! handler. A process of its own, so that the control case (Wasmtime's
//! default configuration, which does install handlers) cannot affect other
//! tests.

use lockwarden_core::policy::{EvalFailure, EvalLimits, PolicyRunner};
use lockwarden_sdk::abi::{Caller, Operation, Request};

/// The set of signals with a handler (`SigCgt` of `/proc/self/status`).
fn caught_signals() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .expect("SigCgt line");
    u64::from_str_radix(mask.trim(), 16).unwrap()
}

fn bit(signal: u32) -> u64 {
    1 << (signal - 1)
}

const SIGILL: u32 = 4;
const SIGFPE: u32 = 8;

/// A policy that, depending on the key's first byte, divides by zero (`0`),
/// reads out of bounds (`1`), calls a null table entry (`2`), recurses
/// forever (`3`) or hits `unreachable` (anything else): each a fault in
/// native code unless the compiled code checks for it first.
const FAULTS: &str = r#"(module
  (memory (export "memory") 1)
  (table 1 funcref)
  (type $f (func (result i64)))
  (data (i32.const 16) "\00")
  (func (export "lockwarden_abi_version") (result i32) (i32.const 1))
  (func (export "lockwarden_buffer") (param i32) (result i32) (i32.const 1024))
  (func (export "lockwarden_configure") (param i32) (result i64) (i64.const 0x1000000001))
  (func $deep (result i64) (call $deep))
  (func (export "lockwarden_evaluate") (param i32) (result i64)
    (block $unreachable
      (block $stack
        (block $null
          (block $memory
            (block $divide
              (br_table $divide $memory $null $stack $unreachable
                (i32.sub (i32.load8_u (i32.const 1026)) (i32.const 48))))
            (return (i64.extend_i32_u (i32.div_u (i32.const 1) (i32.load8_u (i32.const 2000))))))
          (return (i64.extend_i32_u (i32.load (i32.const 0xfffffff0)))))
        (return (call_indirect (type $f) (i32.const 0))))
      (return (call $deep)))
    (unreachable))
)"#;

fn request(key: &[u8]) -> Request<'_> {
    Request {
        op: Operation::Acquire,
        key,
        owner: b"me",
        ttl_ms: 1000,
        now_ms: 0,
        holder: None,
        caller: Caller {
            client_id: 1,
            user: b"default",
        },
        waiters: 0,
    }
}

fn run_faults() {
    let wasm = wat::parse_str(FAULTS).unwrap();
    let mut policy = PolicyRunner::from_bytes("faults", wasm, b"", EvalLimits::DEFAULT).unwrap();
    let cases: [(&[u8], &str); 5] = [
        (b"0", "integer divide by zero"),
        (b"1", "out of bounds memory access"),
        (b"2", "uninitialized element"),
        (b"3", "call stack exhausted"),
        (b"x", "wasm `unreachable` instruction executed"),
    ];
    for _ in 0..3 {
        for (key, trap) in cases {
            assert_eq!(
                policy.evaluate(&request(key)),
                Err(EvalFailure::Trap(trap.into()))
            );
        }
    }
}

#[test]
fn the_engine_installs_no_signal_handlers() {
    let before = caught_signals();
    // On this thread and on a new one (Wasmtime initialises per thread).
    run_faults();
    std::thread::spawn(run_faults).join().unwrap();
    assert_eq!(caught_signals(), before, "signal handlers changed");

    // Control: the probe does see handlers being installed. Wasmtime's
    // default (signal-based traps) installs SIGSEGV, SIGBUS, SIGILL and SIGFPE
    // handlers together; the Rust runtime already handles SIGSEGV and SIGBUS,
    // so SIGILL and SIGFPE are the telling ones.
    assert_eq!(before & (bit(SIGILL) | bit(SIGFPE)), 0);
    let _default =
        wasmtime::Engine::new(wasmtime::Config::new().signals_based_traps(true)).unwrap();
    let after = caught_signals();
    assert_eq!(
        after & (bit(SIGILL) | bit(SIGFPE)),
        bit(SIGILL) | bit(SIGFPE)
    );
}
