//! The lock commands: parse → read state → policies → core rules → apply the
//! effect → replicate the effect → notify and count → reply. Every decision
//! is made in `lockwarden_core`; this file only moves data between Redis and
//! it.

use crate::ffi::{self, Call, Key, RString, Slot, api, reply};
use crate::lease_type::{self, ty};
use crate::logging::ThrottledLog;
use crate::policies::{self, Ask};
use crate::waiters::{self, LockKey};
use crate::{config, replicate, sessions, state, stats};
use lockwarden_core::rules::{self, Acquired, Caller};
use lockwarden_core::{Lease, LockError, parse};
use lockwarden_sdk::Operation;
use redis_module::raw;
use std::ffi::{CStr, c_int};

/// What a command handler returns: `Ok` once it has replied.
type Outcome = Result<(), LockError>;

/// Runs a command handler behind the panic barrier and turns its error into
/// the one error reply.
pub fn run(
    ctx: *mut ffi::Ctx,
    argv: *mut *mut RString,
    argc: c_int,
    handler: fn(&Call) -> Outcome,
) -> c_int {
    let completed = ffi::guard("command", false, || {
        // SAFETY: the pointers come straight from Redis's command callback.
        let call = unsafe { Call::new(ctx, argv, argc) };
        if let Err(e) = replicate::command(ctx, || handler(&call)) {
            stats::error(&e);
            if matches!(e, LockError::Denied { .. }) && call.argv.len() > 1 {
                ffi::notify(ctx, c"lock.denied", call.key());
            }
            reply::error(ctx, &e.to_string());
        }
        true
    });
    if !completed {
        // Handlers reply last, after every fallible step, so a panic means
        // the client has no reply yet.
        reply::error(
            ctx,
            "ERR internal error in lockwarden (details in the server log)",
        );
    }
    raw::REDISMODULE_OK as c_int
}

/// The lease in `key`, if it holds one; `WRONGTYPE` if it holds anything else.
fn current(key: &mut Key) -> Result<Option<&Lease>, LockError> {
    match key.slot::<Lease>(ty()) {
        Slot::Empty => Ok(None),
        Slot::Ours(l) => Ok(Some(&*l)),
        Slot::Other => Err(LockError::WrongType),
    }
}

/// Why a lease is being installed, for the keyspace event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    Acquired,
    Extended,
}

/// The lock key a grant goes to (in the context's selected database), and
/// the owner as a command argument when a command (not a handoff) made the
/// grant.
pub struct Target {
    pub name: *mut RString,
    pub owner_arg: Option<*mut RString>,
}

impl Target {
    /// The command's own key (argv[1]) and owner (argv[2]).
    fn of(call: &Call) -> Target {
        Target {
            name: call.key(),
            owner_arg: call.argv.get(2).copied(),
        }
    }
}

/// Applies a grant or extension decided on this node: replicates it, stores
/// `lease` in `key` (updating an existing lease in place, with its deadline
/// as the key's absolute expiry), keeps the session index, publishes the
/// keyspace event. The lease comes boxed, as a new key keeps it: moved by
/// pointer, not copied through every step. (An update in place, a retry or
/// an extension, copies it out of the box and frees it: one allocation more
/// than it needs, off the fresh grant's path.)
pub fn install(
    ctx: *mut ffi::Ctx,
    key: &mut Key,
    target: &Target,
    lease: Box<Lease>,
    kind: GrantKind,
    now_ms: i64,
) {
    let name = target.name;
    replicate::grant(ctx, name, target.owner_arg, &lease);
    sessions::track(ctx, &lease, name);
    put(key, lease, now_ms);
    ffi::notify(
        ctx,
        match kind {
            GrantKind::Acquired => c"lock.acquired",
            GrantKind::Extended => c"lock.extended",
        },
        name,
    );
}

/// Stores `lease` in `key` without replicating it.
fn put(key: &mut Key, lease: Box<Lease>, now_ms: i64) {
    let deadline = lease.deadline_ms;
    match key.slot::<Lease>(ty()) {
        Slot::Ours(existing) => {
            if existing.token != lease.token {
                // A new grant over an expired lease Redis had not reclaimed
                // yet: that lease expired while held.
                stats::lock_unlinked(existing, now_ms);
            }
            if existing.token != lease.token || existing.client_id != lease.client_id {
                sessions::forget(existing);
            }
            *existing = *lease;
            key.expire_at(deadline);
        }
        Slot::Empty | Slot::Other => lease_type::store(key, lease),
    }
}

pub fn notify_released(ctx: *mut ffi::Ctx, name: *mut RString) {
    ffi::notify(ctx, c"lock.released", name);
}

fn lock_key(call: &Call) -> LockKey {
    // SAFETY: argv[1] lives for the whole command.
    LockKey {
        db: call.db(),
        name: unsafe { ffi::bytes(call.key()) }.into(),
    }
}

/// The command key's queue, if clients wait for it (no allocation when
/// nobody waits anywhere, the common case).
#[inline(always)]
fn queue_of(call: &Call) -> Option<LockKey> {
    if waiters::total() == 0 {
        return None;
    }
    queue_with_waiters(call)
}

#[inline(never)]
fn queue_with_waiters(call: &Call) -> Option<LockKey> {
    Some(lock_key(call)).filter(|lk| waiters::len(lk) > 0)
}

fn waiting(queue: &Option<LockKey>) -> usize {
    queue.as_ref().map_or(0, waiters::len)
}

/// The question for the policies ([`policies::check`]: `Ok(ceiling)` or
/// `DENIED` / `POLICY`): `op` by `owner` (for `ttl_ms`) on `key`, as it is
/// now.
fn asking<'a>(
    op: Operation,
    key: &'a [u8],
    owner: &'a [u8],
    ttl_ms: u64,
    held: Option<&'a Lease>,
    queue: &Option<LockKey>,
    now: i64,
) -> Ask<'a> {
    Ask {
        op,
        key,
        owner,
        ttl_ms,
        // A lease past its deadline (kept by `PERSIST` or `RESTORE`, or seen
        // from a script) holds nothing, for the policies as for the rules.
        holder: held.filter(|l| l.is_live(now)),
        waiters: waiting(queue),
        now_ms: now,
    }
}

/// `LOCK.ACQUIRE key owner ttl-ms [WAIT timeout-ms] [SESSION]`
pub fn acquire(call: &Call) -> Outcome {
    if !decided_here(call)? {
        return Ok(());
    }
    let req = call.with_args(parse::acquire)?;
    if req.session && call.flags() & ffi::CTX_SCRIPT != 0 {
        return Err(session_in_script());
    }
    let queue = queue_of(call);
    // Earlier waiters come first: if the lock is free but clients queue for
    // it, hand it to them before considering this request.
    if let Some(lk) = &queue {
        waiters::serve(call.ctx, lk, call.key());
    }
    let now = ffi::command_now_ms();
    let mut key = Key::write(call.ctx, call.key());
    let limits = config::ttl_limits();
    let caller = Caller {
        client_id: call.client_id(),
    };
    let held = current(&mut key)?;
    let holder_deadline = held.map(|l| l.deadline_ms);
    let cap = policies::check(call, || {
        asking(
            Operation::Acquire,
            req.key,
            req.owner,
            req.ttl_ms,
            held,
            &queue,
            now,
        )
    })?;
    let outcome =
        state::with_clock(|clock| rules::acquire(held, &req, caller, cap, &limits, clock, now))?;
    match outcome {
        Acquired::Granted {
            lease,
            ttl_ms,
            fresh,
        } => {
            if fresh {
                stats::ACQUIRES_GRANTED.incr();
            } else {
                stats::ACQUIRES_RETRIED.incr();
            }
            let (token, deadline) = (lease.token, lease.deadline_ms);
            install(
                call.ctx,
                &mut key,
                &Target::of(call),
                Box::new(lease),
                GrantKind::Acquired,
                now,
            );
            // A retry resets the TTL, possibly shorter: the queue's timer
            // follows the holder's new deadline.
            if let Some(lk) = &queue {
                waiters::deadline_moved(lk, deadline, now);
            }
            reply::array(call.ctx, 2);
            reply::int(call.ctx, token as i64);
            reply::int(call.ctx, ttl_ms as i64);
        }
        Acquired::Contended => {
            drop(key);
            contended(call, &req, cap, holder_deadline.unwrap_or(now));
        }
    }
    Ok(())
}

/// Another owner holds the lock: nil, or with `WAIT` (where the client may
/// block) a place in the queue until `holder_deadline` at the latest. (Out
/// of line, like the errors: the grant's path stays short.)
#[inline(never)]
fn contended(call: &Call, req: &parse::Acquire<'_>, cap: Option<u64>, holder_deadline: i64) {
    stats::ACQUIRES_CONTENDED.incr();
    match req.wait_ms {
        Some(timeout) if call.flags() & ffi::CTX_NO_BLOCKING == 0 => {
            waiters::block(call.ctx, lock_key(call), req, cap, timeout, holder_deadline);
        }
        _ => reply::null(call.ctx),
    }
}

#[cold]
fn session_in_script() -> LockError {
    LockError::syntax(
        "SESSION cannot be used inside a script or function: the server does not tell modules which connection runs it",
    )
}

/// `LOCK.RELEASE key owner [FENCE token]`
pub fn release(call: &Call) -> Outcome {
    if !decided_here(call)? {
        return Ok(());
    }
    let req = call.with_args(parse::release)?;
    let now = ffi::command_now_ms();
    let mut key = Key::write(call.ctx, call.key());
    let queue = queue_of(call);
    let held = current(&mut key)?;
    policies::check(call, || {
        asking(Operation::Release, req.key, req.owner, 0, held, &queue, now)
    })?;
    rules::release(held, &req, now)?;
    state::own_write(|| key.delete());
    drop(key);
    replicate::delete(call.ctx, call.key());
    stats::RELEASES.incr();
    notify_released(call.ctx, call.key());
    if let Some(lk) = &queue {
        waiters::serve(call.ctx, lk, call.key());
    }
    reply::int(call.ctx, 1);
    Ok(())
}

/// `LOCK.EXTEND key owner ttl-ms [FENCE token]`
pub fn extend(call: &Call) -> Outcome {
    if !decided_here(call)? {
        return Ok(());
    }
    let req = call.with_args(parse::extend)?;
    let now = ffi::command_now_ms();
    let mut key = Key::write(call.ctx, call.key());
    let limits = config::ttl_limits();
    let queue = queue_of(call);
    let held = current(&mut key)?;
    let cap = policies::check(call, || {
        asking(
            Operation::Extend,
            req.key,
            req.owner,
            req.ttl_ms,
            held,
            &queue,
            now,
        )
    })?;
    let (lease, ttl_ms) = rules::extend(held, &req, cap, &limits, now)?;
    if let Some(lk) = &queue {
        waiters::deadline_moved(lk, lease.deadline_ms, now);
    }
    install(
        call.ctx,
        &mut key,
        &Target::of(call),
        Box::new(lease),
        GrantKind::Extended,
        now,
    );
    stats::EXTENDS.incr();
    reply::int(call.ctx, ttl_ms as i64);
    Ok(())
}

/// `LOCK.INFO key`: nil when free, otherwise a map describing the holder.
pub fn info(call: &Call) -> Outcome {
    if call.argv.len() != 2 {
        return Err(LockError::syntax(
            "wrong number of arguments for 'lock.info' command",
        ));
    }
    let now = ffi::command_now_ms();
    let Some(mut key) = Key::read(call.ctx, call.key()) else {
        reply::null(call.ctx);
        return Ok(());
    };
    // The lease decides, not the key's TTL (PERSIST or RESTORE can make a
    // key outlive its lease).
    let Some(lease) = current(&mut key)?.filter(|l| l.is_live(now)) else {
        reply::null(call.ctx);
        return Ok(());
    };
    let fields: [(&CStr, i64); 9] = [
        (c"token", lease.token as i64),
        (c"ttl", lease.ttl_ms(now) as i64),
        (c"acquired-at", lease.acquired_at_ms),
        (c"held", lease.held_ms(now) as i64),
        (c"extensions", lease.extensions as i64),
        (c"client-id", lease.client_id as i64),
        (
            c"client-connected",
            ffi::client_connected(lease.client_id) as i64,
        ),
        (c"session", lease.session as i64),
        (c"waiters", waiting(&queue_of(call)) as i64),
    ];
    let ctx = call.ctx;
    reply::map(ctx, 1 + fields.len());
    reply::bulk(ctx, b"owner");
    reply::bulk(ctx, &lease.owner);
    for (name, value) in fields {
        reply::bulk(ctx, name.to_bytes());
        reply::int(ctx, value);
    }
    Ok(())
}

/// Lock and policy writes from clients are made on the primary only. Redis
/// refuses writes on a replica unless `replica-read-only no`; then a
/// replica would grant locks its primary knows nothing of (two holders),
/// with tokens from its own clock.
pub fn primary_only(call: &Call) -> Result<(), LockError> {
    // The role as the role-change events keep it: free on a primary.
    if state::is_primary() {
        return Ok(());
    }
    let flags = call.flags();
    if flags & ffi::CTX_REPLICA != 0 && flags & (ffi::CTX_REPLICATED | ffi::CTX_LOADING) == 0 {
        return Err(LockError::ReadOnly);
    }
    Ok(())
}

/// Lock commands decide with this node's clock, token clock and policies: a
/// client's command on a primary (`Ok(true)`). The replication stream and
/// the AOF carry their effects (`LOCK._GRANT`, `DEL`); the command itself
/// gets there only as the change count of a command whose records were
/// skipped (`replicate::command`), in a backlog the module could not see
/// yet. Replayed, it is skipped (`Ok(false)`: the caller replies nil),
/// not decided a second time, differently, and not answered with an error,
/// which the server would log as a replication fault, or take as a reason
/// to stop (`propagation-error-behavior panic`).
#[inline]
fn decided_here(call: &Call) -> Result<bool, LockError> {
    if state::is_primary() && !state::is_loading() {
        return Ok(true);
    }
    not_a_primary_command(call)
}

/// Lines about lock commands skipped in the replication stream or the AOF.
static REPLAYED_LOG: ThrottledLog = ThrottledLog::new("replayed lock command", 1, "");

#[cold]
#[inline(never)]
fn not_a_primary_command(call: &Call) -> Result<bool, LockError> {
    if call.flags() & (ffi::CTX_REPLICATED | ffi::CTX_LOADING) == 0 {
        return primary_only(call).map(|()| true);
    }
    if REPLAYED_LOG.admit(ffi::wall_now_ms()) {
        // SAFETY: argv[0] lives for the whole command.
        let name = String::from_utf8_lossy(unsafe { ffi::bytes(call.argv[0]) }).to_uppercase();
        tracing::warn!(
            "{name} from the replication stream or the AOF was not applied: they carry lock effects, not lock commands"
        );
    }
    reply::null(call.ctx);
    Ok(false)
}

/// Internal commands are accepted only from the replication link and while
/// loading the AOF, so no client can forge a token.
fn internal_only(call: &Call, name: &str) -> Result<(), LockError> {
    if call.flags() & (ffi::CTX_REPLICATED | ffi::CTX_LOADING) == 0 {
        return Err(LockError::syntax(format!(
            "{name} is internal: it is accepted only from the replication stream and the AOF"
        )));
    }
    Ok(())
}

/// `LOCK._HIGHWATER token`: raises the token clock's high-water mark (written
/// to the AOF when it is rewritten, so tokens never go back after a restart
/// from an AOF without RDB preamble).
pub fn high_water(call: &Call) -> Outcome {
    internal_only(call, "LOCK._HIGHWATER")?;
    state::observe_token(call.with_args(parse::high_water)?);
    api!(RedisModule_ReplicateVerbatim, call.ctx);
    reply::ok(call.ctx);
    Ok(())
}

/// `LOCK._GRANT key owner token:deadline-ms:acquired-at-ms:extensions:session`:
/// applies a grant decided by the primary.
pub fn grant(call: &Call) -> Outcome {
    internal_only(call, "LOCK._GRANT")?;
    let lease = call
        .with_args(parse::grant)
        .inspect_err(|e| {
            // The AOF loader drops error replies: say it here.
            if call.flags() & ffi::CTX_LOADING != 0 {
                tracing::warn!("a lock in the AOF could not be restored: {e}");
            }
        })?
        .lease;
    state::observe_token(lease.token);
    let mut key = Key::write(call.ctx, call.key());
    let now = ffi::command_now_ms();
    state::own_write(|| put(&mut key, Box::new(lease), now));
    // Into this node's own AOF (a replica proxies the stream to its replicas).
    api!(RedisModule_ReplicateVerbatim, call.ctx);
    reply::ok(call.ctx);
    Ok(())
}
