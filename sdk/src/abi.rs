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

impl Request<'_> {
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
        buf.clear();
        buf.reserve(self.strings_len() + REQUEST_OVERHEAD_MAX);
        // The variant index of a unit enum variant, a varint below 128.
        buf.push(match self.op {
            Operation::Acquire => 0,
            Operation::Extend => 1,
            Operation::Release => 2,
        });
        put_bytes(buf, self.key);
        put_bytes(buf, self.owner);
        put_varint(buf, self.ttl_ms);
        put_varint(buf, self.now_ms);
        match self.holder {
            None => buf.push(0),
            Some(h) => {
                buf.push(1);
                put_bytes(buf, h.owner);
                put_varint(buf, h.token);
                put_varint(buf, h.held_ms);
                put_varint(buf, u64::from(h.extensions));
            }
        }
        put_varint(buf, self.caller.client_id);
        put_bytes(buf, self.caller.user);
        put_varint(buf, u64::from(self.waiters));
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
