//! Rate limiting for OpenAI quotas: what a quota is (`quota`), the admission algorithms
//! (`state`), the embedded store (`local`), quotas in Redis (`redis_quotas`) with per-pod
//! leases (`lease`), and the limiter over them with its failure policy (`limiter`), which
//! answers with a `decision`.

pub mod decision;
mod lease;
pub mod limiter;
pub mod local;
pub mod quota;
mod redis_quotas;
pub mod state;
