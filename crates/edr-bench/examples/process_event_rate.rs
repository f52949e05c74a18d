//! How many execs per second the process collector keeps up with, and what
//! it costs: runs the real agent (only the process collector), launches
//! `/bin/true` at increasing rates for a few seconds each, and reads back
//! the stored events.
//!
//! ```text
//! cargo build --release
//! cargo run --release -p edr-bench --example process_event_rate -- [--seconds 3] \
//!     [--rates 250,500,1000,2000,max] [--source auto|scan]
//! ```
//!
//! Per step it prints the exec rate reached, the share of runs stored with
//! their executable and arguments, and the agent's CPU: in percent of one
//! core, and in ms per 1,000 execs (the whole agent: reading events,
//! `/proc`, building, compressing and writing them), of which the event
//! reader thread. The agent runs as its own process so that the
//! launcher's own cost (fork, exec, wait) is not counted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edr_config::ProcessSource;
use edr_engine::read_status;
use edr_store::{list_batches, open_batch_reader};

/// Unpaced launches use this many threads.
const MAX_THREADS: usize = 4;
/// Time for the agent to record a step's last events before measuring.
const SETTLE: Duration = Duration::from_secs(2);

struct Options {
    seconds: u64,
    rates: Vec<Option<u64>>,
    source: ProcessSource,
}

fn options() -> Result<Options, String> {
    let mut o = Options {
        seconds: 3,
        rates: vec![Some(250), Some(500), Some(1000), Some(2000), None],
        source: ProcessSource::Auto,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--seconds" => o.seconds = value.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--rates" => {
                o.rates = value
                    .split(',')
                    .map(|r| match r {
                        "max" => Ok(None),
                        n => n.parse().map(Some).map_err(|e| format!("--rates: {e}")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--source" => {
                o.source = match value.as_str() {
                    "auto" => ProcessSource::Auto,
                    "scan" => ProcessSource::Scan,
                    other => return Err(format!("--source: auto or scan, not {other}")),
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

/// The release agent next to this example's binary.
fn agent_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let bin = dir.join("edr-agent");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: run `cargo build --release` first",
            bin.display()
        ))
    }
}

fn start_agent(bin: &Path, root: &Path, source: ProcessSource) -> Result<Child, String> {
    let mut c = edr_config::Config::default();
    c.storage.local_storage.data_dir = Some(root.join("data").display().to_string());
    c.collectors.file_monitor.enabled = false;
    c.collectors.network_monitor.enabled = false;
    c.collectors.process_monitor.source = source;
    let config = root.join("config.yaml");
    c.save(&config).map_err(|e| e.to_string())?;
    Command::new(bin)
        .args(["run", "--log", "warn", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))
}

/// CPU ticks (user + system) of a process or one of its threads.
fn cpu_ticks(stat_path: &str) -> u64 {
    let Ok(stat) = std::fs::read_to_string(stat_path) else {
        return 0;
    };
    let Some(after) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
        return 0;
    };
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat; `after` starts at field 3.
    let field = |n: usize| {
        f.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(14) + field(15)
}

/// (whole agent, event reader thread) CPU ticks.
fn agent_cpu(pid: u32) -> (u64, u64) {
    let total = cpu_ticks(&format!("/proc/{pid}/stat"));
    let mut reader = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let dir = t.path();
            let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            if comm.trim() == "edr-proc-events" {
                reader += cpu_ticks(&dir.join("stat").display().to_string());
            }
        }
    }
    (total, reader)
}

fn ticks_to_ms(ticks: u64) -> f64 {
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 * 1000.0 / hz
}

/// Launches `/bin/true <marker>-<i>` for `seconds` at `rate` per second
/// (unpaced if None); returns how many ran.
fn launch(marker: &str, rate: Option<u64>, seconds: u64) -> usize {
    let threads = match rate {
        Some(r) => (r / 500).clamp(1, MAX_THREADS as u64) as usize,
        None => MAX_THREADS,
    };
    let until = Instant::now() + Duration::from_secs(seconds);
    let marker = Arc::new(marker.to_string());
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let marker = Arc::clone(&marker);
            let interval = rate.map(|r| Duration::from_secs_f64(threads as f64 / r as f64));
            std::thread::spawn(move || {
                let mut n = 0usize;
                let mut due = Instant::now();
                while Instant::now() < until {
                    if let Some(i) = interval {
                        due += i;
                        std::thread::sleep(due.saturating_duration_since(Instant::now()));
                    }
                    let ran = Command::new("/bin/true")
                        .arg(format!("{marker}-{t}-{n}"))
                        .stdin(Stdio::null())
                        .status();
                    if ran.is_ok() {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().unwrap_or(0)).sum()
}

/// Runs of each marker stored with executable and arguments.
fn captured(data: &Path, markers: &[String]) -> Vec<usize> {
    let mut seen: Vec<HashSet<String>> = vec![HashSet::new(); markers.len()];
    for path in list_batches(data).unwrap_or_default() {
        let Ok(reader) = open_batch_reader(&path) else {
            continue;
        };
        for line in std::io::BufRead::lines(reader).map_while(Result::ok) {
            let Ok(e) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let p = &e["process"];
            let started = e["event"]["type"][0] == "start";
            let is_true = p["executable"]
                .as_str()
                .is_some_and(|x| x.ends_with("/true"));
            if !(started && is_true) {
                continue;
            }
            for arg in p["args"].as_array().into_iter().flatten() {
                let Some(arg) = arg.as_str() else { continue };
                for (i, m) in markers.iter().enumerate() {
                    if arg.starts_with(m.as_str()) {
                        seen[i].insert(arg.to_string());
                    }
                }
            }
        }
    }
    seen.iter().map(HashSet::len).collect()
}

struct Step {
    rate: Option<u64>,
    runs: usize,
    secs: f64,
    cpu: (u64, u64),
}

fn main() -> Result<(), String> {
    let o = options()?;
    let bin = agent_binary()?;
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let data = root.path().join("data");
    let mut agent = start_agent(&bin, root.path(), o.source)?;
    let up = (0..150).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        read_status(&data).filter(|s| s.coverage.process_capture.is_some())
    });
    let Some(status) = up else {
        let _ = agent.kill();
        return Err("the agent did not start".into());
    };
    println!(
        "source: {} ({})",
        status.coverage.process_source.unwrap_or_default(),
        status.coverage.process_note.unwrap_or_default()
    );
    // The inventory's hashing is start-up cost, not per-exec cost.
    std::thread::sleep(SETTLE);

    let mut steps = Vec::new();
    let mut markers = Vec::new();
    for (i, rate) in o.rates.iter().enumerate() {
        let marker = format!("edr-rate-{}-{i}", std::process::id());
        let before = agent_cpu(agent.id());
        let began = Instant::now();
        let runs = launch(&marker, *rate, o.seconds);
        let secs = began.elapsed().as_secs_f64();
        std::thread::sleep(SETTLE);
        let after = agent_cpu(agent.id());
        steps.push(Step {
            rate: *rate,
            runs,
            secs,
            cpu: (after.0 - before.0, after.1 - before.1),
        });
        markers.push(marker);
    }
    let peak_rss = std::fs::read_to_string(format!("/proc/{}/status", agent.id()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.id() as libc::pid_t, libc::SIGTERM) };
    agent.wait().map_err(|e| e.to_string())?;
    let totals = read_status(&data).map(|s| s.totals).unwrap_or_default();
    let stored = captured(&data, &markers);

    println!("| target exec/s | reached exec/s | stored with exe+args | agent CPU % of a core | agent CPU ms / 1,000 execs | of which reader |");
    println!("|---|---|---|---|---|---|");
    for (s, got) in steps.iter().zip(&stored) {
        let wall = s.secs + SETTLE.as_secs_f64();
        let per_k = |ticks: u64| ticks_to_ms(ticks) * 1000.0 / s.runs.max(1) as f64;
        println!(
            "| {} | {:.0} | {:.2}% ({got}/{}) | {:.1} | {:.0} | {:.0} |",
            s.rate.map_or("max".to_string(), |r| r.to_string()),
            s.runs as f64 / s.secs,
            *got as f64 * 100.0 / s.runs.max(1) as f64,
            s.runs,
            ticks_to_ms(s.cpu.0) / 10.0 / wall,
            per_k(s.cpu.0),
            per_k(s.cpu.1),
        );
    }
    println!(
        "whole run: {} processes reported without their program, {} event losses, {} events dropped; agent peak RSS {peak_rss}",
        totals.process_partial, totals.process_events_lost, totals.dropped[0]
    );
    Ok(())
}
