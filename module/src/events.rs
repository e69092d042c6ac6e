//! Server events the module follows: the end of a load (client ids in an RDB
//! are trusted only during that load) and replication role changes (only a
//! primary counts expirations and issues grants).

use crate::ffi::{self, Ctx, api};
use crate::{persist, state};
use redis_module::raw;
use std::ffi::{c_int, c_void};

unsafe extern "C" fn on_loading(_ctx: *mut Ctx, _event: raw::RedisModuleEvent, sub: u64, _data: *mut c_void) {
    ffi::guard("loading event", (), || {
        if sub == raw::REDISMODULE_SUBEVENT_LOADING_ENDED || sub == raw::REDISMODULE_SUBEVENT_LOADING_FAILED {
            persist::loading_ended();
        }
    })
}

unsafe extern "C" fn on_role_change(_ctx: *mut Ctx, _event: raw::RedisModuleEvent, sub: u64, _data: *mut c_void) {
    ffi::guard("role change event", (), || {
        state::set_primary(sub == raw::REDISMODULE_EVENT_REPLROLECHANGED_NOW_MASTER);
    })
}

fn subscribe(ctx: *mut Ctx, id: u64, cb: raw::RedisModuleEventCallback) -> Result<(), String> {
    let event = raw::RedisModuleEvent { id, dataver: 1 };
    if api!(RedisModule_SubscribeToServerEvent, ctx, event, cb) == raw::REDISMODULE_OK as c_int {
        Ok(())
    } else {
        Err(format!("could not subscribe to server event {id}"))
    }
}

pub fn register(ctx: *mut Ctx) -> Result<(), String> {
    state::set_primary(ffi::context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_SLAVE == 0);
    subscribe(ctx, raw::REDISMODULE_EVENT_LOADING, Some(on_loading))?;
    subscribe(ctx, raw::REDISMODULE_EVENT_REPLICATION_ROLE_CHANGED, Some(on_role_change))
}
