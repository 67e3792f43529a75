//! Go-style durations, as OpenAI sends them in `x-ratelimit-reset-*` headers:
//! `20ms`, `1s`, `6m0s`, `4m12.172s`, `23h18m29.144s`.

use crate::error::{Error, Result};
use std::time::Duration;

/// Parse a Go duration string (`h`, `m`, `s`, `ms`, `us`/`µs`, `ns`; decimal fractions
/// allowed; a bare `0` is zero). A plain number is read as seconds, as `retry-after` is.
pub fn parse_go_duration(text: &str) -> Result<Duration> {
    let s = text.trim();
    let bad = |why: &str| {
        Error::invalid(format!("invalid duration {text:?}: {why} (expected e.g. \"20ms\", \"6m0s\", \"1h2m3.5s\")"))
    };
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if let Ok(secs) = s.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(bad("not a non-negative number"))
        };
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total = 0.0f64;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        if start == i {
            return Err(bad("expected a number"));
        }
        let value: f64 = s[start..i].parse().map_err(|_| bad("malformed number"))?;
        let unit_start = i;
        while i < bytes.len() && !(bytes[i].is_ascii_digit() || bytes[i] == b'.') {
            i += 1;
        }
        let scale = match &s[unit_start..i] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        total += value * scale;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad("out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn secs(s: &str) -> f64 {
        parse_go_duration(s).unwrap().as_secs_f64()
    }

    #[test]
    fn openai_examples() {
        assert!((secs("20ms") - 0.020).abs() < 1e-12);
        assert_eq!(secs("1s"), 1.0);
        assert_eq!(secs("6m0s"), 360.0);
        assert!((secs("4m12.172s") - 252.172).abs() < 1e-9);
        assert!((secs("23h18m29.144s") - 83909.144).abs() < 1e-6);
        assert!((secs("1h2m3.5s") - 3723.5).abs() < 1e-9);
        assert_eq!(secs("0"), 0.0);
        assert_eq!(secs("2.5"), 2.5);
        assert!((secs("150us") - 150e-6).abs() < 1e-15);
    }

    #[test]
    fn rejects_garbage() {
        for s in ["", "abc", "5x", "m5", "-1s", "1.2.3s", "NaN"] {
            assert!(parse_go_duration(s).is_err(), "{s:?} should be rejected");
        }
    }

    proptest! {
        #[test]
        fn round_trips_hms(h in 0u64..48, m in 0u64..60, ms in 0u64..60_000) {
            let text = format!("{h}h{m}m{}.{:03}s", ms / 1000, ms % 1000);
            let want = (h * 3600 + m * 60) as f64 + ms as f64 / 1000.0;
            prop_assert!((secs(&text) - want).abs() < 1e-6);
        }

        #[test]
        fn never_panics(s in "\\PC{0,16}") {
            let _ = parse_go_duration(&s);
        }
    }
}
