//! Helpers shared by the lock-core integration tests (core_commands, seed,
//! persistence, replication, cluster, acl). Not every test file uses every
//! helper.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockwarden_tests::redis::{self, ConnectionLike, Value};
use lockwarden_tests::*;

/// Runs a command with binary-safe arguments on `conn` and returns the reply
/// (server errors as `Value::ServerError`); panics on I/O errors.
pub fn req_bytes(conn: &mut dyn ConnectionLike, args: &[&[u8]]) -> Value {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(*a);
    }
    conn.req_command(&cmd)
        .unwrap_or_else(|e| panic!("{:?} failed: {e}", printable(args)))
}

/// Runs a command on `conn` and returns the reply.
pub fn req(conn: &mut dyn ConnectionLike, args: &[&str]) -> Value {
    let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    req_bytes(conn, &bytes)
}

fn printable(args: &[&[u8]]) -> Vec<String> {
    args.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
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

/// The integer of an integer reply; panics otherwise.
#[track_caller]
pub fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("expected an integer reply, got {}", render(other)),
    }
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

/// `LOCK.ACQUIRE key owner ttl` on the server's shared connection.
#[track_caller]
pub fn acquire(s: &Server, key: &str, owner: &str, ttl_ms: u64) -> Option<(i64, i64)> {
    parse_grant(&s.cmd(&["LOCK.ACQUIRE", key, owner, &ttl_ms.to_string()]))
}

/// Acquires a lock that must be free; returns its token.
#[track_caller]
pub fn acquire_ok(s: &Server, key: &str, owner: &str, ttl_ms: u64) -> i64 {
    let (token, ttl) = acquire(s, key, owner, ttl_ms)
        .unwrap_or_else(|| panic!("LOCK.ACQUIRE {key} {owner} {ttl_ms}: contended"));
    assert_eq!(ttl, ttl_ms as i64, "granted ttl of {key}");
    token
}

/// `LOCK.RELEASE key owner` that must succeed.
#[track_caller]
pub fn release_ok(s: &Server, key: &str, owner: &str) {
    let reply = s.cmd(&["LOCK.RELEASE", key, owner]);
    assert_eq!(
        reply,
        Value::Int(1),
        "LOCK.RELEASE {key} {owner}: {}",
        render(&reply)
    );
}

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

fn bytes_of(v: &Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b.clone(),
        Value::SimpleString(s) => s.as_bytes().to_vec(),
        other => panic!("LOCK.INFO: expected a string, got {}", render(other)),
    }
}

/// Decodes a `LOCK.INFO` reply (RESP2 flat array or RESP3 map): `None` for
/// nil. Panics on errors, on missing, unknown or duplicate fields.
#[track_caller]
pub fn parse_lock_info(v: &Value) -> Option<LockInfo> {
    let pairs: Vec<(Vec<u8>, Value)> = match v {
        Value::Nil => return None,
        Value::Array(items) => {
            assert!(items.len() % 2 == 0, "LOCK.INFO: odd reply {}", render(v));
            items
                .chunks(2)
                .map(|p| (bytes_of(&p[0]), p[1].clone()))
                .collect()
        }
        Value::Map(pairs) => pairs
            .iter()
            .map(|(k, v)| (bytes_of(k), v.clone()))
            .collect(),
        other => panic!("LOCK.INFO: unexpected reply {}", render(other)),
    };
    let mut map: HashMap<String, Value> = HashMap::new();
    for (k, val) in pairs {
        let k = String::from_utf8(k).expect("LOCK.INFO field names are text");
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
    Some(LockInfo {
        owner: bytes_of(&map["owner"]),
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

/// `INFO lockwarden` as `field -> value`, with the `lockwarden_` prefix
/// removed.
pub fn lw_stats(s: &Server) -> HashMap<String, i64> {
    s.info("lockwarden")
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("lockwarden_").unwrap_or(&k).to_string();
            v.parse().ok().map(|v| (name, v))
        })
        .collect()
}

/// One `INFO lockwarden` counter.
#[track_caller]
pub fn stat(s: &Server, name: &str) -> i64 {
    *lw_stats(s)
        .get(name)
        .unwrap_or_else(|| panic!("INFO lockwarden has no {name}"))
}

/// `PTTL key`.
pub fn pttl(s: &Server, key: &str) -> i64 {
    int(&s.cmd(&["PTTL", key]))
}

/// `EXISTS key`.
pub fn exists(s: &Server, key: &str) -> bool {
    int(&s.cmd(&["EXISTS", key])) == 1
}

/// `DBSIZE` (counts keys whose expiry passed but that are not yet deleted,
/// e.g. on a replica).
pub fn dbsize(s: &Server) -> i64 {
    int(&s.cmd(&["DBSIZE"]))
}

/// `DEBUG DIGEST-VALUE key` as text.
pub fn digest(s: &Server, key: &str) -> String {
    render(&s.cmd(&["DEBUG", "DIGEST-VALUE", key]))
}

/// Wall-clock unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Polls until `key` no longer exists on `s` (active expiry or a propagated
/// DEL); panics after `timeout`.
pub fn wait_gone(s: &Server, key: &str, timeout: Duration) {
    s.wait_for(timeout, |s| !exists(s, key));
}

/// Waits until a running BGREWRITEAOF / BGSAVE is done.
pub fn wait_persistence_idle(s: &Server) {
    s.wait_for(TIMEOUT, |s| {
        let p = s.info("persistence");
        let zero = |f: &str| p.get(f).map(String::as_str) == Some("0");
        zero("aof_rewrite_in_progress")
            && zero("aof_rewrite_scheduled")
            && zero("rdb_bgsave_in_progress")
    });
}

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

/// Strict monotonicity check with a readable failure.
#[track_caller]
pub fn assert_strictly_increasing(tokens: &[i64], what: &str) {
    for w in tokens.windows(2) {
        assert!(
            w[0] < w[1],
            "{what}: token {} then {} in {tokens:?}",
            w[0],
            w[1]
        );
    }
}

/// A DUMP of a lock whose token is `token`: a lock granted by a node whose
/// clock is ahead of this one's (e.g. arriving by slot migration).
pub fn dump_with_token(flavor: Flavor, key: &str, token: u64) -> Vec<u8> {
    // No LZF compression, so the lease bytes appear verbatim.
    let src = Server::builder(flavor).arg("rdbcompression", "no").start();
    let t = acquire_ok(&src, key, "alice", 60000);
    let mut payload = match src.cmd(&["DUMP", key]) {
        Value::BulkString(b) => b,
        other => panic!("DUMP: {}", render(&other)),
    };
    let mut needle = vec![1u8];
    needle.extend_from_slice(&(t as u64).to_le_bytes());
    let at = payload
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the lease in the DUMP payload")
        + 1;
    payload[at..at + 8].copy_from_slice(&token.to_le_bytes());
    fix_crc(&mut payload);
    payload
}

/// The token a node whose clock is one day ahead of this one issues now.
pub fn token_from_a_day_ahead() -> u64 {
    ((now_ms() + 86_400_000) as u64) << 16
}
