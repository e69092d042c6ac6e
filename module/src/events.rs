//! Server and keyspace events the module follows:
//! * loads: client ids in an RDB are trusted only during that load, and
//!   what a load replays is not counted again;
//! * replication role changes: only a primary counts expirations and
//!   releases session locks;
//! * client disconnects: session locks are released;
//! * FLUSHDB/FLUSHALL and SWAPDB: waiters are served, and the session index
//!   follows a swap (no per-key callback runs when a whole database is
//!   emptied or swapped);
//! * key expiry: a lock whose lease ran out while held is published as the
//!   module keyspace event `lock.expired`;
//! * a fork for an AOF rewrite: node-wide state is propagated again so that
//!   the rewritten AOF keeps it (see `persist::fork_started`).

use crate::ffi::{self, Ctx, RString, api};
use crate::state::MainThread;
use crate::{persist, replicate, sessions, state, waiters};
use lockwarden_core::Lease;
use redis_module::raw;
use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void};
use std::time::{Duration, Instant};

/// The lock key whose lease the unlink callback just saw leave past its
/// deadline, and when; the `expired` keyspace event that Redis fires right
/// after deleting an expiring key picks it up.
static EXPIRED: MainThread<RefCell<Option<Unlinked>>> = MainThread::new(RefCell::new(None));

/// A lock key name and when its lease left the keyspace.
type Unlinked = (Box<[u8]>, Instant);

/// How soon after the unlink the `expired` event must come. Redis fires it
/// microseconds after the deletion, in the same call; any key created after
/// the unlink lives at least a millisecond (`PX 1`) before it can expire, so
/// a lease deleted some other way (`DEL` after `PERSIST`) is never reported
/// for the expiry of a later key of the same name.
const EXPIRED_EVENT_WINDOW: Duration = Duration::from_millis(1);

/// Called from the unlink callback for every lease that leaves the keyspace.
pub fn lock_gone(name: &[u8], lease: &Lease, now_ms: i64) {
    *EXPIRED.get().borrow_mut() =
        (state::is_primary() && !lease.is_live(now_ms)).then(|| (name.into(), Instant::now()));
}

unsafe extern "C" fn on_expired(
    ctx: *mut Ctx,
    _type: c_int,
    _event: *const c_char,
    key: *mut RString,
) -> c_int {
    ffi::guard("expired event", (), || {
        let stash = EXPIRED.get().borrow_mut().take();
        // SAFETY: the key string lives for the duration of the callback.
        let was_lock = stash.is_some_and(|(name, at)| {
            *name == *unsafe { ffi::bytes(key) } && at.elapsed() < EXPIRED_EVENT_WINDOW
        });
        if was_lock {
            ffi::notify(ctx, c"lock.expired", key);
        }
    });
    raw::REDISMODULE_OK as c_int
}

unsafe extern "C" fn on_loading(
    _ctx: *mut Ctx,
    _event: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut c_void,
) {
    ffi::guard("loading event", (), || {
        let ended = sub == raw::REDISMODULE_SUBEVENT_LOADING_ENDED
            || sub == raw::REDISMODULE_SUBEVENT_LOADING_FAILED;
        state::set_loading(!ended);
        replicate::stream_may_have_opened();
        if ended {
            persist::loading_ended();
        }
    })
}

unsafe extern "C" fn on_role_change(
    _ctx: *mut Ctx,
    _event: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut c_void,
) {
    ffi::guard("role change event", (), || {
        let primary = sub == raw::REDISMODULE_EVENT_REPLROLECHANGED_NOW_MASTER;
        state::set_primary(primary);
        replicate::stream_may_have_opened();
        if primary {
            // Back from a replica role (an aborted failover, REPLICAOF to
            // a host that never answered) with the same data: session
            // holders that left meanwhile are released now.
            sessions::release_departed();
        }
    })
}

unsafe extern "C" fn on_client_change(
    _ctx: *mut Ctx,
    _event: raw::RedisModuleEvent,
    sub: u64,
    data: *mut c_void,
) {
    ffi::guard("client event", (), || {
        if sub == raw::REDISMODULE_SUBEVENT_CLIENT_CHANGE_DISCONNECTED {
            // SAFETY: CLIENT_CHANGE passes a RedisModuleClientInfo.
            if let Some(info) = unsafe { data.cast::<raw::RedisModuleClientInfo>().as_ref() } {
                sessions::client_gone(info.id);
            }
        }
    })
}

/// FLUSHDB/FLUSHALL ended or databases were swapped: locks may be gone, and
/// session leases may live in another database now.
unsafe extern "C" fn on_keyspace_reset(
    _ctx: *mut Ctx,
    event: raw::RedisModuleEvent,
    sub: u64,
    data: *mut c_void,
) {
    ffi::guard("flush event", (), || {
        if event.id == raw::REDISMODULE_EVENT_SWAPDB {
            // SAFETY: SWAPDB passes a RedisModuleSwapDbInfo.
            if let Some(info) = unsafe { data.cast::<raw::RedisModuleSwapDbInfo>().as_ref() } {
                sessions::dbs_swapped(info.dbnum_first, info.dbnum_second);
            }
        } else if sub == raw::REDISMODULE_SUBEVENT_FLUSHDB_END {
            // SAFETY: FLUSHDB passes a RedisModuleFlushInfo.
            let flushed = unsafe { data.cast::<raw::RedisModuleFlushInfo>().as_ref() }
                .map(|info| info.dbnum)
                .filter(|&db| db >= 0);
            // Checked against the keyspace after the command: `DEBUG
            // RELOAD` flushes and loads the same leases back.
            sessions::prune_later(flushed);
        } else {
            return;
        }
        for lk in waiters::all_keys() {
            waiters::schedule(&lk);
        }
    })
}

unsafe extern "C" fn on_fork(
    ctx: *mut Ctx,
    _event: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut c_void,
) {
    ffi::guard("fork event", (), || {
        if sub == raw::REDISMODULE_SUBEVENT_FORK_CHILD_BORN {
            replicate::stream_opened();
            persist::fork_started(ctx);
        }
    })
}

/// A save in the main process (`SAVE`, a `FLUSHALL` or `SHUTDOWN` that
/// saves, `DEBUG RELOAD`): the file carries the replication id of a backlog
/// that may exist without any fork (a replica that left before its full sync
/// forked), and a node started from it may continue from that backlog.
unsafe extern "C" fn on_persistence(
    _ctx: *mut Ctx,
    _event: raw::RedisModuleEvent,
    sub: u64,
    _data: *mut c_void,
) {
    ffi::guard("persistence event", (), || {
        if sub == raw::REDISMODULE_SUBEVENT_PERSISTENCE_SYNC_RDB_START {
            replicate::stream_may_have_opened();
        }
    })
}

fn subscribe(ctx: *mut Ctx, id: u64, cb: raw::RedisModuleEventCallback) -> Result<(), String> {
    let event = raw::RedisModuleEvent { id, dataver: 1 };
    if api!(RedisModule_SubscribeToServerEvent, ctx, event, cb) == raw::REDISMODULE_OK as c_int {
        Ok(())
    } else {
        Err(format!("could not subscribe to server event {id}"))
    }
}

pub fn register(ctx: *mut Ctx) -> Result<(), String> {
    state::set_primary(ffi::context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_SLAVE == 0);
    subscribe(ctx, raw::REDISMODULE_EVENT_LOADING, Some(on_loading))?;
    subscribe(
        ctx,
        raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED,
        Some(on_role_change),
    )?;
    subscribe(
        ctx,
        raw::REDISMODULE_EVENT_CLIENT_CHANGE,
        Some(on_client_change),
    )?;
    subscribe(ctx, raw::REDISMODULE_EVENT_FLUSHDB, Some(on_keyspace_reset))?;
    subscribe(ctx, raw::REDISMODULE_EVENT_SWAPDB, Some(on_keyspace_reset))?;
    subscribe(ctx, raw::REDISMODULE_EVENT_FORK_CHILD, Some(on_fork))?;
    subscribe(
        ctx,
        raw::REDISMODULE_EVENT_PERSISTENCE,
        Some(on_persistence),
    )?;
    if api!(
        RedisModule_SubscribeToKeyspaceEvents,
        ctx,
        raw::REDISMODULE_NOTIFY_EXPIRED,
        Some(on_expired)
    ) != raw::REDISMODULE_OK as c_int
    {
        return Err("could not subscribe to expired keyspace events".into());
    }
    Ok(())
}
