//! One throw-away `redis-server` (or `valkey-server`) with the module loaded:
//! a free loopback port, a temporary directory, no persistence. Killed on
//! drop.

use crate::{Result, err};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A running server.
pub struct Server {
    child: Child,
    port: u16,
    dir: TempDir,
    binary: String,
}

impl Server {
    /// Starts `binary` (`redis-server`, `valkey-server` or a path) with
    /// `--save '' --appendonly no` and `modules` loaded, and waits until it
    /// answers `PING`.
    pub fn start(binary: &str, modules: &[&Path]) -> Result<Server> {
        if let Some(missing) = modules.iter().find(|m| !m.is_file()) {
            return err(format!(
                "module {} not found (`make build` builds lockwarden, `cargo build --release -p lockwarden-floor` the floor; or set LOCKWARDEN_MODULE, LOCKWARDEN_FLOOR_MODULE)",
                missing.display()
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix("lockwarden-bench")
            .tempdir()?;
        let port = free_port()?;
        let log = dir.path().join("server.log");
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .args(modules.iter().flat_map(|m| [Path::new("--loadmodule"), m]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {binary}: {e}"))?;
        let mut server = Server {
            child,
            port,
            dir,
            binary: binary.to_string(),
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return err(format!(
                    "{} exited ({status}) before answering; its log:\n{}",
                    self.binary,
                    self.log_tail()
                ));
            }
            if let Ok(mut con) = self.connect()
                && redis::cmd("PING").query::<String>(&mut con).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return err(format!(
                    "{} did not answer within 10 s; its log:\n{}",
                    self.binary,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A new connection.
    pub fn connect(&self) -> Result<redis::Connection> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))?;
        Ok(client.get_connection()?)
    }

    /// `redis_server 7.0.15`, `valkey 8.0.1`.
    pub fn version(&self) -> Result<String> {
        let mut con = self.connect()?;
        let info = crate::info::fields(&mut con, "server")?;
        let name = info.get("server_name").map_or("redis", String::as_str);
        let version = info
            .get("valkey_version")
            .or_else(|| info.get("redis_version"))
            .map_or("?", String::as_str);
        Ok(format!("{name} {version}"))
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
