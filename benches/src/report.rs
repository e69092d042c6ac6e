//! The comparison report: one row per compared metric (A vs B, the ratio or
//! difference, the target, PASS/MISS), printed as a text table and as a
//! markdown table for `benches/README.md`.
//!
//! A row is built from per-round measurements of both variants: the A and B
//! columns are medians over the rounds, the compared value is the median of
//! the per-round ratios (or differences), so a slow phase of the machine hits
//! both variants of a round alike.

use crate::stats::{median, min_max};
use std::fmt::Write as _;

/// How A is compared with B.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// `A / B`.
    Ratio,
    /// `A - B`, in the row's unit.
    Delta,
}

/// What the compared value must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
    /// Reported, not judged.
    Info,
}

/// One compared metric.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub a_label: String,
    pub b_label: String,
    pub unit: String,
    /// Medians over the rounds.
    pub a: f64,
    pub b: f64,
    pub compare: Compare,
    /// Median of the per-round ratios or differences.
    pub value: f64,
    /// Smallest and largest per-round value (when there were several rounds).
    pub spread: Option<(f64, f64)>,
    pub target: Target,
    pub aim: Option<f64>,
    /// The target applies to A itself (an absolute bound), not to A/B.
    pub target_on_a: bool,
    pub rounds: usize,
}

impl Row {
    /// A row from paired per-round measurements (`a[i]` and `b[i]` come from
    /// the same round).
    pub fn paired(
        scenario: &str,
        (a_label, a): (&str, &[f64]),
        (b_label, b): (&str, &[f64]),
        unit: &str,
        compare: Compare,
    ) -> Row {
        assert_eq!(a.len(), b.len(), "paired rounds");
        let per_round: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(&x, &y)| match compare {
                Compare::Ratio => x / y,
                Compare::Delta => x - y,
            })
            .collect();
        Row {
            scenario: scenario.to_string(),
            a_label: a_label.to_string(),
            b_label: b_label.to_string(),
            unit: unit.to_string(),
            a: median(a),
            b: median(b),
            compare,
            value: median(&per_round),
            spread: (per_round.len() > 1).then(|| min_max(&per_round)),
            target: Target::Info,
            aim: None,
            target_on_a: false,
            rounds: a.len(),
        }
    }

    /// A row from one measurement of each.
    pub fn single(
        scenario: &str,
        a: (&str, f64),
        b: (&str, f64),
        unit: &str,
        compare: Compare,
    ) -> Row {
        Row::paired(scenario, (a.0, &[a.1]), (b.0, &[b.1]), unit, compare)
    }

    pub fn target(mut self, target: Target) -> Row {
        self.target = target;
        self
    }

    pub fn aim(mut self, aim: f64) -> Row {
        self.aim = Some(aim);
        self
    }

    /// An absolute bound on A (in the row's unit) rather than on A/B.
    pub fn target_on_a(mut self, target: Target) -> Row {
        self.target = target;
        self.target_on_a = true;
        self
    }

    pub fn status(&self) -> Status {
        let judged = if self.target_on_a { self.a } else { self.value };
        match self.target {
            Target::Info => Status::Info,
            _ if !judged.is_finite() => Status::Miss,
            Target::AtMost(t) if judged <= t => Status::Pass,
            Target::AtLeast(t) if judged >= t => Status::Pass,
            _ => Status::Miss,
        }
    }

    fn value_text(&self) -> String {
        if !self.value.is_finite() {
            return "n/a".to_string();
        }
        match self.compare {
            Compare::Ratio => format!("{:.2}×", self.value),
            Compare::Delta => format!("{:+.2} {}", self.value, self.unit),
        }
    }

    fn spread_text(&self) -> String {
        match (self.spread, self.compare) {
            (Some((lo, hi)), Compare::Ratio) => format!("{lo:.2}–{hi:.2}"),
            (Some((lo, hi)), Compare::Delta) => format!("{lo:+.2}…{hi:+.2}"),
            (None, _) => "—".to_string(),
        }
    }

    fn target_text(&self) -> String {
        let fmt = |v: f64| match (self.target_on_a, self.compare) {
            (true, _) => format!("{} {}", num(v), self.unit),
            (false, Compare::Ratio) => format!("{v:.2}×"),
            (false, Compare::Delta) => format!("{v:+.2} {}", self.unit),
        };
        let subject = if self.target_on_a { "A " } else { "" };
        let t = match self.target {
            Target::AtMost(t) => format!("{subject}≤ {}", fmt(t)),
            Target::AtLeast(t) => format!("{subject}≥ {}", fmt(t)),
            Target::Info => "—".to_string(),
        };
        match self.aim {
            Some(a) => format!("{t} (aim {})", fmt(a)),
            None => t,
        }
    }
}

/// The verdict on a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Pass,
    Miss,
    Info,
}

impl Status {
    fn text(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Miss => "MISS",
            Status::Info => "info",
        }
    }
}

/// A line of the report: a compared metric, or a scenario that did not run.
#[derive(Clone, Debug)]
pub enum Line {
    Row(Row),
    Skipped { scenario: String, reason: String },
}

/// The whole report.
#[derive(Default)]
pub struct Report {
    pub title: String,
    /// `name: value` lines printed above the table (server, options, date).
    pub context: Vec<(String, String)>,
    pub lines: Vec<Line>,
    /// Free-form observations printed below the table.
    pub notes: Vec<String>,
}

/// A number with a precision that suits its size.
pub fn num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_string();
    }
    match x.abs() {
        a if a >= 1000.0 => format!("{x:.0}"),
        a if a >= 10.0 => format!("{x:.1}"),
        _ => format!("{x:.2}"),
    }
}

const HEADER: [&str; 8] = [
    "scenario",
    "A",
    "B",
    "unit",
    "A/B (or A−B)",
    "per-round range",
    "target",
    "result",
];

impl Report {
    pub fn new(title: &str) -> Report {
        Report {
            title: title.to_string(),
            ..Report::default()
        }
    }

    pub fn context(&mut self, name: &str, value: impl Into<String>) {
        self.context.push((name.to_string(), value.into()));
    }

    pub fn row(&mut self, row: Row) {
        self.lines.push(Line::Row(row));
    }

    pub fn skipped(&mut self, scenario: &str, reason: &str) {
        self.lines.push(Line::Skipped {
            scenario: scenario.to_string(),
            reason: reason.to_string(),
        });
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    /// The table cells; a skipped scenario has only its name and reason.
    fn cells(&self) -> Vec<Vec<String>> {
        self.lines
            .iter()
            .map(|line| match line {
                Line::Row(r) => [
                    r.scenario.clone(),
                    format!("{} {}", r.a_label, num(r.a)),
                    format!("{} {}", r.b_label, num(r.b)),
                    r.unit.clone(),
                    r.value_text(),
                    r.spread_text(),
                    r.target_text(),
                    r.status().text().to_string(),
                ]
                .to_vec(),
                Line::Skipped { scenario, reason } => {
                    vec![scenario.clone(), format!("skipped: {reason}")]
                }
            })
            .collect()
    }

    fn rows(&self) -> impl Iterator<Item = &Row> {
        self.lines.iter().filter_map(|l| match l {
            Line::Row(r) => Some(r),
            Line::Skipped { .. } => None,
        })
    }

    fn misses(&self) -> Vec<&Row> {
        self.rows().filter(|r| r.status() == Status::Miss).collect()
    }

    /// The text table, for the terminal.
    pub fn text(&self) -> String {
        let cells = self.cells();
        let mut width: Vec<usize> = HEADER.iter().map(|h| h.chars().count()).collect();
        for row in cells.iter().filter(|r| r.len() == HEADER.len()) {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |row: &[String]| -> String {
            let mut s = String::new();
            for (i, (c, w)) in row.iter().zip(&width).enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', w - c.chars().count()));
            }
            s.trim_end().to_string()
        };
        let mut out = String::new();
        let _ = writeln!(out, "== {} ==", self.title);
        for (k, v) in &self.context {
            let _ = writeln!(out, "{k}: {v}");
        }
        out.push('\n');
        let header: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
        let _ = writeln!(out, "{}", line(&header));
        let total: usize = width.iter().sum::<usize>() + 2 * (width.len() - 1);
        let _ = writeln!(out, "{}", "-".repeat(total));
        for row in &cells {
            if row.len() == HEADER.len() {
                let _ = writeln!(out, "{}", line(row));
            } else {
                let _ = writeln!(out, "{}", row.join("  "));
            }
        }
        out.push('\n');
        out.push_str(&self.verdict());
        for n in &self.notes {
            let _ = writeln!(out, "note: {n}");
        }
        out
    }

    fn verdict(&self) -> String {
        let judged = self.rows().filter(|r| r.status() != Status::Info).count();
        let misses = self.misses();
        let mut out = String::new();
        if misses.is_empty() {
            let _ = writeln!(out, "all {judged} targets PASS");
        } else {
            let _ = writeln!(
                out,
                "*** {} of {judged} targets MISSED (this is a report; the exit code stays 0) ***",
                misses.len()
            );
            for r in misses {
                let value = if r.target_on_a {
                    format!("A = {} {}", num(r.a), r.unit)
                } else {
                    r.value_text()
                };
                let _ = writeln!(
                    out,
                    "*** MISS: {}: {value} vs target {}",
                    r.scenario,
                    r.target_text()
                );
            }
        }
        out
    }

    /// The markdown section, for `benches/README.md`.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "### {}\n", self.title);
        for (k, v) in &self.context {
            let _ = writeln!(out, "- {k}: {v}");
        }
        out.push('\n');
        let _ = writeln!(out, "| {} |", HEADER.join(" | "));
        let _ = writeln!(out, "|{}", " --- |".repeat(HEADER.len()));
        for mut row in self.cells() {
            row.resize(HEADER.len(), String::new());
            if row[1].starts_with("skipped") {
                row[7] = "skipped".to_string();
            }
            let row: Vec<String> = row.iter().map(|c| c.replace('|', "\\|")).collect();
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        out.push('\n');
        for line in self.verdict().lines() {
            let _ = writeln!(out, "{}  ", line.trim_matches('*').trim());
        }
        if !self.notes.is_empty() {
            out.push('\n');
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        out
    }

    /// Prints the text table, then the markdown section between markers.
    pub fn print(&self) {
        println!("\n{}", self.text());
        println!("----- markdown for benches/README.md (begin) -----");
        print!("{}", self.markdown());
        println!("----- markdown for benches/README.md (end) -----");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_medians_of_paired_rounds() {
        let r = Row::paired(
            "x",
            ("A", &[2.0, 4.0, 3.0]),
            ("B", &[1.0, 2.0, 3.0]),
            "µs",
            Compare::Ratio,
        )
        .target(Target::AtMost(1.5));
        assert_eq!(r.a, 3.0);
        assert_eq!(r.b, 2.0);
        assert_eq!(r.value, 2.0);
        assert_eq!(r.spread, Some((1.0, 2.0)));
        assert_eq!(r.status(), Status::Miss);
        let d = Row::single("y", ("A", 1.3), ("B", 1.0), "µs", Compare::Delta)
            .target(Target::AtMost(0.5));
        assert_eq!(d.status(), Status::Pass);
        assert_eq!(d.spread, None);
    }

    #[test]
    fn the_report_flags_misses() {
        let mut rep = Report::new("t");
        rep.row(
            Row::single("ok", ("A", 1.0), ("B", 1.0), "x", Compare::Ratio)
                .target(Target::AtMost(1.3)),
        );
        rep.row(
            Row::single("bad", ("A", 2.0), ("B", 1.0), "x", Compare::Ratio)
                .target(Target::AtMost(1.3)),
        );
        rep.row(
            Row::single("abs", ("A", 3.0), ("B", 1.0), "ms", Compare::Ratio)
                .target_on_a(Target::AtMost(2.0)),
        );
        rep.skipped("later", "not available");
        let text = rep.text();
        assert!(text.contains("MISS: bad"), "{text}");
        assert!(
            text.contains("MISS: abs: A = 3.00 ms vs target A ≤ 2.00 ms"),
            "{text}"
        );
        assert!(text.contains("skipped: not available"));
        let md = rep.markdown();
        assert!(md.contains("| ok |"), "{md}");
    }
}
