//! Node-wide state that is not a key: the token high-water mark, the process
//! incarnation and the policies.
//!
//! * RDB (and the AOF's RDB preamble): an aux field written before the
//!   keyspace.
//! * AOF without preamble: a rewrite only writes keys, so when a rewrite
//!   forks, the high-water mark (`LOCK._HIGHWATER`) and the policies
//!   (`LOCK.POLICY LOAD ... REPLACE`) are propagated again; they land in the
//!   new AOF's incremental file, which belongs to the rewritten AOF.
//!
//! Loading it raises the token clock (so tokens never go back after a restart
//! from RDB or `DEBUG RELOAD`, even if every lock had been released), and tells
//! [`crate::lease_type`] whether client ids in the RDB belong to this very
//! process (only then are they kept: a client id means nothing to another
//! process).

use crate::ffi::{self, api};
use crate::state::{self, MainThread};
use crate::{policies, replicate};
use redis_module::raw;
use std::cell::Cell;
use std::ffi::c_int;

const AUX_V1: u64 = 1;

/// True between loading an aux field written by this process and the end of
/// that load.
static KEEP_CLIENT_IDS: MainThread<Cell<bool>> = MainThread::new(Cell::new(false));

pub fn keeps_client_ids() -> bool {
    KEEP_CLIENT_IDS.get().get()
}

/// The RDB load finished (or failed): later `RESTORE`s come from elsewhere.
pub fn loading_ended() {
    KEEP_CLIENT_IDS.get().set(false);
}

pub unsafe extern "C" fn aux_save(rdb: *mut raw::RedisModuleIO, when: c_int) {
    ffi::guard("aux_save", (), || {
        if when != raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
            return;
        }
        api!(RedisModule_SaveUnsigned, rdb, AUX_V1);
        api!(RedisModule_SaveUnsigned, rdb, state::high_water());
        api!(RedisModule_SaveUnsigned, rdb, state::incarnation());
        let specs = policies::encoded();
        api!(
            RedisModule_SaveStringBuffer,
            rdb,
            specs.as_ptr().cast(),
            specs.len()
        );
    })
}

pub unsafe extern "C" fn aux_load(
    rdb: *mut raw::RedisModuleIO,
    _encver: c_int,
    when: c_int,
) -> c_int {
    ffi::guard("aux_load", raw::REDISMODULE_ERR as c_int, || {
        if when != raw::REDISMODULE_AUX_BEFORE_RDB as c_int {
            return raw::REDISMODULE_ERR as c_int;
        }
        let version = api!(RedisModule_LoadUnsigned, rdb);
        let high_water = api!(RedisModule_LoadUnsigned, rdb);
        let incarnation = api!(RedisModule_LoadUnsigned, rdb);
        let mut len = 0usize;
        let specs = api!(RedisModule_LoadStringBuffer, rdb, &mut len);
        let refused =
            if api!(RedisModule_IsIOError, rdb) != 0 || version != AUX_V1 || specs.is_null() {
                Some(format!(
                    "cannot load lockwarden aux data (version {version})"
                ))
            } else if high_water > lockwarden_core::clock::MAX_TOKEN {
                Some(format!(
                    "corrupt lockwarden aux data: high-water token {high_water}"
                ))
            } else {
                None
            };
        if let Some(why) = refused {
            tracing::warn!("{why}");
            if !specs.is_null() {
                api!(RedisModule_Free, specs.cast());
            }
            return raw::REDISMODULE_ERR as c_int;
        }
        state::observe_token(high_water);
        KEEP_CLIENT_IDS
            .get()
            .set(incarnation == state::incarnation());
        // SAFETY: Redis returned `len` bytes allocated with its allocator.
        let restored =
            policies::restore(unsafe { std::slice::from_raw_parts(specs.cast::<u8>(), len) });
        api!(RedisModule_Free, specs.cast());
        match restored {
            Ok(()) => raw::REDISMODULE_OK as c_int,
            Err(e) => {
                tracing::warn!("cannot load the policies saved in the RDB: {e}");
                raw::REDISMODULE_ERR as c_int
            }
        }
    })
}

/// A fork happened: if it is an AOF rewrite, put the node-wide state into
/// the new AOF. Whether it is one is asked now (the rewrite may be over
/// before the event loop turns), the writes are made from a timer: the fork
/// may happen inside a command (`BGREWRITEAOF`, `CONFIG SET appendonly yes`),
/// and a write propagated there would count as that command's, so Redis
/// would propagate the command itself to the replicas and the AOF too.
pub fn fork_started(ctx: *mut ffi::Ctx) {
    if aof_rewrite_in_progress(ctx) {
        REEMIT_PENDING.get().set(true);
        ffi::start_timer(0, reemit_later, std::ptr::null_mut());
    }
}

/// An AOF rewrite forked and the node-wide state is not re-emitted yet.
static REEMIT_PENDING: MainThread<Cell<bool>> = MainThread::new(Cell::new(false));

/// A policy is about to be loaded and propagated: a pending re-emission goes
/// first, or the new AOF would list that policy before the ones loaded
/// earlier (its `LOAD` would come first, the earlier ones' after it).
pub fn reemit_pending(ctx: *mut ffi::Ctx) {
    if REEMIT_PENDING.get().get() {
        reemit(ctx);
    }
}

/// Propagates the node-wide state again; while writes are paused (nothing
/// may be propagated then) it waits, from a timer. Anything propagated after
/// the rewrite's fork lands in the new AOF, however late.
fn reemit(ctx: *mut ffi::Ctx) {
    if ffi::writes(ctx) == ffi::Writes::Paused {
        ffi::start_timer(ffi::PAUSED_RETRY_MS, reemit_later, std::ptr::null_mut());
        return;
    }
    REEMIT_PENDING.get().set(false);
    replicate::high_water(ctx, state::high_water());
    policies::replicate_all(ctx);
}

unsafe extern "C" fn reemit_later(ctx: *mut ffi::Ctx, _data: *mut std::ffi::c_void) {
    ffi::guard("AOF re-emission", (), || reemit_pending(ctx));
}

fn aof_rewrite_in_progress(ctx: *mut ffi::Ctx) -> bool {
    ffi::info(ctx, c"persistence").is_some_and(|info| info.is_on("aof_rewrite_in_progress"))
}
