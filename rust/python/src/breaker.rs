//! `fleetgate.Breakers` and `fleetgate.Breaker`: circuit breakers, shared by the fleet
//! when the limiter is.

use crate::error::{ConfigError, IntoPyResult};
use crate::limiter::Limiter;
use crate::runtime::{block_on, runtime};
use fleetgate_core::breaker::fleet::BreakerFleet;
use fleetgate_core::breaker::{self as core, classify, BreakerOptions, Permit, Refused, Transition, Window};
use fleetgate_core::Error;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

/// A registry of circuit breakers with one configuration, created on first use by name.
#[pyclass(frozen, module = "fleetgate")]
pub struct Breakers {
    options: BreakerOptions,
    breakers: Mutex<HashMap<String, Py<Breaker>>>,
    fleet: Option<Arc<BreakerFleet>>,
    on_transition: Option<Py<PyAny>>,
}

/// One circuit breaker.
#[pyclass(frozen, module = "fleetgate")]
pub struct Breaker {
    inner: Arc<core::Breaker>,
    fleet: Option<Arc<BreakerFleet>>,
    on_transition: Option<Py<PyAny>>,
}

fn seconds(name: &str, value: f64) -> PyResult<Duration> {
    if value.is_finite() && value > 0.0 && value <= 86_400.0 {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(ConfigError::new_err(format!("{name} must be a number of seconds in (0, 86400], got {value}")))
    }
}

#[pymethods]
impl Breakers {
    /// Breakers for a fleet (`limiter` on Redis: transitions are shared within
    /// `share_every` seconds) or for this process (`limiter` None or embedded).
    #[new]
    #[pyo3(signature = (limiter=None, *, window=50, window_seconds=None, failure_rate=0.5, slow_rate=1.0,
                        slow_call=30.0, min_calls=10, half_open_probes=3, probe_max_wait=30.0,
                        open_base=5.0, open_max=300.0, jitter=0.2, share_every=0.25, on_transition=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        limiter: Option<&Limiter>,
        window: u32,
        window_seconds: Option<u32>,
        failure_rate: f64,
        slow_rate: f64,
        slow_call: f64,
        min_calls: u32,
        half_open_probes: u32,
        probe_max_wait: f64,
        open_base: f64,
        open_max: f64,
        jitter: f64,
        share_every: f64,
        on_transition: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let options = BreakerOptions {
            window: window_seconds.map_or(Window::Count(window), Window::Time),
            failure_rate,
            slow_rate,
            slow_call: seconds("slow_call", slow_call)?,
            min_calls,
            half_open_probes,
            probe_max_wait: seconds("probe_max_wait", probe_max_wait)?,
            open_base: seconds("open_base", open_base)?,
            open_max: seconds("open_max", open_max)?,
            jitter,
        };
        options.validate().py_err()?;
        let share_every = seconds("share_every", share_every)?;
        let fleet = limiter.and_then(Limiter::shared_store).map(|store| {
            let fleet = Arc::new(BreakerFleet::new(store));
            spawn_poller(Arc::downgrade(&fleet), share_every);
            fleet
        });
        Ok(Breakers { options, breakers: Mutex::new(HashMap::new()), fleet, on_transition })
    }

    /// The breaker called `name` (created closed on first use).
    fn get(&self, py: Python<'_>, name: &str) -> PyResult<Py<Breaker>> {
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = breakers.get(name) {
            return Ok(b.clone_ref(py));
        }
        let inner = Arc::new(core::Breaker::new(name, self.options.clone(), Instant::now()).py_err()?);
        if let Some(fleet) = &self.fleet {
            fleet.register(&inner);
        }
        let on_transition = self.on_transition.as_ref().map(|c| c.clone_ref(py));
        let breaker = Py::new(py, Breaker { inner, fleet: self.fleet.clone(), on_transition })?;
        breakers.insert(name.to_owned(), breaker.clone_ref(py));
        Ok(breaker)
    }

    /// Names and states of every breaker made so far.
    fn states(&self) -> HashMap<String, &'static str> {
        let now = Instant::now();
        let breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers.iter().map(|(n, b)| (n.clone(), b.get().inner.state(now).as_str())).collect()
    }

    /// Whether transitions are shared with the fleet through Redis.
    #[getter]
    fn shared(&self) -> bool {
        self.fleet.is_some()
    }

    /// Read the fleet's breaker records now instead of at the next period (returns how
    /// many were applied). Raises StoreUnavailable if Redis does not answer.
    fn sync_now(&self, py: Python<'_>) -> PyResult<usize> {
        match &self.fleet {
            Some(fleet) => block_on(py, fleet.poll()).py_err(),
            None => Ok(0),
        }
    }
}

/// Read the fleet's records every `period` for as long as the registry lives.
fn spawn_poller(fleet: Weak<BreakerFleet>, period: Duration) {
    runtime().spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(fleet) = fleet.upgrade() else { return };
            // Redis down: every pod decides alone until it answers again.
            let _ = fleet.poll().await;
        }
    });
}

fn refused(name: &str, r: Refused) -> PyErr {
    crate::error::to_py(Error::CircuitOpen {
        breaker: name.to_owned(),
        reason: r.reason.as_str(),
        retry_after: r.retry_after,
    })
}

fn pack(p: Permit) -> u64 {
    (p.probe << 32) | (p.epoch & 0xffff_ffff)
}

fn unpack(permit: u64) -> Permit {
    Permit { probe: permit >> 32, epoch: permit & 0xffff_ffff }
}

#[pymethods]
impl Breaker {
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// "closed", "open", "half_open" or "isolated".
    #[getter]
    fn state(&self) -> &'static str {
        self.inner.state(Instant::now()).as_str()
    }

    /// Consecutive trips so far (each doubles the open period).
    #[getter]
    fn trips(&self) -> u32 {
        self.inner.trips()
    }

    /// Leave for one call: a permit to pass to `record`. Raises CircuitOpen when refused.
    /// A half-open breaker shared with a fleet asks Redis whether this pod probes the round
    /// (one round trip per probe; the other pods refuse until the round's verdict).
    fn allow(&self, py: Python<'_>) -> PyResult<u64> {
        let mut outcome = self.inner.allow(Instant::now());
        if let (Ok(permit), Some(fleet)) = (outcome, &self.fleet) {
            if permit.probe != 0 {
                let (fleet, inner) = (Arc::clone(fleet), Arc::clone(&self.inner));
                outcome = block_on(py, async move { fleet.confirm_probe(&inner, permit).await });
            }
        }
        if self.inner.has_transitions() {
            if let Err(e) = self.publish(py) {
                if let Ok(permit) = outcome {
                    self.inner.return_permit(permit);
                }
                return Err(e);
            }
        }
        let permit = outcome.map_err(|r| refused(self.inner.name(), r))?;
        Ok(pack(permit))
    }

    /// Report how a permitted call went: the HTTP `status` (None when no response came:
    /// a timeout or a connection error), the error's `code`, the latency in seconds (time to
    /// first byte for streams) and, for a 429, upstream's `retry_after` in seconds.
    #[pyo3(signature = (permit, status, code=None, elapsed=0.0, retry_after=0.0))]
    fn record(
        &self,
        py: Python<'_>,
        permit: u64,
        status: Option<u16>,
        code: Option<&str>,
        elapsed: f64,
        retry_after: f64,
    ) -> PyResult<()> {
        let verdict = classify(status, code, Duration::from_secs_f64(retry_after.clamp(0.0, 86_400.0)));
        self.inner.record(
            unpack(permit),
            verdict,
            Duration::from_secs_f64(elapsed.clamp(0.0, 86_400.0)),
            Instant::now(),
        );
        if self.inner.has_transitions() {
            self.publish(py)?;
        }
        Ok(())
    }

    /// Report a call that was cancelled or never made: it says nothing about health.
    fn release(&self, permit: u64) {
        self.inner.return_permit(unpack(permit));
    }

    /// Open until `reset` (this pod and, when shared, the fleet).
    fn isolate(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.isolate(Instant::now());
        self.publish(py)
    }

    /// Close, forgetting trips and pauses (this pod and, when shared, the fleet).
    fn reset(&self, py: Python<'_>) -> PyResult<()> {
        self.inner.reset(Instant::now());
        self.publish(py)
    }

    fn __repr__(&self) -> String {
        format!("Breaker({:?}, state={:?})", self.inner.name(), self.state())
    }
}

impl Breaker {
    /// Hand pending transitions to the callback and (this pod's own) to the fleet.
    fn publish(&self, py: Python<'_>) -> PyResult<()> {
        let transitions = self.inner.take_transitions();
        if let Some(fleet) = &self.fleet {
            let own: Vec<Transition> = transitions.iter().filter(|t| !t.remote).cloned().collect();
            if !own.is_empty() {
                let (fleet, name) = (Arc::clone(fleet), self.inner.name().to_owned());
                runtime().spawn(async move {
                    for t in &own {
                        // Redis down: the others decide alone; the next transition tries again.
                        let _ = fleet.publish(&name, t).await;
                    }
                });
            }
        }
        // The callback's own errors reach the caller: a broken alert hook must be seen.
        if let Some(callback) = &self.on_transition {
            for t in transitions {
                let event = (
                    self.inner.name(),
                    t.from.as_str(),
                    t.to.as_str(),
                    t.reason,
                    t.remote,
                    t.lasts.map(|d| d.as_secs_f64()),
                );
                callback.call1(py, event)?;
            }
        }
        Ok(())
    }
}

/// `health(status, code)`: the one health verdict of an upstream outcome, as breakers,
/// modes and rollouts count it: `"success"`, `"failure"` (5xx, 408, or no answer: status
/// None), `"rate_limited"`, `"quota_exhausted"` or `"neutral"` (the caller's own doing).
#[pyfunction]
#[pyo3(signature = (status, code=None))]
pub fn health(status: Option<u16>, code: Option<&str>) -> &'static str {
    match classify(status, code, Duration::ZERO) {
        core::Verdict::Success => "success",
        core::Verdict::Failure => "failure",
        core::Verdict::RateLimited { .. } => "rate_limited",
        core::Verdict::QuotaExhausted => "quota_exhausted",
        core::Verdict::Neutral => "neutral",
    }
}
