//! fleetgate's core: a fleet-wide rate limiter for OpenAI quotas, dollar budgets, circuit
//! breakers, request deduplication and priority lanes, over Redis (standalone or cluster)
//! or in process. Pure Rust; the Python binding lives in `rust/python`.
//!
//! One folder per concept: `limit`, `budget`, `breaker`, `dedup`; `store` is the one Redis
//! handle they share with the fleet.

pub mod batch_lines;
pub mod breaker;
pub mod budget;
pub mod dedup;
pub mod duration;
pub mod error;
pub mod headers;
pub mod lanes;
pub mod limit;
pub mod store;
pub mod tokens;

pub use budget::ledger::{Alert, BudgetReservation, BudgetStatus, Ledger, SpendLabels, SpendRow};
pub use budget::{BudgetSpec, Period};
pub use error::{Error, Result};
pub use limit::decision::{Decision, Reservation, Source};
pub use limit::limiter::{FailurePolicy, Limiter, LimiterOptions};
pub use limit::quota::{Algorithm, QuotaOptions, QuotaSpec};
pub use store::RedisStore;
