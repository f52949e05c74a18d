//! `edr-bench files`: what the file sources cost, measured on a running
//! agent from outside.
//!
//! - `rate`: the agent's CPU while files in a watched directory are
//!   rewritten at a set rate (one close-after-write each), per source;
//! - `startup`: how long each watch path of the default list takes to
//!   watch with inotify, and how many watches it costs (its directories).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edr_config::{ConfigSource, FileSource};
use edr_engine::read_status;

use crate::agent::Agent;
use crate::{agent_config, out, probe, WorkDir};

/// Files rewritten in turn: enough that the kernel does not merge the
/// events of one file.
const POOL: usize = 2000;

fn source_name(s: FileSource) -> &'static str {
    match s {
        FileSource::Auto => "auto",
        FileSource::Fanotify => "fanotify",
        FileSource::Inotify => "inotify",
    }
}

/// Rewrites the pool at `rate` a second for `duration`; returns how many
/// rewrites were done.
fn churn(dir: &Path, rate: u64, duration: Duration) -> anyhow::Result<u64> {
    let tick = Duration::from_millis(10);
    let per_tick = (rate / 100).max(1);
    let start = Instant::now();
    let mut done = 0u64;
    let mut next = start;
    while start.elapsed() < duration {
        for _ in 0..per_tick {
            let p = dir.join(format!("f{}", done as usize % POOL));
            let mut f = std::fs::File::create(&p).context("rewrite")?;
            f.write_all(b"0123456789abcdef")?;
            done += 1;
        }
        next += tick;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(done)
}

pub(crate) fn rate(
    sources: &[FileSource],
    rate: u64,
    duration: Duration,
    work_dir: Option<&Path>,
) -> anyhow::Result<()> {
    out(format_args!(
        "file events: {rate} rewrites/s for {} per source, agent CPU from /proc (whole process)\n\
         {:>9} {:>10} {:>10} {:>8} {:>16} {:>9}\n",
        humantime::format_duration(duration),
        "source",
        "rewrites",
        "stored",
        "CPU %",
        "CPU-s per 10000",
        "RSS MiB"
    ))?;
    for &source in sources {
        let work = WorkDir::new(work_dir.map(|d| d.join(source_name(source))).as_deref())?;
        let watched = work.sub("watched")?;
        for i in 0..POOL {
            std::fs::write(watched.join(format!("f{i}")), b"x")?;
        }
        let mut c = agent_config(ConfigSource::default(), &work, None)?;
        let fm = &mut c.collectors.file_monitor;
        fm.source = source;
        fm.watch_paths = vec![watched.display().to_string()];
        fm.linux_watch_paths = Vec::new();
        fm.macos_watch_paths = Vec::new();
        // Every change stored: the cost of the whole path, not of a filter.
        c.filters.coalesce_file_changes_ms = 0;
        c.filters.repeat_window_ms = 0;
        c.collectors.process_monitor.enabled = false;
        c.collectors.network_monitor.enabled = false;
        let mut agent = Agent::spawn(&c, &work.path, false, "warn")?;
        let want = source_name(source);
        agent.wait_until(Duration::from_secs(60), Duration::from_millis(20), |a| {
            read_status(&a.data_dir)
                .filter(|s| {
                    s.coverage.file_source.as_deref() == Some(want)
                        && !s.coverage.watched_paths.is_empty()
                })
                .map(|_| ())
        })?;
        std::thread::sleep(Duration::from_secs(2));
        let before = probe::read(agent.pid)?;
        let stored_before = stored_files(&agent.data_dir);
        let done = churn(&watched, rate, duration)?;
        let after = probe::read(agent.pid)?;
        // The queue drains for a moment after the churn ends.
        std::thread::sleep(Duration::from_secs(3));
        let drained = probe::read(agent.pid)?;
        let stored = stored_files(&agent.data_dir).saturating_sub(stored_before);
        agent.stop()?;
        let wall = after.at.duration_since(before.at).as_secs_f64();
        let cpu = drained.cpu.saturating_sub(before.cpu).as_secs_f64();
        out(format_args!(
            "{:>9} {:>10} {:>10} {:>8.1} {:>16.3} {:>9.1}\n",
            want,
            done,
            stored,
            (after.cpu.saturating_sub(before.cpu)).as_secs_f64() / wall * 100.0,
            cpu / done.max(1) as f64 * 10_000.0,
            after.rss_kb as f64 / 1024.0
        ))?;
    }
    Ok(())
}

fn stored_files(data: &Path) -> u64 {
    read_status(data).map_or(0, |s| s.totals.stored[1])
}

/// Directories under `p` (what a recursive inotify watch costs), at most
/// `cap` counted.
fn dirs_under(p: &Path, cap: usize) -> usize {
    let mut n = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if n >= cap {
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(&d) else {
            continue;
        };
        if !meta.is_dir() {
            continue;
        }
        n += 1;
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().map(|e| e.path()));
        }
    }
    n
}

pub(crate) fn startup(runs: usize, work_dir: Option<&Path>) -> anyhow::Result<()> {
    let defaults = edr_config::FileMonitorConfig::default().paths_for_this_os();
    let mut per_path: Vec<(String, Vec<f64>)> = Vec::new();
    let mut totals = Vec::new();
    for run in 0..runs {
        let work = WorkDir::new(work_dir.map(|d| d.join(format!("run{run}"))).as_deref())?;
        let mut c = agent_config(ConfigSource::default(), &work, None)?;
        c.collectors.file_monitor.source = FileSource::Inotify;
        c.collectors.process_monitor.enabled = false;
        c.collectors.network_monitor.enabled = false;
        let mut agent = Agent::spawn(&c, &work.path, false, "warn,edr_collect::file=debug")?;
        let n = defaults.len();
        agent.wait_until(Duration::from_secs(60), Duration::from_millis(5), |a| {
            read_status(&a.data_dir)
                .filter(|s| s.coverage.watched_paths.len() + s.coverage.unwatched_paths.len() >= n)
                .map(|_| ())
        })?;
        let log = agent.log();
        agent.stop()?;
        let mut total = 0.0;
        for line in log.lines().filter(|l| l.contains("elapsed_us=")) {
            let Some(us) = line
                .split("elapsed_us=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
            else {
                continue;
            };
            // `... watching <path> elapsed_us=N` (fields after the message).
            let Some(path) = line
                .split("watching ")
                .nth(1)
                .and_then(|r| r.split(" elapsed_us=").next())
            else {
                continue;
            };
            total += us;
            match per_path.iter_mut().find(|(p, _)| p == path) {
                Some((_, v)) => v.push(us),
                None => per_path.push((path.to_string(), vec![us])),
            }
        }
        totals.push(total);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    out(format_args!(
        "default watch list with inotify, {runs} runs: median time to watch each path, \
         and the watches it costs (its directories)\n{:>10} {:>8}  path\n",
        "us", "watches"
    ))?;
    for (path, v) in per_path.iter_mut() {
        let watches = dirs_under(&PathBuf::from(&*path), 1_000_000);
        let shown = if watches == 0 { 1 } else { watches };
        out(format_args!("{:>10.0} {:>8}  {path}\n", median(v), shown))?;
    }
    out(format_args!(
        "{:>10.0}           total of the watched paths (median run)\n",
        median(&mut totals)
    ))?;
    Ok(())
}
