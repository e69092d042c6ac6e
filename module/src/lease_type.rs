//! The `lockwardn` module data type: one [`Lease`] per lock key.
//!
//! RDB and `DUMP`/`RESTORE` use the versioned encoding from
//! `lockwarden_core::lease`; the AOF gets one `LOCK._GRANT` per lock; the digest
//! covers every replicated field (not the node-local client id). Loading a
//! lease raises the token clock, so tokens keep increasing across restarts,
//! `DEBUG RELOAD`, `RESTORE` and slot migration. The RDB aux field carries the
//! token high-water mark and the policy registry (see [`crate::persist`]).

use crate::ffi::{self, api};
use crate::{events, persist, replicate, sessions, state, stats, waiters};
use lockwarden_core::lease::{self, Lease};
use redis_module::native_types::RedisType;
use redis_module::raw;
use std::ffi::{c_int, c_void};

/// Encoding version of the RDB value (the payload has its own version byte).
const ENCVER: i32 = 1;

pub static LEASE_TYPE: RedisType = RedisType::new(
    "lockwardn",
    ENCVER,
    raw::RedisModuleTypeMethods {
        version: raw::REDISMODULE_TYPE_METHOD_VERSION as u64,
        rdb_load: Some(rdb_load),
        rdb_save: Some(rdb_save),
        aof_rewrite: Some(aof_rewrite),
        mem_usage: Some(mem_usage),
        digest: Some(digest),
        free: Some(free),
        aux_load: Some(persist::aux_load),
        aux_save: Some(persist::aux_save),
        aux_save_triggers: raw::REDISMODULE_AUX_BEFORE_RDB as c_int,
        free_effort: None,
        unlink: None,
        copy: None,
        defrag: None,
        mem_usage2: None,
        free_effort2: None,
        unlink2: Some(unlink),
        copy2: None,
        aux_save2: None,
    },
);

/// The registered type, for opening keys.
pub fn ty() -> *mut raw::RedisModuleType {
    *LEASE_TYPE.raw_type.borrow()
}

/// Hands a lease to Redis as a key's value.
pub fn store(key: &mut ffi::Key, lease: Box<Lease>) {
    let deadline = lease.deadline_ms;
    key.set(ty(), lease);
    key.expire_at(deadline);
    stats::lock_created();
}

unsafe extern "C" fn rdb_load(rdb: *mut raw::RedisModuleIO, encver: c_int) -> *mut c_void {
    ffi::guard("rdb_load", std::ptr::null_mut(), || {
        if encver != ENCVER {
            tracing::warn!("cannot load a lock saved with encoding version {encver}");
            return std::ptr::null_mut();
        }
        let mut len = 0usize;
        let buf = api!(RedisModule_LoadStringBuffer, rdb, &mut len);
        if api!(RedisModule_IsIOError, rdb) != 0 || buf.is_null() {
            return std::ptr::null_mut();
        }
        // SAFETY: Redis returned `len` bytes allocated with its allocator.
        let decoded = lease::decode(unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) });
        api!(RedisModule_Free, buf.cast());
        match decoded {
            Ok(mut lease) => {
                state::observe_token(lease.token);
                if !persist::keeps_client_ids() {
                    lease.client_id = 0;
                }
                stats::lock_created();
                Box::into_raw(Box::new(lease)).cast()
            }
            Err(e) => {
                tracing::warn!("refusing to load a corrupt lock: {e}");
                std::ptr::null_mut()
            }
        }
    })
}

unsafe extern "C" fn rdb_save(rdb: *mut raw::RedisModuleIO, value: *mut c_void) {
    ffi::guard("rdb_save", (), || {
        // SAFETY: our values are always `Box<Lease>`.
        let lease = unsafe { &*value.cast::<Lease>() };
        let bytes = lease::encode(lease);
        api!(
            RedisModule_SaveStringBuffer,
            rdb,
            bytes.as_ptr().cast(),
            bytes.len()
        );
    })
}

unsafe extern "C" fn aof_rewrite(
    aof: *mut raw::RedisModuleIO,
    key: *mut raw::RedisModuleString,
    value: *mut c_void,
) {
    ffi::guard("aof_rewrite", (), || {
        // SAFETY: our values are always `Box<Lease>`.
        let lease = unsafe { &*value.cast::<Lease>() };
        replicate::emit_grant_aof(aof, key, lease);
    })
}

unsafe extern "C" fn mem_usage(value: *const c_void) -> usize {
    ffi::guard("mem_usage", 0, || {
        // SAFETY: our values are always `Box<Lease>`.
        unsafe { &*value.cast::<Lease>() }.mem_usage()
    })
}

unsafe extern "C" fn digest(md: *mut raw::RedisModuleDigest, value: *mut c_void) {
    ffi::guard("digest", (), || {
        // SAFETY: our values are always `Box<Lease>`.
        let l = unsafe { &*value.cast::<Lease>() };
        api!(
            RedisModule_DigestAddStringBuffer,
            md,
            l.owner.as_ptr().cast(),
            l.owner.len()
        );
        for v in [
            l.token as i64,
            l.deadline_ms,
            l.acquired_at_ms,
            l.extensions as i64,
            l.session as i64,
        ] {
            api!(RedisModule_DigestAddLongLong, md, v);
        }
        api!(RedisModule_DigestEndSequence, md);
    })
}

unsafe extern "C" fn free(value: *mut c_void) {
    // May run on a background thread (lazy free): touch only atomics.
    ffi::guard("free", (), || {
        // SAFETY: our values are always `Box<Lease>`, freed exactly once.
        drop(unsafe { Box::from_raw(value.cast::<Lease>()) });
        stats::lock_freed();
    })
}

unsafe extern "C" fn unlink(ctx: *mut raw::RedisModuleKeyOptCtx, value: *const c_void) {
    // Called on the main thread when the key leaves the keyspace: DEL,
    // UNLINK, expiry, eviction, overwrite, RENAME/MOVE away — not when a whole
    // database is emptied (FLUSHALL, see `events`). No writes are allowed
    // here; waiters are served from a timer. (`unlink2`, which also names
    // the database, so the lock's queue is found without a scan.)
    ffi::guard("unlink", (), || {
        let key = api!(RedisModule_GetKeyNameFromOptCtx, ctx);
        let db = api!(RedisModule_GetDbIdFromOptCtx, ctx);
        // SAFETY: our values are always `Box<Lease>`; the key name lives for
        // the duration of the callback.
        let (lease, name) = unsafe { (&*value.cast::<Lease>(), ffi::bytes(key)) };
        let now = ffi::wall_now_ms();
        stats::lock_unlinked(lease, now);
        sessions::forget(lease);
        events::lock_gone(name, lease, now);
        if !state::is_own_write() && waiters::total() > 0 {
            waiters::schedule(&waiters::LockKey {
                db,
                name: name.into(),
            });
        }
    })
}
