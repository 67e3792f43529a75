//! One lazily built tokio runtime for every Redis operation, shared with
//! pyo3-async-runtimes so asyncio callers get real awaitables.

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

/// Hand a future to asyncio as an awaitable.
pub fn awaitable<'py, F, T>(py: Python<'py>, future: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = PyResult<T>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    static SHARED: OnceLock<()> = OnceLock::new();
    SHARED.get_or_init(|| {
        // Fails only if another runtime was registered first, which this module never does.
        let _ = pyo3_async_runtimes::tokio::init_with_runtime(runtime());
    });
    pyo3_async_runtimes::tokio::future_into_py(py, future)
}
