//! Scenario 8: bad input through a live server. Three corpora, each a
//! separate test (and row), all generated from a seeded RNG
//! (`LOCKWARDEN_FAULTS_SEED` replays a run):
//!
//! * (a) malformed commands: argument vectors for every lock command
//!   (`LOCK.ACQUIRE/RELEASE/EXTEND/INFO/LIST/_GRANT`, `LOCK.POLICY ...`)
//!   with wrong arity, bad owners, random bytes, huge, negative and
//!   non-decimal numbers, empty strings and option soup, each built so that
//!   it is invalid whatever else it contains; commands that are well formed
//!   but must be refused (`WRONGTYPE`, `NOTOWNER`, `NOTHELD`, `TTLMAX`,
//!   forged `LOCK._GRANT`s); random binary command names; the same inside
//!   `MULTI`/`EXEC` and Lua `redis.pcall`; and raw inline garbage on a bare
//!   socket;
//! * (b) corrupt `RESTORE` payloads: a real `DUMP` of a lock, mutated (bit
//!   flips, byte changes, truncations, insertions, RDB framing edits) with
//!   the CRC-64 recomputed so that they reach the module's decoder, and
//!   lease encodings with every invalid field (and valid ones, which must
//!   restore exactly);
//! * (c) `LOCK.POLICY LOAD` of garbage Wasm (random bytes with and without
//!   the Wasm header, corrupted and truncated real policies, bad settings,
//!   an oversized module, an existing name without `REPLACE`).
//!
//! Every reply must be an error (never a hang: 10 s per command, never a
//! dropped connection, never a success), except where noted: a mutated
//! payload or module may happen to be valid, and must then be a working
//! lock or policy, which is removed again. After every input the server
//! answers and the state set up before is unchanged: `DEBUG DIGEST`, every
//! lock's `LOCK.INFO` (but the running `ttl`/`held`) and
//! `DEBUG DIGEST-VALUE`, the waiter queued on one of them, the policies
//! (`LOCK.POLICY LIST`), `locks_held` and (for commands) the token high
//! water mark. At the end the logs hold no panic or internal error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use lockwarden_tests::locks::{PolicySpec, crc64_jones, dump, lease_offset, names, specs};
use lockwarden_tests::redis::{self, Value};
use lockwarden_tests::*;

use super::common_b::*;

/// Per-command reply bound: a malformed command never blocks.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest token, issued or accepted (RESTORE): i64::MAX.
const MAX_TOKEN: u64 = i64::MAX as u64;
/// `lockwarden.max-ttl-ms`, raised so that the fixture's locks outlive a
/// long run.
const MAX_TTL: u64 = 3_600_000;

/// The state set up before the corpus: locks (one with a waiter, one a
/// session lock on a connection of its own), a string key, a policy.
struct Fixture {
    server: Server,
    /// For the snapshots (binary keys).
    probe: std::sync::Mutex<redis::Connection>,
    /// The holders' connections, kept open (`client-connected` stays 1;
    /// the session lock stays held).
    _holders: [redis::Connection; 2],
    /// (key, owner, token) of the locks.
    locks: Vec<(Vec<u8>, Vec<u8>, u64)>,
}

const KEY_A: &[u8] = b"bi:a";
const KEY_B: &[u8] = b"bi:b";
const KEY_C: &[u8] = b"bi:\x00c";
const KEY_STR: &[u8] = b"bi:str";
const OWNER_C: &[u8] = b"o\x00\x7f \r\n";
/// The policy's key glob: no fuzzed key matches it.
const POLICY_KEYS: &str = "bi:pol:*";

fn setup(flavor: Flavor) -> Fixture {
    // No LZF compression in DUMP: the lease bytes appear verbatim.
    let server = Server::builder(flavor)
        .module_arg("max-ttl-ms", MAX_TTL.to_string())
        .arg("rdbcompression", "no")
        .start();
    let mut c = server.client();
    let grant = |c: &mut redis::Connection, args: &[&[u8]]| -> u64 {
        match call_bytes(c, args).grant() {
            Ok(Some((t, _))) => t,
            other => panic!("setup {args:?}: {other:?}"),
        }
    };
    let ta = grant(&mut c, &[b"LOCK.ACQUIRE", KEY_A, b"alice", b"3000000"]);
    assert_eq!(
        call_bytes(&mut c, &[b"LOCK.EXTEND", KEY_A, b"alice", b"3000000"]).int(),
        Some(3000000)
    );
    let tc = grant(&mut c, &[b"LOCK.ACQUIRE", KEY_C, OWNER_C, b"3000000"]);
    let mut session = server.client();
    let tb = grant(
        &mut session,
        &[b"LOCK.ACQUIRE", KEY_B, b"bob", b"3000000", b"SESSION"],
    );
    assert_eq!(call_bytes(&mut c, &[b"SET", KEY_STR, b"v"]).text(), "OK");
    // A waiter queued on bi:a for the whole test (it ends with the server).
    let mut waiter = server.client();
    // No read timeout: it must stay queued however long the corpus runs.
    waiter.set_read_timeout(None).expect("read timeout");
    std::thread::spawn(move || {
        let _ = call_bytes(
            &mut waiter,
            &[b"LOCK.ACQUIRE", KEY_A, b"waiter", b"1000", b"WAIT", b"0"],
        );
    });
    wait_until("the waiter is queued", FAULT_TIMEOUT, || {
        lw_stat(&server, "waiters") == 1
    });
    let wasm = read_policy("max-ttl");
    let load = call_bytes(
        &mut c,
        &[
            b"LOCK.POLICY",
            b"LOAD",
            b"mt",
            b"KEYS",
            POLICY_KEYS.as_bytes(),
            b"CONFIG",
            br#"{"default_ms":30000}"#,
            b"WASM",
            &wasm,
        ],
    );
    assert_eq!(load.text(), "OK", "loading the max-ttl policy");
    Fixture {
        probe: std::sync::Mutex::new(server.client()),
        server,
        _holders: [c, session],
        locks: vec![
            (KEY_A.to_vec(), b"alice".to_vec(), ta),
            (KEY_B.to_vec(), b"bob".to_vec(), tb),
            (KEY_C.to_vec(), OWNER_C.to_vec(), tc),
        ],
    }
}

fn read_policy(name: &str) -> Vec<u8> {
    let path = policy_path(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (build the policies with `make policies`)",
            path.display()
        )
    })
}

/// Text of binary arguments for failure messages: escaped, long ones cut.
fn show(args: &[Vec<u8>]) -> String {
    args.iter()
        .map(|a| {
            let shown: String = a
                .iter()
                .take(80)
                .flat_map(|&b| std::ascii::escape_default(b))
                .map(char::from)
                .collect();
            if a.len() > 80 {
                format!("\"{shown}...\" ({} bytes)", a.len())
            } else {
                format!("\"{shown}\"")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A lock's key, `LOCK.INFO` without the running fields, and digest.
type LockState = (String, Option<(Vec<u8>, Vec<(String, i64)>)>, String);

/// What must not change.
#[derive(Debug, PartialEq)]
struct Snapshot {
    digest: String,
    dbsize: String,
    locks: Vec<LockState>,
    locks_held: i64,
    waiters: i64,
    high_water: Option<i64>,
    policies: Option<Vec<PolicySpec>>,
}

fn snapshot(fx: &Fixture, with_high_water: bool, with_policies: bool) -> Snapshot {
    let s = &fx.server;
    let mut conn_locks = Vec::new();
    let mut c = fx.probe.lock().unwrap_or_else(|e| e.into_inner());
    for (key, _, _) in &fx.locks {
        let k = String::from_utf8_lossy(key).into_owned();
        let info = parse_lock_info(&match call_bytes(&mut c, &[b"LOCK.INFO", key]) {
            Reply::Value(v) => v,
            other => s.fail(&format!("LOCK.INFO {k}: {}", other.text())),
        })
        .unwrap_or_else(|e| s.fail(&e))
        .map(|i| i.stable());
        let digest = call_bytes(&mut c, &[b"DEBUG", b"DIGEST-VALUE", key]).text();
        conn_locks.push((k, info, digest));
    }
    drop(c);
    let st = lw_stats(s);
    Snapshot {
        digest: s.cmd_text(&["DEBUG", "DIGEST"]),
        dbsize: s.cmd_text(&["DBSIZE"]),
        locks: conn_locks,
        locks_held: st["locks_held"],
        waiters: st["waiters"],
        high_water: with_high_water.then(|| st["token_high_water"]),
        policies: with_policies.then(|| specs(s)),
    }
}

/// `LOCKWARDEN_FAULTS_TRACE=1`: print every input and its reply.
fn trace() -> bool {
    std::env::var_os("LOCKWARDEN_FAULTS_TRACE").is_some_and(|v| v == "1")
}

/// A connection for the corpus (10 s reply bound).
fn fuzz_conn(s: &Server) -> redis::Connection {
    let c = s.client();
    c.set_read_timeout(Some(REPLY_TIMEOUT))
        .expect("read timeout");
    c
}

// ---------------------------------------------------------------------
// (a) Malformed commands.
// ---------------------------------------------------------------------

/// Not a strictly formatted positive integer (or above i64::MAX).
const BAD_POSITIVE: &[&str] = &[
    "",
    "0",
    "00",
    "-1",
    "-0",
    "+5",
    " 5",
    "5 ",
    "1.5",
    "1e3",
    "0x10",
    "abc",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999",
    "-9223372036854775808",
    "\u{0663}",
    "5\0",
    "1 000",
    "１",
];

/// Not a strictly formatted non-negative integer.
fn bad_non_negative(rng: &mut Rng) -> Vec<u8> {
    loop {
        let v = *rng.pick(BAD_POSITIVE);
        if v != "0" && v != "00" {
            return v.as_bytes().to_vec();
        }
    }
}

fn bad_positive(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(20) {
        // Random bytes with a non-digit in them.
        let n = rng.range(1, 12) as usize;
        let mut b = rng.bytes(n);
        let at = rng.index(b.len());
        b[at] = *rng.pick(b"x-+. \0\xff");
        return b;
    }
    rng.pick(BAD_POSITIVE).as_bytes().to_vec()
}

fn good_ttl(rng: &mut Rng) -> Vec<u8> {
    rng.range(1, MAX_TTL + 1).to_string().into_bytes()
}

/// Words that are no option of any lock command, in any case.
const UNKNOWN_WORDS: &[&str] = &[
    "FENCE", "NX", "PX", "EX", "KEEPTTL", "WAITS", "SESS", "SESSIONS", "5", "-1", "", "\0",
    "WAIT\0", "TTL", "OWNER", "TOKEN", "CURSOR", "MATCH", "COUNT", "HELDMORE", "REPLACE", "ABSTTL",
];

/// A token that is no option of `known` (case-insensitively).
fn unknown_word(rng: &mut Rng, known: &[&str]) -> Vec<u8> {
    loop {
        let w: Vec<u8> = if rng.chance(30) {
            let n = rng.range(1, 16) as usize;
            rng.bytes(n)
        } else {
            rng.pick(UNKNOWN_WORDS).as_bytes().to_vec()
        };
        if !known.iter().any(|k| k.as_bytes().eq_ignore_ascii_case(&w)) {
            return w;
        }
    }
}

fn random_case(rng: &mut Rng, word: &str) -> Vec<u8> {
    word.bytes()
        .map(|b| {
            if rng.chance(50) {
                b.to_ascii_lowercase()
            } else {
                b
            }
        })
        .collect()
}

/// Any argument: random bytes, special values, long strings.
fn junk(rng: &mut Rng) -> Vec<u8> {
    match rng.below(8) {
        0 => Vec::new(),
        1 | 2 => {
            let n = rng.range(1, 24) as usize;
            rng.bytes(n)
        }
        3 => rng.pick(BAD_POSITIVE).as_bytes().to_vec(),
        4 => rng.pick(UNKNOWN_WORDS).as_bytes().to_vec(),
        5 => {
            let n = rng.range(257, 4000) as usize;
            rng.bytes(n)
        }
        6 => rng.next_u64().to_string().into_bytes(),
        _ => rng
            .pick(&[
                "WAIT", "SESSION", "FENCE", "alice", "bob", "bi:a", "bi:str", "*",
            ])
            .as_bytes()
            .to_vec(),
    }
}

/// A key: one of the fixture's, a fresh one, or random bytes (never the
/// policy's glob).
fn key(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 | 1 => rng.pick(&[KEY_A, KEY_B, KEY_C, KEY_STR]).to_vec(),
        2 => format!("bi:fz:{}", rng.below(1000)).into_bytes(),
        _ => {
            let n = rng.range(0, 40) as usize;
            let mut k = rng.bytes(n);
            if k.starts_with(b"bi:pol:") {
                k[0] = b'x';
            }
            k
        }
    }
}

fn owner_ok(rng: &mut Rng) -> Vec<u8> {
    match rng.below(3) {
        0 => rng
            .pick(&[&b"alice"[..], b"bob", OWNER_C, b"mallory"])
            .to_vec(),
        1 => {
            let n = rng.range(1, 257) as usize;
            rng.bytes(n)
        }
        _ => format!("fz-{}", rng.below(100)).into_bytes(),
    }
}

fn owner_bad(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(50) {
        Vec::new()
    } else {
        let n = rng.range(257, 600) as usize;
        rng.bytes(n)
    }
}

type Gen = fn(&mut Rng) -> Vec<u8>;

/// An option of a lock command: its name, a generator of valid values (if
/// it takes one) and of values it refuses (if there are any).
struct Opt {
    name: &'static str,
    value: Option<Gen>,
    bad: Option<Gen>,
}

/// Complete, valid options in random order and case.
fn valid_options(rng: &mut Rng, spec: &[Opt]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<Vec<u8>>> = Vec::new();
    for o in spec {
        if rng.chance(50) {
            let mut opt = vec![random_case(rng, o.name)];
            if let Some(v) = o.value {
                opt.push(v(rng));
            }
            out.push(opt);
        }
    }
    for i in (1..out.len()).rev() {
        let j = rng.index(i + 1);
        out.swap(i, j);
    }
    out.into_iter().flatten().collect()
}

/// Makes a complete option list invalid, whatever it holds: an unknown
/// word anywhere (between an option and its value it becomes the value,
/// and the value an unknown option), an option without its value at the
/// end, an option with a value it refuses (or a duplicate), or a duplicate.
fn poison_options(rng: &mut Rng, mut opts: Vec<Vec<u8>>, spec: &[Opt]) -> Vec<Vec<u8>> {
    let known: Vec<&str> = spec.iter().map(|o| o.name).collect();
    let unknown_anywhere = |rng: &mut Rng, opts: &mut Vec<Vec<u8>>| {
        let at = rng.index(opts.len() + 1);
        opts.insert(at, unknown_word(rng, &known));
    };
    let with_value: Vec<&Opt> = spec.iter().filter(|o| o.value.is_some()).collect();
    let with_bad: Vec<&Opt> = spec.iter().filter(|o| o.bad.is_some()).collect();
    match rng.below(4) {
        0 => unknown_anywhere(rng, &mut opts),
        1 if !with_value.is_empty() => {
            let o = *rng.pick(&with_value);
            opts.push(random_case(rng, o.name));
        }
        2 if !with_bad.is_empty() => {
            let o = *rng.pick(&with_bad);
            opts.push(random_case(rng, o.name));
            opts.push((o.bad.expect("bad values"))(rng));
        }
        3 => {
            let o = rng.pick(spec);
            if opts
                .iter()
                .any(|a| a.eq_ignore_ascii_case(o.name.as_bytes()))
            {
                opts.push(random_case(rng, o.name));
                if let Some(v) = o.value {
                    opts.push(v(rng));
                }
            } else {
                unknown_anywhere(rng, &mut opts);
            }
        }
        _ => unknown_anywhere(rng, &mut opts),
    }
    opts
}

fn wait_value(rng: &mut Rng) -> Vec<u8> {
    rng.range(0, 100_000).to_string().into_bytes()
}

fn token_value(rng: &mut Rng) -> Vec<u8> {
    rng.range(1, i64::MAX as u64).to_string().into_bytes()
}

fn count_value(rng: &mut Rng) -> Vec<u8> {
    rng.range(1, 10_001).to_string().into_bytes()
}

fn bad_count(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(40) {
        rng.pick(&["0", "10001", "99999", "18446744073709551615"])
            .as_bytes()
            .to_vec()
    } else {
        bad_non_negative(rng)
    }
}

/// Not an unsigned 64-bit decimal.
fn bad_cursor(rng: &mut Rng) -> Vec<u8> {
    rng.pick(&[
        "",
        "-1",
        "+1",
        " 1",
        "1.5",
        "abc",
        "0x1",
        "18446744073709551616",
        "99999999999999999999",
    ])
    .as_bytes()
    .to_vec()
}

fn glob_value(rng: &mut Rng) -> Vec<u8> {
    rng.pick(&["*", "bi:*", "bi:?", "[a-z]*", "\\*", "bi:fz:1*"])
        .as_bytes()
        .to_vec()
}

fn cursor_value(rng: &mut Rng) -> Vec<u8> {
    rng.below(1 << 20).to_string().into_bytes()
}

const ACQUIRE_OPTS: &[Opt] = &[
    Opt {
        name: "WAIT",
        value: Some(wait_value),
        bad: Some(bad_non_negative),
    },
    Opt {
        name: "SESSION",
        value: None,
        bad: None,
    },
];
const FENCE_OPTS: &[Opt] = &[Opt {
    name: "FENCE",
    value: Some(token_value),
    bad: Some(bad_positive),
}];
const LIST_OPTS: &[Opt] = &[
    Opt {
        name: "CURSOR",
        value: Some(cursor_value),
        bad: Some(bad_cursor),
    },
    Opt {
        name: "MATCH",
        value: Some(glob_value),
        bad: None,
    },
    Opt {
        name: "HELDMORE",
        value: Some(wait_value),
        bad: Some(bad_non_negative),
    },
    Opt {
        name: "COUNT",
        value: Some(count_value),
        bad: Some(bad_count),
    },
];

fn cmd(name: &str, rest: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut v = vec![name.as_bytes().to_vec()];
    v.extend(rest);
    v
}

/// A malformed `LOCK.ACQUIRE`.
fn bad_acquire(rng: &mut Rng) -> Vec<Vec<u8>> {
    let name = if rng.chance(20) {
        "lock.acquire"
    } else {
        "LOCK.ACQUIRE"
    };
    let rest = match rng.below(4) {
        0 => {
            let n = rng.below(3) as usize;
            (0..n).map(|_| junk(rng)).collect()
        }
        1 => {
            let mut v = vec![
                key(rng),
                owner_bad(rng),
                if rng.chance(50) {
                    good_ttl(rng)
                } else {
                    junk(rng)
                },
            ];
            v.extend(valid_options(rng, ACQUIRE_OPTS));
            v
        }
        2 => {
            let mut v = vec![key(rng), owner_ok(rng), bad_positive(rng)];
            v.extend(valid_options(rng, ACQUIRE_OPTS));
            v
        }
        _ => {
            let mut v = vec![key(rng), owner_ok(rng), good_ttl(rng)];
            let opts = valid_options(rng, ACQUIRE_OPTS);
            v.extend(poison_options(rng, opts, ACQUIRE_OPTS));
            v
        }
    };
    cmd(name, rest)
}

/// A malformed `LOCK.RELEASE` or `LOCK.EXTEND`.
fn bad_release_extend(rng: &mut Rng, extend: bool) -> Vec<Vec<u8>> {
    let name = if extend {
        "LOCK.EXTEND"
    } else {
        "LOCK.RELEASE"
    };
    let positional = if extend { 3 } else { 2 };
    let head = |k: Vec<u8>, owner: Vec<u8>, ttl: Vec<u8>| {
        let mut v = vec![k, owner];
        if extend {
            v.push(ttl);
        }
        v
    };
    let rest = match rng.below(4) {
        0 => {
            let n = rng.below(positional) as usize;
            (0..n).map(|_| junk(rng)).collect()
        }
        1 => {
            let (k, o, ttl) = (key(rng), owner_bad(rng), good_ttl(rng));
            let mut v = head(k, o, ttl);
            v.extend(valid_options(rng, FENCE_OPTS));
            v
        }
        2 if extend => {
            let (k, o, ttl) = (key(rng), owner_ok(rng), bad_positive(rng));
            let mut v = head(k, o, ttl);
            v.extend(valid_options(rng, FENCE_OPTS));
            v
        }
        _ => {
            let (k, o, ttl) = (key(rng), owner_ok(rng), good_ttl(rng));
            let mut v = head(k, o, ttl);
            let opts = valid_options(rng, FENCE_OPTS);
            v.extend(poison_options(rng, opts, FENCE_OPTS));
            v
        }
    };
    cmd(name, rest)
}

fn bad_info(rng: &mut Rng) -> Vec<Vec<u8>> {
    let n = if rng.chance(30) {
        0
    } else {
        rng.range(2, 6) as usize
    };
    cmd("LOCK.INFO", (0..n).map(|_| junk(rng)).collect())
}

fn bad_list(rng: &mut Rng) -> Vec<Vec<u8>> {
    let opts = valid_options(rng, LIST_OPTS);
    cmd("LOCK.LIST", poison_options(rng, opts, LIST_OPTS))
}

/// `LOCK._GRANT` from a client: always refused, forged or not.
fn forged_grant(rng: &mut Rng, fx: &Fixture) -> Vec<Vec<u8>> {
    let now = now_ms();
    let (k, _, t) = rng.pick(&fx.locks).clone();
    let tok = (t + rng.range(1, 1000)).to_string();
    let rest = match rng.below(4) {
        0 => vec![
            k,
            b"mallory".to_vec(),
            format!("{tok}:{}:{now}:0:0", now + 100_000).into_bytes(),
        ],
        1 => vec![
            key(rng),
            owner_ok(rng),
            tok.into_bytes(),
            (now + 100_000).to_string().into_bytes(),
            now.to_string().into_bytes(),
            b"0".to_vec(),
        ],
        2 => vec![
            k,
            b"mallory".to_vec(),
            b"1:9223372036854775807:0:0:1".to_vec(),
            b"SESSION".to_vec(),
        ],
        _ => {
            let n = rng.below(8) as usize;
            (0..n).map(|_| junk(rng)).collect()
        }
    };
    cmd("LOCK._GRANT", rest)
}

/// A malformed `LOCK.POLICY` command (framing only: nothing is compiled).
fn bad_policy(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut v = vec![b"LOCK.POLICY".to_vec()];
    match rng.below(7) {
        0 => {}
        1 => {
            let mut sub = unknown_word(rng, &["LOAD", "UNLOAD", "LIST", "EVAL", "HELP"]);
            if sub.is_empty() {
                sub = b"NOPE".to_vec();
            }
            v.push(sub);
            let n = rng.below(4) as usize;
            v.extend((0..n).map(|_| junk(rng)));
        }
        2 => {
            v.push(random_case(rng, "UNLOAD"));
            if rng.chance(50) {
                let n = rng.range(2, 5) as usize;
                v.extend((0..n).map(|_| junk(rng)));
            }
        }
        3 => {
            v.push(random_case(rng, "LIST"));
            let n = rng.range(1, 4) as usize;
            v.extend((0..n).map(|_| junk(rng)));
        }
        4 => {
            v.push(random_case(rng, "EVAL"));
            let name = if rng.chance(50) {
                b"mt".to_vec()
            } else {
                junk(rng)
            };
            let ops = ["ACQUIRE", "EXTEND", "RELEASE"];
            let op_name = *rng.pick(&ops);
            let op = random_case(rng, op_name);
            match rng.below(4) {
                0 => {
                    let n = *rng.pick(&[0usize, 1, 2, 3, 4, 6, 7]);
                    v.extend((0..n).map(|_| junk(rng)));
                }
                1 => v.extend([
                    name,
                    unknown_word(rng, &ops),
                    key(rng),
                    owner_ok(rng),
                    good_ttl(rng),
                ]),
                2 => v.extend([name, op, key(rng), owner_bad(rng), good_ttl(rng)]),
                _ => v.extend([name, op, key(rng), owner_ok(rng), bad_non_negative(rng)]),
            }
        }
        _ => {
            // LOAD with broken framing; the module bytes are junk too.
            v.push(random_case(rng, "LOAD"));
            let n = rng.range(0, 64) as usize;
            let wasm = rng.bytes(n);
            let name = format!("fz{}", rng.below(100)).into_bytes();
            match rng.below(6) {
                0 => v.extend([name, b"KEYS".to_vec(), b"*".to_vec()]), // no WASM
                1 => v.extend([name, b"WASM".to_vec()]),                // WASM without bytes
                2 => v.extend([name, b"WASM".to_vec(), wasm.clone(), wasm]),
                3 => v.extend([b"WASM".to_vec(), wasm]), // no name
                4 => v.extend([
                    name,
                    b"MODE".to_vec(),
                    unknown_word(rng, &["enforce", "audit"]),
                    b"WASM".to_vec(),
                    wasm,
                ]),
                _ => v.extend([
                    name,
                    unknown_word(rng, &["KEYS", "MODE", "CONFIG", "REPLACE", "WASM"]),
                    b"WASM".to_vec(),
                    wasm,
                ]),
            }
        }
    }
    v
}

/// Well-formed commands that must be refused: `WRONGTYPE`, `NOTOWNER`,
/// `NOTHELD`, `TTLMAX`.
fn refused(rng: &mut Rng, fx: &Fixture) -> (Vec<Vec<u8>>, &'static str) {
    let (k, owner, token) = rng.pick(&fx.locks).clone();
    let fence_opt = |rng: &mut Rng, t: u64| -> Vec<Vec<u8>> {
        if rng.chance(50) {
            vec![b"FENCE".to_vec(), t.to_string().into_bytes()]
        } else {
            vec![]
        }
    };
    match rng.below(6) {
        0 => {
            let c = *rng.pick(&["LOCK.ACQUIRE", "LOCK.RELEASE", "LOCK.EXTEND"]);
            let mut v = vec![KEY_STR.to_vec(), owner_ok(rng)];
            if c != "LOCK.RELEASE" {
                v.push(good_ttl(rng));
            }
            (cmd(c, v), "WRONGTYPE")
        }
        1 => {
            // Another owner.
            let mut other = owner_ok(rng);
            if other == owner {
                other = b"mallory".to_vec();
            }
            let c = *rng.pick(&["LOCK.RELEASE", "LOCK.EXTEND"]);
            let mut v = vec![k, other];
            if c == "LOCK.EXTEND" {
                v.push(good_ttl(rng));
            }
            v.extend(fence_opt(rng, token));
            (cmd(c, v), "NOTOWNER")
        }
        2 => {
            // The holder with a stale or future token.
            let wrong = if rng.chance(50) {
                token - rng.range(1, 1000)
            } else {
                token + rng.range(1, 1000)
            };
            let c = *rng.pick(&["LOCK.RELEASE", "LOCK.EXTEND"]);
            let mut v = vec![k, owner];
            if c == "LOCK.EXTEND" {
                v.push(good_ttl(rng));
            }
            v.extend([b"FENCE".to_vec(), wrong.to_string().into_bytes()]);
            (cmd(c, v), "NOTOWNER")
        }
        3 => {
            let c = *rng.pick(&["LOCK.RELEASE", "LOCK.EXTEND"]);
            let mut v = vec![
                format!("bi:none:{}", rng.below(1000)).into_bytes(),
                owner_ok(rng),
            ];
            if c == "LOCK.EXTEND" {
                v.push(good_ttl(rng));
            }
            v.extend(fence_opt(rng, token));
            (cmd(c, v), "NOTHELD")
        }
        4 => {
            // The holder extends beyond the maximum.
            let ttl = rng
                .range(MAX_TTL + 1, i64::MAX as u64)
                .to_string()
                .into_bytes();
            let mut v = vec![k, owner, ttl];
            v.extend(fence_opt(rng, token));
            (cmd("LOCK.EXTEND", v), "TTLMAX")
        }
        _ => {
            // A free lock asked for beyond the maximum.
            let ttl = rng
                .range(MAX_TTL + 1, i64::MAX as u64)
                .to_string()
                .into_bytes();
            let mut v = vec![
                format!("bi:fz:{}", rng.below(1000)).into_bytes(),
                owner_ok(rng),
                ttl,
            ];
            if rng.chance(30) {
                v.push(b"SESSION".to_vec());
            }
            (cmd("LOCK.ACQUIRE", v), "TTLMAX")
        }
    }
}

/// A command name that is no command (it starts with a control byte).
fn garbage_command(rng: &mut Rng) -> Vec<Vec<u8>> {
    let mut name = vec![rng.range(1, 9) as u8];
    let n = rng.range(0, 20) as usize;
    name.extend(rng.bytes(n));
    let mut v = vec![name];
    let n = rng.below(6) as usize;
    v.extend((0..n).map(|_| junk(rng)));
    v
}

/// One malformed or refused command and the error code it must get
/// (`None`: any error).
fn malformed(rng: &mut Rng, fx: &Fixture) -> (Vec<Vec<u8>>, Option<&'static str>) {
    match rng.below(100) {
        0..=17 => (bad_acquire(rng), None),
        18..=29 => (bad_release_extend(rng, false), None),
        30..=41 => (bad_release_extend(rng, true), None),
        42..=45 => (bad_info(rng), None),
        46..=52 => (bad_list(rng), None),
        53..=58 => (forged_grant(rng, fx), None),
        59..=68 => (bad_policy(rng), None),
        69..=89 => {
            let (c, code) = refused(rng, fx);
            (c, Some(code))
        }
        _ => (garbage_command(rng), None),
    }
}

/// A RESP2 reply, binary-safe (Redis echoes raw argument bytes in some
/// errors, e.g. `unknown command '\x07...'`, which the `redis` crate
/// refuses to parse).
#[derive(Debug)]
enum Resp {
    Simple(Vec<u8>),
    Error(Vec<u8>),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    fn text(&self) -> String {
        match self {
            Resp::Simple(b) | Resp::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            Resp::Error(b) => format!("(error) {}", String::from_utf8_lossy(b)),
            Resp::Int(i) => i.to_string(),
            Resp::Bulk(None) | Resp::Array(None) => "(nil)".into(),
            Resp::Array(Some(items)) => {
                format!(
                    "[{}]",
                    items.iter().map(Resp::text).collect::<Vec<_>>().join(" ")
                )
            }
        }
    }
}

/// A plain socket speaking RESP2, with a read timeout: a reply that does
/// not come is an error, not a hang.
struct RawConn {
    stream: std::io::BufReader<TcpStream>,
}

impl RawConn {
    fn connect(s: &Server) -> RawConn {
        let stream = TcpStream::connect(s.addr()).expect("connect");
        stream
            .set_read_timeout(Some(REPLY_TIMEOUT))
            .expect("read timeout");
        RawConn {
            stream: std::io::BufReader::new(stream),
        }
    }

    fn send(&mut self, cmds: &[&[Vec<u8>]]) -> std::io::Result<()> {
        let mut out = Vec::new();
        for args in cmds {
            out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
            for a in *args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a);
                out.extend_from_slice(b"\r\n");
            }
        }
        self.stream.get_mut().write_all(&out)
    }

    fn line(&mut self) -> Result<Vec<u8>, String> {
        use std::io::BufRead;
        let mut line = Vec::new();
        match self.stream.read_until(b'\n', &mut line) {
            Ok(0) => Err("connection closed".into()),
            Ok(_) if line.ends_with(b"\r\n") => {
                line.truncate(line.len() - 2);
                Ok(line)
            }
            Ok(_) => Err(format!("truncated reply line {line:?}")),
            Err(e) => Err(format!("no reply: {e}")),
        }
    }

    fn read(&mut self) -> Result<Resp, String> {
        let line = self.line()?;
        let (kind, rest) = line.split_first().ok_or("empty reply line")?;
        let num = || -> Result<i64, String> {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| format!("bad length {rest:?}"))
        };
        Ok(match kind {
            b'+' => Resp::Simple(rest.to_vec()),
            b'-' => Resp::Error(rest.to_vec()),
            b':' => Resp::Int(num()?),
            b'$' => match num()? {
                -1 => Resp::Bulk(None),
                n => {
                    let mut b = vec![0u8; n as usize + 2];
                    self.stream
                        .read_exact(&mut b)
                        .map_err(|e| format!("no reply: {e}"))?;
                    b.truncate(n as usize);
                    Resp::Bulk(Some(b))
                }
            },
            b'*' => match num()? {
                -1 => Resp::Array(None),
                n => Resp::Array(Some((0..n).map(|_| self.read()).collect::<Result<_, _>>()?)),
            },
            other => return Err(format!("unknown reply type {other:?} in {line:?}")),
        })
    }

    fn request(&mut self, args: &[Vec<u8>]) -> Result<Resp, String> {
        self.send(&[args]).map_err(|e| format!("send: {e}"))?;
        self.read()
    }
}

/// Sends one input and checks that it is refused: `Ok(error text)`, or
/// `Err(what went wrong)`.
fn expect_error(
    conn: &mut RawConn,
    args: &[Vec<u8>],
    code: Option<&str>,
) -> Result<String, String> {
    match conn.request(args) {
        Ok(Resp::Error(e)) => {
            let text = String::from_utf8_lossy(&e).into_owned();
            let got = text.split(' ').next().unwrap_or("");
            match code {
                Some(want) if want != got => Err(format!("expected a {want} error, got {text}")),
                _ => Ok(text),
            }
        }
        Ok(other) => Err(format!("a malformed command succeeded: {}", other.text())),
        Err(e) => Err(format!("no reply (hang or dropped connection): {e}")),
    }
}

/// Runs `inputs` commands of the corpus; returns the count.
fn command_corpus(fx: &Fixture, rng: &mut Rng, inputs: usize, before: &Snapshot) -> u64 {
    let s = &fx.server;
    let mut conn = RawConn::connect(s);
    let mut ops = 0u64;
    for i in 0..inputs {
        let kind = rng.below(100);
        let (what, outcome): (String, Result<String, String>) = if kind < 88 {
            let (args, code) = malformed(rng, fx);
            let r = expect_error(&mut conn, &args, code);
            ops += 1;
            (show(&args), r)
        } else if kind < 94 {
            // The same inside MULTI/EXEC: queued, then every reply an error
            // (or the transaction aborted).
            let n = rng.range(1, 4) as usize;
            let cmds: Vec<(Vec<Vec<u8>>, Option<&str>)> =
                (0..n).map(|_| malformed(rng, fx)).collect();
            let multi = vec![b"MULTI".to_vec()];
            let exec = vec![b"EXEC".to_vec()];
            let mut all: Vec<&[Vec<u8>]> = vec![&multi];
            all.extend(cmds.iter().map(|(a, _)| a.as_slice()));
            all.push(&exec);
            ops += n as u64 + 2;
            let what = format!(
                "MULTI; {}; EXEC",
                cmds.iter()
                    .map(|(a, _)| show(a))
                    .collect::<Vec<_>>()
                    .join("; ")
            );
            let r = conn
                .send(&all)
                .map_err(|e| format!("send: {e}"))
                .and_then(|()| {
                    (0..n + 2)
                        .map(|_| conn.read())
                        .collect::<Result<Vec<_>, _>>()
                })
                .map_err(|e| format!("no reply (hang or dropped connection): {e}"))
                .and_then(|replies| match replies.last() {
                    Some(Resp::Array(Some(items)))
                        if items.iter().all(|v| matches!(v, Resp::Error(_))) =>
                    {
                        Ok("all errors".into())
                    }
                    // A command refused at queue time aborts the transaction.
                    Some(Resp::Error(e)) if e.starts_with(b"EXECABORT") => Ok("EXECABORT".into()),
                    other => Err(format!("EXEC replied {:?}", other.map(Resp::text))),
                });
            (what, r)
        } else {
            // From a script, with redis.pcall: the error comes back.
            let (args, _) = malformed(rng, fx);
            let mut eval = vec![
                b"EVAL".to_vec(),
                b"return redis.pcall(unpack(ARGV))".to_vec(),
                b"0".to_vec(),
            ];
            eval.extend(args.iter().cloned());
            ops += 1;
            // Inside a script a command may also be refused for being in
            // a script: any error will do.
            (show(&eval), expect_error(&mut conn, &eval, None))
        };
        if trace() {
            eprintln!("input {i}: {what} -> {outcome:?}");
        }
        if let Err(e) = outcome {
            s.fail(&format!("input {i}: {what}\n  -> {e}"));
        }
        let after = snapshot(fx, true, i % 25 == 0 || what.contains("LOCK.POLICY"));
        let expected = Snapshot {
            policies: after.policies.as_ref().and(before.policies.clone()),
            ..snapshot_clone(before)
        };
        if after != expected {
            s.fail(&format!(
                "input {i} changed the state: {what}\nbefore: {expected:?}\nafter:  {after:?}"
            ));
        }
    }
    ops
}

fn snapshot_clone(s: &Snapshot) -> Snapshot {
    Snapshot {
        digest: s.digest.clone(),
        dbsize: s.dbsize.clone(),
        locks: s.locks.clone(),
        locks_held: s.locks_held,
        waiters: s.waiters,
        high_water: s.high_water,
        policies: s.policies.clone(),
    }
}

/// Raw inline garbage on a bare socket: each line must get an error reply
/// (the server may then close the connection); never a hang.
fn inline_garbage(fx: &Fixture, rng: &mut Rng, inputs: usize) -> u64 {
    let s = &fx.server;
    let connect = || {
        let t = TcpStream::connect(s.addr()).expect("connect");
        t.set_read_timeout(Some(REPLY_TIMEOUT)).expect("timeout");
        t
    };
    let mut sock = connect();
    for i in 0..inputs {
        let mut line = Vec::new();
        if rng.chance(30) {
            // A lock command with an argument that is no number.
            line.extend_from_slice(b"LOCK.ACQUIRE bi:a mallory ");
            line.extend_from_slice(rng.pick(&["abc", "-5", "1.5", "0", "+1"]).as_bytes());
        } else {
            // A control byte first: never a command name.
            line.push(rng.range(1, 9) as u8);
            let n = rng.range(0, 200) as usize;
            line.extend(
                rng.bytes(n)
                    .into_iter()
                    // Redis finds the end of an inline line with strchr: a NUL
                    // would make it wait for the rest of the line.
                    .filter(|&b| b != b'\n' && b != b'\r' && b != 0),
            );
        }
        line.extend_from_slice(b"\r\n");
        sock.write_all(&line).expect("write inline garbage");
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        let started = Instant::now();
        while !reply.ends_with(b"\r\n") {
            match sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
                Err(e) => s.fail(&format!(
                    "inline input {i} {:?}: no reply after {:?}: {e}",
                    String::from_utf8_lossy(&line),
                    started.elapsed()
                )),
            }
        }
        if !reply.starts_with(b"-") {
            s.fail(&format!(
                "inline input {i} {:?} replied {:?}",
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&reply)
            ));
        }
        if reply.is_empty() || String::from_utf8_lossy(&reply).contains("Protocol error") {
            sock = connect();
        }
    }
    inputs as u64
}

// ---------------------------------------------------------------------
// (b) Corrupt RESTORE payloads.
// ---------------------------------------------------------------------

/// Appends the RDB version and the CRC-64 of everything before it.
fn seal(mut body: Vec<u8>, version: [u8; 2]) -> Vec<u8> {
    body.extend_from_slice(&version);
    let crc = crc64_jones(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    body
}

/// An RDB string length.
fn rdb_len(n: usize) -> Vec<u8> {
    if n < 64 {
        vec![n as u8]
    } else if n < 16384 {
        vec![0x40 | (n >> 8) as u8, n as u8]
    } else {
        let mut v = vec![0x80];
        v.extend_from_slice(&(n as u32).to_be_bytes());
        v
    }
}

/// The fields of an encoded lease (version 1 layout: version, token,
/// deadline, acquired-at, extensions, flags, client id, little-endian, then
/// the owner).
#[derive(Clone, Debug)]
struct LeaseFields {
    version: u8,
    token: u64,
    deadline: i64,
    acquired: i64,
    extensions: u32,
    flags: u8,
    client_id: u64,
    owner: Vec<u8>,
}

const LEASE_HEADER: usize = 38;

impl LeaseFields {
    fn encode(&self) -> Vec<u8> {
        let mut v = vec![self.version];
        v.extend_from_slice(&self.token.to_le_bytes());
        v.extend_from_slice(&self.deadline.to_le_bytes());
        v.extend_from_slice(&self.acquired.to_le_bytes());
        v.extend_from_slice(&self.extensions.to_le_bytes());
        v.push(self.flags);
        v.extend_from_slice(&self.client_id.to_le_bytes());
        v.extend_from_slice(&self.owner);
        v
    }

    /// Whether the lease rules (docs/COMMANDS.md; lockwarden_core::lease)
    /// accept it.
    fn valid(&self) -> bool {
        self.version == 1
            && self.flags & !1 == 0
            && (1..=MAX_TOKEN).contains(&self.token)
            && (1..=256).contains(&self.owner.len())
            && [self.deadline, self.acquired]
                .iter()
                .all(|t| t.unsigned_abs() <= 1 << 50)
    }
}

/// A real DUMP split around the lease string.
struct DumpParts {
    /// Everything before the lease string's length.
    prefix: Vec<u8>,
    /// The lease.
    lease: Vec<u8>,
    /// After the lease, before the version: the module EOF opcode.
    suffix: Vec<u8>,
    version: [u8; 2],
}

impl DumpParts {
    fn with_lease(&self, lease: &[u8]) -> Vec<u8> {
        let mut body = self.prefix.clone();
        body.extend(rdb_len(lease.len()));
        body.extend_from_slice(lease);
        body.extend_from_slice(&self.suffix);
        seal(body, self.version)
    }
}

fn split_dump(payload: &[u8], token: u64) -> DumpParts {
    let n = payload.len();
    let at = lease_offset(payload, token);
    let len = payload[at - 1] as usize;
    assert!(
        (LEASE_HEADER..64).contains(&len),
        "lease length byte {len} in {payload:?}"
    );
    let parts = DumpParts {
        prefix: payload[..at - 1].to_vec(),
        lease: payload[at..at + len].to_vec(),
        suffix: payload[at + len..n - 10].to_vec(),
        version: [payload[n - 10], payload[n - 9]],
    };
    assert_eq!(
        parts.with_lease(&parts.lease),
        payload,
        "re-encoding the DUMP"
    );
    parts
}

fn decode_fields(lease: &[u8]) -> LeaseFields {
    let u64_at = |i: usize| u64::from_le_bytes(lease[i..i + 8].try_into().unwrap());
    LeaseFields {
        version: lease[0],
        token: u64_at(1),
        deadline: u64_at(9) as i64,
        acquired: u64_at(17) as i64,
        extensions: u32::from_le_bytes(lease[25..29].try_into().unwrap()),
        flags: lease[29],
        client_id: u64_at(30),
        owner: lease[LEASE_HEADER..].to_vec(),
    }
}

/// What a RESTORE of a payload must do.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Refused.
    Error,
    /// Refused, or (a mutation that happens to be valid) a working lock.
    ErrorOrLock,
    /// Restored, with exactly these fields.
    Lock,
}

/// One RESTORE input: payload, expectation, description.
fn restore_input(
    rng: &mut Rng,
    dump: &[u8],
    parts: &DumpParts,
) -> (Vec<u8>, Expect, String, Option<LeaseFields>) {
    let body_len = dump.len() - 10;
    let body = &dump[..body_len];
    match rng.below(12) {
        0 | 1 => {
            let mut b = body.to_vec();
            let flips = rng.range(1, 5);
            for _ in 0..flips {
                let at = rng.index(b.len());
                b[at] ^= 1 << rng.below(8);
            }
            (
                seal(b, parts.version),
                Expect::ErrorOrLock,
                format!("{flips} bit flips"),
                None,
            )
        }
        2 => {
            let mut b = body.to_vec();
            let at = rng.index(b.len());
            let random = rng.next_u64() as u8;
            b[at] = *rng.pick(&[0u8, 0xff, 0x7f, 0x80, 0x40, 0xc0, 0x01, random]);
            (
                seal(b, parts.version),
                Expect::ErrorOrLock,
                format!("byte {at} changed"),
                None,
            )
        }
        3 => {
            // Truncated. Redis parses the object from the whole payload,
            // footer included: the version bytes can complete a truncated
            // lease (and serve as the module EOF), so a valid lock may
            // come out.
            let k = rng.index(body_len);
            (
                seal(body[..k].to_vec(), parts.version),
                Expect::ErrorOrLock,
                format!("truncated to {k} bytes"),
                None,
            )
        }
        4 => {
            let mut b = body.to_vec();
            let at = rng.range(1, b.len() as u64 + 1) as usize;
            let n = rng.range(1, 65) as usize;
            let extra = rng.bytes(n);
            b.splice(at..at, extra);
            (
                seal(b, parts.version),
                Expect::ErrorOrLock,
                format!("{n} bytes inserted at {at}"),
                None,
            )
        }
        5 => {
            // RDB framing: the module id, the opcode, the EOF marker, the
            // version, data after the value.
            let mut b = body.to_vec();
            let (what, expect) = match rng.below(5) {
                0 => {
                    let at = rng.range(1, 10) as usize;
                    b[at] ^= 0x5a;
                    ("module id changed", Expect::Error)
                }
                1 => {
                    let at = parts.prefix.len() - 1;
                    b[at] = *rng.pick(&[0u8, 1, 2, 3, 4, 6, 0x3f]);
                    ("module opcode changed", Expect::Error)
                }
                2 => {
                    let last = b.len() - 1;
                    b[last] = *rng.pick(&[1u8, 2, 5, 0xff]);
                    ("module EOF changed", Expect::Error)
                }
                3 => {
                    let last = b.len() - 1;
                    b.splice(last..last, [2u8, 7]);
                    ("unread module data before EOF", Expect::Error)
                }
                _ => {
                    b[0] = *rng.pick(&[0u8, 6, 5, 0x40, 0xff]);
                    ("object type changed", Expect::Error)
                }
            };
            (seal(b, parts.version), expect, what.to_string(), None)
        }
        6 => {
            // A newer RDB version than the server's: refused.
            let v = [0xff, rng.next_u64() as u8];
            (
                seal(body.to_vec(), v),
                Expect::Error,
                "RDB version from the future".into(),
                None,
            )
        }
        7 => {
            // Bad CRC.
            let mut p = dump.to_vec();
            let at = dump.len() - 1 - rng.index(8);
            p[at] ^= 1 << rng.below(8);
            (p, Expect::Error, "bad CRC".into(), None)
        }
        _ => lease_input(rng, parts),
    }
}

/// A lease encoding with one invalid field, or a valid one (then it must
/// restore exactly).
fn lease_input(rng: &mut Rng, parts: &DumpParts) -> (Vec<u8>, Expect, String, Option<LeaseFields>) {
    let now = now_ms();
    let mut f = decode_fields(&parts.lease);
    // Start from a random valid lease.
    f.token = if rng.chance(80) {
        rng.range(1, 1 << 53)
    } else {
        rng.range(1, MAX_TOKEN + 1)
    };
    f.acquired = now - rng.range(0, 100_000) as i64;
    f.deadline = if rng.chance(70) {
        now + rng.range(5_000, 100_000) as i64
    } else {
        f.acquired + rng.range(0, 1000) as i64
    };
    f.extensions = rng.next_u64() as u32;
    f.flags = rng.below(2) as u8;
    f.client_id = rng.next_u64();
    let n = rng.range(1, 257) as usize;
    f.owner = rng.bytes(n);
    let (what, lease) = match rng.below(10) {
        0 => {
            f.version = *rng.pick(&[0u8, 2, 9, 0xff]);
            ("version", f.encode())
        }
        1 => {
            f.flags = 1 << rng.range(1, 8);
            ("flags", f.encode())
        }
        2 => {
            f.token = 0;
            ("token 0", f.encode())
        }
        3 => {
            f.token = rng.range(MAX_TOKEN + 1, u64::MAX);
            ("token above i64::MAX", f.encode())
        }
        4 => {
            let n = if rng.chance(50) {
                0
            } else {
                rng.range(257, 1000) as usize
            };
            f.owner = rng.bytes(n);
            ("owner length", f.encode())
        }
        5 => {
            // Valid: a holder extending on a node whose clock is behind the
            // one that granted the lock gets such a lease.
            f.acquired = f.deadline + rng.range(1, 1 << 40) as i64;
            ("valid, deadline before acquisition", f.encode())
        }
        6 => {
            let k = rng.index(LEASE_HEADER);
            ("shorter than the header", f.encode()[..k].to_vec())
        }
        _ => ("valid", f.encode()),
    };
    let expect = if what.starts_with("valid") {
        assert!(f.valid(), "{f:?}");
        Expect::Lock
    } else {
        Expect::Error
    };
    let desc = format!("lease: {what} ({} bytes)", lease.len());
    (
        parts.with_lease(&lease),
        expect,
        desc,
        (expect == Expect::Lock).then_some(f),
    )
}

// ---------------------------------------------------------------------
// (c) Garbage policies.
// ---------------------------------------------------------------------

const WASM_HEADER: &[u8] = b"\0asm\x01\0\0\0";

/// One `LOCK.POLICY LOAD` input and whether it may be a valid module.
fn policy_input(rng: &mut Rng, real: &[u8]) -> (Vec<Vec<u8>>, bool, String) {
    let name = if rng.chance(20) {
        b"mt".to_vec()
    } else {
        format!("fz{}", rng.below(1000)).into_bytes()
    };
    let mut args = vec![b"LOCK.POLICY".to_vec(), b"LOAD".to_vec(), name];
    if rng.chance(30) {
        args.extend([b"KEYS".to_vec(), glob_value(rng)]);
    }
    if rng.chance(20) {
        args.extend([
            b"MODE".to_vec(),
            rng.pick(&[&b"enforce"[..], b"audit"]).to_vec(),
        ]);
    }
    if rng.chance(40) {
        args.push(b"REPLACE".to_vec());
    }
    let (wasm, config, may_load, what): (Vec<u8>, Option<Vec<u8>>, bool, String) =
        match rng.below(10) {
            0..=3 => {
                let n = if rng.chance(5) {
                    65536
                } else {
                    rng.range(0, 4096) as usize
                };
                (rng.bytes(n), None, false, format!("{n} random bytes"))
            }
            4..=6 => {
                let mut w = WASM_HEADER.to_vec();
                let n = rng.range(0, 2048) as usize;
                w.extend(rng.bytes(n));
                (w, None, false, format!("Wasm header + {n} random bytes"))
            }
            7 => {
                // A real policy with flipped bits: usually invalid; if it
                // compiles it is a (strange) valid module.
                let mut w = real.to_vec();
                let flips = rng.range(1, 9);
                for _ in 0..flips {
                    let at = rng.index(w.len());
                    w[at] ^= 1 << rng.below(8);
                }
                (
                    w,
                    Some(br#"{"default_ms":1000}"#.to_vec()),
                    true,
                    format!("max-ttl with {flips} bit flips"),
                )
            }
            8 => {
                let k = rng.range(0, real.len() as u64) as usize;
                (
                    real[..k].to_vec(),
                    Some(br#"{"default_ms":1000}"#.to_vec()),
                    true,
                    format!("max-ttl truncated to {k} bytes"),
                )
            }
            _ => {
                // The real policy with settings it must reject.
                let bad: Vec<u8> = match rng.below(4) {
                    0 => {
                        let mut b = vec![0x01];
                        let n = rng.range(0, 64) as usize;
                        b.extend(rng.bytes(n));
                        b
                    }
                    1 => b"{}".to_vec(),
                    2 => br#"{"default_ms":0}"#.to_vec(),
                    _ => br#"{"default_ms":1000,"nope":1}"#.to_vec(),
                };
                (
                    real.to_vec(),
                    Some(bad),
                    false,
                    "max-ttl with bad settings".into(),
                )
            }
        };
    if let Some(c) = config {
        args.extend([b"CONFIG".to_vec(), c]);
    }
    args.extend([b"WASM".to_vec(), wasm]);
    // A module that may be valid never replaces the fixture's policy.
    if may_load && args[2] == b"mt" {
        args[2] = b"fzmt".to_vec();
    }
    (args, may_load, what)
}

for_each_flavor! {
    /// (a) Malformed and refused commands, in plain calls, MULTI/EXEC and
    /// scripts, and raw inline garbage.
    fn malformed_commands(flavor: Flavor) {
        scenario(
            "8a bad input: commands",
            flavor,
            "seeded malformed/refused lock commands (also in MULTI and Lua), binary garbage, inline garbage",
            |tally| {
                let fx = setup(flavor);
                let mut rng = Rng::new(seed("8a bad input", 0xbad_0008a));
                let before = snapshot(&fx, true, true);
                let n = scaled(2500, 25_000);
                tally.operations += command_corpus(&fx, &mut rng, n, &before);
                tally.operations += inline_garbage(&fx, &mut rng, scaled(300, 3000));
                let after = snapshot(&fx, true, true);
                assert_eq!(after, before, "state after the corpus");
                assert_eq!(lw_stat(&fx.server, "acquires_granted"), 3, "no grant beyond the setup's");
                assert_healthy(&fx.server, "after the command corpus");
            },
        );
    }

    /// (b) Corrupt RESTORE payloads with valid CRCs (and valid leases).
    fn corrupt_restore_payloads(flavor: Flavor) {
        scenario(
            "8b bad input: RESTORE payloads",
            flavor,
            "seeded mutations of a DUMP (bit flips, truncations, insertions, framing) and invalid leases, CRC-64 recomputed",
            |tally| {
                let fx = setup(flavor);
                let s = &fx.server;
                let mut rng = Rng::new(seed("8b bad input", 0xbad_0008b));
                assert_eq!(crc64_jones(b"123456789"), 0xe9c6_d914_c4b8_d9ca, "CRC-64/Jones check value");
                let (_, _, ta) = fx.locks[0].clone();
                let dump = dump(s, "bi:a");
                let n = dump.len();
                assert_eq!(crc64_jones(&dump[..n - 8]).to_le_bytes(), dump[n - 8..], "the test's CRC-64 is the server's");
                let parts = split_dump(&dump, ta);
                let before = snapshot(&fx, false, true);
                let mut conn = fuzz_conn(s);
                let (mut refused, mut restored) = (0u64, 0u64);
                let mut high_water = lw_stat(s, "token_high_water");
                for i in 0..scaled(1500, 15_000) {
                    let (payload, expect, what, fields) = restore_input(&mut rng, &dump, &parts);
                    // Refused payloads may also target a held lock with
                    // REPLACE: it must stay untouched.
                    let (key, replace): (&[u8], bool) = if expect == Expect::Error && rng.chance(30) {
                        (&rng.pick(&fx.locks).0, true)
                    } else {
                        (b"bi:restored", false)
                    };
                    let key = key.to_vec();
                    const TTLS: [&[u8]; 3] = [b"0", b"60000", b"1"];
                    let ttl: &[u8] = TTLS[rng.index(TTLS.len())];
                    let mut args: Vec<&[u8]> = vec![b"RESTORE", &key, ttl, &payload];
                    if replace {
                        args.push(b"REPLACE");
                    }
                    let reply = call_bytes(&mut conn, &args);
                    tally.operations += 1;
                    let context = || {
                        format!(
                            "RESTORE input {i} ({what}), key {:?}, ttl {}, payload {} bytes: {}",
                            String::from_utf8_lossy(&key),
                            String::from_utf8_lossy(ttl),
                            payload.len(),
                            payload.iter().map(|b| format!("{b:02x}")).collect::<String>()
                        )
                    };
                    match (&reply, expect) {
                        (Reply::Error { .. }, Expect::Error | Expect::ErrorOrLock) => refused += 1,
                        (Reply::Value(Value::Okay), Expect::Lock | Expect::ErrorOrLock) => {
                            restored += 1;
                            let t = call(&mut conn, &["TYPE", "bi:restored"]).text();
                            if t != "lockwardn" && !(t == "none" && ttl == b"1") {
                                s.fail(&format!("{}: restored as a {t}", context()));
                            }
                            let info = match call(&mut conn, &["LOCK.INFO", "bi:restored"]) {
                                Reply::Value(v) => parse_lock_info(&v).unwrap_or_else(|e| s.fail(&format!("{}: {e}", context()))),
                                other => s.fail(&format!("{}: LOCK.INFO {}", context(), other.text())),
                            };
                            if let Some(info) = &info {
                                let sane = (1..=256).contains(&info.owner.len()) && info.get("token") > 0;
                                if !sane {
                                    s.fail(&format!("{}: restored an invalid lease {info:?}", context()));
                                }
                            }
                            if let Some(f) = &fields {
                                let now = now_ms();
                                if f.deadline > now + 2000 && ttl != b"1" {
                                    let info = info.unwrap_or_else(|| s.fail(&format!("{}: the restored lease is free", context())));
                                    let got = (info.owner.clone(), info.token(), info.get("acquired-at"), info.get("extensions"), info.get("session"));
                                    let want = (f.owner.clone(), f.token, f.acquired, i64::from(f.extensions), i64::from(f.flags));
                                    if got != want {
                                        s.fail(&format!("{}: restored {got:?}, encoded {want:?}", context()));
                                    }
                                } else if f.deadline < now - 2000 && info.is_some() {
                                    s.fail(&format!("{}: a lease past its deadline is held: {info:?}", context()));
                                }
                            }
                            call(&mut conn, &["DEL", "bi:restored"]);
                            tally.operations += 3;
                        }
                        (Reply::Io(e), _) => s.fail(&format!("{}: no reply (hang or dropped connection): {e}", context())),
                        (other, _) => s.fail(&format!("{}: expected {expect:?}, got {}", context(), other.text())),
                    }
                    let hw = lw_stat(s, "token_high_water");
                    if hw < high_water {
                        s.fail(&format!("{}: the token high water went down, {high_water} -> {hw}", context()));
                    }
                    high_water = hw;
                    let after = snapshot(&fx, false, i % 50 == 0);
                    let expected = Snapshot { policies: after.policies.as_ref().and(before.policies.clone()), ..snapshot_clone(&before) };
                    if after != expected {
                        s.fail(&format!("{} changed the state\nbefore: {expected:?}\nafter:  {after:?}", context()));
                    }
                }
                eprintln!("8b ({flavor}): {refused} refused, {restored} restored");
                assert!(refused > 0 && restored > 0, "{refused} refused, {restored} restored");
                // The locks still work: the holder extends and releases.
                let (k, o, t) = fx.locks[2].clone();
                let mut c = s.client();
                let ext = call_bytes(&mut c, &[b"LOCK.EXTEND", &k, &o, b"60000", b"FENCE", t.to_string().as_bytes()]);
                assert_eq!(ext.int(), Some(60000), "{}", ext.text());
                let rel = call_bytes(&mut c, &[b"LOCK.RELEASE", &k, &o, b"FENCE", t.to_string().as_bytes()]);
                assert_eq!(rel.int(), Some(1), "{}", rel.text());
                assert_healthy(s, "after the RESTORE corpus");
            },
        );
    }

    /// (c) `LOCK.POLICY LOAD` of garbage modules and settings.
    fn garbage_policies(flavor: Flavor) {
        scenario(
            "8c bad input: policy modules",
            flavor,
            "seeded LOCK.POLICY LOAD of random bytes, corrupted/truncated Wasm, bad settings, an oversized module",
            |tally| {
                let fx = setup(flavor);
                let s = &fx.server;
                let mut rng = Rng::new(seed("8c bad input", 0xbad_0008c));
                let real = read_policy("max-ttl");
                let before = snapshot(&fx, true, true);
                let mut conn = fuzz_conn(s);
                let mut fixed: Vec<(Vec<Vec<u8>>, bool, String)> = vec![
                    (
                        vec![b"LOCK.POLICY".to_vec(), b"LOAD".to_vec(), b"mt".to_vec(), b"CONFIG".to_vec(), br#"{"default_ms":1000}"#.to_vec(), b"WASM".to_vec(), real.clone()],
                        false,
                        "an existing name without REPLACE".into(),
                    ),
                    (
                        {
                            let mut big = WASM_HEADER.to_vec();
                            big.resize(4 * 1024 * 1024 + 1, 0);
                            vec![b"LOCK.POLICY".to_vec(), b"LOAD".to_vec(), b"big".to_vec(), b"WASM".to_vec(), big]
                        },
                        false,
                        "a module above policy-max-module-kb".into(),
                    ),
                ];
                let count = scaled(150, 1500);
                let mut loaded = 0;
                for i in 0..count + fixed.len() {
                    let (args, may_load, what) = if i < fixed.len() {
                        std::mem::take(&mut fixed[i])
                    } else {
                        policy_input(&mut rng, &real)
                    };
                    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
                    let reply = call_bytes(&mut conn, &refs);
                    tally.operations += 1;
                    let context = || format!("policy input {i} ({what}): {}", show(&args));
                    match &reply {
                        // docs/COMMANDS.md: OK or BADPOLICY <what is wrong>.
                        Reply::Error { code, .. } if code == "BADPOLICY" => {}
                        Reply::Value(Value::Okay) if may_load => {
                            // A mutated module that is still valid: it is
                            // listed, then unloaded.
                            loaded += 1;
                            let name = String::from_utf8_lossy(&args[2]).into_owned();
                            assert!(names(s).contains(&name), "{}", context());
                            if name == "mt" {
                                s.fail(&format!("{}: replaced the existing policy", context()));
                            }
                            assert_eq!(call(&mut conn, &["LOCK.POLICY", "UNLOAD", &name]).int(), Some(1));
                        }
                        Reply::Io(e) => s.fail(&format!("{}\n  -> no reply (hang or dropped connection): {e}", context())),
                        other => s.fail(&format!("{}\n  -> {}", context(), other.text())),
                    }
                    let after = snapshot(&fx, true, true);
                    if after != snapshot_clone(&before) {
                        s.fail(&format!("{} changed the state\nbefore: {before:?}\nafter:  {after:?}", context()));
                    }
                }
                eprintln!("8c ({flavor}): {count} inputs, {loaded} mutated modules were valid");
                // The policy from before still evaluates.
                let eval = call(&mut conn, &["LOCK.POLICY", "EVAL", "mt", "ACQUIRE", "bi:pol:x", "o", "1000"]);
                assert_eq!(eval.text(), "allow", "LOCK.POLICY EVAL after the corpus");
                assert_healthy(s, "after the policy corpus");
            },
        );
    }
}
