//! `FLOOR.ACQUIRE key owner ttl-ms`: the module-API floor of a lock grant,
//! loaded beside lockwarden by `loadcompare` (scenario (a)).
//!
//! It makes the server calls a fresh lock grant needs and nothing else:
//! read the three arguments, open the key for writing, check that it is
//! empty, ask for the client's id (a lease records it), store an 80-byte
//! value of a module type (a lease's size on x86-64, allocated with the
//! server's allocator), set an absolute expiry, publish a keyspace event,
//! count the change (`RedisModule_ReplicateVerbatim`, as lockwarden does when
//! nothing reads the replication stream), reply with two integers (a
//! 16-digit number, like a token, and the TTL), close the key. A held key
//! gets nil. No validation beyond a positive TTL, no policies, no token
//! clock: the difference between `LOCK.ACQUIRE` and this is what
//! lockwarden's own code costs (including the one server call it makes
//! beyond these: it asks the key's type again before storing); the
//! difference between this and `SET NX PX` is what going through the module
//! API costs any module.
//!
//! Bench-only: an RDB saves the values as nothing and loads them back
//! zeroed, and there is no AOF rewrite (the bench server runs with `--save
//! '' --appendonly no`).

use redis_module::raw;
use std::ffi::{c_int, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicI64, AtomicPtr, Ordering::Relaxed};

/// The size of a lockwarden lease with an inline owner.
const VALUE_LEN: usize = 80;

/// The registered type; written once by `RedisModule_OnLoad`.
static TYPE: AtomicPtr<raw::RedisModuleType> = AtomicPtr::new(null_mut());

/// A counter standing in for the token clock (16 digits, as tokens are).
static NEXT: AtomicI64 = AtomicI64::new(1_800_000_000_000_000);

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

unsafe extern "C" fn rdb_save(_rdb: *mut raw::RedisModuleIO, _value: *mut c_void) {}

unsafe extern "C" fn rdb_load(_rdb: *mut raw::RedisModuleIO, _encver: c_int) -> *mut c_void {
    api!(RedisModule_Calloc, 1, VALUE_LEN)
}

/// The bytes of an argument.
fn bytes<'a>(arg: *mut raw::RedisModuleString) -> &'a [u8] {
    let mut len = 0;
    let ptr = api!(RedisModule_StringPtrLen, arg, &mut len);
    // SAFETY: the server returns `len` readable bytes, alive for the command.
    unsafe { std::slice::from_raw_parts(ptr.cast(), len) }
}

/// A positive decimal TTL in ms, parsed by lockwarden's own parser.
fn ttl_ms(arg: &[u8]) -> Option<i64> {
    lockwarden_core::parse::parse_u64(arg)
        .and_then(|ttl| i64::try_from(ttl).ok())
        .filter(|&ttl| ttl > 0)
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
    // Read as lockwarden reads them (it parses the key and owner too).
    let [_key, _owner, ttl] = [1, 2, 3].map(|i| bytes(args[i]));
    let Some(ttl) = ttl_ms(ttl) else {
        return api!(RedisModule_ReplyWithError, ctx, c"ERR bad ttl".as_ptr());
    };
    let now_ms = match unsafe { raw::RedisModule_CachedMicroseconds } {
        // SAFETY: no arguments.
        Some(cached) => (unsafe { cached() }) / 1000,
        None => api!(RedisModule_Milliseconds),
    };
    let mode = (raw::REDISMODULE_READ | raw::REDISMODULE_WRITE) as c_int;
    let key = api!(RedisModule_OpenKey, ctx, args[1], mode).cast::<raw::RedisModuleKey>();
    if api!(RedisModule_KeyType, key) == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
        let client_id = api!(RedisModule_GetClientId, ctx);
        let token = NEXT.fetch_add(1, Relaxed) + 1;
        let deadline = now_ms.saturating_add(ttl);
        let value = api!(RedisModule_Calloc, 1, VALUE_LEN).cast::<i64>();
        // SAFETY: a fresh, zeroed, 8-aligned allocation of VALUE_LEN bytes.
        unsafe {
            let fields = std::slice::from_raw_parts_mut(value, VALUE_LEN / 8);
            fields[..3].copy_from_slice(&[token, deadline, client_id as i64]);
        }
        api!(
            RedisModule_ModuleTypeSetValue,
            key,
            TYPE.load(Relaxed),
            value.cast()
        );
        api!(RedisModule_SetAbsExpire, key, deadline);
        api!(
            RedisModule_NotifyKeyspaceEvent,
            ctx,
            raw::REDISMODULE_NOTIFY_MODULE,
            c"floor.acquired".as_ptr(),
            args[1]
        );
        api!(RedisModule_ReplicateVerbatim, ctx);
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
    methods.rdb_save = Some(rdb_save);
    methods.rdb_load = Some(rdb_load);
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
    TYPE.store(ty, Relaxed);
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
