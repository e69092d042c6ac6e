//! Parsing of command arguments into typed requests. A parse error is an
//! `ERR` reply and changes nothing. Arguments are passed without the command
//! name; options are case-insensitive and may appear in any order, once.

use crate::error::LockError;
use crate::lease::{Lease, MAX_OWNER_LEN};

/// `LOCK.ACQUIRE key owner ttl-ms [WAIT timeout-ms] [SESSION]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acquire<'a> {
    /// The lock's key.
    pub key: &'a [u8],
    /// Who asks.
    pub owner: &'a [u8],
    /// Requested lease, ms.
    pub ttl_ms: u64,
    /// Block up to this many ms for the lock (`Some(0)`: no limit).
    pub wait_ms: Option<u64>,
    /// Release when the connection closes.
    pub session: bool,
}

/// `LOCK.RELEASE key owner [FENCE token]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Release<'a> {
    /// The lock's key.
    pub key: &'a [u8],
    /// Who asks.
    pub owner: &'a [u8],
    /// Required current token.
    pub fence: Option<u64>,
}

/// `LOCK.EXTEND key owner ttl-ms [FENCE token]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extend<'a> {
    /// The lock's key.
    pub key: &'a [u8],
    /// Who asks.
    pub owner: &'a [u8],
    /// New lease from now, ms.
    pub ttl_ms: u64,
    /// Required current token.
    pub fence: Option<u64>,
}

/// `LOCK._GRANT key owner fields`: the replicated effect of a grant or
/// extension (see [`crate::lease::GrantFields`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant<'a> {
    /// The lock's key.
    pub key: &'a [u8],
    /// The lease to store (client id 0).
    pub lease: Lease,
}

/// `LOCK.LIST [CURSOR cursor] [MATCH glob] [HELDMORE ms] [COUNT n]`: one
/// bounded step of a scan over the locks of the current database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List<'a> {
    /// Where to continue (`0` starts a new scan).
    pub cursor: u64,
    /// Only keys matching this glob.
    pub pattern: Option<&'a [u8]>,
    /// Only locks held longer than this, ms.
    pub held_more_ms: Option<u64>,
    /// How many keys to examine in this step (like `SCAN ... COUNT`).
    pub count: u64,
}

/// `LOCK.POLICY LOAD name [KEYS glob] [MODE enforce|audit] [CONFIG settings] [REPLACE] WASM bytes`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyLoad<'a> {
    /// The policy's name.
    pub name: &'a [u8],
    /// Key glob (default `*`).
    pub keys: &'a [u8],
    /// Enforce or audit.
    pub mode: crate::policy::Mode,
    /// Settings for the policy (default empty).
    pub settings: &'a [u8],
    /// Replace a policy of the same name.
    pub replace: bool,
    /// The module.
    pub wasm: &'a [u8],
}

/// `LOCK.POLICY EVAL name ACQUIRE|EXTEND|RELEASE key owner ttl-ms`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyEval<'a> {
    /// The policy's name.
    pub name: &'a [u8],
    /// The operation to simulate.
    pub op: lockwarden_sdk::Operation,
    /// The lock's key.
    pub key: &'a [u8],
    /// The owner.
    pub owner: &'a [u8],
    /// The TTL asked for.
    pub ttl_ms: u64,
}

/// Default and largest `COUNT` of `LOCK.LIST`.
pub const LIST_DEFAULT_COUNT: u64 = 100;
pub const LIST_MAX_COUNT: u64 = 10_000;

#[cold]
fn arity(cmd: &str) -> LockError {
    invalid(format_args!(
        "wrong number of arguments for '{cmd}' command"
    ))
}

/// A syntax error, built out of line: the parsers' common path stays short
/// (it runs on every command, and its code competes for the instruction
/// cache with the server's own).
#[cold]
#[inline(never)]
fn invalid(message: std::fmt::Arguments<'_>) -> LockError {
    LockError::syntax(message.to_string())
}

/// Parses a strictly formatted non-negative decimal integer (no sign, no
/// spaces, no leading zeros, at most 19 digits).
pub fn parse_u64(arg: &[u8]) -> Option<u64> {
    // As Redis: no leading zeros. At most 19 digits: always below u64::MAX.
    if arg.is_empty() || arg.len() > 19 || (arg.len() > 1 && arg[0] == b'0') {
        return None;
    }
    let mut v = 0u64;
    for &d in arg {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v * 10 + u64::from(d - b'0');
    }
    Some(v)
}

/// Parses a strictly formatted signed decimal integer.
pub fn parse_i64(arg: &[u8]) -> Option<i64> {
    match arg.split_first() {
        Some((b'-', digits)) => parse_u64(digits)
            .and_then(|v| i64::try_from(v).ok())
            .map(|v| -v),
        _ => parse_u64(arg).and_then(|v| i64::try_from(v).ok()),
    }
}

fn positive(arg: &[u8], what: &str) -> Result<u64, LockError> {
    match parse_u64(arg) {
        Some(v) if v > 0 && v <= i64::MAX as u64 => Ok(v),
        _ => Err(invalid(format_args!("{what} must be a positive integer"))),
    }
}

fn non_negative(arg: &[u8], what: &str) -> Result<u64, LockError> {
    match parse_u64(arg) {
        Some(v) if v <= i64::MAX as u64 => Ok(v),
        _ => Err(invalid(format_args!(
            "{what} must be a non-negative integer"
        ))),
    }
}

use lockwarden_sdk::MAX_WAIT_MS;

fn wait_timeout(arg: &[u8]) -> Result<u64, LockError> {
    match parse_u64(arg) {
        Some(v) if v <= MAX_WAIT_MS => Ok(v),
        _ => Err(invalid(format_args!(
            "WAIT timeout-ms must be an integer from 0 to {MAX_WAIT_MS}"
        ))),
    }
}

fn token(arg: &[u8]) -> Result<u64, LockError> {
    match parse_u64(arg) {
        Some(v) if v > 0 && v <= i64::MAX as u64 => Ok(v),
        _ => Err(invalid(format_args!("token must be a positive integer"))),
    }
}

fn owner(arg: &[u8]) -> Result<&[u8], LockError> {
    if arg.is_empty() || arg.len() > MAX_OWNER_LEN {
        Err(invalid(format_args!(
            "owner must be 1 to {MAX_OWNER_LEN} bytes"
        )))
    } else {
        Ok(arg)
    }
}

/// One parsed option: its canonical name and its value, if it takes one.
type Opt<'a> = (&'static str, Option<&'a [u8]>);

/// Walks `[NAME value] [FLAG]` options. `with_value` names the options that
/// take a value; each option may appear once.
struct Options<'a, 'b> {
    args: &'b [&'a [u8]],
    seen: Vec<&'static str>,
}

impl<'a, 'b> Options<'a, 'b> {
    fn new(args: &'b [&'a [u8]]) -> Self {
        Options {
            args,
            seen: Vec::new(),
        }
    }

    /// The next option: its canonical name (from `known`) and its value, if
    /// it takes one.
    fn next(&mut self, known: &[(&'static str, bool)]) -> Option<Result<Opt<'a>, LockError>> {
        let (&name, rest) = self.args.split_first()?;
        let Some(&(canonical, takes_value)) = known
            .iter()
            .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name))
        else {
            return Some(Err(LockError::syntax(format!(
                "unknown option '{}'",
                String::from_utf8_lossy(name)
            ))));
        };
        if self.seen.contains(&canonical) {
            return Some(Err(LockError::syntax(format!(
                "option {canonical} given more than once"
            ))));
        }
        self.seen.push(canonical);
        if takes_value {
            let Some((&value, rest)) = rest.split_first() else {
                return Some(Err(LockError::syntax(format!(
                    "option {canonical} needs a value"
                ))));
            };
            self.args = rest;
            Some(Ok((canonical, Some(value))))
        } else {
            self.args = rest;
            Some(Ok((canonical, None)))
        }
    }
}

/// Parses `LOCK.ACQUIRE` arguments.
pub fn acquire<'a>(args: &[&'a [u8]]) -> Result<Acquire<'a>, LockError> {
    let [key, who, ttl, rest @ ..] = args else {
        return Err(arity("lock.acquire"));
    };
    let owner = owner(who)?;
    let ttl_ms = positive(ttl, "ttl-ms")?;
    let (wait_ms, session) = if rest.is_empty() {
        (None, false)
    } else {
        acquire_options(rest)?
    };
    Ok(Acquire {
        key,
        owner,
        ttl_ms,
        wait_ms,
        session,
    })
}

/// `[WAIT timeout-ms] [SESSION]`: the wait, and whether the lock is the
/// session's.
#[inline(never)]
fn acquire_options(rest: &[&[u8]]) -> Result<(Option<u64>, bool), LockError> {
    let (mut wait_ms, mut session) = (None, false);
    let mut opts = Options::new(rest);
    while let Some(opt) = opts.next(&[("WAIT", true), ("SESSION", false)]) {
        match opt? {
            ("WAIT", Some(v)) => wait_ms = Some(wait_timeout(v)?),
            _ => session = true,
        }
    }
    Ok((wait_ms, session))
}

/// Parses `LOCK.RELEASE` arguments.
pub fn release<'a>(args: &[&'a [u8]]) -> Result<Release<'a>, LockError> {
    let [key, who, rest @ ..] = args else {
        return Err(arity("lock.release"));
    };
    Ok(Release {
        key,
        owner: owner(who)?,
        fence: fence_option(rest)?,
    })
}

/// Parses `LOCK.EXTEND` arguments.
pub fn extend<'a>(args: &[&'a [u8]]) -> Result<Extend<'a>, LockError> {
    let [key, who, ttl, rest @ ..] = args else {
        return Err(arity("lock.extend"));
    };
    Ok(Extend {
        key,
        owner: owner(who)?,
        ttl_ms: positive(ttl, "ttl-ms")?,
        fence: fence_option(rest)?,
    })
}

fn fence_option(rest: &[&[u8]]) -> Result<Option<u64>, LockError> {
    let mut fence = None;
    let mut opts = Options::new(rest);
    while let Some(opt) = opts.next(&[("FENCE", true)]) {
        if let (_, Some(v)) = opt? {
            fence = Some(token(v)?);
        }
    }
    Ok(fence)
}

/// Parses `LOCK.LIST` arguments.
pub fn list<'a>(args: &[&'a [u8]]) -> Result<List<'a>, LockError> {
    let mut req = List {
        cursor: 0,
        pattern: None,
        held_more_ms: None,
        count: LIST_DEFAULT_COUNT,
    };
    let mut opts = Options::new(args);
    let known = [
        ("CURSOR", true),
        ("MATCH", true),
        ("HELDMORE", true),
        ("COUNT", true),
    ];
    while let Some(opt) = opts.next(&known) {
        match opt? {
            ("CURSOR", Some(v)) => {
                req.cursor = parse_u64(v).ok_or_else(|| LockError::syntax("invalid cursor"))?
            }
            ("MATCH", Some(v)) => req.pattern = Some(v),
            ("HELDMORE", Some(v)) => req.held_more_ms = Some(non_negative(v, "HELDMORE ms")?),
            (_, v) => {
                req.count = match v.and_then(parse_u64) {
                    Some(n) if (1..=LIST_MAX_COUNT).contains(&n) => n,
                    _ => {
                        return Err(LockError::syntax(format!(
                            "COUNT must be an integer from 1 to {LIST_MAX_COUNT}"
                        )));
                    }
                }
            }
        }
    }
    Ok(req)
}

/// Parses `LOCK.POLICY LOAD` arguments (after `LOAD`). `WASM` comes last and
/// takes the rest: exactly one argument.
pub fn policy_load<'a>(args: &[&'a [u8]]) -> Result<PolicyLoad<'a>, LockError> {
    // WASM is the second-to-last word, so a name, glob or setting that
    // happens to be "wasm" is not mistaken for it.
    let needs_wasm =
        || LockError::syntax("LOCK.POLICY LOAD needs WASM <bytes> as its last argument");
    let [head @ .., marker, wasm] = args else {
        return Err(needs_wasm());
    };
    if !marker.eq_ignore_ascii_case(b"WASM") {
        return Err(needs_wasm());
    }
    let [name, options @ ..] = head else {
        return Err(arity("lock.policy|load"));
    };
    let mut req = PolicyLoad {
        name,
        keys: b"*",
        mode: crate::policy::Mode::Enforce,
        settings: b"",
        replace: false,
        wasm,
    };
    let mut opts = Options::new(options);
    let known = [
        ("KEYS", true),
        ("MODE", true),
        ("CONFIG", true),
        ("REPLACE", false),
    ];
    while let Some(opt) = opts.next(&known) {
        match opt? {
            ("KEYS", Some(v)) => req.keys = v,
            ("MODE", Some(v)) if v.eq_ignore_ascii_case(b"enforce") => {
                req.mode = crate::policy::Mode::Enforce
            }
            ("MODE", Some(v)) if v.eq_ignore_ascii_case(b"audit") => {
                req.mode = crate::policy::Mode::Audit
            }
            ("MODE", _) => return Err(LockError::syntax("MODE must be enforce or audit")),
            ("CONFIG", Some(v)) => req.settings = v,
            _ => req.replace = true,
        }
    }
    Ok(req)
}

/// Parses `LOCK.POLICY EVAL` arguments (after `EVAL`).
pub fn policy_eval<'a>(args: &[&'a [u8]]) -> Result<PolicyEval<'a>, LockError> {
    let [name, op, key, who, ttl] = args else {
        return Err(arity("lock.policy|eval"));
    };
    let op = if op.eq_ignore_ascii_case(b"ACQUIRE") {
        lockwarden_sdk::Operation::Acquire
    } else if op.eq_ignore_ascii_case(b"EXTEND") {
        lockwarden_sdk::Operation::Extend
    } else if op.eq_ignore_ascii_case(b"RELEASE") {
        lockwarden_sdk::Operation::Release
    } else {
        return Err(LockError::syntax(
            "the operation must be ACQUIRE, EXTEND or RELEASE",
        ));
    };
    Ok(PolicyEval {
        name,
        op,
        key,
        owner: owner(who)?,
        ttl_ms: non_negative(ttl, "ttl-ms")?,
    })
}

/// Parses `LOCK._HIGHWATER token`.
pub fn high_water(args: &[&[u8]]) -> Result<u64, LockError> {
    let [t] = args else {
        return Err(arity("lock._highwater"));
    };
    match parse_u64(t) {
        Some(v) if v <= crate::clock::MAX_TOKEN => Ok(v),
        _ => Err(LockError::syntax("token out of range")),
    }
}

/// Parses `LOCK._GRANT` arguments.
pub fn grant<'a>(args: &[&'a [u8]]) -> Result<Grant<'a>, LockError> {
    let [key, who, fields] = args else {
        return Err(arity("lock._grant"));
    };
    let lease = crate::lease::parse_grant_fields(owner(who)?, fields)
        .map_err(|e| LockError::syntax(format!("invalid lease fields: {e}")))?;
    Ok(Grant { key, lease })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a<'a>(s: &'a [&'a str]) -> Vec<&'a [u8]> {
        s.iter().map(|s| s.as_bytes()).collect()
    }

    #[test]
    fn acquire_forms() {
        let r = acquire(&a(&["k", "me", "100"])).unwrap();
        assert_eq!(
            (r.key, r.owner, r.ttl_ms, r.wait_ms, r.session),
            (&b"k"[..], &b"me"[..], 100, None, false)
        );
        let r = acquire(&a(&["k", "me", "100", "session", "WAIT", "0"])).unwrap();
        assert_eq!((r.wait_ms, r.session), (Some(0), true));
    }

    #[test]
    fn acquire_errors() {
        for bad in [
            &["k", "me"][..],
            &["k", "me", "0"],
            &["k", "me", "-5"],
            &["k", "me", "+5"],
            &["k", "me", "1.5"],
            &["k", "me", " 5"],
            &["k", "me", "99999999999999999999"],
            &["k", "me", "9223372036854775808"],
            &["k", "", "5"],
            &["k", "me", "5", "WAIT"],
            &["k", "me", "5", "WAIT", "x"],
            &["k", "me", "5", "WAIT", "-1"],
            &["k", "me", "5", "WAIT", "1099511627777"],
            &["k", "me", "5", "WAIT", "9223372036854775807"],
            &["k", "me", "5", "NOPE"],
            &["k", "me", "5", "SESSION", "SESSION"],
        ] {
            let e = acquire(&a(bad)).unwrap_err();
            assert_eq!(e.code(), "ERR", "{bad:?}");
        }
        let long = "x".repeat(MAX_OWNER_LEN + 1);
        assert!(acquire(&a(&["k", &long, "5"])).is_err());
        let max = "x".repeat(MAX_OWNER_LEN);
        assert!(acquire(&a(&["k", &max, "5"])).is_ok());
    }

    #[test]
    fn release_and_extend_forms() {
        assert_eq!(release(&a(&["k", "me"])).unwrap().fence, None);
        assert_eq!(
            release(&a(&["k", "me", "fence", "7"])).unwrap().fence,
            Some(7)
        );
        assert!(release(&a(&["k"])).is_err());
        assert!(release(&a(&["k", "me", "FENCE"])).is_err());
        assert!(release(&a(&["k", "me", "FENCE", "0"])).is_err());
        assert!(release(&a(&["k", "me", "7"])).is_err());
        let e = extend(&a(&["k", "me", "10", "FENCE", "3"])).unwrap();
        assert_eq!((e.ttl_ms, e.fence), (10, Some(3)));
        assert!(extend(&a(&["k", "me"])).is_err());
        assert!(extend(&a(&["k", "me", "0"])).is_err());
    }

    #[test]
    fn grant_forms() {
        let g = grant(&a(&["k", "me", "5:200:100:2:1"])).unwrap();
        let l = &g.lease;
        assert_eq!(
            (
                l.token,
                l.deadline_ms,
                l.acquired_at_ms,
                l.extensions,
                l.session,
                l.client_id
            ),
            (5, 200, 100, 2, true, 0)
        );
        // A deadline before the acquisition is valid (an extension on a node
        // whose clock is behind the granting one).
        assert_eq!(
            grant(&a(&["k", "me", "5:100:200:0:0"])).map(|g| g.lease.deadline_ms),
            Ok(100)
        );
        assert!(grant(&a(&["k", "me", "0:200:100:0:0"])).is_err());
        assert!(grant(&a(&["k", "me"])).is_err());
        assert!(grant(&a(&["k", "", "5:200:100:0:0"])).is_err());
        let big = format!("{}:200:100:0:0", crate::clock::MAX_TOKEN + 1);
        assert!(grant(&a(&["k", "me", &big])).is_err());
    }

    #[test]
    fn list_forms() {
        let l = list(&[]).unwrap();
        assert_eq!(
            (l.cursor, l.pattern, l.held_more_ms, l.count),
            (0, None, None, LIST_DEFAULT_COUNT)
        );
        let l = list(&a(&[
            "cursor", "17", "MATCH", "orders:*", "heldmore", "5000", "COUNT", "10",
        ]))
        .unwrap();
        assert_eq!(
            (l.cursor, l.pattern, l.held_more_ms, l.count),
            (17, Some(&b"orders:*"[..]), Some(5000), 10)
        );
        assert!(list(&a(&["COUNT", "0"])).is_err());
        assert!(list(&a(&["COUNT", "10001"])).is_err());
        assert!(list(&a(&["CURSOR", "x"])).is_err());
        assert!(list(&a(&["MATCH"])).is_err());
        assert!(list(&a(&["BOGUS", "1"])).is_err());
    }

    #[test]
    fn policy_load_forms() {
        let l = policy_load(&a(&["p", "WASM", "\0asm"])).unwrap();
        assert_eq!(
            (l.name, l.keys, l.settings, l.replace, l.wasm),
            (&b"p"[..], &b"*"[..], &b""[..], false, &b"\0asm"[..])
        );
        let l = policy_load(&a(&[
            "p", "KEYS", "o:*", "MODE", "audit", "CONFIG", "{}", "REPLACE", "wasm", "x",
        ]))
        .unwrap();
        assert_eq!(
            (l.keys, l.mode, l.settings, l.replace),
            (&b"o:*"[..], crate::policy::Mode::Audit, &b"{}"[..], true)
        );
        assert!(policy_load(&a(&["p"])).is_err());
        assert!(policy_load(&a(&["WASM", "x"])).is_err());
        assert!(policy_load(&a(&["p", "WASM"])).is_err());
        assert!(policy_load(&a(&["p", "WASM", "x", "y"])).is_err());
        let l = policy_load(&a(&["wasm", "KEYS", "wasm", "WASM", "x"])).unwrap();
        assert_eq!(
            (l.name, l.keys, l.wasm),
            (&b"wasm"[..], &b"wasm"[..], &b"x"[..])
        );
        assert!(policy_load(&a(&["p", "MODE", "maybe", "WASM", "x"])).is_err());
        assert!(policy_load(&a(&["p", "NOPE", "WASM", "x"])).is_err());
    }

    #[test]
    fn policy_eval_forms() {
        let e = policy_eval(&a(&["p", "extend", "k", "me", "5"])).unwrap();
        assert_eq!((e.op, e.ttl_ms), (lockwarden_sdk::Operation::Extend, 5));
        assert!(policy_eval(&a(&["p", "grab", "k", "me", "5"])).is_err());
        assert!(policy_eval(&a(&["p", "acquire", "k", "me"])).is_err());
    }

    #[test]
    fn high_water_forms() {
        assert_eq!(high_water(&a(&["42"])), Ok(42));
        assert!(high_water(&a(&[])).is_err());
        assert!(high_water(&a(&["-1"])).is_err());
        let big = (crate::clock::MAX_TOKEN + 1).to_string();
        assert!(high_water(&a(&[&big])).is_err());
    }

    #[test]
    fn integers() {
        assert_eq!(parse_i64(b"-12"), Some(-12));
        assert_eq!(parse_i64(b"12"), Some(12));
        assert_eq!(parse_i64(b"-"), None);
        assert_eq!(parse_i64(b"--1"), None);
        assert_eq!(parse_u64(b"18446744073709551615"), None);
        assert_eq!(parse_u64(b"0"), Some(0));
        assert_eq!(parse_u64(b"01"), None);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..12), 0..9)) {
            let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
            let _ = acquire(&args);
            let _ = release(&args);
            let _ = extend(&args);
            let _ = grant(&args);
            let _ = high_water(&args);
            let _ = list(&args);
            let _ = policy_load(&args);
            let _ = policy_eval(&args);
        }
    }
}
