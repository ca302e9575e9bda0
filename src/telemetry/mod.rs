//! Logs (and, later, metrics and traces).

pub mod activity;
pub mod logging;
pub mod metrics;
pub mod tracing;
pub mod traffic;
