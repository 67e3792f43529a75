//! Quotas in Redis: the limiter's operations on the pod's one Redis handle, each decision
//! one EVALSHA on the node that owns the quota's slot, using Redis server time. On a
//! cluster, quotas on different slots are reserved in turn and given back when a later one
//! refuses.

use crate::error::{Error, Result};
use crate::headers::RateLimitReport;
use crate::limit::decision::{tighter, Decision, ReservedPart, Source, WindowMark};
use crate::limit::quota::{Algorithm, Dimension, QuotaSpec};
use crate::store::scripts::{ACQUIRE, SETTLE, SYNC};
use crate::store::{keys, RedisStore};
use redis::Value;
use std::sync::Arc;

impl RedisStore {
    /// Reserve on every quota or on none. On a cluster, quotas are grouped by slot; the
    /// groups are reserved in turn and those already reserved are given back when a later
    /// one refuses.
    pub async fn try_acquire(&self, quotas: &[Arc<QuotaSpec>], requests: u64, tokens: u64) -> Result<Decision> {
        let groups: Vec<Vec<&Arc<QuotaSpec>>> = if self.is_cluster() && quotas.len() > 1 {
            group_by_slot(quotas, |q| q)
        } else {
            vec![quotas.iter().collect()]
        };
        let mut parts: Vec<ReservedPart> = Vec::with_capacity(quotas.len());
        let (mut remaining_requests, mut remaining_tokens) = (None, None);
        for group in &groups {
            let outcome = self.acquire_group(group, requests, tokens).await;
            match outcome {
                Ok(GroupOutcome::Admitted { remaining_requests: r, remaining_tokens: t, marks }) => {
                    remaining_requests = tighter(remaining_requests, r);
                    remaining_tokens = tighter(remaining_tokens, t);
                    parts.extend(group.iter().zip(marks).map(|(q, mark)| ReservedPart { quota: Arc::clone(q), mark }));
                }
                Ok(GroupOutcome::Refused { retry_after, index }) => {
                    self.give_back(&parts, requests, tokens).await?;
                    return Ok(Decision::denied(retry_after, Arc::clone(group[index]), Source::Redis));
                }
                Err(e) => {
                    // Give back what earlier groups hold; if that fails too, they refill by
                    // themselves within a burst period. The original error is what matters.
                    let _ = self.give_back(&parts, requests, tokens).await;
                    return Err(e);
                }
            }
        }
        Ok(Decision::admitted(parts, remaining_requests, remaining_tokens, requests, tokens, Source::Redis))
    }

    async fn acquire_group(&self, group: &[&Arc<QuotaSpec>], requests: u64, tokens: u64) -> Result<GroupOutcome> {
        let (keys, args) = acquire_call(group, requests, tokens);
        let reply = self.run(&ACQUIRE, &keys, &args).await?;
        parse_acquire(reply, group.len())
    }

    /// Reserve a pod's lease on one token-bucket quota, which the pod admits from until
    /// `shelf` after the grant: the bucket counts it as room held and not yet sent, and
    /// refills only up to its capacity less what such leases hold.
    pub async fn try_lease(&self, quota: &Arc<QuotaSpec>, requests: u64, tokens: u64, shelf: f64) -> Result<Decision> {
        let (keys, mut args) = acquire_call(&[quota], requests, tokens);
        args.push(shelf.to_string());
        Ok(parse_acquire(self.run(&ACQUIRE, &keys, &args).await?, 1)?.decision(&[quota], requests, tokens))
    }

    /// `try_acquire` on the caller's thread, blocking, for a standalone Redis (one script
    /// call decides all quotas there); None on a cluster, where the async path groups
    /// quotas by slot, and while every blocking connection is busy.
    pub fn try_acquire_blocking(
        &self,
        quotas: &[Arc<QuotaSpec>],
        requests: u64,
        tokens: u64,
    ) -> Option<Result<Decision>> {
        if self.is_cluster() {
            return None;
        }
        let group: Vec<&Arc<QuotaSpec>> = quotas.iter().collect();
        let (keys, args) = acquire_call(&group, requests, tokens);
        let reply = self.run_blocking(&ACQUIRE, &keys, &args)?;
        let outcome = reply.and_then(|reply| parse_acquire(reply, group.len()));
        Some(outcome.map(|outcome| outcome.decision(&group, requests, tokens)))
    }

    async fn give_back(&self, parts: &[ReservedPart], requests: u64, tokens: u64) -> Result<()> {
        if parts.is_empty() {
            return Ok(());
        }
        self.adjust(parts, requests as i64, tokens as i64).await
    }

    /// Give back (positive) or charge (negative) amounts on every quota of a reservation.
    pub async fn adjust(&self, parts: &[ReservedPart], requests: i64, tokens: i64) -> Result<()> {
        let groups: Vec<Vec<&ReservedPart>> = if self.is_cluster() && parts.len() > 1 {
            group_by_slot(parts, |p| &p.quota)
        } else {
            vec![parts.iter().collect()]
        };
        for group in groups {
            let mut keys = Vec::with_capacity(group.len() * 2);
            let mut args = Vec::with_capacity(3 + group.len() * 6);
            args.extend([requests.to_string(), tokens.to_string(), group.len().to_string()]);
            for part in group {
                push_keys(&mut keys, &part.quota);
                push_limits(&mut args, &part.quota);
                args.push(match &part.mark {
                    WindowMark::Redis(member) => member.clone(),
                    _ => String::new(),
                });
            }
            self.run(&SETTLE, &keys, &args).await?;
        }
        Ok(())
    }

    /// Lower a quota's shared view to what upstream reports.
    pub async fn sync(&self, quota: &QuotaSpec, report: &RateLimitReport) -> Result<bool> {
        let mut keys = Vec::with_capacity(2);
        push_keys(&mut keys, quota);
        let mut args = Vec::with_capacity(9);
        push_limits(&mut args, quota);
        for dim in [report.requests, report.tokens] {
            match dim {
                Some(d) => args.extend([d.remaining.to_string(), d.reset.to_string()]),
                None => args.extend(["-1".to_owned(), "0".to_owned()]),
            }
        }
        let reply = self.run(&SYNC, &keys, &args).await?;
        Ok(matches!(reply, Value::Int(1)))
    }
}

/// The keys and arguments of one acquire script call deciding `group`.
fn acquire_call(group: &[&Arc<QuotaSpec>], requests: u64, tokens: u64) -> (Vec<String>, Vec<String>) {
    let mut keys = Vec::with_capacity(group.len() * 2);
    let mut args = Vec::with_capacity(3 + group.len() * 5);
    args.extend([requests.to_string(), tokens.to_string(), group.len().to_string()]);
    for quota in group {
        push_keys(&mut keys, quota);
        push_limits(&mut args, quota);
    }
    (keys, args)
}

enum GroupOutcome {
    Admitted { remaining_requests: Option<f64>, remaining_tokens: Option<f64>, marks: Vec<WindowMark> },
    Refused { retry_after: f64, index: usize },
}

impl GroupOutcome {
    /// The decision on `group` (all of a call's quotas) this outcome stands for.
    fn decision(self, group: &[&Arc<QuotaSpec>], requests: u64, tokens: u64) -> Decision {
        match self {
            GroupOutcome::Admitted { remaining_requests, remaining_tokens, marks } => {
                let parts = group.iter().zip(marks).map(|(q, mark)| ReservedPart { quota: Arc::clone(q), mark });
                let (r, t) = (tighter(None, remaining_requests), tighter(None, remaining_tokens));
                Decision::admitted(parts.collect(), r, t, requests, tokens, Source::Redis)
            }
            GroupOutcome::Refused { retry_after, index } => {
                Decision::denied(retry_after, Arc::clone(group[index]), Source::Redis)
            }
        }
    }
}

fn algorithm_arg(quota: &QuotaSpec) -> &'static str {
    match quota.algorithm {
        Algorithm::TokenBucket => "tb",
        Algorithm::SlidingWindow => "sw",
    }
}

fn push_keys(keys: &mut Vec<String>, quota: &QuotaSpec) {
    match quota.algorithm {
        Algorithm::TokenBucket => keys.push(keys::bucket(&quota.tag)),
        Algorithm::SlidingWindow => {
            keys.push(keys::window_sums(&quota.tag));
            keys.push(keys::window_log(&quota.tag));
        }
    }
}

fn push_limits(args: &mut Vec<String>, quota: &QuotaSpec) {
    let dim = |d: Option<Dimension>| d.map_or((0, 0), |d| (d.per_minute, d.capacity));
    let (rpm, rcap) = dim(quota.requests);
    let (tpm, tcap) = dim(quota.tokens);
    args.extend([
        algorithm_arg(quota).to_owned(),
        rpm.to_string(),
        rcap.to_string(),
        tpm.to_string(),
        tcap.to_string(),
    ]);
}

/// Split items into groups whose quotas share a cluster slot, keeping their order.
fn group_by_slot<T>(items: &[T], quota: impl Fn(&T) -> &QuotaSpec) -> Vec<Vec<&T>> {
    let mut groups: Vec<(u16, Vec<&T>)> = Vec::new();
    for item in items {
        let slot = keys::slot(&keys::bucket(&quota(item).tag));
        match groups.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, g)) => g.push(item),
            None => groups.push((slot, vec![item])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

fn parse_acquire(reply: Value, n: usize) -> Result<GroupOutcome> {
    let malformed = || {
        Error::StoreUnavailable(format!(
            "acquire script: unexpected reply {:.200} (is another fleetgate version sharing this Redis?)",
            format!("{reply:?}")
        ))
    };
    let Value::Array(items) = &reply else { return Err(malformed()) };
    let int = |v: &Value| match v {
        Value::Int(i) => Ok(*i),
        _ => Err(malformed()),
    };
    match items.first().map(int).transpose()? {
        Some(1) if items.len() == 3 + n => {
            let remaining = |v: i64| (v >= 0).then_some(v as f64);
            let marks = items[3..]
                .iter()
                .map(|v| match v {
                    Value::BulkString(b) if b.is_empty() => Ok(WindowMark::None),
                    Value::BulkString(b) => Ok(WindowMark::Redis(String::from_utf8_lossy(b).into_owned())),
                    _ => Err(malformed()),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(GroupOutcome::Admitted {
                remaining_requests: remaining(int(&items[1])?),
                remaining_tokens: remaining(int(&items[2])?),
                marks,
            })
        }
        Some(0) if items.len() == 3 => {
            let index = int(&items[2])? as usize;
            if index == 0 || index > n {
                return Err(malformed());
            }
            Ok(GroupOutcome::Refused { retry_after: int(&items[1])? as f64 / 1e6, index: index - 1 })
        }
        _ => Err(malformed()),
    }
}
