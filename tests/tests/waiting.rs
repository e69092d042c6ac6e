//! Blocking acquire (`LOCK.ACQUIRE ... WAIT`): FIFO queues served by the
//! server, timeouts, and handoff on release, expiry, DEL, FLUSHALL and a
//! session holder's disconnect; waiters that disconnect; no blocking inside
//! MULTI/EXEC and scripts; replicas after a handoff; the wait statistics.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, bounded};
use lockwarden_tests::locks::*;
use lockwarden_tests::redis::{self, ConnectionLike, Value};
use lockwarden_tests::*;

/// A command running on its own connection in a background thread (e.g. a
/// blocked `LOCK.ACQUIRE ... WAIT`); the reply and the instant it arrived
/// come back through a channel.
struct Pending {
    what: String,
    sent: Instant,
    rx: Receiver<(Value, Instant)>,
    done: Option<(Value, Instant)>,
    _thread: JoinHandle<()>,
}

impl Pending {
    fn spawn(server: &Server, args: &[&str]) -> Pending {
        let mut conn = server.client();
        let owned: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let (tx, rx) = bounded(1);
        let sent = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut cmd = redis::Cmd::new();
            for a in &owned {
                cmd.arg(a);
            }
            let reply = match conn.req_command(&cmd) {
                Ok(v) => v,
                Err(e) => Value::SimpleString(format!("io error: {e}")),
            };
            let _ = tx.send((reply, Instant::now()));
        });
        Pending {
            what: args.join(" "),
            sent,
            rx,
            done: None,
            _thread: thread,
        }
    }

    /// The reply if it has arrived, without waiting.
    fn poll(&mut self) -> Option<&(Value, Instant)> {
        if self.done.is_none() {
            self.done = self.rx.try_recv().ok();
        }
        self.done.as_ref()
    }

    fn is_pending(&mut self) -> bool {
        self.poll().is_none()
    }

    /// The reply and when it arrived; panics if none arrives within `timeout`.
    fn wait(&mut self, timeout: Duration) -> (Value, Instant) {
        if let Some(done) = &self.done {
            return done.clone();
        }
        match self.rx.recv_timeout(timeout) {
            Ok(done) => {
                self.done = Some(done.clone());
                done
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("`{}`: no reply within {timeout:?}", self.what)
            }
            Err(RecvTimeoutError::Disconnected) => panic!("`{}`: thread died", self.what),
        }
    }
}

/// An interactive client that sends `CLIENT ID`, then `LOCK.ACQUIRE key
/// owner 30000 WAIT 30000`; returned with its client id once it is waiter
/// number `position` of `key`.
fn waiter_with_id(
    server: &Server,
    key: &str,
    owner: &str,
    position: i64,
) -> (ClientProcess, String) {
    let acquire = format!("LOCK.ACQUIRE {key} {owner} 30000 WAIT 30000");
    let mut client = LwClient::new(server.port())
        .cmds(&["CLIENT ID", &acquire])
        .interactive()
        .spawn();
    let id = client.expect_line();
    wait_until(&format!("{owner} queued on {key}"), TIMEOUT, || {
        lock_field(server, key, "waiters") == position
    });
    (client, id)
}

/// Whether `CLIENT UNBLOCK` applies to waiters: from Redis 7.4 and Valkey 8.
fn unblock_applies(server: &Server) -> bool {
    let (field, first) = match server.info_field("server", "server_name").as_deref() {
        Some("valkey") => ("valkey_version", (8, 0)),
        _ => ("redis_version", (7, 4)),
    };
    let version = server.info_field("server", field).unwrap_or_default();
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= first
}

/// Starts `LOCK.ACQUIRE key owner ttl WAIT wait` on a new connection and
/// waits until the server counts `queued_after` waiters for `key`.
fn queue_waiter(
    server: &Server,
    key: &str,
    owner: &str,
    ttl: u64,
    wait: u64,
    queued_after: i64,
) -> Pending {
    let p = Pending::spawn(
        server,
        &[
            "LOCK.ACQUIRE",
            key,
            owner,
            &ttl.to_string(),
            "WAIT",
            &wait.to_string(),
        ],
    );
    wait_until(&format!("{owner} queued on {key}"), TIMEOUT, || {
        lock_fields(server, key).is_some_and(|i| i["waiters"] == queued_after.to_string())
    });
    p
}

for_each_flavor! {
    /// Five waiters queued in a known order get the lock in that order, one
    /// per release, each grant visible in LOCK.INFO as soon as the release
    /// returns, with increasing tokens.
    fn wait_fifo_order(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        let (first_token, _) = acquire(&server, "q", "holder", 30000).expect("free lock");
        let owners: Vec<String> = (1..=5).map(|i| format!("w{i}")).collect();
        let mut waiters: Vec<Pending> = owners
            .iter()
            .enumerate()
            .map(|(i, o)| queue_waiter(&server, "q", o, 30000, 20000, i as i64 + 1))
            .collect();
        assert_eq!(lw_stat(&server, "waiters"), 5);

        // The holder itself asking with WAIT is a same-owner retry: at once.
        let again = server.cmd(&["LOCK.ACQUIRE", "q", "holder", "30000", "WAIT", "10000"]);
        assert_eq!(grant(&again).map(|g| g.0), Some(first_token));
        assert_eq!(lock_field(&server, "q", "waiters"), 5);

        let mut current = "holder".to_string();
        let mut last_token = first_token;
        for i in 0..owners.len() {
            assert_eq!(server.cmd_text(&["LOCK.RELEASE", "q", &current]), "1");
            // The grant is made inside the release: no window where the
            // lock is free.
            let info = lock_fields(&server, "q").expect("handed to the next waiter");
            assert_eq!(info["owner"], owners[i], "grant order after {i} releases");
            assert_eq!(info["waiters"], (owners.len() - i - 1).to_string());
            let (reply, _) = waiters[i].wait(TIMEOUT);
            let (token, ttl) = grant(&reply).unwrap_or_else(|| panic!("{} got nil", owners[i]));
            assert_eq!(token.to_string(), info["token"]);
            assert!(token > last_token, "tokens increase: {token} after {last_token}");
            assert!(ttl <= 30000 && ttl > 25000, "granted ttl {ttl}");
            last_token = token;
            for (j, later) in waiters.iter_mut().enumerate().skip(i + 1) {
                assert!(later.is_pending(), "{} answered before its turn (after {})", owners[j], owners[i]);
            }
            current = owners[i].clone();
        }
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "q", &current]), "1");
        assert_eq!(server.cmd_text(&["EXISTS", "q"]), "0");
        let after = lw_stats(&server);
        assert_eq!(after["handoffs"] - before["handoffs"], 5);
        assert_eq!(after["waiters"], 0);
        assert_eq!(after["wait_timeouts"], before["wait_timeouts"]);
    }

    /// A waiter that is not served gets nil after about its timeout, and
    /// leaves the queue; the lock is untouched.
    fn wait_timeout(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        let (token, _) = acquire(&server, "t", "holder", 30000).unwrap();
        let mut w = Pending::spawn(&server, &["LOCK.ACQUIRE", "t", "late", "5000", "WAIT", "800"]);
        wait_until("the waiter is queued", TIMEOUT, || lock_field(&server, "t", "waiters") == 1);
        assert_eq!(lw_stat(&server, "waiters"), 1);
        let (reply, at) = w.wait(TIMEOUT);
        assert_eq!(reply, Value::Nil, "timeout reply");
        let waited = at - w.sent;
        assert!(waited >= Duration::from_millis(780), "nil after only {waited:?}");
        assert!(waited < Duration::from_millis(800 + 2000), "nil after {waited:?}");
        assert_eq!(lock_field(&server, "t", "waiters"), 0);
        assert_eq!(owner_of(&server, "t").as_deref(), Some("holder"));
        assert_eq!(lock_field(&server, "t", "token"), token as i64);
        let after = lw_stats(&server);
        assert_eq!(after["waiters"], 0);
        assert_eq!(after["wait_timeouts"] - before["wait_timeouts"], 1);
        assert_eq!(after["handoffs"], before["handoffs"]);

        // A later release finds nobody queued: the key is simply gone.
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "t", "holder"]), "1");
        assert_eq!(server.cmd_text(&["EXISTS", "t"]), "0");
        // Two timed-out waiters in one queue, the second timing out first.
        acquire(&server, "t", "holder", 30000).unwrap();
        let mut long = queue_waiter(&server, "t", "long", 5000, 1500, 1);
        let mut short = queue_waiter(&server, "t", "short", 5000, 300, 2);
        assert_eq!(short.wait(TIMEOUT).0, Value::Nil);
        assert!(long.is_pending(), "the longer wait ended with the shorter one");
        assert_eq!(lock_field(&server, "t", "waiters"), 1);
        assert_eq!(long.wait(TIMEOUT).0, Value::Nil);
        assert_eq!(lock_field(&server, "t", "waiters"), 0);
        assert_eq!(lw_stat(&server, "wait_timeouts") - before["wait_timeouts"], 3);
        assert_eq!(lw_stat(&server, "waiters"), 0);
    }

    /// On release the waiter's one blocked command is answered at once; a
    /// `WAIT 0` waits without limit.
    fn handoff_on_release(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "r", "holder", 30000).unwrap();
        let calls_before = acquire_calls(&server);
        let mut w = queue_waiter(&server, "r", "next", 10000, 0, 1);
        // Longer than any timer the server might use to poll.
        std::thread::sleep(Duration::from_millis(1200));
        assert!(w.is_pending(), "WAIT 0 returned while the lock was held");
        let released_at = Instant::now();
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "r", "holder"]), "1");
        let (reply, at) = w.wait(TIMEOUT);
        let (token, ttl) = grant(&reply).expect("granted");
        let latency = at.saturating_duration_since(released_at);
        assert!(latency < Duration::from_millis(500), "handoff took {latency:?}");
        assert!(ttl <= 10000);
        assert_eq!(owner_of(&server, "r").as_deref(), Some("next"));
        assert_eq!(lock_field(&server, "r", "token"), token as i64);
        // The waiter sent exactly one command: it did not poll.
        assert_eq!(acquire_calls(&server) - calls_before, 1);
    }

    /// A holder that never releases: the waiter gets the lock right after the
    /// holder's deadline, with Redis's active expiry off and nobody touching
    /// the key, so only the module's own timer can serve it.
    fn handoff_on_expiry(flavor: Flavor) {
        let server = Server::start(flavor);
        assert_eq!(server.cmd_text(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]), "OK");
        let before = lw_stats(&server);
        let t0 = Instant::now();
        let (old_token, _) = acquire(&server, "e", "crashed", 1000).unwrap();
        let t1 = Instant::now();
        let mut w = Pending::spawn(&server, &["LOCK.ACQUIRE", "e", "heir", "10000", "WAIT", "15000"]);
        // Watch the global counter only: touching the key could expire it.
        wait_until("the waiter is queued", TIMEOUT, || lw_stat(&server, "waiters") == 1);
        let (reply, at) = w.wait(TIMEOUT);
        let (token, _) = grant(&reply).expect("granted at expiry");
        assert!(token > old_token);
        let early = t0 + Duration::from_millis(1000 - 20);
        let late = t1 + Duration::from_millis(1000 + 500);
        assert!(at >= early, "granted {:?} before the holder's deadline", early - at);
        assert!(at <= late, "granted {:?} after the holder's deadline + 500 ms", at - late);
        assert_eq!(owner_of(&server, "e").as_deref(), Some("heir"));
        assert_eq!(lock_field(&server, "e", "token"), token as i64);
        let after = lw_stats(&server);
        assert_eq!(after["handoffs"] - before["handoffs"], 1);
        assert_eq!(after["expired_while_held"] - before["expired_while_held"], 1);
        assert_eq!(after["waiters"], 0);

        // The holder extends after a waiter queued: the handoff follows the
        // new deadline, later...
        assert_eq!(server.cmd_text(&["LOCK.EXTEND", "e", "heir", "3000"]), "3000");
        let mut w2 = Pending::spawn(&server, &["LOCK.ACQUIRE", "e", "third", "20000", "WAIT", "15000"]);
        wait_until("the second waiter is queued", TIMEOUT, || lw_stat(&server, "waiters") == 1);
        let t0 = Instant::now();
        assert_eq!(server.cmd_text(&["LOCK.EXTEND", "e", "heir", "4000"]), "4000");
        let t1 = Instant::now();
        let (reply, at) = w2.wait(TIMEOUT);
        assert!(grant(&reply).is_some(), "granted at the extended deadline");
        let deadline = t0 + Duration::from_millis(4000);
        assert!(at >= deadline - Duration::from_millis(20), "granted {:?} before the extended deadline", deadline - at);
        let deadline = t1 + Duration::from_millis(4000);
        assert!(at <= deadline + Duration::from_millis(500), "granted {:?} after the extended deadline", at - deadline);
        assert_eq!(owner_of(&server, "e").as_deref(), Some("third"));
    }

    /// A lease shortened by LOCK.EXTEND after a waiter queued is handed over
    /// at its new deadline, not at the one the waiter saw when it queued
    /// (active expiry off, nobody touching the key).
    fn handoff_at_shortened_deadline(flavor: Flavor) {
        let server = Server::start(flavor);
        assert_eq!(server.cmd_text(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]), "OK");
        acquire(&server, "e", "third", 20000).unwrap();
        let mut w3 = Pending::spawn(&server, &["LOCK.ACQUIRE", "e", "fourth", "10000", "WAIT", "30000"]);
        wait_until("the third waiter is queued", TIMEOUT, || lw_stat(&server, "waiters") == 1);
        let t0 = Instant::now();
        assert_eq!(server.cmd_text(&["LOCK.EXTEND", "e", "third", "1000"]), "1000");
        let t1 = Instant::now();
        let (reply, at) = w3.wait(TIMEOUT);
        assert!(grant(&reply).is_some(), "granted at the shortened deadline");
        assert!(at >= t0 + Duration::from_millis(1000 - 20), "granted before the shortened deadline");
        assert!(
            at <= t1 + Duration::from_millis(1000 + 500),
            "granted {:?} after the shortened deadline (the original one was 20 s)",
            at - (t1 + Duration::from_millis(1000))
        );
        assert_eq!(owner_of(&server, "e").as_deref(), Some("fourth"));
    }

    /// The holder retries with a shorter TTL after a waiter queued: the
    /// handoff follows the new deadline (active expiry off, nobody touching
    /// the key), as it does for LOCK.EXTEND.
    fn handoff_at_retry_shortened_deadline(flavor: Flavor) {
        let server = Server::start(flavor);
        assert_eq!(server.cmd_text(&["DEBUG", "SET-ACTIVE-EXPIRE", "0"]), "OK");
        acquire(&server, "r", "holder", 20000).unwrap();
        let mut w = Pending::spawn(&server, &["LOCK.ACQUIRE", "r", "next", "10000", "WAIT", "30000"]);
        wait_until("the waiter is queued", TIMEOUT, || lw_stat(&server, "waiters") == 1);
        let t0 = Instant::now();
        assert!(acquire(&server, "r", "holder", 1000).is_some(), "the holder's retry");
        let t1 = Instant::now();
        let (reply, at) = w.wait(TIMEOUT);
        assert!(grant(&reply).is_some(), "granted at the retry's deadline");
        assert!(at >= t0 + Duration::from_millis(1000 - 20), "granted before the retry's deadline");
        assert!(
            at <= t1 + Duration::from_millis(1000 + 500),
            "granted {:?} after the retry's deadline (the first one was 20 s)",
            at - (t1 + Duration::from_millis(1000))
        );
        assert_eq!(owner_of(&server, "r").as_deref(), Some("next"));
    }

    /// A holder's deadline passes while writes are paused (`CLIENT PAUSE
    /// ... WRITE`, as `FAILOVER` does): Redis keeps the expired key and
    /// allows no propagation, so the handoff waits for the end of the pause
    /// (the server stays up), then happens once, on the replica too.
    fn handoff_waits_out_a_write_pause(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b.arg("appendonly", "yes"));
        let (p, r) = (&pair.primary, &pair.replica);
        acquire(p, "pz", "holder", 30_000).unwrap();
        let mut w = Pending::spawn(p, &["LOCK.ACQUIRE", "pz", "heir", "30000", "WAIT", "20000"]);
        wait_until("the waiter is queued", TIMEOUT, || lw_stat(p, "waiters") == 1);
        // The holder shortens its lease to 300 ms and writes are paused for
        // 1.5 s, microseconds apart (one pipeline): the deadline passes
        // inside the pause whatever the machine's speed.
        let paused_at = Instant::now();
        let (retry, paused): (Value, Value) = redis::pipe()
            .cmd("LOCK.ACQUIRE").arg("pz").arg("holder").arg("300")
            .cmd("CLIENT").arg("PAUSE").arg("1500").arg("WRITE")
            .query(&mut p.client())
            .expect("retry and pause");
        assert!(grant(&retry).is_some(), "{retry:?}");
        assert_eq!(paused, Value::Okay);
        std::thread::sleep(Duration::from_millis(700));
        assert_eq!(p.cmd_text(&["PING"]), "PONG");
        assert!(w.is_pending(), "granted during the write pause");
        let (reply, at) = w.wait(TIMEOUT);
        let (token, _) = grant(&reply).expect("granted after the pause");
        assert!(at >= paused_at + Duration::from_millis(1490), "granted {:?} into a 1.5 s pause", at - paused_at);
        assert_eq!(owner_of(p, "pz").as_deref(), Some("heir"));
        pair.wait_for_offset();
        assert_eq!(lock_field(r, "pz", "token"), token as i64);
        assert_same(p, r, "pz");
        assert_eq!(lw_stat(p, "handoffs"), 1);
    }

    /// The TTL limits apply when the lock is granted: a waiter whose TTL is
    /// above `max-ttl-ms` by then gets `TTLMAX` (or the maximum, with
    /// `clamp-ttl yes`), and the next waiter is served.
    fn waiter_ttl_checked_at_grant(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "c", "holder", 30000).unwrap();
        let mut big = queue_waiter(&server, "c", "big", 20000, 20000, 1);
        let mut small = queue_waiter(&server, "c", "small", 3000, 20000, 2);
        let mut clamped = queue_waiter(&server, "c", "clamped", 9000, 20000, 3);
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "5000"]), "OK");
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "c", "holder"]), "1");
        let (reply, _) = big.wait(TIMEOUT);
        assert!(render(&reply).starts_with("(error) TTLMAX"), "big: {}", render(&reply));
        let (reply, _) = small.wait(TIMEOUT);
        assert_eq!(grant(&reply).map(|g| g.1), Some(3000), "small: {}", render(&reply));
        assert_eq!(owner_of(&server, "c").as_deref(), Some("small"));
        assert_eq!(lock_field(&server, "c", "waiters"), 1);
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "lockwarden.clamp-ttl", "yes"]), "OK");
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "c", "small"]), "1");
        let (reply, _) = clamped.wait(TIMEOUT);
        assert_eq!(grant(&reply).map(|g| g.1), Some(5000), "clamped: {}", render(&reply));
        assert_eq!(owner_of(&server, "c").as_deref(), Some("clamped"));
        assert_eq!(lw_stat(&server, "waiters"), 0);
    }

    /// `DEL` of a held lock hands it to the head waiter.
    fn handoff_on_del(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        acquire(&server, "d", "holder", 30000).unwrap();
        let mut w1 = queue_waiter(&server, "d", "w1", 30000, 20000, 1);
        let mut w2 = queue_waiter(&server, "d", "w2", 30000, 20000, 2);
        let deleted_at = Instant::now();
        assert_eq!(server.cmd_text(&["DEL", "d"]), "1");
        let (reply, at) = w1.wait(TIMEOUT);
        assert!(grant(&reply).is_some(), "w1 granted after DEL");
        let latency = at.saturating_duration_since(deleted_at);
        assert!(latency < Duration::from_millis(1000), "handoff after DEL took {latency:?}");
        assert_eq!(owner_of(&server, "d").as_deref(), Some("w1"));
        assert!(w2.is_pending());
        assert_eq!(lock_field(&server, "d", "waiters"), 1);
        // UNLINK too.
        assert_eq!(server.cmd_text(&["UNLINK", "d"]), "1");
        assert!(grant(&w2.wait(TIMEOUT).0).is_some(), "w2 granted after UNLINK");
        assert_eq!(owner_of(&server, "d").as_deref(), Some("w2"));
        let after = lw_stats(&server);
        assert_eq!(after["handoffs"] - before["handoffs"], 2);
        assert_eq!(after["deleted_while_held"] - before["deleted_while_held"], 2);
        assert_eq!(after["waiters"], 0);
    }

    /// FLUSHALL hands every queued lock (in any database) to its head waiter.
    fn handoff_on_flushall(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "f", "holder", 30000).unwrap();
        let mut c3 = server.client();
        let _: () = redis::cmd("SELECT").arg(3).query(&mut c3).unwrap();
        let g: Value = redis::cmd("LOCK.ACQUIRE").arg("f").arg("holder3").arg(30000).query(&mut c3).unwrap();
        assert!(grant(&g).is_some());
        let mut w0 = queue_waiter(&server, "f", "w0", 30000, 20000, 1);
        let mut w3 = {
            let mut conn = server.client();
            let _: () = redis::cmd("SELECT").arg(3).query(&mut conn).unwrap();
            let (tx, rx) = bounded(1);
            let sent = Instant::now();
            let thread = std::thread::spawn(move || {
                let reply = conn
                    .req_command(redis::cmd("LOCK.ACQUIRE").arg("f").arg("w3").arg(30000).arg("WAIT").arg(20000))
                    .unwrap_or_else(|e| Value::SimpleString(format!("io error: {e}")));
                let _ = tx.send((reply, Instant::now()));
            });
            Pending { what: "db 3 waiter".into(), sent, rx, done: None, _thread: thread }
        };
        wait_until("the db 3 waiter is queued", TIMEOUT, || lw_stat(&server, "waiters") == 2);
        let flushed_at = Instant::now();
        assert_eq!(server.cmd_text(&["FLUSHALL"]), "OK");
        for (w, owner) in [(&mut w0, "w0"), (&mut w3, "w3")] {
            let (reply, at) = w.wait(TIMEOUT);
            assert!(grant(&reply).is_some(), "{owner} granted after FLUSHALL: {}", render(&reply));
            let latency = at.saturating_duration_since(flushed_at);
            assert!(latency < Duration::from_millis(1000), "{owner}: handoff after FLUSHALL took {latency:?}");
        }
        assert_eq!(owner_of(&server, "f").as_deref(), Some("w0"));
        let info3: Value = redis::cmd("LOCK.INFO").arg("f").query(&mut c3).unwrap();
        assert!(render(&info3).starts_with("[owner w3 "), "db 3: {}", render(&info3));
        assert_eq!(server.cmd_text(&["DBSIZE"]), "1");
        assert_eq!(lw_stat(&server, "waiters"), 0);
    }

    /// A SESSION holder's connection closes (kill -9 of its process): the
    /// waiter gets the lock at once, long before the holder's TTL.
    fn handoff_on_session_close(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        let mut holder = spawn_client(server.port(), &["LOCK.ACQUIRE s holder 60000 SESSION"], true);
        assert!(holder.expect_line().starts_with('['), "holder acquired");
        assert_eq!(lock_field(&server, "s", "session"), 1);
        let mut w = queue_waiter(&server, "s", "next", 30000, 30000, 1);
        let killed_at = Instant::now();
        holder.kill();
        let (reply, at) = w.wait(TIMEOUT);
        assert!(grant(&reply).is_some(), "granted after the session closed");
        let latency = at.saturating_duration_since(killed_at);
        assert!(latency < Duration::from_millis(2000), "session handoff took {latency:?}");
        assert_eq!(owner_of(&server, "s").as_deref(), Some("next"));
        let after = lw_stats(&server);
        assert_eq!(after["session_releases"] - before["session_releases"], 1);
        assert_eq!(after["handoffs"] - before["handoffs"], 1);
        assert_eq!(after["waiters"], 0);
    }

    /// A waiter whose process dies leaves the queue; the next one is served.
    fn disconnected_waiter_leaves_queue(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "x", "holder", 30000).unwrap();
        let mut gone = spawn_client(server.port(), &["LOCK.ACQUIRE x gone 30000 WAIT 30000"], true);
        wait_until("gone is queued", TIMEOUT, || lock_field(&server, "x", "waiters") == 1);
        let mut next = queue_waiter(&server, "x", "next", 30000, 30000, 2);
        assert_eq!(lw_stat(&server, "waiters"), 2);
        gone.kill();
        wait_until("the dead waiter leaves the queue", TIMEOUT, || {
            lock_field(&server, "x", "waiters") == 1
        });
        assert_eq!(lw_stat(&server, "waiters"), 1);
        assert!(next.is_pending());
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "x", "holder"]), "1");
        assert_eq!(owner_of(&server, "x").as_deref(), Some("next"));
        assert!(grant(&next.wait(TIMEOUT).0).is_some());
        assert_eq!(lw_stat(&server, "waiters"), 0);

        // The only waiter dies: the queue disappears, a release frees the key.
        let mut lone = spawn_client(server.port(), &["LOCK.ACQUIRE x lone 30000 WAIT 30000"], true);
        wait_until("lone is queued", TIMEOUT, || lock_field(&server, "x", "waiters") == 1);
        lone.kill();
        wait_until("lone leaves the queue", TIMEOUT, || lw_stat(&server, "waiters") == 0);
        assert_eq!(lock_field(&server, "x", "waiters"), 0);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "x", "next"]), "1");
        assert_eq!(server.cmd_text(&["EXISTS", "x"]), "0");
    }

    /// Inside MULTI/EXEC, WAIT is ignored: nil at once when held, a grant
    /// when free.
    fn wait_in_multi_does_not_block(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "m", "holder", 30000).unwrap();
        let mut conn = server.client();
        assert_eq!(render(&conn.req_command(&redis::cmd("MULTI")).unwrap()), "OK");
        let queued = conn
            .req_command(redis::cmd("LOCK.ACQUIRE").arg("m").arg("tx").arg(5000).arg("WAIT").arg(10000))
            .unwrap();
        assert_eq!(render(&queued), "QUEUED");
        let queued = conn
            .req_command(redis::cmd("LOCK.ACQUIRE").arg("m2").arg("tx").arg(5000).arg("WAIT").arg(10000))
            .unwrap();
        assert_eq!(render(&queued), "QUEUED");
        let started = Instant::now();
        let exec = conn.req_command(&redis::cmd("EXEC")).unwrap();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "EXEC blocked for {took:?}");
        let Value::Array(replies) = &exec else { panic!("EXEC: {}", render(&exec)) };
        assert_eq!(replies.len(), 2, "EXEC: {}", render(&exec));
        assert_eq!(replies[0], Value::Nil, "held lock inside MULTI: {}", render(&exec));
        assert!(grant(&replies[1]).is_some(), "free lock inside MULTI: {}", render(&exec));
        assert_eq!(lock_field(&server, "m", "waiters"), 0);
        assert_eq!(owner_of(&server, "m").as_deref(), Some("holder"));
        assert_eq!(owner_of(&server, "m2").as_deref(), Some("tx"));
        assert_eq!(lw_stat(&server, "waiters"), 0);
        // The connection is usable afterwards.
        assert_eq!(render(&conn.req_command(&redis::cmd("PING")).unwrap()), "PONG");
    }

    /// A script calling LOCK.ACQUIRE ... WAIT does not block either.
    fn wait_in_script_does_not_block(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "l", "holder", 30000).unwrap();
        let script = "return redis.call('LOCK.ACQUIRE', KEYS[1], ARGV[1], '5000', 'WAIT', '10000')";
        let started = Instant::now();
        let held = server.cmd(&["EVAL", script, "1", "l", "lua"]);
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "EVAL blocked for {took:?}");
        assert_eq!(held, Value::Nil, "EVAL on a held lock: {}", render(&held));
        let free = server.cmd(&["EVAL", script, "1", "l2", "lua"]);
        assert!(grant(&free).is_some(), "EVAL on a free lock: {}", render(&free));
        assert_eq!(owner_of(&server, "l").as_deref(), Some("holder"));
        assert_eq!(lock_field(&server, "l", "waiters"), 0);
        assert_eq!(owner_of(&server, "l2").as_deref(), Some("lua"));
        assert_eq!(lw_stat(&server, "waiters"), 0);
        assert_eq!(server.cmd_text(&["PING"]), "PONG");
    }

    /// CLIENT UNBLOCK ends a WAIT (nil, or an error with ERROR) and the
    /// client leaves the queue. Before Redis 7.4 (and Valkey 8) it does not
    /// apply to waiters (it answers 0 and they keep waiting): there it would
    /// end the wait of a waiter whose grant is on its way without any reply.
    fn client_unblock_leaves_queue(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        acquire(&server, "u", "holder", 30000).unwrap();
        let (mut a, a_id) = waiter_with_id(&server, "u", "a", 1);
        let (mut b, b_id) = waiter_with_id(&server, "u", "b", 2);
        let mut c = queue_waiter(&server, "u", "c", 30000, 30000, 3);

        if !unblock_applies(&server) {
            assert_eq!(server.cmd_text(&["CLIENT", "UNBLOCK", &a_id]), "0");
            assert_eq!(server.cmd_text(&["CLIENT", "UNBLOCK", &b_id, "ERROR"]), "0");
            assert_eq!(lock_field(&server, "u", "waiters"), 3);
            assert_eq!(server.cmd_text(&["LOCK.RELEASE", "u", "holder"]), "1");
            assert!(a.expect_line().starts_with("[") , "a is served first");
            assert_eq!(owner_of(&server, "u").as_deref(), Some("a"));
            return;
        }
        assert_eq!(server.cmd_text(&["CLIENT", "UNBLOCK", &a_id]), "1");
        assert_eq!(a.expect_line(), "(nil)");
        assert_eq!(lock_field(&server, "u", "waiters"), 2);
        assert_eq!(server.cmd_text(&["CLIENT", "UNBLOCK", &b_id, "ERROR"]), "1");
        let line = b.expect_line();
        assert!(line.starts_with("(error) UNBLOCKED"), "{line}");
        wait_until("b left the queue", TIMEOUT, || lock_field(&server, "u", "waiters") == 1);
        assert_eq!(lw_stat(&server, "waiters"), 1);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "u", "holder"]), "1");
        assert_eq!(owner_of(&server, "u").as_deref(), Some("c"));
        assert!(grant(&c.wait(TIMEOUT).0).is_some());
        assert_eq!(lw_stat(&server, "waiters"), 0);
        assert_eq!(lw_stat(&server, "handoffs") - before["handoffs"], 1);
        // The unblocked clients' connections still work and hold nothing.
        assert_eq!(a.exec("PING"), "PONG");
        assert_eq!(b.exec("PING"), "PONG");
    }

    /// Waiters whose request no longer fits when the lock is free (here a
    /// TTL above a maximum lowered while they waited) all get their error,
    /// a few hundred per turn of the event loop; the next waiter that fits
    /// gets the lock.
    fn a_queue_of_failing_waiters_is_failed_in_turns(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        acquire(&server, "fq", "holder", 60000).unwrap();
        let n = 600;
        let waiters: Vec<_> = (0..n)
            .map(|i| {
                let mut conn = server.client();
                let owner = format!("w{i}");
                std::thread::spawn(move || req(&mut conn, &["LOCK.ACQUIRE", "fq", &owner, "60000", "WAIT", "30000"]))
            })
            .collect();
        wait_until("all queued", TIMEOUT, || lock_field(&server, "fq", "waiters") == n);
        let mut last = queue_waiter(&server, "fq", "fits", 500, 30000, n + 1);
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "1000"]), "OK");
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "fq", "holder"]), "1");
        for w in waiters {
            let reply = render(&w.join().expect("waiter"));
            assert!(reply.starts_with("(error) TTLMAX"), "{reply}");
        }
        assert!(grant(&last.wait(TIMEOUT).0).is_some());
        assert_eq!(owner_of(&server, "fq").as_deref(), Some("fits"));
        assert_eq!(lw_stat(&server, "rejected_ttlmax") - before["rejected_ttlmax"], n);
    }

    /// A handoff and a CLIENT UNBLOCK of the same waiter in one event-loop
    /// turn (one pipeline): the waiter gets its grant, never silence.
    fn unblock_racing_a_handoff_still_replies(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "ur", "holder", 30000).unwrap();
        let (mut w, w_id) = waiter_with_id(&server, "ur", "w", 1);
        let mut conn = server.client();
        let replies: Vec<Value> = redis::pipe()
            .cmd("LOCK.RELEASE")
            .arg("ur")
            .arg("holder")
            .cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(&w_id)
            .query(&mut conn)
            .expect("pipeline");
        assert_eq!(replies[0], Value::Int(1));
        let line = w.expect_line();
        assert!(line.starts_with("["), "the waiter got {line}, not its grant");
        assert_eq!(owner_of(&server, "ur").as_deref(), Some("w"));
        assert_eq!(w.exec("PING"), "PONG");
        assert_eq!(lw_stat(&server, "grants_revoked"), 0);
    }

        /// A waiter that is granted the lock but disconnects before the reply
    /// can reach it (the release and the kill arrive in one event-loop turn)
    /// does not keep the lock until its TTL: the undelivered grant is taken
    /// back and the next waiter gets the lock at once.
    fn undelivered_grant_is_revoked(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        acquire(&server, "r", "holder", 30000).unwrap();
        let (_a, a_id) = waiter_with_id(&server, "r", "a", 1);
        let mut c = queue_waiter(&server, "r", "c", 30000, 30000, 2);
        // One write, so both commands run before Redis replies to `a`.
        let mut raw = std::net::TcpStream::connect(server.addr()).expect("connect");
        let pipeline = format!(
            "LOCK.RELEASE r holder\r\nCLIENT KILL ID {a_id}\r\n"
        );
        std::io::Write::write_all(&mut raw, pipeline.as_bytes()).expect("send");
        assert!(grant(&c.wait(TIMEOUT).0).is_some(), "c got the lock");
        assert_eq!(owner_of(&server, "r").as_deref(), Some("c"));
        let after = lw_stats(&server);
        assert_eq!(after["grants_revoked"] - before["grants_revoked"], 1);
        assert_eq!(after["handoffs"] - before["handoffs"], 2);
        assert_eq!(after["waiters"], 0);
    }

    /// Queued waiters come before a newcomer that finds the lock free before
    /// the server had a chance to serve the queue (DEL then ACQUIRE in one
    /// transaction).
    fn queued_waiters_come_before_newcomers(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire(&server, "n", "holder", 30000).unwrap();
        let mut w = queue_waiter(&server, "n", "queued", 30000, 20000, 1);
        let mut conn = server.client();
        let exec: Value = redis::pipe()
            .atomic()
            .cmd("DEL").arg("n")
            .cmd("LOCK.ACQUIRE").arg("n").arg("newcomer").arg(30000)
            .query(&mut conn)
            .unwrap();
        assert_eq!(render(&exec), "[1 (nil)]", "the newcomer jumped the queue");
        assert!(grant(&w.wait(TIMEOUT).0).is_some());
        assert_eq!(owner_of(&server, "n").as_deref(), Some("queued"));
        // Same with plain pipelining (both commands in one read).
        let mut w2 = queue_waiter(&server, "n", "queued2", 30000, 20000, 1);
        let replies: Vec<Value> = redis::pipe()
            .cmd("DEL").arg("n")
            .cmd("LOCK.ACQUIRE").arg("n").arg("newcomer").arg(30000)
            .query(&mut conn)
            .unwrap();
        assert_eq!(render(&Value::Array(replies)), "[1 (nil)]", "the newcomer jumped the queue");
        assert!(grant(&w2.wait(TIMEOUT).0).is_some());
        assert_eq!(owner_of(&server, "n").as_deref(), Some("queued2"));
    }

    /// A release inside MULTI/EXEC or a script hands the lock over too, and
    /// the replica follows.
    fn handoff_from_multi_and_script(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (p, r) = (&pair.primary, &pair.replica);
        acquire(p, "ms", "holder", 30000).unwrap();
        let mut w1 = queue_waiter(p, "ms", "w1", 30000, 20000, 1);
        let mut w2 = queue_waiter(p, "ms", "w2", 30000, 20000, 2);
        let mut conn = p.client();
        let exec: Value = redis::pipe()
            .atomic()
            .cmd("LOCK.RELEASE").arg("ms").arg("holder")
            .cmd("LOCK.INFO").arg("ms")
            .query(&mut conn)
            .unwrap();
        assert!(render(&exec).starts_with("[1 [owner w1 "), "EXEC: {}", render(&exec));
        let (t1, _) = grant(&w1.wait(TIMEOUT).0).expect("w1 granted from EXEC");
        pair.wait_for_offset();
        assert_same(p, r, "ms");
        assert_eq!(lock_field(r, "ms", "token"), t1 as i64);

        let released = p.cmd(&["EVAL", "return redis.call('LOCK.RELEASE', KEYS[1], ARGV[1])", "1", "ms", "w1"]);
        assert_eq!(render(&released), "1");
        let (t2, _) = grant(&w2.wait(TIMEOUT).0).expect("w2 granted from a script");
        assert!(t2 > t1);
        assert_eq!(owner_of(p, "ms").as_deref(), Some("w2"));
        pair.wait_for_offset();
        assert_same(p, r, "ms");
        assert_eq!(owner_of(r, "ms").as_deref(), Some("w2"));
        assert_eq!(lock_field(r, "ms", "token"), t2 as i64);
    }

    /// After handoffs (on release, and at expiry from the timer) the replica
    /// holds exactly what the primary holds.
    fn replica_matches_after_handoff(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (p, r) = (&pair.primary, &pair.replica);
        acquire(p, "h", "holder", 30000).unwrap();
        let mut w1 = queue_waiter(p, "h", "w1", 1000, 20000, 1);
        let mut w2 = queue_waiter(p, "h", "w2", 30000, 20000, 2);
        assert_eq!(p.cmd_text(&["LOCK.RELEASE", "h", "holder"]), "1");
        let (t1, _) = grant(&w1.wait(TIMEOUT).0).expect("w1 granted on release");
        // Poll offsets: WAIT after a module-blocked command is unreliable on
        // Redis 7.0.
        pair.wait_for_offset();
        assert_same(p, r, "h");
        assert_eq!(owner_of(r, "h").as_deref(), Some("w1"));
        assert_eq!(lock_field(r, "h", "token"), t1 as i64);

        // w1 never releases: w2 gets the lock from the expiry timer.
        let (t2, _) = grant(&w2.wait(TIMEOUT).0).expect("w2 granted at expiry");
        assert!(t2 > t1);
        pair.wait_for_offset();
        assert_same(p, r, "h");
        assert_eq!(owner_of(r, "h").as_deref(), Some("w2"));
        assert_eq!(lock_field(r, "h", "token"), t2 as i64);
        assert_eq!(p.cmd_text(&["DEBUG", "DIGEST"]), r.cmd_text(&["DEBUG", "DIGEST"]));
    }

    /// INFO handoffs and the wait-time distribution move with real waits.
    fn wait_stats(flavor: Flavor) {
        let server = Server::start(flavor);
        let before = lw_stats(&server);
        assert_eq!(before["wait_max_us"], 0);
        acquire(&server, "w", "holder", 30000).unwrap();
        let mut w = queue_waiter(&server, "w", "waiter", 30000, 20000, 1);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "w", "holder"]), "1");
        let (reply, at) = w.wait(TIMEOUT);
        assert!(grant(&reply).is_some());
        let waited_us = (at - w.sent).as_micros() as i64;
        let after = lw_stats(&server);
        assert_eq!(after["handoffs"] - before["handoffs"], 1);
        let max = after["wait_max_us"];
        assert!(max >= 300_000, "wait_max_us {max} < 300 ms");
        // The module measures waits in whole milliseconds: allow 1 ms.
        assert!(
            max <= waited_us + 1000,
            "wait_max_us {max} > the {waited_us} µs the client waited"
        );
        let (p50, p99) = (after["wait_p50_us"], after["wait_p99_us"]);
        // Percentiles are within 12.5% of the recorded value, at most the max.
        assert!(p50 >= max * 7 / 8 && p50 <= max, "wait_p50_us {p50} vs max {max}");
        assert!(p99 >= p50 && p99 <= max, "wait_p99_us {p99}");

        // Nine quick handoffs pull the median down, not the max.
        for i in 0..9 {
            let owner = format!("quick{i}");
            let prev = owner_of(&server, "w").unwrap();
            let mut q = queue_waiter(&server, "w", &owner, 30000, 20000, 1);
            assert_eq!(server.cmd_text(&["LOCK.RELEASE", "w", &prev]), "1");
            assert!(grant(&q.wait(TIMEOUT).0).is_some());
        }
        let last = lw_stats(&server);
        assert_eq!(last["handoffs"] - before["handoffs"], 10);
        assert_eq!(last["wait_max_us"], max);
        assert!(last["wait_p50_us"] < 300_000, "wait_p50_us {}", last["wait_p50_us"]);
        assert!(last["wait_p99_us"] >= max * 7 / 8, "wait_p99_us {}", last["wait_p99_us"]);
    }
}

/// `cmdstat_lock.acquire` calls so far.
fn acquire_calls(server: &Server) -> u64 {
    let info = server.info("commandstats");
    let line = info
        .iter()
        .find_map(|(k, v)| k.eq_ignore_ascii_case("cmdstat_lock.acquire").then_some(v))
        .unwrap_or_else(|| panic!("no cmdstat_lock.acquire in {info:?}"));
    line.split(',')
        .find_map(|kv| kv.strip_prefix("calls="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cmdstat_lock.acquire: {line}"))
}

/// `key` has the same value (digest) on both servers.
fn assert_same(primary: &Server, replica: &Server, key: &str) {
    let (a, b) = (digest(primary, key), digest(replica, key));
    assert!(!a.starts_with("(error)"), "DEBUG DIGEST-VALUE: {a}");
    assert_eq!(a, b, "{key}: primary and replica differ");
    assert_ne!(
        a, "[0000000000000000000000000000000000000000]",
        "{key} is missing"
    );
}
