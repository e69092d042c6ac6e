//! Helpers for the holder-crash, paused-holder, AOF-crash and clock-step
//! scenarios: reply parsing, holder processes, grants seen by clients, and
//! (from `common`) [`scenario`], which records a scenario's
//! `tests/FAULTS.md` row whether it passes or fails.
#![allow(dead_code)]

use lockwarden_tests::redis::{self, ConnectionLike, RedisResult, Value};
use lockwarden_tests::*;

pub use super::common::*;

pub use lockwarden_tests::locks::{LockInfo, err_code, lock_info, lw_stat};

/// Runs one command on `conn`: server errors come back as
/// [`Value::ServerError`], I/O errors (a killed server) as `Err`.
pub fn try_req(conn: &mut dyn ConnectionLike, args: &[&str]) -> RedisResult<Value> {
    let mut cmd = redis::Cmd::new();
    for a in args {
        cmd.arg(*a);
    }
    conn.req_command(&cmd)
}

/// A `LOCK.ACQUIRE` reply: `Some((token, ttl))`, `None` for nil; panics on
/// anything else.
#[track_caller]
pub fn grant_of(v: &Value) -> Option<(u64, u64)> {
    match v {
        Value::Nil => None,
        Value::Array(items) if items.len() == 2 => match (&items[0], &items[1]) {
            (Value::Int(t), Value::Int(ttl)) if *t > 0 && *ttl >= 0 => {
                Some((*t as u64, *ttl as u64))
            }
            _ => panic!("LOCK.ACQUIRE: unexpected reply {}", render(v)),
        },
        other => panic!("LOCK.ACQUIRE: unexpected reply {}", render(other)),
    }
}

/// The same for a reply line printed by `lw-client` (`[token ttl]` or
/// `(nil)`).
#[track_caller]
pub fn grant_of_line(line: &str) -> Option<(u64, u64)> {
    if line == "(nil)" {
        return None;
    }
    let inner = line
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .unwrap_or_else(|| panic!("LOCK.ACQUIRE: unexpected reply line {line:?}"));
    let mut words = inner.split(' ').map(|w| w.parse::<u64>());
    match (words.next(), words.next(), words.next()) {
        (Some(Ok(token)), Some(Ok(ttl)), None) if token > 0 => Some((token, ttl)),
        _ => panic!("LOCK.ACQUIRE: unexpected reply line {line:?}"),
    }
}

/// The state letter of a process (`R`, `S`, `T` for stopped, ...), from
/// `/proc/<pid>/stat`; `None` once it is gone.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) S ...": the command may contain spaces and parentheses.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until the process is stopped (after SIGSTOP).
pub fn wait_stopped(pid: u32) {
    wait_until(&format!("process {pid} to stop"), FAULT_TIMEOUT, || {
        matches!(process_state(pid), Some('T' | 't'))
    });
}

/// A lock holder that is a separate OS process — two, in fact, since an
/// `lw-client` holds one connection: `lock` talks to the lock server, `store`
/// to the fenced store. Both read further command lines from stdin, and both
/// are killed, paused and resumed together, like one process on a host that
/// crashes or stalls.
pub struct Holder {
    pub owner: String,
    pub lock: ClientProcess,
    pub store: ClientProcess,
}

impl Holder {
    pub fn spawn(lock_port: u16, store_port: u16, owner: &str) -> Holder {
        Holder {
            owner: owner.to_string(),
            lock: LwClient::new(lock_port).interactive().spawn(),
            store: LwClient::new(store_port).interactive().spawn(),
        }
    }

    /// `LOCK.ACQUIRE key owner ttl <extra>` from the holder process.
    #[track_caller]
    pub fn acquire(&mut self, key: &str, ttl_ms: u64, extra: &str) -> Option<(u64, u64)> {
        let line = self.lock.exec(&format!(
            "LOCK.ACQUIRE {key} {} {ttl_ms} {extra}",
            self.owner
        ));
        grant_of_line(&line)
    }

    /// A fenced write of `resource` with `token` from the holder process;
    /// true if the store accepted it.
    #[track_caller]
    pub fn write(&mut self, store: &FencedStore, resource: &str, token: u64) -> bool {
        let line = self
            .store
            .exec(&store.write_command(resource, token, &self.owner));
        write_accepted(&line)
    }

    /// SIGKILL to both processes.
    pub fn kill(&mut self) {
        self.lock.kill();
        self.store.kill();
    }

    /// SIGSTOP to both processes; returns once both are stopped.
    pub fn pause(&self) {
        self.lock.pause();
        self.store.pause();
        wait_stopped(self.lock.pid());
        wait_stopped(self.store.pid());
    }

    /// SIGCONT to both processes.
    pub fn resume(&self) {
        self.lock.resume();
        self.store.resume();
    }
}

/// The reply line of a fenced write: `1` accepted, `0` rejected.
#[track_caller]
pub fn write_accepted(line: &str) -> bool {
    match line {
        "1" => true,
        "0" => false,
        other => panic!("fenced write: unexpected reply {other:?}"),
    }
}

/// A small deterministic pseudo-random generator (xorshift64*), so churning
/// threads vary their choices without a dependency.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform-ish in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One grant a client saw: its token and when the command was sent and its
/// reply received (unix ms of the test's clock).
#[derive(Clone, Debug)]
pub struct Grant {
    pub token: u64,
    pub sent_ms: i64,
    pub received_ms: i64,
    pub what: String,
}

/// Checks that tokens never go back in real time: whenever grant `a`'s reply
/// arrived before grant `b` was requested, `a.token < b.token`. Also checks
/// that no token was issued twice. Panics with the offending pair.
#[track_caller]
pub fn assert_tokens_increase(grants: &[Grant]) {
    let mut seen = std::collections::HashMap::new();
    for g in grants {
        if let Some(prev) = seen.insert(g.token, g) {
            panic!("token {} issued twice: {prev:?} and {g:?}", g.token);
        }
    }
    // Sweep: grants by request time; the largest token among grants whose
    // reply arrived strictly earlier.
    let mut by_recv: Vec<&Grant> = grants.iter().collect();
    by_recv.sort_by_key(|g| g.received_ms);
    let mut by_send: Vec<&Grant> = grants.iter().collect();
    by_send.sort_by_key(|g| g.sent_ms);
    let mut i = 0;
    let mut max_before: Option<&Grant> = None;
    for b in by_send {
        while i < by_recv.len() && by_recv[i].received_ms < b.sent_ms {
            if max_before.is_none_or(|m| by_recv[i].token > m.token) {
                max_before = Some(by_recv[i]);
            }
            i += 1;
        }
        if let Some(a) = max_before {
            assert!(
                a.token < b.token,
                "a token went back: {a:?} completed before {b:?} was requested"
            );
        }
    }
}

/// Sets the flag when dropped — also when the test panics — so that threads
/// looping until it is set end and a `std::thread::scope` can finish.
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}
