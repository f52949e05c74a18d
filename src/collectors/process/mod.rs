//! The process collector: polls the process table and reports processes
//! that started and ended since the previous scan.
//!
//! Polling sees only processes alive at some scan; anything that starts and
//! exits between two scans is missed (recorded in [`Coverage`]). The first
//! scan reports every running process as inventory (`event.kind: state`).
//!
//! Processes are identified by (pid, start time), so a reused pid is a new
//! process, and `process.entity_id` is derived from host, pid and start time
//! (see [`process_start_ms`]) so other event sources can produce the same id.
//!
//! [`Coverage`]: crate::collectors::Coverage

mod hash;
mod scanner;
#[cfg(target_os = "linux")]
mod start_time;
mod tracker;
mod users;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use crate::collectors::{coverage, CollectorContext};
use crate::config::ProcessMonitorConfig;
use scanner::{ScanError, ScanStats, Scanner};

#[cfg(target_os = "linux")]
pub use start_time::process_start_ms;

/// Runs until `ctx.cancel` fires. Each scan runs on a blocking thread; a
/// cancelled scan stops between events and hash chunks, so returning waits
/// at most for one table read.
pub async fn run(cfg: ProcessMonitorConfig, ctx: CollectorContext) {
    record_coverage(&cfg, &ctx);
    let mut ticker = tokio::time::interval(Duration::from_millis(cfg.scan_interval_ms.max(1)));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut scanner = Scanner::new(cfg, ctx.clone());
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let job = tokio::task::spawn_blocking(move || {
            let result = scanner.scan();
            (scanner, result)
        });
        match job.await {
            Ok((back, result)) => {
                scanner = back;
                report(&ctx, result, &mut failing);
            }
            Err(e) => {
                tracing::error!("process scan panicked, process collector stopped: {e}");
                ctx.counters.scan_errors.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}

fn record_coverage(cfg: &ProcessMonitorConfig, ctx: &CollectorContext) {
    let mut cov = coverage(ctx);
    cov.process_source = Some("scan".to_string());
    cov.process_note = Some(format!(
        "polling every {} ms: processes that start and end between two scans are not seen",
        cfg.scan_interval_ms
    ));
}

/// Counts failures; warns once per run of failures rather than every scan.
fn report(ctx: &CollectorContext, result: Result<ScanStats, ScanError>, failing: &mut bool) {
    match result {
        Ok(s) => {
            if std::mem::take(failing) {
                tracing::info!("process scans work again");
            }
            tracing::debug!(
                processes = s.processes,
                started = s.started,
                ended = s.ended,
                elapsed_us = u64::try_from(s.elapsed.as_micros()).unwrap_or(u64::MAX),
                "process scan"
            );
        }
        Err(e) => {
            ctx.counters.scan_errors.fetch_add(1, Relaxed);
            if std::mem::replace(failing, true) {
                tracing::debug!("process scan failed again: {e}");
            } else {
                tracing::warn!("process scan failed: {e}");
            }
        }
    }
}
