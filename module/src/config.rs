//! Module configuration: `lockwarden.*` settings visible in `CONFIG GET`,
//! changeable with `CONFIG SET`, settable in redis.conf and as module load
//! arguments (`--loadmodule liblockwarden.so max-ttl-ms 30000 ...`).
//!
//! Every setting is stored as one `AtomicI64` (booleans as 0/1, enums as the
//! index of their value), so reads on the command path are a relaxed load.

use crate::ffi::{self, RString, api};
use lockwarden_core::TtlLimits;
use lockwarden_core::policy::{DEFAULT_MAX_MODULE_BYTES, EvalLimits};
use redis_module::raw;
use std::ffi::{CString, c_char, c_int, c_longlong, c_void};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering::Relaxed};

/// While Redis applies redis.conf values at load, settings arrive in any
/// order; the TTL bounds are checked once afterwards instead of per value.
static LOADING: AtomicBool = AtomicBool::new(false);

/// How a setting is typed for Redis.
enum Kind {
    Number { min: i64, max: i64 },
    Bool,
    Enum(&'static [&'static str]),
}

/// One `lockwarden.<name>` setting.
pub struct Setting {
    pub name: &'static str,
    kind: Kind,
    value: AtomicI64,
}

/// Settings by position in [`SETTINGS`].
#[derive(Clone, Copy)]
pub enum Id {
    MaxTtlMs = 0,
    MinTtlMs,
    ClampTtl,
    PolicyFuel,
    PolicyMemoryKb,
    PolicyMaxModuleKb,
    PolicyFailure,
}

/// Largest TTL limit accepted: about 34 years, far below i64 overflow.
const TTL_CEILING: i64 = 1 << 40;

pub static SETTINGS: [Setting; 7] = [
    Setting {
        name: "max-ttl-ms",
        kind: Kind::Number {
            min: 1,
            max: TTL_CEILING,
        },
        value: AtomicI64::new(60_000),
    },
    Setting {
        name: "min-ttl-ms",
        kind: Kind::Number {
            min: 1,
            max: TTL_CEILING,
        },
        value: AtomicI64::new(1),
    },
    Setting {
        name: "clamp-ttl",
        kind: Kind::Bool,
        value: AtomicI64::new(0),
    },
    Setting {
        name: "policy-fuel",
        kind: Kind::Number {
            min: 1_000,
            max: 1_000_000_000,
        },
        value: AtomicI64::new(EvalLimits::DEFAULT.fuel as i64),
    },
    Setting {
        name: "policy-memory-kb",
        kind: Kind::Number {
            min: 64,
            max: 1 << 20,
        },
        value: AtomicI64::new((EvalLimits::DEFAULT.memory_bytes >> 10) as i64),
    },
    Setting {
        name: "policy-max-module-kb",
        kind: Kind::Number {
            min: 1,
            max: 64 << 10,
        },
        value: AtomicI64::new((DEFAULT_MAX_MODULE_BYTES >> 10) as i64),
    },
    Setting {
        name: "policy-failure",
        kind: Kind::Enum(&["deny", "allow"]),
        value: AtomicI64::new(0),
    },
];

pub fn get(id: Id) -> i64 {
    SETTINGS[id as usize].value.load(Relaxed)
}

/// The TTL limits in force now.
pub fn ttl_limits() -> TtlLimits {
    TtlLimits {
        min_ms: get(Id::MinTtlMs) as u64,
        max_ms: get(Id::MaxTtlMs) as u64,
        clamp: get(Id::ClampTtl) != 0,
    }
}

impl Setting {
    /// Parses a textual value (module argument) into the stored integer.
    fn parse(&self, text: &str) -> Result<i64, String> {
        match &self.kind {
            Kind::Number { min, max } => match text.parse::<i64>() {
                Ok(v) if (*min..=*max).contains(&v) => Ok(v),
                _ => Err(format!(
                    "{} must be an integer from {min} to {max}",
                    self.name
                )),
            },
            Kind::Bool => match text.to_ascii_lowercase().as_str() {
                "yes" => Ok(1),
                "no" => Ok(0),
                _ => Err(format!("{} must be yes or no", self.name)),
            },
            Kind::Enum(values) => values
                .iter()
                .position(|v| v.eq_ignore_ascii_case(text))
                .map(|i| i as i64)
                .ok_or_else(|| format!("{} must be one of {}", self.name, values.join(", "))),
        }
    }
}

/// Finds a setting by name, with or without the `lockwarden.` prefix.
fn find(name: &str) -> Option<&'static Setting> {
    let name = name.strip_prefix("lockwarden.").unwrap_or(name);
    SETTINGS.iter().find(|s| s.name.eq_ignore_ascii_case(name))
}

/// Applies a `name value` module load argument if it names a setting.
/// `Ok(false)` when the name is not a setting.
pub fn apply_load_arg(name: &str, value: &str) -> Result<bool, String> {
    match find(name) {
        Some(s) => {
            s.value.store(s.parse(value)?, Relaxed);
            Ok(true)
        }
        None => Ok(false),
    }
}

fn setting(privdata: *mut c_void) -> &'static Setting {
    // SAFETY: privdata is always a pointer into the static SETTINGS.
    unsafe { &*privdata.cast::<Setting>() }
}

fn set_error(err: *mut *mut RString, msg: &str) -> c_int {
    let e = api!(
        RedisModule_CreateString,
        std::ptr::null_mut(),
        msg.as_ptr().cast::<c_char>(),
        msg.len()
    );
    // SAFETY: Redis passes a valid out-pointer for the error string.
    unsafe { *err = e };
    raw::REDISMODULE_ERR as c_int
}

/// Cross-setting check: the TTL bounds must stay ordered.
fn check_ttl_bounds() -> Result<(), String> {
    let (min, max) = (get(Id::MinTtlMs), get(Id::MaxTtlMs));
    if min > max {
        return Err(format!(
            "min-ttl-ms ({min}) must not exceed max-ttl-ms ({max})"
        ));
    }
    Ok(())
}

/// The apply callback of the TTL bounds: Redis calls it once every value of
/// a `CONFIG SET` is stored, so `CONFIG SET lockwarden.min-ttl-ms 70000
/// lockwarden.max-ttl-ms 120000` works in any order; on failure Redis puts
/// the previous values back.
unsafe extern "C" fn apply_ttl_bounds(
    _ctx: *mut ffi::Ctx,
    _privdata: *mut c_void,
    err: *mut *mut RString,
) -> c_int {
    ffi::guard("config apply", raw::REDISMODULE_ERR as c_int, || {
        if LOADING.load(Relaxed) {
            return raw::REDISMODULE_OK as c_int;
        }
        match check_ttl_bounds() {
            Ok(()) => raw::REDISMODULE_OK as c_int,
            Err(msg) => set_error(err, &msg),
        }
    })
}

fn store(privdata: *mut c_void, v: i64) -> c_int {
    ffi::guard("config set", raw::REDISMODULE_ERR as c_int, || {
        setting(privdata).value.store(v, Relaxed);
        raw::REDISMODULE_OK as c_int
    })
}

unsafe extern "C" fn get_number(_: *const c_char, privdata: *mut c_void) -> c_longlong {
    setting(privdata).value.load(Relaxed)
}

unsafe extern "C" fn set_number(
    _: *const c_char,
    v: c_longlong,
    privdata: *mut c_void,
    _err: *mut *mut RString,
) -> c_int {
    store(privdata, v)
}

unsafe extern "C" fn get_int(_: *const c_char, privdata: *mut c_void) -> c_int {
    setting(privdata).value.load(Relaxed) as c_int
}

unsafe extern "C" fn set_int(
    _: *const c_char,
    v: c_int,
    privdata: *mut c_void,
    _err: *mut *mut RString,
) -> c_int {
    store(privdata, v as i64)
}

/// Registers every setting (with the current values, already adjusted by
/// module arguments, as defaults) and lets Redis apply redis.conf values.
pub fn register(ctx: *mut ffi::Ctx) -> Result<(), String> {
    for s in &SETTINGS {
        let name = CString::new(s.name).expect("no NUL");
        let privdata = (s as *const Setting).cast_mut().cast::<c_void>();
        let current = s.value.load(Relaxed);
        let flags = raw::REDISMODULE_CONFIG_DEFAULT;
        let apply: raw::RedisModuleConfigApplyFunc =
            matches!(s.name, "min-ttl-ms" | "max-ttl-ms").then_some(apply_ttl_bounds);
        let rc = match &s.kind {
            Kind::Number { min, max } => api!(
                RedisModule_RegisterNumericConfig,
                ctx,
                name.as_ptr(),
                current,
                flags,
                *min,
                *max,
                Some(get_number),
                Some(set_number),
                apply,
                privdata
            ),
            Kind::Bool => api!(
                RedisModule_RegisterBoolConfig,
                ctx,
                name.as_ptr(),
                current as c_int,
                flags,
                Some(get_int),
                Some(set_int),
                None,
                privdata
            ),
            Kind::Enum(values) => {
                let names: Vec<CString> = values
                    .iter()
                    .map(|v| CString::new(*v).expect("no NUL"))
                    .collect();
                let mut ptrs: Vec<*const c_char> = names.iter().map(|n| n.as_ptr()).collect();
                let ints: Vec<c_int> = (0..values.len() as c_int).collect();
                api!(
                    RedisModule_RegisterEnumConfig,
                    ctx,
                    name.as_ptr(),
                    current as c_int,
                    flags,
                    ptrs.as_mut_ptr(),
                    ints.as_ptr(),
                    values.len() as c_int,
                    Some(get_int),
                    Some(set_int),
                    None,
                    privdata
                )
            }
        };
        if rc != raw::REDISMODULE_OK as c_int {
            return Err(format!("could not register config lockwarden.{}", s.name));
        }
    }
    LOADING.store(true, Relaxed);
    let loaded = api!(RedisModule_LoadConfigs, ctx);
    LOADING.store(false, Relaxed);
    if loaded != raw::REDISMODULE_OK as c_int {
        return Err("could not load lockwarden.* configs".into());
    }
    check_ttl_bounds()
}
