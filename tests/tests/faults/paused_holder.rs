//! Scenario 2: a holder stalls past its lease (SIGSTOP, like a long GC pause
//! or a frozen VM), another client gets the lock and writes, then the stalled
//! holder wakes up (SIGCONT) and writes with its old token — the write it
//! had already issued when it froze. The stale write is performed by the
//! paused process itself: the command line is queued on its stdin while it
//! is stopped and runs the moment it resumes.
//!
//! With fencing the store rejects the stale write (the oracle's log stays
//! clean); in the control run, against a store that does not check tokens,
//! the same schedule lands the stale write after the newer one — the anomaly
//! fencing exists for. The stalled holder's queued `LOCK.RELEASE` also runs on
//! resume and must fail with `NOTOWNER` instead of releasing the new holder's
//! lock.

use crate::common_a::*;
use lockwarden_tests::*;

/// The stalled holder's lease.
const LEASE_MS: u64 = 500;
/// The next holder's lease: it holds the lock while the stale write lands.
const NEXT_LEASE_MS: u64 = 10_000;

for_each_flavor! {
    /// SIGSTOP past the lease, newer holder writes, SIGCONT, stale write:
    /// rejected with fencing, accepted (the anomaly) without.
    fn paused_holder(flavor: Flavor) {
        let rounds = scaled(2, 10);
        scenario(
            "2 paused holder",
            flavor,
            &format!(
                "SIGSTOP of the holder process past its {LEASE_MS} ms lease, newer holder writes, SIGCONT, stale write with the old token; x{rounds} fenced + x{rounds} control"
            ),
            |out| {
                let server = Server::start(flavor);
                let fenced = run(flavor, &server, true, rounds, out);
                out.anomalies_fenced = fenced.anomalies();
                let control = run(flavor, &server, false, rounds, out);
                out.anomalies_unfenced = Some(control.anomalies());
                eprintln!("paused holder [{flavor}]: fenced: {fenced}; control: {control}");
                assert!(fenced.clean(), "with fencing: {fenced}");
                assert_eq!(
                    fenced.rejected, rounds,
                    "every stale write is rejected by the fenced store: {fenced}"
                );
                assert_eq!(
                    control.stale_accepted, rounds,
                    "without fencing every stale write lands after the newer one: {control}"
                );
            },
        );
    }
}

/// `rounds` stall-and-resume rounds against a store with `fencing` on or off;
/// returns the oracle's verdict.
fn run(
    flavor: Flavor,
    server: &Server,
    fencing: bool,
    rounds: usize,
    out: &mut Outcome,
) -> Verdict {
    let store = FencedStore::start(flavor, fencing);
    let key = if fencing {
        "paused:fenced"
    } else {
        "paused:control"
    };
    for round in 0..rounds {
        let expired_before = lw_stat(server, "expired_while_held");
        let mut stalled = Holder::spawn(server.port(), store.port(), &format!("stalled-{round}"));
        let (old, _) = stalled
            .acquire(key, LEASE_MS, "")
            .unwrap_or_else(|| panic!("round {round}: the lock is not free"));
        assert!(
            stalled.write(&store, key, old),
            "round {round}: first write"
        );
        out.operations += 2;

        stalled.pause();
        // Queued while frozen: both run the moment the process resumes.
        let stale_write = store.write_command(key, old, &stalled.owner);
        stalled.store.send(&stale_write);
        stalled
            .lock
            .send(&format!("LOCK.RELEASE {key} {}", stalled.owner));

        // The lease runs out while the holder is frozen.
        let mut fresh = Holder::spawn(server.port(), store.port(), &format!("fresh-{round}"));
        let new = loop {
            out.operations += 1;
            if let Some((token, _)) = fresh.acquire(key, NEXT_LEASE_MS, "") {
                break token;
            }
            sleep_ms(20);
        };
        assert!(
            new > old,
            "round {round}: the new holder's token {new} is not above the stalled one's {old}"
        );
        assert!(
            fresh.write(&store, key, new),
            "round {round}: the new holder's write"
        );
        out.operations += 1;
        assert_eq!(
            lw_stat(server, "expired_while_held") - expired_before,
            1,
            "round {round}: the stalled holder's lease counts as expired while held"
        );

        stalled.resume();
        let accepted = write_accepted(&stalled.store.expect_line());
        let release = stalled.lock.expect_line();
        out.operations += 2;
        assert_eq!(
            accepted,
            !fencing,
            "round {round}: the stale write (token {old} after {new}) was {} by a store with fencing {}",
            if accepted { "accepted" } else { "rejected" },
            if fencing { "on" } else { "off" }
        );
        assert!(
            release.starts_with("(error) NOTOWNER"),
            "round {round}: the stalled holder's release of a lock now held by another: {release}"
        );
        let info = lock_info(server, key).expect("still held by the new holder");
        assert_eq!(
            (info.owner_str().as_str(), info.token as u64),
            (fresh.owner.as_str(), new)
        );
        assert_eq!(
            fresh
                .lock
                .exec(&format!("LOCK.RELEASE {key} {}", fresh.owner)),
            "1"
        );
        out.operations += 1;
    }
    store.verdict(key)
}
