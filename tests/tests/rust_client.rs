//! The Rust lock client (`lockwarden_sdk::client`) against real servers:
//! guards, waiting, typed errors, the watchdog and loss reporting, and the
//! release/renewal race.

use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select};
use lockwarden_sdk::client::{Error, LockClient, LossReason, Options, unique_owner};
use lockwarden_tests::locks::*;
use lockwarden_tests::*;

fn client(server: &Server) -> LockClient {
    LockClient::open(&server.url()).expect("LockClient::open")
}

/// A small deterministic xorshift generator (no extra dependency).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

for_each_flavor! {
    /// Acquire, contention, extend, release; owners are unique.
    fn acquire_release(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        let me = unique_owner();
        let other = unique_owner();
        assert_ne!(me, other);
        let parts: Vec<&str> = me.split(':').collect();
        assert_eq!(parts.len(), 3, "host:pid:random, got {me}");
        assert_eq!(parts[1], std::process::id().to_string());

        let opts = Options::new(Duration::from_secs(10));
        let mut guard = locks.acquire("k", &me, &opts).unwrap().expect("free lock");
        assert_eq!(guard.key(), "k");
        assert_eq!(guard.ttl(), Duration::from_secs(10));
        let info = lock_fields(&server, "k").unwrap();
        assert_eq!(info["owner"], me);
        assert_eq!(info["token"], guard.token().to_string());
        assert_eq!(info["session"], "0");
        assert!(!guard.loss().is_lost());

        assert!(locks.acquire("k", &other, &opts).unwrap().is_none(), "held by me");
        assert_eq!(guard.extend(Duration::from_secs(5)).unwrap(), Duration::from_secs(5));
        assert!(lock_field(&server, "k", "ttl") <= 5000);
        assert_eq!(lock_field(&server, "k", "extensions"), 1);
        guard.release().unwrap();
        assert!(!exists(&server, "k"));

        // Now the other owner gets it, with a larger token.
        let g2 = locks.acquire("k", &other, &opts).unwrap().expect("free again");
        assert_eq!(lock_fields(&server, "k").unwrap()["owner"], other);
        g2.release().unwrap();

        // A session lock is bound to the guard's connection.
        let g3 = locks.acquire("s", &me, &opts.clone().session()).unwrap().unwrap();
        assert_eq!(lock_field(&server, "s", "session"), 1);
        assert_eq!(lock_field(&server, "s", "client-connected"), 1);
        g3.release().unwrap();
        assert!(!exists(&server, "s"));
    }

    /// Options::wait blocks on the server until the holder releases; a wait
    /// that runs out gives Ok(None).
    fn wait_option(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        let holder = locks.acquire("w", "holder", &Options::new(Duration::from_secs(30))).unwrap().unwrap();

        let started = Instant::now();
        let none = locks
            .acquire("w", "impatient", &Options::new(Duration::from_secs(5)).wait(Duration::from_millis(400)))
            .unwrap();
        let waited = started.elapsed();
        assert!(none.is_none());
        assert!(waited >= Duration::from_millis(390), "gave up after {waited:?}");
        assert!(waited < Duration::from_secs(3), "gave up after {waited:?}");

        let waiter_locks = locks.clone();
        let (tx, rx) = bounded(1);
        let t = std::thread::spawn(move || {
            let opts = Options::new(Duration::from_secs(5)).wait(Duration::from_secs(20));
            let got = waiter_locks.acquire("w", "patient", &opts).map(|g| g.map(|g| g.token()));
            let _ = tx.send((got.map_err(|e| e.to_string()), Instant::now()));
        });
        wait_until("the waiter is queued", TIMEOUT, || lock_field(&server, "w", "waiters") == 1);
        let old_token = holder.token();
        let released_at = Instant::now();
        holder.release().unwrap();
        let (got, at) = rx.recv_timeout(TIMEOUT).expect("waiter answered");
        let token = got.unwrap().expect("granted after the release");
        assert!(token > old_token);
        let latency = at.saturating_duration_since(released_at);
        assert!(latency < Duration::from_millis(500), "handoff took {latency:?}");
        t.join().unwrap();
        // The waiter's guard was dropped in its thread: released.
        wait_gone(&server, "w", TIMEOUT);
    }

    /// NOTHELD / NOTOWNER / TTL / other errors come back typed.
    fn typed_errors(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        let short = Options::new(Duration::from_millis(200));

        // Expired, nobody else: NotHeld, for release and extend.
        let mut g = locks.acquire("a", "me", &short).unwrap().unwrap();
        wait_gone(&server, "a", TIMEOUT);
        match g.extend(Duration::from_secs(1)) {
            Err(Error::NotHeld(_)) => {}
            other => panic!("extend after expiry: {other:?}"),
        }
        match g.release() {
            Err(e @ Error::NotHeld(_)) => assert!(e.to_string().starts_with("NOTHELD"), "{e}"),
            other => panic!("release after expiry: {other:?}"),
        }

        // Expired and taken by another owner: NotOwner; the new lock stays.
        let g = locks.acquire("b", "me", &short).unwrap().unwrap();
        wait_gone(&server, "b", TIMEOUT);
        let theirs = locks.acquire("b", "them", &Options::new(Duration::from_secs(30))).unwrap().unwrap();
        match g.release() {
            Err(e @ Error::NotOwner(_)) => assert!(e.to_string().starts_with("NOTOWNER"), "{e}"),
            other => panic!("release of a lock someone else took: {other:?}"),
        }
        assert_eq!(lock_fields(&server, "b").unwrap()["owner"], "them");

        // Expired and re-acquired by the same owner name: the old guard's
        // token is stale (NotOwner), the new grant is untouched.
        let g = locks.acquire("c", "me", &short).unwrap().unwrap();
        wait_gone(&server, "c", TIMEOUT);
        let again = locks.acquire("c", "me", &Options::new(Duration::from_secs(30))).unwrap().unwrap();
        assert_ne!(again.token(), g.token());
        match g.release() {
            Err(Error::NotOwner(_)) => {}
            other => panic!("release with a stale token: {other:?}"),
        }
        assert_eq!(lock_field(&server, "c", "token"), again.token() as i64);

        // A dropped stale guard does not remove the new holder's lock either.
        let g = locks.acquire("d", "me", &short).unwrap().unwrap();
        wait_gone(&server, "d", TIMEOUT);
        let _theirs_d = locks.acquire("d", "them", &Options::new(Duration::from_secs(30))).unwrap().unwrap();
        drop(g);
        assert_eq!(lock_fields(&server, "d").unwrap()["owner"], "them");

        // TTL limits.
        match locks.acquire("e", "me", &Options::new(Duration::from_secs(120))) {
            Err(e @ Error::Ttl(_)) => assert!(e.to_string().starts_with("TTLMAX"), "{e}"),
            Err(other) => panic!("TTL above the maximum: {other}"),
            Ok(_) => panic!("TTL above the maximum: granted"),
        }
        assert!(!exists(&server, "e"));

        // Anything else: Redis errors with their code.
        server.cmd(&["SET", "str", "x"]);
        match locks.acquire("str", "me", &short) {
            Err(Error::Redis(e)) => assert_eq!(e.code(), Some("WRONGTYPE"), "{e}"),
            Err(other) => panic!("acquire of a string key: {other}"),
            Ok(_) => panic!("acquire of a string key: granted"),
        }
        assert_eq!(server.cmd_text(&["GET", "str"]), "x");
        drop(theirs);
    }

    /// The watchdog keeps a 300 ms lease alive for 2 s, with the same token,
    /// and stops at release.
    fn watchdog_keeps_lock(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        let opts = Options::new(Duration::from_millis(300)).watchdog();
        let guard = locks.acquire("wd", "me", &opts).unwrap().unwrap();
        let token = guard.token();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(100));
            let info = lock_fields(&server, "wd").expect("lock lost while the watchdog runs");
            assert_eq!(info["token"], token.to_string());
            assert!(!guard.loss().is_lost(), "loss: {:?}", guard.loss().reason());
        }
        let extensions = lock_field(&server, "wd", "extensions");
        // About 20 renewals at 1/3 of the TTL; allow for a slow machine.
        assert!(extensions >= 5, "only {extensions} extensions in 2 s");
        assert!(lock_field(&server, "wd", "held") >= 2000);
        assert!(guard.loss().wait(Duration::from_millis(1)).is_none());
        guard.release().unwrap();
        assert!(!exists(&server, "wd"));
        let extends = lw_stats(&server)["extends"];
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(lw_stats(&server)["extends"], extends, "renewals after release");
        assert!(!exists(&server, "wd"));
    }

    /// A force-deleted lock is reported lost (NotHeld) within about one
    /// renewal period, well before its lease would have ended.
    fn watchdog_reports_delete(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        // Renewal every 500 ms.
        let opts = Options::new(Duration::from_millis(1500)).watchdog();
        let guard = locks.acquire("gone", "me", &opts).unwrap().unwrap();
        wait_until("a first renewal", TIMEOUT, || lock_field(&server, "gone", "extensions") >= 1);
        assert_eq!(server.cmd_text(&["DEL", "gone"]), "1");
        let deleted = Instant::now();
        let reason = guard.loss().wait(TIMEOUT).expect("loss reported");
        let took = deleted.elapsed();
        assert!(matches!(reason, LossReason::NotHeld(_)), "reason {reason:?}");
        assert!(took < Duration::from_millis(500 + 600), "loss reported {took:?} after DEL");
        assert!(guard.loss().is_lost());
        assert_eq!(guard.loss().reason(), Some(reason));
        match guard.release() {
            Err(Error::NotHeld(_)) => {}
            other => panic!("release of a deleted lock: {other:?}"),
        }
    }

    /// Renewals clamped below the renewal period (here `max-ttl-ms` lowered
    /// with `clamp-ttl yes`; a policy clamp is the same) shorten the period
    /// with them: the lock stays held, nothing is reported lost.
    fn watchdog_follows_a_clamped_renewal(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        // First period: 3 s; after the clamp to 2.4 s, 0.8 s.
        let opts = Options::new(Duration::from_millis(9000)).watchdog();
        let guard = locks.acquire("cl", "me", &opts).unwrap().unwrap();
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "lockwarden.clamp-ttl", "yes"]), "OK");
        assert_eq!(server.cmd_text(&["CONFIG", "SET", "lockwarden.max-ttl-ms", "2400"]), "OK");
        wait_until("a clamped renewal", TIMEOUT, || {
            lock_fields(&server, "cl").is_some_and(|i| i["ttl"].parse::<i64>().unwrap() <= 2400)
        });
        // Without the shorter period the lease would run out 2.4 s after the
        // clamped renewal, before the next one at 3 s.
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            assert!(lock_fields(&server, "cl").is_some(), "the lock expired under the watchdog");
            assert!(!guard.loss().is_lost(), "loss: {:?}", guard.loss().reason());
        }
        guard.release().unwrap();
    }

    /// The guard's own extension to a shorter lease sets the watchdog's
    /// pace and TTL: the lock stays held (renewed well within each short
    /// lease, never with the first TTL again); a refused extension is a loss.
    fn own_extend_sets_the_watchdog_pace(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        // First period: 10 s; after extend(600 ms), 200 ms.
        let opts = Options::new(Duration::from_secs(30)).watchdog();
        let mut guard = locks.acquire("ox", "me", &opts).unwrap().unwrap();
        assert_eq!(guard.extend(Duration::from_millis(600)).unwrap(), Duration::from_millis(600));
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(2000) {
            std::thread::sleep(Duration::from_millis(100));
            let info = lock_fields(&server, "ox").expect("the lock expired under the watchdog");
            assert!(info["ttl"].parse::<i64>().unwrap() <= 600, "renewed with the first TTL: {info:?}");
            assert!(!guard.loss().is_lost(), "loss: {:?}", guard.loss().reason());
        }
        assert!(lock_field(&server, "ox", "extensions") >= 5, "the watchdog kept the short pace");

        assert_eq!(server.cmd_text(&["DEL", "ox"]), "1");
        match guard.extend(Duration::from_millis(600)) {
            Err(Error::NotHeld(_)) => {}
            other => panic!("extend of a deleted lock: {other:?}"),
        }
        assert!(matches!(guard.loss().reason(), Some(LossReason::NotHeld(_))), "{:?}", guard.loss().reason());
    }

    /// The key overwritten with another type: reported lost at the next
    /// renewal (not retried until the lease runs out), to every loss
    /// channel.
    fn watchdog_reports_overwrite_to_every_channel(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        // Renewal every 1 s, lease 3 s.
        let opts = Options::new(Duration::from_millis(3000)).watchdog();
        let guard = locks.acquire("ow", "me", &opts).unwrap().unwrap();
        let (first, second) = (guard.loss().channel(), guard.loss().channel());
        assert_eq!(server.cmd_text(&["SET", "ow", "not a lock"]), "OK");
        let overwritten = Instant::now();
        let reason = first.recv_timeout(TIMEOUT).expect("loss on the first channel");
        assert!(matches!(&reason, LossReason::NotHeld(m) if m.starts_with("WRONGTYPE")), "{reason:?}");
        // At the next renewal (1 s), not when the 3 s lease would run out.
        assert!(overwritten.elapsed() < Duration::from_millis(2500), "reported {:?} later", overwritten.elapsed());
        assert_eq!(second.recv_timeout(TIMEOUT).expect("loss on the second channel"), reason);
        assert_eq!(guard.loss().channel().recv_timeout(TIMEOUT).expect("a channel made after the loss"), reason);
        drop(guard);
        assert_eq!(server.cmd_text(&["GET", "ow"]), "not a lock");
    }

    /// A lock deleted and taken by another owner is reported lost (NotOwner);
    /// the watchdog does not touch the new holder's lease.
    fn watchdog_reports_takeover(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        let opts = Options::new(Duration::from_millis(1500)).watchdog();
        let guard = locks.acquire("t", "me", &opts).unwrap().unwrap();
        wait_until("a first renewal", TIMEOUT, || lock_field(&server, "t", "extensions") >= 1);
        assert_eq!(server.cmd_text(&["DEL", "t"]), "1");
        assert!(server.cmd_text(&["LOCK.ACQUIRE", "t", "thief", "30000"]).starts_with('['));
        let taken = Instant::now();
        let reason = guard.loss().wait(TIMEOUT).expect("loss reported");
        let took = taken.elapsed();
        assert!(matches!(reason, LossReason::NotOwner(_)), "reason {reason:?}");
        assert!(took < Duration::from_millis(500 + 600), "loss reported {took:?} after the takeover");
        let info = lock_fields(&server, "t").unwrap();
        assert_eq!(info["owner"], "thief");
        assert_eq!(info["extensions"], "0");
        drop(guard);
        assert_eq!(lock_fields(&server, "t").unwrap()["owner"], "thief", "the stale guard's drop released it");
    }

    /// The server stops answering (SIGSTOP, like a partition): the watchdog
    /// reports `Expired` by the time the lease it last obtained runs out, not
    /// long after another client could have taken the lock.
    fn watchdog_reports_expiry_in_time(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        let ttl = Duration::from_millis(1500);
        let guard = locks.acquire("p", "me", &Options::new(ttl).watchdog()).unwrap().unwrap();
        wait_until("a first renewal", TIMEOUT, || lock_field(&server, "p", "extensions") >= 1);
        // No renewal can succeed after this: the lease ends at most `ttl`
        // from now.
        let paused = Instant::now();
        server.pause();
        let reason = guard.loss().wait(Duration::from_secs(10));
        let after = paused.elapsed();
        server.resume();
        assert_eq!(reason, Some(LossReason::Expired), "after {after:?}");
        assert!(
            after <= ttl + Duration::from_millis(200),
            "loss reported {after:?} after the server stopped answering; the lease ended at most {ttl:?} after"
        );
        match guard.release() {
            Err(Error::NotHeld(_)) => {}
            other => panic!("release after expiry: {other:?}"),
        }
    }

    /// After its connection is killed the watchdog reconnects and keeps
    /// renewing; a later stall of the server is still detected (the new
    /// connection must time out like the first one).
    fn watchdog_reconnects_and_detects_stall(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        let ttl = Duration::from_millis(1500);
        let guard = locks.acquire("rc", "me", &Options::new(ttl).watchdog()).unwrap().unwrap();
        wait_until("a first renewal", TIMEOUT, || lock_field(&server, "rc", "extensions") >= 1);
        // Kill the watchdog's connection (the one that last ran LOCK.EXTEND).
        let list = server.cmd_text(&["CLIENT", "LIST"]);
        let id = list
            .split("\\n")
            .flat_map(|l| l.split('\n'))
            .find(|l| l.to_ascii_lowercase().contains("cmd=lock.extend"))
            .and_then(|l| l.split(' ').find_map(|f| f.strip_prefix("id=")))
            .unwrap_or_else(|| panic!("no watchdog connection in {list}"))
            .to_string();
        assert_eq!(server.cmd_text(&["CLIENT", "KILL", "ID", &id]), "1");
        let killed_at = lock_field(&server, "rc", "extensions");
        wait_until("a renewal on a new connection", TIMEOUT, || {
            lock_field(&server, "rc", "extensions") >= killed_at + 2
        });
        assert!(!guard.loss().is_lost(), "{:?}", guard.loss().reason());
        assert_eq!(lock_fields(&server, "rc").unwrap()["token"], guard.token().to_string());

        let paused = Instant::now();
        server.pause();
        let reason = guard.loss().wait(ttl + Duration::from_secs(3));
        let after = paused.elapsed();
        server.resume();
        assert_eq!(
            reason,
            Some(LossReason::Expired),
            "no loss reported {after:?} after the server stopped answering (lease {ttl:?})"
        );
        drop(guard);
    }

    /// `loss().channel()` works in `select!` next to the holder's own work,
    /// and yields the reason once.
    fn loss_channel_select(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        let opts = Options::new(Duration::from_millis(900)).watchdog();
        let guard = locks.acquire("sel", "me", &opts).unwrap().unwrap();
        let lost = guard.loss().channel();
        let (work_tx, work_rx) = bounded::<u32>(16);
        let producer = std::thread::spawn(move || {
            for i in 0..1000 {
                if work_tx.send(i).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let started = Instant::now();
        let mut done = 0;
        let mut deleted_at = None;
        let reason = loop {
            select! {
                recv(lost) -> r => break r.expect("loss channel closed"),
                recv(work_rx) -> w => {
                    w.expect("work");
                    done += 1;
                }
                default(Duration::from_millis(100)) => {}
            }
            if deleted_at.is_none() && started.elapsed() > Duration::from_millis(1000) {
                assert_eq!(server.cmd_text(&["DEL", "sel"]), "1");
                deleted_at = Some(Instant::now());
            }
            assert!(started.elapsed() < TIMEOUT, "no loss signalled");
        };
        let deleted_at = deleted_at.expect("loss signalled before the lock was deleted");
        assert!(matches!(reason, LossReason::NotHeld(_)), "{reason:?}");
        assert!(deleted_at.elapsed() < Duration::from_millis(300 + 600));
        assert!(done > 10, "work was starved: {done}");
        assert!(lost.try_recv().is_err(), "the reason is delivered once");
        assert!(guard.loss().is_lost());
        drop(work_rx);
        producer.join().unwrap();
        drop(guard);
    }

    /// Releasing at random moments never races a renewal: every release is
    /// Ok, the key is gone and stays gone, no loss is ever signalled, and the
    /// server never sees a renewal of a released lock.
    fn release_never_races_renewal(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        let before = lw_stats(&server);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
        let mut losses = Vec::new();
        for i in 0..200 {
            let fraction = 0.05 + 0.25 * rng.unit();
            // 250 ms: short enough for renewals every 12..75 ms, long enough
            // that a loaded 2-core machine does not let leases run out.
            let opts = Options::new(Duration::from_millis(250)).watchdog().renew_every(fraction);
            let owner = format!("me-{i}");
            let guard = locks
                .acquire("race", &owner, &opts)
                .unwrap_or_else(|e| panic!("iteration {i}: {e}"))
                .unwrap_or_else(|| panic!("iteration {i}: lock still held"));
            std::thread::sleep(Duration::from_millis(rng.range(0, 200)));
            let loss = guard.loss().clone();
            if let Err(e) = guard.release() {
                panic!("iteration {i} (renew every {fraction:.2} of 250 ms): release failed: {e}; loss {:?}", loss.reason());
            }
            assert!(!exists(&server, "race"), "iteration {i}: key still there after release");
            assert!(!loss.is_lost(), "iteration {i}: loss {:?}", loss.reason());
            assert!(loss.channel().try_recv().is_err(), "iteration {i}: loss on the channel");
            losses.push(loss);
        }
        std::thread::sleep(Duration::from_millis(300));
        assert!(!exists(&server, "race"), "key came back");
        for (i, l) in losses.iter().enumerate() {
            assert!(!l.is_lost(), "iteration {i}: loss signalled after release: {:?}", l.reason());
        }
        let after = lw_stats(&server);
        assert_eq!(after["releases"] - before["releases"], 200);
        assert_eq!(after["errors_notheld"], before["errors_notheld"], "a renewal or release found no lock");
        assert_eq!(after["errors_notowner"], before["errors_notowner"], "a renewal or release hit another grant");
        assert_eq!(after["expired_while_held"], before["expired_while_held"], "a lease expired while held");
    }

    /// Dropping a guard releases its lock and stops its watchdog.
    fn drop_releases(flavor: Flavor) {
        let server = Server::start(flavor);
        let locks = client(&server);
        {
            let _g = locks.acquire("p", "me", &Options::new(Duration::from_secs(30))).unwrap().unwrap();
            assert!(exists(&server, "p"));
        }
        assert!(!exists(&server, "p"));
        {
            let opts = Options::new(Duration::from_millis(300)).watchdog();
            let _g = locks.acquire("q", "me", &opts).unwrap().unwrap();
            wait_until("a renewal", TIMEOUT, || lock_field(&server, "q", "extensions") >= 1);
        }
        assert!(!exists(&server, "q"));
        let extends = lw_stats(&server)["extends"];
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(lw_stats(&server)["extends"], extends, "the watchdog outlived its guard");
        assert!(!exists(&server, "q"));
        let s = lw_stats(&server);
        assert_eq!(s["releases"], 2);
        assert_eq!(s["locks_held"], 0);
    }
}
