//! Delivering async results to asyncio without taking the GIL on I/O threads.
//!
//! Each event loop has one `Completions`: a queue of finished operations and a socket
//! pair. A tokio task pushes its outcome and, if the loop has not been signalled since
//! it last drained, writes one byte; the loop's reader callback (`fleetgate._aio`) drains
//! every outcome at once and resolves the asyncio futures. Under load one wake-up carries
//! many results, and no I/O thread ever waits for the GIL.

use crate::budget::{release_orphan as release_orphan_budget, BudgetReservation, Held};
use crate::error::to_py;
use crate::limiter::Decision;
use crate::runtime::runtime;
use fleetgate_core::{self as core, Limiter};
use pyo3::prelude::*;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What a finished async operation produced.
pub enum Outcome {
    Decision(core::Decision),
    /// A budget reservation, given back when nobody is left to use it.
    BudgetHeld(Held),
    Done,
    Failed(core::Error),
    /// Any other result, converted to Python on the loop's thread when drained.
    Value(Convert),
}

/// Turns a finished operation's result into a Python object (with the GIL held).
pub type Convert = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

struct Queue {
    done: Mutex<Vec<(u64, Outcome)>>,
    signalled: AtomicBool,
    writer: UnixStream,
}

impl Queue {
    fn push(&self, id: u64, outcome: Outcome) {
        self.done.lock().unwrap_or_else(|p| p.into_inner()).push((id, outcome));
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // A full socket buffer means a wake-up is already pending: nothing is lost.
            let _ = (&self.writer).write(&[1]);
        }
    }
}

#[pyclass(frozen, module = "fleetgate._core")]
pub struct Completions {
    queue: Arc<Queue>,
    reader: UnixStream,
}

#[pymethods]
impl Completions {
    #[new]
    fn new() -> PyResult<Self> {
        let (reader, writer) = UnixStream::pair()?;
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let queue = Queue { done: Mutex::new(Vec::new()), signalled: AtomicBool::new(false), writer };
        Ok(Completions { queue: Arc::new(queue), reader })
    }

    /// The descriptor the event loop watches for readability.
    fn fileno(&self) -> i32 {
        self.reader.as_raw_fd()
    }

    /// Every outcome finished since the last call, as `(id, ok, value)`: a `Decision` or
    /// `None` when ok, the exception to raise when not.
    fn drain(&self, py: Python<'_>) -> PyResult<Vec<(u64, bool, Py<PyAny>)>> {
        let mut sink = [0u8; 256];
        while matches!((&self.reader).read(&mut sink), Ok(n) if n > 0) {}
        // Clear the flag before taking the queue: a push after this point signals again.
        self.queue.signalled.store(false, Ordering::Release);
        let done = std::mem::take(&mut *self.queue.done.lock().unwrap_or_else(|p| p.into_inner()));
        done.into_iter()
            .map(|(id, outcome)| {
                Ok(match outcome {
                    Outcome::Decision(inner) => (id, true, Py::new(py, Decision::from(inner))?.into_any()),
                    Outcome::BudgetHeld(held) => (id, true, Py::new(py, BudgetReservation::from(held))?.into_any()),
                    Outcome::Done => (id, true, py.None()),
                    Outcome::Failed(e) => (id, false, to_py(e).into_value(py).into_any()),
                    Outcome::Value(convert) => match convert(py) {
                        Ok(value) => (id, true, value),
                        Err(e) => (id, false, e.into_value(py).into_any()),
                    },
                })
            })
            .collect()
    }
}

/// One async operation, validated and ready to start on a loop's `Completions`.
#[pyclass(frozen, module = "fleetgate._core")]
pub struct Submission {
    /// The operation, not yet polled (futures do nothing until then).
    task: Mutex<Option<Task>>,
    /// The limiter whose admissions an abandoned operation gives back, if any.
    limiter: Option<Arc<Limiter>>,
    cancelled: Arc<AtomicBool>,
}

type Task = std::pin::Pin<Box<dyn Future<Output = Outcome> + Send>>;

impl Submission {
    pub fn new(limiter: Option<&Arc<Limiter>>, task: impl Future<Output = Outcome> + Send + 'static) -> Self {
        Submission {
            task: Mutex::new(Some(Box::pin(task))),
            limiter: limiter.map(Arc::clone),
            cancelled: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A coroutine (from `fleetgate._aio.await_submission`) that runs `task` on the I/O runtime.
pub fn submit<'py>(
    py: Python<'py>,
    limiter: Option<&Arc<Limiter>>,
    task: impl Future<Output = Outcome> + Send + 'static,
) -> PyResult<Bound<'py, PyAny>> {
    static AWAIT: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    let await_submission = AWAIT.import(py, "fleetgate._aio", "await_submission")?;
    await_submission.call1((Submission::new(limiter, task),))
}

/// Give back what an admission holds when nobody is left to use it (the awaiting
/// coroutine was cancelled): its tokens return to the quotas.
fn release_orphan(limiter: &Arc<Limiter>, reservation: Arc<core::Reservation>) {
    // Embedded or fallback reservations settle in place; their only failure is a second
    // settle, which cannot happen to a reservation nobody else saw.
    if limiter.settle_local(&reservation, 0).is_some() {
        return;
    }
    let limiter = Arc::clone(limiter);
    runtime().spawn(async move {
        // Best effort: if Redis fails here the tokens refill within one burst period.
        let _ = limiter.settle(&reservation, 0).await;
    });
}

#[pymethods]
impl Submission {
    /// Start the operation; its outcome arrives on `completions` under `id`.
    fn start(&self, completions: &Completions, id: u64) -> PyResult<()> {
        let task = self
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| pyo3::exceptions::PyRuntimeError::new_err("this operation was already started"))?;
        let queue = Arc::clone(&completions.queue);
        let (limiter, cancelled) = (self.limiter.clone(), Arc::clone(&self.cancelled));
        runtime().spawn(async move {
            let outcome = task.await;
            if cancelled.load(Ordering::Acquire) {
                match (limiter, outcome) {
                    (Some(limiter), Outcome::Decision(core::Decision { reservation: Some(r), .. })) => {
                        release_orphan(&limiter, r)
                    }
                    (_, Outcome::BudgetHeld(held)) => release_orphan_budget(held),
                    _ => {}
                }
                return;
            }
            queue.push(id, outcome);
        });
        Ok(())
    }

    /// The awaiting coroutine was cancelled: an admission (or a budget reservation) that
    /// arrives later is given back.
    fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// An outcome arrived for a coroutine that was cancelled meanwhile: give it back.
    fn orphaned(&self, value: &Bound<'_, PyAny>) {
        if let Ok(reservation) = value.cast::<BudgetReservation>() {
            reservation.get().release_orphan();
            return;
        }
        let (Some(limiter), Ok(decision)) = (&self.limiter, value.cast::<Decision>()) else { return };
        if let Some(r) = decision.get().reservation_arc() {
            release_orphan(limiter, r);
        }
    }
}
