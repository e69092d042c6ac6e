//! The thin, unsafe edge between Redis and the rest of the adaptor: calls into
//! the module API, the panic barrier every callback goes through, and small
//! RAII wrappers. Nothing here decides anything about locks.

use redis_module::raw;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::mem::MaybeUninit;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;

pub use raw::{RedisModuleCtx as Ctx, RedisModuleString as RString};

/// Calls a module API function, which `RedisModule_Init` filled in. Every
/// function used is checked at load time by [`missing_apis`], so the unwrap
/// cannot fail afterwards.
///
/// Safety contract (why the macro may wrap the call in `unsafe`): callers
/// pass only pointers Redis handed to the current callback (contexts, keys,
/// strings, IO handles) or buffers that outlive the call, and variadic calls
/// pass exactly the arguments their format string names.
macro_rules! api {
    ($name:ident $(, $arg:expr)* $(,)?) => {
        // SAFETY: see the macro documentation; the function pointers are
        // written once by RedisModule_Init before any callback runs.
        unsafe { redis_module::raw::$name.unwrap()($($arg),*) }
    };
}
pub(crate) use api;

/// Names of required module API functions that this server does not export.
pub fn missing_apis() -> Vec<&'static str> {
    macro_rules! check {
        ($($name:ident),* $(,)?) => {{
            let mut missing = Vec::new();
            // SAFETY: reading function pointers filled in by RedisModule_Init.
            $( if unsafe { raw::$name }.is_none() { missing.push(stringify!($name)); } )*
            missing
        }};
    }
    check!(
        RedisModule_OpenKey,
        RedisModule_CloseKey,
        RedisModule_KeyType,
        RedisModule_ModuleTypeGetType,
        RedisModule_ModuleTypeGetValue,
        RedisModule_ModuleTypeSetValue,
        RedisModule_SetAbsExpire,
        RedisModule_DeleteKey,
        RedisModule_Replicate,
        RedisModule_ReplyWithArray,
        RedisModule_ReplyWithMap,
        RedisModule_ReplyWithLongLong,
        RedisModule_ReplyWithNull,
        RedisModule_ReplyWithError,
        RedisModule_ReplyWithSimpleString,
        RedisModule_ReplyWithStringBuffer,
        RedisModule_StringPtrLen,
        RedisModule_GetClientId,
        RedisModule_GetClientInfoById,
        RedisModule_GetContextFlags,
        RedisModule_Milliseconds,
        RedisModule_EmitAOF,
        RedisModule_SaveStringBuffer,
        RedisModule_LoadStringBuffer,
        RedisModule_IsIOError,
        RedisModule_DigestAddStringBuffer,
        RedisModule_DigestAddLongLong,
        RedisModule_DigestEndSequence,
        RedisModule_Log,
        RedisModule_Alloc,
        RedisModule_Free,
        RedisModule_SetModuleOptions,
        RedisModule_CreateCommand,
        RedisModule_GetCommand,
        RedisModule_CreateSubcommand,
        RedisModule_CreateDataType,
        RedisModule_RegisterInfoFunc,
        RedisModule_InfoAddSection,
        RedisModule_InfoAddFieldLongLong,
        RedisModule_InfoAddFieldULongLong,
        RedisModule_InfoAddFieldCString,
        RedisModule_BlockClient,
        RedisModule_UnblockClient,
        RedisModule_GetBlockedClientPrivateData,
        RedisModule_GetBlockedClientHandle,
        RedisModule_SetDisconnectCallback,
        RedisModule_CreateTimer,
        RedisModule_StopTimer,
        RedisModule_SelectDb,
        RedisModule_GetSelectedDb,
        RedisModule_CreateString,
        RedisModule_FreeString,
        RedisModule_GetDetachedThreadSafeContext,
        RedisModule_NotifyKeyspaceEvent,
        RedisModule_SubscribeToKeyspaceEvents,
        RedisModule_SubscribeToServerEvent,
        RedisModule_ReplicateVerbatim,
        RedisModule_GetServerVersion,
        RedisModule_RegisterClusterMessageReceiver,
        RedisModule_SendClusterMessage,
        RedisModule_RegisterNumericConfig,
        RedisModule_RegisterBoolConfig,
        RedisModule_RegisterEnumConfig,
        RedisModule_LoadConfigs,
        RedisModule_SaveUnsigned,
        RedisModule_LoadUnsigned,
        RedisModule_Call,
        RedisModule_CallReplyType,
        RedisModule_CallReplyInteger,
        RedisModule_CallReplyLength,
        RedisModule_CallReplyArrayElement,
        RedisModule_CallReplyStringPtr,
        RedisModule_FreeCallReply,
        RedisModule_GetClientUserNameById,
        RedisModule_SetCommandInfo,
        RedisModule_AvoidReplicaTraffic,
        RedisModule_GetKeyNameFromOptCtx,
        RedisModule_GetDbIdFromOptCtx,
        RedisModule_GetModuleUserFromUserName,
        RedisModule_ACLCheckKeyPermissions,
        RedisModule_FreeModuleUser,
    )
}

/// Runs `f`, turning a panic into `fallback` and a log line: no panic may
/// unwind into Redis.
pub fn guard<R>(what: &str, fallback: R, f: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            report_panic(what, payload);
            fallback
        }
    }
}

/// Logs a caught panic (out of line: every callback's guard shares it).
#[cold]
#[inline(never)]
fn report_panic(what: &str, payload: Box<dyn std::any::Any + Send>) {
    let msg = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string());
    tracing::error!("internal error in {what}: {msg}");
}

/// The bytes of a Redis string, borrowed for as long as the string lives.
///
/// # Safety
/// `s` must be a valid string that outlives the returned slice.
pub unsafe fn bytes<'a>(s: *const RString) -> &'a [u8] {
    let mut len = 0usize;
    let ptr = api!(RedisModule_StringPtrLen, s, &mut len);
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: Redis guarantees `len` readable bytes at `ptr`.
        unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) }
    }
}

/// A Redis string the module created, freed on drop.
pub struct OwnedString {
    ptr: *mut RString,
}

impl OwnedString {
    pub fn new(bytes: &[u8]) -> Self {
        OwnedString {
            ptr: api!(
                RedisModule_CreateString,
                std::ptr::null_mut(),
                bytes.as_ptr().cast(),
                bytes.len()
            ),
        }
    }

    /// Takes ownership of a string Redis returned (NULL → `None`).
    pub fn adopt(ptr: *mut RString) -> Option<Self> {
        // `then`, not `then_some`: a NULL must never become an OwnedString
        // (dropping it would free NULL).
        (!ptr.is_null()).then(|| OwnedString { ptr })
    }

    pub fn raw(&self) -> *mut RString {
        self.ptr
    }
}

impl Drop for OwnedString {
    fn drop(&mut self) {
        api!(RedisModule_FreeString, std::ptr::null_mut(), self.ptr);
    }
}

/// A context the module keeps for its own timers (created at load).
static TIMER_CTX: std::sync::atomic::AtomicPtr<Ctx> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

pub fn init_timer_ctx(ctx: *mut Ctx) {
    TIMER_CTX.store(
        api!(RedisModule_GetDetachedThreadSafeContext, ctx),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Starts a one-shot timer calling `cb(ctx, data)` after `delay_ms`.
pub fn start_timer(
    delay_ms: i64,
    cb: unsafe extern "C" fn(*mut Ctx, *mut c_void),
    data: *mut c_void,
) -> u64 {
    let ctx = TIMER_CTX.load(std::sync::atomic::Ordering::Relaxed);
    // Redis adds the delay, in microseconds, to the current time: keep it
    // far from overflowing (a later timer re-arms if need be).
    let delay = delay_ms.clamp(0, lockwarden_sdk::MAX_WAIT_MS as i64);
    api!(RedisModule_CreateTimer, ctx, delay, Some(cb), data)
}

/// Stops a timer that has not fired; returns its data pointer.
pub fn stop_timer(id: u64) -> Option<*mut c_void> {
    let ctx = TIMER_CTX.load(std::sync::atomic::Ordering::Relaxed);
    let mut data = std::ptr::null_mut();
    (api!(RedisModule_StopTimer, ctx, id, &mut data) == raw::REDISMODULE_OK as c_int)
        .then_some(data)
}

pub fn selected_db(ctx: *mut Ctx) -> i32 {
    api!(RedisModule_GetSelectedDb, ctx)
}

pub fn select_db(ctx: *mut Ctx, db: i32) {
    api!(RedisModule_SelectDb, ctx, db);
}

/// Runs `command argument` (e.g. `INFO persistence`) and hands its text
/// reply to `f`; `None` if the call failed.
pub fn with_call_text<R>(
    ctx: *mut Ctx,
    command: &CStr,
    argument: &CStr,
    f: impl FnOnce(&[u8]) -> R,
) -> Option<R> {
    let reply = api!(
        RedisModule_Call,
        ctx,
        command.as_ptr(),
        c"c".as_ptr(),
        argument.as_ptr()
    );
    if reply.is_null() {
        return None;
    }
    let mut len = 0usize;
    let p = api!(RedisModule_CallReplyStringPtr, reply, &mut len);
    let result = (!p.is_null()).then(|| {
        // SAFETY: the reply owns `len` bytes at `p` until it is freed below.
        f(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
    });
    api!(RedisModule_FreeCallReply, reply);
    result
}

/// The text of an `INFO` section.
pub struct Info(String);

impl Info {
    pub fn from_text(text: &[u8]) -> Self {
        Info(String::from_utf8_lossy(text).into_owned())
    }

    /// The value of field `name` (`name:value` lines).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    }

    /// Is field `name` `1`?
    pub fn is_on(&self, name: &str) -> bool {
        self.get(name) == Some("1")
    }
}

/// `INFO section` from the server; `None` if the call failed.
pub fn info(ctx: *mut Ctx, section: &CStr) -> Option<Info> {
    with_call_text(ctx, c"INFO", section, Info::from_text)
}

/// Publishes a module keyspace event (`notify-keyspace-events` class `d`).
pub fn notify(ctx: *mut Ctx, event: &CStr, key: *mut RString) {
    api!(
        RedisModule_NotifyKeyspaceEvent,
        ctx,
        raw::REDISMODULE_NOTIFY_MODULE,
        event.as_ptr(),
        key
    );
}

/// Arguments a command reads without allocating: the lock commands take at
/// most six after their name, `LOCK.LIST` eight (more is an error).
const INLINE_ARGS: usize = 8;

/// A command invocation: the context and its arguments.
pub struct Call<'a> {
    pub ctx: *mut Ctx,
    pub argv: &'a [*mut RString],
}

impl<'a> Call<'a> {
    /// # Safety
    /// Must be called with the pointers Redis passed to a command callback.
    pub unsafe fn new(ctx: *mut Ctx, argv: *mut *mut RString, argc: c_int) -> Self {
        let argv = if argv.is_null() || argc <= 0 {
            &[][..]
        } else {
            // SAFETY: Redis passes `argc` valid string pointers.
            unsafe { std::slice::from_raw_parts(argv, argc as usize) }
        };
        Call { ctx, argv }
    }

    /// Runs `f` on the arguments after the command name, as byte slices
    /// (on the stack, neither initialised nor copied beyond what the command
    /// passed, for up to [`INLINE_ARGS`] of them).
    #[inline(always)]
    pub fn with_args<R>(&self, f: impl FnOnce(&[&'a [u8]]) -> R) -> R {
        let rest = self.argv.get(1..).unwrap_or_default();
        if rest.len() > INLINE_ARGS {
            return Self::many_args(rest, f);
        }
        let mut buf = [MaybeUninit::<&'a [u8]>::uninit(); INLINE_ARGS];
        for (slot, &s) in buf.iter_mut().zip(rest) {
            // SAFETY: the argument strings live until the command returns.
            slot.write(unsafe { bytes(s) });
        }
        // SAFETY: the loop wrote the first `rest.len()` elements.
        f(unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), rest.len()) })
    }

    #[cold]
    #[inline(never)]
    fn many_args<R>(rest: &[*mut RString], f: impl FnOnce(&[&'a [u8]]) -> R) -> R {
        // SAFETY: the argument strings live until the command returns.
        let args: Vec<&'a [u8]> = rest.iter().map(|&s| unsafe { bytes(s) }).collect();
        f(&args)
    }

    /// The key argument (argv[1]) as a Redis string, for opening and replication.
    pub fn key(&self) -> *mut RString {
        self.argv[1]
    }

    pub fn flags(&self) -> u32 {
        context_flags(self.ctx)
    }

    pub fn client_id(&self) -> u64 {
        api!(RedisModule_GetClientId, self.ctx)
    }

    pub fn db(&self) -> i32 {
        selected_db(self.ctx)
    }
}

/// Is the client with this id connected to this node?
pub fn client_connected(id: u64) -> bool {
    id != 0
        && api!(RedisModule_GetClientInfoById, std::ptr::null_mut(), id)
            == raw::REDISMODULE_OK as c_int
}

pub fn context_flags(ctx: *mut Ctx) -> u32 {
    api!(RedisModule_GetContextFlags, ctx) as u32
}

/// The time of the current command, in unix ms. On servers that export it
/// (Redis 7.2+, Valkey) this is the cached command time, the very instant Redis
/// uses to decide key expiry during the command; on 7.0 it is the wall clock,
/// at most a fraction of a millisecond later.
pub fn command_now_ms() -> i64 {
    // SAFETY: reading a function pointer set by RedisModule_Init.
    match unsafe { raw::RedisModule_CachedMicroseconds } {
        // SAFETY: no arguments.
        Some(cached) => (unsafe { cached() }) / 1000,
        None => wall_now_ms(),
    }
}

/// The wall clock now, in unix ms.
pub fn wall_now_ms() -> i64 {
    api!(RedisModule_Milliseconds)
}

/// May a callback that is not a client command (a timer, an event, a
/// blocked client's reply) write to the keyspace and propagate now?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    Allowed,
    /// Writes are paused (`CLIENT PAUSE`, `FAILOVER`, a cluster manual
    /// failover): Redis keeps expired keys in place and asserts that nothing
    /// is propagated. Try again later.
    Paused,
    /// This node follows a primary, which decides every write.
    Replica,
}

/// A pause comes first: a paused replica must not propagate into its own
/// AOF either (the AOF re-emission after a fork runs on replicas too).
pub fn writes(ctx: *mut Ctx) -> Writes {
    if api!(RedisModule_AvoidReplicaTraffic) != 0 {
        Writes::Paused
    } else if context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_SLAVE != 0 {
        Writes::Replica
    } else {
        Writes::Allowed
    }
}

/// How long a deferred write waits before looking again while writes are
/// paused.
pub const PAUSED_RETRY_MS: i64 = 10;

/// The most items (session locks released, waiters failed, index entries
/// checked) one callback handles before it lets the event loop run and goes
/// on from a timer, so no burst blocks the server for long.
pub const ITEMS_PER_TURN: usize = 256;

/// For a timer `cb` that writes and carries a `Box<T>` as `data`: the box,
/// if the timer may write now. While writes are paused the box is handed on
/// to a new timer `cb`, [`PAUSED_RETRY_MS`] later; on a replica it is
/// dropped (the primary decides).
///
/// # Safety
/// `data` must be a `Box<T>` pointer handed over to this timer once.
pub unsafe fn writable_timer_data<T>(
    ctx: *mut Ctx,
    data: *mut c_void,
    cb: unsafe extern "C" fn(*mut Ctx, *mut c_void),
) -> Option<Box<T>> {
    match writes(ctx) {
        // SAFETY: per the contract, the box is this timer's to take.
        Writes::Allowed => Some(unsafe { Box::from_raw(data.cast::<T>()) }),
        Writes::Paused => {
            start_timer(PAUSED_RETRY_MS, cb, data);
            None
        }
        Writes::Replica => {
            // SAFETY: as above.
            drop(unsafe { Box::from_raw(data.cast::<T>()) });
            None
        }
    }
}

pub const CTX_REPLICATED: u32 = raw::REDISMODULE_CTX_FLAGS_REPLICATED;
/// Contexts in which a command must not block (MULTI/EXEC, scripts, ...).
pub const CTX_NO_BLOCKING: u32 = raw::REDISMODULE_CTX_FLAGS_MULTI
    | raw::REDISMODULE_CTX_FLAGS_LUA
    | raw::REDISMODULE_CTX_FLAGS_DENY_BLOCKING;
pub const CTX_LOADING: u32 = raw::REDISMODULE_CTX_FLAGS_LOADING;
/// This node is a replica.
pub const CTX_REPLICA: u32 = raw::REDISMODULE_CTX_FLAGS_SLAVE;
/// Inside a Lua script or function: the context's client is the script
/// engine's, not the connection that called the script.
pub const CTX_SCRIPT: u32 = raw::REDISMODULE_CTX_FLAGS_LUA;

/// An open key, closed on drop.
pub struct Key {
    ptr: NonNull<raw::RedisModuleKey>,
}

/// What an open key holds.
pub enum Slot<'k, T> {
    Empty,
    Ours(&'k mut T),
    Other,
}

impl Key {
    /// Opens a key for writing (on a primary, this expires it first if its
    /// time has passed).
    pub fn write(ctx: *mut Ctx, name: *mut RString) -> Key {
        Self::open(ctx, name, raw::REDISMODULE_READ | raw::REDISMODULE_WRITE)
            .expect("RedisModule_OpenKey returned NULL for writing")
    }

    /// Opens a key for reading; `None` when it does not exist (or has
    /// logically expired).
    pub fn read(ctx: *mut Ctx, name: *mut RString) -> Option<Key> {
        Self::open(ctx, name, raw::REDISMODULE_READ)
    }

    fn open(ctx: *mut Ctx, name: *mut RString, mode: u32) -> Option<Key> {
        let ptr = api!(RedisModule_OpenKey, ctx, name, mode as c_int).cast::<raw::RedisModuleKey>();
        NonNull::new(ptr).map(|ptr| Key { ptr })
    }

    pub fn raw(&self) -> *mut raw::RedisModuleKey {
        self.ptr.as_ptr()
    }

    /// The key's value, if it is empty or of module type `ty`.
    pub fn slot<T>(&mut self, ty: *mut raw::RedisModuleType) -> Slot<'_, T> {
        let kind = api!(RedisModule_KeyType, self.raw());
        if kind == raw::REDISMODULE_KEYTYPE_EMPTY as c_int {
            return Slot::Empty;
        }
        if kind == raw::REDISMODULE_KEYTYPE_MODULE as c_int
            && api!(RedisModule_ModuleTypeGetType, self.raw()) == ty
        {
            let v = api!(RedisModule_ModuleTypeGetValue, self.raw()).cast::<T>();
            // SAFETY: values of our type are always `Box<T>` pointers we set.
            if let Some(v) = unsafe { v.as_mut() } {
                return Slot::Ours(v);
            }
        }
        Slot::Other
    }

    /// Stores `value`, replacing whatever was there (and its expiry).
    pub fn set<T>(&mut self, ty: *mut raw::RedisModuleType, value: Box<T>) {
        let ptr = Box::into_raw(value).cast::<c_void>();
        let rc = api!(RedisModule_ModuleTypeSetValue, self.raw(), ty, ptr);
        if rc != raw::REDISMODULE_OK as c_int {
            // SAFETY: Redis did not take ownership; reclaim the box.
            drop(unsafe { Box::from_raw(ptr.cast::<T>()) });
            panic!("RedisModule_ModuleTypeSetValue failed");
        }
    }

    /// Sets the key's absolute expiry (unix ms).
    pub fn expire_at(&mut self, ms: i64) {
        api!(RedisModule_SetAbsExpire, self.raw(), ms);
    }

    pub fn delete(&mut self) {
        api!(RedisModule_DeleteKey, self.raw());
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        api!(RedisModule_CloseKey, self.raw());
    }
}

/// Replies.
pub mod reply {
    use super::*;

    pub fn error(ctx: *mut Ctx, msg: &str) {
        // Redis adds the leading '-'; the message must be one line.
        let clean: String = msg
            .chars()
            .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
            .collect();
        let c = std::ffi::CString::new(clean.replace('\0', " ")).expect("no NUL");
        api!(RedisModule_ReplyWithError, ctx, c.as_ptr());
    }

    pub fn ok(ctx: *mut Ctx) {
        api!(RedisModule_ReplyWithSimpleString, ctx, c"OK".as_ptr());
    }

    pub fn int(ctx: *mut Ctx, v: i64) {
        api!(RedisModule_ReplyWithLongLong, ctx, v);
    }

    pub fn null(ctx: *mut Ctx) {
        api!(RedisModule_ReplyWithNull, ctx);
    }

    pub fn array(ctx: *mut Ctx, len: usize) {
        api!(RedisModule_ReplyWithArray, ctx, len as _);
    }

    /// A map of `len` pairs (a flat array of 2×len under RESP2).
    pub fn map(ctx: *mut Ctx, len: usize) {
        api!(RedisModule_ReplyWithMap, ctx, len as _);
    }

    pub fn bulk(ctx: *mut Ctx, b: &[u8]) {
        api!(
            RedisModule_ReplyWithStringBuffer,
            ctx,
            b.as_ptr().cast::<c_char>(),
            b.len()
        );
    }
}

/// Logs through Redis's log (thread-safe with a NULL context).
pub fn log(level: &CStr, msg: &str) {
    let c = std::ffi::CString::new(msg.replace('\0', " ")).expect("no NUL");
    api!(
        RedisModule_Log,
        std::ptr::null_mut(),
        level.as_ptr(),
        c"%s".as_ptr(),
        c.as_ptr()
    );
}
