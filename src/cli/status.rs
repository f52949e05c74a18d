//! `edr-agent status`.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use edr_engine::{read_status, running_agent, EngineState, Snapshot};

use super::api::Source;
use super::{human_bytes, human_duration, out};

/// Exit code when no agent runs on the data dir (as `systemctl status`).
const NOT_RUNNING: u8 = 3;
/// A running agent rewrites its status every second; one this old means it
/// cannot write its data dir.
const STALE_AFTER: Duration = Duration::from_secs(5);

/// From the service's API when it answered, else the data dir's lock and
/// status file. The output is the same either way but for the `source:`
/// line (the JSON has none: `--verbose` says it on stderr).
pub fn status(source: &Source, json: bool) -> anyhow::Result<ExitCode> {
    let data_dir = source.data_dir();
    let (running, snapshot) = match source {
        Source::Api(service) => {
            let snap = service.call(service.client.status())?;
            (Some(Some(snap.pid)), Some(snap))
        }
        Source::DataDir(d) => (running_agent(d), read_status(d)),
    };
    if json {
        let body = serde_json::json!({
            "running": running.is_some(),
            "pid": running.flatten(),
            "data_dir": data_dir.display().to_string(),
            "status": snapshot,
        });
        out(format_args!("{body}\n"))?;
    } else {
        print_human(data_dir, running, snapshot.as_ref())?;
        let via = match source {
            Source::Api(s) => format!("the service's API ({})", s.client.socket().display()),
            Source::DataDir(_) => "the data dir".to_string(),
        };
        out(format_args!("source:      {via}\n"))?;
    }
    Ok(if running.is_some() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_RUNNING)
    })
}

fn print_human(
    data_dir: &Path,
    running: Option<Option<u32>>,
    s: Option<&Snapshot>,
) -> anyhow::Result<()> {
    let now = SystemTime::now();
    match (running, s) {
        (Some(pid), Some(s)) => {
            let up = now
                .duration_since(SystemTime::from(s.started))
                .unwrap_or_default();
            out(format_args!(
                "agent:       running (pid {}), up {}, {}\n",
                pid.unwrap_or(s.pid),
                human_duration(up),
                match s.state() {
                    EngineState::Running => "collecting",
                    EngineState::Paused => "PAUSED",
                    // Its last status is written; the lock goes next.
                    EngineState::Stopped => "stopping",
                }
            ))?;
        }
        (Some(pid), None) => {
            out(format_args!(
                "agent:       running (pid {}), no status written yet\n",
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            ))?;
        }
        (None, Some(s)) => {
            let age = now
                .duration_since(SystemTime::from(s.latest.ts))
                .unwrap_or_default();
            out(format_args!(
                "agent:       not running (last status {} ago, shown below)\n",
                human_duration(age)
            ))?;
        }
        (None, None) => {
            out(format_args!(
                "agent:       not running; no agent has run on {}\n",
                data_dir.display()
            ))?;
            return Ok(());
        }
    }
    out(format_args!("data dir:    {}\n", data_dir.display()))?;
    let Some(s) = s else { return Ok(()) };
    let age = now
        .duration_since(SystemTime::from(s.latest.ts))
        .unwrap_or_default();
    if running.is_some() && age > STALE_AFTER {
        out(format_args!(
            "WARNING:     status last written {} ago: the agent cannot write its data dir (full, read-only or removed?); the figures below are from then\n",
            human_duration(age)
        ))?;
    }
    let l = &s.latest;
    out(format_args!(
        "resources:   RSS {}, VSZ {}, CPU {:.1}%\n",
        human_bytes(l.rss_bytes),
        human_bytes(l.vsz_bytes),
        l.cpu_percent
    ))?;
    out(format_args!(
        "events/s:    process {:.1}, file {:.1}, network {:.1}\n",
        l.events_per_sec[0], l.events_per_sec[1], l.events_per_sec[2]
    ))?;
    let t = &s.totals;
    out(format_args!(
        "events:      {} stored (process {}, file {}, network {}); {} lost (not writable), {} filtered\n",
        t.stored.iter().sum::<u64>(),
        t.stored[0],
        t.stored[1],
        t.stored[2],
        t.store_failed.iter().sum::<u64>(),
        t.filtered.iter().sum::<u64>(),
    ))?;
    out(format_args!(
        "dropped:     {} (queue full: process {}, file {}, network {}); hashes skipped {} (+{} hash queue full)\n",
        t.dropped_total(),
        t.dropped[0],
        t.dropped[1],
        t.dropped[2],
        t.hash_skipped,
        t.hash_queue_dropped,
    ))?;
    let st = &s.storage;
    let pct = if st.cap_bytes > 0 {
        st.used_bytes as f64 / st.cap_bytes as f64 * 100.0
    } else {
        0.0
    };
    out(format_args!(
        "storage:     {} of {} cap ({pct:.2}%), {} files, retention {} days, growth {}/day\n",
        human_bytes(st.used_bytes),
        human_bytes(st.cap_bytes),
        st.files,
        st.retention_days,
        human_bytes(l.storage_growth_per_day as u64),
    ))?;
    if let Some(e) = &st.error {
        out(format_args!("storage err: {e}\n"))?;
    }
    if st.compress {
        out(format_args!(
            "compression: {:.1}% reduction, {:.1} bytes/event (last hour); last batch took {:.0} ms\n",
            l.compression_ratio * 100.0,
            l.bytes_per_event,
            l.batch_latency_ms
        ))?;
    }
    let c = &s.coverage;
    if let Some(src) = &c.process_source {
        out(format_args!(
            "processes:   {src}{}\n",
            c.process_note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ))?;
    }
    if t.process_events_lost + t.process_partial + t.process_source_missed > 0 {
        out(format_args!(
            "process events: {} losses (kernel buffer overruns or backlog), {} processes reported without their program (gone before it could be read, or not readable), {} found only by the scan\n",
            t.process_events_lost, t.process_partial, t.process_source_missed
        ))?;
    }
    if let Some(src) = &c.network_source {
        out(format_args!(
            "network:     {src}{}\n",
            c.network_note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ))?;
    }
    if t.network_events_lost > 0 {
        out(format_args!(
            "network events: {} lost in the kernel (its ring buffer was full, or it skipped \
             the program while it ran on the same CPU)\n",
            t.network_events_lost
        ))?;
    }
    if let Some(src) = &c.file_source {
        out(format_args!(
            "files:       {src}{}\n",
            c.file_note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ))?;
    }
    if !c.watched_paths.is_empty() {
        out(format_args!(
            "watching:    {}\n",
            c.watched_paths.join(", ")
        ))?;
    }
    for u in &c.unwatched_paths {
        out(format_args!("not watched: {} ({})\n", u.path, u.reason))?;
    }
    if t.watcher_overflows > 0 {
        out(format_args!(
            "file events: the kernel queue overflowed {} times (events lost)\n",
            t.watcher_overflows
        ))?;
    }
    if let Some(e) = &s.config_error {
        out(format_args!("config:      last edit not applied: {e}\n"))?;
    }
    let d = &s.detection;
    if d.enabled {
        out(format_args!(
            "detection:   {} rules loaded, {} skipped; {} events evaluated ({} ns/event); {} alerts raised, {} suppressed\n",
            d.rules_loaded, d.rules_skipped, d.events_evaluated, d.eval_ns_mean, d.alerts_raised, d.alerts_suppressed
        ))?;
    } else {
        out(format_args!("detection:   off\n"))?;
    }
    if let Some(sh) = &s.shipping {
        let state = match (&sh.last_error, sh.connected) {
            (Some(e), _) => format!("error: {e}"),
            (None, true) => "connected".to_string(),
            (None, false) => "not connected".to_string(),
        };
        let oldest = sh
            .oldest_pending_ms
            .map(|t| {
                let at = SystemTime::UNIX_EPOCH + Duration::from_millis(t);
                let age = SystemTime::from(s.latest.ts)
                    .duration_since(at)
                    .unwrap_or_default();
                format!(", oldest {} old", human_duration(age))
            })
            .unwrap_or_default();
        out(format_args!(
            "shipping:    {state}; {} batches ({} events, {}) shipped, {} pending ({}{oldest}), {} duplicates acknowledged, {} gaps\n",
            sh.shipped_batches,
            sh.shipped_events,
            human_bytes(sh.shipped_bytes),
            sh.pending_batches,
            human_bytes(sh.pending_bytes),
            sh.duplicates,
            sh.gaps
        ))?;
    }
    if s.alerts.is_empty() {
        out(format_args!("alerts:      none\n"))?;
    } else {
        for a in &s.alerts {
            let since = now
                .duration_since(SystemTime::from(a.since))
                .unwrap_or(Duration::ZERO);
            out(format_args!(
                "ALERT:       {} (for {})\n",
                a.message,
                human_duration(since)
            ))?;
        }
    }
    Ok(())
}
