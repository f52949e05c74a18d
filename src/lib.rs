//! edr-agent: a light endpoint telemetry engine.
//!
//! Collectors (process, file, network) feed a bounded queue; the batcher
//! writes batches of ECS JSON events as compressed files; the metrics
//! sampler measures the agent itself. See `ARCHITECTURE.md`.

pub mod batcher;
pub mod charts;
pub mod collectors;
pub mod config;
pub mod engine;
pub mod event;
pub mod filter;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod redact;
pub mod storage;
pub mod workload;

pub use config::Config;
pub use engine::{EngineError, EngineHandle, EngineOptions, Snapshot};
