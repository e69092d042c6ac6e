//! Cluster awareness for the grants the server makes on its own (handoffs
//! from timers and events). A client's command is routed by Redis, so the
//! node that runs it owns the key; a timer is not routed: before handing a
//! lock to a waiter, the node checks that it still owns the key's slot and
//! that the slot is not being migrated. Otherwise the grant could land in a
//! slot that has moved (the lock now lives on another node) and break mutual
//! exclusion.

use crate::ffi::{self, Ctx};
use redis_module::raw;

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
