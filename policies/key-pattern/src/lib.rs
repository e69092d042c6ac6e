//! # `key-pattern`: only acquire keys of an agreed shape
//!
//! Two services that guard the same resource must spell its lock key the
//! same way: if one takes `orders:42` and the other `order:42`, both "hold
//! the lock" at once and the lock protects nothing. This policy lists the key
//! shapes that exist and refuses to acquire anything else, so the misspelling
//! fails loudly on its first acquire instead of silently corrupting data.
//!
//! ## Settings
//!
//! ```json
//! { "allow": ["orders:*", "invoices:[0-9]*", "jobs:nightly:?"] }
//! ```
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `allow` | non-empty list of at most [`MAX_PATTERNS`] non-empty strings, **required** | Redis-style globs (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), matched against the whole key, binary-safe and case-sensitive, exactly like `LOCK.POLICY LOAD ... KEYS` and `KEYS`/`SCAN MATCH` |
//!
//! Unknown fields are rejected.
//!
//! ## Behaviour
//!
//! * **acquire** of a key that matches at least one glob is allowed; any
//!   other key is denied with a reason that names the key and the allowed
//!   patterns, e.g. `key 'order:42' matches none of the allowed patterns:
//!   'orders:*', 'invoices:[0-9]*'`. Long keys and long pattern lists are
//!   shortened (`...`, `(and 7 more)`) so the error stays one readable line.
//! * **extend** and **release** are always allowed. Only acquires create
//!   locks, so checking them is enough to keep unknown keys out; and a lock
//!   taken before this policy was loaded (or under an older allow-list) can
//!   still be extended until its work is done and released, instead of being
//!   stuck until its lease runs out.
//!
//! ## Notes
//!
//! * Settings are JSON, so a glob cannot spell a byte that is not valid
//!   UTF-8; match such keys with `?`, `*` or a class like `[^a-z]`.
//! * Each acquire is matched against every glob until one matches, under
//!   the host's fuel budget (one million by default). A glob with a literal
//!   start such as `orders:*` fails on the first differing byte; a glob that
//!   starts with `*` and has more after it costs about 40 fuel per key byte.
//!   Hence the cap of [`MAX_PATTERNS`] globs: prefer a few broad globs.
use lockwarden_sdk::text::show;
use lockwarden_sdk::{Decision, Operation, Policy, Request, glob_match};
use serde::Deserialize;

/// The JSON settings; see the crate documentation.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Globs a key must match (at least one of them). Required.
    pub allow: Option<Vec<String>>,
}

/// The configured policy.
#[derive(Debug)]
pub struct KeyPattern {
    allow: Vec<String>,
    /// The "allowed patterns: ..." part of the denial, computed once.
    allowed_list: String,
}

/// The most globs accepted: each acquire is matched against all of them.
pub const MAX_PATTERNS: usize = 64;

/// Roughly how many characters of patterns a denial lists before it says
/// "(and N more)": the host cuts reasons at 256 characters.
const MAX_LISTED_CHARS: usize = 120;

/// The most characters of a key or glob shown in a message.
const MAX_SHOWN_CHARS: usize = 64;

impl Policy for KeyPattern {
    type Settings = Settings;
    // Decides by key, owner and time: the server need not look up the user.
    const READS_CALLER_USER: bool = false;

    fn new(settings: Settings) -> Result<Self, String> {
        let Some(allow) = settings.allow else {
            return Err("allow is required: a list of key globs, e.g. \
                 {\"allow\": [\"orders:*\", \"invoices:*\"]}"
                .into());
        };
        if allow.is_empty() {
            return Err(
                "allow must list at least one key glob, e.g. [\"orders:*\"] \
                 (an empty list would refuse every acquire)"
                    .into(),
            );
        }
        if allow.len() > MAX_PATTERNS {
            return Err(format!(
                "allow lists {} globs; at most {MAX_PATTERNS} are supported \
                 (use broader globs such as \"svc-*:*\")",
                allow.len()
            ));
        }
        for (i, glob) in allow.iter().enumerate() {
            if glob.is_empty() {
                return Err(format!(
                    "allow[{i}]: an empty glob matches only the empty key; \
                     did you mean \"*\"?"
                ));
            }
        }
        let mut allowed_list = String::new();
        for (i, glob) in allow.iter().enumerate() {
            if i > 0 && allowed_list.len() + glob.len() > MAX_LISTED_CHARS {
                allowed_list.push_str(&format!(" (and {} more)", allow.len() - i));
                break;
            }
            if i > 0 {
                allowed_list.push_str(", ");
            }
            allowed_list.push('\'');
            allowed_list.push_str(&show(glob.as_bytes(), MAX_SHOWN_CHARS));
            allowed_list.push('\'');
        }
        Ok(KeyPattern {
            allow,
            allowed_list,
        })
    }

    fn evaluate(&self, request: &Request<'_>) -> Decision {
        if request.op != Operation::Acquire
            || self
                .allow
                .iter()
                .any(|glob| glob_match(glob.as_bytes(), request.key))
        {
            return Decision::Allow;
        }
        Decision::Deny(format!(
            "key '{}' matches none of the allowed patterns: {}",
            show(request.key, MAX_SHOWN_CHARS),
            self.allowed_list
        ))
    }
}

lockwarden_sdk::export_policy!(KeyPattern);

#[cfg(test)]
mod tests {
    use super::*;
    use lockwarden_sdk::policy::testing::{PolicyTester, RequestBuilder};
    use proptest::prelude::*;

    const SETTINGS: &str = r#"{"allow": ["orders:*", "invoices:[0-9]*", "jobs:nightly:?"]}"#;

    fn tester(json: &str) -> PolicyTester<KeyPattern> {
        PolicyTester::new(json).expect("settings accepted")
    }

    fn rejection(json: &str) -> String {
        match PolicyTester::<KeyPattern>::new(json) {
            Ok(_) => panic!("settings accepted: {json}"),
            Err(e) => e,
        }
    }

    #[test]
    fn matching_keys_are_allowed() {
        let p = tester(SETTINGS);
        for key in [
            "orders:1",
            "orders:",
            "invoices:7",
            "invoices:7a",
            "jobs:nightly:a",
        ] {
            assert_eq!(p.acquire(key, "me", 1000), Decision::Allow, "{key}");
        }
    }

    #[test]
    fn misspelt_keys_are_denied_with_key_and_patterns() {
        let p = tester(SETTINGS);
        assert_eq!(
            p.acquire("order:42", "me", 1000),
            Decision::Deny(
                "key 'order:42' matches none of the allowed patterns: \
                 'orders:*', 'invoices:[0-9]*', 'jobs:nightly:?'"
                    .into()
            )
        );
        for key in [
            "Orders:1",
            "invoices:x",
            "jobs:nightly:ab",
            "jobs:nightly:",
            "",
        ] {
            assert!(
                matches!(p.acquire(key, "me", 1000), Decision::Deny(_)),
                "{key}"
            );
        }
    }

    #[test]
    fn denies_even_a_retry_by_the_holder() {
        // An acquire is checked whoever holds the key: the host would grant a
        // holder's retry, which must not bypass the allow-list.
        let p = tester(SETTINGS);
        let mut r = RequestBuilder::acquire("order:1", "me", 1000);
        r.holder = Some((b"me".to_vec(), 3, 10, 0));
        assert!(matches!(p.evaluate(&r), Decision::Deny(_)));
    }

    #[test]
    fn extend_and_release_are_allowed_for_any_key() {
        let p = tester(SETTINGS);
        let r = RequestBuilder::extend("order:42", "me", 1000, 10, 0);
        assert_eq!(p.evaluate(&r), Decision::Allow);
        let r = RequestBuilder::release("order:42", "me");
        assert_eq!(p.evaluate(&r), Decision::Allow);
    }

    #[test]
    fn binary_keys_and_globs() {
        let p = tester(r#"{"allow": ["bin:\u0000*", "caf\u00e9:*"]}"#);
        let mut r = RequestBuilder::acquire("", "me", 1000);
        r.key = b"bin:\x00\xff\xfe".to_vec();
        assert_eq!(p.evaluate(&r), Decision::Allow);
        r.key = "café:1".as_bytes().to_vec();
        assert_eq!(p.evaluate(&r), Decision::Allow);
        r.key = b"bin:\xff\r\n".to_vec();
        assert_eq!(
            p.evaluate(&r),
            Decision::Deny(
                "key 'bin:\\xff\\r\\n' matches none of the allowed patterns: \
                 'bin:\\u{0}*', 'café:*'"
                    .into()
            )
        );
    }

    #[test]
    fn escapes_and_classes_follow_redis() {
        let p = tester(r#"{"allow": ["lit\\*", "[^x]y"]}"#);
        assert_eq!(p.acquire("lit*", "me", 1), Decision::Allow);
        assert!(matches!(p.acquire("lits", "me", 1), Decision::Deny(_)));
        assert_eq!(p.acquire("ay", "me", 1), Decision::Allow);
        assert!(matches!(p.acquire("xy", "me", 1), Decision::Deny(_)));
    }

    #[test]
    fn long_keys_and_pattern_lists_are_shortened() {
        let globs: Vec<String> = (0..MAX_PATTERNS)
            .map(|i| format!("service-{i:03}:*"))
            .collect();
        let p = tester(&serde_json::json!({ "allow": globs }).to_string());
        let key = "x".repeat(10_000);
        let Decision::Deny(reason) = p.acquire(&key, "me", 1) else {
            panic!("allowed")
        };
        assert!(
            reason.starts_with(&format!("key '{}...' matches", "x".repeat(64))),
            "{reason}"
        );
        assert!(
            reason.contains("'service-000:*', 'service-001:*'"),
            "{reason}"
        );
        assert!(reason.ends_with(" more)"), "{reason}");
        assert!(reason.len() < 400, "{} chars: {reason}", reason.len());
        assert_eq!(p.acquire("service-063:a", "me", 1), Decision::Allow);
    }

    #[test]
    fn one_huge_pattern_is_still_listed_shortened() {
        let glob = format!("{}*", "p".repeat(300));
        let p = tester(&serde_json::json!({ "allow": [glob] }).to_string());
        let Decision::Deny(reason) = p.acquire("nope", "me", 1) else {
            panic!("allowed")
        };
        assert!(
            reason.ends_with(&format!("'{}...'", "p".repeat(64))),
            "{reason}"
        );
    }

    #[test]
    fn rejects_missing_empty_or_malformed_settings() {
        assert!(rejection("").contains("allow is required"));
        assert!(rejection("{}").contains("allow is required"));
        assert!(rejection(r#"{"allow": []}"#).contains("at least one key glob"));
        let e = rejection(r#"{"allow": ["a:*", ""]}"#);
        assert!(e.contains("allow[1]: an empty glob"), "{e}");
        let e = rejection(r#"{"allow": "orders:*"}"#);
        assert!(
            e.starts_with("invalid settings") && e.contains("expected a sequence"),
            "{e}"
        );
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("s{i}:*")).collect();
        let e = rejection(&serde_json::json!({ "allow": many }).to_string());
        assert!(e.contains("allow lists 65 globs; at most 64"), "{e}");
        let e = rejection(r#"{"allowed": ["orders:*"]}"#);
        assert!(e.contains("unknown field `allowed`"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics_and_only_denies_acquires(
            op in 0..3u8,
            key in proptest::collection::vec(any::<u8>(), 0..300),
            globs in proptest::collection::vec("[a-z*?\\[\\]^\\\\:-]{1,12}", 1..20),
        ) {
            let p = tester(&serde_json::json!({ "allow": globs }).to_string());
            let mut r = RequestBuilder::acquire("", "me", 1000);
            r.op = [Operation::Acquire, Operation::Extend, Operation::Release][op as usize];
            r.key = key;
            match p.evaluate(&r) {
                Decision::Allow => {}
                Decision::Deny(reason) => {
                    prop_assert_eq!(r.op, Operation::Acquire);
                    prop_assert!(!reason.contains('\n') && !reason.contains('\r'));
                    prop_assert!(reason.len() < 1200);
                }
                Decision::Clamp(_) => prop_assert!(false, "never clamps"),
            }
        }
    }
}
