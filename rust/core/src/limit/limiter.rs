//! The limiter: one API over the embedded store and the shared Redis store, with the
//! failure policy that applies while Redis is unreachable.

use crate::error::{Error, Result};
use crate::headers::RateLimitReport;
use crate::limit::decision::{Decision, Reservation, Source};
use crate::limit::lease::Leases;
use crate::limit::local::LocalStore;
use crate::limit::quota::QuotaSpec;
use crate::store::{RedisStore, RedisTimeouts};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the limiter does while the shared store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Decide locally on this pod's share (`local_share`) of each quota.
    FailOpen,
    /// Refuse with `Error::StoreUnavailable`.
    FailClosed,
}

impl FailurePolicy {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "fail_open" => Ok(FailurePolicy::FailOpen),
            "fail_closed" => Ok(FailurePolicy::FailClosed),
            other => {
                Err(Error::invalid(format!("unknown failure_policy {other:?}: use \"fail_open\" or \"fail_closed\"")))
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::FailOpen => "fail_open",
            FailurePolicy::FailClosed => "fail_closed",
        }
    }
}

#[derive(Debug, Clone)]
pub struct LimiterOptions {
    pub failure_policy: FailurePolicy,
    /// The fraction of each quota one pod may use alone while Redis is unreachable
    /// (fail-open); about 1 / the number of pods.
    pub local_share: f64,
    pub connect_timeout: Duration,
    /// How long one Redis operation may take before the failure policy applies.
    pub timeout: Duration,
    /// After a Redis failure, how long to decide locally before trying Redis again, so
    /// that an outage costs each request nothing, not a timeout.
    pub recheck_after: Duration,
    /// With a shared store: admit from small per-pod leases covering about this many
    /// seconds of the pod's own demand on a busy token-bucket quota (see `lease`), so that
    /// most admissions need no round trip; 0 decides every admission in the store.
    pub lease_seconds: f64,
    /// Where leases are refilled and given back (required when `lease_seconds` > 0).
    pub runtime: Option<tokio::runtime::Handle>,
}

impl Default for LimiterOptions {
    fn default() -> Self {
        LimiterOptions {
            failure_policy: FailurePolicy::FailOpen,
            local_share: 0.1,
            connect_timeout: Duration::from_millis(500),
            timeout: Duration::from_millis(250),
            recheck_after: Duration::from_millis(500),
            lease_seconds: 0.0,
            runtime: None,
        }
    }
}

impl LimiterOptions {
    fn validate(&self) -> Result<()> {
        if !(self.local_share > 0.0 && self.local_share <= 1.0) {
            return Err(Error::invalid(format!("local_share must be in (0, 1], got {}", self.local_share)));
        }
        for (name, d) in [("connect_timeout", self.connect_timeout), ("timeout", self.timeout)] {
            if d.is_zero() || d > Duration::from_secs(60) {
                return Err(Error::invalid(format!("{name} must be between 0 and 60 seconds, got {d:?}")));
            }
        }
        if self.recheck_after > Duration::from_secs(600) {
            return Err(Error::invalid("recheck_after must be at most 600 seconds"));
        }
        if !(0.0..=10.0).contains(&self.lease_seconds) {
            return Err(Error::invalid(format!(
                "lease_seconds must be from 0 (no leases) to 10, got {}",
                self.lease_seconds
            )));
        }
        Ok(())
    }
}

enum Backend {
    Embedded(LocalStore),
    Redis(Arc<RedisStore>),
}

/// A fleet-wide (or, with no store, in-process) rate limiter.
pub struct Limiter {
    backend: Backend,
    fallback: LocalStore,
    options: LimiterOptions,
    epoch: Instant,
    /// Microseconds since `epoch` until which Redis is not tried again (0: healthy).
    redis_down_until: AtomicU64,
    store_errors: AtomicU64,
    /// This pod's leases (None: every admission is decided in the store).
    leases: Option<Arc<Leases>>,
}

impl Limiter {
    /// `store`: `None` for the embedded store, or a `redis://`, `rediss://` or
    /// `redis+cluster://` URL.
    pub fn new(store: Option<&str>, options: LimiterOptions) -> Result<Self> {
        options.validate()?;
        let backend = match store {
            None => Backend::Embedded(LocalStore::new()),
            Some(url) => Backend::Redis(Arc::new(RedisStore::new(
                url,
                RedisTimeouts { connect: options.connect_timeout, response: options.timeout },
            )?)),
        };
        let leases = match (&backend, &options.runtime) {
            (Backend::Redis(store), Some(runtime)) if options.lease_seconds > 0.0 => {
                Some(Leases::start(Arc::clone(store), runtime.clone(), options.lease_seconds))
            }
            (Backend::Redis(_), None) if options.lease_seconds > 0.0 => {
                return Err(Error::invalid("lease_seconds > 0 needs a runtime to refill leases on"));
            }
            _ => None,
        };
        Ok(Limiter {
            backend,
            fallback: LocalStore::with_share(options.local_share, Source::Fallback),
            options,
            epoch: Instant::now(),
            redis_down_until: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            leases,
        })
    }

    pub fn options(&self) -> &LimiterOptions {
        &self.options
    }

    pub fn is_embedded(&self) -> bool {
        matches!(self.backend, Backend::Embedded(_))
    }

    /// The pod's Redis handle, if any: every other component sharing state with the fleet
    /// (breakers, dedup, budgets) is given this one handle.
    pub fn shared_store(&self) -> Option<&Arc<RedisStore>> {
        match &self.backend {
            Backend::Redis(store) => Some(store),
            Backend::Embedded(_) => None,
        }
    }

    /// How many times the shared store has failed an operation.
    pub fn store_errors(&self) -> u64 {
        self.store_errors.load(Ordering::Relaxed) + self.leases.as_ref().map_or(0, |l| l.errors())
    }

    /// `(requests, tokens)` of `quota`'s room this pod holds in its lease.
    pub fn leased(&self, quota: &QuotaSpec) -> (i64, i64) {
        self.leases.as_ref().map_or((0, 0), |l| l.held(quota))
    }

    /// `(leases granted, admissions served from a lease)`; zeros without leases.
    pub fn lease_counts(&self) -> (u64, u64) {
        self.leases.as_ref().map_or((0, 0), |l| l.counts())
    }

    /// True while decisions are being made on the fail-open fallback.
    pub fn is_degraded(&self) -> bool {
        self.redis_suspended()
    }

    /// Decide without waiting on the embedded store. `None` when the limiter is shared:
    /// use `try_acquire`.
    #[inline]
    pub fn try_acquire_embedded(
        &self,
        quotas: &[&Arc<QuotaSpec>],
        requests: u64,
        tokens: u64,
    ) -> Option<Result<Decision>> {
        let Backend::Embedded(store) = &self.backend else { return None };
        Some(
            check_costs(quotas.iter().copied(), requests, tokens).map(|()| store.try_acquire(quotas, requests, tokens)),
        )
    }

    /// Reserve `requests` and `tokens` on every quota, or on none.
    pub async fn try_acquire(&self, quotas: &[Arc<QuotaSpec>], requests: u64, tokens: u64) -> Result<Decision> {
        check_costs(quotas.iter(), requests, tokens)?;
        let store = match &self.backend {
            Backend::Embedded(store) => {
                let refs: Vec<&Arc<QuotaSpec>> = quotas.iter().collect();
                return Ok(store.try_acquire(&refs, requests, tokens));
            }
            Backend::Redis(store) => store,
        };
        if let Some(decision) = self.leases.as_ref().and_then(|l| l.take(quotas, requests, tokens)) {
            return Ok(decision);
        }
        let answer =
            if self.redis_suspended() { None } else { Some(store.try_acquire(quotas, requests, tokens).await) };
        self.noted(quotas, self.on_policy(answer, quotas, requests, tokens))
    }

    /// A store decision, its room remembered for sizing leases.
    fn noted(&self, quotas: &[Arc<QuotaSpec>], decision: Result<Decision>) -> Result<Decision> {
        if let (Some(leases), Ok(decision)) = (&self.leases, &decision) {
            if decision.source == Source::Redis {
                leases.noted(quotas, decision);
            }
        }
        decision
    }

    /// `try_acquire` on the caller's thread, blocking (no runtime), where the store allows
    /// it: embedded, or a standalone Redis with a blocking connection free. None otherwise
    /// (a cluster, or every blocking connection busy): use `try_acquire`.
    pub fn try_acquire_blocking(
        &self,
        quotas: &[Arc<QuotaSpec>],
        requests: u64,
        tokens: u64,
    ) -> Option<Result<Decision>> {
        let store = match &self.backend {
            Backend::Embedded(_) => {
                let refs: Vec<&Arc<QuotaSpec>> = quotas.iter().collect();
                return self.try_acquire_embedded(&refs, requests, tokens);
            }
            Backend::Redis(store) => store,
        };
        if let Err(e) = check_costs(quotas.iter(), requests, tokens) {
            return Some(Err(e));
        }
        if let Some(decision) = self.leases.as_ref().and_then(|l| l.take(quotas, requests, tokens)) {
            return Some(Ok(decision));
        }
        let answer =
            if self.redis_suspended() { None } else { Some(store.try_acquire_blocking(quotas, requests, tokens)?) };
        Some(self.noted(quotas, self.on_policy(answer, quotas, requests, tokens)))
    }

    /// The store's answer (None: it is suspended after a failure) under the failure
    /// policy: a failure suspends it, then fail-closed refuses and fail-open decides on
    /// this pod's share.
    fn on_policy(
        &self,
        answer: Option<Result<Decision>>,
        quotas: &[Arc<QuotaSpec>],
        requests: u64,
        tokens: u64,
    ) -> Result<Decision> {
        match answer {
            Some(Ok(decision)) => {
                self.redis_down_until.store(0, Ordering::Relaxed);
                return Ok(decision);
            }
            Some(Err(e @ Error::StoreUnavailable(_))) => {
                self.suspend_redis();
                if self.options.failure_policy == FailurePolicy::FailClosed {
                    return Err(e);
                }
            }
            Some(Err(e)) => return Err(e),
            None if self.options.failure_policy == FailurePolicy::FailClosed => {
                return Err(Error::StoreUnavailable(format!(
                    "it failed within the last {:?} and is not retried until then",
                    self.options.recheck_after
                )));
            }
            None => {}
        }
        let refs: Vec<&Arc<QuotaSpec>> = quotas.iter().collect();
        Ok(self.fallback.try_acquire(&refs, requests, tokens))
    }

    /// Wait (sleeping exactly as long as the store says, never polling) until admitted, or
    /// fail with `Error::RateLimited` when admission cannot come before `timeout`.
    pub async fn acquire(
        &self,
        quotas: &[Arc<QuotaSpec>],
        requests: u64,
        tokens: u64,
        timeout: Option<Duration>,
    ) -> Result<Decision> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let decision = self.try_acquire(quotas, requests, tokens).await?;
            if decision.allowed {
                return Ok(decision);
            }
            tokio::time::sleep(wait_before_retry(&decision, deadline)?).await;
        }
    }

    /// `acquire` for a caller on its own thread: each decision is made there where the store
    /// allows (`try_acquire_blocking`), else on `runtime`; after a refusal, `sleep` waits as
    /// long as the store says (it may end the wait early with an error of its own, such as
    /// a signal), until admitted or `timeout` passes (`Error::RateLimited`).
    pub fn acquire_blocking<E: From<Error>>(
        &self,
        quotas: &[Arc<QuotaSpec>],
        requests: u64,
        tokens: u64,
        timeout: Option<Duration>,
        runtime: &tokio::runtime::Handle,
        mut sleep: impl FnMut(Duration) -> std::result::Result<(), E>,
    ) -> std::result::Result<Decision, E> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let decision = match self.try_acquire_blocking(quotas, requests, tokens) {
                Some(decided) => decided?,
                None => runtime.block_on(self.try_acquire(quotas, requests, tokens))?,
            };
            if decision.allowed {
                return Ok(decision);
            }
            sleep(wait_before_retry(&decision, deadline)?)?;
        }
    }

    /// Settle a reservation with the real token usage: the difference from the estimate is
    /// given back or charged. A reservation settles once; a second call is an error, and so
    /// is a reservation made by another limiter (which is then left unsettled).
    pub async fn settle(&self, reservation: &Reservation, actual_tokens: u64) -> Result<()> {
        if let Some(done) = self.settle_local(reservation, actual_tokens) {
            return done;
        }
        self.claim_shared(reservation)?;
        self.apply_settlement(reservation, actual_tokens).await
    }

    /// Settle in place a reservation held by the embedded store or the fallback; `None`
    /// when it lives in Redis (use `settle`, or `claim_shared` and `apply_settlement`).
    pub fn settle_local(&self, reservation: &Reservation, actual_tokens: u64) -> Option<Result<()>> {
        let store = match (reservation.source, &self.backend) {
            (Source::Redis, _) => return None,
            (Source::Lease, _) => {
                let Some(leases) = &self.leases else { return Some(Err(another_limiter())) };
                return Some(
                    claim(reservation).map(|()| leases.settle(reservation, give_back(reservation, actual_tokens))),
                );
            }
            (Source::Local, Backend::Embedded(store)) => store,
            (Source::Fallback, _) => &self.fallback,
            (Source::Local, Backend::Redis(_)) => return Some(Err(another_limiter())),
        };
        Some(claim(reservation).map(|()| store.adjust(&reservation.parts, 0, give_back(reservation, actual_tokens))))
    }

    /// Claim a shared-store reservation of this limiter for `apply_settlement`, which may
    /// then run later, in the background: a second settle fails here, not out of sight.
    pub fn claim_shared(&self, reservation: &Reservation) -> Result<()> {
        if reservation.source != Source::Redis || !matches!(self.backend, Backend::Redis(_)) {
            return Err(another_limiter());
        }
        claim(reservation)
    }

    /// The Redis half of `settle`, for a reservation claimed with `claim_shared`.
    pub async fn apply_settlement(&self, reservation: &Reservation, actual_tokens: u64) -> Result<()> {
        let give_back = give_back(reservation, actual_tokens);
        let Backend::Redis(store) = &self.backend else { return Err(another_limiter()) };
        if give_back == 0 {
            return Ok(());
        }
        store.adjust(&reservation.parts, 0, give_back).await.inspect_err(|_| self.note_store_error())
    }

    /// Make this quota's view claim no more room than upstream reports (headers parsed by
    /// `RateLimitReport::from_headers`). The fallback share is lowered too.
    pub async fn sync(&self, quota: &Arc<QuotaSpec>, report: &RateLimitReport) -> Result<()> {
        if !quota.could_be_lowered_by(report) {
            return Ok(());
        }
        let (requests, tokens) = remaining_and_reset(report);
        match &self.backend {
            Backend::Embedded(store) => store.clamp(quota, requests, tokens),
            Backend::Redis(store) => {
                self.fallback.clamp(quota, requests, tokens);
                if let Some(leases) = &self.leases {
                    leases.forfeit(quota);
                }
                if !self.redis_suspended() {
                    store.sync(quota, report).await.inspect_err(|_| self.suspend_redis())?;
                }
            }
        }
        Ok(())
    }

    /// Forfeit this pod's lease on `quota` now, when upstream reported it fuller than the
    /// fleet's view (the store is lowered by `sync`, which may run later).
    pub fn forfeit_lease(&self, quota: &QuotaSpec) {
        if let Some(leases) = &self.leases {
            leases.forfeit(quota);
        }
    }

    /// Synchronous sync for the embedded store; `None` when the limiter is shared.
    pub fn sync_embedded(&self, quota: &Arc<QuotaSpec>, report: &RateLimitReport) -> Option<()> {
        let Backend::Embedded(store) = &self.backend else { return None };
        let (requests, tokens) = remaining_and_reset(report);
        store.clamp(quota, requests, tokens);
        Some(())
    }

    /// Check that the shared store answers (always true for the embedded store).
    pub async fn ping(&self) -> Result<()> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Redis(store) => store.ping().await,
        }
    }

    fn now_micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    #[inline]
    fn redis_suspended(&self) -> bool {
        let until = self.redis_down_until.load(Ordering::Relaxed);
        until != 0 && self.now_micros() < until
    }

    fn note_store_error(&self) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
    }

    fn suspend_redis(&self) {
        self.note_store_error();
        let until = self.now_micros() + self.options.recheck_after.as_micros() as u64;
        self.redis_down_until.store(until.max(1), Ordering::Relaxed);
    }
}

fn claim(reservation: &Reservation) -> Result<()> {
    if reservation.claim_settlement() {
        Ok(())
    } else {
        Err(Error::invalid("this reservation was already settled; settle each reservation once"))
    }
}

fn another_limiter() -> Error {
    Error::invalid("this reservation belongs to another limiter; settle it with the limiter that made it")
}

/// Tokens to give back (positive) or charge (negative) when `actual` were used.
fn give_back(reservation: &Reservation, actual: u64) -> i64 {
    reservation.tokens as i64 - actual as i64
}

/// `(remaining, seconds to reset)` of one dimension of an upstream report.
type Seen = Option<(f64, f64)>;

/// What an upstream report says of requests and of tokens.
fn remaining_and_reset(report: &RateLimitReport) -> (Seen, Seen) {
    let pair = |d: Option<crate::headers::DimensionReport>| d.map(|d| (d.remaining as f64, d.reset));
    (pair(report.requests), pair(report.tokens))
}

fn check_costs<'a>(quotas: impl Iterator<Item = &'a Arc<QuotaSpec>>, requests: u64, tokens: u64) -> Result<()> {
    let mut any = false;
    for quota in quotas {
        quota.check_cost(requests, tokens)?;
        any = true;
    }
    if !any {
        return Err(Error::invalid("no quotas given: pass a Quota or a list of them"));
    }
    Ok(())
}

/// How long to sleep after a refusal before trying again, or `RateLimited` when that would
/// pass the deadline. A little jitter keeps waiters that were refused together from all
/// waking at the same instant.
fn wait_before_retry(decision: &Decision, deadline: Option<Instant>) -> Result<Duration> {
    let base = decision.retry_after.max(Duration::from_micros(100));
    let jitter_ceiling = (base / 20).min(Duration::from_millis(20));
    let wait = base + jitter_ceiling.mul_f64(jitter_fraction());
    if let Some(deadline) = deadline {
        if Instant::now() + base > deadline {
            return Err(Error::RateLimited {
                quota: decision.limited_by.as_ref().map_or_else(String::new, |q| q.name.clone()),
                retry_after: decision.retry_after,
            });
        }
        return Ok(wait.min(deadline.saturating_duration_since(Instant::now())));
    }
    Ok(wait)
}

/// A cheap pseudo-random fraction in [0, 1): jitter needs spread, not quality.
fn jitter_fraction() -> f64 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = Cell::new(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0x9E37_79B9, |d| d.as_nanos() as u64) | 1
    ));
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}
