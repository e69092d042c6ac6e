//! The pure core of lockwarden.
//!
//! Everything that decides something lives here, as plain Rust with the clock
//! passed in: the lease record and its encoding ([`lease`]), the fencing-token
//! clock ([`clock`]), TTL limits ([`limits`]), command parsing ([`parse`]), the
//! rules that turn a command into a reply and an effect ([`rules`]) and every
//! error code ([`error`]). The Redis adaptor in `module/` only moves bytes
//! between Redis and these functions.

pub mod clock;
pub mod error;
pub mod histogram;
pub mod lease;
pub mod limits;
pub mod parse;
pub mod policy;
pub mod rules;
pub mod throttle;

pub use clock::TokenClock;
pub use error::LockError;
pub use lease::Lease;
pub use limits::TtlLimits;
