//! `tracing` events go to the Redis log (`RedisModule_Log`, which is safe from
//! any thread with a NULL context), one line per event, at the matching level.

use crate::ffi;
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
