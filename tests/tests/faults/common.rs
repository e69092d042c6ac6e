//! What every fault scenario shares (re-exported by `common_a` and
//! `common_b`): the long/short switch, and [`scenario`], which records a
//! scenario's `tests/FAULTS.md` row whether it passes or fails.

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::time::{Duration, Instant};

use lockwarden_tests::*;

/// `LOCKWARDEN_FAULTS_LONG=1`: run the long variants.
pub fn long() -> bool {
    std::env::var_os("LOCKWARDEN_FAULTS_LONG").is_some_and(|v| v == "1")
}

/// `short` normally, `long` with `LOCKWARDEN_FAULTS_LONG=1`.
pub fn scaled<T>(short: T, long_value: T) -> T {
    if long() { long_value } else { short }
}

/// Sleeps `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// What a scenario measured, kept up to date as it runs so that a failing
/// scenario still reports what it had counted.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Lock commands and fenced writes performed.
    pub operations: u64,
    /// Anomalies the oracle found with fencing on (must be 0).
    pub anomalies_fenced: usize,
    /// Anomalies of the control run without fencing, if there is one.
    pub anomalies_unfenced: Option<usize>,
}

/// Runs a scenario body and records its row of `tests/FAULTS.md`: `PASS`,
/// or `FAIL: <first line of the panic>`; then re-raises any panic.
pub fn scenario(name: &str, flavor: Flavor, faults: &str, body: impl FnOnce(&mut Outcome)) {
    let started = Instant::now();
    let mut out = Outcome::default();
    let result = catch_unwind(AssertUnwindSafe(|| body(&mut out)));
    let verdict = match &result {
        Ok(()) => "PASS".to_string(),
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("panic");
            format!("FAIL: {}", cell(text.lines().next().unwrap_or(""), 300))
        }
    };
    Row {
        scenario: name.to_string(),
        flavor,
        faults: cell(faults, usize::MAX),
        operations: out.operations,
        anomalies_fenced: out.anomalies_fenced,
        anomalies_unfenced: out.anomalies_unfenced,
        result: verdict.clone(),
    }
    .record();
    eprintln!(
        "fault scenario {name} [{flavor}]: {verdict} in {:.1} s ({} operations, {} anomalies with fencing, control {:?})",
        started.elapsed().as_secs_f64(),
        out.operations,
        out.anomalies_fenced,
        out.anomalies_unfenced
    );
    if let Err(payload) = result {
        resume_unwind(payload);
    }
}

/// Text safe for one markdown table cell, at most `max` characters.
fn cell(text: &str, max: usize) -> String {
    text.chars()
        .map(|c| match c {
            '|' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .take(max)
        .collect()
}
