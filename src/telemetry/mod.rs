//! Logs (and, later, metrics and traces).

pub mod logging;
pub mod metrics;
