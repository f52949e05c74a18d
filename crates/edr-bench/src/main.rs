//! `edr-bench`: reproducible measurements of the agent, from outside
//! (`/proc/PID/stat`, `/proc/PID/status`, `ps`, `/usr/bin/time -v`) where
//! an agent runs, and of the storage pipeline in-process. Each subcommand
//! prints a table; `docs/PERFORMANCE.md` lists the commands behind every
//! published number.

mod agent;
mod detect;
mod files;
mod load;
mod pipeline;
mod probe;
mod ship;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use edr_config::{Compression, Config, ConfigSource};
use edr_engine::read_status;
use edr_model::event::{Action, Timestamp};
use edr_store::{batch_stats, list_batches, open_batch_reader};

use agent::{Agent, TimeReport};
use load::{Generated, Level, Load};
use pipeline::{PipelineReport, PipelineRun};
use probe::Series;

#[derive(Parser, Debug)]
#[command(
    name = "edr-bench",
    version,
    about = "Measure edr-agent: a mixed workload against it, the storage pipeline, start-up, and costs at scale (see docs/PERFORMANCE.md)"
)]
struct BenchArgs {
    #[command(subcommand)]
    what: BenchCommand,
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    match bench(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Writes to stdout. A closed pipe (`edr-bench ... | head`) ends the
/// program quietly, as for any Unix filter.
fn out(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(e.into()),
    }
}

/// The `edr-agent` binary the benches measure: `$EDR_AGENT_BIN`, or the one
/// built beside this program (`cargo build --release --workspace` puts both
/// in `target/release`).
fn agent_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("EDR_AGENT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("cannot find this program")?;
    let agent = exe.with_file_name("edr-agent");
    anyhow::ensure!(
        agent.exists(),
        "no edr-agent binary at {} (build it with `cargo build --release`, or set EDR_AGENT_BIN)",
        agent.display()
    );
    Ok(agent)
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Drive the mixed workload (processes, file churn, TCP on 127.0.0.1)
    /// against an agent and measure it from outside.
    Workload(WorkloadArgs),
    /// Synthetic mixed events through the real batcher into files, at set
    /// rates or as fast as one core stores them.
    Pipeline(PipelineArgs),
    /// Time from starting the agent to its first stored batch.
    Startup(StartupArgs),
    /// What the agent costs with many processes, connections or watched files.
    Scale(ScaleArgs),
    /// Detection: evaluation throughput of the stage on one core on the
    /// synthetic mix, and the rsigma CLI on the same events and rules.
    Detect(DetectArgs),
    /// File sources: agent CPU per file events/s for fanotify and inotify,
    /// or the start-up cost of the default watch list with inotify.
    Files(FilesArgs),
    /// Detection: time from a real process start to its stored alert, with
    /// a started agent (needs root: the kernel's process events).
    AlertLatency(AlertLatencyArgs),
    /// Network sources: the agent's CPU while short TCP connections are
    /// made at a set rate, on eBPF or polling, and its idle RSS.
    Connections(ConnectionsArgs),
    /// Shipping: the NATS sink's throughput per CPU-second on batches on
    /// disk (gzip on and off), against a real nats-server.
    ShipThroughput(ShipThroughputArgs),
    /// Shipping: a real agent under a file load, shipping to a real
    /// nats-server; event time to consumer receipt, and the agent's RSS
    /// with shipping on and off.
    ShipLag(ShipLagArgs),
    /// Used by `scale connections`: holds the client ends of N connections
    /// in a second process (one process may not open enough descriptors
    /// for both ends) until its stdin closes.
    #[command(hide = true)]
    HoldClients { port: u16, count: usize },
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Directory for the run's files (kept); default: a temporary one,
    /// removed afterwards.
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Do not wrap a started agent in /usr/bin/time -v.
    #[arg(long)]
    no_time: bool,
}

#[derive(Args, Debug)]
struct WorkloadArgs {
    /// Activity: idle (nothing), light (1 process, 5 files, 1 connection a
    /// second), heavy (20, 200, 50).
    #[arg(long, value_enum, default_value = "light")]
    level: Level,
    /// Measured time.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time after the agent is up and before measuring (its inventory).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Measure this running agent instead of starting one.
    #[arg(long, value_name = "PID", requires = "dir")]
    pid: Option<u32>,
    /// With --pid: a directory that agent watches (files churn there).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// With --pid: its data dir, to count what it stored (committed
    /// batches only).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Config file for the started agent (its data dir and one watched
    /// directory are set by the bench).
    #[arg(long, value_name = "FILE", conflicts_with = "pid")]
    config: Option<PathBuf>,
    /// Preset for the started agent.
    #[arg(long, value_name = "NAME", conflicts_with = "pid")]
    preset: Option<String>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Codec {
    Gzip,
    Zstd,
    None,
}

#[derive(Args, Debug)]
struct PipelineArgs {
    /// Offered events per second, one run each (0: as fast as it goes).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    rates: Vec<f64>,
    /// Time per run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[arg(long, value_enum, default_value = "gzip")]
    compression: Codec,
    /// Compression level (default: gzip 6, zstd 3).
    #[arg(long)]
    level: Option<u32>,
    /// max_events_per_batch.
    #[arg(long, default_value_t = 1000)]
    batch: u32,
    /// Adaptive batching on, or off (the default config).
    #[arg(long, default_value = "off", value_parser = on_off, action = clap::ArgAction::Set)]
    adaptive: bool,
    /// The detection stage with the built-in rules on (the default config),
    /// or off: the storage path alone.
    #[arg(long, default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    detection: bool,
    /// Keep the run's batch files in `<work-dir>/data` (one rate only), a
    /// data dir `edr-agent` can read: stored data for measuring its readers.
    #[arg(long, requires = "work_dir")]
    keep_data: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct StartupArgs {
    /// Number of starts (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Unit {
    Processes,
    Connections,
    Files,
}

#[derive(Args, Debug)]
struct ScaleArgs {
    /// What to multiply.
    #[arg(value_enum)]
    unit: Unit,
    /// How many: extra sleeping processes, TCP connections (both ends
    /// here, so twice the sockets), or files (100 a directory).
    count: usize,
    /// Measured time.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct FilesArgs {
    /// `rate`: CPU at a set rate of file rewrites, per source; `startup`:
    /// the default watch list's cost with inotify.
    #[arg(value_enum)]
    what: FilesWhat,
    /// Sources measured by `rate` (fanotify needs root).
    #[arg(long = "source", value_enum, default_values = ["fanotify", "inotify"])]
    sources: Vec<FileSourceArg>,
    /// Rewrites a second (`rate`).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Measured time per source (`rate`).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Agent starts (`startup`).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FilesWhat {
    Rate,
    Startup,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum FileSourceArg {
    Fanotify,
    Inotify,
}

#[derive(Args, Debug)]
struct DetectArgs {
    /// Sigma rule files or directories loaded besides the built-in rules
    /// (e.g. SigmaHQ's rules folder); repeatable.
    #[arg(long = "rules", value_name = "PATH")]
    rules: Vec<PathBuf>,
    /// Events per pass (the seeded synthetic mix).
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Measured passes (the median is reported), after one warm-up pass.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// The rsigma CLI to run on the same events and rules afterwards.
    #[arg(long, value_name = "BIN")]
    rsigma: Option<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NetSource {
    /// The kernel's events (root with BTF).
    Ebpf,
    /// sock_diag polling.
    Polling,
}

#[derive(Args, Debug)]
struct ConnectionsArgs {
    /// Where the agent takes connections from.
    #[arg(long, value_enum, default_value = "ebpf")]
    source: NetSource,
    /// Connections made per second (each opened and closed at once).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Detection on (the default config) or off: with it off the figure
    /// is closer to the source's own cost.
    #[arg(long, default_value = "on", value_parser = on_off, action = clap::ArgAction::Set)]
    detection: bool,
    /// Measured time under load (the same again is measured idle first).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Before starting the agent, wait up to this long for the machine's
    /// TCP sockets in TIME_WAIT (an earlier run's, kept 60 s by the
    /// kernel) to go: a polling source scans them, so they would be
    /// measured as idle cost. 0 does not wait.
    #[arg(long, default_value = "75s", value_parser = humantime::parse_duration)]
    drain: Duration,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct AlertLatencyArgs {
    /// Process starts measured.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// The agent's collection_interval_ms (how long a batch stays open).
    #[arg(long, default_value_t = 5000)]
    interval_ms: u64,
    /// Sigma rule files or directories loaded besides the built-in rules.
    #[arg(long = "rules", value_name = "PATH")]
    rules: Vec<PathBuf>,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ShipThroughputArgs {
    /// Events per run (synthetic, written as gzip-6 batches first).
    #[arg(long, default_value_t = 400_000)]
    events: usize,
    /// Events per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Runs per compression setting (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct ShipLagArgs {
    /// Files written per second in the watched directory (each becomes a
    /// created and a modified event: 500 make 1,000 events a second).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Load time per run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    #[command(flatten)]
    common: Common,
}

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("expected on or off, not {s:?}")),
    }
}

fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    match args.what {
        BenchCommand::Workload(a) => workload(a),
        BenchCommand::Pipeline(a) => pipeline_runs(a),
        BenchCommand::Startup(a) => startup(a),
        BenchCommand::Scale(a) => scale(a),
        BenchCommand::Detect(a) => detect_bench(a),
        BenchCommand::Files(a) => files_bench(a),
        BenchCommand::AlertLatency(a) => alert_latency(a),
        BenchCommand::Connections(a) => connections(a),
        BenchCommand::ShipThroughput(a) => ship_throughput(a),
        BenchCommand::ShipLag(a) => ship_lag(a),
        BenchCommand::HoldClients { port, count } => hold_clients(port, count),
    }?;
    Ok(ExitCode::SUCCESS)
}

/// The run's directory: given (kept) or temporary (removed on drop).
struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl WorkDir {
    fn new(given: Option<&Path>) -> anyhow::Result<WorkDir> {
        let (path, remove) = match given {
            Some(p) => (p.to_path_buf(), false),
            None => {
                let nanos = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let name = format!("edr-bench-{}-{nanos}", std::process::id());
                (std::env::temp_dir().join(name), true)
            }
        };
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(WorkDir { path, remove })
    }

    fn sub(&self, name: &str) -> anyhow::Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A config for a measured agent: data in the work dir, `watched` among
/// the watch paths.
fn agent_config(
    source: ConfigSource,
    work: &WorkDir,
    watched: Option<&Path>,
) -> anyhow::Result<Config> {
    let mut c = ConfigSource {
        data_dir: Some(work.path.join("data")),
        ..source
    }
    .load()?;
    if let Some(w) = watched {
        c.collectors
            .file_monitor
            .watch_paths
            .push(w.display().to_string());
    }
    Ok(c)
}

/// Waits until the agent's status shows a watch on `dir`.
fn wait_watching(agent: &mut Agent, dir: &Path) -> anyhow::Result<()> {
    let want = dir.display().to_string();
    agent.wait_until(Duration::from_secs(60), Duration::from_millis(20), |a| {
        read_status(&a.data_dir)
            .filter(|s| s.coverage.watched_paths.contains(&want))
            .map(|_| ())
    })
}

/// One reading a second for `duration`.
fn sample(pid: u32, duration: Duration) -> anyhow::Result<Series> {
    let mut series = Series::default();
    let start = Instant::now();
    let mut i = 0u32;
    loop {
        series.push(probe::read(pid)?);
        if start.elapsed() >= duration {
            return Ok(series);
        }
        i += 1;
        let next = start + Duration::from_secs(u64::from(i)).min(duration);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
}

/// What the agent stored, and how much of the workload.
#[derive(Debug, Default)]
struct Captured {
    events: u64,
    batches: u64,
    raw_bytes: u64,
    stored_bytes: u64,
    procs_started: u64,
    procs_ended: u64,
    files_created: u64,
    files_deleted: u64,
    files_modified: u64,
    connections: u64,
    /// Detection alerts (stored as events too; not counted as captures).
    alerts: u64,
}

fn captured(data_dir: &Path, watched: &Path, port: u16) -> anyhow::Result<Captured> {
    let mut c = Captured::default();
    let prefix = watched.display().to_string();
    for path in list_batches(data_dir)? {
        let s = batch_stats(&path)?;
        c.batches += 1;
        c.events += s.events;
        c.raw_bytes += s.raw_bytes;
        c.stored_bytes += s.stored_bytes;
        for line in std::io::BufRead::lines(open_batch_reader(&path)?) {
            let v: serde_json::Value = serde_json::from_str(&line?)?;
            // An alert repeats the action and fields of the event it is
            // about (the workload's program runs from a temp dir, which a
            // built-in rule flags): counting it would capture it twice.
            if v["event"]["kind"] == "alert" {
                c.alerts += 1;
                continue;
            }
            let action = v["event"]["action"].as_str().and_then(Action::parse);
            let ours_proc = v["process"]["name"] == load::PROC_NAME;
            let ours_file = v["file"]["path"]
                .as_str()
                .is_some_and(|p| p.starts_with(&prefix));
            match action {
                Some(Action::ProcessStarted) if ours_proc => c.procs_started += 1,
                Some(Action::ProcessEnded) if ours_proc => c.procs_ended += 1,
                Some(Action::FileCreated) if ours_file => c.files_created += 1,
                Some(Action::FileDeleted) if ours_file => c.files_deleted += 1,
                Some(Action::FileModified) if ours_file => c.files_modified += 1,
                Some(Action::ConnectionOpened)
                    if v["network"]["direction"] == "outbound"
                        && v["destination"]["port"] == port =>
                {
                    c.connections += 1
                }
                _ => {}
            }
        }
    }
    Ok(c)
}

fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", part as f64 / whole as f64 * 100.0)
    }
}

fn workload(a: WorkloadArgs) -> anyhow::Result<()> {
    let work = WorkDir::new(a.common.work_dir.as_deref())?;
    let proc_exe = load::install_proc(&work.path)?;
    let rates = a.level.rates();
    let (mut agent, pid, watched, data_dir) = match a.pid {
        Some(pid) => {
            let dir = a.dir.clone().context("--pid needs --dir")?;
            (None, pid, dir, a.data_dir.clone())
        }
        None => {
            let watched = work.sub("watched")?;
            let source = ConfigSource {
                preset: a.preset.clone(),
                file: a.config.clone(),
                data_dir: None,
            };
            let config = agent_config(source, &work, Some(&watched))?;
            let mut agent = Agent::spawn(&config, &work.path, !a.common.no_time, "warn")?;
            wait_watching(&mut agent, &watched)?;
            let (pid, data) = (agent.pid, agent.data_dir.clone());
            (Some(agent), pid, watched, Some(data))
        }
    };
    std::thread::sleep(a.warmup);
    let load = Load::start(rates, &watched, &proc_exe)?;
    let series = sample(pid, a.duration)?;
    let ps = probe::ps(pid).ok();
    let port = load.port;
    let generated = load.stop();
    // Let the last ends be seen: a process scan (1 s) and a network scan
    // backing off (up to max_scan_interval_ms, 4 s by default).
    std::thread::sleep(Duration::from_secs(5));
    let time = match agent.take() {
        Some(agent) => agent.stop()?,
        None => TimeReport::default(),
    };
    let stored = match &data_dir {
        Some(d) => Some(captured(d, &watched, port)?),
        None => None,
    };
    print_workload(
        &a,
        pid,
        &rates,
        &series,
        ps,
        &time,
        &generated,
        stored.as_ref(),
    )?;
    // What the agent itself counted as not stored, so a share under 100%
    // above can be told apart from a loss nothing counted.
    if let Some(t) = data_dir.as_deref().and_then(read_status).map(|s| s.totals) {
        out(format_args!(
            "  counted by the agent: dropped at the queue {}, filtered {}, lost in the kernel: {} process events, {} network records; file watcher overflows {}\n",
            t.dropped_total(),
            t.filtered.iter().sum::<u64>(),
            t.process_events_lost,
            t.network_events_lost,
            t.watcher_overflows,
        ))?;
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn print_workload(
    a: &WorkloadArgs,
    pid: u32,
    rates: &load::Rates,
    s: &Series,
    ps: Option<(u64, f64)>,
    time: &TimeReport,
    g: &Generated,
    c: Option<&Captured>,
) -> anyhow::Result<()> {
    let (mean, median, max) = s.rss_mib();
    out(format_args!(
        "workload {:?}: {} processes/s, {} files/s, {} connections/s for {} (after {} warm-up), agent pid {pid}\n",
        a.level,
        rates.processes,
        rates.files,
        rates.connections,
        humantime::format_duration(a.duration),
        humantime::format_duration(a.warmup),
    ))?;
    out(format_args!(
        "  RSS (MiB, /proc/PID/status VmRSS, 1 Hz)  mean {mean:.1}  median {median:.1}  max {max:.1}  peak (VmHWM) {:.1}\n",
        s.peak_mib()
    ))?;
    out(format_args!(
        "  CPU (% of one core, /proc/PID/stat)      {:.2} over the run ({:.2} s CPU in {:.1} s), median 1 s step {:.1}\n",
        s.cpu_percent(),
        s.cpu_seconds(),
        s.wall().as_secs_f64(),
        s.cpu_median()
    ))?;
    if let Some((rss, cpu)) = ps {
        out(format_args!(
            "  ps -o rss,pcpu (lifetime)                rss {:.1} MiB, pcpu {cpu:.1}\n",
            rss as f64 / 1024.0
        ))?;
    }
    if let (Some(rss), Some(cpu)) = (time.max_rss_kb, time.cpu_percent) {
        out(format_args!(
            "  /usr/bin/time -v (lifetime)              max RSS {:.1} MiB, CPU {cpu:.0}%, user {:.2} s, sys {:.2} s\n",
            rss as f64 / 1024.0,
            time.user_s.unwrap_or(0.0),
            time.sys_s.unwrap_or(0.0)
        ))?;
    }
    let Some(c) = c else {
        out(format_args!(
            "  generated: {} processes, {} files, {} connections (no --data-dir: nothing counted)\n",
            g.processes, g.files_created, g.connections
        ))?;
        return Ok(());
    };
    out(format_args!(
        "  {:<22} {:>9} {:>9} {:>8}\n",
        "", "generated", "captured", "share"
    ))?;
    for (what, gen, cap) in [
        ("processes started", g.processes, c.procs_started),
        ("processes ended", g.processes, c.procs_ended),
        ("files created", g.files_created, c.files_created),
        ("files deleted", g.files_deleted, c.files_deleted),
        ("connections opened", g.connections, c.connections),
    ] {
        out(format_args!(
            "  {what:<22} {gen:>9} {cap:>9} {:>8}\n",
            pct(cap, gen)
        ))?;
    }
    out(format_args!(
        "  (and {} file-modified events for the {} files written; {} detection alerts)\n",
        c.files_modified, g.files_created, c.alerts
    ))?;
    out(format_args!(
        "  stored: {} events in {} batches ({:.0} a batch), raw {} B, stored {} B: {:.1} B/event, {:.1}% reduction\n",
        c.events,
        c.batches,
        c.events as f64 / c.batches.max(1) as f64,
        c.raw_bytes,
        c.stored_bytes,
        c.stored_bytes as f64 / c.events.max(1) as f64,
        (1.0 - c.stored_bytes as f64 / c.raw_bytes.max(1) as f64) * 100.0
    ))?;
    Ok(())
}

fn ship_throughput(a: ShipThroughputArgs) -> anyhow::Result<()> {
    let work = WorkDir::new(a.common.work_dir.as_deref())?;
    out(format_args!(
        "ship-throughput: {} events in batches of {}, {} runs each; per CPU-s = events / CPU of this process (sink, reads, compression)\n",
        a.events, a.batch, a.runs
    ))?;
    out(format_args!(
        "{:>6} {:>4} {:>9} {:>13} {:>11} {:>12} {:>11} {:>9} {:>13}\n",
        "gzip",
        "run",
        "events",
        "batches/msgs",
        "MB sent",
        "shipped/s",
        "per CPU-s",
        "CPU %",
        "server CPU-s"
    ))?;
    for compression in [
        edr_config::ShipCompression::Gzip,
        edr_config::ShipCompression::None,
    ] {
        let mut per_cpu = Vec::new();
        for run in 0..a.runs {
            let r = ship::throughput(a.events, a.batch, compression, &work.path)?;
            let (wall_rate, cpu_rate) = ship::shipped(&r);
            per_cpu.push(cpu_rate);
            out(format_args!(
                "{:>6} {:>4} {:>9} {:>13} {:>11.1} {:>12.0} {:>11.0} {:>9.1} {:>13.2}\n",
                if compression == edr_config::ShipCompression::Gzip {
                    "on"
                } else {
                    "off"
                },
                run + 1,
                r.events,
                format!("{}/{}", r.batches, r.messages),
                r.bytes as f64 / 1e6,
                wall_rate,
                cpu_rate,
                r.cpu.as_secs_f64() / r.wall.as_secs_f64().max(1e-9) * 100.0,
                r.server_cpu.as_secs_f64(),
            ))?;
        }
        per_cpu.sort_by(f64::total_cmp);
        out(format_args!(
            "gzip {}: median {:.0} events per CPU-second\n",
            if compression == edr_config::ShipCompression::Gzip {
                "on"
            } else {
                "off"
            },
            per_cpu[per_cpu.len() / 2]
        ))?;
    }
    Ok(())
}

fn ship_lag(a: ShipLagArgs) -> anyhow::Result<()> {
    let work = WorkDir::new(a.common.work_dir.as_deref())?;
    let use_time = !a.common.no_time;
    out(format_args!(
        "ship-lag: {} files/s for {} (default config, process and network collectors off; lag from @timestamp to consumer receipt, events after a 2 s warm-up; the load goes on 2 collection intervals past the window)\n",
        a.rate,
        humantime::format_duration(a.duration)
    ))?;
    for ship in [false, true] {
        let r = ship::lag(a.rate, a.duration, ship, use_time, &work.path)?;
        let lag = r
            .lag_ms
            .map(|(p50, p99, max)| {
                format!(
                    "lag median {p50} ms, p99 {p99} ms, max {max} ms; {} events received ({:.0}/s)",
                    r.received, r.rate
                )
            })
            .unwrap_or_else(|| "no consumer".to_string());
        out(format_args!(
            "shipping {:>3}: RSS median {:.1} MB, max {} (time -v); {lag}\n",
            if ship { "on" } else { "off" },
            r.rss_median_kb as f64 / 1024.0,
            r.time
                .max_rss_kb
                .map(|k| format!("{:.1} MB", k as f64 / 1024.0))
                .unwrap_or_else(|| "?".into()),
        ))?;
    }
    Ok(())
}

fn pipeline_runs(a: PipelineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.keep_data || a.rates.len() == 1,
        "--keep-data keeps one run's files: give one rate"
    );
    let work = WorkDir::new(a.common.work_dir.as_deref())?;
    let compression = match a.compression {
        Codec::Gzip => Some(Compression::Gzip),
        Codec::Zstd => Some(Compression::Zstd),
        Codec::None => None,
    };
    out(format_args!(
        "pipeline: {:?}{}, max_events_per_batch {}, adaptive batching {}, detection {}, {} a run\n",
        a.compression,
        a.level.map(|l| format!(" level {l}")).unwrap_or_default(),
        a.batch,
        if a.adaptive { "on" } else { "off" },
        if a.detection { "on" } else { "off" },
        humantime::format_duration(a.duration)
    ))?;
    out(format_args!(
        "{:>10} {:>10} {:>10} {:>8} {:>11} {:>13} {:>9} {:>10} {:>8} {:>9}\n",
        "offered/s",
        "offered",
        "stored",
        "batches",
        "stored/s",
        "per CPU-s",
        "CPU %",
        "us/event",
        "B/event",
        "reduction"
    ))?;
    for rate in &a.rates {
        let run = PipelineRun {
            rate: *rate,
            duration: a.duration,
            compression,
            level: a.level,
            batch: a.batch,
            adaptive: a.adaptive,
            detection: a.detection,
            keep_data: a.keep_data,
        };
        let r: PipelineReport = pipeline::run(&run, &work.path)?;
        out(format_args!(
            "{:>10} {:>10} {:>10} {:>8} {:>11.0} {:>13.0} {:>9.2} {:>10.2} {:>8.1} {:>8.1}%\n",
            if *rate > 0.0 {
                format!("{rate}")
            } else {
                "max".into()
            },
            r.offered,
            r.stored,
            r.batches,
            r.per_sec_wall(),
            r.per_cpu_sec(),
            r.batcher_cpu_percent(),
            r.batcher_cpu.as_secs_f64() * 1e6 / r.stored.max(1) as f64,
            r.bytes_per_event(),
            r.reduction() * 100.0
        ))?;
    }
    Ok(())
}

/// Milliseconds from `spawned` to the first line of `log` containing
/// `needle` (by the log's own timestamps).
fn log_ms(log: &str, needle: &str, spawned: SystemTime) -> Option<f64> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let stamp = line.split_whitespace().next()?;
    let t = humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z')).ok()?;
    Some(t.duration_since(spawned).ok()?.as_secs_f64() * 1000.0)
}

fn files_bench(a: FilesArgs) -> anyhow::Result<()> {
    let work = a.common.work_dir.as_deref();
    match a.what {
        FilesWhat::Rate => {
            let sources: Vec<edr_config::FileSource> = a
                .sources
                .iter()
                .map(|s| match s {
                    FileSourceArg::Fanotify => edr_config::FileSource::Fanotify,
                    FileSourceArg::Inotify => edr_config::FileSource::Inotify,
                })
                .collect();
            files::rate(&sources, a.rate, a.duration, work)?;
        }
        FilesWhat::Startup => files::startup(a.runs, work)?,
    }
    Ok(())
}

fn startup(a: StartupArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for run in 0..a.runs {
        let work = WorkDir::new(
            a.common
                .work_dir
                .as_deref()
                .map(|d| d.join(format!("run{run}")))
                .as_deref(),
        )?;
        let watched = work.sub("watched")?;
        let mut c = agent_config(ConfigSource::default(), &work, Some(&watched))?;
        // The first event is written, and made durable, at once.
        c.agent.max_events_per_batch = 1;
        c.agent.adaptive_batching.enabled = false;
        let mut agent = Agent::spawn(&c, &work.path, false, "info")?;
        let spawned_wall = agent.spawned_wall;
        let first = agent.wait_until(Duration::from_secs(30), Duration::from_millis(1), |a| {
            list_batches(&a.data_dir)
                .ok()
                .and_then(|v| v.into_iter().next())
        })?;
        let batch_ms = agent.spawned.elapsed().as_secs_f64() * 1000.0;
        let engine_ms = log_ms(&agent.log(), "engine started", spawned_wall);
        let first_event_ms = open_batch_reader(&first)
            .ok()
            .and_then(|r| std::io::BufRead::lines(r).next()?.ok())
            .and_then(|l| {
                let v: serde_json::Value = serde_json::from_str(&l).ok()?;
                let ts = Timestamp::parse(v["@timestamp"].as_str()?)?;
                let since = SystemTime::from(ts).duration_since(spawned_wall).ok()?;
                Some(since.as_secs_f64() * 1000.0)
            });
        agent.stop()?;
        rows.push((engine_ms, first_event_ms, batch_ms));
    }
    out(format_args!(
        "startup (default config, max_events_per_batch 1), {} runs, ms after spawn:\n{:>4} {:>16} {:>18} {:>20}\n",
        a.runs, "run", "engine started", "first event (ts)", "first batch on disk"
    ))?;
    let show = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    for (i, (e, f, b)) in rows.iter().enumerate() {
        out(format_args!(
            "{:>4} {:>16} {:>18} {:>20.1}\n",
            i + 1,
            show(*e),
            show(*f),
            b
        ))?;
    }
    let median = |mut v: Vec<f64>| -> Option<f64> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied()
    };
    out(format_args!(
        "{:>4} {:>16} {:>18} {:>20}\n",
        "med",
        show(median(rows.iter().filter_map(|r| r.0).collect())),
        show(median(rows.iter().filter_map(|r| r.1).collect())),
        show(median(rows.iter().map(|r| r.2).collect()))
    ))?;
    Ok(())
}

/// What `scale` holds open while it measures; sleepers are killed on drop.
#[derive(Default)]
struct Held {
    children: Vec<Child>,
    _sockets: Vec<TcpStream>,
}

impl Drop for Held {
    fn drop(&mut self) {
        for c in self.children.iter_mut() {
            let _ = c.kill();
        }
        for c in self.children.iter_mut() {
            let _ = c.wait();
        }
    }
}

fn machine_processes() -> usize {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
                .count()
        })
        .unwrap_or(0)
}

/// Raises the open-file limit to at least `want` (connections need two
/// descriptors each); above the hard limit only as root.
fn raise_nofile(want: u64) {
    // SAFETY: getrlimit/setrlimit read and write the struct we pass.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return;
        }
        let raised = libc::rlimit {
            rlim_cur: want.max(l.rlim_cur),
            rlim_max: want.max(l.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

fn hold_clients(port: u16, count: usize) -> anyhow::Result<()> {
    raise_nofile(count as u64 + 1024);
    let held = (0..count)
        .map(|_| TcpStream::connect(("127.0.0.1", port)))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot connect")?;
    // Until the parent closes our stdin (or dies).
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    drop(held);
    Ok(())
}

fn scale(a: ScaleArgs) -> anyhow::Result<()> {
    let work = WorkDir::new(a.common.work_dir.as_deref())?;
    let mut c = agent_config(ConfigSource::default(), &work, None)?;
    let cols = &mut c.collectors;
    cols.process_monitor.enabled = a.unit == Unit::Processes;
    cols.network_monitor.enabled = a.unit == Unit::Connections;
    cols.file_monitor.enabled = a.unit == Unit::Files;
    // Per-scan costs: a fixed interval.
    cols.network_monitor.max_scan_interval_ms = cols.network_monitor.scan_interval_ms;
    cols.process_monitor.max_scan_interval_ms = cols.process_monitor.scan_interval_ms;
    let setup = Instant::now();
    let (held, tree) = match a.unit {
        Unit::Processes => {
            let exe = load::install_proc(&work.path)?;
            let mut v = Vec::with_capacity(a.count);
            for _ in 0..a.count {
                v.push(
                    Command::new(&exe)
                        .arg("3600")
                        .stdin(Stdio::null())
                        .spawn()
                        .context("cannot start a sleeping process")?,
                );
            }
            (
                Held {
                    children: v,
                    _sockets: Vec::new(),
                },
                None,
            )
        }
        Unit::Connections => {
            raise_nofile(a.count as u64 + 1024);
            let listener = TcpListener::bind("127.0.0.1:0")?;
            let exe = std::env::current_exe().context("cannot find this program")?;
            let clients = Command::new(exe)
                .arg("hold-clients")
                .arg(listener.local_addr()?.port().to_string())
                .arg(a.count.to_string())
                .stdin(Stdio::piped())
                .spawn()
                .context("cannot start the client process")?;
            let mut v = Vec::with_capacity(a.count);
            for _ in 0..a.count {
                v.push(listener.accept()?.0);
            }
            (
                Held {
                    children: vec![clients],
                    _sockets: v,
                },
                None,
            )
        }
        Unit::Files => {
            let tree = work.sub("tree")?;
            for i in 0..a.count {
                let dir = tree.join(format!("d{}", i / 100));
                if i % 100 == 0 {
                    std::fs::create_dir_all(&dir)?;
                }
                std::fs::write(dir.join(format!("f{i}.txt")), b"x")?;
            }
            c.collectors.file_monitor.watch_paths = vec![tree.display().to_string()];
            (Held::default(), Some(tree))
        }
    };
    let setup_s = setup.elapsed().as_secs_f64();
    let log = "info,edr_collect::file::watch=debug";
    let mut agent = Agent::spawn(&c, &work.path, !a.common.no_time, log)?;
    let spawned_wall = agent.spawned_wall;
    let ready_ms = match &tree {
        Some(t) => {
            wait_watching(&mut agent, t)?;
            log_ms(
                &agent.log(),
                &format!("watching {}", t.display()),
                spawned_wall,
            )
        }
        None => {
            let want = match a.unit {
                Unit::Processes => a.count as u64,
                _ => 2 * a.count as u64,
            };
            agent.wait_until(Duration::from_secs(120), Duration::from_millis(50), |ag| {
                read_status(&ag.data_dir)
                    .map(|s| s.totals)
                    .filter(|t| t.produced.iter().sum::<u64>() + t.dropped_total() >= want)
                    .map(|_| ())
            })?;
            None
        }
    };
    std::thread::sleep(Duration::from_secs(3));
    let series = sample(agent.pid, a.duration)?;
    let procs = machine_processes();
    let totals = read_status(&agent.data_dir).map(|s| s.totals);
    let time = agent.stop()?;
    drop(held);
    let scans = series.wall().as_secs_f64(); // one scan a second
    let cpu_ms_per_scan = series.cpu_seconds() * 1000.0 / scans.max(1e-9);
    let (mean, _, max) = series.rss_mib();
    out(format_args!(
        "scale {:?} x {} (set up in {setup_s:.1} s; {procs} processes on the machine)\n",
        a.unit, a.count
    ))?;
    out(format_args!(
        "  agent CPU {:.2}% of one core over {:.0} s: {cpu_ms_per_scan:.2} ms per second{}\n",
        series.cpu_percent(),
        series.wall().as_secs_f64(),
        match a.unit {
            Unit::Processes => format!(
                " = per scan; {:.1} us per process",
                cpu_ms_per_scan * 1000.0 / procs.max(1) as f64
            ),
            Unit::Connections => format!(
                " = per scan; {:.2} us per socket ({} sockets of ours)",
                cpu_ms_per_scan * 1000.0 / (2 * a.count).max(1) as f64,
                2 * a.count
            ),
            Unit::Files => " (idle watch)".to_string(),
        }
    ))?;
    out(format_args!(
        "  agent RSS mean {mean:.1} MiB, max {max:.1} MiB, peak (VmHWM) {:.1} MiB{}\n",
        series.peak_mib(),
        time.max_rss_kb
            .map(|k| format!(", /usr/bin/time -v max {:.1} MiB", k as f64 / 1024.0))
            .unwrap_or_default()
    ))?;
    if let Some(t) = totals {
        out(format_args!(
            "  events: {} queued, {} dropped (queue full)\n",
            t.produced.iter().sum::<u64>(),
            t.dropped_total()
        ))?;
    }
    if let Some(ms) = ready_ms {
        out(format_args!(
            "  watch of {} directories set up {ms:.0} ms after spawn\n",
            a.count.div_ceil(100)
        ))?;
    }
    Ok(())
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The `q` quantile (nearest rank) of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn detect_bench(a: DetectArgs) -> anyhow::Result<()> {
    let work = WorkDir::new(a.common.work_dir.as_deref())?;
    let events = detect::events(a.events);
    // One warm-up pass (caches, the allocator's pools), then the measured.
    let report = detect::run(&events, &a.rules, a.runs + 1)?;
    let measured = detect::DetectReport {
        passes: report.passes[1..].to_vec(),
        events: report.events,
        rules_loaded: report.rules_loaded,
        rules_skipped: report.rules_skipped,
        matches: report.matches,
    };
    let rates = measured.rates();
    out(format_args!(
        "detection stage: {} events (seeded mix: 30% process, 50% file, 20% network), \
         {} rules loaded, {} skipped; the warm-up pass raised {} alerts (the measured \
         ones are mostly repeats, suppressed as by default)\n",
        measured.events, measured.rules_loaded, measured.rules_skipped, report.passes[0].alerts
    ))?;
    out(format_args!(
        "{:>6} {:>12} {:>12} {:>14} {:>8}\n",
        "pass", "cpu_ms", "wall_ms", "events/s(cpu)", "alerts"
    ))?;
    for (i, p) in measured.passes.iter().enumerate() {
        out(format_args!(
            "{:>6} {:>12.1} {:>12.1} {:>14.0} {:>8}\n",
            i + 1,
            p.cpu.as_secs_f64() * 1e3,
            p.wall.as_secs_f64() * 1e3,
            measured.events as f64 / p.cpu.as_secs_f64().max(1e-9),
            p.alerts
        ))?;
    }
    let med = median(&rates);
    out(format_args!(
        "rule matches in one pass, before suppression: {}\n",
        measured.matches
    ))?;
    out(format_args!(
        "median: {med:.0} events/s per core ({:.2} us/event)\n",
        1e6 / med.max(1e-9)
    ))?;
    if let Some(bin) = &a.rsigma {
        let x = detect::export(&events, &a.rules, &work.path)?;
        let r = detect::rsigma(bin, &x, &work.path)?;
        let one = detect::rsigma(bin, &detect::first_event_only(&x, &work.path)?, &work.path)?;
        let cpu_of =
            |r: &detect::RsigmaRun| r.time.user_s.unwrap_or(0.0) + r.time.sys_s.unwrap_or(0.0);
        let (cpu, fixed) = (cpu_of(&r), cpu_of(&one));
        out(format_args!("rsigma: {}\n", r.command))?;
        out(format_args!(
            "rsigma: wall {:.2} s, cpu {:.2} s (user {:.2}, sys {:.2}), max RSS {} kB, {} matches\n",
            r.wall.as_secs_f64(),
            cpu,
            r.time.user_s.unwrap_or(0.0),
            r.time.sys_s.unwrap_or(0.0),
            r.time.max_rss_kb.unwrap_or(0),
            r.matches,
        ))?;
        out(format_args!(
            "rsigma on the first event only (loading the rules): wall {:.2} s, cpu {:.2} s\n",
            one.wall.as_secs_f64(),
            fixed
        ))?;
        let net = (cpu - fixed).max(1e-9);
        let rs = measured.events as f64 / net;
        out(format_args!(
            "rsigma: {rs:.0} events/s of cpu net of loading ({:.0} with it); the stage: {med:.0}; \
             ratio stage/rsigma {:.2} (rsigma also reads and parses the JSON)\n",
            measured.events as f64 / cpu.max(1e-9),
            med / rs.max(1e-9)
        ))?;
    }
    Ok(())
}

fn alert_latency(a: AlertLatencyArgs) -> anyhow::Result<()> {
    let work = WorkDir::new(a.common.work_dir.as_deref())?;
    let mut c = agent_config(ConfigSource::default(), &work, None)?;
    c.collectors.process_monitor.enabled = true;
    c.collectors.process_monitor.source = edr_config::ProcessSource::Event;
    c.agent.collection_interval_ms = a.interval_ms;
    c.detection.enabled = true;
    c.detection.rule_paths = a.rules.iter().map(|p| p.display().to_string()).collect();
    // Each run is the same rule on the same program and parent: without
    // this, every run after the first would be one suppressed repeat.
    c.detection.suppress_window_ms = 0;
    let timeout = Duration::from_millis(a.interval_ms) * 3 + Duration::from_secs(10);
    let lat = detect::latency(&c, &work.path, a.runs, timeout)?;
    let mut stored: Vec<f64> = lat.iter().map(|l| l.0.as_secs_f64() * 1e3).collect();
    let mut read: Vec<f64> = lat.iter().map(|l| l.1.as_secs_f64() * 1e3).collect();
    stored.sort_by(f64::total_cmp);
    read.sort_by(f64::total_cmp);
    out(format_args!(
        "alert latency over {} process starts (collection_interval_ms {}):\n",
        lat.len(),
        a.interval_ms
    ))?;
    out(format_args!(
        "{:<28} {:>10} {:>10} {:>10} {:>10}\n",
        "", "median_ms", "p99_ms", "min_ms", "max_ms"
    ))?;
    for (name, v) in [
        ("start -> batch file written", &stored),
        ("start -> read by the bench", &read),
    ] {
        out(format_args!(
            "{:<28} {:>10.0} {:>10.0} {:>10.0} {:>10.0}\n",
            name,
            median(v),
            quantile(v, 0.99),
            v.first().copied().unwrap_or(0.0),
            v.last().copied().unwrap_or(0.0)
        ))?;
    }
    Ok(())
}

/// TCP sockets of this network namespace in TIME_WAIT (state `06` in
/// `/proc/net/tcp` and `tcp6`); a file that cannot be read counts none.
fn time_wait_sockets() -> usize {
    time_wait_to(None)
}

/// As [`time_wait_sockets`], only those whose remote port is `port`.
fn time_wait_to(port: Option<u16>) -> usize {
    let wanted = port.map(|p| format!(":{p:04X}"));
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|t| {
            t.lines()
                .skip(1)
                .filter(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    cols.get(3) == Some(&"06")
                        && wanted
                            .as_deref()
                            .is_none_or(|w| cols.get(2).is_some_and(|r| r.ends_with(w)))
                })
                .count()
        })
        .sum()
}

/// CPU of the agent's network collector alone (the other collectors off):
/// idle for `duration`, then for `duration` while `rate` connections a
/// second are opened and closed on 127.0.0.1.
fn connections(a: ConnectionsArgs) -> anyhow::Result<()> {
    let drain_from = Instant::now();
    let mut lingering = time_wait_sockets();
    while lingering > 0 && drain_from.elapsed() < a.drain {
        std::thread::sleep(Duration::from_secs(1));
        lingering = time_wait_sockets();
    }
    let waited = drain_from.elapsed();
    let work = WorkDir::new(a.common.work_dir.as_deref())?;
    let mut c = agent_config(ConfigSource::default(), &work, None)?;
    c.collectors.process_monitor.enabled = false;
    c.collectors.file_monitor.enabled = false;
    c.collectors.network_monitor.enabled = true;
    c.detection.enabled = a.detection;
    c.collectors.network_monitor.source = match a.source {
        NetSource::Ebpf => edr_config::NetworkSource::Event,
        NetSource::Polling => edr_config::NetworkSource::Scan,
    };
    let mut agent = Agent::spawn(&c, &work.path, !a.common.no_time, "warn")?;
    let data = c.data_dir();
    let source = agent.wait_until(Duration::from_secs(30), Duration::from_millis(100), |_| {
        edr_engine::read_status(&data).and_then(|s| s.coverage.network_source)
    })?;
    anyhow::ensure!(
        source != "none",
        "the agent runs no network source: {}",
        edr_engine::read_status(&data)
            .and_then(|s| s.coverage.network_note)
            .unwrap_or_default()
    );
    std::thread::sleep(Duration::from_secs(3));
    let idle_time_wait = time_wait_sockets();
    let idle = probe::read(agent.pid)?;
    std::thread::sleep(a.duration);
    let loaded = probe::read(agent.pid)?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    listener.set_nonblocking(true)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&stop);
    let server = std::thread::spawn(move || {
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => std::thread::sleep(Duration::from_micros(200)),
            }
        }
    });
    let started = Instant::now();
    let mut made = 0u64;
    while started.elapsed() < a.duration {
        let due = started.elapsed().as_micros() as u64 * a.rate / 1_000_000;
        while made < due {
            if let Ok(s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                drop(s);
                made += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let wall = started.elapsed();
    let done = probe::read(agent.pid)?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = server.join();
    // Time for the agent to finish what the kernel queued.
    std::thread::sleep(Duration::from_secs(2));
    let totals = edr_engine::read_status(&data).map(|s| s.totals);
    let time = agent.stop()?;
    let idle_cpu = loaded.cpu.saturating_sub(idle.cpu).as_secs_f64();
    let load_cpu = done.cpu.saturating_sub(loaded.cpu).as_secs_f64();
    let rate = made as f64 / wall.as_secs_f64();
    out(format_args!(
        "source: {source}, detection {}\n\
         TCP sockets in TIME_WAIT: {lingering} when the agent started (after {:.0} s of waiting), {idle_time_wait} when the idle window began\n\
         idle: {:.2}% CPU over {:.0} s, RSS {} KB\n\
         load: {made} connections in {:.1} s ({rate:.0}/s): {:.2}% CPU, {:.1} ms CPU per 1,000 connections, RSS {} KB\n",
        if a.detection { "on" } else { "off" },
        waited.as_secs_f64(),
        idle_cpu * 100.0 / a.duration.as_secs_f64(),
        a.duration.as_secs_f64(),
        idle.rss_kb,
        wall.as_secs_f64(),
        load_cpu * 100.0 / wall.as_secs_f64(),
        load_cpu * 1000.0 * 1000.0 / made.max(1) as f64,
        done.rss_kb,
    ))?;
    if let Some(t) = totals {
        out(format_args!(
            "dropped {}, lost in the kernel {}\n",
            t.dropped_total(),
            t.network_events_lost
        ))?;
    }
    if let Some(kb) = time.max_rss_kb {
        out(format_args!("max RSS (time -v): {kb} KB\n"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::net::{TcpListener, TcpStream};

    /// The side that closes first keeps its socket in TIME_WAIT: ten
    /// connections closed by the client leave ten more such sockets towards
    /// the listener's port, and the count of all of them sees them too.
    #[test]
    fn time_wait_sockets_counts_closed_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let before = super::time_wait_to(Some(port));
        for _ in 0..10 {
            let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            let (mut server, _) = listener.accept().expect("accept");
            drop(client);
            // The server reads the client's FIN, then closes: the client
            // closed first and goes to TIME_WAIT.
            let mut buf = [0u8; 1];
            assert_eq!(server.read(&mut buf).expect("read"), 0);
        }
        assert_eq!(super::time_wait_to(Some(port)), before + 10);
        assert!(super::time_wait_sockets() >= 10);
    }
}
