//! Helpers shared by the policy integration tests (`policies`,
//! `hostile_policies`, `policy_persistence`) on top of
//! [`lockwarden_tests::locks`]: loading policies, grants that must be
//! granted, and hand-written policy modules in the WebAssembly text format
//! (the policy host's tests' `wat_guest.rs`).
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Stdio};

use lockwarden_tests::redis::Value;
use lockwarden_tests::*;

pub use lockwarden_tests::locks::*;

#[path = "../../../module/core/tests/policy/wat_guest.rs"]
mod wat_guest;
pub use wat_guest::*;

// ---------------------------------------------------------------------------
// Loading policies

/// `LOCK.POLICY LOAD name <options...> WASM <wasm>` on a new connection,
/// rendered (`OK`, `(error) BADPOLICY ...`).
pub fn load(server: &Server, name: &str, options: &[&str], wasm: &[u8]) -> String {
    let mut args: Vec<&[u8]> = vec![b"LOCK.POLICY", b"LOAD", name.as_bytes()];
    args.extend(options.iter().map(|o| o.as_bytes()));
    args.push(b"WASM");
    args.push(wasm);
    render(&cmd_bytes(server, &args))
}

/// [`load`], asserting `OK`.
#[track_caller]
pub fn load_ok(server: &Server, name: &str, options: &[&str], wasm: &[u8]) {
    let reply = load(server, name, options, wasm);
    assert_eq!(reply, "OK", "LOCK.POLICY LOAD {name} {options:?}");
}

/// The compiled example policy `name` (`max-ttl`, `key-pattern`, ...).
pub fn example(name: &str) -> Vec<u8> {
    let path = policy_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "example policy {} not readable ({e}): build it with `make policies`",
            path.display()
        )
    })
}

/// Loads the example policy `policy` as `name` for `keys` with `config`.
#[track_caller]
pub fn load_example(server: &Server, name: &str, policy: &str, keys: &str, config: &str) {
    load_ok(
        server,
        name,
        &["KEYS", keys, "CONFIG", config],
        &example(policy),
    );
}

/// Lower-case hex SHA-256 of `bytes`, computed by `sha256sum`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run sha256sum");
    {
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(bytes).expect("write to sha256sum");
    }
    let out = child.wait_with_output().expect("sha256sum output");
    assert!(out.status.success(), "sha256sum failed");
    String::from_utf8(out.stdout).expect("utf-8")[..64].to_string()
}

/// The entry of policy `name`; panics if it is not loaded.
#[track_caller]
pub fn listed(server: &Server, name: &str) -> Listed {
    list(server)
        .into_iter()
        .find(|p| p.name() == name)
        .unwrap_or_else(|| {
            panic!(
                "policy {name} is not in LOCK.POLICY LIST: {:?}",
                names(server)
            )
        })
}

// ---------------------------------------------------------------------------
// Grants (the granted TTL may be clamped by a policy)

/// Parses a `LOCK.ACQUIRE` grant `[token, ttl]`; panics on anything else.
#[track_caller]
pub fn grant(v: &Value) -> (i64, i64) {
    parse_grant(v).unwrap_or_else(|| panic!("LOCK.ACQUIRE: expected a grant, got {}", render(v)))
}

/// `LOCK.ACQUIRE key owner ttl` on the shared connection.
pub fn acquire(server: &Server, key: &str, owner: &str, ttl: u64) -> Value {
    server.cmd(&["LOCK.ACQUIRE", key, owner, &ttl.to_string()])
}

/// `LOCK.ACQUIRE`, asserting a grant; returns `(token, ttl)`.
#[track_caller]
pub fn acquire_ok(server: &Server, key: &str, owner: &str, ttl: u64) -> (i64, i64) {
    grant(&acquire(server, key, owner, ttl))
}

/// `(owner, token, extensions)` of a held lock: what a denial must not change.
#[track_caller]
pub fn lock_state(server: &Server, key: &str) -> Option<(String, i64, i64)> {
    lock_info(server, key).map(|i| (i.owner_str(), i.token, i.extensions))
}

// ---------------------------------------------------------------------------
// The server

/// The server answers PING.
#[track_caller]
pub fn assert_alive(server: &Server) {
    assert!(server.is_running(), "the server process is gone");
    assert_eq!(server.cmd_text(&["PING"]), "PONG");
}

/// Sets a `lockwarden.*` setting.
#[track_caller]
pub fn config_set(server: &Server, name: &str, value: &str) {
    assert_eq!(
        server.cmd_text(&["CONFIG", "SET", name, value]),
        "OK",
        "CONFIG SET {name} {value}"
    );
}
