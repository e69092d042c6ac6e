//! Scenario 3: kill -9 of an AOF-persisted server in the middle of lock
//! churn, then a restart from its AOF (`appendfsync always` and `everysec`,
//! with and without the RDB preamble; a `BGREWRITEAOF` runs mid-churn so the
//! AOF has a rewritten base).
//!
//! While the server runs, several clients churn locks: "held" clients each
//! keep a lock of their own with a long lease, extending and now and then
//! releasing and re-acquiring it; "pool" clients compete for two keys with
//! short leases, writing to the fenced store with their tokens. An "anchor"
//! lock is taken before the churn and extended after the rewrite. Then the
//! server is killed (SIGKILL) and, after a pause, restarted. Checked:
//!
//! * no token goes back: every token issued after the restart is above every
//!   token any client saw before the crash (and tokens increase in real time
//!   across the whole run);
//! * a lock that survived comes back with its owner, token, acquisition
//!   time, extension count and its ABSOLUTE deadline (`LOCK.INFO` ttl and
//!   `PTTL` consistent with the pre-crash deadline, not reset at load): it is
//!   the state after one of the commands the client issued — with
//!   `appendfsync always` the last acknowledged one or the one in flight at
//!   the crash (every acknowledged command is fsynced before its reply);
//!   with `everysec` any earlier one (the AOF's tail may be lost);
//! * with `appendfsync always` the restarted node's `token_high_water`
//!   covers every acknowledged grant (the RDB preamble's aux field, or the
//!   `LOCK._HIGHWATER` written at the rewrite without a preamble, and the
//!   replayed `LOCK._GRANT`s);
//! * clients that believed they held a pool lock at the crash write again
//!   after the restart with their old tokens: the fenced store's log stays
//!   clean.

use crate::common_a::*;
use lockwarden_tests::redis::{Connection, Value};
use lockwarden_tests::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

const HELD_CLIENTS: usize = 3;
const POOL_CLIENTS: usize = 3;
const POOL_KEYS: u64 = 2;
const HELD_TTL_MS: u64 = 30_000;
const ANCHOR_TTL_MS: u64 = 60_000;
const POOL_TTL_MS: u64 = 800;
/// Churn before and after the mid-churn `BGREWRITEAOF`.
const CHURN_MS: u64 = 400;
/// How long the server stays down: a deadline reset at load would be off by
/// at least this much.
const DOWN_MS: u64 = 300;
/// Churn after the restart.
const AFTER_MS: u64 = 500;
/// Slack (ms) for comparing deadlines: millisecond rounding of two clocks
/// reading the same time source.
const SLACK_MS: i64 = 2;

for_each_flavor! {
    /// appendfsync always, RDB preamble.
    fn aof_crash_always(flavor: Flavor) {
        run(flavor, "3a AOF crash (always)", "always", "yes");
    }

    /// appendfsync everysec, RDB preamble.
    fn aof_crash_everysec(flavor: Flavor) {
        run(flavor, "3b AOF crash (everysec)", "everysec", "yes");
    }

    /// appendfsync always, aof-use-rdb-preamble no: the rewritten base holds
    /// LOCK._GRANT commands, the high-water mark follows as LOCK._HIGHWATER.
    fn aof_crash_always_no_preamble(flavor: Flavor) {
        run(flavor, "3c AOF crash (always, no RDB preamble)", "always", "no");
    }

    /// appendfsync everysec, aof-use-rdb-preamble no.
    fn aof_crash_everysec_no_preamble(flavor: Flavor) {
        run(flavor, "3d AOF crash (everysec, no RDB preamble)", "everysec", "no");
    }
}

fn run(flavor: Flavor, name: &str, fsync: &str, preamble: &str) {
    let cycles = scaled(2, 6);
    let faults = format!(
        "kill -9 mid-churn ({HELD_CLIENTS} holders + {POOL_CLIENTS} competing clients), BGREWRITEAOF mid-churn, restart from the AOF; appendfsync {fsync}, aof-use-rdb-preamble {preamble}; x{cycles}"
    );
    scenario(name, flavor, &faults, |out| {
        let server = Server::builder(flavor)
            .arg("appendonly", "yes")
            .arg("appendfsync", fsync)
            .arg("aof-use-rdb-preamble", preamble)
            .start();
        let store = FencedStore::start(flavor, true);
        let mut run = Run {
            server: &server,
            store: &store,
            always: fsync == "always",
            ops: AtomicU64::new(0),
            grants: Vec::new(),
        };
        for cycle in 0..cycles {
            run.cycle(cycle, out);
        }
        assert_tokens_increase(&run.grants);
        let mut total = Verdict::default();
        for k in 0..POOL_KEYS {
            let v = store.verdict(&pool_key(k));
            eprintln!("{name} [{flavor}] {}: {v}", pool_key(k));
            total.add(&v);
        }
        out.anomalies_fenced = total.anomalies();
        out.operations = run.ops.load(Relaxed);
        assert!(total.clean(), "oracle: {total}");
    });
}

fn pool_key(k: u64) -> String {
    format!("aof:pool:{k}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Acquire,
    Extend,
    Release,
}

/// A lock command a client issued; `received` is `None` if the server died
/// before replying (then its effect may or may not have been persisted).
#[derive(Clone, Debug)]
struct Op {
    kind: Kind,
    ttl: u64,
    sent: i64,
    received: Option<i64>,
    /// The granted token (acknowledged acquires).
    token: Option<u64>,
}

/// The lock's state after a command.
#[derive(Clone, Debug)]
enum Expect {
    Free,
    Held {
        /// `None`: granted by a command in flight at the crash, token unknown.
        token: Option<u64>,
        acquired: (i64, i64),
        deadline: (i64, i64),
        extensions: i64,
    },
}

/// The state after each prefix of `ops` (index 0: before the first), with
/// time ranges from when commands were sent and answered (the crash time
/// for the one in flight).
fn states(ops: &[Op], crash: i64) -> Vec<Expect> {
    let mut out = vec![Expect::Free];
    for op in ops {
        let until = op.received.unwrap_or(crash);
        let ttl = op.ttl as i64;
        let next = match (op.kind, out.last().expect("state")) {
            (Kind::Acquire, _) => Expect::Held {
                token: op.token,
                acquired: (op.sent, until),
                deadline: (op.sent + ttl, until + ttl),
                extensions: 0,
            },
            (
                Kind::Extend,
                Expect::Held {
                    token,
                    acquired,
                    extensions,
                    ..
                },
            ) => Expect::Held {
                token: *token,
                acquired: *acquired,
                deadline: (op.sent + ttl, until + ttl),
                extensions: extensions + 1,
            },
            (Kind::Release, _) => Expect::Free,
            (Kind::Extend, Expect::Free) => panic!("extend of a free lock in {ops:?}"),
        };
        out.push(next);
    }
    out
}

/// A lock as found after the restart, with its absolute deadline bracketed
/// from `LOCK.INFO`'s ttl and from `PTTL`.
#[derive(Debug)]
struct Found {
    info: LockInfo,
    deadline_info: (i64, i64),
    deadline_pttl: (i64, i64),
}

fn find(server: &Server, key: &str) -> Option<Found> {
    let t0 = now_ms();
    let info = lock_info(server, key)?;
    let t1 = now_ms();
    let p0 = now_ms();
    let pttl = match server.cmd(&["PTTL", key]) {
        Value::Int(p) if p >= 0 => p,
        other => panic!("PTTL {key}: {} for a held lock", render(&other)),
    };
    let p1 = now_ms();
    Some(Found {
        deadline_info: (t0 + info.ttl, t1 + info.ttl),
        deadline_pttl: (p0 + pttl, p1 + pttl),
        info,
    })
}

fn overlaps(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 - SLACK_MS <= b.1 && b.0 <= a.1 + SLACK_MS
}

fn matches(expect: &Expect, found: &Option<Found>, owner: &str) -> bool {
    match (expect, found) {
        (Expect::Free, None) => true,
        (
            Expect::Held {
                token,
                acquired,
                deadline,
                extensions,
            },
            Some(f),
        ) => {
            f.info.owner == owner.as_bytes()
                && token.is_none_or(|t| t == f.info.token as u64)
                && overlaps(*acquired, (f.info.acquired_at, f.info.acquired_at))
                && f.info.extensions == *extensions
                && overlaps(*deadline, f.deadline_info)
                && overlaps(*deadline, f.deadline_pttl)
        }
        _ => false,
    }
}

/// Checks the lock `key` of `owner` after the restart against the commands
/// issued before the crash; returns what was found.
#[track_caller]
fn check_restored(
    server: &Server,
    key: &str,
    owner: &str,
    ops: &[Op],
    crash: i64,
    always: bool,
    durable_from: usize,
) -> Option<Found> {
    let states = states(ops, crash);
    let acked = ops
        .iter()
        .rposition(|op| op.received.is_some())
        .map_or(0, |i| i + 1);
    let in_flight = ops
        .last()
        .filter(|op| op.received.is_none())
        .map(|_| ops.len());
    let candidates: Vec<usize> = if always {
        // Every acknowledged command was fsynced before its reply.
        std::iter::once(acked).chain(in_flight).collect()
    } else {
        (durable_from..states.len()).collect()
    };
    let found = find(server, key);
    if candidates
        .iter()
        .any(|&i| matches(&states[i], &found, owner))
    {
        return found;
    }
    let tail: Vec<_> = ops.iter().rev().take(4).collect();
    panic!(
        "{key} after the restart does not match any state it may have been persisted in\nfound: {found:?}\ncandidates: {:?}\nlast commands (newest first): {tail:?}\ncrash at {crash}",
        candidates.iter().map(|&i| &states[i]).collect::<Vec<_>>()
    );
}

/// What a pool client did.
#[derive(Default)]
struct PoolLog {
    owner: String,
    grants: Vec<Grant>,
    /// The lock it believed it held when it stopped (the crash).
    holding: Option<(String, u64)>,
    writes: usize,
    rejected: usize,
}

struct Run<'a> {
    server: &'a Server,
    store: &'a FencedStore,
    always: bool,
    ops: AtomicU64,
    /// Every grant a client saw, over the whole run.
    grants: Vec<Grant>,
}

impl Run<'_> {
    /// Starts the [`pool_client`]s `<name>-<j>` (seeded `seed + j`) in `s`.
    fn spawn_pool<'scope>(
        &'scope self,
        s: &'scope std::thread::Scope<'scope, '_>,
        stop: &'scope AtomicBool,
        name: &str,
        seed: u64,
    ) -> Vec<std::thread::ScopedJoinHandle<'scope, PoolLog>> {
        (0..POOL_CLIENTS)
            .map(|j| {
                let owner = format!("{name}-{j}");
                s.spawn(move || {
                    pool_client(
                        self.server,
                        self.store,
                        &owner,
                        seed + j as u64,
                        &self.ops,
                        stop,
                    )
                })
            })
            .collect()
    }

    fn cycle(&mut self, cycle: usize, out: &mut Outcome) {
        let server = self.server;
        let stop = AtomicBool::new(false);

        // The anchor: granted before the churn (so the mid-churn rewrite
        // puts it in the AOF base), extended after the rewrite.
        let anchor_key = format!("aof:anchor:{cycle}");
        let anchor_owner = format!("anchor-{cycle}");
        let mut anchor_ops = Vec::new();
        let (op, grant) = acquire_op(
            &mut server.client(),
            &anchor_key,
            &anchor_owner,
            ANCHOR_TTL_MS,
        );
        let grant = grant.expect("the anchor is granted");
        anchor_ops.push(op);
        self.grants.push(grant);

        let (held_logs, pool_logs, crash) = std::thread::scope(|s| {
            let held: Vec<_> = (0..HELD_CLIENTS)
                .map(|i| {
                    let stop = &stop;
                    let ops = &self.ops;
                    s.spawn(move || {
                        held_client(
                            server,
                            &format!("aof:held:{i}"),
                            &format!("held-{cycle}-{i}"),
                            ops,
                            stop,
                        )
                    })
                })
                .collect();
            let pool = self.spawn_pool(s, &stop, &format!("pool-{cycle}"), cycle as u64 * 100);
            // Should this thread panic, the clients stop instead of churning
            // forever.
            let _stop_clients = StopOnDrop(&stop);
            sleep_ms(CHURN_MS);
            let reply = server.cmd_text(&["BGREWRITEAOF"]);
            assert!(reply.contains("rewriting"), "BGREWRITEAOF: {reply}");
            server.wait_for(FAULT_TIMEOUT, |s| {
                let p = s.info("persistence");
                p.get("aof_rewrite_in_progress").map(String::as_str) == Some("0")
                    && p.get("aof_rewrite_scheduled").map(String::as_str) == Some("0")
            });
            assert_eq!(
                server
                    .info_field("persistence", "aof_last_bgrewrite_status")
                    .as_deref(),
                Some("ok")
            );
            let sent = now_ms();
            let reply = server.cmd(&[
                "LOCK.EXTEND",
                &anchor_key,
                &anchor_owner,
                &ANCHOR_TTL_MS.to_string(),
            ]);
            let received = now_ms();
            assert_eq!(reply, Value::Int(ANCHOR_TTL_MS as i64), "anchor extend");
            anchor_ops.push(Op {
                kind: Kind::Extend,
                ttl: ANCHOR_TTL_MS,
                sent,
                received: Some(received),
                token: None,
            });
            sleep_ms(CHURN_MS);

            server.kill9();
            let crash = now_ms();
            // The clients stop on their first I/O error.
            let held_logs: Vec<Vec<Op>> = held.into_iter().map(join).collect();
            let pool_logs: Vec<PoolLog> = pool.into_iter().map(join).collect();
            (held_logs, pool_logs, crash)
        });
        let in_flight = held_logs
            .iter()
            .filter(|ops| ops.last().is_some_and(|op| op.received.is_none()))
            .count();
        assert!(
            in_flight > 0 || pool_logs.iter().any(|l| !l.grants.is_empty()),
            "the churn did not run"
        );

        // Everything any client saw before the crash.
        for (i, ops) in held_logs.iter().enumerate() {
            for op in ops.iter().filter(|op| op.token.is_some()) {
                self.grants.push(Grant {
                    token: op.token.expect("token"),
                    sent_ms: op.sent,
                    received_ms: op.received.expect("acknowledged"),
                    what: format!("aof:held:{i} before crash {cycle}"),
                });
            }
        }
        for log in &pool_logs {
            self.grants.extend(log.grants.iter().cloned());
        }
        let max_before = self.grants.iter().map(|g| g.token).max().unwrap_or(0);

        sleep_ms(DOWN_MS);
        server.relaunch();

        // The high-water mark after the replay. With appendfsync always every
        // acknowledged grant is in the AOF before its reply, and the AOF keeps
        // the mark: in the RDB preamble's aux field, or, without a preamble,
        // as the LOCK._HIGHWATER the module propagates when the rewrite forks
        // (grants released before the rewrite are gone from its base), plus
        // the LOCK._GRANTs of the incremental file. With everysec the tail
        // may be lost: no claim here (the wall-clock term covers it, below).
        let high_water = lw_stat(server, "token_high_water") as u64;
        if self.always {
            assert!(
                high_water >= max_before,
                "cycle {cycle}: token_high_water {high_water} after the restart is below the acknowledged grant token {max_before}"
            );
        }

        // Survivors: owner, token, acquisition, extensions and absolute
        // deadline as persisted.
        let mut survivors = 0;
        let mut release = Vec::new();
        for (i, ops) in held_logs.iter().enumerate() {
            let key = format!("aof:held:{i}");
            let owner = format!("held-{cycle}-{i}");
            if let Some(f) = check_restored(server, &key, &owner, ops, crash, self.always, 0) {
                survivors += 1;
                release.push((key, owner, f.info.token));
            }
        }
        // The anchor's grant was in the rewritten base (the rewrite finished
        // after it): it survives in every mode.
        let f = check_restored(
            server,
            &anchor_key,
            &anchor_owner,
            &anchor_ops,
            crash,
            self.always,
            1,
        )
        .expect("the anchor lock survives the crash");
        assert_eq!(f.info.client_id, 0, "a restored lease has no client");
        release.push((anchor_key, anchor_owner, f.info.token));
        eprintln!(
            "cycle {cycle}: {survivors} of {HELD_CLIENTS} held locks + the anchor restored; {in_flight} commands in flight at the crash; high water {high_water}, max token seen {max_before}"
        );
        // Their holders can still release them with their token.
        for (key, owner, token) in &release {
            let reply = server.cmd(&["LOCK.RELEASE", key, owner, "FENCE", &token.to_string()]);
            assert_eq!(reply, Value::Int(1), "release of {key}: {}", render(&reply));
            self.ops.fetch_add(1, Relaxed);
        }

        // No token goes back, although grants can be missing from the AOF:
        // with everysec its tail may be lost, so the restarted node's
        // high-water mark can be below tokens clients were given. Tokens are
        // max(high_water + 1, now_ms << W), W = 10 bits of per-millisecond
        // sequence space (README, "Fencing tokens"). A grant issued before the
        // crash at wall time t, with fewer than 2^W grants in that millisecond
        // (here a few at most), has a token below (t + 1) << W. The restarted
        // node's clock reads later than t + 1 (the server stayed down for
        // DOWN_MS, and nothing steps the clock here), so its wall-clock term
        // alone — hence every token it issues — is above every token issued
        // before the crash, persisted or not.
        let mut conn = server.client();
        let fresh_key = format!("aof:fresh:{cycle}");
        let (_, fresh) = acquire_op(&mut conn, &fresh_key, "fresh", 1000);
        let fresh = fresh.expect("a new key is free");
        self.ops.fetch_add(2, Relaxed);
        assert!(
            fresh.token > max_before,
            "cycle {cycle}: first token after the restart {} is not above {max_before}, seen before the crash",
            fresh.token
        );
        assert_eq!(
            try_req(&mut conn, &["LOCK.RELEASE", &fresh_key, "fresh"]).expect("release"),
            Value::Int(1)
        );
        self.grants.push(fresh);

        // Churn again, then the pool clients that held a lock at the crash
        // (they never learned it) write with their old tokens.
        let after: Vec<PoolLog> = std::thread::scope(|s| {
            let handles =
                self.spawn_pool(s, &stop, &format!("after-{cycle}"), cycle as u64 * 100 + 50);
            let _stop_clients = StopOnDrop(&stop);
            sleep_ms(AFTER_MS);
            stop.store(true, Relaxed);
            handles.into_iter().map(join).collect()
        });
        for log in &after {
            for g in &log.grants {
                assert!(
                    g.token > max_before,
                    "cycle {cycle}: token {} issued after the restart ({}) is not above {max_before}, seen before the crash",
                    g.token,
                    g.what
                );
            }
            self.grants.extend(log.grants.iter().cloned());
        }
        let mut store_conn = self.store.client();
        let (mut zombie_writes, mut zombie_rejected) = (0, 0);
        for log in &pool_logs {
            if let Some((key, token)) = &log.holding {
                zombie_writes += 1;
                if !self.store.write(&mut store_conn, key, *token, &log.owner) {
                    zombie_rejected += 1;
                }
                self.ops.fetch_add(1, Relaxed);
            }
        }
        let (writes, rejected) = pool_logs
            .iter()
            .chain(&after)
            .fold((0, 0), |(w, r), l| (w + l.writes, r + l.rejected));
        eprintln!(
            "cycle {cycle}: {} grants after the restart; {writes} writes by holders ({rejected} rejected); {zombie_writes} writes by holders from before the crash ({zombie_rejected} rejected)",
            after.iter().map(|l| l.grants.len()).sum::<usize>()
        );
        out.operations = self.ops.load(Relaxed);
    }
}

/// Joins a client thread, re-raising its panic with its own message.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> T {
    h.join()
        .unwrap_or_else(|payload| std::panic::resume_unwind(payload))
}

/// `LOCK.ACQUIRE` as an [`Op`]; panics on anything but a grant, nil or an
/// I/O error.
fn acquire_op(conn: &mut Connection, key: &str, owner: &str, ttl: u64) -> (Op, Option<Grant>) {
    let sent = now_ms();
    let reply = try_req(conn, &["LOCK.ACQUIRE", key, owner, &ttl.to_string()]);
    let received = now_ms();
    let mut op = Op {
        kind: Kind::Acquire,
        ttl,
        sent,
        received: None,
        token: None,
    };
    let Ok(reply) = reply else {
        return (op, None);
    };
    op.received = Some(received);
    let grant = grant_of(&reply).map(|(token, granted)| {
        assert_eq!(granted, ttl, "granted TTL of {key}");
        op.token = Some(token);
        Grant {
            token,
            sent_ms: sent,
            received_ms: received,
            what: format!("{key} by {owner}"),
        }
    });
    (op, grant)
}

/// A client keeping its own lock `key`: acquire, extend twice, release,
/// again, with short pauses, until the server dies (or `stop`). Returns its
/// commands.
fn held_client(
    server: &Server,
    key: &str,
    owner: &str,
    ops: &AtomicU64,
    stop: &AtomicBool,
) -> Vec<Op> {
    let mut conn = server.client();
    let mut log: Vec<Op> = Vec::new();
    let mut held: Option<i64> = None; // extensions so far
    let ttl = HELD_TTL_MS.to_string();
    while !stop.load(Relaxed) {
        let kind = match held {
            None => Kind::Acquire,
            Some(e) if e < 2 => Kind::Extend,
            Some(_) => Kind::Release,
        };
        if kind == Kind::Acquire {
            let (op, grant) = acquire_op(&mut conn, key, owner, HELD_TTL_MS);
            let done = op.received.is_none();
            if !done {
                assert!(grant.is_some(), "{owner}: its own lock {key} is taken");
                ops.fetch_add(1, Relaxed);
                held = Some(0);
            }
            log.push(op);
            if done {
                break;
            }
        } else {
            let sent = now_ms();
            let reply = match kind {
                Kind::Extend => try_req(&mut conn, &["LOCK.EXTEND", key, owner, &ttl]),
                _ => try_req(&mut conn, &["LOCK.RELEASE", key, owner]),
            };
            let received = now_ms();
            let Ok(reply) = reply else {
                log.push(Op {
                    kind,
                    ttl: HELD_TTL_MS,
                    sent,
                    received: None,
                    token: None,
                });
                break;
            };
            ops.fetch_add(1, Relaxed);
            let expected = if kind == Kind::Extend {
                Value::Int(HELD_TTL_MS as i64)
            } else {
                Value::Int(1)
            };
            assert_eq!(reply, expected, "{owner}: {kind:?} of {key}");
            held = match (kind, held) {
                (Kind::Extend, Some(e)) => Some(e + 1),
                _ => None,
            };
            log.push(Op {
                kind,
                ttl: HELD_TTL_MS,
                sent,
                received: Some(received),
                token: None,
            });
        }
        sleep_ms(if held.is_some() { 20 } else { 2 });
    }
    log
}

/// A client competing for the pool keys: acquire (nil: try again), write,
/// maybe extend, write, release; until the server dies or `stop`.
fn pool_client(
    server: &Server,
    store: &FencedStore,
    owner: &str,
    seed: u64,
    ops: &AtomicU64,
    stop: &AtomicBool,
) -> PoolLog {
    let mut conn = server.client();
    let mut store_conn = store.client();
    let mut rng = Rng::new(seed + 1);
    let mut log = PoolLog {
        owner: owner.to_string(),
        ..PoolLog::default()
    };
    let ttl = POOL_TTL_MS.to_string();
    let mut write = |log: &mut PoolLog, key: &str, token: u64| {
        log.writes += 1;
        if !store.write(&mut store_conn, key, token, owner) {
            log.rejected += 1;
        }
        ops.fetch_add(1, Relaxed);
    };
    'work: while !stop.load(Relaxed) {
        let key = pool_key(rng.below(POOL_KEYS));
        let (op, grant) = acquire_op(&mut conn, &key, owner, POOL_TTL_MS);
        if op.received.is_none() {
            break;
        }
        ops.fetch_add(1, Relaxed);
        let Some(grant) = grant else {
            sleep_ms(2);
            continue;
        };
        let token = grant.token;
        log.grants.push(grant);
        log.holding = Some((key.clone(), token));
        write(&mut log, &key, token);
        sleep_ms(rng.below(4));
        if rng.below(2) == 0 {
            let Ok(reply) = try_req(&mut conn, &["LOCK.EXTEND", &key, owner, &ttl]) else {
                break 'work;
            };
            ops.fetch_add(1, Relaxed);
            if reply != Value::Int(POOL_TTL_MS as i64) {
                // The lease ran out under a very slow machine: legitimate.
                log.holding = None;
                continue;
            }
            write(&mut log, &key, token);
        }
        let Ok(reply) = try_req(&mut conn, &["LOCK.RELEASE", &key, owner]) else {
            break 'work;
        };
        ops.fetch_add(1, Relaxed);
        log.holding = None;
        match reply {
            Value::Int(1) => {}
            other if matches!(err_code(&other).as_deref(), Some("NOTHELD" | "NOTOWNER")) => {}
            other => panic!("{owner}: LOCK.RELEASE {key}: {}", render(&other)),
        }
    }
    log
}
