//! Helpers shared by the policy integration tests (`policies`,
//! `hostile_policies`, `policy_persistence`): binary-safe commands, loading
//! policies, parsing `LOCK.POLICY LIST`, `LOCK.INFO` and `INFO lockwarden`,
//! and hand-written policy modules in the WebAssembly text format.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use lockwarden_sdk::abi::{self, Decision};
use lockwarden_tests::redis::{self, ConnectionLike, Value};
use lockwarden_tests::*;

// ---------------------------------------------------------------------------
// Commands

/// Runs a command with binary-safe arguments on a new connection to
/// `server` and returns the reply (server errors as `Value::ServerError`).
pub fn cmd_bytes(server: &Server, args: &[&[u8]]) -> Value {
    let mut conn = server.client();
    req_bytes(&mut conn, args)
}

/// Runs a command with binary-safe arguments on `conn`; panics on I/O errors.
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

/// Runs a text command on `conn`.
pub fn req(conn: &mut dyn ConnectionLike, args: &[&str]) -> Value {
    let bytes: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    req_bytes(conn, &bytes)
}

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

/// Parses a `LOCK.ACQUIRE` grant `[token, ttl]`; panics on anything else.
#[track_caller]
pub fn grant(v: &Value) -> (i64, i64) {
    match v {
        Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
            (Value::Int(t), Value::Int(ttl)) => (*t, *ttl),
            _ => panic!("LOCK.ACQUIRE: unexpected reply {}", render(v)),
        },
        other => panic!("LOCK.ACQUIRE: expected a grant, got {}", render(other)),
    }
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

/// A flat list of field/value pairs (RESP2 map) or a RESP3 map, as pairs.
fn pairs(v: &Value) -> Vec<(String, Value)> {
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

/// `LOCK.INFO key`: `None` when free, else field → rendered value.
pub fn lock_info(server: &Server, key: &str) -> Option<HashMap<String, String>> {
    match server.cmd(&["LOCK.INFO", key]) {
        Value::Nil => None,
        v => Some(
            pairs(&v)
                .into_iter()
                .map(|(k, v)| (k, render(&v)))
                .collect(),
        ),
    }
}

/// One `LOCK.INFO` field as a number; panics if the lock is free.
#[track_caller]
pub fn lock_field(server: &Server, key: &str, field: &str) -> i64 {
    let info =
        lock_info(server, key).unwrap_or_else(|| panic!("LOCK.INFO {key}: the lock is free"));
    info.get(field)
        .unwrap_or_else(|| panic!("LOCK.INFO {key} has no {field}: {info:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("LOCK.INFO {key} {field}: {e}"))
}

/// `(owner, token, extensions)` of a held lock: what a denial must not change.
#[track_caller]
pub fn lock_state(server: &Server, key: &str) -> Option<(String, i64, i64)> {
    lock_info(server, key).map(|i| {
        (
            i["owner"].clone(),
            i["token"].parse().expect("token"),
            i["extensions"].parse().expect("extensions"),
        )
    })
}

/// `EXISTS key` as a bool.
pub fn exists(server: &Server, key: &str) -> bool {
    int(&server.cmd(&["EXISTS", key])) == 1
}

/// One entry of `LOCK.POLICY LIST`.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The fields in reply order.
    pub fields: Vec<(String, Value)>,
}

impl Listed {
    pub fn get(&self, field: &str) -> &Value {
        self.fields
            .iter()
            .find(|(k, _)| k == field)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("LOCK.POLICY LIST entry without {field}: {self:?}"))
    }

    pub fn text(&self, field: &str) -> String {
        render(self.get(field))
    }

    pub fn num(&self, field: &str) -> i64 {
        int(self.get(field))
    }

    pub fn name(&self) -> String {
        self.text("name")
    }

    /// `(name, keys, mode, size, sha256)`: what persistence and replication
    /// must keep.
    pub fn spec(&self) -> (String, String, String, i64, String) {
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
pub fn list_reply(v: &Value) -> Vec<Listed> {
    match v {
        Value::Array(entries) => entries
            .iter()
            .map(|e| Listed { fields: pairs(e) })
            .collect(),
        other => panic!("LOCK.POLICY LIST: unexpected reply {}", render(other)),
    }
}

/// The names in `LOCK.POLICY LIST`, in evaluation order.
pub fn names(server: &Server) -> Vec<String> {
    list(server).iter().map(Listed::name).collect()
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

/// The specs of all listed policies, in order.
pub fn specs(server: &Server) -> Vec<(String, String, String, i64, String)> {
    list(server).iter().map(Listed::spec).collect()
}

/// `INFO lockwarden` as numbers, without the `lockwarden_` prefix.
pub fn lw_info(server: &Server) -> HashMap<String, i64> {
    server
        .info("lockwarden")
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("lockwarden_")?.to_string();
            Some((name, v.parse().ok()?))
        })
        .collect()
}

/// One `INFO lockwarden` counter.
#[track_caller]
pub fn lw_stat(server: &Server, name: &str) -> i64 {
    *lw_info(server)
        .get(name)
        .unwrap_or_else(|| panic!("INFO lockwarden has no lockwarden_{name}"))
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

/// The server answers PING.
#[track_caller]
pub fn assert_alive(server: &Server) {
    assert!(server.is_running(), "the server process is gone");
    assert_eq!(server.cmd_text(&["PING"]), "PONG");
}

/// Unix time in ms, from this machine's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
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

// ---------------------------------------------------------------------------
// Hand-written policy modules

/// Where `lockwarden_buffer` puts the input: the upper half of the first page.
pub const INPUT: u32 = 0x8000;
/// Where the canned answer of `lockwarden_configure` lives.
const CONFIGURED: u32 = 0x100;
/// Where canned decisions live.
const CANNED: u32 = 0x200;
/// Where code-built outputs are written.
const SCRATCH: u32 = 0x400;

/// The `i64` an ABI function returns for output at `ptr` of `len` bytes.
pub fn pack(ptr: u32, len: usize) -> i64 {
    abi::Output {
        ptr,
        len: len as u32,
    }
    .pack()
}

/// A WAT string literal holding `bytes`.
fn literal(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A policy module in WAT: every part is text that a test may replace.
#[derive(Clone)]
pub struct Guest {
    /// Module fields that must come first (imports).
    pub imports: String,
    /// The `memory` export's declaration.
    pub memory: String,
    /// Body of `lockwarden_abi_version: () -> i32`.
    pub version: String,
    /// Body of `lockwarden_buffer: (param $len i32) -> i32`.
    pub buffer: String,
    /// Body of `lockwarden_configure: (param $len i32) -> i64`.
    pub configure: String,
    /// Body of `lockwarden_evaluate: (param $len i32) -> i64`.
    pub evaluate: String,
    /// More module fields (functions, globals, data, start).
    pub extra: String,
    /// The data segments of canned answers.
    data: String,
}

impl Guest {
    /// A well-behaved policy that accepts any settings and answers `decision`.
    pub fn answering(decision: &Decision) -> Guest {
        let ok = abi::encode(&abi::Configured::Ok).expect("encode");
        let (configure, data) = canned(CONFIGURED, &ok);
        Guest {
            imports: String::new(),
            memory: r#"(memory (export "memory") 1)"#.into(),
            version: format!("(i32.const {})", abi::ABI_VERSION),
            buffer: format!("(i32.const {INPUT})"),
            configure,
            evaluate: String::new(),
            extra: String::new(),
            data,
        }
        .returning(decision)
    }

    pub fn allow() -> Guest {
        Guest::answering(&Decision::Allow)
    }

    pub fn deny(reason: &str) -> Guest {
        Guest::answering(&Decision::Deny(reason.into()))
    }

    pub fn clamp(ttl_ms: u64) -> Guest {
        Guest::answering(&Decision::Clamp(ttl_ms))
    }

    /// This guest, answering `decision` from a data segment.
    pub fn returning(self, decision: &Decision) -> Guest {
        self.returning_bytes(&abi::encode(decision).expect("encode"))
    }

    /// This guest, answering `bytes` (which need not decode) as its decision.
    pub fn returning_bytes(mut self, bytes: &[u8]) -> Guest {
        let (body, data) = canned(CANNED, bytes);
        self.evaluate = body;
        self.data.push_str(&data);
        self
    }

    /// This guest with `prelude` run at the start of every evaluation.
    pub fn before_evaluate(mut self, prelude: &str) -> Guest {
        self.evaluate = format!("{prelude}\n{}", self.evaluate);
        self
    }

    /// A policy answering `Clamp(n)`, `n` counting its evaluations since
    /// instantiation, that traps when the key starts with `t`: its answers
    /// show whether the instance was rebuilt.
    pub fn counter() -> Guest {
        let mut guest = Guest::allow();
        guest.extra = "(global $n (mut i32) (i32.const 0))".into();
        guest.evaluate = format!(
            "(global.set $n (i32.add (global.get $n) (i32.const 1)))
             {trap_on_t}
             {clamp}",
            trap_on_t = if_key_starts_with(b't', "(unreachable)"),
            clamp = clamp_to("(global.get $n)"),
        );
        guest
    }

    /// A policy that loops `iterations` times (about 5 fuel each), then
    /// allows.
    pub fn busy(iterations: u32) -> Guest {
        Guest::allow().before_evaluate(&format!(
            "(local $i i32)
             (loop $l
               (local.set $i (i32.add (local.get $i) (i32.const 1)))
               (br_if $l (i32.lt_u (local.get $i) (i32.const {iterations}))))"
        ))
    }

    pub fn wat(&self) -> String {
        format!(
            r#"(module
  {imports}
  {memory}
  (func (export "lockwarden_abi_version") (result i32) {version})
  (func (export "lockwarden_buffer") (param $len i32) (result i32) {buffer})
  (func (export "lockwarden_configure") (param $len i32) (result i64) {configure})
  (func (export "lockwarden_evaluate") (param $len i32) (result i64) {evaluate})
  {extra}
  {data}
)"#,
            imports = self.imports,
            memory = self.memory,
            version = self.version,
            buffer = self.buffer,
            configure = self.configure,
            evaluate = self.evaluate,
            extra = self.extra,
            data = self.data,
        )
    }

    pub fn wasm(&self) -> Vec<u8> {
        wat::parse_str(self.wat()).unwrap_or_else(|e| panic!("{e}\n{}", self.wat()))
    }
}

/// A function body returning canned output at `at`, and the data segment
/// holding it.
fn canned(at: u32, bytes: &[u8]) -> (String, String) {
    (
        format!("(i64.const {})", pack(at, bytes.len())),
        format!(r#"(data (i32.const {at}) "{}")"#, literal(bytes)),
    )
}

/// Runs `then` if the first key byte is `byte` (keys shorter than 128 bytes:
/// the request starts with the operation and the key's one-byte length).
pub fn if_key_starts_with(byte: u8, then: &str) -> String {
    format!(
        "(if (i32.eq (i32.load8_u (i32.const {})) (i32.const {byte})) (then {then}))",
        INPUT + 2
    )
}

/// Instructions answering `Clamp(value)` for an `i32` expression below 128.
pub fn clamp_to(value: &str) -> String {
    format!(
        "(i32.store8 (i32.const {SCRATCH}) (i32.const 2))
         (i32.store8 (i32.const {}) {value})
         (i64.const {})",
        SCRATCH + 1,
        pack(SCRATCH, 2)
    )
}
