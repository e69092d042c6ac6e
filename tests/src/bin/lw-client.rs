//! `lw-client`: a minimal client for tests that need a separate OS process
//! holding a connection.
//!
//! ```text
//! lw-client --port P [--host H] [--cmd 'LOCK.ACQUIRE k o 1000']... [--stdin]
//!           [--hold] [--start-at UNIX_MS]
//! ```
//!
//! Connects to H:P (default host 127.0.0.1), then, with `--start-at`, sleeps
//! until that wall-clock instant (milliseconds since the Unix epoch), then
//! runs each `--cmd` in order on the one connection, then with `--stdin`
//! every line read from stdin until EOF (blank lines skipped), then with
//! `--hold` sleeps until killed. Command lines are split on whitespace (no
//! quoting). Each reply is printed on its own line, flushed at once, in the
//! form of `lockwarden_tests::render`: integers as-is, `(nil)`,
//! `(error) CODE message`, strings as their text, arrays as `[a b c]`.
//!
//! Exit codes: 0 done, 1 I/O error during a command (printed as
//! `(error) io: ...`), 2 bad usage or connection failure (on stderr).

use std::io::{BufRead, Write};
use std::process::exit;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::{Connection, ConnectionLike};

struct Args {
    host: String,
    port: u16,
    cmds: Vec<String>,
    stdin: bool,
    hold: bool,
    start_at: Option<u64>,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "lw-client: {msg}\nusage: lw-client --port P [--host H] [--cmd 'CMD ARGS']... [--stdin] [--hold] [--start-at UNIX_MS]"
    );
    exit(2)
}

fn parse_args() -> Args {
    let mut args = Args {
        host: "127.0.0.1".into(),
        port: 0,
        cmds: Vec::new(),
        stdin: false,
        hold: false,
        start_at: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| {
            it.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--port" => {
                args.port = value("--port")
                    .parse()
                    .unwrap_or_else(|_| usage("bad --port"))
            }
            "--host" => args.host = value("--host"),
            "--cmd" => args.cmds.push(value("--cmd")),
            "--start-at" => {
                args.start_at = Some(
                    value("--start-at")
                        .parse()
                        .unwrap_or_else(|_| usage("bad --start-at")),
                )
            }
            "--stdin" => args.stdin = true,
            "--hold" => args.hold = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    if args.port == 0 {
        usage("--port is required");
    }
    args
}

fn run(conn: &mut Connection, line: &str) {
    let mut words = line.split_whitespace();
    let Some(name) = words.next() else { return };
    let mut cmd = redis::cmd(name);
    for w in words {
        cmd.arg(w);
    }
    let mut out = std::io::stdout().lock();
    match conn.req_command(&cmd) {
        Ok(reply) => {
            let _ = writeln!(out, "{}", lockwarden_tests::render(&reply));
            let _ = out.flush();
        }
        Err(e) => {
            let text = e.to_string().replace(['\r', '\n'], " ");
            let _ = writeln!(out, "(error) io: {text}");
            let _ = out.flush();
            exit(1);
        }
    }
}

fn main() {
    let args = parse_args();
    let client = redis::Client::open(format!("redis://{}:{}/", args.host, args.port))
        .unwrap_or_else(|e| usage(&format!("bad address: {e}")));
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(10))
        .unwrap_or_else(|e| {
            eprintln!(
                "lw-client: cannot connect to {}:{}: {e}",
                args.host, args.port
            );
            exit(2)
        });
    if let Some(at_ms) = args.start_at {
        let at = UNIX_EPOCH + Duration::from_millis(at_ms);
        if let Ok(wait) = at.duration_since(SystemTime::now()) {
            std::thread::sleep(wait);
        }
    }
    for line in &args.cmds {
        run(&mut conn, line);
    }
    if args.stdin {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            run(&mut conn, &line);
        }
    }
    if args.hold {
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }
}
