//! The policy host inside Redis: the engine and registry (from
//! `lockwarden_core::policy`), the evaluation of every lock command, and the
//! `LOCK.POLICY` subcommands.
//!
//! Policies run on the primary only. Loading one is replicated (as a full
//! `LOCK.POLICY LOAD ... REPLACE`), saved in the RDB aux field, and written to
//! the AOF again whenever it is rewritten (see [`reemit_after_fork`]), so
//! replicas, restarts and failovers keep them. Compilation runs on a
//! background thread, so a large module never stalls the event loop; from
//! the replication stream or the AOF it runs inline (in stream order), and
//! inside MULTI a load is refused.

use crate::config::{self, Id};
use crate::ffi::{self, Call, Ctx, Key, OwnedString, RString, Slot, api, reply};
use crate::lease_type::ty;
use crate::logging::ThrottledLog;
use crate::state::MainThread;
use crate::waiters::{self, LockKey};
use crate::{commands, persist, stats};
use lockwarden_core::policy::{
    CompiledPolicy, EvalLimits, FailureMode, LoadError, Note, PolicyEngine, PolicySpec, Registry,
    check_compile_headroom, check_module_size, decode_specs, encode_specs,
};
use lockwarden_core::{Lease, LockError, parse};
use lockwarden_sdk::abi::{Caller, Decision, Holder, Operation, Request};
use redis_module::raw;
use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
static REGISTRY: MainThread<RefCell<Option<Registry>>> = MainThread::new(RefCell::new(None));

fn with<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    f(REGISTRY
        .get()
        .borrow_mut()
        .get_or_insert_with(Registry::new))
}

fn engine() -> &'static PolicyEngine {
    ENGINE.get().expect("policy engine initialised at load")
}

pub fn init() -> Result<(), String> {
    let engine = PolicyEngine::new().map_err(|e| e.to_string())?;
    let _ = ENGINE.set(engine);
    Ok(())
}

fn limits() -> EvalLimits {
    EvalLimits {
        fuel: config::get(Id::PolicyFuel) as u64,
        memory_bytes: config::get(Id::PolicyMemoryKb) as u64 * 1024,
    }
}

fn max_module_bytes() -> usize {
    config::get(Id::PolicyMaxModuleKb) as usize * 1024
}

fn failure_mode() -> FailureMode {
    if config::get(Id::PolicyFailure) == 0 {
        FailureMode::Deny
    } else {
        FailureMode::Allow
    }
}

/// A lock command as policies see it.
pub struct Ask<'a> {
    pub op: Operation,
    pub key: &'a [u8],
    pub owner: &'a [u8],
    pub ttl_ms: u64,
    pub holder: Option<&'a Lease>,
    pub waiters: usize,
    pub now_ms: i64,
}

/// The ACL user of a connection ("" if it is gone).
fn user_of(ctx: *mut Ctx, client_id: u64) -> Option<OwnedString> {
    OwnedString::adopt(api!(RedisModule_GetClientUserNameById, ctx, client_id))
}

/// The bytes of a user name (empty when there is none).
fn name_bytes(user: &Option<OwnedString>) -> &[u8] {
    // SAFETY: the string lives as long as the borrow of `user`.
    user.as_ref()
        .map_or(&[][..], |u| unsafe { ffi::bytes(u.raw()) })
}

fn request<'a>(ask: &Ask<'a>, client_id: u64, user: &'a [u8]) -> Request<'a> {
    Request {
        op: ask.op,
        key: ask.key,
        owner: ask.owner,
        ttl_ms: ask.ttl_ms,
        now_ms: ask.now_ms.max(0) as u64,
        holder: ask.holder.map(|l| Holder {
            owner: &l.owner,
            token: l.token,
            held_ms: l.held_ms(ask.now_ms),
            extensions: l.extensions,
        }),
        caller: Caller { client_id, user },
        waiters: ask.waiters.min(u32::MAX as usize) as u32,
    }
}

/// Asks every matching policy about a lock command: `Ok(ceiling)` (the
/// smallest clamp, if any) or the `DENIED`/`POLICY` error. Costs one check,
/// in the caller's code, when no policy is loaded (the question is then
/// not even put together).
#[inline]
pub fn check<'a>(call: &Call, ask: impl FnOnce() -> Ask<'a>) -> Result<Option<u64>, LockError> {
    if REGISTRY
        .get()
        .borrow()
        .as_ref()
        .is_none_or(Registry::is_empty)
    {
        return Ok(None);
    }
    put_and_evaluate(call, ask)
}

/// The slow side of [`check`], out of line with the code that builds the
/// question, so the caller keeps only the check.
#[inline(never)]
fn put_and_evaluate<'a>(
    call: &Call,
    ask: impl FnOnce() -> Ask<'a>,
) -> Result<Option<u64>, LockError> {
    evaluate(call, &ask())
}

#[inline(never)]
fn evaluate(call: &Call, ask: &Ask<'_>) -> Result<Option<u64>, LockError> {
    // The user name costs a lookup and two allocations: only for policies
    // that read it. (Inside a script the context's client is the script
    // engine's, which has no user to look up: the user is then empty.)
    let client_id = call.client_id();
    let user = with(|r| r.reads_caller_user(ask.key))
        .then(|| user_of(call.ctx, client_id))
        .flatten();
    let req = request(ask, client_id, name_bytes(&user));
    let evaluation = with(|r| r.evaluate(&req, limits(), failure_mode()));
    for note in &evaluation.notes {
        let log = match note {
            Note::AuditDeny { .. } => {
                stats::POLICY_AUDIT_DENIALS.incr();
                &AUDIT_LOG
            }
            Note::AuditClamp { .. } => &AUDIT_LOG,
            Note::Failure { .. } => &FAILURE_LOG,
        };
        if log.admit(ask.now_ms) {
            tracing::warn!("{note}");
        }
    }
    // Failures are operational problems; denials are expected outcomes,
    // counted in INFO and published as keyspace events instead.
    if let Err(e @ LockError::Policy { .. }) = &evaluation.verdict {
        let key = lockwarden_sdk::text::show(ask.key, 64);
        if FAILURE_LOG.admit(ask.now_ms) {
            tracing::warn!("{e} (key {key})");
        }
    }
    evaluation.verdict
}

/// Audit notes and policy failures can come with every command: at most
/// ten of each a second reach the log, separately so that a chatty audit
/// policy cannot hide failures.
static AUDIT_LOG: ThrottledLog =
    ThrottledLog::new("policy audit", 10, "; INFO lockwarden counts them all");
static FAILURE_LOG: ThrottledLog =
    ThrottledLog::new("policy failure", 10, "; INFO lockwarden counts them all");

/// `maxmemory` (0: none) and `used_memory`, from `INFO memory`.
fn memory(ctx: *mut Ctx) -> (u64, u64) {
    let Some(info) = ffi::info(ctx, c"memory") else {
        return (0, 0);
    };
    let bytes = |name| info.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
    (bytes("maxmemory"), bytes("used_memory"))
}

/// `LOCK.POLICY LOAD name [KEYS glob] [MODE enforce|audit] [CONFIG settings] [REPLACE] WASM bytes`
pub fn load(call: &Call) -> Result<(), LockError> {
    commands::primary_only(call)?;
    let req = call.with_args(|args| parse::policy_load(&args[1..]))?;
    let flags = call.flags();
    // From the replication stream or the AOF: what the primary accepted,
    // compiled inline (the stream is applied in order), whatever this node's
    // own size limit.
    let from_dataset = flags & (ffi::CTX_REPLICATED | ffi::CTX_LOADING) != 0;
    if !from_dataset {
        if flags & ffi::CTX_NO_BLOCKING != 0 {
            return Err(LockError::syntax(
                "LOCK.POLICY LOAD compiles on a background thread and cannot run inside MULTI/EXEC: send it on its own",
            ));
        }
        // Before copying what may be a very large argument.
        check_module_size(req.wasm.len(), max_module_bytes()).map_err(load_error)?;
    }
    let spec = PolicySpec {
        name: String::from_utf8_lossy(req.name).into_owned(),
        keys: req.keys.to_vec(),
        mode: req.mode,
        settings: req.settings.to_vec(),
        wasm: req.wasm.to_vec(),
    };
    let replace = req.replace;
    // Re-sent unchanged (replication after an AOF rewrite, a retried call)
    // and working: nothing to do. A client's load rebuilds a broken
    // instance; from the dataset, a broken one is kept as it is (it retries
    // its start by itself). The start-up policy is not replaced from the
    // AOF or the replication stream (see STARTUP_POLICY).
    let unchanged = with(|r| {
        if from_dataset {
            r.has_spec(&spec)
        } else {
            r.has_working(&spec)
        }
    });
    if (replace && unchanged) || (from_dataset && is_startup(&spec.name)) {
        api!(RedisModule_ReplicateVerbatim, call.ctx);
        reply::ok(call.ctx);
        return Ok(());
    }
    if from_dataset {
        // What the primary accepted is kept, even if it cannot start here
        // (or is above this node's own size limit): a replica or the AOF
        // loader must not diverge.
        let name = spec.name.clone();
        let (policy, failed) = engine().compile_kept(spec, limits());
        if let Some(e) = &failed {
            not_started(&name, e);
        }
        return finish_load(call.ctx, Ok(policy), replace);
    }
    let (maxmemory, used) = memory(call.ctx);
    check_compile_headroom(maxmemory, used, COMPILING.load(Relaxed))?;
    let bc = api!(
        RedisModule_BlockClient,
        call.ctx,
        Some(load_done),
        None,
        Some(free_load),
        0
    );
    let job = LoadJob::new(bc, replace);
    let (max, limits) = (max_module_bytes(), limits());
    let spawned = std::thread::Builder::new()
        .name("lockwarden-compile".into())
        // The policy's configuration runs on this thread too: room for the
        // compiler and the Wasm stack, whatever RUST_MIN_STACK says.
        .stack_size(COMPILE_STACK_BYTES)
        .spawn(move || {
            let compiled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                engine().compile(spec, max, limits).map_err(load_error)
            }))
            .unwrap_or_else(|_| {
                Err(LockError::BadPolicy(
                    "internal error while compiling (details in the server log)".into(),
                ))
            });
            job.finish(compiled);
        });
    if let Err(e) = spawned {
        LoadJob::new(bc, replace).finish(Err(LockError::BadPolicy(format!(
            "could not start the compiler thread: {e}"
        ))));
    }
    Ok(())
}

/// Stack of the compiler thread.
const COMPILE_STACK_BYTES: usize = 8 << 20;

/// A load compiling on a background thread; the blocked client is a pointer
/// Redis lets any thread unblock.
struct LoadJob {
    bc: usize,
    replace: bool,
    _compiling: Compiling,
}

/// Background compiles running (see [`check_compile_headroom`]).
static COMPILING: AtomicU64 = AtomicU64::new(0);

/// Counts one compile in [`COMPILING`] for as long as it lives.
struct Compiling;

impl Compiling {
    fn start() -> Self {
        COMPILING.fetch_add(1, Relaxed);
        Compiling
    }
}

impl Drop for Compiling {
    fn drop(&mut self) {
        COMPILING.fetch_sub(1, Relaxed);
    }
}

struct LoadResult {
    compiled: Option<Result<CompiledPolicy, LockError>>,
    replace: bool,
}

impl LoadJob {
    fn new(bc: *mut raw::RedisModuleBlockedClient, replace: bool) -> Self {
        LoadJob {
            bc: bc as usize,
            replace,
            _compiling: Compiling::start(),
        }
    }

    /// Hands the compiled policy to the main thread (`load_done`).
    fn finish(self, compiled: Result<CompiledPolicy, LockError>) {
        let result = Box::new(LoadResult {
            compiled: Some(compiled),
            replace: self.replace,
        });
        api!(
            RedisModule_UnblockClient,
            self.bc as *mut raw::RedisModuleBlockedClient,
            Box::into_raw(result).cast()
        );
    }
}

/// Installs a compiled policy, replicates the load, replies.
fn finish_load(
    ctx: *mut Ctx,
    compiled: Result<CompiledPolicy, LockError>,
    replace: bool,
) -> Result<(), LockError> {
    let policy = compiled?;
    let spec = policy.spec().clone();
    persist::reemit_pending(ctx);
    with(|r| r.install(policy, replace)).map_err(load_error)?;
    replicate_spec(ctx, &spec);
    tracing::info!(
        "policy {} loaded ({} bytes, keys {}, {})",
        spec.name,
        spec.wasm.len(),
        lockwarden_sdk::text::show(&spec.keys, 64),
        spec.mode
    );
    reply::ok(ctx);
    Ok(())
}

fn load_error(e: LoadError) -> LockError {
    LockError::BadPolicy(e.message().to_string())
}

/// Replicates a policy as a self-contained, idempotent `LOAD ... REPLACE`.
fn replicate_spec(ctx: *mut Ctx, s: &PolicySpec) {
    let mode = std::ffi::CString::new(s.mode.as_str()).expect("no NUL");
    api!(
        RedisModule_Replicate,
        ctx,
        c"LOCK.POLICY".as_ptr(),
        c"cbcbcccbccb".as_ptr(),
        c"LOAD".as_ptr(),
        s.name.as_ptr(),
        s.name.len(),
        c"KEYS".as_ptr(),
        s.keys.as_ptr(),
        s.keys.len(),
        c"MODE".as_ptr(),
        mode.as_ptr(),
        c"CONFIG".as_ptr(),
        s.settings.as_ptr(),
        s.settings.len(),
        c"REPLACE".as_ptr(),
        c"WASM".as_ptr(),
        s.wasm.as_ptr(),
        s.wasm.len()
    );
}

unsafe extern "C" fn load_done(ctx: *mut Ctx, _argv: *mut *mut RString, _argc: c_int) -> c_int {
    ffi::guard("policy load reply", (), || {
        let result = api!(RedisModule_GetBlockedClientPrivateData, ctx).cast::<LoadResult>();
        // SAFETY: the compiler thread unblocks with a `Box<LoadResult>`,
        // freed by `free_load` after this callback.
        let taken =
            unsafe { result.as_mut() }.and_then(|r| r.compiled.take().map(|c| (c, r.replace)));
        match taken {
            // Nothing may be propagated while writes are paused, and a policy
            // that is not replicated would diverge: refuse, the caller retries.
            Some((Ok(_), _)) if ffi::writes(ctx) == ffi::Writes::Paused => reply::error(
                ctx,
                "TRYAGAIN writes are paused (CLIENT PAUSE or a failover); the policy was not loaded",
            ),
            Some((compiled, replace)) => {
                if let Err(e) = finish_load(ctx, compiled, replace) {
                    reply::error(ctx, &e.to_string());
                }
            }
            None => reply::error(ctx, "ERR policy load lost its result"),
        }
    });
    raw::REDISMODULE_OK as c_int
}

unsafe extern "C" fn free_load(_ctx: *mut Ctx, data: *mut c_void) {
    ffi::guard("policy load free", (), || {
        if !data.is_null() {
            // SAFETY: the blocked client's private data is a `Box<LoadResult>`.
            drop(unsafe { Box::from_raw(data.cast::<LoadResult>()) });
        }
    })
}

/// `LOCK.POLICY UNLOAD name`
pub fn unload(call: &Call) -> Result<(), LockError> {
    commands::primary_only(call)?;
    let name = call.with_args(|args| match args {
        [_, name] => Ok(String::from_utf8_lossy(name).into_owned()),
        _ => Err(LockError::syntax(
            "wrong number of arguments for 'lock.policy|unload' command",
        )),
    })?;
    if call.flags() & (ffi::CTX_REPLICATED | ffi::CTX_LOADING) != 0 && is_startup(&name) {
        // This node's configuration (see STARTUP_POLICY); passed on as is.
        api!(RedisModule_ReplicateVerbatim, call.ctx);
        reply::int(call.ctx, 0);
        return Ok(());
    }
    let removed = with(|r| r.unload(&name));
    if removed {
        api!(RedisModule_ReplicateVerbatim, call.ctx);
        tracing::info!("policy {name} unloaded");
    }
    reply::int(call.ctx, removed as i64);
    Ok(())
}

/// `LOCK.POLICY LIST`
pub fn list(call: &Call) -> Result<(), LockError> {
    if call.argv.len() != 2 {
        return Err(LockError::syntax(
            "wrong number of arguments for 'lock.policy|list' command",
        ));
    }
    let infos = with(|r| r.list());
    let ctx = call.ctx;
    reply::array(ctx, infos.len());
    for p in infos {
        reply::map(ctx, 10);
        reply::bulk(ctx, b"name");
        reply::bulk(ctx, p.name.as_bytes());
        reply::bulk(ctx, b"keys");
        reply::bulk(ctx, &p.keys);
        reply::bulk(ctx, b"mode");
        reply::bulk(ctx, p.mode.as_str().as_bytes());
        reply::bulk(ctx, b"size");
        reply::int(ctx, p.size as i64);
        reply::bulk(ctx, b"sha256");
        reply::bulk(ctx, p.sha256.as_bytes());
        for (name, v) in [
            (&b"evaluations"[..], p.evaluations),
            (b"denials", p.denials),
            (b"failures", p.failures),
            (b"mean-ns", p.mean_eval_ns),
        ] {
            reply::bulk(ctx, name);
            reply::int(ctx, v as i64);
        }
        reply::bulk(ctx, b"broken");
        match &p.broken {
            Some(why) => reply::bulk(ctx, why.as_bytes()),
            None => reply::null(ctx),
        }
    }
    Ok(())
}

/// `LOCK.POLICY EVAL name ACQUIRE|EXTEND|RELEASE key owner ttl-ms`: a dry run
/// against the key's current state.
pub fn eval(call: &Call) -> Result<(), LockError> {
    let req = call.with_args(|args| parse::policy_eval(&args[1..]))?;
    let now = ffi::command_now_ms();
    let key_name = OwnedString::new(req.key);
    let holder: Option<Lease> =
        Key::read(call.ctx, key_name.raw()).and_then(|mut k| match k.slot::<Lease>(ty()) {
            Slot::Ours(l) if l.is_live(now) => Some(l.clone()),
            _ => None,
        });
    let queue = LockKey {
        db: call.db(),
        name: req.key.into(),
    };
    // The request the real command would send: a release asks for no TTL.
    let ask = Ask {
        op: req.op,
        key: req.key,
        owner: req.owner,
        ttl_ms: if req.op == Operation::Release {
            0
        } else {
            req.ttl_ms
        },
        holder: holder.as_ref(),
        waiters: waiters::len(&queue),
        now_ms: now,
    };
    let client_id = call.client_id();
    let user = user_of(call.ctx, client_id);
    let user_bytes = name_bytes(&user);
    let name = String::from_utf8_lossy(req.name);
    // A failing dry run is answered as an error but not counted with the
    // failures of real commands (INFO policy_failures).
    let decision = match with(|r| r.dry_run(&name, &request(&ask, client_id, user_bytes), limits()))
    {
        Ok(d) => d,
        Err(e) => {
            reply::error(call.ctx, &e.to_string());
            return Ok(());
        }
    };
    let text = match decision {
        Decision::Allow => "allow".to_string(),
        Decision::Deny(reason) => format!("deny {reason}"),
        Decision::Clamp(ms) => format!("clamp {ms}"),
    };
    reply::bulk(call.ctx, text.as_bytes());
    Ok(())
}

/// The policies as bytes, for the RDB aux field.
pub fn encoded() -> Vec<u8> {
    with(|r| encode_specs(r.specs()))
}

/// Makes the policies saved in an RDB the node's policies: the dataset is
/// being replaced (restart, `DEBUG RELOAD`, full resync from a primary), so
/// policies it does not contain are unloaded, except the one the module
/// arguments load at start-up, which is configuration, not data.
/// A policy that cannot be compiled any more is logged and skipped: the
/// server still starts, loudly.
pub fn restore(bytes: &[u8]) -> Result<(), String> {
    let specs = decode_specs(bytes)?;
    let order: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let startup = STARTUP_POLICY.get().borrow().clone();
    let stale: Vec<String> = with(|r| {
        r.specs()
            .map(|s| s.name.clone())
            .filter(|n| !specs.iter().any(|s| s.name == *n) && Some(n) != startup.as_ref())
            .collect()
    });
    for name in stale {
        with(|r| r.unload(&name));
        tracing::info!("policy {name} unloaded: not in the loaded dataset");
    }
    for spec in specs {
        let name = spec.name.clone();
        // Kept as it is, working or broken (a broken one retries its start
        // by itself).
        if with(|r| r.has_spec(&spec)) {
            continue;
        }
        if is_startup(&name) {
            tracing::info!(
                "policy {name}: the module arguments' version is kept, not the one in the loaded dataset"
            );
            continue;
        }
        let (policy, failed) = engine().compile_kept(spec, limits());
        with(|r| r.install(policy, true)).map_err(|e| e.to_string())?;
        match failed {
            None => tracing::info!("policy {name} restored"),
            Some(e) => not_started(&name, &e),
        }
    }
    // The dataset's evaluation order, also for policies kept as they were.
    with(|r| r.reorder(&order.iter().map(String::as_str).collect::<Vec<_>>()));
    Ok(())
}

/// A policy of the dataset was kept but could not start: counted, and
/// logged loudly (its evaluations fail until it is fixed).
fn not_started(name: &str, e: &LoadError) {
    stats::POLICIES_NOT_RESTORED.incr();
    tracing::warn!(
        "policy {name} from the dataset could not start and is kept broken: lock commands on its keys fail (lockwarden.policy-failure deny) or skip it (allow) until it is fixed (raise the limit it hit, or LOCK.POLICY LOAD ... REPLACE / UNLOAD it): {}",
        e.message()
    );
}

/// The name of the policy the module arguments loaded, if any. It is this
/// node's configuration: a copy of the same name from the dataset (RDB, AOF,
/// a full sync or the replication stream) never replaces or removes it; an
/// operator's own `LOCK.POLICY LOAD`/`UNLOAD` on this node still can (a
/// primary's), until the next start.
static STARTUP_POLICY: MainThread<RefCell<Option<String>>> = MainThread::new(RefCell::new(None));

fn is_startup(name: &str) -> bool {
    STARTUP_POLICY.get().borrow().as_deref() == Some(name)
}

/// Loads the policy named by module arguments at start-up.
pub fn load_at_startup(spec: PolicySpec) -> Result<(), String> {
    let name = spec.name.clone();
    let policy = engine()
        .compile(spec, max_module_bytes(), limits())
        .map_err(|e| format!("policy {name}: {e}"))?;
    with(|r| r.install(policy, true)).map_err(|e| e.to_string())?;
    *STARTUP_POLICY.get().borrow_mut() = Some(name.clone());
    tracing::info!("policy {name} loaded from the module arguments");
    Ok(())
}

/// Propagates every policy again (idempotent `LOAD ... REPLACE`), e.g. into
/// a freshly rewritten AOF.
pub fn replicate_all(ctx: *mut Ctx) {
    let specs: Vec<PolicySpec> = with(|r| r.specs().cloned().collect());
    for spec in &specs {
        replicate_spec(ctx, spec);
    }
}
