//! Logs, metrics, traces and the figures the status page draws.

pub mod activity;
pub mod grpc;
mod hpack;
pub mod logging;
pub mod metrics;
pub mod tracing;
pub mod traffic;
