//! The `lockwarden` section of `INFO`.

use crate::ffi::{self, Ctx, api};
use crate::{replicate, sessions, state, stats, waiters};
use redis_module::raw;
use std::ffi::{CString, c_int};

/// Also called by Redis's crash handler, possibly on another thread than
/// the main one: then only the atomic counters are reported (the waiter
/// queues, histograms and token clock belong to the main thread).
unsafe extern "C" fn info(ctx: *mut raw::RedisModuleInfoCtx, for_crash_report: c_int) {
    ffi::guard("info", (), || {
        api!(RedisModule_InfoAddSection, ctx, c"".as_ptr());
        let field = |name: &str, v: u64| {
            let name = CString::new(name).expect("no NUL");
            api!(RedisModule_InfoAddFieldULongLong, ctx, name.as_ptr(), v);
        };
        field("locks_held", stats::locks() as u64);
        for (name, counter) in [
            ("acquires_granted", &stats::ACQUIRES_GRANTED),
            ("acquires_retried", &stats::ACQUIRES_RETRIED),
            ("acquires_contended", &stats::ACQUIRES_CONTENDED),
            ("releases", &stats::RELEASES),
            ("extends", &stats::EXTENDS),
            ("errors_notowner", &stats::ERRORS_NOTOWNER),
            ("errors_notheld", &stats::ERRORS_NOTHELD),
            ("rejected_ttlmax", &stats::REJECTED_TTLMAX),
            ("rejected_ttlmin", &stats::REJECTED_TTLMIN),
            ("policy_denials", &stats::POLICY_DENIALS),
            ("policy_failures", &stats::POLICY_FAILURES),
            ("policy_audit_denials", &stats::POLICY_AUDIT_DENIALS),
            ("policies_not_restored", &stats::POLICIES_NOT_RESTORED),
            ("expired_while_held", &stats::EXPIRED_WHILE_HELD),
            ("deleted_while_held", &stats::DELETED_WHILE_HELD),
        ] {
            field(name, counter.get());
        }
        let main_thread = for_crash_report == 0;
        if main_thread {
            field("waiters", waiters::total() as u64);
            field("session_locks_tracked", sessions::tracked() as u64);
        }
        for (name, counter) in [
            ("handoffs", &stats::HANDOFFS),
            ("wait_timeouts", &stats::WAIT_TIMEOUTS),
            ("session_releases", &stats::SESSION_RELEASES),
            ("grants_revoked", &stats::GRANTS_REVOKED),
        ] {
            field(name, counter.get());
        }
        if !main_thread {
            return;
        }
        let (p50, p99, max) = stats::wait_us();
        field("wait_p50_us", p50);
        field("wait_p99_us", p99);
        field("wait_max_us", max);
        let (p50, p99, max) = stats::hold_ms();
        field("hold_p50_ms", p50);
        field("hold_p99_ms", p99);
        field("hold_max_ms", max);
        field("token_high_water", state::high_water());
        let propagation = match replicate::stream() {
            replicate::Stream::Open => c"open",
            replicate::Stream::Closed => c"closed",
            replicate::Stream::Unknown => c"unknown",
        };
        api!(
            RedisModule_InfoAddFieldCString,
            ctx,
            c"propagation".as_ptr(),
            propagation.as_ptr()
        );
    })
}

pub fn register(ctx: *mut Ctx) -> Result<(), String> {
    if api!(RedisModule_RegisterInfoFunc, ctx, Some(info)) == raw::REDISMODULE_OK as c_int {
        Ok(())
    } else {
        Err("could not register the INFO section".into())
    }
}
