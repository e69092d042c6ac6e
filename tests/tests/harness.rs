//! Smoke tests of the harness itself, without the lockwarden module.

use std::time::{Duration, SystemTime};

use lockwarden_tests::redis::{self, Value};
use lockwarden_tests::*;

fn plain(b: ServerBuilder) -> ServerBuilder {
    b.without_module()
}

for_each_flavor! {
    /// Start, PING, a write, log access, pause/resume, kill -9.
    fn start_ping_kill(flavor: Flavor) {
        let server = Server::builder(flavor).without_module().start();
        assert_eq!(server.cmd_text(&["PING"]), "PONG");
        assert_eq!(server.cmd_text(&["SET", "k", "v"]), "OK");
        assert_eq!(server.cmd(&["GET", "k"]), Value::BulkString(b"v".to_vec()));
        assert_eq!(server.cmd_text(&["GET", "missing"]), "(nil)");
        assert!(server.cmd_text(&["NOSUCHCOMMAND"]).starts_with("(error) ERR unknown command"));
        assert_eq!(server.cmd_text(&["DEBUG", "SLEEP", "0"]), "OK");
        let mut conn = server.client();
        let v: String = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
        assert_eq!(v, "v");
        assert!(server.log().contains("Ready to accept connections"));
        assert_eq!(server.role(), "master");

        server.pause();
        server.resume();
        assert_eq!(server.cmd_text(&["PING"]), "PONG");

        let pid = server.pid();
        server.kill9();
        assert!(!server.is_running());
        assert!(server.try_client().is_err(), "port {} still answers", server.port());
        // The pid is reaped.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    /// A key written with appendonly survives kill -9 and a clean restart;
    /// an RDB-only key survives SHUTDOWN SAVE.
    fn restart_keeps_data(flavor: Flavor) {
        let server = Server::builder(flavor)
            .without_module()
            .arg("--appendonly", "yes")
            .arg("--appendfsync", "always")
            .start();
        let port = server.port();
        assert_eq!(server.cmd_text(&["SET", "durable", "1"]), "OK");
        server.restart_after_kill();
        assert_eq!(server.port(), port);
        assert_eq!(server.cmd_text(&["GET", "durable"]), "1");
        assert_eq!(server.cmd_text(&["SET", "second", "2"]), "OK");
        server.restart_clean(Shutdown::NoSave);
        assert_eq!(server.cmd_text(&["MGET", "durable", "second"]), "[1 2]");

        // Without AOF and with `--save ""`, only SHUTDOWN SAVE keeps data.
        let rdb = Server::builder(flavor).without_module().start();
        rdb.cmd(&["SET", "k", "v"]);
        rdb.restart_clean(Shutdown::Save);
        assert_eq!(rdb.cmd_text(&["GET", "k"]), "v");
        rdb.restart_after_kill();
        assert_eq!(rdb.cmd_text(&["GET", "k"]), "v", "the RDB written by SHUTDOWN SAVE");
        rdb.cmd(&["SET", "k", "lost"]);
        rdb.restart_clean(Shutdown::NoSave);
        assert_eq!(rdb.cmd_text(&["GET", "k"]), "v");

        // A new server (new port) on the data directory of a dead one.
        rdb.kill9();
        let heir = Server::builder(flavor).without_module().dir(rdb.dir()).start();
        assert_ne!(heir.port(), rdb.port());
        assert_eq!(heir.cmd_text(&["GET", "k"]), "v");
    }

    /// A SET on the primary reaches the replica; the promoted replica takes
    /// writes.
    fn replica_pair(flavor: Flavor) {
        let pair = ReplicaPair::start(flavor, plain);
        assert_eq!(pair.replica.role(), "slave");
        assert_eq!(pair.primary.cmd_text(&["SET", "k", "v"]), "OK");
        pair.wait_for_offset();
        assert_eq!(pair.replica.cmd_text(&["GET", "k"]), "v");
        assert!(pair.replica.cmd_text(&["SET", "x", "1"]).starts_with("(error) READONLY"));

        pair.promote();
        assert_eq!(pair.replica.role(), "master");
        assert_eq!(pair.replica.cmd_text(&["SET", "x", "1"]), "OK");
        assert_eq!(pair.replica.cmd_text(&["GET", "k"]), "v");
    }

    /// A 3-primary cluster: the cluster client follows -MOVED for a `{tag}`
    /// key, and `migrate_slot` moves the key to another primary.
    fn cluster_migrate(flavor: Flavor) {
        let cluster = Cluster::start(flavor, 3, plain);
        assert_eq!(cluster.primaries().len(), 3);
        let mut conn = cluster.cluster_client();
        let _: () = redis::cmd("SET").arg("{tag}a").arg("1").query(&mut conn).unwrap();
        let _: () = redis::cmd("SET").arg("{tag}b").arg("2").query(&mut conn).unwrap();
        let got: Vec<String> = redis::cmd("MGET").arg("{tag}a").arg("{tag}b").query(&mut conn).unwrap();
        assert_eq!(got, ["1", "2"]);

        let slot = cluster.slot_for_key("{tag}a");
        assert_eq!(slot, cluster.slot_for_key("tag"));
        let owner = cluster.node_for_key("{tag}a");
        assert_eq!(owner.cmd_text(&["GET", "{tag}a"]), "1");
        let other = cluster
            .nodes()
            .iter()
            .find(|n| n.port() != owner.port())
            .unwrap();
        assert!(other.cmd_text(&["GET", "{tag}a"]).starts_with("(error) MOVED"));

        cluster.migrate_slot(slot, owner, other);
        assert_eq!(cluster.node_for_key("{tag}a").port(), other.port());
        assert_eq!(other.cmd_text(&["MGET", "{tag}a", "{tag}b"]), "[1 2]");
        assert!(owner.cmd_text(&["GET", "{tag}a"]).starts_with("(error) MOVED"));
        // The cluster client follows the move.
        let v: String = redis::cmd("GET").arg("{tag}b").query(&mut conn).unwrap();
        assert_eq!(v, "2");
        let fresh: String = redis::cmd("GET").arg("{tag}a").query(&mut cluster.cluster_client()).unwrap();
        assert_eq!(fresh, "1");
    }

    /// 3 primaries with one replica each: replicas are synced and serve
    /// reads after READONLY.
    fn cluster_with_replicas(flavor: Flavor) {
        let cluster = Cluster::start_with_replicas(flavor, 3, 1, plain);
        assert_eq!(cluster.primaries().len(), 3);
        assert_eq!(cluster.replicas().len(), 3);
        let mut conn = cluster.cluster_client();
        let _: () = redis::cmd("SET").arg("{r}k").arg("v").query(&mut conn).unwrap();
        let primary = cluster.node_for_key("{r}k");
        let replica = cluster
            .replicas()
            .into_iter()
            .find(|r| r.info_field("replication", "master_port") == Some(primary.port().to_string()))
            .unwrap();
        wait_for_offset(primary, replica);
        let mut c = replica.client();
        let _: () = redis::cmd("READONLY").query(&mut c).unwrap();
        let v: String = redis::cmd("GET").arg("{r}k").query(&mut c).unwrap();
        assert_eq!(v, "v");
    }

    /// Two lw-client processes released at the same instant race for
    /// `SET race x NX`: exactly one wins.
    fn client_race(flavor: Flavor) {
        let server = Server::builder(flavor).without_module().start();
        let at = SystemTime::now() + Duration::from_millis(1000);
        let mut a = spawn_client_at(server.port(), &["SET race x NX"], false, at);
        let mut b = spawn_client_at(server.port(), &["SET race x NX"], false, at);
        let mut replies = [a.wait_success(), b.wait_success()].concat();
        replies.sort();
        assert_eq!(replies, ["(nil)", "OK"]);
    }

    /// A held lw-client keeps its connection (visible in CLIENT LIST) until
    /// killed; interactive mode runs commands from stdin.
    fn client_hold_and_stdin(flavor: Flavor) {
        let server = Server::builder(flavor).without_module().start();
        let mut held = spawn_client(server.port(), &["CLIENT SETNAME holder", "INCR n", "GET nope"], true);
        assert_eq!(held.lines(3), ["OK", "1", "(nil)"]);
        assert!(server.cmd_text(&["CLIENT", "LIST"]).contains("name=holder"));
        held.kill();
        server.wait_for(TIMEOUT, |s| !s.cmd_text(&["CLIENT", "LIST"]).contains("name=holder"));

        let mut live = LwClient::new(server.port()).cmd("SET a 1").interactive().spawn();
        assert_eq!(live.expect_line(), "OK");
        assert_eq!(live.exec("RPUSH l x y"), "2");
        assert_eq!(live.exec("LRANGE l 0 -1"), "[x y]");
        assert_eq!(live.exec("HSET"), "(error) ERR wrong number of arguments for 'hset' command");
        assert!(live.wait_success().is_empty());
    }
}

for_each_flavor! {
    /// Sentinel: 1 primary, 2 replicas, 3 sentinels; a forced failover
    /// moves the primary and the new one takes writes.
    fn sentinel_failover(flavor: Flavor) {
        let set = SentinelSet::start(flavor, plain);
        let old = set.current_primary();
        assert_eq!(old.port(), set.servers()[0].port());
        assert_eq!(old.cmd_text(&["SET", "k", "v"]), "OK");
        let new = set.failover();
        assert_ne!(new.port(), old.port());
        assert_eq!(set.current_primary().port(), new.port());
        assert_eq!(new.cmd_text(&["GET", "k"]), "v");
        assert_eq!(new.cmd_text(&["SET", "k", "w"]), "OK");
    }
}

#[test]
fn flavors_and_paths() {
    assert_eq!(Flavor::all(), [Flavor::Redis, Flavor::Valkey]);
    assert_eq!(Flavor::Valkey.server_bin(), "valkey-server");
    assert_eq!(Flavor::Redis.cli_bin(), "redis-cli");
    assert!(workspace_root().join("Cargo.toml").is_file());
    assert!(module_path().ends_with("liblockwarden.so"));
    // The harness finds the same lw-client cargo built for this test.
    let exe = env!("CARGO_BIN_EXE_lw-client");
    assert!(std::path::Path::new(exe).is_file());
}

#[test]
fn missing_module_is_a_clear_error() {
    let err = std::panic::catch_unwind(|| {
        Server::builder(Flavor::Redis)
            .module("/nonexistent/liblockwarden.so")
            .start()
    })
    .unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("lockwarden module not found"), "{msg}");
}

#[test]
fn bad_argument_panics_with_log() {
    // A directory of our own, so the harness does not keep it on failure.
    let dir = tempfile::tempdir().unwrap();
    let err = std::panic::catch_unwind(|| {
        Server::builder(Flavor::Redis)
            .without_module()
            .dir(dir.path())
            .arg("--no-such-option", "1")
            .start()
    })
    .unwrap_err();
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("exited during startup"), "{msg}");
    assert!(msg.contains("no-such-option"), "{msg}");
}
