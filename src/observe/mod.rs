//! What flipgate tells about itself: Prometheus metrics (`metrics`, with their label values in
//! `labels`, a leaf every module may use) and the access log (`access_log`).
//!
//! Invariants: metric handles are resolved when a snapshot is built, never per request; nothing
//! here decides anything about a request.

pub mod access_log;
pub mod labels;
pub mod metrics;
