//! The one place that emits replication and AOF records. Effects, not
//! commands: a grant or extension travels as `LOCK._GRANT key owner
//! token:deadline-ms:acquired-at-ms:extensions:session` (absolute times, the
//! token); a release as `DEL` (`UNLINK` where `DEL` is renamed). Replicas and the AOF
//! replay these facts without consulting a clock or a policy. An AOF rewrite
//! writes each lease as that `LOCK._GRANT` and a `PERSIST`: the key's expiry
//! is Redis's to write (its `PEXPIREAT` follows, if the key has one), since
//! `PERSIST` or `PEXPIRE` may have moved it away from the lease's deadline.

use crate::ffi::{self, Ctx, RString, api};
use crate::logging::ThrottledLog;
use crate::state::MainThread;
use lockwarden_core::Lease;
use lockwarden_core::lease::GrantFields;
use redis_module::raw::{self, RedisModuleIO};
use std::cell::Cell;
use std::ffi::c_int;

/// Does anything read what this node propagates: an AOF, replicas, or a
/// replication backlog (kept for a replica's partial resync)? Without one,
/// Redis discards propagated commands (its `shouldPropagate`), and building
/// a record is a third of an acquire's cost (`RedisModule_Replicate` looks
/// the command up by name and copies its arguments): the records are then
/// not built. Every way a reader can come is seen:
/// - an AOF, a replica's full sync (and a `BGSAVE`) start with a fork
///   ([`stream_opened`]): what was written before is in the fork's
///   snapshot, what comes after is propagated;
/// - a backlog can also exist without a fork: a primary restarted from an
///   RDB keeps one so that its replicas continue partially, a promoted
///   replica keeps its own, and a replica that leaves before its full sync
///   forked leaves one behind, which only matters once a save in the main
///   process writes its id into a file a node may start from. After a
///   load, a role change or such a save the state is unknown
///   ([`stream_may_have_opened`]) and asked (`INFO`) before the next
///   record.
///
/// Once open it stays open (a backlog outlives its replicas).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Unknown,
    Closed,
    Open,
}

static STREAM: MainThread<Cell<Stream>> = MainThread::new(Cell::new(Stream::Unknown));

/// A fork: an AOF rewrite or a full sync may read the stream from now on.
pub fn stream_opened() {
    STREAM.get().set(Stream::Open);
}

/// A load or a role change: a backlog may exist now.
pub fn stream_may_have_opened() {
    if STREAM.get().get() == Stream::Closed {
        STREAM.get().set(Stream::Unknown);
    }
}

/// The state as last known (`INFO lockwarden` `propagation`).
pub fn stream() -> Stream {
    STREAM.get().get()
}

/// Inside a lock command: `Some(true)` once one of its records was skipped.
static COMMAND: MainThread<Cell<Option<bool>>> = MainThread::new(Cell::new(None));

/// Counts a command's change if it skipped records, and restores the
/// enclosing command's state, also when a handler panics.
struct CommandScope {
    ctx: *mut Ctx,
    outer: Option<bool>,
}

impl Drop for CommandScope {
    fn drop(&mut self) {
        if COMMAND.get().replace(self.outer) == Some(true) {
            api!(RedisModule_ReplicateVerbatim, self.ctx);
        }
    }
}

/// Runs the command whose context is `ctx`. Redis counts a change for its
/// save points (`save`, `rdb_changes_since_last_save`) in
/// `RedisModule_Replicate`, so a skipped record would leave a node that
/// only serves locks without automatic snapshots: a command that skipped
/// records counts its change with one `RedisModule_ReplicateVerbatim`
/// instead, which looks nothing up and, while the stream is closed (the
/// server's own test, the one [`stream_is_open`] asks), propagates nothing.
/// Where the server saw a reader before the module did (a backlog created
/// for a full sync that has not forked yet), the command itself can reach
/// the backlog; replicas and the AOF loader skip lock commands.
pub fn command<R>(ctx: *mut Ctx, f: impl FnOnce() -> R) -> R {
    let _scope = CommandScope {
        ctx,
        outer: COMMAND.get().replace(Some(false)),
    };
    f()
}

/// Is a record to be built? Always outside a command (timers, events: rare,
/// and `RedisModule_Replicate` counts the change); inside one only while
/// the stream is open, else the command counts its change ([`command`]).
#[inline]
fn build(ctx: *mut Ctx) -> bool {
    if propagating(ctx) {
        return true;
    }
    let running = COMMAND.get();
    if running.get().is_none() {
        return true;
    }
    running.set(Some(true));
    false
}

/// Is the stream open? Asks the server once after a load or a role change.
#[inline]
fn propagating(ctx: *mut Ctx) -> bool {
    match STREAM.get().get() {
        Stream::Open => true,
        Stream::Closed => false,
        Stream::Unknown => resolve(ctx),
    }
}

#[inline(never)]
fn resolve(ctx: *mut Ctx) -> bool {
    let open = stream_is_open(ctx);
    STREAM
        .get()
        .set(if open { Stream::Open } else { Stream::Closed });
    open
}

/// Redis's own test: an AOF is on, or a backlog exists (replicas have one).
/// Open if the server cannot be asked.
fn stream_is_open(ctx: *mut Ctx) -> bool {
    let on = |section: &std::ffi::CStr, name: &str| {
        ffi::info(ctx, section).is_none_or(|info| info.is_on(name))
    };
    on(c"persistence", "aof_enabled") || on(c"replication", "repl_backlog_active")
}

pub const GRANT_CMD: &std::ffi::CStr = c"LOCK._GRANT";

/// Calls a variadic emitter (`RedisModule_Replicate` or `RedisModule_EmitAOF`)
/// with `LOCK._GRANT key owner token:deadline:acquired-at:extensions:session`.
macro_rules! emit_grant {
    ($emit:ident, $target:expr, $key:expr, $lease:expr) => {{
        let l: &Lease = $lease;
        let fields = GrantFields::of(l);
        let f = fields.as_bytes();
        // The format string matches the argument list exactly.
        api!(
            $emit,
            $target,
            GRANT_CMD.as_ptr(),
            c"sbb".as_ptr(),
            $key,
            l.owner.as_ptr().cast::<std::ffi::c_char>(),
            l.owner.len(),
            f.as_ptr().cast::<std::ffi::c_char>(),
            f.len()
        )
    }};
}

/// Replicates a grant or extension of `lease` on `key`. `owner_arg` is the
/// command's own owner argument, if it has one: Redis then shares that string
/// instead of copying the owner (checked to hold the lease's owner).
#[inline]
pub fn grant(ctx: *mut Ctx, key: *mut RString, owner_arg: Option<*mut RString>, lease: &Lease) {
    if build(ctx) {
        emit_grant(ctx, key, owner_arg, lease);
    }
}

#[inline(never)]
fn emit_grant(ctx: *mut Ctx, key: *mut RString, owner_arg: Option<*mut RString>, lease: &Lease) {
    // SAFETY: command arguments live until the command returns.
    match owner_arg.filter(|&o| unsafe { crate::ffi::bytes(o) } == &*lease.owner) {
        Some(owner) => {
            let fields = GrantFields::of(lease);
            let f = fields.as_bytes();
            api!(
                RedisModule_Replicate,
                ctx,
                GRANT_CMD.as_ptr(),
                c"ssb".as_ptr(),
                key,
                owner,
                f.as_ptr().cast::<std::ffi::c_char>(),
                f.len()
            );
        }
        None => {
            emit_grant!(RedisModule_Replicate, ctx, key, lease);
        }
    }
}

/// Writes `lease` on `key` into an AOF rewrite, then `PERSIST`: the key's
/// own expiry, which Redis writes after it as `PEXPIREAT` if there is one,
/// is what the key gets back. (Not an option of `LOCK._GRANT`: an older
/// module must still load the file.)
pub fn emit_grant_aof(aof: *mut RedisModuleIO, key: *mut RString, lease: &Lease) {
    emit_grant!(RedisModule_EmitAOF, aof, key, lease);
    api!(
        RedisModule_EmitAOF,
        aof,
        c"PERSIST".as_ptr(),
        c"s".as_ptr(),
        key
    );
}

/// Lines about releases that could not be replicated.
static UNREPLICATED_LOG: ThrottledLog = ThrottledLog::new("unreplicated release", 1, "");

/// Replicates the removal of a lock: `DEL`, or `UNLINK` where
/// `rename-command` took `DEL` away (`RedisModule_Replicate` finds commands
/// by their configured names). With both gone the release stays on this
/// node only (a restart from the AOF, or a replica, has the lock until its
/// deadline), and the log says so.
pub fn delete(ctx: *mut Ctx, key: *mut RString) {
    if !build(ctx) {
        return;
    }
    for cmd in [c"DEL", c"UNLINK"] {
        let done = api!(RedisModule_Replicate, ctx, cmd.as_ptr(), c"s".as_ptr(), key);
        if done == raw::REDISMODULE_OK as c_int {
            return;
        }
    }
    if UNREPLICATED_LOG.admit(ffi::wall_now_ms()) {
        tracing::error!(
            "a lock release could not be replicated: DEL and UNLINK are both renamed (rename-command); replicas and the AOF, if any, keep the lock until its deadline"
        );
    }
}

/// Replicates the token clock's high-water mark.
pub fn high_water(ctx: *mut Ctx, token: u64) {
    if !build(ctx) {
        return;
    }
    api!(
        RedisModule_Replicate,
        ctx,
        c"LOCK._HIGHWATER".as_ptr(),
        c"l".as_ptr(),
        token as i64
    );
}
