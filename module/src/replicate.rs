//! The one place that emits replication and AOF records. Effects, not
//! commands: a grant or extension travels as `LOCK._GRANT key owner
//! token:deadline-ms:acquired-at-ms:extensions:session` (absolute times, the
//! token); a release as `DEL`. Replicas and the AOF
//! replay these facts without consulting a clock or a policy. An AOF rewrite
//! writes each lease as that `LOCK._GRANT` and a `PERSIST`: the key's expiry
//! is Redis's to write (its `PEXPIREAT` follows, if the key has one), since
//! `PERSIST` or `PEXPIRE` may have moved it away from the lease's deadline.

use crate::ffi::{Ctx, RString, api};
use lockwarden_core::Lease;
use lockwarden_core::lease::GrantFields;
use redis_module::raw::RedisModuleIO;

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
pub fn grant(ctx: *mut Ctx, key: *mut RString, owner_arg: Option<*mut RString>, lease: &Lease) {
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

/// Replicates the token clock's high-water mark.
pub fn high_water(ctx: *mut Ctx, token: u64) {
    api!(
        RedisModule_Replicate,
        ctx,
        c"LOCK._HIGHWATER".as_ptr(),
        c"l".as_ptr(),
        token as i64
    );
}
