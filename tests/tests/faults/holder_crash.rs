//! Scenario 1: a lock holder crashes. The holder is a separate OS process
//! (two `lw-client`s: one on the lock server, one on the fenced store) that
//! acquires, writes to the store with its token, and is killed with SIGKILL
//! while it holds the lock.
//!
//! * A plain lease stays held until its deadline (another client is refused
//!   every time it asks before the deadline), then is free (the first client
//!   to ask after it gets it), counted in `expired_while_held`; the next
//!   holder's token is larger.
//! * A `SESSION` lease is released as soon as the server sees the connection
//!   close — well before its TTL — counted in `session_releases`, and handed
//!   to a queued waiter at once.
//!
//! The fenced store's log must be clean (no stale write accepted, no token
//! shared by two owners).

use crate::common_a::*;
use lockwarden_tests::*;
use std::time::{Duration, Instant};

/// Lease of the crashing holder in the plain run.
const LEASE_MS: u64 = 1000;
/// Lease of the crashing holder in the session run: the lock must be free
/// long before it ends.
const SESSION_LEASE_MS: u64 = 20_000;
/// How soon after the kill a session lock must be free (or handed over).
const SESSION_FREE_WITHIN: Duration = Duration::from_secs(2);

for_each_flavor! {
    /// kill -9 of a holder of a plain lease: held until the deadline, then
    /// free; the next token is larger.
    fn holder_crash_lease(flavor: Flavor) {
        let rounds = scaled(3, 12);
        scenario(
            "1a holder crash (lease)",
            flavor,
            &format!("kill -9 of the holder process while it holds a {LEASE_MS} ms lease, x{rounds}"),
            |out| lease_run(flavor, rounds, out),
        );
    }

    /// kill -9 of a holder of a SESSION lease: free (or handed to the waiter)
    /// at once, long before its TTL.
    fn holder_crash_session(flavor: Flavor) {
        let rounds = scaled(4, 16);
        scenario(
            "1b holder crash (SESSION)",
            flavor,
            &format!(
                "kill -9 of the holder process while it holds a SESSION lock ({SESSION_LEASE_MS} ms lease), x{rounds}, half with a WAIT waiter queued"
            ),
            |out| session_run(flavor, rounds, out),
        );
    }
}

fn lease_run(flavor: Flavor, rounds: usize, out: &mut Outcome) {
    let server = Server::start(flavor);
    let store = FencedStore::start(flavor, true);
    let key = "crash:lease";
    let mut last_token = 0;
    // The first holder: later ones are the client that got the lock when
    // the previous lease ran out.
    let mut holder = Holder::spawn(server.port(), store.port(), "holder-0");
    let (mut token, ttl) = holder
        .acquire(key, LEASE_MS, "")
        .expect("the lock is free at the start");
    out.operations += 1;
    assert_eq!(ttl, LEASE_MS);
    for round in 0..rounds {
        assert!(
            token > last_token,
            "round {round}: token {token} not above the previous holder's {last_token}"
        );
        last_token = token;
        // The next holder, a process of its own, will ask until it gets the
        // lock; it becomes the next round's crashing holder.
        let next_owner = format!("holder-{}", round + 1);
        let mut next = Holder::spawn(server.port(), store.port(), &next_owner);
        for _ in 0..3 {
            assert!(
                holder.write(&store, key, token),
                "round {round}: the holder's write with the current token {token} was rejected"
            );
            out.operations += 1;
        }
        let info = lock_info(&server, key).expect("held before the kill");
        assert_eq!(
            (info.owner_str().as_str(), info.token as u64),
            (holder.owner.as_str(), token)
        );
        assert_eq!(info.client_connected, 1, "{info:?}");
        let deadline = info.acquired_at + LEASE_MS as i64;
        let expired_before = lw_stat(&server, "expired_while_held");

        holder.kill();
        let killed_at = now_ms();

        // The lease outlives its holder: every acquire before the deadline is
        // refused; the first one after it succeeds.
        let mut refusals = 0;
        let granted = loop {
            let sent = now_ms();
            let reply = next.acquire(key, LEASE_MS, "");
            let received = now_ms();
            out.operations += 1;
            match reply {
                None => {
                    // Refused at some server time in [sent, received]: the
                    // lease was live then, so sent <= deadline.
                    assert!(
                        sent <= deadline,
                        "round {round}: the crashed holder's lock is still held {} ms after its deadline",
                        sent - deadline
                    );
                    refusals += 1;
                    sleep_ms(20);
                }
                Some(g) => {
                    // Granted at a server time in [sent, received], after
                    // the deadline.
                    assert!(
                        received > deadline,
                        "round {round}: the lock was free {} ms before the crashed holder's deadline",
                        deadline - received + 1
                    );
                    break g;
                }
            }
        };
        assert!(
            refusals > 0,
            "round {round}: no acquire was refused between the kill ({} ms before the deadline) and the deadline",
            deadline - killed_at
        );
        assert_eq!(
            lw_stat(&server, "expired_while_held") - expired_before,
            1,
            "round {round}: the crashed holder's lease must count as expired while held"
        );
        token = granted.0;
        assert!(
            token > last_token,
            "round {round}: the next holder's token {token} is not above the crashed holder's {last_token}"
        );
        holder = next;
    }
    // The last holder finishes normally.
    assert!(holder.write(&store, key, token));
    assert_eq!(
        holder
            .lock
            .exec(&format!("LOCK.RELEASE {key} {}", holder.owner)),
        "1"
    );
    out.operations += 2;
    let v = store.verdict(key);
    out.anomalies_fenced = v.anomalies();
    assert!(v.clean(), "oracle: {v}");
    assert_eq!(v.rejected, 0, "no holder wrote with a stale token: {v}");
}

fn session_run(flavor: Flavor, rounds: usize, out: &mut Outcome) {
    let server = Server::start(flavor);
    let store = FencedStore::start(flavor, true);
    let key = "crash:session";
    let mut store_conn = store.client();
    let mut last_token = 0;
    let mut free_times = Vec::new();
    for round in 0..rounds {
        let owner = format!("session-{round}");
        let mut holder = Holder::spawn(server.port(), store.port(), &owner);
        let (token, _) = holder
            .acquire(key, SESSION_LEASE_MS, "SESSION")
            .unwrap_or_else(|| panic!("round {round}: the lock is not free"));
        out.operations += 1;
        assert!(token > last_token, "round {round}: {token} <= {last_token}");
        last_token = token;
        for _ in 0..3 {
            assert!(holder.write(&store, key, token));
            out.operations += 1;
        }
        let info = lock_info(&server, key).expect("held");
        assert_eq!((info.session, info.client_connected), (1, 1), "{info:?}");
        let session_before = lw_stat(&server, "session_releases");
        let expired_before = lw_stat(&server, "expired_while_held");
        let handoffs_before = lw_stat(&server, "handoffs");

        // Every other round a waiter is queued and must get the lock on the
        // kill, not at the end of the 20 s lease.
        let waiter_owner = format!("waiter-{round}");
        let mut waiter = (round % 2 == 1).then(|| {
            let w = LwClient::new(server.port())
                .cmd(&format!(
                    "LOCK.ACQUIRE {key} {waiter_owner} 5000 WAIT {}",
                    SESSION_LEASE_MS
                ))
                .interactive()
                .spawn();
            server.wait_for(FAULT_TIMEOUT, |s| {
                lock_info(s, key).is_some_and(|i| i.waiters == 1)
            });
            out.operations += 1;
            w
        });

        let killed = Instant::now();
        holder.kill();

        match waiter.as_mut() {
            Some(w) => {
                let line = w
                    .next_line(SESSION_FREE_WITHIN)
                    .unwrap_or_else(|| {
                        panic!(
                            "round {round}: the waiter did not get the lock within {SESSION_FREE_WITHIN:?} of the session holder's kill"
                        )
                    });
                free_times.push(killed.elapsed());
                let (next, _) = grant_of_line(&line)
                    .unwrap_or_else(|| panic!("round {round}: the waiter got nil"));
                assert!(
                    next > token,
                    "round {round}: handed-over token {next} <= {token}"
                );
                last_token = next;
                assert!(store.write(&mut store_conn, key, next, &waiter_owner));
                out.operations += 1;
                assert_eq!(w.exec(&format!("LOCK.RELEASE {key} {waiter_owner}")), "1");
                out.operations += 1;
            }
            None => {
                let free = poll(SESSION_FREE_WITHIN, || {
                    out.operations += 1;
                    lock_info(&server, key).is_none().then(Instant::now)
                });
                let at = free.unwrap_or_else(|| {
                    panic!(
                        "round {round}: the SESSION lock is still held {SESSION_FREE_WITHIN:?} after its holder was killed (lease {SESSION_LEASE_MS} ms)"
                    )
                });
                free_times.push(at - killed);
            }
        }
        assert_eq!(
            lw_stat(&server, "session_releases") - session_before,
            1,
            "round {round}: a session release"
        );
        assert_eq!(
            lw_stat(&server, "expired_while_held") - expired_before,
            0,
            "round {round}: nothing expired"
        );
        assert_eq!(
            lw_stat(&server, "handoffs") - handoffs_before,
            i64::from(waiter.is_some()),
            "round {round}: a handoff to the waiter, if one was queued"
        );
    }
    eprintln!("session locks free after the kill in {free_times:?}");
    let v = store.verdict(key);
    out.anomalies_fenced = v.anomalies();
    assert!(v.clean(), "oracle: {v}");
    assert_eq!(v.rejected, 0, "{v}");
}
