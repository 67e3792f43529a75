//! One lazily built tokio runtime for every Redis operation and every async wait.

use pyo3::prelude::*;
use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::Runtime;

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

pub fn runtime() -> &'static Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fleetgate-io")
            .enable_all()
            .build()
            .expect("fleetgate: cannot start the I/O runtime (out of threads or file descriptors?)")
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
