//! `lockwarden-policy`: run a policy module through the server's policy engine,
//! outside Redis. See `lockwarden-policy --help`.

use lockwarden_core::policy::{EvalLimits, PolicyRunner};
use lockwarden_sdk::abi::{self, Caller, Decision, Holder, Operation, Request};
use std::ffi::{OsStr, OsString};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "\
usage:
  lockwarden-policy check <file.wasm> [--config JSON] [--fuel N] [--memory-kb N]
  lockwarden-policy eval <file.wasm> [--config JSON] <acquire|extend|release> <key> <owner> <ttl-ms>
        [--holder OWNER] [--token N] [--held-ms N] [--extensions N] [--now UNIX_MS]
        [--waiters N] [--user NAME] [--fuel N] [--memory-kb N]

check  loads the policy as the server does (module checks, ABI version,
       settings) and prints its name, size and sha256.
eval   also evaluates one request and prints the decision:
       `allow`, `deny: <reason>` or `clamp: <ms>`.

--config      the policy's settings (JSON for SDK policies; default: none)
--holder      the current holder; for extend and release it defaults to
              <owner>, for acquire the lock is free unless it is given
--token, --held-ms, --extensions
              the holder's fencing token (default 1), how long it has held
              the lock (default 0) and how often it extended it (default 0)
--now         the server clock, unix ms (default: now)
--waiters     clients blocked on the lock (default 0)
--user        the caller's ACL user (default: default)
--fuel, --memory-kb
              the limits of every call into the policy (default: the
              server's, 1000000 fuel and 4096 KiB; modules up to 4096 KiB)

exit status: 0 loaded / decided, 1 load or evaluation failure, 2 usage error";

/// A command-line mistake: printed with the usage, exit status 2.
struct Usage(String);

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match run(args) {
        Ok(code) => code,
        Err(Usage(message)) => {
            eprintln!("lockwarden-policy: {message}\n\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<OsString>) -> Result<ExitCode, Usage> {
    let mut args = args.into_iter();
    let command = args.next().ok_or_else(|| Usage("missing command".into()))?;
    let args: Vec<OsString> = args.collect();
    match command.to_str() {
        Some("check") => check(&Args::parse(args, &["--config", "--fuel", "--memory-kb"])?),
        Some("eval") => eval(&Args::parse(
            args,
            &[
                "--config",
                "--holder",
                "--token",
                "--held-ms",
                "--extensions",
                "--now",
                "--waiters",
                "--user",
                "--fuel",
                "--memory-kb",
            ],
        )?),
        _ => Err(Usage(format!(
            "unknown command '{}'",
            command.to_string_lossy()
        ))),
    }
}

/// Positional arguments and `--name value` options, binary-safe.
struct Args {
    positional: Vec<OsString>,
    options: Vec<(&'static str, OsString)>,
}

impl Args {
    fn parse(args: Vec<OsString>, allowed: &[&'static str]) -> Result<Args, Usage> {
        let mut parsed = Args {
            positional: Vec::new(),
            options: Vec::new(),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            if !arg.as_encoded_bytes().starts_with(b"--") {
                parsed.positional.push(arg);
                continue;
            }
            let name = allowed
                .iter()
                .copied()
                .find(|name| arg == *name)
                .ok_or_else(|| Usage(format!("unknown option {}", arg.to_string_lossy())))?;
            if parsed.get(name).is_some() {
                return Err(Usage(format!("{name} given twice")));
            }
            let value = args
                .next()
                .ok_or_else(|| Usage(format!("{name} needs a value")))?;
            parsed.options.push((name, value));
        }
        Ok(parsed)
    }

    fn get(&self, name: &str) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_encoded_bytes())
    }

    fn number<T: TryFrom<u64>>(&self, name: &str) -> Result<Option<T>, Usage> {
        self.get(name).map(|v| number(name, v)).transpose()
    }

    /// The positional arguments, which must be exactly `names`.
    fn positional<const N: usize>(&self, names: [&str; N]) -> Result<[&OsStr; N], Usage> {
        let given: Vec<&OsStr> = self.positional.iter().map(OsString::as_os_str).collect();
        given.try_into().map_err(|given: Vec<&OsStr>| {
            Usage(format!(
                "expected {N} arguments ({}), got {}",
                names.join(" "),
                given.len()
            ))
        })
    }

    /// Loads the policy, or prints why it cannot be loaded.
    fn load(&self, file: &OsStr, limits: EvalLimits) -> Result<PolicyRunner, ExitCode> {
        PolicyRunner::from_file_with_limits(file, self.get("--config").unwrap_or_default(), limits)
            .map_err(|e| {
                eprintln!("{e}");
                ExitCode::FAILURE
            })
    }
}

fn number<T: TryFrom<u64>>(what: &str, text: &[u8]) -> Result<T, Usage> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse::<u64>().ok())
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| {
            Usage(format!(
                "{what}: '{}' is not a valid number",
                String::from_utf8_lossy(text)
            ))
        })
}

/// `--fuel` and `--memory-kb`, or the server's defaults.
fn limits(args: &Args) -> Result<EvalLimits, Usage> {
    let memory_bytes = match args.number::<u64>("--memory-kb")? {
        Some(kb) => kb
            .checked_mul(1024)
            .ok_or_else(|| Usage("--memory-kb: too large".into()))?,
        None => EvalLimits::DEFAULT.memory_bytes,
    };
    Ok(EvalLimits {
        fuel: args.number("--fuel")?.unwrap_or(EvalLimits::DEFAULT.fuel),
        memory_bytes,
    })
}

fn check(args: &Args) -> Result<ExitCode, Usage> {
    let [file] = args.positional(["<file.wasm>"])?;
    let runner = match args.load(file, limits(args)?) {
        Ok(runner) => runner,
        Err(code) => return Ok(code),
    };
    let policy = runner.policy();
    println!("policy:   {}", policy.name());
    println!("size:     {} bytes", policy.spec().wasm.len());
    println!("sha256:   {}", policy.sha256_hex());
    println!("abi:      version {} (ok)", abi::ABI_VERSION);
    println!("settings: accepted");
    Ok(ExitCode::SUCCESS)
}

fn eval(args: &Args) -> Result<ExitCode, Usage> {
    let [file, op, key, owner, ttl] =
        args.positional(["<file.wasm>", "<op>", "<key>", "<owner>", "<ttl-ms>"])?;
    let (key, owner) = (key.as_encoded_bytes(), owner.as_encoded_bytes());
    let op = match op.as_encoded_bytes() {
        b"acquire" => Operation::Acquire,
        b"extend" => Operation::Extend,
        b"release" => Operation::Release,
        other => {
            return Err(Usage(format!(
                "unknown operation '{}' (acquire, extend or release)",
                String::from_utf8_lossy(other)
            )));
        }
    };
    let holder_owner = args
        .get("--holder")
        .or((op != Operation::Acquire).then_some(owner));
    let holder = match holder_owner {
        Some(owner) => Some(Holder {
            owner,
            token: args.number("--token")?.unwrap_or(1),
            held_ms: args.number("--held-ms")?.unwrap_or(0),
            extensions: args.number("--extensions")?.unwrap_or(0),
        }),
        None => {
            if let Some(name) = ["--token", "--held-ms", "--extensions"]
                .into_iter()
                .find(|n| args.get(n).is_some())
            {
                return Err(Usage(format!(
                    "{name} describes the holder: give --holder OWNER for an acquire"
                )));
            }
            None
        }
    };
    let now_ms = match args.number("--now")? {
        Some(now) => now,
        None => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    };
    let request = Request {
        op,
        key,
        owner,
        ttl_ms: number("<ttl-ms>", ttl.as_encoded_bytes())?,
        now_ms,
        holder,
        caller: Caller {
            client_id: 1,
            user: args.get("--user").unwrap_or(b"default"),
        },
        waiters: args.number("--waiters")?.unwrap_or(0),
    };
    let mut runner = match args.load(file, limits(args)?) {
        Ok(runner) => runner,
        Err(code) => return Ok(code),
    };
    match runner.evaluate(&request) {
        Ok(Decision::Allow) => println!("allow"),
        Ok(Decision::Deny(reason)) => println!("deny: {reason}"),
        Ok(Decision::Clamp(ms)) if op == Operation::Release => {
            println!("clamp: {ms} (the server ignores clamps of releases)")
        }
        Ok(Decision::Clamp(ms)) => println!("clamp: {ms}"),
        Err(failure) => {
            eprintln!("POLICY policy {} failed: {failure}", runner.policy().name());
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
