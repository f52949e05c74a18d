//! `edr-bench detect`: the detection stage's evaluation throughput on one
//! core, on the seeded synthetic event mix, and the same events and rules
//! through the rsigma CLI for comparison.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use edr_bench::workload::SyntheticEvents;
use edr_config::{Config, RuleLevel};
use edr_detect::{DetectionShared, DetectionStage, BUILTIN_RULES};
use edr_model::event::{Event, Origin};
use edr_pipeline::stage::{Item, Stage as _};

use crate::agent::TimeReport;
use crate::pipeline::thread_cpu;

/// One measured pass over the events.
#[derive(Debug, Clone, Copy)]
pub struct Pass {
    pub cpu: Duration,
    pub wall: Duration,
    pub alerts: u64,
}

#[derive(Debug)]
pub struct DetectReport {
    pub events: usize,
    pub rules_loaded: u64,
    pub rules_skipped: u64,
    pub passes: Vec<Pass>,
    /// Rule matches over one pass, before exceptions and suppression
    /// (untimed): what rsigma's match count compares with.
    pub matches: u64,
}

impl DetectReport {
    /// Events per second of thread CPU, per pass, sorted.
    pub fn rates(&self) -> Vec<f64> {
        let mut r: Vec<f64> = self
            .passes
            .iter()
            .map(|p| self.events as f64 / p.cpu.as_secs_f64().max(1e-9))
            .collect();
        r.sort_by(f64::total_cmp);
        r
    }
}

/// The seeded mix the pipeline bench uses (30% process, 50% file, 20%
/// network events).
pub fn events(n: usize) -> Vec<Event> {
    SyntheticEvents::new(Origin::detect(), 42).take(n)
}

/// The config of the measured stage: the built-in rules, `rule_paths`,
/// every level (so rsigma, which has no level filter, gets the same
/// rules), suppression as by default.
fn config(rule_paths: &[PathBuf]) -> Config {
    let mut c = Config::default();
    c.detection.enabled = true;
    c.detection.builtin_rules = true;
    c.detection.rule_paths = rule_paths.iter().map(|p| p.display().to_string()).collect();
    c.detection.min_level = RuleLevel::Informational;
    c
}

/// `runs` passes of `events` through one stage, on this thread.
pub fn run(events: &[Event], rule_paths: &[PathBuf], runs: usize) -> anyhow::Result<DetectReport> {
    let shared = DetectionShared::new();
    let mut stage = DetectionStage::new(&config(rule_paths), Arc::clone(&shared));
    let status = shared.status();
    anyhow::ensure!(status.enabled, "detection did not start: {status:?}");
    let mut line = Vec::new();
    let mut passes = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut alerts = 0u64;
        let cpu0 = thread_cpu();
        let t0 = Instant::now();
        for e in events {
            let mut item = Item::new(e, &mut line);
            stage.process(&mut item, Instant::now());
            alerts += item.take_emitted().len() as u64;
        }
        passes.push(Pass {
            wall: t0.elapsed(),
            cpu: thread_cpu().saturating_sub(cpu0),
            alerts,
        });
    }
    let matches = stage
        .rules()
        .map(|r| events.iter().map(|e| r.evaluate(e).len() as u64).sum())
        .unwrap_or(0);
    Ok(DetectReport {
        matches,
        events: events.len(),
        rules_loaded: status.rules_loaded,
        rules_skipped: status.rules_skipped,
        passes,
    })
}

/// The same export with only the first event: rsigma's fixed cost
/// (loading and compiling the rules) without the evaluation.
pub fn first_event_only(x: &Export, dir: &Path) -> anyhow::Result<Export> {
    let text = std::fs::read_to_string(&x.events)?;
    let first = text.lines().next().unwrap_or_default();
    let events = dir.join("one-event.ndjson");
    std::fs::write(&events, format!("{first}\n"))?;
    Ok(Export {
        events,
        pipeline: x.pipeline.clone(),
        rules: x.rules.clone(),
    })
}

/// Writes what rsigma needs into `dir`: the events as the agent stores
/// them (ECS JSON, one a line), our Sigma-to-ECS field mapping as an
/// rsigma pipeline, and one rules directory holding the built-in rules and
/// a link to each of `rule_paths` (its `--rules` takes one path).
pub fn export(events: &[Event], rule_paths: &[PathBuf], dir: &Path) -> anyhow::Result<Export> {
    let events_path = dir.join("events.ndjson");
    let file = std::fs::File::create(&events_path)
        .with_context(|| format!("cannot create {}", events_path.display()))?;
    let mut w = std::io::BufWriter::new(file);
    for e in events {
        serde_json::to_writer(&mut w, e)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    let pipeline = dir.join("ecs-pipeline.yml");
    std::fs::write(&pipeline, edr_detect::mapping::pipeline_yaml())?;
    let rules = dir.join("rules");
    let builtin = rules.join("builtin");
    for (file, text) in BUILTIN_RULES {
        let p = builtin.join(file);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, text)?;
    }
    for (i, src) in rule_paths.iter().enumerate() {
        let src = std::fs::canonicalize(src)
            .with_context(|| format!("cannot resolve {}", src.display()))?;
        std::os::unix::fs::symlink(&src, rules.join(format!("extra-{i}")))?;
    }
    Ok(Export {
        events: events_path,
        pipeline,
        rules,
    })
}

pub struct Export {
    pub events: PathBuf,
    pub pipeline: PathBuf,
    pub rules: PathBuf,
}

/// What one rsigma run did.
#[derive(Debug)]
pub struct RsigmaRun {
    pub wall: Duration,
    pub time: TimeReport,
    pub matches: u64,
    pub command: String,
}

/// Runs `rsigma engine eval` on the export under `/usr/bin/time -v`.
pub fn rsigma(bin: &Path, x: &Export, work: &Path) -> anyhow::Result<RsigmaRun> {
    let stem = x
        .events
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let out_path = work.join(format!("rsigma-{stem}.out"));
    let err_path = work.join(format!("rsigma-{stem}.err"));
    let args: Vec<String> = vec![
        "-v".into(),
        bin.display().to_string(),
        "engine".into(),
        "eval".into(),
        "--output-format".into(),
        "ndjson".into(),
        "-r".into(),
        x.rules.display().to_string(),
        "-p".into(),
        x.pipeline.display().to_string(),
        "-e".into(),
        format!("@{}", x.events.display()),
    ];
    let command = format!("/usr/bin/time {}", args.join(" "));
    let t0 = Instant::now();
    let st = Command::new("/usr/bin/time")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .status()
        .context("cannot run /usr/bin/time")?;
    let wall = t0.elapsed();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    anyhow::ensure!(st.success(), "{command} failed ({st}):\n{err}");
    let time = crate::agent::parse_time(&err);
    let matches = std::fs::read_to_string(&out_path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
    Ok(RsigmaRun {
        wall,
        time,
        matches,
        command,
    })
}

/// Alert latencies of `runs` real processes, each a base64 decode into a
/// shell that the built-in rule 19bc17cb... matches, run against a started
/// agent (`config`'s data dir). Per run: from just before the spawn to the
/// modification time of the batch file holding its alert (when it was
/// stored), and to when this program read it there.
pub fn latency(
    config: &Config,
    work: &Path,
    runs: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<(Duration, Duration)>> {
    use edr_store::{list_batches, open_batch_reader};
    use std::collections::HashSet;
    use std::io::BufRead as _;
    use std::time::SystemTime;

    let mut agent = crate::agent::Agent::spawn(config, work, false, "warn")?;
    let data = agent.data_dir.clone();
    // The process collector is up once it reports its source.
    agent.wait_until(Duration::from_secs(60), Duration::from_millis(20), |a| {
        edr_engine::read_status(&a.data_dir)
            .and_then(|s| s.coverage.process_source)
            .map(|_| ())
    })?;
    let mut seen: HashSet<PathBuf> = list_batches(&data)?.into_iter().collect();
    let mut out = Vec::with_capacity(runs);
    for i in 0..runs {
        let marker = format!("latency-run-{}-{i}", std::process::id());
        let script = format!("(sleep 0.2; echo ZWNobyBoaQ==) | base64 -d | sh ; : {marker}");
        let start = SystemTime::now();
        let t0 = Instant::now();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run sh")?;
        let mut found = None;
        while found.is_none() && t0.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(5));
            for path in list_batches(&data)? {
                if seen.contains(&path) {
                    continue;
                }
                let Ok(reader) = open_batch_reader(&path) else {
                    continue;
                };
                let mtime = std::fs::metadata(&path).and_then(|m| m.modified())?;
                seen.insert(path);
                let hit = reader
                    .lines()
                    .map_while(Result::ok)
                    .any(|l| l.contains(r#""kind":"alert""#) && l.contains(&marker));
                if hit {
                    let stored = mtime.duration_since(start).unwrap_or_default();
                    found = Some((stored, t0.elapsed()));
                }
            }
        }
        let _ = child.wait();
        match found {
            Some(f) => out.push(f),
            None => anyhow::bail!("run {i}: no alert within {timeout:?}\n{}", agent.log()),
        }
        // Apart, so each run starts with an idle agent.
        std::thread::sleep(Duration::from_millis(300));
    }
    agent.stop()?;
    Ok(out)
}
