//! # lockwarden SDK
//!
//! * [`abi`]: the request/decision types and export names shared by the
//!   policy host (inside the Redis module) and policies. Always available.
//! * [`policy`] (feature `policy`, on by default): write a policy as one pure
//!   function, export it with [`export_policy!`], test it natively with
//!   [`policy::testing`].
//! * `client` (feature `client`): a lock client for Rust applications.
extern crate alloc;

pub mod abi;
pub mod glob;
pub mod text;

#[cfg(feature = "policy")]
pub mod policy;

#[cfg(feature = "client")]
pub mod client;

pub use abi::{Caller, Decision, Holder, Operation, Request};

/// The longest `LOCK.ACQUIRE ... WAIT` timeout the server accepts, in ms
/// (2^40, some 34 years): the server's timers add it to the current time in
/// microseconds, which must not overflow.
pub const MAX_WAIT_MS: u64 = 1 << 40;
pub use glob::glob_match;
#[cfg(feature = "policy")]
pub use policy::Policy;
