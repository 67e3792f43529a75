//! Quota leases: with a shared store, a pod takes room on a busy token-bucket quota in
//! small leases, and admits requests from its lease in process, with no round trip.
//!
//! A lease is an ordinary reservation on the shared bucket (made by the same script as
//! any admission), so the fleet never admits more than the bucket holds. What it costs is
//! room held by one pod for a moment; that is kept small by three rules:
//!
//! - a lease covers about `seconds` of this pod's own demand on the quota, at most a tenth
//!   of the quota's burst, and at most a quarter of the room the store last reported;
//!   below two requests' worth no lease is taken and requests go to the store one by one,
//!   exactly as without leases (so a quota near its limit is shared request by request);
//! - a lease left unused for `idle` is given back, and a quota upstream reports as fuller
//!   than the fleet's view (or refuses with a 429) forfeits its lease at once;
//! - what a lease still holds `2 × seconds` after it was granted (its shelf), or once the
//!   store reports less than half the burst left (the quota is near its limit), is given
//!   back rather than admitted from;
//! - the store counts a grant as room held and not yet sent for two shelves, and refills
//!   the bucket only up to its burst less that room (`lua/acquire-n.lua`): room the store
//!   counted at the grant reaches upstream later, when upstream's bucket may be full again,
//!   so without this the fleet would send upstream its burst and the leases on top;
//! - tokens a request did not use go back to the lease they came from; a request that
//!   used more than its estimate is charged to the lease, and what the lease cannot pay
//!   to the store at once.
//!
//! A pod that dies with a lease loses that room until the bucket refills it: about
//! `seconds` of its own traffic.

use crate::limit::decision::{tighter, Decision, Reservation, ReservedPart, Source, WindowMark};
use crate::limit::quota::{Algorithm, Dimension, QuotaSpec};
use crate::store::RedisStore;
use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;

/// The largest share of a dimension's burst one lease may hold.
const BURST_SHARE: f64 = 0.1;
/// A lease takes at most this share of the room the store last reported.
const ROOM_SHARE: f64 = 0.25;
/// Below this share of a dimension's burst left in the store, the quota is near its limit:
/// no lease is taken, and what one holds is given back.
const NEAR_LIMIT: f64 = 0.5;
/// The smallest lease worth a round trip, in requests (or requests' worth of tokens).
const MIN_REQUESTS: f64 = 2.0;
/// After a failed refill, how long before the store is asked again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// One quota's lease on this pod.
#[derive(Debug)]
struct Held {
    quota: Arc<QuotaSpec>,
    /// Room left to admit from (never below zero: what a settlement charges beyond it goes
    /// to the store at once).
    requests: i64,
    tokens: i64,
    /// Demand on this pod since `since`, and its rate per second, smoothed.
    taken_requests: u64,
    taken_tokens: u64,
    since: Instant,
    rate_requests: f64,
    rate_tokens: f64,
    /// The room the store last reported (None: not known yet).
    room_requests: Option<u64>,
    room_tokens: Option<u64>,
    refilling: bool,
    /// How many times the lease was forfeited: a grant asked for before the last forfeit
    /// is forfeited too when it comes.
    forfeits: u64,
    /// When a refill may be tried again after the store failed.
    retry_at: Option<Instant>,
    last_used: Instant,
    /// When the store last granted room to the lease.
    granted_at: Instant,
}

impl Held {
    fn new(quota: &Arc<QuotaSpec>, now: Instant) -> Self {
        Held {
            quota: Arc::clone(quota),
            requests: 0,
            tokens: 0,
            taken_requests: 0,
            taken_tokens: 0,
            since: now,
            rate_requests: 0.0,
            rate_tokens: 0.0,
            room_requests: None,
            room_tokens: None,
            refilling: false,
            forfeits: 0,
            retry_at: None,
            last_used: now,
            granted_at: now,
        }
    }

    fn covers(&self, requests: u64, tokens: u64) -> bool {
        (self.quota.requests.is_none() || self.requests >= requests as i64)
            && (self.quota.tokens.is_none() || self.tokens >= tokens as i64)
    }

    fn holds_anything(&self) -> bool {
        self.requests != 0 || self.tokens != 0
    }

    /// Whether the lease holds more than the room the store last reported: the quota is
    /// near its limit, where requests are decided one by one in the store.
    fn outgrew_room(&self) -> bool {
        near_limit(self.quota.requests, self.room_requests) || near_limit(self.quota.tokens, self.room_tokens)
    }

    /// The lease to ask for now, `(requests, tokens)`; None when no lease is worth it.
    fn wanted(&self, seconds: f64) -> Option<(u64, u64)> {
        let per_request = if self.taken_requests > 0 {
            self.taken_tokens as f64 / self.taken_requests as f64
        } else {
            self.rate_tokens / self.rate_requests.max(1.0)
        };
        let demand = (self.rate_requests * seconds).ceil().max(MIN_REQUESTS);
        let requests = bounded(demand, self.quota.requests, self.room_requests, 1.0)?;
        // Enough tokens for the requests leased (with requests unlimited: those wanted).
        let covered = if self.quota.requests.is_some() { requests } else { demand };
        let tokens = (self.rate_tokens * seconds).max(covered * per_request).ceil();
        // Requests that carry no tokens need none leased.
        let tokens = if tokens == 0.0 {
            0.0
        } else {
            bounded(tokens, self.quota.tokens, self.room_tokens, per_request.max(1.0))?
        };
        Some((requests as u64, tokens as u64))
    }

    /// Start a refill when what is left runs low and none is under way (nor the store
    /// failing): the forfeit count it is asked under, or None.
    fn start_refill(&mut self, now: Instant, seconds: f64) -> Option<u64> {
        if self.refilling || self.retry_at.is_some_and(|at| now < at) || !self.running_low(self.wanted(seconds)?) {
            return None;
        }
        self.refilling = true;
        Some(self.forfeits)
    }

    /// Whether what is left is under half of what a lease would bring.
    fn running_low(&self, wanted: (u64, u64)) -> bool {
        (self.quota.requests.is_some() && self.requests < (wanted.0 / 2) as i64)
            || (self.quota.tokens.is_some() && self.tokens < (wanted.1 / 2) as i64)
    }

    /// Fold the demand since the last refill into the rate.
    fn measure(&mut self, now: Instant) {
        let elapsed = now.duration_since(self.since).as_secs_f64().max(0.01);
        let (r, t) = (self.taken_requests as f64 / elapsed, self.taken_tokens as f64 / elapsed);
        if self.rate_requests == 0.0 && self.rate_tokens == 0.0 {
            (self.rate_requests, self.rate_tokens) = (r, t);
        } else {
            self.rate_requests = 0.5 * self.rate_requests + 0.5 * r;
            self.rate_tokens = 0.5 * self.rate_tokens + 0.5 * t;
        }
        (self.taken_requests, self.taken_tokens, self.since) = (0, 0, now);
    }
}

/// `amount` of one dimension as a lease may hold it: within the burst share and the room
/// share; None when that leaves less than `MIN_REQUESTS` of `unit`. An unlimited
/// dimension leases nothing (0).
/// Whether the store last reported less than [`NEAR_LIMIT`] of the dimension's burst left.
fn near_limit(dimension: Option<Dimension>, room: Option<u64>) -> bool {
    matches!((dimension, room), (Some(d), Some(r)) if (r as f64) < d.capacity as f64 * NEAR_LIMIT)
}

fn bounded(amount: f64, dimension: Option<Dimension>, room: Option<u64>, unit: f64) -> Option<f64> {
    let Some(d) = dimension else { return Some(0.0) };
    if near_limit(dimension, room) {
        return None;
    }
    let room = room.map_or(MIN_REQUESTS * unit, |r| r as f64 * ROOM_SHARE);
    let amount = amount.min(d.capacity as f64 * BURST_SHARE).min(room).floor();
    (amount >= MIN_REQUESTS * unit).then_some(amount)
}

/// This pod's leases on a shared store's token-bucket quotas.
pub(crate) struct Leases {
    store: Arc<RedisStore>,
    runtime: Handle,
    seconds: f64,
    idle: Duration,
    /// How long after its grant a lease may be admitted from.
    shelf: Duration,
    held: Mutex<FxHashMap<String, Held>>,
    errors: AtomicU64,
    granted: AtomicU64,
    served: AtomicU64,
}

impl Leases {
    /// Leases covering `seconds` of demand, refilled and given back on `runtime`.
    pub(crate) fn start(store: Arc<RedisStore>, runtime: Handle, seconds: f64) -> Arc<Self> {
        let idle = Duration::from_secs_f64((seconds * 10.0).max(1.0));
        let leases = Arc::new(Leases {
            store,
            runtime: runtime.clone(),
            seconds,
            idle,
            shelf: Duration::from_secs_f64(seconds * 2.0),
            held: Mutex::default(),
            errors: AtomicU64::new(0),
            granted: AtomicU64::new(0),
            served: AtomicU64::new(0),
        });
        runtime.spawn(sweep_while_alive(Arc::downgrade(&leases), idle / 2));
        leases
    }

    fn lock(&self) -> MutexGuard<'_, FxHashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admit from the leases of every quota, or from none (None: go to the store). Either
    /// way the demand is counted, and quotas running low are refilled in the background.
    /// A call on a sliding window is never leased: it always goes to the store.
    pub(crate) fn take(self: &Arc<Self>, quotas: &[Arc<QuotaSpec>], requests: u64, tokens: u64) -> Option<Decision> {
        if quotas.iter().any(|q| q.algorithm != Algorithm::TokenBucket) {
            return None;
        }
        let now = Instant::now();
        let mut held = self.lock();
        let mut covered = true;
        let mut stale = Vec::new();
        for quota in quotas {
            if !held.contains_key(quota.name.as_str()) {
                held.insert(quota.name.clone(), Held::new(quota, now));
            }
            let h = held.get_mut(quota.name.as_str()).expect("inserted above");
            if h.holds_anything() && (now.duration_since(h.granted_at) > self.shelf || h.outgrew_room()) {
                stale.push((Arc::clone(&h.quota), h.requests, h.tokens));
                (h.requests, h.tokens) = (0, 0);
            }
            h.taken_requests += requests;
            h.taken_tokens += tokens;
            covered &= h.covers(requests, tokens);
        }
        let decision = covered.then(|| {
            let (mut room_r, mut room_t) = (None, None);
            let mut parts = Vec::with_capacity(quotas.len());
            for quota in quotas {
                let h = held.get_mut(quota.name.as_str()).expect("counted above");
                h.requests -= requests as i64;
                h.tokens -= tokens as i64;
                h.last_used = now;
                room_r = tighter(room_r, h.room_requests.map(|r| r as f64));
                room_t = tighter(room_t, h.room_tokens.map(|t| t as f64));
                parts.push(ReservedPart { quota: Arc::clone(quota), mark: WindowMark::None });
            }
            Decision::admitted(parts, room_r, room_t, requests, tokens, Source::Lease)
        });
        let refill: Vec<(Arc<QuotaSpec>, u64)> = quotas
            .iter()
            .filter_map(|q| held.get_mut(q.name.as_str())?.start_refill(now, self.seconds).map(|g| (Arc::clone(q), g)))
            .collect();
        drop(held);
        if decision.is_some() {
            self.served.fetch_add(1, Ordering::Relaxed);
        }
        if !stale.is_empty() {
            let leases = Arc::clone(self);
            self.runtime.spawn(async move { leases.give_back(stale).await });
        }
        for (quota, forfeits) in refill {
            self.runtime.spawn(Arc::clone(self).refill(quota, forfeits));
        }
        decision
    }

    /// Remember the room a store decision reported (the tightest of its quotas, which is
    /// the most any of them may lease from).
    pub(crate) fn noted(&self, quotas: &[Arc<QuotaSpec>], decision: &Decision) {
        let mut held = self.lock();
        for quota in quotas {
            if let Some(h) = held.get_mut(quota.name.as_str()) {
                if decision.allowed {
                    h.room_requests = decision.remaining_requests;
                    h.room_tokens = decision.remaining_tokens;
                } else if decision.limited_by.as_ref().is_some_and(|q| q.name == quota.name) {
                    (h.room_requests, h.room_tokens) = (Some(0), Some(0));
                }
            }
        }
    }

    /// Give a lease reservation's unused tokens back to the leases it came from, or charge
    /// them what it used beyond its estimate. What a lease cannot pay, and what comes to a
    /// lease already given back, is settled with the store at once: the store must count
    /// it before upstream's next slice, not when the lease is given back.
    /// (A forfeited lease keeps what comes back, admitting nothing from it until a refill.)
    pub(crate) fn settle(self: &Arc<Self>, reservation: &Reservation, give_back: i64) {
        let mut to_store = Vec::new();
        {
            let mut held = self.lock();
            for part in &reservation.parts {
                match held.get_mut(part.quota.name.as_str()) {
                    Some(h) => {
                        h.tokens += give_back;
                        if h.tokens < 0 {
                            to_store.push((Arc::clone(&part.quota), 0, h.tokens));
                            h.tokens = 0;
                        }
                    }
                    None if give_back != 0 => to_store.push((Arc::clone(&part.quota), 0, give_back)),
                    None => {}
                }
            }
        }
        if !to_store.is_empty() {
            let leases = Arc::clone(self);
            self.runtime.spawn(async move { leases.give_back(to_store).await });
        }
    }

    /// Upstream says the quota has less room than the fleet's view: what this pod leased
    /// is forfeited (not given back: there is no such room), and no lease is taken again
    /// until a store decision shows room.
    pub(crate) fn forfeit(&self, quota: &QuotaSpec) {
        if let Some(h) = self.lock().get_mut(quota.name.as_str()) {
            (h.requests, h.tokens) = (0, 0);
            h.forfeits += 1;
            (h.room_requests, h.room_tokens) = (Some(0), Some(0));
        }
    }

    async fn refill(self: Arc<Self>, quota: Arc<QuotaSpec>, forfeits: u64) {
        let wanted = {
            let mut held = self.lock();
            let Some(h) = held.get_mut(quota.name.as_str()) else { return };
            h.measure(Instant::now());
            match h.wanted(self.seconds) {
                Some(wanted) => wanted,
                None => {
                    h.refilling = false;
                    return;
                }
            }
        };
        let answer = self.store.try_lease(&quota, wanted.0, wanted.1, self.shelf.as_secs_f64()).await;
        let mut held = self.lock();
        let Some(h) = held.get_mut(quota.name.as_str()) else {
            drop(held);
            if let Ok(decision) = answer {
                self.give_back_grant(&quota, &decision, wanted);
            }
            return;
        };
        h.refilling = false;
        match answer {
            // Asked for before upstream said the quota was fuller: forfeited like the rest.
            Ok(decision) if decision.allowed && h.forfeits != forfeits => {}
            Ok(decision) if decision.allowed => {
                h.requests += wanted.0 as i64;
                h.tokens += wanted.1 as i64;
                h.granted_at = Instant::now();
                (h.room_requests, h.room_tokens) = (decision.remaining_requests, decision.remaining_tokens);
                self.granted.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => (h.room_requests, h.room_tokens) = (Some(0), Some(0)),
            Err(_) => {
                h.retry_at = Some(Instant::now() + RETRY_AFTER);
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn give_back_grant(&self, quota: &Arc<QuotaSpec>, decision: &Decision, wanted: (u64, u64)) {
        if decision.allowed {
            let part = ReservedPart { quota: Arc::clone(quota), mark: WindowMark::None };
            let store = Arc::clone(&self.store);
            self.runtime.spawn(async move {
                let _ = store.adjust(&[part], wanted.0 as i64, wanted.1 as i64).await;
            });
        }
    }

    /// Give back the leases idle for `idle`, and forget quotas idle with nothing held
    /// (user quotas come and go).
    async fn sweep(&self) {
        let now = Instant::now();
        let mut returns = Vec::new();
        self.lock().retain(|_, h| {
            if now.duration_since(h.last_used) < self.idle || h.refilling {
                return true;
            }
            if h.holds_anything() {
                returns.push((Arc::clone(&h.quota), h.requests, h.tokens));
            }
            false
        });
        self.give_back(returns).await;
    }

    /// Give what leases held back to the store (below zero: charge it).
    async fn give_back(&self, returns: Vec<(Arc<QuotaSpec>, i64, i64)>) {
        for (quota, requests, tokens) in returns {
            let part = ReservedPart { quota, mark: WindowMark::None };
            if self.store.adjust(&[part], requests, tokens).await.is_err() {
                self.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// `(requests, tokens)` this pod holds of a quota's room.
    pub(crate) fn held(&self, quota: &QuotaSpec) -> (i64, i64) {
        self.lock().get(quota.name.as_str()).map_or((0, 0), |h| (h.requests, h.tokens))
    }

    /// Store operations of leases that failed.
    pub(crate) fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// `(leases granted, decisions served from a lease)` since this limiter was made.
    pub(crate) fn counts(&self) -> (u64, u64) {
        (self.granted.load(Ordering::Relaxed), self.served.load(Ordering::Relaxed))
    }
}

async fn sweep_while_alive(leases: Weak<Leases>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(leases) = leases.upgrade() else { return };
        leases.sweep().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::quota::QuotaOptions;

    fn quota(rpm: i64, tpm: i64) -> Arc<QuotaSpec> {
        let opts = QuotaOptions { requests_per_minute: Some(rpm), tokens_per_minute: Some(tpm), ..Default::default() };
        Arc::new(QuotaSpec::new("q", &opts).unwrap())
    }

    fn busy(q: &Arc<QuotaSpec>, per_second: u64, tokens_each: u64) -> Held {
        let now = Instant::now();
        let mut h = Held::new(q, now - Duration::from_secs(1));
        (h.taken_requests, h.taken_tokens) = (per_second, per_second * tokens_each);
        h.measure(now);
        h
    }

    #[test]
    fn a_lease_covers_the_pods_demand_for_its_seconds() {
        let q = quota(6_000_000, 600_000_000); // burst 100,000 requests / 10M tokens
        let mut h = busy(&q, 500, 100);
        (h.room_requests, h.room_tokens) = (Some(90_000), Some(9_000_000));
        assert_eq!(h.wanted(0.1), Some((50, 5_000)));
    }

    #[test]
    fn no_lease_near_the_limit_or_on_a_small_burst() {
        let q = quota(6_000_000, 600_000_000);
        let mut h = busy(&q, 500, 100);
        (h.room_requests, h.room_tokens) = (Some(7), Some(9_000_000));
        assert_eq!(h.wanted(0.1), None, "a quarter of 7 requests is under two");
        (h.room_requests, h.room_tokens) = (Some(60_000), Some(9_000_000));
        assert_eq!(h.wanted(0.1), Some((50, 5_000)));
        (h.room_requests, h.room_tokens) = (Some(40_000), Some(9_000_000));
        assert_eq!(h.wanted(0.1), None, "under half the burst left: near the limit");
        assert!(h.outgrew_room(), "what a lease holds near the limit is given back");
        (h.room_requests, h.room_tokens) = (Some(60_000), Some(4_000_000));
        assert_eq!(h.wanted(0.1), None, "under half the tokens' burst left");
        (h.room_requests, h.room_tokens) = (Some(60_000), Some(9_000_000));
        assert!(!h.outgrew_room());
        let small = quota(600, 1_000_000); // burst 10 requests: a tenth is one
        let mut h = busy(&small, 5, 100);
        (h.room_requests, h.room_tokens) = (Some(10), Some(16_666));
        assert_eq!(h.wanted(0.1), None);
    }

    #[test]
    fn requests_without_tokens_lease_no_tokens() {
        let q = quota(6_000_000, 600_000_000);
        let mut h = busy(&q, 500, 0);
        (h.room_requests, h.room_tokens) = (Some(90_000), Some(9_000_000));
        assert_eq!(h.wanted(0.1), Some((50, 0)));
    }

    #[test]
    fn a_lease_never_exceeds_a_tenth_of_the_burst() {
        let q = quota(60_000, 60_000_000); // burst 1,000 requests
        let mut h = busy(&q, 100_000, 10);
        (h.room_requests, h.room_tokens) = (Some(1_000), Some(1_000_000));
        assert_eq!(h.wanted(1.0).map(|w| w.0), Some(100));
    }

    #[test]
    fn a_lease_runs_low_under_half() {
        let q = quota(6_000_000, 600_000_000);
        let mut h = busy(&q, 500, 100);
        (h.requests, h.tokens) = (30, 3_000);
        assert!(!h.running_low((50, 5_000)));
        h.requests = 24;
        assert!(h.running_low((50, 5_000)));
        (h.requests, h.tokens) = (30, 2_000);
        assert!(h.running_low((50, 5_000)));
        assert!(h.covers(1, 2_000) && !h.covers(1, 2_001));
    }
}
