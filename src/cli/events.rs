//! `edr-agent events`: stored events as NDJSON, for jq and friends.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use edr_model::event::{EventType, Timestamp};
use edr_store::{list_batches, open_batch_reader};

use crate::DataDirArgs;

#[derive(clap::Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// Only events at or after this time: a duration ago (`15m`, `2h`,
    /// `3days`) or a UTC time (`2026-11-25`, `2026-11-25T10:00:00Z`).
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only events before this time (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    until: Option<String>,
    /// Only events of these types (repeatable): process, file, network.
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Only events whose JSON line contains this text (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    grep: Option<String>,
    /// Stop after this many events.
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
}

/// Parses `--since` / `--until`.
pub fn parse_when(s: &str, now: SystemTime) -> anyhow::Result<Timestamp> {
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(Timestamp::from(
            now.checked_sub(d).unwrap_or(SystemTime::UNIX_EPOCH),
        ));
    }
    let full = if s.len() == 10 {
        format!("{s}T00:00:00Z")
    } else {
        s.to_string()
    };
    Timestamp::parse(&full).with_context(|| {
        format!("cannot read time {s:?}: use a duration like 15m or 2h, or a UTC time like 2026-11-25T10:00:00Z")
    })
}

/// The `@timestamp` of a stored line. Our writer puts it first; anything
/// else is parsed properly.
fn line_time(line: &str) -> Option<String> {
    const PREFIX: &str = "{\"@timestamp\":\"";
    if let Some(rest) = line.strip_prefix(PREFIX) {
        if let Some(ts) = rest.get(..24) {
            return Some(ts.to_string());
        }
    }
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    v.get("@timestamp")?.as_str().map(str::to_string)
}

pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let data_dir = args.dir.resolve()?;
    let now = SystemTime::now();
    let since = args
        .since
        .as_deref()
        .map(|s| parse_when(s, now))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_when(s, now))
        .transpose()?;
    let mut categories = Vec::new();
    for t in &args.types {
        let Some(et) = EventType::parse(t) else {
            bail!("unknown event type {t:?}: expected process, file or network");
        };
        categories.push(format!("\"category\":[\"{}\"]", et.as_str()));
    }
    let since_s = since.map(|t| t.to_string());
    let until_s = until.map(|t| t.to_string());
    // A batch holds events from at most an hour before its start
    // (collection_interval_ms <= 1 h); older day directories are skipped.
    let skip_before_day = since.map(|t| Timestamp(t.as_millis().saturating_sub(86_400_000)).day());

    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    let mut emitted = 0u64;
    for path in list_batches(&data_dir)? {
        if let (Some(day), Some(dir)) =
            (&skip_before_day, path.parent().and_then(|p| p.file_name()))
        {
            if dir.to_string_lossy().as_ref() < day.as_str() {
                continue;
            }
        }
        let reader = match open_batch_reader(&path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("warning: skipping {}: {e}", path.display());
                continue;
            }
        };
        let mut not_json = 0u64;
        for line in reader.split(b'\n') {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    eprintln!(
                        "warning: {} is corrupt or truncated, rest skipped: {e}",
                        path.display()
                    );
                    break;
                }
            };
            if line.is_empty() {
                continue;
            }
            // Damage that still decompresses must not reach a JSON consumer.
            let line = match std::str::from_utf8(&line) {
                Ok(l) if serde_json::from_str::<serde::de::IgnoredAny>(l).is_ok() => l,
                _ => {
                    not_json += 1;
                    continue;
                }
            };
            if since_s.is_some() || until_s.is_some() {
                let Some(ts) = line_time(line) else { continue };
                if since_s.as_ref().is_some_and(|s| ts.as_str() < s.as_str())
                    || until_s.as_ref().is_some_and(|u| ts.as_str() >= u.as_str())
                {
                    continue;
                }
            }
            if !categories.is_empty() && !categories.iter().any(|c| line.contains(c.as_str())) {
                continue;
            }
            if args
                .grep
                .as_ref()
                .is_some_and(|g| !line.contains(g.as_str()))
            {
                continue;
            }
            if let Err(e) = writeln!(w, "{line}") {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(ExitCode::SUCCESS);
                }
                return Err(e.into());
            }
            emitted += 1;
            if args.limit.is_some_and(|l| emitted >= l) {
                break;
            }
        }
        if not_json > 0 {
            eprintln!(
                "warning: {}: {not_json} lines are not JSON (damaged file), skipped",
                path.display()
            );
        }
        if args.limit.is_some_and(|l| emitted >= l) {
            break;
        }
    }
    match w.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn when_accepts_durations_and_times() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_when("1h", now).expect("ok"), Timestamp(6_400_000));
        assert_eq!(
            parse_when("2026-11-25", now).expect("ok").to_string(),
            "2026-11-25T00:00:00.000Z"
        );
        assert_eq!(
            parse_when("2026-11-25T10:00:00Z", now)
                .expect("ok")
                .to_string(),
            "2026-11-25T10:00:00.000Z"
        );
        assert!(parse_when("yesterday-ish", now).is_err());
    }
}
