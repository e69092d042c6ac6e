//! The fault suite's oracle: a "fenced storage" and the report it feeds.
//!
//! [`FencedStore`] is a plain `redis-server` (no module) standing in for the
//! resource a lock protects. Every write carries the writer's fencing token
//! and owner; a Lua script accepts it only if the token is at least the
//! highest token accepted so far for that resource (with fencing on), and logs
//! every accept and reject atomically. Any process can write to it, so
//! holders may be separate OS processes that are killed or paused.
//!
//! [`Verdict`] checks a resource's log:
//! * accepted tokens never go down (with fencing this must hold; without
//!   fencing, a violation is the anomaly a stale holder causes);
//! * no token was used by two different owners (two overlapping grants with
//!   the same token);
//!
//! [`Row`] is one line of `tests/FAULTS.md`; `make test-faults` collects the
//! rows written by the scenarios (see [`Row::record`]).

use crate::{Flavor, Server, TIMEOUT};
use redis::Connection;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

/// Tokens are compared as decimal strings (length, then bytes): they exceed
/// Lua's 2^53 exact doubles.
const FENCED_WRITE: &str = r#"
local function less(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local max = redis.call('HGET', KEYS[1], 'max') or '0'
local token, owner, fencing = ARGV[1], ARGV[2], ARGV[3]
local ok = 1
if fencing == '1' and less(token, max) then ok = 0 end
if ok == 1 and less(max, token) then redis.call('HSET', KEYS[1], 'max', token) end
redis.call('RPUSH', KEYS[1] .. ':log', token .. ' ' .. owner .. ' ' .. ok)
return ok
"#;

/// The protected resource.
pub struct FencedStore {
    server: Server,
    fencing: bool,
    /// SHA1 of the loaded write script.
    sha: String,
}

/// One logged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Write {
    pub token: u64,
    pub owner: String,
    pub accepted: bool,
}

impl FencedStore {
    /// Starts the store. With `fencing` false it accepts every write (the
    /// control run) but still logs them.
    pub fn start(flavor: Flavor, fencing: bool) -> Self {
        let server = Server::builder(flavor).without_module().start();
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(FENCED_WRITE)
            .query(&mut server.client())
            .expect("script load");
        FencedStore {
            server,
            fencing,
            sha,
        }
    }

    /// The store's port, for writers in other processes (see
    /// [`FencedStore::write_command`]).
    pub fn port(&self) -> u16 {
        self.server.port()
    }

    pub fn fencing(&self) -> bool {
        self.fencing
    }

    /// A connection to the store.
    pub fn client(&self) -> Connection {
        self.server.client()
    }

    /// Writes to `resource` with `token` on behalf of `owner`; true if accepted.
    pub fn write(&self, conn: &mut Connection, resource: &str, token: u64, owner: &str) -> bool {
        let ok: i64 = redis::cmd("EVALSHA")
            .arg(&self.sha)
            .arg(1)
            .arg(resource)
            .arg(token.to_string())
            .arg(owner)
            .arg(if self.fencing { "1" } else { "0" })
            .query(conn)
            .expect("fenced write");
        ok == 1
    }

    /// The same write as one command line (`EVALSHA sha 1 resource token
    /// owner fencing`) for `lw-client` processes talking to [`Self::port`].
    pub fn write_command(&self, resource: &str, token: u64, owner: &str) -> String {
        format!(
            "EVALSHA {} 1 {resource} {token} {owner} {}",
            self.sha,
            if self.fencing { 1 } else { 0 }
        )
    }

    /// Every write to `resource`, in the order the store applied them.
    pub fn log(&self, resource: &str) -> Vec<Write> {
        let lines: Vec<String> = redis::cmd("LRANGE")
            .arg(format!("{resource}:log"))
            .arg(0)
            .arg(-1)
            .query(&mut self.client())
            .expect("read log");
        lines
            .iter()
            .map(|l| {
                let mut parts = l.split(' ');
                let token = parts.next().and_then(|t| t.parse().ok()).expect("token");
                let owner = parts.next().expect("owner").to_string();
                let accepted = parts.next() == Some("1");
                Write {
                    token,
                    owner,
                    accepted,
                }
            })
            .collect()
    }

    /// Checks `resource`'s log.
    pub fn verdict(&self, resource: &str) -> Verdict {
        Verdict::of(&self.log(resource))
    }
}

/// What the oracle found in one resource's log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Writes logged.
    pub writes: usize,
    /// Writes accepted.
    pub accepted: usize,
    /// Writes the store rejected as stale (fencing at work).
    pub rejected: usize,
    /// Accepted writes whose token was below one accepted earlier: a stale
    /// holder's write landed after a newer holder's (the anomaly).
    pub stale_accepted: usize,
    /// Tokens accepted from more than one owner.
    pub shared_tokens: usize,
}

impl Verdict {
    pub fn of(log: &[Write]) -> Verdict {
        let mut v = Verdict {
            writes: log.len(),
            ..Verdict::default()
        };
        let mut max = 0;
        let mut owners: HashMap<u64, &str> = HashMap::new();
        for w in log {
            if !w.accepted {
                v.rejected += 1;
                continue;
            }
            v.accepted += 1;
            if w.token < max {
                v.stale_accepted += 1;
            }
            max = max.max(w.token);
            match owners.get(&w.token) {
                Some(o) if *o != w.owner => v.shared_tokens += 1,
                _ => {
                    owners.insert(w.token, &w.owner);
                }
            }
        }
        v
    }

    /// No anomaly: what fencing guarantees.
    pub fn clean(&self) -> bool {
        self.stale_accepted == 0 && self.shared_tokens == 0
    }

    /// Anomalies found.
    pub fn anomalies(&self) -> usize {
        self.stale_accepted + self.shared_tokens
    }

    /// Adds the counts of `other` (another resource's verdict) to these.
    pub fn add(&mut self, other: &Verdict) {
        self.writes += other.writes;
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        self.stale_accepted += other.stale_accepted;
        self.shared_tokens += other.shared_tokens;
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} writes, {} accepted, {} rejected as stale, {} stale accepted, {} shared tokens",
            self.writes, self.accepted, self.rejected, self.stale_accepted, self.shared_tokens
        )
    }
}

/// One line of `tests/FAULTS.md`.
pub struct Row {
    /// Scenario number and name, e.g. "2 paused holder".
    pub scenario: String,
    pub flavor: Flavor,
    /// The faults injected.
    pub faults: String,
    /// Operations performed (lock commands and writes).
    pub operations: u64,
    /// Anomalies the oracle found with fencing (must be 0).
    pub anomalies_fenced: usize,
    /// Anomalies found in the control run without fencing, if the scenario
    /// has one.
    pub anomalies_unfenced: Option<usize>,
    /// `PASS`, or what failed.
    pub result: String,
}

impl Row {
    /// Where rows are collected: `<workspace>/target/faults/`.
    pub fn dir() -> PathBuf {
        crate::workspace_root().join("target").join("faults")
    }

    /// Writes this row for `make test-faults` to collect into `tests/FAULTS.md`.
    pub fn record(&self) {
        let dir = Self::dir();
        std::fs::create_dir_all(&dir).expect("create target/faults");
        let file = dir.join(format!(
            "{}-{}.md",
            self.scenario
                .replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            self.flavor.name()
        ));
        let unfenced = self
            .anomalies_unfenced
            .map_or("n/a".to_string(), |n| n.to_string());
        let line = format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            self.scenario,
            self.flavor.name(),
            self.faults,
            self.operations,
            self.anomalies_fenced,
            unfenced,
            self.result
        );
        std::fs::write(file, line).expect("write fault row");
    }
}

/// The header of `tests/FAULTS.md`.
pub const REPORT_HEADER: &str = "| scenario | server | faults injected | operations | anomalies with fencing | anomalies without fencing (control) | result |\n|---|---|---|---|---|---|---|\n";

/// Bound for anything a fault scenario waits on.
pub const FAULT_TIMEOUT: std::time::Duration = TIMEOUT;

#[cfg(test)]
mod tests {
    use super::*;

    fn w(token: u64, owner: &str, accepted: bool) -> Write {
        Write {
            token,
            owner: owner.into(),
            accepted,
        }
    }

    #[test]
    fn verdict_spots_stale_and_shared_tokens() {
        let clean = [
            w(1, "a", true),
            w(1, "a", true),
            w(2, "b", true),
            w(1, "a", false),
        ];
        let v = Verdict::of(&clean);
        assert!(v.clean(), "{v}");
        assert_eq!((v.accepted, v.rejected), (3, 1));
        let stale = [w(1, "a", true), w(2, "b", true), w(1, "a", true)];
        assert_eq!(Verdict::of(&stale).stale_accepted, 1);
        let shared = [w(5, "a", true), w(5, "b", true)];
        assert_eq!(Verdict::of(&shared).shared_tokens, 1);
    }
}
