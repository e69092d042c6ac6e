//! The one place that emits replication and AOF records. Effects, not
//! commands: a grant or extension travels as `LOCK._GRANT` with the owner,
//! token and absolute deadline; a release as `DEL`. Replicas and the AOF
//! replay these facts without consulting a clock or a policy.

use crate::ffi::{Ctx, RString, api};
use lockwarden_core::Lease;
use redis_module::raw::RedisModuleIO;

pub const GRANT_CMD: &std::ffi::CStr = c"LOCK._GRANT";

/// Calls a variadic emitter (`RedisModule_Replicate` or `RedisModule_EmitAOF`)
/// with the `LOCK._GRANT` arguments of `lease` on `key`.
macro_rules! emit_grant {
    ($emit:ident, $target:expr, $key:expr, $lease:expr) => {{
        let l: &Lease = $lease;
        let owner = l.owner.as_ptr().cast::<std::ffi::c_char>();
        // The format strings match the argument lists exactly.
        {
            if l.session {
                api!(
                    $emit,
                    $target,
                    GRANT_CMD.as_ptr(),
                    c"sbllllc".as_ptr(),
                    $key,
                    owner,
                    l.owner.len(),
                    l.token as i64,
                    l.deadline_ms,
                    l.acquired_at_ms,
                    l.extensions as i64,
                    c"SESSION".as_ptr(),
                )
            } else {
                api!(
                    $emit,
                    $target,
                    GRANT_CMD.as_ptr(),
                    c"sbllll".as_ptr(),
                    $key,
                    owner,
                    l.owner.len(),
                    l.token as i64,
                    l.deadline_ms,
                    l.acquired_at_ms,
                    l.extensions as i64,
                )
            }
        }
    }};
}

/// Replicates a grant or extension of `lease` on `key`.
pub fn grant(ctx: *mut Ctx, key: *mut RString, lease: &Lease) {
    emit_grant!(RedisModule_Replicate, ctx, key, lease);
}

/// Writes `lease` on `key` into an AOF rewrite.
pub fn emit_grant_aof(aof: *mut RedisModuleIO, key: *mut RString, lease: &Lease) {
    emit_grant!(RedisModule_EmitAOF, aof, key, lease);
}

/// Replicates the removal of a lock.
pub fn delete(ctx: *mut Ctx, key: *mut RString) {
    api!(
        RedisModule_Replicate,
        ctx,
        c"DEL".as_ptr(),
        c"s".as_ptr(),
        key
    );
}
