//! `fleetgate._core`: the PyO3 binding of `fleetgate-core`. It converts types and errors
//! and nothing else; the policy lives in the core.

mod batch;
mod breaker;
mod budget;
mod completions;
mod dedup;
mod error;
mod lanes;
mod limiter;
mod logger;
mod quota;
mod runtime;
mod tokens;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<quota::Quota>()?;
    m.add_class::<limiter::Limiter>()?;
    m.add_class::<limiter::Decision>()?;
    m.add_class::<limiter::Reservation>()?;
    m.add_class::<breaker::Breakers>()?;
    m.add_class::<breaker::Breaker>()?;
    m.add_class::<dedup::Flights>()?;
    m.add_class::<dedup::Flight>()?;
    m.add_class::<dedup::FleetFlights>()?;
    m.add_class::<lanes::Lanes>()?;
    m.add_class::<lanes::Slot>()?;
    m.add_class::<budget::Budget>()?;
    m.add_class::<budget::BudgetReservation>()?;
    m.add_class::<budget::BudgetStatus>()?;
    m.add_class::<budget::Ledger>()?;
    m.add_class::<completions::Completions>()?;
    m.add_class::<completions::Submission>()?;
    m.add_class::<batch::Splitter>()?;
    m.add_function(wrap_pyfunction!(parse_duration, m)?)?;
    m.add_function(wrap_pyfunction!(breaker::health, m)?)?;
    m.add_function(wrap_pyfunction!(tokens::count_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(tokens::chat_prompt_tokens, m)?)?;
    m.add_function(wrap_pyfunction!(tokens::encoding_for_model, m)?)?;
    m.add_function(wrap_pyfunction!(tokens::truncate_tokens, m)?)?;
    Ok(())
}

/// Seconds in a Go-style duration as OpenAI sends it (`"20ms"`, `"6m0s"`, `"1h2m3.5s"`).
#[pyfunction]
fn parse_duration(text: &str) -> PyResult<f64> {
    use error::IntoPyResult;
    fleetgate_core::duration::parse_go_duration(text).map(|d| d.as_secs_f64()).py_err()
}
