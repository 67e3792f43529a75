//! OpenAI's `x-ratelimit-*` response headers, read into a report the limiter can apply.

use crate::duration::parse_go_duration;
use crate::error::{Error, Result};

/// What upstream says about one dimension of its limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DimensionReport {
    pub limit: Option<u64>,
    pub remaining: u64,
    /// Seconds until the upstream bucket is full again.
    pub reset: f64,
}

/// The requests and tokens dimensions of one response's headers.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RateLimitReport {
    pub requests: Option<DimensionReport>,
    pub tokens: Option<DimensionReport>,
}

impl RateLimitReport {
    /// Read `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` (names compared without
    /// regard to case). A dimension is reported only when its `remaining` header is present;
    /// a malformed value is an error naming the header.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut raw: [Option<&str>; 6] = [None; 6];
        const NAMES: [&str; 6] = [
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ];
        for (name, value) in headers {
            if let Some(i) = NAMES.iter().position(|n| n.eq_ignore_ascii_case(name)) {
                raw[i] = Some(value);
            }
        }
        let count = |i: usize| -> Result<Option<u64>> {
            raw[i]
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .map_err(|_| Error::invalid(format!("header {}: expected a whole number, got {v:?}", NAMES[i])))
                })
                .transpose()
        };
        let dimension = |base: usize| -> Result<Option<DimensionReport>> {
            let Some(remaining) = count(base + 1)? else { return Ok(None) };
            let reset = match raw[base + 2] {
                Some(v) => parse_go_duration(v)
                    .map_err(|e| Error::invalid(format!("header {}: {e}", NAMES[base + 2])))?
                    .as_secs_f64(),
                None => 0.0,
            };
            Ok(Some(DimensionReport { limit: count(base)?, remaining, reset }))
        };
        Ok(RateLimitReport { requests: dimension(0)?, tokens: dimension(3)? })
    }

    pub fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_openai_headers() {
        let h = [
            ("X-RateLimit-Limit-Requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-limit-tokens", "30000"),
            ("x-ratelimit-remaining-tokens", "29000"),
            ("x-ratelimit-reset-tokens", "2s"),
            ("x-request-id", "req_123"),
        ];
        let r = RateLimitReport::from_headers(h).unwrap();
        assert_eq!(r.requests, Some(DimensionReport { limit: Some(500), remaining: 499, reset: 0.12 }));
        assert_eq!(r.tokens.unwrap().remaining, 29000);
        assert_eq!(r.tokens.unwrap().reset, 2.0);
    }

    #[test]
    fn names_the_bad_header() {
        let err = RateLimitReport::from_headers([("x-ratelimit-remaining-tokens", "lots")]).unwrap_err();
        assert!(err.to_string().contains("x-ratelimit-remaining-tokens"));
        let err =
            RateLimitReport::from_headers([("x-ratelimit-remaining-tokens", "1"), ("x-ratelimit-reset-tokens", "5y")])
                .unwrap_err();
        assert!(err.to_string().contains("x-ratelimit-reset-tokens"));
        assert!(RateLimitReport::from_headers([("content-type", "json")]).unwrap().is_empty());
    }
}
