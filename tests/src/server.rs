//! One redis-server / valkey-server process.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redis::{Connection, ConnectionLike, RedisResult, Value};
use tempfile::TempDir;

use crate::util::{free_port, parse_info, poll, render, tail, value_text};
use crate::{Flavor, TIMEOUT, module_path};

/// How [`Server::shutdown`] / [`Server::restart_clean`] stop the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// `SHUTDOWN NOSAVE`: no RDB snapshot (the AOF, if enabled, is still
    /// flushed and fsynced).
    NoSave,
    /// `SHUTDOWN SAVE`: writes an RDB snapshot even with `--save ""`.
    Save,
}

/// Configures and starts a [`Server`]. Obtained from [`Server::builder`].
///
/// Every server gets `--port <free> --bind 127.0.0.1 --daemonize no
/// --dir <dir> --logfile <dir>/server.log --enable-debug-command yes
/// --save "" --repl-diskless-sync-delay 0`, then `--loadmodule <module> <module args>` (unless
/// [`without_module`](Self::without_module)), then the extra arguments, in
/// the order given; a later argument overrides an earlier one, so
/// `.arg("--save", "60 1")` replaces the default.
#[derive(Clone, Debug)]
pub struct ServerBuilder {
    flavor: Flavor,
    args: Vec<OsString>,
    module: Option<PathBuf>,
    module_args: Vec<OsString>,
    dir: Option<PathBuf>,
    port: Option<u16>,
    cluster: bool,
    sentinel_conf: Option<String>,
    startup_timeout: Duration,
    env: Vec<(OsString, OsString)>,
}

impl ServerBuilder {
    fn new(flavor: Flavor) -> Self {
        ServerBuilder {
            flavor,
            args: Vec::new(),
            module: Some(module_path()),
            module_args: Vec::new(),
            dir: None,
            port: None,
            cluster: false,
            sentinel_conf: None,
            startup_timeout: TIMEOUT,
            env: Vec::new(),
        }
    }

    /// Sets an environment variable for the server process (kept across
    /// restarts), e.g. `LD_PRELOAD` for the fault suite's clock shim.
    pub fn env(mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((name.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The flavor this builder starts.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// Adds a server option with one value: `.arg("--appendonly", "yes")`.
    /// The leading `--` may be omitted.
    pub fn arg(mut self, name: &str, value: impl AsRef<OsStr>) -> Self {
        self.args.push(dashed(name));
        self.args.push(value.as_ref().to_owned());
        self
    }

    /// Adds raw command-line words, for options with several values:
    /// `.raw_args(["--replicaof", "127.0.0.1", "6379"])`.
    pub fn raw_args<I, S>(mut self, words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(words.into_iter().map(|w| w.as_ref().to_owned()));
        self
    }

    /// Adds a module argument `name value` after the module path in
    /// `--loadmodule`: `.module_arg("max-ttl-ms", "1000")`. Values may
    /// contain spaces and quotes (e.g. JSON); each is passed as one word.
    /// No word may start with `--` (the server would take it for the next
    /// option).
    pub fn module_arg(mut self, name: &str, value: impl AsRef<OsStr>) -> Self {
        self.module_args.push(name.into());
        self.module_args.push(value.as_ref().to_owned());
        self
    }

    /// Adds raw module argument words (for flags without a value).
    pub fn module_raw_args<I, S>(mut self, words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.module_args
            .extend(words.into_iter().map(|w| w.as_ref().to_owned()));
        self
    }

    /// Loads the module from `path` instead of [`crate::module_path`].
    pub fn module(mut self, path: impl Into<PathBuf>) -> Self {
        self.module = Some(path.into());
        self
    }

    /// Starts a plain server, without the lockwarden module.
    pub fn without_module(mut self) -> Self {
        self.module = None;
        self
    }

    /// Uses `dir` (created if missing) as the data directory instead of a
    /// fresh temporary one, e.g. to start a new server on another one's data
    /// (see also [`Server::restart_after_kill`]). The directory is not
    /// deleted afterwards.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Uses this port instead of a free one (no retry on collision).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Enables cluster mode: `--cluster-enabled yes`,
    /// `--cluster-config-file <dir>/nodes.conf`, `--cluster-port <free>`
    /// (the bus port, kept across restarts) and
    /// `--cluster-node-timeout 5000`. [`crate::Cluster`] does this for its
    /// nodes.
    pub fn cluster_mode(mut self) -> Self {
        self.cluster = true;
        self
    }

    /// How long [`start`](Self::start) waits for PONG (default
    /// [`TIMEOUT`]).
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = timeout;
        self
    }

    /// Starts a sentinel with this configuration file text instead of a
    /// server (module and server defaults not applied).
    pub(crate) fn sentinel(mut self, conf: String) -> Self {
        self.sentinel_conf = Some(conf);
        self.module = None;
        self
    }

    /// Starts the server and waits until it answers PING with PONG.
    ///
    /// Picks a free port (and cluster bus port) and retries on another one
    /// if the server could not bind it. Panics with the tail of the server
    /// log if the server exits or does not answer in time, and if the
    /// module file does not exist.
    pub fn start(self) -> Server {
        if let Some(module) = &self.module {
            assert!(
                module.is_file(),
                "lockwarden module not found at {}: build it with `make module` \
                 (or `cargo build --release -p lockwarden`), set LOCKWARDEN_MODULE, \
                 or use .without_module()",
                module.display()
            );
        }
        let (mut tempdir, dir) = match &self.dir {
            Some(dir) => {
                fs::create_dir_all(dir).expect("create server dir");
                (None, dir.clone())
            }
            None => {
                let td = tempfile::Builder::new()
                    .prefix(&format!("lw-{}-", self.flavor))
                    .tempdir()
                    .expect("create temp dir");
                let path = td.path().to_path_buf();
                (Some(td), path)
            }
        };
        let dir = dir.canonicalize().unwrap_or(dir);
        const ATTEMPTS: usize = 8;
        for attempt in 1..=ATTEMPTS {
            let port = self.port.unwrap_or_else(free_port);
            let bus_port = self.cluster.then(free_port);
            let (program, argv) = self.command_line(port, bus_port, &dir);
            let server = Server {
                flavor: self.flavor,
                port,
                dir: dir.clone(),
                tempdir: tempdir.take(),
                program,
                argv,
                env: self.env.clone(),
                startup_timeout: self.startup_timeout,
                child: Mutex::new(None),
                conn: Mutex::new(None),
            };
            match server.launch() {
                Ok(()) => return server,
                Err(failure) => {
                    let mut server = server;
                    tempdir = server.tempdir.take();
                    drop(server);
                    if failure.addr_in_use && self.port.is_none() && attempt < ATTEMPTS {
                        continue;
                    }
                    if let Some(td) = tempdir.take() {
                        let kept = td.keep();
                        eprintln!("lockwarden-tests: kept {}", kept.display());
                    }
                    panic!("{}", failure.message);
                }
            }
        }
        unreachable!()
    }

    fn command_line(
        &self,
        port: u16,
        bus_port: Option<u16>,
        dir: &Path,
    ) -> (String, Vec<OsString>) {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(conf) = &self.sentinel_conf {
            let path = dir.join("sentinel.conf");
            // Written once: sentinel rewrites it with what it learns.
            if !path.exists() {
                fs::write(&path, conf).expect("write sentinel.conf");
            }
            argv.push(path.into());
            argv.push("--sentinel".into());
        }
        let mut push = |name: &str, value: &OsStr| {
            argv.push(dashed(name));
            argv.push(value.to_owned());
        };
        push("port", port.to_string().as_ref());
        push("bind", "127.0.0.1".as_ref());
        push("daemonize", "no".as_ref());
        push("dir", dir.as_os_str());
        push("logfile", dir.join("server.log").as_os_str());
        if self.sentinel_conf.is_none() {
            push("enable-debug-command", "yes".as_ref());
            push("save", "".as_ref());
            // Start a full sync at once instead of waiting 5 s for more
            // replicas to join.
            push("repl-diskless-sync-delay", "0".as_ref());
        }
        if let Some(bus_port) = bus_port {
            push("cluster-enabled", "yes".as_ref());
            push("cluster-config-file", dir.join("nodes.conf").as_os_str());
            push("cluster-port", bus_port.to_string().as_ref());
            push("cluster-node-timeout", "5000".as_ref());
        }
        if let Some(module) = &self.module {
            argv.push("--loadmodule".into());
            argv.push(module.into());
            argv.extend(self.module_args.iter().cloned());
        }
        argv.extend(self.args.iter().cloned());
        (self.flavor.server_bin().to_string(), argv)
    }
}

fn dashed(name: &str) -> OsString {
    if name.starts_with("--") {
        name.into()
    } else {
        format!("--{name}").into()
    }
}

struct LaunchFailure {
    addr_in_use: bool,
    message: String,
}

/// A running redis-server or valkey-server, killed (SIGKILL) when dropped.
///
/// All methods take `&self`, so a server can be shared between threads and
/// killed or restarted through a shared reference (e.g. the one
/// [`crate::SentinelSet::current_primary`] returns).
///
/// Its directory is deleted on drop unless the test is panicking (then it is
/// kept and its path printed) or `LOCKWARDEN_KEEP_DIRS=1`.
pub struct Server {
    flavor: Flavor,
    port: u16,
    dir: PathBuf,
    tempdir: Option<TempDir>,
    program: String,
    argv: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    startup_timeout: Duration,
    child: Mutex<Option<Child>>,
    conn: Mutex<Option<Connection>>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("flavor", &self.flavor)
            .field("port", &self.port)
            .field("dir", &self.dir)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Server {
    /// A builder for a server of `flavor`, with the module.
    pub fn builder(flavor: Flavor) -> ServerBuilder {
        ServerBuilder::new(flavor)
    }

    /// Starts a server of `flavor` with the module and default settings:
    /// `Server::builder(flavor).start()`.
    pub fn start(flavor: Flavor) -> Server {
        ServerBuilder::new(flavor).start()
    }

    /// The flavor.
    pub fn flavor(&self) -> Flavor {
        self.flavor
    }

    /// The TCP port (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The data directory (also holds `server.log` and `stdout.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The command line the server was started with (after the program).
    pub fn command_line(&self) -> &[OsString] {
        &self.argv
    }

    /// The process id. Panics if the server is not running.
    pub fn pid(&self) -> u32 {
        lock(&self.child)
            .as_ref()
            .map(Child::id)
            .unwrap_or_else(|| panic!("{} on port {} is not running", self.flavor, self.port))
    }

    /// The `process_id` of whatever server answers on this port.
    fn answering_pid(&self) -> Option<u32> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut conn = client
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()?;
        let info: String = redis::cmd("INFO").arg("server").query(&mut conn).ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|p| p.trim().parse().ok())
    }

    /// Whether the process is alive (a paused process is alive).
    pub fn is_running(&self) -> bool {
        let mut child = lock(&self.child);
        match child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The server log so far.
    pub fn log(&self) -> String {
        read_lossy(&self.dir.join("server.log"))
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }

    /// A new connection (connect timeout 5 s, read/write timeout 30 s).
    pub fn client(&self) -> Connection {
        self.try_client()
            .unwrap_or_else(|e| self.fail(&format!("cannot connect: {e}")))
    }

    /// A new connection, or the error.
    pub fn try_client(&self) -> RedisResult<Connection> {
        let client = redis::Client::open(self.url())?;
        let conn = client.get_connection_with_timeout(Duration::from_secs(5))?;
        conn.set_read_timeout(Some(TIMEOUT))?;
        conn.set_write_timeout(Some(TIMEOUT))?;
        Ok(conn)
    }

    /// Runs one command on the server's shared connection and returns the
    /// reply. Server errors are returned as [`Value::ServerError`]; I/O
    /// errors panic (with the log tail). The shared connection is reopened
    /// after restarts, and if it turns out to have been closed by the server
    /// (e.g. `CLIENT KILL` during a sentinel failover) the command is retried
    /// once on a fresh connection. For connection state (`MULTI`, `CLIENT
    /// SETNAME`, blocking commands) use [`client`](Self::client).
    pub fn cmd(&self, args: &[&str]) -> Value {
        self.try_cmd(args)
            .unwrap_or_else(|e| self.fail(&format!("{args:?} failed: {e}")))
    }

    /// [`cmd`](Self::cmd) rendered with [`crate::render`]: `"1"`, `"OK"`,
    /// `"(nil)"`, `"(error) ERR ..."`, `"[a b]"`.
    pub fn cmd_text(&self, args: &[&str]) -> String {
        render(&self.cmd(args))
    }

    /// Like [`cmd`](Self::cmd) but returns I/O errors instead of panicking.
    pub fn try_cmd(&self, args: &[&str]) -> RedisResult<Value> {
        let mut cmd = redis::Cmd::new();
        for a in args {
            cmd.arg(*a);
        }
        let mut guard = lock(&self.conn);
        let reused = guard.is_some();
        if !reused {
            *guard = Some(self.try_client()?);
        }
        let mut result = guard.as_mut().expect("connection").req_command(&cmd);
        if let Err(e) = &result {
            *guard = None;
            // The shared connection may have been closed behind our back
            // (CLIENT KILL by a sentinel failover, a timeout): retry once on
            // a fresh one.
            if reused && e.is_connection_dropped() && !e.is_timeout() {
                let mut conn = self.try_client()?;
                result = conn.req_command(&cmd);
                if result.is_ok() {
                    *guard = Some(conn);
                }
            }
        }
        result
    }

    /// `INFO <section>` parsed into `field -> value`.
    pub fn info(&self, section: &str) -> HashMap<String, String> {
        let reply = self.cmd(&["INFO", section]);
        match value_text(&reply) {
            Some(text) => parse_info(&text),
            None => self.fail(&format!(
                "INFO {section}: unexpected reply {}",
                render(&reply)
            )),
        }
    }

    /// One `INFO` field, e.g. `info_field("replication", "role")`.
    pub fn info_field(&self, section: &str, field: &str) -> Option<String> {
        self.info(section).remove(field)
    }

    /// `master` or `slave`, from `INFO replication`.
    pub fn role(&self) -> String {
        self.info_field("replication", "role")
            .unwrap_or_else(|| self.fail("INFO replication has no role"))
    }

    /// Polls `pred` until it returns true; panics with `timeout` exceeded
    /// and the log tail otherwise.
    pub fn wait_for(&self, timeout: Duration, mut pred: impl FnMut(&Server) -> bool) {
        if poll(timeout, || pred(self).then_some(())).is_none() {
            self.fail(&format!("condition not met within {timeout:?}"));
        }
    }

    /// Kills the server with SIGKILL and waits for it (no-op if it is not
    /// running).
    pub fn kill9(&self) {
        *lock(&self.conn) = None;
        if let Some(mut child) = lock(&self.child).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server with `SHUTDOWN NOSAVE` / `SHUTDOWN SAVE` and waits
    /// for the process to exit.
    pub fn shutdown(&self, mode: Shutdown) {
        *lock(&self.conn) = None;
        let mut conn = self.client();
        let word = match mode {
            Shutdown::NoSave => "NOSAVE",
            Shutdown::Save => "SAVE",
        };
        // Success closes the connection without a reply.
        if let Ok(reply) = conn.req_command(redis::cmd("SHUTDOWN").arg(word)) {
            self.fail(&format!("SHUTDOWN {word} replied {}", render(&reply)));
        }
        let exited = poll(TIMEOUT, || {
            let mut child = lock(&self.child);
            match child.as_mut().map(Child::try_wait) {
                Some(Ok(None)) => None,
                _ => Some(()),
            }
        });
        if exited.is_none() {
            self.fail(&format!("still running {TIMEOUT:?} after SHUTDOWN {word}"));
        }
        lock(&self.child).take();
    }

    /// Starts the server again (same port, directory and arguments) after
    /// [`kill9`](Self::kill9) or [`shutdown`](Self::shutdown), and waits for
    /// PONG (i.e. until the data is loaded). Panics if it is running.
    pub fn relaunch(&self) {
        assert!(
            !self.is_running(),
            "relaunch: {} on port {} is still running",
            self.flavor,
            self.port
        );
        *lock(&self.conn) = None;
        // The old process's sockets are closed, but give a racing process
        // that grabbed the port a few chances to let go.
        let mut last = String::new();
        for _ in 0..10 {
            match self.launch() {
                Ok(()) => return,
                Err(f) if f.addr_in_use => {
                    last = f.message;
                    std::thread::sleep(Duration::from_millis(300));
                }
                Err(f) => panic!("{}", f.message),
            }
        }
        panic!("{last}");
    }

    /// `kill -9`, then [`relaunch`](Self::relaunch).
    pub fn restart_after_kill(&self) {
        self.kill9();
        self.relaunch();
    }

    /// [`shutdown`](Self::shutdown) with `mode`, then
    /// [`relaunch`](Self::relaunch).
    pub fn restart_clean(&self, mode: Shutdown) {
        self.shutdown(mode);
        self.relaunch();
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers
    /// nothing, like a stalled or partitioned node.
    pub fn pause(&self) {
        crate::spawn::signal(self.pid(), libc::SIGSTOP).expect("SIGSTOP");
    }

    /// Resumes a [`pause`](Self::pause)d process (SIGCONT).
    pub fn resume(&self) {
        crate::spawn::signal(self.pid(), libc::SIGCONT).expect("SIGCONT");
    }

    /// Panics with `msg`, the server identity and the tail of its logs.
    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{} on port {} (dir {}): {msg}\n--- server.log (tail) ---\n{}\n--- stdout/stderr (tail) ---\n{}",
            self.flavor,
            self.port,
            self.dir.display(),
            self.log_tail(40),
            tail(&read_lossy(&self.dir.join("stdout.log")), 20),
        )
    }

    /// Spawns the process and waits for PONG.
    fn launch(&self) -> Result<(), LaunchFailure> {
        let log = |name: &str| {
            File::options()
                .create(true)
                .append(true)
                .open(self.dir.join(name))
                .expect("open stdout.log")
        };
        let out = log("stdout.log");
        let err = out.try_clone().expect("clone stdout.log handle");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.argv)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let log_len = fs::metadata(self.dir.join("server.log")).map_or(0, |m| m.len() as usize);
        let child = crate::spawn::spawn(cmd).unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (is it installed? scripts/install-deps.sh)",
                self.program
            )
        });
        *lock(&self.child) = Some(child);

        let deadline = Instant::now() + self.startup_timeout;
        loop {
            // The PONG must come from our own child: while it starts (or
            // after it died), another test may have taken the port.
            if ping(self.port) && self.answering_pid() == Some(self.pid()) {
                return Ok(());
            }
            let exited = {
                let mut child = lock(&self.child);
                match child.as_mut().map(Child::try_wait) {
                    Some(Ok(None)) => None,
                    Some(Ok(Some(status))) => Some(status.to_string()),
                    Some(Err(e)) => Some(e.to_string()),
                    None => Some("gone".into()),
                }
            };
            if exited.is_some() || Instant::now() >= deadline {
                let what = match &exited {
                    Some(status) => format!("exited during startup ({status})"),
                    None => format!("did not answer PING within {:?}", self.startup_timeout),
                };
                let new_log = self.log().get(log_len..).unwrap_or_default().to_string();
                let stdout = read_lossy(&self.dir.join("stdout.log"));
                let addr_in_use = exited.is_some()
                    && (new_log.contains("Address already in use")
                        || stdout.contains("Address already in use"));
                self.kill9();
                let message = format!(
                    "{} on port {} (dir {}) {what}\ncommand: {} {}\n--- server.log (tail) ---\n{}\n--- stdout/stderr (tail) ---\n{}",
                    self.flavor,
                    self.port,
                    self.dir.display(),
                    self.program,
                    self.argv
                        .iter()
                        .map(|a| format!("{a:?}"))
                        .collect::<Vec<_>>()
                        .join(" "),
                    tail(&new_log, 40),
                    tail(&stdout, 20),
                );
                return Err(LaunchFailure {
                    addr_in_use,
                    message,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// True if the server on `port` answers `PING` with `+PONG` (not `-LOADING`).
fn ping(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = Vec::new();
    while !got.ends_with(b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    got == b"+PONG\r\n"
}

fn read_lossy(path: &Path) -> String {
    fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if let Some(td) = self.tempdir.take() {
            let keep_all = std::env::var_os("LOCKWARDEN_KEEP_DIRS").is_some_and(|v| v == "1");
            if std::thread::panicking() || keep_all {
                let kept = td.keep();
                eprintln!(
                    "lockwarden-tests: kept {} dir of port {}: {}",
                    self.flavor,
                    self.port,
                    kept.display()
                );
            }
        }
    }
}
