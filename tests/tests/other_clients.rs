//! The module driven from other clients: redis-py (tests/python) and the
//! `redis-cli` / `valkey-cli` binary.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lockwarden_tests::*;

/// Runs `child` to completion within `timeout` (killed otherwise); returns
/// its status, stdout and stderr.
fn finish(mut child: Child, timeout: Duration, what: &str) -> (ExitStatus, String, String) {
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (out_t.join().unwrap(), err_t.join().unwrap());
            panic!("{what}: still running after {timeout:?}\nstdout:\n{o}\nstderr:\n{e}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, out_t.join().unwrap(), err_t.join().unwrap())
}

/// `<cli> -p <port> args...`; returns stdout (panics on a non-zero exit).
fn cli(server: &Server, args: &[&str]) -> String {
    let child = cli_command(server, args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", server.flavor().cli_bin()));
    let (status, out, err) = finish(
        child,
        TIMEOUT,
        &format!("{} {args:?}", server.flavor().cli_bin()),
    );
    assert!(
        status.success(),
        "{args:?}: {status}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out
}

fn cli_command(server: &Server, args: &[&str]) -> Command {
    let mut cmd = Command::new(server.flavor().cli_bin());
    cmd.arg("-p")
        .arg(server.port().to_string())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn script() -> PathBuf {
    workspace_root().join("tests/python/test_lockwarden.py")
}

for_each_flavor! {
    /// tests/python/test_lockwarden.py (redis-py) passes against a fresh
    /// server.
    fn python_redis_py(flavor: Flavor) {
        let server = Server::start(flavor);
        let child = Command::new("python3")
            .arg(script())
            .arg("--port")
            .arg(server.port().to_string())
            .env("LOCKWARDEN_PORT", server.port().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot run python3");
        let (status, out, err) = finish(child, Duration::from_secs(120), "python3 test_lockwarden.py");
        assert!(
            status.success(),
            "python3 {} exited with {status}\nstdout:\n{out}\nstderr:\n{err}",
            script().display()
        );
        assert!(out.contains(" passed, 0 failed"), "{out}");
        // The script cleaned up after itself.
        assert_eq!(server.cmd_text(&["DBSIZE"]), "0");
        assert_eq!(server.cmd_text(&["LOCK.LIST"]), "[0 []]");
    }

    /// redis-cli / valkey-cli: replies in raw (piped) and formatted form,
    /// errors, RESP3 maps, the documented LOCK.LIST example, WAIT from a
    /// cli process.
    fn cli_binary(flavor: Flavor) {
        let server = Server::start(flavor);
        // Piped output is raw: one line per element.
        let out = cli(&server, &["LOCK.ACQUIRE", "k", "cli", "10000"]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out:?}");
        let token: u64 = lines[0].parse().unwrap_or_else(|_| panic!("token: {out:?}"));
        assert_eq!(lines[1], "10000");
        assert_eq!(server.cmd_text(&["LOCK.INFO", "k"]).split(' ').take(4).collect::<Vec<_>>(),
            ["[owner", "cli", "token", &token.to_string()]);

        // Contended: nil.
        assert_eq!(cli(&server, &["--no-raw", "LOCK.ACQUIRE", "k", "other", "10000"]).trim_end(), "(nil)");
        assert_eq!(cli(&server, &["LOCK.ACQUIRE", "k", "other", "10000"]).trim(), "");
        // Same owner: same token.
        let out = cli(&server, &["--no-raw", "LOCK.ACQUIRE", "k", "cli", "20000"]);
        assert_eq!(out.trim_end(), format!("1) (integer) {token}\n2) (integer) 20000"));

        // Errors carry their code.
        let out = cli(&server, &["--no-raw", "LOCK.RELEASE", "k", "other"]);
        assert!(out.starts_with("(error) NOTOWNER"), "{out:?}");
        let out = cli(&server, &["LOCK.EXTEND", "nope", "cli", "1000"]);
        assert!(out.starts_with("NOTHELD"), "{out:?}");
        let out = cli(&server, &["--no-raw", "LOCK.ACQUIRE", "k2", "cli", "120000"]);
        assert!(out.starts_with("(error) TTLMAX"), "{out:?}");

        // LOCK.INFO: field/value pairs, a map under RESP3.
        let out = cli(&server, &["--no-raw", "LOCK.INFO", "k"]);
        assert!(out.contains(r#" 1) "owner""#) && out.contains(r#" 2) "cli""#), "{out}");
        assert!(out.contains(r#"19) "waiters""#), "{out}");
        let out = cli(&server, &["-3", "--no-raw", "LOCK.INFO", "k"]);
        assert!(out.contains(r#" 1# "owner" => "cli""#), "{out}");
        assert!(out.contains(&format!(r#" 2# "token" => (integer) {token}"#)), "{out}");
        assert!(out.contains(r#"10# "waiters" => (integer) 0"#), "{out}");
        assert_eq!(cli(&server, &["--no-raw", "LOCK.INFO", "free"]).trim_end(), "(nil)");

        // The example from the command reference.
        let out = cli(&server, &["--no-raw", "LOCK.LIST", "HELDMORE", "30000", "COUNT", "1000"]);
        assert_eq!(out.trim_end(), "1) \"0\"\n2) (empty array)");
        let out = cli(&server, &["--no-raw", "LOCK.LIST", "COUNT", "1000"]);
        assert!(out.starts_with("1) \"0\"\n2) 1) 1) \"k\"\n      2) \"cli\"\n"), "{out}");

        // WAIT from a cli process: answered on release.
        let waiter = cli_command(&server, &["LOCK.ACQUIRE", "k", "cli-waiter", "5000", "WAIT", "20000"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn cli");
        wait_until("the cli waiter is queued", TIMEOUT, || {
            server.cmd_text(&["INFO", "lockwarden"]).contains("lockwarden_waiters:1")
        });
        assert_eq!(cli(&server, &["LOCK.RELEASE", "k", "cli", "FENCE", &token.to_string()]).trim(), "1");
        let (status, out, err) = finish(waiter, TIMEOUT, "cli waiter");
        assert!(status.success(), "{status}: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out:?}");
        assert!(lines[0].parse::<u64>().unwrap() > token, "{out:?}");
        assert_eq!(lines[1], "5000");
        assert!(server.cmd_text(&["LOCK.INFO", "k"]).starts_with("[owner cli-waiter "));

        // INFO section through the cli.
        let out = cli(&server, &["INFO", "lockwarden"]);
        assert!(out.contains("lockwarden_handoffs:1"), "{out}");
    }

    /// `redis-cli -x LOCK.POLICY LOAD ... WASM < policy.wasm` works as
    /// documented (when this build has LOCK.POLICY).
    fn cli_policy_load_from_stdin(flavor: Flavor) {
        let server = Server::start(flavor);
        let info = server.cmd_text(&["COMMAND", "INFO", "LOCK.POLICY"]);
        if info == "[(nil)]" || info == "[]" {
            eprintln!("LOCK.POLICY is not available in this build: not tested");
            return;
        }
        let path = policy_path("key-pattern");
        let wasm = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (build it with `make policies`)", path.display()));
        let child = cli_command(
            &server,
            &["-x", "LOCK.POLICY", "LOAD", "kp", "CONFIG", r#"{"allow":["orders:*"]}"#, "WASM"],
        )
        .stdin(wasm)
        .spawn()
        .expect("spawn cli");
        let (status, out, err) = finish(child, TIMEOUT, "cli -x LOCK.POLICY LOAD");
        assert!(status.success(), "{status}: {err}");
        assert_eq!(out.trim(), "OK");
        assert!(server.cmd_text(&["LOCK.POLICY", "LIST"]).contains("kp"));
        let denied = cli(&server, &["LOCK.ACQUIRE", "users:1", "me", "1000"]);
        assert!(denied.starts_with("DENIED policy kp"), "{denied:?}");
        let granted = cli(&server, &["LOCK.ACQUIRE", "orders:1", "me", "1000"]);
        assert_eq!(granted.lines().nth(1), Some("1000"), "{granted:?}");
    }
}
