//! Hostile and broken modules: each is refused at load with a clear message,
//! or fails its evaluations cleanly while the registry keeps working.

use crate::guest::*;
use lockwarden_core::LockError;
use lockwarden_core::policy::{
    EvalFailure, EvalLimits, FailureMode, MAX_FUNCTION_BYTES, MAX_INPUT_BYTES, MAX_NESTING,
    PolicyRunner, PolicySpec, Registry,
};
use lockwarden_sdk::abi::{self, Configured, Decision};

/// Loads `guest` for keys `h:*` ahead of a good policy for all keys, checks
/// that evaluating `h:1` fails with `expected` twice in a row (the instance is
/// rebuilt in between) while other keys still get the good policy's answer.
fn fails_cleanly(guest: &Guest, expected: EvalFailure) {
    let mut runner = PolicyRunner::from_bytes("hostile", guest.wasm(), b"", LIMITS).expect("loads");
    assert_eq!(runner.evaluate(&acquire(b"h:1")), Err(expected.clone()));

    let mut registry = Registry::new();
    let mut spec = guest.spec("hostile");
    spec.keys = b"h:*".to_vec();
    registry
        .install(engine().compile(spec, MAX_MODULE, LIMITS).unwrap(), false)
        .unwrap();
    registry
        .install(Guest::clamp(42).compile("good"), false)
        .unwrap();
    for round in 1..=2 {
        let evaluation = registry.evaluate(&acquire(b"h:1"), LIMITS, FailureMode::Deny);
        assert_eq!(
            evaluation.verdict,
            Err(LockError::Policy {
                policy: "hostile".into(),
                cause: expected.to_string()
            })
        );
        let evaluation = registry.evaluate(&acquire(b"g:1"), LIMITS, FailureMode::Deny);
        assert_eq!(evaluation.verdict, Ok(Some(42)));
        let hostile = &registry.list()[0];
        assert_eq!((hostile.evaluations, hostile.failures), (round, round));
        assert_eq!(hostile.broken, None, "the instance was rebuilt");
    }
    // Fail-open: the failure becomes a note and the good policy decides.
    let evaluation = registry.evaluate(&acquire(b"h:1"), LIMITS, FailureMode::Allow);
    assert_eq!(evaluation.verdict, Ok(Some(42)));
    assert_eq!(evaluation.notes.len(), 1);
}

/// Compiling `spec` fails with a one-line `BADPOLICY` message containing
/// `expected`.
fn refused(spec: PolicySpec, max_module: usize, expected: &str) {
    let error = match engine().compile(spec, max_module, LIMITS) {
        Ok(_) => panic!("loaded, expected: {expected}"),
        Err(e) => e.to_string(),
    };
    assert!(error.starts_with("BADPOLICY "), "{error}");
    assert!(error.contains(expected), "{error}\nexpected: {expected}");
    assert!(!error.contains(['\n', '\r']), "{error}");
}

fn refused_guest(guest: &Guest, expected: &str) {
    refused(guest.spec("hostile"), MAX_MODULE, expected);
}

/// A guest built from `wat` after replacing `from` by `to` in the text of an
/// allowing guest.
fn edited(from: &str, to: &str) -> PolicySpec {
    let text = Guest::allow().wat();
    assert!(text.contains(from), "{from}");
    let mut spec = Guest::allow().spec("edited");
    spec.wasm = wat::parse_str(text.replace(from, to)).unwrap();
    spec
}

#[test]
fn an_endless_loop_exhausts_its_fuel() {
    let mut guest = Guest::allow();
    guest.evaluate = "(loop $l (br $l)) (i64.const 0)".into();
    fails_cleanly(&guest, EvalFailure::FuelExhausted { fuel: LIMITS.fuel });
}

#[test]
fn growing_memory_forever_hits_the_memory_limit() {
    let mut guest = Guest::allow();
    guest.evaluate = "(loop $l (drop (memory.grow (i32.const 1))) (br $l)) (i64.const 0)".into();
    let expected = EvalFailure::MemoryLimit {
        limit_bytes: LIMITS.memory_bytes,
    };
    assert_eq!(expected.to_string(), "memory limit of 1024 KiB exceeded");
    fails_cleanly(&guest, expected.clone());

    // Growing past the limit then trapping on the failed growth, as a Rust
    // allocator does, is reported the same way.
    guest.evaluate = "(if (i32.lt_s (memory.grow (i32.const 64)) (i32.const 0)) (then unreachable)) (i64.const 0)".into();
    fails_cleanly(&guest, expected);
}

#[test]
fn growing_memory_within_the_limit_is_fine() {
    let mut guest = Guest::allow();
    guest.evaluate = format!(
        "(drop (memory.grow (i32.const 2))) (i64.const {})",
        pack(0x200, 1)
    );
    let mut runner = PolicyRunner::from_bytes("grows", guest.wasm(), b"", LIMITS).unwrap();
    for _ in 0..5 {
        // Grows by 128 KiB per call until refused, which it ignores.
        assert_eq!(runner.evaluate(&acquire(b"k")), Ok(Decision::Allow));
    }
}

#[test]
fn unreachable_is_a_trap() {
    let mut guest = Guest::allow();
    guest.evaluate = "(unreachable)".into();
    let expected = EvalFailure::Trap("wasm `unreachable` instruction executed".into());
    assert_eq!(
        expected.to_string(),
        "trap: wasm `unreachable` instruction executed"
    );
    fails_cleanly(&guest, expected);
}

#[test]
fn out_of_bounds_memory_access_is_a_trap() {
    let mut guest = Guest::allow();
    guest.evaluate = "(drop (i32.load (i32.const 0x7ffffff0))) (i64.const 0)".into();
    fails_cleanly(
        &guest,
        EvalFailure::Trap("out of bounds memory access".into()),
    );
}

#[test]
fn deep_recursion_exhausts_the_stack() {
    let mut guest = Guest::allow();
    guest.extra =
        "(func $deep (param i64) (result i64) (call $deep (i64.add (local.get 0) (i64.const 1))))"
            .into();
    guest.evaluate = "(call $deep (i64.const 0))".into();
    fails_cleanly(&guest, EvalFailure::Trap("call stack exhausted".into()));
}

#[test]
fn a_decision_that_does_not_decode_is_malformed() {
    let cases: [&[u8]; 5] = [
        &[0x07],                   // no such variant
        &[0x00, 0x00],             // trailing byte
        &[0x01, 0x05, b'a'],       // truncated reason
        &[0x01, 0x01, 0xff],       // reason not UTF-8
        &[0x02, 0xff, 0xff, 0xff], // truncated varint
    ];
    for bytes in cases {
        let guest = Guest::allow().returning_bytes(bytes);
        let mut runner = PolicyRunner::from_bytes("bad", guest.wasm(), b"", LIMITS).unwrap();
        let failure = runner.evaluate(&acquire(b"h:1")).unwrap_err();
        assert!(
            matches!(failure, EvalFailure::MalformedDecision(_)),
            "{bytes:?}: {failure:?}"
        );
        assert!(
            failure.to_string().starts_with("malformed decision: "),
            "{failure}"
        );
        fails_cleanly(&guest, failure);
    }
    // The empty output is malformed too.
    fails_cleanly(
        &Guest::allow().returning_bytes(&[]),
        EvalFailure::MalformedDecision("Hit the end of buffer, expected more data".into()),
    );
}

#[test]
fn a_decision_outside_memory_is_malformed() {
    let mut guest = Guest::allow();
    guest.evaluate = format!("(i64.const {})", pack(0xffff_0000, 16));
    fails_cleanly(
        &guest,
        EvalFailure::MalformedDecision(
            "output at 0xffff0000 (16 bytes) is outside the 65536-byte memory".into(),
        ),
    );
    // In bounds at the start, but too long.
    guest.evaluate = format!("(i64.const {})", pack(0xff00, 0x1000));
    fails_cleanly(
        &guest,
        EvalFailure::MalformedDecision(
            "output at 0xff00 (4096 bytes) is outside the 65536-byte memory".into(),
        ),
    );
    guest.evaluate = "(i64.const -1)".into();
    fails_cleanly(
        &guest,
        EvalFailure::MalformedDecision(
            "output at 0xffffffff (4294967295 bytes) is outside the 65536-byte memory".into(),
        ),
    );
}

#[test]
fn an_input_buffer_outside_memory_is_refused() {
    // Fine for the empty settings, out of bounds for a request.
    let mut guest = Guest::allow();
    guest.buffer = format!("(select (i32.const -16) (i32.const {INPUT}) (local.get $len))");
    let request_len = abi::encode(&acquire(b"h:1")).unwrap().len();
    fails_cleanly(
        &guest,
        EvalFailure::BadBuffer(format!(
            "lockwarden_buffer({request_len}) gave 0xfffffff0, outside the 65536-byte memory"
        )),
    );
    // A buffer without room for a large request (the guest's input area is
    // 32 KiB).
    let mut runner = PolicyRunner::from_bytes("small", Guest::allow().wasm(), b"", LIMITS).unwrap();
    let key = vec![b'k'; 40 << 10];
    let failure = runner.evaluate(&acquire(&key)).unwrap_err();
    assert!(matches!(failure, EvalFailure::BadBuffer(_)), "{failure}");
    assert_eq!(runner.evaluate(&acquire(b"k")), Ok(Decision::Allow));
}

#[test]
fn oversized_requests_are_refused() {
    let mut runner = PolicyRunner::from_bytes("p", Guest::allow().wasm(), b"", LIMITS).unwrap();
    // Refused before encoding: the key, owner `worker-1` and user `default`.
    let key = vec![b'k'; MAX_INPUT_BYTES];
    assert_eq!(
        runner.evaluate(&acquire(&key)),
        Err(EvalFailure::Request(format!(
            "{} bytes exceed the policy input limit of {MAX_INPUT_BYTES} bytes",
            MAX_INPUT_BYTES + 15
        )))
    );
    assert_eq!(
        runner.evaluate(&acquire(&key)).unwrap_err().to_string(),
        "request refused: 1048591 bytes exceed the policy input limit of 1048576 bytes"
    );
    // Refused once encoded (lengths, numbers and the operation added).
    let key = vec![b'k'; MAX_INPUT_BYTES - 15];
    let encoded = abi::encode(&acquire(&key)).unwrap().len();
    assert!(encoded > MAX_INPUT_BYTES);
    assert_eq!(
        runner.evaluate(&acquire(&key)),
        Err(EvalFailure::Request(format!(
            "{encoded} bytes exceed the policy input limit of {MAX_INPUT_BYTES} bytes"
        )))
    );
    assert_eq!(
        runner.evaluate(&acquire(&[b'k'; 1000])),
        Ok(Decision::Allow)
    );

    let mut registry = Registry::new();
    registry
        .install(Guest::allow().compile("p"), false)
        .unwrap();
    let evaluation = registry.evaluate(&acquire(&key), LIMITS, FailureMode::Deny);
    assert!(matches!(evaluation.verdict, Err(LockError::Policy { .. })));
    assert_eq!(registry.list()[0].failures, 1);
    assert_eq!(
        registry
            .evaluate(&acquire(b"k"), LIMITS, FailureMode::Deny)
            .verdict,
        Ok(None)
    );
}

#[test]
fn a_module_above_the_size_limit_is_refused() {
    let mut guest = Guest::allow();
    guest.memory = r#"(memory (export "memory") 4)"#.into();
    guest.extra = format!(r#"(data (i32.const 0x10000) "{}")"#, "x".repeat(50_000));
    let spec = guest.spec("big");
    let size = spec.wasm.len();
    assert!(engine().compile(spec.clone(), size, LIMITS).is_ok());
    refused(
        spec,
        size - 1,
        &format!("module is {size} bytes; the maximum is {}", size - 1),
    );

    // Copying data segments at instantiation costs about one fuel per byte.
    guest.extra = format!(r#"(data (i32.const 0x10000) "{}")"#, "x".repeat(150_000));
    refused_guest(
        &guest,
        "instantiation failed: fuel exhausted (limit 100000)",
    );
}

#[test]
fn oversized_and_deeply_nested_function_bodies_are_refused_before_compiling() {
    // Compile memory grows with a body's size: a body above the limit is
    // refused before anything is compiled.
    let body = |adds: usize| {
        let adds = "(local.set $x (i32.add (local.get $x) (i32.const 1)))".repeat(adds);
        Guest::allow().before_evaluate(&format!("(local $x i32) {adds}"))
    };
    // 7 bytes per addition; `lockwarden_evaluate` is the fourth body.
    assert!(
        engine()
            .compile(body(18_000).spec("below"), MAX_MODULE, LIMITS)
            .is_ok()
    );
    let over = body(19_000);
    let error = match engine().compile(over.spec("over"), MAX_MODULE, LIMITS) {
        Ok(_) => panic!("a body above the limit loaded"),
        Err(e) => e.to_string(),
    };
    let size: usize = error
        .strip_prefix("BADPOLICY function body 3 is ")
        .and_then(|rest| rest.strip_suffix(&format!(" bytes; the maximum is {MAX_FUNCTION_BYTES}")))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{error}"));
    assert!(
        size > MAX_FUNCTION_BYTES && size < over.wasm().len(),
        "{error}"
    );

    let nested = |depth: usize| {
        let open = "(block ".repeat(depth / 2) + &"(loop ".repeat(depth - depth / 2);
        Guest::allow().before_evaluate(&format!("{open}{}", ")".repeat(depth)))
    };
    assert!(
        engine()
            .compile(nested(MAX_NESTING).spec("deep"), MAX_MODULE, LIMITS)
            .is_ok()
    );
    refused_guest(
        &nested(MAX_NESTING + 1),
        &format!("function body 3 nests blocks more than {MAX_NESTING} deep"),
    );
}

#[test]
fn imports_are_refused_and_listed() {
    let mut guest = Guest::allow();
    guest.imports = r#"(import "env" "now" (func (result i64)))
        (import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
        (import "env" "limit" (global i32))"#
        .into();
    refused_guest(
        &guest,
        "policies may not import anything; this module imports env::now (function), \
         wasi_snapshot_preview1::fd_write (function), env::limit (global)",
    );
    guest.imports = (0..20)
        .map(|i| format!(r#"(import "env" "f{i}" (func))"#))
        .collect();
    refused_guest(&guest, "env::f7 (function) and 12 more");
}

#[test]
fn garbage_is_not_a_module() {
    for garbage in [
        &b"hello, world"[..],
        b"",
        b"\0asm\x01\0\0\0\xff\xff",
        &[0u8; 100],
    ] {
        let mut spec = Guest::allow().spec("garbage");
        spec.wasm = garbage.to_vec();
        refused(spec, MAX_MODULE, "not a valid WebAssembly module: ");
    }
}

#[test]
fn another_abi_version_is_refused() {
    let mut guest = Guest::allow();
    guest.version = "(i32.const 2)".into();
    refused_guest(
        &guest,
        "policy speaks ABI version 2; this server supports 1",
    );
    guest.version = "(i32.const -1)".into();
    refused_guest(
        &guest,
        "policy speaks ABI version -1; this server supports 1",
    );
}

#[test]
fn rejected_settings_show_the_policy_message() {
    let answer = abi::encode(&Configured::Rejected("max_ms must be\r\npositive".into())).unwrap();
    let mut guest = Guest::allow();
    guest.configure = format!("(i64.const {})", pack(0x800, answer.len()));
    guest.extra = format!(
        r#"(data (i32.const 0x800) "{}")"#,
        answer
            .iter()
            .map(|b| format!("\\{b:02x}"))
            .collect::<String>()
    );
    refused_guest(
        &guest,
        "BADPOLICY policy rejected its settings: max_ms must be  positive",
    );
}

#[test]
fn missing_and_ill_typed_exports_are_refused() {
    refused(
        edited(
            r#"(export "lockwarden_evaluate")"#,
            r#"(export "evaluate")"#,
        ),
        MAX_MODULE,
        "missing export `lockwarden_evaluate` (a function (i32) -> i64)",
    );
    refused(
        edited(r#"(memory (export "memory") 1)"#, "(memory 1)"),
        MAX_MODULE,
        "missing export `memory` (a linear memory)",
    );
    refused(
        edited(
            r#"(func (export "lockwarden_buffer") (param $len i32) (result i32)"#,
            r#"(func (export "lockwarden_buffer") (param $len i64) (result i32)"#,
        ),
        MAX_MODULE,
        "export `lockwarden_buffer` has type (i64) -> (i32); expected (i32) -> i32",
    );
    refused(
        edited(
            r#"(func (export "lockwarden_abi_version") (result i32)"#,
            r#"(func (export "lockwarden_abi_version") (result i32 i32) (i32.const 1)"#,
        ),
        MAX_MODULE,
        "export `lockwarden_abi_version` has type () -> (i32, i32); expected () -> i32",
    );
    refused(
        edited(
            r#"(memory (export "memory") 1)"#,
            r#"(memory (export "mem") 1) (global (export "memory") i32 (i32.const 0))"#,
        ),
        MAX_MODULE,
        "export `memory` is a global; expected a linear memory",
    );
}

#[test]
fn starting_is_bounded_like_an_evaluation() {
    let mut guest = Guest::allow();
    guest.extra = "(func $start (loop $l (br $l))) (start $start)".into();
    refused_guest(
        &guest,
        "instantiation failed: fuel exhausted (limit 100000)",
    );

    let mut guest = Guest::allow();
    guest.memory = r#"(memory (export "memory") 100)"#.into();
    refused_guest(
        &guest,
        "instantiation failed: memory limit of 1024 KiB exceeded",
    );

    let mut guest = Guest::allow();
    guest.configure = "(loop $l (br $l)) (i64.const 0)".into();
    refused_guest(
        &guest,
        "lockwarden_configure failed: fuel exhausted (limit 100000)",
    );

    let mut guest = Guest::allow();
    guest.configure = "(unreachable)".into();
    refused_guest(
        &guest,
        "lockwarden_configure failed: trap: wasm `unreachable` instruction executed",
    );

    let mut guest = Guest::allow();
    guest.version = "(loop $l (br $l)) (i32.const 1)".into();
    refused_guest(&guest, "lockwarden_abi_version failed: fuel exhausted");

    let mut guest = Guest::allow();
    guest.configure = format!("(i64.const {})", pack(0xffff_fff0, 1));
    refused_guest(
        &guest,
        "malformed answer from lockwarden_configure: output at 0xfffffff0",
    );

    let mut guest = Guest::allow();
    guest.buffer = "(i32.const 0x10001)".into();
    refused_guest(
        &guest,
        "lockwarden_configure failed: bad input buffer: lockwarden_buffer(0) gave 0x10001, \
         outside the 65536-byte memory",
    );

    let mut guest = Guest::allow();
    guest.extra = "(table 100000 funcref)".into();
    refused_guest(&guest, "instantiation failed: runtime error: table");
}

#[test]
fn unsupported_wasm_features_are_refused() {
    let mut guest = Guest::allow();
    guest.memory = r#"(memory (export "memory") 1 1 shared)"#.into();
    refused_guest(&guest, "not a valid WebAssembly module");

    let mut guest = Guest::allow();
    guest.extra = "(func (drop (v128.const i64x2 0 0)))".into();
    refused_guest(&guest, "not a valid WebAssembly module");

    let mut guest = Guest::allow();
    guest.memory = r#"(memory (export "memory") i64 1)"#.into();
    refused_guest(&guest, "not a valid WebAssembly module");

    let mut guest = Guest::allow();
    guest.extra = "(memory $second 1)".into();
    refused_guest(&guest, "not a valid WebAssembly module");

    let mut guest = Guest::allow();
    guest.extra = "(func $f (result i64) (return_call $f))".into();
    refused_guest(&guest, "not a valid WebAssembly module");
}

#[test]
fn names_and_settings_are_checked() {
    for name in ["", "has space", "new\nline", &"x".repeat(65)] {
        refused(Guest::allow().spec(name), MAX_MODULE, "invalid policy name");
    }
    for name in ["a", "max-ttl", "team.orders:v2_1", &"x".repeat(64)] {
        assert!(
            engine()
                .compile(Guest::allow().spec(name), MAX_MODULE, LIMITS)
                .is_ok(),
            "{name}"
        );
    }
    let mut spec = Guest::allow().spec("p");
    spec.settings = vec![b' '; MAX_INPUT_BYTES + 1];
    refused(
        spec,
        MAX_MODULE,
        "settings are 1048577 bytes; the maximum is 1048576",
    );
}

#[test]
fn a_failed_instance_is_rebuilt_fresh() {
    let mut registry = Registry::new();
    registry
        .install(Guest::counter().compile("counter"), false)
        .unwrap();
    let clamp = |registry: &mut Registry, key: &[u8]| {
        registry
            .evaluate(&acquire(key), LIMITS, FailureMode::Deny)
            .verdict
    };
    assert_eq!(clamp(&mut registry, b"a"), Ok(Some(1)));
    assert_eq!(clamp(&mut registry, b"a"), Ok(Some(2)));
    assert!(clamp(&mut registry, b"t").is_err());
    // A new instance: its counter starts again.
    assert_eq!(clamp(&mut registry, b"a"), Ok(Some(1)));
    let info = &registry.list()[0];
    assert_eq!(
        (info.evaluations, info.failures, info.broken.as_deref()),
        (4, 1, None)
    );
}

#[test]
fn a_failed_rebuild_breaks_the_policy_until_a_rebuild_succeeds() {
    // Configuring costs some 5000 fuel; evaluating traps on keys `t...`.
    let guest = Guest::counter().before_configure(&spin(1000));
    let mut registry = Registry::new();
    registry.install(guest.compile("fragile"), false).unwrap();
    let low = with_fuel(1000);

    // The trap, then a rebuild under the low fuel limit, which fails.
    let verdict = registry
        .evaluate(&acquire(b"t"), low, FailureMode::Deny)
        .verdict;
    assert!(
        matches!(verdict, Err(LockError::Policy { .. })),
        "{verdict:?}"
    );
    let broken = "rebuild failed: lockwarden_configure failed: fuel exhausted (limit 1000)";
    assert_eq!(registry.list()[0].broken.as_deref(), Some(broken));

    // Now every evaluation fails at once (under limits too low for a
    // rebuild, so whenever a retry happens it fails again)...
    for _ in 0..2 {
        let verdict = registry
            .evaluate(&acquire(b"a"), low, FailureMode::Deny)
            .verdict;
        assert_eq!(
            verdict,
            Err(LockError::Policy {
                policy: "fragile".into(),
                cause: format!(
                    "instance unavailable (its rebuild is retried every second): {broken}"
                ),
            })
        );
    }
    // ... until a retry of the rebuild, under limits that allow it, succeeds;
    // replacing it repairs it too.
    let repaired = |registry: &mut Registry| {
        let verdict = registry.evaluate(&acquire(b"a"), LIMITS, FailureMode::Deny);
        (verdict.verdict, registry.list()[0].broken.clone())
    };
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(repaired(&mut registry), (Ok(Some(1)), None));
    registry.install(guest.compile("fragile"), true).unwrap();
    assert_eq!(repaired(&mut registry), (Ok(Some(1)), None));
}

#[test]
fn a_memory_cap_lowered_below_a_live_instance_applies() {
    // The instance grows its memory by 512 KiB at configuration, or traps.
    let guest = Guest::counter().before_configure(
        "(if (i32.lt_s (memory.grow (i32.const 8)) (i32.const 0)) (then unreachable))",
    );
    let mut registry = Registry::new();
    registry.install(guest.compile("big"), false).unwrap();
    assert_eq!(
        registry
            .evaluate(&acquire(b"a"), LIMITS, FailureMode::Deny)
            .verdict,
        Ok(Some(1))
    );
    // Below what the instance uses: rebuilt under the new cap, which its
    // configuration exceeds, so the policy fails closed instead of running
    // on with the memory it had.
    let small = EvalLimits {
        memory_bytes: 256 * 1024,
        ..LIMITS
    };
    let verdict = registry
        .evaluate(&acquire(b"a"), small, FailureMode::Deny)
        .verdict;
    assert!(
        matches!(&verdict, Err(LockError::Policy { cause, .. }) if cause.contains("memory")),
        "{verdict:?}"
    );
    assert!(registry.list()[0].broken.is_some());
}

#[test]
fn fuel_is_a_budget_per_call() {
    // About 3000 fuel per evaluation, with 5000 per call.
    let guest = Guest::busy(600);
    let limits = with_fuel(5000);
    let mut runner = PolicyRunner::from_bytes("p", guest.wasm(), b"", limits).unwrap();
    for _ in 0..10 {
        assert_eq!(runner.evaluate(&acquire(b"k")), Ok(Decision::Allow));
    }
    let limits = with_fuel(2000);
    let mut runner = PolicyRunner::from_bytes("p", guest.wasm(), b"", limits).unwrap();
    assert_eq!(
        runner.evaluate(&acquire(b"k")),
        Err(EvalFailure::FuelExhausted { fuel: 2000 })
    );
}

#[test]
fn the_input_buffer_is_asked_for_only_when_it_must_grow() {
    // Answers Clamp(number of lockwarden_buffer calls so far).
    let mut guest = Guest::allow();
    guest.extra = "(global $calls (mut i32) (i32.const 0))".into();
    guest.buffer = format!(
        "(global.set $calls (i32.add (global.get $calls) (i32.const 1))) (i32.const {INPUT})"
    );
    guest.evaluate = clamp_to("(global.get $calls)");
    let mut runner = PolicyRunner::from_bytes("p", guest.wasm(), b"{}", LIMITS).unwrap();
    // Once for the settings, once for the first (larger) request.
    assert_eq!(runner.evaluate(&acquire(b"k")), Ok(Decision::Clamp(2)));
    assert_eq!(runner.evaluate(&acquire(b"k")), Ok(Decision::Clamp(2)));
    assert_eq!(runner.evaluate(&acquire(b"")), Ok(Decision::Clamp(2)));
    assert_eq!(
        runner.evaluate(&acquire(b"longer key")),
        Ok(Decision::Clamp(3))
    );
    assert_eq!(runner.evaluate(&acquire(b"k")), Ok(Decision::Clamp(3)));
}

#[test]
fn the_guest_sees_the_request() {
    // Answers Clamp(length of the key).
    let mut guest = Guest::allow();
    guest.evaluate = clamp_to(&format!("(i32.load8_u (i32.const {}))", INPUT + 1));
    let mut runner = PolicyRunner::from_bytes("p", guest.wasm(), b"", LIMITS).unwrap();
    assert_eq!(
        runner.evaluate(&acquire(b"orders:17")),
        Ok(Decision::Clamp(9))
    );
    let mut guest = Guest::allow();
    guest.evaluate = if_key_starts_with(b'x', "(return (i64.const 0))") + &guest.evaluate;
    let mut runner = PolicyRunner::from_bytes("p", guest.wasm(), b"", LIMITS).unwrap();
    assert_eq!(runner.evaluate(&acquire(b"a")), Ok(Decision::Allow));
    // Output at address 0, length 0: malformed.
    assert!(runner.evaluate(&acquire(b"x")).is_err());
}

#[test]
fn a_policy_kept_from_the_dataset_fails_closed_until_it_can_start() {
    // Configuring costs some 5000 fuel: it cannot start under 1000.
    let guest = Guest::counter().before_configure(&spin(1000));
    let (policy, failed) = engine().compile_kept(guest.spec("kept"), with_fuel(1000));
    let why = "lockwarden_configure failed: fuel exhausted (limit 1000)";
    assert_eq!(
        failed.map(|e| e.message().to_string()).as_deref(),
        Some(why)
    );
    assert_eq!(policy.broken(), Some(why));
    let mut registry = Registry::new();
    registry.install(policy, false).unwrap();
    let verdict = registry
        .evaluate(&acquire(b"a"), LIMITS, FailureMode::Deny)
        .verdict;
    assert_eq!(
        verdict,
        Err(LockError::Policy {
            policy: "kept".into(),
            cause: format!("instance unavailable (its rebuild is retried every second): {why}"),
        })
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let evaluation = registry.evaluate(&acquire(b"a"), LIMITS, FailureMode::Deny);
    assert_eq!(
        evaluation.verdict,
        Ok(Some(1)),
        "started under the raised limit"
    );
    assert_eq!(registry.list()[0].broken, None);

    // Bytes that do not compile are kept too (their spec is saved and
    // replicated), broken for good: nothing to retry.
    let mut spec = Guest::allow().spec("garbage");
    spec.wasm = b"\0asm but not really".to_vec();
    let (policy, failed) = engine().compile_kept(spec.clone(), LIMITS);
    assert!(failed.is_some());
    assert_eq!(policy.spec(), &spec);
    let mut registry = Registry::new();
    registry.install(policy, false).unwrap();
    for _ in 0..2 {
        let verdict = registry
            .evaluate(&acquire(b"a"), LIMITS, FailureMode::Deny)
            .verdict;
        assert!(
            matches!(verdict, Err(LockError::Policy { .. })),
            "{verdict:?}"
        );
    }
    let allowed = registry.evaluate(&acquire(b"a"), LIMITS, FailureMode::Allow);
    assert_eq!((allowed.verdict, allowed.notes.len()), (Ok(None), 1));
}
