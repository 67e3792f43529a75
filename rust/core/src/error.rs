//! The one error type of the core. The Python binding maps each variant to an
//! exception class in exactly one place (`rust/python/src/error.rs`).

use chrono::DateTime;
use std::time::Duration;

/// Everything that can go wrong in the core, each variant saying what and how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A quota, a cost or an option that can never be valid.
    #[error("{0}")]
    InvalidArgument(String),

    /// A request costs more than a quota's bucket can ever hold, so waiting would never help.
    #[error(
        "quota {quota:?}: a cost of {cost} {unit} can never be admitted, the bucket holds at most {capacity}; \
         raise {hint} or lower the request's cost"
    )]
    CostExceedsCapacity { quota: String, unit: &'static str, cost: u64, capacity: u64, hint: &'static str },

    /// The store URL cannot be used.
    #[error("invalid store URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// The shared store could not be reached or answered with an error, and the failure
    /// policy is fail-closed (or the operation has no local fallback). The message advises
    /// no policy: under fail-open it shows up only where no local fallback exists.
    #[error("the Redis store is unavailable ({0}); check that Redis is reachable")]
    StoreUnavailable(String),

    /// `acquire` gave up: the quota had no room before the deadline.
    #[error(
        "rate limited on quota {quota:?}: no room before the deadline; room is expected in {:.3}s: retry then, \
         allow the call a longer deadline, or raise the quota",
        retry_after.as_secs_f64()
    )]
    RateLimited { quota: String, retry_after: Duration },

    /// A circuit breaker refused the call: upstream is failing, its probes are out, or it
    /// is isolated until someone resets it.
    #[error("circuit {breaker:?} is {reason}: {}", match retry_after {
        Some(d) => format!("upstream is failing; try again in {:.3}s or serve a fallback", d.as_secs_f64()),
        None => "isolated until reset (insufficient_quota, or by hand); add credit, then reset it".to_owned(),
    })]
    CircuitOpen { breaker: String, reason: &'static str, retry_after: Option<Duration> },

    /// A dollar budget cannot hold a call's worst-case cost in its current period.
    /// `spent` counts what is spent and what live reservations hold. A refusal never fires
    /// an alert: reservations are worst cases, so what they hold says little of the spend.
    #[error(
        "budget {budget:?} has no room for a call that may cost ${}: it holds ${} of its ${} for {period} \
         (spent and reserved), and resets at {}; raise its limit, wait for the next period, or lower the call's \
         max output tokens",
        show_dollars(*requested),
        show_dollars(*spent),
        show_dollars(*limit),
        show_instant(*resets_at)
    )]
    BudgetExceeded { budget: String, period: String, resets_at: f64, limit: f64, spent: f64, requested: f64 },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}

/// Dollars for people: cents at least, and as many of six decimals as matter (`2.00`,
/// `1.50`, `0.000123`).
fn show_dollars(amount: f64) -> String {
    let text = format!("{amount:.6}");
    let trimmed = text.trim_end_matches('0');
    match trimmed.split_once('.') {
        Some((_, decimals)) if decimals.len() >= 2 => trimmed.to_owned(),
        _ => format!("{amount:.2}"),
    }
}

/// An instant for people: `2026-03-30T00:00:00Z`.
fn show_instant(unix: f64) -> String {
    DateTime::from_timestamp(unix.floor() as i64, 0)
        .map_or_else(|| format!("{unix} (Unix seconds)"), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_show_what_matters() {
        assert_eq!(show_dollars(2.0), "2.00");
        assert_eq!(show_dollars(1.5), "1.50");
        assert_eq!(show_dollars(0.000123), "0.000123");
        assert_eq!(show_dollars(12.345), "12.345");
    }
}
