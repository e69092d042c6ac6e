//! # `freeze-window`: no new locks during deploy freezes
//!
//! Refuses **new** `LOCK.ACQUIRE`s during configured windows of time, such
//! as a year-end change freeze or "no deploys on Friday afternoons", for the
//! keys that guard the frozen work (e.g. `deploy:*`, `migrations:*`). Work
//! already running is not disturbed: the current holder can still retry its
//! acquire, extend and release.
//!
//! ## Settings
//!
//! ```json
//! {
//!   "windows": [
//!     { "name": "year-end", "from": "2026-12-20T00:00:00Z", "to": "2027-01-02T00:00:00Z" },
//!     { "days": ["sat", "sun"], "from_time": "00:00", "to_time": "24:00" },
//!     { "days": ["fri"], "from_time": "16:00", "to_time": "23:59" },
//!     { "name": "nightly", "from_time": "22:00", "to_time": "06:00" }
//!   ],
//!   "keys": ["deploy:*"]
//! }
//! ```
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `windows` | non-empty list (at most [`MAX_WINDOWS`]), **required** | the freeze windows, see below |
//! | `keys` | non-empty list of Redis-style globs, optional | only keys matching one of them are frozen; default: every key the policy is loaded for |
//!
//! A window is one of:
//!
//! * **absolute**: `{"from": T, "to": T}`, frozen from `from` (inclusive) to
//!   `to` (exclusive); `to` must be after `from`. `T` is an RFC 3339
//!   timestamp with an explicit zone: `2026-12-20T00:00:00Z`, with optional
//!   seconds and fraction (`2026-12-20T09:30Z`, `...T09:30:00.250Z`), or a
//!   numeric offset (`2026-12-20T01:00:00+01:00`, converted to UTC), or a
//!   bare date `2026-12-20` meaning midnight UTC.
//! * **weekly**: `{"days": [...], "from_time": "HH:MM", "to_time": "HH:MM"}`,
//!   frozen on each listed day from `from_time` (inclusive) to `to_time`
//!   (exclusive), in **UTC**. Days are `mon` … `sun` (or full names, any
//!   case); without `days` the window applies every day. Times are `HH:MM`
//!   or `HH:MM:SS`; `to_time` may be `24:00` (the end of the day), so
//!   `00:00`→`24:00` freezes whole days. When `to_time` is earlier than
//!   `from_time` the window **wraps past midnight**: it starts on each listed
//!   day at `from_time` and ends on the *following* day at `to_time`, so
//!   `{"days": ["fri"], "from_time": "22:00", "to_time": "06:00"}` is Friday
//!   22:00 to Saturday 06:00. Equal times are rejected (an empty window).
//!
//! Every window may have a `name`, shown in denials. Unknown fields, unknown
//! day names, impossible dates (`2026-02-30`) and timestamps without a zone
//! are rejected with a message naming the window (`windows[2].from_time:
//! ...`).
//!
//! ## Behaviour
//!
//! * **acquire** is a *new acquire* when the lock is free or held by another
//!   owner. A new acquire of a matching key while any window is active is
//!   denied, naming the window and when the freeze ends, e.g. `new acquires
//!   of 'deploy:web' are frozen by window 'year-end' (2026-12-20T00:00:00Z to
//!   2027-01-02T00:00:00Z) until 2027-01-02T00:00:00Z (in 3d 4h 0m)`. When
//!   windows overlap or touch (Saturday and Sunday, say), the end given is
//!   that of the whole freeze; a freeze that continues for more than
//!   [`MAX_HOPS`] window ends is reported as "until at least ...".
//! * **acquire retried by the current holder** is allowed, as are
//!   **extend** and **release**: a job that took its lock before the freeze
//!   began can finish and let go.
//! * Outside every window, or for keys that match none of `keys`,
//!   everything is allowed.
//!
//! The time is the server's clock as passed in the request (`now_ms`): a
//! Wasm policy has no clock of its own, and all date arithmetic here is done
//! by hand on UTC (no time zones, no daylight saving time, no leap seconds).
use lockwarden_sdk::text::show;
use lockwarden_sdk::{Decision, Operation, Policy, Request, glob_match};
use serde::Deserialize;

/// The most windows a policy may have (each is checked on every acquire).
pub const MAX_WINDOWS: usize = 32;
/// How many adjoining windows are followed to find the end of a freeze.
pub const MAX_HOPS: usize = 16;

const SECOND: i64 = 1000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// The most characters of a key or setting value shown in a message.
const MAX_SHOWN_CHARS: usize = 64;
/// The most characters of a window name shown in a denial.
const MAX_NAME_CHARS: usize = 40;

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// One window as written in the settings; see the crate documentation.
#[derive(Deserialize, Clone, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct WindowSetting {
    /// A name for denials.
    pub name: Option<String>,
    /// Absolute window start (RFC 3339).
    pub from: Option<String>,
    /// Absolute window end, exclusive (RFC 3339).
    pub to: Option<String>,
    /// Weekly window days (`mon` … `sun`); default every day.
    pub days: Option<Vec<String>>,
    /// Weekly window start time of day, UTC (`HH:MM[:SS]`).
    pub from_time: Option<String>,
    /// Weekly window end time of day, UTC, exclusive (`HH:MM[:SS]`, up to `24:00`).
    pub to_time: Option<String>,
}

/// The JSON settings; see the crate documentation.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The freeze windows. Required.
    pub windows: Option<Vec<WindowSetting>>,
    /// Key globs the freeze applies to; default all keys.
    pub keys: Option<Vec<String>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Span {
    /// Unix ms, `[from, to)`.
    Absolute { from: i64, to: i64 },
    /// Bit `d` of `days` set: weekday `d` (0 = Monday). Times are ms of day;
    /// `from > to` wraps past midnight.
    Weekly { days: u8, from: i64, to: i64 },
}

#[derive(Clone, Debug)]
struct Window {
    span: Span,
    name: Option<String>,
}

impl Window {
    /// How a denial names the window. Built only when denying: formatting
    /// is the most expensive part of loading many windows.
    fn label(&self) -> String {
        let description = describe(&self.span);
        match &self.name {
            Some(name) => format!(
                "'{}' ({description})",
                show(name.as_bytes(), MAX_NAME_CHARS)
            ),
            None => description,
        }
    }
}

impl Span {
    /// If the window is active at `t` (unix ms), when that occurrence ends.
    fn active_until(&self, t: i64) -> Option<i64> {
        match *self {
            Span::Absolute { from, to } => (from <= t && t < to).then_some(to),
            Span::Weekly { days, from, to } => {
                let day = t.div_euclid(DAY);
                let tod = t.rem_euclid(DAY);
                let on = |d: i64| days & (1 << weekday(d)) != 0;
                let at = |d: i64, ms: i64| d.saturating_mul(DAY).saturating_add(ms);
                if from < to {
                    (on(day) && from <= tod && tod < to).then(|| at(day, to))
                } else if on(day) && tod >= from {
                    Some(at(day.saturating_add(1), to))
                } else if on(day.saturating_sub(1)) && tod < to {
                    Some(at(day, to))
                } else {
                    None
                }
            }
        }
    }
}

/// The configured policy.
#[derive(Debug)]
pub struct FreezeWindow {
    windows: Vec<Window>,
    keys: Option<Vec<String>>,
}

impl FreezeWindow {
    /// The first window (in settings order) active at `now`.
    fn active(&self, now: i64) -> Option<(&Window, i64)> {
        self.windows
            .iter()
            .find_map(|w| w.span.active_until(now).map(|end| (w, end)))
    }

    /// When the freeze that is active at `now` ends, following windows that
    /// overlap or touch; `false` when it is still going after [`MAX_HOPS`].
    fn freeze_end(&self, now: i64) -> (i64, bool) {
        let mut t = now;
        for _ in 0..MAX_HOPS {
            match self
                .windows
                .iter()
                .filter_map(|w| w.span.active_until(t))
                .max()
            {
                Some(end) if end > t => t = end,
                _ => return (t, true),
            }
        }
        (
            t,
            self.windows
                .iter()
                .all(|w| w.span.active_until(t).is_none()),
        )
    }
}

impl Policy for FreezeWindow {
    type Settings = Settings;
    // Decides by key, owner and time: the server need not look up the user.
    const READS_CALLER_USER: bool = false;

    fn new(settings: Settings) -> Result<Self, String> {
        let Some(raw) = settings.windows else {
            return Err("windows is required: a list of freeze windows, e.g. \
                 {\"windows\": [{\"from\": \"2026-12-20T00:00:00Z\", \"to\": \"2027-01-02T00:00:00Z\"}]}"
                .into());
        };
        if raw.is_empty() {
            return Err("windows must list at least one window".into());
        }
        if raw.len() > MAX_WINDOWS {
            return Err(format!(
                "windows lists {} windows; at most {MAX_WINDOWS} are supported",
                raw.len()
            ));
        }
        let windows = raw
            .iter()
            .enumerate()
            .map(|(i, w)| window(w).map_err(|e| format!("windows[{i}]{e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(keys) = &settings.keys {
            if keys.is_empty() {
                return Err("keys must not be empty; omit it to freeze every key".into());
            }
            if let Some(i) = keys.iter().position(String::is_empty) {
                return Err(format!(
                    "keys[{i}]: an empty glob matches only the empty key; did you mean \"*\"?"
                ));
            }
        }
        Ok(FreezeWindow {
            windows,
            keys: settings.keys,
        })
    }

    fn evaluate(&self, request: &Request<'_>) -> Decision {
        if request.op != Operation::Acquire || request.caller_holds().is_some() {
            return Decision::Allow;
        }
        let key_matches = |keys: &Vec<String>| {
            keys.iter()
                .any(|glob| glob_match(glob.as_bytes(), request.key))
        };
        if !self.keys.as_ref().is_none_or(key_matches) {
            return Decision::Allow;
        }
        let now = i64::try_from(request.now_ms).unwrap_or(i64::MAX);
        let Some((window, _)) = self.active(now) else {
            return Decision::Allow;
        };
        let (end, ends) = self.freeze_end(now);
        Decision::Deny(format!(
            "new acquires of '{}' are frozen by window {} until {}{} (in {})",
            show(request.key, MAX_SHOWN_CHARS),
            window.label(),
            if ends { "" } else { "at least " },
            timestamp(end),
            duration(end.saturating_sub(now)),
        ))
    }
}

lockwarden_sdk::export_policy!(FreezeWindow);

/// Validates one window; errors start with the field (".from: ...").
fn window(w: &WindowSetting) -> Result<Window, String> {
    if w.name.as_deref() == Some("") {
        return Err(".name: must not be empty; omit it to describe the window by its times".into());
    }
    let absolute = w.from.is_some() || w.to.is_some();
    let weekly = w.days.is_some() || w.from_time.is_some() || w.to_time.is_some();
    let span = match (absolute, weekly) {
        (true, true) => {
            return Err(": give either from/to (an absolute range) or \
                 days/from_time/to_time (a weekly range), not both"
                .into());
        }
        (false, false) => {
            return Err(": give either from/to (an absolute range, e.g. \"from\": \
                 \"2026-12-20T00:00:00Z\") or days/from_time/to_time (a weekly range, \
                 e.g. \"from_time\": \"16:00\")"
                .into());
        }
        (true, false) => {
            let from =
                parse_timestamp(required(&w.from, "from")?).map_err(|e| format!(".from: {e}"))?;
            let to = parse_timestamp(required(&w.to, "to")?).map_err(|e| format!(".to: {e}"))?;
            if to <= from {
                return Err(format!(
                    ".to: {} is not after from {}",
                    timestamp(to),
                    timestamp(from)
                ));
            }
            Span::Absolute { from, to }
        }
        (false, true) => {
            let from = parse_time(required(&w.from_time, "from_time")?, false)
                .map_err(|e| format!(".from_time: {e}"))?;
            let to = parse_time(required(&w.to_time, "to_time")?, true)
                .map_err(|e| format!(".to_time: {e}"))?;
            if from == to {
                return Err(": from_time and to_time are equal, an empty window \
                     (use 00:00 to 24:00 for whole days)"
                    .into());
            }
            let days = match &w.days {
                None => 0x7f,
                Some(names) if names.is_empty() => {
                    return Err(".days: must not be empty; omit it for every day".into());
                }
                Some(names) => {
                    let mut days = 0u8;
                    for (j, name) in names.iter().enumerate() {
                        days |= 1 << parse_day(name).map_err(|e| format!(".days[{j}]: {e}"))?;
                    }
                    days
                }
            };
            Span::Weekly { days, from, to }
        }
    };
    Ok(Window {
        span,
        name: w.name.clone(),
    })
}

fn required<'a>(field: &'a Option<String>, name: &str) -> Result<&'a str, String> {
    field
        .as_deref()
        .ok_or_else(|| format!(".{name}: is missing"))
}

fn describe(span: &Span) -> String {
    match *span {
        Span::Absolute { from, to } => format!("{} to {}", timestamp(from), timestamp(to)),
        Span::Weekly { days, from, to } => {
            let days = if days == 0x7f {
                "daily".to_string()
            } else {
                (0..7)
                    .filter(|d| days & (1 << d) != 0)
                    .map(|d| DAY_NAMES[d])
                    .collect::<Vec<_>>()
                    .join(",")
            };
            format!("{days} {}-{} UTC", time_of_day(from), time_of_day(to))
        }
    }
}

/// The weekday of a day count since 1970-01-01 (a Thursday); 0 = Monday.
fn weekday(days: i64) -> u32 {
    // rem_euclid(7) is in 0..7, so neither the sum nor the cast overflows.
    ((days.rem_euclid(7) + 3) % 7) as u32
}

fn parse_day(name: &str) -> Result<u32, String> {
    (0..7u32)
        .find(|&d| {
            DAY_NAMES[d as usize].eq_ignore_ascii_case(name)
                || FULL_DAY_NAMES[d as usize].eq_ignore_ascii_case(name)
        })
        .ok_or_else(|| {
            format!(
                "'{}' is not a day; use mon, tue, wed, thu, fri, sat or sun",
                show(name.as_bytes(), MAX_SHOWN_CHARS)
            )
        })
}

/// A run of ASCII digits as a number; `None` for anything else.
fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 9 || !b.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(b.iter().fold(0, |n, d| n * 10 + i64::from(d - b'0')))
}

/// `HH:MM` or `HH:MM:SS` as ms of day; `24:00` only when `end`.
fn parse_time(s: &str, end: bool) -> Result<i64, String> {
    let b = s.as_bytes();
    let bad = || {
        format!(
            "'{}' is not a time of day like 16:00 or 16:00:30",
            show(b, MAX_SHOWN_CHARS)
        )
    };
    let field = |r: core::ops::Range<usize>| b.get(r).and_then(digits);
    let (h, m, sec) = match b.len() {
        5 if b[2] == b':' => (field(0..2), field(3..5), Some(0)),
        8 if b[2] == b':' && b[5] == b':' => (field(0..2), field(3..5), field(6..8)),
        _ => return Err(bad()),
    };
    let (Some(h), Some(m), Some(sec)) = (h, m, sec) else {
        return Err(bad());
    };
    if h == 24 && m == 0 && sec == 0 {
        return if end {
            Ok(DAY)
        } else {
            Err("24:00 is the end of a day; a window starts at 00:00 at the latest".into())
        };
    }
    if h > 23 || m > 59 || sec > 59 {
        return Err(format!(
            "'{}' is out of range (00:00 to 24:00)",
            show(b, MAX_SHOWN_CHARS)
        ));
    }
    Ok(h * HOUR + m * MINUTE + sec * SECOND)
}

/// RFC 3339 with an explicit zone (or a bare date, meaning midnight UTC) as
/// unix ms.
fn parse_timestamp(s: &str) -> Result<i64, String> {
    let b = s.as_bytes();
    let bad = |why: &str| {
        format!(
            "'{}' is not a timestamp like 2026-12-20T00:00:00Z{why}",
            show(b, MAX_SHOWN_CHARS)
        )
    };
    let field = |r: core::ops::Range<usize>| b.get(r).and_then(digits);
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad(""));
    }
    let (Some(year), Some(month), Some(day)) = (field(0..4), field(5..7), field(8..10)) else {
        return Err(bad(""));
    };
    if !(1..=12).contains(&month) {
        return Err(bad(" (month out of range)"));
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err(bad(" (no such day in that month)"));
    }
    let mut ms = days_from_civil(year, month, day) * DAY;
    if b.len() == 10 {
        return Ok(ms);
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad(""));
    }
    // HH:MM, then optional :SS and .fraction.
    if b.get(13) != Some(&b':') {
        return Err(bad(""));
    }
    let (Some(h), Some(m)) = (field(11..13), field(14..16)) else {
        return Err(bad(""));
    };
    let mut i = 16;
    let mut sec = 0;
    if b.get(i) == Some(&b':') {
        sec = field(i + 1..i + 3).ok_or_else(|| bad(""))?;
        i += 3;
        if b.get(i) == Some(&b'.') {
            let start = i + 1;
            i = start;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start {
                return Err(bad(""));
            }
            // Milliseconds: the first three digits, padded.
            let frac = &b[start..i.min(start + 3)];
            let scale = [100, 10, 1][frac.len() - 1];
            ms += digits(frac).unwrap_or(0) * scale;
        }
    }
    if h > 23 || m > 59 || sec > 59 {
        return Err(bad(" (time out of range)"));
    }
    ms += h * HOUR + m * MINUTE + sec * SECOND;
    match b.get(i..) {
        Some(b"Z" | b"z") => Ok(ms),
        Some(&[sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2]) => {
            let (Some(oh), Some(om)) = (digits(&[oh1, oh2]), digits(&[om1, om2])) else {
                return Err(bad(""));
            };
            if oh > 23 || om > 59 {
                return Err(bad(" (offset out of range)"));
            }
            let offset = oh * HOUR + om * MINUTE;
            Ok(if sign == b'+' {
                ms - offset
            } else {
                ms + offset
            })
        }
        Some([]) => Err(bad(" (add Z for UTC)")),
        _ => Err(bad("")),
    }
}

fn is_leap(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`). `month` is 1..=12, `day` 1..=31; any year that fits
/// comfortably in an `i64` works.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400); // [0, 399]
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1; // [0, 365]
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy; // [0, 146096]
    era * 146_097 + doe - 719_468
}

/// The (year, month, day) of a day count since 1970-01-01; the inverse of
/// [`days_from_civil`], total on every `i64` day count that comes from an
/// `i64` of milliseconds.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days.saturating_add(719_468);
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Unix ms as `2027-01-02T00:00:00Z` (with `.mmm` when not whole seconds).
fn timestamp(ms: i64) -> String {
    let (year, month, day) = civil_from_days(ms.div_euclid(DAY));
    let tod = ms.rem_euclid(DAY);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        tod / HOUR,
        tod % HOUR / MINUTE,
        tod % MINUTE / SECOND
    );
    if tod % SECOND != 0 {
        out.push_str(&format!(".{:03}", tod % SECOND));
    }
    out.push('Z');
    out
}

/// Ms of day as `HH:MM` (or `HH:MM:SS`), `24:00` for the end of the day.
fn time_of_day(ms: i64) -> String {
    let (h, m, s) = (ms / HOUR, ms % HOUR / MINUTE, ms % MINUTE / SECOND);
    if s == 0 {
        format!("{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// A positive duration in ms, rounded up to seconds, as `3d 4h 5m`, `4h 5m`,
/// `5m 6s` or `6s`.
fn duration(ms: i64) -> String {
    let s = ms.max(0) / SECOND + i64::from(ms.max(0) % SECOND != 0);
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests;
