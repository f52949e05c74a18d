//! `edr-agent events`: stored events as NDJSON, for jq and friends.

use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use edr_model::event::{EventType, Timestamp};
use edr_store::query::{scan_events, EventQuery};

use super::api::{api_error, Source};
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

pub fn events(args: EventsArgs) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    let mut q = EventQuery {
        since: args
            .since
            .as_deref()
            .map(|s| parse_when(s, now))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|s| parse_when(s, now))
            .transpose()?,
        grep: args.grep.clone(),
        limit: args.limit,
        ..EventQuery::default()
    };
    for t in &args.types {
        let Some(et) = EventType::parse(t) else {
            bail!("unknown event type {t:?}: expected process, file or network");
        };
        q.types.push(et);
    }
    let source = args.dir.source()?;
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::new(stdout.lock());
    if each_stored_line(&source, &q, |line| writeln!(w, "{line}"))?.is_break() {
        return Ok(ExitCode::SUCCESS);
    }
    match w.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}

/// Gives `write` every stored line `q` selects, from the service or the
/// data dir; a damaged file read directly is skipped with a warning (the
/// service logs its own). Breaks when stdout is a closed pipe.
pub fn each_stored_line(
    source: &Source,
    q: &EventQuery,
    mut write: impl FnMut(&str) -> std::io::Result<()>,
) -> anyhow::Result<ControlFlow<()>> {
    let mut failed = None;
    let mut give = |line: &str| match write(line) {
        Ok(()) => ControlFlow::Continue(()),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::BrokenPipe {
                failed = Some(e);
            }
            ControlFlow::Break(())
        }
    };
    let mut flow = ControlFlow::Continue(());
    match source {
        Source::DataDir(d) => {
            scan_events(
                d,
                q,
                |line| {
                    flow = give(line);
                    flow
                },
                |w| eprintln!("warning: {w}"),
            )?;
        }
        Source::Api(service) => {
            let mut lines = service.call(service.client.stored_events(q))?;
            while let Some(line) = service.block_on(lines.next()) {
                let line = line.map_err(api_error)?;
                let text = String::from_utf8_lossy(&line);
                flow = give(&text);
                if flow.is_break() {
                    break;
                }
            }
        }
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(flow),
    }
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
