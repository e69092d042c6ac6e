//! # `owner-format`: owners must say who they are
//!
//! A lock owner string is how operators find the process that holds a lock
//! (`LOCK.INFO`, `LOCK.LIST`) and how a release proves it is the holder. An
//! owner like `worker` or `1` is useless for the first and dangerous for the
//! second (every replica of the service is "worker"). This policy requires a
//! shape, by default `host:pid:unique-id`, e.g. `web-7.prod:4121:9f1c2a7be0`.
//!
//! ## Settings
//!
//! ```json
//! { "pattern": "^[A-Za-z0-9.-]+:[0-9]+:[A-Za-z0-9_-]{8,}$", "shape": "host:pid:unique-id", "max_len": 128 }
//! ```
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `pattern` | non-empty regex, optional | the owner must match it; default [`DEFAULT_PATTERN`] |
//! | `shape` | non-empty string, optional | a human description of the pattern shown in denials; default `host:pid:unique-id` when `pattern` is absent, none otherwise |
//! | `max_len` | integer 1 ..= [`MAX_LEN_LIMIT`], optional (default [`DEFAULT_MAX_LEN`]) | owners longer than this many bytes are refused without running the pattern |
//!
//! Empty settings (or `{}`) mean the default pattern. Unknown fields are
//! rejected.
//!
//! The pattern uses [`regex_lite`] syntax (the `regex` crate's syntax
//! without Unicode classes such as `\p{L}`; `\w`, `\d` and `\s` are ASCII).
//! It is matched against the **whole** owner: the policy wraps it as
//! `^(?:pattern)$`, so `[a-z]+` does not accept `abc:!` and writing `^`/`$`
//! yourself is harmless. An invalid pattern is rejected at load time with the
//! regex error.
//!
//! ## Cost
//!
//! A policy call runs under the host's fuel budget (one million units by
//! default, for `LOCK.POLICY LOAD`'s configure call as for each command).
//! Matching takes time linear in the owner's length (no backtracking
//! blow-ups), but a regex engine is not cheap inside Wasm: with the default
//! pattern a check costs roughly 1,200 fuel per owner byte (about 85,000 for
//! a 70-byte `hostname:pid:uuid` owner), which is why owners are capped at
//! `max_len` bytes (128 by default, about 160,000 fuel). Patterns with
//! nested or large counted repetitions cost more per byte, and compiling them
//! costs more at load time; the compiled pattern is limited to
//! [`SIZE_LIMIT`] bytes so that an oversized one is rejected with a clear
//! message. Check a custom pattern with `LOCK.POLICY EVAL` on a long owner.
//!
//! ## Behaviour
//!
//! Every operation is checked: **acquire**, **extend** and **release**. A
//! release or extend with a mistyped owner (say a missing pid) is therefore
//! refused loudly, naming the owner and the expected shape, e.g.
//! `owner 'web-7:9f1c2a7be0' is not shaped like host:pid:unique-id (pattern
//! ^[A-Za-z0-9.-]+:[0-9]+:[A-Za-z0-9_-]{8,}$)`, instead of the quieter
//! "not the owner" reply the server would give. The flip side: a lock taken
//! with a non-conforming owner before the policy was loaded cannot be
//! released or extended by that owner any more and is freed when its lease
//! runs out.
//!
//! Owners that are not valid UTF-8 never match (a regex matches text) and
//! are refused as such. Owners longer than `max_len` bytes are refused
//! without running the pattern, which bounds the cost of a command.
use lockwarden_sdk::text::show;
use lockwarden_sdk::{Decision, Policy, Request};
use regex_lite::{Regex, RegexBuilder};
use serde::Deserialize;

/// The pattern used when the settings give none: `host:pid:unique-id`, with
/// a unique id of at least 8 characters.
pub const DEFAULT_PATTERN: &str = "^[A-Za-z0-9.-]+:[0-9]+:[A-Za-z0-9_-]{8,}$";
/// The description of [`DEFAULT_PATTERN`].
pub const DEFAULT_SHAPE: &str = "host:pid:unique-id";
/// Upper bound on the compiled size of a pattern, in bytes.
pub const SIZE_LIMIT: usize = 32 * 1024;
/// The default `max_len`: owners longer than this are refused without
/// matching.
pub const DEFAULT_MAX_LEN: usize = 128;
/// The largest `max_len` accepted.
pub const MAX_LEN_LIMIT: usize = 1024;

/// The JSON settings; see the crate documentation.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The regex an owner must match in full.
    pub pattern: Option<String>,
    /// A human description of the pattern, for denials.
    pub shape: Option<String>,
    /// The longest owner matched, in bytes; default [`DEFAULT_MAX_LEN`].
    pub max_len: Option<usize>,
}

/// The configured policy.
#[derive(Debug)]
pub struct OwnerFormat {
    regex: Regex,
    max_len: usize,
    /// The " is not shaped like ..." part of a denial, computed once.
    expected: String,
}

impl Policy for OwnerFormat {
    type Settings = Settings;
    // Decides by key, owner and time: the server need not look up the user.
    const READS_CALLER_USER: bool = false;

    fn new(settings: Settings) -> Result<Self, String> {
        let max_len = settings.max_len.unwrap_or(DEFAULT_MAX_LEN);
        if !(1..=MAX_LEN_LIMIT).contains(&max_len) {
            return Err(format!(
                "max_len must be between 1 and {MAX_LEN_LIMIT} bytes (default {DEFAULT_MAX_LEN})"
            ));
        }
        let (pattern, shape) = match settings.pattern {
            None => (
                DEFAULT_PATTERN.to_string(),
                Some(settings.shape.unwrap_or_else(|| DEFAULT_SHAPE.into())),
            ),
            Some(pattern) => (pattern, settings.shape),
        };
        if pattern.is_empty() {
            return Err(format!(
                "pattern must not be empty; omit it for the default {DEFAULT_PATTERN}"
            ));
        }
        if shape.as_deref() == Some("") {
            return Err("shape must not be empty; omit it to show the pattern only".into());
        }
        // Compile the pattern alone first, so that an error points at what
        // the operator wrote (and `a)|(b` cannot sneak through the wrapping).
        let compile = |p: &str| RegexBuilder::new(p).size_limit(SIZE_LIMIT).build();
        compile(&pattern).map_err(|e| {
            format!(
                "invalid pattern '{}': {e}",
                show(pattern.as_bytes(), MAX_PATTERN_CHARS)
            )
        })?;
        let regex = compile(&format!("^(?:{pattern})$")).map_err(|e| {
            format!(
                "invalid pattern '{}' once anchored as ^(?:...)$: {e}",
                show(pattern.as_bytes(), MAX_PATTERN_CHARS)
            )
        })?;
        let pattern = show(pattern.as_bytes(), MAX_PATTERN_CHARS);
        let expected = match shape {
            Some(shape) => format!(
                "is not shaped like {} (pattern {pattern})",
                show(shape.as_bytes(), 48)
            ),
            None => format!("does not match the required pattern {pattern}"),
        };
        Ok(OwnerFormat {
            regex,
            max_len,
            expected,
        })
    }

    fn evaluate(&self, request: &Request<'_>) -> Decision {
        let owner = request.owner;
        let problem = if owner.len() > self.max_len {
            format!("is {} bytes long (max_len {})", owner.len(), self.max_len)
        } else {
            match core::str::from_utf8(owner) {
                Ok(text) if self.regex.is_match(text) => return Decision::Allow,
                Ok(_) => String::new(),
                Err(_) => "is not valid UTF-8".into(),
            }
        };
        let mut reason = format!("owner '{}' ", show(owner, MAX_OWNER_CHARS));
        if !problem.is_empty() {
            reason.push_str(&problem);
            reason.push_str(" and ");
        }
        reason.push_str(&self.expected);
        Decision::Deny(reason)
    }
}

lockwarden_sdk::export_policy!(OwnerFormat);

const MAX_OWNER_CHARS: usize = 64;
/// Reasons are cut by the host at 256 characters; keep the owner visible.
const MAX_PATTERN_CHARS: usize = 96;

#[cfg(test)]
mod tests {
    use super::*;
    use lockwarden_sdk::Operation;
    use lockwarden_sdk::policy::testing::{PolicyTester, RequestBuilder};
    use proptest::prelude::*;

    const GOOD: &str = "web-7.prod:4121:9f1c2a7be0";

    fn tester(json: &str) -> PolicyTester<OwnerFormat> {
        PolicyTester::new(json).expect("settings accepted")
    }

    fn rejection(json: &str) -> String {
        match PolicyTester::<OwnerFormat>::new(json) {
            Ok(_) => panic!("settings accepted: {json}"),
            Err(e) => e,
        }
    }

    fn default_denial(owner: &str) -> Decision {
        Decision::Deny(format!(
            "owner '{owner}' is not shaped like host:pid:unique-id (pattern {DEFAULT_PATTERN})"
        ))
    }

    #[test]
    fn default_pattern_accepts_host_pid_id() {
        for settings in ["", "{}", r#"{"pattern": null}"#] {
            let p = tester(settings);
            for owner in [
                GOOD,
                "10.0.0.7:1:abcdefgh",
                "h:0:________",
                "a.b-c:99999:A-_0a-_0",
            ] {
                assert_eq!(p.acquire("k", owner, 1000), Decision::Allow, "{owner}");
            }
        }
    }

    #[test]
    fn default_pattern_refuses_other_shapes() {
        let p = tester("");
        for owner in [
            "worker",
            "web-7:9f1c2a7be0",            // no pid
            "web-7:4121:short",            // id too short
            "web 7:4121:9f1c2a7be0",       // space in host
            "web-7:41x1:9f1c2a7be0",       // pid not numeric
            "web-7:4121:9f1c2a7be0:extra", // trailing part
            ":4121:9f1c2a7be0",            // empty host
            "",
        ] {
            assert_eq!(
                p.acquire("k", owner, 1000),
                default_denial(owner),
                "{owner}"
            );
        }
    }

    #[test]
    fn every_operation_is_checked() {
        let p = tester("");
        let bad = "web-7:9f1c2a7be0";
        assert_eq!(
            p.evaluate(&RequestBuilder::release("k", bad)),
            default_denial(bad)
        );
        assert_eq!(
            p.evaluate(&RequestBuilder::extend("k", bad, 1000, 10, 0)),
            default_denial(bad)
        );
        assert_eq!(
            p.evaluate(&RequestBuilder::release("k", GOOD)),
            Decision::Allow
        );
        assert_eq!(
            p.evaluate(&RequestBuilder::extend("k", GOOD, 1000, 10, 0)),
            Decision::Allow
        );
    }

    #[test]
    fn custom_patterns_are_anchored() {
        let p = tester(r#"{"pattern": "[a-z]+-[0-9]+"}"#);
        assert_eq!(p.acquire("k", "svc-12", 1), Decision::Allow);
        for owner in ["svc-12x", "xsvc-12!", " svc-12", "svc-12\n"] {
            assert!(
                matches!(p.acquire("k", owner, 1), Decision::Deny(_)),
                "{owner:?}"
            );
        }
        // Alternation must not escape the anchors.
        let p = tester(r#"{"pattern": "a|b"}"#);
        assert_eq!(p.acquire("k", "a", 1), Decision::Allow);
        assert!(matches!(p.acquire("k", "ab", 1), Decision::Deny(_)));
        assert!(matches!(p.acquire("k", "xa", 1), Decision::Deny(_)));
        // Explicit anchors are harmless, and (?m) cannot loosen them.
        let p = tester(r#"{"pattern": "(?m)^a$"}"#);
        assert_eq!(p.acquire("k", "a", 1), Decision::Allow);
        assert!(matches!(p.acquire("k", "a\nb", 1), Decision::Deny(_)));
    }

    #[test]
    fn custom_pattern_messages() {
        let p = tester(r#"{"pattern": "svc-[0-9]+"}"#);
        assert_eq!(
            p.acquire("k", "svc", 1),
            Decision::Deny("owner 'svc' does not match the required pattern svc-[0-9]+".into())
        );
        let p = tester(r#"{"pattern": "svc-[0-9]+", "shape": "svc-<n>"}"#);
        assert_eq!(
            p.acquire("k", "svc", 1),
            Decision::Deny("owner 'svc' is not shaped like svc-<n> (pattern svc-[0-9]+)".into())
        );
        let p = tester(r#"{"shape": "hostname:pid:uuid"}"#);
        assert_eq!(
            p.acquire("k", "svc", 1),
            Decision::Deny(format!(
                "owner 'svc' is not shaped like hostname:pid:uuid (pattern {DEFAULT_PATTERN})"
            ))
        );
    }

    #[test]
    fn non_utf8_and_control_characters() {
        let p = tester(r#"{"pattern": "(?s).*"}"#);
        let mut r = RequestBuilder::release("k", "");
        r.owner = b"host:1:\xff\xfeabcdefgh".to_vec();
        assert_eq!(
            p.evaluate(&r),
            Decision::Deny(
                "owner 'host:1:\\xff\\xfeabcdefgh' is not valid UTF-8 and does not match \
                 the required pattern (?s).*"
                    .into()
            )
        );
        r.owner = b"a\r\nb".to_vec();
        assert_eq!(p.evaluate(&r), Decision::Allow);
        let p = tester("");
        assert_eq!(
            p.evaluate(&r),
            Decision::Deny(format!(
                "owner 'a\\r\\nb' is not shaped like host:pid:unique-id (pattern {DEFAULT_PATTERN})"
            ))
        );
    }

    #[test]
    fn overlong_owners_are_refused_without_matching() {
        let p = tester(r#"{"pattern": ".*"}"#);
        let ok = "o".repeat(DEFAULT_MAX_LEN);
        assert_eq!(p.acquire("k", &ok, 1), Decision::Allow);
        let long = "o".repeat(DEFAULT_MAX_LEN + 1);
        let Decision::Deny(reason) = p.acquire("k", &long, 1) else {
            panic!("allowed")
        };
        assert_eq!(
            reason,
            format!(
                "owner '{}...' is 129 bytes long (max_len 128) and does not match the \
                 required pattern .*",
                "o".repeat(64)
            )
        );
        let p = tester(r#"{"pattern": ".*", "max_len": 1024}"#);
        assert_eq!(p.acquire("k", &"o".repeat(1024), 1), Decision::Allow);
        assert!(matches!(
            p.acquire("k", &"o".repeat(1025), 1),
            Decision::Deny(_)
        ));
        let p = tester(r#"{"max_len": 4}"#);
        let Decision::Deny(reason) = p.acquire("k", GOOD, 1) else {
            panic!("allowed")
        };
        assert!(
            reason.contains("is 26 bytes long (max_len 4) and is not shaped like"),
            "{reason}"
        );
    }

    #[test]
    fn rejects_invalid_regexes_with_the_error() {
        let e = rejection(r#"{"pattern": "[a-z"}"#);
        assert!(e.starts_with("invalid pattern '[a-z': "), "{e}");
        assert!(e.len() > "invalid pattern '[a-z': ".len(), "{e}");
        let e = rejection(r#"{"pattern": "a)|(b"}"#);
        assert!(e.starts_with("invalid pattern 'a)|(b': "), "{e}");
        let e = rejection(r#"{"pattern": "\\p{L}+"}"#);
        assert!(e.starts_with("invalid pattern"), "{e}");
        let e = rejection(r#"{"pattern": "(a{1000}){1000}"}"#);
        assert!(e.starts_with("invalid pattern"), "{e}");
        let e = rejection(r#"{"pattern": "[a-z]{1000}"}"#);
        assert!(e.ends_with("compiled regex exceeded size limit"), "{e}");
        // A realistic, fairly complex pattern fits.
        tester(
            r#"{"pattern": "(?:[a-z0-9]{1,20}\\.){1,5}[a-z]{2,10}:[0-9]{1,7}:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"}"#,
        );
    }

    #[test]
    fn rejects_empty_or_unknown_settings() {
        assert!(rejection(r#"{"pattern": ""}"#).contains("pattern must not be empty"));
        assert!(rejection(r#"{"shape": ""}"#).contains("shape must not be empty"));
        for bad in ["0", "1025", "-1"] {
            let e = rejection(&format!(r#"{{"max_len": {bad}}}"#));
            assert!(
                e.contains("max_len") || e.starts_with("invalid settings"),
                "{e}"
            );
        }
        assert!(rejection(r#"{"max_len": 0}"#).contains("max_len must be between 1 and 1024"));
        let e = rejection(r#"{"regex": "a"}"#);
        assert!(e.contains("unknown field `regex`"), "{e}");
        let e = rejection(r#"{"pattern": 5}"#);
        assert!(e.starts_with("invalid settings"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics(
            op in 0..3u8,
            owner in proptest::collection::vec(any::<u8>(), 0..300),
            custom in any::<bool>(),
        ) {
            let p = if custom { tester(r#"{"pattern": "[^:]*:.*"}"#) } else { tester("") };
            let mut r = RequestBuilder::release("k", "");
            r.op = [Operation::Acquire, Operation::Extend, Operation::Release][op as usize];
            r.owner = owner;
            match p.evaluate(&r) {
                Decision::Allow => {}
                Decision::Deny(reason) => {
                    prop_assert!(!reason.contains('\n') && !reason.contains('\r'));
                    prop_assert!(reason.len() < 600);
                }
                Decision::Clamp(_) => prop_assert!(false, "never clamps"),
            }
        }

        #[test]
        fn default_accepts_every_well_formed_owner(
            owner in "[A-Za-z0-9.-]{1,20}:[0-9]{1,7}:[A-Za-z0-9_-]{8,40}",
        ) {
            prop_assert_eq!(tester("").acquire("k", &owner, 1), Decision::Allow);
        }
    }
}
