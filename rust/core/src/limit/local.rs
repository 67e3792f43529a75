//! The embedded store: every quota's state in this process, behind one mutex. Used as the
//! store when no Redis URL is given, and as the fail-open fallback (with a pod's share of
//! each quota) while Redis is unreachable.

use crate::limit::decision::{tighter, Decision, ReservedPart, Source, WindowMark};
use crate::limit::quota::QuotaSpec;
use crate::limit::state::{Check, QuotaState};
use rustc_hash::FxHashMap as HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub struct LocalStore {
    states: Mutex<HashMap<String, QuotaState>>,
    epoch: Instant,
    share: f64,
    source: Source,
}

impl LocalStore {
    /// The embedded store holding whole quotas.
    pub fn new() -> Self {
        Self::with_share(1.0, Source::Local)
    }

    /// A store holding `share` (0 < share ≤ 1) of every quota.
    pub fn with_share(share: f64, source: Source) -> Self {
        LocalStore { states: Mutex::new(HashMap::default()), epoch: Instant::now(), share, source }
    }

    #[inline]
    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    #[inline]
    fn lock(&self) -> MutexGuard<'_, HashMap<String, QuotaState>> {
        // A panic while holding the lock leaves plain numbers behind, never a broken
        // invariant worth refusing service over.
        self.states.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reserve on every quota or on none.
    pub fn try_acquire(&self, quotas: &[&Arc<QuotaSpec>], requests: u64, tokens: u64) -> Decision {
        let now = self.now();
        let mut states = self.lock();
        self.try_acquire_at(&mut states, quotas, requests, tokens, now)
    }

    fn try_acquire_at(
        &self,
        states: &mut HashMap<String, QuotaState>,
        quotas: &[&Arc<QuotaSpec>],
        requests: u64,
        tokens: u64,
        now: f64,
    ) -> Decision {
        let (req, tok, share) = (requests as f64, tokens as f64, self.share);
        if let [quota] = quotas {
            // One quota (the common case): check and take on one lookup.
            let state = state_for(states, quota, now, share);
            return match check(state, quota, req, tok, now, share) {
                Check::Wait(wait) => Decision::denied(wait, Arc::clone(quota), self.source),
                Check::Room { remaining_requests: r, remaining_tokens: t } => {
                    let mark = take(state, quota, req, tok, now);
                    let parts = vec![ReservedPart { quota: Arc::clone(quota), mark }];
                    Decision::admitted(parts, tighter(None, r), tighter(None, t), requests, tokens, self.source)
                }
            };
        }
        let mut remaining_requests = None;
        let mut remaining_tokens = None;
        let mut refusal: Option<(f64, &Arc<QuotaSpec>)> = None;
        for quota in quotas {
            let state = state_for(states, quota, now, share);
            match check(state, quota, req, tok, now, share) {
                Check::Room { remaining_requests: r, remaining_tokens: t } => {
                    remaining_requests = tighter(remaining_requests, r);
                    remaining_tokens = tighter(remaining_tokens, t);
                }
                Check::Wait(wait) => {
                    if refusal.is_none_or(|(w, _)| wait > w) {
                        refusal = Some((wait, quota));
                    }
                }
            }
        }
        if let Some((wait, quota)) = refusal {
            return Decision::denied(wait, Arc::clone(quota), self.source);
        }
        let parts = quotas
            .iter()
            .map(|quota| {
                let state = states.get_mut(quota.name.as_str()).expect("state_for inserted every quota above");
                ReservedPart { quota: Arc::clone(quota), mark: take(state, quota, req, tok, now) }
            })
            .collect();
        Decision::admitted(parts, remaining_requests, remaining_tokens, requests, tokens, self.source)
    }

    /// Change what a reservation holds: positive amounts give back, negative ones charge.
    pub fn adjust(&self, parts: &[ReservedPart], requests: i64, tokens: i64) {
        let now = self.now();
        let mut states = self.lock();
        for part in parts {
            match (states.get_mut(part.quota.name.as_str()), &part.mark) {
                (Some(QuotaState::Bucket(b)), WindowMark::None) => {
                    b.adjust(&part.quota, now, self.share, requests as f64, tokens as f64)
                }
                (Some(QuotaState::Window(w)), WindowMark::Local(seq)) => {
                    w.expire(now);
                    w.adjust(*seq, -(requests as f64), -(tokens as f64))
                }
                // The quota's state was replaced (its algorithm changed): nothing to adjust.
                _ => {}
            }
        }
    }

    /// Clamp a quota to an upstream report: `(remaining, reset_seconds)` per dimension.
    pub fn clamp(&self, quota: &Arc<QuotaSpec>, requests: Option<(f64, f64)>, tokens: Option<(f64, f64)>) {
        let now = self.now();
        let mut states = self.lock();
        match state_for(&mut states, quota, now, self.share) {
            QuotaState::Bucket(b) => {
                b.refill(quota, now, self.share);
                b.clamp(requests.map(|r| r.0 * self.share), tokens.map(|t| t.0 * self.share));
            }
            QuotaState::Window(w) => {
                w.expire(now);
                w.clamp(quota, now, requests, tokens);
            }
        }
    }
}

impl Default for LocalStore {
    fn default() -> Self {
        Self::new()
    }
}

/// Bring a quota's state up to `now` and check it.
#[inline]
fn check(state: &mut QuotaState, quota: &QuotaSpec, req: f64, tok: f64, now: f64, share: f64) -> Check {
    match state {
        QuotaState::Bucket(b) => {
            b.refill(quota, now, share);
            b.check(quota, req, tok, share)
        }
        QuotaState::Window(w) => {
            w.expire(now);
            w.check(quota, req, tok, now, share)
        }
    }
}

/// Take an admission that `check` found room for.
#[inline]
fn take(state: &mut QuotaState, quota: &QuotaSpec, req: f64, tok: f64, now: f64) -> WindowMark {
    match state {
        QuotaState::Bucket(b) => {
            b.take(quota, req, tok);
            WindowMark::None
        }
        QuotaState::Window(w) => WindowMark::Local(w.take(req, tok, now)),
    }
}

#[inline]
fn state_for<'a>(
    states: &'a mut HashMap<String, QuotaState>,
    quota: &QuotaSpec,
    now: f64,
    share: f64,
) -> &'a mut QuotaState {
    // Look up by &str first: the common case allocates nothing.
    if !states.get(quota.name.as_str()).is_some_and(|s| s.matches(quota)) {
        states.insert(quota.name.clone(), QuotaState::new(quota, now, share));
    }
    states.get_mut(quota.name.as_str()).expect("inserted above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limit::quota::{Algorithm, QuotaOptions};
    use proptest::prelude::*;

    fn quota(name: &str, algorithm: Algorithm, rpm: Option<i64>, tpm: Option<i64>, burst: f64) -> Arc<QuotaSpec> {
        let opts = QuotaOptions {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            algorithm,
            burst_seconds: burst,
            ..Default::default()
        };
        Arc::new(QuotaSpec::new(name, &opts).unwrap())
    }

    fn acquire(
        store: &LocalStore,
        states: &mut HashMap<String, QuotaState>,
        qs: &[&Arc<QuotaSpec>],
        r: u64,
        t: u64,
        now: f64,
    ) -> Decision {
        store.try_acquire_at(states, qs, r, t, now)
    }

    #[test]
    fn all_or_nothing_across_quotas() {
        let store = LocalStore::new();
        let mut states = HashMap::default();
        let wide = quota("wide", Algorithm::TokenBucket, Some(600), None, 1.0); // burst 10
        let narrow = quota("narrow", Algorithm::TokenBucket, Some(60), None, 2.0); // burst 2
        for _ in 0..2 {
            assert!(acquire(&store, &mut states, &[&wide, &narrow], 1, 0, 0.0).allowed);
        }
        let refused = acquire(&store, &mut states, &[&wide, &narrow], 1, 0, 0.0);
        assert!(!refused.allowed);
        assert_eq!(refused.limited_by.unwrap().name, "narrow");
        assert!((refused.retry_after.as_secs_f64() - 1.0).abs() < 1e-9);
        // The refusal took nothing from the wide quota: 8 of its 10 are still there.
        let d = acquire(&store, &mut states, &[&wide], 8, 0, 0.0);
        assert!(d.allowed);
        assert_eq!(d.remaining_requests, Some(0));
    }

    #[test]
    fn settle_refunds_and_charges_tokens() {
        let store = LocalStore::new();
        let q = quota("t", Algorithm::TokenBucket, None, Some(60_000), 1.0); // 1000 tokens burst
        let d = store.try_acquire(&[&q], 1, 800);
        assert_eq!(d.remaining_tokens, Some(200));
        store.adjust(&d.reservation.unwrap().parts, 0, 500); // used 300 of 800
        let d = store.try_acquire(&[&q], 1, 700);
        assert!(d.allowed, "the refund made room");
        assert!(d.remaining_tokens.unwrap() < 100, "{:?}", d.remaining_tokens);
        store.adjust(&d.reservation.unwrap().parts, 0, -400); // used 1,100 of 700
        assert!(!store.try_acquire(&[&q], 1, 100).allowed, "the overrun was charged");
    }

    #[test]
    fn sliding_window_is_exact_and_settles() {
        let store = LocalStore::new();
        let mut states = HashMap::default();
        let q = quota("sw", Algorithm::SlidingWindow, Some(3), Some(100), 1.0);
        let first = acquire(&store, &mut states, &[&q], 1, 50, 0.0);
        assert!(first.allowed);
        assert!(acquire(&store, &mut states, &[&q], 1, 50, 10.0).allowed);
        let refused = acquire(&store, &mut states, &[&q], 1, 10, 20.0);
        assert!(!refused.allowed, "tokens are spent");
        assert!((refused.retry_after.as_secs_f64() - 40.0).abs() < 1e-9, "the first entry leaves at t=60");
        // Settle the first admission at 20 of 50 tokens: now there is room.
        let WindowMark::Local(seq) = first.reservation.unwrap().parts[0].mark else { panic!() };
        if let Some(QuotaState::Window(w)) = states.get_mut("sw") {
            w.adjust(seq, 0.0, -30.0);
        }
        assert!(acquire(&store, &mut states, &[&q], 1, 30, 20.0).allowed);
        assert!(!acquire(&store, &mut states, &[&q], 1, 0, 20.0).allowed, "three requests in the window");
        assert!(acquire(&store, &mut states, &[&q], 1, 0, 60.0).allowed, "the first left the window");
    }

    #[derive(Debug, Clone)]
    struct Step {
        dt: f64,
        requests: u64,
        tokens: u64,
        settle_to: Option<u64>,
    }

    fn steps() -> impl Strategy<Value = Vec<Step>> {
        prop::collection::vec(
            (0.0f64..3.0, 0u64..3, 0u64..400, prop::option::of(0u64..400))
                .prop_map(|(dt, requests, tokens, settle_to)| Step { dt, requests, tokens, settle_to }),
            1..300,
        )
    }

    proptest! {
        /// Whatever the arrival pattern, a token bucket never admits more than rate × time +
        /// burst, counting settled (actual) tokens.
        #[test]
        fn token_bucket_never_exceeds_allowance(steps in steps(), rpm in 1i64..600, tpm in 400i64..30_000, burst in 0.5f64..10.0) {
            let store = LocalStore::new();
            let mut states = HashMap::default();
            let q = quota("q", Algorithm::TokenBucket, Some(rpm), Some(tpm), burst);
            let (rd, td) = (q.requests.unwrap(), q.tokens.unwrap());
            let (mut now, mut admitted_r, mut admitted_t) = (0.0, 0u64, 0u64);
            for s in &steps {
                now += s.dt;
                if q.check_cost(s.requests, s.tokens).is_err() { continue; }
                let d = acquire(&store, &mut states, &[&q], s.requests, s.tokens, now);
                if d.allowed {
                    admitted_r += s.requests;
                    let actual = s.settle_to.map_or(s.tokens, |a| a.min(s.tokens));
                    admitted_t += actual;
                    if let Some(QuotaState::Bucket(b)) = states.get_mut("q") {
                        b.adjust(&q, now, 1.0, 0.0, (s.tokens - actual) as f64);
                    }
                } else {
                    prop_assert!(d.retry_after.as_secs_f64() > 0.0);
                }
                prop_assert!(admitted_r as f64 <= rd.rate() * now + rd.capacity as f64 + 1e-6);
                prop_assert!(admitted_t as f64 <= td.rate() * now + td.capacity as f64 + 1e-6);
            }
        }

        /// A sliding window never holds more than its limit in any 60-second window.
        #[test]
        fn sliding_window_never_exceeds_limit(steps in steps(), rpm in 1i64..20, tpm in 400i64..2_000) {
            let store = LocalStore::new();
            let mut states = HashMap::default();
            let q = quota("q", Algorithm::SlidingWindow, Some(rpm), Some(tpm), 1.0);
            let mut now = 0.0;
            let mut log: Vec<(f64, u64, u64)> = Vec::new();
            for s in &steps {
                now += s.dt * 10.0;
                if q.check_cost(s.requests, s.tokens).is_err() { continue; }
                if acquire(&store, &mut states, &[&q], s.requests, s.tokens, now).allowed {
                    log.push((now, s.requests, s.tokens));
                }
                let (r, t) = log.iter().filter(|e| e.0 > now - 60.0).fold((0, 0), |a, e| (a.0 + e.1, a.1 + e.2));
                prop_assert!(r <= rpm as u64 && t <= tpm as u64, "window holds {r} requests, {t} tokens");
            }
        }

        /// Waiting exactly `retry_after` is enough: a refused request fits then.
        #[test]
        fn retry_after_is_sufficient(steps in steps(), sliding in any::<bool>()) {
            let store = LocalStore::new();
            let mut states = HashMap::default();
            let algorithm = if sliding { Algorithm::SlidingWindow } else { Algorithm::TokenBucket };
            let q = quota("q", algorithm, Some(120), Some(6_000), 1.0);
            let mut now = 0.0;
            for s in &steps {
                now += s.dt;
                let cost = s.tokens.min(q.tokens.unwrap().capacity);
                let d = acquire(&store, &mut states, &[&q], 1, cost, now);
                if !d.allowed {
                    let later = now + d.retry_after.as_secs_f64() + 1e-6;
                    prop_assert!(acquire(&store, &mut states, &[&q], 1, cost, later).allowed);
                    now = later;
                }
            }
        }
    }
}
