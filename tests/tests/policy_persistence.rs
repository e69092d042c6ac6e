//! Policies across DEBUG RELOAD, RDB and AOF restarts (with and without an
//! RDB preamble, across BGREWRITEAOF and kill -9), replication (full sync,
//! live loads and unloads, promotion) and in a cluster (per node).

mod policy_support;

use std::process::{Command, Stdio};

use lockwarden_tests::redis::{self, ConnectionLike, Value};
use lockwarden_tests::*;
use policy_support::*;

/// The policies every persistence test loads, in this order (not
/// alphabetical, to check that the order is kept): a clamp for all keys
/// (30 s, 55 s for keys `held*`), a denial for `d:*`, and an audit-mode
/// denial for `a:*`.
fn load_standard(server: &Server) {
    load_example(
        server,
        "zeta-ttl",
        "max-ttl",
        "*",
        r#"{"default_ms":30000,"prefixes":[{"prefix":"held","max_ms":55000}]}"#,
    );
    load_ok(
        server,
        "deny",
        &["KEYS", "d:*"],
        &Guest::deny("no d").wasm(),
    );
    load_ok(
        server,
        "alpha-audit",
        &["KEYS", "a:*", "MODE", "audit"],
        &Guest::deny("audited").wasm(),
    );
}

/// The standard policies are in force on `server` (a primary): the clamp,
/// the denial, the audit mode.
#[track_caller]
fn assert_enforced(server: &Server, tag: &str) {
    let key = format!("e:{tag}");
    assert_eq!(
        acquire_ok(server, &key, "me", 50_000).1,
        30_000,
        "{tag}: clamp"
    );
    assert_eq!(server.cmd_text(&["LOCK.RELEASE", &key, "me"]), "1");
    assert_eq!(
        render(&acquire(server, &format!("d:{tag}"), "me", 1000)),
        "(error) DENIED policy deny: no d",
        "{tag}"
    );
    let key = format!("a:{tag}");
    assert_eq!(acquire_ok(server, &key, "me", 1000).1, 1000, "{tag}: audit");
    assert_eq!(server.cmd_text(&["LOCK.RELEASE", &key, "me"]), "1");
}

/// A builder whose servers accept leases of up to 10 minutes, so that a
/// lock taken before a series of restarts outlives them on a slow machine.
fn long_leases(flavor: Flavor) -> ServerBuilder {
    Server::builder(flavor).module_arg("max-ttl-ms", "600000")
}

/// Takes `held` for 10 minutes (before any policy is loaded); returns its
/// token.
fn hold_long(server: &Server) -> i64 {
    let (token, ttl) = acquire_ok(server, "held", "me", 600_000);
    assert_eq!(ttl, 600_000);
    token
}

/// The AOF round trip with `aof-use-rdb-preamble` set to `preamble`.
fn aof_round_trip(flavor: Flavor, preamble: &str) {
    let server = long_leases(flavor)
        .arg("--appendonly", "yes")
        .arg("--appendfsync", "always")
        .arg("--aof-use-rdb-preamble", preamble)
        .start();
    let token = hold_long(&server);
    load_ok(&server, "gone", &[], &Guest::deny("gone").wasm());
    load_standard(&server);
    assert_eq!(server.cmd_text(&["LOCK.POLICY", "UNLOAD", "gone"]), "1");
    let before = specs(&server);
    assert_eq!(names(&server), ["zeta-ttl", "deny", "alpha-audit"]);

    // Straight from the AOF (commands only: no rewrite yet).
    server.restart_after_kill();
    assert_eq!(specs(&server), before, "after kill -9, from the AOF");
    assert_enforced(&server, "1");
    assert_eq!(lock_state(&server, "held"), Some(("me".into(), token, 0)));

    // After a rewrite, the policies must be in the new AOF.
    rewrite_aof(&server, TIMEOUT);
    server.restart_after_kill();
    assert_eq!(specs(&server), before, "after BGREWRITEAOF and kill -9");
    assert_enforced(&server, "2");
    assert_eq!(lock_state(&server, "held"), Some(("me".into(), token, 0)));

    // A rewrite right after a restart, then changes, then a clean restart.
    rewrite_aof(&server, TIMEOUT);
    assert_eq!(
        server.cmd_text(&["LOCK.POLICY", "UNLOAD", "alpha-audit"]),
        "1"
    );
    load_ok(
        &server,
        "late",
        &["KEYS", "l:*"],
        &Guest::clamp(2000).wasm(),
    );
    let changed = specs(&server);
    server.restart_clean(Shutdown::NoSave);
    assert_eq!(specs(&server), changed, "after a clean restart");
    assert_eq!(acquire_ok(&server, "l:1", "me", 10_000).1, 2000);

    // Two rewrites in a row, kill -9.
    rewrite_aof(&server, TIMEOUT);
    rewrite_aof(&server, TIMEOUT);
    server.restart_after_kill();
    assert_eq!(specs(&server), changed, "after two rewrites and kill -9");
    assert_eq!(acquire_ok(&server, "l:2", "me", 10_000).1, 2000);
    assert_eq!(lw_stat(&server, "policies_not_restored"), 0);
}

/// Finds a key with `prefix` served by `node`.
fn key_on(cluster: &Cluster, node: &Server, prefix: &str) -> String {
    (0..10_000)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| cluster.node_for_key(k).port() == node.port())
        .unwrap_or_else(|| panic!("no key {prefix}* on port {}", node.port()))
}

/// A command through the cluster client, rendered (errors included).
fn cluster_cmd(conn: &mut dyn ConnectionLike, args: &[&str]) -> String {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(*a);
    }
    match conn.req_command(&cmd) {
        Ok(v) => render(&v),
        Err(e) => format!("(error) {e}"),
    }
}

/// Runs `<cli> --cluster call 127.0.0.1:<port> args...` and returns its
/// output.
fn cluster_call(flavor: Flavor, port: u16, args: &[&str]) -> String {
    let out = Command::new(flavor.cli_bin())
        .args(["--cluster", "call", &format!("127.0.0.1:{port}")])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the cli");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "--cluster call {args:?}: {text}");
    text
}

for_each_flavor! {
    /// Policies (specs and order) survive DEBUG RELOAD, and so does an
    /// unload.
    fn policies_survive_debug_reload(flavor: Flavor) {
        let server = long_leases(flavor).start();
        let token = hold_long(&server);
        load_standard(&server);
        let before = specs(&server);
        assert_eq!(server.cmd_text(&["DEBUG", "RELOAD"]), "OK");
        assert_eq!(specs(&server), before);
        assert_enforced(&server, "1");
        assert_eq!(lock_state(&server, "held"), Some(("me".into(), token, 0)));

        assert_eq!(server.cmd_text(&["LOCK.POLICY", "UNLOAD", "deny"]), "1");
        assert_eq!(server.cmd_text(&["DEBUG", "RELOAD"]), "OK");
        assert_eq!(names(&server), ["zeta-ttl", "alpha-audit"]);
        acquire_ok(&server, "d:1", "me", 1000);
        assert_eq!(lw_stat(&server, "policies_not_restored"), 0);
    }

    /// Policies survive a restart from the RDB: SAVE then a clean restart,
    /// SHUTDOWN SAVE, and kill -9 (loading the last RDB).
    fn policies_survive_rdb_restart(flavor: Flavor) {
        let server = long_leases(flavor).start();
        let token = hold_long(&server);
        load_standard(&server);
        let before = specs(&server);
        assert_eq!(server.cmd_text(&["SAVE"]), "OK");
        server.restart_clean(Shutdown::NoSave);
        assert_eq!(specs(&server), before, "SAVE, SHUTDOWN NOSAVE");
        assert_enforced(&server, "1");
        assert_eq!(lock_state(&server, "held"), Some(("me".into(), token, 0)));

        load_ok(&server, "late", &["KEYS", "l:*"], &Guest::clamp(2000).wasm());
        let with_late = specs(&server);
        server.restart_clean(Shutdown::Save);
        assert_eq!(specs(&server), with_late, "SHUTDOWN SAVE");
        assert_eq!(acquire_ok(&server, "l:1", "me", 10_000).1, 2000);

        assert_eq!(server.cmd_text(&["LOCK.POLICY", "UNLOAD", "late"]), "1");
        assert_eq!(server.cmd_text(&["SAVE"]), "OK");
        server.restart_after_kill();
        assert_eq!(specs(&server), before, "SAVE, kill -9");
        assert_enforced(&server, "2");

        // A new server on the data directory of a dead one.
        server.kill9();
        let heir = Server::builder(flavor).dir(server.dir()).start();
        assert_eq!(specs(&heir), before, "another server on the same RDB");
        assert_enforced(&heir, "3");
        assert_eq!(lock_state(&heir, "held"), Some(("me".into(), token, 0)));
    }

    /// AOF with an RDB preamble: policies survive kill -9, BGREWRITEAOF and
    /// clean restarts.
    fn policies_survive_aof_with_preamble(flavor: Flavor) {
        aof_round_trip(flavor, "yes");
    }

    /// AOF without an RDB preamble (commands only): the same.
    fn policies_survive_aof_without_preamble(flavor: Flavor) {
        aof_round_trip(flavor, "no");
    }

    /// A replica started after the policies were loaded gets them with the
    /// full sync; a grant decided by a clamp reaches it with the clamped
    /// deadline.
    fn replica_gets_policies_on_full_sync(flavor: Flavor) {
        let primary = Server::start(flavor);
        load_standard(&primary);
        load_example(&primary, "owners", "owner-format", "o:*", "{}");
        let (_, ttl) = acquire_ok(&primary, "held", "me", 100_000);
        assert_eq!(ttl, 55_000, "the longest matching prefix");
        let replica = Server::builder(flavor)
            .raw_args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .start();
        wait_for_sync(&primary, &replica);
        assert_eq!(specs(&replica), specs(&primary));
        assert_eq!(digest(&replica, "held"), digest(&primary, "held"));
        let pttl = int(&replica.cmd(&["PTTL", "held"]));
        assert!(pttl > 0 && pttl <= 55_000, "replica PTTL {pttl}");
        // The settings came along: a dry run on the replica clamps the same.
        assert_eq!(
            replica.cmd_text(&["LOCK.POLICY", "EVAL", "zeta-ttl", "ACQUIRE", "x", "me", "50000"]),
            "clamp 30000"
        );
        // Replicas do not take lock commands.
        assert!(render(&acquire(&replica, "x", "me", 1000)).starts_with("(error) READONLY"));
    }

    /// Loads, replacements and unloads replicate live; a clamp decided on
    /// the primary reaches the replica as the clamped deadline; after a
    /// promotion the policies are enforced on the new primary.
    fn policies_replicate_live_and_after_promotion(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (primary, replica) = (&pair.primary, &pair.replica);
        load_standard(primary);
        load_example(primary, "owners", "owner-format", "o:*", "{}");
        pair.wait_for_offset();
        assert_eq!(specs(replica), specs(primary));
        assert_eq!(names(replica), ["zeta-ttl", "deny", "alpha-audit", "owners"]);
        let wasm = example("owner-format");
        assert_eq!(listed(replica, "owners").text("sha256"), sha256_hex(&wasm));

        // Grants decided by the clamp: the replica has the same lease.
        let (token, ttl) = acquire_ok(primary, "held", "me", 100_000);
        assert_eq!(ttl, 55_000);
        assert_eq!(int(&primary.cmd(&["LOCK.EXTEND", "held", "me", "59000"])), 55_000);
        pair.wait_for_offset();
        assert_eq!(digest(replica, "held"), digest(primary, "held"));
        assert_eq!(lock_state(replica, "held"), Some(("me".into(), token, 1)));
        let pttl = int(&replica.cmd(&["PTTL", "held"]));
        assert!(pttl > 0 && pttl <= 55_000, "replica PTTL {pttl}");

        // REPLACE with other settings: the replica has the new settings.
        load_ok(primary, "zeta-ttl", &["CONFIG", r#"{"default_ms":20000}"#, "REPLACE"], &example("max-ttl"));
        load_ok(primary, "gone", &[], &Guest::allow().wasm());
        pair.wait_for_offset();
        assert_eq!(
            replica.cmd_text(&["LOCK.POLICY", "EVAL", "zeta-ttl", "ACQUIRE", "x", "me", "50000"]),
            "clamp 20000"
        );
        assert_eq!(specs(replica), specs(primary));
        // UNLOAD replicates; an UNLOAD of nothing changes nothing.
        assert_eq!(primary.cmd_text(&["LOCK.POLICY", "UNLOAD", "gone"]), "1");
        assert_eq!(primary.cmd_text(&["LOCK.POLICY", "UNLOAD", "never"]), "0");
        // A refused load replicates nothing.
        assert!(load(primary, "bad", &[], b"junk").starts_with("(error) BADPOLICY"));
        pair.wait_for_offset();
        assert_eq!(names(replica), ["zeta-ttl", "deny", "alpha-audit", "owners"]);
        assert_eq!(specs(replica), specs(primary));

        pair.promote();
        assert_eq!(acquire_ok(replica, "e:promoted", "me", 50_000).1, 20_000);
        assert_eq!(
            render(&acquire(replica, "d:promoted", "me", 1000)),
            "(error) DENIED policy deny: no d"
        );
        assert_error(&acquire(replica, "o:1", "bad-owner", 1000), "DENIED policy owners: owner 'bad-owner'");
        assert_eq!(acquire_ok(replica, "a:1", "me", 1000).1, 1000);
        assert_eq!(lw_stat(replica, "policy_audit_denials"), 1);
        // The lease decided on the old primary is intact.
        assert_eq!(lock_state(replica, "held"), Some(("me".into(), token, 1)));
        assert_eq!(int(&replica.cmd(&["LOCK.EXTEND", "held", "me", "50000"])), 20_000);
    }

    /// A full resync gives the replica the primary's policies, in the
    /// primary's order, not the union with what it had: a policy unloaded
    /// on the primary while the replica was away must not survive on the
    /// replica (it would be enforced after a failover), and one the replica
    /// loaded itself in another order must not be asked first.
    fn full_resync_replaces_replica_policies(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, |b| b);
        let (primary, replica) = (&pair.primary, &pair.replica);
        load_ok(primary, "stale", &["KEYS", "s:*"], &Guest::deny("stale policy").wasm());
        load_ok(primary, "kept", &["KEYS", "k:*"], &Guest::clamp(2000).wasm());
        pair.wait_for_offset();
        assert_eq!(names(replica), ["stale", "kept"]);

        // The replica leaves; the primary changes its policies meanwhile.
        assert_eq!(replica.cmd_text(&["REPLICAOF", "NO", "ONE"]), "OK");
        replica.wait_for(TIMEOUT, |r| r.role() == "master");
        assert_eq!(primary.cmd_text(&["LOCK.POLICY", "UNLOAD", "stale"]), "1");
        load_ok(primary, "new", &["KEYS", "n:*"], &Guest::deny("new policy").wasm());
        // The same policy, loaded on the replica ahead of `kept`.
        assert_eq!(replica.cmd_text(&["LOCK.POLICY", "UNLOAD", "kept"]), "1");
        load_ok(replica, "new", &["KEYS", "n:*"], &Guest::deny("new policy").wasm());
        load_ok(replica, "kept", &["KEYS", "k:*"], &Guest::clamp(2000).wasm());
        assert_eq!(names(replica), ["stale", "new", "kept"]);
        let full_syncs = primary.info_field("stats", "sync_full").expect("sync_full");

        // It comes back: a full resync (its replication id is new).
        let port = primary.port().to_string();
        assert_eq!(replica.cmd_text(&["REPLICAOF", "127.0.0.1", &port]), "OK");
        wait_for_sync(primary, replica);
        assert_ne!(
            primary.info_field("stats", "sync_full").expect("sync_full"),
            full_syncs,
            "a full resync"
        );
        assert_eq!(
            names(replica),
            names(primary),
            "after a full resync the replica must have exactly the primary's policies"
        );
        assert_eq!(specs(replica), specs(primary));
    }

    /// In a cluster policies are per node: loaded on every primary (over
    /// each node's own connection: WASM is binary, `--cluster call` passes
    /// text), they decide keys on every node; unloading on one node affects
    /// that node's keys only; `--cluster call` can list and unload them.
    fn cluster_policies_are_per_node(flavor: Flavor) {
        let cluster = Cluster::start(flavor, 3, |b| b);
        let primaries = cluster.primaries();
        assert_eq!(primaries.len(), 3);
        for node in &primaries {
            load_example(node, "keys", "key-pattern", "*", r#"{"allow":["orders:*"]}"#);
        }
        let mut conn = cluster.cluster_client();
        for node in &primaries {
            let denied = key_on(&cluster, node, "acct:");
            let reply = cluster_cmd(&mut conn, &["LOCK.ACQUIRE", &denied, "me", "10000"]);
            assert!(
                reply.contains("DENIED") && reply.contains("policy keys: key '") && reply.contains("matches none of the allowed patterns: 'orders:*'"),
                "{denied} on port {}: {reply}",
                node.port()
            );
            assert_eq!(int(&node.cmd(&["EXISTS", &denied])), 0);
            let allowed = key_on(&cluster, node, "orders:");
            let reply = cluster_cmd(&mut conn, &["LOCK.ACQUIRE", &allowed, "me", "10000"]);
            assert!(reply.starts_with('[') && reply.ends_with(" 10000]"), "{allowed}: {reply}");
            assert_eq!(listed(node, "keys").counts(), (2, 1, 0), "each node decides its own keys");
        }

        // Unloaded on the first node only.
        let (first, second) = (primaries[0], primaries[1]);
        assert_eq!(first.cmd_text(&["LOCK.POLICY", "UNLOAD", "keys"]), "1");
        let on_first = key_on(&cluster, first, "acct:");
        let on_second = key_on(&cluster, second, "acct:");
        let reply = cluster_cmd(&mut conn, &["LOCK.ACQUIRE", &on_first, "me", "10000"]);
        assert!(reply.starts_with('['), "{on_first}: {reply}");
        let reply = cluster_cmd(&mut conn, &["LOCK.ACQUIRE", &on_second, "me", "10000"]);
        assert!(reply.contains("DENIED"), "{on_second}: {reply}");

        // --cluster call reaches every node with text arguments.
        let out = cluster_call(flavor, first.port(), &["LOCK.POLICY", "LIST"]);
        assert!(out.contains("keys"), "{out}");
        cluster_call(flavor, first.port(), &["LOCK.POLICY", "UNLOAD", "keys"]);
        for node in &primaries {
            assert!(list(node).is_empty(), "port {}", node.port());
        }
        let reply = cluster_cmd(&mut conn, &["LOCK.ACQUIRE", &on_second, "me", "10000"]);
        assert!(reply.starts_with('['), "{on_second}: {reply}");
    }

    /// Policies survive an AOF rewrite triggered automatically
    /// (auto-aof-rewrite-percentage) in a commands-only AOF, and kill -9.
    fn policies_survive_automatic_aof_rewrite(flavor: Flavor) {
        let server = Server::builder(flavor)
            .arg("--appendonly", "yes")
            .arg("--appendfsync", "always")
            .arg("--aof-use-rdb-preamble", "no")
            .arg("--auto-aof-rewrite-percentage", "100")
            .arg("--auto-aof-rewrite-min-size", "1")
            .start();
        let rewrites = |s: &Server| -> i64 {
            s.info_field("persistence", "aof_rewrites")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let before_rewrites = rewrites(&server);
        load_standard(&server);
        let before = specs(&server);
        // The policies grew the AOF far beyond 100%: serverCron rewrites it.
        server.wait_for(TIMEOUT, |s| rewrites(s) > before_rewrites);
        wait_persistence_idle(&server, TIMEOUT);
        server.restart_after_kill();
        assert_eq!(specs(&server), before, "after an automatic rewrite and kill -9");
        assert_enforced(&server, "1");
    }

    /// Turning the AOF on at run time (CONFIG SET appendonly yes, which
    /// writes the first AOF with a rewrite) keeps the loaded policies, with
    /// and without an RDB preamble.
    fn policies_survive_enabling_aof_at_run_time(flavor: Flavor) {
        for preamble in ["no", "yes"] {
            let server = Server::builder(flavor)
                .arg("--aof-use-rdb-preamble", preamble)
                .arg("--appendfsync", "always")
                .start();
            load_standard(&server);
            let before = specs(&server);
            config_set(&server, "appendonly", "yes");
            server.wait_for(TIMEOUT, |s| {
                s.info_field("persistence", "aof_enabled").as_deref() == Some("1")
            });
            wait_persistence_idle(&server, TIMEOUT);
            server.kill9();
            let heir = Server::builder(flavor)
                .dir(server.dir())
                .arg("--appendonly", "yes")
                .arg("--aof-use-rdb-preamble", preamble)
                .start();
            assert_eq!(specs(&heir), before, "preamble {preamble}: from the AOF written at CONFIG SET appendonly yes");
            assert_enforced(&heir, preamble);
        }
    }

    /// A replica applies the policies its primary loaded whatever its own
    /// lockwarden.policy-max-module-kb, live as with a full sync (the RDB
    /// path already ignores the admission limit): otherwise the replica
    /// silently lacks the policy and a failover drops it.
    fn replica_applies_policies_above_its_module_limit(flavor: Flavor) {
        let primary = Server::start(flavor);
        let replica = Server::builder(flavor)
            .module_arg("policy-max-module-kb", "16")
            .raw_args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .start();
        wait_for_sync(&primary, &replica);
        // Live, through the replication stream.
        load_example(&primary, "ttl", "max-ttl", "*", r#"{"default_ms":30000}"#);
        wait_for_offset(&primary, &replica);
        assert_eq!(specs(&replica), specs(&primary), "live load of a 130 KB module on a replica limited to 16 KB");
        // Through a full sync.
        load_example(&primary, "hold", "max-hold", "*", r#"{"max_hold_ms":30000}"#);
        assert_eq!(replica.cmd_text(&["REPLICAOF", "NO", "ONE"]), "OK");
        let port = primary.port().to_string();
        assert_eq!(replica.cmd_text(&["REPLICAOF", "127.0.0.1", &port]), "OK");
        wait_for_sync(&primary, &replica);
        assert_eq!(specs(&replica), specs(&primary), "after a full sync");
    }

    /// A policy of the dataset that cannot start on this node (here: the
    /// node runs with a fuel limit below what the policy's instantiation
    /// needs) is kept, broken, not dropped: listed with the reason, failing
    /// lock commands on its keys, saved again, and working once the limit is
    /// raised. From an RDB, from an AOF without preamble, and live on a
    /// replica.
    fn a_policy_that_cannot_start_is_kept_broken(flavor: Flavor) {
        let assert_broken = |server: &Server, how: &str| {
            let broken = render(listed(server, "ttl").get("broken"));
            assert!(broken.contains("fuel exhausted"), "{how}: broken: {broken}");
            assert_eq!(lw_stat(server, "policies_not_restored"), 1, "{how}");
            assert_error(&acquire(server, "k", "me", 60_000), "POLICY policy ttl failed: ");
        };
        let config = r#"{"default_ms":5000}"#;

        let first = Server::start(flavor);
        load_example(&first, "ttl", "max-ttl", "*", config);
        first.shutdown(Shutdown::Save);
        let low = Server::builder(flavor).dir(first.dir()).module_arg("policy-fuel", "1000").start();
        assert_broken(&low, "from the RDB");
        // Saved while broken, with its spec: a node with the default limits
        // loads it working.
        low.shutdown(Shutdown::Save);
        let normal = Server::builder(flavor).dir(first.dir()).start();
        assert_eq!(acquire_ok(&normal, "k", "me", 60_000).1, 5000);
        drop(normal);
        // The limit raised at run time: the start is retried within a second.
        let low = Server::builder(flavor).dir(first.dir()).module_arg("policy-fuel", "1000").start();
        assert_broken(&low, "from the RDB again");
        config_set(&low, "lockwarden.policy-fuel", "1000000");
        wait_until("the policy starts", TIMEOUT, || {
            let reply = low.cmd(&["LOCK.ACQUIRE", "k2", "me", "60000"]);
            matches!(reply, Value::Array(_)) && grant(&reply).1 == 5000
        });
        assert_eq!(listed(&low, "ttl").get("broken"), &Value::Nil);

        let aof = |b: ServerBuilder| b.arg("appendonly", "yes").arg("aof-use-rdb-preamble", "no");
        let first = aof(Server::builder(flavor)).start();
        load_example(&first, "ttl", "max-ttl", "*", config);
        first.kill9();
        let low = aof(Server::builder(flavor)).dir(first.dir()).module_arg("policy-fuel", "1000").start();
        assert_broken(&low, "from the AOF");

        let primary = Server::start(flavor);
        let replica = Server::builder(flavor)
            .module_arg("policy-fuel", "1000")
            .raw_args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .start();
        wait_for_sync(&primary, &replica);
        load_example(&primary, "ttl", "max-ttl", "*", config);
        wait_for_offset(&primary, &replica);
        assert_eq!(specs(&replica), specs(&primary), "kept on the replica");
        let broken = render(listed(&replica, "ttl").get("broken"));
        assert!(broken.contains("fuel exhausted"), "replica: broken: {broken}");
        assert_eq!(lw_stat(&replica, "policies_not_restored"), 1);
        // Sent again unchanged (the primary's AOF rewrite re-emits its
        // policies), or reloaded: kept as it is, counted once.
        assert_eq!(primary.cmd_text(&["CONFIG", "SET", "appendonly", "yes"]), "OK");
        wait_persistence_idle(&primary, TIMEOUT);
        wait_for_offset(&primary, &replica);
        assert_eq!(replica.cmd_text(&["DEBUG", "RELOAD"]), "OK");
        assert_eq!(specs(&replica), specs(&primary));
        assert_eq!(lw_stat(&replica, "policies_not_restored"), 1);
    }

    /// Policies run on the primary only: a replica applies the primary's
    /// grants even when its own policies would deny them, and loading the
    /// AOF replays grants without asking the policies loaded at start-up.
    fn replicas_and_the_aof_do_not_consult_policies(flavor: Flavor) {
        let path = policy_path("key-pattern");
        let deny_all = |b: ServerBuilder| {
            b.module_arg("policy-name", "nothing")
                .module_arg("policy-file", &path)
                .module_arg("policy-config", r#"{"allow":["none:*"]}"#)
        };
        let primary = Server::builder(flavor)
            .arg("--appendonly", "yes")
            .arg("--appendfsync", "always")
            .start();
        let replica = deny_all(Server::builder(flavor))
            .raw_args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .start();
        wait_for_sync(&primary, &replica);
        assert_eq!(names(&replica), ["nothing"]);
        let (token, _) = acquire_ok(&primary, "k", "me", 50_000);
        assert_eq!(int(&primary.cmd(&["LOCK.EXTEND", "k", "me", "40000"])), 40_000);
        wait_for_offset(&primary, &replica);
        assert_eq!(lock_state(&replica, "k"), Some(("me".into(), token, 1)));
        assert_eq!(digest(&replica, "k"), digest(&primary, "k"));
        assert_eq!(listed(&replica, "nothing").num("evaluations"), 0);

        // The primary's AOF, replayed by a server that starts with the
        // deny-all policy.
        primary.kill9();
        let heir = deny_all(Server::builder(flavor))
            .dir(primary.dir())
            .arg("--appendonly", "yes")
            .start();
        assert_eq!(lock_state(&heir, "k"), Some(("me".into(), token, 1)));
        assert_eq!(listed(&heir, "nothing").num("evaluations"), 0);
        // ... and enforces it for new commands.
        assert_error(&acquire(&heir, "k2", "me", 1000), "DENIED policy nothing: ");
        assert_eq!(server_release(&heir, "k"), "1");
    }

    /// The policy named in the module arguments is configuration: restarted
    /// with another `policy-config`, the node runs that version, not the copy
    /// of the same name its RDB or AOF (without preamble) carries.
    fn startup_policy_wins_over_its_persisted_copy(flavor: Flavor) {
        let path = policy_path("max-ttl");
        let limited = |b: ServerBuilder, ms: u64, aof: bool| {
            let b = b
                .module_arg("policy-name", "limit")
                .module_arg("policy-file", &path)
                .module_arg(
                    "policy-config",
                    format!(r#"{{"default_ms":{ms},"prefixes":[],"action":"clamp"}}"#),
                );
            if aof {
                b.arg("--appendonly", "yes")
                    .arg("--appendfsync", "always")
                    .arg("--aof-use-rdb-preamble", "no")
            } else {
                b
            }
        };
        for aof in [false, true] {
            let first = limited(Server::builder(flavor), 30_000, aof).start();
            assert_eq!(acquire_ok(&first, "k", "me", 45_000).1, 30_000);
            if aof {
                rewrite_aof(&first, TIMEOUT);
            } else {
                assert_eq!(first.cmd_text(&["SAVE"]), "OK");
            }
            first.kill9();
            let second = limited(Server::builder(flavor), 5_000, aof)
                .dir(first.dir())
                .start();
            assert_eq!(names(&second), ["limit"], "aof {aof}");
            assert_eq!(
                acquire_ok(&second, "k2", "me", 45_000).1,
                5_000,
                "aof {aof}: the persisted copy replaced the start-up policy"
            );
            // The lock itself came back from the dataset.
            assert_eq!(lock_state(&second, "k").map(|s| s.0), Some("me".to_string()));
        }
    }
}

/// `LOCK.RELEASE key me`, rendered.
fn server_release(server: &Server, key: &str) -> String {
    server.cmd_text(&["LOCK.RELEASE", key, "me"])
}
