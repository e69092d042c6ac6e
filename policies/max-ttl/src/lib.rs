//! # `max-ttl`: a TTL ceiling per key prefix
//!
//! Caps the TTL of `LOCK.ACQUIRE` and `LOCK.EXTEND`, with a default ceiling
//! and longer or shorter ceilings for key prefixes. A lease that is too long
//! is the usual way a crashed holder blocks everyone else: this policy keeps
//! "I'll just ask for an hour" out of the keyspace.
//!
//! ## Settings
//!
//! ```json
//! {
//!   "default_ms": 30000,
//!   "prefixes": [
//!     { "prefix": "batch:", "max_ms": 600000 },
//!     { "prefix": "batch:fast:", "max_ms": 5000 }
//!   ],
//!   "action": "clamp"
//! }
//! ```
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `default_ms` | integer > 0, **required** | the ceiling for keys that match no prefix |
//! | `prefixes` | list of at most [`MAX_PREFIXES`], optional (default `[]`) | `{ "prefix": non-empty string, "max_ms": integer > 0 }`; each prefix at most once |
//! | `action` | `"clamp"` (default) or `"deny"` | what to do with a TTL above the ceiling |
//!
//! Unknown fields are rejected, so a typo such as `"default_ttl"` fails the
//! `LOCK.POLICY LOAD` instead of being silently ignored.
//!
//! ## Behaviour
//!
//! * The ceiling of a key is the `max_ms` of the **longest** prefix the key
//!   starts with (prefixes are compared byte for byte, they are not globs), or
//!   `default_ms` when none matches. A prefix ceiling may be above or below
//!   the default. With the settings above, `batch:fast:1` gets 5 s,
//!   `batch:nightly` 10 min and `orders:1` 30 s.
//! * **acquire** and **extend** with a TTL at or below the ceiling are
//!   allowed. Above it, `"clamp"` grants the ceiling instead
//!   ([`Decision::Clamp`]) and `"deny"` refuses the command with a reason
//!   such as `ttl 900000 ms is above the 600000 ms ceiling for keys 'batch:*'`.
//! * **release** is always allowed.
//!
//! The server's own `lockwarden.max-ttl-ms` still applies after the policy.
use lockwarden_sdk::text::show;
use lockwarden_sdk::{Decision, Operation, Policy, Request};
use serde::Deserialize;

/// The most `prefixes` entries accepted (bounds the cost of loading).
pub const MAX_PREFIXES: usize = 64;

/// The most characters of a prefix shown in a message.
const MAX_SHOWN_CHARS: usize = 64;

/// What to do with a TTL above the ceiling.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Grant the ceiling instead of the requested TTL.
    #[default]
    Clamp,
    /// Refuse the command.
    Deny,
}

/// One `{"prefix": ..., "max_ms": ...}` entry.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PrefixSetting {
    /// The key prefix (not a glob).
    pub prefix: String,
    /// The ceiling for keys starting with `prefix`, in ms.
    pub max_ms: u64,
}

/// The JSON settings; see the crate documentation.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Ceiling for keys matching no prefix, in ms. Required.
    pub default_ms: Option<u64>,
    /// Per-prefix ceilings.
    #[serde(default)]
    pub prefixes: Vec<PrefixSetting>,
    /// `clamp` (default) or `deny`.
    #[serde(default)]
    pub action: Action,
}

/// The configured policy.
#[derive(Debug)]
pub struct MaxTtl {
    default_ms: u64,
    /// Sorted longest prefix first, so the first match is the longest.
    prefixes: Vec<PrefixSetting>,
    action: Action,
}

impl MaxTtl {
    /// The ceiling for `key` and the prefix that set it (`None`: the default).
    fn ceiling(&self, key: &[u8]) -> (u64, Option<&str>) {
        self.prefixes
            .iter()
            .find(|p| key.starts_with(p.prefix.as_bytes()))
            .map_or((self.default_ms, None), |p| {
                (p.max_ms, Some(p.prefix.as_str()))
            })
    }
}

impl Policy for MaxTtl {
    type Settings = Settings;
    // Decides by key, owner and time: the server need not look up the user.
    const READS_CALLER_USER: bool = false;

    fn new(settings: Settings) -> Result<Self, String> {
        let default_ms = match settings.default_ms {
            Some(0) => return Err("default_ms must be a positive number of milliseconds".into()),
            Some(ms) => ms,
            None => {
                return Err(
                    "default_ms is required: the TTL ceiling in ms for keys that match \
                     no prefix, e.g. {\"default_ms\": 30000}"
                        .into(),
                );
            }
        };
        let mut prefixes = settings.prefixes;
        if prefixes.len() > MAX_PREFIXES {
            return Err(format!(
                "prefixes lists {} entries; at most {MAX_PREFIXES} are supported",
                prefixes.len()
            ));
        }
        for (i, p) in prefixes.iter().enumerate() {
            if p.prefix.is_empty() {
                return Err(format!(
                    "prefixes[{i}]: prefix must not be empty (use default_ms for all keys)"
                ));
            }
            if p.max_ms == 0 {
                return Err(format!(
                    "prefixes[{i}] ('{}'): max_ms must be a positive number of milliseconds",
                    show(p.prefix.as_bytes(), MAX_SHOWN_CHARS)
                ));
            }
        }
        // Longest first, so that the first match is the longest; equal
        // prefixes end up next to each other.
        prefixes.sort_by(|a, b| (b.prefix.len(), &a.prefix).cmp(&(a.prefix.len(), &b.prefix)));
        if let Some(pair) = prefixes.windows(2).find(|w| w[0].prefix == w[1].prefix) {
            return Err(format!(
                "prefix '{}' is listed more than once in prefixes",
                show(pair[0].prefix.as_bytes(), MAX_SHOWN_CHARS)
            ));
        }
        Ok(MaxTtl {
            default_ms,
            prefixes,
            action: settings.action,
        })
    }

    fn evaluate(&self, request: &Request<'_>) -> Decision {
        if request.op == Operation::Release {
            return Decision::Allow;
        }
        let (ceiling, prefix) = self.ceiling(request.key);
        if request.ttl_ms <= ceiling {
            return Decision::Allow;
        }
        match self.action {
            Action::Clamp => Decision::Clamp(ceiling),
            Action::Deny => Decision::Deny(match prefix {
                Some(prefix) => format!(
                    "ttl {} ms is above the {ceiling} ms ceiling for keys '{}*'",
                    request.ttl_ms,
                    show(prefix.as_bytes(), MAX_SHOWN_CHARS)
                ),
                None => format!(
                    "ttl {} ms is above the {ceiling} ms default ceiling",
                    request.ttl_ms
                ),
            }),
        }
    }
}

lockwarden_sdk::export_policy!(MaxTtl);

#[cfg(test)]
mod tests {
    use super::*;
    use lockwarden_sdk::policy::testing::{PolicyTester, RequestBuilder};
    use proptest::prelude::*;

    const SETTINGS: &str = r#"{
        "default_ms": 30000,
        "prefixes": [
            {"prefix": "batch:", "max_ms": 600000},
            {"prefix": "batch:fast:", "max_ms": 5000},
            {"prefix": "b", "max_ms": 1000}
        ]
    }"#;

    fn tester(json: &str) -> PolicyTester<MaxTtl> {
        PolicyTester::new(json).expect("settings accepted")
    }

    fn rejection(json: &str) -> String {
        match PolicyTester::<MaxTtl>::new(json) {
            Ok(_) => panic!("settings accepted: {json}"),
            Err(e) => e,
        }
    }

    fn deny(json: &str) -> PolicyTester<MaxTtl> {
        let mut v: serde_json::Value = serde_json::from_str(json).unwrap();
        v["action"] = "deny".into();
        tester(&v.to_string())
    }

    #[test]
    fn default_ceiling_clamps() {
        let p = tester(r#"{"default_ms": 30000}"#);
        assert_eq!(p.acquire("orders:1", "me", 10_000), Decision::Allow);
        assert_eq!(p.acquire("orders:1", "me", 30_000), Decision::Allow);
        assert_eq!(p.acquire("orders:1", "me", 30_001), Decision::Clamp(30_000));
        assert_eq!(
            p.acquire("orders:1", "me", u64::MAX),
            Decision::Clamp(30_000)
        );
    }

    #[test]
    fn longest_prefix_wins_regardless_of_order() {
        let p = tester(SETTINGS);
        assert_eq!(
            p.acquire("batch:nightly", "me", 900_000),
            Decision::Clamp(600_000)
        );
        assert_eq!(p.acquire("batch:nightly", "me", 600_000), Decision::Allow);
        assert_eq!(
            p.acquire("batch:fast:1", "me", 60_000),
            Decision::Clamp(5_000)
        );
        assert_eq!(p.acquire("bx", "me", 2_000), Decision::Clamp(1_000));
        assert_eq!(p.acquire("batch", "me", 2_000), Decision::Clamp(1_000));
        assert_eq!(p.acquire("orders:1", "me", 60_000), Decision::Clamp(30_000));
        // A prefix is not a glob and is case-sensitive.
        assert_eq!(p.acquire("BATCH:x", "me", 60_000), Decision::Clamp(30_000));
        assert_eq!(p.acquire("", "me", 60_000), Decision::Clamp(30_000));
    }

    #[test]
    fn extend_is_capped_like_acquire() {
        let p = tester(SETTINGS);
        let r = RequestBuilder::extend("batch:fast:1", "me", 9_000, 100, 1);
        assert_eq!(p.evaluate(&r), Decision::Clamp(5_000));
        let r = RequestBuilder::extend("batch:fast:1", "me", 4_000, 100, 1);
        assert_eq!(p.evaluate(&r), Decision::Allow);
    }

    #[test]
    fn release_is_always_allowed() {
        let p = deny(SETTINGS);
        let mut r = RequestBuilder::release("batch:fast:1", "me");
        assert_eq!(p.evaluate(&r), Decision::Allow);
        r.ttl_ms = u64::MAX; // a release never carries a TTL, but be safe
        assert_eq!(p.evaluate(&r), Decision::Allow);
    }

    #[test]
    fn deny_names_ttl_ceiling_and_prefix() {
        let p = deny(SETTINGS);
        assert_eq!(
            p.acquire("batch:nightly", "me", 900_000),
            Decision::Deny(
                "ttl 900000 ms is above the 600000 ms ceiling for keys 'batch:*'".into()
            )
        );
        assert_eq!(
            p.acquire("orders:1", "me", 30_001),
            Decision::Deny("ttl 30001 ms is above the 30000 ms default ceiling".into())
        );
        assert_eq!(p.acquire("orders:1", "me", 30_000), Decision::Allow);
        let r = RequestBuilder::extend("batch:fast:9", "me", 5_001, 0, 0);
        assert_eq!(
            p.evaluate(&r),
            Decision::Deny(
                "ttl 5001 ms is above the 5000 ms ceiling for keys 'batch:fast:*'".into()
            )
        );
    }

    #[test]
    fn prefixes_match_binary_keys() {
        let p = tester(r#"{"default_ms": 1000, "prefixes": [{"prefix": "é:", "max_ms": 50}]}"#);
        let mut r = RequestBuilder::acquire("", "me", 100);
        r.key = b"\xc3\xa9:\xff\x00".to_vec();
        assert_eq!(p.evaluate(&r), Decision::Clamp(50));
        r.key = b"\xff\xfe".to_vec();
        assert_eq!(p.evaluate(&r), Decision::Allow);
        r.ttl_ms = 5000;
        assert_eq!(p.evaluate(&r), Decision::Clamp(1000));
    }

    #[test]
    fn messages_escape_control_characters() {
        let p = deny(r#"{"default_ms": 1000, "prefixes": [{"prefix": "a\r\nb", "max_ms": 50}]}"#);
        assert_eq!(
            p.acquire("a\r\nbc", "me", 100),
            Decision::Deny("ttl 100 ms is above the 50 ms ceiling for keys 'a\\r\\nb*'".into())
        );
    }

    #[test]
    fn action_defaults_to_clamp_and_accepts_both() {
        let p = tester(r#"{"default_ms": 10, "action": "clamp"}"#);
        assert_eq!(p.acquire("k", "me", 11), Decision::Clamp(10));
        let p = tester(r#"{"default_ms": 10, "action": "deny"}"#);
        assert!(matches!(p.acquire("k", "me", 11), Decision::Deny(_)));
    }

    #[test]
    fn rejects_missing_or_zero_default() {
        assert!(rejection("").contains("default_ms is required"));
        assert!(rejection("{}").contains("default_ms is required"));
        assert!(rejection(r#"{"default_ms": 0}"#).contains("default_ms must be a positive"));
        assert!(rejection(r#"{"default_ms": -5}"#).starts_with("invalid settings"));
        assert!(rejection(r#"{"default_ms": "30s"}"#).starts_with("invalid settings"));
    }

    #[test]
    fn rejects_bad_prefixes() {
        let e = rejection(r#"{"default_ms": 1, "prefixes": [{"prefix": "", "max_ms": 5}]}"#);
        assert!(e.contains("prefixes[0]: prefix must not be empty"), "{e}");
        let e = rejection(r#"{"default_ms": 1, "prefixes": [{"prefix": "a:", "max_ms": 0}]}"#);
        assert!(
            e.contains("prefixes[0] ('a:'): max_ms must be a positive"),
            "{e}"
        );
        let e = rejection(
            r#"{"default_ms": 1, "prefixes": [{"prefix": "a:", "max_ms": 5}, {"prefix": "a:", "max_ms": 6}]}"#,
        );
        assert!(
            e.contains("prefix 'a:' is listed more than once in prefixes"),
            "{e}"
        );
        let e = rejection(r#"{"default_ms": 1, "prefixes": [{"prefix": "a:"}]}"#);
        assert!(e.contains("missing field `max_ms`"), "{e}");
    }

    #[test]
    fn rejects_too_many_prefixes() {
        let prefixes: Vec<_> = (0..=MAX_PREFIXES)
            .map(|i| serde_json::json!({"prefix": format!("p{i}:"), "max_ms": 5}))
            .collect();
        let mut settings = serde_json::json!({"default_ms": 1, "prefixes": prefixes});
        let e = rejection(&settings.to_string());
        assert!(e.contains("prefixes lists 65 entries; at most 64"), "{e}");
        settings["prefixes"].as_array_mut().unwrap().pop();
        let p = tester(&settings.to_string());
        assert_eq!(p.acquire("p63:x", "me", 10), Decision::Clamp(5));
    }

    #[test]
    fn rejects_unknown_action_and_fields() {
        let e = rejection(r#"{"default_ms": 1, "action": "warn"}"#);
        assert!(
            e.contains("unknown variant `warn`, expected `clamp` or `deny`"),
            "{e}"
        );
        let e = rejection(r#"{"default_ttl": 1}"#);
        assert!(e.contains("unknown field `default_ttl`"), "{e}");
        let e = rejection(r#"{"default_ms": 1, "prefixes": [{"prefix": "a", "max": 5}]}"#);
        assert!(e.contains("unknown field `max`"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics_and_never_raises_the_ttl(
            op in 0..3u8,
            key in proptest::collection::vec(any::<u8>(), 0..24),
            ttl in any::<u64>(),
            deny_mode in any::<bool>(),
        ) {
            let p = if deny_mode { deny(SETTINGS) } else { tester(SETTINGS) };
            let mut r = RequestBuilder::acquire("", "me", ttl);
            r.op = [Operation::Acquire, Operation::Extend, Operation::Release][op as usize];
            r.key = key;
            match p.evaluate(&r) {
                Decision::Clamp(c) => prop_assert!(c < ttl && c > 0),
                Decision::Deny(reason) => {
                    prop_assert!(!reason.contains('\n') && !reason.contains('\r'));
                    prop_assert!(r.op != Operation::Release);
                }
                Decision::Allow => {}
            }
        }
    }
}
