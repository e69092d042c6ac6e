//! Session-bound locks (`LOCK.ACQUIRE ... SESSION`): released as soon as the
//! acquiring connection closes, like a ZooKeeper ephemeral node, and handed
//! to the next waiter. The TTL still bounds them.
//!
//! The index maps a client id to the session leases it holds on this node,
//! by token (unique per grant), so it can be kept exact from the unlink
//! callback, which does not know the database. Entries are verified against
//! the keyspace before anything is released. Leases that arrived through
//! replication or a restart carry client id 0 and are not indexed: after a
//! failover or restart, session locks are bounded by their TTL only.

use crate::commands;
use crate::ffi::{self, Ctx, Key, OwnedString, RString, Slot};
use crate::lease_type::ty;
use crate::state::MainThread;
use crate::waiters::{self, LockKey};
use crate::{replicate, state, stats};
use lockwarden_core::Lease;
use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;

type Index = HashMap<u64, HashMap<u64, LockKey>>;

static INDEX: MainThread<RefCell<Option<Index>>> = MainThread::new(RefCell::new(None));

fn with<R>(f: impl FnOnce(&mut Index) -> R) -> R {
    f(INDEX.get().borrow_mut().get_or_insert_with(HashMap::new))
}

/// Records a session lease granted on this node, on the key `name` (alive
/// for the call) of the database `ctx` has selected.
#[inline]
pub fn track(ctx: *mut Ctx, lease: &Lease, name: *mut RString) {
    if lease.session && lease.client_id != 0 {
        index(ctx, lease, name);
    }
}

#[inline(never)]
fn index(ctx: *mut Ctx, lease: &Lease, name: *mut RString) {
    let lk = LockKey {
        db: ffi::selected_db(ctx),
        // SAFETY: the caller's key name is alive.
        name: unsafe { ffi::bytes(name) }.into(),
    };
    with(|ix| {
        ix.entry(lease.client_id)
            .or_default()
            .insert(lease.token, lk)
    });
}

/// How many session leases the index follows (those held by connected
/// clients, and those of departed ones not yet released).
pub fn tracked() -> usize {
    with(|ix| ix.values().map(HashMap::len).sum())
}

/// This node became a primary again: release the session locks of indexed
/// clients that disconnected while it followed another node (their timers
/// did nothing then). Every entry is checked against the keyspace first.
pub fn release_departed() {
    let ids: Vec<u64> = with(|ix| ix.keys().copied().collect());
    for id in ids {
        if !ffi::client_connected(id) {
            client_gone(id);
        }
    }
}

/// `SWAPDB a b`: the leases moved with their databases.
pub fn dbs_swapped(a: i32, b: i32) {
    with(|ix| {
        for lk in ix.values_mut().flat_map(|held| held.values_mut()) {
            if lk.db == a {
                lk.db = b;
            } else if lk.db == b {
                lk.db = a;
            }
        }
    });
}

/// Forgets a lease that left the keyspace or changed hands.
pub fn forget(lease: &Lease) {
    if lease.session && lease.client_id != 0 {
        forget_entry(lease.client_id, lease.token);
    }
}

/// A client disconnected: release its session locks from the event loop
/// (not from inside the disconnect, where writes are not safe).
pub fn client_gone(client_id: u64) {
    if with(|ix| ix.contains_key(&client_id)) {
        ffi::start_timer(0, on_timer, Box::into_raw(Box::new(client_id)).cast());
    }
}

unsafe extern "C" fn on_timer(ctx: *mut Ctx, data: *mut c_void) {
    ffi::guard("session release", (), || {
        // A demoted primary must not release locks on its own: the primary
        // it now follows decides. (The index keeps the entries: see
        // `release_departed`.)
        // SAFETY: the timer carries a `Box<u64>`, handed over once.
        let Some(client_id) = (unsafe { ffi::writable_timer_data::<u64>(ctx, data, on_timer) })
        else {
            return;
        };
        let client_id = *client_id;
        let Some(mut held) = with(|ix| ix.remove(&client_id)) else {
            return;
        };
        // A batch per turn of the event loop (each release may hand the
        // lock to a waiter); the rest in the following turns.
        let batch: Vec<u64> = held.keys().take(ffi::ITEMS_PER_TURN).copied().collect();
        let batch: Vec<(u64, LockKey)> = batch
            .into_iter()
            .filter_map(|token| held.remove_entry(&token))
            .collect();
        if !held.is_empty() {
            with(|ix| ix.insert(client_id, held));
            client_gone(client_id);
        }
        for (token, lk) in batch {
            release(ctx, client_id, token, &lk);
        }
    })
}

/// Database `db` (`None`: every database) was flushed: its session leases
/// are gone without an unlink callback. Drop their index entries from the
/// event loop, after the command (`DEBUG RELOAD` flushes and loads the same
/// leases back), a batch per turn. Here only their ids are listed (no
/// allocation per entry).
pub fn prune_later(db: Option<i32>) {
    let entries: Vec<(u64, u64)> = with(|ix| {
        ix.iter()
            .flat_map(|(&id, held)| {
                held.iter()
                    .filter(move |(_, lk)| db.is_none_or(|db| lk.db == db))
                    .map(move |(&token, _)| (id, token))
            })
            .collect()
    });
    if !entries.is_empty() {
        ffi::start_timer(0, on_prune, Box::into_raw(Box::new(entries)).cast());
    }
}

unsafe extern "C" fn on_prune(ctx: *mut Ctx, data: *mut c_void) {
    ffi::guard("session index prune", (), || {
        // SAFETY: the prune timer carries a `Box<Vec<(u64, u64)>>`, handed
        // over once.
        let mut entries = unsafe { Box::from_raw(data.cast::<Vec<(u64, u64)>>()) };
        let batch = entries.split_off(entries.len().saturating_sub(ffi::ITEMS_PER_TURN));
        for (client_id, token) in batch {
            // Released or forgotten since the flush: nothing to check.
            let Some(lk) = with(|ix| ix.get(&client_id)?.get(&token).cloned()) else {
                continue;
            };
            ffi::select_db(ctx, lk.db);
            let name = OwnedString::new(&lk.name);
            let Some(mut key) = Key::read(ctx, name.raw()) else {
                forget_entry(client_id, token);
                continue;
            };
            let present = matches!(key.slot::<Lease>(ty()),
                Slot::Ours(l) if l.client_id == client_id && l.token == token);
            if !present {
                forget_entry(client_id, token);
            }
        }
        if !entries.is_empty() {
            ffi::start_timer(0, on_prune, Box::into_raw(entries).cast());
        }
    })
}

/// Drops the index entry of `client_id`'s lease `token`.
fn forget_entry(client_id: u64, token: u64) {
    with(|ix| {
        if let Some(held) = ix.get_mut(&client_id) {
            held.remove(&token);
            if held.is_empty() {
                ix.remove(&client_id);
            }
        }
    });
}

fn release(ctx: *mut Ctx, client_id: u64, token: u64, lk: &LockKey) {
    ffi::select_db(ctx, lk.db);
    let name = OwnedString::new(&lk.name);
    let now = ffi::command_now_ms();
    let mut key = Key::write(ctx, name.raw());
    let ours = matches!(key.slot::<Lease>(ty()),
        Slot::Ours(l) if l.session && l.client_id == client_id && l.token == token && l.is_live(now));
    if !ours {
        return;
    }
    state::own_write(|| key.delete());
    drop(key);
    replicate::delete(ctx, name.raw());
    stats::SESSION_RELEASES.incr();
    commands::notify_released(ctx, name.raw());
    if waiters::len(lk) > 0 {
        waiters::serve(ctx, lk, name.raw());
    }
}
