//! Test harness for lockwarden's integration tests.
//!
//! Every test runs against real `redis-server` / `valkey-server` processes
//! started on free loopback ports, each in its own temporary directory. The
//! pieces:
//!
//! * [`Flavor`] and [`for_each_flavor!`]: write a test once, run it as
//!   `name::redis` and `name::valkey`.
//! * [`Server`] / [`ServerBuilder`]: one server, with the lockwarden module
//!   loaded unless [`ServerBuilder::without_module`] is called. Kill -9,
//!   clean restarts, SIGSTOP/SIGCONT, log access, polling helpers.
//! * [`ReplicaPair`]: a primary and a synced replica.
//! * [`Cluster`]: an N-primary cluster, a cluster-aware client and slot
//!   migration.
//! * [`SentinelSet`]: a primary, two replicas and three sentinels.
//! * [`LwClient`] / [`spawn_client`]: the `lw-client` binary, a separate OS
//!   process holding one connection.
//! * [`FencedStore`], [`Verdict`], [`Row`]: the fault suite's oracle (a fenced
//!   storage) and its report lines (`tests/FAULTS.md`).
//! * [`locks`]: commands and reply parsing shared by the tests (grants,
//!   `LOCK.INFO`, `INFO lockwarden`, `LOCK.POLICY LIST`, AOF rewrites, DUMP
//!   payloads).
//!
//! A module test is one line of setup:
//!
//! ```no_run
//! use lockwarden_tests::*;
//!
//! for_each_flavor! {
//!     fn acquire_release(flavor: Flavor) {
//!         let server = Server::start(flavor);
//!         assert_eq!(server.cmd_text(&["LOCK.ACQUIRE", "k", "me", "1000"]), "1");
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! Environment: `LOCKWARDEN_MODULE` (the module `.so`, default
//! `<workspace>/target/release/liblockwarden.so`), `LOCKWARDEN_POLICIES` (the
//! compiled example policies, default `<workspace>/target/policies`),
//! `LOCKWARDEN_KEEP_DIRS=1` (keep every server directory, not only those of
//! failed tests), `LW_CLIENT_BIN` (path of the `lw-client` binary, normally
//! found next to the test executable).

mod client;
mod cluster;
pub mod locks;
mod oracle;
mod replication;
mod sentinel;
mod server;
mod spawn;
mod util;

pub use client::{ClientProcess, LwClient, spawn_client, spawn_client_at};
pub use cluster::Cluster;
pub use oracle::{FAULT_TIMEOUT, FencedStore, REPORT_HEADER, Row, Verdict, Write as FencedWrite};
pub use replication::{ReplicaPair, wait_for_offset, wait_for_sync};
pub use sentinel::SentinelSet;
pub use server::{Server, ServerBuilder, Shutdown};
pub use util::{free_port, now_ms, parse_info, poll, render, wait_until};

/// The `redis` crate the harness is built on, re-exported so tests use the
/// same version.
pub use redis;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Default timeout for anything the harness waits for (startup, sync,
/// cluster convergence). Generous on purpose: CI machines have 2 cores and
/// run two tests at a time.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Which server implementation a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `redis-server` (7.0 on CI).
    Redis,
    /// `valkey-server` (8.0 on CI).
    Valkey,
}

impl Flavor {
    /// Both flavors, Redis first.
    pub const fn all() -> [Flavor; 2] {
        [Flavor::Redis, Flavor::Valkey]
    }

    /// Lower-case name: `redis` or `valkey` (also the test-name suffix used
    /// by [`for_each_flavor!`]).
    pub const fn name(self) -> &'static str {
        match self {
            Flavor::Redis => "redis",
            Flavor::Valkey => "valkey",
        }
    }

    /// The server binary, looked up on `PATH`.
    pub const fn server_bin(self) -> &'static str {
        match self {
            Flavor::Redis => "redis-server",
            Flavor::Valkey => "valkey-server",
        }
    }

    /// The command-line client binary (used for `--cluster create`).
    pub const fn cli_bin(self) -> &'static str {
        match self {
            Flavor::Redis => "redis-cli",
            Flavor::Valkey => "valkey-cli",
        }
    }

    /// The benchmark binary.
    pub const fn benchmark_bin(self) -> &'static str {
        match self {
            Flavor::Redis => "redis-benchmark",
            Flavor::Valkey => "valkey-benchmark",
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The lockwarden module: `$LOCKWARDEN_MODULE`, or
/// `<workspace>/target/release/liblockwarden.so`.
pub fn module_path() -> PathBuf {
    match std::env::var_os("LOCKWARDEN_MODULE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/release/liblockwarden.so"),
    }
}

/// The directory of compiled example policies: `$LOCKWARDEN_POLICIES`, or
/// `<workspace>/target/policies`.
pub fn policies_dir() -> PathBuf {
    match std::env::var_os("LOCKWARDEN_POLICIES") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join("target/policies"),
    }
}

/// The compiled example policy `name` (`<policies_dir>/<name>.wasm`), e.g.
/// `policy_path("max-ttl")`. Does not check that it exists.
pub fn policy_path(name: &str) -> PathBuf {
    policies_dir().join(format!("{name}.wasm"))
}

/// Defines a test once for every [`Flavor`].
///
/// Each `fn name(flavor: Flavor) { .. }` becomes a module `name` holding the
/// body and two `#[test]`s, `name::redis` and `name::valkey`, so
/// `cargo test acquire_release` runs both and `cargo test ::valkey` runs
/// only Valkey. Attributes (`#[should_panic]`, doc comments) are
/// copied to both tests; a return type (e.g. `-> redis::RedisResult<()>`) is
/// allowed. The body sees the enclosing module's items through
/// `use super::*`, so invoke it at module level (not inside a function).
///
/// ```no_run
/// use lockwarden_tests::*;
///
/// for_each_flavor! {
///     fn ping(flavor: Flavor) {
///         let s = Server::builder(flavor).without_module().start();
///         assert_eq!(s.cmd_text(&["PING"]), "PONG");
///     }
///
///     #[should_panic(expected = "NOPERM")]
///     fn refused(flavor: Flavor) {
///         panic!("NOPERM {flavor}");
///     }
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! for_each_flavor {
    ($(
        $(#[$meta:meta])*
        fn $name:ident ($flavor:ident : $ty:ty) $(-> $ret:ty)? $body:block
    )*) => {$(
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($flavor: $ty) $(-> $ret)? $body

            #[test]
            $(#[$meta])*
            fn redis() $(-> $ret)? {
                body($crate::Flavor::Redis)
            }

            #[test]
            $(#[$meta])*
            fn valkey() $(-> $ret)? {
                body($crate::Flavor::Valkey)
            }
        }
    )*};
}
