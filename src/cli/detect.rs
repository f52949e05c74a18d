//! `edr-agent alerts` and `edr-agent rules`: stored alerts, and the rule
//! sets (list, check files, test over events offline).

use std::io::{BufRead, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::Context as _;
use edr_config::Config;
use edr_detect::{LoadOptions, RuleSet};
use edr_store::open_batch_reader;
use edr_store::query::EventQuery;
use serde_json::Value;

use super::events::{each_stored_line, parse_when};
use super::out;
use crate::DataDirArgs;

#[derive(clap::Args, Debug)]
pub struct AlertsArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// Only alerts at or after this time: a duration ago (`15m`, `2h`) or a
    /// UTC time (`2026-11-25T10:00:00Z`).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Print the stored alert events as NDJSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum RulesCommand {
    /// The rules a config loads (built-in and `detection.rule_paths`), then
    /// the ones skipped, with the reason.
    List {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Validate Sigma rule files or directories: exit 1 if any rule does
    /// not load.
    Check {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// Run rules over NDJSON events (as stored by the agent, a batch file,
    /// or exported) and print every match.
    Test {
        /// The events: NDJSON, or a stored batch file (.json.gz, .json.zst).
        #[arg(long, value_name = "FILE")]
        events: PathBuf,
        /// Rule files or directories to test (repeatable); without it, the
        /// built-in rules.
        #[arg(long = "rules", value_name = "PATH")]
        rules: Vec<PathBuf>,
    },
}

fn str_at<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for k in path {
        cur = &cur[*k];
    }
    cur.as_str().unwrap_or("-")
}

/// The program an event is about: the executable, else the process name.
fn program(v: &Value) -> &str {
    v["process"]["executable"]
        .as_str()
        .or_else(|| v["process"]["name"].as_str())
        .unwrap_or("-")
}

pub fn alerts(args: AlertsArgs) -> anyhow::Result<ExitCode> {
    let q = EventQuery {
        since: args
            .since
            .as_deref()
            .map(|s| parse_when(s, SystemTime::now()))
            .transpose()?,
        alerts_only: true,
        ..EventQuery::default()
    };
    let source = args.dir.source()?;
    if !args.json {
        out(format_args!(
            "{:<24}  {:<13}  {:<50}  {:<40}  {:>7}  {:>5}\n",
            "TIME", "LEVEL", "RULE", "PROGRAM", "PID", "COUNT"
        ))?;
    }
    let mut shown = 0u64;
    let flow = each_stored_line(&source, &q, |line| {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            return Ok(());
        };
        shown += 1;
        if args.json {
            return write_out(format_args!("{v}\n"));
        }
        write_out(format_args!(
            "{:<24}  {:<13}  {:<50}  {:<40}  {:>7}  {:>5}\n",
            str_at(&v, &["@timestamp"]),
            str_at(&v, &["edr", "alert", "level"]),
            str_at(&v, &["rule", "name"]),
            program(&v),
            v["process"]["pid"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            v["edr"]["alert"]["count"].as_u64().unwrap_or(1),
        ))
    })?;
    if flow.is_continue() && !args.json && shown == 0 {
        out(format_args!("(no alerts)\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn write_out(args: std::fmt::Arguments<'_>) -> std::io::Result<()> {
    std::io::stdout().lock().write_fmt(args)
}

pub fn rules(cmd: RulesCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RulesCommand::List { config } => {
            let c = match &config {
                Some(f) => Config::from_file(f)?,
                None => Config::default(),
            };
            let set = RuleSet::load(&LoadOptions::of(&c.detection))?;
            out(format_args!(
                "{:<38}  {:<13}  {:<60}  SOURCE\n",
                "ID", "LEVEL", "TITLE"
            ))?;
            for r in set.rules() {
                out(format_args!(
                    "{:<38}  {:<13}  {:<60}  {}\n",
                    r.id,
                    r.level.as_str(),
                    r.title,
                    if r.ruleset == edr_detect::BUILTIN {
                        format!("builtin:{}", r.file)
                    } else {
                        r.file.clone()
                    }
                ))?;
            }
            out(format_args!(
                "{} rules loaded, {} skipped, {} below min_level {}\n",
                set.rules().len(),
                set.skipped().len(),
                set.below_level(),
                c.detection.min_level.as_str()
            ))?;
            print_skipped(&set)?;
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Check { paths } => {
            let set = RuleSet::check(&paths)?;
            print_skipped(&set)?;
            out(format_args!(
                "{} rules load, {} do not\n",
                set.rules().len(),
                set.skipped().len()
            ))?;
            Ok(if set.skipped().is_empty() && !set.rules().is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        RulesCommand::Test { events, rules } => test(&events, &rules),
    }
}

fn print_skipped(set: &RuleSet) -> anyhow::Result<()> {
    for s in set.skipped() {
        out(format_args!(
            "SKIPPED  {}  ({}): {}\n",
            s.file,
            s.title.as_deref().unwrap_or("no title"),
            s.reason
        ))?;
    }
    Ok(())
}

/// Longest event line `rules test` reads; a longer one is skipped, so a
/// hostile file cannot take all memory.
const MAX_LINE: usize = 64 << 20;

/// Reads one line (without its newline) into `buf`, keeping at most `max`
/// bytes. `None` at the end of input; `Some(false)` if the line was longer
/// (the rest of it is consumed and dropped).
fn read_line_bounded(
    r: &mut dyn BufRead,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Option<bool>> {
    buf.clear();
    let mut read_any = false;
    let mut whole = true;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            return Ok(read_any.then_some(whole));
        }
        read_any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(n) => (&chunk[..n], Some(n + 1)),
            None => (chunk, None),
        };
        if whole && buf.len() + part.len() <= max {
            buf.extend_from_slice(part);
        } else {
            whole = false;
            buf.clear();
        }
        let used = done.unwrap_or(chunk.len());
        r.consume(used);
        if done.is_some() {
            return Ok(Some(whole));
        }
    }
}

fn test(events: &Path, rules: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let set = if rules.is_empty() {
        RuleSet::load(&LoadOptions {
            builtin: true,
            paths: Vec::new(),
            min_level: edr_config::RuleLevel::Informational,
        })?
    } else {
        RuleSet::check(rules)?
    };
    print_skipped(&set)?;
    let mut reader = open_batch_reader(events)
        .with_context(|| format!("cannot read events from {}", events.display()))?;
    let (mut n, mut bad, mut hits) = (0u64, 0u64, 0u64);
    let mut line = Vec::new();
    for i in 0usize.. {
        let whole = match read_line_bounded(&mut reader, &mut line, MAX_LINE) {
            Ok(Some(whole)) => whole,
            Ok(None) => break,
            Err(e) => {
                eprintln!(
                    "warning: {} unreadable after line {i}: {e}",
                    events.display()
                );
                break;
            }
        };
        if !whole {
            bad += 1;
            eprintln!(
                "warning: line {}: longer than {MAX_LINE} bytes, skipped",
                i + 1
            );
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // Invalid UTF-8 in an exported event is read as the replacement
        // character rather than dropping the event.
        let text = String::from_utf8_lossy(&line);
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                bad += 1;
                eprintln!("warning: line {}: not a JSON event: {e}", i + 1);
                continue;
            }
        };
        n += 1;
        for m in set.evaluate_json(&v) {
            hits += 1;
            out(format_args!(
                "{}  {:<13}  {} ({})  {}\n",
                str_at(&v, &["@timestamp"]),
                m.rule.level.as_str(),
                m.rule.title,
                m.rule.id,
                program(&v)
            ))?;
        }
    }
    out(format_args!(
        "{n} events, {hits} matches, {bad} lines not JSON; {} rules\n",
        set.rules().len()
    ))?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_read_whole_or_skipped_when_too_long() {
        let data = b"short\nthis one is too long\n\nlast";
        let mut r = std::io::BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(whole) = read_line_bounded(&mut r, &mut buf, 10).expect("reads") {
            got.push((whole, String::from_utf8_lossy(&buf).into_owned()));
        }
        assert_eq!(
            got,
            [
                (true, "short".to_string()),
                (false, String::new()),
                (true, String::new()),
                (true, "last".to_string()),
            ]
        );
    }
}
