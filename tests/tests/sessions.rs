//! Session locks (`LOCK.ACQUIRE ... SESSION`): released as soon as the
//! acquiring connection closes, bounded by their TTL, never releasing a lock
//! that changed hands; non-session locks outlive their connection.

use std::time::{Duration, Instant};

use lockwarden_tests::locks::*;
use lockwarden_tests::redis::{self, Connection, Value};
use lockwarden_tests::*;

fn client_id(conn: &mut Connection) -> i64 {
    int(&req(conn, &["CLIENT", "ID"]))
}

/// The lw-client's `CLIENT ID` and grant, for `LOCK.ACQUIRE ...` run by a
/// held process.
fn held_client(server: &Server, acquire: &str) -> (ClientProcess, i64, (u64, u64)) {
    let mut p = spawn_client(server.port(), &["CLIENT ID", acquire], true);
    let lines = p.lines(2);
    let id: i64 = lines[0].parse().expect("CLIENT ID");
    let (token, ttl) = parse_grant_line(&lines[1]);
    (p, id, (token, ttl))
}

/// `[token ttl]` as printed by lw-client.
fn parse_grant_line(line: &str) -> (u64, u64) {
    let inner = line
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .unwrap_or_else(|| panic!("not a grant: {line}"));
    let mut it = inner.split(' ').map(|n| n.parse::<u64>().expect("number"));
    (it.next().unwrap(), it.next().unwrap())
}

/// Waits until `key` is free and returns how long that took.
fn wait_released(server: &Server, key: &str, since: Instant) -> Duration {
    wait_gone(server, key, TIMEOUT);
    since.elapsed()
}

for_each_flavor! {
    /// QUIT of the acquiring connection releases a session lock at once.
    fn released_on_quit(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        let mut conn = server.client();
        let id = client_id(&mut conn);
        let g = grant(&req(&mut conn, &["LOCK.ACQUIRE", "s", "me", "60000", "SESSION"])).expect("granted");
        let info = lock_fields(&server, "s").expect("held");
        assert_eq!(info["owner"], "me");
        assert_eq!(info["token"], g.0.to_string());
        assert_eq!(info["session"], "1");
        assert_eq!(info["client-id"], id.to_string());
        assert_eq!(info["client-connected"], "1");
        // Another connection's commands do not end the session.
        assert_eq!(server.cmd_text(&["PING"]), "PONG");
        assert_eq!(lock_field(&server, "s", "session"), 1);

        assert_eq!(render(&req(&mut conn, &["QUIT"])), "OK");
        let quit_at = Instant::now();
        drop(conn);
        let took = wait_released(&server, "s", quit_at);
        assert!(took < Duration::from_secs(2), "released {took:?} after QUIT");
        assert_eq!(lock_fields(&server, "s"), None);
        let after = lw_stats(&server);
        assert_eq!(after["session_releases"] - before["session_releases"], 1);
        assert_eq!(after["expired_while_held"], before["expired_while_held"]);
        assert_eq!(after["deleted_while_held"], before["deleted_while_held"]);
        assert_eq!(after["locks_held"], 0);
    }

    /// A connection holding many session locks (more than one turn of the
    /// event loop releases) has all of them released when it closes, each
    /// handed to its waiter. Session locks flushed by FLUSHALL leave the
    /// session index, and taken again by others are not released when the
    /// first connection closes.
    fn many_session_locks_are_released_in_turns(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        let n = 700;
        let mut conn = server.client();
        let mut pipe = redis::pipe();
        for i in 0..n {
            pipe.cmd("LOCK.ACQUIRE").arg(format!("m:{i}")).arg("me").arg("60000").arg("SESSION");
        }
        let grants: Vec<Value> = pipe.query(&mut conn).expect("pipeline");
        assert!(grants.iter().all(|g| matches!(g, Value::Array(_))));
        let mut waiting = server.client();
        let waiter = std::thread::spawn(move || {
            req(&mut waiting, &["LOCK.ACQUIRE", "m:650", "next", "60000", "WAIT", "30000"])
        });
        wait_until("the waiter is queued", TIMEOUT, || lock_field(&server, "m:650", "waiters") == 1);
        drop(conn);
        wait_until("all released", TIMEOUT, || lw_stat(&server, "session_releases") - before["session_releases"] == n);
        assert!(grant(&waiter.join().expect("waiter")).is_some(), "the waiter got m:650");
        assert_eq!(lw_stat(&server, "locks_held"), 1);
        assert_eq!(owner_of(&server, "m:650").as_deref(), Some("next"));

        let mut conn = server.client();
        for i in 0..300 {
            grant(&req(&mut conn, &["LOCK.ACQUIRE", &format!("f:{i}"), "me", "60000", "SESSION"])).expect("granted");
        }
        assert_eq!(lw_stat(&server, "session_locks_tracked"), 300);
        // A flush of another database leaves them.
        let mut db1 = server.client();
        assert_eq!(render(&req(&mut db1, &["SELECT", "1"])), "OK");
        assert_eq!(render(&req(&mut db1, &["FLUSHDB"])), "OK");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(lw_stat(&server, "session_locks_tracked"), 300);
        assert_eq!(server.cmd_text(&["FLUSHALL"]), "OK");
        // Dropped from the index after the flush, over more than one turn.
        wait_until("the index pruned", TIMEOUT, || lw_stat(&server, "session_locks_tracked") == 0);
        // Taken again by another connection: the first one's close must
        // not release them.
        for i in 0..300 {
            acquire(&server, &format!("f:{i}"), "other", 60000).expect("granted");
        }
        let released = lw_stat(&server, "session_releases");
        drop(conn);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(lw_stat(&server, "session_releases"), released);
        assert_eq!(lw_stat(&server, "locks_held"), 300);
    }

    /// kill -9 of the process holding a session lock releases it at once,
    /// long before its TTL; several session locks of one connection go
    /// together, other connections' locks stay.
    fn released_on_kill9(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        let mut p = spawn_client(
            server.port(),
            &[
                "CLIENT ID",
                "LOCK.ACQUIRE a me 60000 SESSION",
                "LOCK.ACQUIRE b me 60000 SESSION",
                "LOCK.ACQUIRE c me 60000",
            ],
            true,
        );
        let lines = p.lines(4);
        let id = &lines[0];
        for (key, line) in [("a", &lines[1]), ("b", &lines[2]), ("c", &lines[3])] {
            parse_grant_line(line);
            assert_eq!(lock_fields(&server, key).unwrap()["client-id"], *id);
            assert_eq!(lock_field(&server, key, "client-connected"), 1);
        }
        assert_eq!(lock_field(&server, "a", "session"), 1);
        assert_eq!(lock_field(&server, "c", "session"), 0);
        let mut other = spawn_client(server.port(), &["LOCK.ACQUIRE d other 60000 SESSION"], true);
        parse_grant_line(&other.expect_line());

        let killed_at = Instant::now();
        p.kill();
        for key in ["a", "b"] {
            let took = wait_released(&server, key, killed_at);
            assert!(took < Duration::from_secs(2), "{key} released {took:?} after kill -9");
        }
        // The non-session lock of the same connection and the other
        // connection's session lock stay.
        assert_eq!(owner_of(&server, "c").as_deref(), Some("me"));
        wait_until("c's client-connected drops to 0", TIMEOUT, || {
            lock_field(&server, "c", "client-connected") == 0
        });
        assert_eq!(owner_of(&server, "d").as_deref(), Some("other"));
        assert_eq!(lock_field(&server, "d", "client-connected"), 1);
        let after = lw_stats(&server);
        assert_eq!(after["session_releases"] - before["session_releases"], 2);
        other.kill();
    }

    /// A lock taken without SESSION outlives its connection until its TTL.
    fn non_session_survives_disconnect(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        let spawned = Instant::now();
        let (mut p, id, _) = held_client(&server, "LOCK.ACQUIRE n me 2000");
        let info = lock_fields(&server, "n").unwrap();
        assert_eq!(info["session"], "0");
        assert_eq!(info["client-id"], id.to_string());
        assert_eq!(info["client-connected"], "1");
        p.kill();
        wait_until("client-connected drops to 0", TIMEOUT, || {
            lock_fields(&server, "n").is_none_or(|i| i["client-connected"] == "0")
        });
        if spawned.elapsed() < Duration::from_millis(1900) {
            let info = lock_fields(&server, "n").expect("still held after its connection closed");
            assert_eq!(info["owner"], "me");
            assert_eq!(info["client-id"], id.to_string(), "client-id is kept");
            assert_eq!(info["client-connected"], "0");
        }
        let took = wait_released(&server, "n", spawned);
        assert!(took >= Duration::from_millis(2000 - 20), "gone after {took:?}, before its TTL");
        let after = lw_stats(&server);
        assert_eq!(after["session_releases"], before["session_releases"]);
        assert_eq!(after["expired_while_held"] - before["expired_while_held"], 1);
    }

    /// The TTL still bounds a session lock whose connection stays open.
    fn session_lock_bounded_by_ttl(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        let mut conn = server.client();
        let t0 = Instant::now();
        assert!(grant(&req(&mut conn, &["LOCK.ACQUIRE", "t", "me", "500", "SESSION"])).is_some());
        let took = wait_released(&server, "t", t0);
        assert!(took >= Duration::from_millis(500 - 20), "gone after {took:?}");
        assert_eq!(render(&req(&mut conn, &["PING"])), "PONG", "the connection is still open");
        // Someone else takes it; the session's end must not touch that lock.
        assert!(grant(&server.cmd(&["LOCK.ACQUIRE", "t", "next", "60000"])).is_some());
        drop(conn);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(owner_of(&server, "t").as_deref(), Some("next"));
        let after = lw_stats(&server);
        assert_eq!(after["session_releases"], before["session_releases"]);
        assert_eq!(after["expired_while_held"] - before["expired_while_held"], 1);
    }

    /// A session whose lock was released, deleted or expired, and then taken
    /// by someone else (even by the same owner name), does not release the
    /// new holder's lock when it closes.
    fn session_end_spares_new_holders(flavor: Flavor) {
        let server = Server::start(flavor);
        let mut a = server.client();
        let before = lw_stats(&server);
        // Released, then re-acquired by another owner.
        assert!(grant(&req(&mut a, &["LOCK.ACQUIRE", "rel", "a", "60000", "SESSION"])).is_some());
        assert_eq!(render(&req(&mut a, &["LOCK.RELEASE", "rel", "a"])), "1");
        assert!(grant(&server.cmd(&["LOCK.ACQUIRE", "rel", "b", "60000"])).is_some());
        // Deleted, then re-acquired with the same owner name elsewhere.
        assert!(grant(&req(&mut a, &["LOCK.ACQUIRE", "del", "a", "60000", "SESSION"])).is_some());
        assert_eq!(server.cmd_text(&["DEL", "del"]), "1");
        assert!(grant(&server.cmd(&["LOCK.ACQUIRE", "del", "a", "60000"])).is_some());
        // Expired, then re-acquired by another owner.
        assert!(grant(&req(&mut a, &["LOCK.ACQUIRE", "exp", "a", "200", "SESSION"])).is_some());
        wait_released(&server, "exp", Instant::now());
        assert!(grant(&server.cmd(&["LOCK.ACQUIRE", "exp", "c", "60000"])).is_some());
        // And one that is still a's: it goes.
        assert!(grant(&req(&mut a, &["LOCK.ACQUIRE", "mine", "a", "60000", "SESSION"])).is_some());

        drop(a);
        let closed = Instant::now();
        let took = wait_released(&server, "mine", closed);
        assert!(took < Duration::from_secs(2), "released {took:?} after close");
        assert_eq!(owner_of(&server, "rel").as_deref(), Some("b"));
        assert_eq!(owner_of(&server, "del").as_deref(), Some("a"));
        assert_eq!(lock_field(&server, "del", "session"), 0);
        assert_eq!(owner_of(&server, "exp").as_deref(), Some("c"));
        let after = lw_stats(&server);
        assert_eq!(after["session_releases"] - before["session_releases"], 1);
    }

    /// LOCK.EXTEND from another connection (a watchdog) neither moves nor
    /// ends the session: only the acquiring connection's close releases it.
    fn extend_from_other_connection_keeps_session(flavor: Flavor) {
        let server = Server::start(flavor);
        let mut owner_conn = server.client();
        let id = client_id(&mut owner_conn);
        let (token, _) = grant(&req(&mut owner_conn, &["LOCK.ACQUIRE", "k", "me", "60000", "SESSION"])).unwrap();
        let mut watchdog = server.client();
        let t = token.to_string();
        assert_eq!(render(&req(&mut watchdog, &["LOCK.EXTEND", "k", "me", "30000", "FENCE", &t])), "30000");
        let info = lock_fields(&server, "k").unwrap();
        assert_eq!(info["client-id"], id.to_string());
        assert_eq!(info["session"], "1");
        assert_eq!(info["extensions"], "1");
        drop(watchdog);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(owner_of(&server, "k").as_deref(), Some("me"), "the extender's close released it");
        drop(owner_conn);
        let took = wait_released(&server, "k", Instant::now());
        assert!(took < Duration::from_secs(2));
    }

    /// A waiter that asked for SESSION gets a session lock on handoff: bound
    /// to its own connection, released when that one closes.
    fn session_lock_by_handoff(flavor: Flavor) {
        let server = Server::start(flavor);
        assert!(grant(&server.cmd(&["LOCK.ACQUIRE", "h", "holder", "60000"])).is_some());
        let mut w = spawn_client(server.port(), &["CLIENT ID", "LOCK.ACQUIRE h waiter 60000 WAIT 30000 SESSION"], true);
        let id = w.expect_line();
        wait_until("waiter queued", TIMEOUT, || lock_field(&server, "h", "waiters") == 1);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "h", "holder"]), "1");
        let (token, _) = parse_grant_line(&w.expect_line());
        let info = lock_fields(&server, "h").unwrap();
        assert_eq!(info["owner"], "waiter");
        assert_eq!(info["token"], token.to_string());
        assert_eq!(info["session"], "1");
        assert_eq!(info["client-id"], id);
        assert_eq!(info["client-connected"], "1");
        let killed = Instant::now();
        w.kill();
        let took = wait_released(&server, "h", killed);
        assert!(took < Duration::from_secs(2), "released {took:?} after the waiter's close");
    }

    /// DEBUG RELOAD keeps a session lock bound to its (still open)
    /// connection; after a restart it is bounded by its TTL only, and
    /// connections that get the old client id do not release it.
    fn session_across_reload_and_restart(flavor: Flavor) {
        let server = Server::start(flavor);
        let mut a = server.client();
        let a_id = client_id(&mut a);
        assert!(grant(&req(&mut a, &["LOCK.ACQUIRE", "r", "me", "60000", "SESSION"])).is_some());
        assert_eq!(server.cmd_text(&["DEBUG", "RELOAD"]), "OK");
        let info = lock_fields(&server, "r").expect("kept by DEBUG RELOAD");
        assert_eq!(info["session"], "1");
        assert_eq!(info["client-id"], a_id.to_string());
        assert_eq!(info["client-connected"], "1");
        drop(a);
        let took = wait_released(&server, "r", Instant::now());
        assert!(took < Duration::from_secs(2), "released {took:?} after close");

        let (mut b, b_id, (token, _)) = held_client(&server, "LOCK.ACQUIRE s me 60000 SESSION");
        server.restart_clean(Shutdown::Save);
        b.kill();
        let info = lock_fields(&server, "s").expect("a session lock survives a restart (bounded by its TTL)");
        assert_eq!(info["token"], token.to_string());
        assert_eq!(info["session"], "1");
        assert_eq!(info["client-id"], "0");
        assert_eq!(info["client-connected"], "0");
        // Connections numbered like the old holder come and go.
        for _ in 0..(b_id + 5) {
            let mut c = server.client();
            if client_id(&mut c) > b_id + 2 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(owner_of(&server, "s").as_deref(), Some("me"));
        assert_eq!(lock_field(&server, "s", "token"), token as i64);
    }

    /// A same-owner retry decides: SESSION added or dropped by the latest
    /// acquire, and a retry from another connection (after a lost reply)
    /// binds the session to that connection.
    fn session_follows_latest_acquire(flavor: Flavor) {
        let server = Server::start(flavor);
        let mut a = server.client();
        let (t1, _) = grant(&req(&mut a, &["LOCK.ACQUIRE", "up", "me", "60000"])).unwrap();
        let (t2, _) = grant(&req(&mut a, &["LOCK.ACQUIRE", "up", "me", "60000", "SESSION"])).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(lock_field(&server, "up", "session"), 1);
        assert!(grant(&req(&mut a, &["LOCK.ACQUIRE", "down", "me", "60000", "SESSION"])).is_some());
        assert!(grant(&req(&mut a, &["LOCK.ACQUIRE", "down", "me", "60000"])).is_some());
        assert_eq!(lock_field(&server, "down", "session"), 0);

        assert!(grant(&req(&mut a, &["LOCK.ACQUIRE", "moved", "me", "60000", "SESSION"])).is_some());
        let mut c = server.client();
        let c_id = client_id(&mut c);
        assert!(grant(&req(&mut c, &["LOCK.ACQUIRE", "moved", "me", "60000", "SESSION"])).is_some());
        assert_eq!(lock_field(&server, "moved", "client-id"), c_id);

        drop(a);
        let took = wait_released(&server, "up", Instant::now());
        assert!(took < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(owner_of(&server, "down").as_deref(), Some("me"), "no longer a session lock");
        assert_eq!(owner_of(&server, "moved").as_deref(), Some("me"), "bound to the retrying connection");
        drop(c);
        let took = wait_released(&server, "moved", Instant::now());
        assert!(took < Duration::from_secs(2));
        assert_eq!(owner_of(&server, "down").as_deref(), Some("me"));
    }

    /// A replica knows the lock is a session lock but not its connection; the
    /// primary's session release reaches it.
    fn session_release_replicates(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (mut p, _, (token, _)) = held_client(&pair.primary, "LOCK.ACQUIRE r me 60000 SESSION");
        pair.wait_for_offset();
        let info = lock_fields(&pair.replica, "r").expect("replicated");
        assert_eq!(info["token"], token.to_string());
        assert_eq!(info["session"], "1");
        assert_eq!(info["client-id"], "0");
        assert_eq!(info["client-connected"], "0");
        p.kill();
        wait_released(&pair.primary, "r", Instant::now());
        pair.wait_for_offset();
        assert_eq!(pair.replica.cmd_text(&["EXISTS", "r"]), "0");
        assert_eq!(
            pair.primary.cmd_text(&["DEBUG", "DIGEST"]),
            pair.replica.cmd_text(&["DEBUG", "DIGEST"])
        );
    }

    /// A session holder that disconnects while writes are paused (`CLIENT
    /// PAUSE ... WRITE`, as `FAILOVER` does) is released once the pause
    /// ends: nothing may be written or propagated during a pause (Redis
    /// asserts it), and the replica follows.
    fn session_release_waits_out_a_write_pause(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b.arg("appendonly", "yes"));
        let (p, r) = (&pair.primary, &pair.replica);
        let (mut holder, _, _) = held_client(p, "LOCK.ACQUIRE paused me 60000 SESSION");
        pair.wait_for_offset();
        let paused_at = Instant::now();
        assert_eq!(p.cmd_text(&["CLIENT", "PAUSE", "1500", "WRITE"]), "OK");
        holder.kill();
        // The server has seen the disconnect (LOCK.INFO reads during a pause).
        wait_until("the holder's disconnect", TIMEOUT, || lock_field(p, "paused", "client-connected") == 0);
        assert!(paused_at.elapsed() < Duration::from_millis(1400), "too slow to test inside the pause");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(p.cmd_text(&["PING"]), "PONG");
        assert_eq!(lock_field(p, "paused", "session"), 1, "released during the pause");
        let took = wait_released(p, "paused", paused_at);
        assert!(took >= Duration::from_millis(1490), "released {took:?} into a 1.5 s pause");
        assert!(took < Duration::from_secs(5), "released {took:?} after the pause began");
        pair.wait_for_offset();
        assert_eq!(r.cmd_text(&["EXISTS", "paused"]), "0");
        assert_eq!(p.cmd_text(&["DEBUG", "DIGEST"]), r.cmd_text(&["DEBUG", "DIGEST"]));
        assert!(p.is_running() && r.is_running());
    }

    /// A session lock in another database is released there when its
    /// holder disconnects, and so is one handed over in that database to a
    /// waiting session; a lock of the same name in database 0 stays.
    fn session_locks_in_another_database(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "k", "zero", 60000).expect("db 0");
        let mut holder = spawn_client(server.port(), &["SELECT 2", "LOCK.ACQUIRE k me 60000 SESSION"], true);
        parse_grant_line(&holder.lines(2)[1]);
        let mut waiter = spawn_client(server.port(), &["SELECT 2", "LOCK.ACQUIRE k next 60000 WAIT 10000 SESSION"], true);
        waiter.expect_line();
        wait_until("the waiter queues", TIMEOUT, || lw_stat(&server, "waiters") == 1);
        holder.kill();
        parse_grant_line(&waiter.expect_line());
        let mut db2 = server.client();
        assert_eq!(render(&req(&mut db2, &["SELECT", "2"])), "OK");
        assert!(render(&req(&mut db2, &["LOCK.INFO", "k"])).contains("next"), "handed over in db 2");
        waiter.kill();
        wait_until("the handed-over session lock is released", TIMEOUT, || {
            int(&req(&mut db2, &["EXISTS", "k"])) == 0
        });
        assert_eq!(lw_stat(&server, "session_releases"), 2);
        assert_eq!(owner_of(&server, "k").as_deref(), Some("zero"));
    }

    /// `SWAPDB` moves a session lock with its database; its holder's
    /// disconnect still releases it there. `FLUSHALL` leaves nothing behind.
    fn session_lock_follows_swapdb(flavor: Flavor) {
        let server = Server::start(flavor);
        let (mut holder, _, _) = held_client(&server, "LOCK.ACQUIRE moved me 60000 SESSION");
        assert_eq!(server.cmd_text(&["SWAPDB", "0", "1"]), "OK");
        let mut db1 = server.client();
        assert_eq!(render(&req(&mut db1, &["SELECT", "1"])), "OK");
        assert!(render(&req(&mut db1, &["LOCK.INFO", "moved"])).contains("me"), "the lock moved to db 1");
        holder.kill();
        wait_until("the session lock in db 1 is released", TIMEOUT, || {
            int(&req(&mut db1, &["EXISTS", "moved"])) == 0
        });
        assert_eq!(lw_stat(&server, "session_releases"), 1);
    }

    /// A primary demoted to a replica never releases a session lock when
    /// the holder disconnects: the primary it now follows decides, and the
    /// two stay identical.
    fn demoted_primary_keeps_session_locks(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (old, new) = (&pair.primary, &pair.replica);
        let (mut holder, _, (token, _)) = held_client(old, "LOCK.ACQUIRE demoted me 60000 SESSION");
        pair.wait_for_offset();
        pair.promote();
        assert_eq!(old.cmd_text(&["REPLICAOF", "127.0.0.1", &new.port().to_string()]), "OK");
        wait_for_sync(new, old);
        holder.kill();
        wait_until("the holder's disconnect", TIMEOUT, || lock_field(old, "demoted", "client-connected") == 0);
        // A release would run from a timer right after the disconnect.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(lock_field(old, "demoted", "token"), token as i64, "the demoted node released it");
        assert_eq!(lock_field(new, "demoted", "token"), token as i64);
        wait_for_offset(new, old);
        assert_eq!(old.cmd_text(&["DEBUG", "DIGEST"]), new.cmd_text(&["DEBUG", "DIGEST"]));
    }

    /// SESSION inside a script or function is refused: the module cannot
    /// know which connection runs the script, so the lock could never be
    /// released with it. Nothing is created.
    fn session_refused_inside_scripts(flavor: Flavor) {
        let server = Server::start(flavor);
        let reply = server.cmd_text(&[
            "EVAL",
            "return redis.call('LOCK.ACQUIRE', KEYS[1], 'me', '10000', 'SESSION')",
            "1",
            "scripted",
        ]);
        assert!(reply.contains("SESSION cannot be used inside a script"), "{reply}");
        assert!(!exists(&server, "scripted"));
        // Without SESSION the script acquires normally.
        let reply = server.cmd_text(&[
            "EVAL",
            "return redis.call('LOCK.ACQUIRE', KEYS[1], 'me', '10000')",
            "1",
            "scripted",
        ]);
        assert!(reply.starts_with('['), "{reply}");
        assert_eq!(lock_field(&server, "scripted", "session"), 0);
    }

    /// A primary that followed another node for a while and is a primary
    /// again with the same data (an aborted failover; here `REPLICAOF` to a
    /// port nobody listens on) releases the session locks whose holders
    /// left in between, and not before it is a primary again.
    fn session_holder_gone_while_replica_is_released_on_promotion(flavor: Flavor) {
        let server = Server::start(flavor);
        let (mut holder, _, (token, _)) = held_client(&server, "LOCK.ACQUIRE back me 60000 SESSION");
        let nowhere = free_port().to_string();
        assert_eq!(server.cmd_text(&["REPLICAOF", "127.0.0.1", &nowhere]), "OK");
        holder.kill();
        wait_until("the holder's disconnect", TIMEOUT, || lock_field(&server, "back", "client-connected") == 0);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(lock_field(&server, "back", "token"), token as i64, "released while a replica");
        let promoted = Instant::now();
        assert_eq!(server.cmd_text(&["REPLICAOF", "NO", "ONE"]), "OK");
        let took = wait_released(&server, "back", promoted);
        assert!(took < Duration::from_secs(2), "released {took:?} after the promotion");
        assert_eq!(lw_stat(&server, "session_releases"), 1);
    }
}
