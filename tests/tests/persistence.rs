//! Locks and fencing tokens across restarts: RDB (SHUTDOWN SAVE), DEBUG
//! RELOAD, and AOF with and without the RDB preamble, after BGREWRITEAOF
//! and after kill -9. Every test runs on Redis and Valkey.

mod core_support;

use std::time::Duration;

use core_support::*;
use lockwarden_tests::redis::Value;
use lockwarden_tests::*;

/// A lock held across a restart: same owner, token, acquisition time and
/// extensions, client-id 0 (another process), the lease still running.
#[track_caller]
fn check_survivor(s: &Server, key: &str, before: &LockInfo) {
    let after = held(s, key);
    assert_eq!(
        after.lease_fields(),
        before.lease_fields(),
        "{key} after the restart"
    );
    assert_eq!(
        (after.client_id, after.client_connected),
        (0, 0),
        "{after:?}"
    );
    assert!(
        after.ttl > 0 && after.ttl <= before.ttl,
        "{before:?} -> {after:?}"
    );
    let p = pttl(s, key);
    assert!(p > 0 && p <= before.ttl, "PTTL {p}");
}

/// The AOF scenario, with `aof-use-rdb-preamble` set to `preamble`.
fn aof_scenario(flavor: Flavor, preamble: &str) {
    let s = Server::builder(flavor)
        .arg("appendonly", "yes")
        .arg("appendfsync", "always")
        .arg("aof-use-rdb-preamble", preamble)
        .start();
    let mut k_tokens = Vec::new();
    let t_held = acquire_ok(&s, "a:held", "alice", 60000);
    for _ in 0..2 {
        assert_eq!(
            s.cmd(&["LOCK.EXTEND", "a:held", "alice", "60000"]),
            Value::Int(60000)
        );
    }
    k_tokens.push(acquire_release(&s, "a:k", "bob", 60000));
    let t_short = acquire_ok(&s, "a:short", "x", 1500);
    let before = held(&s, "a:held");
    assert_eq!(before.extensions, 2);
    let hw = lw_stat(&s, "token_high_water");

    // 1. Clean restart: the AOF is replayed.
    s.restart_clean(Shutdown::NoSave);
    check_survivor(&s, "a:held", &before);
    assert_eq!(
        lw_stat(&s, "token_high_water"),
        hw,
        "high-water mark after the AOF replay"
    );
    k_tokens.push(acquire_release(&s, "a:k", "bob", 60000));

    // 2. BGREWRITEAOF, more grants, then kill -9.
    rewrite_aof(&s, TIMEOUT);
    k_tokens.push(acquire_release(&s, "a:k", "carol", 60000));
    let t_fresh = acquire_ok(&s, "a:fresh", "dave", 60000);
    let hw = lw_stat(&s, "token_high_water");
    assert_eq!(hw, t_fresh);
    s.restart_after_kill();
    check_survivor(&s, "a:held", &before);
    assert_eq!(
        held(&s, "a:fresh").token,
        t_fresh,
        "a grant just before kill -9"
    );
    assert_eq!(
        lw_stat(&s, "token_high_water"),
        hw,
        "high-water mark after kill -9"
    );
    k_tokens.push(acquire_release(&s, "a:k", "bob", 60000));

    // 3. BGREWRITEAOF as the last write before kill -9: the released lock
    // exists only in the past, its next token is still larger.
    rewrite_aof(&s, TIMEOUT);
    let hw = lw_stat(&s, "token_high_water");
    s.restart_after_kill();
    check_survivor(&s, "a:held", &before);
    if preamble == "yes" {
        assert_eq!(
            lw_stat(&s, "token_high_water"),
            hw,
            "high-water mark from the RDB preamble"
        );
    }
    k_tokens.push(acquire_release(&s, "a:k", "erin", 60000));
    assert_strictly_increasing(&k_tokens, "tokens of a:k across AOF restarts");

    // A lease that ran out meanwhile is free; its next token is larger.
    wait_gone(&s, "a:short", TIMEOUT);
    assert!(acquire_ok(&s, "a:short", "y", 1000) > t_short);

    // The survivor still works for its holder, and only for it.
    assert_eq!(acquire(&s, "a:held", "mallory", 1000), None);
    let fence = t_held.to_string();
    assert_eq!(
        s.cmd(&["LOCK.EXTEND", "a:held", "alice", "30000", "FENCE", &fence]),
        Value::Int(30000)
    );
    assert_eq!(held(&s, "a:held").extensions, 3);
    assert_eq!(
        s.cmd(&["LOCK.RELEASE", "a:held", "alice", "FENCE", &fence]),
        Value::Int(1)
    );
    assert!(!exists(&s, "a:held"));

    // And the release itself is durable.
    s.restart_after_kill();
    assert_eq!(lock_info(&s, "a:held"), None);
    assert!(acquire_ok(&s, "a:held", "next", 1000) > *k_tokens.last().unwrap());
}

/// How a server persists in [`high_water_scenario`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Persist {
    Rdb,
    AofPreamble,
    AofNoPreamble,
    /// Without preamble, rewritten while writes are paused.
    AofNoPreamblePaused,
}

/// A token above this node's wall-clock term (the token a node one day
/// ahead issues) is restored, released, then the server persists and
/// restarts (for the AOF after BGREWRITEAOF): the next token of that key is
/// still larger.
fn high_water_scenario(flavor: Flavor, mode: Persist) {
    let ahead = token_from_a_day_ahead();
    let payload = dump_with_token(flavor, "h:k", ahead);
    let builder = Server::builder(flavor);
    let s = match mode {
        Persist::Rdb => builder.start(),
        Persist::AofPreamble | Persist::AofNoPreamble | Persist::AofNoPreamblePaused => builder
            .arg("appendonly", "yes")
            .arg("appendfsync", "always")
            .arg(
                "aof-use-rdb-preamble",
                if mode == Persist::AofPreamble {
                    "yes"
                } else {
                    "no"
                },
            )
            .start(),
    };
    let mut c = s.client();
    let reply = req_bytes(&mut c, &[b"RESTORE", b"h:k", b"60000", &payload]);
    assert_eq!(reply, Value::Okay);
    assert_eq!(held(&s, "h:k").token, ahead as i64);
    assert_eq!(
        s.cmd(&["LOCK.RELEASE", "h:k", "alice", "FENCE", &ahead.to_string()]),
        Value::Int(1)
    );
    assert_eq!(lw_stat(&s, "token_high_water"), ahead as i64);
    match mode {
        Persist::Rdb => s.restart_clean(Shutdown::Save),
        Persist::AofPreamble | Persist::AofNoPreamble => {
            rewrite_aof(&s, TIMEOUT);
            s.restart_after_kill();
        }
        Persist::AofNoPreamblePaused => {
            // BGREWRITEAOF is not a write: it runs during the pause, when
            // nothing may be propagated; the node-wide state follows it
            // into the new AOF when the pause ends.
            let paused_at = std::time::Instant::now();
            assert_eq!(s.cmd_text(&["CLIENT", "PAUSE", "1000", "WRITE"]), "OK");
            rewrite_aof(&s, TIMEOUT);
            assert!(
                paused_at.elapsed() < Duration::from_millis(1000),
                "the rewrite ended after the pause"
            );
            assert_eq!(s.cmd_text(&["PING"]), "PONG");
            // Once the pause ends, the high-water mark reaches the new AOF.
            wait_until("LOCK._HIGHWATER in the incremental AOF", TIMEOUT, || {
                aof_incr_contains(&s, b"LOCK._HIGHWATER")
            });
            assert!(
                paused_at.elapsed() >= Duration::from_millis(990),
                "written during the pause"
            );
            s.restart_after_kill();
        }
    }
    let next = acquire_ok(&s, "h:k", "bob", 1000);
    assert!(
        next > ahead as i64,
        "token {next} of h:k after the restart is below the earlier {ahead}"
    );
}

for_each_flavor! {
    /// SHUTDOWN SAVE + restart: held locks come back with owner, token,
    /// times and extensions, the token high-water mark comes back from the
    /// RDB (also when no lock is held), and later tokens are larger.
    fn tokens_increase_across_rdb_restart(flavor: Flavor) {
        let s = Server::start(flavor);
        let t_held = acquire_ok(&s, "r:held", "alice", 60000);
        assert_eq!(s.cmd(&["LOCK.EXTEND", "r:held", "alice", "60000"]), Value::Int(60000));
        let t_k = acquire_release(&s, "r:k", "bob", 60000);
        let before = held(&s, "r:held");
        assert_eq!(lw_stat(&s, "token_high_water"), t_k);

        s.restart_clean(Shutdown::Save);
        assert_eq!(lw_stat(&s, "token_high_water"), t_k, "high-water mark from the RDB");
        check_survivor(&s, "r:held", &before);
        assert_eq!(lw_stat(&s, "locks_held"), 1);
        assert_eq!(acquire(&s, "r:held", "bob", 1000), None);
        let t_k2 = acquire_ok(&s, "r:k", "carol", 60000);
        assert!(t_k2 > t_k);
        let fence = t_held.to_string();
        assert_eq!(s.cmd(&["LOCK.EXTEND", "r:held", "alice", "60000", "FENCE", &fence]), Value::Int(60000));
        assert_eq!(s.cmd(&["LOCK.RELEASE", "r:held", "alice", "FENCE", &fence]), Value::Int(1));
        release_ok(&s, "r:k", "carol");

        // Nothing held at all: only the aux field carries the high water.
        assert_eq!(dbsize(&s), 0);
        s.restart_clean(Shutdown::Save);
        assert_eq!(lw_stat(&s, "token_high_water"), t_k2);
        assert_eq!(lw_stat(&s, "locks_held"), 0);
        let t_k3 = acquire_ok(&s, "r:k", "dave", 1000);
        assert!(t_k3 > t_k2);

        // kill -9 loses what was not saved, but the RDB's locks and high
        // water are back.
        s.restart_after_kill();
        assert_eq!(lock_info(&s, "r:k"), None);
        assert_eq!(lw_stat(&s, "token_high_water"), t_k2);
        assert!(acquire_ok(&s, "r:k", "erin", 1000) > t_k3);
    }

    /// DEBUG RELOAD (same process): locks, tokens and even client ids are
    /// kept; later tokens are larger.
    fn debug_reload_keeps_locks(flavor: Flavor) {
        let s = Server::start(flavor);
        let mut c = s.client();
        let id = int(&req(&mut c, &["CLIENT", "ID"]));
        let (t, _) = parse_grant(&req(&mut c, &["LOCK.ACQUIRE", "d:held", "alice", "60000"])).unwrap();
        let t_k = acquire_release(&s, "d:k", "bob", 60000);
        let before = held(&s, "d:held");
        assert_eq!(s.cmd_text(&["DEBUG", "RELOAD"]), "OK");
        let after = held(&s, "d:held");
        assert_eq!(after.lease_fields(), before.lease_fields());
        assert_eq!(after.token, t);
        assert_eq!((after.client_id, after.client_connected), (id, 1), "{after:?}");
        assert_eq!(lw_stat(&s, "token_high_water"), t_k);
        assert!(acquire_ok(&s, "d:k", "carol", 1000) > t_k);
        assert_eq!(req(&mut c, &["LOCK.RELEASE", "d:held", "alice", "FENCE", &t.to_string()]), Value::Int(1));
    }

    /// High-water mark ahead of the clock, across SHUTDOWN SAVE + restart.
    fn high_water_ahead_of_clock_survives_rdb_restart(flavor: Flavor) {
        high_water_scenario(flavor, Persist::Rdb);
    }

    /// High-water mark ahead of the clock, across BGREWRITEAOF (with the
    /// RDB preamble) + kill -9.
    fn high_water_ahead_of_clock_survives_aof_rewrite_with_preamble(flavor: Flavor) {
        high_water_scenario(flavor, Persist::AofPreamble);
    }

    /// High-water mark ahead of the clock, across BGREWRITEAOF (without
    /// the RDB preamble) + kill -9.
    fn high_water_ahead_of_clock_survives_aof_rewrite_without_preamble(flavor: Flavor) {
        high_water_scenario(flavor, Persist::AofNoPreamble);
    }

    /// High-water mark ahead of the clock, across BGREWRITEAOF (without
    /// the RDB preamble) run during `CLIENT PAUSE WRITE` + kill -9.
    fn high_water_survives_aof_rewrite_during_a_write_pause(flavor: Flavor) {
        high_water_scenario(flavor, Persist::AofNoPreamblePaused);
    }

    /// A restart from the AOF replays its releases and deletions: they were
    /// counted when they happened, not again as locks lost behind their
    /// holders' backs or as hold times.
    fn aof_replay_counts_no_lost_locks(flavor: Flavor) {
        for preamble in ["yes", "no"] {
            let s = Server::builder(flavor)
                .arg("appendonly", "yes")
                .arg("appendfsync", "always")
                .arg("aof-use-rdb-preamble", preamble)
                .start();
            for i in 0..5 {
                acquire_release(&s, &format!("c:{i}"), "alice", 60000);
            }
            acquire_ok(&s, "c:held", "bob", 60000);
            acquire_ok(&s, "c:deleted", "carol", 60000);
            assert_eq!(s.cmd(&["DEL", "c:deleted"]), Value::Int(1));
            assert_eq!(lw_stat(&s, "deleted_while_held"), 1);
            // Replayed hold times would now be at least this long.
            std::thread::sleep(Duration::from_millis(300));
            s.restart_after_kill();
            let after = lw_stats(&s);
            let counted = ["deleted_while_held", "expired_while_held", "hold_max_ms"].map(|f| after[f]);
            assert_eq!(counted, [0, 0, 0], "preamble {preamble}: {after:?}");
            assert_eq!(after["locks_held"], 1, "preamble {preamble}");
            assert_eq!(owner_of(&s, "c:held").as_deref(), Some("bob"));
        }
    }

    /// AOF with the RDB preamble (the default).
    fn aof_restart_with_rdb_preamble(flavor: Flavor) {
        aof_scenario(flavor, "yes");
    }

    /// AOF without the RDB preamble: locks are rewritten as LOCK._GRANT.
    fn aof_restart_without_rdb_preamble(flavor: Flavor) {
        aof_scenario(flavor, "no");
    }

    /// An AOF lock record that cannot be restored is logged (the AOF loader
    /// drops error replies), and a forged negative deadline, which Redis
    /// refuses as a key's expiry (the key would never expire), is taken as
    /// long past: that lock does not come back.
    fn forged_aof_lock_records(flavor: Flavor) {
        let dir = tempfile::tempdir().expect("tempdir");
        let aof = dir.path().join("appendonlydir");
        std::fs::create_dir(&aof).expect("appendonlydir");
        let resp = |args: &[&str]| {
            let mut out = format!("*{}\r\n", args.len());
            for a in args {
                out += &format!("${}\r\n{a}\r\n", a.len());
            }
            out
        };
        let now = now_ms();
        let good = format!("7:{}:{now}:0:0", now + 600_000);
        let base = [
            resp(&["SELECT", "0"]),
            resp(&["LOCK._GRANT", "ok:k", "alice", &good]),
            resp(&["LOCK._GRANT", "neg:k", "mallory", "5:-5:1000:0:0"]),
            resp(&["LOCK._GRANT", "bad:k", "mallory", "not-lease-fields"]),
            resp(&["LOCK.ACQUIRE", "cmd:k", "mallory", "60000"]),
        ]
        .concat();
        std::fs::write(aof.join("appendonly.aof.1.base.aof"), base).expect("base");
        std::fs::write(
            aof.join("appendonly.aof.manifest"),
            "file appendonly.aof.1.base.aof seq 1 type b\n",
        )
        .expect("manifest");
        let s = Server::builder(flavor)
            .dir(dir.path())
            .arg("appendonly", "yes")
            .start();
        assert_eq!(held(&s, "ok:k").owner_str(), "alice");
        assert_eq!(pttl(&s, "neg:k"), -2, "the forged lease is over, not a key without expiry");
        assert!(!exists(&s, "bad:k"));
        assert!(
            s.log().contains("a lock in the AOF could not be restored: ERR invalid lease fields"),
            "{}",
            s.log_tail(10)
        );
        // The AOF holds effects: a lock command in it is not decided again.
        assert!(!exists(&s, "cmd:k"));
        assert!(
            s.log().contains("LOCK.ACQUIRE from the replication stream or the AOF was not applied"),
            "{}",
            s.log_tail(10)
        );
    }

    /// `rename-command` may take `DEL` away (a common hardening): a release
    /// then reaches the AOF as `UNLINK`, and with both renamed the log says
    /// that the AOF keeps the lock.
    fn releases_reach_the_aof_with_del_renamed(flavor: Flavor) {
        let start = |renamed: &[&str]| {
            let mut args = Vec::new();
            for cmd in renamed {
                args.extend(["--rename-command", cmd, ""]);
            }
            Server::builder(flavor)
                .arg("appendonly", "yes")
                .arg("appendfsync", "always")
                .raw_args(args)
                .start()
        };
        let s = start(&["DEL"]);
        acquire_ok(&s, "rn:k", "alice", 60000);
        release_ok(&s, "rn:k", "alice");
        s.restart_after_kill();
        assert_eq!(lock_info(&s, "rn:k"), None, "the release is in the AOF");

        let s = start(&["DEL", "UNLINK"]);
        acquire_ok(&s, "rn:k", "alice", 60000);
        release_ok(&s, "rn:k", "alice");
        assert!(s.log().contains("a lock release could not be replicated"), "{}", s.log_tail(10));
    }

    /// A lock key's own expiry survives an AOF rewrite without preamble
    /// where it differs from the lease's deadline: removed by `PERSIST` (the
    /// rewrite gave the key the deadline back, so a reload changed the
    /// data) or moved by `PEXPIREAT`. The rewrite writes `LOCK._GRANT` (its
    /// three-argument form, which older modules read too) and `PERSIST`,
    /// and Redis the key's own `PEXPIREAT` after them.
    fn aof_rewrite_keeps_the_keys_own_expiry(flavor: Flavor) {
        let s = Server::builder(flavor)
            .arg("appendonly", "yes")
            .arg("aof-use-rdb-preamble", "no")
            .start();
        for key in ["e:plain", "e:persisted", "e:moved"] {
            acquire_ok(&s, key, "alice", 60_000);
        }
        assert_eq!(s.cmd_text(&["PERSIST", "e:persisted"]), "1");
        let moved_to = now_ms() + 3_600_000;
        assert_eq!(
            s.cmd_text(&["PEXPIREAT", "e:moved", &moved_to.to_string()]),
            "1"
        );
        let expiry = |s: &Server, key: &str| int(&s.cmd(&["PEXPIRETIME", key]));
        let state = |s: &Server| {
            ["e:plain", "e:persisted", "e:moved"].map(|k| (expiry(s, k), digest(s, k)))
        };
        let before = state(&s);
        assert_eq!(before[1].0, -1, "PERSIST removed the expiry");
        assert_eq!(before[2].0, moved_to as i64);
        let dataset = s.cmd_text(&["DEBUG", "DIGEST"]);
        rewrite_aof(&s, TIMEOUT);
        let base = aof_base_file(&s).expect("an AOF base file");
        let count = |needle: &[u8]| base.windows(needle.len()).filter(|w| w == &needle).count();
        assert_eq!(count(b"*4\r\n$11\r\nLOCK._GRANT\r\n"), 3, "{}", String::from_utf8_lossy(&base));
        assert_eq!(count(b"*2\r\n$7\r\nPERSIST\r\n"), 3);
        assert_eq!(count(b"PEXPIREAT"), 2, "not for the persisted key");
        assert_eq!(s.cmd_text(&["DEBUG", "LOADAOF"]), "OK");
        assert_eq!(state(&s), before, "(PEXPIRETIME, DIGEST-VALUE) after the reload");
        assert_eq!(s.cmd_text(&["DEBUG", "DIGEST"]), dataset);
        s.restart_clean(Shutdown::NoSave);
        assert_eq!(state(&s), before, "(PEXPIRETIME, DIGEST-VALUE) after a restart");
    }
}
