//! The lock core in a 3-primary Redis Cluster: commands route by their key
//! (the cluster client follows -MOVED), locks spread over the nodes, and a
//! migrated slot carries its locks with owner, token and lease, after which
//! tokens keep increasing. Every test runs on Redis and Valkey.

mod core_support;

use std::collections::HashSet;
use std::time::Instant;

use core_support::*;
use lockwarden_tests::redis::Value;
use lockwarden_tests::*;

for_each_flavor! {
    /// ACQUIRE / INFO / EXTEND / RELEASE through the cluster client on keys
    /// spread over every primary; a node that does not own a key answers
    /// MOVED and changes nothing.
    fn cluster_routes_lock_commands(flavor: Flavor) {
        let cluster = Cluster::start(flavor, 3, |b| b);
        let mut conn = cluster.cluster_client();
        let keys: Vec<String> = (0..24).map(|i| format!("{{t{i}}}:lock")).collect();
        let mut ports = HashSet::new();
        let mut tokens = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let owner = format!("owner-{i}");
            let (t, ttl) = parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", key, &owner, "30000"]))
                .unwrap_or_else(|| panic!("{key} contended"));
            assert_eq!(ttl, 30000);
            tokens.push(t);
            let node = cluster.node_for_key(key);
            ports.insert(node.port());
            let info = held(node, key);
            assert_eq!((info.owner_str(), info.token), (owner.clone(), t));
            for other in cluster.nodes().iter().filter(|n| n.port() != node.port()) {
                assert_err(&other.cmd(&["LOCK.ACQUIRE", key, "intruder", "1000"]), "MOVED", key);
                assert_err(&other.cmd(&["LOCK.INFO", key]), "MOVED", key);
            }
            assert_eq!(parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", key, "intruder", "1000"])), None);
            let info = parse_lock_info(&req(&mut conn, &["LOCK.INFO", key])).unwrap();
            assert_eq!(info.token, t);
        }
        assert_eq!(ports.len(), 3, "24 keys all on {ports:?}");
        let total: i64 = cluster.nodes().iter().map(dbsize).sum();
        assert_eq!(total, keys.len() as i64, "one key per lock, on its own node only");

        // Keys with the same hash tag live on the same node.
        let (a, b) = ("{user:7}:a", "{user:7}:b");
        parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", a, "o", "30000"])).unwrap();
        parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", b, "o", "30000"])).unwrap();
        assert_eq!(cluster.node_for_key(a).port(), cluster.node_for_key(b).port());

        for (i, key) in keys.iter().enumerate() {
            let owner = format!("owner-{i}");
            assert_eq!(req(&mut conn, &["LOCK.EXTEND", key, &owner, "20000"]), Value::Int(20000));
            let fence = tokens[i].to_string();
            assert_eq!(req(&mut conn, &["LOCK.RELEASE", key, &owner, "FENCE", &fence]), Value::Int(1));
            assert!(!exists(cluster.node_for_key(key), key));
        }
        for key in [a, b] {
            assert_eq!(req(&mut conn, &["LOCK.RELEASE", key, "o"]), Value::Int(1));
        }
        let total: i64 = cluster.nodes().iter().map(dbsize).sum();
        assert_eq!(total, 0);
    }

    /// Migrating the slot of a held lock: it arrives with the same owner,
    /// token, acquisition time, extensions and deadline (same digest, PTTL
    /// carried over); the holder extends and releases it on the new node,
    /// and the next tokens are larger.
    fn migrate_slot_keeps_lock(flavor: Flavor) {
        let cluster = Cluster::start(flavor, 3, |b| b);
        let mut conn = cluster.cluster_client();
        let key = "{mig}:lock";
        let other_key = "{mig}:other";
        let (t_other, _) = parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", other_key, "x", "30000"])).unwrap();
        assert_eq!(req(&mut conn, &["LOCK.RELEASE", other_key, "x"]), Value::Int(1));
        let (t, _) = parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", key, "alice", "30000"])).unwrap();
        assert!(t > t_other);
        assert_eq!(req(&mut conn, &["LOCK.EXTEND", key, "alice", "30000"]), Value::Int(30000));

        let slot = cluster.slot_for_key(key);
        let from = cluster.node_for_key(key);
        let to = cluster.other_primary(from);
        let before = held(from, key);
        assert_eq!(before.extensions, 1);
        let dig = digest(from, key);
        let p_before = pttl(from, key);
        let started = Instant::now();
        cluster.migrate_slot(slot, from, to);
        let elapsed = started.elapsed().as_millis() as i64;

        assert_eq!(cluster.node_for_key(key).port(), to.port());
        let after = held(to, key);
        assert_eq!(after.lease_fields(), before.lease_fields());
        assert_eq!(digest(to, key), dig, "the lease (deadline included) moved unchanged");
        assert_eq!(to.cmd_text(&["TYPE", key]), "lockwardn");
        let p_after = pttl(to, key);
        assert!(
            p_after <= p_before && p_after >= p_before - elapsed - 1000,
            "PTTL {p_before} before, {p_after} after a {elapsed} ms migration"
        );
        assert!((after.ttl - p_after).abs() <= 1000, "{after:?} vs PTTL {p_after}");
        assert_eq!(from.cmd(&["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()]), Value::Int(0));
        assert_err(&from.cmd(&["EXISTS", key]), "MOVED", "old node");
        assert_err(&from.cmd(&["LOCK.INFO", key]), "MOVED", "old node");
        assert!(lw_stat(to, "token_high_water") >= t, "the new node observed the migrated token");

        // Through the cluster client, which follows -MOVED.
        assert_eq!(parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", key, "bob", "30000"])), None);
        let fence = t.to_string();
        assert_eq!(req(&mut conn, &["LOCK.EXTEND", key, "alice", "30000", "FENCE", &fence]), Value::Int(30000));
        assert_eq!(held(to, key).extensions, 2);
        assert_eq!(req(&mut conn, &["LOCK.RELEASE", key, "alice", "FENCE", &fence]), Value::Int(1));
        assert!(!exists(to, key));

        let (t2, _) = parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", key, "bob", "30000"])).unwrap();
        assert!(t2 > t, "token {t2} after migration <= {t}");
        assert_eq!(held(to, key).token, t2);
        let (t3, _) = parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", other_key, "carol", "30000"])).unwrap();
        assert!(t3 > t2);
        assert_strictly_increasing(&[t_other, t, t2, t3], "tokens of the migrated slot");

        // And back: the lock returns to the first node intact.
        let before = held(to, key);
        cluster.migrate_slot(slot, to, from);
        assert_eq!(held(from, key).lease_fields(), before.lease_fields());
        assert_eq!(req(&mut conn, &["LOCK.RELEASE", key, "bob", "FENCE", &t2.to_string()]), Value::Int(1));
        let (t4, _) = parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", key, "dave", "30000"])).unwrap();
        assert!(t4 > t3);
    }

    /// A lock released before its slot moves leaves nothing to migrate, yet
    /// its next token on the new node is larger: the nodes share their
    /// token high-water mark over the cluster bus (here one far above every
    /// clock: a token from a node a day ahead, restored and released).
    fn released_lock_tokens_keep_increasing_across_a_migration(flavor: Flavor) {
        let cluster = Cluster::start(flavor, 3, |b| b);
        let key = "{gone}:lock";
        let from = cluster.node_for_key(key);
        let to = cluster.other_primary(from);
        let ahead = token_from_a_day_ahead();
        let payload = dump_with_token(flavor, key, ahead);
        let mut c = from.client();
        assert_eq!(req_bytes(&mut c, &[b"RESTORE", key.as_bytes(), b"60000", &payload]), Value::Okay);
        assert_eq!(from.cmd(&["LOCK.RELEASE", key, "alice", "FENCE", &ahead.to_string()]), Value::Int(1));
        for node in cluster.primaries() {
            node.wait_for(TIMEOUT, |n| lw_stat(n, "token_high_water") >= ahead as i64);
        }
        cluster.migrate_slot(cluster.slot_for_key(key), from, to);
        let mut conn = cluster.cluster_client();
        let (t, _) = parse_grant(&req(&mut conn, &["LOCK.ACQUIRE", key, "bob", "30000"])).unwrap();
        assert_eq!(held(to, key).token, t);
        assert!(t > ahead as i64, "token {t} on the new node <= {ahead}");
    }
}
