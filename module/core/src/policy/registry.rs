//! The installed policies and how a command is evaluated against them.

use super::engine::{CompiledPolicy, encode_request};
use super::error::one_line;
use super::{EvalFailure, EvalLimits, FailureMode, LoadError, Mode, PolicySpec};
use crate::error::{LockError, MAX_REASON_CHARS};
use lockwarden_sdk::abi::{Decision, Operation, Request};
use lockwarden_sdk::glob_match;
use std::fmt;
use std::time::Instant;

/// The installed policies, in load order. Owned by the thread that runs lock
/// commands (Redis' main thread).
#[derive(Default)]
pub struct Registry {
    entries: Vec<Entry>,
    /// The encoded request, reused from command to command.
    scratch: Vec<u8>,
}

struct Entry {
    policy: CompiledPolicy,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    evaluations: u64,
    denials: u64,
    failures: u64,
    /// Total time of the timed evaluations (one in [`TIME_EVERY`], to keep
    /// two clock reads off most calls) and how many were timed.
    eval_ns: u64,
    timed: u64,
}

/// Every how many evaluations one is timed for the mean.
const TIME_EVERY: u64 = 8;

/// One installed policy, as `LOCK.POLICY LIST` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyInfo {
    /// The policy's name.
    pub name: String,
    /// The key glob.
    pub keys: Vec<u8>,
    /// Enforce or audit.
    pub mode: Mode,
    /// Size of the module, bytes.
    pub size: usize,
    /// SHA-256 of the module, lower-case hex.
    pub sha256: String,
    /// Evaluations since it was installed (dry runs excluded).
    pub evaluations: u64,
    /// Denials among them (in audit mode: would-be denials).
    pub denials: u64,
    /// Failures among them.
    pub failures: u64,
    /// Mean wall time of an evaluation, ns, sampled on one evaluation in
    /// eight (including the rebuild of the
    /// instance after a failure); 0 before the first one.
    pub mean_eval_ns: u64,
    /// Why the policy is unusable, if its instance failed and could not be
    /// rebuilt; it then fails every evaluation until replaced.
    pub broken: Option<String>,
}

/// The outcome of [`Registry::evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Evaluation {
    /// `Ok(ceiling)` to let the command proceed, with the smallest TTL clamp
    /// of the enforcing policies (`None`: no clamp); or the error to reply
    /// with (`DENIED` or `POLICY`).
    pub verdict: Result<Option<u64>, LockError>,
    /// What the adaptor should log: audit-mode observations and failures that
    /// did not fail the command. Empty (and unallocated) in the common case.
    pub notes: Vec<Note>,
}

/// Something that happened during an evaluation without deciding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// An audit-mode policy would have denied the command.
    AuditDeny {
        /// The policy's name.
        policy: String,
        /// Its reason.
        reason: String,
    },
    /// An audit-mode policy would have clamped the TTL.
    AuditClamp {
        /// The policy's name.
        policy: String,
        /// The TTL it would have allowed, ms.
        ttl_ms: u64,
    },
    /// A policy failed and the command went on: the policy is in audit mode,
    /// or the failure mode is [`FailureMode::Allow`].
    Failure {
        /// The policy's name.
        policy: String,
        /// What went wrong.
        cause: String,
    },
}

impl fmt::Display for Note {
    /// One line for the log; policy-supplied text is made safe for it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Note::AuditDeny { policy, reason } => write!(
                f,
                "policy {policy} (audit) would deny: {}",
                one_line(reason, MAX_REASON_CHARS)
            ),
            Note::AuditClamp { policy, ttl_ms } => {
                write!(
                    f,
                    "policy {policy} (audit) would clamp the ttl to {ttl_ms} ms"
                )
            }
            Note::Failure { policy, cause } => write!(
                f,
                "policy {policy} failed (ignored): {}",
                one_line(cause, MAX_REASON_CHARS)
            ),
        }
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs a compiled policy at the end of the load order. A policy of
    /// the same name is an error, unless `replace`: then the new policy takes
    /// the old one's place in the load order, with fresh counters.
    pub fn install(&mut self, policy: CompiledPolicy, replace: bool) -> Result<(), LoadError> {
        let entry = Entry {
            policy,
            stats: Stats::default(),
        };
        match self.position(entry.policy.name()) {
            Some(i) if replace => self.entries[i] = entry,
            Some(_) => {
                return Err(LoadError::new(format!(
                    "policy '{}' is already loaded (use REPLACE to replace it)",
                    entry.policy.name()
                )));
            }
            None => self.entries.push(entry),
        }
        Ok(())
    }

    /// Is exactly `spec` installed, with a working instance? (Loading it
    /// again would change nothing.)
    pub fn has_working(&self, spec: &PolicySpec) -> bool {
        self.entries
            .iter()
            .any(|e| e.policy.spec() == spec && e.policy.broken().is_none())
    }

    /// Is exactly `spec` installed, working or broken? (A broken one
    /// retries its start by itself.)
    pub fn has_spec(&self, spec: &PolicySpec) -> bool {
        self.entries.iter().any(|e| e.policy.spec() == spec)
    }

    /// Puts the policies named in `order` in that order (a loaded dataset's),
    /// after any policy it does not name, which keep their own order.
    pub fn reorder(&mut self, order: &[&str]) {
        self.entries.sort_by_key(|e| {
            order
                .iter()
                .position(|n| *n == e.policy.name())
                .map_or(0, |i| i + 1)
        });
    }

    /// Removes a policy; `false` if there is none of that name.
    pub fn unload(&mut self, name: &str) -> bool {
        match self.position(name) {
            Some(i) => {
                self.entries.remove(i);
                true
            }
            None => false,
        }
    }

    /// Whether no policy is installed (then [`Registry::evaluate`] allows
    /// everything; checking this first saves building a request).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Does any policy that applies to `key` read `caller.user`? If none
    /// does, the host can leave it empty and save the lookup.
    pub fn reads_caller_user(&self, key: &[u8]) -> bool {
        self.entries
            .iter()
            .any(|e| e.policy.reads_caller_user() && glob_match(&e.policy.spec().keys, key))
    }

    /// The installed policies with their counters, in load order.
    pub fn list(&self) -> Vec<PolicyInfo> {
        self.entries
            .iter()
            .map(|e| {
                let spec = e.policy.spec();
                PolicyInfo {
                    name: spec.name.clone(),
                    keys: spec.keys.clone(),
                    mode: spec.mode,
                    size: spec.wasm.len(),
                    sha256: e.policy.sha256_hex(),
                    evaluations: e.stats.evaluations,
                    denials: e.stats.denials,
                    failures: e.stats.failures,
                    mean_eval_ns: e.stats.eval_ns.checked_div(e.stats.timed).unwrap_or(0),
                    broken: e.policy.broken().map(str::to_owned),
                }
            })
            .collect()
    }

    /// The specs of the installed policies, in load order: what to persist
    /// and replicate.
    pub fn specs(&self) -> impl Iterator<Item = &PolicySpec> {
        self.entries.iter().map(|e| e.policy.spec())
    }

    /// Decides a lock command.
    ///
    /// Every policy whose key glob matches `request.key` is asked, in load
    /// order. The first denial of an enforcing policy wins: the command fails
    /// with `DENIED` and later policies are not asked. Enforcing clamps
    /// combine to the smallest (clamps are ignored for releases). Audit-mode
    /// policies never change the outcome: their denials, clamps and failures
    /// become [`Note`]s. A failure of an enforcing policy fails the command
    /// with `POLICY` under [`FailureMode::Deny`], or becomes a note under
    /// [`FailureMode::Allow`]. Every evaluation, denial (would-be denials
    /// included) and failure is counted.
    pub fn evaluate(
        &mut self,
        request: &Request<'_>,
        limits: EvalLimits,
        failure: FailureMode,
    ) -> Evaluation {
        let mut ceiling: Option<u64> = None;
        let mut notes = Vec::new();
        // Encoded once, when the first policy matches.
        let mut encoded: Option<Result<(), EvalFailure>> = None;
        for entry in &mut self.entries {
            let spec = entry.policy.spec();
            if !glob_match(&spec.keys, request.key) {
                continue;
            }
            let audit = spec.mode == Mode::Audit;
            let input = encoded.get_or_insert_with(|| encode_request(request, &mut self.scratch));
            let started = (entry.stats.evaluations % TIME_EVERY == 0).then(Instant::now);
            let outcome = match input {
                Ok(()) => entry.policy.evaluate(&self.scratch, limits),
                Err(refused) => Err(refused.clone()),
            };
            let stats = &mut entry.stats;
            if let Some(started) = started {
                stats.eval_ns = stats.eval_ns.saturating_add(elapsed_ns(started));
                stats.timed += 1;
            }
            stats.evaluations += 1;
            match outcome {
                Ok(Decision::Allow) => {}
                Ok(Decision::Clamp(_)) if request.op == Operation::Release => {}
                Ok(Decision::Clamp(ttl_ms)) if audit => notes.push(Note::AuditClamp {
                    policy: entry.policy.name().to_owned(),
                    ttl_ms,
                }),
                Ok(Decision::Clamp(ttl_ms)) => {
                    ceiling = Some(ceiling.map_or(ttl_ms, |c| c.min(ttl_ms)))
                }
                Ok(Decision::Deny(reason)) => {
                    stats.denials += 1;
                    let policy = entry.policy.name().to_owned();
                    if audit {
                        notes.push(Note::AuditDeny { policy, reason });
                    } else {
                        return Evaluation {
                            verdict: Err(LockError::Denied { policy, reason }),
                            notes,
                        };
                    }
                }
                Err(failed) => {
                    stats.failures += 1;
                    let (policy, cause) = (entry.policy.name().to_owned(), failed.to_string());
                    if audit || failure == FailureMode::Allow {
                        notes.push(Note::Failure { policy, cause });
                    } else {
                        return Evaluation {
                            verdict: Err(LockError::Policy { policy, cause }),
                            notes,
                        };
                    }
                }
            }
        }
        Evaluation {
            verdict: Ok(ceiling),
            notes,
        }
    }

    /// `LOCK.POLICY EVAL`: the decision of the named policy alone, whatever
    /// its key glob and mode, from an instance of its own (the live one is
    /// untouched, also by a failure). Nothing is counted (a dry run is not
    /// an evaluation of a command). Errors: `ERR` for an unknown policy,
    /// `POLICY` for a failure.
    pub fn dry_run(
        &mut self,
        name: &str,
        request: &Request<'_>,
        limits: EvalLimits,
    ) -> Result<Decision, LockError> {
        let Some(entry) = self.entries.iter().find(|e| e.policy.name() == name) else {
            return Err(LockError::syntax(format!(
                "no such policy '{}'",
                one_line(name, MAX_REASON_CHARS)
            )));
        };
        let policy = &entry.policy;
        encode_request(request, &mut self.scratch)
            .and_then(|()| policy.dry_run(&self.scratch, limits))
            .map_err(|failed| LockError::Policy {
                policy: policy.name().to_owned(),
                cause: failed.to_string(),
            })
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.policy.name() == name)
    }
}

/// Nanoseconds since `started`, saturating.
fn elapsed_ns(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
