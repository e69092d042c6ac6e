//! The seed verifications of the lock core: a crashed holder, acquire /
//! release, a two-process race and a contention load with a non-atomic
//! critical section. Every test runs on Redis and Valkey.

mod core_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use core_support::*;
use lockwarden_tests::redis::Value;
use lockwarden_tests::*;

/// Parses an `lw-client` line `[token ttl]`.
fn grant_line(line: &str) -> Option<(i64, i64)> {
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    let (t, ttl) = inner.split_once(' ')?;
    Some((t.parse().ok()?, ttl.parse().ok()?))
}

for_each_flavor! {
    /// (1) A separate process acquires and is killed -9: the lock stays held
    /// by it until its TTL runs out, then is free, and the next holder gets
    /// a larger token.
    fn holder_killed_lock_free_after_ttl(flavor: Flavor) {
        const TTL: i64 = 3000;
        let s = Server::start(flavor);
        let mut holder = spawn_client(s.port(), &["LOCK.ACQUIRE seed:lock holder 3000"], true);
        let line = holder.expect_line();
        let (token, ttl) = grant_line(&line).unwrap_or_else(|| panic!("holder got {line}"));
        assert_eq!(ttl, TTL);
        let info = held(&s, "seed:lock");
        assert_eq!((info.owner.as_slice(), info.token, info.client_connected), (&b"holder"[..], token, 1));

        holder.kill();
        // The server sees the connection close; the lock is not released.
        s.wait_for(TIMEOUT, |s| {
            let i = held(s, "seed:lock");
            assert_eq!((i.owner.as_slice(), i.token), (&b"holder"[..], token));
            i.client_connected == 0
        });

        // Others are refused while the lease runs, then granted.
        let give_up = Instant::now() + Duration::from_millis(TTL as u64) + TIMEOUT;
        let mut refusals = 0;
        let next = loop {
            match acquire(&s, "seed:lock", "next", 10000) {
                Some((t, _)) => break t,
                None => {
                    refusals += 1;
                    if let Some(i) = lock_info(&s, "seed:lock") {
                        assert_eq!((i.owner.as_slice(), i.token), (&b"holder"[..], token));
                    }
                    assert!(Instant::now() < give_up, "the lock never became free");
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
        };
        assert!(refusals > 0, "the lock was free right after the holder died");
        assert!(next > token, "next token {next} <= dead holder's {token}");
        let now = held(&s, "seed:lock");
        assert_eq!(now.owner, b"next");
        assert!(
            now.acquired_at > info.acquired_at + TTL,
            "granted at {} before the dead holder's deadline {}",
            now.acquired_at,
            info.acquired_at + TTL
        );
        assert_eq!(lw_stat(&s, "expired_while_held"), 1);
    }

    /// (2) Acquire then release: the key is gone.
    fn acquire_release_key_gone(flavor: Flavor) {
        let s = Server::start(flavor);
        let t = acquire_ok(&s, "seed:k", "me", 10000);
        assert!(exists(&s, "seed:k"));
        assert_eq!(s.cmd_text(&["TYPE", "seed:k"]), "lockwardn");
        assert_eq!(s.cmd(&["LOCK.RELEASE", "seed:k", "me", "FENCE", &t.to_string()]), Value::Int(1));
        assert!(!exists(&s, "seed:k"));
        assert_eq!(s.cmd_text(&["TYPE", "seed:k"]), "none");
        assert_eq!(pttl(&s, "seed:k"), -2);
        assert_eq!(lock_info(&s, "seed:k"), None);
        assert_eq!(dbsize(&s), 0);
        assert_eq!(lw_stat(&s, "locks_held"), 0);
        assert!(acquire_ok(&s, "seed:k", "other", 10000) > t);
    }

    /// (3) Two processes released at the same instant acquire the same
    /// key: exactly one gets a token, the other nil.
    fn two_processes_race_exactly_one_wins(flavor: Flavor) {
        let s = Server::start(flavor);
        for round in 0..3 {
            let key = format!("seed:race:{round}");
            let at = SystemTime::now() + Duration::from_millis(800);
            let cmd = |who: &str| format!("LOCK.ACQUIRE {key} {who} 10000");
            let mut a = spawn_client_at(s.port(), &[&cmd("p1")], false, at);
            let mut b = spawn_client_at(s.port(), &[&cmd("p2")], false, at);
            let ra = a.wait_success();
            let rb = b.wait_success();
            assert_eq!((ra.len(), rb.len()), (1, 1), "{ra:?} {rb:?}");
            let (winner, token, loser_line) = match (grant_line(&ra[0]), grant_line(&rb[0])) {
                (Some((t, _)), None) => ("p1", t, &rb[0]),
                (None, Some((t, _))) => ("p2", t, &ra[0]),
                _ => panic!("round {round}: not exactly one winner: {ra:?} {rb:?}"),
            };
            assert_eq!(loser_line, "(nil)", "round {round}");
            let info = held(&s, &key);
            assert_eq!((info.owner_str().as_str(), info.token), (winner, token));
        }
        assert_eq!(lw_stat(&s, "acquires_granted"), 3);
        assert_eq!(lw_stat(&s, "acquires_contended"), 3);
    }

    /// (5) 32 clients, 100 acquire / critical section / release cycles each,
    /// the critical section a non-atomic GET / yield / SET of a counter. Half
    /// the clients block with WAIT, half poll with a short sleep. No
    /// deadlock, no lost update, and the tokens in order of acquisition
    /// strictly increase.
    fn contention_load_no_lost_update(flavor: Flavor) {
        const CLIENTS: usize = 32;
        const CYCLES: usize = 100;
        let s = Arc::new(Server::start(flavor));
        let deadline = Instant::now() + Duration::from_secs(240);
        let done = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let workers: Vec<_> = (0..CLIENTS)
            .map(|i| {
                let s = Arc::clone(&s);
                let done = Arc::clone(&done);
                std::thread::spawn(move || {
                    let mut c = s.client();
                    let owner = format!("worker-{i}");
                    let blocking = i % 2 == 0;
                    for cycle in 0..CYCLES {
                        let token = loop {
                            assert!(
                                Instant::now() < deadline,
                                "{owner}: no progress at cycle {cycle} ({} cycles done in total)",
                                done.load(Ordering::Relaxed)
                            );
                            let reply = if blocking {
                                req(&mut c, &["LOCK.ACQUIRE", "seed:cnt:lock", &owner, "30000", "WAIT", "10000"])
                            } else {
                                req(&mut c, &["LOCK.ACQUIRE", "seed:cnt:lock", &owner, "30000"])
                            };
                            match parse_grant(&reply) {
                                Some((t, _)) => break t,
                                None if blocking => {}
                                None => std::thread::sleep(Duration::from_micros(500 + 100 * (i as u64 % 10))),
                            }
                        };
                        // The non-atomic critical section.
                        let n: i64 = match req(&mut c, &["GET", "seed:counter"]) {
                            Value::Nil => 0,
                            Value::BulkString(b) => String::from_utf8(b).unwrap().parse().unwrap(),
                            other => panic!("GET: {}", render(&other)),
                        };
                        std::thread::yield_now();
                        if cycle % 10 == 0 {
                            std::thread::sleep(Duration::from_micros(200));
                        }
                        assert_eq!(req(&mut c, &["SET", "seed:counter", &(n + 1).to_string()]), Value::Okay);
                        req(&mut c, &["RPUSH", "seed:tokens", &token.to_string()]);
                        let released = req(&mut c, &["LOCK.RELEASE", "seed:cnt:lock", &owner, "FENCE", &token.to_string()]);
                        assert_eq!(released, Value::Int(1), "{owner}: release of token {token}: {}", render(&released));
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        let mut panics = Vec::new();
        for w in workers {
            if let Err(e) = w.join() {
                panics.push(
                    e.downcast_ref::<String>()
                        .cloned()
                        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default(),
                );
            }
        }
        assert!(panics.is_empty(), "workers failed: {panics:?}");
        let total = (CLIENTS * CYCLES) as i64;
        eprintln!("{flavor}: {total} lock cycles in {:?}", started.elapsed());

        assert_eq!(s.cmd_text(&["GET", "seed:counter"]), total.to_string(), "lost updates");
        let tokens: Vec<i64> = match s.cmd(&["LRANGE", "seed:tokens", "0", "-1"]) {
            Value::Array(items) => items
                .iter()
                .map(|v| render(v).parse().expect("token"))
                .collect(),
            other => panic!("LRANGE: {}", render(&other)),
        };
        assert_eq!(tokens.len() as i64, total);
        assert_strictly_increasing(&tokens, "tokens in order of acquisition");
        let st = lw_stats(&s);
        assert_eq!(st["releases"], total);
        assert_eq!(st["locks_held"], 0);
        assert_eq!(st["waiters"], 0);
        assert_eq!(st["token_high_water"], *tokens.last().unwrap());
        assert_eq!(lock_info(&s, "seed:cnt:lock"), None);
    }
}
