//! Shared code of the lockwarden load comparisons (`loadcompare`,
//! `waitcompare`): a throw-away server with the module loaded ([`server`]),
//! `INFO` parsing ([`info`]), load drivers ([`drive`]), small statistics
//! ([`stats`]) and the PASS/MISS report ([`report`]).
//!
//! Every comparison is made side by side on one server in one run: the
//! variants of a scenario alternate round by round, and the report shows
//! medians and the median of the per-round ratios. Absolute numbers from
//! different runs are not comparable on a noisy machine; the ratios are.
//!
//! The criterion benches of the pure core are in `benches/core.rs`.

pub mod cli;
pub mod drive;
pub mod info;
pub mod report;
pub mod server;
pub mod stats;

/// The error type of the harness: anything goes, it ends the run with a
/// message.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Builds an [`Error`] from a message.
pub fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(msg.into().into())
}

/// An owner string of a typical shape (`host:pid:unique-id`, 30 bytes), used
/// by every variant of every scenario so they store the same bytes.
pub const OWNER: &str = "app-7f3a:4242:9c1e5b2d7a6f4e30";

/// The lease every scenario asks for, ms (below the default
/// `lockwarden.max-ttl-ms`).
pub const TTL_MS: u64 = 30_000;
