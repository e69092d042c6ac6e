//! Helpers shared by the sentinel_failover, slot_migration, soak and
//! bad_input scenarios: a seeded RNG, command and reply helpers that work on
//! plain and cluster connections, `LOCK.INFO` parsing into a field map, and
//! the server health check (alive, no panic in the logs); plus (from
//! `common`) running a scenario so that its `FAULTS.md` row is recorded
//! whether it passes or fails.
#![allow(dead_code)]

use std::collections::HashMap;

use lockwarden_tests::redis::{self, ConnectionLike, RedisError, Value};
use lockwarden_tests::*;

pub use super::common::*;

pub use lockwarden_tests::locks::{digest, lw_stat, lw_stats, pttl};

/// The seed of a scenario's RNG: `LOCKWARDEN_FAULTS_SEED` if set (to replay a
/// failure), else `default`. Printed so that a failing run can be replayed.
pub fn seed(scenario: &str, default: u64) -> u64 {
    let seed = std::env::var("LOCKWARDEN_FAULTS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default);
    eprintln!("{scenario}: seed {seed} (replay with LOCKWARDEN_FAULTS_SEED={seed})");
    seed
}

/// A small deterministic RNG (SplitMix64): the scenarios need reproducible
/// randomness and the crate has no `rand` dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// An independent generator derived from this one (e.g. one per thread).
    pub fn fork(&mut self, salt: u64) -> Rng {
        Rng(self.next_u64() ^ salt.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        self.next_u64() % n
    }

    /// Uniform in `lo..hi` (`lo < hi`).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    pub fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// Sends one command with binary-safe arguments on any connection (plain or
/// cluster). Server errors come back as `Err` with their code, like I/O
/// errors; see [`Reply`].
pub fn call_bytes(conn: &mut dyn ConnectionLike, args: &[&[u8]]) -> Reply {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(*a);
    }
    Reply::from(conn.req_command(&cmd))
}

/// [`call_bytes`] with text arguments.
pub fn call(conn: &mut dyn ConnectionLike, args: &[&str]) -> Reply {
    let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    call_bytes(conn, &bytes)
}

/// A reply, with server errors (whether the client returned them as a
/// `Value::ServerError` or as an `Err`) separated from I/O errors.
#[derive(Clone, Debug)]
pub enum Reply {
    Value(Value),
    /// A server error: its code (`ERR`, `NOTOWNER`, `TRYAGAIN`, ...) and
    /// the full rendered text.
    Error {
        code: String,
        text: String,
    },
    /// An I/O or protocol failure (connection closed, timeout).
    Io(String),
}

impl From<Result<Value, RedisError>> for Reply {
    fn from(r: Result<Value, RedisError>) -> Self {
        match r {
            Ok(Value::ServerError(e)) => {
                let text = render(&Value::ServerError(e.clone()));
                Reply::Error {
                    code: e.code().to_string(),
                    text,
                }
            }
            Ok(v) => Reply::Value(v),
            Err(e) => match e.code() {
                Some(code) if !e.is_io_error() => Reply::Error {
                    code: code.to_string(),
                    text: format!("(error) {code} {}", e.detail().unwrap_or("")),
                },
                _ => Reply::Io(e.to_string()),
            },
        }
    }
}

impl Reply {
    pub fn text(&self) -> String {
        match self {
            Reply::Value(v) => render(v),
            Reply::Error { text, .. } => text.clone(),
            Reply::Io(e) => format!("(io error) {e}"),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error { .. })
    }

    pub fn code(&self) -> Option<&str> {
        match self {
            Reply::Error { code, .. } => Some(code),
            _ => None,
        }
    }

    /// The `LOCK.ACQUIRE` outcome: `Ok(Some((token, ttl)))` for a grant,
    /// `Ok(None)` for nil, `Err(text)` for anything else.
    pub fn grant(&self) -> Result<Option<(u64, u64)>, String> {
        match self {
            Reply::Value(v) => parse_grant(v).ok_or_else(|| self.text()),
            _ => Err(self.text()),
        }
    }

    /// The integer of an integer reply.
    pub fn int(&self) -> Option<i64> {
        match self {
            Reply::Value(Value::Int(i)) => Some(*i),
            _ => None,
        }
    }
}

/// A `LOCK.ACQUIRE` reply: `Some(Some((token, ttl)))`, `Some(None)` for nil,
/// `None` for anything else.
pub fn parse_grant(v: &Value) -> Option<Option<(u64, u64)>> {
    match v {
        Value::Nil => Some(None),
        Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
            (Value::Int(t), Value::Int(ttl)) if *t > 0 && *ttl > 0 => {
                Some(Some((*t as u64, *ttl as u64)))
            }
            _ => None,
        },
        _ => None,
    }
}

/// Parses an `lw-client` reply line for `LOCK.ACQUIRE`: `[token ttl]` or
/// `(nil)`.
pub fn parse_grant_line(line: &str) -> Option<Option<(u64, u64)>> {
    if line == "(nil)" {
        return Some(None);
    }
    let inner = line.strip_prefix('[')?.strip_suffix(']')?;
    let (t, ttl) = inner.split_once(' ')?;
    Some(Some((t.parse().ok()?, ttl.parse().ok()?)))
}

/// A decoded `LOCK.INFO` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub owner: Vec<u8>,
    pub fields: HashMap<String, i64>,
}

impl LockInfo {
    pub fn get(&self, name: &str) -> i64 {
        *self
            .fields
            .get(name)
            .unwrap_or_else(|| panic!("LOCK.INFO has no {name}: {self:?}"))
    }

    pub fn token(&self) -> u64 {
        self.get("token") as u64
    }

    pub fn owner_str(&self) -> String {
        String::from_utf8_lossy(&self.owner).into_owned()
    }

    /// Everything but the fields that change with time (`ttl`, `held`):
    /// two snapshots of an untouched lock compare equal.
    pub fn stable(&self) -> (Vec<u8>, Vec<(String, i64)>) {
        let mut f: Vec<(String, i64)> = self
            .fields
            .iter()
            .filter(|(k, _)| *k != "ttl" && *k != "held")
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        f.sort();
        (self.owner.clone(), f)
    }

    /// The fields that travel with the lease (replication, migration):
    /// owner, token, acquisition time, extensions, session.
    pub fn lease(&self) -> (Vec<u8>, i64, i64, i64, i64) {
        (
            self.owner.clone(),
            self.get("token"),
            self.get("acquired-at"),
            self.get("extensions"),
            self.get("session"),
        )
    }
}

fn bytes_of(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        _ => None,
    }
}

/// Decodes a `LOCK.INFO` reply: `Ok(None)` when free, `Err` for anything
/// that is not a well-formed reply.
pub fn parse_lock_info(v: &Value) -> Result<Option<LockInfo>, String> {
    let pairs: Vec<(&Value, &Value)> = match v {
        Value::Nil => return Ok(None),
        Value::Array(items) if items.len() % 2 == 0 => {
            items.chunks(2).map(|p| (&p[0], &p[1])).collect()
        }
        Value::Map(pairs) => pairs.iter().map(|(k, v)| (k, v)).collect(),
        other => return Err(format!("LOCK.INFO replied {}", render(other))),
    };
    let mut owner = None;
    let mut fields = HashMap::new();
    for (k, val) in pairs {
        let name = bytes_of(k)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .ok_or_else(|| format!("LOCK.INFO field name {}", render(k)))?;
        if name == "owner" {
            owner = Some(bytes_of(val).ok_or_else(|| format!("LOCK.INFO owner {}", render(val)))?);
        } else {
            match val {
                Value::Int(i) => {
                    fields.insert(name, *i);
                }
                other => return Err(format!("LOCK.INFO {name} = {}", render(other))),
            }
        }
    }
    let owner = owner.ok_or_else(|| format!("LOCK.INFO without owner: {}", render(v)))?;
    Ok(Some(LockInfo { owner, fields }))
}

/// `LOCK.INFO key` on the server's shared connection; panics on errors.
#[track_caller]
pub fn lock_info(s: &Server, key: &str) -> Option<LockInfo> {
    parse_lock_info(&s.cmd(&["LOCK.INFO", key])).unwrap_or_else(|e| s.fail(&e))
}

/// `LOCK.INFO key` of a lock that must be held.
#[track_caller]
pub fn held(s: &Server, key: &str) -> LockInfo {
    lock_info(s, key).unwrap_or_else(|| s.fail(&format!("LOCK.INFO {key}: the lock is free")))
}

/// `INFO memory` `used_memory`.
pub fn used_memory(s: &Server) -> i64 {
    s.info_field("memory", "used_memory")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| s.fail("INFO memory has no used_memory"))
}

/// The server's logs (server.log and the captured stdout/stderr, where a
/// Rust panic message would go).
pub fn all_logs(s: &Server) -> String {
    let stdout = std::fs::read(s.dir().join("stdout.log"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    format!("{}\n{stdout}", s.log())
}

/// Lines of the server's logs that show a module panic (caught or not), an
/// internal error reply or a server crash report.
pub fn log_problems(s: &Server) -> Vec<String> {
    all_logs(s)
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("panick")
                || l.contains("internal error")
                || l.contains("bug report")
                || l.contains("crashed by signal")
                || l.contains("assertion")
        })
        .map(str::to_string)
        .collect()
}

/// Panics unless the server runs, answers PING, and its logs show no panic
/// or crash.
#[track_caller]
pub fn assert_healthy(s: &Server, what: &str) {
    if !s.is_running() {
        s.fail(&format!("{what}: the server is not running"));
    }
    match s.try_cmd(&["PING"]) {
        Ok(v) if render(&v) == "PONG" => {}
        other => s.fail(&format!("{what}: PING replied {other:?}")),
    }
    let problems = log_problems(s);
    if !problems.is_empty() {
        s.fail(&format!("{what}: the server logged {problems:#?}"));
    }
}
