//! The lease record stored as the value of a lock key, and its versioned
//! binary encoding (used for RDB, `DUMP`/`RESTORE` and slot migration).

use crate::clock::MAX_TOKEN;

/// Longest accepted owner, in bytes. Owners such as `host:pid:uuid` are far
/// shorter; the cap keeps a lock's memory bounded.
pub const MAX_OWNER_LEN: usize = 256;

/// A held lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (binary-safe, 1..=[`MAX_OWNER_LEN`] bytes).
    pub owner: Box<[u8]>,
    /// The fencing token of this grant.
    pub token: u64,
    /// Absolute expiry, unix ms. The lock is held while `now <= deadline_ms`,
    /// exactly as Redis treats the key's expiry.
    pub deadline_ms: i64,
    /// When this owner was granted the lock, unix ms.
    pub acquired_at_ms: i64,
    /// How many times the holder extended the lease.
    pub extensions: u32,
    /// Released when the acquiring connection closes.
    pub session: bool,
    /// The id of the connection that acquired the lock, on the node that
    /// granted it; 0 when unknown here (the lease came from replication, the
    /// AOF or another process's RDB).
    pub client_id: u64,
}

impl Lease {
    /// Is the lease still in force at `now_ms`?
    pub fn is_live(&self, now_ms: i64) -> bool {
        now_ms <= self.deadline_ms
    }

    /// Remaining lease in ms at `now_ms` (0 once expired).
    pub fn ttl_ms(&self, now_ms: i64) -> u64 {
        self.deadline_ms.saturating_sub(now_ms).max(0) as u64
    }

    /// How long the current owner has held it, in ms.
    pub fn held_ms(&self, now_ms: i64) -> u64 {
        now_ms.saturating_sub(self.acquired_at_ms).max(0) as u64
    }

    /// Bytes of memory owned by this lease (for `MEMORY USAGE`).
    pub fn mem_usage(&self) -> usize {
        std::mem::size_of::<Self>() + self.owner.len()
    }
}

/// Encoding version written by [`encode`].
pub const ENCODING_V1: u8 = 1;
const FLAG_SESSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8 + 8 + 8 + 4 + 1 + 8;

/// Why an encoded lease was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than the fixed header.
    Truncated,
    /// A version this build does not know.
    UnknownVersion(u8),
    /// Flag bits this build does not know.
    UnknownFlags(u8),
    /// A token of 0 or above [`MAX_TOKEN`].
    BadToken,
    /// An owner that is empty or longer than [`MAX_OWNER_LEN`].
    BadOwner,
    /// A deadline before the acquisition time.
    BadTimes,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("truncated lease"),
            DecodeError::UnknownVersion(v) => write!(f, "unknown lease encoding version {v}"),
            DecodeError::UnknownFlags(b) => write!(f, "unknown lease flags {b:#x}"),
            DecodeError::BadToken => f.write_str("lease token out of range"),
            DecodeError::BadOwner => f.write_str("lease owner empty or too long"),
            DecodeError::BadTimes => f.write_str("lease deadline before its acquisition"),
        }
    }
}

/// Encodes a lease: version, token, deadline, acquired-at, extensions, flags,
/// client id (all little-endian), then the owner bytes.
pub fn encode(lease: &Lease) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + lease.owner.len());
    out.push(ENCODING_V1);
    out.extend_from_slice(&lease.token.to_le_bytes());
    out.extend_from_slice(&lease.deadline_ms.to_le_bytes());
    out.extend_from_slice(&lease.acquired_at_ms.to_le_bytes());
    out.extend_from_slice(&lease.extensions.to_le_bytes());
    out.push(if lease.session { FLAG_SESSION } else { 0 });
    out.extend_from_slice(&lease.client_id.to_le_bytes());
    out.extend_from_slice(&lease.owner);
    out
}

/// Decodes and validates a lease written by [`encode`].
pub fn decode(bytes: &[u8]) -> Result<Lease, DecodeError> {
    if bytes.len() < HEADER_LEN {
        return Err(match bytes.first() {
            Some(&v) if v != ENCODING_V1 => DecodeError::UnknownVersion(v),
            _ => DecodeError::Truncated,
        });
    }
    if bytes[0] != ENCODING_V1 {
        return Err(DecodeError::UnknownVersion(bytes[0]));
    }
    let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
    let token = u64_at(1);
    let deadline_ms = u64_at(9) as i64;
    let acquired_at_ms = u64_at(17) as i64;
    let extensions = u32::from_le_bytes(bytes[25..29].try_into().expect("4 bytes"));
    let flags = bytes[29];
    let client_id = u64_at(30);
    let owner = &bytes[HEADER_LEN..];
    if flags & !FLAG_SESSION != 0 {
        return Err(DecodeError::UnknownFlags(flags));
    }
    if token == 0 || token > MAX_TOKEN {
        return Err(DecodeError::BadToken);
    }
    if owner.is_empty() || owner.len() > MAX_OWNER_LEN {
        return Err(DecodeError::BadOwner);
    }
    if deadline_ms < acquired_at_ms {
        return Err(DecodeError::BadTimes);
    }
    Ok(Lease {
        owner: owner.into(),
        token,
        deadline_ms,
        acquired_at_ms,
        extensions,
        session: flags & FLAG_SESSION != 0,
        client_id,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn lease(owner: &str, token: u64, acquired: i64, ttl: i64) -> Lease {
        Lease {
            owner: owner.as_bytes().into(),
            token,
            deadline_ms: acquired + ttl,
            acquired_at_ms: acquired,
            extensions: 0,
            session: false,
            client_id: 9,
        }
    }

    #[test]
    fn round_trip() {
        let mut l = lease("host:1:abc", 42, 1000, 500);
        l.session = true;
        l.extensions = 7;
        assert_eq!(decode(&encode(&l)).unwrap(), l);
    }

    #[test]
    fn liveness_matches_redis_expiry() {
        let l = lease("a", 1, 1000, 500);
        assert!(l.is_live(1500));
        assert!(!l.is_live(1501));
        assert_eq!(l.ttl_ms(1400), 100);
        assert_eq!(l.ttl_ms(2000), 0);
        assert_eq!(l.held_ms(1400), 400);
    }

    #[test]
    fn corrupt_payloads_are_refused() {
        let good = encode(&lease("a", 1, 1000, 500));
        assert_eq!(decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(decode(&good[..10]), Err(DecodeError::Truncated));
        let mut v = good.clone();
        v[0] = 9;
        assert_eq!(decode(&v), Err(DecodeError::UnknownVersion(9)));
        let mut v = good.clone();
        v[29] = 0x80;
        assert_eq!(decode(&v), Err(DecodeError::UnknownFlags(0x80)));
        let mut v = good.clone();
        v[1..9].copy_from_slice(&0u64.to_le_bytes());
        assert_eq!(decode(&v), Err(DecodeError::BadToken));
        let mut v = good.clone();
        v[1..9].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(decode(&v), Err(DecodeError::BadToken));
        assert_eq!(decode(&good[..HEADER_LEN]), Err(DecodeError::BadOwner));
        let mut v = good.clone();
        v.extend(std::iter::repeat_n(b'x', MAX_OWNER_LEN));
        assert_eq!(decode(&v), Err(DecodeError::BadOwner));
        let mut v = good;
        v[9..17].copy_from_slice(&0i64.to_le_bytes());
        assert_eq!(decode(&v), Err(DecodeError::BadTimes));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn valid_leases_round_trip(
            owner in proptest::collection::vec(any::<u8>(), 1..=MAX_OWNER_LEN),
            token in 1..=MAX_TOKEN,
            acquired in any::<i64>(),
            ttl in 0i64..1 << 40,
            extensions in any::<u32>(),
            session in any::<bool>(),
            client_id in any::<u64>(),
        ) {
            let l = Lease {
                owner: owner.into(),
                token,
                deadline_ms: acquired.saturating_add(ttl),
                acquired_at_ms: acquired,
                extensions,
                session,
                client_id,
            };
            prop_assert_eq!(decode(&encode(&l)).unwrap(), l);
        }

        #[test]
        fn flipping_any_header_byte_never_panics(pos in 0..HEADER_LEN, val in any::<u8>()) {
            let mut v = encode(&lease("owner", 5, 10, 10));
            v[pos] = val;
            let _ = decode(&v);
        }
    }
}
