//! A Redis / Valkey cluster.

use std::fs::File;
use std::process::{Command, Stdio};

use redis::Value;
use redis::cluster::{ClusterClient, ClusterConnection};

use crate::util::{poll, render, value_int, value_text};
use crate::{Flavor, Server, ServerBuilder, TIMEOUT, wait_for_sync};

/// Number of hash slots.
pub(crate) const SLOTS: u16 = 16384;

/// A cluster of `n` primaries (and optionally replicas), created with
/// `redis-cli --cluster create` / `valkey-cli --cluster create`. All nodes
/// are killed on drop.
#[derive(Debug)]
pub struct Cluster {
    flavor: Flavor,
    nodes: Vec<Server>,
}

/// One slot range of `CLUSTER SLOTS`: `(first, last, primary port)`.
type SlotRange = (u16, u16, u16);

impl Cluster {
    /// Starts `n_primaries` (at least 3) nodes, each from
    /// `configure(Server::builder(flavor).cluster_mode())`, creates the
    /// cluster with the slots spread evenly, and waits until every node
    /// reports `cluster_state:ok` and all nodes agree on the slot map.
    ///
    /// ```no_run
    /// # use lockwarden_tests::*;
    /// let cluster = Cluster::start(Flavor::Valkey, 3, |b| b);
    /// ```
    pub fn start(
        flavor: Flavor,
        n_primaries: usize,
        configure: impl Fn(ServerBuilder) -> ServerBuilder,
    ) -> Cluster {
        Cluster::start_with_replicas(flavor, n_primaries, 0, configure)
    }

    /// Like [`start`](Self::start), with `replicas_per_primary` replicas for
    /// each primary (assigned by `--cluster create`); also waits until
    /// every replica has synced.
    pub fn start_with_replicas(
        flavor: Flavor,
        n_primaries: usize,
        replicas_per_primary: usize,
        configure: impl Fn(ServerBuilder) -> ServerBuilder,
    ) -> Cluster {
        assert!(n_primaries >= 3, "a cluster needs at least 3 primaries");
        let total = n_primaries * (1 + replicas_per_primary);
        let nodes: Vec<Server> = (0..total)
            .map(|_| configure(Server::builder(flavor).cluster_mode()).start())
            .collect();
        let cluster = Cluster { flavor, nodes };
        cluster.create(replicas_per_primary);
        cluster.wait_until_ok();
        if replicas_per_primary > 0 {
            for replica in cluster.replicas() {
                let port: u16 = replica
                    .info_field("replication", "master_port")
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_else(|| replica.fail("replica without master_port"));
                wait_for_sync(cluster.node_by_port(port), replica);
            }
        }
        cluster
    }

    fn create(&self, replicas: usize) {
        let log_path = self.nodes[0].dir().join("cluster-create.log");
        let log = File::create(&log_path).expect("create cluster-create.log");
        let mut cmd = Command::new(self.flavor.cli_bin());
        cmd.arg("--cluster").arg("create");
        for node in &self.nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port()));
        }
        cmd.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        let mut child = crate::spawn::spawn(cmd)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.flavor.cli_bin()));
        let status = poll(TIMEOUT * 2, || child.try_wait().expect("wait for cli"));
        let output = std::fs::read_to_string(&log_path).unwrap_or_default();
        match status {
            Some(s) if s.success() => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                self.nodes[0].fail(&format!(
                    "{} --cluster create failed ({other:?}):\n{output}",
                    self.flavor.cli_bin()
                ));
            }
        }
    }

    /// The flavor.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// All nodes, in start order.
    pub fn nodes(&self) -> &[Server] {
        &self.nodes
    }

    /// Node `i` in start order.
    pub fn node(&self, i: usize) -> &Server {
        &self.nodes[i]
    }

    /// The node listening on `port`. Panics if there is none.
    pub fn node_by_port(&self, port: u16) -> &Server {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"))
    }

    /// The running nodes whose `INFO replication` says `role:master`.
    pub fn primaries(&self) -> Vec<&Server> {
        self.running().filter(|n| n.role() == "master").collect()
    }

    /// A primary other than `node`.
    pub fn other_primary(&self, node: &Server) -> &Server {
        self.primaries()
            .into_iter()
            .find(|n| n.port() != node.port())
            .unwrap_or_else(|| panic!("no primary besides port {}", node.port()))
    }

    /// The running nodes whose `INFO replication` says `role:slave`.
    pub fn replicas(&self) -> Vec<&Server> {
        self.running().filter(|n| n.role() == "slave").collect()
    }

    fn running(&self) -> impl Iterator<Item = &Server> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// The first running node (used for topology queries).
    fn any_node(&self) -> &Server {
        self.running().next().expect("no cluster node is running")
    }

    /// A cluster-aware connection (follows -MOVED and -ASK), seeded with
    /// all nodes; connect timeout 5 s, response timeout 30 s.
    pub fn cluster_client(&self) -> ClusterConnection {
        let urls: Vec<String> = self.nodes.iter().map(Server::url).collect();
        ClusterClient::builder(urls)
            .connection_timeout(std::time::Duration::from_secs(5))
            .response_timeout(TIMEOUT)
            .build()
            .and_then(|c| c.get_connection())
            .unwrap_or_else(|e| panic!("cluster client: {e}"))
    }

    /// `CLUSTER MYID` of `node`.
    pub fn node_id(&self, node: &Server) -> String {
        let reply = node.cmd(&["CLUSTER", "MYID"]);
        value_text(&reply)
            .unwrap_or_else(|| node.fail(&format!("CLUSTER MYID replied {}", render(&reply))))
    }

    /// The hash slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot_for_key(&self, key: &str) -> u16 {
        let node = self.any_node();
        let reply = node.cmd(&["CLUSTER", "KEYSLOT", key]);
        value_int(&reply)
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or_else(|| node.fail(&format!("CLUSTER KEYSLOT replied {}", render(&reply))))
    }

    /// The primary serving `slot`, according to `CLUSTER SLOTS` on the
    /// first running node.
    pub fn node_for_slot(&self, slot: u16) -> &Server {
        let port = slot_map(self.any_node())
            .into_iter()
            .find(|(first, last, _)| (*first..=*last).contains(&slot))
            .map(|(_, _, port)| port)
            .unwrap_or_else(|| panic!("slot {slot} is not served"));
        self.node_by_port(port)
    }

    /// The primary serving `key`.
    pub fn node_for_key(&self, key: &str) -> &Server {
        self.node_for_slot(self.slot_for_key(key))
    }

    /// Moves `slot` from `from` to `to` the standard way:
    /// `SETSLOT IMPORTING` on `to`, `SETSLOT MIGRATING` on `from`, then
    /// `GETKEYSINSLOT` + `MIGRATE ... KEYS` until the slot is empty on
    /// `from`, then `SETSLOT NODE <to>` on `to`, `from` and every other
    /// primary, and waits until all nodes agree.
    pub fn migrate_slot(&self, slot: u16, from: &Server, to: &Server) {
        let slot_s = slot.to_string();
        let from_id = self.node_id(from);
        let to_id = self.node_id(to);
        let ok = |node: &Server, args: &[&str]| {
            let reply = node.cmd_text(args);
            if reply != "OK" {
                node.fail(&format!("{args:?} replied {reply}"));
            }
        };
        ok(to, &["CLUSTER", "SETSLOT", &slot_s, "IMPORTING", &from_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot_s, "MIGRATING", &to_id]);
        let to_port = to.port().to_string();
        loop {
            let reply = from.cmd(&["CLUSTER", "GETKEYSINSLOT", &slot_s, "100"]);
            let keys: Vec<String> = match &reply {
                Value::Array(items) => items.iter().filter_map(value_text).collect(),
                other => from.fail(&format!("GETKEYSINSLOT replied {}", render(other))),
            };
            if keys.is_empty() {
                break;
            }
            let mut args = vec![
                "MIGRATE",
                "127.0.0.1",
                &to_port,
                "",
                "0",
                "10000",
                "REPLACE",
                "KEYS",
            ];
            args.extend(keys.iter().map(String::as_str));
            ok(from, &args);
        }
        ok(to, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        ok(from, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
        for node in self.primaries() {
            if node.port() != to.port() && node.port() != from.port() {
                ok(node, &["CLUSTER", "SETSLOT", &slot_s, "NODE", &to_id]);
            }
        }
        let want = to.port();
        for node in self.running() {
            node.wait_for(TIMEOUT, |n| {
                slot_map(n)
                    .iter()
                    .any(|&(first, last, port)| (first..=last).contains(&slot) && port == want)
            });
        }
    }

    /// Waits until every running node reports `cluster_state:ok`, knows
    /// every node, and all of them report the same slot map covering all
    /// 16384 slots.
    pub fn wait_until_ok(&self) {
        let nodes: Vec<&Server> = self.running().collect();
        let n = self.nodes.len().to_string();
        for node in &nodes {
            node.wait_for(TIMEOUT, |s| {
                let info = cluster_info(s);
                info.get("cluster_state").map(String::as_str) == Some("ok")
                    && info.get("cluster_known_nodes") == Some(&n)
            });
        }
        let reference = nodes[0];
        reference.wait_for(TIMEOUT, |r| {
            let map = slot_map(r);
            let covered: u32 = map.iter().map(|(f, l, _)| u32::from(l - f) + 1).sum();
            covered == u32::from(SLOTS) && nodes.iter().all(|n| slot_map(n) == map)
        });
    }
}

fn cluster_info(node: &Server) -> std::collections::HashMap<String, String> {
    let reply = node.cmd(&["CLUSTER", "INFO"]);
    crate::parse_info(&value_text(&reply).unwrap_or_default())
}

/// `CLUSTER SLOTS` of `node` as sorted `(first, last, primary port)`.
fn slot_map(node: &Server) -> Vec<SlotRange> {
    let reply = node.cmd(&["CLUSTER", "SLOTS"]);
    let Value::Array(ranges) = &reply else {
        node.fail(&format!("CLUSTER SLOTS replied {}", render(&reply)));
    };
    let mut map: Vec<SlotRange> = ranges
        .iter()
        .filter_map(|range| {
            let Value::Array(fields) = range else {
                return None;
            };
            let first = u16::try_from(value_int(fields.first()?)?).ok()?;
            let last = u16::try_from(value_int(fields.get(1)?)?).ok()?;
            let Value::Array(primary) = fields.get(2)? else {
                return None;
            };
            let port = u16::try_from(value_int(primary.get(1)?)?).ok()?;
            Some((first, last, port))
        })
        .collect();
    map.sort_unstable();
    map
}
