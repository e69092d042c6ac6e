//! `tracing` events go to the Redis log (`RedisModule_Log`, which is safe from
//! any thread with a NULL context), one line per event, at the matching level.

use crate::ffi;
use lockwarden_core::throttle::Throttle;
use std::ffi::CStr;
use std::io::Write;
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

struct RedisLog;

/// Buffers one formatted event and hands it to Redis when dropped.
struct Line {
    level: &'static CStr,
    buf: Vec<u8>,
}

impl Write for Line {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if !text.is_empty() {
            ffi::log(self.level, text);
        }
    }
}

fn redis_level(level: &Level) -> &'static CStr {
    match *level {
        Level::ERROR | Level::WARN => c"warning",
        Level::INFO => c"notice",
        Level::DEBUG => c"verbose",
        Level::TRACE => c"debug",
    }
}

impl<'a> MakeWriter<'a> for RedisLog {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line {
            level: c"notice",
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            level: redis_level(meta.level()),
            buf: Vec::new(),
        }
    }
}

/// Routes `tracing` to the Redis log. Idempotent (a reloaded module keeps
/// the first subscriber).
pub fn init() {
    let _ = tracing_subscriber::fmt()
        .with_writer(RedisLog)
        .with_ansi(false)
        .without_time()
        .with_target(false)
        .with_level(false)
        .with_max_level(Level::INFO)
        .try_init();
}

/// A log for lines that something outside the module can cause on every
/// command (a policy's notes, a replication stream): at most `per_second`
/// reach the log, which Redis writes synchronously on the main thread, and
/// the next line let through is preceded by a count of those left out.
pub struct ThrottledLog {
    what: &'static str,
    /// Said after the count of lines left out (e.g. where they are counted).
    aside: &'static str,
    per_second: u32,
    throttle: Throttle,
}

impl ThrottledLog {
    pub const fn new(what: &'static str, per_second: u32, aside: &'static str) -> Self {
        ThrottledLog {
            what,
            aside,
            per_second,
            throttle: Throttle::new(per_second, 1000),
        }
    }

    /// May a line go out now? (Logs the count of lines left out first.)
    pub fn admit(&self, now_ms: i64) -> bool {
        match self.throttle.admit(now_ms) {
            None => false,
            Some(0) => true,
            Some(left_out) => {
                tracing::warn!(
                    "{left_out} {} messages not logged (at most {} a second{})",
                    self.what,
                    self.per_second,
                    self.aside
                );
                true
            }
        }
    }
}
