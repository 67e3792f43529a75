//! The one seam where core errors become Python exceptions. The classes live in
//! `fleetgate/errors.py` (with their docstrings and attributes) and are imported lazily,
//! so raising needs no GIL until Python sees the error.

use fleetgate_core::lanes::LaneError;
use fleetgate_core::Error;
use pyo3::PyErr;

pyo3::import_exception!(fleetgate.errors, BudgetExceeded);
pyo3::import_exception!(fleetgate.errors, CircuitOpen);
pyo3::import_exception!(fleetgate.errors, ConfigError);
pyo3::import_exception!(fleetgate.errors, DeadlineExpired);
pyo3::import_exception!(fleetgate.errors, QueueFull);
pyo3::import_exception!(fleetgate.errors, RateLimited);
pyo3::import_exception!(fleetgate.errors, StoreUnavailable);

pub fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::InvalidArgument(_) | Error::CostExceedsCapacity { .. } | Error::InvalidUrl { .. } => {
            ConfigError::new_err(message)
        }
        Error::StoreUnavailable(_) => StoreUnavailable::new_err(message),
        Error::RateLimited { quota, retry_after } => RateLimited::new_err((message, retry_after.as_secs_f64(), quota)),
        Error::CircuitOpen { breaker, reason, retry_after } => {
            CircuitOpen::new_err((message, breaker, reason, retry_after.map(|d| d.as_secs_f64())))
        }
        Error::BudgetExceeded { budget, resets_at, limit, spent, .. } => {
            BudgetExceeded::new_err((message, budget, resets_at, limit, spent))
        }
    }
}

/// A lane's refusal as an exception: QueueFull (shed load), DeadlineExpired (not started).
pub fn lane_to_py(err: LaneError) -> PyErr {
    let message = err.to_string();
    match err {
        LaneError::QueueFull { lane, limit } => QueueFull::new_err((message, lane.as_str(), limit)),
        LaneError::Expired { lane } => DeadlineExpired::new_err((message, lane.as_str())),
        LaneError::Closed => QueueFull::new_err((message, "", 0)),
    }
}

/// A core error, or a Python exception raised while the core waited on a callback of ours
/// (a signal during a sleep): one error type for core loops that call back into Python.
pub struct Raised(pub PyErr);

impl From<Error> for Raised {
    fn from(err: Error) -> Self {
        Raised(to_py(err))
    }
}

/// Shorthand for `.map_err(to_py)`.
pub trait IntoPyResult<T> {
    fn py_err(self) -> pyo3::PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, Error> {
    #[inline]
    fn py_err(self) -> pyo3::PyResult<T> {
        self.map_err(to_py)
    }
}
