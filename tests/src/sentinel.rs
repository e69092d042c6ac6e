//! A primary with two replicas, watched by three sentinels.

use std::collections::HashMap;

use redis::Value;

use crate::util::{render, value_text};
use crate::{Flavor, Server, ServerBuilder, TIMEOUT, wait_for_sync};

/// The name the sentinels monitor the primary under.
pub(crate) const MASTER_NAME: &str = "lw";

/// One primary, two replicas and three sentinels (quorum 2,
/// `down-after-milliseconds 2000`, `failover-timeout 10000`). All are killed
/// on drop.
#[derive(Debug)]
pub struct SentinelSet {
    flavor: Flavor,
    servers: Vec<Server>,
    sentinels: Vec<Server>,
}

impl SentinelSet {
    /// Starts the data nodes from `configure(Server::builder(flavor))`
    /// (node 0 the primary, nodes 1 and 2 its replicas), waits for both
    /// replicas to sync, starts the sentinels, and waits until every
    /// sentinel sees the primary, both replicas and the two other sentinels.
    pub fn start(flavor: Flavor, configure: impl Fn(ServerBuilder) -> ServerBuilder) -> Self {
        let primary = configure(Server::builder(flavor)).start();
        let primary_port = primary.port().to_string();
        let mut servers = vec![primary];
        for _ in 0..2 {
            let replica = configure(Server::builder(flavor))
                .raw_args(["--replicaof", "127.0.0.1", &primary_port])
                .start();
            wait_for_sync(&servers[0], &replica);
            servers.push(replica);
        }
        let conf = format!(
            "sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 2000\n\
             sentinel failover-timeout {MASTER_NAME} 10000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n"
        );
        let sentinels = (0..3)
            .map(|_| Server::builder(flavor).sentinel(conf.clone()).start())
            .collect();
        let set = SentinelSet {
            flavor,
            servers,
            sentinels,
        };
        for sentinel in &set.sentinels {
            sentinel.wait_for(TIMEOUT, |s| {
                let m = master_state(s);
                m.get("num-slaves").map(String::as_str) == Some("2")
                    && m.get("num-other-sentinels").map(String::as_str) == Some("2")
            });
        }
        set
    }

    /// The flavor.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The data nodes: index 0 started as the primary, 1 and 2 as replicas.
    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    /// The three sentinels.
    pub fn sentinels(&self) -> &[Server] {
        &self.sentinels
    }

    /// The monitored name, for `SENTINEL GET-MASTER-ADDR-BY-NAME`.
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// The data node the first running sentinel names as primary
    /// (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub fn current_primary(&self) -> &Server {
        let port = self
            .primary_port_per_sentinel()
            .unwrap_or_else(|| panic!("no running sentinel names a primary for {MASTER_NAME}"));
        self.server_by_port(port)
    }

    /// The data node on `port`.
    pub fn server_by_port(&self, port: u16) -> &Server {
        self.servers
            .iter()
            .find(|s| s.port() == port)
            .unwrap_or_else(|| panic!("no data node on port {port}"))
    }

    fn primary_port_per_sentinel(&self) -> Option<u16> {
        self.sentinels
            .iter()
            .filter(|s| s.is_running())
            .find_map(primary_port)
    }

    /// Forces a failover (`SENTINEL FAILOVER` on the first running sentinel)
    /// and waits until it is complete; returns the new primary.
    pub fn failover(&self) -> &Server {
        let old = self.current_primary().port();
        let sentinel = self
            .sentinels
            .iter()
            .find(|s| s.is_running())
            .expect("no running sentinel");
        // Right after start a sentinel may still refuse ("NOGOODSLAVE")
        // until it has fresh INFO from the replicas: retry.
        sentinel.wait_for(TIMEOUT, |s| {
            s.cmd_text(&["SENTINEL", "FAILOVER", MASTER_NAME]) == "OK"
        });
        self.wait_for_failover(old)
    }

    /// Waits until every running sentinel names a primary other than the
    /// one on `old_port`, that node reports `role:master`, and the sentinels
    /// agree; returns it. Use after killing or pausing the primary.
    pub fn wait_for_failover(&self, old_port: u16) -> &Server {
        let mut new_port = 0;
        let first = self
            .sentinels
            .iter()
            .find(|s| s.is_running())
            .expect("no running sentinel");
        first.wait_for(TIMEOUT * 2, |_| {
            let ports: Vec<Option<u16>> = self
                .sentinels
                .iter()
                .filter(|s| s.is_running())
                .map(primary_port)
                .collect();
            let Some(Some(port)) = ports.first().copied() else {
                return false;
            };
            if port == old_port || ports.iter().any(|p| *p != Some(port)) {
                return false;
            }
            let node = self.server_by_port(port);
            if !node.is_running() || node.role() != "master" {
                return false;
            }
            new_port = port;
            true
        });
        self.server_by_port(new_port)
    }
}

/// The primary port `sentinel` reports for [`MASTER_NAME`].
fn primary_port(sentinel: &Server) -> Option<u16> {
    let reply = sentinel
        .try_cmd(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
        .ok()?;
    match &reply {
        Value::Array(addr) if addr.len() == 2 => value_text(&addr[1])?.parse().ok(),
        _ => None,
    }
}

/// `SENTINEL MASTER <name>` as `field -> value`.
fn master_state(sentinel: &Server) -> HashMap<String, String> {
    let reply = sentinel.cmd(&["SENTINEL", "MASTER", MASTER_NAME]);
    let flat: Vec<String> = match &reply {
        Value::Array(items) => items.iter().filter_map(value_text).collect(),
        Value::Map(pairs) => pairs
            .iter()
            .flat_map(|(k, v)| [value_text(k), value_text(v)])
            .flatten()
            .collect(),
        other => sentinel.fail(&format!("SENTINEL MASTER replied {}", render(other))),
    };
    flat.chunks_exact(2)
        .map(|kv| (kv[0].clone(), kv[1].clone()))
        .collect()
}
