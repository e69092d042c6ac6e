//! The lock core on a primary and its replica: grants replicate as effects,
//! the replica refuses lock writes, only the primary expires leases, clients
//! cannot forge grants, and a promoted replica keeps tokens increasing.
//! Every test runs on Redis and Valkey.

mod core_support;

use std::time::Duration;

use core_support::*;
use lockwarden_tests::redis::Value;
use lockwarden_tests::*;

/// An integer field of `INFO section`.
fn lw_info_int(s: &Server, section: &str, field: &str) -> i64 {
    s.info_field(section, field)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| s.fail(&format!("INFO {section} has no integer {field}")))
}

/// `INFO lockwarden` `propagation`: `open`, `closed` or `unknown`.
fn propagation(s: &Server) -> String {
    s.info_field("lockwarden", "lockwarden_propagation")
        .unwrap_or_else(|| s.fail("INFO lockwarden has no propagation"))
}

/// A primary with a replication backlog and no fork: a replica asked for a
/// delayed diskless full sync and left before it began. `key` is granted
/// first, so the module has found the stream closed.
fn forkless_backlog(flavor: Flavor, key: &str) -> Server {
    use std::io::{Read, Write};
    let p = Server::builder(flavor)
        .arg("repl-diskless-sync", "yes")
        .arg("repl-diskless-sync-delay", "30")
        .start();
    acquire_ok(&p, key, "alice", 60_000);
    assert_eq!(propagation(&p), "closed");
    {
        let mut s = std::net::TcpStream::connect(p.addr()).expect("connect");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        s.write_all(b"REPLCONF capa eof\r\n").expect("write");
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).expect("+OK");
        assert_eq!(&buf, b"+OK\r\n");
        s.write_all(b"PSYNC ? -1\r\n").expect("write");
        p.wait_for(TIMEOUT, |p| {
            p.info_field("replication", "repl_backlog_active")
                .as_deref()
                == Some("1")
        });
    }
    // Gone before the delayed fork: a backlog, no fork.
    p.wait_for(TIMEOUT, |p| {
        p.info_field("replication", "connected_slaves").as_deref() == Some("0")
    });
    p
}

/// Asserts that `key` is in the same state on the primary and the replica:
/// equal DEBUG DIGEST-VALUE and LOCK.INFO (owner, token, times,
/// extensions, session; the remaining ttl within a second).
#[track_caller]
fn assert_same(pair: &ReplicaPair, key: &str) -> LockInfo {
    let (p, r) = (&pair.primary, &pair.replica);
    assert_eq!(digest(p, key), digest(r, key), "DEBUG DIGEST-VALUE {key}");
    let a = held(p, key);
    let b = held(r, key);
    assert_eq!(
        a.lease_fields(),
        b.lease_fields(),
        "{key}: primary {a:?}, replica {b:?}"
    );
    assert!(
        (a.ttl - b.ttl).abs() <= 1000,
        "{key}: primary {a:?}, replica {b:?}"
    );
    assert_eq!(b.client_id, 0, "a replicated lease has no client id: {b:?}");
    assert_eq!(r.cmd_text(&["TYPE", key]), "lockwardn");
    assert!(pttl(r, key) > 0);
    a
}

for_each_flavor! {
    /// Acquire, retry, extend and release on the primary reach the replica
    /// as the same state.
    fn replica_mirrors_lock_state(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (p, r) = (&pair.primary, &pair.replica);
        let t = acquire_ok(p, "rep:k", "alice", 30000);
        pair.wait_for_offset();
        assert_eq!(assert_same(&pair, "rep:k").token, t);
        assert_eq!(lw_stat(r, "locks_held"), 1);

        assert_eq!(p.cmd(&["LOCK.EXTEND", "rep:k", "alice", "40000"]), Value::Int(40000));
        pair.wait_for_offset();
        let info = assert_same(&pair, "rep:k");
        assert_eq!((info.token, info.extensions), (t, 1));
        assert!(held(r, "rep:k").ttl > 30000);

        assert_eq!(acquire(p, "rep:k", "alice", 5000), Some((t, 5000)));
        pair.wait_for_offset();
        assert_same(&pair, "rep:k");
        assert!(pttl(r, "rep:k") <= 5000);

        // A contended acquire replicates nothing that changes the lock.
        assert_eq!(acquire(p, "rep:k", "bob", 5000), None);
        pair.wait_for_offset();
        assert_eq!(assert_same(&pair, "rep:k").owner, b"alice");

        release_ok(p, "rep:k", "alice");
        pair.wait_for_offset();
        assert!(!exists(r, "rep:k"));
        assert_eq!(dbsize(r), 0);
        assert_eq!(lock_info(r, "rep:k"), None);
        assert_eq!(lw_stat(r, "token_high_water"), lw_stat(p, "token_high_water"));

        let t2 = acquire_ok(p, "rep:k", "bob", 30000);
        assert!(t2 > t);
        // Binary key and owner.
        let mut c = p.client();
        let (tb, _) = parse_grant(&req_bytes(&mut c, &[b"LOCK.ACQUIRE", b"rep:\x00\xff", b"o\x00\xff\r\n", b"30000"])).unwrap();
        pair.wait_for_offset();
        assert_eq!(assert_same(&pair, "rep:k").token, t2);
        let mut rc = r.client();
        let on_replica = parse_lock_info(&req_bytes(&mut rc, &[b"LOCK.INFO", b"rep:\x00\xff"])).unwrap();
        assert_eq!((on_replica.owner.as_slice(), on_replica.token), (&b"o\x00\xff\r\n"[..], tb));
        assert_eq!(
            render(&req_bytes(&mut c, &[b"DEBUG", b"DIGEST-VALUE", b"rep:\x00\xff"])),
            render(&req_bytes(&mut rc, &[b"DEBUG", b"DIGEST-VALUE", b"rep:\x00\xff"]))
        );

        // DEL of a held lock on the primary reaches the replica.
        assert_eq!(p.cmd(&["DEL", "rep:k"]), Value::Int(1));
        pair.wait_for_offset();
        assert!(!exists(r, "rep:k"));
        assert_eq!(dbsize(r), 1);
        assert_eq!(lw_stat(r, "locks_held"), 1);
        assert_eq!(lw_stat(p, "locks_held"), 1);
    }

    /// The replica refuses LOCK.ACQUIRE / RELEASE / EXTEND (READONLY) and
    /// LOCK._GRANT from a client, and serves LOCK.INFO; nothing changes.
    /// Also with `replica-read-only no` (the module refuses then), for
    /// LOCK.POLICY LOAD and UNLOAD too.
    fn replica_rejects_lock_writes(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (p, r) = (&pair.primary, &pair.replica);
        let t = acquire_ok(p, "ro:k", "alice", 30000);
        pair.wait_for_offset();
        let before = assert_same(&pair, "ro:k");
        let deadline = (now_ms() + 60000).to_string();
        let now = now_ms().to_string();
        let fence = t.to_string();
        let writes = [
            vec!["LOCK.ACQUIRE", "ro:k", "alice", "30000"],
            vec!["LOCK.ACQUIRE", "ro:other", "bob", "30000"],
            vec!["LOCK.ACQUIRE", "ro:other", "bob", "30000", "WAIT", "100"],
            vec!["LOCK.ACQUIRE", "ro:other", "bob", "30000", "SESSION"],
            vec!["LOCK.RELEASE", "ro:k", "alice"],
            vec!["LOCK.RELEASE", "ro:k", "alice", "FENCE", &fence],
            vec!["LOCK.EXTEND", "ro:k", "alice", "50000"],
            vec!["LOCK.POLICY", "UNLOAD", "p"],
        ];
        for read_only in ["yes", "no"] {
            assert_eq!(r.cmd_text(&["CONFIG", "SET", "replica-read-only", read_only]), "OK");
            for args in &writes {
                assert_err(&r.cmd(args), "READONLY", &format!("{args:?} on the replica (replica-read-only {read_only})"));
            }
            let wasm = std::fs::read(policy_path("max-ttl")).expect("max-ttl.wasm");
            let mut c = r.client();
            let load = req_bytes(&mut c, &[b"LOCK.POLICY", b"LOAD", b"p", b"CONFIG", br#"{"default_ms":1}"#, b"WASM", &wasm]);
            assert_err(&load, "READONLY", &format!("LOCK.POLICY LOAD on the replica (replica-read-only {read_only})"));
        }
        assert_eq!(r.cmd_text(&["LOCK.POLICY", "LIST"]), "[]");
        let fields = format!("5:{deadline}:{now}:0:0");
        let forged = r.cmd(&["LOCK._GRANT", "ro:other", "mallory", &fields]);
        assert!(err_code(&forged).is_some(), "LOCK._GRANT on the replica: {}", render(&forged));

        assert_eq!(held(r, "ro:k").lease_fields(), before.lease_fields());
        assert!(!exists(r, "ro:other"));
        assert_eq!(dbsize(r), 1);
        pair.wait_for_offset();
        assert_same(&pair, "ro:k");
        assert!(!exists(p, "ro:other"));
        let rs = lw_stats(r);
        assert_eq!((rs["acquires_granted"], rs["releases"], rs["extends"]), (0, 0, 0));
        assert_eq!(rs["token_high_water"], t);
    }

    /// Only the primary expires: with the primary frozen, the replica keeps
    /// the key past its deadline (though reads see it free); once the
    /// primary runs again its expiry reaches the replica as a DEL.
    fn only_the_primary_expires(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (p, r) = (&pair.primary, &pair.replica);
        acquire_ok(p, "exp:k", "alice", 3000);
        pair.wait_for_offset();
        let info = assert_same(&pair, "exp:k");
        let deadline = info.acquired_at + 3000;

        p.pause();
        while now_ms() <= deadline + 300 {
            std::thread::sleep(Duration::from_millis(50));
        }
        let replica_keys = dbsize(r);
        let replica_view = r.cmd(&["LOCK.INFO", "exp:k"]);
        p.resume();
        assert_eq!(replica_keys, 1, "the replica deleted an expired lock on its own");
        assert_eq!(parse_lock_info(&replica_view), None, "an expired lease is free on the replica too");

        // The primary's expiry reaches the replica.
        p.wait_for(TIMEOUT, |p| dbsize(p) == 0);
        r.wait_for(TIMEOUT, |r| dbsize(r) == 0);
        assert_eq!(lw_stat(p, "expired_while_held"), 1);
        assert_eq!(lw_stat(r, "expired_while_held"), 0, "replicas do not count expirations");

        // Without a freeze too.
        acquire_ok(p, "exp:k2", "bob", 200);
        r.wait_for(TIMEOUT, |r| dbsize(r) == 0);
        p.wait_for(TIMEOUT, |p| lw_stat(p, "expired_while_held") == 2);
    }

    /// LOCK._GRANT from a normal client (plain, in MULTI, from a script) is
    /// refused with ERR and changes nothing on the primary or the replica;
    /// its token is not observed.
    fn grant_from_client_is_refused(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (p, r) = (&pair.primary, &pair.replica);
        let t = acquire_ok(p, "g:k", "alice", 30000);
        pair.wait_for_offset();
        let before = assert_same(&pair, "g:k");
        let deadline = (now_ms() + 60000).to_string();
        let now = now_ms().to_string();
        let forged_token = (t + 1_000_000_000).to_string();
        // The documented form (token:deadline:acquired-at:extensions:session),
        // the former one, and malformed ones.
        let fields = format!("{forged_token}:{deadline}:{now}:0:0");
        let session = format!("{forged_token}:{deadline}:{now}:0:1");
        for args in [
            vec!["LOCK._GRANT", "g:k", "mallory", &fields],
            vec!["LOCK._GRANT", "g:k", "alice", &fields],
            vec!["LOCK._GRANT", "g:new", "mallory", &fields],
            vec!["LOCK._GRANT", "g:new", "mallory", &session],
            vec!["LOCK._GRANT", "g:new", "mallory", &forged_token, &deadline, &now, "0"],
                        vec!["LOCK._GRANT", "g:new", "mallory"],
            vec!["LOCK._GRANT", "g:new"],
            // Raising the high-water mark is internal too.
            vec!["LOCK._HIGHWATER", &forged_token],
            vec!["LOCK._HIGHWATER", "x"],
        ] {
            assert_err(&p.cmd(&args), "ERR", &format!("{args:?}"));
        }
        let mut c = p.client();
        assert_eq!(req(&mut c, &["MULTI"]), Value::Okay);
        req(&mut c, &["LOCK._GRANT", "g:new", "mallory", &fields]);
        let exec = req(&mut c, &["EXEC"]);
        let refused_in_multi = match &exec {
            Value::Array(items) => items.len() == 1 && err_code(&items[0]).is_some(),
            other => err_code(other).is_some(),
        };
        assert!(refused_in_multi, "LOCK._GRANT in MULTI: {}", render(&exec));
        let script = "return redis.call('LOCK._GRANT', KEYS[1], 'mallory', ARGV[1])";
        let eval = req(&mut c, &["EVAL", script, "1", "g:new", &fields]);
        assert!(err_code(&eval).is_some(), "LOCK._GRANT from a script: {}", render(&eval));

        assert_eq!(held(p, "g:k").lease_fields(), before.lease_fields());
        assert!(!exists(p, "g:new"));
        assert_eq!(lw_stat(p, "token_high_water"), t, "a forged token was observed");
        pair.wait_for_offset();
        assert_same(&pair, "g:k");
        assert!(!exists(r, "g:new"));
        assert_eq!(dbsize(r), 1);
        assert_eq!(lw_stat(r, "token_high_water"), t);
        assert!(acquire_ok(p, "g:new", "bob", 1000) < t + 1_000_000_000);
    }

    /// A holder that extends on a primary whose clock is behind the clock
    /// that granted its lock (a failover to a node with a slower clock, a
    /// clock stepped back) gets a deadline before its acquisition time. That
    /// lease replicates, reloads and survives a full sync like any other: a
    /// primary must never write what its replica or its own loader refuses.
    fn extension_under_a_slower_clock_replicates_and_reloads(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b.arg("rdbcompression", "no"));
        let (p, r) = (&pair.primary, &pair.replica);
        let t = acquire_ok(p, "skew", "alice", 60000);
        // The same lease, as granted by a clock one hour ahead of this one.
        let mut payload = dump(p, "skew");
        let at = lease_offset(&payload, t as u64);
        let field = |p: &[u8], off: usize| i64::from_le_bytes(p[off..off + 8].try_into().unwrap());
        let ahead = field(&payload, at + 17) + 3_600_000;
        payload[at + 9..at + 17].copy_from_slice(&(ahead + 60_000).to_le_bytes());
        payload[at + 17..at + 25].copy_from_slice(&ahead.to_le_bytes());
        fix_crc(&mut payload);
        let reply = req_bytes(&mut p.client(), &[b"RESTORE", b"skew", b"0", &payload, b"REPLACE"]);
        assert_eq!(reply, Value::Okay, "RESTORE: {}", render(&reply));
        assert_eq!(held(p, "skew").acquired_at, ahead);

        assert_eq!(p.cmd(&["LOCK.EXTEND", "skew", "alice", "30000"]), Value::Int(30000));
        pair.wait_for_offset();
        let info = assert_same(&pair, "skew");
        assert_eq!((info.token, info.acquired_at, info.extensions), (t, ahead, 1));
        assert!(info.ttl <= 30000, "{info:?}");

        let before = digest(p, "skew");
        for s in [p, r] {
            assert_eq!(s.cmd_text(&["DEBUG", "RELOAD"]), "OK");
            assert!(s.is_running());
            assert_eq!(held(s, "skew").lease_fields(), info.lease_fields());
            assert_eq!(digest(s, "skew"), before, "the lease changed in the reload");
            assert!(held(s, "skew").ttl <= 30000);
        }
        // A full sync carries it too.
        assert_eq!(r.cmd_text(&["REPLICAOF", "NO", "ONE"]), "OK");
        r.cmd(&["FLUSHALL"]);
        assert_eq!(r.cmd_text(&["REPLICAOF", "127.0.0.1", &p.port().to_string()]), "OK");
        wait_for_sync(p, r);
        assert_same(&pair, "skew");
        assert_eq!(digest(r, "skew"), before);
    }

    /// After promotion, the promoted replica knows every token the old
    /// primary issued, issues larger ones, and the old holder can extend
    /// and release on it.
    fn promoted_replica_issues_larger_tokens(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (p, r) = (&pair.primary, &pair.replica);
        let t_held = acquire_ok(p, "f:held", "alice", 60000);
        let mut tokens = vec![t_held];
        for _ in 0..50 {
            tokens.push(acquire_release(p, "f:k", "bob", 60000));
        }
        let max_old = *tokens.last().unwrap();
        assert_eq!(lw_stat(p, "token_high_water"), max_old);
        pair.wait_for_offset();
        assert_eq!(lw_stat(r, "token_high_water"), max_old, "the replica saw every grant");
        let before = assert_same(&pair, "f:held");

        pair.promote();
        assert_eq!(r.role(), "master");
        let after = held(r, "f:held");
        assert_eq!(after.lease_fields(), before.lease_fields());
        assert_eq!(acquire(r, "f:held", "mallory", 1000), None);
        let t_new = acquire_ok(r, "f:k", "carol", 60000);
        assert!(t_new > max_old, "promoted node issued {t_new} <= {max_old}");
        release_ok(r, "f:k", "carol");
        let fence = t_held.to_string();
        assert_eq!(r.cmd(&["LOCK.EXTEND", "f:held", "alice", "60000", "FENCE", &fence]), Value::Int(60000));
        assert_eq!(held(r, "f:held").extensions, 1);
        assert_eq!(r.cmd(&["LOCK.RELEASE", "f:held", "alice", "FENCE", &fence]), Value::Int(1));
        let t_next = acquire_ok(r, "f:held", "dave", 60000);
        assert!(t_next > t_new);

        // The promoted node expires leases and counts them.
        acquire_ok(r, "f:short", "erin", 100);
        r.wait_for(TIMEOUT, |r| lw_stat(r, "expired_while_held") == 1);
    }

    /// A replica that attaches later gets the locks and the token
    /// high-water mark through the full sync (RDB aux), even a mark above
    /// its clock left by a released lock; once promoted, it issues larger
    /// tokens.
    fn full_sync_carries_locks_and_high_water(flavor: Flavor) {
        let ahead = token_from_a_day_ahead();
        let payload = dump_with_token(flavor, "fs:gone", ahead);
        let p = Server::start(flavor);
        let mut c = p.client();
        assert_eq!(req_bytes(&mut c, &[b"RESTORE", b"fs:gone", b"60000", &payload]), Value::Okay);
        assert_eq!(p.cmd(&["LOCK.RELEASE", "fs:gone", "alice", "FENCE", &ahead.to_string()]), Value::Int(1));
        let t_held = acquire_ok(&p, "fs:held", "bob", 60000);
        assert!(t_held > ahead as i64);
        p.cmd(&["LOCK.EXTEND", "fs:held", "bob", "60000"]);
        let hw = lw_stat(&p, "token_high_water");

        let r = Server::builder(flavor)
            .raw_args(["--replicaof", "127.0.0.1", &p.port().to_string()])
            .start();
        wait_for_sync(&p, &r);
        assert_eq!(lw_stat(&r, "token_high_water"), hw, "high-water mark through the full sync");
        assert_eq!(digest(&p, "fs:held"), digest(&r, "fs:held"));
        assert_eq!(held(&r, "fs:held").lease_fields(), held(&p, "fs:held").lease_fields());
        assert_eq!(lw_stat(&r, "locks_held"), 1);

        assert_eq!(r.cmd_text(&["REPLICAOF", "NO", "ONE"]), "OK");
        r.wait_for(TIMEOUT, |r| r.role() == "master");
        let t = acquire_ok(&r, "fs:gone", "carol", 1000);
        assert!(t > hw, "promoted replica issued {t} <= {hw}");
        assert_eq!(r.cmd(&["LOCK.RELEASE", "fs:held", "bob", "FENCE", &t_held.to_string()]), Value::Int(1));
    }

    /// Where no records are built, every lock write still counts as a
    /// change for the RDB save points (`RedisModule_Replicate` counted them):
    /// one per granting, extending or releasing command, also with a handoff
    /// or an expired lease in it; a refusal counts none; a session lock
    /// released by its closed connection counts one. A `save 1 1` point then
    /// snapshots a node that only serves locks, and a `kill -9` loses nothing.
    fn lock_writes_count_for_save_points_without_records(flavor: Flavor) {
        let s = Server::start(flavor);
        let changes = || lw_info_int(&s, "persistence", "rdb_changes_since_last_save");
        let mut c = s.client();
        let step = |c: &mut redis::Connection, args: &[&str], counted: i64| {
            let before = changes();
            let reply = req(c, args);
            assert_eq!(changes() - before, counted, "{args:?} -> {reply:?}");
            reply
        };
        let (t, _) = parse_grant(&step(&mut c, &["LOCK.ACQUIRE", "sv:a", "alice", "60000"], 1)).unwrap();
        assert_eq!(propagation(&s), "closed");
        step(&mut c, &["LOCK.ACQUIRE", "sv:a", "alice", "60000"], 1);
        step(&mut c, &["LOCK.EXTEND", "sv:a", "alice", "60000"], 1);
        assert_eq!(step(&mut c, &["LOCK.ACQUIRE", "sv:a", "bob", "60000"], 0), Value::Nil);
        assert_err(&step(&mut c, &["LOCK.RELEASE", "sv:a", "bob"], 0), "NOTOWNER", "bob");
        assert_err(&step(&mut c, &["LOCK.EXTEND", "sv:none", "bob", "100"], 0), "NOTHELD", "free");
        step(&mut c, &["LOCK.RELEASE", "sv:a", "alice"], 1);
        // A release that hands the lock to a waiter: one command, one change.
        acquire_ok(&s, "sv:q", "alice", 60000);
        let mut waiter = spawn_client(s.port(), &["LOCK.ACQUIRE sv:q bob 60000 WAIT 10000"], true);
        wait_until("the waiter queues", TIMEOUT, || lw_stat(&s, "waiters") == 1);
        step(&mut c, &["LOCK.RELEASE", "sv:q", "alice"], 1);
        assert_eq!(held(&s, "sv:q").owner_str(), "bob");
        waiter.expect_line();
        drop(waiter);
        // A grant over an expired lease Redis has not reclaimed yet.
        acquire_ok(&s, "sv:short", "alice", 50);
        std::thread::sleep(Duration::from_millis(100));
        step(&mut c, &["LOCK.ACQUIRE", "sv:short", "bob", "60000"], 1);
        // Outside a command: a session lock released by its closing connection.
        let mut sc = s.client();
        step(&mut sc, &["LOCK.ACQUIRE", "sv:session", "carol", "60000", "SESSION"], 1);
        let before = changes();
        drop(sc);
        wait_until("the session lock is released", TIMEOUT, || lock_info(&s, "sv:session").is_none());
        assert_eq!(changes() - before, 1, "the session release");

        // A save point sees them: the snapshot holds the lock, kill -9 keeps it.
        let before = held(&s, "sv:short");
        assert_eq!(s.cmd_text(&["CONFIG", "SET", "save", "1 1"]), "OK");
        wait_until("a save point snapshots the locks", Duration::from_secs(10), || changes() == 0);
        s.restart_after_kill();
        assert_eq!(held(&s, "sv:short").lease_fields(), before.lease_fields());
        assert_eq!(held(&s, "sv:q").owner_str(), "bob");
        assert!(acquire_ok(&s, "sv:a", "dave", 1000) > t);
    }

    /// A primary without AOF, replicas or backlog builds no replication
    /// records (Redis would discard them); the first replica's full sync
    /// (a fork) opens the stream: what was written before comes with the
    /// snapshot, what comes after is replicated.
    fn records_are_built_once_someone_reads_them(flavor: Flavor) {
        let p = Server::start(flavor);
        assert_eq!(propagation(&p), "unknown", "not asked before the first record");
        acquire_ok(&p, "st:before", "alice", 60_000);
        assert_eq!(propagation(&p), "closed");
        let r = Server::builder(flavor)
            .raw_args(["--replicaof", "127.0.0.1", &p.port().to_string()])
            .start();
        wait_for_sync(&p, &r);
        assert_eq!(propagation(&p), "open");
        assert_eq!(held(&r, "st:before").lease_fields(), held(&p, "st:before").lease_fields());
        acquire_ok(&p, "st:after", "bob", 60_000);
        assert_eq!(p.cmd(&["LOCK.RELEASE", "st:before", "alice"]), Value::Int(1));
        wait_for_offset(&p, &r);
        assert_eq!(held(&r, "st:after").lease_fields(), held(&p, "st:after").lease_fields());
        assert_eq!(r.cmd_text(&["LOCK.INFO", "st:before"]), "(nil)");
        assert_eq!(r.cmd_text(&["DEBUG", "DIGEST"]), p.cmd_text(&["DEBUG", "DIGEST"]));
    }

    /// Writes while a diskless full sync waits for its fork
    /// (`repl-diskless-sync-delay`) are in the snapshot; those after it are
    /// replicated.
    fn writes_during_a_delayed_full_sync_reach_the_replica(flavor: Flavor) {
        let p = Server::builder(flavor)
            .arg("repl-diskless-sync", "yes")
            .arg("repl-diskless-sync-delay", "1")
            .start();
        acquire_ok(&p, "ds:0", "alice", 60_000);
        let r = Server::builder(flavor)
            .raw_args(["--replicaof", "127.0.0.1", &p.port().to_string()])
            .start();
        // The replica is waiting for the fork (a second's delay).
        for i in 1..20 {
            acquire_ok(&p, &format!("ds:{i}"), "bob", 60_000);
            assert_eq!(p.cmd(&["LOCK.EXTEND", "ds:0", "alice", "50000"]), Value::Int(50_000));
        }
        assert_eq!(p.cmd(&["LOCK.RELEASE", "ds:1", "bob"]), Value::Int(1));
        wait_for_sync(&p, &r);
        acquire_ok(&p, "ds:last", "carol", 60_000);
        wait_for_offset(&p, &r);
        assert_eq!(r.cmd_text(&["DEBUG", "DIGEST"]), p.cmd_text(&["DEBUG", "DIGEST"]));
        assert_eq!(lw_stat(&r, "locks_held"), 20);
    }

    /// A primary restarted from its RDB keeps a replication backlog without
    /// any fork (so that its replicas continue partially): its grants are
    /// replicated from the start, and a replica that resumes with a partial
    /// sync gets them.
    fn restarted_primary_replicates_to_a_resuming_replica(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (p, r) = (&pair.primary, &pair.replica);
        acquire_ok(p, "rs:old", "alice", 60_000);
        pair.wait_for_offset();
        r.shutdown(Shutdown::Save);
        p.restart_clean(Shutdown::Save);
        let backlog = p.info_field("replication", "repl_backlog_active");
        assert_eq!(backlog.as_deref(), Some("1"), "a backlog from the RDB");
        acquire_ok(p, "rs:new", "bob", 60_000);
        assert_eq!(p.cmd(&["LOCK.RELEASE", "rs:old", "alice"]), Value::Int(1));
        let partial = lw_info_int(p, "stats", "sync_partial_ok");
        r.relaunch();
        wait_for_sync(p, r);
        assert_eq!(lw_info_int(p, "stats", "sync_partial_ok"), partial + 1, "a partial resync");
        assert_eq!(held(r, "rs:new").lease_fields(), held(p, "rs:new").lease_fields());
        assert_eq!(r.cmd_text(&["LOCK.INFO", "rs:old"]), "(nil)");
        assert_eq!(r.cmd_text(&["DEBUG", "DIGEST"]), p.cmd_text(&["DEBUG", "DIGEST"]));
    }

    /// A replica that leaves before its diskless full sync forks leaves a
    /// backlog and no fork behind. A `SAVE` then writes the backlog's id into
    /// the RDB, and a node started from that file continues partially from
    /// the backlog: the grants after the save must be in it.
    fn a_save_with_a_forkless_backlog_opens_the_stream(flavor: Flavor) {
        let p = forkless_backlog(flavor, "fb:a");
        acquire_ok(&p, "fb:b", "bob", 60_000);
        assert_eq!(p.cmd_text(&["SAVE"]), "OK");
        acquire_ok(&p, "fb:c", "carol", 60_000);
        assert_eq!(p.cmd(&["LOCK.RELEASE", "fb:a", "alice"]), Value::Int(1));
        assert_eq!(propagation(&p), "open");

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(p.dir().join("dump.rdb"), dir.path().join("dump.rdb")).expect("copy the RDB");
        let partial = lw_info_int(&p, "stats", "sync_partial_ok");
        let r = Server::builder(flavor)
            .dir(dir.path())
            .raw_args(["--replicaof", "127.0.0.1", &p.port().to_string()])
            .start();
        wait_for_sync(&p, &r);
        assert_eq!(lw_info_int(&p, "stats", "sync_partial_ok"), partial + 1, "a partial resync from the file's offset");
        assert_eq!(held(&r, "fb:c").lease_fields(), held(&p, "fb:c").lease_fields());
        assert_eq!(r.cmd_text(&["LOCK.INFO", "fb:a"]), "(nil)");
        assert_eq!(r.cmd_text(&["DEBUG", "DIGEST"]), p.cmd_text(&["DEBUG", "DIGEST"]));
    }

    /// A backlog created for a full sync that never forked is a reader the
    /// module cannot see, so a command's change count
    /// (`RedisModule_ReplicateVerbatim`) can put the client's `LOCK.ACQUIRE`
    /// itself into it. A save later in the same transaction (`DEBUG RELOAD`)
    /// writes an offset before it into the RDB, and a node started from that
    /// file continues from there: it must skip the command (the RDB already
    /// has its effect), not decide it again with its own clock, and not
    /// answer it with an error (a replication fault to the server).
    fn replicas_skip_lock_commands_from_the_stream(flavor: Flavor) {
        let p = forkless_backlog(flavor, "vb:a");
        let mut c = p.client();
        assert_eq!(req(&mut c, &["MULTI"]), Value::Okay);
        req(&mut c, &["LOCK.ACQUIRE", "vb:c", "carol", "60000"]);
        req(&mut c, &["DEBUG", "RELOAD"]);
        let exec = req(&mut c, &["EXEC"]);
        let Value::Array(items) = &exec else { panic!("EXEC: {}", render(&exec)) };
        assert!(parse_grant(&items[0]).is_some(), "{}", render(&exec));

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::copy(p.dir().join("dump.rdb"), dir.path().join("dump.rdb")).expect("copy the RDB");
        let partial = lw_info_int(&p, "stats", "sync_partial_ok");
        // Later than the primary's grant: a second decision would differ.
        std::thread::sleep(Duration::from_millis(1100));
        let r = Server::builder(flavor)
            .dir(dir.path())
            .raw_args(["--replicaof", "127.0.0.1", &p.port().to_string()])
            .start();
        wait_for_sync(&p, &r);
        wait_for_offset(&p, &r);
        assert_eq!(lw_info_int(&p, "stats", "sync_partial_ok"), partial + 1, "a partial resync from the file's offset");
        assert_eq!(held(&r, "vb:c").lease_fields(), held(&p, "vb:c").lease_fields());
        assert_eq!(digest(&r, "vb:c"), digest(&p, "vb:c"));
        assert_eq!(lw_stat(&r, "acquires_granted"), 0, "the replica decided nothing");
        assert!(
            r.log().contains("LOCK.ACQUIRE from the replication stream or the AOF was not applied"),
            "{}",
            r.log_tail(10)
        );
        assert!(!r.log().contains("is sending an error to its"), "{}", r.log_tail(10));
    }

    /// Lock commands inside MULTI/EXEC and Lua scripts replicate their
    /// effects; WAIT does not block there.
    fn transactions_and_scripts_replicate(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (p, r) = (&pair.primary, &pair.replica);
        let mut c = p.client();
        assert_eq!(req(&mut c, &["MULTI"]), Value::Okay);
        req(&mut c, &["LOCK.ACQUIRE", "m:k", "alice", "30000"]);
        req(&mut c, &["LOCK.EXTEND", "m:k", "alice", "40000"]);
        req(&mut c, &["LOCK.ACQUIRE", "m:k", "carol", "1000", "WAIT", "0"]);
        let exec = req(&mut c, &["EXEC"]);
        let Value::Array(items) = &exec else { panic!("EXEC: {}", render(&exec)) };
        let (t, _) = parse_grant(&items[0]).expect("granted in MULTI");
        assert_eq!(items[1], Value::Int(40000));
        assert_eq!(items[2], Value::Nil, "WAIT inside MULTI does not block");
        pair.wait_for_offset();
        let info = assert_same(&pair, "m:k");
        assert_eq!((info.token, info.extensions), (t, 1));

        // Lua turns integer replies into doubles (tokens are above 2^53), so
        // the script reports success and LOCK.INFO the exact token.
        let script = "local g = redis.call('LOCK.ACQUIRE', KEYS[1], ARGV[1], '30000') \
                      redis.call('LOCK.EXTEND', KEYS[1], ARGV[1], '20000') \
                      if g then return 'granted' end return 'contended'";
        let reply = req(&mut c, &["EVAL", script, "1", "m:s", "bob"]);
        assert_eq!(render(&reply), "granted");
        let ts = held(p, "m:s").token;
        assert!(ts > t, "token {ts} granted in a script after {t}");
        let waited = req(&mut c, &["EVAL", "return redis.call('LOCK.ACQUIRE', KEYS[1], 'dave', '1000', 'WAIT', '0')", "1", "m:s"]);
        assert_eq!(waited, Value::Nil, "WAIT inside a script does not block");
        pair.wait_for_offset();
        let info = assert_same(&pair, "m:s");
        assert_eq!((info.owner.as_slice(), info.token, info.extensions), (&b"bob"[..], ts, 1));

        let release = "return redis.call('LOCK.RELEASE', KEYS[1], ARGV[1])";
        assert_eq!(req(&mut c, &["EVAL", release, "1", "m:s", "bob"]), Value::Int(1));
        pair.wait_for_offset();
        assert!(!exists(r, "m:s"));
        assert_eq!(dbsize(r), 1);
        assert_eq!(lw_stat(r, "token_high_water"), lw_stat(p, "token_high_water"));
    }

    /// An AOF rewrite started by a command (`CONFIG SET appendonly yes`,
    /// `BGREWRITEAOF`) puts the node-wide state into the new AOF without
    /// making that command a write: the command reaches neither the
    /// replica nor the AOF.
    fn aof_rewrite_by_command_is_not_propagated(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b.arg("aof-use-rdb-preamble", "no"));
        let (p, r) = (&pair.primary, &pair.replica);
        let t = acquire_release(p, "aofc:k", "alice", 30000);
        assert_eq!(p.cmd_text(&["CONFIG", "SET", "appendonly", "yes", "maxmemory-policy", "allkeys-lru"]), "OK");
        wait_persistence_idle(p, TIMEOUT);
        wait_until("LOCK._HIGHWATER in the new AOF", TIMEOUT, || aof_incr_contains(p, b"LOCK._HIGHWATER"));
        rewrite_aof(p, TIMEOUT);
        wait_until("LOCK._HIGHWATER in the rewritten AOF", TIMEOUT, || aof_incr_contains(p, b"LOCK._HIGHWATER"));
        for command in [&b"CONFIG"[..], b"BGREWRITEAOF", b"MULTI"] {
            assert!(
                !aof_incr_contains(p, command),
                "{} in the AOF",
                String::from_utf8_lossy(command)
            );
        }
        pair.wait_for_offset();
        assert_eq!(lw_stat(r, "token_high_water"), t);
        assert_eq!(r.cmd_text(&["CONFIG", "GET", "appendonly"]), "[appendonly no]");
        assert_eq!(r.cmd_text(&["CONFIG", "GET", "maxmemory-policy"]), "[maxmemory-policy noeviction]");
        assert_eq!(r.info_field("persistence", "aof_rewrites").as_deref(), Some("0"));
        assert!(acquire_ok(p, "aofc:k", "bob", 1000) > t);
    }
}
