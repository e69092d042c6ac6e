//! Hostile and broken policy modules through real servers: each is refused
//! at load with a clear BADPOLICY, or fails its evaluations with a POLICY
//! error while the server keeps answering, other locks stay as they were
//! and other policies keep deciding.

mod policy_support;

use lockwarden_sdk::abi::Decision;
use lockwarden_tests::*;
use policy_support::*;

/// A server with two locks taken before any policy (`other:1` and
/// `h:held`, both held by `me`), a hostile policy `hostile` for keys `h:*`
/// and a good policy `good` after it that clamps every TTL to 4000 ms.
struct Scene {
    server: Server,
    other: (String, i64, i64),
    held: (String, i64, i64),
}

impl Scene {
    fn start(flavor: Flavor, hostile: &[u8]) -> Scene {
        Scene::start_with(scene_server(flavor), hostile)
    }

    fn start_with(server: Server, hostile: &[u8]) -> Scene {
        acquire_ok(&server, "other:1", "me", 600_000);
        acquire_ok(&server, "h:held", "me", 600_000);
        let other = lock_state(&server, "other:1").expect("other:1 held");
        let held = lock_state(&server, "h:held").expect("h:held held");
        load_ok(&server, "hostile", &["KEYS", "h:*"], hostile);
        load_ok(&server, "good", &[], &Guest::clamp(4000).wasm());
        Scene {
            server,
            other,
            held,
        }
    }

    /// Everything not touched by the hostile policy is as it was: the
    /// server answers, both locks are unchanged, the good policy decides.
    #[track_caller]
    fn assert_unharmed(&self, round: u32) {
        let server = &self.server;
        assert_alive(server);
        assert_eq!(lock_state(server, "other:1").as_ref(), Some(&self.other));
        assert_eq!(lock_state(server, "h:held").as_ref(), Some(&self.held));
        assert!(
            lock_field(server, "h:held", "ttl") > 500_000,
            "lease untouched"
        );
        let key = format!("g:{round}");
        assert_eq!(acquire_ok(server, &key, "me", 10_000).1, 4000);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", &key, "me"]), "1");
    }

    /// Every lock command on an `h:` key fails with `POLICY policy hostile
    /// failed: <cause>` (checked by `check`), twice in a row (the instance
    /// is rebuilt in between), and nothing else is harmed. Then under
    /// `policy-failure allow` the commands go through, and UNLOAD removes
    /// the policy.
    fn assert_fails_cleanly(&self, check: impl Fn(&str)) {
        let server = &self.server;
        let counts_before = listed(server, "hostile").counts();
        for round in 1..=2u32 {
            let failures_before = lw_stat(server, "policy_failures");
            let replies = [
                render(&acquire(server, "h:1", "me", 10_000)),
                server.cmd_text(&["LOCK.EXTEND", "h:held", "me", "10000"]),
                server.cmd_text(&["LOCK.RELEASE", "h:held", "me"]),
            ];
            assert_eq!(lw_stat(server, "policy_failures"), failures_before + 3);
            // The dry run fails the same way (its counting is checked by
            // `eval_of_a_failing_policy_counts_nothing`).
            let eval = server.cmd_text(&[
                "LOCK.POLICY",
                "EVAL",
                "hostile",
                "ACQUIRE",
                "h:1",
                "me",
                "1",
            ]);
            for reply in replies.iter().chain([&eval]) {
                let cause = reply
                    .strip_prefix("(error) POLICY policy hostile failed: ")
                    .unwrap_or_else(|| {
                        panic!("round {round}: expected a POLICY error, got {reply}")
                    });
                check(cause);
            }
            assert!(!exists(server, "h:1"), "round {round}: nothing acquired");
            self.assert_unharmed(round);
            let p = listed(server, "hostile");
            let n = i64::from(round) * 3;
            let (e, d, f) = counts_before;
            assert_eq!(
                p.counts(),
                (e + n, d, f + n),
                "round {round}: EVAL is not counted"
            );
            assert_eq!(
                p.text("broken"),
                "(nil)",
                "round {round}: the instance was rebuilt"
            );
        }
        assert!(
            server.log().contains("POLICY policy hostile failed: "),
            "failures are logged: {}",
            server.log_tail(20)
        );

        // Fail open: the failing policy is skipped, the good one decides.
        config_set(server, "lockwarden.policy-failure", "allow");
        assert_eq!(acquire_ok(server, "h:1", "me", 10_000).1, 4000);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "h:1", "me"]), "1");
        config_set(server, "lockwarden.policy-failure", "deny");

        assert_eq!(server.cmd_text(&["LOCK.POLICY", "UNLOAD", "hostile"]), "1");
        assert_eq!(
            int(&server.cmd(&["LOCK.EXTEND", "h:held", "me", "10000"])),
            4000
        );
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "h:held", "me"]), "1");
        assert_alive(server);
    }
}

/// A server for a [`Scene`]: leases of up to 10 minutes are allowed, so
/// that the locks taken first outlive the test on a slow machine.
fn scene_server(flavor: Flavor) -> Server {
    Server::builder(flavor)
        .module_arg("max-ttl-ms", "600000")
        .start()
}

/// A guest whose evaluation runs `body` (which must end with an i64).
fn evaluating(body: &str) -> Vec<u8> {
    let mut guest = Guest::allow();
    guest.evaluate = body.into();
    guest.wasm()
}

/// Loading `wasm` (with `options`) is refused with a one-line BADPOLICY
/// containing `expected`; nothing else changes.
#[track_caller]
fn assert_refused(scene: &Scene, options: &[&str], wasm: &[u8], expected: &str) {
    let server = &scene.server;
    let before = specs(server);
    let reply = load(server, "bad", options, wasm);
    assert!(
        reply.starts_with("(error) BADPOLICY ") && reply.contains(expected),
        "expected BADPOLICY ... {expected}, got {reply}"
    );
    assert_eq!(specs(server), before, "nothing loaded");
    scene.assert_unharmed(0);
}

for_each_flavor! {
    /// An endless loop runs out of fuel.
    fn endless_loop_exhausts_fuel(flavor: Flavor) {
        let scene = Scene::start(flavor, &evaluating("(loop $l (br $l)) (i64.const 0)"));
        scene.assert_fails_cleanly(|cause| assert_eq!(cause, "fuel exhausted (limit 1000000)"));
    }

    /// Growing memory forever hits lockwarden.policy-memory-kb.
    fn memory_growth_hits_the_limit(flavor: Flavor) {
        let scene = Scene::start(
            flavor,
            &evaluating("(loop $l (drop (memory.grow (i32.const 1))) (br $l)) (i64.const 0)"),
        );
        scene.assert_fails_cleanly(|cause| assert_eq!(cause, "memory limit of 4096 KiB exceeded"));

        // The same with a lower limit, and a guest that traps on the refused
        // growth as a Rust allocator does.
        let scene = Scene::start(
            flavor,
            &evaluating(
                "(if (i32.lt_s (memory.grow (i32.const 16)) (i32.const 0)) (then unreachable)) (i64.const 0)",
            ),
        );
        config_set(&scene.server, "lockwarden.policy-memory-kb", "512");
        scene.assert_fails_cleanly(|cause| assert_eq!(cause, "memory limit of 512 KiB exceeded"));
    }

    /// `unreachable`, an out-of-bounds access and deep recursion are traps.
    fn traps_fail_cleanly(flavor: Flavor) {
        let scene = Scene::start(flavor, &evaluating("(unreachable)"));
        scene.assert_fails_cleanly(|cause| {
            assert_eq!(cause, "trap: wasm `unreachable` instruction executed")
        });

        let scene = Scene::start(
            flavor,
            &evaluating("(drop (i32.load (i32.const 0x7ffffff0))) (i64.const 0)"),
        );
        scene.assert_fails_cleanly(|cause| assert_eq!(cause, "trap: out of bounds memory access"));

        let mut deep = Guest::allow();
        deep.extra =
            "(func $deep (param i64) (result i64) (call $deep (i64.add (local.get 0) (i64.const 1))))"
                .into();
        deep.evaluate = "(call $deep (i64.const 0))".into();
        let scene = Scene::start(flavor, &deep.wasm());
        scene.assert_fails_cleanly(|cause| assert_eq!(cause, "trap: call stack exhausted"));
    }

    /// Decisions that do not decode, or lie outside memory, are malformed.
    fn malformed_decisions(flavor: Flavor) {
        let cases: [&[u8]; 4] = [
            &[0x07],             // no such variant
            &[0x00, 0x00],       // trailing byte
            &[0x01, 0x05, b'a'], // truncated reason
            &[0x01, 0x01, 0xff], // reason not UTF-8
        ];
        for bytes in cases {
            let scene = Scene::start(flavor, &Guest::allow().returning_bytes(bytes).wasm());
            scene.assert_fails_cleanly(|cause| {
                assert!(cause.starts_with("malformed decision: "), "{bytes:?}: {cause}")
            });
        }
        let scene = Scene::start(flavor, &evaluating(&format!("(i64.const {})", pack(0xffff_0000, 16))));
        scene.assert_fails_cleanly(|cause| {
            assert_eq!(
                cause,
                "malformed decision: output at 0xffff0000 (16 bytes) is outside the 65536-byte memory"
            )
        });
    }

    /// Policy-supplied text cannot break the reply: control characters
    /// become spaces and long reasons are cut at 256 characters. A clamp to
    /// 0 is below min-ttl-ms.
    fn denial_text_is_one_bounded_line(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ok(&server, "crlf", &["KEYS", "c:*"], &Guest::deny("line1\r\n-ERR injected\tx").wasm());
        load_ok(&server, "long", &["KEYS", "l:*"], &Guest::deny(&"x".repeat(1000)).wasm());
        load_ok(&server, "zero", &["KEYS", "z:*"], &Guest::clamp(0).wasm());
        load_ok(&server, "huge", &["KEYS", "u:*"], &Guest::answering(&Decision::Clamp(u64::MAX)).wasm());
        assert_eq!(
            render(&acquire(&server, "c:1", "me", 1000)),
            "(error) DENIED policy crlf: line1  -ERR injected x"
        );
        assert_eq!(
            render(&acquire(&server, "l:1", "me", 1000)),
            format!("(error) DENIED policy long: {}...", "x".repeat(256))
        );
        assert_eq!(
            render(&acquire(&server, "z:1", "me", 1000)),
            "(error) TTLMIN ttl 0 ms is below lockwarden.min-ttl-ms 1"
        );
        assert_eq!(acquire_ok(&server, "u:1", "me", 1000).1, 1000);
        // EVAL shows the reason as the policy gave it, on one line.
        let text = server.cmd_text(&["LOCK.POLICY", "EVAL", "crlf", "ACQUIRE", "c:1", "me", "1"]);
        assert!(text.starts_with("deny line1"), "{text}");
        // The connection is still in sync.
        assert_alive(&server);
        assert!(!exists(&server, "c:1") && !exists(&server, "l:1") && !exists(&server, "z:1"));
    }

    /// A policy that traps only sometimes fails those commands; its
    /// instance is rebuilt fresh and works again afterwards.
    fn sometimes_trapping_policy_is_rebuilt(flavor: Flavor) {
        let server = Server::start(flavor);
        // Clamp(n), n = evaluations since instantiation; traps on keys `t...`.
        load_ok(&server, "counter", &[], &Guest::counter().wasm());
        assert_eq!(acquire_ok(&server, "a:1", "me", 10_000).1, 1);
        assert_eq!(acquire_ok(&server, "a:2", "me", 10_000).1, 2);
        assert_eq!(
            render(&acquire(&server, "t:1", "me", 10_000)),
            "(error) POLICY policy counter failed: trap: wasm `unreachable` instruction executed"
        );
        // A fresh instance: the count starts again.
        assert_eq!(acquire_ok(&server, "a:3", "me", 10_000).1, 1);
        assert_eq!(acquire_ok(&server, "a:4", "me", 10_000).1, 2);
        let p = listed(&server, "counter");
        assert_eq!(p.counts(), (5, 0, 1));
        assert_eq!(p.text("broken"), "(nil)");
        assert_eq!(lw_stat(&server, "policy_failures"), 1);
        assert_alive(&server);
    }

    /// Lowering lockwarden.policy-fuel makes a moderately expensive policy
    /// fail; raising it again makes it work.
    fn lowered_fuel_fails_expensive_policies(flavor: Flavor) {
        let server = scene_server(flavor);
        // 20000 iterations: well over 50000 fuel, well under 1000000.
        let scene = Scene::start_with(server, &Guest::busy(20_000).wasm());
        let server = &scene.server;
        assert_eq!(acquire_ok(server, "h:1", "me", 10_000).1, 4000);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "h:1", "me"]), "1");
        config_set(server, "lockwarden.policy-fuel", "50000");
        scene.assert_fails_cleanly(|cause| assert_eq!(cause, "fuel exhausted (limit 50000)"));

        // An example policy: owner-format costs about 85k fuel per
        // evaluation at the default pattern.
        let server = Server::start(flavor);
        load_example(&server, "owners", "owner-format", "*", "{}");
        let owner = "web-7.prod:4121:9f1c2a7be0";
        acquire_ok(&server, "k", owner, 10_000);
        config_set(&server, "lockwarden.policy-fuel", "20000");
        assert_eq!(
            render(&acquire(&server, "k2", owner, 10_000)),
            "(error) POLICY policy owners failed: fuel exhausted (limit 20000)"
        );
        assert!(!exists(&server, "k2"));
        assert_alive(&server);
        // Configuring owner-format (compiling its regex) also costs more than
        // 20000 fuel, so the rebuild after the failure failed: the policy is
        // reported broken and fails every command (fail closed) while the
        // fuel stays too low for a rebuild.
        let broken = listed(&server, "owners").text("broken");
        assert!(broken.starts_with("rebuild failed: "), "{broken}");
        let reply = render(&acquire(&server, "k2", owner, 10_000));
        assert!(
            reply.starts_with(
                "(error) POLICY policy owners failed: instance unavailable (its rebuild is retried every second): rebuild failed: "
            ),
            "{reply}"
        );
        assert!(server.cmd_text(&["LOCK.RELEASE", "k", owner]).starts_with("(error) POLICY"));
        // Once the fuel is raised, the next retry of the rebuild repairs it.
        config_set(&server, "lockwarden.policy-fuel", "1000000");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        acquire_ok(&server, "k2", owner, 10_000);
        assert_eq!(listed(&server, "owners").text("broken"), "(nil)");
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "k2", owner]), "1");
        config_set(&server, "lockwarden.policy-fuel", "20000");
        assert_eq!(render(&acquire(&server, "k2", owner, 10_000)), "(error) POLICY policy owners failed: fuel exhausted (limit 20000)");
        config_set(&server, "lockwarden.policy-fuel", "1000000");
        // Unloading and loading it again repairs it (REPLACE is checked by
        // `replacing_a_broken_policy_repairs_it`).
        assert_eq!(server.cmd_text(&["LOCK.POLICY", "UNLOAD", "owners"]), "1");
        load_example(&server, "owners", "owner-format", "*", "{}");
        assert_eq!(listed(&server, "owners").text("broken"), "(nil)");
        acquire_ok(&server, "k2", owner, 10_000);
        assert_error(&acquire(&server, "k3", "bad", 10_000), "DENIED policy owners: owner 'bad'");
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "k", owner]), "1");
    }

    /// A policy whose instance could not be rebuilt is broken until it is
    /// replaced: `LOAD ... REPLACE` with the same module and settings (what
    /// an operator re-runs) must repair it, as must a REPLACE with other
    /// settings.
    fn replacing_a_broken_policy_repairs_it(flavor: Flavor) {
        let server = Server::start(flavor);
        // Configuring costs some 40000 fuel; evaluating traps on keys `t...`.
        let wasm = Guest::counter().before_configure(&spin(5000)).wasm();
        load_ok(&server, "fragile", &["KEYS", "*", "CONFIG", "{}"], &wasm);
        assert_eq!(acquire_ok(&server, "a:1", "me", 10_000).1, 1);
        config_set(&server, "lockwarden.policy-fuel", "10000");
        assert_error(&acquire(&server, "t:1", "me", 10_000), "POLICY policy fragile failed: trap: ");
        let broken = listed(&server, "fragile").text("broken");
        assert_eq!(broken, "rebuild failed: lockwarden_configure failed: fuel exhausted (limit 10000)");
        assert_eq!(
            render(&acquire(&server, "a:2", "me", 10_000)),
            format!("(error) POLICY policy fragile failed: instance unavailable (its rebuild is retried every second): {broken}")
        );
        config_set(&server, "lockwarden.policy-fuel", "1000000");
        assert_alive(&server);

        // The same LOAD again, with REPLACE.
        load_ok(&server, "fragile", &["KEYS", "*", "CONFIG", "{}", "REPLACE"], &wasm);
        assert_eq!(
            listed(&server, "fragile").text("broken"),
            "(nil)",
            "LOAD ... REPLACE answered OK but left the policy broken"
        );
        assert_eq!(acquire_ok(&server, "a:3", "me", 10_000).1, 1, "a fresh instance");
    }

    /// REPLACE with other settings also repairs a broken policy.
    fn replacing_a_broken_policy_with_new_settings_repairs_it(flavor: Flavor) {
        let server = Server::start(flavor);
        let wasm = Guest::counter().before_configure(&spin(5000)).wasm();
        load_ok(&server, "fragile", &["CONFIG", "{}"], &wasm);
        config_set(&server, "lockwarden.policy-fuel", "10000");
        assert_error(&acquire(&server, "t:1", "me", 10_000), "POLICY policy fragile failed: trap: ");
        assert!(listed(&server, "fragile").text("broken").starts_with("rebuild failed: "));
        config_set(&server, "lockwarden.policy-fuel", "1000000");
        load_ok(&server, "fragile", &["CONFIG", "{\"v\":2}", "REPLACE"], &wasm);
        assert_eq!(listed(&server, "fragile").text("broken"), "(nil)");
        assert_eq!(acquire_ok(&server, "a:1", "me", 10_000).1, 1);
    }

    /// Modules above lockwarden.policy-max-module-kb are refused; the limit
    /// does not affect policies already loaded.
    fn oversized_module_is_refused(flavor: Flavor) {
        let scene = Scene::start(flavor, &Guest::allow().wasm());
        let server = &scene.server;
        load_example(server, "ttl", "max-ttl", "big:*", r#"{"default_ms":5000}"#);
        config_set(server, "lockwarden.policy-max-module-kb", "16");
        let mut big = Guest::allow();
        big.memory = r#"(memory (export "memory") 2)"#.into();
        big.extra = format!(r#"(data (i32.const 0x10000) "{}")"#, "x".repeat(20_000));
        let wasm = big.wasm();
        assert!(wasm.len() > 16 * 1024);
        assert_refused(
            &scene,
            &[],
            &wasm,
            &format!("BADPOLICY module is {} bytes; the maximum is 16384", wasm.len()),
        );
        assert_refused(&scene, &["CONFIG", r#"{"default_ms":1}"#], &example("max-ttl"), "the maximum is 16384");
        // Small modules still load; the big policy loaded earlier still works.
        load_ok(server, "small", &["KEYS", "s:*"], &Guest::deny("small").wasm());
        assert_error(&acquire(server, "s:1", "me", 1000), "DENIED policy small: small");
        assert_eq!(acquire_ok(server, "big:1", "me", 10_000).1, 4000);
        assert_eq!(acquire_ok(server, "big:2", "me", 3000).1, 3000);
        config_set(server, "lockwarden.policy-max-module-kb", "4096");
        load_ok(server, "bigger", &["KEYS", "nothing"], &wasm);
        scene.assert_unharmed(1);
    }

    /// A module with any import is refused, naming the imports.
    fn imports_are_refused(flavor: Flavor) {
        let scene = Scene::start(flavor, &Guest::allow().wasm());
        let mut guest = Guest::allow();
        guest.imports = r#"(import "env" "now" (func (result i64)))"#.into();
        assert_refused(
            &scene,
            &[],
            &guest.wasm(),
            "BADPOLICY policies may not import anything; this module imports env::now (function)",
        );
        guest.imports = r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))
            (import "env" "limit" (global i32))"#
            .into();
        assert_refused(
            &scene,
            &[],
            &guest.wasm(),
            "this module imports wasi_snapshot_preview1::fd_write (function), env::limit (global)",
        );
    }

    /// Bytes that are not a Wasm module are refused.
    fn garbage_is_refused(flavor: Flavor) {
        let scene = Scene::start(flavor, &Guest::allow().wasm());
        let truncated = example("max-ttl")[..1000].to_vec();
        let garbage: [&[u8]; 5] = [b"hello, world", b"", b"\0asm\x01\0\0\0\xff\xff", &[0u8; 100], &truncated];
        for bytes in garbage {
            assert_refused(&scene, &[], bytes, "BADPOLICY not a valid WebAssembly module: ");
        }
        // The text format is not accepted either.
        assert_refused(&scene, &[], Guest::allow().wat().as_bytes(), "not a valid WebAssembly module");
    }

    /// Another ABI version, missing or ill-typed exports, and start-up code
    /// that misbehaves are refused with the reason.
    fn bad_abi_and_startup_are_refused(flavor: Flavor) {
        let scene = Scene::start(flavor, &Guest::allow().wasm());
        let mut guest = Guest::allow();
        guest.version = "(i32.const 2)".into();
        assert_refused(&scene, &[], &guest.wasm(), "BADPOLICY policy speaks ABI version 2; this server supports 1");

        let text = Guest::allow().wat().replace(r#"(export "lockwarden_evaluate")"#, r#"(export "evaluate")"#);
        let wasm = wat::parse_str(text).expect("wat");
        assert_refused(&scene, &[], &wasm, "missing export `lockwarden_evaluate` (a function (i32) -> i64)");

        let mut guest = Guest::allow();
        guest.extra = "(func $start (loop $l (br $l))) (start $start)".into();
        assert_refused(&scene, &[], &guest.wasm(), "instantiation failed: fuel exhausted (limit 1000000)");

        let mut guest = Guest::allow();
        guest.memory = r#"(memory (export "memory") 100)"#.into();
        assert_refused(&scene, &[], &guest.wasm(), "instantiation failed: memory limit of 4096 KiB exceeded");

        let mut guest = Guest::allow();
        guest.extra = r#"(func (export "lockwarden_request_fields") (param i32) (result i32) (local.get 0))"#.into();
        assert_refused(&scene, &[], &guest.wasm(), "export `lockwarden_request_fields` must be a function () -> i32");

        let mut guest = Guest::allow();
        guest.configure = "(loop $l (br $l)) (i64.const 0)".into();
        assert_refused(&scene, &[], &guest.wasm(), "lockwarden_configure failed: fuel exhausted (limit 1000000)");

        let mut guest = Guest::allow();
        guest.configure = "(unreachable)".into();
        assert_refused(
            &scene,
            &[],
            &guest.wasm(),
            "lockwarden_configure failed: trap: wasm `unreachable` instruction executed",
        );
        // An example policy under a memory limit below what it needs.
        config_set(&scene.server, "lockwarden.policy-memory-kb", "64");
        assert_refused(&scene, &["CONFIG", r#"{"default_ms":1}"#], &example("max-ttl"), "memory limit of 64 KiB exceeded");
    }

    /// LOCK.POLICY EVAL is a dry run: "nothing changes and nothing is
    /// counted", also when the policy fails (INFO policy_failures counts
    /// failed lock commands only).
    fn eval_of_a_failing_policy_counts_nothing(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ok(&server, "hostile", &[], &evaluating("(unreachable)"));
        let reply = server.cmd_text(&["LOCK.POLICY", "EVAL", "hostile", "ACQUIRE", "k", "me", "1"]);
        assert_eq!(reply, "(error) POLICY policy hostile failed: trap: wasm `unreachable` instruction executed");
        assert_eq!(listed(&server, "hostile").counts(), (0, 0, 0));
        assert_eq!(lw_stat(&server, "policy_failures"), 0, "a dry run failed no command");
        assert_error(&acquire(&server, "k", "me", 1000), "POLICY policy hostile failed: ");
        assert_eq!(lw_stat(&server, "policy_failures"), 1);
    }

    /// A client that disconnects while its LOAD compiles (on a background
    /// thread) does not harm the server: it keeps answering, and the policy
    /// is either fully loaded or not at all.
    fn client_gone_during_load(flavor: Flavor) {
        use std::io::Write;
        let scene = Scene::start(flavor, &Guest::allow().wasm());
        let server = &scene.server;
        let wasm = example("owner-format");
        for round in 0..5u32 {
            let name = format!("gone-{round}");
            let args: [&[u8]; 7] = [b"LOCK.POLICY", b"LOAD", name.as_bytes(), b"CONFIG", b"{}", b"WASM", &wasm];
            let mut command = format!("*{}\r\n", args.len()).into_bytes();
            for a in args {
                command.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                command.extend_from_slice(a);
                command.extend_from_slice(b"\r\n");
            }
            let mut stream = std::net::TcpStream::connect(server.addr()).expect("connect");
            stream.write_all(&command).expect("send LOAD");
            drop(stream);
        }
        // Let the compilations finish.
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert_alive(server);
        for p in list(server) {
            if p.name().starts_with("gone-") {
                assert_eq!(p.text("sha256"), sha256_hex(&wasm));
                assert_eq!(p.text("broken"), "(nil)");
            }
        }
        scene.assert_unharmed(1);
        load_example(server, "owners", "owner-format", "o:*", "{}");
        assert_error(&acquire(server, "o:1", "bad", 1000), "DENIED policy owners: owner 'bad'");
    }
}
