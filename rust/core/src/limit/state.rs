//! The admission algorithms as pure state machines over an explicit clock, shared by the
//! embedded store and mirrored line for line by `lua/acquire-n.lua` for Redis.
//!
//! All times are seconds as `f64`; all amounts are whole numbers carried as `f64` (exact
//! below 2^53, far above `MAX_PER_MINUTE`).

use crate::limit::quota::{Algorithm, Dimension, QuotaSpec};
use std::collections::VecDeque;

/// The sliding window length, in seconds.
pub const WINDOW: f64 = 60.0;

/// A dimension as one store sees it: the shared limit, or a pod's share of it when a
/// store is the fail-open fallback.
#[derive(Debug, Clone, Copy)]
pub struct Scaled {
    pub rate: f64,
    pub capacity: f64,
    pub limit: f64,
}

impl Scaled {
    #[inline]
    pub fn of(dim: Dimension, share: f64) -> Self {
        if share >= 1.0 {
            return Scaled { rate: dim.rate(), capacity: dim.capacity as f64, limit: dim.per_minute as f64 };
        }
        Scaled {
            rate: dim.rate() * share,
            capacity: (dim.capacity as f64 * share).floor().max(1.0),
            limit: (dim.per_minute as f64 * share).floor().max(1.0),
        }
    }
}

/// What an admission check found for one quota.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Check {
    /// Room now; remaining after admission (`None` for an unlimited dimension).
    Room { remaining_requests: Option<f64>, remaining_tokens: Option<f64> },
    /// No room; seconds until there will be.
    Wait(f64),
}

/// State of one quota in one store.
#[derive(Debug, Clone)]
pub enum QuotaState {
    Bucket(BucketState),
    Window(WindowState),
}

impl QuotaState {
    pub fn new(spec: &QuotaSpec, now: f64, share: f64) -> Self {
        match spec.algorithm {
            Algorithm::TokenBucket => QuotaState::Bucket(BucketState::full(spec, now, share)),
            Algorithm::SlidingWindow => QuotaState::Window(WindowState::default()),
        }
    }

    pub fn matches(&self, spec: &QuotaSpec) -> bool {
        matches!(
            (self, spec.algorithm),
            (QuotaState::Bucket(_), Algorithm::TokenBucket) | (QuotaState::Window(_), Algorithm::SlidingWindow)
        )
    }
}

/// Token bucket: current levels of both dimensions at time `ts`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    pub requests: f64,
    pub tokens: f64,
    pub ts: f64,
}

#[inline]
fn level(dim: Option<Scaled>, stored: f64, elapsed: f64) -> f64 {
    match dim {
        Some(d) => (stored + elapsed * d.rate).min(d.capacity),
        None => 0.0,
    }
}

/// Seconds until `level` reaches `cost` (0 when it already has). A cost above the capacity
/// (only possible on a fail-open share) is admitted once the bucket is full, going into debt.
#[inline]
fn bucket_wait(dim: Option<Scaled>, level: f64, cost: f64) -> f64 {
    match dim {
        Some(d) if cost > 0.0 => {
            let need = cost.min(d.capacity);
            if level >= need {
                0.0
            } else {
                (need - level) / d.rate
            }
        }
        _ => 0.0,
    }
}

impl BucketState {
    pub fn full(spec: &QuotaSpec, now: f64, share: f64) -> Self {
        let cap = |d: Option<Dimension>| d.map_or(0.0, |d| Scaled::of(d, share).capacity);
        BucketState { requests: cap(spec.requests), tokens: cap(spec.tokens), ts: now }
    }

    /// Refill to `now` (time never runs backwards here, even if a clock does).
    #[inline]
    pub fn refill(&mut self, spec: &QuotaSpec, now: f64, share: f64) {
        let elapsed = (now - self.ts).max(0.0);
        self.requests = level(spec.requests.map(|d| Scaled::of(d, share)), self.requests, elapsed);
        self.tokens = level(spec.tokens.map(|d| Scaled::of(d, share)), self.tokens, elapsed);
        self.ts = self.ts.max(now);
    }

    /// Check after `refill`.
    #[inline]
    pub fn check(&self, spec: &QuotaSpec, requests: f64, tokens: f64, share: f64) -> Check {
        let r = spec.requests.map(|d| Scaled::of(d, share));
        let t = spec.tokens.map(|d| Scaled::of(d, share));
        let wait = bucket_wait(r, self.requests, requests).max(bucket_wait(t, self.tokens, tokens));
        if wait > 0.0 {
            return Check::Wait(wait);
        }
        Check::Room {
            remaining_requests: r.map(|_| self.requests - requests),
            remaining_tokens: t.map(|_| self.tokens - tokens),
        }
    }

    #[inline]
    pub fn take(&mut self, spec: &QuotaSpec, requests: f64, tokens: f64) {
        if spec.requests.is_some() {
            self.requests -= requests;
        }
        if spec.tokens.is_some() {
            self.tokens -= tokens;
        }
    }

    /// Give back (positive) or charge (negative) after the fact; refills first so a refund
    /// never lifts the level above capacity.
    pub fn adjust(&mut self, spec: &QuotaSpec, now: f64, share: f64, requests: f64, tokens: f64) {
        self.refill(spec, now, share);
        if let Some(d) = spec.requests {
            self.requests = (self.requests + requests).min(Scaled::of(d, share).capacity);
        }
        if let Some(d) = spec.tokens {
            self.tokens = (self.tokens + tokens).min(Scaled::of(d, share).capacity);
        }
    }

    /// Never claim more room than an upstream report allows.
    pub fn clamp(&mut self, requests: Option<f64>, tokens: Option<f64>) {
        if let Some(r) = requests {
            self.requests = self.requests.min(r);
        }
        if let Some(t) = tokens {
            self.tokens = self.tokens.min(t);
        }
    }
}

/// One admission in a sliding window log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowEntry {
    pub seq: u64,
    pub at: f64,
    pub requests: f64,
    pub tokens: f64,
}

/// Sliding window log: every admission of the last minute, and their sums.
#[derive(Debug, Clone, Default)]
pub struct WindowState {
    pub log: VecDeque<WindowEntry>,
    pub requests: f64,
    pub tokens: f64,
    pub next_seq: u64,
}

impl WindowState {
    /// Drop admissions older than the window.
    #[inline]
    pub fn expire(&mut self, now: f64) {
        while let Some(first) = self.log.front() {
            if first.at > now - WINDOW {
                break;
            }
            self.requests -= first.requests;
            self.tokens -= first.tokens;
            self.log.pop_front();
        }
        if self.log.is_empty() {
            // Clear float residue so an idle window is exactly empty.
            self.requests = 0.0;
            self.tokens = 0.0;
        }
    }

    /// Check after `expire`.
    pub fn check(&self, spec: &QuotaSpec, requests: f64, tokens: f64, now: f64, share: f64) -> Check {
        let r = spec.requests.map(|d| Scaled::of(d, share));
        let t = spec.tokens.map(|d| Scaled::of(d, share));
        let over_r = r.map_or(0.0, |d| over(self.requests, requests, d.limit));
        let over_t = t.map_or(0.0, |d| over(self.tokens, tokens, d.limit));
        if over_r <= 0.0 && over_t <= 0.0 {
            return Check::Room {
                remaining_requests: r.map(|d| d.limit - self.requests - requests),
                remaining_tokens: t.map(|d| d.limit - self.tokens - tokens),
            };
        }
        // Walk the log from the oldest admission until enough has expired on both dimensions.
        let (mut freed_r, mut freed_t) = (0.0, 0.0);
        for entry in &self.log {
            freed_r += entry.requests;
            freed_t += entry.tokens;
            if freed_r >= over_r && freed_t >= over_t {
                return Check::Wait((entry.at + WINDOW - now).max(1e-3));
            }
        }
        Check::Wait(WINDOW)
    }

    pub fn take(&mut self, requests: f64, tokens: f64, now: f64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.log.push_back(WindowEntry { seq, at: now, requests, tokens });
        self.requests += requests;
        self.tokens += tokens;
        seq
    }

    /// Change the cost of admission `seq` by the given amounts (negative refunds). An
    /// admission that has already left the window no longer counts, so there is nothing
    /// to change.
    pub fn adjust(&mut self, seq: u64, requests: f64, tokens: f64) {
        if let Ok(i) = self.log.binary_search_by_key(&seq, |e| e.seq) {
            let entry = &mut self.log[i];
            let new_r = (entry.requests + requests).max(0.0);
            let new_t = (entry.tokens + tokens).max(0.0);
            self.requests += new_r - entry.requests;
            self.tokens += new_t - entry.tokens;
            entry.requests = new_r;
            entry.tokens = new_t;
        }
    }

    /// Make the window hold at least `limit - remaining` until `now + reset`, so that it
    /// never claims more room than an upstream report allows.
    pub fn clamp(&mut self, spec: &QuotaSpec, now: f64, requests: Option<(f64, f64)>, tokens: Option<(f64, f64)>) {
        let fill = |dim: Option<Dimension>, used: f64, report: Option<(f64, f64)>| match (dim, report) {
            (Some(d), Some((remaining, _))) => (d.per_minute as f64 - remaining - used).max(0.0),
            _ => 0.0,
        };
        let add_r = fill(spec.requests, self.requests, requests);
        let add_t = fill(spec.tokens, self.tokens, tokens);
        if add_r <= 0.0 && add_t <= 0.0 {
            return;
        }
        let reset = requests.map_or(0.0, |r| r.1).max(tokens.map_or(0.0, |t| t.1)).min(WINDOW);
        // Backdate the synthetic entry so it expires when upstream says its window resets,
        // keeping the log ordered by time.
        let at = (now + reset - WINDOW).max(self.log.back().map_or(f64::MIN, |e| e.at));
        let seq = self.next_seq;
        self.next_seq += 1;
        self.log.push_back(WindowEntry { seq, at, requests: add_r, tokens: add_t });
        self.requests += add_r;
        self.tokens += add_t;
    }
}

#[inline]
fn over(used: f64, cost: f64, limit: f64) -> f64 {
    if cost <= 0.0 {
        return 0.0;
    }
    // A cost above the limit (fail-open shares only) fits into an empty window.
    let cost = cost.min(limit);
    used + cost - limit
}
