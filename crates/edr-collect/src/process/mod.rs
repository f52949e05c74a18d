//! The process collector: reports processes as they start and end.
//!
//! Where the kernel's process events may be read (Linux: the netlink proc
//! connector, as root or with CAP_NET_ADMIN; macOS: `eslogger`, as root
//! with Full Disk Access), every exec, fork and exit is reported as it
//! happens, short-lived processes included. Otherwise the process table is
//! polled, and anything that starts and exits between two scans is missed;
//! [`Coverage`] says which mode is active and why.
//!
//! With events, the scan still runs: its first pass is the inventory of
//! what already runs (`event.kind: state`), and later passes report only
//! what the events lost (after a kernel buffer overrun). Both share one
//! view of the live processes, so neither reports what the other did.
//!
//! Processes are identified by (pid, start time), so a reused pid is a new
//! process, and `process.entity_id` is derived from host, pid and start time
//! (see [`process_start_ms`]) so every source produces the same id.
//!
//! [`Coverage`]: crate::Coverage

mod emit;
#[cfg(any(target_os = "macos", test))]
mod eslogger;
mod hash;
mod monitor;
#[cfg(target_os = "linux")]
mod netlink;
#[cfg(target_os = "linux")]
pub(crate) mod procfs;
mod scanner;
mod source;
#[cfg(target_os = "linux")]
mod start_time;
mod tracker;
pub(crate) mod users;

use std::sync::atomic::Ordering::Relaxed;

use crate::adaptive::AdaptiveInterval;
use crate::{coverage, CollectorContext, ProcessCapture};
use edr_config::{ProcessMonitorConfig, ProcessSource};
use monitor::{Monitor, Source};

#[cfg(target_os = "linux")]
pub(crate) use netlink::Priority;
#[cfg(target_os = "linux")]
pub(crate) use start_time::{clock_ns, clock_ticks_per_sec, start_ms_from_ticks};
#[cfg(target_os = "linux")]
pub use start_time::{process_start_ms, wall_start_ms};
#[cfg(target_os = "linux")]
pub(crate) use users::UserNames;

/// Elsewhere the identity start is already the best date known.
#[cfg(not(target_os = "linux"))]
pub fn wall_start_ms(start_ms: u64) -> u64 {
    start_ms
}

/// Runs until `ctx.cancel` fires. The work happens on a blocking thread
/// that looks at the token at least every 100 ms; a scan in progress stops
/// between events and hash chunks.
pub async fn run(cfg: ProcessMonitorConfig, ctx: CollectorContext) {
    // The threads stop on this token, which also fires if this task is
    // dropped without being cancelled (a runtime shutting down), so they
    // never outlive it.
    let ctx = CollectorContext {
        cancel: ctx.cancel.child_token(),
        ..ctx
    };
    let _stop_threads = ctx.cancel.clone().drop_guard();
    let source = match cfg.source {
        ProcessSource::Scan => {
            record_scan(&ctx, &cfg, None);
            None
        }
        ProcessSource::Auto | ProcessSource::Event => {
            let (environ, c) = (cfg.collect_environment, ctx.clone());
            let opened = tokio::task::spawn_blocking(move || start_source(environ, &c))
                .await
                .unwrap_or_else(|e| Err(format!("starting the event source panicked: {e}")));
            match opened {
                Ok((source, about)) => {
                    record_events(&ctx, &cfg, &about);
                    Some(source)
                }
                Err(reason) if cfg.source == ProcessSource::Event => {
                    record_unavailable(&ctx, &reason);
                    ctx.cancel.cancelled().await;
                    return;
                }
                Err(reason) => {
                    record_scan(&ctx, &cfg, Some(&reason));
                    None
                }
            }
        }
    };
    let pace = AdaptiveInterval::from_millis(cfg.scan_interval_ms, cfg.max_scan_interval_ms);
    let monitor = Monitor::new(
        ctx.clone(),
        pace,
        cfg.collect_environment,
        cfg.calculate_hashes,
        source,
    );
    let c = ctx.clone();
    let job = tokio::task::spawn_blocking(move || {
        monitor.run(|reason| record_scan(&c, &cfg, Some(reason)));
    });
    if let Err(e) = job.await {
        tracing::error!("process collector panicked and stopped: {e}");
        ctx.counters.scan_errors.fetch_add(1, Relaxed);
    }
}

/// What coverage says about a running event source.
struct SourceInfo {
    name: &'static str,
    /// What the source cannot do here.
    caveat: Option<&'static str>,
}

/// Opens the platform's event source and starts its reading thread.
#[cfg(target_os = "linux")]
fn start_source(environ: bool, ctx: &CollectorContext) -> Result<(Source, SourceInfo), String> {
    let conn = netlink::Connector::open().map_err(|e| e.to_string())?;
    // Since Linux 6.6 anyone may subscribe; reading other users'
    // processes still takes root, and so does the reader's priority.
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let caveat = (!root).then_some(
        "without root the programs of other users' processes cannot be read (reported partial), \
         and on a busy machine short processes may be read too late",
    );
    let (tx, rx) = source::source_queue(std::sync::Arc::clone(&ctx.counters));
    let cancel = ctx.cancel.clone();
    let reader = std::thread::Builder::new()
        .name("edr-proc-events".into())
        .spawn(move || netlink::read_loop(conn, tx, environ, cancel))
        .map_err(|e| format!("cannot start the event reader: {e}"))?;
    let source = Source {
        rx,
        reader,
        reread: Some(procfs::reread),
    };
    let info = SourceInfo {
        name: "netlink proc connector",
        caveat,
    };
    Ok((source, info))
}

#[cfg(target_os = "macos")]
fn start_source(environ: bool, ctx: &CollectorContext) -> Result<(Source, SourceInfo), String> {
    let counters = std::sync::Arc::clone(&ctx.counters);
    let source = eslogger::start(environ, counters, ctx.cancel.clone())?;
    let info = SourceInfo {
        name: "eslogger (Endpoint Security)",
        caveat: None,
    };
    Ok((source, info))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn start_source(_: bool, _: &CollectorContext) -> Result<(Source, SourceInfo), String> {
    Err("no process event source on this platform".into())
}

fn record_events(ctx: &CollectorContext, cfg: &ProcessMonitorConfig, about: &SourceInfo) {
    let mut note = format!(
        "every exec, fork and exit as it happens, short-lived processes included; \
         a scan every {} takes the inventory and catches what events lose",
        scan_period(cfg)
    );
    match about.caveat {
        Some(caveat) => {
            tracing::warn!("process events from the {}, but {caveat}", about.name);
            note = format!("{note}; {caveat}");
        }
        None => tracing::info!("process events from the {}", about.name),
    }
    let mut cov = coverage(ctx);
    cov.process_source = Some(about.name.to_string());
    cov.process_capture = Some(ProcessCapture::Event);
    cov.process_note = Some(note);
}

/// Polling, by choice or because events are unavailable (`why`).
fn record_scan(ctx: &CollectorContext, cfg: &ProcessMonitorConfig, why: Option<&str>) {
    let polling = format!(
        "polling every {}: processes shorter than the scan interval can be missed",
        scan_period(cfg)
    );
    let note = match why {
        Some(why) => {
            tracing::warn!("process events unavailable ({why}); {polling}");
            format!("process events unavailable ({why}); {polling}")
        }
        None => polling,
    };
    let mut cov = coverage(ctx);
    cov.process_source = Some("scan".to_string());
    cov.process_capture = Some(ProcessCapture::Scan);
    cov.process_note = Some(note);
}

/// `1000 ms`, or `1000-4000 ms` with adaptive scanning.
fn scan_period(cfg: &ProcessMonitorConfig) -> String {
    if cfg.max_scan_interval_ms > cfg.scan_interval_ms {
        format!("{}-{} ms", cfg.scan_interval_ms, cfg.max_scan_interval_ms)
    } else {
        format!("{} ms", cfg.scan_interval_ms)
    }
}

/// `source: event` without events: nothing is recorded, and status says so.
fn record_unavailable(ctx: &CollectorContext, why: &str) {
    tracing::error!(
        "process events unavailable ({why}) and polling is off \
         (collectors.process_monitor.source: event): no processes are recorded"
    );
    let mut cov = coverage(ctx);
    cov.process_source = Some("none".to_string());
    cov.process_capture = None;
    cov.process_note = Some(format!(
        "process events unavailable ({why}) and polling is off (source: event): \
         no processes are recorded"
    ));
}
