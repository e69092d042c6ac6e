//! The lock commands: parse → read state → core rules → apply the effect →
//! replicate the effect → count → reply. Every decision is made in
//! `lockwarden_core`; this file only moves data between Redis and it.

use crate::ffi::{self, Call, Key, Slot, api, reply};
use crate::lease_type::{self, ty};
use crate::{config, replicate, state, stats};
use lockwarden_core::rules::{self, Acquired, Caller};
use lockwarden_core::{Lease, LockError, parse};
use redis_module::raw;
use std::ffi::c_int;

/// What a command handler returns: `Ok` once it has replied.
type Outcome = Result<(), LockError>;

/// Runs a command handler behind the panic barrier and turns its error into
/// the one error reply.
pub fn run(ctx: *mut ffi::Ctx, argv: *mut *mut ffi::RString, argc: c_int, handler: fn(&Call) -> Outcome) -> c_int {
    let completed = ffi::guard("command", false, || {
        // SAFETY: the pointers come straight from Redis's command callback.
        let call = unsafe { Call::new(ctx, argv, argc) };
        if let Err(e) = handler(&call) {
            stats::error(&e);
            reply::error(ctx, &e.to_string());
        }
        true
    });
    if !completed {
        // Handlers reply last, after every fallible step, so a panic means
        // the client has no reply yet.
        reply::error(ctx, "ERR internal error in lockwarden (details in the server log)");
    }
    raw::REDISMODULE_OK as c_int
}

/// The lease in `key`, if it holds one; `WRONGTYPE` if it holds anything else.
fn current(key: &mut Key) -> Result<Option<&mut Lease>, LockError> {
    match key.slot::<Lease>(ty()) {
        Slot::Empty => Ok(None),
        Slot::Ours(l) => Ok(Some(l)),
        Slot::Other => Err(LockError::WrongType),
    }
}

/// Stores `lease` in `key` (updating an existing lease in place) with its
/// deadline as the key's absolute expiry. Does not replicate.
fn put(key: &mut Key, lease: Lease) {
    let deadline = lease.deadline_ms;
    match key.slot::<Lease>(ty()) {
        Slot::Ours(existing) => {
            *existing = lease;
            key.expire_at(deadline);
        }
        Slot::Empty | Slot::Other => lease_type::store(key, lease),
    }
}

/// `LOCK.ACQUIRE key owner ttl-ms [WAIT timeout-ms] [SESSION]`
pub fn acquire(call: &Call) -> Outcome {
    let args = call.args();
    let req = parse::acquire(&args)?;
    let now = ffi::command_now_ms();
    let mut key = Key::write(call.ctx, call.key());
    let limits = config::ttl_limits();
    let caller = Caller {
        client_id: call.client_id(),
    };
    let held = current(&mut key)?.map(|l| &*l);
    let outcome = state::with_clock(|clock| rules::acquire(held, &req, caller, None, &limits, clock, now))?;
    match outcome {
        Acquired::Granted { lease, ttl_ms, fresh } => {
            if fresh {
                stats::ACQUIRES_GRANTED.incr();
            } else {
                stats::ACQUIRES_RETRIED.incr();
            }
            let token = lease.token;
            replicate::grant(call.ctx, call.key(), &lease);
            put(&mut key, lease);
            reply::array(call.ctx, 2);
            reply::int(call.ctx, token as i64);
            reply::int(call.ctx, ttl_ms as i64);
        }
        Acquired::Contended => {
            stats::ACQUIRES_CONTENDED.incr();
            reply::null(call.ctx);
        }
    }
    Ok(())
}

/// `LOCK.RELEASE key owner [FENCE token]`
pub fn release(call: &Call) -> Outcome {
    let args = call.args();
    let req = parse::release(&args)?;
    let now = ffi::command_now_ms();
    let mut key = Key::write(call.ctx, call.key());
    rules::release(current(&mut key)?.map(|l| &*l), &req, now)?;
    state::own_write(|| key.delete());
    replicate::delete(call.ctx, call.key());
    stats::RELEASES.incr();
    reply::int(call.ctx, 1);
    Ok(())
}

/// `LOCK.EXTEND key owner ttl-ms [FENCE token]`
pub fn extend(call: &Call) -> Outcome {
    let args = call.args();
    let req = parse::extend(&args)?;
    let now = ffi::command_now_ms();
    let mut key = Key::write(call.ctx, call.key());
    let limits = config::ttl_limits();
    let (lease, ttl_ms) = rules::extend(current(&mut key)?.map(|l| &*l), &req, None, &limits, now)?;
    replicate::grant(call.ctx, call.key(), &lease);
    put(&mut key, lease);
    stats::EXTENDS.incr();
    reply::int(call.ctx, ttl_ms as i64);
    Ok(())
}

/// `LOCK.INFO key`: nil when free, otherwise a map describing the holder.
pub fn info(call: &Call) -> Outcome {
    if call.argv.len() != 2 {
        return Err(LockError::syntax("wrong number of arguments for 'lock.info' command"));
    }
    let now = ffi::command_now_ms();
    let Some(mut key) = Key::read(call.ctx, call.key()) else {
        reply::null(call.ctx);
        return Ok(());
    };
    let Some(lease) = current(&mut key)? else {
        reply::null(call.ctx);
        return Ok(());
    };
    let connected = lease.client_id != 0
        && api!(RedisModule_GetClientInfoById, std::ptr::null_mut(), lease.client_id) == raw::REDISMODULE_OK as c_int;
    let ctx = call.ctx;
    let fields: [(&[u8], i64); 8] = [
        (b"token", lease.token as i64),
        (b"ttl", lease.ttl_ms(now) as i64),
        (b"acquired-at", lease.acquired_at_ms),
        (b"held", lease.held_ms(now) as i64),
        (b"extensions", lease.extensions as i64),
        (b"client-id", lease.client_id as i64),
        (b"client-connected", connected as i64),
        (b"session", lease.session as i64),
    ];
    reply::map(ctx, 1 + fields.len());
    reply::bulk(ctx, b"owner");
    reply::bulk(ctx, &lease.owner);
    for (name, value) in fields {
        reply::bulk(ctx, name);
        reply::int(ctx, value);
    }
    Ok(())
}

/// `LOCK._GRANT key owner token deadline-ms acquired-at-ms extensions [SESSION]`:
/// applies a grant decided by the primary. Accepted only from the replication
/// link and while loading the AOF, so no client can forge a token.
pub fn grant(call: &Call) -> Outcome {
    if call.flags() & (ffi::CTX_REPLICATED | ffi::CTX_LOADING) == 0 {
        return Err(LockError::syntax(
            "LOCK._GRANT is internal: it is accepted only from the replication stream and the AOF",
        ));
    }
    let args = call.args();
    let g = parse::grant(&args)?;
    state::observe_token(g.token);
    let lease = Lease {
        owner: g.owner.into(),
        token: g.token,
        deadline_ms: g.deadline_ms,
        acquired_at_ms: g.acquired_at_ms,
        extensions: g.extensions,
        session: g.session,
        client_id: 0,
    };
    let mut key = Key::write(call.ctx, call.key());
    state::own_write(|| put(&mut key, lease));
    // Into this node's own AOF (a replica proxies the stream to its replicas).
    api!(RedisModule_ReplicateVerbatim, call.ctx);
    reply::ok(call.ctx);
    Ok(())
}
