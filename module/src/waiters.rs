//! Blocking acquire (`LOCK.ACQUIRE ... WAIT timeout-ms`): per-key FIFO queues
//! of blocked clients, served by the server itself.
//!
//! The lock is handed to the head waiter, as one replicated grant, when it is
//! released (inside `LOCK.RELEASE`), when its holder's session ends, when the
//! key disappears behind the module's back (`DEL`, `FLUSHALL`, eviction,
//! overwrite: the unlink callback and flush events schedule a check), and at
//! the holder's deadline (a timer per queue, so handoff does not depend on
//! Redis's lazy or active expiry — Redis 7.0 does not wake module waiters on
//! deletion or expiry at all).

use crate::commands::{self, GrantKind};
use crate::ffi::{self, Ctx, Key, OwnedString, RString, Slot, api, reply};
use crate::lease_type::ty;
use crate::state::MainThread;
use crate::{cluster, config, replicate, state, stats};
use lockwarden_core::rules::{self, Acquired, Caller};
use lockwarden_core::{Lease, LockError, parse};
use redis_module::raw;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::ffi::{c_int, c_void};

type Blocked = raw::RedisModuleBlockedClient;

/// A lock's identity on this node: database and key name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LockKey {
    pub db: i32,
    pub name: Box<[u8]>,
}

/// A blocked `LOCK.ACQUIRE ... WAIT`.
struct Waiter {
    bc: *mut Blocked,
    owner: Box<[u8]>,
    ttl_ms: u64,
    /// The policies' TTL ceiling, decided when the request arrived.
    cap: Option<u64>,
    session: bool,
    client_id: u64,
    since: std::time::Instant,
    /// The module timer that ends this wait (`WAIT 0`: none).
    timeout: Option<u64>,
}

#[derive(Default)]
struct Queue {
    waiters: VecDeque<Waiter>,
    /// The pending timer that will serve this queue.
    timer: Option<u64>,
}

#[derive(Default)]
struct Registry {
    queues: HashMap<LockKey, Queue>,
    /// Which queue each blocked client is in.
    blocked: HashMap<usize, LockKey>,
}

static REGISTRY: MainThread<RefCell<Option<Registry>>> = MainThread::new(RefCell::new(None));

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    f(REGISTRY
        .get()
        .borrow_mut()
        .get_or_insert_with(Registry::default))
}

/// What a woken waiter is told.
enum Wake {
    Granted {
        ttl_ms: u64,
        /// The grant, to take back if the reply never reaches the client.
        grant: Grant,
        /// Set when the reply was sent.
        delivered: std::cell::Cell<bool>,
    },
    Failed(String),
    /// The `WAIT` timed out: nil.
    TimedOut,
}

/// A grant handed to a waiter, identified precisely enough to revoke it
/// only while nobody can have learned of it.
struct Grant {
    lk: LockKey,
    token: u64,
    deadline_ms: i64,
    client_id: u64,
}

/// Clients blocked in `LOCK.ACQUIRE ... WAIT` on this node.
#[inline]
pub fn total() -> usize {
    REGISTRY
        .get()
        .borrow()
        .as_ref()
        .map_or(0, |r| r.blocked.len())
}

/// Clients waiting for `lk`.
pub fn len(lk: &LockKey) -> usize {
    with(|r| r.queues.get(lk).map_or(0, |q| q.waiters.len()))
}

/// Every key with waiters.
pub fn all_keys() -> Vec<LockKey> {
    with(|r| r.queues.keys().cloned().collect())
}

/// Blocks the calling client until it is granted `req`'s lock, the timeout
/// passes (nil), or it disconnects. `holder_deadline_ms` is the current
/// holder's deadline, when the queue's timer must fire at the latest.
pub fn block(
    ctx: *mut Ctx,
    lk: LockKey,
    req: &parse::Acquire<'_>,
    cap: Option<u64>,
    timeout_ms: u64,
    holder_deadline_ms: i64,
) {
    // The module times waits out itself (a timer per waiter) instead of
    // giving Redis the timeout: then every outcome (grant, failure, timeout,
    // disconnect) goes through one path, and a grant can never race Redis's
    // own timeout handling (which on Redis 7.0 drops the reply of a client
    // unblocked in the same event-loop turn its timeout passes).
    let bc = api!(
        RedisModule_BlockClient,
        ctx,
        Some(on_reply),
        unblock_callback(ctx),
        Some(free_wake),
        0
    );
    api!(RedisModule_SetDisconnectCallback, bc, Some(on_disconnect));
    let waiter = Waiter {
        bc,
        owner: req.owner.into(),
        ttl_ms: req.ttl_ms,
        cap,
        session: req.session,
        client_id: api!(RedisModule_GetClientId, ctx),
        since: std::time::Instant::now(),
        timeout: (timeout_ms > 0).then(|| start(Job::TimeOut(bc as usize), timeout_ms as i64)),
    };
    let needs_timer = with(|r| {
        r.blocked.insert(bc as usize, lk.clone());
        let q = r.queues.entry(lk.clone()).or_default();
        q.waiters.push_back(waiter);
        q.timer.is_none()
    });
    if needs_timer {
        arm(&lk, until_after(holder_deadline_ms, ffi::command_now_ms()));
    }
}

/// The callback serving `CLIENT UNBLOCK`, which Redis allows only for
/// clients blocked with one, where it is safe (see [`unblock_is_safe`]).
/// Elsewhere waiters have no such callback and `CLIENT UNBLOCK` answers 0
/// for them; their `WAIT` timeout ends the wait.
fn unblock_callback(ctx: *mut Ctx) -> raw::RedisModuleCmdFunc {
    let safe = UNBLOCK_SAFE.get().get().unwrap_or_else(|| {
        let safe = ffi::info(ctx, c"server").is_some_and(|info| unblock_is_safe(&info));
        UNBLOCK_SAFE.get().set(Some(safe));
        safe
    });
    safe.then_some(on_unblock as _)
}

/// [`unblock_is_safe`] for this server, once asked.
static UNBLOCK_SAFE: MainThread<Cell<Option<bool>>> = MainThread::new(Cell::new(None));

/// Does the server of this `INFO server` text let `CLIENT UNBLOCK` leave
/// alone a client the module has already unblocked? Valkey 8 and Redis 7.4
/// do (redis/redis#13015, January 2024). Redis 7.0 and 7.2 do not: they end
/// the wait of a waiter whose grant is on its way without any reply, and
/// the client waits forever. (Valkey reports `redis_version:7.2.4`; its own
/// version is `valkey_version`.)
fn unblock_is_safe(info: &ffi::Info) -> bool {
    let field = |name| info.get(name);
    let (version, first_safe) = match field("server_name") {
        Some("valkey") => (field("valkey_version"), (8, 0)),
        _ => (field("redis_version"), (7, 4)),
    };
    let mut parts = version
        .unwrap_or("")
        .split('.')
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= first_safe,
        _ => false,
    }
}

/// Removes a blocked client from its queue; false if it was not queued.
fn remove(bc: *mut Blocked) -> bool {
    let (found, stop) = with(|r| {
        let Some(lk) = r.blocked.remove(&(bc as usize)) else {
            return (false, [None, None]);
        };
        let Some(q) = r.queues.get_mut(&lk) else {
            return (true, [None, None]);
        };
        let own = q
            .waiters
            .iter()
            .position(|w| w.bc == bc)
            .and_then(|i| q.waiters.remove(i))
            .and_then(|w| w.timeout);
        let queue = if q.waiters.is_empty() {
            r.queues.remove(&lk).and_then(|q| q.timer)
        } else {
            None
        };
        (true, [own, queue])
    });
    stop.into_iter().flatten().for_each(cancel);
    found
}

/// Takes the first waiter of `lk` (and stops its timeout).
fn pop(lk: &LockKey) -> Option<Waiter> {
    let mut w = with(|r| {
        let w = r.queues.get_mut(lk)?.waiters.pop_front()?;
        r.blocked.remove(&(w.bc as usize));
        Some(w)
    })?;
    if let Some(id) = w.timeout.take() {
        cancel(id);
    }
    Some(w)
}

/// Puts a waiter back at the head of its queue.
fn push_front(lk: &LockKey, w: Waiter) {
    with(|r| {
        r.blocked.insert(w.bc as usize, lk.clone());
        r.queues
            .entry(lk.clone())
            .or_default()
            .waiters
            .push_front(w);
    })
}

fn wake(bc: *mut Blocked, wake: Wake) {
    api!(
        RedisModule_UnblockClient,
        bc,
        Box::into_raw(Box::new(wake)).cast()
    );
}

/// What a module timer of this file does when it fires.
enum Job {
    /// Serve a queue (the holder's deadline, or a deletion).
    Serve(LockKey),
    /// End a waiter's `WAIT` (the blocked client's address).
    TimeOut(usize),
}

fn start(job: Job, delay_ms: i64) -> u64 {
    ffi::start_timer(delay_ms, on_job, Box::into_raw(Box::new(job)).cast())
}

fn cancel(timer: u64) {
    if let Some(data) = ffi::stop_timer(timer) {
        // SAFETY: every timer of this file carries a `Box<Job>`.
        drop(unsafe { Box::from_raw(data.cast::<Job>()) });
    }
}

/// Milliseconds from `now_ms` until just after `deadline_ms`.
fn until_after(deadline_ms: i64, now_ms: i64) -> i64 {
    deadline_ms.saturating_add(1).saturating_sub(now_ms)
}

/// (Re)arms the queue's timer to serve it after `delay_ms`. A queue without
/// waiters has no timer.
fn arm(lk: &LockKey, delay_ms: i64) {
    let previous = with(|r| r.queues.get_mut(lk).map(|q| q.timer.take()));
    let Some(previous) = previous else {
        return;
    };
    if let Some(id) = previous {
        cancel(id);
    }
    let id = start(Job::Serve(lk.clone()), delay_ms);
    with(|r| {
        if let Some(q) = r.queues.get_mut(lk) {
            q.timer = Some(id);
        }
    });
}

/// Serves `lk`'s queue soon (from the event loop), e.g. after the key was
/// deleted behind the module's back.
pub fn schedule(lk: &LockKey) {
    arm(lk, 0);
}

/// The holder's deadline moved (an extension, shorter or longer): serve
/// the queue right after the new deadline.
pub fn deadline_moved(lk: &LockKey, deadline_ms: i64, now_ms: i64) {
    arm(lk, until_after(deadline_ms, now_ms));
}

/// Hands the lock `lk` (whose name is `name`, in the context's selected
/// database) to its first waiter if it is free; otherwise makes sure the
/// queue's timer fires at the holder's deadline.
pub fn serve(ctx: *mut Ctx, lk: &LockKey, name: *mut RString) {
    // Asked once per call (in a cluster it reads the topology), not per
    // waiter tried.
    let mut grantable_here = None;
    // Waiters whose requests no longer fit (a TTL above a lowered maximum)
    // are failed a batch per turn of the event loop.
    let mut failed = 0;
    loop {
        let now = ffi::command_now_ms();
        let mut key = Key::write(ctx, name);
        let current: Option<Lease> = match key.slot::<Lease>(ty()) {
            Slot::Other => {
                fail_all(lk, &LockError::WrongType.to_string());
                return;
            }
            Slot::Ours(l) if l.is_live(now) => {
                let wait = until_after(l.deadline_ms, now);
                drop(key);
                arm(lk, wait);
                return;
            }
            Slot::Ours(l) => Some(l.clone()),
            Slot::Empty => None,
        };
        if len(lk) == 0 {
            // Every waiter may have failed in an earlier turn of this loop.
            remove_queue(lk);
            return;
        }
        if !*grantable_here.get_or_insert_with(|| cluster::can_grant_here(ctx, &lk.name)) {
            // The slot moved or is moving: the lock may live on another node
            // now. Send the waiters back to be routed again.
            fail_all(
                lk,
                "TRYAGAIN the lock's slot is moving between cluster nodes; retry the command",
            );
            return;
        }
        let Some(w) = pop(lk) else {
            return;
        };
        let req = parse::Acquire {
            key: &lk.name,
            owner: &w.owner,
            ttl_ms: w.ttl_ms,
            wait_ms: None,
            session: w.session,
        };
        let caller = Caller {
            client_id: w.client_id,
        };
        let limits = config::ttl_limits();
        match state::with_clock(|c| {
            rules::acquire(current.as_ref(), &req, caller, w.cap, &limits, c, now)
        }) {
            Ok(Acquired::Granted { lease, ttl_ms, .. }) => {
                let grant = Grant {
                    lk: lk.clone(),
                    token: lease.token,
                    deadline_ms: lease.deadline_ms,
                    client_id: lease.client_id,
                };
                let target = commands::Target {
                    name,
                    owner_arg: None,
                };
                commands::install(
                    ctx,
                    &mut key,
                    &target,
                    Box::new(lease),
                    GrantKind::Acquired,
                    now,
                );
                stats::HANDOFFS.incr();
                stats::record_wait_us(w.since.elapsed().as_micros() as u64);
                wake(
                    w.bc,
                    Wake::Granted {
                        ttl_ms,
                        grant,
                        delivered: std::cell::Cell::new(false),
                    },
                );
                drop(key);
                if len(lk) > 0 {
                    arm(lk, ttl_ms as i64 + 1);
                } else {
                    remove_queue(lk);
                }
                return;
            }
            Ok(Acquired::Contended) => {
                // Not reachable with a free or expired lease; keep the waiter.
                push_front(lk, w);
                return;
            }
            Err(e) => {
                stats::error(&e);
                wake(w.bc, Wake::Failed(e.to_string()));
                failed += 1;
                if failed == ffi::ITEMS_PER_TURN {
                    schedule(lk);
                    return;
                }
            }
        }
    }
}

fn remove_queue(lk: &LockKey) {
    if let Some(id) = with(|r| r.queues.remove(lk).and_then(|q| q.timer)) {
        cancel(id);
    }
}

/// Fails every waiter of `lk` with the error reply `msg`.
fn fail_all(lk: &LockKey, msg: &str) {
    while let Some(w) = pop(lk) {
        wake(w.bc, Wake::Failed(msg.to_string()));
    }
    remove_queue(lk);
}

unsafe extern "C" fn on_job(ctx: *mut Ctx, data: *mut c_void) {
    ffi::guard("waiter timer", (), || {
        // SAFETY: the timers of this file carry a `Box<Job>`, handed over once.
        match *unsafe { Box::from_raw(data.cast::<Job>()) } {
            Job::Serve(lk) => {
                with(|r| {
                    if let Some(q) = r.queues.get_mut(&lk) {
                        q.timer = None;
                    }
                });
                match ffi::writes(ctx) {
                    ffi::Writes::Allowed => {
                        ffi::select_db(ctx, lk.db);
                        let name = OwnedString::new(&lk.name);
                        serve(ctx, &lk, name.raw());
                    }
                    ffi::Writes::Paused => arm(&lk, ffi::PAUSED_RETRY_MS),
                    // Demoted: the new primary decides about the lock. Redis
                    // 7 and Valkey 8 unblock the waiters themselves; a server
                    // that keeps them blocked must not leave them hanging.
                    ffi::Writes::Replica => fail_all(
                        &lk,
                        "READONLY this node became a replica while the client waited; retry against the primary",
                    ),
                }
            }
            Job::TimeOut(bc) => {
                let bc = bc as *mut Blocked;
                // The timer fired, so it is no longer the waiter's to cancel.
                with(|r| {
                    if let Some(lk) = r.blocked.get(&(bc as usize))
                        && let Some(w) = r
                            .queues
                            .get_mut(lk)
                            .and_then(|q| q.waiters.iter_mut().find(|w| w.bc == bc))
                    {
                        w.timeout = None;
                    }
                });
                if remove(bc) {
                    stats::WAIT_TIMEOUTS.incr();
                    wake(bc, Wake::TimedOut);
                }
            }
        }
    })
}

unsafe extern "C" fn on_reply(ctx: *mut Ctx, _argv: *mut *mut RString, _argc: c_int) -> c_int {
    ffi::guard("waiter reply", (), || {
        let wake = api!(RedisModule_GetBlockedClientPrivateData, ctx).cast::<Wake>();
        // SAFETY: `wake()` always unblocks with a `Box<Wake>`.
        match unsafe { wake.as_ref() } {
            Some(Wake::Granted {
                ttl_ms,
                grant,
                delivered,
            }) => {
                reply::array(ctx, 2);
                reply::int(ctx, grant.token as i64);
                reply::int(ctx, *ttl_ms as i64);
                delivered.set(true);
            }
            Some(Wake::Failed(msg)) => reply::error(ctx, msg),
            Some(Wake::TimedOut) | None => reply::null(ctx),
        }
    });
    raw::REDISMODULE_OK as c_int
}

/// `CLIENT UNBLOCK id` (without `ERROR`; Redis 7.2+ and Valkey, see
/// [`unblock_callback`]): the wait ends with nil, as a timeout would.
unsafe extern "C" fn on_unblock(ctx: *mut Ctx, _argv: *mut *mut RString, _argc: c_int) -> c_int {
    ffi::guard("waiter unblock", (), || {
        let bc = api!(RedisModule_GetBlockedClientHandle, ctx);
        if remove(bc) {
            api!(RedisModule_UnblockClient, bc, std::ptr::null_mut());
        }
        reply::null(ctx);
    });
    raw::REDISMODULE_OK as c_int
}

unsafe extern "C" fn on_disconnect(_ctx: *mut Ctx, bc: *mut Blocked) {
    ffi::guard("waiter disconnect", (), || {
        if remove(bc) {
            api!(RedisModule_UnblockClient, bc, std::ptr::null_mut());
        }
    })
}

unsafe extern "C" fn free_wake(_ctx: *mut Ctx, data: *mut c_void) {
    ffi::guard("waiter free", (), || {
        if data.is_null() {
            return;
        }
        // SAFETY: unblock data is always a `Box<Wake>`, freed once by Redis.
        let wake = unsafe { Box::from_raw(data.cast::<Wake>()) };
        // A grant whose reply was never sent: the client disconnected in
        // between, or (Redis 7.0) its WAIT timed out in the same event-loop
        // turn and Redis dropped the reply. Nobody knows the token, so the
        // lock would sit unused until its TTL: take it back (from the event
        // loop; no writes here) and serve the next waiter.
        if let Wake::Granted {
            grant, delivered, ..
        } = *wake
            && !delivered.get()
        {
            ffi::start_timer(0, on_revoke, Box::into_raw(Box::new(grant)).cast());
        }
    })
}

unsafe extern "C" fn on_revoke(ctx: *mut Ctx, data: *mut c_void) {
    ffi::guard("grant revoke", (), || {
        // SAFETY: the revoke timer carries a `Box<Grant>`, handed over once.
        let Some(g) = (unsafe { ffi::writable_timer_data::<Grant>(ctx, data, on_revoke) }) else {
            return;
        };
        ffi::select_db(ctx, g.lk.db);
        let name = OwnedString::new(&g.lk.name);
        let mut key = Key::write(ctx, name.raw());
        // Only the untouched grant: a retry by the same owner (which would
        // have returned the token) changes the deadline and client id.
        let untouched = matches!(key.slot::<Lease>(ty()),
            Slot::Ours(l) if l.token == g.token && l.deadline_ms == g.deadline_ms && l.client_id == g.client_id);
        if !untouched {
            return;
        }
        state::own_write(|| key.delete());
        drop(key);
        replicate::delete(ctx, name.raw());
        stats::GRANTS_REVOKED.incr();
        commands::notify_released(ctx, name.raw());
        tracing::warn!(
            "lock {} granted to a waiter that never received the reply: released again",
            lockwarden_sdk::text::show(&g.lk.name, 64)
        );
        if len(&g.lk) > 0 {
            serve(ctx, &g.lk, name.raw());
        }
    })
}

#[cfg(test)]
mod tests {
    use crate::ffi::Info;

    fn safe(text: &[u8]) -> bool {
        super::unblock_is_safe(&Info::from_text(text))
    }

    #[test]
    fn client_unblock_is_safe_from_valkey_8_and_redis_7_4() {
        assert!(!safe(
            b"# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\n"
        ));
        assert!(!safe(b"redis_version:7.2.5\r\n"));
        assert!(safe(b"redis_version:7.4.0\r\n"));
        assert!(safe(b"redis_version:8.0.2\r\n"));
        assert!(safe(
            b"redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:8.0.1\r\n"
        ));
        assert!(!safe(
            b"redis_version:7.2.4\r\nserver_name:valkey\r\nvalkey_version:7.2.5\r\n"
        ));
        assert!(!safe(b""));
        assert!(!safe(b"redis_version:x\r\n"));
    }
}
