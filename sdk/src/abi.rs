//! The host↔guest ABI for lockwarden policies, defined once and used by both
//! the policy host inside the Redis module and the guest SDK.
//!
//! See `sdk/ABI.md` for the full specification. In short: a policy is a core
//! WebAssembly module without imports that exports a linear memory and the
//! functions named in [`exports`]. Requests and decisions cross the boundary
//! as [postcard](https://docs.rs/postcard) encodings of the types below.

use alloc::string::String;
use serde::{Deserialize, Serialize};

/// The ABI version this crate speaks. A guest exports it from
/// [`exports::ABI_VERSION`]; the host refuses any version it does not know.
pub const ABI_VERSION: u32 = 1;

/// Names of the functions (and memory) a policy module exports.
pub mod exports {
    /// `() -> i32`: the ABI version the guest was built against.
    pub const ABI_VERSION: &str = "lockwarden_abi_version";
    /// `(len: i32) -> i32`: a pointer to a guest-owned input buffer of at
    /// least `len` bytes. The host writes settings or a request there. The
    /// pointer stays valid until the next call of this function.
    pub const BUFFER: &str = "lockwarden_buffer";
    /// `(len: i32) -> i64`: configure the policy from the `len` settings bytes
    /// in the input buffer. Returns a packed [`super::Output`] locating a
    /// postcard-encoded [`super::Configured`].
    pub const CONFIGURE: &str = "lockwarden_configure";
    /// `(len: i32) -> i64`: evaluate the postcard-encoded [`super::Request`]
    /// of `len` bytes in the input buffer. Returns a packed
    /// [`super::Output`] locating a postcard-encoded [`super::Decision`].
    pub const EVALUATE: &str = "lockwarden_evaluate";
    /// The guest's linear memory.
    pub const MEMORY: &str = "memory";
    /// Optional, `() -> i32`: the [`fields`](super::fields) of the request
    /// the policy reads. Absent: all of them.
    pub const REQUEST_FIELDS: &str = "lockwarden_request_fields";
}

/// Bits of [`exports::REQUEST_FIELDS`]: optional request fields that cost
/// the host something to fill. A field the policy does not declare may be
/// left empty; bits this host does not know are ignored.
pub mod fields {
    /// `caller.user`, the connection's ACL user name (a lookup per command).
    pub const CALLER_USER: u32 = 1;
}

/// Which lock command is being evaluated.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `LOCK.ACQUIRE` (including a same-owner retry and a blocking acquire).
    Acquire,
    /// `LOCK.EXTEND`.
    Extend,
    /// `LOCK.RELEASE`.
    Release,
}

impl Operation {
    /// The lower-case name used in documentation and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Acquire => "acquire",
            Operation::Extend => "extend",
            Operation::Release => "release",
        }
    }
}

/// Serializes a byte string in one piece. Serde's default for `&[u8]` is a
/// sequence of `u8`s, one call per byte; postcard writes both forms the same
/// way (a varint length, then the bytes), so this changes the cost of
/// encoding, not the wire format.
fn bytes<S: serde::Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(b)
}

/// The current holder of the lock, if any, as the server sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder<'a> {
    /// The holder's owner string (binary-safe).
    #[serde(borrow, serialize_with = "bytes")]
    pub owner: &'a [u8],
    /// The fencing token of the current grant.
    pub token: u64,
    /// How long the lock has been held by this owner, in milliseconds.
    pub held_ms: u64,
    /// How many times the holder has extended the lease.
    pub extensions: u32,
}

/// Who sent the command.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller<'a> {
    /// The id of the client running the command (inside a Lua script or
    /// function: the script engine's client; modules are not told which
    /// connection called the script).
    pub client_id: u64,
    /// The ACL user name of the connection (`default` without ACLs). Empty
    /// when the caller is unknown (inside a Lua script or function) — a
    /// policy deciding by user must not treat that as a permission — and for
    /// policies that declare they do not read it
    /// ([`Policy::READS_CALLER_USER`](crate::Policy::READS_CALLER_USER)).
    #[serde(borrow, serialize_with = "bytes")]
    pub user: &'a [u8],
}

/// One lock command, as a policy sees it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request<'a> {
    /// The command.
    pub op: Operation,
    /// The lock's key (binary-safe).
    #[serde(borrow, serialize_with = "bytes")]
    pub key: &'a [u8],
    /// The owner named in the command (binary-safe).
    #[serde(borrow, serialize_with = "bytes")]
    pub owner: &'a [u8],
    /// The requested TTL in milliseconds (0 for a release).
    pub ttl_ms: u64,
    /// The server's clock, unix milliseconds.
    pub now_ms: u64,
    /// The current holder, or `None` when the lock is free.
    #[serde(borrow)]
    pub holder: Option<Holder<'a>>,
    /// The connection that sent the command.
    #[serde(borrow)]
    pub caller: Caller<'a>,
    /// How many clients are blocked waiting for this lock.
    pub waiters: u32,
}

impl<'a> Request<'a> {
    /// The key as UTF-8, if it is valid UTF-8.
    pub fn key_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.key).ok()
    }

    /// The owner as UTF-8, if it is valid UTF-8.
    pub fn owner_str(&self) -> Option<&'a str> {
        core::str::from_utf8(self.owner).ok()
    }

    /// The current holder, if it is the owner named in this request (a
    /// retry, an extend or a release by the holder).
    pub fn caller_holds(&self) -> Option<Holder<'a>> {
        self.holder.filter(|h| h.owner == self.owner)
    }
}

/// A policy's answer to a [`Request`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let the command proceed unchanged.
    Allow,
    /// Refuse the command; the client gets `DENIED <policy>: <reason>`.
    Deny(String),
    /// Let the command proceed with a TTL of at most this many milliseconds.
    /// Only meaningful for acquire and extend; ignored for release.
    Clamp(u64),
}

/// The answer to `lockwarden_configure`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Configured {
    /// The settings were accepted.
    Ok,
    /// The settings were rejected; the message is shown to the operator.
    Rejected(String),
}

/// A `(pointer, length)` pair packed into the `i64` returned by
/// `lockwarden_configure` and `lockwarden_evaluate`: the pointer in the high
/// 32 bits, the length in the low 32 bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Output {
    /// Offset of the encoded output in guest memory.
    pub ptr: u32,
    /// Length of the encoded output in bytes.
    pub len: u32,
}

impl Output {
    /// Packs the pair into the ABI's `i64` return value.
    pub fn pack(self) -> i64 {
        (((self.ptr as u64) << 32) | self.len as u64) as i64
    }

    /// Unpacks an ABI return value.
    pub fn unpack(raw: i64) -> Self {
        let raw = raw as u64;
        Output {
            ptr: (raw >> 32) as u32,
            len: raw as u32,
        }
    }
}

/// The most bytes a request's encoding adds to its byte strings: two
/// one-byte tags (operation, holder), four string lengths and five `u64`s of
/// at most ten varint bytes, two `u32`s of at most five.
pub const REQUEST_OVERHEAD_MAX: usize = 2 + 4 * 10 + 5 * 10 + 2 * 5;

impl<'a> Request<'a> {
    /// The total length of the request's byte strings (key, owner, holder's
    /// owner, user): its encoding is at most [`REQUEST_OVERHEAD_MAX`] bytes
    /// longer.
    pub fn strings_len(&self) -> usize {
        self.key.len()
            + self.owner.len()
            + self.caller.user.len()
            + self.holder.map_or(0, |h| h.owner.len())
    }

    /// Replaces the contents of `buf` with the request's postcard encoding:
    /// the same bytes as [`encode`], written by hand because the host encodes
    /// a request on every lock command a policy sees, and serde's per-field
    /// calls and per-byte capacity checks cost twice as much (a property test
    /// holds this equal to postcard, which remains the definition).
    pub fn encode_into(&self, buf: &mut alloc::vec::Vec<u8>) {
        // Destructured without `..`: a new field does not compile until it
        // is written here (and read in `decode`).
        let Request {
            op,
            key,
            owner,
            ttl_ms,
            now_ms,
            holder,
            caller: Caller { client_id, user },
            waiters,
        } = *self;
        buf.clear();
        buf.reserve(self.strings_len() + REQUEST_OVERHEAD_MAX);
        // The variant index of a unit enum variant, a varint below 128.
        buf.push(match op {
            Operation::Acquire => 0,
            Operation::Extend => 1,
            Operation::Release => 2,
        });
        put_bytes(buf, key);
        put_bytes(buf, owner);
        put_varint(buf, ttl_ms);
        put_varint(buf, now_ms);
        match holder {
            None => buf.push(0),
            Some(Holder {
                owner,
                token,
                held_ms,
                extensions,
            }) => {
                buf.push(1);
                put_bytes(buf, owner);
                put_varint(buf, token);
                put_varint(buf, held_ms);
                put_varint(buf, u64::from(extensions));
            }
        }
        put_varint(buf, client_id);
        put_bytes(buf, user);
        put_varint(buf, u64::from(waiters));
    }

    /// Decodes a request, borrowing its byte strings from `bytes`, by hand
    /// because a policy decodes a request on every lock command it sees.
    /// Meant to accept exactly what [`decode`] accepts and give the same
    /// request: property tests compare the two on generated inputs (each
    /// field canonical, padded, too long, with an out-of-range last byte or
    /// a wrong length) and on damaged, truncated and random bytes. Byte
    /// string lengths are `usize`s, 32-bit in a Wasm guest, as in postcard.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, postcard::Error> {
        let mut r = Reader { bytes, pos: 0 };
        let op = match r.varint(U32)? {
            0 => Operation::Acquire,
            1 => Operation::Extend,
            2 => Operation::Release,
            _ => return Err(postcard::Error::DeserializeBadEnum),
        };
        let key = r.bytes()?;
        let owner = r.bytes()?;
        let ttl_ms = r.varint(U64)?;
        let now_ms = r.varint(U64)?;
        let holder = match r.byte()? {
            0 => None,
            1 => Some(Holder {
                owner: r.bytes()?,
                token: r.varint(U64)?,
                held_ms: r.varint(U64)?,
                extensions: r.varint(U32)? as u32,
            }),
            _ => return Err(postcard::Error::DeserializeBadOption),
        };
        let caller = Caller {
            client_id: r.varint(U64)?,
            user: r.bytes()?,
        };
        let waiters = r.varint(U32)? as u32;
        if r.pos != bytes.len() {
            return Err(postcard::Error::DeserializeBadEncoding);
        }
        Ok(Request {
            op,
            key,
            owner,
            ttl_ms,
            now_ms,
            holder,
            caller,
            waiters,
        })
    }
}

impl Decision {
    /// Replaces the contents of `buf` with the decision's postcard encoding:
    /// the same bytes as [`encode`], written by hand (a policy encodes one
    /// decision per lock command).
    pub fn encode_into(&self, buf: &mut alloc::vec::Vec<u8>) {
        buf.clear();
        match self {
            Decision::Allow => buf.push(0),
            Decision::Deny(reason) => {
                buf.push(1);
                put_bytes(buf, reason.as_bytes());
            }
            Decision::Clamp(ms) => {
                buf.push(2);
                put_varint(buf, *ms);
            }
        }
    }
}

/// The limits postcard puts on a varint of an integer type: its most bytes,
/// and the largest value of its last possible byte.
#[derive(Clone, Copy)]
struct VarintLimits {
    max_bytes: usize,
    last_max: u8,
}

impl VarintLimits {
    const fn of(bits: u32) -> Self {
        VarintLimits {
            max_bytes: bits.div_ceil(7) as usize,
            // As postcard's `max_of_last_byte`.
            last_max: (1u8 << (bits % 7)) - 1,
        }
    }
}

const U32: VarintLimits = VarintLimits::of(32);
const U64: VarintLimits = VarintLimits::of(64);
/// Byte string lengths are `usize`s: 32 bits in a Wasm guest.
const USIZE: VarintLimits = VarintLimits::of(usize::BITS);

/// Reads postcard values from `bytes`, starting at `pos`.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    #[inline(always)]
    fn byte(&mut self) -> Result<u8, postcard::Error> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        self.pos += 1;
        Ok(b)
    }

    #[inline(always)]
    fn varint(&mut self, limits: VarintLimits) -> Result<u64, postcard::Error> {
        let mut out = 0u64;
        for i in 0..limits.max_bytes {
            let b = self.byte()?;
            out |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if i == limits.max_bytes - 1 && b > limits.last_max {
                    return Err(postcard::Error::DeserializeBadVarint);
                }
                return Ok(out);
            }
        }
        Err(postcard::Error::DeserializeBadVarint)
    }

    #[inline(always)]
    fn bytes(&mut self) -> Result<&'a [u8], postcard::Error> {
        let len = self.varint(USIZE)? as usize;
        let end = self
            .pos
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(postcard::Error::DeserializeUnexpectedEnd)?;
        let b = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(b)
    }
}

/// Appends postcard's varint: seven bits per byte, least significant first,
/// the high bit set on every byte but the last.
fn put_varint(buf: &mut alloc::vec::Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push(v as u8 | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends postcard's byte string: the length as a varint, then the bytes.
fn put_bytes(buf: &mut alloc::vec::Vec<u8>, b: &[u8]) {
    put_varint(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

/// Encodes any ABI value with postcard.
pub fn encode<T: Serialize>(value: &T) -> Result<alloc::vec::Vec<u8>, postcard::Error> {
    postcard::to_allocvec(value)
}

/// Encodes an ABI value into an existing buffer, reusing its allocation.
pub fn encode_into<T: Serialize>(
    value: &T,
    buf: &mut alloc::vec::Vec<u8>,
) -> Result<(), postcard::Error> {
    buf.clear();
    let taken = core::mem::take(buf);
    *buf = postcard::to_extend(value, taken)?;
    Ok(())
}

/// Decodes an ABI value, refusing trailing bytes.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, postcard::Error> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(postcard::Error::DeserializeBadEncoding)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn request() -> Request<'static> {
        Request {
            op: Operation::Extend,
            key: b"orders:\x00\xff",
            owner: b"host:12:abc",
            ttl_ms: 30_000,
            now_ms: 1_800_000_000_000,
            holder: Some(Holder {
                owner: b"host:12:abc",
                token: 1 << 60,
                held_ms: 12,
                extensions: 3,
            }),
            caller: Caller {
                client_id: 7,
                user: b"default",
            },
            waiters: 2,
        }
    }

    #[test]
    fn request_round_trips() {
        let bytes = encode(&request()).unwrap();
        let back: Request = decode(&bytes).unwrap();
        assert_eq!(back, request());
    }

    #[test]
    fn decisions_round_trip() {
        for d in [
            Decision::Allow,
            Decision::Deny("no".into()),
            Decision::Clamp(5),
        ] {
            let bytes = encode(&d).unwrap();
            assert_eq!(decode::<Decision>(&bytes).unwrap(), d);
        }
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut bytes = encode(&Decision::Allow).unwrap();
        bytes.push(0);
        assert!(decode::<Decision>(&bytes).is_err());
    }

    #[test]
    fn truncated_requests_are_refused() {
        let bytes = encode(&request()).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode::<Request>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn byte_strings_keep_the_wire_format_of_a_u8_sequence() {
        #[derive(Serialize)]
        struct AsBytes<'a>(#[serde(serialize_with = "bytes")] &'a [u8]);
        #[derive(Serialize)]
        struct AsSeq<'a>(&'a [u8]);
        // Lengths around the one- and two-byte varint boundary.
        for len in [0usize, 1, 127, 128, 300] {
            let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let fast = encode(&AsBytes(&data)).unwrap();
            assert_eq!(fast, encode(&AsSeq(&data)).unwrap(), "length {len}");
            assert_eq!(decode::<&[u8]>(&fast).unwrap(), &data[..]);
        }
    }

    #[test]
    fn encode_into_reuses_the_buffer() {
        let mut buf = Vec::with_capacity(256);
        encode_into(&request(), &mut buf).unwrap();
        let first = buf.clone();
        encode_into(&request(), &mut buf).unwrap();
        assert_eq!(buf, first);
        assert!(buf.capacity() >= 256);
    }

    #[test]
    fn the_hand_written_request_encoding_is_postcards_at_varint_edges() {
        let mut buf = b"left over".to_vec();
        for n in [0u64, 127, 128, 16_383, 16_384, 1 << 35, u64::MAX] {
            let long = alloc::vec![0xa5; (n % 400) as usize];
            let r = Request {
                ttl_ms: n,
                now_ms: n,
                holder: Some(Holder {
                    owner: &long,
                    token: n,
                    held_ms: n,
                    extensions: n as u32,
                }),
                caller: Caller {
                    client_id: n,
                    user: &long,
                },
                waiters: u32::MAX,
                ..request()
            };
            r.encode_into(&mut buf);
            assert_eq!(buf, encode(&r).unwrap(), "at {n}");
            assert!(buf.len() <= r.strings_len() + REQUEST_OVERHEAD_MAX);
        }
    }

    proptest::proptest! {
        #[test]
        fn the_hand_written_request_encoding_is_postcards(
            op in 0..3u8,
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            owner in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            user in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            ttl_ms: u64,
            now_ms: u64,
            holder: Option<(u64, u64, u32, bool)>,
            client_id: u64,
            waiters: u32,
        ) {
            let r = Request {
                op: [Operation::Acquire, Operation::Extend, Operation::Release][op as usize],
                key: &key,
                owner: &owner,
                ttl_ms,
                now_ms,
                holder: holder.map(|(token, held_ms, extensions, same)| Holder {
                    owner: if same { &owner } else { &key },
                    token,
                    held_ms,
                    extensions,
                }),
                caller: Caller { client_id, user: &user },
                waiters,
            };
            let mut buf = Vec::new();
            r.encode_into(&mut buf);
            proptest::prop_assert_eq!(&buf, &encode(&r).unwrap());
            proptest::prop_assert!(buf.len() <= r.strings_len() + REQUEST_OVERHEAD_MAX);
            proptest::prop_assert_eq!(decode::<Request>(&buf).unwrap(), r);
            proptest::prop_assert_eq!(Request::decode(&buf), Ok(r));
        }
    }

    /// What postcard makes of `bytes` as a request, and what the hand-written
    /// reader makes of them, agree: both refuse them, or both give the same
    /// request.
    fn decoders_agree(bytes: &[u8]) -> Result<(), String> {
        let reference = decode::<Request>(bytes).ok();
        let fast = Request::decode(bytes).ok();
        if reference == fast {
            Ok(())
        } else {
            Err(alloc::format!(
                "{bytes:02x?}: postcard {reference:?}, by hand {fast:?}"
            ))
        }
    }

    #[test]
    fn the_request_reader_follows_postcards_varint_limits() {
        let mut valid = Vec::new();
        request().encode_into(&mut valid);
        // `ttl_ms` starts after the tag and two byte strings.
        let ttl_at = 1 + 1 + request().key.len() + 1 + request().owner.len();
        let rest = &valid[ttl_at + 3..]; // ttl 30000 takes three bytes
        let with_ttl = |ttl: &[u8]| [&valid[..ttl_at], ttl, rest].concat();
        let max_u64 = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let over_u64 = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        let too_long = [
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
        ];
        let padded_zero = [0x80, 0x00];
        for (ttl, ok) in [
            (&max_u64[..], true),
            (&over_u64[..], false),
            (&too_long[..], false),
            (&padded_zero[..], true),
        ] {
            let bytes = with_ttl(ttl);
            decoders_agree(&bytes).unwrap();
            assert_eq!(Request::decode(&bytes).is_ok(), ok, "{ttl:02x?}");
        }
        assert_eq!(
            Request::decode(&with_ttl(&max_u64)).unwrap().ttl_ms,
            u64::MAX
        );
        // `waiters` is the last field, a u32: at most five bytes, the fifth <= 0x0f.
        let waiters_at = valid.len() - 1;
        for (last, ok) in [(0x0f, true), (0x10, false)] {
            let bytes = [&valid[..waiters_at], &[0xff, 0xff, 0xff, 0xff, last]].concat();
            decoders_agree(&bytes).unwrap();
            assert_eq!(Request::decode(&bytes).is_ok(), ok);
        }
        // Bad operation and option tags, trailing and missing bytes.
        let mut free = Vec::new();
        Request {
            holder: None,
            ..request()
        }
        .encode_into(&mut free);
        // Before the tag: client id 7, the user, waiters 2 (one byte each
        // but the user).
        let tag_at = free.len() - 1 - (1 + request().caller.user.len()) - 1 - 1;
        assert_eq!(free[tag_at], 0);
        let mut bad_tag = free.clone();
        bad_tag[tag_at] = 2;
        for bytes in [
            bad_tag,
            [&[3u8][..], &valid[1..]].concat(),
            [&valid[..], &[0]].concat(),
            valid[..valid.len() - 1].to_vec(),
        ] {
            decoders_agree(&bytes).unwrap();
            assert!(Request::decode(&bytes).is_err());
        }
    }

    #[test]
    fn the_decision_writer_is_postcards() {
        let mut buf = b"left over".to_vec();
        for d in [
            Decision::Allow,
            Decision::Deny(String::new()),
            Decision::Deny("x".repeat(200)),
            Decision::Clamp(0),
            Decision::Clamp(30_000),
            Decision::Clamp(u64::MAX),
        ] {
            d.encode_into(&mut buf);
            assert_eq!(buf, encode(&d).unwrap(), "{d:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_request_reader_agrees_with_postcard_on_any_bytes(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            decoders_agree(&bytes).map_err(proptest::test_runner::TestCaseError::fail)?;
        }

        #[test]
        fn the_request_reader_agrees_with_postcard_on_damaged_requests(
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..20),
            ttl_ms: u64,
            holder: bool,
            at: proptest::sample::Index,
            byte in proptest::prop_oneof![0u8..4, proptest::num::u8::ANY],
            cut: proptest::sample::Index,
        ) {
            let r = Request {
                key: &key,
                ttl_ms,
                holder: if holder { request().holder } else { None },
                ..request()
            };
            let mut bytes = Vec::new();
            r.encode_into(&mut bytes);
            proptest::prop_assert_eq!(Request::decode(&bytes), Ok(r));
            let mut damaged = bytes.clone();
            damaged[at.index(bytes.len())] = byte;
            decoders_agree(&damaged).map_err(proptest::test_runner::TestCaseError::fail)?;
            decoders_agree(&bytes[..cut.index(bytes.len())])
                .map_err(proptest::test_runner::TestCaseError::fail)?;
        }
    }

    /// How a generated input writes one varint.
    #[derive(Clone, Copy, Debug)]
    enum Form {
        /// As postcard writes it.
        Canonical,
        /// With this many extra `0x80`… continuation groups before a final
        /// `0x00`: still valid up to the type's most bytes, too long beyond.
        Padded(usize),
        /// The type's most bytes, `0xff` then this last byte: valid only up
        /// to the type's limit for it.
        Last(u8),
    }

    fn put_form(out: &mut Vec<u8>, v: u64, form: Form, limits: VarintLimits) {
        match form {
            Form::Canonical => put_varint(out, v),
            Form::Padded(extra) => {
                let mut groups = Vec::new();
                let mut rest = v;
                loop {
                    groups.push((rest & 0x7f) as u8);
                    rest >>= 7;
                    if rest == 0 {
                        break;
                    }
                }
                groups.resize(groups.len() + extra, 0);
                let last = groups.len() - 1;
                out.extend(
                    groups
                        .iter()
                        .enumerate()
                        .map(|(i, &g)| if i < last { g | 0x80 } else { g }),
                );
            }
            Form::Last(b) => {
                out.resize(out.len() + limits.max_bytes - 1, 0xff);
                out.push(b & 0x7f);
            }
        }
    }

    // Each field is malformed with a probability of roughly one in ten, so
    // that most inputs get deep into the request before a reader stops.

    fn form() -> impl proptest::strategy::Strategy<Value = Form> {
        use proptest::strategy::{Just, Strategy};
        proptest::prop_oneof![
            16 => Just(Form::Canonical),
            1 => (1usize..10).prop_map(Form::Padded),
            1 => (0u8..0x80).prop_map(Form::Last),
        ]
    }

    /// A `u64` field: a value and how it is written.
    fn number() -> impl proptest::strategy::Strategy<Value = (u64, Form)> {
        (
            proptest::prop_oneof![0u64..300, proptest::num::u64::ANY],
            form(),
        )
    }

    /// A `u32` field (or the operation's index): a value, sometimes just
    /// out of range, and how it is written.
    fn number32() -> impl proptest::strategy::Strategy<Value = (u64, Form)> {
        use proptest::strategy::Just;
        let max = u64::from(u32::MAX);
        (
            proptest::prop_oneof![
                6 => 0u64..8,
                2 => 0..=max,
                1 => Just(max),
                1 => max + 1..=u64::MAX,
            ],
            form(),
        )
    }

    /// A byte string field: the bytes, how its length is written, and how
    /// far the written length is off (-1, 0 or +1).
    fn string() -> impl proptest::strategy::Strategy<Value = (Vec<u8>, Form, i8)> {
        use proptest::strategy::Just;
        (
            proptest::collection::vec(proptest::num::u8::ANY, 0..12),
            form(),
            proptest::prop_oneof![30 => Just(0i8), 1 => Just(-1i8), 1 => Just(1i8)],
        )
    }

    fn put_string(out: &mut Vec<u8>, (bytes, form, off): &(Vec<u8>, Form, i8)) {
        let len = (bytes.len() as u64).saturating_add_signed(i64::from(*off));
        put_form(out, len, *form, USIZE);
        out.extend_from_slice(bytes);
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4096))]

        /// Every field written canonically or not, valid or not: the readers
        /// agree on each input.
        #[test]
        fn the_request_reader_agrees_with_postcard_field_by_field(
            op in number32(),
            key in string(),
            owner in string(),
            times in (number(), number()),
            tag in proptest::prop_oneof![9 => 0u8..2, 1 => proptest::num::u8::ANY],
            holder in (string(), number(), number(), number32()),
            caller in (number(), string()),
            waiters in number32(),
            trailing in proptest::prop_oneof![
                9 => proptest::strategy::Just(Vec::new()),
                1 => proptest::collection::vec(proptest::num::u8::ANY, 1..3),
            ],
        ) {
            let mut b = Vec::new();
            put_form(&mut b, op.0, op.1, U32);
            put_string(&mut b, &key);
            put_string(&mut b, &owner);
            put_form(&mut b, times.0.0, times.0.1, U64);
            put_form(&mut b, times.1.0, times.1.1, U64);
            b.push(tag);
            if tag == 1 {
                put_string(&mut b, &holder.0);
                put_form(&mut b, holder.1.0, holder.1.1, U64);
                put_form(&mut b, holder.2.0, holder.2.1, U64);
                put_form(&mut b, holder.3.0, holder.3.1, U32);
            }
            put_form(&mut b, caller.0.0, caller.0.1, U64);
            put_string(&mut b, &caller.1);
            put_form(&mut b, waiters.0, waiters.1, U32);
            b.extend_from_slice(&trailing);
            decoders_agree(&b).map_err(proptest::test_runner::TestCaseError::fail)?;
        }
    }

    #[test]
    fn output_packs_and_unpacks() {
        let o = Output {
            ptr: 0xdead_beef,
            len: 0x1234_5678,
        };
        assert_eq!(Output::unpack(o.pack()), o);
    }
}
