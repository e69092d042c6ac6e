//! Node-wide state owned by the Redis main thread: the token clock, the
//! process incarnation, the node's role and the own-write flag. (The policy
//! registry and the waiter queues live in `policies.rs` and `waiters.rs`.)
//!
//! Redis calls module commands, timers, events and most type callbacks on its
//! main thread, one at a time. [`MainThread`] encodes that contract; the one
//! value a background thread touches (the count of lock values freed, from
//! the lazy-free `free` callback) is an atomic in [`crate::stats`].

use lockwarden_core::TokenClock;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// A value only ever accessed from the Redis main thread.
pub struct MainThread<T>(T);

// SAFETY: accessed only from the Redis main thread (see module docs); the
// module never hands these to background threads.
unsafe impl<T> Sync for MainThread<T> {}

impl<T> MainThread<T> {
    pub const fn new(v: T) -> Self {
        MainThread(v)
    }

    pub fn get(&self) -> &T {
        &self.0
    }
}

static CLOCK: MainThread<Cell<TokenClock>> = MainThread::new(Cell::new(TokenClock::new()));
static INCARNATION: MainThread<Cell<u64>> = MainThread::new(Cell::new(0));
static OWN_WRITE: MainThread<Cell<bool>> = MainThread::new(Cell::new(false));
static PRIMARY: AtomicBool = AtomicBool::new(true);
static LOADING: MainThread<Cell<bool>> = MainThread::new(Cell::new(false));

/// Runs `f` (which deletes or overwrites a lock key on the module's own
/// behalf) so that the unlink callback does not count it as a lock lost.
pub fn own_write<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the flag however `f` ends (a panic is caught at the
    /// callback's guard, and the flag must not stay set after it).
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            OWN_WRITE.get().set(self.0);
        }
    }
    let _restore = Restore(OWN_WRITE.get().replace(true));
    f()
}

/// Is a module write in progress (see [`own_write`])?
pub fn is_own_write() -> bool {
    OWN_WRITE.get().get()
}

/// Is this node a primary (not following another node)?
pub fn is_primary() -> bool {
    PRIMARY.load(Relaxed)
}

pub fn set_primary(primary: bool) {
    PRIMARY.store(primary, Relaxed);
}

/// Is the node loading its dataset (RDB, AOF, or a full sync)? What is
/// replayed then (an AOF's releases and expirations) happened before.
pub fn is_loading() -> bool {
    LOADING.get().get()
}

pub fn set_loading(loading: bool) {
    LOADING.get().set(loading);
}

/// Runs `f` with the token clock, storing back any change.
pub fn with_clock<R>(f: impl FnOnce(&mut TokenClock) -> R) -> R {
    let mut c = CLOCK.get().get();
    let r = f(&mut c);
    CLOCK.get().set(c);
    r
}

/// Raises the clock's high-water mark to `token`.
pub fn observe_token(token: u64) {
    with_clock(|c| c.observe(token));
}

pub fn high_water() -> u64 {
    CLOCK.get().get().high_water()
}

/// A random id of this server process, so that client ids saved in an RDB are
/// only trusted when the same process loads it again (`DEBUG RELOAD`).
pub fn incarnation() -> u64 {
    INCARNATION.get().get()
}

pub fn init_incarnation() {
    let mut bytes = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok();
    let seed = if random {
        u64::from_le_bytes(bytes)
    } else {
        // Fall back to time and pid: unique enough across restarts.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        t ^ ((std::process::id() as u64) << 32)
    };
    INCARNATION.get().set(seed | 1);
}
