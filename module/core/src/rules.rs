//! The lock rules: given the current lease (if any), a parsed command, the
//! policies' TTL ceiling, the limits, the token clock and the time, decide the
//! reply and the effect. Pure functions; the adaptor applies the effect to the
//! keyspace and replicates it.
//!
//! Policy denials and failures are decided before these rules run (they are
//! errors of their own), so a rule only sees the ceiling that policies allow.

use crate::clock::TokenClock;
use crate::error::LockError;
use crate::lease::Lease;
use crate::limits::TtlLimits;
use crate::parse::{Acquire, Extend, Release};

/// The result of an acquire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquired {
    /// The caller holds the lock now. Apply `lease` (a `Put` effect).
    Granted {
        /// The lease to store.
        lease: Lease,
        /// The granted TTL, ms.
        ttl_ms: u64,
        /// `false` when this was a retry by the current holder, which keeps
        /// its token.
        fresh: bool,
    },
    /// Someone else holds it (reply nil, nothing changes).
    Contended,
}

/// Who is asking, as seen by the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The connection id (node-local).
    pub client_id: u64,
}

fn live(current: Option<&Lease>, now_ms: i64) -> Option<&Lease> {
    current.filter(|l| l.is_live(now_ms))
}

/// `LOCK.ACQUIRE`: grant a free lock with a new token; let the holder retry
/// (same token, TTL reset to the request); refuse anyone else.
pub fn acquire(
    current: Option<&Lease>,
    req: &Acquire<'_>,
    caller: Caller,
    policy_cap: Option<u64>,
    limits: &TtlLimits,
    clock: &mut TokenClock,
    now_ms: i64,
) -> Result<Acquired, LockError> {
    let ttl_ms = limits.grant(req.ttl_ms, policy_cap)?;
    let deadline_ms = now_ms.saturating_add(ttl_ms as i64);
    match live(current, now_ms) {
        Some(held) if *held.owner != *req.owner => Ok(Acquired::Contended),
        Some(held) => Ok(Acquired::Granted {
            lease: Lease {
                deadline_ms,
                session: req.session,
                client_id: caller.client_id,
                ..held.clone()
            },
            ttl_ms,
            fresh: false,
        }),
        None => Ok(Acquired::Granted {
            lease: Lease {
                owner: req.owner.into(),
                token: clock.issue(now_ms).ok_or(LockError::TokensExhausted)?,
                deadline_ms,
                acquired_at_ms: now_ms,
                extensions: 0,
                session: req.session,
                client_id: caller.client_id,
            },
            ttl_ms,
            fresh: true,
        }),
    }
}

/// Checks that `owner` (and `fence`, when given) names the live holder.
fn holder<'l>(
    current: Option<&'l Lease>,
    owner: &[u8],
    fence: Option<u64>,
    now_ms: i64,
) -> Result<&'l Lease, LockError> {
    let held = live(current, now_ms).ok_or(LockError::NotHeld)?;
    if *held.owner != *owner {
        return Err(LockError::NotOwner);
    }
    match fence {
        Some(given) if given != held.token => Err(LockError::StaleFence {
            given,
            current: held.token,
        }),
        _ => Ok(held),
    }
}

/// `LOCK.RELEASE`: only the holder (with the current token, if fenced) may
/// release. `Ok` means: delete the key.
pub fn release(current: Option<&Lease>, req: &Release<'_>, now_ms: i64) -> Result<(), LockError> {
    holder(current, req.owner, req.fence, now_ms).map(|_| ())
}

/// `LOCK.EXTEND`: only the holder may extend; the new deadline is
/// `now + ttl`, subject to the same limits as an acquire. Returns the new
/// lease (a `Put` effect) and the granted TTL.
pub fn extend(
    current: Option<&Lease>,
    req: &Extend<'_>,
    policy_cap: Option<u64>,
    limits: &TtlLimits,
    now_ms: i64,
) -> Result<(Lease, u64), LockError> {
    let held = holder(current, req.owner, req.fence, now_ms)?;
    let ttl_ms = limits.grant(req.ttl_ms, policy_cap)?;
    Ok((
        Lease {
            deadline_ms: now_ms.saturating_add(ttl_ms as i64),
            extensions: held.extensions.saturating_add(1),
            ..held.clone()
        },
        ttl_ms,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::tests::lease;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000_000;
    const LIMITS: TtlLimits = TtlLimits {
        min_ms: 1,
        max_ms: 60_000,
        clamp: false,
    };
    const ME: Caller = Caller { client_id: 3 };

    fn acq(owner: &str, ttl: u64) -> Acquire<'_> {
        Acquire {
            key: b"k",
            owner: owner.as_bytes(),
            ttl_ms: ttl,
            wait_ms: None,
            session: false,
        }
    }

    fn granted(r: Result<Acquired, LockError>) -> (Lease, u64, bool) {
        match r.unwrap() {
            Acquired::Granted {
                lease,
                ttl_ms,
                fresh,
            } => (lease, ttl_ms, fresh),
            Acquired::Contended => panic!("contended"),
        }
    }

    #[test]
    fn a_free_lock_is_granted_with_a_fresh_token() {
        let mut clock = TokenClock::new();
        let (l, ttl, fresh) = granted(acquire(
            None,
            &acq("a", 500),
            ME,
            None,
            &LIMITS,
            &mut clock,
            NOW,
        ));
        assert!(fresh);
        assert_eq!(ttl, 500);
        assert_eq!(l.deadline_ms, NOW + 500);
        assert_eq!(l.acquired_at_ms, NOW);
        assert_eq!(l.client_id, 3);
        assert_eq!(l.token, clock.high_water());
    }

    #[test]
    fn a_held_lock_is_contended_for_others() {
        let mut clock = TokenClock::new();
        let held = lease("a", 5, NOW, 1000);
        let r = acquire(
            Some(&held),
            &acq("b", 500),
            ME,
            None,
            &LIMITS,
            &mut clock,
            NOW + 10,
        );
        assert_eq!(r, Ok(Acquired::Contended));
        assert_eq!(clock.high_water(), 0, "no token is spent on contention");
    }

    #[test]
    fn the_holder_retrying_keeps_its_token_and_resets_the_ttl() {
        let mut clock = TokenClock::new();
        let mut held = lease("a", 5, NOW, 1000);
        held.extensions = 2;
        let (l, ttl, fresh) = granted(acquire(
            Some(&held),
            &acq("a", 300),
            ME,
            None,
            &LIMITS,
            &mut clock,
            NOW + 900,
        ));
        assert!(!fresh);
        assert_eq!((l.token, ttl, l.deadline_ms), (5, 300, NOW + 1200));
        assert_eq!((l.acquired_at_ms, l.extensions), (NOW, 2));
    }

    #[test]
    fn an_expired_lease_is_free() {
        let mut clock = TokenClock::new();
        let held = lease("a", 5, NOW, 1000);
        let (l, _, fresh) = granted(acquire(
            Some(&held),
            &acq("b", 300),
            ME,
            None,
            &LIMITS,
            &mut clock,
            NOW + 1001,
        ));
        assert!(fresh);
        assert_eq!(&*l.owner, b"b");
        assert_eq!(
            release(
                Some(&held),
                &Release {
                    key: b"k",
                    owner: b"a",
                    fence: None
                },
                NOW + 1001
            ),
            Err(LockError::NotHeld)
        );
    }

    #[test]
    fn ttl_limits_apply_even_when_contended() {
        let mut clock = TokenClock::new();
        let held = lease("a", 5, NOW, 1000);
        let r = acquire(
            Some(&held),
            &acq("b", 60_001),
            ME,
            None,
            &LIMITS,
            &mut clock,
            NOW,
        );
        assert!(matches!(r, Err(LockError::TtlMax { .. })));
        let clamp = TtlLimits {
            clamp: true,
            ..LIMITS
        };
        let (_, ttl, _) = granted(acquire(
            None,
            &acq("b", 600_000),
            ME,
            Some(90_000),
            &clamp,
            &mut clock,
            NOW,
        ));
        assert_eq!(ttl, 60_000);
    }

    #[test]
    fn release_rules() {
        let held = lease("a", 5, NOW, 1000);
        let rel = |owner: &'static str, fence| Release {
            key: b"k",
            owner: owner.as_bytes(),
            fence,
        };
        assert_eq!(release(Some(&held), &rel("a", None), NOW), Ok(()));
        assert_eq!(release(Some(&held), &rel("a", Some(5)), NOW), Ok(()));
        assert_eq!(
            release(Some(&held), &rel("a", Some(4)), NOW),
            Err(LockError::StaleFence {
                given: 4,
                current: 5
            })
        );
        assert_eq!(
            release(Some(&held), &rel("b", None), NOW),
            Err(LockError::NotOwner)
        );
        assert_eq!(
            release(Some(&held), &rel("b", Some(5)), NOW),
            Err(LockError::NotOwner)
        );
        assert_eq!(release(None, &rel("a", None), NOW), Err(LockError::NotHeld));
    }

    #[test]
    fn extend_rules() {
        let held = lease("a", 5, NOW, 1000);
        let ext = |owner: &'static str, ttl, fence| Extend {
            key: b"k",
            owner: owner.as_bytes(),
            ttl_ms: ttl,
            fence,
        };
        let (l, ttl) = extend(
            Some(&held),
            &ext("a", 2000, Some(5)),
            None,
            &LIMITS,
            NOW + 500,
        )
        .unwrap();
        assert_eq!(
            (l.token, l.deadline_ms, l.extensions, ttl),
            (5, NOW + 2500, 1, 2000)
        );
        assert_eq!(
            extend(Some(&held), &ext("b", 2000, None), None, &LIMITS, NOW),
            Err(LockError::NotOwner)
        );
        assert_eq!(
            extend(None, &ext("a", 2000, None), None, &LIMITS, NOW),
            Err(LockError::NotHeld)
        );
        assert!(matches!(
            extend(Some(&held), &ext("a", 70_000, None), None, &LIMITS, NOW),
            Err(LockError::TtlMax { .. })
        ));
        let (_, ttl) = extend(Some(&held), &ext("a", 2000, None), Some(100), &LIMITS, NOW).unwrap();
        assert_eq!(ttl, 100);
    }

    fn survives_the_loaders(l: &Lease) -> Result<(), TestCaseError> {
        let loaded = crate::lease::decode(&crate::lease::encode(l));
        prop_assert_eq!(loaded.as_ref(), Ok(l));
        let replicated =
            crate::lease::parse_grant_fields(&l.owner, crate::lease::GrantFields::of(l).as_bytes());
        prop_assert_eq!(
            replicated,
            Ok(Lease {
                client_id: 0,
                ..l.clone()
            })
        );
        Ok(())
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire(u8, u16),
        Release(u8, bool),
        Extend(u8, u16),
        /// The clock moves, backwards too (a step back, or the next command
        /// served by a node whose clock is behind).
        Tick(i16),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..3, 1u16..2000).prop_map(|(o, t)| Op::Acquire(o, t)),
            (0u8..3, any::<bool>()).prop_map(|(o, f)| Op::Release(o, f)),
            (0u8..3, 1u16..2000).prop_map(|(o, t)| Op::Extend(o, t)),
            (-3000i16..3000).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Against a simple model: at most one holder; only the holder can
        /// release or extend; every fresh grant has a larger token than any
        /// before; a retry returns the holder's token. And every lease the
        /// rules produce passes the loaders' validation (RDB/`RESTORE` and
        /// replicated `LOCK._GRANT`): a primary must never write what its
        /// replicas, its AOF or its next start-up would refuse.
        #[test]
        fn ownership_and_token_rules_hold(ops in proptest::collection::vec(op(), 1..300)) {
            let owners = ["a", "b", "c"];
            let mut clock = TokenClock::new();
            let mut now = NOW;
            let mut state: Option<Lease> = None;
            let mut max_token = 0u64;
            for op in ops {
                match op {
                    Op::Tick(ms) => now += ms as i64,
                    Op::Acquire(o, ttl) => {
                        let owner = owners[o as usize];
                        let holder = state.as_ref().filter(|l| l.is_live(now)).map(|l| (l.owner.clone(), l.token));
                        match acquire(state.as_ref(), &acq(owner, ttl as u64), ME, None, &LIMITS, &mut clock, now).unwrap() {
                            Acquired::Contended => {
                                let (h, _) = holder.expect("contended only when held");
                                prop_assert_ne!(&*h, owner.as_bytes());
                            }
                            Acquired::Granted { lease, fresh, .. } => {
                                match holder {
                                    Some((h, t)) => {
                                        prop_assert_eq!(&*h, owner.as_bytes());
                                        prop_assert!(!fresh);
                                        prop_assert_eq!(lease.token, t);
                                    }
                                    None => {
                                        prop_assert!(fresh);
                                        prop_assert!(lease.token > max_token);
                                        max_token = lease.token;
                                    }
                                }
                                survives_the_loaders(&lease)?;
                                state = Some(lease);
                            }
                        }
                    }
                    Op::Release(o, fenced) => {
                        let owner = owners[o as usize];
                        let fence = if fenced { state.as_ref().map(|l| l.token) } else { None };
                        let r = release(state.as_ref(), &Release { key: b"k", owner: owner.as_bytes(), fence }, now);
                        let live_owner = state.as_ref().filter(|l| l.is_live(now)).map(|l| l.owner.clone());
                        match live_owner {
                            None => prop_assert_eq!(r, Err(LockError::NotHeld)),
                            Some(h) if *h == *owner.as_bytes() => { prop_assert_eq!(r, Ok(())); state = None; }
                            Some(_) => prop_assert_eq!(r, Err(LockError::NotOwner)),
                        }
                    }
                    Op::Extend(o, ttl) => {
                        let owner = owners[o as usize];
                        let r = extend(state.as_ref(), &Extend { key: b"k", owner: owner.as_bytes(), ttl_ms: ttl as u64, fence: None }, None, &LIMITS, now);
                        let live_owner = state.as_ref().filter(|l| l.is_live(now)).map(|l| (l.owner.clone(), l.token));
                        match (live_owner, r) {
                            (None, r) => prop_assert_eq!(r, Err(LockError::NotHeld)),
                            (Some((h, t)), Ok((l, _))) => {
                                prop_assert_eq!(&*h, owner.as_bytes());
                                prop_assert_eq!(l.token, t);
                                prop_assert_eq!(l.deadline_ms, now + ttl as i64);
                                survives_the_loaders(&l)?;
                                state = Some(l);
                            }
                            (Some((h, _)), Err(e)) => {
                                prop_assert_ne!(&*h, owner.as_bytes());
                                prop_assert_eq!(e, LockError::NotOwner);
                            }
                        }
                    }
                }
            }
        }
    }
}
