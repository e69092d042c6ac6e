//! A primary and a replica.

use crate::{Flavor, Server, ServerBuilder, TIMEOUT};

/// A primary and one replica (`--replicaof`), both built by the same
/// `configure` closure. Both are killed on drop.
#[derive(Debug)]
pub struct ReplicaPair {
    /// The server started as the primary.
    pub primary: Server,
    /// The server started as its replica.
    pub replica: Server,
}

impl ReplicaPair {
    /// Starts a primary, then a replica of it, each from
    /// `configure(Server::builder(flavor))`, and waits until the replica's
    /// link is up, the initial sync is done and its offset matches the
    /// primary's.
    ///
    /// ```no_run
    /// # use lockwarden_tests::*;
    /// let pair = ReplicaPair::start(Flavor::Redis, |b| b);                  // with the module
    /// let pair = ReplicaPair::start(Flavor::Valkey, |b| b.without_module()); // without
    /// ```
    pub fn start(flavor: Flavor, configure: impl Fn(ServerBuilder) -> ServerBuilder) -> Self {
        let primary = configure(Server::builder(flavor)).start();
        let replica = configure(Server::builder(flavor))
            .raw_args(["--replicaof", "127.0.0.1", &primary.port().to_string()])
            .start();
        wait_for_sync(&primary, &replica);
        ReplicaPair { primary, replica }
    }

    /// Waits until the replica has processed everything the primary had
    /// written when this was called.
    pub fn wait_for_offset(&self) {
        wait_for_offset(&self.primary, &self.replica);
    }

    /// Promotes the replica (`REPLICAOF NO ONE`) and waits until it reports
    /// `role:master`. The old primary keeps running as a primary.
    pub fn promote(&self) {
        let reply = self.replica.cmd_text(&["REPLICAOF", "NO", "ONE"]);
        assert_eq!(reply, "OK", "REPLICAOF NO ONE");
        self.replica.wait_for(TIMEOUT, |r| r.role() == "master");
    }
}

/// Waits until `replica` is connected to `primary` (`master_link_status:up`,
/// no sync in progress, and the primary lists it as `online`), then
/// [`wait_for_offset`].
pub fn wait_for_sync(primary: &Server, replica: &Server) {
    replica.wait_for(TIMEOUT, |r| {
        let info = r.info("replication");
        info.get("master_link_status").map(String::as_str) == Some("up")
            && info.get("master_sync_in_progress").map(String::as_str) == Some("0")
            && info.get("master_port").map(String::as_str) == Some(&*primary.port().to_string())
    });
    let me = format!("port={},state=online", replica.port());
    primary.wait_for(TIMEOUT, |p| {
        p.info("replication")
            .iter()
            .any(|(k, v)| k.starts_with("slave") && v.contains(&me))
    });
    wait_for_offset(primary, replica);
}

/// Reads the primary's `master_repl_offset` and waits until the replica's
/// `slave_repl_offset` has reached it.
pub fn wait_for_offset(primary: &Server, replica: &Server) {
    let target = offset(primary, "master_repl_offset")
        .unwrap_or_else(|| primary.fail("INFO replication has no master_repl_offset"));
    replica.wait_for(TIMEOUT, |r| {
        offset(r, "slave_repl_offset").is_some_and(|o| o >= target)
    });
}

fn offset(server: &Server, field: &str) -> Option<i64> {
    server
        .info_field("replication", field)
        .and_then(|v| v.parse().ok())
}
