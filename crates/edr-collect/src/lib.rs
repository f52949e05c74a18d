//! Collectors: each turns one part of the live system into [`Event`]s.
//!
//! A collector is an async function that runs until its cancellation token
//! fires. It sends through [`EventTx`] (never blocking, losses counted) and
//! records what it covers in [`Coverage`] so `status` and the app can say
//! what the agent does and does not see. The engine restarts a collector
//! with its new settings when its config section changes.
//!
//! [`Event`]: edr_model::event::Event

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use edr_model::capture::ProcessCapture;
use edr_model::event::Origin;
use edr_pipeline::{Counters, EventTx};

pub mod adaptive;
#[cfg(any(target_os = "macos", test))]
mod eslogger;
pub mod file;
pub mod network;
pub mod process;

/// What every collector is handed when it starts.
#[derive(Clone, Debug)]
pub struct CollectorContext {
    pub origin: Origin,
    pub tx: EventTx,
    pub counters: Arc<Counters>,
    pub coverage: Arc<Mutex<Coverage>>,
    /// Fires when the collector must stop (shutdown, pause, or a restart
    /// with new settings).
    pub cancel: CancellationToken,
}

impl CollectorContext {
    /// A context outside any engine, for running one collector alone (tests,
    /// benchmarks): a queue of `capacity` events whose receiving end is
    /// returned, fresh counters shared by the queue and the collector, a
    /// token of its own.
    pub fn standalone(capacity: usize) -> (CollectorContext, edr_pipeline::EventRx) {
        let counters = Counters::new();
        let (tx, rx) = edr_pipeline::channel(capacity, Arc::clone(&counters));
        let ctx = CollectorContext {
            origin: Origin::detect(),
            tx,
            counters,
            coverage: Arc::new(Mutex::new(Coverage::default())),
            cancel: CancellationToken::new(),
        };
        (ctx, rx)
    }
}

/// What the collectors currently see, for `status` and the app.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Coverage {
    /// How processes are observed, e.g. `scan` (polling).
    pub process_source: Option<String>,
    /// What the process source implies, e.g. that processes shorter than the
    /// scan interval can be missed.
    pub process_note: Option<String>,
    /// Whether processes are captured as events or by polling; None while
    /// the process collector is off (or could not start its required
    /// event source).
    #[serde(default)]
    pub process_capture: Option<ProcessCapture>,
    /// How connections are observed, e.g. `ebpf` or `netlink sock_diag`.
    pub network_source: Option<String>,
    /// What the network source implies, and why it is the one running
    /// (e.g. that eBPF was refused).
    #[serde(default)]
    pub network_note: Option<String>,
    /// Where file changes come from: `fanotify`, `eslogger`, `inotify`,
    /// `fsevents`, or `none` (`source: fanotify` without the kernel
    /// source); None while the file collector is off.
    #[serde(default)]
    pub file_source: Option<String>,
    /// What the file source implies, and why it was chosen.
    #[serde(default)]
    pub file_note: Option<String>,
    /// Directories under a working watch.
    pub watched_paths: Vec<String>,
    /// Configured directories not watched, with the reason.
    pub unwatched_paths: Vec<UnwatchedPath>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UnwatchedPath {
    pub path: String,
    pub reason: String,
}

/// Locks the coverage report. A poisoned lock only means another collector
/// panicked mid-update; the report is still the best we have.
pub fn coverage(ctx: &CollectorContext) -> std::sync::MutexGuard<'_, Coverage> {
    ctx.coverage
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
