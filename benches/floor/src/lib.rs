//! `FLOOR.ACQUIRE key owner ttl-ms`: the module-API floor of a lock grant,
//! loaded beside lockwarden by `loadcompare` (scenario (a)).
//!
//! It makes the server calls a fresh `LOCK.ACQUIRE` makes and nothing else:
//! read the three arguments, open the key for writing, check that it is
//! empty, store an 80-byte value of a module type (a lease's size, allocated
//! with the server's allocator), set an absolute expiry, publish a keyspace
//! event, count the change (`RedisModule_ReplicateVerbatim`, as lockwarden
//! does when nothing reads the replication stream), reply with two integers
//! (a 16-digit number, like a token, and the TTL), close the key. A held key
//! gets nil. No validation beyond the TTL, no policies, no token clock: the
//! difference between `LOCK.ACQUIRE` and this is what lockwarden's own code
//! costs; the difference between this and `SET NX PX` is what going through
//! the module API costs any module.
//!
//! Bench-only: values cannot be saved (no RDB or AOF: the bench server runs
//! with `--save '' --appendonly no`).

use redis_module::raw;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;

/// The size of a lockwarden lease with an inline owner.
const VALUE_LEN: usize = 80;

/// The registered type; written once by `RedisModule_OnLoad`.
static mut TYPE: *mut raw::RedisModuleType = null_mut();

/// A counter standing in for the token clock (16 digits, as tokens are).
static mut NEXT: i64 = 1_800_000_000_000_000;

macro_rules! api {
    ($name:ident $(, $arg:expr)* $(,)?) => {
        // SAFETY: the function pointers are written by RedisModule_Init
        // before any callback runs; arguments are what the server passed.
        unsafe { raw::$name.unwrap()($($arg),*) }
    };
}

unsafe extern "C" fn free(value: *mut c_void) {
    api!(RedisModule_Free, value);
}

unsafe extern "C" fn acquire(
    ctx: *mut raw::RedisModuleCtx,
    argv: *mut *mut raw::RedisModuleString,
    argc: c_int,
) -> c_int {
    if argc != 4 {
        return api!(RedisModule_WrongArity, ctx);
    }
    // SAFETY: the server passes `argc` valid strings.
    let args = unsafe { std::slice::from_raw_parts(argv, 4) };
    let mut len = 0;
    for &arg in &args[1..] {
        api!(RedisModule_StringPtrLen, arg, &mut len);
    }
    let mut ttl: i64 = 0;
    if api!(RedisModule_StringToLongLong, args[3], &mut ttl) != raw::REDISMODULE_OK as c_int {
        return api!(RedisModule_ReplyWithError, ctx, c"ERR bad ttl".as_ptr());
    }
    let now_ms = match unsafe { raw::RedisModule_CachedMicroseconds } {
        // SAFETY: no arguments.
        Some(cached) => (unsafe { cached() }) / 1000,
        None => api!(RedisModule_Milliseconds),
    };
    let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int;
    let key = api!(RedisModule_OpenKey, ctx, args[1], mode).cast::<raw::RedisModuleKey>();
    if api!(RedisModule_KeyType, key) == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
        let value = api!(RedisModule_Calloc, 1, VALUE_LEN);
        // SAFETY: TYPE was set at load, before any command.
        let ty = unsafe { TYPE };
        api!(RedisModule_ModuleTypeSetValue, key, ty, value);
        api!(RedisModule_SetAbsExpire, key, now_ms + ttl);
        api!(
            RedisModule_NotifyKeyspaceEvent,
            ctx,
            raw::REDISMODULE_NOTIFY_MODULE,
            c"floor.acquired".as_ptr(),
            args[1]
        );
        api!(RedisModule_ReplicateVerbatim, ctx);
        // SAFETY: commands run on the main thread only.
        let token = unsafe {
            NEXT += 1;
            NEXT
        };
        api!(RedisModule_ReplyWithArray, ctx, 2);
        api!(RedisModule_ReplyWithLongLong, ctx, token);
        api!(RedisModule_ReplyWithLongLong, ctx, ttl);
    } else {
        api!(RedisModule_ReplyWithNull, ctx);
    }
    api!(RedisModule_CloseKey, key);
    raw::REDISMODULE_OK as c_int
}

/// Module entry point.
///
/// # Safety
/// Called by the server with a valid context.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn RedisModule_OnLoad(
    ctx: *mut raw::RedisModuleCtx,
    _argv: *mut *mut raw::RedisModuleString,
    _argc: c_int,
) -> c_int {
    let err = raw::REDISMODULE_ERR as c_int;
    // SAFETY: Init fills in the API function pointers from `ctx`.
    let init = unsafe {
        raw::Export_RedisModule_Init(
            ctx,
            c"lwfloor".as_ptr(),
            1,
            raw::REDISMODULE_APIVER_1 as c_int,
        )
    };
    if init != raw::REDISMODULE_OK as c_int {
        return err;
    }
    // SAFETY: every field is an integer or an optional function pointer,
    // for which all zeroes are 0 and None: no callbacks but `free`.
    let mut methods: raw::RedisModuleTypeMethods = unsafe { std::mem::zeroed() };
    methods.version = raw::REDISMODULE_TYPE_METHOD_VERSION as u64;
    methods.free = Some(free);
    let ty = api!(
        RedisModule_CreateDataType,
        ctx,
        c"lwfloor00".as_ptr(),
        0,
        &mut methods
    );
    if ty.is_null() {
        return err;
    }
    // SAFETY: load runs once, before any command.
    unsafe { TYPE = ty };
    api!(
        RedisModule_CreateCommand,
        ctx,
        c"floor.acquire".as_ptr(),
        Some(acquire),
        c"write deny-oom fast".as_ptr(),
        1,
        1,
        1
    )
}
