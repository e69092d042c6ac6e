//! Criterion benches of the pure core (`lockwarden-core`): the work the
//! module does per command besides talking to Redis.
//!
//! ```text
//! cargo bench -p lockwarden-benches            # all
//! cargo bench -p lockwarden-benches -- rules/  # a group
//! ```

use criterion::{Criterion, criterion_group, criterion_main};
use lockwarden_core::lease::{self, Lease};
use lockwarden_core::parse::{self, Acquire, Extend, Release};
use lockwarden_core::rules::{self, Acquired, Caller};
use lockwarden_core::{TokenClock, TtlLimits};
use std::hint::black_box;
use std::time::Duration;

/// A fixed "now" (2027-01-15), unix ms.
const NOW: i64 = 1_800_000_000_000;
/// The owner shape the load comparisons use too (`host:pid:unique-id`).
const OWNER: &[u8] = b"app-7f3a:4242:9c1e5b2d7a6f4e30";
const OTHER: &[u8] = b"app-0b21:1717:4d0e8f3a2c1b9e77";
const KEY: &[u8] = b"lock:000012345678";
const CALLER: Caller = Caller { client_id: 42 };

fn held(owner: &[u8]) -> Lease {
    Lease {
        owner: owner.into(),
        token: ((NOW as u64) << 16) + 7,
        deadline_ms: NOW + 30_000,
        acquired_at_ms: NOW - 1_000,
        extensions: 2,
        session: false,
        client_id: 42,
    }
}

fn acquire_req(owner: &[u8]) -> Acquire<'_> {
    Acquire {
        key: KEY,
        owner,
        ttl_ms: 30_000,
        wait_ms: None,
        session: false,
    }
}

fn rules_benches(c: &mut Criterion) {
    let limits = TtlLimits::default();
    let mut g = c.benchmark_group("rules");

    // A fresh grant: a new token and a new lease (allocates the owner).
    let req = acquire_req(OWNER);
    let mut clock = TokenClock::new();
    g.bench_function("acquire/free", |b| {
        b.iter(|| {
            let r = rules::acquire(
                None,
                black_box(&req),
                CALLER,
                None,
                &limits,
                &mut clock,
                black_box(NOW),
            );
            debug_assert!(matches!(r, Ok(Acquired::Granted { fresh: true, .. })));
            r
        })
    });

    // Held by someone else: refused, nothing allocated.
    let lease = held(OWNER);
    let other = acquire_req(OTHER);
    g.bench_function("acquire/held-by-other", |b| {
        b.iter(|| {
            let r = rules::acquire(
                Some(black_box(&lease)),
                black_box(&other),
                CALLER,
                None,
                &limits,
                &mut clock,
                NOW,
            );
            debug_assert_eq!(r, Ok(Acquired::Contended));
            r
        })
    });

    // Held by the caller: an idempotent retry (same token, lease cloned).
    g.bench_function("acquire/held-retry", |b| {
        b.iter(|| {
            let r = rules::acquire(
                Some(black_box(&lease)),
                black_box(&req),
                CALLER,
                None,
                &limits,
                &mut clock,
                NOW,
            );
            debug_assert!(matches!(r, Ok(Acquired::Granted { fresh: false, .. })));
            r
        })
    });

    let rel = Release {
        key: KEY,
        owner: OWNER,
        fence: Some(lease.token),
    };
    g.bench_function("release/fenced", |b| {
        b.iter(|| rules::release(Some(black_box(&lease)), black_box(&rel), black_box(NOW)))
    });

    let ext = Extend {
        key: KEY,
        owner: OWNER,
        ttl_ms: 30_000,
        fence: None,
    };
    g.bench_function("extend", |b| {
        b.iter(|| {
            rules::extend(
                Some(black_box(&lease)),
                black_box(&ext),
                None,
                &limits,
                black_box(NOW),
            )
        })
    });
    g.finish();
}

fn lease_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("lease");
    let lease = held(OWNER);
    g.bench_function("encode", |b| b.iter(|| lease::encode(black_box(&lease))));
    let bytes = lease::encode(&lease);
    g.bench_function("decode", |b| b.iter(|| lease::decode(black_box(&bytes))));
    g.finish();
}

fn clock_benches(c: &mut Criterion) {
    let mut clock = TokenClock::new();
    c.bench_function("clock/issue", |b| b.iter(|| clock.issue(black_box(NOW))));
}

fn parse_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    let plain: [&[u8]; 3] = [KEY, OWNER, b"30000"];
    g.bench_function("acquire", |b| b.iter(|| parse::acquire(black_box(&plain))));
    let with_opts: [&[u8]; 6] = [KEY, OWNER, b"30000", b"wait", b"5000", b"SESSION"];
    g.bench_function("acquire/wait-session", |b| {
        b.iter(|| parse::acquire(black_box(&with_opts)))
    });
    g.finish();
}

/// One policy evaluation through the real engine (the same wasmtime
/// configuration, limits and ABI encoding as inside Redis) with a real
/// example policy, `target/policies/max-ttl.wasm` (built by `make policies`).
/// Target: median <= 0.3 us.
fn policy_benches(c: &mut Criterion) {
    use lockwarden_core::policy::{EvalLimits, FailureMode, PolicyEngine, PolicySpec, Registry};
    let path = std::env::var_os("LOCKWARDEN_POLICIES")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/policies")
        })
        .join("max-ttl.wasm");
    let Ok(wasm) = std::fs::read(&path) else {
        eprintln!(
            "policy benches skipped: {} not found (run `make policies`)",
            path.display()
        );
        return;
    };
    let spec = PolicySpec {
        name: "max-ttl".into(),
        keys: b"*".to_vec(),
        mode: Default::default(),
        settings: br#"{"default_ms":30000,"prefixes":[{"prefix":"batch:","max_ms":60000}],"action":"clamp"}"#.to_vec(),
        wasm,
    };
    let engine = PolicyEngine::new().expect("engine");
    let limits = EvalLimits::DEFAULT;
    let mut registry = Registry::new();
    registry
        .install(
            engine
                .compile(spec, usize::MAX, limits)
                .expect("compile max-ttl"),
            false,
        )
        .expect("install");
    let request = lockwarden_sdk::abi::Request {
        op: lockwarden_sdk::abi::Operation::Acquire,
        key: KEY,
        owner: OWNER,
        ttl_ms: 45_000,
        now_ms: NOW as u64,
        holder: None,
        caller: lockwarden_sdk::abi::Caller {
            client_id: 42,
            user: b"default",
        },
        waiters: 0,
    };
    let mut g = c.benchmark_group("policy");
    g.bench_function("evaluate/max-ttl/clamp", |b| {
        b.iter(|| registry.evaluate(black_box(&request), limits, FailureMode::Deny))
    });
    // The host's share of an evaluation: encoding the request.
    let mut buf = Vec::new();
    g.bench_function("encode-request", |b| {
        b.iter(|| black_box(&request).encode_into(&mut buf))
    });
    g.finish();
}

fn config() -> Criterion {
    // Short runs: these are nanosecond-scale functions, and `make bench`
    // should stay within a few minutes on a small machine.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = core;
    config = config();
    targets = rules_benches, lease_benches, clock_benches, parse_benches, policy_benches
}
criterion_main!(core);
