//! Running one policy outside Redis, through the same engine: for policy
//! authors' tests and the `lockwarden-policy` tool.

use super::engine::encode_request;
use super::{CompiledPolicy, EvalFailure, EvalLimits, LoadError, Mode, PolicyEngine, PolicySpec};
use lockwarden_sdk::abi::{Decision, Request};
use std::io::Read;
use std::path::Path;

/// The module size limit of [`PolicyRunner::from_file`]: the server's
/// default (`lockwarden.policy-max-module-kb`).
pub const DEFAULT_MAX_MODULE_BYTES: usize = 4 << 20;

/// One policy, loaded and evaluated exactly as the server does.
///
/// ```no_run
/// use lockwarden_core::policy::PolicyRunner;
/// use lockwarden_sdk::{Caller, Decision, Operation, Request};
///
/// let mut policy = PolicyRunner::from_file(
///     "target/policies/max-ttl.wasm",
///     br#"{"default_ms": 30000}"#,
/// ).unwrap();
/// let request = Request {
///     op: Operation::Acquire,
///     key: b"orders:1",
///     owner: b"worker-1",
///     ttl_ms: 60_000,
///     now_ms: 1_800_000_000_000,
///     holder: None,
///     caller: Caller { client_id: 1, user: b"default" },
///     waiters: 0,
/// };
/// assert_eq!(policy.evaluate(&request).unwrap(), Decision::Clamp(30_000));
/// ```
pub struct PolicyRunner {
    policy: CompiledPolicy,
    limits: EvalLimits,
    scratch: Vec<u8>,
}

impl PolicyRunner {
    /// Loads a policy from a `.wasm` file with the given settings (JSON for
    /// SDK policies), under [`EvalLimits::DEFAULT`] and a module size limit of
    /// [`DEFAULT_MAX_MODULE_BYTES`]. The policy is named after the file.
    pub fn from_file(path: impl AsRef<Path>, settings: &[u8]) -> Result<Self, LoadError> {
        Self::from_file_with_limits(path, settings, EvalLimits::DEFAULT)
    }

    /// [`PolicyRunner::from_file`] with other limits, used for loading and
    /// for every evaluation.
    pub fn from_file_with_limits(
        path: impl AsRef<Path>,
        settings: &[u8],
        limits: EvalLimits,
    ) -> Result<Self, LoadError> {
        let path = path.as_ref();
        let unreadable =
            |e: std::io::Error| LoadError::new(format!("cannot read {}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        if size > DEFAULT_MAX_MODULE_BYTES as u64 {
            return Err(LoadError::new(format!(
                "{} is {size} bytes; the maximum module size is {DEFAULT_MAX_MODULE_BYTES}",
                path.display()
            )));
        }
        // Read at most one byte more than allowed, in case the file grew.
        let mut wasm = Vec::new();
        file.take(DEFAULT_MAX_MODULE_BYTES as u64 + 1)
            .read_to_end(&mut wasm)
            .map_err(unreadable)?;
        Self::from_bytes(&name_from_path(path), wasm, settings, limits)
    }

    /// Loads a policy from its bytes.
    pub fn from_bytes(
        name: &str,
        wasm: Vec<u8>,
        settings: &[u8],
        limits: EvalLimits,
    ) -> Result<Self, LoadError> {
        let spec = PolicySpec {
            name: name.to_owned(),
            keys: b"*".to_vec(),
            mode: Mode::Enforce,
            settings: settings.to_vec(),
            wasm,
        };
        let policy = PolicyEngine::new()?.compile(spec, DEFAULT_MAX_MODULE_BYTES, limits)?;
        Ok(PolicyRunner {
            policy,
            limits,
            scratch: Vec::new(),
        })
    }

    /// The loaded policy (name, spec, hash).
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    /// Evaluates one request, as the server would for this policy alone.
    /// After a failure the instance is rebuilt, as in the server.
    pub fn evaluate(&mut self, request: &Request<'_>) -> Result<Decision, EvalFailure> {
        encode_request(request, &mut self.scratch)?;
        self.policy.evaluate(&self.scratch, self.limits)
    }
}

/// A valid policy name from a file name: its stem, with other characters
/// replaced by `_`, cut to the maximum length.
fn name_from_path(path: &Path) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.:".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(PolicySpec::MAX_NAME_LEN)
        .collect();
    if name.is_empty() {
        "policy".to_owned()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_file_stems() {
        assert_eq!(name_from_path(Path::new("/x/max-ttl.wasm")), "max-ttl");
        assert_eq!(
            name_from_path(Path::new("my policy (2).wasm")),
            "my_policy__2_"
        );
        assert_eq!(name_from_path(Path::new("/")), "policy");
        let long = format!("{}.wasm", "é".repeat(100));
        let name = name_from_path(Path::new(&long));
        assert!(PolicySpec::check_name(&name).is_ok(), "{name}");
    }
}
