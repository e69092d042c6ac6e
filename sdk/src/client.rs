//! A lock client for Rust applications (feature `client`), on the `redis`
//! crate.
//!
//! ```no_run
//! use lockwarden_sdk::client::{LockClient, Options};
//! use std::time::Duration;
//!
//! let locks = LockClient::open("redis://127.0.0.1:6379")?;
//! let opts = Options::new(Duration::from_secs(10)).wait(Duration::from_secs(5)).watchdog();
//! if let Some(guard) = locks.acquire("orders:42", &lockwarden_sdk::client::unique_owner(), &opts)? {
//!     // Pass the fencing token to the protected resource with every write.
//!     let token = guard.token();
//!     # let _ = token;
//!     // Stop working as soon as the lock is lost:
//!     if guard.loss().is_lost() { /* abort */ }
//!     guard.release()?; // NOTHELD / NOTOWNER come back as errors
//! }
//! # Ok::<(), lockwarden_sdk::client::Error>(())
//! ```
//!
//! The watchdog extends the lease at a fraction of the TTL from its own
//! connection, with the grant's `FENCE` token, so it can never extend
//! someone else's grant. It reports loss at once (`NOTHELD`, `NOTOWNER`,
//! `DENIED`, or no successful extension before the lease ran out) through
//! [`Loss`], which can be polled, waited on, or selected on as a channel.
//! [`Guard::release`] stops the watchdog and waits for it before sending
//! `LOCK.RELEASE`, so a renewal can never race an unlock (a renewal in
//! flight against an unresponsive server can delay the release by up to the
//! rest of the lease: the watchdog never waits longer than that).
//!
//! The lease is timed from just before `LOCK.ACQUIRE` was sent (for `WAIT`,
//! from the grant's reply); each renewal asks for the first grant's TTL (or
//! that of the guard's last own [`Guard::extend`]) and renews at a fraction
//! of the TTL the server granted, so a clamp (a policy, a lowered
//! `max-ttl-ms`) or a shorter own extension shortens the renewal period too. With
//! [`Options::session`], the lock also ends when the acquiring connection
//! closes, which the watchdog notices at its next renewal.

use crossbeam_channel::{Receiver, Sender, bounded};
use redis::{Client, Connection, RedisError, Value};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A lock operation's failure.
#[derive(Debug)]
pub enum Error {
    /// `NOTHELD`: nobody holds the lock (it expired or was never acquired).
    NotHeld(String),
    /// `NOTOWNER`: someone else holds it, or the fencing token is stale.
    NotOwner(String),
    /// `DENIED`: a policy denied the command.
    Denied(String),
    /// `TTLMAX` / `TTLMIN`: the TTL is outside the server's limits.
    Ttl(String),
    /// `POLICY`: a policy failed and the server fails closed.
    Policy(String),
    /// Any other error: connection, protocol, `WRONGTYPE`, `ERR`, ...
    Redis(RedisError),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotHeld(m) => write!(f, "NOTHELD {m}"),
            Error::NotOwner(m) => write!(f, "NOTOWNER {m}"),
            Error::Denied(m) => write!(f, "DENIED {m}"),
            Error::Ttl(m) | Error::Policy(m) => f.write_str(m),
            Error::Redis(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<RedisError> for Error {
    fn from(e: RedisError) -> Self {
        let detail = e.detail().unwrap_or_default().to_string();
        match e.code() {
            Some("NOTHELD") => Error::NotHeld(detail),
            Some("NOTOWNER") => Error::NotOwner(detail),
            Some("DENIED") => Error::Denied(detail),
            Some(code @ ("TTLMAX" | "TTLMIN")) => Error::Ttl(format!("{code} {detail}")),
            Some("POLICY") => Error::Policy(format!("POLICY {detail}")),
            _ => Error::Redis(e),
        }
    }
}

/// How to acquire.
#[derive(Clone, Debug)]
pub struct Options {
    ttl: Duration,
    wait: Option<Duration>,
    session: bool,
    watchdog: bool,
    renew_every: f64,
}

impl Options {
    /// A lease of `ttl`, no waiting, no session, no watchdog.
    pub fn new(ttl: Duration) -> Self {
        Options {
            ttl,
            wait: None,
            session: false,
            watchdog: false,
            renew_every: 1.0 / 3.0,
        }
    }

    /// Block up to `timeout` for the lock (server-side FIFO, no polling);
    /// `Duration::ZERO` waits without limit.
    pub fn wait(mut self, timeout: Duration) -> Self {
        self.wait = Some(timeout);
        self
    }

    /// Release the lock when the acquiring connection closes.
    pub fn session(mut self) -> Self {
        self.session = true;
        self
    }

    /// Keep the lease alive until released, reporting loss.
    pub fn watchdog(mut self) -> Self {
        self.watchdog = true;
        self
    }

    /// Renew after this fraction of the granted TTL (default 1/3, clamped
    /// to 0.05..=0.9; NaN keeps the default).
    pub fn renew_every(mut self, fraction: f64) -> Self {
        if !fraction.is_nan() {
            self.renew_every = fraction.clamp(0.05, 0.9);
        }
        self
    }
}

/// An owner string unique to this process and call: `host:pid:random`.
pub fn unique_owner() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    let mut random = [0u8; 8];
    let seeded = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .is_ok();
    let id = if seeded {
        u64::from_le_bytes(random)
    } else {
        std::time::SystemTime::UNIX_EPOCH
            .elapsed()
            .map_or(0, |d| d.as_nanos() as u64)
    };
    format!("{host}:{}:{id:016x}", std::process::id())
}

/// Opens connections for locks.
#[derive(Clone, Debug)]
pub struct LockClient {
    client: Client,
}

/// `LOCK.EXTEND key owner ttl FENCE token` on `conn`: the granted TTL, ms.
fn send_extend(
    conn: &mut Connection,
    key: &str,
    owner: &str,
    ttl: Duration,
    token: u64,
) -> Result<u64, RedisError> {
    redis::cmd("LOCK.EXTEND")
        .arg(key)
        .arg(owner)
        .arg(ms(ttl))
        .arg("FENCE")
        .arg(token)
        .query(conn)
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl LockClient {
    /// A client for the server at `url` (`redis://host:port/db`).
    pub fn open(url: &str) -> Result<Self, Error> {
        Ok(LockClient {
            client: Client::open(url)?,
        })
    }

    /// Acquires `key` for `owner`. `Ok(None)` when it is held by someone else
    /// (after waiting, if asked to). An error after the server granted the
    /// lock releases it again (best effort) before it is returned.
    pub fn acquire(&self, key: &str, owner: &str, opts: &Options) -> Result<Option<Guard>, Error> {
        let mut conn = self.client.get_connection()?;
        // The watchdog's connection is opened before the lock is taken: its
        // set-up must not eat into the lease.
        let renew_conn = opts
            .watchdog
            .then(|| self.client.get_connection())
            .transpose()?;
        let mut cmd = redis::cmd("LOCK.ACQUIRE");
        cmd.arg(key).arg(owner).arg(ms(opts.ttl));
        if let Some(wait) = opts.wait {
            cmd.arg("WAIT")
                // Longer than the server accepts is as good as forever.
                .arg(if wait.is_zero() {
                    0
                } else {
                    ms(wait).min(crate::MAX_WAIT_MS)
                });
            // The server answers at the latest when the wait ends.
            conn.set_read_timeout(
                (!wait.is_zero()).then(|| wait.saturating_add(Duration::from_secs(5))),
            )?;
        }
        if opts.session {
            cmd.arg("SESSION");
        }
        let sent = Instant::now();
        let granted: Option<(u64, u64)> = cmd.query(&mut conn)?;
        let Some((token, ttl_ms)) = granted else {
            return Ok(None);
        };
        // The lease runs from the grant: no earlier than the request was sent
        // (a waiting request is granted just before its reply arrives).
        let lease_start = if opts.wait.is_some() {
            Instant::now()
        } else {
            sent
        };
        let granted_ttl = Duration::from_millis(ttl_ms);
        let mut guard = Guard {
            conn,
            key: key.to_string(),
            owner: owner.to_string(),
            token,
            ttl: granted_ttl,
            watchdog: None,
            loss: Loss::new(),
            released: false,
        };
        // From here on, an error drops the guard, which releases the lock.
        guard.conn.set_read_timeout(None)?;
        if let Some(renew_conn) = renew_conn {
            guard.watchdog = Some(Watchdog::start(
                Renewal {
                    client: self.client.clone(),
                    conn: renew_conn,
                    key: key.to_string(),
                    owner: owner.to_string(),
                    token,
                    fraction: opts.renew_every,
                    lease: Arc::new(Mutex::new(LeaseView {
                        ttl: granted_ttl,
                        end: lease_start + granted_ttl,
                        period: granted_ttl.mul_f64(opts.renew_every),
                    })),
                },
                guard.loss.clone(),
            )?);
        }
        Ok(Some(guard))
    }
}

/// Why a held lock was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LossReason {
    /// The server no longer knows the lock (`NOTHELD`): it expired or was deleted.
    NotHeld(String),
    /// Someone else holds it now (`NOTOWNER`).
    NotOwner(String),
    /// A policy refused the renewal (`DENIED`/`POLICY`/`TTL*`).
    Refused(String),
    /// No renewal succeeded before the lease ran out (server unreachable).
    Expired,
}

struct LossState {
    reason: Mutex<Option<LossReason>>,
    changed: Condvar,
    /// One sender per [`Loss::channel`] receiver, each told once.
    subscribers: Mutex<Vec<Sender<LossReason>>>,
}

/// Signals that a held lock was lost. Cheap to clone.
#[derive(Clone)]
pub struct Loss(Arc<LossState>);

impl Loss {
    fn new() -> Self {
        Loss(Arc::new(LossState {
            reason: Mutex::new(None),
            changed: Condvar::new(),
            subscribers: Mutex::new(Vec::new()),
        }))
    }

    fn signal(&self, reason: LossReason) {
        let mut r = self.0.reason.lock().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            *r = Some(reason.clone());
            let subscribers =
                std::mem::take(&mut *self.0.subscribers.lock().unwrap_or_else(|p| p.into_inner()));
            for tx in subscribers {
                let _ = tx.try_send(reason.clone());
            }
            self.0.changed.notify_all();
        }
    }

    /// Has the lock been lost?
    pub fn is_lost(&self) -> bool {
        self.reason().is_some()
    }

    /// Why it was lost, if it was.
    pub fn reason(&self) -> Option<LossReason> {
        self.0
            .reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits up to `timeout` for a loss; returns its reason if it happened.
    pub fn wait(&self, timeout: Duration) -> Option<LossReason> {
        let guard = self.0.reason.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .0
            .changed
            .wait_timeout_while(guard, timeout, |r| r.is_none())
            .unwrap_or_else(|p| p.into_inner());
        guard.clone()
    }

    /// A channel that yields the reason once, when the lock is lost, for use
    /// with `crossbeam_channel::select!` next to the holder's own work. Every
    /// call returns a new receiver, and each of them is told.
    pub fn channel(&self) -> Receiver<LossReason> {
        let (tx, rx) = bounded(1);
        // Under the reason's lock, so a loss is either seen here or sent.
        let reason = self.0.reason.lock().unwrap_or_else(|p| p.into_inner());
        match &*reason {
            Some(lost) => {
                let _ = tx.try_send(lost.clone());
            }
            None => self
                .0
                .subscribers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(tx),
        }
        rx
    }
}

struct Watchdog {
    wake: Sender<Wake>,
    thread: JoinHandle<()>,
    lease: Arc<Mutex<LeaseView>>,
    fraction: f64,
}

/// What wakes the watchdog before its next renewal.
enum Wake {
    Stop,
    /// The guard extended the lease itself: the renewals follow it.
    Extended,
}

/// The lease as the guard and its watchdog see it, by this process's clock.
struct LeaseView {
    /// The TTL asked for at every renewal: the first grant's, or the one
    /// of the guard's last own extension.
    ttl: Duration,
    /// When the current lease ends.
    end: Instant,
    /// How long after a renewal the next one is due: a fraction of the TTL
    /// last granted.
    period: Duration,
}

impl LeaseView {
    /// A renewal sent at `sent` was granted `granted`.
    fn renewed(&mut self, sent: Instant, granted: Duration, fraction: f64) {
        self.end = sent + granted;
        // A clamp (a policy, a lowered max-ttl-ms) can shorten the lease:
        // renew within the lease actually granted.
        self.period = granted.mul_f64(fraction);
    }
}

/// What the watchdog renews, and how.
struct Renewal {
    client: Client,
    /// Opened before the lock was taken.
    conn: Connection,
    key: String,
    owner: String,
    token: u64,
    /// Renew after this fraction of the last granted TTL.
    fraction: f64,
    lease: Arc<Mutex<LeaseView>>,
}

fn view(lease: &Mutex<LeaseView>) -> std::sync::MutexGuard<'_, LeaseView> {
    lease.lock().unwrap_or_else(|p| p.into_inner())
}

impl Watchdog {
    fn start(r: Renewal, loss: Loss) -> Result<Self, Error> {
        let (wake, woken) = crossbeam_channel::unbounded();
        let (lease, fraction) = (r.lease.clone(), r.fraction);
        let thread = std::thread::Builder::new()
            .name("lockwarden-watchdog".into())
            .spawn(move || r.run(&woken, &loss))
            .map_err(|e| Error::Redis(RedisError::from(e)))?;
        Ok(Watchdog {
            wake,
            thread,
            lease,
            fraction,
        })
    }

    /// Stops the watchdog and waits until any renewal in flight is done.
    fn stop(self) {
        let _ = self.wake.send(Wake::Stop);
        let _ = self.thread.join();
    }
}

impl Renewal {
    /// Extends the lease until stopped, or until the lock is lost.
    fn run(self, woken: &Receiver<Wake>, loss: &Loss) {
        let Renewal {
            client,
            conn,
            key,
            owner,
            token,
            fraction,
            lease,
        } = self;
        let lease_end = || view(&lease).end;
        let mut conn = Some(conn);
        loop {
            // Renew early; after a failure, retry sooner, and at least once
            // more before the lease ends. Never wait past the end of the
            // lease: that is when it is lost.
            let (end, period) = {
                let l = view(&lease);
                (l.end, l.period)
            };
            let left = end.saturating_duration_since(Instant::now());
            let pause = if conn.is_some() {
                period
            } else {
                (period / 4).min(left / 2)
            };
            match woken.recv_timeout(pause.min(left)) {
                Ok(Wake::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                Ok(Wake::Extended) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            }
            // Neither connecting nor waiting for the reply may outlast the
            // lease.
            let c = match conn.take() {
                Some(c) => conn.insert(c),
                None => {
                    let left = lease_end().saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return loss.signal(LossReason::Expired);
                    }
                    match client.get_connection_with_timeout(left) {
                        Ok(c) => conn.insert(c),
                        Err(_) => continue,
                    }
                }
            };
            // The view stays locked for the round trip, so the guard's own
            // extension is sent before or after it, never during it: the
            // view ends as the server's lease does.
            let mut view = view(&lease);
            let left = view.end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return loss.signal(LossReason::Expired);
            }
            if c.set_read_timeout(Some(left)).is_err() {
                conn = None;
                continue;
            }
            let sent = Instant::now();
            let reply = send_extend(c, &key, &owner, view.ttl, token);
            if let Ok(granted) = reply {
                view.renewed(sent, Duration::from_millis(granted), fraction);
            }
            drop(view);
            match reply {
                Ok(_) => {}
                Err(e) => match Error::from(e) {
                    Error::NotHeld(m) => return loss.signal(LossReason::NotHeld(m)),
                    Error::NotOwner(m) => return loss.signal(LossReason::NotOwner(m)),
                    Error::Denied(m) | Error::Ttl(m) | Error::Policy(m) => {
                        return loss.signal(LossReason::Refused(m));
                    }
                    // The key was overwritten with another type: the lock is gone.
                    Error::Redis(e) if e.code() == Some("WRONGTYPE") => {
                        return loss.signal(LossReason::NotHeld(format!(
                            "WRONGTYPE {}",
                            e.detail().unwrap_or_default()
                        )));
                    }
                    // The connection, or a passing server state (LOADING,
                    // READONLY during a failover, BUSY): retry until the
                    // lease ends.
                    Error::Redis(_) => conn = None,
                },
            }
        }
    }
}

/// A held lock. Dropping it releases the lock (best effort); call
/// [`Guard::release`] to see the server's answer.
pub struct Guard {
    conn: Connection,
    key: String,
    owner: String,
    token: u64,
    ttl: Duration,
    watchdog: Option<Watchdog>,
    loss: Loss,
    released: bool,
}

impl Guard {
    /// The fencing token: pass it with every write to the protected resource.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lease granted by the server: at the acquire, or at the guard's
    /// last own [`extend`](Self::extend).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Loss notification (signalled by the watchdog, if any).
    pub fn loss(&self) -> &Loss {
        &self.loss
    }

    /// Extends the lease to `ttl` from now, fenced by this grant's token.
    /// With a watchdog, its later renewals ask for `ttl` too, at the pace of
    /// the lease just granted. `NOTHELD` and `NOTOWNER` also signal
    /// [`Loss`]: the lock is gone.
    pub fn extend(&mut self, ttl: Duration) -> Result<Duration, Error> {
        // The watchdog's view of the lease stays locked for the round trip
        // (a renewal in flight is answered first): whichever the server
        // applied last, the view ends as the server's lease does.
        let mut lease = self.watchdog.as_ref().map(|w| (view(&w.lease), w.fraction));
        let sent = Instant::now();
        let reply = send_extend(&mut self.conn, &self.key, &self.owner, ttl, self.token);
        match reply.map_err(Error::from) {
            Ok(granted) => {
                let granted = Duration::from_millis(granted);
                if let Some((view, fraction)) = &mut lease {
                    view.ttl = ttl;
                    view.renewed(sent, granted, *fraction);
                }
                drop(lease);
                if let Some(w) = &self.watchdog {
                    let _ = w.wake.send(Wake::Extended);
                }
                self.ttl = granted;
                Ok(granted)
            }
            Err(e) => {
                match &e {
                    Error::NotHeld(m) => self.loss.signal(LossReason::NotHeld(m.clone())),
                    Error::NotOwner(m) => self.loss.signal(LossReason::NotOwner(m.clone())),
                    _ => {}
                }
                Err(e)
            }
        }
    }

    /// Releases the lock, fenced by this grant's token. The watchdog is
    /// stopped (and any renewal in flight finished) first.
    pub fn release(mut self) -> Result<(), Error> {
        self.release_now()
    }

    fn release_now(&mut self) -> Result<(), Error> {
        self.released = true;
        if let Some(w) = self.watchdog.take() {
            w.stop();
        }
        let reply: Value = redis::cmd("LOCK.RELEASE")
            .arg(&self.key)
            .arg(&self.owner)
            .arg("FENCE")
            .arg(self.token)
            .query(&mut self.conn)?;
        match reply {
            Value::Int(1) => Ok(()),
            other => Err(Error::Redis(RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected LOCK.RELEASE reply",
                format!("{other:?}"),
            )))),
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.release_now();
        }
    }
}
