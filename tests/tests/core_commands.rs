//! The lock core on a single server: LOCK.ACQUIRE / RELEASE / EXTEND / INFO,
//! their error paths, TTL limits, fencing tokens across keyspace events,
//! DUMP/RESTORE and the INFO counters. Every test runs on Redis and Valkey.

mod core_support;

use std::collections::HashMap;
use std::time::Duration;

use core_support::*;
use lockwarden_tests::redis::{self, Value};
use lockwarden_tests::*;

/// The largest token, issued or accepted (RESTORE, replication).
const MAX_TOKEN: i64 = i64::MAX;

/// Polls until `PTTL key` is at most `ms` (time passes; no fixed sleep).
fn wait_pttl_below(s: &Server, key: &str, ms: i64) {
    s.wait_for(TIMEOUT, |s| {
        let p = pttl(s, key);
        p > 0 && p <= ms
    });
}

/// `CONFIG GET pattern` as a map.
fn config_get(s: &Server, pattern: &str) -> HashMap<String, String> {
    let reply = s.cmd(&["CONFIG", "GET", pattern]);
    let items: Vec<Value> = match reply {
        Value::Array(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        other => panic!("CONFIG GET {pattern}: {}", render(&other)),
    };
    items
        .chunks(2)
        .map(|p| (render(&p[0]), render(&p[1])))
        .collect()
}

fn restore(s: &Server, key: &str, ttl: i64, payload: &[u8]) -> Value {
    let mut conn = s.client();
    req_bytes(
        &mut conn,
        &[
            b"RESTORE",
            key.as_bytes(),
            ttl.to_string().as_bytes(),
            payload,
        ],
    )
}

for_each_flavor! {
    /// A free lock is granted with a token and the requested TTL; the key is
    /// a `lockwardn` with the lease as its PTTL. Another owner gets nil; the
    /// same owner gets the same token and its TTL reset to the request.
    fn acquire_free_contended_and_retry(flavor: Flavor) {
        let s = Server::start(flavor);
        let before = now_ms();
        let (token, ttl) = acquire(&s, "k", "alice", 5000).expect("a free lock is granted");
        let after = now_ms();
        assert!(token > 0 && token < MAX_TOKEN, "token {token}");
        assert_eq!(ttl, 5000);
        assert!(exists(&s, "k"));
        assert_eq!(s.cmd_text(&["TYPE", "k"]), "lockwardn");
        let p = pttl(&s, "k");
        assert!(p > 2500 && p <= 5000, "PTTL {p}");
        assert!(int(&s.cmd(&["MEMORY", "USAGE", "k"])) > 0);
        assert_eq!(s.cmd_text(&["SCAN", "0", "TYPE", "lockwardn"]), "[0 [k]]");

        let info = held(&s, "k");
        assert_eq!(info.owner, b"alice");
        assert_eq!(info.token, token);
        assert!(info.ttl > 2500 && info.ttl <= 5000, "{info:?}");
        assert!(info.acquired_at >= before - 1000 && info.acquired_at <= after + 1000, "{info:?}");
        assert_eq!((info.extensions, info.session, info.waiters), (0, 0, 0));

        // Held by another owner: nil, nothing changes.
        assert_eq!(acquire(&s, "k", "bob", 5000), None);
        assert_eq!(held(&s, "k").lease_fields(), info.lease_fields());
        assert!(pttl(&s, "k") <= p);

        // Same owner: same token, TTL back up to the request.
        wait_pttl_below(&s, "k", 4200);
        assert_eq!(acquire(&s, "k", "alice", 5000), Some((token, 5000)));
        let p2 = pttl(&s, "k");
        assert!(p2 > 4200 && p2 <= 5000, "PTTL after the retry: {p2}");
        let retried = held(&s, "k");
        assert_eq!(retried.token, token);
        assert_eq!(retried.acquired_at, info.acquired_at, "a retry keeps the acquisition time");

        // The TTL is reset to the request, up or down.
        assert_eq!(acquire(&s, "k", "alice", 20000), Some((token, 20000)));
        assert!(pttl(&s, "k") > 15000);
        assert_eq!(acquire(&s, "k", "alice", 1000), Some((token, 1000)));
        assert!(pttl(&s, "k") <= 1000);
        assert_eq!(held(&s, "k").token, token);

        let st = lw_stats(&s);
        assert_eq!(st["acquires_granted"], 1);
        assert_eq!(st["acquires_retried"], 3);
        assert_eq!(st["acquires_contended"], 1);
        assert_eq!(st["locks_held"], 1);
        assert_eq!(st["token_high_water"], token);

        // Owners up to 38 bytes live inside the lease; longer ones count apart.
        let usage = |owner: &str| {
            acquire_ok(&s, "m", owner, 5000);
            let bytes = int(&s.cmd(&["MEMORY", "USAGE", "m"]));
            release_ok(&s, "m", owner);
            bytes
        };
        let short = usage("a");
        assert_eq!(usage(&"b".repeat(38)), short);
        assert_eq!(usage(&"c".repeat(39)), short + 39);
        assert_eq!(usage(&"d".repeat(256)), short + 256);
    }

    /// RELEASE: 1 and the key is gone; NOTHELD when nothing holds it (never
    /// acquired, released, expired); NOTOWNER for another owner or a stale
    /// FENCE; a release never removes someone else's lock.
    fn release_semantics(flavor: Flavor) {
        let s = Server::start(flavor);
        assert_err(&s.cmd(&["LOCK.RELEASE", "k", "alice"]), "NOTHELD", "never acquired");
        assert!(!exists(&s, "k"));

        let t = acquire_ok(&s, "k", "alice", 10000);
        assert_err(&s.cmd(&["LOCK.RELEASE", "k", "bob"]), "NOTOWNER", "another owner");
        for stale in [t - 1, t + 1, 1] {
            let reply = s.cmd(&["LOCK.RELEASE", "k", "alice", "FENCE", &stale.to_string()]);
            assert_err(&reply, "NOTOWNER", "stale fence");
        }
        let info = held(&s, "k");
        assert_eq!((info.owner.as_slice(), info.token), (&b"alice"[..], t));

        // Options are case-insensitive.
        assert_eq!(s.cmd(&["LOCK.RELEASE", "k", "alice", "fence", &t.to_string()]), Value::Int(1));
        assert!(!exists(&s, "k"));
        assert_eq!(lock_info(&s, "k"), None);
        assert_eq!(dbsize(&s), 0);
        assert_err(&s.cmd(&["LOCK.RELEASE", "k", "alice"]), "NOTHELD", "released");
        assert_err(&s.cmd(&["LOCK.RELEASE", "k", "alice", "FENCE", &t.to_string()]), "NOTHELD", "released, fenced");

        // After expiry: NOTHELD.
        let t2 = acquire_ok(&s, "k", "alice", 100);
        assert!(t2 > t);
        std::thread::sleep(Duration::from_millis(250));
        assert_err(&s.cmd(&["LOCK.RELEASE", "k", "alice"]), "NOTHELD", "expired");
        // The same owner after its lease ran out gets a new token, not its old one.
        let t2b = acquire_ok(&s, "k", "alice", 100);
        assert!(t2b > t2, "re-acquire after expiry reused token {t2}");
        std::thread::sleep(Duration::from_millis(250));

        // An expired holder's late release does not remove the next holder's lock.
        let t3 = acquire_ok(&s, "k", "alice", 100);
        std::thread::sleep(Duration::from_millis(250));
        let tb = acquire_ok(&s, "k", "bob", 10000);
        assert!(tb > t3);
        assert_err(&s.cmd(&["LOCK.RELEASE", "k", "alice"]), "NOTOWNER", "late release");
        assert_err(&s.cmd(&["LOCK.RELEASE", "k", "alice", "FENCE", &t3.to_string()]), "NOTOWNER", "late fenced release");
        assert_err(&s.cmd(&["LOCK.RELEASE", "k", "bob", "FENCE", &t3.to_string()]), "NOTOWNER", "old token");
        let info = held(&s, "k");
        assert_eq!((info.owner.as_slice(), info.token), (&b"bob"[..], tb));
        assert!(exists(&s, "k"));
        release_ok(&s, "k", "bob");
    }

    /// EXTEND returns the granted TTL, keeps the token, counts extensions and
    /// fails like RELEASE.
    fn extend_semantics(flavor: Flavor) {
        let s = Server::start(flavor);
        assert_err(&s.cmd(&["LOCK.EXTEND", "k", "alice", "1000"]), "NOTHELD", "never acquired");
        assert!(!exists(&s, "k"));

        let t = acquire_ok(&s, "k", "alice", 2000);
        assert_eq!(s.cmd(&["LOCK.EXTEND", "k", "alice", "10000"]), Value::Int(10000));
        let p = pttl(&s, "k");
        assert!(p > 7000 && p <= 10000, "PTTL {p}");
        let info = held(&s, "k");
        assert_eq!((info.token, info.extensions), (t, 1));

        // Lowering the lease is an extension too.
        assert_eq!(s.cmd(&["LOCK.EXTEND", "k", "alice", "5000", "FENCE", &t.to_string()]), Value::Int(5000));
        assert!(pttl(&s, "k") <= 5000);
        assert_eq!(held(&s, "k").extensions, 2);

        assert_err(&s.cmd(&["LOCK.EXTEND", "k", "bob", "50000"]), "NOTOWNER", "another owner");
        assert_err(&s.cmd(&["LOCK.EXTEND", "k", "alice", "50000", "FENCE", &(t + 1).to_string()]), "NOTOWNER", "stale fence");
        assert_err(&s.cmd(&["LOCK.EXTEND", "k", "alice", "60001"]), "TTLMAX", "above max");
        let info = held(&s, "k");
        assert_eq!((info.token, info.extensions), (t, 2));
        assert!(pttl(&s, "k") <= 5000, "a failed extend changed the lease");

        release_ok(&s, "k", "alice");
        assert_err(&s.cmd(&["LOCK.EXTEND", "k", "alice", "1000"]), "NOTHELD", "released");
        assert!(!exists(&s, "k"));

        acquire_ok(&s, "k", "alice", 100);
        std::thread::sleep(Duration::from_millis(250));
        assert_err(&s.cmd(&["LOCK.EXTEND", "k", "alice", "1000"]), "NOTHELD", "expired");
        assert_eq!(lock_info(&s, "k"), None);
        assert_eq!(lw_stat(&s, "extends"), 2);
    }

    /// LOCK.INFO: nil when free; every field; client-id is the acquiring
    /// connection's CLIENT ID and client-connected follows that connection;
    /// waiters counts blocked WAIT clients.
    fn lock_info_fields(flavor: Flavor) {
        let s = Server::start(flavor);
        assert_eq!(s.cmd(&["LOCK.INFO", "k"]), Value::Nil);

        let mut conn = s.client();
        let id = int(&req(&mut conn, &["CLIENT", "ID"]));
        let before = now_ms();
        let (token, _) = parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", "k", "alice", "30000"])).unwrap();
        let after = now_ms();
        let info = held(&s, "k");
        assert_eq!(info.owner, b"alice");
        assert_eq!(info.token, token);
        assert!(info.ttl > 25000 && info.ttl <= 30000, "{info:?}");
        assert!(info.acquired_at >= before - 1000 && info.acquired_at <= after + 1000, "{info:?}");
        assert!(info.held >= 0 && info.held < 5000, "{info:?}");
        assert_eq!(info.extensions, 0);
        assert_eq!(info.client_id, id, "client-id is the acquiring connection");
        assert_eq!(info.client_connected, 1);
        assert_eq!((info.session, info.waiters), (0, 0));

        for n in 1..=3 {
            assert_eq!(s.cmd(&["LOCK.EXTEND", "k", "alice", "30000"]), Value::Int(30000));
            let i = held(&s, "k");
            assert_eq!(i.extensions, n);
            assert_eq!(i.client_id, id, "an extend by another connection keeps the acquirer");
        }

        // A client blocked in WAIT is counted, until it goes away.
        let mut waiter = spawn_client(s.port(), &["LOCK.ACQUIRE k bob 30000 WAIT 0"], true);
        s.wait_for(TIMEOUT, |s| held(s, "k").waiters == 1);
        waiter.kill();
        s.wait_for(TIMEOUT, |s| held(s, "k").waiters == 0);

        // The acquiring connection closes: the lock stays (not a session lock).
        drop(conn);
        s.wait_for(TIMEOUT, |s| held(s, "k").client_connected == 0);
        let later = held(&s, "k");
        assert_eq!((later.owner.as_slice(), later.token, later.client_id), (&b"alice"[..], token, id));
        assert_eq!(later.acquired_at, info.acquired_at);
        assert!(later.held >= info.held);
    }

    /// Under RESP3 (HELLO 3) LOCK.INFO is a map with the same fields.
    fn lock_info_resp3_map(flavor: Flavor) {
        let s = Server::start(flavor);
        let client = redis::Client::open(format!("{}?protocol=resp3", s.url())).unwrap();
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(req(&mut conn, &["LOCK.INFO", "k"]), Value::Nil);
        let (token, ttl) = parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", "k", "alice", "30000"])).unwrap();
        assert_eq!(ttl, 30000);
        let reply = req(&mut conn, &["LOCK.INFO", "k"]);
        assert!(matches!(reply, Value::Map(_)), "RESP3 LOCK.INFO is a map: {reply:?}");
        let info = parse_lock_info(&reply).unwrap();
        assert_eq!(info.token, token);
        assert_eq!(info.owner, b"alice");
        assert_eq!(info.client_id, int(&req(&mut conn, &["CLIENT", "ID"])));
        // RESP2 shows the same lease.
        assert_eq!(held(&s, "k").lease_fields(), info.lease_fields());
    }

    /// Every lock command on a key of another type: WRONGTYPE, and the key
    /// (value and TTL) is untouched.
    fn wrongtype_leaves_key_untouched(flavor: Flavor) {
        let s = Server::start(flavor);
        s.cmd(&["SET", "str", "v"]);
        s.cmd(&["SET", "tstr", "v", "PX", "100000"]);
        s.cmd(&["RPUSH", "list", "a", "b"]);
        s.cmd(&["HSET", "hash", "f", "v"]);
        s.cmd(&["SADD", "set", "m"]);
        let keys = ["str", "tstr", "list", "hash", "set"];
        let digests: Vec<String> = keys.iter().map(|k| digest(&s, k)).collect();
        let types: Vec<String> = keys.iter().map(|k| s.cmd_text(&["TYPE", k])).collect();
        for key in keys {
            let before = pttl(&s, key);
            for args in [
                vec!["LOCK.ACQUIRE", key, "o", "1000"],
                vec!["LOCK.ACQUIRE", key, "o", "1000", "WAIT", "100"],
                vec!["LOCK.RELEASE", key, "o"],
                vec!["LOCK.RELEASE", key, "o", "FENCE", "5"],
                vec!["LOCK.EXTEND", key, "o", "1000"],
                vec!["LOCK.INFO", key],
            ] {
                assert_err(&s.cmd(&args), "WRONGTYPE", &format!("{args:?}"));
            }
            let after = pttl(&s, key);
            if before == -1 {
                assert_eq!(after, -1, "{key} got a TTL");
            } else {
                assert!(after > 0 && after <= before, "{key}: PTTL {before} -> {after}");
            }
        }
        for (i, key) in keys.iter().enumerate() {
            assert_eq!(digest(&s, key), digests[i], "{key} changed");
            assert_eq!(s.cmd_text(&["TYPE", key]), types[i]);
        }
        assert_eq!(s.cmd_text(&["GET", "str"]), "v");
        let st = lw_stats(&s);
        assert_eq!((st["locks_held"], st["token_high_water"], st["acquires_granted"]), (0, 0, 0));
    }

    /// Every ERR path (arity, numbers, options, owners) changes nothing: the
    /// held lock keeps its owner, token and lease, no key is created and no
    /// token is spent.
    fn syntax_errors_change_nothing(flavor: Flavor) {
        let s = Server::start(flavor);
        let t = acquire_ok(&s, "k", "alice", 30000);
        let tok = t.to_string();
        let lease = held(&s, "k").lease_fields();
        let hw = lw_stat(&s, "token_high_water");
        let long = "o".repeat(257);
        let huge = ["99999999999999999999", "18446744073709551616", "9223372036854775808"];
        let mut bad: Vec<Vec<&str>> = vec![
            vec!["LOCK.ACQUIRE"],
            vec!["LOCK.ACQUIRE", "k"],
            vec!["LOCK.ACQUIRE", "k", "alice"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "BOGUS"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "WAIT"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "WAIT", "x"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "WAIT", "-1"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "WAIT", "1099511627777"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "WAIT", "10", "WAIT", "10"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "WAIT", "10", "wait", "10"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "SESSION", "SESSION"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "SESSION", "BOGUS"],
            // More arguments than the command's usual handful.
            vec!["LOCK.ACQUIRE", "free", "bob", "1000", "WAIT", "10", "SESSION", "WAIT", "10", "SESSION"],
            vec!["LOCK.ACQUIRE", "k", "alice", "60000", "FENCE", &tok],
            vec!["LOCK.ACQUIRE", "k", "", "60000"],
            vec!["LOCK.ACQUIRE", "k", &long, "60000"],
            vec!["LOCK.ACQUIRE", "free", "bob", "0"],
            vec!["LOCK.ACQUIRE", "free", "bob", "1000", "BOGUS"],
            vec!["LOCK.ACQUIRE", "free", "bob", "1000", "WAIT"],
            vec!["LOCK.ACQUIRE", "free", "bob", "1000", "SESSION", "session"],
            vec!["LOCK.ACQUIRE", "free", "", "1000"],
            vec!["LOCK.ACQUIRE", "free", &long, "1000"],
            vec!["LOCK.RELEASE"],
            vec!["LOCK.RELEASE", "k"],
            vec!["LOCK.RELEASE", "k", "alice", "FENCE"],
            vec!["LOCK.RELEASE", "k", "alice", "FENCE", "abc"],
            vec!["LOCK.RELEASE", "k", "alice", "FENCE", "0"],
            vec!["LOCK.RELEASE", "k", "alice", "FENCE", "-1"],
            vec!["LOCK.RELEASE", "k", "alice", "FENCE", &tok, "FENCE", &tok],
            vec!["LOCK.RELEASE", "k", "alice", "FENCE", &tok, "fence", &tok],
            vec!["LOCK.RELEASE", "k", "alice", "FENCE", &tok, "extra"],
            vec!["LOCK.RELEASE", "k", "alice", "BOGUS"],
            vec!["LOCK.RELEASE", "k", "alice", "WAIT", "10"],
            vec!["LOCK.RELEASE", "k", ""],
            vec!["LOCK.RELEASE", "k", &long],
            vec!["LOCK.RELEASE", "free", "bob", "FENCE"],
            vec!["LOCK.EXTEND"],
            vec!["LOCK.EXTEND", "k"],
            vec!["LOCK.EXTEND", "k", "alice"],
            vec!["LOCK.EXTEND", "k", "alice", "60000", "FENCE"],
            vec!["LOCK.EXTEND", "k", "alice", "60000", "FENCE", "abc"],
            vec!["LOCK.EXTEND", "k", "alice", "60000", "FENCE", "0"],
            vec!["LOCK.EXTEND", "k", "alice", "60000", "FENCE", &tok, "FENCE", &tok],
            vec!["LOCK.EXTEND", "k", "alice", "60000", "BOGUS"],
            vec!["LOCK.EXTEND", "k", "alice", "60000", "SESSION"],
            vec!["LOCK.EXTEND", "k", "alice", "60000", "WAIT", "10"],
            vec!["LOCK.EXTEND", "k", "", "60000"],
            vec!["LOCK.EXTEND", "k", &long, "60000"],
            vec!["LOCK.INFO"],
            vec!["LOCK.INFO", "k", "extra"],
        ];
        for ttl in ["abc", "0", "-1", "-5", "+5", " 5", "5 ", "1.5", "0x10", "", "1e3"]
            .into_iter()
            .chain(huge)
        {
            bad.push(vec!["LOCK.ACQUIRE", "k", "alice", ttl]);
            bad.push(vec!["LOCK.ACQUIRE", "free", "bob", ttl]);
            bad.push(vec!["LOCK.EXTEND", "k", "alice", ttl]);
            bad.push(vec!["LOCK.EXTEND", "k", "alice", ttl, "FENCE", &tok]);
        }
        for token in huge {
            bad.push(vec!["LOCK.RELEASE", "k", "alice", "FENCE", token]);
            bad.push(vec!["LOCK.EXTEND", "k", "alice", "60000", "FENCE", token]);
        }
        let mut last_pttl = pttl(&s, "k");
        for args in &bad {
            let reply = s.cmd(args);
            assert_err(&reply, "ERR", &format!("{args:?}"));
            let info = lock_info(&s, "k").unwrap_or_else(|| panic!("{args:?} released the lock"));
            assert_eq!(info.lease_fields(), lease, "{args:?} changed the lock");
            let p = pttl(&s, "k");
            assert!(p > 0 && p <= last_pttl, "{args:?} changed the lease: PTTL {last_pttl} -> {p}");
            last_pttl = p;
            assert!(!exists(&s, "free"), "{args:?} created a lock");
            assert_eq!(lw_stat(&s, "token_high_water"), hw, "{args:?} spent a token");
        }
        let many = s.cmd_text(&["LOCK.ACQUIRE", "free", "bob", "1000", "WAIT", "10", "SESSION", "WAIT", "10", "SESSION"]);
        assert!(many.contains("option WAIT given more than once"), "{many}");
        let st = lw_stats(&s);
        assert_eq!((st["acquires_granted"], st["acquires_retried"], st["releases"], st["extends"]), (1, 0, 0, 0));
        // The lock still works.
        release_ok(&s, "k", "alice");
    }

    /// Keys and owners are binary-safe (NUL, 0xff, CR/LF, prefixes).
    fn binary_safe_keys_and_owners(flavor: Flavor) {
        let s = Server::start(flavor);
        let mut c = s.client();
        let key: &[u8] = b"lw:\x00bin\xff\r\nkey";
        let prefix_key: &[u8] = b"lw:\x00bin";
        let owner: &[u8] = b"own\x00er\xff\xfe";
        let owner_prefix: &[u8] = b"own";
        let owner_other: &[u8] = b"own\x00er\xff\xfd";

        let (t, _) = parse_grant(&req_bytes(&mut c, &[b"LOCK.ACQUIRE", key, owner, b"30000"])).unwrap();
        let info = parse_lock_info(&req_bytes(&mut c, &[b"LOCK.INFO", key])).unwrap();
        assert_eq!(info.owner, owner);
        assert_eq!(info.token, t);
        assert_eq!(req_bytes(&mut c, &[b"LOCK.INFO", prefix_key]), Value::Nil);

        for other in [owner_prefix, owner_other] {
            assert_eq!(req_bytes(&mut c, &[b"LOCK.ACQUIRE", key, other, b"1000"]), Value::Nil);
            assert_err(&req_bytes(&mut c, &[b"LOCK.RELEASE", key, other]), "NOTOWNER", "other binary owner");
            assert_err(&req_bytes(&mut c, &[b"LOCK.EXTEND", key, other, b"1000"]), "NOTOWNER", "other binary owner");
        }
        // A key that is a prefix of the other is another lock.
        let (t2, _) = parse_grant(&req_bytes(&mut c, &[b"LOCK.ACQUIRE", prefix_key, owner_other, b"30000"])).unwrap();
        assert!(t2 > t);
        assert_eq!(parse_grant(&req_bytes(&mut c, &[b"LOCK.ACQUIRE", key, owner, b"30000"])), Some((t, 30000)));
        assert_eq!(req_bytes(&mut c, &[b"LOCK.EXTEND", key, owner, b"20000"]), Value::Int(20000));
        let fence = t.to_string();
        assert_eq!(req_bytes(&mut c, &[b"LOCK.RELEASE", key, owner, b"FENCE", fence.as_bytes()]), Value::Int(1));
        assert_eq!(req_bytes(&mut c, &[b"EXISTS", key]), Value::Int(0));
        let info2 = parse_lock_info(&req_bytes(&mut c, &[b"LOCK.INFO", prefix_key])).unwrap();
        assert_eq!((info2.owner.as_slice(), info2.token), (owner_other, t2));
        assert_eq!(req_bytes(&mut c, &[b"LOCK.RELEASE", prefix_key, owner_other]), Value::Int(1));

        // A 256-byte owner made of every byte value is accepted; 257 is not.
        let all: Vec<u8> = (0..=255u8).collect();
        let (t3, _) = parse_grant(&req_bytes(&mut c, &[b"LOCK.ACQUIRE", b"\xff\x00", &all, b"1000"])).unwrap();
        assert!(t3 > t2);
        let info3 = parse_lock_info(&req_bytes(&mut c, &[b"LOCK.INFO", b"\xff\x00"])).unwrap();
        assert_eq!(info3.owner, all);
        let mut too_long = all.clone();
        too_long.push(0);
        assert_err(&req_bytes(&mut c, &[b"LOCK.ACQUIRE", b"other", &too_long, b"1000"]), "ERR", "257-byte owner");
        assert_eq!(req_bytes(&mut c, &[b"LOCK.RELEASE", b"\xff\x00", &all]), Value::Int(1));
        assert_eq!(dbsize(&s), 0);
    }

    /// lockwarden.max-ttl-ms / min-ttl-ms / clamp-ttl: TTLMAX, clamping
    /// (the reply shows the granted TTL), TTLMIN, EXTEND under the same
    /// limits, CONFIG GET, and CONFIG SET refusing min above max.
    fn ttl_limits_and_config(flavor: Flavor) {
        let s = Server::start(flavor);
        let cfg = config_get(&s, "lockwarden.*");
        for name in [
            "max-ttl-ms",
            "min-ttl-ms",
            "clamp-ttl",
            "policy-fuel",
            "policy-memory-kb",
            "policy-max-module-kb",
            "policy-failure",
        ] {
            assert!(cfg.contains_key(&format!("lockwarden.{name}")), "CONFIG GET lockwarden.* lacks {name}: {cfg:?}");
        }
        assert_eq!(cfg["lockwarden.max-ttl-ms"], "60000");
        assert_eq!(cfg["lockwarden.min-ttl-ms"], "1");
        assert_eq!(cfg["lockwarden.clamp-ttl"], "no");

        // Defaults: up to 60000 granted, above it TTLMAX, nothing created.
        assert_eq!(acquire(&s, "a", "o", 60000).unwrap().1, 60000);
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "b", "o", "60001"]), "TTLMAX", "default max");
        assert!(!exists(&s, "b"));
        assert_err(&s.cmd(&["LOCK.EXTEND", "a", "o", "60001"]), "TTLMAX", "extend above max");
        assert_eq!(acquire(&s, "c", "o", 1).unwrap().1, 1);

        // Clamping: the reply carries the clamped TTL.
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "lockwarden.clamp-ttl", "yes"]), "OK");
        let (_, granted) = acquire(&s, "d", "o", 600_000).unwrap();
        assert_eq!(granted, 60000, "clamped grant");
        let p = pttl(&s, "d");
        assert!(p > 55000 && p <= 60000, "PTTL {p}");
        assert_eq!(s.cmd(&["LOCK.EXTEND", "d", "o", "9999999"]), Value::Int(60000));
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "1000"]), "OK");
        assert_eq!(acquire(&s, "e", "o", 5000).unwrap().1, 1000);
        assert!(pttl(&s, "e") <= 1000);

        // Without clamping, the new maximum is enforced for acquire and extend.
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "lockwarden.clamp-ttl", "no"]), "OK");
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "f", "o", "1001"]), "TTLMAX", "new max");
        assert!(!exists(&s, "f"));
        assert_err(&s.cmd(&["LOCK.EXTEND", "d", "o", "1001"]), "TTLMAX", "extend above new max");
        assert!(pttl(&s, "d") > 50000, "a refused extend changed the lease");
        assert_eq!(s.cmd(&["LOCK.EXTEND", "d", "o", "1000"]), Value::Int(1000));
        assert!(pttl(&s, "d") <= 1000);
        // The limit applies even when the lock is held by someone else.
        acquire_ok(&s, "g", "holder", 1000);
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "g", "o", "1001"]), "TTLMAX", "contended above max");

        // Minimum (with a roomy maximum again, so that h stays held).
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "60000"]), "OK");
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "lockwarden.min-ttl-ms", "100"]), "OK");
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "h", "o", "99"]), "TTLMIN", "below min");
        assert!(!exists(&s, "h"));
        acquire_ok(&s, "h", "o", 30000);
        assert_err(&s.cmd(&["LOCK.EXTEND", "h", "o", "99"]), "TTLMIN", "extend below min");
        assert!(pttl(&s, "h") > 100);
        assert_eq!(acquire(&s, "i", "o", 100).unwrap().1, 100);
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "lockwarden.clamp-ttl", "yes"]), "OK");
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "j", "o", "50"]), "TTLMIN", "clamping does not lift the minimum");
        assert!(!exists(&s, "j"));

        // min above max is refused, in both directions.
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "1000"]), "OK");
        assert!(s.cmd_text(&["CONFIG", "SET", "lockwarden.min-ttl-ms", "2000"]).starts_with("(error)"));
        assert!(s.cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "50"]).starts_with("(error)"));
        assert!(s.cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "0"]).starts_with("(error)"));
        assert!(s.cmd_text(&["CONFIG", "SET", "lockwarden.clamp-ttl", "maybe"]).starts_with("(error)"));
        // The bounds are checked once every value of a CONFIG SET is in, in
        // any order; a failing CONFIG SET leaves every value as it was.
        assert!(s
            .cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "5000", "lockwarden.min-ttl-ms", "2000", "lockwarden.clamp-ttl", "bogus"])
            .starts_with("(error)"));
        assert!(s
            .cmd_text(&["CONFIG", "SET", "lockwarden.min-ttl-ms", "2000", "lockwarden.max-ttl-ms", "1500"])
            .starts_with("(error)"));
        let cfg = config_get(&s, "lockwarden.*");
        assert_eq!((cfg["lockwarden.min-ttl-ms"].as_str(), cfg["lockwarden.max-ttl-ms"].as_str()), ("100", "1000"));
        assert_eq!(
            s.cmd_text(&["CONFIG", "SET", "lockwarden.min-ttl-ms", "2000", "lockwarden.max-ttl-ms", "5000"]),
            "OK"
        );
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "lockwarden.min-ttl-ms", "100", "lockwarden.max-ttl-ms", "1000"]), "OK");
        let cfg = config_get(&s, "lockwarden.*");
        assert_eq!(cfg["lockwarden.min-ttl-ms"], "100");
        assert_eq!(cfg["lockwarden.max-ttl-ms"], "1000");
        assert_eq!(cfg["lockwarden.clamp-ttl"], "yes");

        let st = lw_stats(&s);
        assert_eq!(st["rejected_ttlmax"], 5);
        assert_eq!(st["rejected_ttlmin"], 3);
    }

    /// Module load arguments set the TTL limits (with or without the
    /// `lockwarden.` prefix); bad ones stop the server from starting.
    fn module_args_set_limits(flavor: Flavor) {
        let s = Server::builder(flavor)
            .module_arg("max-ttl-ms", "1000")
            .module_arg("min-ttl-ms", "10")
            .start();
        let cfg = config_get(&s, "lockwarden.*");
        assert_eq!((cfg["lockwarden.max-ttl-ms"].as_str(), cfg["lockwarden.min-ttl-ms"].as_str()), ("1000", "10"));
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "k", "o", "1001"]), "TTLMAX", "module arg max");
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "k", "o", "9"]), "TTLMIN", "module arg min");
        assert_eq!(acquire(&s, "k", "o", 1000).unwrap().1, 1000);
        drop(s);

        let s = Server::builder(flavor)
            .module_arg("lockwarden.max-ttl-ms", "2000")
            .module_arg("clamp-ttl", "yes")
            .start();
        assert_eq!(config_get(&s, "lockwarden.clamp-ttl")["lockwarden.clamp-ttl"], "yes");
        assert_eq!(acquire(&s, "k", "o", 5000).unwrap().1, 2000);
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "3000"]), "OK");
        assert_eq!(acquire(&s, "k2", "o", 5000).unwrap().1, 3000);
        drop(s);

        for bad in [
            vec!["max-ttl-ms", "abc"],
            vec!["max-ttl-ms", "0"],
            vec!["no-such-setting", "1"],
            vec!["min-ttl-ms", "5000", "max-ttl-ms", "1000"],
            vec!["max-ttl-ms"],
        ] {
            let dir = tempfile::tempdir().unwrap();
            let words = bad.clone();
            let started = std::panic::catch_unwind(move || {
                Server::builder(flavor).dir(dir.path()).module_raw_args(words).start()
            });
            assert!(started.is_err(), "the server started with module args {bad:?}");
        }
    }

    /// Fencing tokens for one key strictly increase across release, expiry,
    /// DEL, overwrite, FLUSHALL, FLUSHDB and DEBUG RELOAD (with and without
    /// a lock held), and fit in an i64.
    fn tokens_increase_across_keyspace_events(flavor: Flavor) {
        let s = Server::start(flavor);
        let mut tokens = Vec::new();
        let mut take = |s: &Server, owner: &str, ttl: u64| {
            let t = acquire_ok(s, "k", owner, ttl);
            tokens.push(t);
            t
        };
        take(&s, "a", 10000);
        release_ok(&s, "k", "a");
        take(&s, "b", 10000);
        release_ok(&s, "k", "b");
        take(&s, "a", 50);
        wait_gone(&s, "k", TIMEOUT);
        take(&s, "b", 10000);
        assert_eq!(s.cmd(&["DEL", "k"]), Value::Int(1));
        take(&s, "a", 10000);
        assert_eq!(s.cmd(&["UNLINK", "k"]), Value::Int(1));
        take(&s, "b", 10000);
        assert_eq!(s.cmd_text(&["SET", "k", "plain"]), "OK");
        assert_eq!(s.cmd(&["DEL", "k"]), Value::Int(1));
        take(&s, "a", 10000);
        assert_eq!(s.cmd_text(&["FLUSHALL"]), "OK");
        take(&s, "b", 10000);
        assert_eq!(s.cmd_text(&["FLUSHDB"]), "OK");
        let t = take(&s, "a", 10000);
        // DEBUG RELOAD with the lock held: it survives with its token.
        assert_eq!(s.cmd_text(&["DEBUG", "RELOAD"]), "OK");
        let info = held(&s, "k");
        assert_eq!((info.owner.as_slice(), info.token), (&b"a"[..], t));
        release_ok(&s, "k", "a");
        // DEBUG RELOAD with nothing held: the high-water mark survives.
        assert_eq!(s.cmd_text(&["DEBUG", "RELOAD"]), "OK");
        assert_eq!(lw_stat(&s, "token_high_water"), t);
        take(&s, "b", 10000);
        release_ok(&s, "k", "b");
        assert_eq!(s.cmd_text(&["FLUSHALL"]), "OK");
        assert_eq!(s.cmd_text(&["DEBUG", "RELOAD"]), "OK");
        take(&s, "a", 10000);

        assert_strictly_increasing(&tokens, "tokens of k");
        assert!(tokens.iter().all(|&t| t > 0 && t < MAX_TOKEN), "{tokens:?}");
        assert_eq!(lw_stat(&s, "token_high_water"), *tokens.last().unwrap());

        // Many grants in a burst (several per millisecond) stay increasing.
        let mut conn = s.client();
        let mut pipe = redis::pipe();
        for _ in 0..500 {
            pipe.cmd("LOCK.ACQUIRE").arg("burst").arg("o").arg(10000);
            pipe.cmd("LOCK.RELEASE").arg("burst").arg("o");
        }
        let replies: Vec<Value> = pipe.query(&mut conn).unwrap();
        let burst: Vec<i64> = replies
            .chunks(2)
            .map(|p| {
                assert_eq!(p[1], Value::Int(1));
                parse_grant(&p[0]).expect("granted").0
            })
            .collect();
        assert!(burst[0] > *tokens.last().unwrap());
        assert_strictly_increasing(&burst, "burst tokens");
    }

    /// DUMP / RESTORE round trip: the restored lock has the same owner,
    /// token, acquisition time and extensions, the holder can extend and
    /// release it, and a server that restores it issues larger tokens.
    fn dump_restore_round_trip(flavor: Flavor) {
        let s = Server::start(flavor);
        let t = acquire_ok(&s, "k", "alice", 30000);
        s.cmd(&["LOCK.EXTEND", "k", "alice", "30000"]);
        s.cmd(&["LOCK.EXTEND", "k", "alice", "30000"]);
        let payload = dump(&s, "k");
        let p = pttl(&s, "k");
        assert_eq!(restore(&s, "k2", p, &payload), Value::Okay);
        let (a, b) = (held(&s, "k"), held(&s, "k2"));
        assert_eq!(a.lease_fields(), b.lease_fields());
        assert_eq!((b.owner.as_slice(), b.token, b.extensions), (&b"alice"[..], t, 2));
        assert!((a.ttl - b.ttl).abs() <= 1000, "{a:?} vs {b:?}");
        assert_eq!(digest(&s, "k"), digest(&s, "k2"));
        assert_eq!(s.cmd_text(&["TYPE", "k2"]), "lockwardn");
        let p2 = pttl(&s, "k2");
        assert!(p2 > 0 && p2 <= p, "PTTL {p2}");
        assert_err(&restore(&s, "k2", p, &payload), "BUSYKEY", "restore onto an existing key");

        // The restored lock is a working lock.
        assert_eq!(acquire(&s, "k2", "bob", 1000), None);
        assert_eq!(s.cmd(&["LOCK.EXTEND", "k2", "alice", "20000", "FENCE", &t.to_string()]), Value::Int(20000));
        assert_eq!(s.cmd(&["LOCK.RELEASE", "k2", "alice", "FENCE", &t.to_string()]), Value::Int(1));
        assert!(!exists(&s, "k2"));
        assert_eq!(held(&s, "k").token, t, "the original is untouched");
        assert!(acquire_ok(&s, "k2", "bob", 1000) > t);

        // Into another server: it raises that server's token clock.
        let other = Server::start(flavor);
        assert_eq!(restore(&other, "k", pttl(&s, "k"), &payload), Value::Okay);
        assert_eq!(held(&other, "k").lease_fields(), held(&s, "k").lease_fields());
        assert!(lw_stat(&other, "token_high_water") >= t);
        assert_eq!(other.cmd(&["LOCK.RELEASE", "k", "alice", "FENCE", &t.to_string()]), Value::Int(1));
        assert!(acquire_ok(&other, "k", "carol", 1000) > t);
    }

    /// Corrupt DUMP payloads are refused (bad CRC, and valid CRC with a
    /// corrupt lease encoding); the server stays up and other locks are
    /// unchanged. A valid lease with the largest token (i64::MAX) restores;
    /// it leaves no larger token, so the next grant fails loudly (`TOKENS`)
    /// and changes nothing, while the existing locks keep working.
    fn restore_corrupt_payload_is_refused(flavor: Flavor) {
        // Known answer of Redis's crc64 (src/crc64.c).
        assert_eq!(crc64_jones(b"123456789"), 0xe9c6_d914_c4b8_d9ca);

        // No LZF compression, so the lease bytes appear verbatim.
        let s = Server::builder(flavor).arg("rdbcompression", "no").start();
        let good = acquire_ok(&s, "good", "keeper", 60000);
        let t = acquire_ok(&s, "victim", "alice", 60000);
        let payload = dump(&s, "victim");
        let n = payload.len();
        assert_eq!(
            crc64_jones(&payload[..n - 8]).to_le_bytes(),
            payload[n - 8..],
            "the test's CRC-64 matches the server's"
        );
        // The lease encoding: version byte 1, then the token little-endian.
        let mut needle = vec![1u8];
        needle.extend_from_slice(&(t as u64).to_le_bytes());
        let at = payload
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap_or_else(|| panic!("lease not found in {payload:?}"));
        let token_at = at + 1;
        let deadline_at = at + 9;
        let flags_at = at + 29;

        let hw = lw_stat(&s, "token_high_water");
        let good_info = held(&s, "good").lease_fields();
        let locks = lw_stat(&s, "locks_held");

        let mutated = |f: &dyn Fn(&mut Vec<u8>), fix: bool| {
            let mut p = payload.clone();
            f(&mut p);
            if fix {
                fix_crc(&mut p);
            }
            p
        };
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("garbage", b"not a dump payload at all".to_vec()),
            ("empty", Vec::new()),
            ("bad crc", mutated(&|p| p[token_at] ^= 0x01, false)),
            ("truncated", payload[..n / 2].to_vec()),
            ("token 0", mutated(&|p| p[token_at..token_at + 8].fill(0), true)),
            ("token u64::MAX", mutated(&|p| p[token_at..token_at + 8].fill(0xff), true)),
            (
                "token above i64::MAX",
                mutated(&|p| p[token_at..token_at + 8].copy_from_slice(&(1u64 << 63).to_le_bytes()), true),
            ),
            ("version 9", mutated(&|p| p[at] = 9, true)),
            ("version 0", mutated(&|p| p[at] = 0, true)),
            ("unknown flags", mutated(&|p| p[flags_at] = 0x80, true)),
            ("string shorter than the header", mutated(&|p| p[at - 1] = 20, true)),
            ("string length beyond the payload", mutated(&|p| p[at - 1] = 60, true)),
            ("missing module EOF", mutated(&|p| p[n - 11] = 0x05, true)),
        ];
        for (what, bad) in &cases {
            let reply = restore(&s, "corrupt", 0, bad);
            assert!(err_code(&reply).is_some(), "RESTORE of a corrupt payload ({what}) replied {}", render(&reply));
            assert_eq!(s.cmd_text(&["PING"]), "PONG", "server after {what}");
            assert!(!exists(&s, "corrupt"), "{what}: a key was created");
            assert_eq!(held(&s, "good").lease_fields(), good_info, "{what}: another lock changed");
            assert_eq!(lw_stat(&s, "token_high_water"), hw, "{what}: the token clock moved");
            assert_eq!(lw_stat(&s, "locks_held"), locks, "{what}: lock count");
        }
        assert!(s.is_running());

        // Control: the same edit path without a change restores fine.
        let same = mutated(&|_| {}, true);
        assert_eq!(restore(&s, "control", 0, &same), Value::Okay);
        assert_eq!(held(&s, "control").token, t);

        // A deadline before the acquisition time is a valid lease (what an
        // extension on a node with a slower clock produces).
        let early = mutated(&|p| p[deadline_at..deadline_at + 8].copy_from_slice(&1i64.to_le_bytes()), true);
        assert_eq!(restore(&s, "early", 0, &early), Value::Okay);
        assert!(lock_info(&s, "early").is_none(), "a lease past its deadline is not held");

        // The largest token restores, and stops the clock: no larger token
        // exists, so a grant fails with TOKENS and nothing changes.
        let max = mutated(&|p| p[token_at..token_at + 8].copy_from_slice(&(MAX_TOKEN as u64).to_le_bytes()), true);
        assert_eq!(restore(&s, "maxed", 0, &max), Value::Okay);
        assert_eq!(held(&s, "maxed").token, MAX_TOKEN);
        assert_eq!(lw_stat(&s, "token_high_water"), MAX_TOKEN);
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "after-max", "o", "1000"]), "TOKENS", "");
        assert!(!exists(&s, "after-max"));
        assert_eq!(s.cmd(&["LOCK.EXTEND", "good", "keeper", "60000"]), Value::Int(60000));
        assert_eq!(held(&s, "good").token, good);
        release_ok(&s, "good", "keeper");
    }

    /// INFO lockwarden counters follow the commands.
    fn info_counters(flavor: Flavor) {
        let s = Server::start(flavor);
        let zero = lw_stats(&s);
        for f in [
            "locks_held", "acquires_granted", "acquires_retried", "acquires_contended", "releases",
            "extends", "errors_notowner", "errors_notheld", "rejected_ttlmax", "rejected_ttlmin",
            "expired_while_held", "deleted_while_held", "token_high_water", "waiters",
        ] {
            assert_eq!(zero.get(f), Some(&0), "INFO lockwarden {f} at start: {zero:?}");
        }
        let t1 = acquire_ok(&s, "k1", "a", 10000);
        assert_eq!(acquire(&s, "k1", "b", 10000), None);
        assert_eq!(acquire(&s, "k1", "a", 10000), Some((t1, 10000)));
        assert_eq!(s.cmd(&["LOCK.EXTEND", "k1", "a", "10000"]), Value::Int(10000));
        assert_err(&s.cmd(&["LOCK.RELEASE", "k1", "b"]), "NOTOWNER", "");
        assert_err(&s.cmd(&["LOCK.RELEASE", "k1", "a", "FENCE", &(t1 + 1).to_string()]), "NOTOWNER", "");
        assert_err(&s.cmd(&["LOCK.EXTEND", "k1", "b", "100"]), "NOTOWNER", "");
        release_ok(&s, "k1", "a");
        assert_err(&s.cmd(&["LOCK.RELEASE", "k1", "a"]), "NOTHELD", "");
        assert_err(&s.cmd(&["LOCK.EXTEND", "k1", "a", "100"]), "NOTHELD", "");
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "k1", "a", "60001"]), "TTLMAX", "");
        s.cmd(&["CONFIG", "SET", "lockwarden.min-ttl-ms", "10"]);
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "k1", "a", "5"]), "TTLMIN", "");
        s.cmd(&["CONFIG", "SET", "lockwarden.min-ttl-ms", "1"]);

        let st = lw_stats(&s);
        assert_eq!(st["acquires_granted"], 1);
        assert_eq!(st["acquires_contended"], 1);
        assert_eq!(st["acquires_retried"], 1);
        assert_eq!(st["extends"], 1);
        assert_eq!(st["errors_notowner"], 3);
        assert_eq!(st["releases"], 1);
        assert_eq!(st["errors_notheld"], 2);
        assert_eq!(st["rejected_ttlmax"], 1);
        assert_eq!(st["rejected_ttlmin"], 1);
        assert_eq!(st["locks_held"], 0);
        assert_eq!(st["token_high_water"], t1);

        // Syntax errors and WRONGTYPE move no counter.
        s.cmd(&["SET", "plain", "v"]);
        let before = lw_stats(&s);
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "k1", "a", "0"]), "ERR", "");
        assert_err(&s.cmd(&["LOCK.RELEASE", "k1"]), "ERR", "");
        assert_err(&s.cmd(&["LOCK.ACQUIRE", "plain", "a", "100"]), "WRONGTYPE", "");
        assert_eq!(lw_stats(&s), before);

        // A lease that runs out while held.
        let t2 = acquire_ok(&s, "k2", "a", 100);
        s.wait_for(TIMEOUT, |s| lw_stat(s, "expired_while_held") == 1);
        assert!(!exists(&s, "k2"));
        // A live lock deleted behind the module's back.
        let t3 = acquire_ok(&s, "k3", "a", 10000);
        assert_eq!(s.cmd(&["DEL", "k3"]), Value::Int(1));
        assert_eq!(lw_stat(&s, "deleted_while_held"), 1);
        let t4 = acquire_ok(&s, "k4", "a", 10000);
        let t5 = acquire_ok(&s, "k5", "b", 10000);
        let st = lw_stats(&s);
        assert_eq!(st["acquires_granted"], 5);
        assert_eq!(st["expired_while_held"], 1);
        assert_eq!(st["deleted_while_held"], 1);
        assert_eq!(st["locks_held"], 2);
        assert_strictly_increasing(&[t1, t2, t3, t4, t5], "tokens");
        assert_eq!(st["token_high_water"], t5);
        release_ok(&s, "k4", "a");
        assert_eq!(lw_stat(&s, "locks_held"), 1);
        assert_eq!(lw_stat(&s, "releases"), 2);
        assert_eq!(s.cmd_text(&["DEBUG", "RELOAD"]), "OK");
        assert_eq!(lw_stat(&s, "locks_held"), 1, "after DEBUG RELOAD");
        acquire_ok(&s, "k6", "a", 10000);
        assert_eq!(lw_stat(&s, "locks_held"), 2);
        assert_eq!(s.cmd_text(&["FLUSHALL"]), "OK");
        s.wait_for(TIMEOUT, |s| lw_stat(s, "locks_held") == 0);
    }

    /// A lease ends at its deadline even when the key outlives it (PERSIST,
    /// a longer EXPIRE, RESTORE with ttl 0): the lock is then free, so
    /// LOCK.INFO is nil, the old holder gets NOTHELD and another owner gets
    /// a larger token.
    fn lease_ends_at_deadline_even_if_key_outlives_it(flavor: Flavor) {
        let s = Server::start(flavor);
        let t_persist = acquire_ok(&s, "z:persist", "alice", 1500);
        assert_eq!(s.cmd(&["PERSIST", "z:persist"]), Value::Int(1));
        let t_expire = acquire_ok(&s, "z:expire", "alice", 1500);
        assert_eq!(s.cmd(&["PEXPIRE", "z:expire", "600000"]), Value::Int(1));
        let t_src = acquire_ok(&s, "z:src", "alice", 1500);
        assert_eq!(restore(&s, "z:restored", 0, &dump(&s, "z:src")), Value::Okay);
        assert_eq!(held(&s, "z:restored").token, t_src);
        // Same deadline for all three (within a few ms): once Redis expired
        // z:src, every lease is over.
        wait_gone(&s, "z:src", TIMEOUT);
        std::thread::sleep(Duration::from_millis(50));
        let mut problems = Vec::new();
        for (key, t) in [("z:persist", t_persist), ("z:expire", t_expire), ("z:restored", t_src)] {
            if let Some(info) = lock_info(&s, key) {
                problems.push(format!("{key}: LOCK.INFO of a lease past its deadline: {info:?}"));
            }
            assert_err(&s.cmd(&["LOCK.RELEASE", key, "alice"]), "NOTHELD", key);
            assert_err(&s.cmd(&["LOCK.EXTEND", key, "alice", "1000"]), "NOTHELD", key);
            let next = acquire_ok(&s, key, "bob", 1000);
            assert!(next > t, "{key}: token {next} <= {t}");
            assert!(pttl(&s, key) > 0 && pttl(&s, key) <= 1000, "{key}: the new grant sets the key's TTL");
        }
        assert!(problems.is_empty(), "{problems:#?}");
    }

    /// Locks are per database: the same key name in two databases is two
    /// locks; MOVE, SWAPDB and RENAME carry the lease; tokens come from one
    /// node-wide clock.
    fn locks_are_per_database(flavor: Flavor) {
        let s = Server::start(flavor);
        let mut db1 = s.client();
        assert_eq!(req(&mut db1, &["SELECT", "1"]), Value::Okay);
        let t0 = acquire_ok(&s, "k", "alice", 30000);
        let (t1, _) = parse_grant(&req(&mut db1, &["LOCK.ACQUIRE", "k", "bob", "30000"])).expect("db 1 has its own lock");
        assert!(t1 > t0);
        assert_eq!(held(&s, "k").owner, b"alice");
        assert_eq!(parse_lock_info(&req(&mut db1, &["LOCK.INFO", "k"])).unwrap().owner, b"bob");
        assert_err(&req(&mut db1, &["LOCK.RELEASE", "k", "alice"]), "NOTOWNER", "db 1");
        assert_eq!(req(&mut db1, &["LOCK.RELEASE", "k", "bob"]), Value::Int(1));
        assert_eq!(held(&s, "k").token, t0, "db 0 untouched");

        // MOVE to db 1: the lease moves with its key.
        assert_eq!(s.cmd(&["MOVE", "k", "1"]), Value::Int(1));
        assert_eq!(lock_info(&s, "k"), None);
        let moved = parse_lock_info(&req(&mut db1, &["LOCK.INFO", "k"])).unwrap();
        assert_eq!((moved.owner.as_slice(), moved.token), (&b"alice"[..], t0));
        assert!(int(&req(&mut db1, &["PTTL", "k"])) > 0);
        // SWAPDB brings it back to db 0.
        assert_eq!(s.cmd_text(&["SWAPDB", "0", "1"]), "OK");
        assert_eq!(held(&s, "k").token, t0);
        assert_eq!(req(&mut db1, &["LOCK.INFO", "k"]), Value::Nil);
        // RENAME: the lease follows the key, with its TTL.
        assert_eq!(s.cmd_text(&["RENAME", "k", "k2"]), "OK");
        assert_eq!(lock_info(&s, "k"), None);
        let renamed = held(&s, "k2");
        assert_eq!((renamed.owner.as_slice(), renamed.token), (&b"alice"[..], t0));
        assert!(pttl(&s, "k2") > 0);
        let t2 = acquire_ok(&s, "k", "carol", 30000);
        assert!(t2 > t1);
        assert_eq!(s.cmd(&["LOCK.RELEASE", "k2", "alice", "FENCE", &t0.to_string()]), Value::Int(1));
        release_ok(&s, "k", "carol");
        assert_eq!(dbsize(&s), 0);
    }
}
