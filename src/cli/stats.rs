//! `edr-agent stats`: what the seed's `find | zcat | wc` one-liner tried to
//! say, computed correctly (decompressed bytes vs stored bytes, events) and
//! in parallel.

use std::path::PathBuf;
use std::process::ExitCode;

use edr_store::query::stats_all;
use edr_store::{list_batches, BatchStats};

use super::api::Source;
use super::{human_bytes, out};

struct Row {
    path: PathBuf,
    stats: Result<BatchStats, String>,
}

/// The batch files measured, by the service or here (over the cores).
fn measure(source: &Source) -> anyhow::Result<Vec<Row>> {
    Ok(match source {
        Source::DataDir(d) => {
            let workers = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            stats_all(list_batches(d)?, workers)
                .into_iter()
                .map(|(path, stats)| Row { path, stats })
                .collect()
        }
        Source::Api(service) => service
            .call(service.client.stored_stats())?
            .into_iter()
            .map(|f| Row {
                path: PathBuf::from(f.file),
                stats: match f.error {
                    Some(e) => Err(e),
                    None => Ok(BatchStats {
                        stored_bytes: f.stored_bytes,
                        raw_bytes: f.raw_bytes,
                        events: f.events,
                    }),
                },
            })
            .collect(),
    })
}

pub fn stats(source: &Source, summary: bool, json: bool) -> anyhow::Result<ExitCode> {
    let data_dir = source.data_dir();
    let rows = measure(source)?;
    let mut total = BatchStats::default();
    let mut skipped = 0u64;
    for r in &rows {
        match &r.stats {
            Ok(s) => {
                total.stored_bytes += s.stored_bytes;
                total.raw_bytes += s.raw_bytes;
                total.events += s.events;
            }
            Err(e) => {
                skipped += 1;
                eprintln!("warning: skipping {}: {e}", r.path.display());
            }
        }
    }
    if json {
        let files: Vec<_> = rows
            .iter()
            .filter_map(|r| r.stats.as_ref().ok().map(|s| (r, s)))
            .map(|(r, s)| {
                serde_json::json!({
                    "file": r.path.display().to_string(),
                    "original_bytes": s.raw_bytes,
                    "stored_bytes": s.stored_bytes,
                    "events": s.events,
                    "reduction": reduction(s),
                    "bytes_per_event": per_event(s),
                })
            })
            .collect();
        let body = serde_json::json!({
            "data_dir": data_dir.display().to_string(),
            "files": if summary { Vec::new() } else { files },
            "total": {
                "files": rows.len() as u64 - skipped,
                "skipped": skipped,
                "original_bytes": total.raw_bytes,
                "stored_bytes": total.stored_bytes,
                "events": total.events,
                "reduction": reduction(&total),
                "bytes_per_event": per_event(&total),
            }
        });
        out(format_args!("{body}\n"))?;
        return Ok(ExitCode::SUCCESS);
    }
    if !summary {
        out(format_args!(
            "{:<44} {:>10} {:>10} {:>9} {:>7} {:>9}\n",
            "file", "original", "stored", "reduction", "events", "B/event"
        ))?;
        for r in &rows {
            let Ok(s) = &r.stats else { continue };
            let name = r
                .path
                .strip_prefix(data_dir)
                .unwrap_or(&r.path)
                .display()
                .to_string();
            out(format_args!(
                "{:<44} {:>10} {:>10} {:>8.1}% {:>7} {:>9.1}\n",
                name,
                s.raw_bytes,
                s.stored_bytes,
                reduction(s) * 100.0,
                s.events,
                per_event(s)
            ))?;
        }
    }
    out(format_args!(
        "total: {} files, {} events, original {} ({} B), stored {} ({} B), {:.1}% reduction, {:.1} bytes/event{}\n",
        rows.len() as u64 - skipped,
        total.events,
        human_bytes(total.raw_bytes),
        total.raw_bytes,
        human_bytes(total.stored_bytes),
        total.stored_bytes,
        reduction(&total) * 100.0,
        per_event(&total),
        if skipped > 0 { format!(", {skipped} unreadable files skipped") } else { String::new() }
    ))?;
    Ok(ExitCode::SUCCESS)
}

fn reduction(s: &BatchStats) -> f64 {
    if s.raw_bytes == 0 {
        0.0
    } else {
        1.0 - s.stored_bytes as f64 / s.raw_bytes as f64
    }
}

fn per_event(s: &BatchStats) -> f64 {
    if s.events == 0 {
        0.0
    } else {
        s.stored_bytes as f64 / s.events as f64
    }
}
