//! Helpers shared by the lock-core integration tests (core_commands, seed,
//! persistence, replication, cluster, acl), on top of
//! [`lockwarden_tests::locks`]. Not every test file uses every helper.
#![allow(dead_code)]

use lockwarden_tests::redis::Value;
use lockwarden_tests::*;

pub use lockwarden_tests::locks::*;

/// `LOCK.ACQUIRE key owner ttl` on the server's shared connection, as a
/// [`parse_grant`].
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

/// Acquires a lock that must be free and releases it; returns its token.
#[track_caller]
pub fn acquire_release(s: &Server, key: &str, owner: &str, ttl_ms: u64) -> i64 {
    let token = acquire_ok(s, key, owner, ttl_ms);
    release_ok(s, key, owner);
    token
}

/// `DBSIZE` (counts keys whose expiry passed but that are not yet deleted,
/// e.g. on a replica).
pub fn dbsize(s: &Server) -> i64 {
    int(&s.cmd(&["DBSIZE"]))
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
    let mut payload = dump(&src, key);
    let at = lease_offset(&payload, t as u64) + 1;
    payload[at..at + 8].copy_from_slice(&token.to_le_bytes());
    fix_crc(&mut payload);
    payload
}

/// The token a node whose clock is one day ahead of this one issues now.
pub fn token_from_a_day_ahead() -> u64 {
    ((now_ms() + 86_400_000) as u64) << 16
}
