//! `loadcompare`: lockwarden's commands side by side with the plain-Redis
//! locking recipes they replace, on one server in one run.
//!
//! ```text
//! cargo run --release -p lockwarden-benches --bin loadcompare -- [options]
//! ```
//!
//! Scenarios (each a function below, listed in [`SCENARIOS`]):
//!
//! * (a) `LOCK.ACQUIRE` vs `SET k v NX PX` vs a fenced Lua acquire
//!   (`SET NX PX` + `INCR` of a fence counter), `redis-benchmark` on random
//!   keys: requests/s and server µs per call; and `FLOOR.ACQUIRE`, the
//!   module-API floor of a grant (`benches/floor`, loaded beside the module),
//!   which splits ACQUIRE's cost into the module API's and lockwarden's own;
//! * (b) `LOCK.RELEASE` vs the Lua compare-and-delete, each on a held lock
//!   (and plain `DEL`, the floor no checked release can beat);
//! * (c) `LOCK.EXTEND` vs the Lua compare-and-`PEXPIRE`, each on a held lock
//!   (and plain `PEXPIRE`, the floor);
//! * (d) memory of a held lock vs a `SET`-based lock;
//! * (e) `LOCK.ACQUIRE` with the `max-ttl` policy loaded vs without (runs only
//!   when `LOCK.POLICY` exists and `max-ttl.wasm` was built).
//!
//! Contended blocking acquire vs polling is the `waitcompare` binary.

use lockwarden_benches::cli::{self, Args};
use lockwarden_benches::drive::{self, BenchTool, acquire_cmd, script_load, set_nx_cmd};
use lockwarden_benches::info;
use lockwarden_benches::report::{Compare, Report, Row, Target};
use lockwarden_benches::server::Server;
use lockwarden_benches::stats;
use lockwarden_benches::{LUA_RELEASE, OWNER, Result, TTL_MS, err};
use redis::Connection;
use std::path::{Path, PathBuf};

const USAGE: &str = "\
loadcompare: lockwarden vs plain Redis locking recipes, side by side on one server

options:
  --server BIN       redis-server (default) or valkey-server, or a path
  --benchmark BIN    the load tool for (a) and (e) (default redis-benchmark)
  --rounds N         alternating rounds per scenario (default 11)
  --policy-rounds N  alternating rounds of (e) (default 25: its difference is
                     small against the run-to-run noise)
  --requests N       redis-benchmark -n per run (default 100000)
  --clients N        redis-benchmark -c (default 50)
  --pipeline N       redis-benchmark -P (default 16)
  --keyspace N       redis-benchmark -r (default 100000000)
  --locks N          held locks released/extended per round in (b), (c) (default 100000)
  --depth N          pipeline depth of the driver in (b), (c), (d) (default 100)
  --mem-locks N      locks per round for the bulk memory figure in (d) (default 100000)
  --only LIST        comma-separated scenario letters to run (default all: a,b,c,d,e)
  --quick            small runs for a smoke test (numbers are not meaningful)

environment:
  LOCKWARDEN_MODULE        the module (default <workspace>/target/release/liblockwarden.so)
  LOCKWARDEN_FLOOR_MODULE  the module-API floor for (a) (default
                           <workspace>/target/release/liblockwarden_floor.so)
  LOCKWARDEN_POLICIES      built policies (default <workspace>/target/policies)";

/// `SET KEYS[1] ARGV[1] NX PX ARGV[2]`, and on success a fencing token from
/// `INCR KEYS[2]` (a Redisson-style fenced lock).
const LUA_ACQUIRE: &str = "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
    return redis.call('INCR', KEYS[2]) end return false";
/// Compare-and-`PEXPIRE`: the classic extension of a `SET NX` lock.
const LUA_EXTEND: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then \
    return redis.call('PEXPIRE', KEYS[1], ARGV[2]) else return 0 end";

/// The fence counter of the Lua acquire: one per node, like lockwarden's
/// token clock (a counter per lock would add a key per lock and make the
/// Lua variant slower still).
const FENCE_KEY: &str = "lockwarden-bench:fence";

/// The policy scenario (e) loads `max-ttl` with these settings.
const MAX_TTL_CONFIG: &str = r#"{"default_ms":30000,"prefixes":[],"action":"clamp"}"#;

struct Shas {
    acquire: String,
    release: String,
    extend: String,
}

/// Everything a scenario needs.
struct Ctx {
    server: Server,
    con: Connection,
    tool: BenchTool,
    rounds: usize,
    policy_rounds: usize,
    locks: usize,
    depth: usize,
    mem_locks: usize,
    policies: PathBuf,
    shas: Shas,
    report: Report,
}

type Scenario = fn(&mut Ctx) -> Result<()>;

/// The scenarios, in report order: (letter, title, function). A new
/// scenario is one more function and one more line here.
const SCENARIOS: &[(&str, &str, Scenario)] = &[
    (
        "a",
        "acquire on random keys: LOCK.ACQUIRE vs SET NX PX vs fenced Lua",
        acquire,
    ),
    (
        "b",
        "release of held locks: LOCK.RELEASE vs Lua compare-and-delete",
        release,
    ),
    (
        "c",
        "extend of held locks: LOCK.EXTEND vs Lua compare-and-pexpire",
        extend,
    ),
    ("d", "memory of a held lock: lease vs SET string", memory),
    (
        "e",
        "policy overhead: LOCK.ACQUIRE with max-ttl loaded vs without",
        policy,
    ),
];

fn main() {
    lockwarden_benches::main_of("loadcompare", run);
}

fn run() -> Result<()> {
    let args = Args::parse(
        &[
            "server",
            "benchmark",
            "rounds",
            "policy-rounds",
            "requests",
            "clients",
            "pipeline",
            "keyspace",
            "locks",
            "depth",
            "mem-locks",
            "only",
        ],
        &["quick"],
        USAGE,
    )?;
    let quick = args.flag("quick");
    let tool = BenchTool {
        bin: args.string("benchmark", "redis-benchmark"),
        requests: args.get("requests", if quick { 20_000 } else { 100_000 })?,
        clients: args.get("clients", 50)?,
        pipeline: args.get("pipeline", 16)?,
        keyspace: args.get("keyspace", 100_000_000)?,
    };
    let only = args.string("only", "a,b,c,d,e");
    let only: Vec<&str> = only.split(',').map(str::trim).collect();
    if let Some(bad) = only
        .iter()
        .find(|l| !SCENARIOS.iter().any(|(s, _, _)| s == *l))
    {
        return err(format!("--only: no scenario '{bad}'"));
    }

    // The floor module, for (a) only.
    let floor = cli::floor_module_path();
    let others: &[&Path] = if only.contains(&"a") { &[&floor] } else { &[] };
    let (server, mut con, mut report) =
        lockwarden_benches::start(&args, "lockwarden loadcompare", others)?;
    let shas = Shas {
        acquire: script_load(&mut con, LUA_ACQUIRE)?,
        release: script_load(&mut con, LUA_RELEASE)?,
        extend: script_load(&mut con, LUA_EXTEND)?,
    };
    if !others.is_empty() {
        report.context("module-API floor for (a)", floor.display().to_string());
    }
    report.context(
        "load tool",
        format!("{} ({})", tool.describe(), cli::tool_version(&tool.bin)),
    );
    let mut cx = Ctx {
        // Many short rounds rather than a few long ones: on a shared machine
        // the two halves of a pair are more likely to see the same load.
        rounds: args.get("rounds", if quick { 2 } else { 11 })?,
        policy_rounds: args.get("policy-rounds", if quick { 2 } else { 25 })?,
        locks: args.get("locks", if quick { 20_000 } else { 100_000 })?,
        depth: args.get("depth", 100)?,
        mem_locks: args.get("mem-locks", if quick { 10_000 } else { 100_000 })?,
        policies: cli::policies_dir(),
        server,
        con,
        tool,
        shas,
        report,
    };
    cx.report.context(
        "rounds",
        format!(
            "{} per scenario ({} for (e)), variants alternating; A/B = median of per-round ratios; server CPU = INFO commandstats usec/calls after FLUSHALL + CONFIG RESETSTAT",
            cx.rounds, cx.policy_rounds
        ),
    );

    let mut failed = false;
    for &(letter, title, scenario) in SCENARIOS {
        if !only.contains(&letter) {
            continue;
        }
        eprintln!("\n({letter}) {title}");
        if let Err(e) = scenario(&mut cx) {
            failed = true;
            eprintln!(
                "({letter}) FAILED: {e}\nserver log tail:\n{}",
                cx.server.log_tail()
            );
            cx.report
                .skipped(&format!("({letter}) {title}"), &format!("FAILED: {e}"));
            // A fresh connection, in case the failure left this one unusable.
            cx.con = cx.server.connect()?;
        }
    }
    cx.report.print();
    if failed {
        return err("some scenarios failed (see above)");
    }
    Ok(())
}

/// `lock:000000000042`: the same shape as the keys `-r` makes.
fn key(i: usize) -> String {
    format!("lock:{i:012}")
}

/// Runs `f(variant)` for every variant in every round, rotating which
/// variant goes first, and returns the per-round results by variant.
fn alternate<T>(
    rounds: usize,
    variants: usize,
    mut f: impl FnMut(usize, usize) -> Result<T>,
) -> Result<Vec<Vec<T>>> {
    let mut out: Vec<Vec<T>> = (0..variants).map(|_| Vec::with_capacity(rounds)).collect();
    for round in 0..rounds {
        for k in 0..variants {
            let v = (round + k) % variants;
            out[v].push(f(round, v)?);
        }
    }
    Ok(out)
}

/// Fails unless the keyspace holds about as many keys as a run of `n`
/// fresh grants on random keys should leave (some random keys repeat).
fn expect_keys(con: &mut Connection, at_least: u64, what: &str) -> Result<()> {
    let n: u64 = redis::cmd("DBSIZE").query(con)?;
    if n < at_least {
        return err(format!(
            "{what}: only {n} keys after the run, expected at least {at_least}"
        ));
    }
    Ok(())
}

/// Fails if `name` had failed or rejected calls in the round.
fn expect_no_failures(con: &mut Connection, name: &str) -> Result<()> {
    let stats = info::fields(con, "commandstats")?;
    let line = stats
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(&format!("cmdstat_{name}")))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    for field in ["failed_calls", "rejected_calls"] {
        let n = line
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{field}=")))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if n > 0 {
            return err(format!("{name}: {n} {field} in the round ({line})"));
        }
    }
    Ok(())
}

/// (a) Fresh grants on random keys.
fn acquire(cx: &mut Ctx) -> Result<()> {
    let ttl = TTL_MS.to_string();
    let sha = cx.shas.acquire.clone();
    // (label, stat name, command)
    let variants: [(&str, &str, Vec<&str>); 4] = [
        (
            "LOCK.ACQUIRE",
            "lock.acquire",
            vec!["LOCK.ACQUIRE", "lock:__rand_int__", OWNER, &ttl],
        ),
        (
            "SET NX PX",
            "set",
            vec!["SET", "lock:__rand_int__", OWNER, "NX", "PX", &ttl],
        ),
        (
            "Lua fenced",
            "evalsha",
            vec![
                "EVALSHA",
                &sha,
                "2",
                "lock:__rand_int__",
                FENCE_KEY,
                OWNER,
                &ttl,
            ],
        ),
        (
            "FLOOR.ACQUIRE",
            "floor.acquire",
            vec!["FLOOR.ACQUIRE", "lock:__rand_int__", OWNER, &ttl],
        ),
    ];
    // Random keys repeat a little (n²/2r of them); anything far below n
    // means commands failed.
    let min_keys = cx.tool.requests * 98 / 100;
    let results = alternate(cx.rounds, variants.len(), |round, v| {
        let (label, stat, cmd) = &variants[v];
        let m = benchmark_round(cx, stat, cmd)?;
        expect_keys(&mut cx.con, min_keys, label)?;
        eprintln!("  round {round}: {label:<13} {}", m.show("req/s"));
        Ok(m)
    })?;
    let (ours, set, lua, floor) = (
        ("ACQUIRE", 0),
        ("SET NX", 1),
        ("Lua fenced", 2),
        ("module floor", 3),
    );
    let rate = Metric::Rate("req/s");
    let r = &mut cx.report;
    r.row(
        compare(
            &results,
            "(a) acquire: server CPU",
            Metric::ServerCpu,
            ours,
            set,
        )
        .target(Target::AtMost(1.3))
        .aim(1.0),
    );
    r.row(compare(
        &results,
        "(a) acquire: server CPU",
        Metric::ServerCpu,
        ours,
        lua,
    ));
    r.row(compare(
        &results,
        "(a) acquire: server CPU",
        Metric::ServerCpu,
        ours,
        floor,
    ));
    r.row(compare(
        &results,
        "(a) module floor: server CPU",
        Metric::ServerCpu,
        floor,
        set,
    ));
    r.row(compare(
        &results,
        "(a) acquire: main-thread CPU/request",
        Metric::MainThreadCpu,
        ours,
        set,
    ));
    r.row(
        compare(&results, "(a) acquire: throughput", rate, ours, set)
            .target(Target::AtLeast(1.0 / 1.3))
            .aim(1.0),
    );
    r.row(compare(
        &results,
        "(a) acquire: throughput",
        rate,
        ours,
        lua,
    ));
    Ok(())
}

/// One `redis-benchmark` run of `cmd` after a fresh round: its
/// measurements; fails if calls of `stat` failed or were rejected.
fn benchmark_round(cx: &mut Ctx, stat: &str, cmd: &[&str]) -> Result<Measured> {
    info::fresh_round(&mut cx.con)?;
    let (port, tool) = (cx.server.port(), &cx.tool);
    let m = measure(&mut cx.con, stat, tool.requests, |_| tool.run(port, cmd))?;
    expect_no_failures(&mut cx.con, stat)?;
    Ok(m)
}

/// How one variant of (b)/(c) fills the keyspace and then operates on each
/// held lock once.
struct HeldVariant<'a> {
    label: &'a str,
    stat: &'a str,
    populate: &'a dyn Fn(&mut redis::Pipeline, usize),
    populate_ok: fn(&redis::Value) -> bool,
    op: &'a dyn Fn(&mut redis::Pipeline, usize),
    op_ok: fn(&redis::Value) -> bool,
}

impl<'a> HeldVariant<'a> {
    /// `op` on each of the locks taken with `LOCK.ACQUIRE`.
    fn on_leases(
        label: &'a str,
        stat: &'a str,
        op: &'a dyn Fn(&mut redis::Pipeline, usize),
        op_ok: fn(&redis::Value) -> bool,
    ) -> Self {
        HeldVariant {
            label,
            stat,
            populate: &acquire_lock,
            populate_ok: drive::is_grant,
            op,
            op_ok,
        }
    }

    /// `op` on each of the locks taken with `SET NX PX`; it must reply 1.
    fn on_strings(
        label: &'a str,
        stat: &'a str,
        op: &'a dyn Fn(&mut redis::Pipeline, usize),
    ) -> Self {
        HeldVariant {
            label,
            stat,
            populate: &set_lock,
            populate_ok: drive::is_ok,
            op,
            op_ok: |v| drive::is_int(v, 1),
        }
    }
}

/// The rows of (b) and (c) (`what`: "(b) release"): `ours` against the Lua
/// recipe (variant 1) in server CPU, main-thread CPU and driver rate, and
/// against the unchecked `floor` (variant 2) in server CPU. `judge` sets the
/// first row's target.
fn held_rows(
    report: &mut Report,
    res: &[Vec<Measured>],
    what: &str,
    (ours, floor): (&str, &str),
    judge: impl FnOnce(Row) -> Row,
) {
    let (ours, lua, floor) = ((ours, 0), ("Lua", 1), (floor, 2));
    let scenario = |metric: &str| format!("{what}: {metric}");
    report.row(judge(compare(
        res,
        &scenario("server CPU"),
        Metric::ServerCpu,
        ours,
        lua,
    )));
    report.row(compare(
        res,
        &scenario("server CPU vs floor"),
        Metric::ServerCpu,
        ours,
        floor,
    ));
    report.row(compare(
        res,
        &scenario("main-thread CPU/request"),
        Metric::MainThreadCpu,
        ours,
        lua,
    ));
    report.row(compare(
        res,
        &scenario("pipelined driver"),
        Metric::Rate("ops/s"),
        ours,
        lua,
    ));
}

/// Populates `locks` held locks, resets the stats, applies the operation to
/// each lock exactly once; returns the measurements (rate = driver ops/s)
/// per variant and round.
fn on_held_locks(cx: &mut Ctx, variants: &[HeldVariant<'_>]) -> Result<Vec<Vec<Measured>>> {
    let (locks, depth) = (cx.locks, cx.depth);
    alternate(cx.rounds, variants.len(), |round, v| {
        let hv = &variants[v];
        redis::cmd("FLUSHALL").arg("SYNC").exec(&mut cx.con)?;
        drive::pipelined(&mut cx.con, locks, depth, hv.populate, hv.populate_ok)?
            .all_ok(&format!("{}: populate", hv.label))?;
        info::reset_stats(&mut cx.con)?;
        let m = measure(&mut cx.con, hv.stat, locks as u64, |con| {
            let run = drive::pipelined(con, locks, depth, hv.op, hv.op_ok)?;
            run.all_ok(hv.label)?;
            Ok(run.per_sec())
        })?;
        let calls = info::cmdstat(&mut cx.con, hv.stat)?.calls;
        if calls != locks as u64 {
            return err(format!("{}: {calls} calls counted, {locks} sent", hv.label));
        }
        eprintln!("  round {round}: {:<15} {}", hv.label, m.show("ops/s"));
        Ok(m)
    })
}

/// One variant's measurements in one round.
#[derive(Clone, Copy, Debug)]
struct Measured {
    /// Requests (or operations) per second, as the load generator saw it.
    rate: f64,
    /// Server µs per call from `INFO commandstats`.
    usec: f64,
    /// Server main-thread CPU µs per request (`INFO cpu`): includes reading
    /// the request and writing the reply, and is not inflated when the
    /// server is preempted.
    cpu_us: f64,
}

impl Measured {
    fn show(&self, rate_unit: &str) -> String {
        format!(
            "{:>10.0} {rate_unit}  {:.3} µs/call  {:.3} CPU µs/req",
            self.rate, self.usec, self.cpu_us
        )
    }
}

/// Runs `load` (which sends `calls` calls of `stat` and returns its rate)
/// between two readings of the server's CPU time; the command stats must
/// have been reset before.
fn measure(
    con: &mut Connection,
    stat: &str,
    calls: u64,
    load: impl FnOnce(&mut Connection) -> Result<f64>,
) -> Result<Measured> {
    let cpu_before = info::cpu_seconds(con)?;
    let rate = load(con)?;
    let cpu_after = info::cpu_seconds(con)?;
    Ok(Measured {
        rate,
        usec: info::usec_per_call(con, stat)?,
        cpu_us: (cpu_after - cpu_before) * 1e6 / calls as f64,
    })
}

/// What a row compares: a field of [`Measured`], in its unit.
#[derive(Clone, Copy, Debug)]
enum Metric {
    /// `usec`, µs/call.
    ServerCpu,
    /// `cpu_us`, µs/req.
    MainThreadCpu,
    /// `rate`, in the unit given.
    Rate(&'static str),
}

impl Metric {
    fn unit(self) -> &'static str {
        match self {
            Metric::ServerCpu => "µs/call",
            Metric::MainThreadCpu => "µs/req",
            Metric::Rate(unit) => unit,
        }
    }

    fn of(self, m: &Measured) -> f64 {
        match self {
            Metric::ServerCpu => m.usec,
            Metric::MainThreadCpu => m.cpu_us,
            Metric::Rate(_) => m.rate,
        }
    }
}

/// A row of `metric`, variant `a` against variant `b` (label, index into
/// `results`), compared by their ratio.
fn compare(
    results: &[Vec<Measured>],
    scenario: &str,
    metric: Metric,
    (a_label, a): (&str, usize),
    (b_label, b): (&str, usize),
) -> Row {
    compare_by(
        results,
        scenario,
        metric,
        (a_label, a),
        (b_label, b),
        Compare::Ratio,
    )
}

/// [`compare`] by `how`.
fn compare_by(
    results: &[Vec<Measured>],
    scenario: &str,
    metric: Metric,
    (a_label, a): (&str, usize),
    (b_label, b): (&str, usize),
    how: Compare,
) -> Row {
    let col = |v: usize| results[v].iter().map(|m| metric.of(m)).collect::<Vec<_>>();
    Row::paired(
        scenario,
        (a_label, &col(a)),
        (b_label, &col(b)),
        metric.unit(),
        how,
    )
}

fn acquire_lock(p: &mut redis::Pipeline, i: usize) {
    p.add_command(acquire_cmd(&key(i), OWNER, TTL_MS));
}

fn set_lock(p: &mut redis::Pipeline, i: usize) {
    p.add_command(set_nx_cmd(&key(i), OWNER, TTL_MS));
}

/// (b) Release each held lock exactly once.
fn release(cx: &mut Ctx) -> Result<()> {
    let sha = cx.shas.release.clone();
    let module_op = |p: &mut redis::Pipeline, i: usize| {
        p.cmd("LOCK.RELEASE").arg(key(i)).arg(OWNER);
    };
    let lua_op = |p: &mut redis::Pipeline, i: usize| {
        p.cmd("EVALSHA").arg(&sha).arg(1).arg(key(i)).arg(OWNER);
    };
    let del_op = |p: &mut redis::Pipeline, i: usize| {
        p.cmd("DEL").arg(key(i));
    };
    let variants = [
        HeldVariant::on_leases("LOCK.RELEASE", "lock.release", &module_op, |v| {
            drive::is_int(v, 1)
        }),
        HeldVariant::on_strings("Lua release", "evalsha", &lua_op),
        // The floor: an unconditional delete, no ownership check at all.
        HeldVariant::on_strings("DEL (floor)", "del", &del_op),
    ];
    let res = on_held_locks(cx, &variants)?;
    held_rows(
        &mut cx.report,
        &res,
        "(b) release",
        ("RELEASE", "DEL"),
        |row| row.target(Target::AtMost(0.5)).aim(0.25),
    );
    Ok(())
}

/// (c) Extend each held lock once.
fn extend(cx: &mut Ctx) -> Result<()> {
    let sha = cx.shas.extend.clone();
    let module_op = |p: &mut redis::Pipeline, i: usize| {
        p.cmd("LOCK.EXTEND").arg(key(i)).arg(OWNER).arg(TTL_MS);
    };
    let lua_op = |p: &mut redis::Pipeline, i: usize| {
        p.cmd("EVALSHA")
            .arg(&sha)
            .arg(1)
            .arg(key(i))
            .arg(OWNER)
            .arg(TTL_MS);
    };
    let pexpire_op = |p: &mut redis::Pipeline, i: usize| {
        p.cmd("PEXPIRE").arg(key(i)).arg(TTL_MS);
    };
    let variants = [
        HeldVariant::on_leases("LOCK.EXTEND", "lock.extend", &module_op, |v| {
            drive::is_int(v, TTL_MS as i64)
        }),
        HeldVariant::on_strings("Lua extend", "evalsha", &lua_op),
        // The floor: an unconditional PEXPIRE, no ownership check at all.
        HeldVariant::on_strings("PEXPIRE (floor)", "pexpire", &pexpire_op),
    ];
    let res = on_held_locks(cx, &variants)?;
    held_rows(
        &mut cx.report,
        &res,
        "(c) extend",
        ("EXTEND", "PEXPIRE"),
        |row| row,
    );
    Ok(())
}

/// (d) `MEMORY USAGE` of one lock of each kind under the same name, and
/// `used_memory` growth per lock over many.
fn memory(cx: &mut Ctx) -> Result<()> {
    let con = &mut cx.con;
    let name = key(1);
    redis::cmd("FLUSHALL").arg("SYNC").exec(con)?;
    let grant: redis::Value = acquire_cmd(&name, OWNER, TTL_MS).query(con)?;
    if !drive::is_grant(&grant) {
        return err(format!("LOCK.ACQUIRE {name}: {grant:?}"));
    }
    let lease = info::memory_usage(con, &name)?;
    redis::cmd("DEL").arg(&name).exec(con)?;
    let ok: redis::Value = set_nx_cmd(&name, OWNER, TTL_MS).query(con)?;
    if !drive::is_ok(&ok) {
        return err(format!("SET {name}: {ok:?}"));
    }
    let string = info::memory_usage(con, &name)?;
    eprintln!("  MEMORY USAGE: lease {lease} B, SET string {string} B");
    cx.report.row(
        Row::single(
            "(d) memory: MEMORY USAGE of one lock",
            ("lease", lease as f64),
            ("SET", string as f64),
            "bytes",
            Compare::Ratio,
        )
        .target(Target::AtMost(1.5)),
    );

    // MEMORY USAGE reports what the type's mem_usage callback claims; the
    // allocator's view is used_memory growth.
    let (n, depth) = (cx.mem_locks, cx.depth);
    let rounds = cx.rounds.min(3);
    let per_lock = alternate(rounds, 2, |round, v| {
        redis::cmd("FLUSHALL").arg("SYNC").exec(&mut cx.con)?;
        let before = info::used_memory(&mut cx.con)?;
        if v == 0 {
            drive::pipelined(&mut cx.con, n, depth, acquire_lock, drive::is_grant)?
                .all_ok("populate leases")?;
        } else {
            drive::pipelined(&mut cx.con, n, depth, set_lock, drive::is_ok)?
                .all_ok("populate SET locks")?;
        }
        let after = info::used_memory(&mut cx.con)?;
        let per = (after as f64 - before as f64) / n as f64;
        eprintln!(
            "  round {round}: {:<6} used_memory +{per:.1} B per lock",
            ["lease", "SET"][v]
        );
        Ok(per)
    })?;
    cx.report.row(Row::paired(
        "(d) memory: used_memory per lock",
        ("lease", &per_lock[0]),
        ("SET", &per_lock[1]),
        "bytes",
        Compare::Ratio,
    ));
    redis::cmd("FLUSHALL").arg("SYNC").exec(&mut cx.con)?;
    Ok(())
}

/// `mean-ns` of the policy `name` in `LOCK.POLICY LIST` (a flat list of
/// field/value pairs per policy), if it is listed.
fn policy_mean_ns(con: &mut Connection, name: &str) -> Result<Option<f64>> {
    let list: Vec<Vec<redis::Value>> = redis::cmd("LOCK.POLICY").arg("LIST").query(con)?;
    let field = |p: &[redis::Value], f: &str| {
        p.chunks(2).find_map(|kv| match kv {
            [redis::Value::BulkString(k), v] if k == f.as_bytes() => Some(v.clone()),
            _ => None,
        })
    };
    Ok(list
        .iter()
        .find_map(|p| match (field(p, "name"), field(p, "mean-ns")) {
            (Some(redis::Value::BulkString(n)), Some(redis::Value::Int(ns)))
                if n == name.as_bytes() =>
            {
                Some(ns as f64)
            }
            _ => None,
        }))
}

/// (e) The cost of evaluating the `max-ttl` policy on each acquire.
fn policy(cx: &mut Ctx) -> Result<()> {
    const SCENARIO: &str = "(e) policy: ACQUIRE server CPU with max-ttl";
    let wasm_path = cx.policies.join("max-ttl.wasm");
    let subcommands = info::command_info(&mut cx.con, "LOCK.POLICY")?;
    let (Some(subs), true) = (subcommands, wasm_path.is_file()) else {
        let why = if wasm_path.is_file() {
            "LOCK.POLICY is not a command of this module build".to_string()
        } else {
            format!("{} not found (make policies)", wasm_path.display())
        };
        eprintln!("  skipped: policy engine not available ({why})");
        cx.report
            .skipped(SCENARIO, &format!("policy engine not available ({why})"));
        return Ok(());
    };
    let wasm = std::fs::read(&wasm_path)?;
    let load = |con: &mut Connection, glob: &str| -> Result<()> {
        redis::cmd("LOCK.POLICY")
            .arg("LOAD")
            .arg("max-ttl")
            .arg("KEYS")
            .arg(glob)
            .arg("MODE")
            .arg("enforce")
            .arg("CONFIG")
            .arg(MAX_TTL_CONFIG)
            .arg("REPLACE")
            .arg("WASM")
            .arg(&wasm[..])
            .exec(con)?;
        Ok(())
    };
    // Without = no policy at all when the module can unload one; otherwise
    // the policy stays loaded on keys the benchmark never uses.
    let can_unload = subs.iter().any(|s| s == "unload");
    let baseline = if can_unload {
        "no policy"
    } else {
        "policy on other keys"
    };
    let without = |con: &mut Connection| -> Result<()> {
        if can_unload {
            redis::cmd("LOCK.POLICY")
                .arg("UNLOAD")
                .arg("max-ttl")
                .exec(con)?;
            Ok(())
        } else {
            load(con, "lockwarden-bench-nomatch:*")
        }
    };
    // A check that the policy is live: a 45 s request is clamped to 30 s.
    load(&mut cx.con, "*")?;
    let probe: redis::Value = acquire_cmd("lock:policy-probe", OWNER, 45_000).query(&mut cx.con)?;
    let clamped = matches!(&probe, redis::Value::Array(a) if drive::is_int(&a[1], 30_000));
    if !clamped {
        cx.report.note(format!(
            "(e): with max-ttl loaded, a 45000 ms acquire replied {probe:?}, not a 30000 ms clamp: is the policy evaluated?"
        ));
    }
    let ttl = TTL_MS.to_string();
    let cmd = ["LOCK.ACQUIRE", "lock:__rand_int__", OWNER, &ttl];
    // The server's own timing of the evaluations, per round with the policy
    // (without UNLOAD, counters accumulate across rounds).
    let mut eval_ns = Vec::new();
    let res = alternate(cx.policy_rounds, 2, |round, v| {
        if v == 0 {
            // A fresh load, so that the policy's counters cover this round
            // only (loading an unchanged policy again keeps them).
            if can_unload {
                without(&mut cx.con)?;
            }
            load(&mut cx.con, "*")?;
        } else {
            without(&mut cx.con)?;
        }
        let m = benchmark_round(cx, "lock.acquire", &cmd)?;
        eprintln!(
            "  round {round}: {:<20} {}",
            ["with max-ttl", baseline][v],
            m.show("req/s")
        );
        if v == 0 {
            eval_ns.extend(policy_mean_ns(&mut cx.con, "max-ttl")?);
        }
        Ok(m)
    })?;
    if !eval_ns.is_empty() {
        cx.report.note(format!(
            "(e): the server's own timing of one max-ttl evaluation (LOCK.POLICY LIST mean-ns: the Wasm call and decoding the decision, every 8th evaluation timed), median of the rounds with the policy: {:.0} ns (rounds {:.0}–{:.0} ns)",
            stats::median(&eval_ns),
            stats::quantile(&eval_ns, 0.0),
            stats::quantile(&eval_ns, 1.0),
        ));
    }
    without(&mut cx.con)?;
    let (loaded, unloaded) = (("with", 0), (baseline, 1));
    let r = &mut cx.report;
    r.row(
        compare_by(
            &res,
            SCENARIO,
            Metric::ServerCpu,
            loaded,
            unloaded,
            Compare::Delta,
        )
        .target(Target::AtMost(0.5))
        .aim(0.2),
    );
    r.row(compare_by(
        &res,
        "(e) policy: main-thread CPU/request with max-ttl",
        Metric::MainThreadCpu,
        loaded,
        unloaded,
        Compare::Delta,
    ));
    r.row(compare(
        &res,
        "(e) policy: ACQUIRE throughput with max-ttl",
        Metric::Rate("req/s"),
        loaded,
        unloaded,
    ));
    Ok(())
}
