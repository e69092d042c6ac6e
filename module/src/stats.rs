//! Counters for `INFO lockwarden`. Atomics, because the `free` callback may
//! run on Redis's lazy-free thread; relaxed ordering is enough for counters.

use crate::state;
use lockwarden_core::{Lease, LockError};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

/// A monotonically increasing counter.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    pub fn incr(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Lock values alive in the keyspace (created minus freed).
static LOCKS: AtomicI64 = AtomicI64::new(0);

pub static ACQUIRES_GRANTED: Counter = Counter::new();
pub static ACQUIRES_RETRIED: Counter = Counter::new();
pub static ACQUIRES_CONTENDED: Counter = Counter::new();
pub static RELEASES: Counter = Counter::new();
pub static EXTENDS: Counter = Counter::new();
pub static ERRORS_NOTOWNER: Counter = Counter::new();
pub static ERRORS_NOTHELD: Counter = Counter::new();
pub static REJECTED_TTLMAX: Counter = Counter::new();
pub static REJECTED_TTLMIN: Counter = Counter::new();
pub static POLICY_DENIALS: Counter = Counter::new();
pub static POLICY_FAILURES: Counter = Counter::new();
pub static EXPIRED_WHILE_HELD: Counter = Counter::new();
pub static DELETED_WHILE_HELD: Counter = Counter::new();

/// Counts a failed lock command by its error code.
pub fn error(e: &LockError) {
    match e {
        LockError::NotOwner | LockError::StaleFence { .. } => ERRORS_NOTOWNER.incr(),
        LockError::NotHeld => ERRORS_NOTHELD.incr(),
        LockError::TtlMax { .. } => REJECTED_TTLMAX.incr(),
        LockError::TtlMin { .. } => REJECTED_TTLMIN.incr(),
        LockError::Denied { .. } => POLICY_DENIALS.incr(),
        LockError::Policy { .. } => POLICY_FAILURES.incr(),
        LockError::Syntax(_) | LockError::WrongType => {}
    }
}

pub fn lock_created() {
    LOCKS.fetch_add(1, Relaxed);
}

pub fn lock_freed() {
    LOCKS.fetch_sub(1, Relaxed);
}

pub fn locks() -> i64 {
    LOCKS.load(Relaxed).max(0)
}

/// A lock key left the keyspace. Releases go through [`RELEASES`]; here we
/// see the others: a lease whose deadline had passed expired while held (the
/// holder crashed, stalled, or chose a TTL too short), and a live lease that
/// was deleted behind the holder's back (`DEL`, `FLUSHALL`, overwrite).
/// Counted on primaries only (replicas just follow the primary's `DEL`s), and
/// not for the module's own releases and rewrites.
pub fn lock_unlinked(lease: &Lease, now_ms: i64) {
    if !state::is_primary() || state::is_own_write() {
        return;
    }
    if lease.is_live(now_ms) {
        DELETED_WHILE_HELD.incr();
    } else {
        EXPIRED_WHILE_HELD.incr();
    }
}
