//! The lease record stored as the value of a lock key, and its versioned
//! binary encoding (used for RDB, `DUMP`/`RESTORE` and slot migration).

use crate::clock::MAX_TOKEN;

/// Longest accepted owner, in bytes. Owners such as `host:pid:uuid` are far
/// shorter; the cap keeps a lock's memory bounded.
pub const MAX_OWNER_LEN: usize = 256;

/// Owners up to this many bytes (a UUID, `host:pid:counter`) are stored
/// inside the lease, which is then a single allocation.
pub const INLINE_OWNER_LEN: usize = 38;

/// An owner's bytes: inline up to [`INLINE_OWNER_LEN`], else on the heap.
/// Built only from a byte string, so the inline length is always in range.
#[derive(Clone)]
pub struct Owner(Repr);

#[derive(Clone)]
enum Repr {
    Inline {
        len: u8,
        bytes: [u8; INLINE_OWNER_LEN],
    },
    Heap(Box<[u8]>),
}

impl Owner {
    /// Bytes allocated apart from the lease.
    pub fn heap_len(&self) -> usize {
        match &self.0 {
            Repr::Inline { .. } => 0,
            Repr::Heap(b) => b.len(),
        }
    }
}

impl From<&[u8]> for Owner {
    fn from(owner: &[u8]) -> Owner {
        Owner(if owner.len() <= INLINE_OWNER_LEN {
            let mut bytes = [0; INLINE_OWNER_LEN];
            bytes[..owner.len()].copy_from_slice(owner);
            Repr::Inline {
                len: owner.len() as u8,
                bytes,
            }
        } else {
            Repr::Heap(owner.into())
        })
    }
}

impl std::ops::Deref for Owner {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Repr::Heap(b) => b,
        }
    }
}

impl PartialEq for Owner {
    fn eq(&self, other: &Owner) -> bool {
        **self == **other
    }
}

impl Eq for Owner {}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self).fmt(f)
    }
}

/// A held lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Who holds it (binary-safe, 1..=[`MAX_OWNER_LEN`] bytes).
    pub owner: Owner,
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
        std::mem::size_of::<Self>() + self.owner.heap_len()
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
    /// A time that is not a number, or beyond ±2^50 ms (35,000 years).
    BadTimes,
    /// An extension count that is not a 32-bit number.
    BadExtensions,
    /// More fields than expected.
    Trailing,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("truncated lease"),
            DecodeError::UnknownVersion(v) => write!(f, "unknown lease encoding version {v}"),
            DecodeError::UnknownFlags(b) => write!(f, "unknown lease flags {b:#x}"),
            DecodeError::BadToken => f.write_str("lease token out of range"),
            DecodeError::BadOwner => f.write_str("lease owner empty or too long"),
            DecodeError::BadTimes => f.write_str("lease time is not a number or out of range"),
            DecodeError::BadExtensions => f.write_str("lease extension count invalid"),
            DecodeError::Trailing => f.write_str("unexpected trailing lease fields"),
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
    validate(Lease {
        owner: owner.into(),
        token,
        deadline_ms,
        acquired_at_ms,
        extensions,
        session: flags & FLAG_SESSION != 0,
        client_id,
    })
}

/// The lease fields of a replicated grant, as one argument:
/// `token:deadline-ms:acquired-at-ms:extensions:session` (decimal; session is
/// 0 or 1). One argument instead of five keeps replication cheap; it stays
/// readable in the AOF.
#[derive(Clone, Copy)]
pub struct GrantFields {
    buf: [u8; 80],
    len: usize,
}

impl GrantFields {
    /// Formats `lease`'s fields (allocation-free, no `fmt` machinery: this
    /// runs for every grant).
    pub fn of(lease: &Lease) -> Self {
        let mut f = GrantFields {
            buf: [0; 80],
            len: 0,
        };
        // At most 20+20+20+10+1 characters and 4 colons: always fits.
        f.push_u64(lease.token);
        f.push_i64(lease.deadline_ms);
        f.push_i64(lease.acquired_at_ms);
        f.push_u64(lease.extensions as u64);
        f.push_u64(lease.session as u64);
        f.len -= 1; // the last colon
        f
    }

    fn push_i64(&mut self, v: i64) {
        if v < 0 {
            self.buf[self.len] = b'-';
            self.len += 1;
        }
        self.push_u64(v.unsigned_abs());
    }

    /// Appends `v` in decimal and a colon.
    fn push_u64(&mut self, v: u64) {
        let mut digits = itoa::Buffer::new();
        let d = digits.format(v).as_bytes();
        self.buf[self.len..self.len + d.len()].copy_from_slice(d);
        self.buf[self.len + d.len()] = b':';
        self.len += d.len() + 1;
    }

    /// The formatted bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Parses [`GrantFields`] back into a lease held by `owner` (client id 0:
/// unknown on this node), with the same validation as [`decode`].
pub fn parse_grant_fields(owner: &[u8], fields: &[u8]) -> Result<Lease, DecodeError> {
    let mut parts = fields.split(|&b| b == b':');
    let mut next = || -> Result<&[u8], DecodeError> { parts.next().ok_or(DecodeError::Truncated) };
    let (token, deadline, acquired, extensions, session) =
        (next()?, next()?, next()?, next()?, next()?);
    if parts.next().is_some() {
        return Err(DecodeError::Trailing);
    }
    let token = crate::parse::parse_u64(token).ok_or(DecodeError::BadToken)?;
    let deadline_ms = crate::parse::parse_i64(deadline).ok_or(DecodeError::BadTimes)?;
    let acquired_at_ms = crate::parse::parse_i64(acquired).ok_or(DecodeError::BadTimes)?;
    let extensions = crate::parse::parse_u64(extensions)
        .and_then(|v| u32::try_from(v).ok())
        .ok_or(DecodeError::BadExtensions)?;
    let session = match session {
        b"0" => false,
        b"1" => true,
        _ => {
            return Err(DecodeError::UnknownFlags(
                session.first().copied().unwrap_or(0),
            ));
        }
    };
    validate(Lease {
        owner: owner.into(),
        token,
        deadline_ms,
        acquired_at_ms,
        extensions,
        session,
        client_id: 0,
    })
}

/// The largest lease time accepted (absolute, ms): 2^50.
const MAX_TIME_MS: u64 = 1 << 50;

/// The checks every lease from outside passes. They accept every lease the
/// rules can produce, or a node would refuse (replication, AOF) or fail to
/// load (RDB) what its primary, or itself, wrote. In particular a deadline
/// may precede the acquisition time: a holder that extends on a node whose
/// clock is behind the one that granted the lock gets `now + ttl`.
fn validate(mut lease: Lease) -> Result<Lease, DecodeError> {
    if lease.token == 0 || lease.token > MAX_TOKEN {
        return Err(DecodeError::BadToken);
    }
    if lease.owner.is_empty() || lease.owner.len() > MAX_OWNER_LEN {
        return Err(DecodeError::BadOwner);
    }
    // Far beyond any real time (now ~2^41 ms, TTLs at most 2^40 ms), and far
    // from overflowing the arithmetic done with them.
    if [lease.deadline_ms, lease.acquired_at_ms]
        .iter()
        .any(|t| t.unsigned_abs() > MAX_TIME_MS)
    {
        return Err(DecodeError::BadTimes);
    }
    // The deadline becomes the key's expiry, which Redis refuses if negative
    // (the key would never expire). Only a forged lease has one: it ended
    // long ago (not refused, or an RDB that holds one would not load).
    lease.deadline_ms = lease.deadline_ms.max(0);
    Ok(lease)
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
    fn owners_up_to_the_inline_length_live_in_the_lease() {
        let bytes: Vec<u8> = (0..=MAX_OWNER_LEN).map(|i| i as u8).collect();
        for len in 0..=MAX_OWNER_LEN {
            let owner = Owner::from(&bytes[..len]);
            assert_eq!(&*owner, &bytes[..len]);
            assert_eq!(
                owner,
                Owner(Repr::Heap(bytes[..len].into())),
                "equal by bytes"
            );
            let heap = if len <= INLINE_OWNER_LEN { 0 } else { len };
            assert_eq!(owner.heap_len(), heap, "{len}");
            let l = Lease {
                owner,
                ..lease("x", 1, 0, 1)
            };
            assert_eq!(l.mem_usage(), std::mem::size_of::<Lease>() + heap);
        }
        // One 80-byte allocation (a jemalloc size class) for a 38-byte owner.
        assert!(std::mem::size_of::<Lease>() <= 80);
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
        // A deadline before the acquisition (extended under a clock behind
        // the granting one) is a lease like any other.
        let mut v = good;
        v[9..17].copy_from_slice(&0i64.to_le_bytes());
        assert_eq!(decode(&v).map(|l| l.deadline_ms), Ok(0));
    }

    #[test]
    fn grant_fields_round_trip_and_validate() {
        let mut l = lease("me", 1 << 58, 1_800_000_000_000, 30_000);
        l.client_id = 0;
        l.extensions = 3;
        l.session = true;
        let f = GrantFields::of(&l);
        assert_eq!(
            f.as_bytes(),
            b"288230376151711744:1800000030000:1800000000000:3:1"
        );
        assert_eq!(parse_grant_fields(b"me", f.as_bytes()), Ok(l));
        let mut neg = lease("me", 1, -5, 7);
        neg.client_id = 0;
        assert_eq!(GrantFields::of(&neg).as_bytes(), b"1:2:-5:0:0");
        assert_eq!(
            parse_grant_fields(b"me", GrantFields::of(&neg).as_bytes()),
            Ok(neg)
        );
        // A negative deadline (a key that would never expire) ended long ago.
        assert_eq!(
            parse_grant_fields(b"me", b"1:-3:-5:0:0").map(|l| l.deadline_ms),
            Ok(0)
        );
        for bad in [
            &b""[..],
            b"1:2:1:0",
            b"1:2:1:0:0:9",
            b"0:2:1:0:0",
            b"9223372036854775808:2:1:0:0",
            b"1:x:1:0:0",
            b"1:2:1:x:0",
            b"1:2:1:0:2",
            b"1:2:1:4294967296:0",
            b"-1:2:1:0:0",
        ] {
            assert!(
                parse_grant_fields(b"me", bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_grant_fields(b"", b"1:2:1:0:0").is_err());
        let late = parse_grant_fields(b"me", b"9223372036854775807:1:2:0:0").unwrap();
        assert_eq!(
            (late.token, late.deadline_ms, late.acquired_at_ms),
            (MAX_TOKEN, 1, 2)
        );
    }

    proptest! {
        #[test]
        fn grant_fields_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse_grant_fields(b"o", &bytes);
        }

        #[test]
        fn grant_fields_round_trip(
            token in 1..=MAX_TOKEN,
            acquired in -(1i64 << 49)..1 << 49,
            ttl in 0i64..1 << 40,
            extensions in any::<u32>(),
            session in any::<bool>(),
        ) {
            let l = Lease {
                owner: b"o"[..].into(),
                token,
                deadline_ms: (acquired + ttl).max(0),
                acquired_at_ms: acquired,
                extensions,
                session,
                client_id: 0,
            };
            prop_assert_eq!(parse_grant_fields(b"o", GrantFields::of(&l).as_bytes()), Ok(l));
        }

        #[test]
        fn times_beyond_the_range_are_refused(
            t in prop_oneof![(1i64 << 50) + 1..i64::MAX, i64::MIN..-(1i64 << 50)],
            which in any::<bool>(),
        ) {
            let mut l = lease("o", 1, 0, 10);
            if which { l.deadline_ms = t } else { l.acquired_at_ms = t }
            prop_assert_eq!(decode(&encode(&l)), Err(DecodeError::BadTimes));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn valid_leases_round_trip(
            owner in proptest::collection::vec(any::<u8>(), 1..=MAX_OWNER_LEN),
            token in 1..=MAX_TOKEN,
            acquired in -(1i64 << 49)..1 << 49,
            ttl in 0i64..1 << 40,
            extensions in any::<u32>(),
            session in any::<bool>(),
            client_id in any::<u64>(),
        ) {
            let l = Lease {
                owner: owner[..].into(),
                token,
                deadline_ms: acquired.saturating_add(ttl).max(0),
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
