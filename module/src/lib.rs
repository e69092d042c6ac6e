//! lockwarden: distributed locks that are safe by construction, as a
//! Redis/Valkey module.
//!
//! This crate is the thin adaptor between Redis and `lockwarden_core`:
//! argument bytes in, core decision, effect applied to the keyspace and
//! replicated, reply out. See `docs/COMMANDS.md` for the command reference and
//! `../shared/DESIGN.md`-style notes in `docs/DESIGN.md`.

mod alloc;
mod commands;
mod config;
mod events;
mod ffi;
mod info;
mod lease_type;
mod list;
mod logging;
mod persist;
mod replicate;
mod sessions;
mod state;
mod stats;
mod waiters;

use ffi::api;
use redis_module::raw;
use std::ffi::{CString, c_int};

#[cfg(not(test))]
#[global_allocator]
static ALLOCATOR: alloc::RedisAllocator = alloc::RedisAllocator;

/// `major * 10000 + minor * 100 + patch`, as `MODULE LIST` shows it.
const MODULE_VERSION: c_int = 100;

/// Defines the extern "C" entry point of a command handler.
macro_rules! entry {
    ($name:ident => $handler:path) => {
        unsafe extern "C" fn $name(
            ctx: *mut ffi::Ctx,
            argv: *mut *mut ffi::RString,
            argc: c_int,
        ) -> c_int {
            commands::run(ctx, argv, argc, $handler)
        }
    };
}

entry!(cmd_acquire => commands::acquire);
entry!(cmd_release => commands::release);
entry!(cmd_extend => commands::extend);
entry!(cmd_info => commands::info);
entry!(cmd_grant => commands::grant);
entry!(cmd_list => list::list);

type Entry = unsafe extern "C" fn(*mut ffi::Ctx, *mut *mut ffi::RString, c_int) -> c_int;

/// (name, entry, flags, first key, last key, key step)
const COMMANDS: &[(&str, Entry, &str, c_int, c_int, c_int)] = &[
    // May block (WAIT), so not `fast`.
    ("LOCK.ACQUIRE", cmd_acquire, "write deny-oom blocking", 1, 1, 1),
    ("LOCK.RELEASE", cmd_release, "write fast", 1, 1, 1),
    ("LOCK.EXTEND", cmd_extend, "write fast", 1, 1, 1),
    ("LOCK.INFO", cmd_info, "readonly fast", 1, 1, 1),
    ("LOCK._GRANT", cmd_grant, "write fast no-monitor", 1, 1, 1),
    ("LOCK.LIST", cmd_list, "readonly", 0, 0, 0),
];

fn register_commands(ctx: *mut ffi::Ctx) -> Result<(), String> {
    for &(name, entry, flags, first, last, step) in COMMANDS {
        let cname = CString::new(name).expect("no NUL");
        let cflags = CString::new(flags).expect("no NUL");
        let rc = api!(
            RedisModule_CreateCommand,
            ctx,
            cname.as_ptr(),
            Some(entry),
            cflags.as_ptr(),
            first,
            last,
            step
        );
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(format!("could not create command {name}"));
        }
    }
    Ok(())
}

/// Applies module load arguments: `name value` pairs naming settings
/// (`max-ttl-ms 30000`, with or without the `lockwarden.` prefix).
fn apply_load_args(args: &[&[u8]]) -> Result<(), String> {
    if args.len() % 2 != 0 {
        return Err("module arguments must be name/value pairs".into());
    }
    for pair in args.chunks(2) {
        let name = String::from_utf8_lossy(pair[0]);
        let value = String::from_utf8_lossy(pair[1]);
        if !config::apply_load_arg(&name, &value)? {
            return Err(format!("unknown module argument '{name}'"));
        }
    }
    Ok(())
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
    api!(RedisModule_SetModuleOptions, ctx, raw::REDISMODULE_OPTIONS_HANDLE_IO_ERRORS as c_int);
    state::init_incarnation();
    // SAFETY: OnLoad's argv holds argc valid strings for the duration of the call.
    let args: Vec<&[u8]> = (0..argc.max(0) as usize)
        .map(|i| unsafe { ffi::bytes(*argv.add(i)) })
        .collect();
    apply_load_args(&args)?;
    lease_type::LEASE_TYPE
        .create_data_type(ctx)
        .map_err(|e| format!("could not create the lock data type: {e}"))?;
    register_commands(ctx)?;
    config::register(ctx)?;
    info::register(ctx)?;
    events::register(ctx)?;
    ffi::init_timer_ctx(ctx);
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
    ffi::guard("module load", raw::REDISMODULE_ERR as c_int, || {
        match load(ctx, argv, argc) {
            Ok(()) => raw::REDISMODULE_OK as c_int,
            Err(msg) => {
                ffi::log(c"warning", &format!("lockwarden: not loaded: {msg}"));
                raw::REDISMODULE_ERR as c_int
            }
        }
    })
}
