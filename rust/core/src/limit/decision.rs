//! What a limiter answers: a decision, and for an admission the reservation to settle.

use crate::limit::quota::QuotaSpec;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Which store made a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The embedded, in-process store.
    Local,
    /// The shared Redis store.
    Redis,
    /// This pod's lease on the shared store (see `lease`).
    Lease,
    /// The fail-open fallback: this pod's share of each quota, used while Redis is unreachable.
    Fallback,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Local => "local",
            Source::Redis => "redis",
            Source::Lease => "lease",
            Source::Fallback => "fallback",
        }
    }
}

/// How an admission was recorded in a sliding window, so that settling finds it again.
#[derive(Debug, Clone, PartialEq)]
pub enum WindowMark {
    None,
    Local(u64),
    Redis(String),
}

/// One quota's part of a reservation.
#[derive(Debug, Clone)]
pub struct ReservedPart {
    pub quota: Arc<QuotaSpec>,
    pub mark: WindowMark,
}

/// Proof of an admission: what was reserved on which quotas, to be settled once.
#[derive(Debug)]
pub struct Reservation {
    pub parts: Vec<ReservedPart>,
    pub requests: u64,
    pub tokens: u64,
    pub source: Source,
    settled: AtomicBool,
}

impl Reservation {
    pub fn new(parts: Vec<ReservedPart>, requests: u64, tokens: u64, source: Source) -> Self {
        Reservation { parts, requests, tokens, source, settled: AtomicBool::new(false) }
    }

    /// Mark settled; false if it already was (settling twice would refund twice).
    pub fn claim_settlement(&self) -> bool {
        !self.settled.swap(true, Ordering::AcqRel)
    }

    pub fn is_settled(&self) -> bool {
        self.settled.load(Ordering::Acquire)
    }
}

/// A limiter's answer.
#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    /// Zero when allowed; otherwise how long until the request could be admitted.
    pub retry_after: Duration,
    /// Room left after this decision on the tightest quota, per dimension (`None` when no
    /// quota given limits that dimension).
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// The quota that refused (when refused).
    pub limited_by: Option<Arc<QuotaSpec>>,
    pub reservation: Option<Arc<Reservation>>,
    pub source: Source,
}

impl Decision {
    /// An admission holding `parts` (`requests` and `tokens` on each), made by `source`.
    pub(crate) fn admitted(
        parts: Vec<ReservedPart>,
        remaining_requests: Option<u64>,
        remaining_tokens: Option<u64>,
        requests: u64,
        tokens: u64,
        source: Source,
    ) -> Self {
        Decision {
            allowed: true,
            retry_after: Duration::ZERO,
            remaining_requests,
            remaining_tokens,
            limited_by: None,
            reservation: Some(Arc::new(Reservation::new(parts, requests, tokens, source))),
            source,
        }
    }

    pub(crate) fn denied(retry_after: f64, limited_by: Arc<QuotaSpec>, source: Source) -> Self {
        Decision {
            allowed: false,
            retry_after: Duration::from_secs_f64(retry_after.max(0.0)),
            remaining_requests: None,
            remaining_tokens: None,
            limited_by: Some(limited_by),
            reservation: None,
            source,
        }
    }
}

/// Fold per-quota remaining room into the tightest one.
#[inline]
pub(crate) fn tighter(current: Option<u64>, next: Option<f64>) -> Option<u64> {
    match (current, next) {
        (c, None) => c,
        (None, Some(n)) => Some(n.max(0.0).floor() as u64),
        (Some(c), Some(n)) => Some(c.min(n.max(0.0).floor() as u64)),
    }
}
