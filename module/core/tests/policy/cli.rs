//! The `lockwarden-policy` tool.

use crate::guest::*;
use std::path::PathBuf;
use std::process::Command;

/// Writes `wasm` to a file named `name` for the tool to read.
fn file(name: &str, wasm: &[u8]) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, wasm).unwrap();
    path
}

/// Runs the tool; returns (exit code, stdout, stderr).
fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_lockwarden-policy"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A policy that answers `Clamp(first settings byte + key length)`, and
/// traps on keys starting with `t`.
fn echo() -> PathBuf {
    let mut guest = Guest::allow();
    guest.extra = "(global $first (mut i32) (i32.const 0))".into();
    guest.configure = format!(
        "(if (local.get $len) (then (global.set $first (i32.load8_u (i32.const {INPUT}))))) {}",
        guest.configure
    );
    guest.evaluate = format!(
        "{} {}",
        if_key_starts_with(b't', "(unreachable)"),
        clamp_to(&format!(
            "(i32.add (global.get $first) (i32.load8_u (i32.const {})))",
            INPUT + 1
        ))
    );
    file("echo.wasm", &guest.wasm())
}

#[test]
fn check_prints_what_was_loaded() {
    let wasm = Guest::allow().wasm();
    let path = file("allow-policy.wasm", &wasm);
    let (code, out, err) = run(&["check", path.to_str().unwrap()]);
    assert_eq!((code, err.as_str()), (0, ""));
    let sha = lockwarden_core::policy::PolicyRunner::from_bytes("x", wasm.clone(), b"", LIMITS)
        .unwrap()
        .policy()
        .sha256_hex();
    assert_eq!(
        out,
        format!(
            "policy:   allow-policy\nsize:     {} bytes\nsha256:   {sha}\nabi:      version 1 (ok)\nsettings: accepted\n",
            wasm.len()
        )
    );
}

#[test]
fn check_takes_the_servers_limits() {
    // Configuring costs some 5000 fuel.
    let path = file(
        "costly.wasm",
        &Guest::allow().before_configure(&spin(1000)).wasm(),
    );
    let (code, _, err) = run(&["check", path.to_str().unwrap(), "--fuel", "1000"]);
    assert_eq!(code, 1);
    assert!(err.contains("fuel exhausted (limit 1000)"), "{err}");
    let (code, _, err) = run(&[
        "check",
        path.to_str().unwrap(),
        "--fuel",
        "100000",
        "--memory-kb",
        "256",
    ]);
    assert_eq!((code, err.as_str()), (0, ""));
}

#[test]
fn check_reports_load_errors() {
    let path = file("garbage.wasm", b"not wasm at all");
    let (code, out, err) = run(&["check", path.to_str().unwrap(), "--config", "{}"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(
        err.starts_with("BADPOLICY not a valid WebAssembly module"),
        "{err}"
    );

    // Refused by its size before it is read (a sparse file).
    let big = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("big.wasm");
    std::fs::File::create(&big)
        .unwrap()
        .set_len((4 << 20) + 1)
        .unwrap();
    let (code, _, err) = run(&["check", big.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        err.ends_with("big.wasm is 4194305 bytes; the maximum module size is 4194304\n"),
        "{err}"
    );

    let (code, _, err) = run(&["check", "/nonexistent/p.wasm"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("BADPOLICY cannot read /nonexistent/p.wasm"),
        "{err}"
    );
}

#[test]
fn eval_prints_the_decision() {
    let deny = file(
        "deny.wasm",
        &Guest::deny("keys under orders: are frozen").wasm(),
    );
    let allow = file("allow.wasm", &Guest::allow().wasm());
    let echo = echo();
    let eval = |path: &PathBuf, rest: &[&str]| {
        let mut args = vec!["eval", path.to_str().unwrap()];
        args.extend_from_slice(rest);
        run(&args)
    };
    assert_eq!(
        eval(&deny, &["acquire", "orders:1", "me", "1000"]),
        (
            0,
            "deny: keys under orders: are frozen\n".into(),
            String::new()
        )
    );
    assert_eq!(
        eval(
            &allow,
            &["release", "k", "me", "0", "--token", "7", "--held-ms", "5"]
        ),
        (0, "allow\n".into(), String::new())
    );
    // Settings reach configure, the request reaches evaluate: 'A' (65) + 3.
    assert_eq!(
        eval(
            &echo,
            &[
                "extend", "abc", "me", "1000", "--config", "A", "--now", "5", "--user", "ops"
            ]
        ),
        (0, "clamp: 68\n".into(), String::new())
    );
    assert_eq!(
        eval(&echo, &["release", "abc", "me", "0"]),
        (
            0,
            "clamp: 3 (the server ignores clamps of releases)\n".into(),
            String::new()
        )
    );
    let (code, out, err) = eval(
        &echo,
        &[
            "acquire", "trap", "me", "1000", "--holder", "other", "--fuel", "50000",
        ],
    );
    assert_eq!((code, out.as_str()), (1, ""));
    assert_eq!(
        err,
        "POLICY policy echo failed: trap: wasm `unreachable` instruction executed\n"
    );
    let (code, _, err) = eval(&echo, &["acquire", "k", "me", "1000", "--fuel", "1"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "BADPOLICY instantiation failed: fuel exhausted (limit 1)\n"
    );
    let (code, _, err) = eval(&echo, &["acquire", "k", "me", "1000", "--memory-kb", "32"]);
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "BADPOLICY instantiation failed: memory limit of 32 KiB exceeded\n"
    );
}

#[test]
fn usage_errors_exit_2() {
    let allow = file("usage.wasm", &Guest::allow().wasm());
    let allow = allow.to_str().unwrap();
    for (args, message) in [
        (&[][..], "missing command"),
        (&["frobnicate"][..], "unknown command 'frobnicate'"),
        (&["check"][..], "expected 1 arguments (<file.wasm>), got 0"),
        (
            &["check", allow, "--waiters", "1"][..],
            "unknown option --waiters",
        ),
        (
            &["eval", allow, "acquire", "k", "me"][..],
            "expected 5 arguments",
        ),
        (
            &["eval", allow, "grab", "k", "me", "1"][..],
            "unknown operation 'grab'",
        ),
        (
            &["eval", allow, "acquire", "k", "me", "soon"][..],
            "<ttl-ms>: 'soon' is not a valid number",
        ),
        (
            &["eval", allow, "acquire", "k", "me", "1", "--token", "5"][..],
            "--token describes the holder",
        ),
        (
            &[
                "eval",
                allow,
                "extend",
                "k",
                "me",
                "1",
                "--extensions",
                "99999999999",
            ][..],
            "--extensions: '99999999999' is not a valid number",
        ),
        (
            &["eval", allow, "acquire", "k", "me", "1", "--user"][..],
            "--user needs a value",
        ),
        (
            &[
                "eval", allow, "acquire", "k", "me", "1", "--user", "a", "--user", "b",
            ][..],
            "--user given twice",
        ),
    ] {
        let (code, out, err) = run(args);
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}");
        assert!(
            err.starts_with(&format!("lockwarden-policy: {message}")),
            "{args:?}: {err}"
        );
        assert!(err.contains("usage:"), "{err}");
    }
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("usage:"));
}
