use super::*;
use lockwarden_sdk::policy::testing::{PolicyTester, RequestBuilder};
use proptest::prelude::*;

/// The example from the crate documentation.
const SETTINGS: &str = r#"{
    "windows": [
        {"name": "year-end", "from": "2026-12-20T00:00:00Z", "to": "2027-01-02T00:00:00Z"},
        {"days": ["sat", "sun"], "from_time": "00:00", "to_time": "24:00"},
        {"days": ["fri"], "from_time": "16:00", "to_time": "23:59"}
    ],
    "keys": ["deploy:*"]
}"#;

fn tester(json: &str) -> PolicyTester<FreezeWindow> {
    PolicyTester::new(json).expect("settings accepted")
}

fn rejection(json: &str) -> String {
    match PolicyTester::<FreezeWindow>::new(json) {
        Ok(_) => panic!("settings accepted: {json}"),
        Err(e) => e,
    }
}

/// Unix ms of a UTC timestamp.
fn t(s: &str) -> u64 {
    u64::try_from(parse_timestamp(s).expect(s)).expect("after 1970")
}

fn acquire_at(p: &PolicyTester<FreezeWindow>, key: &str, now: &str) -> Decision {
    p.evaluate(&RequestBuilder::acquire(key, "me", 1000).at(t(now)))
}

fn denied(d: &Decision) -> bool {
    matches!(d, Decision::Deny(_))
}

// ---- date arithmetic -------------------------------------------------------

#[test]
fn civil_dates_match_known_unix_times() {
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(1969, 12, 31), -1);
    assert_eq!(days_from_civil(2000, 3, 1) * DAY, 951_868_800_000);
    assert_eq!(t("2026-12-20T00:00:00Z"), 1_797_724_800_000);
    assert_eq!(t("2027-01-02T00:00:00Z"), 1_798_848_000_000);
    assert_eq!(t("2024-02-29T12:34:56Z"), 1_709_210_096_000);
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(-1), (1969, 12, 31));
    assert_eq!(civil_from_days(11_017), (2000, 3, 1));
}

#[test]
fn civil_round_trips_over_centuries() {
    let mut prev = days_from_civil(1599, 12, 31);
    for year in 1600..=2500 {
        for month in 1..=12 {
            for day in 1..=days_in_month(year, month) {
                let n = days_from_civil(year, month, day);
                assert_eq!(n, prev + 1, "{year}-{month}-{day}");
                assert_eq!(civil_from_days(n), (year, month, day));
                prev = n;
            }
        }
    }
}

#[test]
fn weekdays() {
    assert_eq!(weekday(0), 3); // 1970-01-01, a Thursday
    assert_eq!(weekday(days_from_civil(2026, 6, 5)), 4); // a Friday
    assert_eq!(weekday(days_from_civil(2026, 12, 20)), 6); // a Sunday
    assert_eq!(weekday(days_from_civil(2000, 3, 1)), 2); // a Wednesday
    assert_eq!(weekday(-1), 2);
    assert_eq!(weekday(i64::MAX), weekday(i64::MAX - 7));
}

#[test]
fn timestamps_format_and_durations() {
    assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
    assert_eq!(timestamp(1_798_848_000_000), "2027-01-02T00:00:00Z");
    assert_eq!(timestamp(1_709_210_096_250), "2024-02-29T12:34:56.250Z");
    assert_eq!(timestamp(-1), "1969-12-31T23:59:59.999Z");
    let _ = timestamp(i64::MAX);
    let _ = timestamp(i64::MIN);
    assert_eq!(duration(0), "0s");
    assert_eq!(duration(1), "1s");
    assert_eq!(duration(59_000), "59s");
    assert_eq!(duration(61_000), "1m 1s");
    assert_eq!(duration(3 * HOUR + 20 * MINUTE), "3h 20m");
    assert_eq!(duration(2 * DAY + 3 * HOUR + 20 * MINUTE + 5), "2d 3h 20m");
    let _ = duration(i64::MAX);
}

#[test]
fn parses_rfc3339_variants() {
    let base = t("2026-12-20T09:30:00Z");
    assert_eq!(t("2026-12-20T09:30Z"), base);
    assert_eq!(t("2026-12-20t09:30:00z"), base);
    assert_eq!(t("2026-12-20 09:30:00Z"), base);
    assert_eq!(t("2026-12-20T09:30:00.5Z"), base + 500);
    assert_eq!(t("2026-12-20T09:30:00.25Z"), base + 250);
    assert_eq!(t("2026-12-20T09:30:00.123456789Z"), base + 123);
    assert_eq!(t("2026-12-20T10:30:00+01:00"), base);
    assert_eq!(t("2026-12-20T04:00:00-05:30"), base);
    assert_eq!(t("2026-12-20T09:30:00+00:00"), base);
    assert_eq!(t("2026-12-20"), t("2026-12-20T00:00:00Z"));
    assert_eq!(t("2024-02-29"), t("2024-02-28") + DAY as u64);
}

#[test]
fn refuses_malformed_timestamps() {
    for (s, why) in [
        ("2026-12-20T00:00:00", "add Z for UTC"),
        ("2026-13-01", "month out of range"),
        ("2026-00-01", "month out of range"),
        ("2026-02-29", "no such day"),
        ("2100-02-29", "no such day"),
        ("2026-04-31", "no such day"),
        ("2026-12-20T24:00:00Z", "time out of range"),
        ("2026-12-20T10:60Z", "time out of range"),
        ("2026-12-20T10:00:00+24:00", "offset out of range"),
        ("2026-12-20T10:00:00.Z", ""),
        ("2026-12-20T10Z", ""),
        ("2026-12-20T10:00:00+0100", ""),
        ("2026-12-20T10:00:00 UTC", ""),
        ("26-12-20", ""),
        ("2026/12/20", ""),
        ("+026-12-20", ""),
        ("tomorrow", ""),
        ("", ""),
        ("2026-12-2é", ""),
        ("2026-12-20Té:00Z", ""),
        ("2026-12-20T10:00:00.0é", ""),
    ] {
        let e = parse_timestamp(s).expect_err(s);
        assert!(
            e.contains("is not a timestamp like 2026-12-20T00:00:00Z"),
            "{s}: {e}"
        );
        assert!(e.contains(why), "{s}: {e}");
    }
}

#[test]
fn parses_times_of_day() {
    assert_eq!(parse_time("00:00", false), Ok(0));
    assert_eq!(parse_time("16:30", false), Ok(16 * HOUR + 30 * MINUTE));
    assert_eq!(parse_time("23:59:59", false), Ok(DAY - SECOND));
    assert_eq!(parse_time("24:00", true), Ok(DAY));
    assert_eq!(parse_time("24:00:00", true), Ok(DAY));
    assert!(
        parse_time("24:00", false)
            .unwrap_err()
            .contains("end of a day")
    );
    for s in [
        "7:00", "24:01", "12:60", "25:00", "12:00:60", "12-00", "noon", "", "1é:00", "+1:00",
    ] {
        assert!(parse_time(s, true).is_err(), "{s}");
    }
}

// ---- decisions ---------------------------------------------------------------

#[test]
fn absolute_window_is_half_open() {
    let p = tester(SETTINGS);
    // 2026-12-19 is a Saturday, so pick weekdays around the range ends.
    assert_eq!(
        acquire_at(&p, "deploy:web", "2026-12-17T12:00:00Z"),
        Decision::Allow
    );
    assert!(denied(&acquire_at(
        &p,
        "deploy:web",
        "2026-12-20T00:00:00Z"
    )));
    assert!(denied(&acquire_at(
        &p,
        "deploy:web",
        "2026-12-23T12:00:00Z"
    )));
    assert!(denied(&acquire_at(
        &p,
        "deploy:web",
        "2027-01-01T23:59:59.999Z"
    )));
    // 2027-01-02 is a Saturday: the weekend window takes over.
    let p = tester(r#"{"windows": [{"from": "2026-12-20", "to": "2027-01-02"}]}"#);
    assert_eq!(acquire_at(&p, "x", "2027-01-02T00:00:00Z"), Decision::Allow);
    assert_eq!(
        acquire_at(&p, "x", "2026-12-19T23:59:59.999Z"),
        Decision::Allow
    );
}

#[test]
fn denial_names_window_and_end() {
    let p = tester(SETTINGS);
    assert_eq!(
        acquire_at(&p, "deploy:web", "2026-12-29T20:00:00Z"),
        Decision::Deny(
            "new acquires of 'deploy:web' are frozen by window 'year-end' \
             (2026-12-20T00:00:00Z to 2027-01-02T00:00:00Z) until 2027-01-04T00:00:00Z \
             (in 5d 4h 0m)"
                .into()
        ),
        "the year-end freeze runs into the weekend of 2027-01-02/03"
    );
    assert_eq!(
        acquire_at(&p, "deploy:web", "2026-06-05T16:00:00Z"),
        Decision::Deny(
            "new acquires of 'deploy:web' are frozen by window fri 16:00-23:59 UTC \
             until 2026-06-05T23:59:00Z (in 7h 59m)"
                .into()
        )
    );
    assert_eq!(
        acquire_at(&p, "deploy:web", "2026-06-06T10:00:00Z"),
        Decision::Deny(
            "new acquires of 'deploy:web' are frozen by window sat,sun 00:00-24:00 UTC \
             until 2026-06-08T00:00:00Z (in 1d 14h 0m)"
                .into()
        )
    );
}

#[test]
fn weekly_windows() {
    let p = tester(SETTINGS);
    let k = "deploy:web";
    assert_eq!(acquire_at(&p, k, "2026-06-05T15:59:59Z"), Decision::Allow); // Fri
    assert!(denied(&acquire_at(&p, k, "2026-06-05T16:00:00Z")));
    assert!(denied(&acquire_at(&p, k, "2026-06-05T23:58:59Z")));
    assert_eq!(acquire_at(&p, k, "2026-06-05T23:59:00Z"), Decision::Allow); // the gap
    assert!(denied(&acquire_at(&p, k, "2026-06-06T00:00:00Z"))); // Sat
    assert!(denied(&acquire_at(&p, k, "2026-06-07T23:59:59.999Z"))); // Sun
    assert_eq!(acquire_at(&p, k, "2026-06-08T00:00:00Z"), Decision::Allow); // Mon
    assert_eq!(acquire_at(&p, k, "2026-06-04T18:00:00Z"), Decision::Allow); // Thu
}

#[test]
fn windows_wrap_past_midnight() {
    let p = tester(r#"{"windows": [{"days": ["fri"], "from_time": "22:00", "to_time": "06:00"}]}"#);
    assert_eq!(acquire_at(&p, "k", "2026-06-05T21:59:59Z"), Decision::Allow); // Fri
    assert_eq!(
        acquire_at(&p, "k", "2026-06-05T22:00:00Z"),
        Decision::Deny(
            "new acquires of 'k' are frozen by window fri 22:00-06:00 UTC \
             until 2026-06-06T06:00:00Z (in 8h 0m)"
                .into()
        )
    );
    assert!(denied(&acquire_at(&p, "k", "2026-06-06T05:59:59Z"))); // Sat early
    assert_eq!(acquire_at(&p, "k", "2026-06-06T06:00:00Z"), Decision::Allow);
    assert_eq!(acquire_at(&p, "k", "2026-06-06T23:00:00Z"), Decision::Allow); // Sat night
    assert_eq!(acquire_at(&p, "k", "2026-06-05T03:00:00Z"), Decision::Allow); // Thu→Fri night
    // Sunday night wraps into Monday, across the week boundary.
    let p =
        tester(r#"{"windows": [{"days": ["sunday"], "from_time": "23:00", "to_time": "01:30"}]}"#);
    assert!(denied(&acquire_at(&p, "k", "2026-06-08T01:00:00Z"))); // Mon
    assert_eq!(acquire_at(&p, "k", "2026-06-08T01:30:00Z"), Decision::Allow);
    // A window ending at 00:00 runs to midnight.
    let p = tester(r#"{"windows": [{"days": ["MON"], "from_time": "20:00", "to_time": "00:00"}]}"#);
    assert!(denied(&acquire_at(&p, "k", "2026-06-08T23:59:59Z")));
    assert_eq!(acquire_at(&p, "k", "2026-06-09T00:00:00Z"), Decision::Allow);
}

#[test]
fn daily_windows_without_days() {
    let p =
        tester(r#"{"windows": [{"name": "nightly", "from_time": "22:00", "to_time": "06:00"}]}"#);
    for day in 1..=7 {
        let night = format!("2026-06-0{day}T23:30:00Z");
        assert_eq!(
            acquire_at(&p, "k", &night),
            Decision::Deny(format!(
                "new acquires of 'k' are frozen by window 'nightly' (daily 22:00-06:00 UTC) \
                 until 2026-06-0{}T06:00:00Z (in 6h 30m)",
                day + 1
            ))
        );
        assert_eq!(
            acquire_at(&p, "k", &format!("2026-06-0{day}T12:00:00Z")),
            Decision::Allow
        );
    }
}

#[test]
fn adjoining_windows_are_merged_and_endless_freezes_say_so() {
    // Sat 00:00-24:00, Sun 00:00-06:00 and an absolute range from Sun 05:00:
    // one freeze from Saturday to the end of the range.
    let p = tester(
        r#"{"windows": [
            {"days": ["sat"], "from_time": "00:00", "to_time": "24:00"},
            {"days": ["sun"], "from_time": "00:00", "to_time": "06:00"},
            {"from": "2026-06-07T05:00:00Z", "to": "2026-06-07T09:15:00Z"}
        ]}"#,
    );
    let Decision::Deny(reason) = acquire_at(&p, "k", "2026-06-06T12:00:00Z") else {
        panic!("allowed")
    };
    assert!(
        reason.ends_with("until 2026-06-07T09:15:00Z (in 21h 15m)"),
        "{reason}"
    );
    let p = tester(r#"{"windows": [{"from_time": "00:00", "to_time": "24:00"}]}"#);
    let Decision::Deny(reason) = acquire_at(&p, "k", "2026-06-06T12:00:00Z") else {
        panic!("allowed")
    };
    assert!(
        reason.contains("until at least 2026-06-22T00:00:00Z"),
        "{reason}"
    );
}

#[test]
fn only_new_acquires_are_frozen() {
    let p = tester(SETTINGS);
    let now = t("2026-12-24T12:00:00Z");
    let mut retry = RequestBuilder::acquire("deploy:web", "me", 1000).at(now);
    retry.holder = Some((b"me".to_vec(), 7, 5_000, 0));
    assert_eq!(p.evaluate(&retry), Decision::Allow, "retry by the holder");
    let mut contend = retry.clone();
    contend.holder = Some((b"someone-else".to_vec(), 7, 5_000, 0));
    assert!(
        denied(&p.evaluate(&contend)),
        "acquire of a held lock by another owner"
    );
    let free = RequestBuilder::acquire("deploy:web", "me", 1000).at(now);
    assert!(denied(&p.evaluate(&free)));
    let extend = RequestBuilder::extend("deploy:web", "me", 1000, 5_000, 2).at(now);
    assert_eq!(p.evaluate(&extend), Decision::Allow);
    let release = RequestBuilder::release("deploy:web", "me").at(now);
    assert_eq!(p.evaluate(&release), Decision::Allow);
}

#[test]
fn key_globs_limit_the_freeze() {
    let p = tester(SETTINGS);
    assert_eq!(
        acquire_at(&p, "orders:1", "2026-12-24T12:00:00Z"),
        Decision::Allow
    );
    assert!(denied(&acquire_at(&p, "deploy:", "2026-12-24T12:00:00Z")));
    let p = tester(r#"{"windows": [{"from": "2026-12-20", "to": "2027-01-02"}]}"#);
    assert!(
        denied(&acquire_at(&p, "orders:1", "2026-12-24T12:00:00Z")),
        "all keys by default"
    );
    let mut r = RequestBuilder::acquire("", "me", 1).at(t("2026-12-24"));
    r.key = b"\xff\r\n".to_vec();
    let Decision::Deny(reason) = p.evaluate(&r) else {
        panic!("allowed")
    };
    assert!(
        reason.starts_with("new acquires of '\\xff\\r\\n' are frozen"),
        "{reason}"
    );
}

// ---- settings ----------------------------------------------------------------

#[test]
fn rejects_missing_or_empty_windows() {
    assert!(rejection("").contains("windows is required"));
    assert!(rejection(r#"{"keys": ["a*"]}"#).contains("windows is required"));
    assert!(rejection(r#"{"windows": []}"#).contains("at least one window"));
    let many = serde_json::json!({
        "windows": vec![serde_json::json!({"from_time": "01:00", "to_time": "02:00"}); MAX_WINDOWS + 1]
    });
    assert!(rejection(&many.to_string()).contains("at most 32"));
}

#[test]
fn rejects_malformed_windows_naming_the_field() {
    for (json, expected) in [
        (r#"{}"#, "windows[0]: give either from/to"),
        (
            r#"{"from": "2026-12-20", "to": "2027-01-02", "days": ["sat"]}"#,
            "windows[0]: give either from/to (an absolute range) or days/from_time/to_time",
        ),
        (r#"{"from": "2026-12-20"}"#, "windows[0].to: is missing"),
        (r#"{"to": "2026-12-20"}"#, "windows[0].from: is missing"),
        (
            r#"{"from": "2026-12-20T00:00:00", "to": "2027-01-02"}"#,
            "windows[0].from: '2026-12-20T00:00:00' is not a timestamp like 2026-12-20T00:00:00Z (add Z for UTC)",
        ),
        (
            r#"{"from": "2027-01-02", "to": "2026-12-20"}"#,
            "windows[0].to: 2026-12-20T00:00:00Z is not after from 2027-01-02T00:00:00Z",
        ),
        (
            r#"{"from": "2027-01-02", "to": "2027-01-02"}"#,
            "is not after from",
        ),
        (
            r#"{"days": ["sat"], "from_time": "10:00"}"#,
            "windows[0].to_time: is missing",
        ),
        (
            r#"{"days": ["sat"], "from_time": "10:00", "to_time": "10:00"}"#,
            "windows[0]: from_time and to_time are equal",
        ),
        (
            r#"{"days": ["saturday", "sab"], "from_time": "10:00", "to_time": "11:00"}"#,
            "windows[0].days[1]: 'sab' is not a day; use mon, tue, wed, thu, fri, sat or sun",
        ),
        (
            r#"{"days": [], "from_time": "10:00", "to_time": "11:00"}"#,
            "windows[0].days: must not be empty",
        ),
        (
            r#"{"from_time": "24:00", "to_time": "06:00"}"#,
            "windows[0].from_time: 24:00 is the end of a day",
        ),
        (
            r#"{"from_time": "10:00", "to_time": "25:00"}"#,
            "windows[0].to_time: '25:00' is out of range",
        ),
        (
            r#"{"from_time": "4pm", "to_time": "23:00"}"#,
            "windows[0].from_time: '4pm' is not a time of day like 16:00",
        ),
        (
            r#"{"name": "", "from_time": "10:00", "to_time": "11:00"}"#,
            "windows[0].name: must not be empty",
        ),
    ] {
        let e = rejection(&format!(r#"{{"windows": [{json}]}}"#));
        assert!(e.contains(expected), "{json}: {e}");
    }
    // The index is that of the bad window.
    let e = rejection(
        r#"{"windows": [{"from_time": "10:00", "to_time": "11:00"}, {"from_time": "x", "to_time": "11:00"}]}"#,
    );
    assert!(e.starts_with("windows[1].from_time:"), "{e}");
}

#[test]
fn rejects_unknown_fields_and_bad_keys() {
    let e = rejection(r#"{"windows": [{"start": "2026-12-20", "to": "2027-01-02"}]}"#);
    assert!(e.contains("unknown field `start`"), "{e}");
    let e = rejection(r#"{"windows": [{"from_time": "10:00", "to_time": "11:00"}], "key": ["a"]}"#);
    assert!(e.contains("unknown field `key`"), "{e}");
    let e = rejection(r#"{"windows": [{"from_time": "10:00", "to_time": "11:00"}], "keys": []}"#);
    assert!(e.contains("keys must not be empty"), "{e}");
    let e = rejection(
        r#"{"windows": [{"from_time": "10:00", "to_time": "11:00"}], "keys": ["a", ""]}"#,
    );
    assert!(e.contains("keys[1]: an empty glob"), "{e}");
}

// ---- properties ----------------------------------------------------------------

fn window_strategy() -> impl Strategy<Value = serde_json::Value> {
    let absolute = (0..4_000_000_000u64, 1..2_000_000_000u64).prop_map(|(from_s, len_s)| {
        serde_json::json!({
            "from": timestamp(from_s as i64 * 1000),
            "to": timestamp((from_s + len_s) as i64 * 1000),
        })
    });
    let weekly = (
        proptest::collection::vec(0..7usize, 0..4),
        0..(24 * 60i64),
        1..=(24 * 60i64),
    )
        .prop_filter("non-empty", |(_, f, t)| f != t)
        .prop_map(|(days, from, to)| {
            let mut w = serde_json::json!({
                "from_time": time_of_day(from * MINUTE),
                "to_time": time_of_day(to * MINUTE),
            });
            if !days.is_empty() {
                w["days"] = days.iter().map(|&d| DAY_NAMES[d]).collect();
            }
            w
        });
    prop_oneof![absolute, weekly]
}

proptest! {
    #[test]
    fn date_arithmetic_round_trips(days in -1_000_000_000i64..1_000_000_000) {
        let (y, m, d) = civil_from_days(days);
        prop_assert!((1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m));
        prop_assert_eq!(days_from_civil(y, m, d), days);
    }

    #[test]
    fn timestamps_round_trip(ms in 0..253_402_300_800_000i64) {
        prop_assert_eq!(parse_timestamp(&timestamp(ms)), Ok(ms));
    }

    #[test]
    fn parsers_never_panic(s in "\\PC{0,40}", t2 in "[0-9:TZ.+ -]{0,30}") {
        let _ = parse_timestamp(&s);
        let _ = parse_timestamp(&t2);
        let _ = parse_time(&s, true);
        let _ = parse_time(&t2, false);
        let _ = parse_day(&s);
    }

    /// A denial's "until" is right: frozen just before it, and (unless it
    /// says "at least") free at it.
    #[test]
    fn denials_end_when_they_say(
        windows in proptest::collection::vec(window_strategy(), 1..6),
        now in prop_oneof![0..6_000_000_000_000u64, any::<u64>()],
        key in proptest::collection::vec(any::<u8>(), 0..20),
        op in 0..3u8,
    ) {
        let p = tester(&serde_json::json!({ "windows": windows }).to_string());
        let mut r = RequestBuilder::acquire("", "me", 1000).at(now);
        r.key = key;
        r.op = [Operation::Acquire, Operation::Extend, Operation::Release][op as usize];
        let decision = p.evaluate(&r);
        if r.op != Operation::Acquire {
            prop_assert_eq!(decision, Decision::Allow);
            return Ok(());
        }
        let Decision::Deny(reason) = decision else {
            prop_assert_eq!(decision, Decision::Allow);
            return Ok(());
        };
        prop_assert!(!reason.contains('\n') && !reason.contains('\r'));
        // Beyond year 9999 timestamps are printed but cannot be parsed back.
        if now >= 250_000_000_000_000 || reason.contains("at least") {
            return Ok(());
        }
        let until = reason.split(" until ").nth(1).unwrap().split(' ').next().unwrap();
        let end = parse_timestamp(until).unwrap() as u64;
        prop_assert!(end > now);
        prop_assert!(denied(&p.evaluate(&r.clone().at(end - 1))));
        prop_assert_eq!(p.evaluate(&r.clone().at(end)), Decision::Allow);
    }
}
