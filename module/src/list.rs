//! `LOCK.LIST [CURSOR c] [MATCH glob] [HELDMORE ms] [COUNT n]`: finds locks
//! held longer than expected without scanning the keyspace by hand.
//!
//! Each call is one bounded step of `SCAN ... TYPE lockwardn` (so it never
//! blocks the server for long, however many keys there are) and replies
//! `[next-cursor, [[key, owner, token, ttl, held, waiters], ...]]`; iterate
//! until the cursor is 0, exactly like `SCAN`.
//!
//! It lists only the locks whose keys the caller's ACL user may read, so a
//! user confined to `~app:*` does not see other tenants' owners and tokens.

use crate::ffi::{self, Call, Key, Slot, api, reply};
use crate::lease_type::ty;
use crate::waiters::{self, LockKey};
use lockwarden_core::{Lease, LockError, parse};
use redis_module::raw;

/// A call reply, freed on drop.
struct Reply(*mut raw::RedisModuleCallReply);

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.0.is_null() {
            api!(RedisModule_FreeCallReply, self.0);
        }
    }
}

/// The calling connection's ACL user, freed on drop.
struct CallerUser(*mut raw::RedisModuleUser);

impl CallerUser {
    /// `None` when the caller is unknown (a script's engine client): then
    /// nothing is listed.
    fn of(call: &Call) -> Option<CallerUser> {
        let name = ffi::OwnedString::adopt(api!(
            RedisModule_GetClientUserNameById,
            call.ctx,
            call.client_id()
        ))?;
        let user = api!(RedisModule_GetModuleUserFromUserName, name.raw());
        (!user.is_null()).then_some(CallerUser(user))
    }

    fn may_read(&self, key: *mut ffi::RString) -> bool {
        api!(
            RedisModule_ACLCheckKeyPermissions,
            self.0,
            key,
            // Read access to the key's data (the only flag that means "read"
            // here; Redis refuses the key-spec RO flag in this call).
            raw::REDISMODULE_CMD_KEY_ACCESS as i32
        ) == raw::REDISMODULE_OK as i32
    }
}

impl Drop for CallerUser {
    fn drop(&mut self) {
        api!(RedisModule_FreeModuleUser, self.0);
    }
}

fn element(r: *mut raw::RedisModuleCallReply, i: usize) -> *mut raw::RedisModuleCallReply {
    api!(RedisModule_CallReplyArrayElement, r, i)
}

fn string<'a>(r: *mut raw::RedisModuleCallReply) -> &'a [u8] {
    let mut len = 0usize;
    let p = api!(RedisModule_CallReplyStringPtr, r, &mut len);
    if p.is_null() {
        &[]
    } else {
        // SAFETY: the reply owns `len` bytes at `p` while it lives.
        unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }
    }
}

pub fn list(call: &Call) -> Result<(), LockError> {
    let req = call.with_args(parse::list)?;
    let cursor = req.cursor.to_string();
    let count = req.count.to_string();
    let pattern = req.pattern.unwrap_or(b"*");
    let scan = Reply(api!(
        RedisModule_Call,
        call.ctx,
        c"SCAN".as_ptr(),
        c"bcbcbcc".as_ptr(),
        cursor.as_ptr(),
        cursor.len(),
        c"MATCH".as_ptr(),
        pattern.as_ptr(),
        pattern.len(),
        c"COUNT".as_ptr(),
        count.as_ptr(),
        count.len(),
        c"TYPE".as_ptr(),
        c"lockwardn".as_ptr()
    ));
    if scan.0.is_null() || api!(RedisModule_CallReplyLength, scan.0) != 2 {
        return Err(LockError::syntax("SCAN failed"));
    }
    let next = string(element(scan.0, 0));
    let keys = element(scan.0, 1);
    let now = ffi::command_now_ms();
    let db = call.db();
    let user = CallerUser::of(call);
    let mut rows: Vec<(Vec<u8>, Lease, usize)> = Vec::new();
    for i in 0..api!(RedisModule_CallReplyLength, keys) {
        let name = string(element(keys, i));
        let owned = ffi::OwnedString::new(name);
        if !user.as_ref().is_some_and(|u| u.may_read(owned.raw())) {
            continue;
        }
        let Some(mut key) = Key::read(call.ctx, owned.raw()) else {
            continue;
        };
        if let Slot::Ours(lease) = key.slot::<Lease>(ty())
            && lease.is_live(now)
            && req.held_more_ms.is_none_or(|min| lease.held_ms(now) > min)
        {
            let lk = LockKey {
                db,
                name: name.into(),
            };
            rows.push((name.to_vec(), lease.clone(), waiters::len(&lk)));
        }
    }
    let ctx = call.ctx;
    reply::array(ctx, 2);
    reply::bulk(ctx, next);
    reply::array(ctx, rows.len());
    for (name, lease, waiting) in rows {
        reply::array(ctx, 6);
        reply::bulk(ctx, &name);
        reply::bulk(ctx, &lease.owner);
        reply::int(ctx, lease.token as i64);
        reply::int(ctx, lease.ttl_ms(now) as i64);
        reply::int(ctx, lease.held_ms(now) as i64);
        reply::int(ctx, waiting as i64);
    }
    Ok(())
}
