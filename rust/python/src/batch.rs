//! `fleetgate._core.Splitter`: Batch API input lines checked, sized and cut into chunks in
//! bulk (see `fleetgate_core::batch_lines`).

use fleetgate_core::batch_lines::{ChunkLimits, LineScanner, Splitter as Core};
use pyo3::prelude::*;
use std::collections::HashMap;

/// Consecutive lines of one chunk: (chunk, start, end, lines, tokens, output tokens),
/// `start..end` their bytes in the block.
type RunTuple = (u32, usize, usize, u64, u64, u64);
/// A line that cannot be sent: (line number, reason).
type ProblemTuple = (u64, String);

#[pyclass(module = "fleetgate._core")]
pub struct Splitter {
    inner: Core,
}

#[pymethods]
impl Splitter {
    #[new]
    #[pyo3(signature = (*, max_lines, max_bytes, max_tokens, model_tokens=None, endpoint=None, default_max_output=4096))]
    fn new(
        max_lines: u64,
        max_bytes: u64,
        max_tokens: u64,
        model_tokens: Option<HashMap<String, u64>>,
        endpoint: Option<&str>,
        default_max_output: u64,
    ) -> Self {
        let limits = ChunkLimits { lines: max_lines, bytes: max_bytes, tokens: max_tokens };
        let splitter = Core::new(LineScanner::new(endpoint, default_max_output), limits);
        Self { inner: splitter.with_model_tokens(model_tokens.unwrap_or_default()) }
    }

    /// The runs of `block`'s sendable lines and the problems of the others; `block` holds
    /// whole lines. The GIL is released while they are checked.
    fn split(&mut self, py: Python<'_>, block: &[u8]) -> (Vec<RunTuple>, Vec<ProblemTuple>) {
        let inner = &mut self.inner;
        let (runs, problems) = py.detach(move || inner.split(block));
        (
            runs.into_iter().map(|r| (r.chunk, r.span.start, r.span.end, r.lines, r.tokens, r.output_tokens)).collect(),
            problems.into_iter().map(|p| (p.number, p.reason)).collect(),
        )
    }

    /// The file's endpoint, once a line has been accepted.
    #[getter]
    fn endpoint(&self) -> Option<&str> {
        self.inner.scanner().endpoint()
    }

    /// The file's model, once a line has been accepted.
    #[getter]
    fn model(&self) -> Option<&str> {
        self.inner.scanner().model()
    }

    /// Lines read so far, blank ones included.
    #[getter]
    fn lines_read(&self) -> u64 {
        self.inner.scanner().lines_read()
    }
}
