//! Scenario 9: random histories, checked differentially. A seeded generator
//! drives a primary (AOF on, `aof-use-rdb-preamble no`) that has a replica
//! through thousands of commands: lock commands (`WAIT` waiters served by
//! release, expiry and deletion; `SESSION` locks of connections that are then
//! closed; `FENCE`d releases and extensions, right and stale; TTLs that a
//! policy clamps and that the server refuses), the same inside `MULTI`/`EXEC`
//! and Lua, and what else reaches lock keys: `DEL`, `UNLINK`, `RENAME`,
//! `COPY` (refused for locks), `DUMP`/`RESTORE`, `MOVE`, `SWAPDB`, `PEXPIRE`,
//! `PERSIST`, overwrites with a string, `FLUSHDB`, policy unload/reload and
//! AOF rewrites in the middle of it all. The seed fixes every random choice;
//! the replies, and so some of what follows them, depend on timing.
//!
//! The history stops at checkpoints. Each lets the short leases and expiries
//! lapse, freezes active expiry and checks that the replica holds exactly the
//! primary's state: `DEBUG DIGEST`, and per key of both databases its type,
//! `DEBUG DIGEST-VALUE`, `PEXPIRETIME` and lease (`LOCK.INFO` owner, token,
//! acquisition time, extensions, session flag), the policies and the token
//! high-water mark. On the primary, every lock key whose expiry no
//! `PERSIST`, `PEXPIRE` or `RESTORE` moved expires with its lease (`PTTL`
//! is `LOCK.INFO`'s `ttl`). In turn, the checkpoints then reload a node: the primary
//! from its RDB (`DEBUG RELOAD`), from its AOF as it is and right after a
//! rewrite (`DEBUG LOADAOF`), the replica from its RDB and its AOF; the
//! reloaded node must hold exactly what it held before. The last checkpoint
//! adds a new replica, whose full sync must reproduce the primary.
//!
//! Throughout, every reply must have its documented shape (a grant, nil, an
//! integer, or one of the command's error codes), every waiter must get its
//! reply, and the tokens obey the fencing rule, counted as anomalies: a grant
//! returns either a token seen before *with the same owner* (a retry of a
//! lease, perhaps moved or restored from a dump), or a token larger than
//! every token any client had seen when it sent the command.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use lockwarden_tests::locks::{PolicySpec, rewrite_aof, specs, wait_persistence_idle};
use lockwarden_tests::redis::{Connection, RedisError, Value};
use lockwarden_tests::*;

use super::common_b::*;

/// The lock keys. `p:*` are under a `max-ttl` policy that clamps long TTLs.
const KEYS: [&str; 6] = ["h:a", "h:b", "h:c", "h:d", "p:a", "p:b"];
/// Owners of the synchronous clients, and of the waiters (never shared, so a
/// waiter's grant cannot look like a retry of a synchronous client's lease;
/// one per waiter in flight).
const OWNERS: [&str; 4] = ["svc-1", "svc-2", "svc-3", "svc-4"];
const WAITER_OWNERS: [&str; MAX_WAITERS] = ["waiter-1", "waiter-2"];
/// Synchronous client connections (each its own `SESSION`).
const CLIENTS: usize = 3;
/// Waiters in flight at once.
const MAX_WAITERS: usize = 2;
/// TTLs and expiries are short (they lapse within a checkpoint's pause) or
/// long (they outlast the whole scenario), never in between: at a checkpoint
/// no key is about to expire, so reloading cannot drop one.
const SHORT_MS: (u64, u64) = (20, 400);
const LONG_MS: (u64, u64) = (300_000, 600_000);
/// The server's maximum TTL; some requests ask for more (`TTLMAX`, or the
/// policy's clamp on `p:*`).
const MAX_TTL_MS: u64 = 600_000;
const TOO_LONG_MS: u64 = 700_000;
/// The `max-ttl` policy's ceiling on `p:*`.
const POLICY_CEILING_MS: u64 = 450_000;
/// A checkpoint's pause: longer than any short lease, expiry or `WAIT`.
const SETTLE_MS: u64 = 450;
/// The longest `WAIT`.
const MAX_WAIT_MS: u64 = 300;
/// How long a command may take to reply (beyond its own `WAIT`).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// No round starts after this: the long leases must outlast the history.
const DEADLINE: Duration = Duration::from_millis(LONG_MS.0 - 60_000);
/// Events remembered for failure messages.
const TRAIL_LEN: usize = 400;
/// How far `PTTL` and `LOCK.INFO`'s `ttl`, read one after the other, may
/// differ.
const TTL_SKEW_MS: i64 = 50;

for_each_flavor! {
    /// Seeded random histories: the replica, RDB and AOF reloads (no RDB
    /// preamble) and a full sync reproduce the primary exactly; tokens obey
    /// the fencing rule; every reply has its documented shape.
    fn random_history(flavor: Flavor) {
        let checkpoints = scaled(8, 40);
        let steps = scaled(400, 800);
        scenario(
            "9 random history",
            flavor,
            &format!(
                "seeded random histories ({checkpoints} x {steps} commands: lock commands with WAIT/SESSION/FENCE, MULTI, Lua, DEL/UNLINK/RENAME/COPY/RESTORE/MOVE/SWAPDB/PEXPIRE/PERSIST/FLUSHDB, overwrites, disconnects, policy reloads, AOF rewrites); at each checkpoint the replica, DEBUG RELOAD / DEBUG LOADAOF (no RDB preamble) of either node and finally a new replica's full sync must equal the primary"
            ),
            |out| {
                let pair = ReplicaPair::start(flavor, |b| {
                    b.arg("appendonly", "yes")
                        .arg("aof-use-rdb-preamble", "no")
                        .module_arg("max-ttl-ms", MAX_TTL_MS.to_string())
                });
                let started = Instant::now();
                let mut history = History::new(&pair.primary, seed("random history", 9009));
                history.toggle_policy();
                let reloads = Reload::ALL;
                for n in 0..checkpoints {
                    if started.elapsed() > DEADLINE {
                        // A slow machine: stop before the long leases end.
                        eprintln!("random history [{flavor}]: stopped after {n} checkpoints");
                        assert!(n >= Reload::ALL.len(), "not even one round of every reload");
                        break;
                    }
                    for _ in 0..steps {
                        history.step();
                    }
                    let reload = reloads[n % reloads.len()];
                    history.checkpoint(&pair, reload);
                    out.operations = history.ops;
                    out.anomalies_fenced = history.tokens.anomalies.len();
                }
                history.full_sync(flavor);
                eprintln!(
                    "random history [{flavor}]: {} operations, {} fresh grants, {} retries, replies {:?}",
                    history.ops, history.tokens.fresh, history.tokens.retries, history.outcomes
                );
                assert!(
                    history.tokens.anomalies.is_empty(),
                    "token anomalies: {:#?}",
                    history.tokens.anomalies
                );
                for (what, n) in [
                    ("grant", "ACQUIRE grant"),
                    ("waiter grant", "WAIT grant"),
                    ("release", "RELEASE 1"),
                    ("extend", "EXTEND ttl"),
                    ("stale fence", "NOTOWNER"),
                    ("rename", "RENAME ok"),
                    ("restore", "RESTORE ok"),
                    ("move", "MOVE ok"),
                    ("persist", "PERSIST ok"),
                    ("pexpire", "PEXPIRE ok"),
                    ("lock whose expiry was checked", "expiry checked"),
                ] {
                    assert!(
                        history.outcomes.get(n).copied().unwrap_or(0) > 0,
                        "the history never produced a {what} ({n}): {:?}",
                        history.outcomes
                    );
                }
                assert_healthy(&pair.primary, "primary");
                assert_healthy(&pair.replica, "replica");
            },
        );
    }
}

/// What a checkpoint reloads after comparing the replica with the primary.
#[derive(Clone, Copy, Debug)]
enum Reload {
    Nothing,
    PrimaryRdb,
    PrimaryAofRewritten,
    ReplicaRdb,
    PrimaryAof,
    ReplicaAof,
}

impl Reload {
    const ALL: [Reload; 6] = [
        Reload::Nothing,
        Reload::PrimaryRdb,
        Reload::PrimaryAofRewritten,
        Reload::ReplicaRdb,
        Reload::PrimaryAof,
        Reload::ReplicaAof,
    ];
}

/// The fencing-rule oracle over every grant any client received.
#[derive(Debug, Default)]
struct Tokens {
    owner_of: HashMap<u64, String>,
    /// The largest token seen so far.
    max: u64,
    fresh: u64,
    retries: u64,
    anomalies: Vec<String>,
}

impl Tokens {
    /// `token` granted to `owner` by a command sent when the largest token
    /// seen was `max_at_send`.
    fn grant(&mut self, token: u64, owner: &str, max_at_send: u64, what: &str) {
        match self.owner_of.get(&token) {
            Some(o) if o == owner => self.retries += 1,
            Some(o) => self.anomalies.push(format!(
                "{what}: token {token} granted to {owner}, and earlier to {o}"
            )),
            None => {
                if token <= max_at_send {
                    self.anomalies.push(format!(
                        "{what}: new token {token} is not above {max_at_send}, the largest seen when the command was sent"
                    ));
                }
                self.owner_of.insert(token, owner.to_string());
                self.fresh += 1;
            }
        }
        self.max = self.max.max(token);
    }

    /// A lease seen by `LOCK.INFO`: a granted token belongs to its grantee.
    fn seen(&mut self, token: u64, owner: &str, what: &str) {
        if let Some(o) = self.owner_of.get(&token)
            && o != owner
        {
            self.anomalies.push(format!(
                "{what}: LOCK.INFO shows token {token} held by {owner}, granted to {o}"
            ));
        }
    }
}

/// A lock command whose reply is checked against its documented shapes.
#[derive(Clone, Copy, Debug)]
enum LockCmd {
    Acquire,
    Release,
    Extend,
}

impl LockCmd {
    /// The error codes the command may answer in these histories.
    fn codes(self) -> &'static [&'static str] {
        match self {
            LockCmd::Acquire => &["TTLMAX", "WRONGTYPE"],
            LockCmd::Release => &["NOTHELD", "NOTOWNER", "WRONGTYPE"],
            LockCmd::Extend => &["NOTHELD", "NOTOWNER", "TTLMAX", "WRONGTYPE"],
        }
    }
}

/// A `LOCK.ACQUIRE ... WAIT` sent and not yet answered.
struct Waiter {
    conn: Connection,
    key: &'static str,
    owner: &'static str,
    max_at_send: u64,
    /// Its reply is due by then (the `WAIT` timeout has passed).
    due: Instant,
}

struct History<'a> {
    primary: &'a Server,
    rng: Rng,
    conns: Vec<Connection>,
    waiters: Vec<Waiter>,
    tokens: Tokens,
    /// The last token and owner seen per key, for `FENCE` and for
    /// releases and extensions that mostly come from the holder.
    last: HashMap<&'static str, (u64, String)>,
    /// Keys of database 0 whose expiry may differ from their lease's
    /// deadline (`PERSIST`, `PEXPIRE`, `RESTORE`, or unknown) until their
    /// next grant or extension.
    expiry_moved: HashSet<&'static str>,
    dump: Option<Vec<u8>>,
    policy_loaded: bool,
    policy_wasm: Vec<u8>,
    /// Reply kinds counted (`ACQUIRE grant`, `NOTOWNER`, ...).
    outcomes: BTreeMap<String, u64>,
    /// The last [`TRAIL_LEN`] commands and replies, for failure messages.
    trail: VecDeque<String>,
    ops: u64,
}

impl<'a> History<'a> {
    fn new(primary: &'a Server, seed: u64) -> Self {
        let path = policy_path("max-ttl");
        let policy_wasm = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{} ({e}): build it with `make policies`", path.display()));
        History {
            primary,
            rng: Rng::new(seed),
            conns: (0..CLIENTS).map(|_| primary.client()).collect(),
            waiters: Vec::new(),
            tokens: Tokens::default(),
            last: HashMap::new(),
            expiry_moved: HashSet::new(),
            dump: None,
            policy_loaded: false,
            policy_wasm,
            outcomes: BTreeMap::new(),
            trail: VecDeque::new(),
            ops: 0,
        }
    }

    /// Remembers one event for failure messages.
    fn note(&mut self, event: String) {
        if self.trail.len() == TRAIL_LEN {
            self.trail.pop_front();
        }
        self.trail.push_back(format!("op {}: {event}", self.ops));
    }

    /// The remembered events that name `key` or touch every key.
    fn trail_of(&self, key: &str) -> Vec<&String> {
        self.trail
            .iter()
            .filter(|e| e.contains(key) || e.contains("SWAPDB") || e.contains("FLUSHDB"))
            .collect()
    }

    fn count(&mut self, outcome: &str) {
        *self.outcomes.entry(outcome.to_string()).or_default() += 1;
    }

    fn key(&mut self) -> &'static str {
        KEYS[self.rng.index(KEYS.len())]
    }

    fn ttl(&mut self) -> u64 {
        match self.rng.below(20) {
            0 => TOO_LONG_MS,
            1..=9 => self.rng.range(SHORT_MS.0, SHORT_MS.1),
            _ => self.rng.range(LONG_MS.0, LONG_MS.1),
        }
    }

    /// An owner for a release or extension of `key`: mostly its last
    /// holder seen.
    fn owner_for(&mut self, key: &str) -> String {
        // Both drawn whatever `last` holds, so that the seed alone fixes
        // the random choices.
        let holder = self.rng.chance(70);
        let other = self.rng.pick(&OWNERS).to_string();
        match self.last.get(key) {
            Some((_, owner)) if holder => owner.clone(),
            _ => other,
        }
    }

    /// A token for `FENCE`: the key's last one, or a stale one.
    fn fence_token(&mut self, key: &str) -> u64 {
        let last = self.last.get(key).map_or(1, |(t, _)| *t);
        let (current, back) = (self.rng.chance(60), 1 + self.rng.below(3));
        if current {
            last
        } else {
            last.saturating_sub(back).max(1)
        }
    }

    /// One random command (and the waiters whose replies are due).
    fn step(&mut self) {
        self.collect_due_waiters();
        self.ops += 1;
        let c = self.rng.index(CLIENTS);
        match self.rng.below(1000) {
            0..=279 => {
                let args = self.acquire_args();
                let reply = self.run(c, &args);
                self.lock_reply(LockCmd::Acquire, &args, &reply, self.tokens.max);
            }
            280..=419 => {
                let args = self.release_args();
                let reply = self.run(c, &args);
                self.lock_reply(LockCmd::Release, &args, &reply, 0);
            }
            420..=549 => {
                let args = self.extend_args();
                let reply = self.run(c, &args);
                self.lock_reply(LockCmd::Extend, &args, &reply, 0);
            }
            550..=619 => self.send_waiter(),
            620..=659 => self.transaction(c),
            660..=689 => self.script(c),
            690..=719 | 885..=894 => {
                let key = self.key();
                let args = ["LOCK.INFO", key];
                let reply = self.run(c, &args);
                self.info_reply(key, &reply);
            }
            720..=759 => {
                let del = *self.rng.pick(&["DEL", "UNLINK"]);
                let key = self.key();
                self.run(c, &[del, key]);
                self.expiry_moved.remove(key);
            }
            760..=789 => {
                let ms = if self.rng.chance(50) {
                    self.rng.range(SHORT_MS.0, SHORT_MS.1)
                } else {
                    self.rng.range(LONG_MS.0, LONG_MS.1)
                };
                let key = self.key();
                self.run(c, &["PEXPIRE", key, &ms.to_string()]);
                self.expiry_moved.insert(key);
            }
            790..=799 => {
                let key = self.key();
                self.run(c, &["PERSIST", key]);
                self.expiry_moved.insert(key);
            }
            800..=829 => {
                let (from, to) = (self.key(), self.key());
                if !self.run(c, &["RENAME", from, to]).is_error() {
                    // The value goes with its expiry.
                    if self.expiry_moved.remove(from) {
                        self.expiry_moved.insert(to);
                    } else {
                        self.expiry_moved.remove(to);
                    }
                }
            }
            830..=849 => {
                let (from, to) = (self.key(), self.key());
                self.run(c, &["COPY", from, to, "REPLACE"]);
            }
            850..=869 => self.dump_restore(c),
            870..=876 => {
                let key = self.key();
                self.run(c, &["SET", key, "not-a-lock"]);
            }
            877..=884 => {
                let key = self.key();
                self.run(c, &["MOVE", key, "1"]);
            }
            895..=897 => {
                self.run(c, &["SWAPDB", "0", "1"]);
                // Database 1's keys, whose history is not followed.
                self.expiry_moved.extend(KEYS);
            }
            898 => {
                self.run(c, &["FLUSHDB"]);
                self.expiry_moved.clear();
            }
            899..=904 => self.toggle_policy(),
            905..=914 => {
                // May find one running: any reply but an I/O error will do.
                self.run(c, &["BGREWRITEAOF"]);
            }
            915..=944 => {
                // The connection closes: its SESSION locks are released.
                self.conns[c] = self.primary.client();
                self.note(format!("c{c} disconnected"));
                self.count("disconnect");
            }
            _ => sleep_ms(self.rng.below(60)),
        }
    }

    fn acquire_args(&mut self) -> Vec<String> {
        let key = self.key();
        let owner = *self.rng.pick(&OWNERS);
        let mut args = vec![
            "LOCK.ACQUIRE".to_string(),
            key.to_string(),
            owner.to_string(),
            self.ttl().to_string(),
        ];
        if self.rng.chance(25) {
            args.push("SESSION".into());
        }
        args
    }

    fn release_args(&mut self) -> Vec<String> {
        let key = self.key();
        let owner = self.owner_for(key);
        let mut args = vec!["LOCK.RELEASE".to_string(), key.to_string(), owner];
        if self.rng.chance(40) {
            let token = self.fence_token(key);
            args.extend(["FENCE".to_string(), token.to_string()]);
        }
        args
    }

    fn extend_args(&mut self) -> Vec<String> {
        let key = self.key();
        let owner = self.owner_for(key);
        let mut args = vec![
            "LOCK.EXTEND".to_string(),
            key.to_string(),
            owner,
            self.ttl().to_string(),
        ];
        if self.rng.chance(40) {
            let token = self.fence_token(key);
            args.extend(["FENCE".to_string(), token.to_string()]);
        }
        args
    }

    /// Runs a command on client `c`; an I/O error (a dropped connection, no
    /// reply) fails the scenario.
    fn run<S: AsRef<str>>(&mut self, c: usize, args: &[S]) -> Reply {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let reply = call(&mut self.conns[c], &args);
        if let Reply::Io(e) = &reply {
            panic!("{args:?}: {e}");
        }
        // Not the script's text.
        let shown = if args[0] == "EVAL" {
            &args[2..]
        } else {
            &args[..]
        };
        self.note(format!("c{c} {shown:?} -> {}", reply.text()));
        if !args[0].starts_with("LOCK.") && !["MULTI", "EXEC", "EVAL"].contains(&args[0]) {
            self.count_other(args[0], &reply);
        }
        reply
    }

    /// Counts the reply of a command that is not a lock command.
    fn count_other(&mut self, cmd: &str, reply: &Reply) {
        let kind = if reply.is_error() { "error" } else { "ok" };
        self.count(&format!("{cmd} {kind}"));
    }

    /// Checks a lock command's reply and feeds grants to the oracle.
    fn lock_reply(&mut self, cmd: LockCmd, args: &[String], reply: &Reply, max_at_send: u64) {
        let what = args.join(" ");
        match (cmd, reply) {
            (_, Reply::Error { code, text }) => {
                assert!(
                    cmd.codes().contains(&code.as_str()),
                    "{what}: unexpected error {text}"
                );
                self.count(code);
            }
            (LockCmd::Acquire, _) => match reply.grant() {
                Ok(Some((token, ttl))) => {
                    let requested: u64 = args[3].parse().expect("ttl");
                    let ceiling = if args[1].starts_with("p:") && self.policy_loaded {
                        POLICY_CEILING_MS
                    } else {
                        MAX_TTL_MS
                    };
                    assert_eq!(ttl, requested.min(ceiling), "{what}: granted TTL");
                    self.tokens.grant(token, &args[2], max_at_send, &what);
                    let key = key_of(&args[1]);
                    self.last.insert(key, (token, args[2].clone()));
                    self.expiry_moved.remove(key);
                    self.count("ACQUIRE grant");
                }
                Ok(None) => self.count("ACQUIRE nil"),
                Err(text) => panic!("{what}: replied {text}"),
            },
            (LockCmd::Release, _) => {
                assert_eq!(reply.int(), Some(1), "{what}: replied {}", reply.text());
                self.expiry_moved.remove(key_of(&args[1]));
                self.count("RELEASE 1");
            }
            (LockCmd::Extend, _) => {
                let ttl = reply.int().unwrap_or(0);
                assert!(ttl > 0, "{what}: replied {}", reply.text());
                self.expiry_moved.remove(key_of(&args[1]));
                self.count("EXTEND ttl");
            }
        }
    }

    fn info_reply(&mut self, key: &str, reply: &Reply) {
        let info = match reply {
            Reply::Value(v) => {
                parse_lock_info(v).unwrap_or_else(|e| panic!("LOCK.INFO {key}: {e}"))
            }
            Reply::Error { code, text } => {
                assert_eq!(code, "WRONGTYPE", "LOCK.INFO {key}: {text}");
                return;
            }
            Reply::Io(e) => panic!("LOCK.INFO {key}: {e}"),
        };
        if let Some(info) = info {
            self.tokens
                .seen(info.token(), &info.owner_str(), &format!("LOCK.INFO {key}"));
            self.last
                .insert(key_of(key), (info.token(), info.owner_str()));
            self.count("INFO held");
        }
    }

    /// `LOCK.ACQUIRE key waiter ttl WAIT ms [SESSION]` on a new connection,
    /// answered later (by a release, an expiry, a deletion or the timeout).
    fn send_waiter(&mut self) {
        let key = self.key();
        let ttl = self.rng.range(SHORT_MS.0, SHORT_MS.1);
        let wait = self.rng.range(1, MAX_WAIT_MS);
        let session = self.rng.chance(30);
        if self.waiters.len() >= MAX_WAITERS {
            return;
        }
        // Not the owner of a waiter in flight: two of them would share a
        // grant (the second a retry) and could be collected in either order.
        let owner = WAITER_OWNERS
            .into_iter()
            .find(|o| self.waiters.iter().all(|w| w.owner != *o))
            .expect("a free waiter owner");
        let mut cmd = lockwarden_tests::redis::cmd("LOCK.ACQUIRE");
        cmd.arg(key).arg(owner).arg(ttl).arg("WAIT").arg(wait);
        if session {
            cmd.arg("SESSION");
        }
        self.note(format!(
            "sent LOCK.ACQUIRE {key} {owner} {ttl} WAIT {wait} (session {session})"
        ));
        let mut conn = self.primary.client();
        conn.send_packed_command(&cmd.get_packed_command())
            .unwrap_or_else(|e| panic!("sending a waiter: {e}"));
        self.waiters.push(Waiter {
            conn,
            key,
            owner,
            max_at_send: self.tokens.max,
            due: Instant::now() + Duration::from_millis(wait),
        });
    }

    fn collect_due_waiters(&mut self) {
        let now = Instant::now();
        let (due, waiting): (Vec<Waiter>, Vec<Waiter>) =
            self.waiters.drain(..).partition(|w| w.due <= now);
        self.waiters = waiting;
        for w in due {
            self.collect(w);
        }
    }

    /// Reads a waiter's reply (and closes its connection, releasing a
    /// `SESSION` grant).
    fn collect(&mut self, mut w: Waiter) {
        w.conn
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("read timeout");
        let reply = Reply::from(w.conn.recv_response());
        let what = format!("LOCK.ACQUIRE {} {} ... WAIT", w.key, w.owner);
        self.note(format!("{what} -> {}", reply.text()));
        match &reply {
            Reply::Error { code, text } => {
                assert!(
                    LockCmd::Acquire.codes().contains(&code.as_str()),
                    "{what}: unexpected error {text}"
                );
                self.count(code);
            }
            Reply::Io(e) => panic!("{what}: no reply ({e})"),
            Reply::Value(_) => match reply.grant() {
                Ok(Some((token, _))) => {
                    self.tokens.grant(token, w.owner, w.max_at_send, &what);
                    // (Not a sign that the key's expiry is the lease's:
                    // the grant may predate a `SWAPDB`, `RENAME` or `PERSIST`
                    // sent since.)
                    self.last.insert(w.key, (token, w.owner.to_string()));
                    self.count("WAIT grant");
                }
                Ok(None) => self.count("WAIT nil"),
                Err(text) => panic!("{what}: replied {text}"),
            },
        }
    }

    /// Two or three lock commands in `MULTI`/`EXEC` (where `WAIT` does not
    /// block).
    fn transaction(&mut self, c: usize) {
        let n = self.rng.range(2, 4);
        let cmds: Vec<(LockCmd, Vec<String>)> = (0..n)
            .map(|_| match self.rng.below(3) {
                0 => (LockCmd::Acquire, self.acquire_args()),
                1 => (LockCmd::Release, self.release_args()),
                _ => (LockCmd::Extend, self.extend_args()),
            })
            .collect();
        let max_at_send = self.tokens.max;
        assert_eq!(self.run(c, &["MULTI"]).text(), "OK", "MULTI");
        for (_, args) in &cmds {
            let queued = self.run(c, args);
            assert_eq!(queued.text(), "QUEUED", "{args:?} in MULTI");
        }
        let replies = match self.run(c, &["EXEC"]) {
            Reply::Value(Value::Array(items)) if items.len() == cmds.len() => items,
            other => panic!("EXEC of {cmds:?}: {}", other.text()),
        };
        for ((cmd, args), v) in cmds.iter().zip(replies) {
            self.lock_reply(
                *cmd,
                args,
                &Reply::from(Ok::<_, RedisError>(v)),
                max_at_send,
            );
        }
        self.count("EXEC");
    }

    /// An acquire, and an extension if granted, in one Lua script.
    fn script(&mut self, c: usize) {
        const SCRIPT: &str = "local g = redis.call('LOCK.ACQUIRE', KEYS[1], ARGV[1], ARGV[2]) \
            if g then redis.call('LOCK.EXTEND', KEYS[1], ARGV[1], ARGV[3]) end return g";
        let key = self.key();
        let owner = *self.rng.pick(&OWNERS);
        let ttl = self.rng.range(SHORT_MS.0, SHORT_MS.1).to_string();
        let longer = self.rng.range(LONG_MS.0, LONG_MS.1).to_string();
        let max_at_send = self.tokens.max;
        let reply = self.run(c, &["EVAL", SCRIPT, "1", key, owner, &ttl, &longer]);
        let args = ["LOCK.ACQUIRE", key, owner, &ttl].map(String::from);
        self.lock_reply(LockCmd::Acquire, &args, &reply, max_at_send);
        self.count("EVAL");
    }

    /// `DUMP` of one key (kept), or `RESTORE` of the last dump into another.
    fn dump_restore(&mut self, c: usize) {
        let key = self.key();
        let (restore, replace) = (self.rng.chance(60), self.rng.chance(50));
        match self.dump.take() {
            Some(payload) if restore => {
                let mut args: Vec<&[u8]> = vec![
                    b"RESTORE".as_slice(),
                    key.as_bytes(),
                    b"0",
                    &payload,
                    b"REPLACE",
                ];
                if !replace {
                    args.truncate(4);
                }
                let reply = call_bytes(&mut self.conns[c], &args);
                if let Reply::Io(e) = &reply {
                    panic!("RESTORE {key}: {e}");
                }
                self.note(format!(
                    "c{c} RESTORE {key} (replace {replace}) -> {}",
                    reply.text()
                ));
                // Restored without an expiry (TTL 0), or refused (the key
                // exists): either way not followed from here.
                self.expiry_moved.insert(key);
                self.count_other("RESTORE", &reply);
                self.dump = Some(payload);
            }
            _ => {
                if let Reply::Value(Value::BulkString(b)) = self.run(c, &["DUMP", key]) {
                    self.dump = Some(b);
                }
            }
        }
    }

    /// Loads the `max-ttl` policy on `p:*`, or unloads it.
    fn toggle_policy(&mut self) {
        let reply = if self.policy_loaded {
            call(&mut self.conns[0], &["LOCK.POLICY", "UNLOAD", "cap"])
        } else {
            let settings = format!(r#"{{"default_ms":{POLICY_CEILING_MS},"action":"clamp"}}"#);
            let args: [&[u8]; 9] = [
                b"LOCK.POLICY",
                b"LOAD",
                b"cap",
                b"KEYS",
                b"p:*",
                b"CONFIG",
                settings.as_bytes(),
                b"WASM",
                &self.policy_wasm,
            ];
            call_bytes(&mut self.conns[0], &args)
        };
        assert!(
            matches!(reply.text().as_str(), "OK" | "1"),
            "policy load/unload: {}",
            reply.text()
        );
        self.policy_loaded = !self.policy_loaded;
        self.count("policy toggle");
    }

    /// Collects every waiter, lets short leases and expiries lapse, freezes
    /// active expiry on the primary and removes what lapsed, then compares
    /// the nodes and reloads one.
    fn checkpoint(&mut self, pair: &ReplicaPair, reload: Reload) {
        for w in std::mem::take(&mut self.waiters) {
            self.collect(w);
        }
        sleep_ms(SETTLE_MS);
        let primary = &pair.primary;
        assert_eq!(primary.cmd_text(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]), "OK");
        let mut conn = primary.client();
        for db in ["0", "1"] {
            call(&mut conn, &["SELECT", db]);
            // A lookup deletes a key whose expiry has passed (`KEYS` would
            // not list it on Valkey 8).
            for key in KEYS {
                call(&mut conn, &["PTTL", key]);
            }
        }
        self.check_expiries(primary);
        wait_persistence_idle(primary, REPLY_TIMEOUT);
        pair.wait_for_offset();
        let before = Snapshot::of(primary);
        assert!(
            before.high_water >= self.tokens.max,
            "high-water mark {} below a granted token {}",
            before.high_water,
            self.tokens.max
        );
        before.assert_same(&Snapshot::of(&pair.replica), "the replica");
        let (node, what) = match reload {
            Reload::Nothing => (None, ""),
            Reload::PrimaryRdb => (Some((primary, "RELOAD")), "the primary after DEBUG RELOAD"),
            Reload::PrimaryAof => (
                Some((primary, "LOADAOF")),
                "the primary after DEBUG LOADAOF",
            ),
            Reload::PrimaryAofRewritten => {
                rewrite_aof(primary, REPLY_TIMEOUT);
                (
                    Some((primary, "LOADAOF")),
                    "the primary after BGREWRITEAOF and DEBUG LOADAOF",
                )
            }
            Reload::ReplicaRdb => (
                Some((&pair.replica, "RELOAD")),
                "the replica after DEBUG RELOAD",
            ),
            Reload::ReplicaAof => {
                wait_persistence_idle(&pair.replica, REPLY_TIMEOUT);
                (
                    Some((&pair.replica, "LOADAOF")),
                    "the replica after DEBUG LOADAOF",
                )
            }
        };
        if let Some((node, sub)) = node {
            assert_eq!(node.cmd_text(&["DEBUG", sub]), "OK", "{what}");
            pair.wait_for_offset();
            before.assert_same(&Snapshot::of(node), what);
            before.assert_same(
                &Snapshot::of(&pair.replica),
                &format!("the replica, {what}"),
            );
            self.count(&format!("reload {reload:?}"));
        }
        assert_eq!(primary.cmd_text(&["DEBUG", "SET-ACTIVE-EXPIRE", "1"]), "OK");
    }

    /// Every lock key of database 0 whose expiry nothing moved expires with
    /// its lease (which is live: short ones have lapsed by now).
    fn check_expiries(&mut self, primary: &Server) {
        let mut conn = primary.client();
        for key in keys(&mut conn) {
            let Some(key) = KEYS.into_iter().find(|k| *k == key) else {
                panic!("an unexpected key {key}");
            };
            if self.expiry_moved.contains(key)
                || call(&mut conn, &["TYPE", key]).text() != "lockwardn"
            {
                continue;
            }
            let info = match call(&mut conn, &["LOCK.INFO", key]) {
                Reply::Value(v) => {
                    parse_lock_info(&v).unwrap_or_else(|e| panic!("LOCK.INFO {key}: {e}"))
                }
                other => panic!("LOCK.INFO {key}: {}", other.text()),
            };
            let info = info.unwrap_or_else(|| {
                panic!(
                    "{key} outlived its lease though nothing moved its expiry; its history: {:#?}",
                    self.trail_of(key)
                )
            });
            let pttl = call(&mut conn, &["PTTL", key]).int().unwrap_or(-3);
            assert!(
                (pttl - info.get("ttl")).abs() <= TTL_SKEW_MS,
                "{key}: PTTL {pttl} but the lease ends in {} ms ({info:?}); its history: {:#?}",
                info.get("ttl"),
                self.trail_of(key)
            );
            self.count("expiry checked");
        }
    }

    /// A new replica of the primary: its full sync must reproduce it.
    fn full_sync(&mut self, flavor: Flavor) {
        let primary = self.primary;
        let replica = Server::builder(flavor)
            .module_arg("max-ttl-ms", MAX_TTL_MS.to_string())
            .raw_args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .start();
        wait_for_sync(primary, &replica);
        Snapshot::of(primary)
            .assert_same(&Snapshot::of(&replica), "a new replica after its full sync");
        assert_healthy(&replica, "new replica");
        self.count("full sync");
    }
}

/// The `&'static` name of one of [`KEYS`].
fn key_of(key: &str) -> &'static str {
    KEYS.iter()
        .find(|k| **k == key)
        .unwrap_or_else(|| panic!("{key} is not a history key"))
}

/// `KEYS *` on `conn`'s database, sorted.
fn keys(conn: &mut Connection) -> Vec<String> {
    let mut keys: Vec<String> = match call(conn, &["KEYS", "*"]) {
        Reply::Value(Value::Array(items)) => items.iter().map(render).collect(),
        other => panic!("KEYS *: {}", other.text()),
    };
    keys.sort();
    keys
}

/// One key as both nodes must hold it.
#[derive(Debug, PartialEq, Eq)]
struct KeyState {
    db: &'static str,
    key: String,
    kind: String,
    value_digest: String,
    expire_at: i64,
    /// `LOCK.INFO`'s owner, token, acquisition time, extensions, session
    /// flag (not the connection fields: a replica has no connection).
    lease: Option<(Vec<u8>, i64, i64, i64, i64)>,
}

/// A node's state.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    digest: String,
    keys: Vec<KeyState>,
    policies: Vec<PolicySpec>,
    high_water: u64,
}

impl Snapshot {
    fn of(s: &Server) -> Snapshot {
        let mut conn = s.client();
        let mut states = Vec::new();
        for db in ["0", "1"] {
            call(&mut conn, &["SELECT", db]);
            for key in keys(&mut conn) {
                let text = |conn: &mut Connection, args: &[&str]| call(conn, args).text();
                let kind = text(&mut conn, &["TYPE", &key]);
                let lease = if kind == "lockwardn" {
                    match call(&mut conn, &["LOCK.INFO", &key]) {
                        Reply::Value(v) => parse_lock_info(&v)
                            .unwrap_or_else(|e| s.fail(&format!("LOCK.INFO {key}: {e}")))
                            .map(|i| i.lease()),
                        other => s.fail(&format!("LOCK.INFO {key}: {}", other.text())),
                    }
                } else {
                    None
                };
                states.push(KeyState {
                    db,
                    value_digest: text(&mut conn, &["DEBUG", "DIGEST-VALUE", &key]),
                    expire_at: call(&mut conn, &["PEXPIRETIME", &key])
                        .int()
                        .unwrap_or_else(|| s.fail(&format!("PEXPIRETIME {key}"))),
                    kind,
                    lease,
                    key,
                });
            }
        }
        Snapshot {
            digest: s.cmd_text(&["DEBUG", "DIGEST"]),
            keys: states,
            policies: specs(s),
            high_water: lw_stat(s, "token_high_water") as u64,
        }
    }

    /// Panics, naming the first difference, unless `other` equals `self`.
    #[track_caller]
    fn assert_same(&self, other: &Snapshot, what: &str) {
        if self == other {
            return;
        }
        let mine: BTreeMap<_, _> = self.keys.iter().map(|k| ((k.db, &k.key), k)).collect();
        let theirs: BTreeMap<_, _> = other.keys.iter().map(|k| ((k.db, &k.key), k)).collect();
        let ids: BTreeSet<_> = mine.keys().chain(theirs.keys()).collect();
        let differing: Vec<String> = ids
            .into_iter()
            .filter(|id| mine.get(*id) != theirs.get(*id))
            .map(|id| {
                format!(
                    "{:?}: primary {:?}, {what} {:?}",
                    id,
                    mine.get(id),
                    theirs.get(id)
                )
            })
            .collect();
        panic!(
            "{what} differs from the primary: digest {} vs {}, high-water {} vs {}, policies {:?} vs {:?}, keys: {differing:#?}",
            self.digest,
            other.digest,
            self.high_water,
            other.high_water,
            self.policies,
            other.policies
        );
    }
}
