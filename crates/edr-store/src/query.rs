//! Reading stored events back: the filters of `edr-agent events` and
//! `edr-agent alerts`, shared by the CLI (reading a data dir itself) and
//! the local API (the service reading its own, for a client that may not),
//! so both give the same lines for the same data.

use std::io::BufRead;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use edr_model::event::{EventType, Timestamp};

use crate::{batch_stats, list_batches, open_batch_reader, BatchStats, StorageError};

/// Which stored events to read. Every field narrows; the default is all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// At or after this time.
    pub since: Option<Timestamp>,
    /// Before this time.
    pub until: Option<Timestamp>,
    /// Of one of these types (none: any).
    pub types: Vec<EventType>,
    /// Whose JSON line contains this text (case-sensitive).
    pub grep: Option<String>,
    /// Only detection alerts (`"kind":"alert"`).
    pub alerts_only: bool,
    /// At most this many.
    pub limit: Option<u64>,
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

/// Calls `each` with every stored line `q` selects, oldest batch first,
/// until it breaks or `q.limit` is reached; `warn` gets a sentence for
/// each damaged file skipped in part or whole. Returns the lines given.
/// Blocking: reads and decompresses files.
pub fn scan_events(
    data_dir: &Path,
    q: &EventQuery,
    each: impl FnMut(&str) -> ControlFlow<()>,
    warn: impl FnMut(String),
) -> Result<u64, StorageError> {
    let files = list_batches(data_dir)?;
    Ok(scan_files(&files, q, each, warn, || false))
}

/// [`scan_events`] over batch files already listed (by [`list_batches`]),
/// ending early once `stop` says so (asked every few thousand lines, so a
/// scan that finds nothing still notices).
pub fn scan_files(
    files: &[PathBuf],
    q: &EventQuery,
    mut each: impl FnMut(&str) -> ControlFlow<()>,
    mut warn: impl FnMut(String),
    stop: impl Fn() -> bool,
) -> u64 {
    let categories: Vec<String> = q
        .types
        .iter()
        .map(|t| format!("\"category\":[\"{}\"]", t.as_str()))
        .collect();
    let since_s = q.since.map(|t| t.to_string());
    let until_s = q.until.map(|t| t.to_string());
    // A batch holds events from at most an hour before its start
    // (collection_interval_ms <= 1 h); older day directories are skipped.
    let skip_before_day = q
        .since
        .map(|t| Timestamp(t.as_millis().saturating_sub(86_400_000)).day());
    let mut given = 0u64;
    let mut read = 0u64;
    for path in files {
        if q.limit.is_some_and(|l| given >= l) || stop() {
            break;
        }
        if let (Some(day), Some(dir)) =
            (&skip_before_day, path.parent().and_then(|p| p.file_name()))
        {
            if dir.to_string_lossy().as_ref() < day.as_str() {
                continue;
            }
        }
        let reader = match open_batch_reader(path) {
            Ok(r) => r,
            Err(e) => {
                warn(format!("skipping {}: {e}", path.display()));
                continue;
            }
        };
        let mut not_json = 0u64;
        for line in reader.split(b'\n') {
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    warn(format!(
                        "{} is corrupt or truncated, rest skipped: {e}",
                        path.display()
                    ));
                    break;
                }
            };
            read += 1;
            if read.is_multiple_of(4096) && stop() {
                break;
            }
            if line.is_empty() {
                continue;
            }
            // Cheap test first: most stored events are not alerts.
            const ALERT: &[u8] = b"\"kind\":\"alert\"";
            if q.alerts_only && !line.windows(ALERT.len()).any(|w| w == ALERT) {
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
            if q.grep.as_ref().is_some_and(|g| !line.contains(g.as_str())) {
                continue;
            }
            given += 1;
            if each(line).is_break() || q.limit.is_some_and(|l| given >= l) {
                break;
            }
        }
        if not_json > 0 {
            warn(format!(
                "{}: {not_json} lines are not JSON (damaged file), skipped",
                path.display()
            ));
        }
    }
    given
}

/// The size facts of every batch file of a data dir, oldest first; a file
/// that cannot be read has the reason instead. Decompression dominates, so
/// the files are spread over up to `workers` threads (order kept).
pub fn stats_all(
    files: Vec<PathBuf>,
    workers: usize,
) -> Vec<(PathBuf, Result<BatchStats, String>)> {
    let workers = workers.clamp(1, files.len().max(1));
    let chunk = files.len().div_ceil(workers).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|p| (p.clone(), batch_stats(p).map_err(|e| e.to_string())))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    tracing::error!("a stats worker panicked");
                    Vec::new()
                })
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    fn store_lines(dir: &Path, lines: &[&str]) {
        let mut store = Store::open(dir).expect("store");
        let mut batch = store
            .open_batch(Timestamp(1_795_636_035_000), crate::Codec::None)
            .expect("batch");
        for l in lines {
            batch.append(l.as_bytes()).expect("append");
        }
        let f = batch.commit().expect("commit");
        store.add(f);
    }

    #[test]
    fn the_filters_select_lines_as_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = r#"{"@timestamp":"2026-11-25T10:00:00.000Z","event":{"category":["process"]},"x":"marker"}"#;
        let b = r#"{"@timestamp":"2026-11-25T11:00:00.000Z","event":{"category":["file"],"kind":"alert"}}"#;
        store_lines(dir.path(), &[a, "not json", b]);
        let all = |q: &EventQuery| {
            let mut got = Vec::new();
            let mut warnings = Vec::new();
            scan_events(
                dir.path(),
                q,
                |l| {
                    got.push(l.to_string());
                    ControlFlow::Continue(())
                },
                |w| warnings.push(w),
            )
            .expect("scan");
            (got, warnings)
        };
        let (got, warnings) = all(&EventQuery::default());
        assert_eq!(got, [a, b]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let q = |f: fn(&mut EventQuery)| {
            let mut q = EventQuery::default();
            f(&mut q);
            all(&q).0
        };
        assert_eq!(q(|q| q.types = vec![EventType::File]), [b]);
        assert_eq!(q(|q| q.grep = Some("marker".into())), [a]);
        assert_eq!(q(|q| q.alerts_only = true), [b]);
        assert_eq!(q(|q| q.limit = Some(1)), [a]);
        assert_eq!(
            q(|q| q.since = Timestamp::parse("2026-11-25T10:30:00Z")),
            [b]
        );
        assert_eq!(
            q(|q| q.until = Timestamp::parse("2026-11-25T10:30:00Z")),
            [a]
        );
    }
}
