//! Scenario 4: the lock server's wall clock steps backward and forward by an
//! hour (an NTP step, a VM restored from a snapshot) while clients acquire
//! and release.
//!
//! The server runs with an `LD_PRELOAD` shim (`tests/faults/clockshim.c`,
//! compiled here with gcc into the target directory) that adds an offset,
//! read from a file, to `CLOCK_REALTIME`, `gettimeofday` and `time`; the
//! monotonic clock is untouched. (Debian's libfaketime deadlocks
//! redis-server at start, see the shim.) The steps are confirmed with `TIME`.
//!
//! Checked:
//! * tokens strictly increase in real time across every step — after a
//!   backward step they come from the high-water mark, far above the wall
//!   clock's term;
//! * a forward step makes locks expire early (Redis expiry is absolute wall
//!   time): locks pinned across the step are gone; a backward step makes them
//!   last longer (`PTTL` grows by the step);
//! * no lock vanishes silently: the locks that disappeared (the pinned ones,
//!   and the workers' whose release then failed) equal both the
//!   `expired_while_held` delta and the number of `lock.expired` keyspace
//!   events (`notify-keyspace-events Kd`);
//! * the fenced store's log is clean: a worker whose lock vanished under it
//!   and writes again with its old token is rejected if a newer holder wrote.

use crate::common_a::*;
use lockwarden_tests::redis::Value;
use lockwarden_tests::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const HOUR_MS: i64 = 3_600_000;
const WORKERS: usize = 3;
const KEYS: u64 = 3;
const WORKER_TTL_MS: u64 = 10_000;
const PINNED: usize = 3;
const PINNED_TTL_MS: u64 = 60_000;
/// Churn between steps.
const PHASE_MS: u64 = 300;
/// The environment variable the shim reads the offset file's path from.
const OFFSET_ENV: &str = "LW_CLOCK_OFFSET_FILE";

for_each_flavor! {
    /// Steps of -1 h and +1 h under churn: tokens keep increasing, early
    /// expiries are all reported.
    fn clock_steps(flavor: Flavor) {
        let base = [-HOUR_MS, 0, HOUR_MS, 0];
        let steps: Vec<i64> = base.iter().copied().cycle().take(base.len() * scaled(1, 4)).collect();
        let hours = |ms: i64| format!("{:+}h", ms / HOUR_MS);
        let mut from = 0;
        let faults = format!(
            "wall-clock steps of the lock server {} (offsets {}) under churn ({WORKERS} clients, {KEYS} keys)",
            steps
                .iter()
                .map(|&to| hours(to - std::mem::replace(&mut from, to)))
                .collect::<Vec<_>>()
                .join(" "),
            steps.iter().map(|&s| hours(s)).collect::<Vec<_>>().join(" ")
        );
        scenario("4 clock steps", flavor, &faults, |out| run(flavor, &steps, out));
    }
}

/// The compiled shim (built once per test process).
fn shim() -> PathBuf {
    static SHIM: OnceLock<PathBuf> = OnceLock::new();
    SHIM.get_or_init(build_shim).clone()
}

fn build_shim() -> PathBuf {
    let src = workspace_root().join("tests/faults/clockshim.c");
    // The test executable is target/<profile>/deps/faults-<hash>: build the
    // shim next to it, in target/<profile>/lw-clockshim/.
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target"));
    let dir = profile_dir.join("lw-clockshim");
    fs::create_dir_all(&dir).expect("create the shim directory");
    let out = dir.join("clockshim.so");
    // Built under a private name, then renamed: another test process may be
    // building or using it at the same time.
    let tmp = dir.join(format!("clockshim.so.{}.tmp", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "gcc".to_string());
    let output = Command::new(&cc)
        .args([
            "-O2",
            "-shared",
            "-fPIC",
            "-std=gnu11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-o",
        ])
        .arg(&tmp)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cc} to build the clock shim: {e}"));
    assert!(
        output.status.success(),
        "{cc} failed to build {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    fs::rename(&tmp, &out).expect("install the clock shim");
    out
}

/// The offset file the shim reads.
struct ClockOffset {
    dir: tempfile::TempDir,
}

impl ClockOffset {
    fn new() -> ClockOffset {
        let c = ClockOffset {
            dir: tempfile::Builder::new()
                .prefix("lw-clock-")
                .tempdir()
                .expect("temp dir"),
        };
        c.write(0);
        c
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("offset-ms")
    }

    /// Replaces the file atomically (the shim may read it at any moment).
    fn write(&self, offset_ms: i64) {
        let tmp = self.dir.path().join("offset-ms.tmp");
        fs::write(&tmp, format!("{offset_ms}\n")).expect("write offset");
        fs::rename(&tmp, self.path()).expect("rename offset");
    }
}

/// The server's `TIME`, in unix ms.
fn server_time_ms(server: &Server) -> i64 {
    match server.cmd(&["TIME"]) {
        Value::Array(parts) if parts.len() == 2 => {
            let n = |v: &Value| render(v).parse::<i64>().expect("TIME field");
            n(&parts[0]) * 1000 + n(&parts[1]) / 1000
        }
        other => panic!("TIME: {}", render(&other)),
    }
}

/// Sets the server's clock offset and waits until `TIME` shows it.
fn step_clock(server: &Server, clock: &ClockOffset, offset_ms: i64) {
    clock.write(offset_ms);
    server.wait_for(FAULT_TIMEOUT, |s| {
        let t0 = now_ms();
        let server_ms = server_time_ms(s);
        let t1 = now_ms();
        server_ms >= t0 + offset_ms - 5 && server_ms <= t1 + offset_ms + 5
    });
}

/// What a worker did.
#[derive(Default)]
struct WorkerLog {
    grants: Vec<Grant>,
    released: usize,
    /// Leases that disappeared under the worker: its release failed.
    vanished: Vec<String>,
    writes: usize,
    rejected: usize,
}

fn worker(
    server: &Server,
    store: &FencedStore,
    idx: usize,
    ops: &AtomicU64,
    stop: &AtomicBool,
) -> WorkerLog {
    let mut conn = server.client();
    let mut store_conn = store.client();
    let mut rng = Rng::new(idx as u64 + 7);
    let owner = format!("worker-{idx}");
    let ttl = WORKER_TTL_MS.to_string();
    let mut log = WorkerLog::default();
    while !stop.load(Relaxed) {
        let key = format!("clock:k{}", rng.below(KEYS));
        let sent = now_ms();
        let reply =
            try_req(&mut conn, &["LOCK.ACQUIRE", &key, &owner, &ttl]).expect("LOCK.ACQUIRE");
        let received = now_ms();
        ops.fetch_add(1, Relaxed);
        let Some((token, _)) = grant_of(&reply) else {
            sleep_ms(1);
            continue;
        };
        log.grants.push(Grant {
            token,
            sent_ms: sent,
            received_ms: received,
            what: format!("{key} by {owner}"),
        });
        // Write, hold a little (a step may come), write again, release.
        for pause in [rng.below(15), 0] {
            log.writes += 1;
            if !store.write(&mut store_conn, &key, token, &owner) {
                log.rejected += 1;
            }
            ops.fetch_add(1, Relaxed);
            sleep_ms(pause);
        }
        let reply = try_req(&mut conn, &["LOCK.RELEASE", &key, &owner]).expect("LOCK.RELEASE");
        ops.fetch_add(1, Relaxed);
        match reply {
            Value::Int(1) => log.released += 1,
            other if matches!(err_code(&other).as_deref(), Some("NOTHELD" | "NOTOWNER")) => log
                .vanished
                .push(format!("{key} token {token}: {}", render(&other))),
            other => panic!("{owner}: LOCK.RELEASE {key}: {}", render(&other)),
        }
    }
    log
}

fn run(flavor: Flavor, steps: &[i64], out: &mut Outcome) {
    let clock = ClockOffset::new();
    let server = Server::builder(flavor)
        .env("LD_PRELOAD", shim())
        .env(OFFSET_ENV, clock.path())
        .arg("notify-keyspace-events", "Kd")
        .start();
    let store = FencedStore::start(flavor, true);

    // The shim works: TIME follows the offset file.
    step_clock(&server, &clock, 24 * HOUR_MS);
    step_clock(&server, &clock, 0);

    let ops = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    // Keyspace events, collected by a thread of their own until the "stop"
    // message the test publishes on a channel the pattern matches (or until
    // the server goes away, if the test fails first).
    let events: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let subscriber = {
        let events = Arc::clone(&events);
        let mut conn = server.client();
        std::thread::spawn(move || {
            let mut pubsub = conn.as_pubsub();
            pubsub.psubscribe("__keyspace@0__:*").expect("PSUBSCRIBE");
            pubsub.set_read_timeout(None).expect("read timeout");
            while let Ok(msg) = pubsub.get_message() {
                let key = msg
                    .get_channel_name()
                    .trim_start_matches("__keyspace@0__:")
                    .to_string();
                let event: String = msg.get_payload().unwrap_or_default();
                if key == "lw:stop" {
                    break;
                }
                events
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((key, event));
            }
        })
    };
    let count_events = |key: Option<&str>, event: &str| {
        events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(k, e)| e == event && key.is_none_or(|key| k == key))
            .count()
    };
    let expired_events = || count_events(None, "lock.expired");
    let base = |field: &str| lw_stat(&server, field);
    let (granted0, released0, expired0) = (
        base("acquires_granted"),
        base("releases"),
        base("expired_while_held"),
    );
    // The subscription is live once a probe lock's events arrive.
    let mut probes = 0;
    wait_until("keyspace events of a probe lock", FAULT_TIMEOUT, || {
        assert!(grant_of(&server.cmd(&["LOCK.ACQUIRE", "clock:probe", "p", "1000"])).is_some());
        assert_eq!(
            server.cmd(&["LOCK.RELEASE", "clock:probe", "p"]),
            Value::Int(1)
        );
        probes += 1;
        sleep_ms(20);
        count_events(Some("clock:probe"), "lock.released") > 0
    });
    ops.fetch_add(2 * probes, Relaxed);
    let mut grants: Vec<Grant> = Vec::new();
    let mut pinned_vanished = 0;
    let mut pinned_released = 0;

    let logs: Vec<WorkerLog> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|i| {
                let (server, store, ops, stop) = (&server, &store, &ops, &stop);
                s.spawn(move || worker(server, store, i, ops, stop))
            })
            .collect();
        // Should this thread panic, the workers stop instead of churning
        // forever.
        let _stop_workers = StopOnDrop(&stop);
        sleep_ms(PHASE_MS);

        let mut offset = 0;
        let mut max_offset = 0;
        let mut pinned_tokens: Vec<u64> = Vec::new();
        for (n, &target) in steps.iter().enumerate() {
            // Locks pinned across the step, by a holder that would release
            // them after it.
            let pinner = format!("pinner-{n}");
            let mut pinned = Vec::new();
            for i in 0..PINNED {
                let key = format!("clock:pin:{i}");
                let sent = now_ms();
                let reply =
                    server.cmd(&["LOCK.ACQUIRE", &key, &pinner, &PINNED_TTL_MS.to_string()]);
                let received = now_ms();
                let (token, _) =
                    grant_of(&reply).unwrap_or_else(|| panic!("step {n}: {key} is still held"));
                let info = lock_info(&server, &key).expect("pinned lock held");
                // The module reads the stepped clock...
                assert!(
                    (info.acquired_at - (sent + offset)).abs() < 1000,
                    "step {n}: acquired-at {} vs the server clock {}",
                    info.acquired_at,
                    sent + offset
                );
                // ...yet after a backward step the token is above every
                // token issued before, when the clock read later (the
                // high-water mark).
                if let Some(before) = pinned_tokens.last().filter(|_| offset < max_offset) {
                    assert!(
                        token > *before,
                        "step {n}: token {token} at clock offset {offset} ms is not above {before}, issued when the clock read up to {max_offset} ms ahead"
                    );
                }
                pinned_tokens.push(token);
                grants.push(Grant {
                    token,
                    sent_ms: sent,
                    received_ms: received,
                    what: format!("{key} by {pinner}"),
                });
                pinned.push((key, token));
                ops.fetch_add(2, Relaxed);
            }

            step_clock(&server, &clock, target);
            let forward = target > offset;
            offset = target;
            max_offset = max_offset.max(offset);

            for (key, token) in &pinned {
                let info = lock_info(&server, key);
                let release = server.cmd(&["LOCK.RELEASE", key, &pinner]);
                ops.fetch_add(2, Relaxed);
                if forward {
                    // Its deadline is now an hour in the past.
                    assert!(
                        info.is_none(),
                        "step {n} (+{} ms): {key} still held after a forward step past its deadline: {info:?}",
                        HOUR_MS
                    );
                    assert_eq!(
                        err_code(&release).as_deref(),
                        Some("NOTHELD"),
                        "step {n}: release of the expired {key}: {}",
                        render(&release)
                    );
                    pinned_vanished += 1;
                } else {
                    let info = info
                        .unwrap_or_else(|| panic!("step {n}: {key} vanished on a backward step"));
                    assert_eq!(
                        (info.owner_str().as_str(), info.token as u64),
                        (pinner.as_str(), *token)
                    );
                    // Expiry is absolute wall time: the lease now lasts an
                    // hour longer.
                    assert!(
                        info.ttl > HOUR_MS && info.ttl <= HOUR_MS + PINNED_TTL_MS as i64,
                        "step {n}: {key} ttl {} after a backward step of an hour",
                        info.ttl
                    );
                    assert_eq!(release, Value::Int(1), "step {n}: release of {key}");
                    pinned_released += 1;
                }
            }
            sleep_ms(PHASE_MS);
        }
        stop.store(true, Relaxed);
        let logs: Vec<WorkerLog> = workers
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect();

        // Every lock that vanished was reported: wait for the events to
        // arrive, then compare.
        let vanished = pinned_vanished + logs.iter().map(|l| l.vanished.len()).sum::<usize>();
        let expired = (base("expired_while_held") - expired0) as usize;
        let _ = poll(Duration::from_secs(5), || {
            (expired_events() >= expired.max(vanished)).then_some(())
        });
        sleep_ms(100);
        assert_eq!(
            server.cmd(&["PUBLISH", "__keyspace@0__:lw:stop", "stop"]),
            Value::Int(1)
        );
        subscriber.join().expect("the keyspace event subscriber");
        let worker_vanished: Vec<&String> = logs.iter().flat_map(|l| &l.vanished).collect();
        eprintln!(
            "clock steps [{flavor}]: {} grants, {pinned_vanished} pinned locks expired by forward steps, {pinned_released} released after backward steps, {} worker locks vanished {worker_vanished:?}; expired_while_held +{expired}; {} lock.expired events",
            grants.len() + logs.iter().map(|l| l.grants.len()).sum::<usize>(),
            worker_vanished.len(),
            expired_events()
        );
        assert_eq!(
            expired, vanished,
            "expired_while_held grew by {expired}, but {vanished} locks disappeared"
        );
        assert_eq!(
            expired_events(),
            vanished,
            "{} lock.expired events, but {vanished} locks disappeared",
            expired_events()
        );
        logs
    });
    out.operations = ops.load(Relaxed);

    // Server-side bookkeeping agrees: every grant was released or expired.
    for log in &logs {
        grants.extend(log.grants.iter().cloned());
    }
    let probes = probes as usize;
    let released = pinned_released + logs.iter().map(|l| l.released).sum::<usize>() + probes;
    assert_eq!(
        (base("acquires_granted") - granted0) as usize,
        grants.len() + probes,
        "grants (with the probes)"
    );
    assert_eq!(
        (base("releases") - released0) as usize,
        released,
        "releases (with the probe)"
    );
    assert_eq!(base("deleted_while_held"), 0);
    assert_eq!(base("locks_held"), 0, "every lock released or expired");
    assert!(
        base("token_high_water") as u64 >= grants.iter().map(|g| g.token).max().unwrap_or(0),
        "high-water mark below an issued token"
    );
    assert_tokens_increase(&grants);

    let mut total = Verdict::default();
    for k in 0..KEYS {
        total.add(&store.verdict(&format!("clock:k{k}")));
    }
    eprintln!("clock steps [{flavor}]: oracle: {total}");
    out.anomalies_fenced = total.anomalies();
    assert!(total.clean(), "oracle: {total}");
}
