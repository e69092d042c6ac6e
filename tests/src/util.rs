//! Small helpers: ports, polling, reply rendering, INFO parsing.

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::Value;

/// Ports handed out by this process. A port is never handed out twice, so
/// tests running in parallel threads cannot pick the same one between the
/// probe and the server's bind.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1: binds port 0, reads the port, closes.
///
/// Never returns the same port twice within one process. Another process can
/// still take the port before the server binds it; [`crate::ServerBuilder::start`]
/// retries on a new port when the server reports "Address already in use".
pub fn free_port() -> u16 {
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        drop(listener);
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// Calls `f` until it returns `Some`, or `timeout` passes (then `None`).
/// Polls every 10 ms at first, backing off to every 100 ms. `f` is always
/// called at least once.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 3 / 2).min(Duration::from_millis(100));
    }
}

/// Wall-clock unix milliseconds (the clock the servers read too).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64
}

/// Polls `pred` until it holds; panics with `what` if `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    if poll(timeout, || pred().then_some(())).is_none() {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Renders a reply in the stable one-line text form that `lw-client` prints
/// and [`crate::Server::cmd_text`] returns:
///
/// * integers as-is (`1`), doubles with Rust's `{}` formatting;
/// * nil as `(nil)`;
/// * errors as `(error) CODE message` (e.g. `(error) ERR unknown command ...`);
/// * simple and bulk strings as their text (`OK`, `PONG`, `v`), non-UTF-8
///   bytes replaced by U+FFFD, and `\r` / `\n` escaped as `\\r` / `\\n` so a
///   reply is always one line;
/// * arrays, sets and pushes as `[a b c]` (nested arrays nest: `[a [b c]]`),
///   maps as `[k1 v1 k2 v2]`;
/// * booleans (RESP3) as `true` / `false`.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    render_into(v, &mut out);
    out
}

fn render_into(v: &Value, out: &mut String) {
    match v {
        Value::Nil => out.push_str("(nil)"),
        Value::Int(i) => out.push_str(&i.to_string()),
        Value::BulkString(b) => push_escaped(&String::from_utf8_lossy(b), out),
        Value::SimpleString(s) => push_escaped(s, out),
        Value::Okay => out.push_str("OK"),
        Value::Array(items) | Value::Set(items) | Value::Push { data: items, .. } => {
            render_list(items.iter(), out)
        }
        Value::Map(pairs) => render_list(pairs.iter().flat_map(|(k, v)| [k, v]), out),
        Value::Attribute { data, .. } => render_into(data, out),
        Value::Double(d) => out.push_str(&d.to_string()),
        Value::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::VerbatimString { text, .. } => push_escaped(text, out),
        // `Vec<u8>` or `BigInt` depending on the `num-bigint` feature.
        Value::BigNumber(n) => push_escaped(&format!("{n:?}"), out),
        Value::ServerError(e) => {
            out.push_str("(error) ");
            out.push_str(e.code());
            if let Some(detail) = e.details() {
                out.push(' ');
                push_escaped(detail, out);
            }
        }
        // `Value` is non-exhaustive; fall back to its debug form.
        #[allow(unreachable_patterns)]
        other => push_escaped(&format!("{other:?}"), out),
    }
}

fn render_list<'a>(items: impl Iterator<Item = &'a Value>, out: &mut String) {
    out.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(' ');
        }
        render_into(item, out);
    }
    out.push(']');
}

fn push_escaped(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

/// Parses `INFO` output into `field -> value` (section headers and blank
/// lines skipped).
pub fn parse_info(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The text of a string-ish reply (bulk, simple, verbatim), if it is one.
pub(crate) fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Okay => Some("OK".into()),
        _ => None,
    }
}

/// The integer of an integer reply, or of a string reply holding one.
pub(crate) fn value_int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => value_text(other)?.parse().ok(),
    }
}

/// The last `n` lines of `text`.
pub(crate) fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_forms() {
        assert_eq!(render(&Value::Int(-3)), "-3");
        assert_eq!(render(&Value::Nil), "(nil)");
        assert_eq!(render(&Value::Okay), "OK");
        assert_eq!(render(&Value::BulkString(b"a\r\nb".to_vec())), "a\\r\\nb");
        assert_eq!(
            render(&Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::BulkString(b"x".to_vec()), Value::Nil]),
                Value::Array(vec![]),
            ])),
            "[1 [x (nil)] []]"
        );
    }

    #[test]
    fn ports_are_unique() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn info_parsing() {
        let info = parse_info("# Replication\r\nrole:master\r\nconnected_slaves:1\r\n\r\n");
        assert_eq!(info["role"], "master");
        assert_eq!(info["connected_slaves"], "1");
    }
}
