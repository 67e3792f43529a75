//! The `fleetgate` logger, for what background tasks cannot raise to anyone.

use pyo3::prelude::*;

/// A warning on Python's `fleetgate` logger, from a background task.
pub fn log_warning(message: &str) {
    Python::attach(|py| {
        let logged = py
            .import("logging")
            .and_then(|logging| logging.call_method1("getLogger", ("fleetgate",)))
            .and_then(|logger| logger.call_method1("warning", ("fleetgate: %s", message)));
        if let Err(e) = logged {
            e.write_unraisable(py, None);
        }
    });
}
