//! Scenario 5: Sentinel failover (1 primary, 2 replicas, 3 sentinels).
//!
//! * (a) A grant confirmed with `WAIT 1` survives a promotion: same owner
//!   and token on the new primary, where the holder extends and releases
//!   it; later grants get larger tokens.
//! * (b) Tail loss: both replicas are frozen and cut off, the primary grants
//!   a lock (which no replica ever sees) and is killed; the sentinels
//!   promote a replica. Its next grant carries a larger token (the
//!   wall-clock term), so the fenced store rejects the lost holder's late
//!   write; without fencing (control) that write lands after the new
//!   holder's.
//! * (c) Policies loaded on the old primary are enforced by the new one.

use std::time::Instant;

use lockwarden_tests::locks::specs;
use lockwarden_tests::*;

use super::common_b::*;

/// Acquires `key` on `conn`; panics unless granted.
#[track_caller]
fn acquire_on(conn: &mut redis::Connection, key: &str, owner: &str, ttl: u64) -> (u64, u64) {
    let reply = call(conn, &["LOCK.ACQUIRE", key, owner, &ttl.to_string()]);
    match reply.grant() {
        Ok(Some(g)) => g,
        other => panic!("LOCK.ACQUIRE {key} {owner} {ttl}: {other:?}"),
    }
}

for_each_flavor! {
    /// (a) A grant acknowledged by a replica (`WAIT 1`) survives a
    /// sentinel failover with its owner, token, acquisition time and
    /// extensions; the old holder extends and releases it on the new
    /// primary, a contender is refused meanwhile, and new grants get larger
    /// tokens. The holder's fenced writes before and after the failover and
    /// the next holder's are all accepted, in token order.
    fn acked_grant_survives(flavor: Flavor) {
        scenario("5a sentinel failover: WAIT-acked grant", flavor, "SENTINEL FAILOVER of the primary", |tally| {
            let set = SentinelSet::start(flavor, |b| b);
            let store = FencedStore::start(flavor, true);
            let mut sc = store.client();
            let old = set.current_primary();
            assert_eq!(old.port(), set.servers()[0].port());
            let key = "fo:acked";

            let mut holder = old.client();
            // The grant, confirmed by a replica (WAIT right after it, on the
            // same connection); then an extension, confirmed too.
            let (t, ttl) = acquire_on(&mut holder, key, "holder-1", 60000);
            assert_eq!(ttl, 60000);
            let acked = call(&mut holder, &["WAIT", "1", "5000"]);
            assert!(acked.int().is_some_and(|n| n >= 1), "WAIT 1 5000 replied {}", acked.text());
            assert_eq!(call(&mut holder, &["LOCK.EXTEND", key, "holder-1", "60000"]).int(), Some(60000));
            let acked = call(&mut holder, &["WAIT", "1", "5000"]);
            assert!(acked.int().is_some_and(|n| n >= 1), "WAIT 1 5000 replied {}", acked.text());
            tally.operations += 4;
            assert!(store.write(&mut sc, key, t, "holder-1"), "first write");
            tally.operations += 1;
            let before = held(old, key);
            let digest_before = digest(old, key);
            let hw = lw_stat(old, "token_high_water") as u64;

            let new = set.failover();
            assert_ne!(new.port(), old.port(), "the sentinels promoted a replica");
            wait_until("the old primary is a replica", FAULT_TIMEOUT, || {
                old.is_running() && old.role() == "slave"
            });

            let after = held(new, key);
            assert_eq!(after.lease(), before.lease(), "the acknowledged lease moved unchanged");
            assert_eq!(after.token(), t);
            assert_eq!(after.owner_str(), "holder-1");
            assert_eq!(digest(new, key), digest_before, "DEBUG DIGEST-VALUE of {key}");
            assert!(after.get("ttl") > 0 && after.get("ttl") <= 60000, "{after:?}");
            assert!(lw_stat(new, "token_high_water") as u64 >= t, "the new primary knows token {t}");

            // The old holder, on a fresh connection to the new primary.
            let mut h2 = new.client();
            let fence = t.to_string();
            let mut other = new.client();
            assert_eq!(call(&mut other, &["LOCK.ACQUIRE", key, "contender", "1000"]).grant(), Ok(None));
            let ext = call(&mut h2, &["LOCK.EXTEND", key, "holder-1", "30000", "FENCE", &fence]);
            assert_eq!(ext.int(), Some(30000), "LOCK.EXTEND on the new primary: {}", ext.text());
            assert_eq!(held(new, key).get("extensions"), 2);
            assert!(store.write(&mut sc, key, t, "holder-1"), "write after the failover");
            let (t_other, _) = acquire_on(&mut other, "fo:other", "someone", 10000);
            assert!(t_other > t && t_other > hw, "token {t_other} after the failover, {t} before (high water {hw})");
            let rel = call(&mut h2, &["LOCK.RELEASE", key, "holder-1", "FENCE", &fence]);
            assert_eq!(rel.int(), Some(1), "LOCK.RELEASE on the new primary: {}", rel.text());
            assert_eq!(lock_info(new, key), None);
            let (t_next, _) = acquire_on(&mut other, key, "holder-2", 10000);
            assert!(t_next > t_other, "token {t_next} after {t_other}");
            assert!(store.write(&mut sc, key, t_next, "holder-2"), "next holder's write");
            // The demoted primary follows: the release and the new grant
            // reach it.
            wait_for_offset(new, old);
            assert_eq!(held(old, key).token(), t_next);
            tally.operations += 8;

            let v = store.verdict(key);
            tally.anomalies_fenced = v.anomalies();
            assert!(v.clean() && v.rejected == 0, "{v}");
            for s in set.servers() {
                assert_healthy(s, "after the failover");
            }
        });
    }

    /// (b) Tail loss: a grant made while both replicas are frozen and cut
    /// off from the primary is lost when the primary is killed. The promoted
    /// replica never heard of it, yet its next grant has a larger token (the
    /// wall-clock term of the token). With fencing the lost holder's late
    /// write is rejected; in the control store (no fencing) it is accepted
    /// after the new holder's, the anomaly fencing prevents.
    fn tail_loss(flavor: Flavor) {
        scenario(
            "5b sentinel failover: tail loss",
            flavor,
            "SIGSTOP both replicas + replication link cut, grant on the primary, kill -9 primary, SIGCONT, automatic failover",
            |tally| {
                let set = SentinelSet::start(flavor, |b| b);
                let fenced = FencedStore::start(flavor, true);
                let control = FencedStore::start(flavor, false);
                let (mut fc, mut cc) = (fenced.client(), control.client());
                let key = "fo:tail";
                let old = set.current_primary();
                let replicas: Vec<&Server> = set.servers().iter().filter(|s| s.port() != old.port()).collect();

                // Replicated history before the fault: an acknowledged grant
                // and release.
                let mut c = old.client();
                let (t_early, _) = acquire_on(&mut c, key, "early", 60000);
                assert_eq!(call(&mut c, &["LOCK.RELEASE", key, "early"]).int(), Some(1));
                assert!(call(&mut c, &["WAIT", "2", "5000"]).int() == Some(2), "both replicas acknowledged");
                assert!(fenced.write(&mut fc, key, t_early, "early"));
                assert!(control.write(&mut cc, key, t_early, "early"));
                tally.operations += 4;

                // The fault. Freezing the replicas alone does not lose the
                // grant: the primary still writes it to their sockets, the
                // kernel queues it, and a replica reads it when it resumes
                // (observed: the "lost" lock was then on the new primary).
                // So the primary also drops its replica links, as a network
                // partition would: the grant reaches no replica.
                for r in &replicas {
                    r.pause();
                }
                let cut = old.cmd_text(&["CLIENT", "KILL", "TYPE", "replica"]);
                assert_eq!(cut, "2", "CLIENT KILL TYPE replica");
                let granted_at = now_ms();
                let (lost, _) = acquire_on(&mut c, key, "lost-holder", 60000);
                let acked = call(&mut c, &["WAIT", "1", "200"]);
                assert_eq!(acked.int(), Some(0), "no replica may have the lost grant: {}", acked.text());
                assert!(fenced.write(&mut fc, key, lost, "lost-holder"), "the lost holder writes while it holds");
                assert!(control.write(&mut cc, key, lost, "lost-holder"));
                tally.operations += 4;
                old.kill9();
                for r in &replicas {
                    r.resume();
                }
                let started = Instant::now();
                let new = set.wait_for_failover(old.port());
                let failover_ms = started.elapsed().as_millis();
                assert!(replicas.iter().any(|r| r.port() == new.port()));

                // The grant is gone: the new primary never saw it.
                assert_eq!(lock_info(new, key), None, "the lost grant must not be on the new primary");
                let hw = lw_stat(new, "token_high_water") as u64;
                assert!(hw < lost, "the new primary's high water {hw} is below the lost token {lost}");
                let mut nc = new.client();
                let (t_new, _) = acquire_on(&mut nc, key, "new-holder", 60000);
                tally.operations += 1;
                assert!(
                    t_new > lost,
                    "token {t_new} on the new primary (high water {hw}) is not above the lost token {lost} \
                     (granted at {granted_at} ms, failover took {failover_ms} ms)"
                );
                // t_new = max(high_water + 1, wall-clock term) and
                // high_water < lost < t_new: the wall-clock term made it.
                assert!(t_new > hw + 1, "token {t_new}, high water {hw}");
                assert!(fenced.write(&mut fc, key, t_new, "new-holder"));
                assert!(control.write(&mut cc, key, t_new, "new-holder"));
                // The lost holder wakes up, still believing it holds the
                // lock (its 60 s lease has not run out), and writes again.
                let late_fenced = fenced.write(&mut fc, key, lost, "lost-holder");
                let late_control = control.write(&mut cc, key, lost, "lost-holder");
                tally.operations += 4;
                assert!(!late_fenced, "the fenced store must reject the lost holder's late write");
                assert!(late_control, "the control store accepts it");

                let vf = fenced.verdict(key);
                let vc = control.verdict(key);
                tally.anomalies_fenced = vf.anomalies();
                tally.anomalies_unfenced = Some(vc.anomalies());
                assert!(vf.clean(), "fenced: {vf}");
                assert_eq!(vf.rejected, 1, "fenced: {vf}");
                assert!(vc.anomalies() >= 1, "control without fencing must show the anomaly: {vc}");

                // The new primary keeps working and its replica follows.
                let rel = call(&mut nc, &["LOCK.RELEASE", key, "new-holder", "FENCE", &t_new.to_string()]);
                assert_eq!(rel.int(), Some(1), "{}", rel.text());
                tally.operations += 1;
                for r in &replicas {
                    assert_healthy(r, "after the failover");
                }
            },
        );
    }

    /// (c) A policy loaded on the primary (key-pattern, allow `orders:*`)
    /// is on the new primary after a failover: listed with the same hash,
    /// and enforced (an acquire of a non-matching key is DENIED, a matching
    /// one granted).
    fn policies_survive(flavor: Flavor) {
        scenario("5c sentinel failover: policies", flavor, "SENTINEL FAILOVER with a policy loaded", |tally| {
            let wasm = std::fs::read(policy_path("key-pattern")).unwrap_or_else(|e| {
                panic!("{}: {e} (build the policies with `make policies`)", policy_path("key-pattern").display())
            });
            let set = SentinelSet::start(flavor, |b| b);
            let old = set.current_primary();
            let mut c = old.client();
            let load = call_bytes(
                &mut c,
                &[b"LOCK.POLICY", b"LOAD", b"kp", b"CONFIG", br#"{"allow":["orders:*"]}"#, b"WASM", &wasm],
            );
            assert_eq!(load.text(), "OK", "LOCK.POLICY LOAD");
            assert_eq!(call(&mut c, &["LOCK.ACQUIRE", "users:1", "u", "1000"]).code(), Some("DENIED"));
            let (t, _) = acquire_on(&mut c, "orders:1", "o", 60000);
            assert_eq!(call(&mut c, &["WAIT", "2", "5000"]).int(), Some(2), "both replicas acknowledged");
            tally.operations += 4;
            let listed_before = specs(old);
            assert_eq!(listed_before.len(), 1, "{listed_before:?}");

            let new = set.failover();
            assert_ne!(new.port(), old.port());
            let listed = specs(new);
            assert_eq!(listed, listed_before, "LOCK.POLICY LIST on the new primary");
            let mut nc = new.client();
            let denied = call(&mut nc, &["LOCK.ACQUIRE", "users:2", "u", "1000"]);
            assert_eq!(denied.code(), Some("DENIED"), "{}", denied.text());
            assert!(denied.text().contains("kp"), "{}", denied.text());
            assert_eq!(lock_info(new, "users:2"), None);
            let (t2, _) = acquire_on(&mut nc, "orders:2", "o", 1000);
            assert!(t2 > t);
            assert_eq!(held(new, "orders:1").token(), t, "the lock from before the failover");
            let eval = call(&mut nc, &["LOCK.POLICY", "EVAL", "kp", "ACQUIRE", "users:3", "u", "1000"]);
            assert!(eval.text().starts_with("deny"), "LOCK.POLICY EVAL: {}", eval.text());
            tally.operations += 4;
            // Replicas of the new primary have it too.
            for s in set.servers().iter().filter(|s| s.port() != new.port()) {
                wait_until("the replica has the policy", FAULT_TIMEOUT, || specs(s) == listed);
                assert_healthy(s, "after the failover");
            }
            assert_healthy(new, "after the failover");
        });
    }
}
