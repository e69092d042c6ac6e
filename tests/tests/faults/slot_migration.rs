//! Scenario 6: slot migration under load, in a 3-primary cluster.
//!
//! Churning clients take and release locks through the cluster client on
//! several `{tag}` keys (two of them in the migrating slot), each holder
//! writing to the fenced store with its token. A lock on `K` is held, and
//! two clients are blocked in `LOCK.ACQUIRE K ... WAIT` on K's node: one on
//! a plain connection to that node, one through a cluster client. K's slot
//! is migrated to another primary meanwhile. Checks:
//!
//! * the held lock arrives intact (owner, token, acquisition time,
//!   extensions, digest; PTTL carried over) and its holder extends and
//!   releases it on the new node;
//! * the old node grants nothing to its waiters: the plain waiter gets
//!   `TRYAGAIN` (or times out); the cluster client retries, is routed to the
//!   new node and is granted there, after the release, with a larger token;
//! * tokens of K keep increasing; the oracle sees every holder's writes in
//!   token order (no rejection, no anomaly): never two holders at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lockwarden_tests::*;

use super::common_b::*;

/// The migrated lock.
const K: &str = "{mig}:K";
/// Churned keys: two in K's slot (they migrate too), four elsewhere.
const CHURN_KEYS: [&str; 6] = ["{mig}:a", "{mig}:b", "{c1}:x", "{c2}:x", "{c3}:x", "{c4}:x"];
const CHURNERS: usize = 4;

/// One churning client: acquire, write, maybe extend and write again,
/// release, until `stop`. Returns its operation count, or the first
/// unexpected reply.
fn churn(
    cluster: &Cluster,
    store: &FencedStore,
    id: usize,
    mut rng: Rng,
    stop: &AtomicBool,
    ops: &AtomicU64,
) -> Result<(), String> {
    let mut conn = cluster.cluster_client();
    let mut sc = store.client();
    let owner = format!("churn-{id}");
    while !stop.load(Ordering::Relaxed) {
        let key = *rng.pick(&CHURN_KEYS);
        let reply = call(&mut conn, &["LOCK.ACQUIRE", key, &owner, "10000"]);
        ops.fetch_add(1, Ordering::Relaxed);
        match reply.grant() {
            Ok(Some((token, _))) => {
                store.write(&mut sc, key, token, &owner);
                ops.fetch_add(1, Ordering::Relaxed);
                let fence = token.to_string();
                if rng.chance(40) {
                    sleep_ms(rng.below(5));
                    let ext = call(
                        &mut conn,
                        &["LOCK.EXTEND", key, &owner, "10000", "FENCE", &fence],
                    );
                    if ext.int() != Some(10000) {
                        return Err(format!("LOCK.EXTEND {key} {owner}: {}", ext.text()));
                    }
                    store.write(&mut sc, key, token, &owner);
                    ops.fetch_add(2, Ordering::Relaxed);
                }
                let rel = call(&mut conn, &["LOCK.RELEASE", key, &owner, "FENCE", &fence]);
                ops.fetch_add(1, Ordering::Relaxed);
                if rel.int() != Some(1) {
                    return Err(format!("LOCK.RELEASE {key} {owner}: {}", rel.text()));
                }
            }
            Ok(None) => sleep_ms(1),
            Err(e) => return Err(format!("LOCK.ACQUIRE {key} {owner}: {e}")),
        }
    }
    Ok(())
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

for_each_flavor! {
    fn held_lock_and_waiters_move(flavor: Flavor) {
        scenario(
            "6 slot migration",
            flavor,
            "MIGRATE of a held lock's slot with 2 blocked waiters and 4 churning clients",
            |tally| {
                let cluster = Cluster::start(flavor, 3, |b| b);
                let store = FencedStore::start(flavor, true);
                let mut sc = store.client();
                let slot = cluster.slot_for_key(K);
                assert_eq!(cluster.slot_for_key(CHURN_KEYS[0]), slot);
                let from = cluster.node_for_key(K);
                let to = cluster.other_primary(from);
                let mut rng = Rng::new(seed("6 slot migration", 0x5107_0006));

                // The holder of K.
                let mut hc = cluster.cluster_client();
                let (t0, _) = call(&mut hc, &["LOCK.ACQUIRE", K, "holder", "30000"])
                    .grant()
                    .unwrap_or_else(|e| panic!("acquire {K}: {e}"))
                    .unwrap_or_else(|| panic!("{K} is free"));
                assert_eq!(call(&mut hc, &["LOCK.EXTEND", K, "holder", "30000"]).int(), Some(30000));
                assert!(store.write(&mut sc, K, t0, "holder"));
                tally.operations += 3;

                let stop = AtomicBool::new(false);
                let ops = AtomicU64::new(0);
                std::thread::scope(|s| {
                    // Stops the churners however this closure ends (the scope
                    // joins them before it returns or re-raises a panic).
                    let _stop_on_exit = StopOnDrop(&stop);
                    let churners: Vec<_> = (0..CHURNERS)
                        .map(|i| {
                            let (cluster, store, stop, ops) = (&cluster, &store, &stop, &ops);
                            let r = rng.fork(i as u64);
                            s.spawn(move || churn(cluster, store, i, r, stop, ops))
                        })
                        .collect();

                    // Two waiters queue on K's node.
                    let mut plain = from.client();
                    plain.set_read_timeout(Some(Duration::from_secs(40))).expect("read timeout");
                    let w1 = s.spawn(move || {
                        let started = Instant::now();
                        let r = call(&mut plain, &["LOCK.ACQUIRE", K, "waiter-plain", "10000", "WAIT", "20000"]);
                        (r, started.elapsed())
                    });
                    wait_until("the plain waiter is queued", FAULT_TIMEOUT, || {
                        held(from, K).get("waiters") == 1
                    });
                    let cluster_ref = &cluster;
                    let w2 = s.spawn(move || {
                        let mut c = cluster_ref.cluster_client();
                        call(&mut c, &["LOCK.ACQUIRE", K, "waiter-cluster", "10000", "WAIT", "20000"])
                    });
                    wait_until("both waiters are queued", FAULT_TIMEOUT, || {
                        held(from, K).get("waiters") == 2
                    });
                    assert_eq!(lw_stat(from, "waiters"), 2);
                    tally.operations += 2;
                    sleep_ms(scaled(300, 5000)); // churn on, before the migration

                    let before = held(from, K);
                    let digest_before = digest(from, K);
                    let p_before = pttl(from, K);
                    let started = Instant::now();
                    cluster.migrate_slot(slot, from, to);
                    let elapsed = started.elapsed().as_millis() as i64;

                    // The plain waiter is sent away by the old node: TRYAGAIN
                    // (or, at worst, its timeout), never a grant there.
                    let (r1, waited) = w1.join().expect("plain waiter thread");
                    eprintln!("plain waiter on the old node: {} after {waited:?}", r1.text());
                    match &r1 {
                        Reply::Error { code, .. } if code == "TRYAGAIN" => {}
                        Reply::Value(redis::Value::Nil) => {}
                        other => panic!("the plain waiter on the old node got {} after {waited:?}", other.text()),
                    }

                    // The lock arrived intact.
                    assert_eq!(cluster.node_for_key(K).port(), to.port());
                    let after = held(to, K);
                    assert_eq!(after.lease(), before.lease(), "the migrated lease");
                    assert_eq!((after.owner_str(), after.token()), ("holder".to_string(), t0));
                    assert_eq!(digest(to, K), digest_before, "DEBUG DIGEST-VALUE after the migration");
                    let p_after = pttl(to, K);
                    assert!(
                        p_after <= p_before && p_after >= p_before - elapsed - 1000,
                        "PTTL {p_before} before, {p_after} after a {elapsed} ms migration"
                    );
                    assert!(lw_stat(to, "token_high_water") as u64 >= t0);
                    let moved = from.cmd_text(&["LOCK.INFO", K]);
                    assert!(moved.starts_with("(error) MOVED"), "LOCK.INFO on the old node: {moved}");
                    assert_eq!(lw_stat(from, "waiters"), 0, "no waiter is left on the old node");
                    assert_eq!(lw_stat(from, "handoffs"), 0, "the old node granted K to a waiter");

                    // The cluster waiter is routed to the new node and queues
                    // there (or has given up; then it replied nil).
                    let queued = poll(Duration::from_secs(20), || {
                        (w2.is_finished() || lock_info(to, K).is_some_and(|i| i.get("waiters") == 1)).then_some(())
                    });
                    assert!(queued.is_some(), "the cluster waiter neither queued on the new node nor returned");

                    // The holder extends and releases on the new node.
                    let fence = t0.to_string();
                    let ext = call(&mut hc, &["LOCK.EXTEND", K, "holder", "30000", "FENCE", &fence]);
                    assert_eq!(ext.int(), Some(30000), "extend on the new node: {}", ext.text());
                    assert_eq!(held(to, K).get("extensions"), 2);
                    assert!(store.write(&mut sc, K, t0, "holder"), "the holder's write after the migration");
                    let rel = call(&mut hc, &["LOCK.RELEASE", K, "holder", "FENCE", &fence]);
                    assert_eq!(rel.int(), Some(1), "release on the new node: {}", rel.text());
                    tally.operations += 3;

                    let r2 = w2.join().expect("cluster waiter thread");
                    eprintln!("cluster waiter: {}", r2.text());
                    let mut tokens = vec![t0];
                    match r2.grant() {
                        Ok(Some((t2, _))) => {
                            let info = held(to, K);
                            assert_eq!((info.owner_str(), info.token()), ("waiter-cluster".to_string(), t2));
                            assert!(lw_stat(to, "handoffs") >= 1, "granted by the new node's handoff");
                            assert!(store.write(&mut sc, K, t2, "waiter-cluster"));
                            let rel = call(&mut hc, &["LOCK.RELEASE", K, "waiter-cluster", "FENCE", &t2.to_string()]);
                            assert_eq!(rel.int(), Some(1), "{}", rel.text());
                            tokens.push(t2);
                            tally.operations += 2;
                        }
                        Ok(None) => eprintln!("the cluster waiter timed out"),
                        Err(e) if e.contains("TRYAGAIN") => eprintln!("the cluster waiter gave up: {e}"),
                        Err(e) => panic!("the cluster waiter got {e}"),
                    }
                    assert_eq!(lw_stat(from, "handoffs"), 0, "the old node granted K to a waiter");

                    let (t3, _) = call(&mut hc, &["LOCK.ACQUIRE", K, "after", "5000"])
                        .grant()
                        .unwrap_or_else(|e| panic!("acquire {K} after the migration: {e}"))
                        .expect("K is free");
                    assert!(store.write(&mut sc, K, t3, "after"));
                    tokens.push(t3);
                    tally.operations += 2;
                    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "tokens of {K}: {tokens:?}");

                    sleep_ms(scaled(300, 5000)); // churn on, after the migration
                    stop.store(true, Ordering::Relaxed);
                    for (i, c) in churners.into_iter().enumerate() {
                        let r = c.join().expect("churn thread");
                        if let Err(e) = r {
                            panic!("churner {i}: {e}");
                        }
                    }
                });
                tally.operations += ops.load(Ordering::Relaxed);

                let mut anomalies = 0;
                for key in CHURN_KEYS.iter().chain([&K]) {
                    let v = store.verdict(key);
                    anomalies += v.anomalies();
                    tally.anomalies_fenced = anomalies;
                    assert!(v.clean(), "{key}: {v}");
                    assert_eq!(v.rejected, 0, "{key}: a write came after a newer holder's: {v}");
                }
                assert!(store.verdict(CHURN_KEYS[0]).writes > 0, "churn in the migrated slot");
                for node in cluster.nodes() {
                    assert_eq!(lw_stat(node, "waiters"), 0, "port {}", node.port());
                    assert_healthy(node, "after the migration");
                }
            },
        );
    }
}
