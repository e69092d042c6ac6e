//! What the server says about itself: `INFO` sections, `INFO commandstats`,
//! `MEMORY USAGE`, `COMMAND INFO`.

use crate::{Result, err};
use redis::{Connection, Value};
use std::collections::HashMap;

/// The `name:value` lines of an `INFO` section.
pub fn fields(con: &mut Connection, section: &str) -> Result<HashMap<String, String>> {
    let text: String = redis::cmd("INFO").arg(section).query(con)?;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

/// One line of `INFO commandstats`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CmdStat {
    pub calls: u64,
    pub usec: u64,
    pub usec_per_call: f64,
}

/// `INFO commandstats`, by lower-case command name (`set`, `evalsha`,
/// `lock.acquire`; Redis 7.0 prints module commands as registered,
/// `LOCK.ACQUIRE`, Valkey lower-cases them).
pub fn commandstats(con: &mut Connection) -> Result<HashMap<String, CmdStat>> {
    let mut out = HashMap::new();
    for (name, value) in fields(con, "commandstats")? {
        let Some(cmd) = name.strip_prefix("cmdstat_") else {
            continue;
        };
        let mut stat = CmdStat::default();
        for kv in value.split(',') {
            match kv.split_once('=') {
                Some(("calls", v)) => stat.calls = v.parse()?,
                Some(("usec", v)) => stat.usec = v.parse()?,
                Some(("usec_per_call", v)) => stat.usec_per_call = v.parse()?,
                _ => {}
            }
        }
        out.insert(cmd.to_ascii_lowercase(), stat);
    }
    Ok(out)
}

/// The stats of one command (zero when it was not called).
pub fn cmdstat(con: &mut Connection, name: &str) -> Result<CmdStat> {
    Ok(commandstats(con)?
        .get(&name.to_ascii_lowercase())
        .copied()
        .unwrap_or_default())
}

/// Server-side µs per call of `name` since the last reset, computed from the
/// exact totals (`usec / calls`) rather than the rounded `usec_per_call`.
pub fn usec_per_call(con: &mut Connection, name: &str) -> Result<f64> {
    let s = cmdstat(con, name)?;
    if s.calls == 0 {
        return err(format!("no calls of {name} in INFO commandstats"));
    }
    Ok(s.usec as f64 / s.calls as f64)
}

/// `FLUSHALL SYNC` then `CONFIG RESETSTAT`: an empty keyspace and zeroed
/// command stats, before a measured round.
pub fn fresh_round(con: &mut Connection) -> Result<()> {
    redis::cmd("FLUSHALL").arg("SYNC").exec(con)?;
    reset_stats(con)
}

/// `CONFIG RESETSTAT`.
pub fn reset_stats(con: &mut Connection) -> Result<()> {
    redis::cmd("CONFIG").arg("RESETSTAT").exec(con)?;
    Ok(())
}

/// `MEMORY USAGE key`, in bytes.
pub fn memory_usage(con: &mut Connection, key: &str) -> Result<u64> {
    match redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .query::<Option<u64>>(con)?
    {
        Some(n) => Ok(n),
        None => err(format!("MEMORY USAGE {key}: no such key")),
    }
}

/// `used_memory` from `INFO memory`.
pub fn used_memory(con: &mut Connection) -> Result<u64> {
    match fields(con, "memory")?.get("used_memory") {
        Some(v) => Ok(v.parse()?),
        None => err("INFO memory has no used_memory"),
    }
}

/// The subcommand names (lower case, without the parent) of `name`, or
/// `None` when the server does not know the command.
pub fn command_info(con: &mut Connection, name: &str) -> Result<Option<Vec<String>>> {
    let reply: Vec<Value> = redis::cmd("COMMAND").arg("INFO").arg(name).query(con)?;
    let Some(Value::Array(entry)) = reply.into_iter().next() else {
        return Ok(None);
    };
    // Element 10 (Redis 7+) lists the subcommands, each an entry whose first
    // element is `parent|sub`.
    let mut subs = Vec::new();
    if let Some(Value::Array(list)) = entry.get(9) {
        for sub in list {
            if let Value::Array(fields) = sub
                && let Some(Value::BulkString(full)) = fields.first()
            {
                let full = String::from_utf8_lossy(full).to_ascii_lowercase();
                subs.push(full.rsplit('|').next().unwrap_or_default().to_string());
            }
        }
    }
    Ok(Some(subs))
}

/// CPU seconds the server's main thread has used (user + system), from
/// `INFO cpu` (`used_cpu_*_main_thread` where the server reports it, else
/// the whole process). Unlike command durations, this does not grow when the
/// server is preempted by other processes.
pub fn cpu_seconds(con: &mut Connection) -> Result<f64> {
    let f = fields(con, "cpu")?;
    let get = |k: &str| f.get(k).and_then(|v| v.parse::<f64>().ok());
    match (
        get("used_cpu_user_main_thread"),
        get("used_cpu_sys_main_thread"),
    ) {
        (Some(u), Some(s)) => Ok(u + s),
        _ => match (get("used_cpu_user"), get("used_cpu_sys")) {
            (Some(u), Some(s)) => Ok(u + s),
            _ => err("INFO cpu has no used_cpu_user/used_cpu_sys"),
        },
    }
}
