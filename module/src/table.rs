//! The command table: names, handlers, flags, key positions, arity and the
//! documentation `COMMAND INFO` / `COMMAND DOCS` show (via
//! `RedisModule_SetCommandInfo`, so Redis also checks arity and ACL key
//! permissions with read/write detail).

use crate::ffi::{self, api};
use crate::{commands, list, policies};
use lockwarden_core::LockError;
use redis_module::raw;
use std::ffi::{CStr, c_int};

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
entry!(cmd_high_water => commands::high_water);
entry!(cmd_list => list::list);
entry!(cmd_policy_load => policies::load);
entry!(cmd_policy_unload => policies::unload);
entry!(cmd_policy_list => policies::list);
entry!(cmd_policy_eval => policies::eval);
entry!(cmd_policy_help => policy_help);

/// `LOCK.POLICY HELP`: the subcommands and what they do, from this table
/// (Redis's answer to an unknown subcommand points here).
fn policy_help(call: &ffi::Call) -> Result<(), LockError> {
    ffi::reply::array(call.ctx, POLICY_SUBCOMMANDS.len());
    for spec in POLICY_SUBCOMMANDS {
        let line = format!(
            "LOCK.POLICY {} - {}",
            spec.name.to_string_lossy(),
            spec.summary.to_string_lossy()
        );
        ffi::reply::bulk(call.ctx, line.as_bytes());
    }
    Ok(())
}

type Entry = unsafe extern "C" fn(*mut ffi::Ctx, *mut *mut ffi::RString, c_int) -> c_int;

/// One command (or `LOCK.POLICY` subcommand).
struct Spec {
    name: &'static CStr,
    entry: Entry,
    flags: &'static CStr,
    /// Redis arity: exact if positive, minimum if negative (both count the
    /// command name, and for subcommands the subcommand name).
    arity: c_int,
    /// Key spec flags of the single key at position 1, if the command has one.
    key: Option<u32>,
    summary: &'static CStr,
    complexity: &'static CStr,
    /// ACL categories beyond the implicit ones, where the server supports it.
    acl: Option<&'static CStr>,
}

const RW: u32 = raw::REDISMODULE_CMD_KEY_RW;
const RO: u32 = raw::REDISMODULE_CMD_KEY_RO;
const ACCESS: u32 = raw::REDISMODULE_CMD_KEY_ACCESS;
const UPDATE: u32 = raw::REDISMODULE_CMD_KEY_UPDATE;
const DELETE: u32 = raw::REDISMODULE_CMD_KEY_DELETE;

const COMMANDS: &[Spec] = &[
    Spec {
        name: c"LOCK.ACQUIRE",
        entry: cmd_acquire,
        // May block (WAIT), so not `fast`.
        flags: c"write deny-oom blocking",
        arity: -4,
        key: Some(RW | ACCESS | UPDATE),
        summary: c"Acquires a lock: returns [fencing token, granted TTL], or nil when another owner holds it. WAIT blocks until granted; SESSION ties it to the connection.",
        complexity: c"O(1) plus the loaded policies",
        acl: None,
    },
    Spec {
        name: c"LOCK.RELEASE",
        entry: cmd_release,
        // Not `fast`: policies run (bounded by fuel, not by O(1)), and the
        // handoff to waiters runs in the same command.
        flags: c"write",
        arity: -3,
        key: Some(RW | DELETE),
        summary: c"Releases a lock held by owner (and FENCE token): 1, or NOTHELD / NOTOWNER.",
        complexity: c"O(1) plus the loaded policies",
        acl: None,
    },
    Spec {
        name: c"LOCK.EXTEND",
        entry: cmd_extend,
        // Not `fast`: policies run.
        flags: c"write",
        arity: -4,
        key: Some(RW | UPDATE),
        summary: c"Extends the lease of a lock held by owner: the granted TTL, or NOTHELD / NOTOWNER.",
        complexity: c"O(1) plus the loaded policies",
        acl: None,
    },
    Spec {
        name: c"LOCK.INFO",
        entry: cmd_info,
        flags: c"readonly fast",
        arity: 2,
        key: Some(RO | ACCESS),
        summary: c"Describes the holder of a lock (owner, token, ttl, held, waiters, ...), or nil when free.",
        complexity: c"O(1)",
        acl: None,
    },
    Spec {
        name: c"LOCK._GRANT",
        entry: cmd_grant,
        flags: c"write fast no-monitor",
        arity: 4,
        key: Some(RW | UPDATE),
        summary: c"Internal: applies a grant decided by the primary (replication and AOF only).",
        complexity: c"O(1)",
        acl: None,
    },
    Spec {
        name: c"LOCK._HIGHWATER",
        entry: cmd_high_water,
        flags: c"write fast no-monitor",
        arity: 2,
        key: None,
        summary: c"Internal: raises the fencing-token high-water mark (replication and AOF only).",
        complexity: c"O(1)",
        acl: None,
    },
    Spec {
        name: c"LOCK.LIST",
        entry: cmd_list,
        flags: c"readonly",
        arity: -1,
        key: None,
        summary: c"One bounded scan step over the locks of the current database, optionally only those held longer than HELDMORE ms.",
        complexity: c"O(COUNT)",
        acl: None,
    },
];

const POLICY_SUBCOMMANDS: &[Spec] = &[
    Spec {
        name: c"LOAD",
        entry: cmd_policy_load,
        flags: c"admin write deny-oom deny-script",
        arity: -5,
        key: None,
        summary: c"Compiles and loads a Wasm lock policy: LOAD name [KEYS glob] [MODE enforce|audit] [CONFIG settings] [REPLACE] WASM bytes.",
        complexity: c"O(module size), compiled off the main thread (inline on replicas and AOF load)",
        acl: Some(c"admin dangerous"),
    },
    Spec {
        name: c"UNLOAD",
        entry: cmd_policy_unload,
        flags: c"admin write",
        arity: 3,
        key: None,
        summary: c"Unloads a lock policy.",
        complexity: c"O(number of policies)",
        acl: Some(c"admin dangerous"),
    },
    Spec {
        name: c"LIST",
        entry: cmd_policy_list,
        flags: c"admin readonly",
        arity: 2,
        key: None,
        summary: c"Lists the loaded lock policies with their counters.",
        complexity: c"O(number of policies)",
        acl: Some(c"admin dangerous"),
    },
    Spec {
        name: c"EVAL",
        entry: cmd_policy_eval,
        flags: c"admin readonly",
        arity: 7,
        key: None,
        summary: c"Dry run of one policy: EVAL name ACQUIRE|EXTEND|RELEASE key owner ttl-ms.",
        complexity: c"O(1) plus the policy",
        acl: Some(c"admin dangerous"),
    },
    Spec {
        name: c"HELP",
        entry: cmd_policy_help,
        flags: c"fast allow-loading allow-stale",
        arity: 2,
        key: None,
        summary: c"Lists the LOCK.POLICY subcommands.",
        complexity: c"O(1)",
        acl: None,
    },
];

/// The fields of `RedisModuleCommandInfoVersion` this build fills.
static INFO_VERSION: raw::RedisModuleCommandInfoVersion = raw::RedisModuleCommandInfoVersion {
    version: 1,
    sizeof_historyentry: std::mem::size_of::<raw::RedisModuleCommandHistoryEntry>(),
    sizeof_keyspec: std::mem::size_of::<raw::RedisModuleCommandKeySpec>(),
    sizeof_arg: std::mem::size_of::<raw::RedisModuleCommandArg>(),
};

/// A key spec for one key at argv[1], and the zeroed terminator.
fn key_specs(flags: u32) -> [raw::RedisModuleCommandKeySpec; 2] {
    // SAFETY: the key spec is plain data; all-zero is the documented terminator.
    let mut specs: [raw::RedisModuleCommandKeySpec; 2] = unsafe { std::mem::zeroed() };
    specs[0].flags = flags as u64;
    specs[0].begin_search_type = raw::RedisModuleKeySpecBeginSearchType_REDISMODULE_KSPEC_BS_INDEX;
    specs[0].bs.index.pos = 1;
    specs[0].find_keys_type = raw::RedisModuleKeySpecFindKeysType_REDISMODULE_KSPEC_FK_RANGE;
    specs[0].fk.range.lastkey = 0;
    specs[0].fk.range.keystep = 1;
    specs[0].fk.range.limit = 0;
    specs
}

fn set_info(command: *mut raw::RedisModuleCommand, spec: &Spec) -> Result<(), String> {
    let mut keys = spec.key.map(key_specs);
    // SAFETY: the info struct is plain data; unset fields must be zero/NULL.
    let mut info: raw::RedisModuleCommandInfo = unsafe { std::mem::zeroed() };
    info.version = &INFO_VERSION;
    info.summary = spec.summary.as_ptr();
    info.complexity = spec.complexity.as_ptr();
    info.since = c"0.1.0".as_ptr();
    info.arity = spec.arity;
    info.key_specs = keys
        .as_mut()
        .map_or(std::ptr::null_mut(), |k| k.as_mut_ptr());
    // Redis copies everything it keeps.
    if api!(RedisModule_SetCommandInfo, command, &info) != raw::REDISMODULE_OK as c_int {
        return Err(format!(
            "invalid command info for {}",
            spec.name.to_string_lossy()
        ));
    }
    // ACL categories for module commands exist from Redis 7.2 / Valkey 7.2;
    // on Redis 7.0 deny LOCK.POLICY by name (see the README's ACL recipe).
    // SAFETY: reading a function pointer set by RedisModule_Init.
    if let (Some(set_categories), Some(categories)) = (
        unsafe { raw::RedisModule_SetCommandACLCategories },
        spec.acl,
    ) {
        // SAFETY: a valid command and a NUL-terminated category list.
        if unsafe { set_categories(command, categories.as_ptr()) } != raw::REDISMODULE_OK as c_int {
            return Err(format!(
                "invalid ACL categories for {}",
                spec.name.to_string_lossy()
            ));
        }
    }
    Ok(())
}

fn created(
    rc: c_int,
    command: *mut raw::RedisModuleCommand,
    name: &CStr,
) -> Result<*mut raw::RedisModuleCommand, String> {
    if rc != raw::REDISMODULE_OK as c_int || command.is_null() {
        return Err(format!(
            "could not create command {}",
            name.to_string_lossy()
        ));
    }
    Ok(command)
}

/// Creates every command and the `LOCK.POLICY` container with its
/// subcommands.
pub fn register(ctx: *mut ffi::Ctx) -> Result<(), String> {
    for spec in COMMANDS {
        let (first, last) = if spec.key.is_some() { (1, 1) } else { (0, 0) };
        let rc = api!(
            RedisModule_CreateCommand,
            ctx,
            spec.name.as_ptr(),
            Some(spec.entry),
            spec.flags.as_ptr(),
            first,
            last,
            first
        );
        let command = created(
            rc,
            api!(RedisModule_GetCommand, ctx, spec.name.as_ptr()),
            spec.name,
        )?;
        // Documentation and finer ACL checks: worth a warning, not a failed load.
        if let Err(e) = set_info(command, spec) {
            tracing::warn!("{e}");
        }
    }
    // A container command: Redis dispatches to the subcommands.
    let rc = api!(
        RedisModule_CreateCommand,
        ctx,
        c"LOCK.POLICY".as_ptr(),
        None,
        c"admin".as_ptr(),
        0,
        0,
        0
    );
    let parent = created(
        rc,
        api!(RedisModule_GetCommand, ctx, c"LOCK.POLICY".as_ptr()),
        c"LOCK.POLICY",
    )?;
    for spec in POLICY_SUBCOMMANDS {
        let rc = api!(
            RedisModule_CreateSubcommand,
            parent,
            spec.name.as_ptr(),
            Some(spec.entry),
            spec.flags.as_ptr(),
            0,
            0,
            0
        );
        let full = format!("LOCK.POLICY|{}", spec.name.to_string_lossy());
        let full = std::ffi::CString::new(full).expect("no NUL");
        let command = created(
            rc,
            api!(RedisModule_GetCommand, ctx, full.as_ptr()),
            spec.name,
        )?;
        // Documentation and finer ACL checks: worth a warning, not a failed load.
        if let Err(e) = set_info(command, spec) {
            tracing::warn!("{e}");
        }
    }
    Ok(())
}
