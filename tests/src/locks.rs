//! Helpers for talking to the lock module, shared by the integration tests
//! and the fault suite: commands on any connection, reply parsing (grants,
//! errors, maps), `LOCK.INFO`, `INFO lockwarden`, `LOCK.POLICY LIST`, AOF
//! rewrites and DUMP payloads.
//!
//! Not glob-exported at the crate root (some test support modules define
//! their own variants of these names): `use lockwarden_tests::locks::*;`.

use std::collections::HashMap;
use std::time::Duration;

use redis::{ConnectionLike, Value};

use crate::{Server, render};

// ---------------------------------------------------------------------------
// Commands

/// Runs a command with binary-safe arguments on `conn` and returns the reply
/// (server errors as `Value::ServerError`); panics on I/O errors.
pub fn req_bytes(conn: &mut dyn ConnectionLike, args: &[&[u8]]) -> Value {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(*a);
    }
    conn.req_command(&cmd).unwrap_or_else(|e| {
        panic!(
            "{:?} failed: {e}",
            args.iter()
                .map(|a| String::from_utf8_lossy(&a[..a.len().min(80)]).into_owned())
                .collect::<Vec<_>>()
        )
    })
}

/// Runs a text command on `conn` and returns the reply.
pub fn req(conn: &mut dyn ConnectionLike, args: &[&str]) -> Value {
    let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    req_bytes(conn, &bytes)
}

/// Runs a command with binary-safe arguments on a new connection to
/// `server` and returns the reply (server errors as `Value::ServerError`).
pub fn cmd_bytes(server: &Server, args: &[&[u8]]) -> Value {
    let mut conn = server.client();
    req_bytes(&mut conn, args)
}

// ---------------------------------------------------------------------------
// Replies

/// The integer of an integer reply; panics otherwise.
#[track_caller]
pub fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer reply, got {}", render(other)),
    }
}

/// The error code (first word) of an error reply, `None` for other replies.
pub fn err_code(v: &Value) -> Option<String> {
    match v {
        Value::ServerError(_) => {
            let text = render(v);
            let rest = text.strip_prefix("(error) ").unwrap_or(&text);
            Some(rest.split_whitespace().next().unwrap_or("").to_string())
        }
        _ => None,
    }
}

/// Panics unless `v` is an error reply with code `code`.
#[track_caller]
pub fn assert_err(v: &Value, code: &str, what: &str) {
    assert_eq!(
        err_code(v).as_deref(),
        Some(code),
        "{what}: expected a {code} error, got {}",
        render(v)
    );
}

/// Asserts that `reply` is an error starting with `prefix` (code word
/// included, e.g. `DENIED policy p: `).
#[track_caller]
pub fn assert_error(reply: &Value, prefix: &str) {
    let text = render(reply);
    assert!(
        matches!(reply, Value::ServerError(_)) && text.starts_with(&format!("(error) {prefix}")),
        "expected an error starting with {prefix:?}, got {text}"
    );
}

/// Parses a `LOCK.ACQUIRE` reply: `Some((token, granted ttl))` or `None` for
/// nil; panics on anything else (errors included).
#[track_caller]
pub fn parse_grant(v: &Value) -> Option<(i64, i64)> {
    match v {
        Value::Nil => None,
        Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
            (Value::Int(t), Value::Int(ttl)) => Some((*t, *ttl)),
            _ => panic!("LOCK.ACQUIRE: unexpected reply {}", render(v)),
        },
        other => panic!("LOCK.ACQUIRE: unexpected reply {}", render(other)),
    }
}

/// [`parse_grant`] of a real grant: token and TTL must be positive.
#[track_caller]
pub fn grant(v: &Value) -> Option<(u64, u64)> {
    let (token, ttl) = parse_grant(v)?;
    assert!(token > 0 && ttl > 0, "not a grant: {}", render(v));
    Some((token as u64, ttl as u64))
}

/// `LOCK.ACQUIRE key owner ttl` on the server's shared connection, as a
/// [`grant`].
#[track_caller]
pub fn acquire(server: &Server, key: &str, owner: &str, ttl: u64) -> Option<(u64, u64)> {
    grant(&server.cmd(&["LOCK.ACQUIRE", key, owner, &ttl.to_string()]))
}

/// A flat list of field/value pairs (RESP2 map) or a RESP3 map, as pairs
/// with text keys; panics on anything else.
#[track_caller]
pub fn map_pairs(v: &Value) -> Vec<(String, Value)> {
    let text = |k: &Value| match k {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        other => panic!("map key is not a string: {}", render(other)),
    };
    match v {
        Value::Array(items) => {
            assert!(items.len() % 2 == 0, "odd map: {}", render(v));
            items
                .chunks(2)
                .map(|kv| (text(&kv[0]), kv[1].clone()))
                .collect()
        }
        Value::Map(kvs) => kvs.iter().map(|(k, v)| (text(k), v.clone())).collect(),
        other => panic!("expected a map, got {}", render(other)),
    }
}

// ---------------------------------------------------------------------------
// LOCK.INFO

/// The decoded `LOCK.INFO` reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    pub owner: Vec<u8>,
    pub token: i64,
    pub ttl: i64,
    pub acquired_at: i64,
    pub held: i64,
    pub extensions: i64,
    pub client_id: i64,
    pub client_connected: i64,
    pub session: i64,
    pub waiters: i64,
}

impl LockInfo {
    pub fn owner_str(&self) -> String {
        String::from_utf8_lossy(&self.owner).into_owned()
    }

    /// The fields that travel with the lease (replication, RDB, AOF,
    /// migration): owner, token, acquisition time, extensions, session.
    pub fn lease_fields(&self) -> (Vec<u8>, i64, i64, i64, i64) {
        (
            self.owner.clone(),
            self.token,
            self.acquired_at,
            self.extensions,
            self.session,
        )
    }
}

const INFO_FIELDS: [&str; 10] = [
    "owner",
    "token",
    "ttl",
    "acquired-at",
    "held",
    "extensions",
    "client-id",
    "client-connected",
    "session",
    "waiters",
];

/// Decodes a `LOCK.INFO` reply (RESP2 flat array or RESP3 map): `None` for
/// nil. Panics on errors, on missing, unknown or duplicate fields.
#[track_caller]
pub fn parse_lock_info(v: &Value) -> Option<LockInfo> {
    if *v == Value::Nil {
        return None;
    }
    let mut map: HashMap<String, Value> = HashMap::new();
    for (k, val) in map_pairs(v) {
        assert!(
            map.insert(k.clone(), val).is_none(),
            "LOCK.INFO: duplicate field {k}: {}",
            render(v)
        );
    }
    let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut want = INFO_FIELDS.to_vec();
    want.sort_unstable();
    assert_eq!(names, want, "LOCK.INFO fields: {}", render(v));
    let n = |name: &str| match &map[name] {
        Value::Int(i) => *i,
        other => panic!(
            "LOCK.INFO {name}: expected an integer, got {}",
            render(other)
        ),
    };
    let owner = match &map["owner"] {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        other => panic!("LOCK.INFO: expected a string, got {}", render(other)),
    };
    Some(LockInfo {
        owner,
        token: n("token"),
        ttl: n("ttl"),
        acquired_at: n("acquired-at"),
        held: n("held"),
        extensions: n("extensions"),
        client_id: n("client-id"),
        client_connected: n("client-connected"),
        session: n("session"),
        waiters: n("waiters"),
    })
}

/// `LOCK.INFO key` on the server's shared connection.
#[track_caller]
pub fn lock_info(s: &Server, key: &str) -> Option<LockInfo> {
    parse_lock_info(&s.cmd(&["LOCK.INFO", key]))
}

/// `LOCK.INFO key` of a lock that must be held.
#[track_caller]
pub fn held(s: &Server, key: &str) -> LockInfo {
    lock_info(s, key).unwrap_or_else(|| panic!("LOCK.INFO {key}: the lock is free"))
}

/// `LOCK.INFO key` as `field -> rendered value`, `None` when free.
#[track_caller]
pub fn lock_fields(server: &Server, key: &str) -> Option<HashMap<String, String>> {
    match server.cmd(&["LOCK.INFO", key]) {
        Value::Nil => None,
        v => Some(
            map_pairs(&v)
                .into_iter()
                .map(|(k, v)| (k, render(&v)))
                .collect(),
        ),
    }
}

/// One numeric field of `LOCK.INFO key`; panics when the lock is free.
#[track_caller]
pub fn lock_field(server: &Server, key: &str, name: &str) -> i64 {
    let info =
        lock_fields(server, key).unwrap_or_else(|| panic!("LOCK.INFO {key}: the lock is free"));
    let v = info
        .get(name)
        .unwrap_or_else(|| panic!("LOCK.INFO {key} has no {name}: {info:?}"));
    v.parse()
        .unwrap_or_else(|_| panic!("LOCK.INFO {key} {name} = {v:?}"))
}

/// The owner of `key`, `None` when free.
#[track_caller]
pub fn owner_of(server: &Server, key: &str) -> Option<String> {
    lock_fields(server, key).map(|i| i["owner"].clone())
}

// ---------------------------------------------------------------------------
// INFO lockwarden and keys

/// `INFO lockwarden` as numbers, without the `lockwarden_` prefix.
pub fn lw_stats(s: &Server) -> HashMap<String, i64> {
    s.info("lockwarden")
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("lockwarden_")?.to_string();
            Some((name, v.parse().ok()?))
        })
        .collect()
}

/// One `INFO lockwarden` counter (without the `lockwarden_` prefix).
#[track_caller]
pub fn lw_stat(s: &Server, name: &str) -> i64 {
    *lw_stats(s)
        .get(name)
        .unwrap_or_else(|| s.fail(&format!("INFO lockwarden has no lockwarden_{name}")))
}

/// `EXISTS key`.
pub fn exists(s: &Server, key: &str) -> bool {
    int(&s.cmd(&["EXISTS", key])) == 1
}

/// Polls until `key` no longer exists on `s` (release, active expiry or a
/// propagated DEL); panics after `timeout`.
pub fn wait_gone(s: &Server, key: &str, timeout: Duration) {
    s.wait_for(timeout, |s| !exists(s, key));
}

/// `PTTL key`.
pub fn pttl(s: &Server, key: &str) -> i64 {
    match s.cmd(&["PTTL", key]) {
        Value::Int(i) => i,
        other => s.fail(&format!("PTTL {key} replied {}", render(&other))),
    }
}

/// `DEBUG DIGEST-VALUE key`, rendered.
pub fn digest(s: &Server, key: &str) -> String {
    render(&s.cmd(&["DEBUG", "DIGEST-VALUE", key]))
}

// ---------------------------------------------------------------------------
// LOCK.POLICY LIST

/// One entry of `LOCK.POLICY LIST`.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The fields in reply order.
    pub fields: Vec<(String, Value)>,
}

/// What persistence and replication must keep of a policy:
/// `(name, keys, mode, size, sha256)`.
pub type PolicySpec = (String, String, String, i64, String);

impl Listed {
    #[track_caller]
    pub fn get(&self, field: &str) -> &Value {
        self.fields
            .iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("LOCK.POLICY LIST entry without {field}: {self:?}"))
    }

    #[track_caller]
    pub fn text(&self, field: &str) -> String {
        render(self.get(field))
    }

    #[track_caller]
    pub fn num(&self, field: &str) -> i64 {
        int(self.get(field))
    }

    pub fn name(&self) -> String {
        self.text("name")
    }

    /// `(name, keys, mode, size, sha256)`.
    pub fn spec(&self) -> PolicySpec {
        (
            self.name(),
            self.text("keys"),
            self.text("mode"),
            self.num("size"),
            self.text("sha256"),
        )
    }

    /// `(evaluations, denials, failures)`.
    pub fn counts(&self) -> (i64, i64, i64) {
        (
            self.num("evaluations"),
            self.num("denials"),
            self.num("failures"),
        )
    }
}

/// `LOCK.POLICY LIST`, parsed.
pub fn list(server: &Server) -> Vec<Listed> {
    list_reply(&server.cmd(&["LOCK.POLICY", "LIST"]))
}

/// Parses a `LOCK.POLICY LIST` reply.
#[track_caller]
pub fn list_reply(v: &Value) -> Vec<Listed> {
    match v {
        Value::Array(entries) => entries
            .iter()
            .map(|e| Listed {
                fields: map_pairs(e),
            })
            .collect(),
        other => panic!("LOCK.POLICY LIST: unexpected reply {}", render(other)),
    }
}

/// The names in `LOCK.POLICY LIST`, in evaluation order.
pub fn names(server: &Server) -> Vec<String> {
    list(server).iter().map(Listed::name).collect()
}

/// The specs of all listed policies, in order.
pub fn specs(server: &Server) -> Vec<PolicySpec> {
    list(server).iter().map(Listed::spec).collect()
}

// ---------------------------------------------------------------------------
// Persistence

/// Waits until no AOF rewrite or RDB save is running or scheduled, then
/// checks that the last AOF rewrite (if any) succeeded.
pub fn wait_persistence_idle(s: &Server, timeout: Duration) {
    s.wait_for(timeout, |s| {
        let p = s.info("persistence");
        let zero = |f: &str| p.get(f).map(String::as_str) == Some("0");
        zero("aof_rewrite_in_progress")
            && zero("aof_rewrite_scheduled")
            && zero("rdb_bgsave_in_progress")
    });
    assert_eq!(
        s.info_field("persistence", "aof_last_bgrewrite_status")
            .as_deref(),
        Some("ok"),
        "aof_last_bgrewrite_status"
    );
}

/// `BGREWRITEAOF` on an idle server, waiting for the rewrite to finish; it
/// must start at once and succeed.
pub fn rewrite_aof(s: &Server, timeout: Duration) {
    wait_persistence_idle(s, timeout);
    let reply = s.cmd_text(&["BGREWRITEAOF"]);
    assert!(reply.contains("rewriting"), "BGREWRITEAOF: {reply}");
    wait_persistence_idle(s, timeout);
}

/// The contents of the AOF's current incremental files (`type i` in the
/// manifest; the ones from before the last rewrite are history, `type h`).
/// Empty when there is no AOF.
pub fn aof_incr_files(s: &Server) -> Vec<Vec<u8>> {
    aof_files(s, "i")
}

/// The contents of the AOF's base file (`type b`: the last rewrite's
/// output), if there is one.
pub fn aof_base_file(s: &Server) -> Option<Vec<u8>> {
    aof_files(s, "b").pop()
}

/// The contents of the AOF files of manifest type `kind`.
fn aof_files(s: &Server, kind: &str) -> Vec<Vec<u8>> {
    let dir = s.dir().join("appendonlydir");
    let manifest = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".manifest"))
        .and_then(|e| std::fs::read_to_string(e.path()).ok())
        .unwrap_or_default();
    manifest
        .lines()
        .filter(|l| l.ends_with(&format!(" type {kind}")))
        .filter_map(|l| l.split_whitespace().nth(1))
        .map(|f| std::fs::read(dir.join(f)).unwrap_or_default())
        .collect()
}

/// Whether any of the AOF's current incremental files contains `needle`.
pub fn aof_incr_contains(s: &Server, needle: &[u8]) -> bool {
    aof_incr_files(s)
        .iter()
        .any(|f| f.windows(needle.len()).any(|w| w == needle))
}

// ---------------------------------------------------------------------------
// DUMP payloads

/// Redis's CRC-64 (Jones coefficients, reflected, poly 0xad93d23594c935a9,
/// init 0, no final xor), as used in the trailer of DUMP payloads.
pub fn crc64_jones(data: &[u8]) -> u64 {
    // The reflected form of 0xad93d23594c935a9.
    const POLY_REFLECTED: u64 = 0x95ac_9329_ac4b_c9b5;
    let mut crc = 0u64;
    for &b in data {
        crc ^= u64::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ POLY_REFLECTED
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// Replaces the 8-byte CRC trailer of a DUMP payload with the CRC of the
/// rest.
pub fn fix_crc(payload: &mut [u8]) {
    let n = payload.len();
    let crc = crc64_jones(&payload[..n - 8]);
    payload[n - 8..].copy_from_slice(&crc.to_le_bytes());
}

/// The bulk payload of `DUMP key`.
#[track_caller]
pub fn dump(s: &Server, key: &str) -> Vec<u8> {
    match s.cmd(&["DUMP", key]) {
        Value::BulkString(b) => b,
        other => s.fail(&format!("DUMP {key}: {}", render(&other))),
    }
}

/// Where the lease of token `token` starts in an uncompressed DUMP payload:
/// the index of its version byte (1), which follows the string's length.
#[track_caller]
pub fn lease_offset(payload: &[u8], token: u64) -> usize {
    let mut needle = vec![1u8];
    needle.extend_from_slice(&token.to_le_bytes());
    payload
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| {
            panic!("lease (version 1, token {token}) not found in the DUMP {payload:?}")
        })
}
