//! lockwarden: distributed locks that are safe by construction, as a
//! Redis/Valkey module.
//!
//! This crate is the thin adaptor between Redis and `lockwarden_core`:
//! argument bytes in, core decision, effect applied to the keyspace and
//! replicated, reply out. See `docs/COMMANDS.md` for the command reference and
//! `../shared/DESIGN.md`-style notes in `docs/DESIGN.md`.

// `cargo test` uses the system allocator: Redis's exists only inside Redis.
#[cfg(not(test))]
mod alloc;
mod cluster;
mod commands;
mod config;
mod events;
mod ffi;
mod info;
mod lease_type;
mod list;
mod logging;
mod persist;
mod policies;
mod replicate;
mod sessions;
mod state;
mod stats;
mod table;
mod waiters;

use ffi::api;
use lockwarden_core::policy::PolicySpec;
use redis_module::raw;
use std::ffi::c_int;

#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: alloc::RedisAllocator = alloc::RedisAllocator;

/// `major * 10000 + minor * 100 + patch`, as `MODULE LIST` shows it.
const MODULE_VERSION: c_int = 100;

/// The policy the module arguments name: its file and its `policy-*`
/// options (`NAME`, then option/value pairs).
struct StartupPolicy<'a> {
    file: String,
    options: Vec<&'a [u8]>,
}

/// Applies module load arguments: `name value` pairs naming settings
/// (`max-ttl-ms 30000`, with or without the `lockwarden.` prefix), or
/// describing a policy to load at start-up (`policy-name`, `policy-file`,
/// `policy-keys`, `policy-mode`, `policy-config`). Returns that policy.
fn apply_load_args<'a>(args: &[&'a [u8]]) -> Result<Option<StartupPolicy<'a>>, String> {
    if !args.len().is_multiple_of(2) {
        return Err("module arguments must be name/value pairs".into());
    }
    let mut policy: Vec<&[u8]> = Vec::new();
    let mut file = None;
    for pair in args.chunks(2) {
        let name = String::from_utf8_lossy(pair[0]).to_ascii_lowercase();
        let value = pair[1];
        match name.strip_prefix("policy-") {
            Some("file") => file = Some(String::from_utf8_lossy(value).into_owned()),
            Some(option @ ("name" | "keys" | "mode" | "config")) => {
                policy.push(match option {
                    "name" => b"NAME",
                    "keys" => b"KEYS",
                    "mode" => b"MODE",
                    _ => b"CONFIG",
                });
                policy.push(value);
            }
            _ => {
                if !config::apply_load_arg(&name, &String::from_utf8_lossy(value))? {
                    return Err(format!("unknown module argument '{name}'"));
                }
            }
        }
    }
    match file {
        Some(file) => Ok(Some(StartupPolicy {
            file,
            options: policy,
        })),
        None if policy.is_empty() => Ok(None),
        None => Err("policy-* arguments need policy-file".into()),
    }
}

/// Reads and parses the start-up policy (after the configs are loaded, so
/// that `lockwarden.policy-max-module-kb` from redis.conf applies).
fn read_startup_policy(p: &StartupPolicy<'_>) -> Result<PolicySpec, String> {
    let file = &p.file;
    // The size first: a wrong path to a huge file must not be read whole.
    let max = config::get(config::Id::PolicyMaxModuleKb) as u64 * 1024;
    let size = std::fs::metadata(file)
        .map_err(|e| format!("cannot read policy-file {file}: {e}"))?
        .len();
    if size > max {
        return Err(format!(
            "policy-file {file} is {size} bytes; lockwarden.policy-max-module-kb allows {max}"
        ));
    }
    let wasm = std::fs::read(file).map_err(|e| format!("cannot read policy-file {file}: {e}"))?;
    // Reuse the LOCK.POLICY LOAD parser: NAME first, options, WASM last.
    let mut words: Vec<&[u8]> = Vec::new();
    let mut name: &[u8] = b"default";
    for pair in p.options.chunks(2) {
        match pair[0] {
            b"NAME" => name = pair[1],
            option => words.extend([option, pair[1]]),
        }
    }
    words.insert(0, name);
    words.push(b"WASM");
    words.push(&wasm);
    let req = lockwarden_core::parse::policy_load(&words).map_err(|e| e.to_string())?;
    Ok(PolicySpec {
        name: String::from_utf8_lossy(req.name).into_owned(),
        keys: req.keys.to_vec(),
        mode: req.mode,
        settings: req.settings.to_vec(),
        wasm: req.wasm.to_vec(),
    })
}

fn load(ctx: *mut ffi::Ctx, argv: *mut *mut ffi::RString, argc: c_int) -> Result<(), String> {
    let missing = ffi::missing_apis();
    if !missing.is_empty() {
        return Err(format!(
            "this server lacks module APIs lockwarden needs (Redis >= 7.0 or Valkey >= 7.2 required): {}",
            missing.join(", ")
        ));
    }
    logging::init();
    api!(
        RedisModule_SetModuleOptions,
        ctx,
        raw::REDISMODULE_OPTIONS_HANDLE_IO_ERRORS as c_int
    );
    state::init_incarnation();
    // SAFETY: OnLoad's argv holds argc valid strings for the duration of the call.
    let args: Vec<&[u8]> = (0..argc.max(0) as usize)
        .map(|i| unsafe { ffi::bytes(*argv.add(i)) })
        .collect();
    let startup_policy = apply_load_args(&args)?;
    // Everything that can fail comes before what Redis does not undo when
    // OnLoad fails (a `MODULE LOAD` at runtime): the data type, the server
    // event and keyspace subscriptions, the timer context. (Configs and
    // commands it does remove.)
    config::register(ctx)?;
    policies::init()?;
    if let Some(p) = &startup_policy {
        policies::load_at_startup(read_startup_policy(p)?)?;
    }
    table::register(ctx)?;
    info::register(ctx)?;
    lease_type::LEASE_TYPE
        .create_data_type(ctx)
        .map_err(|e| format!("could not create the lock data type: {e}"))?;
    events::register(ctx)?;
    ffi::init_timer_ctx(ctx);
    cluster::start_sharing_high_water(ctx);
    tracing::info!(
        "lockwarden {} loaded (max-ttl-ms {}, clamp-ttl {})",
        env!("CARGO_PKG_VERSION"),
        config::get(config::Id::MaxTtlMs),
        config::get(config::Id::ClampTtl) != 0
    );
    Ok(())
}

/// Module entry point.
///
/// # Safety
/// Called by Redis with a valid context and argument vector.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn RedisModule_OnLoad(
    ctx: *mut ffi::Ctx,
    argv: *mut *mut ffi::RString,
    argc: c_int,
) -> c_int {
    // Nothing may allocate before Init: the allocator is Redis's.
    // SAFETY: Init fills in the API function pointers from `ctx`.
    let init = unsafe {
        raw::Export_RedisModule_Init(
            ctx,
            c"lockwarden".as_ptr(),
            MODULE_VERSION,
            raw::REDISMODULE_APIVER_1 as c_int,
        )
    };
    if init == raw::Status::Err as c_int {
        return raw::REDISMODULE_ERR as c_int;
    }
    ffi::guard(
        "module load",
        raw::REDISMODULE_ERR as c_int,
        || match load(ctx, argv, argc) {
            Ok(()) => raw::REDISMODULE_OK as c_int,
            Err(msg) => {
                ffi::log(c"warning", &format!("lockwarden: not loaded: {msg}"));
                raw::REDISMODULE_ERR as c_int
            }
        },
    )
}
