//! `fleetgate.Limiter`, `fleetgate.Decision` and `fleetgate.Reservation`.

use crate::completions::Outcome;
use crate::error::{ConfigError, IntoPyResult, Raised};
use crate::quota::Quota;
use crate::runtime::{block_on, runtime};
use fleetgate_core::headers::RateLimitReport;
use fleetgate_core::limit::quota::check_amount;
use fleetgate_core::store::redact;
use fleetgate_core::{self as core, FailurePolicy, LimiterOptions, QuotaSpec, RedisStore, Source};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyMapping;
use std::sync::Arc;
use std::time::Duration;

#[pyclass(frozen, module = "fleetgate", name = "Decision")]
pub struct Decision {
    inner: core::Decision,
}

impl From<core::Decision> for Decision {
    fn from(inner: core::Decision) -> Self {
        Decision { inner }
    }
}

impl Decision {
    pub fn reservation_arc(&self) -> Option<Arc<core::Reservation>> {
        self.inner.reservation.clone()
    }
}

#[pymethods]
impl Decision {
    #[getter]
    fn allowed(&self) -> bool {
        self.inner.allowed
    }

    /// Seconds until the request could be admitted (0.0 when allowed).
    #[getter]
    fn retry_after(&self) -> f64 {
        self.inner.retry_after.as_secs_f64()
    }

    #[getter]
    fn remaining_requests(&self) -> Option<u64> {
        self.inner.remaining_requests
    }

    #[getter]
    fn remaining_tokens(&self) -> Option<u64> {
        self.inner.remaining_tokens
    }

    /// The name of the quota that refused, or None.
    #[getter]
    fn limited_by(&self) -> Option<&str> {
        self.inner.limited_by.as_deref().map(|q| q.name.as_str())
    }

    /// "local" (embedded store), "redis" (shared) or "fallback" (this pod's share while
    /// Redis is unreachable).
    #[getter]
    fn source(&self) -> &'static str {
        self.inner.source.as_str()
    }

    /// True when decided on the fail-open fallback instead of the shared store.
    #[getter]
    fn degraded(&self) -> bool {
        self.inner.source == Source::Fallback
    }

    #[getter]
    fn reservation(&self) -> Option<Reservation> {
        self.inner.reservation.clone().map(|inner| Reservation { inner })
    }

    fn __bool__(&self) -> bool {
        self.inner.allowed
    }

    fn __repr__(&self) -> String {
        if self.inner.allowed {
            let show = |v: Option<u64>| v.map_or_else(|| "None".to_owned(), |v| v.to_string());
            format!(
                "Decision(allowed=True, remaining_requests={}, remaining_tokens={}, source={:?})",
                show(self.inner.remaining_requests),
                show(self.inner.remaining_tokens),
                self.inner.source.as_str()
            )
        } else {
            format!(
                "Decision(allowed=False, retry_after={:.3}, limited_by={:?}, source={:?})",
                self.retry_after(),
                self.limited_by().unwrap_or(""),
                self.inner.source.as_str()
            )
        }
    }
}

#[pyclass(frozen, module = "fleetgate", name = "Reservation")]
pub struct Reservation {
    inner: Arc<core::Reservation>,
}

#[pymethods]
impl Reservation {
    #[getter]
    fn requests(&self) -> u64 {
        self.inner.requests
    }

    /// The tokens reserved (the estimate), before settling.
    #[getter]
    fn tokens(&self) -> u64 {
        self.inner.tokens
    }

    #[getter]
    fn quotas(&self) -> Vec<String> {
        self.inner.parts.iter().map(|p| p.quota.name.clone()).collect()
    }

    #[getter]
    fn source(&self) -> &'static str {
        self.inner.source.as_str()
    }

    #[getter]
    fn settled(&self) -> bool {
        self.inner.is_settled()
    }

    fn __repr__(&self) -> String {
        format!(
            "Reservation(quotas={:?}, requests={}, tokens={}, settled={})",
            self.quotas(),
            self.inner.requests,
            self.inner.tokens,
            if self.inner.is_settled() { "True" } else { "False" }
        )
    }
}

#[pyclass(frozen, module = "fleetgate", name = "Limiter")]
pub struct Limiter {
    pub(crate) inner: Arc<core::Limiter>,
    store: Option<String>,
}

/// Run `f` on the quotas given as one `Quota` or a sequence of them, borrowing their specs.
#[inline]
fn with_quotas<R>(quotas: &Bound<'_, PyAny>, f: impl FnOnce(&[&Arc<QuotaSpec>]) -> R) -> PyResult<R> {
    if let Ok(one) = quotas.cast::<Quota>() {
        return Ok(f(std::slice::from_ref(&&one.get().spec)));
    }
    let held = quota_list(quotas)?;
    let refs: Vec<&Arc<QuotaSpec>> = held.iter().map(|q| &q.get().spec).collect();
    Ok(f(&refs))
}

fn quota_list<'py>(quotas: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, Quota>>> {
    let not_quotas = || {
        PyTypeError::new_err(format!(
            "quotas must be a Quota or a sequence of Quota, got {}",
            quotas.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    };
    if quotas.is_instance_of::<pyo3::types::PyString>() {
        return Err(not_quotas());
    }
    quotas
        .try_iter()
        .map_err(|_| not_quotas())?
        .map(|item| item.and_then(|q| q.cast_into::<Quota>().map_err(|_| not_quotas())))
        .collect()
}

fn owned_quotas(quotas: &Bound<'_, PyAny>) -> PyResult<Vec<Arc<QuotaSpec>>> {
    with_quotas(quotas, |qs| qs.iter().map(|q| Arc::clone(q)).collect())
}

/// The cost arguments, checked.
#[inline]
fn amounts(requests: i64, tokens: i64) -> PyResult<(u64, u64)> {
    Ok((check_amount("requests", requests).py_err()?, check_amount("tokens", tokens).py_err()?))
}

/// An async method's coroutine: arguments were checked at the call; the operation starts
/// when the coroutine is first awaited, on the running loop (`fleetgate._aio`).
fn submit<'py>(
    py: Python<'py>,
    limiter: &Arc<core::Limiter>,
    task: impl std::future::Future<Output = Outcome> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    crate::completions::submit(py, Some(limiter), task)
}

fn decided(result: core::Result<core::Decision>) -> Outcome {
    result.map_or_else(Outcome::Failed, Outcome::Decision)
}

fn done(result: core::Result<()>) -> Outcome {
    result.map_or_else(Outcome::Failed, |()| Outcome::Done)
}

fn seconds(name: &str, value: Option<f64>) -> PyResult<Option<Duration>> {
    match value {
        None => Ok(None),
        Some(s) if (0.0..=86_400.0 * 366.0).contains(&s) => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(ConfigError::new_err(format!("{name} must be a number of seconds from 0 to a year, got {s}"))),
    }
}

fn report_from(headers: &Bound<'_, PyAny>) -> PyResult<RateLimitReport> {
    let items = if let Ok(mapping) = headers.cast::<PyMapping>() {
        mapping.items()?.into_any()
    } else if headers.hasattr("items")? {
        headers.call_method0("items")?
    } else {
        return Err(PyTypeError::new_err(
            "headers must be a mapping of header names to values (a dict or httpx Headers)",
        ));
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    for item in items.try_iter()? {
        let (name, value): (String, String) = item?.extract()?;
        pairs.push((name, value));
    }
    RateLimitReport::from_headers(pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))).py_err()
}

impl Limiter {
    /// The pod's Redis handle, for the components that share state with the fleet; `None`
    /// for an embedded limiter.
    pub(crate) fn shared_store(&self) -> Option<Arc<RedisStore>> {
        self.inner.shared_store().cloned()
    }

    /// One decision, synchronously: in process for the embedded store, otherwise a Redis
    /// round trip with the GIL released.
    #[inline]
    fn decide(
        &self,
        py: Python<'_>,
        quotas: &Bound<'_, PyAny>,
        requests: u64,
        tokens: u64,
    ) -> PyResult<core::Decision> {
        if self.inner.is_embedded() {
            return with_quotas(quotas, |qs| self.inner.try_acquire_embedded(qs, requests, tokens))?
                .expect("embedded limiter")
                .py_err();
        }
        let quotas = owned_quotas(quotas)?;
        let limiter = &self.inner;
        // A standalone Redis answers on this thread; a cluster goes through the runtime.
        if let Some(decided) = py.detach(|| limiter.try_acquire_blocking(&quotas, requests, tokens)) {
            return decided.py_err();
        }
        block_on(py, limiter.try_acquire(&quotas, requests, tokens)).py_err()
    }
}

#[pymethods]
impl Limiter {
    #[new]
    #[pyo3(signature = (store=None, *, failure_policy="fail_open", local_share=0.1, timeout=0.25, connect_timeout=0.5, recheck_after=0.5, lease_seconds=0.0))]
    fn new(
        store: Option<&str>,
        failure_policy: &str,
        local_share: f64,
        timeout: f64,
        connect_timeout: f64,
        recheck_after: f64,
        lease_seconds: f64,
    ) -> PyResult<Self> {
        let options = LimiterOptions {
            failure_policy: FailurePolicy::parse(failure_policy).py_err()?,
            local_share,
            timeout: seconds("timeout", Some(timeout))?.unwrap_or_default(),
            connect_timeout: seconds("connect_timeout", Some(connect_timeout))?.unwrap_or_default(),
            recheck_after: seconds("recheck_after", Some(recheck_after))?.unwrap_or_default(),
            lease_seconds,
            runtime: (lease_seconds > 0.0).then(|| runtime().handle().clone()),
        };
        let inner = core::Limiter::new(store, options).py_err()?;
        Ok(Limiter { inner: Arc::new(inner), store: store.map(redact) })
    }

    /// The store URL (password hidden), or None for the embedded store.
    #[getter]
    fn store(&self) -> Option<&str> {
        self.store.as_deref()
    }

    #[getter]
    fn failure_policy(&self) -> &'static str {
        self.inner.options().failure_policy.as_str()
    }

    /// True while Redis is unreachable and decisions follow the failure policy.
    #[getter]
    fn degraded(&self) -> bool {
        self.inner.is_degraded()
    }

    /// `(leases granted, admissions served from a lease)` since this limiter was made.
    #[getter]
    fn lease_counts(&self) -> (u64, u64) {
        self.inner.lease_counts()
    }

    /// `(requests, tokens)` of the quota's room this process holds in its lease (tokens
    /// below zero: charged beyond the lease, owed to the store).
    fn leased(&self, quota: &Quota) -> (i64, i64) {
        self.inner.leased(&quota.spec)
    }

    /// How many shared-store operations have failed since this limiter was made.
    #[getter]
    fn store_errors(&self) -> u64 {
        self.inner.store_errors()
    }

    /// Reserve on every quota given, or on none, without waiting.
    #[pyo3(signature = (quotas, requests=1, tokens=0))]
    fn try_acquire(&self, py: Python<'_>, quotas: &Bound<'_, PyAny>, requests: i64, tokens: i64) -> PyResult<Decision> {
        let (requests, tokens) = amounts(requests, tokens)?;
        Ok(Decision { inner: self.decide(py, quotas, requests, tokens)? })
    }

    #[pyo3(signature = (quotas, requests=1, tokens=0))]
    fn try_acquire_async<'py>(
        &self,
        py: Python<'py>,
        quotas: &Bound<'py, PyAny>,
        requests: i64,
        tokens: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (requests, tokens) = amounts(requests, tokens)?;
        let quotas = owned_quotas(quotas)?;
        let limiter = Arc::clone(&self.inner);
        submit(py, &self.inner, async move { decided(limiter.try_acquire(&quotas, requests, tokens).await) })
    }

    /// Wait until admitted (sleeping exactly as long as needed), or raise RateLimited when
    /// admission cannot come within `timeout` seconds.
    #[pyo3(signature = (quotas, requests=1, tokens=0, timeout=None))]
    fn acquire(
        &self,
        py: Python<'_>,
        quotas: &Bound<'_, PyAny>,
        requests: i64,
        tokens: i64,
        timeout: Option<f64>,
    ) -> PyResult<Decision> {
        let (requests, tokens) = amounts(requests, tokens)?;
        let timeout = seconds("timeout", timeout)?;
        let quotas = owned_quotas(quotas)?;
        let limiter = &self.inner;
        let decision = py.detach(|| {
            limiter.acquire_blocking(&quotas, requests, tokens, timeout, runtime().handle(), |wait| {
                std::thread::sleep(wait);
                Python::attach(|py| py.check_signals()).map_err(Raised)
            })
        });
        Ok(Decision { inner: decision.map_err(|Raised(e)| e)? })
    }

    #[pyo3(signature = (quotas, requests=1, tokens=0, timeout=None))]
    fn acquire_async<'py>(
        &self,
        py: Python<'py>,
        quotas: &Bound<'py, PyAny>,
        requests: i64,
        tokens: i64,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (requests, tokens) = amounts(requests, tokens)?;
        let timeout = seconds("timeout", timeout)?;
        let quotas = owned_quotas(quotas)?;
        let limiter = Arc::clone(&self.inner);
        submit(py, &self.inner, async move { decided(limiter.acquire(&quotas, requests, tokens, timeout).await) })
    }

    /// Settle a reservation with the tokens really used: the difference from the estimate
    /// is given back (or charged).
    fn settle(&self, py: Python<'_>, reservation: &Reservation, tokens: i64) -> PyResult<()> {
        let tokens = check_amount("tokens", tokens).py_err()?;
        if let Some(done) = self.inner.settle_local(&reservation.inner, tokens) {
            return done.py_err();
        }
        let (limiter, reservation) = (&self.inner, &reservation.inner);
        block_on(py, limiter.settle(reservation, tokens)).py_err()
    }

    fn settle_async<'py>(
        &self,
        py: Python<'py>,
        reservation: &Reservation,
        tokens: i64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let tokens = check_amount("tokens", tokens).py_err()?;
        let (limiter, reservation) = (Arc::clone(&self.inner), Arc::clone(&reservation.inner));
        submit(py, &self.inner, async move { done(limiter.settle(&reservation, tokens).await) })
    }

    /// Settle without waiting: the embedded store settles in place; a shared store settles
    /// on the I/O runtime in the background (a failure counts in `store_errors`). For the
    /// request path, where the caller should not wait for bookkeeping.
    fn settle_later(&self, reservation: &Reservation, tokens: i64) -> PyResult<()> {
        let tokens = check_amount("tokens", tokens).py_err()?;
        if let Some(done) = self.inner.settle_local(&reservation.inner, tokens) {
            return done.py_err();
        }
        // Claimed now, so a second settle fails here and not silently in the background.
        self.inner.claim_shared(&reservation.inner).py_err()?;
        let (limiter, reservation) = (Arc::clone(&self.inner), Arc::clone(&reservation.inner));
        runtime().spawn(async move {
            // Counted in store_errors by the core; nobody is waiting to be told.
            let _ = limiter.apply_settlement(&reservation, tokens).await;
        });
        Ok(())
    }

    /// `sync_from_headers` without waiting (see `settle_later`).
    fn sync_from_headers_later(&self, quota: &Quota, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let report = report_from(headers)?;
        // Most reports show more room than the quota's burst: nothing to lower, no task.
        if !quota.spec.could_be_lowered_by(&report) || self.inner.sync_embedded(&quota.spec, &report).is_some() {
            return Ok(());
        }
        self.inner.forfeit_lease(&quota.spec);
        let (limiter, spec) = (Arc::clone(&self.inner), Arc::clone(&quota.spec));
        runtime().spawn(async move {
            // A failure suspends Redis like any other; the next header report tries again.
            let _ = limiter.sync(&spec, &report).await;
        });
        Ok(())
    }

    /// Lower the quota's shared view to what OpenAI's x-ratelimit-* headers report, so
    /// the fleet never claims more room than upstream has.
    fn sync_from_headers(&self, py: Python<'_>, quota: &Quota, headers: &Bound<'_, PyAny>) -> PyResult<()> {
        let report = report_from(headers)?;
        if self.inner.sync_embedded(&quota.spec, &report).is_some() {
            return Ok(());
        }
        let (limiter, spec) = (&self.inner, &quota.spec);
        block_on(py, limiter.sync(spec, &report)).py_err()
    }

    fn sync_from_headers_async<'py>(
        &self,
        py: Python<'py>,
        quota: &Quota,
        headers: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let report = report_from(headers)?;
        let (limiter, spec) = (Arc::clone(&self.inner), Arc::clone(&quota.spec));
        submit(py, &self.inner, async move { done(limiter.sync(&spec, &report).await) })
    }

    /// Check that the store answers; raises StoreUnavailable if not.
    fn ping(&self, py: Python<'_>) -> PyResult<()> {
        let limiter = &self.inner;
        block_on(py, limiter.ping()).py_err()
    }

    fn ping_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let limiter = Arc::clone(&self.inner);
        submit(py, &self.inner, async move { done(limiter.ping().await) })
    }

    fn __repr__(&self) -> String {
        match &self.store {
            None => "Limiter(store=None)".to_owned(),
            Some(url) => format!("Limiter({url:?}, failure_policy={:?})", self.failure_policy()),
        }
    }
}
