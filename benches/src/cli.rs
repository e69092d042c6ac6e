//! Command-line options (`--name value` and `--flag`) and the environment
//! (`LOCKWARDEN_MODULE`, `LOCKWARDEN_FLOOR_MODULE`, `LOCKWARDEN_POLICIES`).

use crate::{Result, err};
use std::collections::HashMap;
use std::path::PathBuf;
use std::str::FromStr;

/// Parsed `--name value` options. Every option must be declared by the
/// program (`known`), so a typo is an error rather than a silent default.
pub struct Args {
    values: HashMap<String, String>,
    flags: Vec<String>,
}

impl Args {
    /// Parses `std::env::args()`. `with_value` and `flags` name the accepted
    /// options (without the leading `--`); `usage` is printed for `--help`.
    pub fn parse(with_value: &[&str], flags: &[&str], usage: &str) -> Result<Args> {
        let mut values = HashMap::new();
        let mut set_flags = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            if arg == "--help" || arg == "-h" {
                println!("{usage}");
                std::process::exit(0);
            }
            let Some(name) = arg.strip_prefix("--") else {
                return err(format!("unexpected argument '{arg}'\n\n{usage}"));
            };
            if with_value.contains(&name) {
                let Some(v) = it.next() else {
                    return err(format!("--{name} needs a value"));
                };
                values.insert(name.to_string(), v);
            } else if flags.contains(&name) {
                set_flags.push(name.to_string());
            } else {
                return err(format!("unknown option --{name}\n\n{usage}"));
            }
        }
        Ok(Args {
            values,
            flags: set_flags,
        })
    }

    /// The value of `--name`, or `default`.
    pub fn get<T: FromStr>(&self, name: &str, default: T) -> Result<T> {
        match self.values.get(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .or_else(|_| err(format!("bad value '{v}' for --{name}"))),
        }
    }

    /// The string value of `--name`, or `default`.
    pub fn string(&self, name: &str, default: &str) -> String {
        self.values
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    }

    /// Whether `--name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.flags.iter().any(|f| f == name)
    }
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// `LOCKWARDEN_MODULE`, default `<workspace>/target/release/liblockwarden.so`.
pub fn module_path() -> PathBuf {
    env_path("LOCKWARDEN_MODULE", "target/release/liblockwarden.so")
}

/// `LOCKWARDEN_FLOOR_MODULE`, default
/// `<workspace>/target/release/liblockwarden_floor.so`: the module-API floor
/// (`benches/floor`) that `loadcompare` runs beside `LOCK.ACQUIRE`.
pub fn floor_module_path() -> PathBuf {
    env_path(
        "LOCKWARDEN_FLOOR_MODULE",
        "target/release/liblockwarden_floor.so",
    )
}

/// `LOCKWARDEN_POLICIES`, default `<workspace>/target/policies`.
pub fn policies_dir() -> PathBuf {
    env_path("LOCKWARDEN_POLICIES", "target/policies")
}

/// The path in environment variable `var`, else `default` in the workspace.
fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default))
}

/// The date and time, UTC (`2026-01-31 12:00 UTC`).
pub fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `bin --version`, first line.
pub fn tool_version(bin: &str) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// CPUs and model, for the report.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), shared by the server and the load generator")
}

/// The workspace commit and whether the module's sources differ from it,
/// so a report says which build it measured.
pub fn build_id(module: &std::path::Path) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(workspace_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_string());
    let dirty = git(&["status", "--porcelain", "--", "module"]).is_some_and(|s| !s.is_empty());
    let built = std::fs::metadata(module)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| {
            std::process::Command::new("date")
                .args([
                    "-u",
                    "-d",
                    &format!("@{}", d.as_secs()),
                    "+%Y-%m-%d %H:%M UTC",
                ])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let inside = module.canonicalize().is_ok_and(|m| {
        workspace_root()
            .canonicalize()
            .is_ok_and(|w| m.starts_with(w))
    });
    if !inside {
        return format!("module from outside the workspace, built {built} (workspace at {head})");
    }
    let dirty = if dirty {
        " (module/ has uncommitted changes)"
    } else {
        ""
    };
    format!("workspace {head}{dirty}, module built {built}")
}
