//! `fleetgate.Flights` and `fleetgate.Flight`: identical requests in flight share one
//! upstream call (see `fleetgate_core::dedup`).

use crate::completions::{submit, Outcome};
use crate::error::{ConfigError, IntoPyResult};
use crate::limiter::Limiter;
use crate::logger::log_warning;
use crate::runtime::{block_on, runtime};
use fleetgate_core::dedup::fleet::{DedupFleet, SharedAnswer, Waited};
use fleetgate_core::dedup::{self as core, End, FlightKey, Head, HeadOrEnd, Joined, Next};
use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;
use std::time::Duration;

type Headers = Vec<(String, String)>;
/// How a flight ended: ("complete" | "failed" | "cancelled", error kind, message).
type EndTuple = (&'static str, String, String);

#[pyclass(frozen, module = "fleetgate")]
pub struct Flights {
    inner: core::Flights,
}

#[pyclass(frozen, module = "fleetgate")]
pub struct Flight {
    inner: Arc<core::Flight>,
}

fn end_tuple(end: End) -> EndTuple {
    match end {
        End::Complete => ("complete", String::new(), String::new()),
        End::Failed { kind, message } => ("failed", kind, message),
        End::Cancelled => ("cancelled", String::new(), String::new()),
    }
}

fn timeout(value: Option<f64>) -> Option<Duration> {
    value.map(|t| Duration::from_secs_f64(t.clamp(0.0, 86_400.0 * 366.0)))
}

fn timed_out() -> PyErr {
    PyTimeoutError::new_err("no answer from the shared upstream call before the deadline; send the call yourself or allow a longer deadline")
}

/// The head as Python sees it: `(status, headers)`, or None when the flight ended first.
fn head_value(head: HeadOrEnd) -> PyResult<Option<(u16, Headers)>> {
    match head {
        HeadOrEnd::Head(Head { status, headers }) => Ok(Some((status, headers))),
        HeadOrEnd::End(_) => Ok(None),
        HeadOrEnd::TimedOut => Err(timed_out()),
    }
}

/// Every chunk from `from` on once there is at least one (or the end): `(chunks, end)`.
fn chunks_value<'py>(
    py: Python<'py>,
    flight: &core::Flight,
    from: usize,
) -> (Vec<Bound<'py, PyBytes>>, Option<EndTuple>) {
    let (chunks, end) = flight.chunks_so_far(from);
    (chunks.iter().map(|c| PyBytes::new(py, c)).collect(), end.map(end_tuple))
}

#[pymethods]
impl Flights {
    #[new]
    fn new() -> Self {
        Flights { inner: core::Flights::new() }
    }

    /// Join the flight of this request: `(flight, True)` for the first of its key (make the
    /// call and publish it), `(flight, False)` for an identical request while it is on.
    /// Every caller leaves once. Raises ConfigError when the body is not JSON.
    fn join(&self, py: Python<'_>, endpoint: &str, namespace: &str, body: &[u8]) -> PyResult<(Py<Flight>, bool)> {
        let key = FlightKey::new(endpoint, namespace, body).py_err()?;
        let joined = self.inner.join(key);
        let leader = joined.is_leader();
        let flight = match joined {
            Joined::Leader(f) | Joined::Follower(f) => f,
        };
        Ok((Py::new(py, Flight { inner: flight })?, leader))
    }

    /// The key a request would join under (32 hex digits). Raises ConfigError when the
    /// body is not JSON.
    #[staticmethod]
    fn key(endpoint: &str, namespace: &str, body: &[u8]) -> PyResult<String> {
        Ok(FlightKey::new(endpoint, namespace, body).py_err()?.hex())
    }

    /// Flights started and not finished.
    #[getter]
    fn in_flight(&self) -> usize {
        self.inner.in_flight()
    }
}

#[pymethods]
impl Flight {
    /// The request's key (32 hex digits).
    #[getter]
    fn key(&self) -> String {
        self.inner.key().hex()
    }

    #[getter]
    fn waiters(&self) -> usize {
        self.inner.waiters()
    }

    #[getter]
    fn finished(&self) -> bool {
        self.inner.is_finished()
    }

    fn publish_head(&self, status: u16, headers: Headers) {
        self.inner.publish_head(Head { status, headers });
    }

    fn publish_chunk(&self, chunk: &[u8]) {
        self.inner.publish_chunk(chunk);
    }

    /// End the flight: complete, failed (`failure=(error kind, message)`) or cancelled.
    #[pyo3(signature = (failure=None, cancelled=false))]
    fn finish(&self, failure: Option<(String, String)>, cancelled: bool) {
        self.inner.finish(match (failure, cancelled) {
            (_, true) => End::Cancelled,
            (Some((kind, message)), false) => End::Failed { kind, message },
            (None, false) => End::Complete,
        });
    }

    /// How the flight ended, or None while it is on.
    fn end(&self) -> Option<EndTuple> {
        self.inner.chunks_so_far(usize::MAX).1.map(end_tuple)
    }

    /// Wait for the head: `(status, headers)`, or None when the flight ended without one
    /// (see `end`). Raises TimeoutError after `timeout` seconds; releases the GIL.
    #[pyo3(signature = (timeout=None))]
    fn wait_head(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<(u16, Headers)>> {
        let flight = Arc::clone(&self.inner);
        head_value(py.detach(move || flight.wait_head(self::timeout(timeout))))
    }

    fn wait_head_async<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let flight = Arc::clone(&self.inner);
        submit(py, None, async move {
            let head = flight.wait_head_async().await;
            Outcome::Value(Box::new(move |py| head_value(head)?.into_pyobject(py).map(|v| v.unbind().into_any())))
        })
    }

    /// Wait until there are chunks past index `start` (or the end); returns them all and
    /// the end (None while the flight is on). Raises TimeoutError; releases the GIL.
    #[pyo3(signature = (start, timeout=None))]
    fn next_chunks<'py>(
        &self,
        py: Python<'py>,
        start: usize,
        timeout: Option<f64>,
    ) -> PyResult<(Vec<Bound<'py, PyBytes>>, Option<EndTuple>)> {
        let flight = Arc::clone(&self.inner);
        let next = py.detach(move || flight.next_chunk(start, self::timeout(timeout)));
        if next == Next::TimedOut {
            return Err(timed_out());
        }
        Ok(chunks_value(py, &self.inner, start))
    }

    fn next_chunks_async<'py>(&self, py: Python<'py>, start: usize) -> PyResult<Bound<'py, PyAny>> {
        let flight = Arc::clone(&self.inner);
        submit(py, None, async move {
            flight.next_chunk_async(start).await;
            Outcome::Value(Box::new(move |py| {
                chunks_value(py, &flight, start).into_pyobject(py).map(|v| v.unbind().into_any())
            }))
        })
    }

    /// This waiter is done (answered, timed out or cancelled). True when it was the last
    /// one of an unfinished flight: cancel the upstream call, then `finish(cancelled=True)`.
    fn leave(&self) -> bool {
        self.inner.leave()
    }
}

/// Deduplication across the pods sharing the limiter's Redis: one pod makes a call, the
/// others wait for the answer it publishes.
#[pyclass(frozen, module = "fleetgate")]
pub struct FleetFlights {
    inner: Arc<DedupFleet>,
}

type Shared = (u16, String, Py<PyBytes>);

fn waited(py: Python<'_>, result: fleetgate_core::Result<Waited>) -> PyResult<Option<Shared>> {
    match result.py_err()? {
        Waited::Answer(a) => Ok(Some((a.status, a.headers, PyBytes::new(py, &a.body).unbind()))),
        Waited::Unclaimed => Ok(None),
        Waited::TimedOut => Err(timed_out()),
    }
}

fn seconds(value: f64) -> Duration {
    Duration::from_secs_f64(value.clamp(0.001, 86_400.0))
}

#[pymethods]
impl FleetFlights {
    #[new]
    fn new(limiter: &Limiter) -> PyResult<Self> {
        let store = limiter.shared_store().ok_or_else(|| {
            ConfigError::new_err("deduplication across pods goes through Redis: give the gateway a redis_url")
        })?;
        Ok(FleetFlights { inner: Arc::new(DedupFleet::new(store)) })
    }

    /// Claim the call of the request `key` for `lease` seconds; False when another pod
    /// holds it (then `wait`). Raises StoreUnavailable.
    fn claim(&self, py: Python<'_>, key: String, lease: f64) -> PyResult<bool> {
        let fleet = Arc::clone(&self.inner);
        block_on(py, async move { fleet.claim(&key, seconds(lease)).await }).py_err()
    }

    fn claim_async<'py>(&self, py: Python<'py>, key: String, lease: f64) -> PyResult<Bound<'py, PyAny>> {
        let fleet = Arc::clone(&self.inner);
        submit(py, None, async move {
            let claimed = fleet.claim(&key, seconds(lease)).await;
            Outcome::Value(Box::new(move |py| Ok(claimed.py_err()?.into_pyobject(py)?.to_owned().unbind().into_any())))
        })
    }

    /// Wait for another pod's answer: `(status, headers, body)`, or None when its claim
    /// vanished without one (claim the call yourself). Raises TimeoutError after `timeout`.
    #[pyo3(signature = (key, timeout, poll=0.02))]
    fn wait(&self, py: Python<'_>, key: String, timeout: f64, poll: f64) -> PyResult<Option<Shared>> {
        let fleet = Arc::clone(&self.inner);
        let result = block_on(py, async move { fleet.wait(&key, seconds(timeout), seconds(poll)).await });
        waited(py, result)
    }

    #[pyo3(signature = (key, timeout, poll=0.02))]
    fn wait_async<'py>(&self, py: Python<'py>, key: String, timeout: f64, poll: f64) -> PyResult<Bound<'py, PyAny>> {
        let fleet = Arc::clone(&self.inner);
        submit(py, None, async move {
            let result = fleet.wait(&key, seconds(timeout), seconds(poll)).await;
            Outcome::Value(Box::new(move |py| waited(py, result)?.into_pyobject(py).map(|v| v.unbind().into_any())))
        })
    }

    /// Publish this pod's answer (kept `keep` seconds) and drop the claim, in the
    /// background: the caller's answer is not delayed by it. A failure is logged on the
    /// `fleetgate` logger; the claim's lease then runs out and a waiting pod calls itself.
    #[pyo3(signature = (key, status, headers, body, keep=10.0))]
    fn publish_later(&self, key: String, status: u16, headers: String, body: Vec<u8>, keep: f64) {
        let fleet = Arc::clone(&self.inner);
        runtime().spawn(async move {
            if let Err(e) = fleet.publish(&key, &SharedAnswer { status, headers, body }, seconds(keep)).await {
                log_warning(&format!("could not share an answer with the other pods ({e}); they wait out its lease"));
            }
        });
    }

    /// Give the claim up without an answer (in the background): a waiting pod then calls.
    /// A failure is logged; the lease runs out instead.
    fn release_later(&self, key: String) {
        let fleet = Arc::clone(&self.inner);
        runtime().spawn(async move {
            if let Err(e) = fleet.release(&key).await {
                log_warning(&format!(
                    "could not give up a shared call's claim ({e}); the other pods wait out its lease"
                ));
            }
        });
    }
}
