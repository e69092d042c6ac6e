//! The `lw-client` binary, driven from tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::TIMEOUT;

/// Spawns `lw-client --port <port> --cmd <c>...` (plus `--hold`): a separate
/// process that connects, runs `cmds` in order on one connection, prints one
/// reply per line, and with `hold` keeps the connection open until killed.
pub fn spawn_client(port: u16, cmds: &[&str], hold: bool) -> ClientProcess {
    LwClient::new(port).cmds(cmds).hold(hold).spawn()
}

/// Like [`spawn_client`], but the client connects first and then sleeps until
/// the wall-clock instant `start_at` before running its commands, so several
/// clients can race.
pub fn spawn_client_at(
    port: u16,
    cmds: &[&str],
    hold: bool,
    start_at: SystemTime,
) -> ClientProcess {
    LwClient::new(port)
        .cmds(cmds)
        .hold(hold)
        .start_at(start_at)
        .spawn()
}

/// Builder for an `lw-client` process.
#[derive(Clone, Debug)]
pub struct LwClient {
    bin: Option<PathBuf>,
    port: u16,
    cmds: Vec<String>,
    hold: bool,
    stdin: bool,
    start_at: Option<SystemTime>,
}

impl LwClient {
    /// A client of 127.0.0.1:`port` with no commands.
    pub fn new(port: u16) -> Self {
        LwClient {
            bin: None,
            port,
            cmds: Vec::new(),
            hold: false,
            stdin: false,
            start_at: None,
        }
    }

    /// Adds a command line, split on whitespace: `"LOCK.ACQUIRE k o 1000"`.
    pub fn cmd(mut self, cmd: &str) -> Self {
        self.cmds.push(cmd.to_string());
        self
    }

    /// Adds several command lines.
    pub fn cmds(mut self, cmds: &[&str]) -> Self {
        self.cmds.extend(cmds.iter().map(|c| c.to_string()));
        self
    }

    /// `--hold`: after the commands (and stdin, if enabled), keep the
    /// connection open until killed.
    pub fn hold(mut self, hold: bool) -> Self {
        self.hold = hold;
        self
    }

    /// `--stdin`: after the `--cmd`s, read further command lines from stdin
    /// ([`ClientProcess::send`] / [`ClientProcess::exec`]) until it closes.
    pub fn interactive(mut self) -> Self {
        self.stdin = true;
        self
    }

    /// `--start-at`: connect, then sleep until `at` before the first
    /// command.
    pub fn start_at(mut self, at: SystemTime) -> Self {
        self.start_at = Some(at);
        self
    }

    /// Uses this `lw-client` binary (e.g. `env!("CARGO_BIN_EXE_lw-client")`)
    /// instead of looking for it next to the test executable.
    pub fn bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.bin = Some(path.into());
        self
    }

    /// Starts the process.
    pub fn spawn(self) -> ClientProcess {
        let bin = self.bin.clone().unwrap_or_else(client_bin);
        let mut cmd = Command::new(&bin);
        cmd.arg("--port").arg(self.port.to_string());
        for c in &self.cmds {
            cmd.arg("--cmd").arg(c);
        }
        if self.hold {
            cmd.arg("--hold");
        }
        if self.stdin {
            cmd.arg("--stdin");
        }
        if let Some(at) = self.start_at {
            let ms = at
                .duration_since(UNIX_EPOCH)
                .expect("start_at before 1970")
                .as_millis();
            cmd.arg("--start-at").arg(ms.to_string());
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = crate::spawn::spawn(cmd)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));

        let (tx, lines) = channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_pipe = child.stderr.take().expect("stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&text);
            }
        });
        let stdin = child.stdin.take();
        ClientProcess {
            child,
            stdin,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }
}

/// The `lw-client` binary: `$LW_CLIENT_BIN`, else `lw-client` in the
/// directory of the running test executable or its parent (cargo puts test
/// executables in `target/<profile>/deps/` and binaries in
/// `target/<profile>/`).
fn client_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LW_CLIENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("lw-client"))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "lw-client not found (looked at {candidates:?}); build it with \
                 `cargo build --release -p lockwarden-tests --bin lw-client` or set LW_CLIENT_BIN"
            )
        })
}

/// A running `lw-client`, killed (SIGKILL) when dropped. Its stdout is read
/// in the background, one reply per line.
#[derive(Debug)]
pub struct ClientProcess {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    seen: Vec<String>,
}

impl ClientProcess {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next reply line, or `None` if none arrives within `timeout` or
    /// the process closed its stdout.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                self.seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => None,
        }
    }

    /// The next reply line; panics (with stderr) if none arrives within
    /// [`TIMEOUT`].
    pub fn expect_line(&mut self) -> String {
        match self.next_line(TIMEOUT) {
            Some(line) => line,
            None => self.fail("no reply line"),
        }
    }

    /// The next `n` reply lines; panics if they do not all arrive within
    /// [`TIMEOUT`].
    pub fn lines(&mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + TIMEOUT;
        (0..n)
            .map(|i| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.next_line(left)
                    .unwrap_or_else(|| self.fail(&format!("only {i} of {n} lines arrived")))
            })
            .collect()
    }

    /// Writes a command line to the client's stdin (needs
    /// [`LwClient::interactive`]).
    pub fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("stdin already closed");
        if let Err(e) = writeln!(stdin, "{cmd}").and_then(|_| stdin.flush()) {
            self.fail(&format!("cannot write to stdin: {e}"));
        }
    }

    /// [`send`](Self::send)s `cmd` and returns its reply line.
    pub fn exec(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.expect_line()
    }

    /// Closes stdin: an interactive client without `--hold` then exits.
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Waits for the process to exit (panics after [`TIMEOUT`]) and returns
    /// its status and the reply lines not yet read.
    pub fn wait(&mut self) -> (ExitStatus, Vec<String>) {
        self.close_stdin();
        let deadline = Instant::now() + TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                self.fail("did not exit");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut rest = Vec::new();
        // The reader thread ends at EOF, which follows the exit.
        while let Some(line) = self.next_line(Duration::from_secs(5)) {
            rest.push(line);
        }
        (status, rest)
    }

    /// [`wait`](Self::wait)s and panics unless the process exited with 0;
    /// returns the remaining reply lines.
    pub fn wait_success(&mut self) -> Vec<String> {
        let (status, rest) = self.wait();
        if !status.success() {
            self.fail(&format!("exited with {status}"));
        }
        rest
    }

    /// Kills the process (SIGKILL) and reaps it; its connection is closed by
    /// the kernel. No-op if it already exited.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the process (SIGSTOP); its connection stays open but silent.
    pub fn pause(&self) {
        crate::spawn::signal(self.pid(), libc::SIGSTOP).expect("SIGSTOP");
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) {
        crate::spawn::signal(self.pid(), libc::SIGCONT).expect("SIGCONT");
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn fail(&self, msg: &str) -> ! {
        panic!(
            "lw-client (pid {}): {msg}\nlines so far: {:?}\nstderr:\n{}",
            self.child.id(),
            self.seen,
            self.stderr()
        )
    }
}

impl Drop for ClientProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
