//! The batch and history readers on arbitrary file contents: every reader
//! the CLI uses returns data or an error, never panics or hangs.
#![no_main]

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::OnceLock;

use edr_model::event::Timestamp;
use edr_metrics::read_history;
use edr_store::{batch_stats, list_batches, open_batch_reader, started_from_name, Store};
use libfuzzer_sys::fuzz_target;

/// One data dir per fuzzing process, in memory when /dev/shm exists.
fn data_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("edr-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("events/2026-01-01")).expect("events dir");
        std::fs::create_dir_all(dir.join("metrics")).expect("metrics dir");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = data_dir();
    // The first byte picks the codec the file claims by its name.
    let (name, body) = match data.split_first() {
        Some((b, rest)) if b % 2 == 0 => ("20260101T000000000Z-000001.json.gz", rest),
        Some((_, rest)) => ("20260101T000000000Z-000001.json", rest),
        None => return,
    };
    for stale in ["20260101T000000000Z-000001.json.gz", "20260101T000000000Z-000001.json"] {
        let _ = std::fs::remove_file(dir.join("events/2026-01-01").join(stale));
    }
    let path = dir.join("events/2026-01-01").join(name);
    std::fs::write(&path, body).expect("write batch");
    std::fs::write(dir.join("metrics/2026-01-01.csv.gz"), body).expect("write history");

    assert_eq!(list_batches(dir).expect("list"), vec![path.clone()]);
    let stats = batch_stats(&path);
    if let Ok(reader) = open_batch_reader(&path) {
        let mut lines = 0u64;
        let mut complete = true;
        for line in reader.split(b'\n') {
            let Ok(line) = line else {
                complete = false;
                break;
            };
            lines += 1;
            let _ = serde_json::from_slice::<serde_json::Value>(&line);
        }
        // Both count the same lines, a last one without newline included.
        match stats {
            Ok(s) => assert!(complete && s.events == lines, "stats {s:?}, read {lines} lines"),
            Err(_) => assert!(!complete, "stats failed on a file that reads whole"),
        }
    }
    let store = Store::open(dir).expect("store opens");
    assert_eq!(store.file_count(), 1);
    let _ = read_history(dir, Timestamp(0));
    if let Ok(text) = std::str::from_utf8(body) {
        let _ = started_from_name(text);
    }
});
