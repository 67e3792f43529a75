//! `fleetgate.Quota`: an immutable, validated quota.

use crate::error::{ConfigError, IntoPyResult};
use fleetgate_core::limit::quota::Dimension;
use fleetgate_core::{Algorithm, QuotaOptions, QuotaSpec};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyFloat, PyInt};
use std::sync::Arc;

#[pyclass(frozen, module = "fleetgate", name = "Quota")]
pub struct Quota {
    pub spec: Arc<QuotaSpec>,
}

/// Read a whole number argument, naming it in the error: bools, floats with a fraction and
/// non-numbers are refused, and so are integers beyond any real limit.
pub fn whole(name: &str, value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<i64>> {
    let Some(value) = value else { return Ok(None) };
    if value.is_none() {
        return Ok(None);
    }
    if value.is_instance_of::<PyBool>() {
        return Err(PyTypeError::new_err(format!("{name} must be a whole number, got a bool")));
    }
    if value.is_instance_of::<PyInt>() {
        return match value.extract::<i64>() {
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(ConfigError::new_err(format!("{name} = {value} is absurdly large; check the unit"))),
        };
    }
    if value.is_instance_of::<PyFloat>() {
        let f: f64 = value.extract()?;
        if f.fract() == 0.0 && f.abs() < 9e18 {
            return Ok(Some(f as i64));
        }
        return Err(ConfigError::new_err(format!("{name} must be a whole number, got {f}")));
    }
    Err(PyTypeError::new_err(format!("{name} must be a whole number, got {}", value.get_type().name()?)))
}

fn dimension(d: Option<Dimension>) -> (Option<u64>, Option<u64>) {
    (d.map(|d| d.per_minute), d.map(|d| d.capacity))
}

#[pymethods]
impl Quota {
    #[new]
    #[pyo3(signature = (name, requests_per_minute=None, tokens_per_minute=None, *, algorithm="token_bucket", burst_seconds=1.0, request_burst=None, token_burst=None))]
    fn new(
        name: &Bound<'_, PyAny>,
        requests_per_minute: Option<&Bound<'_, PyAny>>,
        tokens_per_minute: Option<&Bound<'_, PyAny>>,
        algorithm: &str,
        burst_seconds: f64,
        request_burst: Option<&Bound<'_, PyAny>>,
        token_burst: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let name: String = name.extract().map_err(|_| {
            PyTypeError::new_err(format!(
                "a quota name must be a str, got {}",
                name.get_type().name().map(|n| n.to_string()).unwrap_or_default()
            ))
        })?;
        let opts = QuotaOptions {
            requests_per_minute: whole("requests_per_minute", requests_per_minute)?,
            tokens_per_minute: whole("tokens_per_minute", tokens_per_minute)?,
            algorithm: Algorithm::parse(algorithm).py_err()?,
            burst_seconds,
            request_burst: whole("request_burst", request_burst)?,
            token_burst: whole("token_burst", token_burst)?,
        };
        Ok(Quota { spec: Arc::new(QuotaSpec::new(&name, &opts).py_err()?) })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.spec.name
    }

    #[getter]
    fn requests_per_minute(&self) -> Option<u64> {
        dimension(self.spec.requests).0
    }

    #[getter]
    fn tokens_per_minute(&self) -> Option<u64> {
        dimension(self.spec.tokens).0
    }

    /// The most requests admitted at once (the bucket size, or the per-minute limit of a
    /// sliding window).
    #[getter]
    fn request_capacity(&self) -> Option<u64> {
        dimension(self.spec.requests).1
    }

    #[getter]
    fn token_capacity(&self) -> Option<u64> {
        dimension(self.spec.tokens).1
    }

    #[getter]
    fn algorithm(&self) -> &'static str {
        self.spec.algorithm.as_str()
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Quota>().is_ok_and(|o| *o.get().spec == *self.spec)
    }

    fn __hash__(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.spec.name.hash(&mut h);
        self.spec.algorithm.hash(&mut h);
        h.finish()
    }

    fn __repr__(&self) -> String {
        let mut s = format!("Quota({:?}", self.spec.name);
        if let Some(d) = self.spec.requests {
            s += &format!(", requests_per_minute={}", d.per_minute);
        }
        if let Some(d) = self.spec.tokens {
            s += &format!(", tokens_per_minute={}", d.per_minute);
        }
        s + &format!(", algorithm={:?})", self.spec.algorithm.as_str())
    }
}
