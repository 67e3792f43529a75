//! Circuit breakers: one per (endpoint, model) by default, judging upstream health from
//! outcomes classified the way OpenAI's errors mean them.
//!
//! A breaker is a state machine driven by the caller's clock (`Instant`s passed in), so it
//! is tested without sleeping. `Closed` counts outcomes in a sliding window (by count or by
//! time) and trips to `Open` on the failure rate or the slow-call rate once the window holds
//! `min_calls`. `Open` refuses until its period ends, a period that doubles on each
//! consecutive trip (with jitter, so a fleet does not probe in step). Then `HalfOpen` lets a
//! fixed number of probes through, never more at once; a probe that does not report within
//! `probe_max_wait` counts as failed, so a stuck probe cannot hold the breaker half-open. All
//! probes succeeding closes the breaker, any failing reopens it. `Isolated` refuses until
//! someone resets it: an operator's `isolate()`, or an `insufficient_quota` 429 (no amount of
//! waiting brings credit back). A 429 `rate_limit_exceeded` is quota, not health: it pauses
//! the breaker until the reset upstream gives, counting nothing. A 429 `resource_unavailable`
//! (Flex processing had no capacity for a `service_tier: "flex"` request) is neither quota
//! nor health: it counts nothing and pauses nothing, since the other tiers are served.
//!
//! Every transition is recorded as a `Transition` for the caller to publish (metrics, logs,
//! callbacks, and the fleet: see `fleet`).

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub mod fleet;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    /// Open until reset (manually isolated, or upstream's credit is exhausted).
    Isolated,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::Isolated => "isolated",
        }
    }

    pub fn parse(text: &str) -> Option<State> {
        Some(match text {
            "closed" => State::Closed,
            "open" => State::Open,
            "half_open" => State::HalfOpen,
            "isolated" => State::Isolated,
            _ => return None,
        })
    }
}

/// What one upstream call tells about health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// An answer (2xx).
    Success,
    /// 5xx, a timeout or a connection error.
    Failure,
    /// A 429 `rate_limit_exceeded`: quota, not health. Pauses until `retry_after`.
    RateLimited { retry_after: Duration },
    /// A 429 `insufficient_quota`: credit is gone; isolate until reset.
    QuotaExhausted,
    /// The caller's own doing (400, 404, 422, a cancellation), or a 429 `resource_unavailable`
    /// (Flex processing had no capacity for a `service_tier: "flex"` request: not the
    /// project's quota, and the other tiers are served): says nothing about health.
    Neutral,
}

/// The `code` of OpenAI's 429 "Resource Unavailable": Flex processing has no capacity for
/// the request now (it is not billed; standard processing may still serve it).
pub const FLEX_UNAVAILABLE: &str = "resource_unavailable";

/// Classify an upstream outcome: an HTTP status with the error's `code`, or `None` for a
/// call that got no response (timeout, connection error).
pub fn classify(status: Option<u16>, error_code: Option<&str>, retry_after: Duration) -> Verdict {
    match status {
        None => Verdict::Failure,
        Some(429) if error_code == Some("insufficient_quota") => Verdict::QuotaExhausted,
        Some(429) if error_code == Some(FLEX_UNAVAILABLE) => Verdict::Neutral,
        Some(429) => Verdict::RateLimited { retry_after },
        Some(408) | Some(500..=599) => Verdict::Failure,
        Some(200..=399) => Verdict::Success,
        Some(_) => Verdict::Neutral,
    }
}

/// How outcomes are windowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Window {
    /// The last `n` calls.
    Count(u32),
    /// Calls that ended in the last `seconds` (whole seconds, bucketed per second).
    Time(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BreakerOptions {
    pub window: Window,
    /// Trip when at least this share of the window failed (0 < rate ≤ 1).
    pub failure_rate: f64,
    /// Trip when at least this share of the window was slow (0 < rate ≤ 1).
    pub slow_rate: f64,
    /// A call slower than this is slow (time to first byte for streams).
    pub slow_call: Duration,
    /// No verdict before the window holds this many calls.
    pub min_calls: u32,
    /// Probes a half-open breaker lets through (and needs to close).
    pub half_open_probes: u32,
    /// A probe silent this long counts as failed.
    pub probe_max_wait: Duration,
    /// The first open period; each consecutive trip doubles it, up to `open_max`.
    pub open_base: Duration,
    pub open_max: Duration,
    /// Each open period is drawn uniformly within ± this share of itself.
    pub jitter: f64,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        BreakerOptions {
            window: Window::Count(50),
            failure_rate: 0.5,
            slow_rate: 1.0,
            slow_call: Duration::from_secs(30),
            min_calls: 10,
            half_open_probes: 3,
            probe_max_wait: Duration::from_secs(30),
            open_base: Duration::from_secs(5),
            open_max: Duration::from_secs(300),
            jitter: 0.2,
        }
    }
}

impl BreakerOptions {
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::invalid(format!("circuit breaker: {msg}")));
        match self.window {
            Window::Count(0) | Window::Time(0) => return bad("the window must hold at least one call or second".into()),
            Window::Count(n) if n > 100_000 => {
                return bad(format!("a window of {n} calls is too large (at most 100,000)"))
            }
            Window::Time(s) if s > 3_600 => return bad(format!("a window of {s} s is too long (at most 3,600)")),
            _ => {}
        }
        for (name, rate) in [("failure_rate", self.failure_rate), ("slow_rate", self.slow_rate)] {
            if !(rate > 0.0 && rate <= 1.0) {
                return bad(format!("{name} must be in (0, 1], got {rate}"));
            }
        }
        if self.min_calls == 0 {
            return bad("min_calls must be at least 1".into());
        }
        if self.half_open_probes == 0 {
            return bad("half_open_probes must be at least 1".into());
        }
        if self.open_base.is_zero() || self.open_max < self.open_base {
            return bad(format!(
                "open periods must satisfy 0 < open_base ({:?}) <= open_max ({:?})",
                self.open_base, self.open_max
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return bad(format!("jitter must be in [0, 1), got {}", self.jitter));
        }
        if self.probe_max_wait.is_zero() {
            return bad("probe_max_wait must be positive".into());
        }
        Ok(())
    }
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Open: upstream is failing.
    Open,
    /// Half-open with every probe out.
    ProbesOut,
    /// Isolated until reset.
    Isolated,
    /// Paused by upstream's `rate_limit_exceeded`.
    Paused,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Open => "open",
            Refusal::ProbesOut => "probes_out",
            Refusal::Isolated => "isolated",
            Refusal::Paused => "paused",
        }
    }
}

/// A refused call: why, and when to ask again (`None`: not before a reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub reason: Refusal,
    pub retry_after: Option<Duration>,
}

/// Leave to make one call; report its outcome with `Breaker::record`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// 0 for an ordinary call, else the probe's number.
    pub probe: u64,
    /// The breaker's epoch when the permit was given: outcomes of an older epoch (calls
    /// sent before a transition) do not judge the new state.
    pub epoch: u64,
}

/// A change of state, for metrics, logs, callbacks and the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    pub from: State,
    pub to: State,
    pub reason: &'static str,
    /// How long the new state lasts (`Open`), if bounded.
    pub lasts: Option<Duration>,
    /// Consecutive trips so far (drives the open period).
    pub trips: u32,
    /// Whether it came from another pod.
    pub remote: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    failed: bool,
    slow: bool,
}

/// The window's outcomes: a count window keeps running totals, a time window sums its
/// per-second buckets on demand.
#[derive(Debug)]
enum Outcomes {
    Count {
        ring: Vec<Mark>,
        next: usize,
        len: usize,
        failed: u32,
        slow: u32,
    },
    /// Per-second buckets: (second, calls, failures, slow).
    Time {
        buckets: Vec<(u64, u32, u32, u32)>,
    },
}

impl Outcomes {
    fn new(window: Window) -> Self {
        match window {
            Window::Count(n) => {
                Outcomes::Count { ring: vec![Mark::default(); n as usize], next: 0, len: 0, failed: 0, slow: 0 }
            }
            Window::Time(s) => Outcomes::Time { buckets: vec![(u64::MAX, 0, 0, 0); s as usize] },
        }
    }

    fn clear(&mut self) {
        match self {
            Outcomes::Count { next, len, failed, slow, .. } => (*next, *len, *failed, *slow) = (0, 0, 0, 0),
            Outcomes::Time { buckets } => buckets.iter_mut().for_each(|b| *b = (u64::MAX, 0, 0, 0)),
        }
    }

    fn push(&mut self, mark: Mark, second: u64) {
        match self {
            Outcomes::Count { ring, next, len, failed, slow } => {
                if *len == ring.len() {
                    let old = ring[*next];
                    *failed -= old.failed as u32;
                    *slow -= old.slow as u32;
                }
                *failed += mark.failed as u32;
                *slow += mark.slow as u32;
                ring[*next] = mark;
                *next = (*next + 1) % ring.len();
                *len = (*len + 1).min(ring.len());
            }
            Outcomes::Time { buckets } => {
                let n = buckets.len();
                let b = &mut buckets[(second % n as u64) as usize];
                if b.0 != second {
                    *b = (second, 0, 0, 0);
                }
                b.1 += 1;
                b.2 += mark.failed as u32;
                b.3 += mark.slow as u32;
            }
        }
    }

    /// (calls, failures, slow) in the window ending at `second`.
    fn totals(&self, second: u64) -> (u32, u32, u32) {
        match self {
            Outcomes::Count { len, failed, slow, .. } => (*len as u32, *failed, *slow),
            Outcomes::Time { buckets } => {
                let oldest = second.saturating_sub(buckets.len() as u64 - 1);
                buckets
                    .iter()
                    .filter(|b| b.0 != u64::MAX && b.0 >= oldest && b.0 <= second)
                    .fold((0, 0, 0), |(c, f, s), b| (c + b.1, f + b.2, s + b.3))
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    epoch: u64,
    outcomes: Outcomes,
    open_until: Option<Instant>,
    paused_until: Option<Instant>,
    trips: u32,
    /// Half-open: probes out (number, sent at), probes granted and succeeded this round.
    probes_out: Vec<(u64, Instant)>,
    probes_granted: u32,
    probes_ok: u32,
    next_probe: u64,
    rng: u64,
    events: Vec<Transition>,
}

/// One circuit breaker. Cheap to consult: one uncontended lock, no allocation.
#[derive(Debug)]
pub struct Breaker {
    name: String,
    options: BreakerOptions,
    created: Instant,
    inner: Mutex<Inner>,
    /// Set when a transition waits in `take_transitions`: checked without the lock.
    pending: AtomicBool,
}

impl Breaker {
    pub fn new(name: &str, options: BreakerOptions, now: Instant) -> Result<Self> {
        options.validate()?;
        if name.is_empty() {
            return Err(Error::invalid("a circuit breaker needs a non-empty name"));
        }
        let seed = name.bytes().fold(0x9E37_79B9_7F4A_7C15u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01B3));
        let inner = Inner {
            state: State::Closed,
            epoch: 1,
            outcomes: Outcomes::new(options.window),
            open_until: None,
            paused_until: None,
            trips: 0,
            probes_out: Vec::new(),
            probes_granted: 0,
            probes_ok: 0,
            next_probe: 1,
            rng: seed | 1,
            events: Vec::new(),
        };
        Ok(Breaker {
            name: name.to_owned(),
            options,
            created: now,
            inner: Mutex::new(inner),
            pending: AtomicBool::new(false),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> &BreakerOptions {
        &self.options
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state as of `now` (an open period that has ended reads as half-open).
    pub fn state(&self, now: Instant) -> State {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        inner.state
    }

    /// Consecutive trips so far.
    pub fn trips(&self) -> u32 {
        self.lock().trips
    }

    /// May a call go now? The hot path: one lock, no allocation.
    #[inline]
    pub fn allow(&self, now: Instant) -> std::result::Result<Permit, Refused> {
        let mut inner = self.lock();
        if let Some(until) = inner.paused_until {
            if now < until {
                return Err(Refused { reason: Refusal::Paused, retry_after: Some(until - now) });
            }
            inner.paused_until = None;
        }
        if inner.state == State::Closed {
            return Ok(Permit { probe: 0, epoch: inner.epoch });
        }
        self.advance(&mut inner, now);
        match inner.state {
            State::Closed => Ok(Permit { probe: 0, epoch: inner.epoch }),
            State::Open => Err(Refused {
                reason: Refusal::Open,
                retry_after: inner.open_until.map(|u| u.saturating_duration_since(now)),
            }),
            State::Isolated => Err(Refused { reason: Refusal::Isolated, retry_after: None }),
            State::HalfOpen => {
                if inner.probes_granted >= self.options.half_open_probes {
                    let oldest = inner.probes_out.iter().map(|p| p.1).min();
                    let wait = oldest.map(|t| (t + self.options.probe_max_wait).saturating_duration_since(now));
                    return Err(Refused {
                        reason: Refusal::ProbesOut,
                        retry_after: wait.or(Some(Duration::from_millis(100))),
                    });
                }
                let probe = inner.next_probe;
                inner.next_probe += 1;
                inner.probes_granted += 1;
                inner.probes_out.push((probe, now));
                Ok(Permit { probe, epoch: inner.epoch })
            }
        }
    }

    /// Give a probe back unused (the call was not made, e.g. the fleet refused the probe).
    pub fn return_permit(&self, permit: Permit) {
        if permit.probe == 0 {
            return;
        }
        let mut inner = self.lock();
        if let Some(i) = inner.probes_out.iter().position(|p| p.0 == permit.probe) {
            inner.probes_out.swap_remove(i);
            inner.probes_granted -= 1;
        }
    }

    /// Report how a permitted call went. `elapsed` is the call's latency (time to first
    /// byte for streams).
    pub fn record(&self, permit: Permit, verdict: Verdict, elapsed: Duration, now: Instant) {
        let mut inner = self.lock();
        match verdict {
            Verdict::QuotaExhausted => {
                // Whatever the epoch: credit is gone now.
                self.release_probe(&mut inner, permit);
                if inner.state != State::Isolated {
                    self.transition(&mut inner, State::Isolated, "insufficient_quota", now);
                }
                return;
            }
            Verdict::RateLimited { retry_after } => {
                self.release_probe(&mut inner, permit);
                let until = now + retry_after;
                inner.paused_until = Some(inner.paused_until.map_or(until, |p| p.max(until)));
                return;
            }
            _ => {}
        }
        if permit.epoch != inner.epoch {
            return; // sent before the last transition: it judges a state that is gone
        }
        if permit.probe != 0 {
            if !self.release_probe(&mut inner, permit) {
                return; // timed out earlier and already counted as failed
            }
            let slow = elapsed >= self.options.slow_call;
            match verdict {
                Verdict::Failure => self.trip(&mut inner, "probe failed", now),
                Verdict::Success if slow => self.trip(&mut inner, "probe slow", now),
                Verdict::Success => {
                    inner.probes_ok += 1;
                    if inner.probes_ok >= self.options.half_open_probes {
                        inner.trips = 0;
                        self.transition(&mut inner, State::Closed, "probes succeeded", now);
                    }
                }
                // A neutral answer proves nothing either way: another probe may go.
                _ => inner.probes_granted -= 1,
            }
            return;
        }
        if inner.state != State::Closed || verdict == Verdict::Neutral {
            return;
        }
        let mark = Mark { failed: verdict == Verdict::Failure, slow: elapsed >= self.options.slow_call };
        let second = now.saturating_duration_since(self.created).as_secs();
        inner.outcomes.push(mark, second);
        let (calls, failed, slow) = inner.outcomes.totals(second);
        if calls >= self.options.min_calls {
            if failed as f64 >= self.options.failure_rate * calls as f64 {
                self.trip(&mut inner, "failure rate", now);
            } else if slow as f64 >= self.options.slow_rate * calls as f64 {
                self.trip(&mut inner, "slow-call rate", now);
            }
        }
    }

    /// Open by hand, until `reset`.
    pub fn isolate(&self, now: Instant) {
        let mut inner = self.lock();
        if inner.state != State::Isolated {
            self.transition(&mut inner, State::Isolated, "isolated by hand", now);
        }
    }

    /// Close by hand, forgetting trips, pauses and the window.
    pub fn reset(&self, now: Instant) {
        let mut inner = self.lock();
        inner.trips = 0;
        inner.paused_until = None;
        self.transition(&mut inner, State::Closed, "reset by hand", now);
    }

    /// Whether transitions wait to be taken (one atomic load).
    #[inline]
    pub fn has_transitions(&self) -> bool {
        self.pending.load(Ordering::Acquire)
    }

    /// Take what happened since the last call (transitions, oldest first).
    pub fn take_transitions(&self) -> Vec<Transition> {
        let mut inner = self.lock();
        self.pending.store(false, Ordering::Release);
        if inner.events.is_empty() {
            return Vec::new();
        }
        std::mem::take(&mut inner.events)
    }

    /// Another pod reports `state` (lasting `lasts` when open, after `trips` trips): honour
    /// it if it is stricter than ours, and honour its close. The fleet probes a half-open
    /// round once, so a close (that round succeeded, or someone reset it) ends our open
    /// period and our half-open state alike; probes of ours still out then belong to an
    /// older epoch and judge nothing. A half-open report says nothing: a pod goes half-open
    /// by its own open period ending, and a closed pod must not refuse for another's timer.
    pub fn apply_remote(&self, state: State, lasts: Option<Duration>, trips: u32, now: Instant) {
        let mut inner = self.lock();
        self.advance(&mut inner, now);
        let ours = inner.state;
        let adopt = match (ours, state) {
            (a, b) if a == b => match (state, lasts, inner.open_until) {
                // Same state: take the later end of an open period.
                (State::Open, Some(l), Some(until)) => now + l > until,
                _ => false,
            },
            (State::Isolated, State::Closed) => true,
            (State::Isolated, _) => false,
            (_, State::Isolated) => true,
            (_, State::HalfOpen) => false,
            (State::Closed, State::Open) => true,
            (State::HalfOpen, State::Open | State::Closed) => true,
            (State::Open, State::Closed) => true,
            _ => false,
        };
        if !adopt {
            return;
        }
        inner.trips = inner.trips.max(trips);
        if state == State::Closed {
            inner.trips = trips;
        }
        if ours == state {
            inner.open_until = lasts.map(|l| now + l);
            return;
        }
        self.enter(&mut inner, state, "from the fleet", lasts, true, now);
    }

    /// Move an ended open period to half-open, and count silent probes as failed.
    fn advance(&self, inner: &mut Inner, now: Instant) {
        if inner.state == State::Open && inner.open_until.is_some_and(|u| now >= u) {
            self.transition(inner, State::HalfOpen, "open period ended", now);
        }
        if inner.state == State::HalfOpen {
            let max_wait = self.options.probe_max_wait;
            if inner.probes_out.iter().any(|p| now.saturating_duration_since(p.1) >= max_wait) {
                self.trip(inner, "probe timed out", now);
            }
        }
    }

    fn release_probe(&self, inner: &mut Inner, permit: Permit) -> bool {
        if permit.probe == 0 {
            return false;
        }
        match inner.probes_out.iter().position(|p| p.0 == permit.probe) {
            Some(i) => {
                inner.probes_out.swap_remove(i);
                true
            }
            None => false,
        }
    }

    fn trip(&self, inner: &mut Inner, reason: &'static str, now: Instant) {
        inner.trips = inner.trips.saturating_add(1);
        self.transition(inner, State::Open, reason, now);
    }

    fn transition(&self, inner: &mut Inner, to: State, reason: &'static str, now: Instant) {
        let lasts = (to == State::Open).then(|| self.open_period(inner));
        self.enter(inner, to, reason, lasts, false, now);
    }

    fn enter(
        &self,
        inner: &mut Inner,
        to: State,
        reason: &'static str,
        lasts: Option<Duration>,
        remote: bool,
        now: Instant,
    ) {
        let from = inner.state;
        inner.state = to;
        inner.epoch += 1;
        inner.open_until = lasts.map(|l| now + l);
        inner.probes_out.clear();
        inner.probes_granted = 0;
        inner.probes_ok = 0;
        if to == State::Closed {
            inner.outcomes.clear();
        }
        inner.events.push(Transition { from, to, reason, lasts, trips: inner.trips, remote });
        self.pending.store(true, Ordering::Release);
    }

    /// `open_base · 2^(trips-1)`, capped, within ± `jitter`.
    fn open_period(&self, inner: &mut Inner) -> Duration {
        let o = &self.options;
        let doublings = inner.trips.saturating_sub(1).min(30);
        let base = o.open_base.as_secs_f64() * f64::from(1u32 << doublings);
        let period = base.min(o.open_max.as_secs_f64());
        // xorshift64*: deterministic per breaker, different across breakers.
        inner.rng ^= inner.rng >> 12;
        inner.rng ^= inner.rng << 25;
        inner.rng ^= inner.rng >> 27;
        let unit = (inner.rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
        Duration::from_secs_f64(period * (1.0 + o.jitter * (2.0 * unit - 1.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> BreakerOptions {
        BreakerOptions {
            window: Window::Count(10),
            min_calls: 4,
            failure_rate: 0.5,
            half_open_probes: 2,
            open_base: Duration::from_secs(10),
            open_max: Duration::from_secs(60),
            jitter: 0.0,
            probe_max_wait: Duration::from_secs(5),
            slow_call: Duration::from_secs(2),
            slow_rate: 0.5,
        }
    }

    const MS: Duration = Duration::from_millis(1);

    fn call(b: &Breaker, verdict: Verdict, now: Instant) {
        let p = b.allow(now).expect("allowed");
        b.record(p, verdict, MS, now);
    }

    #[test]
    fn classification_fits_openai() {
        let z = Duration::ZERO;
        assert_eq!(classify(None, None, z), Verdict::Failure);
        assert_eq!(classify(Some(503), None, z), Verdict::Failure);
        assert_eq!(classify(Some(200), None, z), Verdict::Success);
        assert_eq!(classify(Some(429), Some("insufficient_quota"), z), Verdict::QuotaExhausted);
        assert_eq!(classify(Some(429), Some("rate_limit_exceeded"), MS), Verdict::RateLimited { retry_after: MS });
        assert_eq!(classify(Some(429), Some("resource_unavailable"), MS), Verdict::Neutral);
        for s in [400, 401, 404, 422, 499] {
            assert_eq!(classify(Some(s), None, z), Verdict::Neutral, "{s}");
        }
    }

    #[test]
    fn trips_on_failure_rate_only_after_min_calls() {
        let t = Instant::now();
        let b = Breaker::new("chat:gpt", opts(), t).unwrap();
        for _ in 0..3 {
            call(&b, Verdict::Failure, t);
        }
        assert_eq!(b.state(t), State::Closed, "three calls are fewer than min_calls");
        call(&b, Verdict::Failure, t);
        assert_eq!(b.state(t), State::Open);
        let refused = b.allow(t + MS).unwrap_err();
        assert_eq!(refused.reason, Refusal::Open);
        assert_eq!(refused.retry_after, Some(Duration::from_secs(10) - MS));
        let events = b.take_transitions();
        assert_eq!(events.len(), 1);
        assert_eq!((events[0].from, events[0].to, events[0].reason), (State::Closed, State::Open, "failure rate"));
    }

    #[test]
    fn rate_limits_and_client_errors_never_trip() {
        let t = Instant::now();
        let b = Breaker::new("b", opts(), t).unwrap();
        for _ in 0..20 {
            call(&b, Verdict::Neutral, t);
            let p = b.allow(t).unwrap();
            b.record(p, Verdict::RateLimited { retry_after: Duration::ZERO }, MS, t);
        }
        assert_eq!(b.state(t), State::Closed);
        let p = b.allow(t).unwrap();
        b.record(p, Verdict::RateLimited { retry_after: Duration::from_secs(3) }, MS, t);
        let refused = b.allow(t + Duration::from_secs(1)).unwrap_err();
        assert_eq!((refused.reason, refused.retry_after), (Refusal::Paused, Some(Duration::from_secs(2))));
        assert!(b.allow(t + Duration::from_secs(3)).is_ok(), "the pause ends at upstream's reset");
        assert_eq!(b.state(t), State::Closed);
    }

    #[test]
    fn half_open_admits_exactly_the_probes_then_closes() {
        let t = Instant::now();
        let b = Breaker::new("b", opts(), t).unwrap();
        for _ in 0..4 {
            call(&b, Verdict::Failure, t);
        }
        let later = t + Duration::from_secs(10);
        let probes: Vec<Permit> = (0..100).filter_map(|_| b.allow(later).ok()).collect();
        assert_eq!(probes.len(), 2, "never a herd");
        assert_eq!(b.allow(later).unwrap_err().reason, Refusal::ProbesOut);
        b.record(probes[0], Verdict::Success, MS, later);
        assert_eq!(b.state(later), State::HalfOpen);
        b.record(probes[1], Verdict::Success, MS, later);
        assert_eq!(b.state(later), State::Closed);
        assert_eq!(b.trips(), 0);
    }

    #[test]
    fn a_failed_probe_reopens_for_longer() {
        let t = Instant::now();
        let b = Breaker::new("b", opts(), t).unwrap();
        for _ in 0..4 {
            call(&b, Verdict::Failure, t);
        }
        let t1 = t + Duration::from_secs(10);
        let p = b.allow(t1).unwrap();
        b.record(p, Verdict::Failure, MS, t1);
        assert_eq!(b.state(t1), State::Open);
        assert_eq!(b.allow(t1).unwrap_err().retry_after, Some(Duration::from_secs(20)), "doubled");
        let t2 = t1 + Duration::from_secs(20);
        let p = b.allow(t2).unwrap();
        b.record(p, Verdict::Failure, MS, t2);
        assert_eq!(b.allow(t2).unwrap_err().retry_after, Some(Duration::from_secs(40)));
        let t3 = t2 + Duration::from_secs(40);
        let p = b.allow(t3).unwrap();
        b.record(p, Verdict::Failure, MS, t3);
        assert_eq!(b.allow(t3).unwrap_err().retry_after, Some(Duration::from_secs(60)), "capped at open_max");
    }

    #[test]
    fn a_stuck_probe_counts_as_failed_and_its_late_answer_is_ignored() {
        let t = Instant::now();
        let b = Breaker::new("b", opts(), t).unwrap();
        for _ in 0..4 {
            call(&b, Verdict::Failure, t);
        }
        let t1 = t + Duration::from_secs(10);
        let stuck = b.allow(t1).unwrap();
        let t2 = t1 + Duration::from_secs(5);
        assert_eq!(b.state(t2), State::Open, "the probe's wait ran out");
        b.record(stuck, Verdict::Success, Duration::from_secs(5), t2);
        assert_eq!(b.state(t2), State::Open);
    }

    #[test]
    fn insufficient_quota_isolates_until_reset() {
        let t = Instant::now();
        let b = Breaker::new("b", opts(), t).unwrap();
        let p = b.allow(t).unwrap();
        b.record(p, Verdict::QuotaExhausted, MS, t);
        let far = t + Duration::from_secs(86_400);
        assert_eq!(b.state(far), State::Isolated);
        assert_eq!(b.allow(far).unwrap_err(), Refused { reason: Refusal::Isolated, retry_after: None });
        b.reset(far);
        assert!(b.allow(far).is_ok());
        b.isolate(far);
        assert_eq!(b.allow(far).unwrap_err().reason, Refusal::Isolated);
    }

    #[test]
    fn slow_calls_trip_and_outcomes_of_an_older_epoch_do_not_count() {
        let t = Instant::now();
        let b = Breaker::new("b", opts(), t).unwrap();
        let early = b.allow(t).unwrap();
        for _ in 0..4 {
            let p = b.allow(t).unwrap();
            b.record(p, Verdict::Success, Duration::from_secs(3), t);
        }
        assert_eq!(b.state(t), State::Open, "slow-call rate");
        b.reset(t);
        b.record(early, Verdict::Failure, MS, t);
        assert_eq!(b.state(t), State::Closed);
    }

    #[test]
    fn time_window_forgets_old_failures() {
        let t = Instant::now();
        let b = Breaker::new("b", BreakerOptions { window: Window::Time(10), ..opts() }, t).unwrap();
        for _ in 0..3 {
            call(&b, Verdict::Failure, t);
        }
        let later = t + Duration::from_secs(30);
        for _ in 0..3 {
            call(&b, Verdict::Success, later);
        }
        call(&b, Verdict::Failure, later);
        assert_eq!(b.state(later), State::Closed, "1 failure in 4 recent calls");
    }

    #[test]
    fn remote_open_is_honoured_and_closed_closes() {
        let t = Instant::now();
        let b = Breaker::new("b", opts(), t).unwrap();
        b.apply_remote(State::Open, Some(Duration::from_secs(7)), 1, t);
        assert_eq!(b.allow(t).unwrap_err().retry_after, Some(Duration::from_secs(7)));
        let events = b.take_transitions();
        assert!(events[0].remote && events[0].to == State::Open);
        b.apply_remote(State::Closed, None, 0, t);
        assert!(b.allow(t).is_ok());
        b.apply_remote(State::Isolated, None, 0, t);
        assert_eq!(b.allow(t).unwrap_err().reason, Refusal::Isolated);
    }

    /// What the fleet does between pods: each pod's own transitions, except half-open,
    /// reach the others.
    fn relay(from: &Breaker, to: &[&Breaker], now: Instant) {
        for t in from.take_transitions().into_iter().filter(|t| !t.remote && t.to != State::HalfOpen) {
            for pod in to {
                pod.apply_remote(t.to, t.lasts, t.trips, now);
            }
        }
    }

    #[test]
    fn one_pod_probes_for_the_fleet_and_every_half_open_pod_follows_its_verdict() {
        let t = Instant::now();
        let (a, b, c) = (
            Breaker::new("b", opts(), t).unwrap(),
            Breaker::new("b", opts(), t).unwrap(),
            Breaker::new("b", opts(), t).unwrap(),
        );
        for _ in 0..4 {
            call(&a, Verdict::Failure, t);
        }
        relay(&a, &[&b, &c], t);
        let t1 = t + Duration::from_secs(10);
        assert!([&a, &b, &c].iter().all(|p| p.state(t1) == State::HalfOpen));
        // B and C do not hold the round: the fleet makes them give their probes back.
        for pod in [&b, &c] {
            let p = pod.allow(t1).unwrap();
            assert_ne!(p.probe, 0);
            pod.return_permit(p);
        }
        let late = b.allow(t1).unwrap(); // granted just before the verdict arrives
        let probes: Vec<Permit> = (0..2).map(|_| a.allow(t1).unwrap()).collect();
        probes.iter().for_each(|&p| a.record(p, Verdict::Success, MS, t1));
        assert_eq!(a.state(t1), State::Closed);
        relay(&a, &[&b, &c], t1);
        for pod in [&b, &c] {
            assert_eq!(pod.state(t1), State::Closed, "the fleet's close ends a half-open round too");
            assert_eq!(pod.allow(t1).unwrap().probe, 0);
        }
        b.record(late, Verdict::Failure, MS, t1);
        assert_eq!(b.state(t1), State::Closed, "a probe of the ended round judges nothing");
        assert!(b.take_transitions().iter().all(|e| e.remote || e.to == State::HalfOpen));
    }

    #[test]
    fn a_half_open_pod_follows_the_rounds_reopen_and_a_closed_pod_ignores_half_open() {
        let t = Instant::now();
        let (a, b) = (Breaker::new("b", opts(), t).unwrap(), Breaker::new("b", opts(), t).unwrap());
        for _ in 0..4 {
            call(&a, Verdict::Failure, t);
        }
        relay(&a, &[&b], t);
        let t1 = t + Duration::from_secs(10);
        assert_eq!(b.state(t1), State::HalfOpen);
        let p = a.allow(t1).unwrap();
        a.record(p, Verdict::Failure, MS, t1);
        relay(&a, &[&b], t1);
        assert_eq!(
            b.allow(t1).unwrap_err(),
            Refused { reason: Refusal::Open, retry_after: Some(Duration::from_secs(20)) }
        );
        let closed = Breaker::new("b", opts(), t).unwrap();
        closed.apply_remote(State::HalfOpen, None, 1, t);
        assert!(closed.allow(t).is_ok_and(|p| p.probe == 0), "another pod's timer refuses nothing here");
    }

    #[test]
    fn jitter_spreads_open_periods_within_bounds() {
        let t = Instant::now();
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..20 {
            let b = Breaker::new(&format!("b{i}"), BreakerOptions { jitter: 0.2, ..opts() }, t).unwrap();
            for _ in 0..4 {
                call(&b, Verdict::Failure, t);
            }
            let wait = b.allow(t).unwrap_err().retry_after.unwrap();
            assert!(wait >= Duration::from_secs(8) && wait <= Duration::from_secs(12), "{wait:?}");
            seen.insert(wait);
        }
        assert!(seen.len() > 10, "breakers of a fleet do not reopen in step");
    }

    #[test]
    fn options_are_validated_with_reasons() {
        for (o, needle) in [
            (BreakerOptions { failure_rate: 0.0, ..opts() }, "failure_rate"),
            (BreakerOptions { half_open_probes: 0, ..opts() }, "half_open_probes"),
            (BreakerOptions { window: Window::Count(0), ..opts() }, "window"),
            (BreakerOptions { open_max: Duration::from_secs(1), ..opts() }, "open_base"),
        ] {
            let err = Breaker::new("b", o, Instant::now()).unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
