//! Server-enforced TTL limits (`lockwarden.min-ttl-ms`, `lockwarden.max-ttl-ms`,
//! `lockwarden.clamp-ttl`).

use crate::error::LockError;

/// The TTL limits in force for a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TtlLimits {
    /// Smallest TTL granted; below it the command fails with `TTLMIN`.
    pub min_ms: u64,
    /// Largest TTL granted.
    pub max_ms: u64,
    /// Above `max_ms`: clamp (`true`) or fail with `TTLMAX` (`false`).
    pub clamp: bool,
}

impl Default for TtlLimits {
    fn default() -> Self {
        TtlLimits {
            min_ms: 1,
            max_ms: 60_000,
            clamp: false,
        }
    }
}

impl TtlLimits {
    /// The TTL to grant for `requested`, after a policy ceiling (the minimum
    /// of all policy clamps, if any) and then the server limits.
    pub fn grant(&self, requested: u64, policy_cap: Option<u64>) -> Result<u64, LockError> {
        let ttl = policy_cap.map_or(requested, |cap| requested.min(cap));
        if ttl > self.max_ms {
            return if self.clamp {
                Ok(self.max_ms)
            } else {
                Err(LockError::TtlMax {
                    requested: ttl,
                    max: self.max_ms,
                })
            };
        }
        if ttl < self.min_ms.max(1) {
            return Err(LockError::TtlMin {
                requested: ttl,
                min: self.min_ms.max(1),
            });
        }
        Ok(ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: TtlLimits = TtlLimits {
        min_ms: 10,
        max_ms: 1000,
        clamp: false,
    };

    #[test]
    fn within_limits_is_granted_as_asked() {
        assert_eq!(STRICT.grant(500, None), Ok(500));
        assert_eq!(STRICT.grant(1000, None), Ok(1000));
        assert_eq!(STRICT.grant(10, None), Ok(10));
    }

    #[test]
    fn above_max_is_rejected_or_clamped() {
        assert_eq!(
            STRICT.grant(1001, None),
            Err(LockError::TtlMax {
                requested: 1001,
                max: 1000
            })
        );
        let clamp = TtlLimits {
            clamp: true,
            ..STRICT
        };
        assert_eq!(clamp.grant(5_000_000, None), Ok(1000));
    }

    #[test]
    fn below_min_is_rejected() {
        assert_eq!(
            STRICT.grant(9, None),
            Err(LockError::TtlMin {
                requested: 9,
                min: 10
            })
        );
        let clamp = TtlLimits {
            clamp: true,
            ..STRICT
        };
        assert!(clamp.grant(9, None).is_err());
    }

    #[test]
    fn policy_clamps_apply_before_the_server_limits() {
        assert_eq!(STRICT.grant(5000, Some(800)), Ok(800));
        assert_eq!(STRICT.grant(300, Some(800)), Ok(300));
        assert!(matches!(
            STRICT.grant(500, Some(5)),
            Err(LockError::TtlMin { .. })
        ));
    }
}
