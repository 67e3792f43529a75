//! fleetgate's core: a fleet-wide rate limiter for OpenAI quotas and a dollar-budget ledger,
//! over Redis (standalone or cluster) or in process. Pure Rust; the Python binding lives in
//! `rust/python`.

pub mod batch_lines;
pub mod breaker;
pub mod breaker_fleet;
pub mod budget;
pub mod decision;
pub mod dedup;
pub mod dedup_fleet;
pub mod duration;
pub mod error;
pub mod headers;
pub mod keys;
pub mod lanes;
mod lease;
pub mod ledger;
mod ledger_local;
mod ledger_redis;
pub mod limiter;
pub mod local;
pub mod quota;
pub mod redis_store;
pub mod scripts;
pub mod state;
pub mod tokens;

pub use budget::{BudgetSpec, Period};
pub use decision::{Decision, Reservation, Source};
pub use error::{Error, Result};
pub use ledger::{Alert, BudgetReservation, BudgetStatus, Ledger, SpendLabels, SpendRow};
pub use limiter::{FailurePolicy, Limiter, LimiterOptions};
pub use quota::{Algorithm, QuotaOptions, QuotaSpec};
