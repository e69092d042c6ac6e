//! Writing policies: implement [`Policy`], export it with [`export_policy!`],
//! and test it natively with [`testing::PolicyTester`].
//!
//! ```
//! use lockwarden_sdk::{Decision, Policy, Request};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Settings { max_ms: u64 }
//!
//! struct Cap(u64);
//!
//! impl Policy for Cap {
//!     type Settings = Settings;
//!     fn new(s: Settings) -> Result<Self, String> {
//!         if s.max_ms == 0 { return Err("max_ms must be positive".into()); }
//!         Ok(Cap(s.max_ms))
//!     }
//!     fn evaluate(&self, req: &Request<'_>) -> Decision {
//!         if req.ttl_ms > self.0 { Decision::Clamp(self.0) } else { Decision::Allow }
//!     }
//! }
//!
//! lockwarden_sdk::export_policy!(Cap);
//!
//! let p = lockwarden_sdk::policy::testing::PolicyTester::<Cap>::new(r#"{"max_ms": 1000}"#).unwrap();
//! assert_eq!(p.acquire("k", "me", 5000), Decision::Clamp(1000));
//! ```

use crate::abi::{self, Configured, Decision, Output, Request};
use serde::de::DeserializeOwned;
use std::cell::RefCell;

/// A lock policy: configured once from its settings, then asked for a
/// [`Decision`] on every lock command whose key matches its glob.
///
/// `evaluate` should be a pure function of the request and the settings: it
/// runs inline in the Redis server under a fuel budget, on the primary only.
pub trait Policy: Sized + 'static {
    /// The settings, parsed from the JSON given with `LOCK.POLICY LOAD ... CONFIG`.
    /// Empty settings are parsed as `{}`.
    type Settings: DeserializeOwned;

    /// Builds the policy from its settings, or rejects them with a message
    /// that is shown to the operator running `LOCK.POLICY LOAD`.
    fn new(settings: Self::Settings) -> Result<Self, String>;

    /// Decides one request.
    fn evaluate(&self, request: &Request<'_>) -> Decision;

    /// Whether [`evaluate`](Policy::evaluate) reads `request.caller.user`.
    /// Filling it costs the server a lookup per command, so a policy that
    /// does not look at the user should say `false`: the server then leaves
    /// it empty (and so does [`testing::PolicyTester`]).
    const READS_CALLER_USER: bool = true;
}

/// Parses policy settings from JSON bytes; empty (or all-whitespace) settings
/// mean `{}`.
pub fn parse_settings<S: DeserializeOwned>(bytes: &[u8]) -> Result<S, String> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| format!("invalid settings: {e}"))
}

/// Builds a policy from raw settings bytes.
pub fn configure<P: Policy>(settings: &[u8]) -> Result<P, String> {
    parse_settings::<P::Settings>(settings).and_then(P::new)
}

/// Guest-side runtime used by [`export_policy!`]. Not meant to be called
/// directly.
#[doc(hidden)]
pub mod guest {
    use super::*;

    thread_local! {
        static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        static OUTPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// `lockwarden_request_fields`: the optional request fields `P` reads.
    pub fn request_fields<P: Policy>() -> i32 {
        let mut fields = 0;
        if P::READS_CALLER_USER {
            fields |= abi::fields::CALLER_USER;
        }
        fields as i32
    }

    /// `lockwarden_buffer`: grows the input buffer to `len` bytes.
    pub fn buffer(len: i32) -> i32 {
        let len = usize::try_from(len).unwrap_or(0);
        INPUT.with(|b| {
            let mut b = b.borrow_mut();
            if b.len() < len {
                b.resize(len, 0);
            }
            b.as_mut_ptr() as usize as i32
        })
    }

    fn with_input<R>(len: i32, f: impl FnOnce(&[u8]) -> R) -> R {
        INPUT.with(|b| {
            let b = b.borrow();
            let len = usize::try_from(len).unwrap_or(usize::MAX).min(b.len());
            f(&b[..len])
        })
    }

    /// Lets `write` fill the output buffer; returns where it is, as the
    /// ABI's return value.
    fn output(write: impl FnOnce(&mut Vec<u8>)) -> i64 {
        OUTPUT.with(|o| {
            let mut o = o.borrow_mut();
            write(&mut o);
            Output {
                ptr: o.as_ptr() as usize as u32,
                len: o.len() as u32,
            }
            .pack()
        })
    }

    /// `lockwarden_configure`: builds the policy from the settings in the
    /// input buffer and hands it to `store`.
    pub fn configure<P: Policy>(len: i32, store: impl FnOnce(P)) -> i64 {
        let answer = match with_input(len, super::configure::<P>) {
            Ok(policy) => {
                store(policy);
                Configured::Ok
            }
            Err(message) => Configured::Rejected(message),
        };
        output(|o| abi::encode_into(&answer, o).expect("encoding an ABI value cannot fail"))
    }

    /// `lockwarden_evaluate`: decodes the request in the input buffer and
    /// evaluates it. An undecodable request or a missing configuration is a
    /// host bug; the guest traps, which the host reports as a policy failure.
    pub fn evaluate<P: Policy>(policy: Option<&P>, len: i32) -> i64 {
        let policy = policy.expect("lockwarden_evaluate called before lockwarden_configure");
        let decision = with_input(len, |bytes| {
            let request = Request::decode(bytes).expect("undecodable request");
            policy.evaluate(&request)
        });
        output(|o| decision.encode_into(o))
    }
}

/// Exports a [`Policy`] implementation as a lockwarden policy module.
///
/// On `wasm32` targets this defines the exports of ABI version
/// [`abi::ABI_VERSION`]; on native targets it expands to nothing, so the same
/// crate can be unit-tested with `cargo test`.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        mod __lockwarden_policy_exports {
            use super::*;

            ::std::thread_local! {
                static POLICY: ::core::cell::RefCell<::core::option::Option<$policy>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn lockwarden_abi_version() -> i32 {
                $crate::abi::ABI_VERSION as i32
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn lockwarden_request_fields() -> i32 {
                $crate::policy::guest::request_fields::<$policy>()
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn lockwarden_buffer(len: i32) -> i32 {
                $crate::policy::guest::buffer(len)
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn lockwarden_configure(len: i32) -> i64 {
                $crate::policy::guest::configure::<$policy>(len, |p| {
                    POLICY.with(|slot| *slot.borrow_mut() = ::core::option::Option::Some(p))
                })
            }

            #[unsafe(no_mangle)]
            pub extern "C" fn lockwarden_evaluate(len: i32) -> i64 {
                POLICY.with(|slot| $crate::policy::guest::evaluate(slot.borrow().as_ref(), len))
            }
        }
    };
}

/// Native testing of policies, without Wasm and without Redis.
pub mod testing {
    use super::*;
    use crate::abi::{Caller, Holder, Operation};

    /// Runs a [`Policy`] natively. Every request and decision goes through the
    /// encoders and decoders the server and a shipped policy use, so a test
    /// exercises the decoding the shipped policy will do.
    pub struct PolicyTester<P: Policy> {
        policy: P,
    }

    impl<P: Policy> PolicyTester<P> {
        /// Configures the policy from JSON settings, as `LOCK.POLICY LOAD`
        /// would; `Err` carries the policy's rejection message.
        pub fn new(settings_json: &str) -> Result<Self, String> {
            configure::<P>(settings_json.as_bytes()).map(|policy| PolicyTester { policy })
        }

        /// Evaluates a request built with [`RequestBuilder`].
        pub fn evaluate(&self, request: &RequestBuilder) -> Decision {
            let mut request = request.as_request();
            if !P::READS_CALLER_USER {
                // As the server does for a policy that does not read it.
                request.caller.user = b"";
            }
            let mut bytes = Vec::new();
            request.encode_into(&mut bytes);
            let decoded = Request::decode(&bytes).expect("decode request");
            self.policy.evaluate(&decoded).encode_into(&mut bytes);
            abi::decode(&bytes).expect("decode decision")
        }

        /// Shorthand: a free-lock acquire at the current time.
        pub fn acquire(&self, key: &str, owner: &str, ttl_ms: u64) -> Decision {
            self.evaluate(&RequestBuilder::acquire(key, owner, ttl_ms))
        }
    }

    /// An owned, mutable request for tests.
    #[derive(Clone, Debug)]
    pub struct RequestBuilder {
        /// The operation.
        pub op: Operation,
        /// The key.
        pub key: Vec<u8>,
        /// The owner.
        pub owner: Vec<u8>,
        /// Requested TTL.
        pub ttl_ms: u64,
        /// Server time, unix ms.
        pub now_ms: u64,
        /// Current holder: (owner, token, held_ms, extensions).
        pub holder: Option<(Vec<u8>, u64, u64, u32)>,
        /// Caller client id.
        pub client_id: u64,
        /// Caller ACL user.
        pub user: Vec<u8>,
        /// Number of waiters.
        pub waiters: u32,
    }

    impl RequestBuilder {
        /// A request for `op` at the current wall-clock time.
        pub fn new(op: Operation, key: &str, owner: &str, ttl_ms: u64) -> Self {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            RequestBuilder {
                op,
                key: key.as_bytes().to_vec(),
                owner: owner.as_bytes().to_vec(),
                ttl_ms,
                now_ms,
                holder: None,
                client_id: 1,
                user: b"default".to_vec(),
                waiters: 0,
            }
        }

        /// An acquire of a free lock.
        pub fn acquire(key: &str, owner: &str, ttl_ms: u64) -> Self {
            Self::new(Operation::Acquire, key, owner, ttl_ms)
        }

        /// An extend by the current holder `owner`, who has held it `held_ms`
        /// and extended it `extensions` times.
        pub fn extend(key: &str, owner: &str, ttl_ms: u64, held_ms: u64, extensions: u32) -> Self {
            let mut r = Self::new(Operation::Extend, key, owner, ttl_ms);
            r.holder = Some((owner.as_bytes().to_vec(), 1, held_ms, extensions));
            r
        }

        /// A release by the current holder `owner`.
        pub fn release(key: &str, owner: &str) -> Self {
            let mut r = Self::new(Operation::Release, key, owner, 0);
            r.holder = Some((owner.as_bytes().to_vec(), 1, 0, 0));
            r
        }

        /// Sets the server time.
        pub fn at(mut self, now_ms: u64) -> Self {
            self.now_ms = now_ms;
            self
        }

        /// The borrowed ABI view of this request.
        pub fn as_request(&self) -> Request<'_> {
            Request {
                op: self.op,
                key: &self.key,
                owner: &self.owner,
                ttl_ms: self.ttl_ms,
                now_ms: self.now_ms,
                holder: self
                    .holder
                    .as_ref()
                    .map(|(owner, token, held_ms, extensions)| Holder {
                        owner,
                        token: *token,
                        held_ms: *held_ms,
                        extensions: *extensions,
                    }),
                caller: Caller {
                    client_id: self.client_id,
                    user: &self.user,
                },
                waiters: self.waiters,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::PolicyTester;
    use super::*;

    /// Denies when it sees no user.
    struct NeedsUser;
    /// The same decision, declared not to read the user.
    struct IgnoresUser;

    fn by_user(request: &Request<'_>) -> Decision {
        if request.caller.user.is_empty() {
            Decision::Deny("no user".into())
        } else {
            Decision::Allow
        }
    }

    impl Policy for NeedsUser {
        type Settings = serde::de::IgnoredAny;
        fn new(_: Self::Settings) -> Result<Self, String> {
            Ok(NeedsUser)
        }
        fn evaluate(&self, request: &Request<'_>) -> Decision {
            by_user(request)
        }
    }

    impl Policy for IgnoresUser {
        type Settings = serde::de::IgnoredAny;
        const READS_CALLER_USER: bool = false;
        fn new(_: Self::Settings) -> Result<Self, String> {
            Ok(IgnoresUser)
        }
        fn evaluate(&self, request: &Request<'_>) -> Decision {
            by_user(request)
        }
    }

    #[test]
    fn the_exported_request_fields_follow_the_declaration() {
        assert_eq!(
            guest::request_fields::<NeedsUser>(),
            abi::fields::CALLER_USER as i32
        );
        assert_eq!(guest::request_fields::<IgnoresUser>(), 0);
    }

    #[test]
    fn the_tester_leaves_the_user_out_as_the_server_does() {
        let needs = PolicyTester::<NeedsUser>::new("").unwrap();
        assert_eq!(needs.acquire("k", "me", 1000), Decision::Allow);
        let ignores = PolicyTester::<IgnoresUser>::new("").unwrap();
        assert_eq!(
            ignores.acquire("k", "me", 1000),
            Decision::Deny("no user".into())
        );
    }
}
