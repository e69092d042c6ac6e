//! What operators see: module keyspace events (`lock.acquired`,
//! `lock.extended`, `lock.released`, `lock.expired`, `lock.denied`), the
//! `INFO lockwarden` counters and hold-time distribution, and `LOCK.LIST`.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, bounded, unbounded};
use lockwarden_tests::locks::*;
use lockwarden_tests::redis::{self, ConnectionLike, Value};
use lockwarden_tests::*;

/// A pattern subscription on its own connection, read by a thread.
struct Events {
    rx: Receiver<(String, String)>,
    barriers: u64,
}

const BARRIER: &str = "__keyspace@0__:lw-test-barrier";

impl Events {
    fn subscribe(server: &Server, patterns: &[&str]) -> Events {
        let mut conn = server.client();
        conn.set_read_timeout(None).unwrap();
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        let (tx, rx) = unbounded();
        let (ready_tx, ready_rx) = bounded(1);
        std::thread::spawn(move || {
            let mut ps = conn.as_pubsub();
            ps.psubscribe(&patterns).expect("PSUBSCRIBE");
            let _ = ready_tx.send(());
            // Ends when the server closes the connection.
            while let Ok(msg) = ps.get_message() {
                let payload = String::from_utf8_lossy(msg.get_payload_bytes()).into_owned();
                if tx
                    .send((msg.get_channel_name().to_string(), payload))
                    .is_err()
                {
                    break;
                }
            }
        });
        ready_rx.recv_timeout(TIMEOUT).expect("subscribed");
        Events { rx, barriers: 0 }
    }

    /// Every event published before this call, in order: publishes a marker
    /// and collects until it comes back.
    fn drain(&mut self, server: &Server) -> Vec<(String, String)> {
        self.barriers += 1;
        let marker = format!("barrier-{}", self.barriers);
        assert_eq!(server.cmd_text(&["PUBLISH", BARRIER, &marker]), "1");
        let mut seen = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((ch, payload)) if ch == BARRIER && payload == marker => return seen,
                Ok(event) => seen.push(event),
                Err(_) => panic!("barrier {marker} not seen; got {seen:?}"),
            }
        }
    }

    /// Waits up to `timeout` for `(channel, payload)`, returning the events
    /// seen before it.
    fn wait_for(
        &mut self,
        channel: &str,
        payload: &str,
        timeout: Duration,
    ) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((ch, p)) if ch == channel && p == payload => return seen,
                Ok(event) => seen.push(event),
                Err(_) => panic!("no {payload} on {channel} within {timeout:?}; got {seen:?}"),
            }
        }
    }
}

const NONE: Vec<(String, String)> = Vec::new();

/// `(channel, payload)` pairs for a keyspace event on `key` in db 0.
fn ks(key: &str, event: &str) -> (String, String) {
    (format!("__keyspace@0__:{key}"), event.to_string())
}

fn ke(key: &str, event: &str) -> (String, String) {
    (format!("__keyevent@0__:{event}"), key.to_string())
}

/// Both the keyspace and keyevent notification, in Redis's order.
fn both(key: &str, event: &str) -> [(String, String); 2] {
    [ks(key, event), ke(key, event)]
}

/// Runs `LOCK.LIST args...` and returns `(next cursor, entries)`.
fn list_step(server: &Server, args: &[&str]) -> (String, Vec<Vec<Value>>) {
    let mut full = vec!["LOCK.LIST"];
    full.extend_from_slice(args);
    let reply = server.cmd(&full);
    let Value::Array(parts) = &reply else {
        panic!("{full:?}: {}", render(&reply))
    };
    assert_eq!(parts.len(), 2, "{full:?}: {}", render(&reply));
    let cursor = render(&parts[0]);
    let Value::Array(entries) = &parts[1] else {
        panic!("{full:?}: {}", render(&reply))
    };
    let entries = entries
        .iter()
        .map(|e| match e {
            Value::Array(fields) if fields.len() == 6 => fields.clone(),
            other => panic!("{full:?}: bad entry {}", render(other)),
        })
        .collect();
    (cursor, entries)
}

/// One `LOCK.LIST` row.
#[derive(Debug, Clone)]
struct Row {
    key: String,
    owner: String,
    token: i64,
    ttl: i64,
    held: i64,
    waiters: i64,
}

fn row(fields: &[Value]) -> Row {
    let int = |v: &Value| match v {
        Value::Int(i) => *i,
        other => panic!("LOCK.LIST: not an integer: {}", render(other)),
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        other => panic!("LOCK.LIST: not a bulk string: {}", render(other)),
    };
    Row {
        key: text(&fields[0]),
        owner: text(&fields[1]),
        token: int(&fields[2]),
        ttl: int(&fields[3]),
        held: int(&fields[4]),
        waiters: int(&fields[5]),
    }
}

/// Iterates `LOCK.LIST` with `extra` options until the cursor is 0; returns
/// every row (keyed by name) and the number of steps.
fn list_all(server: &Server, extra: &[&str]) -> (HashMap<String, Row>, usize) {
    let mut cursor = "0".to_string();
    let mut rows = HashMap::new();
    let mut steps = 0;
    loop {
        let mut args = vec!["CURSOR", cursor.as_str()];
        args.extend_from_slice(extra);
        let (next, entries) = list_step(server, &args);
        steps += 1;
        assert!(steps < 100_000, "LOCK.LIST does not terminate");
        for e in entries {
            let r = row(&e);
            rows.insert(r.key.clone(), r);
        }
        if next == "0" {
            return (rows, steps);
        }
        cursor = next;
    }
}

for_each_flavor! {
    /// With `KEd`, every lock transition is published on both the keyspace
    /// and keyevent channels, in order; refused and contended commands
    /// publish nothing.
    fn keyspace_events(flavor: Flavor) {
        let server = Server::start(flavor);
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "notify-keyspace-events", "KEd"]), "OK");
        let mut ev = Events::subscribe(&server, &["__keyspace@0__:*", "__keyevent@0__:*"]);
        assert_eq!(ev.drain(&server), NONE);

        let (token, _) = acquire(&server, "k", "me", 60000).unwrap();
        assert_eq!(ev.drain(&server), both("k", "lock.acquired"));
        assert_eq!(server.cmd_text(&["LOCK.EXTEND", "k", "me", "30000"]), "30000");
        assert_eq!(ev.drain(&server), both("k", "lock.extended"));
        // Same-owner retry: a grant again.
        assert_eq!(acquire(&server, "k", "me", 60000).map(|g| g.0), Some(token));
        assert_eq!(ev.drain(&server), both("k", "lock.acquired"));
        // Nothing for refusals, contention, reads.
        assert_eq!(acquire(&server, "k", "other", 60000), None);
        assert!(server.cmd_text(&["LOCK.RELEASE", "k", "other"]).starts_with("(error) NOTOWNER"));
        assert!(server.cmd_text(&["LOCK.EXTEND", "nope", "me", "1000"]).starts_with("(error) NOTHELD"));
        assert!(lock_fields(&server, "k").is_some());
        list_step(&server, &[]);
        assert_eq!(ev.drain(&server), NONE);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "k", "me"]), "1");
        assert_eq!(ev.drain(&server), both("k", "lock.released"));

        // A lease that runs out while held: published when Redis removes the
        // key (active expiry; nobody touches it).
        acquire(&server, "short", "me", 300).unwrap();
        assert_eq!(ev.drain(&server), both("short", "lock.acquired"));
        let before = ev.wait_for("__keyspace@0__:short", "lock.expired", Duration::from_secs(10));
        assert_eq!(before, NONE);
        assert_eq!(ev.drain(&server), vec![ke("short", "lock.expired")]);
        assert_eq!(server.cmd_text(&["EXISTS", "short"]), "0");
    }

    /// A lease past its deadline that leaves the keyspace some other way
    /// (`PERSIST` kept the key, then `DEL`) is not published as
    /// `lock.expired` when a plain key of the same name expires later.
    fn deleted_lease_is_not_reported_expired_later(flavor: Flavor) {
        let server = Server::start(flavor);
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "notify-keyspace-events", "KEd"]), "OK");
        let mut ev = Events::subscribe(&server, &["__keyspace@0__:*", "__keyevent@0__:*"]);
        acquire(&server, "p", "me", 200).unwrap();
        assert_eq!(server.cmd_text(&["PERSIST", "p"]), "1");
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(server.cmd_text(&["DEL", "p"]), "1");
        assert_eq!(server.cmd_text(&["SET", "p", "plain", "PX", "100"]), "OK");
        wait_until("the plain key expires", TIMEOUT, || server.cmd_text(&["EXISTS", "p"]) == "0");
        assert_eq!(ev.drain(&server), both("p", "lock.acquired"));
    }

    /// Events of the server-side paths: a handoff on release publishes the
    /// release then the grant; a handoff at expiry the expiry then the grant;
    /// a closing session a release.
    fn keyspace_events_server_side(flavor: Flavor) {
        let server = Server::start(flavor);
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "notify-keyspace-events", "Kd"]), "OK");
        let mut ev = Events::subscribe(&server, &["__keyspace@0__:*"]);

        acquire(&server, "h", "holder", 60000).unwrap();
        let mut waiter = spawn_client(server.port(), &["LOCK.ACQUIRE h waiter 1500 WAIT 20000"], false);
        wait_until("waiter queued", TIMEOUT, || lw_stat(&server, "waiters") == 1);
        assert_eq!(ev.drain(&server), vec![ks("h", "lock.acquired")]);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "h", "holder"]), "1");
        assert_eq!(ev.drain(&server), vec![ks("h", "lock.released"), ks("h", "lock.acquired")]);
        assert!(waiter.wait_success()[0].starts_with('['));

        // The waiter's 1500 ms lease runs out with another one queued.
        let mut next = spawn_client(server.port(), &["LOCK.ACQUIRE h next 60000 WAIT 20000"], false);
        wait_until("next queued", TIMEOUT, || lw_stat(&server, "waiters") == 1);
        assert!(next.wait_success()[0].starts_with('['));
        assert_eq!(lock_fields(&server, "h").unwrap()["owner"], "next");
        assert_eq!(ev.drain(&server), vec![ks("h", "lock.expired"), ks("h", "lock.acquired")]);

        // A closing session releases its lock.
        let mut s = spawn_client(server.port(), &["LOCK.ACQUIRE s me 60000 SESSION"], true);
        assert!(s.expect_line().starts_with('['));
        assert_eq!(ev.drain(&server), vec![ks("s", "lock.acquired")]);
        s.kill();
        ev.wait_for("__keyspace@0__:s", "lock.released", TIMEOUT);
        assert_eq!(ev.drain(&server), NONE);
        assert_eq!(server.cmd_text(&["EXISTS", "s"]), "0");

        // Module events off: nothing is published.
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "notify-keyspace-events", "KEg"]), "OK");
        acquire(&server, "quiet", "me", 60000).unwrap();
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "quiet", "me"]), "1");
        assert_eq!(ev.drain(&server), NONE);
    }

    /// `lock.denied` when a policy denies an acquire (only if this build has
    /// `LOCK.POLICY`).
    fn keyspace_event_denied(flavor: Flavor) {
        let server = Server::start(flavor);
        let info = server.cmd_text(&["COMMAND", "INFO", "LOCK.POLICY"]);
        if info == "[(nil)]" || info == "[]" {
            eprintln!("LOCK.POLICY is not available in this build: lock.denied not tested");
            return;
        }
        let wasm = std::fs::read(policy_path("key-pattern")).unwrap_or_else(|e| {
            panic!("{}: {e} (build it with `make policies`)", policy_path("key-pattern").display())
        });
        let mut conn = server.client();
        let loaded = conn
            .req_command(
                redis::cmd("LOCK.POLICY")
                    .arg("LOAD")
                    .arg("kp")
                    .arg("CONFIG")
                    .arg(r#"{"allow":["orders:*"]}"#)
                    .arg("WASM")
                    .arg(wasm),
            )
            .unwrap();
        assert_eq!(render(&loaded), "OK");
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "notify-keyspace-events", "KEd"]), "OK");
        let mut ev = Events::subscribe(&server, &["__keyspace@0__:*", "__keyevent@0__:*"]);
        let before = lw_stats(&server);
        assert!(acquire(&server, "orders:1", "me", 60000).is_some());
        assert_eq!(ev.drain(&server), both("orders:1", "lock.acquired"));
        let denied = server.cmd_text(&["LOCK.ACQUIRE", "users:1", "me", "60000"]);
        assert!(denied.starts_with("(error) DENIED policy kp"), "{denied}");
        assert_eq!(server.cmd_text(&["EXISTS", "users:1"]), "0");
        assert_eq!(ev.drain(&server), both("users:1", "lock.denied"));
        assert_eq!(lw_stat(&server, "policy_denials") - before["policy_denials"], 1);
    }

    /// INFO lockwarden has every documented field.
    fn info_fields(flavor: Flavor) {
        let server = Server::start(flavor);
        let s = lw_stats(&server);
        for f in [
            "locks_held", "acquires_granted", "acquires_retried", "acquires_contended",
            "releases", "extends", "errors_notowner", "errors_notheld", "rejected_ttlmax",
            "rejected_ttlmin", "policy_denials", "policy_failures", "expired_while_held",
            "deleted_while_held", "waiters", "session_locks_tracked", "handoffs", "wait_timeouts", "session_releases",
            "wait_p50_us", "wait_p99_us", "wait_max_us", "hold_p50_ms", "hold_p99_ms",
            "hold_max_ms", "token_high_water",
        ] {
            assert!(s.contains_key(f), "INFO lockwarden lacks {f}: {s:?}");
        }
        // The section is also part of INFO everything / the default INFO
        // modules listing.
        let all = server.cmd_text(&["INFO", "everything"]);
        assert!(all.contains("lockwarden_locks_held:"), "INFO everything lacks the section");
    }

    /// `locks_held` follows values freed on Redis's lazy-free thread
    /// (`FLUSHALL ASYNC`) as well as on the main thread.
    fn locks_held_counts_lazy_frees(flavor: Flavor) {
        let s = Server::start(flavor);
        let mut c = s.client();
        let mut pipe = redis::pipe();
        for i in 0..2000 {
            pipe.cmd("LOCK.ACQUIRE").arg(format!("lz:{i}")).arg("me").arg("60000");
        }
        let _: Vec<Value> = pipe.query(&mut c).expect("acquires");
        assert_eq!(lw_stat(&s, "locks_held"), 2000);
        assert_eq!(s.cmd_text(&["FLUSHALL", "ASYNC"]), "OK");
        wait_until("the lazy free", TIMEOUT, || lw_stat(&s, "locks_held") == 0);
        for i in 0..5 {
            acquire(&s, &format!("lz:{i}"), "me", 60000).expect("granted");
        }
        assert_eq!(s.cmd(&["LOCK.RELEASE", "lz:0", "me"]), Value::Int(1));
        assert_eq!(lw_stat(&s, "locks_held"), 4);
        assert_eq!(lw_stat(&s, "acquires_granted"), 2005);
    }

    /// `expired_while_held` counts leases that ran out, not releases or
    /// deletions; the hold time of an expired lease is its TTL.
    fn expired_while_held(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        assert_eq!(before["expired_while_held"], 0);
        assert_eq!(before["hold_max_ms"], 0);
        acquire(&server, "x", "me", 300).unwrap();
        wait_until("x expires", TIMEOUT, || server.cmd_text(&["EXISTS", "x"]) == "0");
        let s = lw_stats(&server);
        assert_eq!(s["expired_while_held"], 1);
        assert_eq!(s["deleted_while_held"], 0);
        assert_eq!(s["hold_max_ms"], 300, "an expired lease was held for its TTL");
        assert_eq!(s["locks_held"], 0);

        // Nobody touching it: active expiry counts it too.
        acquire(&server, "y", "me", 200).unwrap();
        wait_until("active expiry counts y", TIMEOUT, || lw_stat(&server, "expired_while_held") == 2);

        // Released and deleted locks are not expirations.
        acquire(&server, "r", "me", 300).unwrap();
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "r", "me"]), "1");
        acquire(&server, "d", "me", 300).unwrap();
        assert_eq!(server.cmd_text(&["DEL", "d"]), "1");
        std::thread::sleep(Duration::from_millis(500));
        let s = lw_stats(&server);
        assert_eq!(s["expired_while_held"], 2);
        assert_eq!(s["deleted_while_held"], 1);
        assert_eq!(s["releases"], 1);
    }

    /// hold_p50_ms / hold_p99_ms / hold_max_ms after holds of known length.
    fn hold_times(flavor: Flavor) {
        let server = Server::start(flavor);
        let mut conn = server.client();
        // (lower, upper) bound of each hold as seen by the client, in ms.
        let mut bounds = Vec::new();
        for (i, hold) in [200u64, 200, 200, 200, 1000].into_iter().enumerate() {
            let key = format!("h{i}");
            let t0 = Instant::now();
            let g: Value = redis::cmd("LOCK.ACQUIRE").arg(&key).arg("me").arg(60000).query(&mut conn).unwrap();
            let t1 = Instant::now();
            assert!(grant(&g).is_some());
            std::thread::sleep(Duration::from_millis(hold));
            let t2 = Instant::now();
            let r: i64 = redis::cmd("LOCK.RELEASE").arg(&key).arg("me").query(&mut conn).unwrap();
            let t3 = Instant::now();
            assert_eq!(r, 1);
            let lo = (t2 - t1).as_millis() as u64;
            let hi = (t3 - t0).as_millis() as u64 + 1;
            bounds.push((lo.saturating_sub(1), hi));
        }
        let s = lw_stats(&server);
        let (long_lo, long_hi) = bounds[4];
        let max = s["hold_max_ms"] as u64;
        assert!(max >= long_lo && max <= long_hi, "hold_max_ms {max} not in [{long_lo}, {long_hi}]");
        let short_lo = bounds[..4].iter().map(|b| b.0).min().unwrap();
        let short_hi = bounds[..4].iter().map(|b| b.1).max().unwrap();
        let p50 = s["hold_p50_ms"] as u64;
        // Percentiles are the lower bound of a 12.5%-wide bucket.
        assert!(p50 >= short_lo * 7 / 8 && p50 <= short_hi, "hold_p50_ms {p50} not ~ [{short_lo}, {short_hi}]");
        let p99 = s["hold_p99_ms"] as u64;
        assert!(p99 >= long_lo * 7 / 8 && p99 <= max, "hold_p99_ms {p99} not ~ [{long_lo}, {max}]");
        assert_eq!(s["releases"], 5);
    }

    /// LOCK.LIST walks 500 locks among 550 other keys with a cursor, each lock
    /// exactly as LOCK.INFO describes it.
    fn list_iterates_all(flavor: Flavor) {
        let server = Server::start(flavor);
        let mut conn = server.client();
        let mut pipe = redis::pipe();
        for i in 0..500 {
            pipe.cmd("LOCK.ACQUIRE").arg(format!("lk:{i}")).arg(format!("o{i}")).arg(60000).ignore();
            pipe.cmd("SET").arg(format!("str:{i}")).arg("v").ignore();
        }
        for i in 0..50 {
            pipe.cmd("HSET").arg(format!("hash:{i}")).arg("f").arg("v").ignore();
        }
        let _: () = pipe.query(&mut conn).unwrap();
        assert_eq!(server.cmd_text(&["DBSIZE"]), "1050");
        let mut waiter = spawn_client(server.port(), &["LOCK.ACQUIRE lk:7 w 1000 WAIT 20000"], false);
        wait_until("waiter queued", TIMEOUT, || lw_stat(&server, "waiters") == 1);

        let (rows, steps) = list_all(&server, &["COUNT", "37"]);
        assert!(steps > 5, "only {steps} steps with COUNT 37");
        let expected: BTreeSet<String> = (0..500).map(|i| format!("lk:{i}")).collect();
        assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), expected);
        let tokens: BTreeSet<i64> = rows.values().map(|r| r.token).collect();
        assert_eq!(tokens.len(), 500, "tokens are unique");
        for r in rows.values() {
            let i: usize = r.key[3..].parse().unwrap();
            assert_eq!(r.owner, format!("o{i}"));
            assert!(r.ttl > 0 && r.ttl <= 60000, "{r:?}");
            assert!(r.held >= 0 && r.held < 60000, "{r:?}");
            assert_eq!(r.waiters, i64::from(i == 7), "{r:?}");
        }
        let info = lock_fields(&server, "lk:123").unwrap();
        assert_eq!(info["token"], rows["lk:123"].token.to_string());
        // The default COUNT walks it too.
        let (all, _) = list_all(&server, &[]);
        assert_eq!(all.keys().cloned().collect::<BTreeSet<_>>(), expected);
        // A step never exceeds what it scanned by much, and COUNT 10000 takes
        // everything at once.
        let (next, entries) = list_step(&server, &["COUNT", "10000"]);
        assert_eq!(next, "0");
        assert_eq!(entries.len(), 500);
        // Freed locks disappear from the listing.
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "lk:0", "o0"]), "1");
        let (after, _) = list_all(&server, &["COUNT", "100"]);
        assert_eq!(after.len(), 499);
        assert!(!after.contains_key("lk:0"));
        drop(waiter.wait_success());
    }

    /// MATCH filters by key glob; locks of other databases are not listed.
    fn list_match(flavor: Flavor) {
        let server = Server::start(flavor);
        for i in 0..200 {
            acquire(&server, &format!("lk:{i}"), "me", 60000).unwrap();
            server.cmd(&["SET", &format!("lkstr:{i}"), "v"]);
        }
        let keys = |extra: &[&str]| -> BTreeSet<String> { list_all(&server, extra).0.into_keys().collect() };
        let ones: BTreeSet<String> = (0..200).map(|i| format!("lk:{i}")).filter(|k| k.starts_with("lk:1")).collect();
        assert_eq!(ones.len(), 111);
        assert_eq!(keys(&["MATCH", "lk:1*", "COUNT", "50"]), ones);
        let forties: BTreeSet<String> = (40..50).map(|i| format!("lk:{i}")).collect();
        assert_eq!(keys(&["MATCH", "lk:4?"]), forties);
        assert_eq!(keys(&["MATCH", "lkstr:*"]), BTreeSet::new());
        assert_eq!(keys(&["MATCH", "lk:199"]), BTreeSet::from(["lk:199".to_string()]));
        assert_eq!(keys(&["MATCH", "nothing*"]), BTreeSet::new());

        let mut db2 = server.client();
        let _: () = redis::cmd("SELECT").arg(2).query(&mut db2).unwrap();
        let g: Value = redis::cmd("LOCK.ACQUIRE").arg("other-db").arg("me").arg(60000).query(&mut db2).unwrap();
        assert!(grant(&g).is_some());
        assert!(!keys(&[]).contains("other-db"));
        let listed: Value = redis::cmd("LOCK.LIST").arg("COUNT").arg(1000).query(&mut db2).unwrap();
        assert_eq!(render(&listed).split(' ').next(), Some("[0"));
        assert!(render(&listed).contains("[other-db me "), "{}", render(&listed));
        assert_eq!(keys(&[]).len(), 200);
    }

    /// HELDMORE keeps only locks held longer than the given time.
    fn list_heldmore(flavor: Flavor) {
        let server = Server::start(flavor);
        let start = Instant::now();
        for i in 0..20 {
            acquire(&server, &format!("old:{i}"), "me", 60000).unwrap();
        }
        // Old locks extended: HELDMORE is about holding, not the lease.
        assert_eq!(server.cmd_text(&["LOCK.EXTEND", "old:0", "me", "50000"]), "50000");
        let settle = Duration::from_millis(1600).saturating_sub(start.elapsed());
        std::thread::sleep(settle);
        for i in 0..20 {
            acquire(&server, &format!("new:{i}"), "me", 60000).unwrap();
        }
        let (rows, _) = list_all(&server, &["HELDMORE", "1000", "COUNT", "15"]);
        let old: BTreeSet<String> = (0..20).map(|i| format!("old:{i}")).collect();
        assert_eq!(rows.keys().cloned().collect::<BTreeSet<_>>(), old);
        assert!(rows.values().all(|r| r.held > 1000), "{rows:?}");
        // Combined with MATCH.
        let (rows, _) = list_all(&server, &["MATCH", "old:1*", "HELDMORE", "1000"]);
        assert_eq!(rows.len(), 11);
        // A threshold above everything finds nothing; 0 finds the old ones
        // at least.
        assert!(list_all(&server, &["HELDMORE", "3600000"]).0.is_empty());
        let (rows, _) = list_all(&server, &["HELDMORE", "0"]);
        assert!(old.iter().all(|k| rows.contains_key(k)));
    }

    /// Malformed LOCK.LIST options are ERR.
    fn list_bad_options(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "k", "me", 60000).unwrap();
        for args in [
            &["COUNT", "0"][..],
            &["COUNT", "10001"],
            &["COUNT", "-1"],
            &["COUNT", "abc"],
            &["COUNT"],
            &["CURSOR", "-1"],
            &["CURSOR", "x"],
            &["CURSOR"],
            &["HELDMORE", "-5"],
            &["HELDMORE", "1.5"],
            &["HELDMORE"],
            &["MATCH"],
            &["FOO", "1"],
            &["k"],
        ] {
            let mut full = vec!["LOCK.LIST"];
            full.extend_from_slice(args);
            let reply = server.cmd_text(&full);
            assert!(reply.starts_with("(error) ERR"), "{full:?} replied {reply}");
        }
        // Options are case-insensitive and may come in any order.
        let (next, entries) = list_step(&server, &["count", "10", "match", "k", "cursor", "0"]);
        assert_eq!(next, "0");
        assert_eq!(entries.len(), 1);
        assert_eq!(server.cmd_text(&["LOCK.LIST", "COUNT", "10000"]).split(' ').next(), Some("[0"));
    }
}
