//! The pod's one Redis handle, handed to every component that shares state with the
//! fleet (limiter, leases, breakers, dedup, budgets): the connection, the Lua scripts it
//! runs and the names of the keys they touch. It decides nothing: each component owns what
//! its keys hold.

pub mod keys;
mod redis;
pub mod scripts;

pub(crate) use self::redis::new_pod_token;
pub use self::redis::{parse_url, redact, RedisStore, RedisTimeouts, Topology};
