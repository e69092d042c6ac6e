//! Scenario 7: soak. 64 clients on 8 keys for a bounded time (20 s; 180 s
//! with `LOCKWARDEN_FAULTS_LONG=1`) and a bounded number of operations:
//! 56 threads with their own connections and 8 `lw-client` processes that
//! are killed (-9) at random moments (while idle, holding a lock, or blocked
//! in `WAIT`) and replaced. Each client mixes acquire, acquire `WAIT`,
//! `SESSION` locks, extend, release (with and without `FENCE`) and
//! abandoned leases; every holder writes to the fenced store with its token
//! right after each grant and extension.
//!
//! Checks: every client finishes, and every command gets its reply within
//! 10 s (the longest `WAIT` is 0.8 s): no deadlock, no lost reply;
//! `INFO lockwarden` waiters back to 0; the oracle is clean on every key;
//! the server is alive with no panic or internal error in its logs; once
//! every lease is gone (`locks_held` 0, no keys) `used_memory` is back
//! within a small margin of the baseline. The baseline is taken after a
//! short warm-up run of the same workload, so that one-time allocations
//! (per-command latency histograms, table capacities) are in it and what
//! remains is what the soak itself leaked.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use lockwarden_tests::*;

use super::common_b::*;

const KEYS: usize = 8;
const THREAD_CLIENTS: usize = 56;
const PROCESS_CLIENTS: usize = 8;
const CLIENTS: usize = THREAD_CLIENTS + PROCESS_CLIENTS;
/// Longest time any command may take to reply (`WAIT` is at most 800 ms).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How far `used_memory` may end above the baseline: allocator and table
/// slack. Thousands of grants, handoffs, timeouts, sessions and killed
/// clients leaking even a few dozen bytes each would exceed it.
const MEMORY_MARGIN: i64 = 64 * 1024;

#[derive(Default)]
struct Counters {
    acquires: AtomicU64,
    grants: AtomicU64,
    waits: AtomicU64,
    wait_nils: AtomicU64,
    extends: AtomicU64,
    releases: AtomicU64,
    lost: AtomicU64,
    abandons: AtomicU64,
    writes: AtomicU64,
    kills: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Counters {
    fn operations(&self) -> u64 {
        [&self.acquires, &self.extends, &self.releases, &self.writes]
            .iter()
            .map(|c| get(c))
            .sum()
    }

    fn summary(&self) -> String {
        format!(
            "{} acquires ({} WAIT, {} timed out), {} grants, {} extends, {} releases, {} leases lost, {} abandoned, {} writes, {} kills",
            get(&self.acquires),
            get(&self.waits),
            get(&self.wait_nils),
            get(&self.grants),
            get(&self.extends),
            get(&self.releases),
            get(&self.lost),
            get(&self.abandons),
            get(&self.writes),
            get(&self.kills),
        )
    }
}

/// A client's connection: in this process, or an `lw-client` process.
enum Transport {
    Conn(redis::Connection),
    Proc(ClientProcess),
}

impl Transport {
    /// Runs one command; `Ok(rendered reply)` (server errors included as
    /// `(error) ...`), `Err` for I/O failures and missing replies.
    fn exec(&mut self, args: &[&str]) -> Result<String, String> {
        let line = args.join(" ");
        match self {
            Transport::Conn(c) => match call(c, args) {
                Reply::Io(e) if e.contains("os error 11") || e.contains("timed out") => {
                    Err(format!("no reply to {line} within {REPLY_TIMEOUT:?}"))
                }
                Reply::Io(e) => Err(format!("{line}: {e}")),
                r => Ok(r.text()),
            },
            Transport::Proc(p) => {
                p.send(&line);
                match p.next_line(REPLY_TIMEOUT) {
                    Some(reply) if reply.starts_with("(error) io:") => {
                        Err(format!("{line}: {reply}"))
                    }
                    Some(reply) => Ok(reply),
                    None => Err(format!(
                        "no reply to {line} within {REPLY_TIMEOUT:?} (lw-client stderr: {:?})",
                        p.stderr()
                    )),
                }
            }
        }
    }
}

struct Client<'a> {
    id: usize,
    server: &'a Server,
    store: &'a FencedStore,
    keys: &'a [String],
    counters: &'a Counters,
    rng: Rng,
    deadline: Instant,
    max_ops: u64,
}

/// An extend or release refused because the lease ran out meanwhile.
fn lease_lost(reply: &str) -> bool {
    reply.starts_with("(error) NOTHELD") || reply.starts_with("(error) NOTOWNER")
}

impl Client<'_> {
    /// A fresh connection (or process) and its server-side client id.
    fn connect(&self) -> Result<(Transport, String), String> {
        let mut t = if self.id >= THREAD_CLIENTS {
            Transport::Proc(LwClient::new(self.server.port()).interactive().spawn())
        } else {
            let c = self.server.client();
            c.set_read_timeout(Some(REPLY_TIMEOUT))
                .map_err(|e| e.to_string())?;
            Transport::Conn(c)
        };
        let id = t.exec(&["CLIENT", "ID"])?;
        Ok((t, id))
    }

    /// What the server says about client `cid`, for a command that got no
    /// reply: still blocked (`flags=b`), or done as far as the server knows
    /// (`flags=N`: the reply was lost).
    fn server_view(&self, cid: &str) -> String {
        let list = match self.server.try_cmd(&["CLIENT", "LIST", "ID", cid]) {
            Ok(v) => render(&v),
            Err(e) => return format!("CLIENT LIST failed: {e}"),
        };
        let field = |name: &str| {
            list.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .unwrap_or("?")
                .trim_end_matches("\\n")
                .to_string()
        };
        let flags = field("flags=");
        let verdict = match flags.as_str() {
            "N" => "not blocked: the server considers the command done, its reply was lost",
            f if f.contains('b') => "still blocked",
            _ => "",
        };
        format!(
            "server side: client {cid} flags={flags} cmd={} idle={}s ({verdict})",
            field("cmd="),
            field("idle=")
        )
    }

    fn run(mut self) -> Result<(), String> {
        let is_proc = self.id >= THREAD_CLIENTS;
        let mut generation = 0u64;
        let (mut t, mut cid) = self.connect()?;
        let mut owner = format!("c{}-{generation}", self.id);
        let mut sc = self.store.client();
        let c = self.counters;
        let mut holding: Option<(String, u64, u64)> = None; // key, token, ttl
        let mut ops = 0u64;
        // Runs a command; a missing reply is reported with the server's
        // view of the client.
        macro_rules! exec {
            ($args:expr) => {
                t.exec($args)
                    .map_err(|e| format!("{e}; {}", self.server_view(&cid)))?
            };
        }
        while Instant::now() < self.deadline && ops < self.max_ops {
            ops += 1;
            // kill -9 of a client process, at a random moment.
            if is_proc && self.rng.chance(2) {
                if let Transport::Proc(p) = &mut t {
                    p.kill();
                }
                bump(&c.kills);
                holding = None;
                generation += 1;
                owner = format!("c{}-{generation}", self.id);
                (t, cid) = self.connect()?;
                continue;
            }
            let Some((key, token, ttl)) = holding.take() else {
                let key = self.rng.pick(self.keys).clone();
                let ttl = self.rng.range(200, 1500);
                let ttl_s = ttl.to_string();
                let wait = self
                    .rng
                    .chance(35)
                    .then(|| self.rng.range(10, 800).to_string());
                let mut args = vec!["LOCK.ACQUIRE", &key, &owner, &ttl_s];
                if let Some(w) = &wait {
                    args.extend(["WAIT", w]);
                }
                if self.rng.chance(20) {
                    args.push("SESSION");
                }
                bump(&c.acquires);
                if wait.is_some() {
                    bump(&c.waits);
                }
                if is_proc && wait.is_some() && self.rng.chance(10) {
                    // Killed while (possibly) blocked, or just granted.
                    if let Transport::Proc(p) = &mut t {
                        p.send(&args.join(" "));
                        sleep_ms(self.rng.below(50));
                        p.kill();
                    }
                    bump(&c.kills);
                    generation += 1;
                    owner = format!("c{}-{generation}", self.id);
                    (t, cid) = self.connect()?;
                    continue;
                }
                let reply = exec!(&args);
                match parse_grant_line(&reply) {
                    Some(Some((token, granted))) => {
                        if granted > ttl {
                            return Err(format!("{args:?} granted {granted} ms"));
                        }
                        bump(&c.grants);
                        self.store.write(&mut sc, &key, token, &owner);
                        bump(&c.writes);
                        holding = Some((key, token, ttl));
                    }
                    Some(None) => {
                        if wait.is_some() {
                            bump(&c.wait_nils);
                        }
                    }
                    None => return Err(format!("{args:?} replied {reply}")),
                }
                continue;
            };
            let fence = token.to_string();
            let with_fence = self.rng.chance(50);
            let roll = self.rng.below(100);
            if roll < 30 {
                sleep_ms(self.rng.below(20));
                let ttl_s = ttl.to_string();
                let mut args = vec!["LOCK.EXTEND", &key, &owner, &ttl_s];
                if with_fence {
                    args.extend(["FENCE", &fence]);
                }
                bump(&c.extends);
                let reply = exec!(&args);
                if reply == ttl_s {
                    self.store.write(&mut sc, &key, token, &owner);
                    bump(&c.writes);
                    holding = Some((key, token, ttl));
                } else if lease_lost(&reply) {
                    bump(&c.lost);
                } else {
                    return Err(format!("{args:?} replied {reply}"));
                }
            } else if roll < 92 {
                sleep_ms(self.rng.below(10));
                let mut args = vec!["LOCK.RELEASE", &key, &owner];
                if with_fence {
                    args.extend(["FENCE", &fence]);
                }
                bump(&c.releases);
                let reply = exec!(&args);
                if lease_lost(&reply) {
                    bump(&c.lost);
                } else if reply != "1" {
                    return Err(format!("{args:?} replied {reply}"));
                }
            } else {
                // Walk away: the lease runs out (or a SESSION lock goes
                // with the connection).
                bump(&c.abandons);
            }
        }
        if let Some((key, _, _)) = holding {
            bump(&c.releases);
            let reply = exec!(&["LOCK.RELEASE", &key, &owner]);
            if reply != "1" && !lease_lost(&reply) {
                return Err(format!("final release of {key}: {reply}"));
            }
        }
        if let Transport::Proc(mut p) = t {
            p.close_stdin();
            p.wait_success();
        }
        Ok(())
    }
}

/// Runs the 64 clients until `duration` has passed (or each did `max_ops`
/// operations) and waits for all of them, at most 60 s past the deadline.
/// Returns the failures, or panics if a client never finishes.
fn run_clients(
    server: &Arc<Server>,
    store: &Arc<FencedStore>,
    keys: &Arc<Vec<String>>,
    counters: &Arc<Counters>,
    rng: &mut Rng,
    duration: Duration,
    max_ops: u64,
) -> Vec<String> {
    let deadline = Instant::now() + duration;
    let (done_tx, done_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    for id in 0..CLIENTS {
        let (server, store, keys, counters) = (
            Arc::clone(server),
            Arc::clone(store),
            Arc::clone(keys),
            Arc::clone(counters),
        );
        let rng = rng.fork(id as u64);
        let done = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("soak-{id}"))
            .spawn(move || {
                let client = Client {
                    id,
                    server: &server,
                    store: &store,
                    keys: &keys,
                    counters: &counters,
                    rng,
                    deadline,
                    max_ops,
                };
                let result = catch_unwind(AssertUnwindSafe(|| client.run())).unwrap_or_else(|p| {
                    Err(p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "panic".into()))
                });
                let _ = done.send((id, result));
            })
            .expect("spawn a soak client");
    }
    drop(done_tx);
    let mut finished = [false; CLIENTS];
    let mut failures = Vec::new();
    let give_up = deadline + Duration::from_secs(60);
    while finished.iter().any(|f| !f) {
        let left = give_up.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok((id, result)) => {
                finished[id] = true;
                if let Err(e) = result {
                    failures.push(format!("client {id}: {e}"));
                }
            }
            Err(_) => {
                let stuck: Vec<usize> = (0..CLIENTS).filter(|&i| !finished[i]).collect();
                panic!(
                    "clients {stuck:?} did not finish 60 s after the deadline; waiters {}; failures {failures:#?}",
                    lw_stat(server, "waiters")
                );
            }
        }
    }
    failures
}

/// Panics if any client failed: the first line names the first failure
/// (it is what `FAULTS.md` shows), the rest lists them all.
fn check_clients(stage: &str, failures: &[String], counters: &Counters) {
    if let Some(first) = failures.first() {
        panic!(
            "{stage}: {} of {CLIENTS} clients failed; first: {}\nall failures: {failures:#?}\n{}",
            failures.len(),
            first.replace('\n', " / "),
            counters.summary()
        );
    }
}

/// Waits until no lease is left (the longest is 1.5 s) and no client
/// waits.
fn wait_all_gone(server: &Server) {
    wait_until(
        "no client is blocked any more",
        Duration::from_secs(10),
        || lw_stat(server, "waiters") == 0,
    );
    wait_until("every lock is gone", Duration::from_secs(15), || {
        lw_stat(server, "locks_held") == 0 && server.cmd_text(&["DBSIZE"]) == "0"
    });
}

for_each_flavor! {
    fn many_clients_churn(flavor: Flavor) {
        let secs = scaled(20, 180);
        scenario(
            "7 soak",
            flavor,
            &format!("{CLIENTS} clients ({THREAD_CLIENTS} threads, {PROCESS_CLIENTS} lw-client processes killed -9 at random), {KEYS} keys, {secs} s"),
            |tally| {
                let server = Arc::new(Server::start(flavor));
                let store = Arc::new(FencedStore::start(flavor, true));
                let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("soak:{i}")).collect());
                let mut rng = Rng::new(seed("7 soak", 0x50a6_0007));

                // Warm-up: the same workload for 2 s, then the baseline.
                let warm = Arc::new(Counters::default());
                let failures = run_clients(&server, &store, &keys, &warm, &mut rng, Duration::from_secs(2), 1000);
                tally.operations = warm.operations();
                check_clients("warm-up", &failures, &warm);
                wait_all_gone(&server);
                assert_healthy(&server, "after the warm-up");
                sleep_ms(200);
                let baseline = used_memory(&server);

                let counters = Arc::new(Counters::default());
                let started = Instant::now();
                let failures = run_clients(
                    &server,
                    &store,
                    &keys,
                    &counters,
                    &mut rng,
                    Duration::from_secs(secs),
                    scaled(20_000, 1_000_000),
                );
                let ran = started.elapsed();
                tally.operations = warm.operations() + counters.operations();
                check_clients("soak", &failures, &counters);
                wait_all_gone(&server);
                assert_healthy(&server, "after the soak");

                let mut rejected = 0;
                for key in keys.iter() {
                    let v = store.verdict(key);
                    tally.anomalies_fenced += v.anomalies();
                    rejected += v.rejected;
                    assert!(v.clean(), "{key}: {v}");
                }

                let settled = poll(Duration::from_secs(10), || {
                    let m = used_memory(&server);
                    (m <= baseline + MEMORY_MARGIN).then_some(m)
                });
                let end = used_memory(&server);
                let st = lw_stats(&server);
                let summary = format!(
                    "ran {ran:?}: {}; {rejected} writes rejected as stale; server: handoffs {}, wait_timeouts {}, session_releases {}, expired_while_held {}; used_memory {baseline} -> {end}",
                    counters.summary(),
                    st["handoffs"],
                    st["wait_timeouts"],
                    st["session_releases"],
                    st["expired_while_held"],
                );
                eprintln!("7 soak ({flavor}): {summary}");
                if settled.is_none() {
                    panic!(
                        "used_memory {end} is {} bytes above the baseline {baseline} (margin {MEMORY_MARGIN}); {summary}\nMEMORY STATS: {}",
                        end - baseline,
                        server.cmd_text(&["MEMORY", "STATS"])
                    );
                }
                assert!(
                    get(&counters.kills) > 0 && st["handoffs"] > 0 && get(&counters.grants) > 0,
                    "the mix did not happen: {summary}"
                );
                assert_healthy(&server, "at the end of the soak");
            },
        );
    }
}
