//! What the ledger and its two backends (in process, in Redis) say to each other: the part
//! of a reservation held on one budget, an alert fired, a refusal, and how long records
//! are kept. Kept apart from the ledger so that the backends do not depend on it.

use crate::budget::{dollars, BudgetSpec, Window};
use crate::error::Error;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Spend records are kept this many days (as on Redis).
pub(crate) const SPEND_DAYS_KEPT: i64 = 400;

/// The refusal of `budget` in `window`: it holds `holds` nano-dollars (spent and reserved)
/// and cannot take `nanos` more.
pub(crate) fn exceeded(budget: &BudgetSpec, window: &Window, holds: i64, nanos: i64) -> Error {
    Error::BudgetExceeded {
        budget: budget.name.clone(),
        period: window.id.clone(),
        resets_at: window.resets_at,
        limit: budget.limit(),
        spent: dollars(holds),
        requested: dollars(nanos),
    }
}

/// A budget and its period that a reservation applies to.
pub(crate) type InWindow = (Arc<BudgetSpec>, Arc<Window>);

/// A budget's settled spend reached an alert threshold for the first time in its period,
/// fleet-wide.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    pub budget: String,
    /// The share of the limit reached (0.9 for 90%).
    pub threshold: f64,
    /// Dollars spent in the period when it fired.
    pub spent: f64,
    pub limit: f64,
    /// The period's id (`2026-03-29` or `2026-03`).
    pub period: String,
}

impl Alert {
    pub(crate) fn new(budget: &BudgetSpec, window: &Window, percent: u16, spent_nanos: i64) -> Self {
        Alert {
            budget: budget.name.clone(),
            threshold: f64::from(percent) / 100.0,
            spent: dollars(spent_nanos),
            limit: budget.limit(),
            period: window.id.clone(),
        }
    }
}

/// One budget's part of a reservation.
#[derive(Debug)]
pub struct HeldPart {
    pub budget: Arc<BudgetSpec>,
    /// The period the amount is held in (and the real cost is added to).
    pub window: Arc<Window>,
    pub(crate) hold: Hold,
}

/// How a part is found again when it ends.
#[derive(Debug)]
pub(crate) enum Hold {
    Local {
        expires: Instant,
        id: u64,
    },
    /// The member of the period's sorted set of live reservations.
    Redis {
        member: String,
    },
}

/// Seconds a budget period's keys live: until a day after the period ends.
pub(crate) fn key_ttl(window: &Window, now_unix: f64, lease: Duration) -> u64 {
    let until_end = (window.resets_at - now_unix).max(0.0) + 86_400.0;
    (until_end.ceil() as u64).max(lease.as_secs() + 60)
}
