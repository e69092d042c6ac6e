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

use std::path::Path;

/// The error type of the harness: anything goes, it ends the run with a
/// message.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Builds an [`Error`] from a message.
pub fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(msg.into().into())
}

/// The body of a comparison's `main`: runs `run`; on error prints
/// `<name>: <error>` and exits with status 1.
pub fn main_of(name: &str, run: impl FnOnce() -> Result<()>) {
    if let Err(e) = run() {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}

/// The start of every comparison: `--server` (default `redis-server`)
/// started with the module (`LOCKWARDEN_MODULE`) and `others` beside it, a
/// connection to it, and a report titled `title` whose context names the
/// date, the server and the module, the machine and the build.
pub fn start(
    args: &cli::Args,
    title: &str,
    others: &[&Path],
) -> Result<(server::Server, redis::Connection, report::Report)> {
    let module = cli::module_path();
    let binary = args.string("server", "redis-server");
    eprintln!("starting {binary} with {}", module.display());
    let modules: Vec<&Path> = std::iter::once(module.as_path())
        .chain(others.iter().copied())
        .collect();
    let server = server::Server::start(&binary, &modules)?;
    let con = server.connect()?;
    let mut report = report::Report::new(title);
    report.context("date", cli::utc_now());
    report.context(
        "server",
        format!(
            "{} ({binary}), module {}",
            server.version()?,
            module.display()
        ),
    );
    report.context("machine", cli::machine());
    report.context("build", cli::build_id(&module));
    Ok((server, con, report))
}

/// An owner string of a typical shape (`host:pid:unique-id`, 30 bytes), used
/// by every variant of every scenario so they store the same bytes.
pub const OWNER: &str = "app-7f3a:4242:9c1e5b2d7a6f4e30";

/// The lease every scenario asks for, ms (below the default
/// `lockwarden.max-ttl-ms`).
pub const TTL_MS: u64 = 30_000;

/// Compare-and-delete: the classic safe release of a `SET NX` lock
/// (`KEYS[1]`, owner `ARGV[1]`).
pub const LUA_RELEASE: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('DEL', KEYS[1]) else return 0 end";
