//! Load drivers: `redis-benchmark` for random-key throughput, and a pipelined
//! driver on the `redis` crate for workloads that must touch given keys in a
//! given order (release each held lock exactly once).

use crate::{Result, err};
use redis::{Connection, RedisResult, Value};
use std::process::Command;
use std::time::Instant;

/// How `redis-benchmark` is run: the same `-n/-c/-P/-r` for every variant.
#[derive(Clone, Debug)]
pub struct BenchTool {
    pub bin: String,
    pub requests: u64,
    pub clients: u32,
    pub pipeline: u32,
    /// `-r`: `__rand_int__` takes values in `0..keyspace`.
    pub keyspace: u64,
}

impl BenchTool {
    /// The options, as a command line prefix.
    pub fn describe(&self) -> String {
        format!(
            "{} -n {} -c {} -P {} -r {}",
            self.bin, self.requests, self.clients, self.pipeline, self.keyspace
        )
    }

    /// Runs `command` (its arguments may contain `__rand_int__`) and returns
    /// the requests per second `redis-benchmark` reports.
    pub fn run(&self, port: u16, command: &[&str]) -> Result<f64> {
        let out = Command::new(&self.bin)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-n", &self.requests.to_string()])
            .args(["-c", &self.clients.to_string()])
            .args(["-P", &self.pipeline.to_string()])
            .args(["-r", &self.keyspace.to_string()])
            .arg("--csv")
            .args(command)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.bin))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return err(format!(
                "{} {} failed ({}): {}{}",
                self.bin,
                command.join(" "),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        parse_csv_rps(&stdout).ok_or_else(|| {
            format!(
                "cannot read the requests/s from {} output:\n{stdout}",
                self.bin
            )
            .into()
        })
    }
}

/// The `rps` column of the first data line of `redis-benchmark --csv`.
fn parse_csv_rps(csv: &str) -> Option<f64> {
    csv.lines()
        .filter(|l| l.starts_with('"') && !l.starts_with("\"test\""))
        .find_map(|l| l.split("\",\"").nth(1)?.trim_matches('"').parse().ok())
}

/// What a pipelined run did.
#[derive(Clone, Debug, Default)]
pub struct Driven {
    /// Replies that `ok` accepted.
    pub ok: u64,
    /// Replies it did not (including error replies).
    pub failed: u64,
    /// The first refused reply, for the error message.
    pub first_failure: Option<String>,
    /// Wall time of the whole run.
    pub secs: f64,
}

impl Driven {
    /// Fails unless every reply was accepted.
    pub fn all_ok(&self, what: &str) -> Result<()> {
        if self.failed == 0 {
            Ok(())
        } else {
            err(format!(
                "{what}: {} of {} replies were not as expected (first: {})",
                self.failed,
                self.ok + self.failed,
                self.first_failure.as_deref().unwrap_or("?")
            ))
        }
    }

    pub fn per_sec(&self) -> f64 {
        (self.ok + self.failed) as f64 / self.secs
    }
}

/// Sends `n` commands on `con`, `depth` at a time in one pipeline; command
/// `i` is added to the pipeline by `build(pipe, i)`. Every reply is checked
/// with `ok`.
pub fn pipelined(
    con: &mut Connection,
    n: usize,
    depth: usize,
    mut build: impl FnMut(&mut redis::Pipeline, usize),
    ok: impl Fn(&Value) -> bool,
) -> Result<Driven> {
    let mut out = Driven::default();
    let mut pipe = redis::pipe();
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        pipe.clear();
        pipe.ignore_errors();
        let end = (i + depth.max(1)).min(n);
        for j in i..end {
            build(&mut pipe, j);
        }
        let replies: Vec<RedisResult<Value>> = pipe.query(con)?;
        for r in replies {
            match r {
                Ok(v) if ok(&v) => out.ok += 1,
                other => {
                    out.failed += 1;
                    if out.first_failure.is_none() {
                        out.first_failure = Some(format!("{other:?}"));
                    }
                }
            }
        }
        i = end;
    }
    out.secs = started.elapsed().as_secs_f64();
    Ok(out)
}

/// `LOCK.ACQUIRE key owner ttl_ms`.
pub fn acquire_cmd(key: &str, owner: &str, ttl_ms: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("LOCK.ACQUIRE");
    cmd.arg(key).arg(owner).arg(ttl_ms);
    cmd
}

/// `SET key owner NX PX ttl_ms`: the plain-Redis lock.
pub fn set_nx_cmd(key: &str, owner: &str, ttl_ms: u64) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(owner).arg("NX").arg("PX").arg(ttl_ms);
    cmd
}

/// `SCRIPT LOAD script`: its SHA-1.
pub fn script_load(con: &mut Connection, script: &str) -> Result<String> {
    Ok(redis::cmd("SCRIPT").arg("LOAD").arg(script).query(con)?)
}

/// Is `v` the integer `n`?
pub fn is_int(v: &Value, n: i64) -> bool {
    matches!(v, Value::Int(x) if *x == n)
}

/// Is `v` a `LOCK.ACQUIRE` grant (`[token, ttl]`)?
pub fn is_grant(v: &Value) -> bool {
    matches!(v, Value::Array(a) if a.len() == 2 && matches!(a[0], Value::Int(t) if t > 0))
}

/// Is `v` `OK`?
pub fn is_ok(v: &Value) -> bool {
    matches!(v, Value::Okay) || matches!(v, Value::SimpleString(s) if s == "OK")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_rps_column() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"LOCK.ACQUIRE lock:__rand_int__ owner 30000\",\"158730.16\",\"4.680\"\n";
        assert_eq!(parse_csv_rps(csv), Some(158730.16));
        assert_eq!(parse_csv_rps("garbage"), None);
    }
}
