//! `fleetgate.Budget`, `fleetgate.Ledger` and what they answer: dollar budgets per day or
//! month, reserved before a call and settled after it (see `fleetgate_core::budget::ledger`).

use crate::completions::{submit, Outcome};
use crate::error::{ConfigError, IntoPyResult};
use crate::limiter::Limiter;
use crate::logger::log_warning;
use crate::runtime::{block_on, runtime};
use fleetgate_core::budget::ledger::{self as core, Alert, MAX_LEASE};
use fleetgate_core::budget::{parse_time_zone, BudgetSpec, Period, DEFAULT_ALERTS};
use fleetgate_core::{self as fg};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `(budget, threshold, spent, limit, period)`, as `on_alert` receives it.
type AlertTuple = (String, f64, f64, f64, String);
/// `(day, model, feature, user, team, dollars)`.
type SpendTuple = (String, String, String, String, String, f64);

/// A dollar budget: at most `limit` dollars per day or month in a time zone.
#[pyclass(frozen, module = "fleetgate", name = "Budget")]
pub struct Budget {
    spec: Arc<BudgetSpec>,
}

#[pymethods]
impl Budget {
    // The text signature spells out `DEFAULT_ALERTS` for `inspect` and the stubs.
    #[new]
    #[pyo3(signature = (name, limit, period="day", timezone="UTC", alerts=DEFAULT_ALERTS.to_vec()),
           text_signature = "(name, limit, period='day', timezone='UTC', alerts=(0.5, 0.75, 0.9, 1.0))")]
    fn new(name: &str, limit: f64, period: &str, timezone: &str, alerts: Vec<f64>) -> PyResult<Self> {
        let spec = BudgetSpec::new(name, limit, Period::parse(period).py_err()?, timezone, &alerts).py_err()?;
        Ok(Budget { spec: Arc::new(spec) })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.spec.name
    }

    /// The limit in dollars per period.
    #[getter]
    fn limit(&self) -> f64 {
        self.spec.limit()
    }

    /// "day" or "month".
    #[getter]
    fn period(&self) -> &'static str {
        self.spec.period.as_str()
    }

    /// The IANA time zone the periods follow.
    #[getter]
    fn timezone(&self) -> &'static str {
        self.spec.tz.name()
    }

    /// The alert thresholds, as shares of the limit, ascending.
    #[getter]
    fn alerts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.spec.alerts.iter().map(|&p| f64::from(p) / 100.0))
    }

    /// The period containing `now` (Unix seconds; default: the current time):
    /// `(period id, starts_at, resets_at)`.
    #[pyo3(signature = (now=None))]
    fn window(&self, now: Option<f64>) -> PyResult<(String, f64, f64)> {
        let w = self.spec.window(now.unwrap_or_else(unix_now)).py_err()?;
        Ok((w.id.clone(), w.starts_at, w.resets_at))
    }

    fn __repr__(&self) -> String {
        format!(
            "Budget({:?}, limit={:?}, period={:?}, timezone={:?})",
            self.spec.name,
            self.spec.limit(),
            self.spec.period.as_str(),
            self.spec.tz.name()
        )
    }
}

/// What a reservation holds; settle or release it once, with the ledger that made it.
#[pyclass(frozen, module = "fleetgate", name = "BudgetReservation")]
pub struct BudgetReservation {
    inner: Arc<fg::BudgetReservation>,
    ledger: Arc<core::Ledger>,
}

/// A reservation handed to asyncio, and the ledger to give it back to if nobody awaits it.
pub struct Held {
    pub ledger: Arc<core::Ledger>,
    pub reservation: Arc<fg::BudgetReservation>,
}

impl From<Held> for BudgetReservation {
    fn from(held: Held) -> Self {
        BudgetReservation { inner: held.reservation, ledger: held.ledger }
    }
}

impl BudgetReservation {
    /// Give back a reservation nobody is left to use (its awaiting coroutine was cancelled).
    pub fn release_orphan(&self) {
        release_orphan(Held { ledger: Arc::clone(&self.ledger), reservation: Arc::clone(&self.inner) });
    }
}

/// Give back a reservation nobody is left to use; a failure is logged (it lapses after its
/// lease instead).
pub fn release_orphan(held: Held) {
    if let Some(done) = held.ledger.release_embedded(&held.reservation) {
        if let Err(e) = done {
            log_warning(&format!("could not give back an abandoned budget reservation ({e})"));
        }
        return;
    }
    runtime().spawn(async move {
        if let Err(e) = held.ledger.release(&held.reservation).await {
            log_warning(&format!(
                "could not give back an abandoned budget reservation ({e}); it lapses after its lease"
            ));
        }
    });
}

#[pymethods]
impl BudgetReservation {
    /// The dollars held on each budget.
    #[getter]
    fn dollars(&self) -> f64 {
        self.inner.dollars()
    }

    /// The budgets' names.
    #[getter]
    fn budgets<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.parts.iter().map(|p| p.budget.name.as_str()))
    }

    /// The id of each budget's period it was made in ("2026-03-29" or "2026-03").
    #[getter]
    fn period<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.parts.iter().map(|p| p.window.id.as_str()))
    }

    fn __repr__(&self) -> String {
        let names: Vec<&str> = self.inner.parts.iter().map(|p| p.budget.name.as_str()).collect();
        format!("BudgetReservation(budgets={names:?}, dollars={:?})", self.inner.dollars())
    }
}

/// Where a budget stands in its current period, in dollars.
#[pyclass(frozen, module = "fleetgate", name = "BudgetStatus")]
pub struct BudgetStatus {
    #[pyo3(get)]
    period: String,
    #[pyo3(get)]
    spent: f64,
    #[pyo3(get)]
    reserved: f64,
    #[pyo3(get)]
    limit: f64,
    #[pyo3(get)]
    resets_at: f64,
}

#[pymethods]
impl BudgetStatus {
    fn __repr__(&self) -> String {
        format!(
            "BudgetStatus(period={:?}, spent={:?}, reserved={:?}, limit={:?}, resets_at={:?})",
            self.period, self.spent, self.reserved, self.limit, self.resets_at
        )
    }
}

impl From<fg::BudgetStatus> for BudgetStatus {
    fn from(s: fg::BudgetStatus) -> Self {
        BudgetStatus { period: s.period, spent: s.spent, reserved: s.reserved, limit: s.limit, resets_at: s.resets_at }
    }
}

/// Dollar budgets in process (no limiter, or an embedded one) or shared by every pod on the
/// limiter's Redis.
#[pyclass(frozen, module = "fleetgate", name = "Ledger")]
pub struct Ledger {
    inner: Arc<core::Ledger>,
    on_alert: Option<Arc<Py<PyAny>>>,
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn lease_of(lease: f64) -> PyResult<Duration> {
    if lease.is_finite() && lease > 0.0 && lease <= MAX_LEASE.as_secs_f64() {
        Ok(Duration::from_secs_f64(lease))
    } else {
        Err(ConfigError::new_err(format!(
            "lease must be a number of seconds in (0, {}], got {lease}",
            MAX_LEASE.as_secs()
        )))
    }
}

fn timeout_of(timeout: Option<f64>) -> PyResult<Option<Duration>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t > 0.0 && t <= 60.0 => Ok(Some(Duration::from_secs_f64(t))),
        Some(t) => Err(ConfigError::new_err(format!("timeout must be a number of seconds in (0, 60], got {t}"))),
    }
}

fn budget_specs(budgets: &Bound<'_, PyAny>) -> PyResult<Vec<Arc<BudgetSpec>>> {
    let not_budgets = || {
        PyTypeError::new_err(format!(
            "budgets must be a sequence of Budget, got {}",
            budgets.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    };
    if budgets.is_instance_of::<PyString>() || budgets.is_instance_of::<Budget>() {
        return Err(not_budgets());
    }
    budgets
        .try_iter()
        .map_err(|_| not_budgets())?
        .map(|item| item.and_then(|b| Ok(Arc::clone(&b.cast::<Budget>().map_err(|_| not_budgets())?.get().spec))))
        .collect()
}

fn alert_tuple(a: &Alert) -> AlertTuple {
    (a.budget.clone(), a.threshold, a.spent, a.limit, a.period.clone())
}

/// Hand alerts to `on_alert`; its errors go to `sys.unraisablehook` (the settlement itself
/// went through, and the caller may be a background task).
fn deliver(py: Python<'_>, on_alert: Option<&Py<PyAny>>, alerts: &[Alert]) {
    let Some(callback) = on_alert else { return };
    for alert in alerts {
        if let Err(e) = callback.call1(py, alert_tuple(alert)) {
            e.write_unraisable(py, Some(callback.bind(py)));
        }
    }
}

/// `deliver` from a thread that does not hold the GIL (only when there is something to say).
fn deliver_detached(on_alert: Option<&Arc<Py<PyAny>>>, alerts: &[Alert]) {
    if let (Some(callback), false) = (on_alert, alerts.is_empty()) {
        Python::attach(|py| deliver(py, Some(callback), alerts));
    }
}

/// Reserve on the shared ledger, waiting at most `timeout` (None: as long as the store's own
/// timeouts allow). When no answer comes in time the reservation goes on in the background
/// and is given back if it is made, so a slow store counts as down and holds nothing.
async fn reserve_within(
    ledger: Arc<core::Ledger>,
    budgets: Vec<Arc<BudgetSpec>>,
    dollars: f64,
    lease: Duration,
    now: f64,
    timeout: Option<Duration>,
) -> fg::Result<fg::BudgetReservation> {
    let Some(limit) = timeout else { return ledger.reserve(&budgets, dollars, lease, now).await };
    let mut task = {
        let ledger = Arc::clone(&ledger);
        runtime().spawn(async move { ledger.reserve(&budgets, dollars, lease, now).await })
    };
    match tokio::time::timeout(limit, &mut task).await {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => Err(fg::Error::StoreUnavailable(format!("budget-reserve: {e}"))),
        Err(_) => {
            runtime().spawn(async move {
                if let Ok(Ok(late)) = task.await {
                    release_orphan(Held { ledger, reservation: Arc::new(late) });
                }
            });
            Err(fg::Error::StoreUnavailable(format!("budget-reserve: no answer within {:.3}s", limit.as_secs_f64())))
        }
    }
}

/// The labels a cost is recorded under; `None` when it is not recorded.
fn labels(record: bool, model: &str, feature: &str, user: &str, team: &str) -> Option<fg::SpendLabels> {
    record.then(|| fg::SpendLabels {
        model: model.to_owned(),
        feature: feature.to_owned(),
        user: user.to_owned(),
        team: team.to_owned(),
    })
}

impl Ledger {
    fn callback(&self) -> Option<&Py<PyAny>> {
        self.on_alert.as_deref()
    }

    fn alerts(&self, py: Python<'_>, alerts: Vec<Alert>) -> Vec<AlertTuple> {
        deliver(py, self.callback(), &alerts);
        alerts.iter().map(alert_tuple).collect()
    }
}

#[pymethods]
impl Ledger {
    /// `on_alert(budget, threshold, spent, limit, period)` is called for every alert, from
    /// whichever thread settles.
    #[new]
    #[pyo3(signature = (limiter=None, *, report_timezone="UTC", on_alert=None))]
    fn new(limiter: Option<&Limiter>, report_timezone: &str, on_alert: Option<Py<PyAny>>) -> PyResult<Self> {
        let report_tz = parse_time_zone(report_timezone).py_err()?;
        let store = limiter.and_then(Limiter::shared_store);
        Ok(Ledger { inner: Arc::new(core::Ledger::new(store, report_tz)), on_alert: on_alert.map(Arc::new) })
    }

    /// True when the budgets live in this process only.
    #[getter]
    fn embedded(&self) -> bool {
        self.inner.is_embedded()
    }

    /// Hold `dollars` on every budget, or on none (raises BudgetExceeded naming the one that
    /// refused). The holds lapse after `lease` seconds unless settled or released. A shared
    /// ledger that has not answered within `timeout` seconds raises StoreUnavailable.
    #[pyo3(signature = (budgets, dollars, *, lease=600.0, now=None, timeout=None))]
    fn reserve(
        &self,
        py: Python<'_>,
        budgets: &Bound<'_, PyAny>,
        dollars: f64,
        lease: f64,
        now: Option<f64>,
        timeout: Option<f64>,
    ) -> PyResult<BudgetReservation> {
        let (budgets, lease, now) = (budget_specs(budgets)?, lease_of(lease)?, now.unwrap_or_else(unix_now));
        let timeout = timeout_of(timeout)?;
        let result = match self.inner.reserve_embedded(&budgets, dollars, lease, now) {
            Some(done) => done,
            None => block_on(py, reserve_within(Arc::clone(&self.inner), budgets, dollars, lease, now, timeout)),
        };
        let reservation = result.py_err()?;
        Ok(BudgetReservation { inner: Arc::new(reservation), ledger: Arc::clone(&self.inner) })
    }

    #[pyo3(signature = (budgets, dollars, *, lease=600.0, now=None, timeout=None))]
    fn reserve_async<'py>(
        &self,
        py: Python<'py>,
        budgets: &Bound<'py, PyAny>,
        dollars: f64,
        lease: f64,
        now: Option<f64>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (budgets, lease, now) = (budget_specs(budgets)?, lease_of(lease)?, now.unwrap_or_else(unix_now));
        let (ledger, timeout) = (Arc::clone(&self.inner), timeout_of(timeout)?);
        submit(py, None, async move {
            match reserve_within(Arc::clone(&ledger), budgets, dollars, lease, now, timeout).await {
                Ok(r) => Outcome::BudgetHeld(Held { ledger, reservation: Arc::new(r) }),
                Err(e) => Outcome::Failed(e),
            }
        })
    }

    /// Settle with what the call really cost: the reservation ends, the cost is added to each
    /// budget and (`record`) to the spend records. Returns the alerts it crossed (also given
    /// to `on_alert`) as `(budget, threshold, spent, limit, period)`.
    #[pyo3(signature = (reservation, dollars, *, model="", feature="", user="", team="", record=true))]
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        py: Python<'_>,
        reservation: &BudgetReservation,
        dollars: f64,
        model: &str,
        feature: &str,
        user: &str,
        team: &str,
        record: bool,
    ) -> PyResult<Vec<AlertTuple>> {
        let labels = labels(record, model, feature, user, team);
        let alerts = match self.inner.settle_embedded(&reservation.inner, dollars, labels.as_ref()) {
            Some(done) => done.py_err()?,
            None => {
                let (ledger, reservation) = (&self.inner, &reservation.inner);
                block_on(py, ledger.settle(reservation, dollars, labels.as_ref())).py_err()?
            }
        };
        Ok(self.alerts(py, alerts))
    }

    /// `settle` without waiting: in place when embedded, else in the background, alerts
    /// going to `on_alert`. A second settle raises here; a Redis failure is logged on the
    /// `fleetgate` logger (the hold then lapses after its lease, and the cost is not counted).
    #[pyo3(signature = (reservation, dollars, *, model="", feature="", user="", team="", record=true))]
    #[allow(clippy::too_many_arguments)]
    fn settle_later(
        &self,
        py: Python<'_>,
        reservation: &BudgetReservation,
        dollars: f64,
        model: &str,
        feature: &str,
        user: &str,
        team: &str,
        record: bool,
    ) -> PyResult<()> {
        let labels = labels(record, model, feature, user, team);
        if let Some(done) = self.inner.settle_embedded(&reservation.inner, dollars, labels.as_ref()) {
            deliver(py, self.callback(), &done.py_err()?);
            return Ok(());
        }
        let settlement = self.inner.claim_settlement(&reservation.inner, dollars, labels.as_ref()).py_err()?;
        let (ledger, reservation, on_alert) =
            (Arc::clone(&self.inner), Arc::clone(&reservation.inner), self.on_alert.clone());
        runtime().spawn(async move {
            match ledger.apply(&reservation, settlement).await {
                Ok(alerts) => deliver_detached(on_alert.as_ref(), &alerts),
                Err(e) => log_warning(&format!(
                    "could not settle a budget reservation of ${} ({e}); its hold lapses after its lease and \
                     this cost is not counted",
                    reservation.dollars()
                )),
            }
        });
        Ok(())
    }

    /// Give the reservation back without spending (the call never reached upstream).
    fn release(&self, py: Python<'_>, reservation: &BudgetReservation) -> PyResult<()> {
        if let Some(done) = self.inner.release_embedded(&reservation.inner) {
            return done.py_err();
        }
        let (ledger, reservation) = (&self.inner, &reservation.inner);
        block_on(py, ledger.release(reservation)).py_err()
    }

    /// `release` without waiting (see `settle_later`).
    fn release_later(&self, reservation: &BudgetReservation) -> PyResult<()> {
        if let Some(done) = self.inner.release_embedded(&reservation.inner) {
            return done.py_err();
        }
        let settlement = self.inner.claim_release(&reservation.inner).py_err()?;
        let (ledger, reservation) = (Arc::clone(&self.inner), Arc::clone(&reservation.inner));
        runtime().spawn(async move {
            if let Err(e) = ledger.apply(&reservation, settlement).await {
                log_warning(&format!(
                    "could not give back a budget reservation of ${} ({e}); it lapses after its lease",
                    reservation.dollars()
                ));
            }
        });
        Ok(())
    }

    /// Where `budget` stands in its period containing `now` (default: the current time).
    #[pyo3(signature = (budget, *, now=None))]
    fn status(&self, py: Python<'_>, budget: &Budget, now: Option<f64>) -> PyResult<BudgetStatus> {
        let now = now.unwrap_or_else(unix_now);
        let status = match self.inner.status_embedded(&budget.spec, now) {
            Some(done) => done,
            None => {
                let (ledger, spec) = (&self.inner, &budget.spec);
                block_on(py, ledger.status(spec, now))
            }
        };
        Ok(status.py_err()?.into())
    }

    /// The spend records of `days` ("YYYY-MM-DD" in the report time zone), as
    /// `(day, model, feature, user, team, dollars)`.
    fn report(&self, py: Python<'_>, days: Vec<String>) -> PyResult<Vec<SpendTuple>> {
        let rows = match self.inner.report_embedded(&days) {
            Some(done) => done,
            None => {
                let ledger = &self.inner;
                block_on(py, ledger.report(&days))
            }
        };
        Ok(rows.py_err()?.into_iter().map(|r| (r.day, r.model, r.feature, r.user, r.team, r.dollars)).collect())
    }

    fn __repr__(&self) -> String {
        format!(
            "Ledger(embedded={}, report_timezone={:?})",
            if self.inner.is_embedded() { "True" } else { "False" },
            self.inner.report_tz().name()
        )
    }
}
