//! What a quota is: a name, a requests-per-minute and/or tokens-per-minute limit, and
//! the algorithm that enforces them. Validated once, at construction.

use crate::error::{Error, Result};
use crate::headers::{DimensionReport, RateLimitReport};
use crate::store::keys;

/// The largest per-minute limit accepted. Far above any real OpenAI tier; larger values are
/// almost certainly a unit mistake, and they would lose precision in Lua's doubles.
pub const MAX_PER_MINUTE: u64 = 1_000_000_000_000;

/// How a quota admits requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Refills continuously at limit/60 per second up to a burst capacity. Matches how OpenAI
    /// enforces per-minute limits in short slices.
    TokenBucket,
    /// At most `limit` in any 60-second window, counted exactly from a log of admissions.
    SlidingWindow,
}

impl Algorithm {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "token_bucket" => Ok(Algorithm::TokenBucket),
            "sliding_window" => Ok(Algorithm::SlidingWindow),
            other => {
                Err(Error::invalid(format!("unknown algorithm {other:?}: use \"token_bucket\" or \"sliding_window\"")))
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingWindow => "sliding_window",
        }
    }
}

/// One limited dimension of a quota (requests or tokens).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dimension {
    /// The limit per minute.
    pub per_minute: u64,
    /// The most that can be admitted at once: the bucket size (token bucket) or the
    /// per-minute limit itself (sliding window).
    pub capacity: u64,
}

impl Dimension {
    /// Refill rate, per second.
    #[inline]
    pub fn rate(&self) -> f64 {
        self.per_minute as f64 / 60.0
    }
}

/// The options a quota is built from; `QuotaSpec::new` validates them.
#[derive(Debug, Clone)]
pub struct QuotaOptions {
    pub requests_per_minute: Option<i64>,
    pub tokens_per_minute: Option<i64>,
    pub algorithm: Algorithm,
    /// Token bucket only: the burst as seconds of the per-minute rate (default 1 s, as
    /// OpenAI slices its limits).
    pub burst_seconds: f64,
    /// Token bucket only: explicit burst sizes, overriding `burst_seconds`.
    pub request_burst: Option<i64>,
    pub token_burst: Option<i64>,
}

impl Default for QuotaOptions {
    fn default() -> Self {
        QuotaOptions {
            requests_per_minute: None,
            tokens_per_minute: None,
            algorithm: Algorithm::TokenBucket,
            burst_seconds: 1.0,
            request_burst: None,
            token_burst: None,
        }
    }
}

/// A validated quota.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaSpec {
    pub name: String,
    pub algorithm: Algorithm,
    pub requests: Option<Dimension>,
    pub tokens: Option<Dimension>,
    /// The escaped hash tag shared by every Redis key of this quota.
    pub(crate) tag: String,
}

impl QuotaSpec {
    pub fn new(name: &str, opts: &QuotaOptions) -> Result<Self> {
        if name.is_empty() {
            return Err(Error::invalid("a quota needs a non-empty name"));
        }
        if name.len() > 512 {
            return Err(Error::invalid(format!("quota name is {} bytes long; keep it under 512", name.len())));
        }
        if opts.requests_per_minute.is_none() && opts.tokens_per_minute.is_none() {
            return Err(Error::invalid(format!(
                "quota {name:?} limits nothing: give requests_per_minute, tokens_per_minute or both"
            )));
        }
        let is_bucket = opts.algorithm == Algorithm::TokenBucket;
        if !is_bucket && (opts.request_burst.is_some() || opts.token_burst.is_some() || opts.burst_seconds != 1.0) {
            return Err(Error::invalid(format!(
                "quota {name:?}: burst options apply to the token_bucket algorithm only; a sliding window admits its whole limit per minute"
            )));
        }
        if !(opts.burst_seconds.is_finite() && opts.burst_seconds > 0.0 && opts.burst_seconds <= 60.0) {
            return Err(Error::invalid(format!(
                "quota {name:?}: burst_seconds must be in (0, 60], got {}",
                opts.burst_seconds
            )));
        }
        let dimension = |what: &str, limit: Option<i64>, burst: Option<i64>| -> Result<Option<Dimension>> {
            let Some(limit) = limit else {
                if burst.is_some() {
                    return Err(Error::invalid(format!(
                        "quota {name:?}: {what}_burst given without {what}s_per_minute"
                    )));
                }
                return Ok(None);
            };
            let per_minute = positive(name, &format!("{what}s_per_minute"), limit)?;
            let capacity = match (is_bucket, burst) {
                (false, _) => per_minute,
                (true, Some(burst)) => {
                    let burst = positive(name, &format!("{what}_burst"), burst)?;
                    if burst > per_minute {
                        return Err(Error::invalid(format!(
                            "quota {name:?}: {what}_burst {burst} exceeds {what}s_per_minute {per_minute}"
                        )));
                    }
                    burst
                }
                (true, None) => ((per_minute as f64 * opts.burst_seconds / 60.0).floor() as u64).max(1),
            };
            Ok(Some(Dimension { per_minute, capacity }))
        };
        Ok(QuotaSpec {
            name: name.to_owned(),
            algorithm: opts.algorithm,
            requests: dimension("request", opts.requests_per_minute, opts.request_burst)?,
            tokens: dimension("token", opts.tokens_per_minute, opts.token_burst)?,
            tag: keys::escape_tag(name),
        })
    }

    /// Whether an upstream report could lower this quota's view at all. The view never
    /// claims more than a dimension's capacity, so a report of at least that much room in
    /// every limited dimension changes nothing and needs no round trip.
    pub fn could_be_lowered_by(&self, report: &RateLimitReport) -> bool {
        let lowers = |dim: Option<Dimension>, reported: Option<DimensionReport>| match (dim, reported) {
            (Some(d), Some(r)) => r.remaining < d.capacity,
            _ => false,
        };
        lowers(self.requests, report.requests) || lowers(self.tokens, report.tokens)
    }

    /// Reject a cost that no amount of waiting could ever admit.
    pub fn check_cost(&self, requests: u64, tokens: u64) -> Result<()> {
        let check = |dim: Option<Dimension>, cost: u64, unit: &'static str, hint: &'static str| match dim {
            Some(d) if cost > d.capacity => Err(Error::CostExceedsCapacity {
                quota: self.name.clone(),
                unit,
                cost,
                capacity: d.capacity,
                hint: if self.algorithm == Algorithm::TokenBucket { hint } else { "the per-minute limit" },
            }),
            _ => Ok(()),
        };
        check(self.requests, requests, "requests", "request_burst (or burst_seconds)")?;
        check(self.tokens, tokens, "tokens", "token_burst (or burst_seconds)")
    }
}

/// Validate a caller-given cost (requests or tokens).
pub fn check_amount(what: &str, value: i64) -> Result<u64> {
    if value < 0 {
        return Err(Error::invalid(format!("{what} must be zero or more, got {value}")));
    }
    if value as u64 > MAX_PER_MINUTE {
        return Err(Error::invalid(format!("{what} = {value} is beyond any real quota (at most {MAX_PER_MINUTE})")));
    }
    Ok(value as u64)
}

fn positive(name: &str, what: &str, value: i64) -> Result<u64> {
    if value <= 0 {
        return Err(Error::invalid(format!("quota {name:?}: {what} must be a positive whole number, got {value}")));
    }
    if value as u64 > MAX_PER_MINUTE {
        return Err(Error::invalid(format!(
            "quota {name:?}: {what} = {value} is absurdly large (at most {MAX_PER_MINUTE}); check the unit"
        )));
    }
    Ok(value as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(rpm: Option<i64>, tpm: Option<i64>) -> QuotaOptions {
        QuotaOptions { requests_per_minute: rpm, tokens_per_minute: tpm, ..Default::default() }
    }

    #[test]
    fn default_burst_is_one_seconds_share() {
        let q = QuotaSpec::new("gpt", &opts(Some(60_000), Some(6_000_000))).unwrap();
        assert_eq!(q.requests.unwrap().capacity, 1_000);
        assert_eq!(q.tokens.unwrap().capacity, 100_000);
        let tiny = QuotaSpec::new("tiny", &opts(Some(3), None)).unwrap();
        assert_eq!(tiny.requests.unwrap().capacity, 1, "never below one request");
    }

    #[test]
    fn rejects_bad_limits_with_names() {
        for (rpm, tpm, needle) in [
            (Some(0), None, "requests_per_minute must be a positive"),
            (Some(-5), None, "requests_per_minute must be a positive"),
            (None, Some(i64::MAX), "absurdly large"),
            (None, None, "limits nothing"),
        ] {
            let err = QuotaSpec::new("q", &opts(rpm, tpm)).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        assert!(QuotaSpec::new("", &opts(Some(1), None)).is_err());
        let mut o = opts(Some(10), None);
        o.burst_seconds = f64::NAN;
        assert!(QuotaSpec::new("q", &o).unwrap_err().to_string().contains("burst_seconds"));
        let mut o = opts(Some(10), None);
        o.request_burst = Some(11);
        assert!(QuotaSpec::new("q", &o).unwrap_err().to_string().contains("exceeds"));
    }

    #[test]
    fn only_a_report_below_capacity_can_lower_the_view() {
        let q = QuotaSpec::new("q", &opts(Some(600), Some(60_000))).unwrap(); // capacity 10 / 1,000
        let report = |r: Option<u64>, t: Option<u64>| RateLimitReport {
            requests: r.map(|remaining| DimensionReport { limit: None, remaining, reset: 1.0 }),
            tokens: t.map(|remaining| DimensionReport { limit: None, remaining, reset: 1.0 }),
        };
        assert!(!q.could_be_lowered_by(&report(Some(10), Some(1_000))));
        assert!(!q.could_be_lowered_by(&report(None, None)));
        assert!(q.could_be_lowered_by(&report(Some(9), Some(50_000))));
        assert!(q.could_be_lowered_by(&report(None, Some(999))));
        let rpm_only = QuotaSpec::new("r", &opts(Some(600), None)).unwrap();
        assert!(!rpm_only.could_be_lowered_by(&report(None, Some(0))), "an unlimited dimension is never lowered");
        let mut sw = opts(Some(600), None);
        sw.algorithm = Algorithm::SlidingWindow;
        let sw = QuotaSpec::new("w", &sw).unwrap();
        assert!(sw.could_be_lowered_by(&report(Some(599), None)) && !sw.could_be_lowered_by(&report(Some(600), None)));
    }

    #[test]
    fn cost_beyond_capacity_is_an_error_not_a_wait() {
        let q = QuotaSpec::new("q", &opts(None, Some(60_000))).unwrap();
        assert!(q.check_cost(1, 1_000).is_ok());
        let err = q.check_cost(1, 1_001).unwrap_err().to_string();
        assert!(err.contains("token_burst") && err.contains("1001"), "{err}");
    }
}
