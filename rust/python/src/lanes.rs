//! `fleetgate.Lanes` and `fleetgate.Slot`: priority lanes in front of a model's upstream
//! calls (a concurrency cap; a strict realtime lane; weighted interactive and batch lanes).

use crate::completions::{submit, Outcome};
use crate::error::{lane_to_py, ConfigError, IntoPyResult};
use fleetgate_core::lanes::{self as core, Entry, Lane, LanesOptions};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[pyclass(frozen, module = "fleetgate")]
pub struct Lanes {
    inner: Arc<core::Lanes>,
}

/// A held slot: release it (or let it go) when the upstream call is over.
#[pyclass(frozen, module = "fleetgate")]
pub struct Slot {
    inner: Mutex<Option<core::Slot>>,
    lane: Lane,
}

impl Slot {
    fn new(slot: core::Slot) -> Self {
        let lane = slot.lane();
        Slot { inner: Mutex::new(Some(slot)), lane }
    }
}

fn lane_of(priority: i64) -> PyResult<Lane> {
    Lane::from_index(priority).ok_or_else(|| {
        ConfigError::new_err(format!("priority must be 0 (realtime), 1 (interactive) or 2 (batch), got {priority}"))
    })
}

fn deadline_in(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_finite() && t <= 86_400.0 * 366.0 => {
            Ok(Some(Instant::now() + Duration::from_secs_f64(t.max(0.0))))
        }
        Some(t) => Err(ConfigError::new_err(format!("timeout must be a number of seconds up to a year, got {t}"))),
    }
}

#[pymethods]
impl Lanes {
    /// At most `concurrency` slots held at once; up to `queue_limit` requests wait per lane
    /// (0: none wait, a full house refuses at once).
    #[new]
    #[pyo3(signature = (concurrency, queue_limit=1000, interactive_weight=4, batch_weight=1))]
    fn new(concurrency: usize, queue_limit: usize, interactive_weight: u32, batch_weight: u32) -> PyResult<Self> {
        let options = LanesOptions { concurrency, queue_limit, interactive_weight, batch_weight };
        Ok(Lanes { inner: Arc::new(core::Lanes::new(options).py_err()?) })
    }

    /// Take a slot in the lane of `priority` (0 realtime, 1 interactive, 2 batch), waiting
    /// at most `timeout` seconds (the request's deadline). Raises QueueFull or
    /// DeadlineExpired; the wait releases the GIL.
    #[pyo3(signature = (priority, timeout=None))]
    fn enter(&self, py: Python<'_>, priority: i64, timeout: Option<f64>) -> PyResult<Slot> {
        let (lane, deadline) = (lane_of(priority)?, deadline_in(timeout)?);
        match self.inner.enter(lane, deadline).map_err(lane_to_py)? {
            Entry::Granted(slot) => Ok(Slot::new(slot)),
            Entry::Queued(ticket) => py.detach(|| ticket.wait_blocking()).map(Slot::new).map_err(lane_to_py),
        }
    }

    /// `enter` for asyncio; a cancelled wait gives its place (or its slot) up.
    #[pyo3(signature = (priority, timeout=None))]
    fn enter_async<'py>(&self, py: Python<'py>, priority: i64, timeout: Option<f64>) -> PyResult<Bound<'py, PyAny>> {
        let (lane, deadline) = (lane_of(priority)?, deadline_in(timeout)?);
        let entry = self.inner.enter(lane, deadline).map_err(lane_to_py)?;
        submit(py, None, async move {
            let slot = match entry {
                Entry::Granted(slot) => Ok(slot),
                Entry::Queued(ticket) => ticket.wait().await,
            };
            Outcome::Value(Box::new(move |py| match slot {
                Ok(slot) => Ok(Py::new(py, Slot::new(slot))?.into_any()),
                Err(e) => Err(lane_to_py(e)),
            }))
        })
    }

    #[getter]
    fn in_use(&self) -> usize {
        self.inner.in_use()
    }

    #[getter]
    fn concurrency(&self) -> usize {
        self.inner.options().concurrency
    }

    /// Requests waiting in the lane of `priority`.
    fn queued(&self, priority: i64) -> PyResult<usize> {
        Ok(self.inner.queued(lane_of(priority)?))
    }

    /// Per lane: granted, expired, refused_full and cancelled counts.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = self.inner.stats();
        let out = PyDict::new(py);
        for lane in Lane::ALL {
            let c = stats.lane(lane);
            let counts = PyDict::new(py);
            counts.set_item("granted", c.granted)?;
            counts.set_item("expired", c.expired)?;
            counts.set_item("refused_full", c.refused_full)?;
            counts.set_item("cancelled", c.cancelled)?;
            out.set_item(lane.as_str(), counts)?;
        }
        Ok(out)
    }
}

#[pymethods]
impl Slot {
    /// "realtime", "interactive" or "batch".
    #[getter]
    fn lane(&self) -> &'static str {
        self.lane.as_str()
    }

    /// Hand the slot to the next waiter (idempotent; dropping the slot does the same).
    fn release(&self) {
        let slot = self.inner.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(slot);
    }

    #[getter]
    fn held(&self) -> bool {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }
}
