//! Counters and distributions for `INFO lockwarden`. Only the main thread
//! writes them, except for the lock values freed: the `free` callback may
//! run on Redis's lazy-free thread (`FLUSHALL ASYNC`), so that count alone
//! takes a locked read-modify-write; the others are atomics written with a
//! plain load and store (no locked instruction on the command path). The
//! histograms are only touched on the main thread.

use crate::state::{self, MainThread};
use lockwarden_core::histogram::Histogram;
use lockwarden_core::{Lease, LockError};
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A monotonically increasing counter, written by the main thread only.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }

    /// Main thread only: a concurrent writer would lose increments.
    pub fn incr(&self) {
        self.0.store(self.0.load(Relaxed) + 1, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

/// Lock values created (main thread) and freed (any thread): the
/// difference is alive in the keyspace.
static LOCKS_CREATED: Counter = Counter::new();
static LOCKS_FREED: AtomicU64 = AtomicU64::new(0);

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
pub static POLICY_AUDIT_DENIALS: Counter = Counter::new();
pub static POLICIES_NOT_RESTORED: Counter = Counter::new();
pub static EXPIRED_WHILE_HELD: Counter = Counter::new();
pub static DELETED_WHILE_HELD: Counter = Counter::new();
pub static HANDOFFS: Counter = Counter::new();
pub static WAIT_TIMEOUTS: Counter = Counter::new();
pub static SESSION_RELEASES: Counter = Counter::new();
pub static GRANTS_REVOKED: Counter = Counter::new();

/// Time from `LOCK.ACQUIRE ... WAIT` to the grant, in µs (main thread only).
static WAIT_US: MainThread<RefCell<Histogram>> = MainThread::new(RefCell::new(Histogram::new()));
/// How long locks were held, from grant to release/expiry/deletion, in ms.
static HOLD_MS: MainThread<RefCell<Histogram>> = MainThread::new(RefCell::new(Histogram::new()));

pub fn record_wait_us(us: u64) {
    WAIT_US.get().borrow_mut().record(us);
}

/// (p50, p99, max) of the wait and hold distributions.
pub fn wait_us() -> (u64, u64, u64) {
    summary(&WAIT_US.get().borrow())
}

pub fn hold_ms() -> (u64, u64, u64) {
    summary(&HOLD_MS.get().borrow())
}

fn summary(h: &Histogram) -> (u64, u64, u64) {
    (h.quantile(0.5), h.quantile(0.99), h.max())
}

/// Counts a failed lock command by its error code.
pub fn error(e: &LockError) {
    match e {
        LockError::NotOwner | LockError::StaleFence { .. } => ERRORS_NOTOWNER.incr(),
        LockError::NotHeld => ERRORS_NOTHELD.incr(),
        LockError::TtlMax { .. } => REJECTED_TTLMAX.incr(),
        LockError::TtlMin { .. } => REJECTED_TTLMIN.incr(),
        LockError::Denied { .. } => POLICY_DENIALS.incr(),
        LockError::Policy { .. } => POLICY_FAILURES.incr(),
        LockError::Syntax(_)
        | LockError::WrongType
        | LockError::BadPolicy(_)
        | LockError::ReadOnly
        | LockError::TokensExhausted
        | LockError::CompileMemory { .. } => {}
    }
}

pub fn lock_created() {
    LOCKS_CREATED.incr();
}

pub fn lock_freed() {
    LOCKS_FREED.fetch_add(1, Relaxed);
}

pub fn locks() -> i64 {
    let freed = LOCKS_FREED.load(Relaxed);
    (LOCKS_CREATED.get() as i64)
        .saturating_sub(freed as i64)
        .max(0)
}

/// A lease left the keyspace (or was replaced by a new grant after its
/// deadline). Records how long it was held, and classifies the removals the
/// module did not make itself: a lease whose deadline had passed expired
/// while held (the holder crashed, stalled, or chose a TTL too short); a live
/// lease was deleted behind the holder's back (`DEL`, overwrite, ...).
/// Counted on primaries only: replicas just follow the primary's `DEL`s.
pub fn lock_unlinked(lease: &Lease, now_ms: i64) {
    // A replica follows; a load replays what was counted when it happened.
    if !state::is_primary() || state::is_loading() {
        return;
    }
    let end = now_ms.min(lease.deadline_ms);
    HOLD_MS
        .get()
        .borrow_mut()
        .record(end.saturating_sub(lease.acquired_at_ms).max(0) as u64);
    if state::is_own_write() {
        return;
    }
    if lease.is_live(now_ms) {
        DELETED_WHILE_HELD.incr();
    } else {
        EXPIRED_WHILE_HELD.incr();
    }
}
