//! # `max-hold`: cap the total time a lock is held, across extends
//!
//! A short TTL protects against a holder that crashes, but not against one
//! that is alive and stuck: a watchdog thread that keeps extending a lease
//! whose work will never finish holds the lock forever. This policy caps the
//! **total** hold time of one grant, from its acquire through every extend,
//! and optionally the number of extends.
//!
//! ## Settings
//!
//! ```json
//! { "max_hold_ms": 600000, "max_extensions": 20 }
//! ```
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `max_hold_ms` | integer > 0, **required** | the longest a lock may stay with one owner, in ms |
//! | `max_extensions` | integer ≥ 0, optional (default: unlimited) | how many times the holder may `LOCK.EXTEND` one grant; `0` forbids extends |
//!
//! Unknown fields are rejected.
//!
//! ## Behaviour
//!
//! The server tells the policy how long the current holder has held the lock
//! (`held_ms`, counted from the acquire that created the grant) and how many
//! times it was extended.
//!
//! * **acquire** of a free lock (or one held by someone else, which the
//!   server will refuse anyway): a TTL above `max_hold_ms` is clamped to
//!   `max_hold_ms`.
//! * **extend** by the holder:
//!   * with `max_extensions` set and already reached: denied, e.g. `lock
//!     'jobs:1' has already been extended 20 times (max_extensions 20); held
//!     for 412000 ms; release it and acquire it again`;
//!   * with `remaining = max_hold_ms - held_ms` at or below zero: denied,
//!     e.g. `lock 'jobs:1' has been held for 601200 ms, max_hold_ms is
//!     600000; release it and acquire it again`;
//!   * with a TTL above `remaining`: clamped to `remaining`, so the lease
//!     ends exactly when the hold budget is spent;
//!   * otherwise allowed.
//! * **acquire retried by the holder** (same owner, lock still held) resets
//!   the lease like an extend but keeps the grant, so it gets the same
//!   hold-time check as an extend. The server does not count retries as
//!   extensions, so they do not use up `max_extensions`; they cannot outlast
//!   `max_hold_ms`.
//! * **extend** by anyone but the holder is treated like a fresh acquire
//!   (clamped to `max_hold_ms`); the server refuses it anyway.
//! * **release** is always allowed.
//!
//! A denied holder is not harmed: its lease runs until its current deadline.
//! Clamps never raise a TTL; the server's `lockwarden.min-ttl-ms` may still
//! refuse a clamped TTL that is very small.
use lockwarden_sdk::text::show;
use lockwarden_sdk::{Decision, Operation, Policy, Request};
use serde::Deserialize;

/// The JSON settings; see the crate documentation.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The longest hold of one grant, in ms. Required.
    pub max_hold_ms: Option<u64>,
    /// The most extends of one grant; `None`: unlimited.
    #[serde(default)]
    pub max_extensions: Option<u32>,
}

/// The configured policy.
#[derive(Debug)]
pub struct MaxHold {
    max_hold_ms: u64,
    max_extensions: Option<u32>,
}

impl MaxHold {
    fn cap(&self, ttl_ms: u64, limit: u64) -> Decision {
        if ttl_ms > limit {
            Decision::Clamp(limit)
        } else {
            Decision::Allow
        }
    }
}

/// The most characters of a key shown in a message.
const MAX_SHOWN_CHARS: usize = 64;

impl Policy for MaxHold {
    type Settings = Settings;
    // Decides by key, owner and time: the server need not look up the user.
    const READS_CALLER_USER: bool = false;

    fn new(settings: Settings) -> Result<Self, String> {
        match settings.max_hold_ms {
            None => Err(
                "max_hold_ms is required: the longest a lock may be held by one \
                 owner across extends, in ms, e.g. {\"max_hold_ms\": 600000}"
                    .into(),
            ),
            Some(0) => Err("max_hold_ms must be a positive number of milliseconds".into()),
            Some(max_hold_ms) => Ok(MaxHold {
                max_hold_ms,
                max_extensions: settings.max_extensions,
            }),
        }
    }

    fn evaluate(&self, request: &Request<'_>) -> Decision {
        let holder = match request.op {
            Operation::Release => return Decision::Allow,
            Operation::Acquire | Operation::Extend => match request.caller_holds() {
                None => return self.cap(request.ttl_ms, self.max_hold_ms),
                Some(holder) => holder,
            },
        };
        let max_extensions = self
            .max_extensions
            .filter(|_| request.op == Operation::Extend);
        if let Some(max) = max_extensions.filter(|&max| holder.extensions >= max) {
            return Decision::Deny(format!(
                "lock '{}' has already been extended {} times (max_extensions {max}); \
                 held for {} ms; release it and acquire it again",
                show(request.key, MAX_SHOWN_CHARS),
                holder.extensions,
                holder.held_ms
            ));
        }
        match self.max_hold_ms.checked_sub(holder.held_ms) {
            Some(remaining) if remaining > 0 => self.cap(request.ttl_ms, remaining),
            _ => Decision::Deny(format!(
                "lock '{}' has been held for {} ms, max_hold_ms is {}; \
                 release it and acquire it again",
                show(request.key, MAX_SHOWN_CHARS),
                holder.held_ms,
                self.max_hold_ms
            )),
        }
    }
}

lockwarden_sdk::export_policy!(MaxHold);

#[cfg(test)]
mod tests {
    use super::*;
    use lockwarden_sdk::policy::testing::{PolicyTester, RequestBuilder};
    use proptest::prelude::*;

    fn tester(json: &str) -> PolicyTester<MaxHold> {
        PolicyTester::new(json).expect("settings accepted")
    }

    fn rejection(json: &str) -> String {
        match PolicyTester::<MaxHold>::new(json) {
            Ok(_) => panic!("settings accepted: {json}"),
            Err(e) => e,
        }
    }

    fn extend(ttl: u64, held: u64, extensions: u32) -> RequestBuilder {
        RequestBuilder::extend("jobs:1", "me", ttl, held, extensions)
    }

    #[test]
    fn acquire_is_clamped_to_the_hold_cap() {
        let p = tester(r#"{"max_hold_ms": 60000}"#);
        assert_eq!(p.acquire("jobs:1", "me", 30_000), Decision::Allow);
        assert_eq!(p.acquire("jobs:1", "me", 60_000), Decision::Allow);
        assert_eq!(p.acquire("jobs:1", "me", 60_001), Decision::Clamp(60_000));
        assert_eq!(p.acquire("jobs:1", "me", u64::MAX), Decision::Clamp(60_000));
    }

    #[test]
    fn acquire_contending_with_another_owner_only_gets_the_cap() {
        let p = tester(r#"{"max_hold_ms": 60000}"#);
        let mut r = RequestBuilder::acquire("jobs:1", "me", 90_000);
        r.holder = Some((b"someone-else".to_vec(), 4, 59_000, 3));
        assert_eq!(p.evaluate(&r), Decision::Clamp(60_000));
        r.ttl_ms = 1000;
        assert_eq!(p.evaluate(&r), Decision::Allow);
    }

    #[test]
    fn extend_is_clamped_to_the_remaining_budget() {
        let p = tester(r#"{"max_hold_ms": 60000}"#);
        assert_eq!(p.evaluate(&extend(10_000, 20_000, 1)), Decision::Allow);
        assert_eq!(p.evaluate(&extend(40_000, 20_000, 1)), Decision::Allow);
        assert_eq!(
            p.evaluate(&extend(40_001, 20_000, 1)),
            Decision::Clamp(40_000)
        );
        assert_eq!(p.evaluate(&extend(30_000, 59_999, 9)), Decision::Clamp(1));
        assert_eq!(p.evaluate(&extend(u64::MAX, 0, 0)), Decision::Clamp(60_000));
    }

    #[test]
    fn extend_past_the_budget_is_denied_with_the_hold_time() {
        let p = tester(r#"{"max_hold_ms": 60000}"#);
        let denial = Decision::Deny(
            "lock 'jobs:1' has been held for 60000 ms, max_hold_ms is 60000; \
             release it and acquire it again"
                .into(),
        );
        assert_eq!(p.evaluate(&extend(1, 60_000, 3)), denial);
        assert!(matches!(
            p.evaluate(&extend(1, u64::MAX, 3)),
            Decision::Deny(_)
        ));
        let Decision::Deny(reason) = p.evaluate(&extend(5_000, 125_000, 7)) else {
            panic!("allowed")
        };
        assert!(reason.contains("held for 125000 ms"), "{reason}");
    }

    #[test]
    fn holder_retry_is_checked_like_an_extend() {
        let p = tester(r#"{"max_hold_ms": 60000, "max_extensions": 0}"#);
        let mut r = RequestBuilder::acquire("jobs:1", "me", 30_000);
        r.holder = Some((b"me".to_vec(), 4, 50_000, 0));
        assert_eq!(p.evaluate(&r), Decision::Clamp(10_000));
        r.holder = Some((b"me".to_vec(), 4, 60_500, 0));
        let Decision::Deny(reason) = p.evaluate(&r) else {
            panic!("allowed")
        };
        assert!(reason.contains("held for 60500 ms"), "{reason}");
        // Retries are not extends: max_extensions does not apply to them.
        r.holder = Some((b"me".to_vec(), 4, 100, 5));
        assert_eq!(p.evaluate(&r), Decision::Allow);
    }

    #[test]
    fn extension_count_limit() {
        let p = tester(r#"{"max_hold_ms": 600000, "max_extensions": 3}"#);
        assert_eq!(p.evaluate(&extend(1000, 1000, 0)), Decision::Allow);
        assert_eq!(p.evaluate(&extend(1000, 1000, 2)), Decision::Allow);
        assert_eq!(
            p.evaluate(&extend(1000, 412_000, 3)),
            Decision::Deny(
                "lock 'jobs:1' has already been extended 3 times (max_extensions 3); \
                 held for 412000 ms; release it and acquire it again"
                    .into()
            )
        );
        assert!(matches!(
            p.evaluate(&extend(1000, 0, u32::MAX)),
            Decision::Deny(_)
        ));
        let p = tester(r#"{"max_hold_ms": 600000, "max_extensions": 0}"#);
        assert!(matches!(p.evaluate(&extend(1000, 0, 0)), Decision::Deny(_)));
        // Unlimited by default.
        let p = tester(r#"{"max_hold_ms": 600000}"#);
        assert_eq!(p.evaluate(&extend(1000, 0, u32::MAX)), Decision::Allow);
    }

    #[test]
    fn extend_by_a_non_holder_gets_the_fresh_cap() {
        let p = tester(r#"{"max_hold_ms": 60000, "max_extensions": 1}"#);
        let mut r = extend(90_000, 70_000, 5);
        r.owner = b"intruder".to_vec();
        assert_eq!(p.evaluate(&r), Decision::Clamp(60_000));
        r.holder = None;
        assert_eq!(p.evaluate(&r), Decision::Clamp(60_000));
        r.ttl_ms = 10;
        assert_eq!(p.evaluate(&r), Decision::Allow);
    }

    #[test]
    fn release_is_always_allowed() {
        let p = tester(r#"{"max_hold_ms": 1, "max_extensions": 0}"#);
        let mut r = RequestBuilder::release("jobs:1", "me");
        r.holder = Some((b"me".to_vec(), 1, u64::MAX, u32::MAX));
        assert_eq!(p.evaluate(&r), Decision::Allow);
    }

    #[test]
    fn denials_escape_binary_keys() {
        let p = tester(r#"{"max_hold_ms": 10}"#);
        let mut r = extend(5, 20, 0);
        r.key = b"k\xff\n".to_vec();
        let Decision::Deny(reason) = p.evaluate(&r) else {
            panic!("allowed")
        };
        assert!(
            reason.starts_with("lock 'k\\xff\\n' has been held"),
            "{reason}"
        );
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(rejection("").contains("max_hold_ms is required"));
        assert!(rejection(r#"{"max_extensions": 3}"#).contains("max_hold_ms is required"));
        assert!(rejection(r#"{"max_hold_ms": 0}"#).contains("must be a positive"));
        let e = rejection(r#"{"max_hold_ms": 10, "max_extensions": -1}"#);
        assert!(e.starts_with("invalid settings"), "{e}");
        let e = rejection(r#"{"max_hold_ms": 10, "max_extensions": 5000000000}"#);
        assert!(e.starts_with("invalid settings"), "{e}");
        let e = rejection(r#"{"max_hold": 10}"#);
        assert!(e.contains("unknown field `max_hold`"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics_and_never_exceeds_the_budget(
            op in 0..3u8,
            ttl in prop_oneof![0..200_000u64, any::<u64>()],
            held in prop_oneof![0..200_000u64, any::<u64>()],
            extensions in prop_oneof![0..10u32, any::<u32>()],
            own in any::<bool>(),
            max_hold in prop_oneof![1..200_000u64, 1..=u64::MAX],
            max_ext in proptest::option::of(prop_oneof![0..10u32, any::<u32>()]),
        ) {
            let settings = serde_json::json!({"max_hold_ms": max_hold, "max_extensions": max_ext});
            let p = tester(&settings.to_string());
            let mut r = extend(ttl, held, extensions);
            r.op = [Operation::Acquire, Operation::Extend, Operation::Release][op as usize];
            if !own {
                r.owner = b"other".to_vec();
            }
            match p.evaluate(&r) {
                Decision::Allow => {
                    if r.op != Operation::Release {
                        prop_assert!(ttl <= max_hold);
                        if own {
                            prop_assert!(held.saturating_add(ttl) <= max_hold);
                        }
                    }
                }
                Decision::Clamp(c) => {
                    prop_assert!(c > 0 && c < ttl && c <= max_hold);
                    if own {
                        prop_assert_eq!(held + c, max_hold);
                    }
                }
                Decision::Deny(reason) => {
                    prop_assert!(own && r.op != Operation::Release);
                    prop_assert!(!reason.contains('\n'));
                }
            }
        }
    }
}
