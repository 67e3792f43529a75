//! One lazily built tokio runtime for every Redis operation and every async wait; the
//! async methods are real coroutines (PyO3 `async fn`) that await tasks on it.

use pyo3::prelude::*;
use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fleetgate-io")
            .enable_all()
            .build()
            .expect("fleetgate: cannot start the I/O runtime (out of threads or file descriptors?)");
        runtime
    })
}

/// Run a future to completion with the GIL released: own the inputs first, then detach.
pub fn block_on<F>(py: Python<'_>, future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    py.detach(|| runtime().block_on(future))
}

/// Run a future on the I/O runtime and wait for it from any executor (an asyncio
/// coroutine polls the join handle; tokio's timers and sockets need its own runtime).
pub async fn on_runtime<F>(future: F) -> PyResult<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime().spawn(future).await.map_err(|e| {
        pyo3::exceptions::PyRuntimeError::new_err(format!("fleetgate: an I/O task failed ({e}); please report this as a bug"))
    })
}
