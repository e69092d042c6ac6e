//! Policies through real servers: the five example policies, and the
//! semantics of `LOCK.POLICY` (load order, clamps, key globs, audit mode,
//! REPLACE/UNLOAD, LIST, EVAL, `redis-cli -x`, failure mode, module
//! arguments, ACLs, MULTI and scripts, waiters).

mod policy_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lockwarden_tests::redis::Value;
use lockwarden_tests::*;
use policy_support::*;

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// The UTC weekday `offset` days from today, as freeze-window names it.
fn utc_day(offset: i64) -> &'static str {
    let days = now_ms().div_euclid(86_400_000) + offset;
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    DAYS[(days + 3).rem_euclid(7) as usize]
}

/// Loads the example policy max-ttl as `ttl` for all keys with `config`.
#[track_caller]
fn load_ttl(server: &Server, config: &str) {
    load_example(server, "ttl", "max-ttl", "*", config);
}

/// A connection authenticated as `user` (password `pw`) gets NOPERM on
/// every LOCK.POLICY subcommand and can still take a lock.
#[track_caller]
fn assert_nopermission(server: &Server, user: &str) {
    let wasm = Guest::deny("no").wasm();
    let mut conn = server.client();
    assert_eq!(render(&req(&mut conn, &["AUTH", user, "pw"])), "OK");
    let reply = req_bytes(&mut conn, &[b"LOCK.POLICY", b"LOAD", b"p", b"WASM", &wasm]);
    assert!(
        render(&reply).starts_with("(error) NOPERM"),
        "{user}: LOAD: {}",
        render(&reply)
    );
    let subcommands: [&[&str]; 3] = [
        &["LOCK.POLICY", "LIST"],
        &["LOCK.POLICY", "UNLOAD", "p"],
        &["LOCK.POLICY", "EVAL", "p", "ACQUIRE", "k", "me", "1"],
    ];
    for sub in subcommands {
        let reply = req(&mut conn, sub);
        assert!(
            render(&reply).starts_with("(error) NOPERM"),
            "{user} {sub:?}: {}",
            render(&reply)
        );
    }
    grant(&req(
        &mut conn,
        &["LOCK.ACQUIRE", &format!("k:{user}"), "me", "10000"],
    ));
    assert!(list(server).is_empty(), "{user} loaded a policy");
}

for_each_flavor! {
    /// max-ttl, action clamp: the ceiling of the longest matching prefix
    /// (else default_ms) lowers the TTL, the reply and the lease carry the
    /// clamped TTL, and lockwarden.max-ttl-ms / min-ttl-ms apply after it.
    fn max_ttl_clamps_by_longest_prefix(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ttl(&server, r#"{"default_ms":5000,"prefixes":[{"prefix":"batch:","max_ms":20000},{"prefix":"batch:nightly:","max_ms":40000}]}"#);
        let (_, ttl) = acquire_ok(&server, "plain:1", "me", 10_000);
        assert_eq!(ttl, 5000, "default_ms ceiling");
        let pttl = int(&server.cmd(&["PTTL", "plain:1"]));
        assert!(pttl > 0 && pttl <= 5000, "PTTL {pttl} is the clamped lease");
        let info_ttl = lock_field(&server, "plain:1", "ttl");
        assert!(info_ttl > 0 && info_ttl <= 5000, "LOCK.INFO ttl {info_ttl}");

        assert_eq!(acquire_ok(&server, "batch:1", "me", 30_000).1, 20_000);
        // Both prefixes match: the longest one (40000) wins, not the first
        // listed nor the smallest.
        assert_eq!(acquire_ok(&server, "batch:nightly:1", "me", 50_000).1, 40_000);
        // Under the ceiling: unchanged.
        assert_eq!(acquire_ok(&server, "batch:nightly:2", "me", 30_000).1, 30_000);
        assert_eq!(acquire_ok(&server, "plain:2", "me", 4000).1, 4000);
        // Extends are clamped the same way; a same-owner retry too.
        assert_eq!(int(&server.cmd(&["LOCK.EXTEND", "plain:1", "me", "9000"])), 5000);
        assert_eq!(acquire_ok(&server, "batch:1", "me", 99_000).1, 20_000);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "plain:1", "me"]), "1");

        // lockwarden.max-ttl-ms still applies after the policy's clamp.
        config_set(&server, "lockwarden.max-ttl-ms", "30000");
        let reply = acquire(&server, "batch:nightly:3", "me", 50_000);
        assert_error(&reply, "TTLMAX ttl 40000 ms is above lockwarden.max-ttl-ms 30000");
        assert!(!exists(&server, "batch:nightly:3"));
        config_set(&server, "lockwarden.clamp-ttl", "yes");
        assert_eq!(acquire_ok(&server, "batch:nightly:3", "me", 50_000).1, 30_000);
        config_set(&server, "lockwarden.clamp-ttl", "no");
        // ... and min-ttl-ms is checked after the clamp.
        config_set(&server, "lockwarden.min-ttl-ms", "6000");
        let reply = acquire(&server, "plain:3", "me", 10_000);
        assert_error(&reply, "TTLMIN ttl 5000 ms is below lockwarden.min-ttl-ms 6000");
        assert!(!exists(&server, "plain:3"));

        let p = listed(&server, "ttl");
        assert_eq!(p.num("denials"), 0, "clamps are not denials");
        assert_eq!(lw_stat(&server, "policy_denials"), 0);
        assert_eq!(lw_stat(&server, "rejected_ttlmax"), 1);
        assert_eq!(lw_stat(&server, "rejected_ttlmin"), 1);
    }

    /// max-ttl, action deny: too-long TTLs are refused with the ceiling in
    /// the reason; extends too; releases are allowed; nothing changes.
    fn max_ttl_denies(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ttl(&server, r#"{"default_ms":5000,"prefixes":[{"prefix":"batch:","max_ms":20000}],"action":"deny"}"#);
        let reply = acquire(&server, "k", "me", 6000);
        assert_eq!(
            render(&reply),
            "(error) DENIED policy ttl: ttl 6000 ms is above the 5000 ms default ceiling"
        );
        assert!(!exists(&server, "k"));
        let reply = acquire(&server, "batch:1", "me", 25_000);
        assert_eq!(
            render(&reply),
            "(error) DENIED policy ttl: ttl 25000 ms is above the 20000 ms ceiling for keys 'batch:*'"
        );
        assert!(!exists(&server, "batch:1"));
        assert_eq!(acquire_ok(&server, "batch:1", "me", 20_000).1, 20_000);

        let (token, ttl) = acquire_ok(&server, "k", "me", 5000);
        assert_eq!(ttl, 5000);
        let reply = server.cmd(&["LOCK.EXTEND", "k", "me", "6000"]);
        assert_error(&reply, "DENIED policy ttl: ttl 6000 ms is above the 5000 ms default ceiling");
        assert_eq!(lock_state(&server, "k"), Some(("me".into(), token, 0)));
        assert!(lock_field(&server, "k", "ttl") <= 5000);
        // A too-long retry by the holder is denied and keeps the lease.
        assert_error(&acquire(&server, "k", "me", 7000), "DENIED policy ttl: ");
        assert_eq!(lock_state(&server, "k"), Some(("me".into(), token, 0)));
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "k", "me"]), "1");
        assert!(!exists(&server, "k"));

        assert_eq!(lw_stat(&server, "policy_denials"), 4);
        assert_eq!(listed(&server, "ttl").counts(), (7, 4, 0));
    }

    /// key-pattern: acquires of keys matching no glob are denied with the
    /// key and the globs; extend and release (and locks from before the
    /// policy) are allowed.
    fn key_pattern(flavor: Flavor) {
        let server = Server::start(flavor);
        let (legacy, _) = acquire_ok(&server, "Legacy:1", "me", 30_000);
        load_example(
            &server,
            "keys",
            "key-pattern",
            "*",
            r#"{"allow":["orders:*","invoices:[0-9]*"]}"#,
        );
        acquire_ok(&server, "orders:1", "me", 10_000);
        acquire_ok(&server, "invoices:7", "me", 10_000);
        for key in ["invoices:x", "Orders:1", "order:1"] {
            let reply = acquire(&server, key, "me", 10_000);
            assert_eq!(
                render(&reply),
                format!(
                    "(error) DENIED policy keys: key '{key}' matches none of the allowed patterns: 'orders:*', 'invoices:[0-9]*'"
                )
            );
            assert!(!exists(&server, key), "{key}");
        }
        // The lock from before the policy: a retry (an acquire) is denied
        // and changes nothing, extend and release are allowed.
        std::thread::sleep(Duration::from_millis(300));
        assert_error(&acquire(&server, "Legacy:1", "me", 30_000), "DENIED policy keys: key 'Legacy:1'");
        assert_eq!(lock_state(&server, "Legacy:1"), Some(("me".into(), legacy, 0)));
        assert!(lock_field(&server, "Legacy:1", "ttl") < 29_900, "the denied retry did not reset the lease");
        assert_eq!(int(&server.cmd(&["LOCK.EXTEND", "Legacy:1", "me", "20000"])), 20_000);
        assert_eq!(lock_state(&server, "Legacy:1"), Some(("me".into(), legacy, 1)));
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "Legacy:1", "me"]), "1");
        assert_eq!(int(&server.cmd(&["LOCK.EXTEND", "orders:1", "me", "5000"])), 5000);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "orders:1", "me"]), "1");
        assert_eq!(lw_stat(&server, "policy_denials"), 4);
    }

    /// owner-format: a malformed owner is refused on acquire, extend AND
    /// release; well-formed owners work.
    fn owner_format(flavor: Flavor) {
        let server = Server::start(flavor);
        load_example(&server, "owners", "owner-format", "*", "{}");
        let good = "web-7.prod:4121:9f1c2a7be0";
        for bad in ["bad-owner", "web-7.prod:4121", "web-7:x:9f1c2a7be0"] {
            let reply = acquire(&server, "k", bad, 10_000);
            assert_error(
                &reply,
                &format!("DENIED policy owners: owner '{bad}' is not shaped like host:pid:unique-id"),
            );
            assert!(!exists(&server, "k"));
        }
        // Not UTF-8: denied as such.
        let reply = cmd_bytes(&server, &[b"LOCK.ACQUIRE", b"k", b"h\xff:1:abcdefgh", b"10000"]);
        assert_error(&reply, "DENIED policy owners: owner 'h\\xff:1:abcdefgh' is not valid UTF-8");
        assert!(!exists(&server, "k"));

        let (token, _) = acquire_ok(&server, "k", good, 10_000);
        // A mistyped owner on release or extend is refused loudly (not
        // NOTOWNER), and the lock stays.
        let typo = "web-7.prod:4121";
        let reply = server.cmd(&["LOCK.RELEASE", "k", typo]);
        assert_error(&reply, &format!("DENIED policy owners: owner '{typo}' is not shaped like"));
        let reply = server.cmd(&["LOCK.EXTEND", "k", typo, "5000"]);
        assert_error(&reply, &format!("DENIED policy owners: owner '{typo}' is not shaped like"));
        assert_eq!(lock_state(&server, "k"), Some((good.into(), token, 0)));
        // A well-formed owner that does not hold it gets the lock error.
        let other = "web-8.prod:1:abcdefgh";
        assert_error(&server.cmd(&["LOCK.RELEASE", "k", other]), "NOTOWNER");
        assert_eq!(int(&server.cmd(&["LOCK.EXTEND", "k", good, "5000"])), 5000);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "k", good]), "1");
        assert!(!exists(&server, "k"));
        assert_eq!(lw_stat(&server, "policy_denials"), 6);
        assert_eq!(listed(&server, "owners").num("denials"), 6);
    }

    /// max-hold: acquires are clamped to max_hold_ms, extends to what is
    /// left of the hold budget; extends beyond max_extensions and locks held
    /// beyond the budget are denied; releases are allowed.
    fn max_hold(flavor: Flavor) {
        let server = Server::start(flavor);
        // Held since before the policy, longer than the short budget below.
        let (slow, _) = acquire_ok(&server, "slow:1", "me", 30_000);
        load_example(
            &server,
            "hold",
            "max-hold",
            "jobs:*",
            r#"{"max_hold_ms":20000,"max_extensions":2}"#,
        );
        let (token, ttl) = acquire_ok(&server, "jobs:1", "me", 60_000);
        assert_eq!(ttl, 20_000, "acquire clamped to max_hold_ms");
        // Outside the KEYS glob: not clamped.
        assert_eq!(acquire_ok(&server, "other:1", "me", 50_000).1, 50_000);

        std::thread::sleep(Duration::from_millis(200));
        for extension in 1..=2 {
            let before = lock_field(&server, "jobs:1", "held");
            let granted = int(&server.cmd(&["LOCK.EXTEND", "jobs:1", "me", "60000"]));
            let after = lock_field(&server, "jobs:1", "held");
            assert!(before >= 200, "held {before}");
            assert!(
                granted <= 20_000 - before && granted >= 20_000 - after,
                "extend {extension}: granted {granted}, held {before}..{after}: \
                 must be the remaining budget"
            );
            assert_eq!(lock_state(&server, "jobs:1"), Some(("me".into(), token, extension)));
        }
        let reply = server.cmd(&["LOCK.EXTEND", "jobs:1", "me", "1000"]);
        assert_error(
            &reply,
            "DENIED policy hold: lock 'jobs:1' has already been extended 2 times (max_extensions 2)",
        );
        assert_eq!(lock_state(&server, "jobs:1"), Some(("me".into(), token, 2)));
        // A retry by the holder is checked like an extend of the budget.
        let held = lock_field(&server, "jobs:1", "held");
        let (again, ttl) = acquire_ok(&server, "jobs:1", "me", 60_000);
        assert_eq!(again, token);
        assert!(ttl <= 20_000 - held, "retry granted {ttl} after {held} ms held");
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "jobs:1", "me"]), "1");

        // A budget already used up: denied, lease unchanged, release allowed.
        std::thread::sleep(Duration::from_millis(700));
        load_example(&server, "hold-short", "max-hold", "slow:*", r#"{"max_hold_ms":500}"#);
        let reply = server.cmd(&["LOCK.EXTEND", "slow:1", "me", "10000"]);
        let text = render(&reply);
        assert!(
            text.starts_with("(error) DENIED policy hold-short: lock 'slow:1' has been held for ")
                && text.ends_with(" ms, max_hold_ms is 500; release it and acquire it again"),
            "{text}"
        );
        assert_error(&acquire(&server, "slow:1", "me", 10_000), "DENIED policy hold-short: lock 'slow:1' has been held for");
        assert_eq!(lock_state(&server, "slow:1"), Some(("me".into(), slow, 0)));
        assert!(lock_field(&server, "slow:1", "ttl") > 10_000, "lease untouched");
        // Another owner's new acquire is not a hold: it is contended (nil).
        assert_eq!(render(&acquire(&server, "slow:1", "you", 100)), "(nil)");
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "slow:1", "me"]), "1");
        // A fresh grant is clamped to the short budget.
        assert_eq!(acquire_ok(&server, "slow:1", "me", 10_000).1, 500);
    }

    /// freeze-window: inside a weekly window covering now, new acquires are
    /// denied while the holder's retry, extends and releases are allowed; a
    /// window not covering now allows.
    fn freeze_window(flavor: Flavor) {
        let server = Server::start(flavor);
        let (held, _) = acquire_ok(&server, "deploy:held", "me", 30_000);
        // Today and tomorrow (UTC): still covering now if the test runs
        // across midnight.
        let (today, tomorrow) = (utc_day(0), utc_day(1));
        let config = format!(
            r#"{{"windows":[{{"name":"test-freeze","days":["{today}","{tomorrow}"],"from_time":"00:00","to_time":"24:00"}}]}}"#
        );
        load_example(&server, "freeze", "freeze-window", "deploy:*", &config);

        let reply = acquire(&server, "deploy:1", "me", 10_000);
        let text = render(&reply);
        assert!(
            text.starts_with(
                "(error) DENIED policy freeze: new acquires of 'deploy:1' are frozen by window 'test-freeze' ("
            ) && text.contains(" UTC) until "),
            "{text}"
        );
        assert!(!exists(&server, "deploy:1"));
        // Held by someone else: a new acquire for this owner, frozen too
        // (not merely contended).
        assert_error(&acquire(&server, "deploy:held", "you", 10_000), "DENIED policy freeze: new acquires of 'deploy:held'");
        // The holder's retry, extend and release are allowed.
        assert_eq!(acquire_ok(&server, "deploy:held", "me", 10_000), (held, 10_000));
        assert_eq!(int(&server.cmd(&["LOCK.EXTEND", "deploy:held", "me", "20000"])), 20_000);
        assert_eq!(lock_state(&server, "deploy:held"), Some(("me".into(), held, 1)));
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "deploy:held", "me"]), "1");
        // Once released, taking it again is new work: frozen.
        assert_error(&acquire(&server, "deploy:held", "me", 10_000), "DENIED policy freeze: ");
        // Keys outside the KEYS glob are not frozen.
        acquire_ok(&server, "app:1", "me", 10_000);
        assert_eq!(lw_stat(&server, "policy_denials"), 3);

        // A window that does not cover now (three and four days from today).
        let config = format!(
            r#"{{"windows":[{{"name":"later","days":["{}","{}"],"from_time":"00:00","to_time":"24:00"}}]}}"#,
            utc_day(3),
            utc_day(4)
        );
        load_ok(
            &server,
            "freeze",
            &["KEYS", "deploy:*", "CONFIG", &config, "REPLACE"],
            &example("freeze-window"),
        );
        acquire_ok(&server, "deploy:1", "me", 10_000);
        acquire_ok(&server, "deploy:held", "me", 10_000);
        assert_eq!(listed(&server, "freeze").counts(), (2, 0, 0));
    }

    /// Settings the example policies reject are BADPOLICY with the field
    /// named; nothing is loaded.
    fn example_settings_are_checked(flavor: Flavor) {
        let server = Server::start(flavor);
        let cases = [
            ("max-ttl", r#"{"default_ms":0}"#, "BADPOLICY policy rejected its settings: default_ms must be a positive number of milliseconds"),
            ("max-ttl", r#"{"default_ms":1000,"prefixes":[{"prefix":"a:","max_ms":1},{"prefix":"b:","max_ms":0}]}"#, "prefixes[1] ('b:'): max_ms must be a positive number of milliseconds"),
            ("max-ttl", r#"{"default_ms":1000,"bogus":1}"#, "bogus"),
            ("key-pattern", "{}", "BADPOLICY policy rejected its settings: "),
            ("owner-format", r#"{"pattern":"[a-z"}"#, "invalid pattern '[a-z'"),
            ("max-hold", "{}", "max_hold_ms is required"),
            ("freeze-window", r#"{"windows":[{"from":"2026-02-30T00:00:00Z","to":"2027-01-01T00:00:00Z"}]}"#, "windows[0].from: '2026-02-30T00:00:00Z' is not a timestamp"),
            ("max-ttl", "not json", "BADPOLICY policy rejected its settings: "),
        ];
        for (policy, config, expected) in cases {
            let reply = load(&server, "p", &["CONFIG", config], &example(policy));
            assert!(
                reply.starts_with("(error) BADPOLICY ") && reply.contains(expected),
                "{policy} {config}: {reply}"
            );
        }
        assert!(list(&server).is_empty());
        assert_alive(&server);
    }

    /// The first enforcing denial in load order wins (later policies are
    /// not asked); REPLACE keeps the position; a same-name load without
    /// REPLACE is BADPOLICY; UNLOAD answers 1 then 0.
    fn load_order_and_replace(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ok(&server, "a", &[], &Guest::deny("reason A").wasm());
        load_ok(&server, "b", &[], &Guest::deny("reason B").wasm());
        assert_eq!(names(&server), ["a", "b"]);
        assert_eq!(render(&acquire(&server, "k", "me", 1000)), "(error) DENIED policy a: reason A");
        assert_eq!(listed(&server, "a").counts(), (1, 1, 0));
        assert_eq!(listed(&server, "b").counts(), (0, 0, 0), "not asked after the first denial");

        assert_eq!(server.cmd_text(&["LOCK.POLICY", "UNLOAD", "a"]), "1");
        assert_eq!(server.cmd_text(&["LOCK.POLICY", "UNLOAD", "a"]), "0");
        assert_eq!(server.cmd_text(&["LOCK.POLICY", "UNLOAD", "never-loaded"]), "0");
        assert_eq!(render(&acquire(&server, "k", "me", 1000)), "(error) DENIED policy b: reason B");
        // Loaded again: now after b.
        load_ok(&server, "a", &[], &Guest::deny("reason A").wasm());
        assert_eq!(names(&server), ["b", "a"]);
        assert_eq!(render(&acquire(&server, "k", "me", 1000)), "(error) DENIED policy b: reason B");

        // REPLACE keeps b first, with new code and fresh counters.
        let b2 = Guest::deny("reason B2").wasm();
        load_ok(&server, "b", &["REPLACE"], &b2);
        assert_eq!(names(&server), ["b", "a"]);
        assert_eq!(listed(&server, "b").counts(), (0, 0, 0));
        assert_eq!(listed(&server, "b").text("sha256"), sha256_hex(&b2));
        assert_eq!(render(&acquire(&server, "k", "me", 1000)), "(error) DENIED policy b: reason B2");
        // Without REPLACE: refused, nothing changes.
        let reply = load(&server, "b", &[], &Guest::allow().wasm());
        assert_eq!(reply, "(error) BADPOLICY policy 'b' is already loaded (use REPLACE to replace it)");
        assert_eq!(listed(&server, "b").text("sha256"), sha256_hex(&b2));
        assert_eq!(render(&acquire(&server, "k", "me", 1000)), "(error) DENIED policy b: reason B2");
        // Replaced by an allowing policy: a decides now.
        load_ok(&server, "b", &["REPLACE"], &Guest::allow().wasm());
        assert_eq!(render(&acquire(&server, "k", "me", 1000)), "(error) DENIED policy a: reason A");
        // REPLACE of a name that is not loaded just loads it (at the end).
        load_ok(&server, "c", &["REPLACE"], &Guest::allow().wasm());
        assert_eq!(names(&server), ["b", "a", "c"]);
        assert!(!exists(&server, "k"));
        assert_eq!(lw_stat(&server, "policy_denials"), 6);

        // Invalid names and options are refused.
        let reply = load(&server, "has space", &[], &Guest::allow().wasm());
        assert!(reply.starts_with("(error) BADPOLICY invalid policy name"), "{reply}");
        let reply = load(&server, "p", &["MODE", "maybe"], &Guest::allow().wasm());
        assert_eq!(reply, "(error) ERR MODE must be enforce or audit");
        assert_eq!(names(&server), ["b", "a", "c"]);
    }

    /// Clamps of several policies combine to the smallest; a clamp above
    /// the request does not raise it; releases ignore clamps; KEYS globs
    /// select the policies that are asked.
    fn clamps_take_the_minimum_and_keys_select(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ok(&server, "c7", &[], &Guest::clamp(7000).wasm());
        load_ok(&server, "c3", &["KEYS", "short:*"], &Guest::clamp(3000).wasm());
        load_ok(&server, "c5", &[], &Guest::clamp(5000).wasm());
        load_ok(&server, "allow", &[], &Guest::allow().wasm());
        load_ok(&server, "deny-secret", &["KEYS", "secret:[0-9]*"], &Guest::deny("no secrets").wasm());

        assert_eq!(acquire_ok(&server, "k", "me", 10_000).1, 5000);
        assert_eq!(acquire_ok(&server, "short:1", "me", 10_000).1, 3000);
        assert_eq!(acquire_ok(&server, "k2", "me", 2000).1, 2000, "a clamp never raises a TTL");
        assert_eq!(int(&server.cmd(&["LOCK.EXTEND", "short:1", "me", "60000"])), 3000);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "short:1", "me"]), "1");
        assert_eq!(render(&acquire(&server, "secret:1", "me", 1000)), "(error) DENIED policy deny-secret: no secrets");
        assert_eq!(acquire_ok(&server, "secret:x", "me", 10_000).1, 5000, "outside the glob");
        assert_eq!(acquire_ok(&server, "shortcut", "me", 10_000).1, 5000, "outside the glob");

        // Evaluations are counted only where the glob matches.
        let evaluations = |name: &str| listed(&server, name).num("evaluations");
        assert_eq!(evaluations("c7"), 8);
        assert_eq!(evaluations("c3"), 3);
        assert_eq!(evaluations("deny-secret"), 1);
        // max-ttl-ms applies after the smallest clamp.
        config_set(&server, "lockwarden.max-ttl-ms", "4000");
        assert_error(&acquire(&server, "k3", "me", 10_000), "TTLMAX ttl 5000 ms is above lockwarden.max-ttl-ms 4000");
        assert_eq!(acquire_ok(&server, "short:2", "me", 10_000).1, 3000);
    }

    /// Audit notes and policy failures can come with every command: at most
    /// 10 a second reach the (synchronous) log, the rest are counted in INFO
    /// and reported by the next line let through.
    fn policy_log_is_rate_limited(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ok(&server, "watch", &["MODE", "audit"], &Guest::deny("would deny this").wasm());
        let note = "policy watch (audit) would deny: would deny this";
        let n = 500;
        let mut conn = server.client();
        let mut pipe = redis::pipe();
        for i in 0..n {
            pipe.cmd("LOCK.ACQUIRE").arg(format!("k:{i}")).arg("me").arg("1000");
        }
        let started = std::time::Instant::now();
        let _: Vec<Value> = pipe.query(&mut conn).expect("pipeline");
        let windows = started.elapsed().as_secs() + 2;
        let logged = server.log().matches(note).count();
        assert!(
            (1..=10 * windows as usize).contains(&logged),
            "{logged} notes logged for {n} commands in at most {windows} one-second windows"
        );
        assert_eq!(lw_stat(&server, "policy_audit_denials"), n, "INFO counts every one");
        // A second later the next note reports how many were left out.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        acquire_ok(&server, "k:last", "me", 1000);
        assert!(
            server.log().contains("policy audit messages not logged (at most 10 a second; INFO lockwarden counts them all)"),
            "{}",
            server.log_tail(5)
        );
        assert_eq!(server.log().matches(note).count(), logged + 1);
    }

    /// A client's LOAD needs 64 MiB of room under `maxmemory`: the compile's
    /// transient memory counts in `used_memory`, and going over would evict
    /// held locks or fail other clients' writes while it runs. Refused with
    /// `OOM` before compiling; nothing changes.
    fn load_needs_room_under_maxmemory(flavor: Flavor) {
        let server = Server::start(flavor);
        let used: u64 = server
            .info_field("memory", "used_memory")
            .and_then(|v| v.parse().ok())
            .expect("used_memory");
        config_set(&server, "maxmemory", &(used + (8 << 20)).to_string());
        let reply = load(&server, "late", &[], &Guest::allow().wasm());
        assert!(
            reply.starts_with("(error) OOM compiling a policy takes up to 64 MiB for a moment (64 MiB for each compile running, this one included), counted in used_memory, and only "),
            "{reply}"
        );
        assert!(reply.ends_with("MiB are left under maxmemory: raise maxmemory for the load"), "{reply}");
        assert_eq!(server.cmd_text(&["LOCK.POLICY", "LIST"]), "[]");
        config_set(&server, "maxmemory", &(used + (256 << 20)).to_string());
        load_ok(&server, "late", &[], &Guest::allow().wasm());
        config_set(&server, "maxmemory", "0");
    }

    /// MODE audit: would-be denials (and clamps and failures) are counted
    /// and logged, but the command proceeds unchanged.
    fn audit_mode(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ok(&server, "watch", &["MODE", "audit"], &Guest::deny("would deny this").wasm());
        load_ok(&server, "watch-clamp", &["MODE", "audit"], &Guest::clamp(10).wasm());
        let mut trap = Guest::allow();
        trap.evaluate = "(unreachable)".into();
        load_ok(&server, "watch-trap", &["MODE", "audit"], &trap.wasm());

        let (token, ttl) = acquire_ok(&server, "k", "me", 10_000);
        assert_eq!(ttl, 10_000, "an audit clamp changes nothing");
        assert_eq!(int(&server.cmd(&["LOCK.EXTEND", "k", "me", "20000"])), 20_000);
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "k", "me"]), "1");
        assert!(token > 0);

        let info = lw_stats(&server);
        assert_eq!(info["policy_audit_denials"], 3);
        assert_eq!(info["policy_denials"], 0);
        assert_eq!(info["policy_failures"], 0, "nothing failed a command");
        assert_eq!(listed(&server, "watch").text("mode"), "audit");
        assert_eq!(listed(&server, "watch").counts(), (3, 3, 0));
        assert_eq!(listed(&server, "watch-trap").counts(), (3, 0, 3));
        assert!(listed(&server, "watch-trap").get("broken") == &Value::Nil);
        let log = server.log();
        assert!(log.contains("policy watch (audit) would deny: would deny this"), "{}", server.log_tail(20));
        assert!(log.contains("policy watch-clamp (audit) would clamp the ttl to 10 ms"), "{}", server.log_tail(20));
        assert!(log.contains("policy watch-trap failed (ignored): trap: "), "{}", server.log_tail(20));

        // Switching the same module to enforce makes the denial real.
        load_ok(&server, "watch", &["MODE", "enforce", "REPLACE"], &Guest::deny("would deny this").wasm());
        assert_eq!(render(&acquire(&server, "k", "me", 1000)), "(error) DENIED policy watch: would deny this");
        assert_eq!(lw_stat(&server, "policy_denials"), 1);
        assert_eq!(lw_stat(&server, "policy_audit_denials"), 3);
    }

    /// LOCK.POLICY LIST: one map per policy with exactly the documented
    /// fields, in order; sha256 is the SHA-256 of the module bytes.
    fn list_fields(flavor: Flavor) {
        let server = Server::start(flavor);
        assert_eq!(server.cmd_text(&["LOCK.POLICY", "LIST"]), "[]");
        let wasm = example("max-ttl");
        load_ok(
            &server,
            "ttl",
            &["KEYS", "batch:*", "MODE", "audit", "CONFIG", r#"{"default_ms":5000,"action":"deny"}"#],
            &wasm,
        );
        let guest = Guest::deny("no").wasm();
        load_ok(&server, "deny", &["KEYS", "d:*"], &guest);

        let entries = list(&server);
        assert_eq!(entries.len(), 2);
        let fields: Vec<&str> = entries[0].fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "keys", "mode", "size", "sha256", "evaluations", "denials", "failures", "mean-ns", "broken"]
        );
        let ttl = &entries[0];
        assert_eq!(
            ttl.spec(),
            ("ttl".into(), "batch:*".into(), "audit".into(), wasm.len() as i64, sha256_hex(&wasm))
        );
        assert_eq!(ttl.counts(), (0, 0, 0));
        assert_eq!(ttl.num("mean-ns"), 0, "no evaluation yet");
        assert_eq!(ttl.get("broken"), &Value::Nil);
        assert_eq!(
            entries[1].spec(),
            ("deny".into(), "d:*".into(), "enforce".into(), guest.len() as i64, sha256_hex(&guest))
        );

        acquire_ok(&server, "batch:1", "me", 10_000);
        assert_error(&acquire(&server, "d:1", "me", 1000), "DENIED policy deny: no");
        let entries = list(&server);
        assert_eq!(entries[0].counts(), (1, 1, 0), "audit would-be denial counted");
        assert!(entries[0].num("mean-ns") > 0);
        assert_eq!(entries[1].counts(), (1, 1, 0));

        // Under RESP3 each entry is a map.
        let mut conn = server.client();
        req(&mut conn, &["HELLO", "3"]);
        let reply = req(&mut conn, &["LOCK.POLICY", "LIST"]);
        match &reply {
            Value::Array(items) => {
                assert!(matches!(items[0], Value::Map(_)), "{}", render(&reply));
                assert_eq!(list_reply(&reply)[0].spec(), entries[0].spec());
            }
            other => panic!("LOCK.POLICY LIST under RESP3: {}", render(other)),
        }
    }

    /// LOCK.POLICY EVAL: a dry run of one policy against the key's current
    /// state; whatever its glob and mode; nothing changes, nothing counted.
    fn eval_dry_run(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ttl(&server, r#"{"default_ms":5000}"#);
        load_example(&server, "ttl-deny", "max-ttl", "none:*", r#"{"default_ms":5000,"action":"deny"}"#);
        load_example(&server, "hold", "max-hold", "jobs:*", r#"{"max_hold_ms":20000}"#);
        load_ok(&server, "audit", &["MODE", "audit"], &Guest::deny("audited").wasm());
        let before = list(&server);
        let info_before = lw_stats(&server);

        let eval = |args: &[&str]| {
            let mut full = vec!["LOCK.POLICY", "EVAL"];
            full.extend_from_slice(args);
            server.cmd_text(&full)
        };
        assert_eq!(eval(&["ttl", "ACQUIRE", "k", "me", "4000"]), "allow");
        assert_eq!(eval(&["ttl", "ACQUIRE", "k", "me", "6000"]), "clamp 5000");
        assert_eq!(eval(&["ttl", "extend", "k", "me", "6000"]), "clamp 5000");
        assert_eq!(eval(&["ttl", "RELEASE", "k", "me", "0"]), "allow");
        // Outside its KEYS glob, still evaluated.
        assert_eq!(
            eval(&["ttl-deny", "ACQUIRE", "k", "me", "6000"]),
            "deny ttl 6000 ms is above the 5000 ms default ceiling"
        );
        assert_eq!(eval(&["audit", "ACQUIRE", "k", "me", "6000"]), "deny audited");
        // Against the current holder.
        assert_eq!(eval(&["hold", "ACQUIRE", "jobs:1", "me", "60000"]), "clamp 20000");
        acquire_ok(&server, "jobs:1", "me", 10_000);
        std::thread::sleep(Duration::from_millis(100));
        let text = eval(&["hold", "EXTEND", "jobs:1", "me", "60000"]);
        let n: i64 = text.strip_prefix("clamp ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{text}"));
        assert!(n < 20_000 - 50 && n > 0, "{text}: the holder's remaining budget");
        assert_eq!(eval(&["hold", "EXTEND", "jobs:1", "you", "60000"]), "clamp 20000", "not the holder");
        assert_eq!(lock_field(&server, "jobs:1", "extensions"), 0);
        assert!(!exists(&server, "k"));

        // Errors.
        assert_eq!(eval(&["nope", "ACQUIRE", "k", "me", "1"]), "(error) ERR no such policy 'nope'");
        assert!(eval(&["ttl", "GRAB", "k", "me", "1"]).starts_with("(error) ERR "));
        assert!(eval(&["ttl", "ACQUIRE", "k", "me"]).starts_with("(error) ERR "));
        assert!(eval(&["ttl", "ACQUIRE", "k", "me", "-1"]).starts_with("(error) ERR "));

        // Nothing counted (the one acquire above was evaluated by ttl, audit
        // and hold).
        let after = list(&server);
        for (b, a) in before.iter().zip(&after) {
            let (e, d, f) = b.counts();
            let extra = match b.name().as_str() {
                "ttl" | "hold" | "audit" => 1,
                _ => 0,
            };
            let extra_denials = i64::from(b.name() == "audit");
            assert_eq!(a.counts(), (e + extra, d + extra_denials, f), "{}", b.name());
        }
        let info_after = lw_stats(&server);
        for field in ["policy_denials", "policy_failures"] {
            assert_eq!(info_after[field], info_before[field], "{field}");
        }
        assert_eq!(info_after["policy_audit_denials"], 1, "only the real acquire");
    }

    /// EVAL runs on an instance of its own: a failing dry run leaves the
    /// live one alone (it used to rebuild it, which under a lowered fuel
    /// limit broke the policy for a second after the limit was raised).
    fn eval_leaves_the_live_instance_alone(flavor: Flavor) {
        let server = Server::start(flavor);
        load_example(&server, "md", "max-ttl", "md:*", r#"{"default_ms":5000,"action":"deny"}"#);
        config_set(&server, "lockwarden.policy-fuel", "1000");
        let reply = server.cmd_text(&["LOCK.POLICY", "EVAL", "md", "ACQUIRE", "md:k", "me", "100000"]);
        assert!(reply.starts_with("(error) POLICY policy md failed: "), "{reply}");
        assert_eq!(listed(&server, "md").get("broken"), &Value::Nil, "the live instance");
        config_set(&server, "lockwarden.policy-fuel", "1000000");
        assert_eq!(acquire_ok(&server, "md:k", "me", 1000).1, 1000, "at once");
        assert_eq!(listed(&server, "md").counts(), (1, 0, 0));
    }

    /// `LOCK.POLICY HELP` lists the subcommands (where Redis points an
    /// unknown one).
    fn policy_help(flavor: Flavor) {
        let server = Server::start(flavor);
        let help = server.cmd_text(&["LOCK.POLICY", "HELP"]);
        for sub in ["LOAD", "UNLOAD", "LIST", "EVAL", "HELP"] {
            assert!(help.contains(&format!("LOCK.POLICY {sub} - ")), "{help}");
        }
        let unknown = server.cmd_text(&["LOCK.POLICY", "FOO"]);
        assert!(unknown.contains("Try LOCK.POLICY HELP"), "{unknown}");
    }

    /// `LOCK.POLICY EVAL` asks with the request the real command sends: the
    /// queue's length, and no TTL for a release. Neither sees a lease past
    /// its deadline (kept in the keyspace by PERSIST) as a holder: the lock
    /// is free, for the policies as for the lock rules.
    fn eval_asks_what_commands_ask(flavor: Flavor) {
        let server = Server::start(flavor);
        let eval = |args: &[&str]| {
            let mut full = vec!["LOCK.POLICY", "EVAL"];
            full.extend_from_slice(args);
            server.cmd_text(&full)
        };
        acquire_ok(&server, "q:1", "a", 30_000);
        load_ok(&server, "queue", &["KEYS", "q:*"], &Guest::waiters_plus_one().wasm());
        assert_eq!(eval(&["queue", "EXTEND", "q:1", "a", "60000"]), "clamp 1");
        let mut conn = server.client();
        let waiter = std::thread::spawn(move || {
            req(&mut conn, &["LOCK.ACQUIRE", "q:1", "b", "10000", "WAIT", "20000"])
        });
        wait_until("the waiter is queued", TIMEOUT, || lock_field(&server, "q:1", "waiters") == 1);
        assert_eq!(eval(&["queue", "EXTEND", "q:1", "a", "60000"]), "clamp 2");
        assert_eq!(server.cmd(&["LOCK.EXTEND", "q:1", "a", "60000"]), Value::Int(2));
        grant(&waiter.join().expect("waiter thread"));

        load_ok(&server, "ttl-echo", &["KEYS", "none:*"], &Guest::ttl_low_bits_plus_one().wasm());
        assert_eq!(eval(&["ttl-echo", "ACQUIRE", "k", "me", "6000"]), format!("clamp {}", 1 + (6000 & 0x7f)));
        assert_eq!(eval(&["ttl-echo", "RELEASE", "k", "me", "6000"]), "clamp 1", "a release asks for no TTL");

        let (old, _) = acquire_ok(&server, "stale:1", "me", 200);
        assert_eq!(server.cmd(&["PERSIST", "stale:1"]), Value::Int(1));
        load_example(&server, "hold", "max-hold", "stale:*", r#"{"max_hold_ms":300}"#);
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(server.cmd_text(&["LOCK.INFO", "stale:1"]), "(nil)");
        assert_eq!(eval(&["hold", "ACQUIRE", "stale:1", "me", "1000"]), "clamp 300");
        let (token, ttl) = acquire_ok(&server, "stale:1", "me", 1000);
        assert!(token > old, "a new grant: token {token} after {old}");
        assert_eq!(ttl, 300, "clamped like any fresh grant");
    }

    /// A policy's `KEYS` glob (the SDK's matcher, also used by policies
    /// such as key-pattern) selects exactly the keys Redis's own matcher
    /// does: every pattern of a tricky set against every key, compared with
    /// `KEYS`.
    fn globs_match_like_redis(flavor: Flavor) {
        let server = Server::start(flavor);
        let keys: &[&[u8]] = &[
            b"]", b"a", b"b", b"x", b"z", b"-", b"_", b"^", b"[", b"\\", b"*", b"?", b"a[", b"x[", b"x]",
            b"bb", b"ab", b"a-z", b"a*", b"a]b", b"\x00", b"\xff", b"orders:1", b"orders:",
        ];
        let patterns: &[&[u8]] = &[
            b"[]]", b"[]a]", b"[^]]", b"[^]]]", b"[a-]", b"[a-]]", b"[", b"a[", b"*[", b"[ab", b"[^",
            b"[a-c]", b"[c-a]", b"[\\]]", b"[a\\-z]", b"a\\*", b"\\", b"[\\", b"*", b"?", b"??",
            b"[^a-]", b"a*b", b"[]-a]", b"[a-c-e]", b"[-a]", b"[a-\\]", b"*\\", b"orders:*",
            b"[\x00-\xff]", b"[^\x00]", b"*]*",
        ];
        let mut conn = server.client();
        for key in keys {
            req_bytes(&mut conn, &[b"SET", key, b"1"]);
        }
        for pattern in patterns {
            let Value::Array(found) = req_bytes(&mut conn, &[b"KEYS", pattern]) else {
                panic!("KEYS {}", String::from_utf8_lossy(pattern));
            };
            for key in keys {
                let redis = found.contains(&Value::BulkString(key.to_vec()));
                assert_eq!(
                    lockwarden_sdk::glob_match(pattern, key),
                    redis,
                    "pattern {:?}, key {:?}: Redis says {redis}",
                    String::from_utf8_lossy(pattern),
                    String::from_utf8_lossy(key),
                );
            }
        }
    }

    /// `redis-cli -x LOCK.POLICY LOAD name ... WASM < policy.wasm` works.
    fn redis_cli_stdin_load(flavor: Flavor) {
        let server = Server::start(flavor);
        let path = policy_path("max-ttl");
        let wasm = example("max-ttl");
        let file = std::fs::File::open(&path).expect("open max-ttl.wasm");
        let out = Command::new(flavor.cli_bin())
            .args(["-p", &server.port().to_string(), "-x", "LOCK.POLICY", "LOAD", "ttl", "KEYS", "*"])
            .args(["CONFIG", r#"{"default_ms":5000}"#, "WASM"])
            .stdin(Stdio::from(file))
            .output()
            .expect("run the cli");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.trim(), "OK");
        let p = listed(&server, "ttl");
        assert_eq!(p.spec(), ("ttl".into(), "*".into(), "enforce".into(), wasm.len() as i64, sha256_hex(&wasm)));
        assert_eq!(acquire_ok(&server, "k", "me", 10_000).1, 5000);
    }

    /// lockwarden.policy-failure: deny (default) fails the command with
    /// POLICY; allow skips the failing policy, the others still decide.
    fn policy_failure_deny_and_allow(flavor: Flavor) {
        let server = Server::start(flavor);
        let mut broken = Guest::allow();
        broken.evaluate = "(unreachable)".into();
        load_ok(&server, "broken", &["KEYS", "b:*"], &broken.wasm());
        load_ok(&server, "good", &[], &Guest::clamp(4000).wasm());
        let (held, _) = acquire_ok(&server, "x:1", "me", 30_000);
        assert_eq!(server.cmd_text(&["CONFIG", "GET", "lockwarden.policy-failure"]), "[lockwarden.policy-failure deny]");

        let cause = "failed: trap: wasm `unreachable` instruction executed";
        assert_eq!(
            render(&acquire(&server, "b:1", "me", 10_000)),
            format!("(error) POLICY policy broken {cause}")
        );
        assert!(!exists(&server, "b:1"));
        assert_eq!(lw_stat(&server, "policy_failures"), 1);
        assert!(server.log().contains(&format!("POLICY policy broken {cause}")), "{}", server.log_tail(10));

        config_set(&server, "lockwarden.policy-failure", "allow");
        assert_eq!(acquire_ok(&server, "b:1", "me", 10_000).1, 4000, "skipped; good still clamps");
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "b:1", "me"]), "1");
        assert_eq!(lw_stat(&server, "policy_failures"), 1, "not a failed command");
        assert_eq!(listed(&server, "broken").counts(), (3, 0, 3));
        assert!(server.log().contains("policy broken failed (ignored): trap: "), "{}", server.log_tail(10));

        config_set(&server, "lockwarden.policy-failure", "deny");
        assert_error(&acquire(&server, "b:2", "me", 10_000), "POLICY policy broken failed: trap: ");
        assert!(!exists(&server, "b:2"));
        assert_eq!(lock_state(&server, "x:1"), Some(("me".into(), held, 0)));
        assert_eq!(lw_stat(&server, "policy_failures"), 2);
    }

    /// Module arguments policy-name/file/config/keys/mode load a policy at
    /// start-up.
    fn module_arguments_load_a_policy(flavor: Flavor) {
        let path = policy_path("max-ttl");
        let wasm = example("max-ttl");
        let server = Server::builder(flavor)
            .module_arg("policy-name", "startup-ttl")
            .module_arg("policy-file", &path)
            .module_arg("policy-config", r#"{"default_ms":5000}"#)
            .module_arg("policy-keys", "batch:*")
            .module_arg("policy-mode", "enforce")
            .start();
        assert_eq!(
            specs(&server),
            [("startup-ttl".into(), "batch:*".into(), "enforce".into(), wasm.len() as i64, sha256_hex(&wasm))]
        );
        assert_eq!(acquire_ok(&server, "batch:1", "me", 10_000).1, 5000);
        assert_eq!(acquire_ok(&server, "other", "me", 10_000).1, 10_000);
        assert!(server.log().contains("policy startup-ttl loaded from the module arguments"));

        let audit = Server::builder(flavor)
            .module_arg("policy-name", "startup-deny")
            .module_arg("policy-file", &path)
            .module_arg("policy-config", r#"{"default_ms":5000,"action":"deny"}"#)
            .module_arg("policy-mode", "audit")
            .start();
        let p = listed(&audit, "startup-deny");
        assert_eq!((p.text("keys"), p.text("mode")), ("*".into(), "audit".into()));
        assert_eq!(acquire_ok(&audit, "k", "me", 10_000).1, 10_000);
        assert_eq!(lw_stat(&audit, "policy_audit_denials"), 1);
        // Other module arguments still apply alongside.
        let both = Server::builder(flavor)
            .module_arg("max-ttl-ms", "3000")
            .module_arg("policy-file", &path)
            .module_arg("policy-config", r#"{"default_ms":5000}"#)
            .start();
        assert_eq!(names(&both), ["default"], "policy-name defaults to 'default'");
        assert_error(&acquire(&both, "k", "me", 10_000), "TTLMAX ttl 5000 ms is above lockwarden.max-ttl-ms 3000");
    }

    /// LOCK.POLICY is an admin command: a user allowed only
    /// LOCK.ACQUIRE gets NOPERM on every subcommand; lock commands are
    /// unaffected.
    fn policy_commands_are_admin(flavor: Flavor) {
        let server = Server::start(flavor);
        assert_eq!(server.cmd_text(&["ACL", "SETUSER", "worker", "on", ">pw", "~*", "+lock.acquire"]), "OK");
        assert_nopermission(&server, "worker");
        let reply = server.cmd(&["COMMAND", "INFO", "LOCK.POLICY"]);
        assert!(render(&reply).contains("admin"), "{}", render(&reply));
    }

    /// The usual "application user" ACL, everything but @admin and
    /// @dangerous, must not reach LOCK.POLICY either: its subcommands are in
    /// those categories like every built-in admin command. Redis 7.0 has no
    /// API for a module command's categories, so there the documented rule
    /// adds `-lock.policy`.
    fn policy_commands_are_in_the_admin_acl_category(flavor: Flavor) {
        let server = Server::start(flavor);
        let version = server.info_field("server", "redis_version").unwrap_or_default();
        let categories_api = flavor == Flavor::Valkey || !version.starts_with("7.0");
        let rules = if categories_api {
            [("ops", "-@admin"), ("app", "-@dangerous")]
        } else {
            [("ops", "-@admin -lock.policy"), ("app", "-@dangerous -lock.policy")]
        };
        for (user, rule) in rules {
            let mut args = vec!["ACL", "SETUSER", user, "on", ">pw", "~*", "+@all"];
            args.extend(rule.split(' '));
            assert_eq!(server.cmd_text(&args), "OK");
        }
        for (user, _) in rules {
            assert_nopermission(&server, user);
        }
    }

    /// The server looks up the caller's ACL user only for policies that
    /// read it: a policy declaring `lockwarden_request_fields` without the
    /// user bit gets it empty, one without the export gets `default`. (The
    /// guest clamps the TTL to the length of the request it received:
    /// `default` adds 7 bytes.)
    fn caller_user_only_for_policies_that_read_it(flavor: Flavor) {
        let server = Server::start(flavor);
        let measuring = |fields: Option<&str>| {
            let mut guest = Guest::allow();
            guest.evaluate = clamp_to("(local.get $len)");
            if let Some(fields) = fields {
                guest.extra = format!(r#"(func (export "lockwarden_request_fields") (result i32) {fields})"#);
            }
            guest.wasm()
        };
        load_ok(&server, "len", &[], &measuring(None));
        let with_user = acquire_ok(&server, "k1", "me", 10_000).1;
        load_ok(&server, "len", &["REPLACE"], &measuring(Some("(i32.const 1)")));
        assert_eq!(acquire_ok(&server, "k2", "me", 10_000).1, with_user);
        load_ok(&server, "len", &["REPLACE"], &measuring(Some("(i32.const 0)")));
        assert_eq!(acquire_ok(&server, "k3", "me", 10_000).1, with_user - 7);
        // Another policy on the key that reads it: then everyone gets it.
        load_ok(&server, "reader", &["KEYS", "u*"], &Guest::allow().wasm());
        assert_eq!(acquire_ok(&server, "u4", "me", 10_000).1, with_user);
    }

    /// A load whose background compile finishes while writes are paused
    /// (`CLIENT PAUSE WRITE`, `FAILOVER`) is refused with TRYAGAIN: nothing
    /// may be propagated then, and a policy missing from the AOF would
    /// diverge. The server stays up; loading again after the pause works.
    fn load_finishing_in_a_write_pause_is_refused(flavor: Flavor) {
        let server = Server::builder(flavor).arg("--appendonly", "yes").start();
        // Long function bodies (each below the 128 KiB limit) keep the
        // compiler busy past the pause; if a fast machine finishes first
        // anyway (OK), try again with more of them.
        let body = format!("(func {})", "(drop (i32.const 1))\n".repeat(40_000));
        let mut refused = None;
        for attempt in 0..4 {
            let mut guest = Guest::allow();
            guest.extra = body.repeat(4 << attempt);
            let wasm = guest.wasm();
            let mut conn = server.client();
            let loading = {
                let wasm = wasm.clone();
                std::thread::spawn(move || {
                    render(&req_bytes(&mut conn, &[b"LOCK.POLICY", b"LOAD", b"slow", b"WASM", &wasm]))
                })
            };
            wait_until("the load is compiling", TIMEOUT, || {
                server.info_field("clients", "blocked_clients").as_deref() != Some("0")
            });
            assert_eq!(server.cmd_text(&["CLIENT", "PAUSE", "20000", "WRITE"]), "OK");
            let reply = loading.join().expect("load thread");
            assert_eq!(server.cmd_text(&["PING"]), "PONG");
            if reply == "OK" {
                assert_eq!(server.cmd_text(&["CLIENT", "UNPAUSE"]), "OK");
                assert_eq!(server.cmd_text(&["LOCK.POLICY", "UNLOAD", "slow"]), "1");
                continue;
            }
            assert!(reply.starts_with("(error) TRYAGAIN "), "attempt {attempt}: {reply}");
            refused = Some(wasm);
            break;
        }
        let wasm = refused.expect("every compile finished before the pause began");
        assert!(names(&server).is_empty());
        assert_eq!(server.cmd_text(&["CLIENT", "UNPAUSE"]), "OK");
        load_ok(&server, "slow", &[], &wasm);
        assert_eq!(names(&server), ["slow"]);
    }

    /// Policies decide lock commands inside MULTI/EXEC; LOAD is refused
    /// there (it compiles on a background thread, which a transaction cannot
    /// wait for, and compiling inline would stall the server).
    fn policies_in_multi(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ok(&server, "d", &["KEYS", "d:*"], &Guest::deny("nope").wasm());
        load_ok(&server, "c", &[], &Guest::clamp(3000).wasm());
        let mut conn = server.client();
        assert_eq!(render(&req(&mut conn, &["MULTI"])), "OK");
        req(&mut conn, &["LOCK.ACQUIRE", "d:1", "me", "10000"]);
        req(&mut conn, &["LOCK.ACQUIRE", "m:1", "me", "10000"]);
        let exec = render(&req(&mut conn, &["EXEC"]));
        assert!(exec.starts_with("[(error) DENIED policy d: nope ["), "{exec}");
        assert!(exec.ends_with(" 3000]]"), "{exec}");
        assert!(!exists(&server, "d:1"));

        let wasm = Guest::deny("from multi").wasm();
        assert_eq!(render(&req(&mut conn, &["MULTI"])), "OK");
        req_bytes(&mut conn, &[b"LOCK.POLICY", b"LOAD", b"m", b"KEYS", b"m:*", b"WASM", &wasm]);
        req(&mut conn, &["LOCK.ACQUIRE", "m:2", "me", "10000"]);
        let exec = render(&req(&mut conn, &["EXEC"]));
        assert!(
            exec.starts_with("[(error) ERR LOCK.POLICY LOAD compiles on a background thread and cannot run inside MULTI/EXEC"),
            "{exec}"
        );
        assert!(exec.ends_with(" 3000]]"), "{exec}");
        assert_eq!(names(&server), ["d", "c"]);
    }

    /// Policies decide lock commands called from Lua scripts (whose caller
    /// is the script client); LOCK.POLICY EVAL works from a script; LOAD is
    /// refused there (deny-script).
    fn policies_in_scripts(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ok(&server, "d", &["KEYS", "d:*"], &Guest::deny("nope").wasm());
        load_ok(&server, "c", &[], &Guest::clamp(3000).wasm());
        let script = "return redis.call('LOCK.ACQUIRE', KEYS[1], 'me', '10000')";
        let reply = server
            .try_cmd(&["EVAL", script, "1", "s:1"])
            .unwrap_or_else(|e| server.fail(&format!("LOCK.ACQUIRE from a script: {e}")));
        assert_eq!(grant(&reply).1, 3000);
        let reply = server.cmd(&["EVAL", script, "1", "d:2"]);
        assert!(render(&reply).contains("DENIED policy d: nope"), "{}", render(&reply));
        assert!(!exists(&server, "d:2"));
        let reply = server.cmd(&["EVAL", "return redis.call('LOCK.RELEASE', KEYS[1], 'me')", "1", "s:1"]);
        assert_eq!(render(&reply), "1");
        let reply = server.cmd(&["EVAL", "return redis.call('LOCK.POLICY', 'EVAL', 'c', 'ACQUIRE', KEYS[1], 'me', '9000')", "1", "s:1"]);
        assert_eq!(render(&reply), "clamp 3000");
        let reply = server.cmd(&["EVAL", "return redis.call('LOCK.POLICY', 'LOAD', 'x', 'WASM', 'junk')", "0"]);
        assert!(matches!(reply, Value::ServerError(_)), "{}", render(&reply));
        assert_eq!(names(&server), ["d", "c"]);
        assert_alive(&server);
    }

    /// A denial is published as the keyspace event lock.denied.
    fn denial_publishes_lock_denied(flavor: Flavor) {
        let server = Server::start(flavor);
        load_ok(&server, "d", &[], &Guest::deny("nope").wasm());
        config_set(&server, "notify-keyspace-events", "Kd");
        let mut sub = server.client();
        let mut pubsub = sub.as_pubsub();
        pubsub.psubscribe("__keyspace@0__:*").expect("psubscribe");
        pubsub.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        assert_error(&acquire(&server, "ev:1", "me", 1000), "DENIED policy d: nope");
        let msg = pubsub.get_message().expect("a keyspace event");
        assert_eq!(msg.get_channel_name(), "__keyspace@0__:ev:1");
        assert_eq!(msg.get_payload::<String>().expect("payload"), "lock.denied");
    }

    /// A blocking acquire: a denial is immediate (no queueing); a clamp
    /// decided on arrival applies to the grant handed over later.
    fn policies_and_waiters(flavor: Flavor) {
        let server = Server::start(flavor);
        acquire_ok(&server, "w", "a", 30_000);
        acquire_ok(&server, "nw", "a", 30_000);
        load_ok(&server, "short", &["KEYS", "w"], &Guest::clamp(3000).wasm());
        load_ok(&server, "no-wait", &["KEYS", "nw"], &Guest::deny("no waiting").wasm());

        let started = Instant::now();
        assert_error(
            &server.cmd(&["LOCK.ACQUIRE", "nw", "b", "10000", "WAIT", "20000"]),
            "DENIED policy no-wait: no waiting",
        );
        assert!(started.elapsed() < Duration::from_secs(10), "denied without waiting");
        assert_eq!(lw_stat(&server, "waiters"), 0);

        let mut conn = server.client();
        let waiter = std::thread::spawn(move || {
            req(&mut conn, &["LOCK.ACQUIRE", "w", "b", "10000", "WAIT", "20000"])
        });
        wait_until("the waiter is queued", TIMEOUT, || lock_field(&server, "w", "waiters") == 1);
        // The holder (from before the policies) releases: b is served.
        assert_eq!(server.cmd_text(&["LOCK.RELEASE", "w", "a"]), "1");
        let reply = waiter.join().expect("waiter thread");
        assert_eq!(grant(&reply).1, 3000, "the clamp applies to the handed-over grant");
        assert_eq!(owner_of(&server, "w").expect("held"), "b");
        assert!(lock_field(&server, "w", "ttl") <= 3000);
    }

    /// `WASM` comes last: a policy named `wasm`, or a KEYS glob or CONFIG
    /// spelled `wasm`, is still a valid LOAD (the module is the argument
    /// after the last-but-one word).
    fn words_equal_to_wasm_before_the_module(flavor: Flavor) {
        let server = Server::start(flavor);
        let wasm = Guest::clamp(2000).wasm();
        assert_eq!(load(&server, "wasm", &[], &wasm), "OK", "a policy named wasm");
        assert_eq!(load(&server, "p", &["KEYS", "wasm"], &wasm), "OK", "KEYS wasm");
        assert_eq!(names(&server), ["wasm", "p"]);
        assert_eq!(listed(&server, "p").text("keys"), "wasm");
        assert_eq!(acquire_ok(&server, "wasm", "me", 10_000).1, 2000);
    }
}
