//! edr-agent: a light endpoint telemetry engine.
//!
//! Collectors (process, file, network) feed a bounded queue; the batcher
//! writes batches of ECS JSON events as compressed files; the metrics
//! sampler measures the agent itself. See `ARCHITECTURE.md`.

pub mod collectors;
pub mod config;
pub mod event;
pub mod pipeline;
pub mod redact;
