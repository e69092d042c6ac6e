//! How a command is evaluated against the installed policies.

use crate::guest::*;
use lockwarden_core::LockError;
use lockwarden_core::policy::{
    CompiledPolicy, FailureMode, Mode, Note, PolicyEngine, PolicySpec, Registry,
};
use lockwarden_sdk::abi::Decision;
use sha2::{Digest, Sha256};

fn compile(guest: Guest, name: &str, keys: &[u8], mode: Mode) -> CompiledPolicy {
    let spec = PolicySpec {
        keys: keys.to_vec(),
        mode,
        ..guest.spec(name)
    };
    engine().compile(spec, MAX_MODULE, LIMITS).unwrap()
}

fn registry(policies: Vec<CompiledPolicy>) -> Registry {
    let mut registry = Registry::new();
    for p in policies {
        registry.install(p, false).unwrap();
    }
    registry
}

fn enforce(guest: Guest, name: &str) -> CompiledPolicy {
    compile(guest, name, b"*", Mode::Enforce)
}

fn audit(guest: Guest, name: &str) -> CompiledPolicy {
    compile(guest, name, b"*", Mode::Audit)
}

fn trap() -> Guest {
    let mut guest = Guest::allow();
    guest.evaluate = "(unreachable)".into();
    guest
}

fn verdict(registry: &mut Registry, key: &[u8]) -> Result<Option<u64>, LockError> {
    registry
        .evaluate(&acquire(key), LIMITS, FailureMode::Deny)
        .verdict
}

/// (evaluations, denials, failures) of each policy, in load order.
fn counters(registry: &Registry) -> Vec<(u64, u64, u64)> {
    registry
        .list()
        .iter()
        .map(|i| (i.evaluations, i.denials, i.failures))
        .collect()
}

fn names(registry: &Registry) -> Vec<String> {
    registry.specs().map(|s| s.name.clone()).collect()
}

#[test]
fn an_empty_registry_allows_everything() {
    let mut registry = Registry::new();
    assert!(registry.is_empty());
    let evaluation = registry.evaluate(&acquire(b"k"), LIMITS, FailureMode::Deny);
    assert_eq!(evaluation.verdict, Ok(None));
    assert_eq!(evaluation.notes.capacity(), 0);
    assert!(registry.list().is_empty());
    assert_eq!(registry.specs().count(), 0);
}

#[test]
fn the_first_enforced_denial_wins() {
    let mut registry = registry(vec![
        enforce(Guest::clamp(500), "a"),
        enforce(Guest::deny("b says no"), "b"),
        enforce(Guest::deny("c says no"), "c"),
    ]);
    assert!(!registry.is_empty());
    assert_eq!(
        verdict(&mut registry, b"k"),
        Err(LockError::Denied {
            policy: "b".into(),
            reason: "b says no".into()
        })
    );
    // `c` was not asked.
    assert_eq!(counters(&registry), [(1, 0, 0), (1, 1, 0), (0, 0, 0)]);
}

#[test]
fn clamps_take_the_minimum_and_do_not_apply_to_releases() {
    let mut registry = registry(vec![
        enforce(Guest::clamp(500), "a"),
        enforce(Guest::clamp(300), "b"),
        enforce(Guest::allow(), "c"),
        enforce(Guest::clamp(400), "d"),
    ]);
    assert_eq!(verdict(&mut registry, b"k"), Ok(Some(300)));
    let evaluation = registry.evaluate(&release(b"k"), LIMITS, FailureMode::Deny);
    assert_eq!(evaluation.verdict, Ok(None));
    assert!(evaluation.notes.is_empty());
    assert_eq!(counters(&registry), [(2, 0, 0); 4]);
}

#[test]
fn audit_mode_only_observes() {
    let mut registry = registry(vec![
        audit(Guest::deny("would deny"), "audit-deny"),
        audit(Guest::clamp(10), "audit-clamp"),
        audit(trap(), "audit-trap"),
        enforce(Guest::clamp(700), "enforced"),
    ]);
    // Even under fail-closed, an audit policy's failure does not fail the
    // command.
    let evaluation = registry.evaluate(&acquire(b"k"), LIMITS, FailureMode::Deny);
    assert_eq!(evaluation.verdict, Ok(Some(700)));
    assert_eq!(
        evaluation.notes,
        [
            Note::AuditDeny {
                policy: "audit-deny".into(),
                reason: "would deny".into()
            },
            Note::AuditClamp {
                policy: "audit-clamp".into(),
                ttl_ms: 10
            },
            Note::Failure {
                policy: "audit-trap".into(),
                cause: "trap: wasm `unreachable` instruction executed".into()
            },
        ]
    );
    assert_eq!(
        counters(&registry),
        [(1, 1, 0), (1, 0, 0), (1, 0, 1), (1, 0, 0)]
    );
    let lines: Vec<String> = evaluation.notes.iter().map(Note::to_string).collect();
    assert_eq!(
        lines,
        [
            "policy audit-deny (audit) would deny: would deny",
            "policy audit-clamp (audit) would clamp the ttl to 10 ms",
            "policy audit-trap failed (ignored): trap: wasm `unreachable` instruction executed",
        ]
    );
}

#[test]
fn failures_fail_closed_or_open() {
    let mut registry = registry(vec![
        enforce(trap(), "broken"),
        enforce(Guest::clamp(900), "after"),
    ]);
    let closed = registry.evaluate(&acquire(b"k"), LIMITS, FailureMode::Deny);
    assert_eq!(
        closed.verdict,
        Err(LockError::Policy {
            policy: "broken".into(),
            cause: "trap: wasm `unreachable` instruction executed".into()
        })
    );
    assert_eq!(
        closed.verdict.unwrap_err().to_string(),
        "POLICY policy broken failed: trap: wasm `unreachable` instruction executed"
    );
    let open = registry.evaluate(&acquire(b"k"), LIMITS, FailureMode::Allow);
    assert_eq!(open.verdict, Ok(Some(900)));
    assert_eq!(
        open.notes,
        [Note::Failure {
            policy: "broken".into(),
            cause: "trap: wasm `unreachable` instruction executed".into()
        }]
    );
    assert_eq!(counters(&registry), [(2, 0, 2), (1, 0, 0)]);
}

#[test]
fn policies_see_only_the_keys_of_their_glob() {
    let mut registry = registry(vec![
        compile(
            Guest::deny("orders are frozen"),
            "orders",
            b"orders:*",
            Mode::Enforce,
        ),
        compile(Guest::clamp(100), "batch", b"batch:[0-9]*", Mode::Enforce),
        compile(Guest::clamp(5000), "all", b"*", Mode::Enforce),
    ]);
    assert!(matches!(
        verdict(&mut registry, b"orders:1"),
        Err(LockError::Denied { .. })
    ));
    assert_eq!(verdict(&mut registry, b"batch:7"), Ok(Some(100)));
    assert_eq!(verdict(&mut registry, b"batch:x"), Ok(Some(5000)));
    assert_eq!(verdict(&mut registry, b"billing:1"), Ok(Some(5000)));
    assert_eq!(counters(&registry), [(1, 1, 0), (1, 0, 0), (3, 0, 0)]);
}

#[test]
fn replace_keeps_the_load_order() {
    let mut registry = registry(vec![
        enforce(Guest::clamp(500), "a"),
        enforce(Guest::allow(), "b"),
        enforce(Guest::deny("c"), "c"),
    ]);
    assert_eq!(verdict(&mut registry, b"k").unwrap_err().code(), "DENIED");

    let duplicate = registry
        .install(enforce(Guest::deny("b2"), "b"), false)
        .unwrap_err();
    assert_eq!(
        duplicate.to_string(),
        "BADPOLICY policy 'b' is already loaded (use REPLACE to replace it)"
    );
    registry
        .install(enforce(Guest::deny("new b"), "b"), true)
        .unwrap();
    assert_eq!(names(&registry), ["a", "b", "c"]);
    assert_eq!(
        verdict(&mut registry, b"k"),
        Err(LockError::Denied {
            policy: "b".into(),
            reason: "new b".into()
        })
    );
    // The replacement starts with fresh counters.
    assert_eq!(counters(&registry), [(2, 0, 0), (1, 1, 0), (1, 1, 0)]);

    // REPLACE of an unknown name just loads it, at the end.
    registry
        .install(enforce(Guest::allow(), "d"), true)
        .unwrap();
    assert_eq!(names(&registry), ["a", "b", "c", "d"]);
}

#[test]
fn unload_removes_and_keeps_the_others_in_order() {
    let mut registry = registry(vec![
        enforce(Guest::clamp(1), "a"),
        enforce(Guest::clamp(2), "b"),
        enforce(Guest::clamp(3), "c"),
    ]);
    assert!(registry.unload("a"));
    assert!(!registry.unload("a"));
    assert!(!registry.unload("zzz"));
    assert_eq!(names(&registry), ["b", "c"]);
    assert_eq!(verdict(&mut registry, b"k"), Ok(Some(2)));
    assert!(registry.unload("b") && registry.unload("c"));
    assert!(registry.is_empty());
}

#[test]
fn list_describes_each_policy() {
    let guest = Guest::deny("no");
    let wasm = guest.wasm();
    let mut registry = registry(vec![
        compile(guest, "deny-orders", b"orders:*", Mode::Audit),
        enforce(Guest::allow(), "allow"),
    ]);
    for _ in 0..3 {
        registry.evaluate(&acquire(b"orders:1"), LIMITS, FailureMode::Deny);
    }
    let list = registry.list();
    let info = &list[0];
    assert_eq!(info.name, "deny-orders");
    assert_eq!(info.keys, b"orders:*");
    assert_eq!(info.mode, Mode::Audit);
    assert_eq!(info.size, wasm.len());
    let sha: String = Sha256::digest(&wasm)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(info.sha256, sha);
    assert_eq!((info.evaluations, info.denials, info.failures), (3, 3, 0));
    assert!(info.mean_eval_ns > 0);
    assert_eq!(info.broken, None);
    assert_eq!((list[1].name.as_str(), list[1].evaluations), ("allow", 3));
    let specs: Vec<&PolicySpec> = registry.specs().collect();
    assert_eq!(specs[0].wasm, wasm);
    assert_eq!(specs[0].mode, Mode::Audit);
}

#[test]
fn a_dry_run_asks_one_policy_and_counts_nothing() {
    let mut registry = registry(vec![
        compile(
            Guest::deny("not for orders"),
            "orders",
            b"orders:*",
            Mode::Audit,
        ),
        enforce(trap(), "trap"),
    ]);
    // Whatever the glob and mode.
    assert_eq!(
        registry.dry_run("orders", &acquire(b"billing:1"), LIMITS),
        Ok(Decision::Deny("not for orders".into()))
    );
    assert_eq!(
        registry.dry_run("trap", &acquire(b"k"), LIMITS),
        Err(LockError::Policy {
            policy: "trap".into(),
            cause: "trap: wasm `unreachable` instruction executed".into()
        })
    );
    assert_eq!(
        registry
            .dry_run("nope", &acquire(b"k"), LIMITS)
            .unwrap_err()
            .to_string(),
        "ERR no such policy 'nope'"
    );
    assert_eq!(counters(&registry), [(0, 0, 0), (0, 0, 0)]);
}

#[test]
fn limits_are_those_of_each_call() {
    // About 3000 fuel per evaluation.
    let guest = Guest::busy(600);
    let mut registry = registry(vec![enforce(guest, "slow")]);
    assert_eq!(verdict(&mut registry, b"k"), Ok(None));
    let tight = with_fuel(1000);
    let verdict = registry
        .evaluate(&acquire(b"k"), tight, FailureMode::Deny)
        .verdict;
    assert_eq!(
        verdict.unwrap_err().to_string(),
        "POLICY policy slow failed: fuel exhausted (limit 1000)"
    );
}

#[test]
fn policies_compile_on_one_thread_and_run_on_another() {
    fn send<T: Send>() {}
    fn shared<T: Clone + Send + Sync>() {}
    send::<CompiledPolicy>();
    shared::<PolicyEngine>();

    let engine = engine().clone();
    let compiled = std::thread::spawn(move || {
        engine
            .compile(Guest::clamp(77).spec("bg"), MAX_MODULE, LIMITS)
            .unwrap()
    })
    .join()
    .unwrap();
    let mut registry = registry(vec![compiled]);
    assert_eq!(verdict(&mut registry, b"k"), Ok(Some(77)));
}

/// `lockwarden_request_fields` as a WAT function returning `fields`.
fn declaring(fields: &str) -> Guest {
    let mut guest = Guest::allow();
    guest.extra = format!(r#"(func (export "lockwarden_request_fields") (result i32) {fields})"#);
    guest
}

#[test]
fn policies_declare_whether_they_read_the_caller_user() {
    // Without the export a policy reads everything; with it, what it says.
    assert!(enforce(Guest::allow(), "silent").reads_caller_user());
    assert!(enforce(declaring("(i32.const 1)"), "user").reads_caller_user());
    assert!(!enforce(declaring("(i32.const 0)"), "none").reads_caller_user());
    // Bits this host does not know are ignored.
    assert!(!enforce(declaring("(i32.const -2)"), "future").reads_caller_user());

    // The registry asks for the user only if a policy on the key reads it.
    let registry = registry(vec![
        compile(declaring("(i32.const 0)"), "all-keys", b"*", Mode::Enforce),
        compile(Guest::allow(), "users", b"u:*", Mode::Audit),
    ]);
    assert!(!registry.reads_caller_user(b"k:1"));
    assert!(registry.reads_caller_user(b"u:1"));
}

#[test]
fn an_ill_typed_request_fields_export_is_refused() {
    let mut guest = Guest::allow();
    guest.extra =
        r#"(func (export "lockwarden_request_fields") (param i32) (result i32) (local.get 0))"#
            .into();
    let err = engine()
        .compile(guest.spec("bad"), MAX_MODULE, LIMITS)
        .err()
        .expect("refused");
    assert_eq!(
        err.message(),
        "export `lockwarden_request_fields` must be a function () -> i32"
    );
    // One that traps fails the load like any other phase.
    let trapping = declaring("(unreachable)");
    let err = engine()
        .compile(trapping.spec("trap"), MAX_MODULE, LIMITS)
        .err()
        .expect("refused");
    assert!(
        err.message()
            .starts_with("lockwarden_request_fields failed: trap"),
        "{}",
        err.message()
    );
}

#[test]
fn reorder_follows_the_given_order_after_the_unnamed() {
    let mut registry = registry(vec![
        enforce(Guest::allow(), "a"),
        enforce(Guest::allow(), "b"),
        enforce(Guest::allow(), "own"),
        enforce(Guest::allow(), "c"),
    ]);
    registry.reorder(&["c", "a", "b", "missing"]);
    let names: Vec<String> = registry.list().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["own", "c", "a", "b"]);
}
