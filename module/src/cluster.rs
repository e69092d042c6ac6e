//! Cluster awareness.
//!
//! * Grants the server makes on its own (handoffs from timers and events).
//!   A client's command is routed by Redis, so the node that runs it owns
//!   the key; a timer is not routed: before handing a lock to a waiter, the
//!   node checks that it still owns the key's slot and that the slot is not
//!   being migrated. Otherwise the grant could land in a slot that has moved
//!   (the lock now lives on another node) and break mutual exclusion.
//! * The token high-water mark, shared over the cluster bus: a slot
//!   migration carries held locks with their tokens, but a lock released
//!   before its slot moved leaves nothing behind. Every node sends its mark
//!   to the others when it rises (checked every 100 ms) and every second,
//!   and raises its own to what it receives, so a key's next token on its
//!   new node is larger than its last one on the old node without relying
//!   on the two clocks, once the mark has travelled (within ~100 ms).

use crate::ffi::{self, Ctx, api};
use crate::state::{self, MainThread};
use redis_module::raw;
use std::cell::Cell;
use std::ffi::{c_char, c_uchar, c_void};

/// Redis's CRC16 (XMODEM) of the hash-tagged part of the key, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(tagged) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Does the `myself` line of `CLUSTER NODES` give this node `slot`, with no
/// migration or import of it in progress?
fn owns_stably(nodes: &str, slot: u16) -> bool {
    let Some(me) = nodes
        .lines()
        .find(|l| l.split(' ').nth(2).is_some_and(|f| f.contains("myself")))
    else {
        return false;
    };
    let mut owned = false;
    for spec in me.split(' ').skip(8) {
        if let Some(moving) = spec.strip_prefix('[') {
            // "[slot->-node]" (migrating) or "[slot-<-node]" (importing).
            if moving.split('-').next().and_then(|s| s.parse::<u16>().ok()) == Some(slot) {
                return false;
            }
            continue;
        }
        let (lo, hi) = spec.split_once('-').unwrap_or((spec, spec));
        if let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) {
            owned |= (lo..=hi).contains(&slot);
        }
    }
    owned
}

/// May this node grant `key` on its own initiative now? Always outside a
/// cluster.
pub fn can_grant_here(ctx: *mut Ctx, key: &[u8]) -> bool {
    if ffi::context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_CLUSTER == 0 {
        return true;
    }
    ffi::with_call_text(ctx, c"CLUSTER", c"NODES", |text| {
        owns_stably(&String::from_utf8_lossy(text), key_slot(key))
    })
    .unwrap_or(false)
}

/// The cluster message type carrying a high-water mark (8 bytes, little
/// endian).
const HIGH_WATER_MSG: u8 = 1;
/// How often the mark is checked, and sent if it rose.
const GOSSIP_MS: i64 = 100;
/// Every this many checks the mark is sent anyway (new nodes, lost messages).
const RESEND_EVERY: u32 = 10;

/// The mark last sent, and the checks since.
static SENT: MainThread<Cell<(u64, u32)>> = MainThread::new(Cell::new((0, 0)));

/// In a cluster, starts sharing the token high-water mark with the other
/// nodes. Called once at load, after the timer context is set.
pub fn start_sharing_high_water(ctx: *mut Ctx) {
    if ffi::context_flags(ctx) & raw::REDISMODULE_CTX_FLAGS_CLUSTER == 0 {
        return;
    }
    api!(
        RedisModule_RegisterClusterMessageReceiver,
        ctx,
        HIGH_WATER_MSG,
        Some(on_high_water)
    );
    ffi::start_timer(GOSSIP_MS, on_gossip, std::ptr::null_mut());
}

unsafe extern "C" fn on_gossip(ctx: *mut Ctx, _data: *mut c_void) {
    ffi::guard("high-water gossip", (), || {
        let (sent, checks) = SENT.get().get();
        let mark = state::high_water();
        if mark > sent || checks + 1 >= RESEND_EVERY {
            let bytes = mark.to_le_bytes();
            let ok = api!(
                RedisModule_SendClusterMessage,
                ctx,
                std::ptr::null(),
                HIGH_WATER_MSG,
                bytes.as_ptr().cast::<c_char>(),
                bytes.len() as u32
            ) == raw::REDISMODULE_OK as std::ffi::c_int;
            SENT.get()
                .set(if ok { (mark, 0) } else { (sent, checks + 1) });
        } else {
            SENT.get().set((sent, checks + 1));
        }
    });
    ffi::start_timer(GOSSIP_MS, on_gossip, std::ptr::null_mut());
}

unsafe extern "C" fn on_high_water(
    _ctx: *mut Ctx,
    _sender: *const c_char,
    _type: u8,
    payload: *const c_uchar,
    len: u32,
) {
    ffi::guard("high-water message", (), || {
        if payload.is_null() || len != 8 {
            return;
        }
        // SAFETY: Redis passes `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(payload, 8) };
        let mark = u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
        if mark <= lockwarden_core::clock::MAX_TOKEN {
            state::observe_token(mark);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}"));
        assert_eq!(key_slot(b"123456789"), 0x31c3);
    }

    #[test]
    fn ownership_from_cluster_nodes() {
        let nodes = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 6000 [5461->-b2]\n\
                     b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5462-10922 [7000-<-a1]\n";
        assert!(owns_stably(nodes, 0));
        assert!(owns_stably(nodes, 5460));
        assert!(owns_stably(nodes, 6000));
        assert!(!owns_stably(nodes, 5461), "migrating");
        assert!(!owns_stably(nodes, 7000), "owned by b2");
        let importing = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-10 [11-<-b2]\n";
        assert!(!owns_stably(importing, 11));
    }
}
