//! ACLs and command metadata: the README's least-privilege recipe for an
//! application user, and COMMAND INFO / GETKEYS of the lock commands (key
//! position 1, flags). Every test runs on Redis and Valkey.

mod core_support;

use std::time::Duration;

use core_support::*;
use lockwarden_tests::redis::{self, Value};
use lockwarden_tests::*;

/// The recipe the README gives for an application user.
const RECIPE: &str = "ACL SETUSER app on >secret resetkeys ~app:locks:* resetchannels -@all \
                      +lock.acquire +lock.release +lock.extend +lock.info";

/// The flags of one COMMAND INFO entry, lower-cased.
fn flags_of(entry: &Value) -> (String, Vec<String>, i64, i64, i64) {
    let Value::Array(fields) = entry else {
        panic!("COMMAND INFO entry: {}", render(entry));
    };
    let name = render(&fields[0]).to_lowercase();
    let flags = match &fields[2] {
        Value::Array(f) | Value::Set(f) => f.iter().map(|v| render(v).to_lowercase()).collect(),
        other => panic!("COMMAND INFO flags: {}", render(other)),
    };
    (
        name,
        flags,
        int(&fields[3]),
        int(&fields[4]),
        int(&fields[5]),
    )
}

for_each_flavor! {
    /// The recipe: `app` can take, inspect, extend and release locks under
    /// `app:locks:*` and nothing else (NOPERM for other keys, LOCK._GRANT,
    /// LOCK.POLICY, LOCK.LIST, FLUSHALL, plain data commands).
    fn acl_recipe_limits_app_user(flavor: Flavor) {
        let s = Server::start(flavor);
        let words: Vec<&str> = RECIPE.split_whitespace().collect();
        assert_eq!(s.cmd_text(&words), "OK");
        s.cmd(&["SET", "other:data", "v"]);

        let bad = redis::Client::open(format!("redis://app:wrong@127.0.0.1:{}/", s.port())).unwrap();
        assert!(bad.get_connection_with_timeout(Duration::from_secs(5)).is_err(), "wrong password accepted");
        let client = redis::Client::open(format!("redis://app:secret@127.0.0.1:{}/", s.port())).unwrap();
        let mut app = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();

        let (t, ttl) = parse_grant(&req(&mut app, &["LOCK.ACQUIRE", "app:locks:x", "app-1", "10000"]))
            .expect("app can lock app:locks:x");
        assert_eq!(ttl, 10000);
        let info = parse_lock_info(&req(&mut app, &["LOCK.INFO", "app:locks:x"])).unwrap();
        assert_eq!((info.owner.as_slice(), info.token), (&b"app-1"[..], t));
        assert_eq!(req(&mut app, &["LOCK.EXTEND", "app:locks:x", "app-1", "20000"]), Value::Int(20000));

        let fields = format!("99999999999999999:{}:{}:0:0", now_ms() + 60000, now_ms());
        for args in [
            vec!["LOCK.ACQUIRE", "other:x", "app-1", "10000"],
            vec!["LOCK.RELEASE", "other:x", "app-1"],
            vec!["LOCK.EXTEND", "other:x", "app-1", "10000"],
            vec!["LOCK.INFO", "other:x"],
            vec!["LOCK.INFO", "other:data"],
            vec!["LOCK._GRANT", "app:locks:x", "mallory", &fields],
            vec!["LOCK.POLICY", "LIST"],
            vec!["LOCK.POLICY", "UNLOAD", "anything"],
            vec!["LOCK.LIST"],
            vec!["FLUSHALL"],
            vec!["GET", "app:locks:x"],
            vec!["DEL", "app:locks:x"],
            vec!["SET", "app:locks:y", "v"],
            vec!["CONFIG", "SET", "lockwarden.max-ttl-ms", "1"],
        ] {
            assert_err(&req(&mut app, &args), "NOPERM", &format!("app user: {args:?}"));
        }

        // Nothing the refused commands named changed.
        assert!(!exists(&s, "other:x"));
        assert!(!exists(&s, "app:locks:y"));
        assert_eq!(s.cmd_text(&["GET", "other:data"]), "v");
        let info = held(&s, "app:locks:x");
        assert_eq!((info.token, info.extensions), (t, 1));
        assert_eq!(lw_stat(&s, "token_high_water"), t);
        assert_eq!(s.cmd_text(&["CONFIG", "GET", "lockwarden.max-ttl-ms"]), "[lockwarden.max-ttl-ms 60000]");

        assert_eq!(req(&mut app, &["LOCK.RELEASE", "app:locks:x", "app-1", "FENCE", &t.to_string()]), Value::Int(1));
        assert!(!exists(&s, "app:locks:x"));
    }

    /// LOCK.LIST shows a user only the locks whose keys it may read: a
    /// tenant confined to `app:*` does not see other tenants' owners and
    /// tokens. The default user sees everything.
    fn lock_list_respects_key_permissions(flavor: Flavor) {
        let s = Server::start(flavor);
        assert_eq!(
            s.cmd_text(&["ACL", "SETUSER", "tenant", "on", ">pw", "resetkeys", "~app:*", "-@all", "+lock.list", "+lock.acquire"]),
            "OK"
        );
        for key in ["app:1", "app:2", "other:1", "other:2"] {
            assert!(parse_grant(&s.cmd(&["LOCK.ACQUIRE", key, "owner", "60000"])).is_some());
        }
        let listed = |conn: &mut dyn redis::ConnectionLike| -> Vec<String> {
            let reply = req(conn, &["LOCK.LIST", "COUNT", "1000"]);
            let Value::Array(parts) = reply else { panic!("LOCK.LIST: {}", render(&reply)) };
            assert_eq!(render(&parts[0]), "0");
            let Value::Array(rows) = &parts[1] else { panic!("rows: {:?}", parts[1]) };
            let mut keys: Vec<String> = rows
                .iter()
                .map(|r| match r {
                    Value::Array(f) => render(&f[0]),
                    other => panic!("row {other:?}"),
                })
                .collect();
            keys.sort();
            keys
        };
        let client = redis::Client::open(format!("redis://tenant:pw@127.0.0.1:{}/", s.port())).unwrap();
        let mut tenant = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(listed(&mut tenant), ["app:1", "app:2"]);
        assert_eq!(listed(&mut s.client()), ["app:1", "app:2", "other:1", "other:2"]);
    }

    /// Redis checks the arity the module declares, and the key specs say
    /// which commands only read the lock: an ACL selector that grants read
    /// access to a prefix (`%R~`) lets a monitoring user run LOCK.INFO there,
    /// but not take, extend or release a lock.
    fn arity_and_read_only_key_specs(flavor: Flavor) {
        let s = Server::start(flavor);
        for (name, arity) in [("lock.acquire", -4), ("lock.release", -3), ("lock.extend", -4), ("lock.info", 2)] {
            let Value::Array(entries) = s.cmd(&["COMMAND", "INFO", name]) else {
                panic!("COMMAND INFO {name}");
            };
            let Value::Array(fields) = &entries[0] else {
                panic!("COMMAND INFO {name}: {}", render(&entries[0]));
            };
            assert_eq!(int(&fields[1]), arity, "{name} arity");
        }
        assert_err(&s.cmd(&["LOCK.INFO", "a", "b"]), "ERR", "LOCK.INFO with two keys");
        acquire(&s, "mon:x", "owner", 30000).expect("lock");
        let setup = ["ACL", "SETUSER", "monitor", "on", ">pw", "resetkeys", "%R~mon:*", "+@all"];
        assert_eq!(s.cmd_text(&setup), "OK");
        let client = redis::Client::open(format!("redis://monitor:pw@127.0.0.1:{}/", s.port())).unwrap();
        let mut mon = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
        let info = parse_lock_info(&req(&mut mon, &["LOCK.INFO", "mon:x"])).expect("read access");
        assert_eq!(info.owner, b"owner");
        for args in [
            vec!["LOCK.ACQUIRE", "mon:x", "owner", "1000"],
            vec!["LOCK.EXTEND", "mon:x", "owner", "1000"],
            vec!["LOCK.RELEASE", "mon:x", "owner"],
            vec!["LOCK.INFO", "other:x"],
        ] {
            assert_err(&req(&mut mon, &args), "NOPERM", &format!("monitor: {args:?}"));
        }
        assert_eq!(held(&s, "mon:x").extensions, 0);
    }

    /// An unknown module argument is refused at load, naming it.
    /// A `MODULE LOAD` at runtime that fails (here: a start-up policy file
    /// that does not exist) leaves nothing behind that Redis does not undo:
    /// no event subscription of the unloaded module fires on a disconnect,
    /// a flush, a fork or an expiry afterwards (that would run freed code).
    /// Upper-case policy options work like lower-case ones.
    fn failed_module_load_leaves_nothing_behind(flavor: Flavor) {
        let s = Server::builder(flavor)
            .without_module()
            .arg("enable-module-command", "yes")
            .start();
        let module = module_path();
        let module = module.to_str().unwrap();
        let reply = s.cmd_text(&["MODULE", "LOAD", module, "POLICY-KEYS", "a:*", "policy-file", "/nonexistent/p.wasm"]);
        assert!(reply.starts_with("(error) ERR Error loading the extension"), "{reply}");
        assert!(s.log().contains("cannot read policy-file /nonexistent/p.wasm"), "the reason is logged");
        assert!(!s.cmd_text(&["MODULE", "LIST"]).contains("lockwarden"));
        drop(s.client());
        assert_eq!(s.cmd_text(&["SET", "k", "v", "PX", "20"]), "OK");
        assert_eq!(s.cmd_text(&["FLUSHALL"]), "OK");
        assert_eq!(s.cmd_text(&["SET", "k", "v", "PX", "20"]), "OK");
        wait_until("the key expires", TIMEOUT, || s.cmd_text(&["EXISTS", "k"]) == "0");
        assert_eq!(s.cmd_text(&["BGSAVE"]), "Background saving started");
        wait_persistence_idle(&s, TIMEOUT);
        assert!(s.is_running());
        // The same load with a real policy file succeeds.
        let policy = policy_path("max-ttl");
        let reply = s.cmd_text(&[
            "MODULE", "LOAD", module, "POLICY-KEYS", "a:*", "policy-file", policy.to_str().unwrap(),
            "Policy-Config", r#"{"default_ms":30000}"#,
        ]);
        assert_eq!(reply, "OK");
        assert!(s.cmd_text(&["LOCK.POLICY", "LIST"]).contains("a:*"), "{}", s.cmd_text(&["LOCK.POLICY", "LIST"]));
    }

    fn unknown_module_argument_refuses_to_load(flavor: Flavor) {
        let builder = Server::builder(flavor).module_arg("max-tll-ms", "1000");
        let failure = std::panic::catch_unwind(move || builder.start()).expect_err("loaded anyway");
        let message = failure
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(message.contains("unknown module argument 'max-tll-ms'"), "{message}");
    }

    /// COMMAND INFO reports key position 1 and the documented flags;
    /// COMMAND GETKEYS finds the lock's key.
    fn command_info_key_position_and_flags(flavor: Flavor) {
        let s = Server::start(flavor);
        let reply = s.cmd(&["COMMAND", "INFO", "lock.acquire", "lock.release", "lock.extend", "lock.info", "lock._grant"]);
        let Value::Array(entries) = reply else {
            panic!("COMMAND INFO: {}", render(&reply));
        };
        let want: [(&str, &[&str]); 5] = [
            ("lock.acquire", &["write", "denyoom", "blocking"]),
            ("lock.release", &["write"]),
            ("lock.extend", &["write"]),
            ("lock.info", &["readonly", "fast"]),
            ("lock._grant", &["write"]),
        ];
        assert_eq!(entries.len(), want.len());
        for (entry, (name, flags)) in entries.iter().zip(want) {
            let (got_name, got_flags, first, last, step) = flags_of(entry);
            assert_eq!(got_name, name);
            // Policies run in the client's lock-changing commands: none is
            // `fast` (the internal LOCK._GRANT runs none).
            if ["lock.acquire", "lock.release", "lock.extend"].contains(&name) {
                assert!(!got_flags.iter().any(|g| g == "fast"), "{name}: flags {got_flags:?}");
            }
            for f in flags {
                assert!(got_flags.iter().any(|g| g == f), "{name}: flags {got_flags:?} lack {f}");
            }
            assert_eq!((first, last, step), (1, 1, 1), "{name}: key position");
        }
        for args in [
            vec!["COMMAND", "GETKEYS", "LOCK.ACQUIRE", "some:key", "o", "1000"],
            vec!["COMMAND", "GETKEYS", "LOCK.ACQUIRE", "some:key", "o", "1000", "WAIT", "5", "SESSION"],
            vec!["COMMAND", "GETKEYS", "LOCK.RELEASE", "some:key", "o", "FENCE", "5"],
            vec!["COMMAND", "GETKEYS", "LOCK.EXTEND", "some:key", "o", "1000"],
            vec!["COMMAND", "GETKEYS", "LOCK.INFO", "some:key"],
        ] {
            assert_eq!(s.cmd_text(&args), "[some:key]", "{args:?}");
        }
    }
}
