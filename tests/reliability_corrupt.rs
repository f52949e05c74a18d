//! Corrupted and truncated files in a data dir: `stats`, `events` and
//! `report` skip them with a warning and go on with the rest.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::agent::{cli, stderr, stdout};
use edr_metrics::{HistoryWriter, MetricsSample};
use edr_model::event::Timestamp;
use edr_store::{Codec, Store};
use flate2::write::GzEncoder;

/// A stored event line as the agent writes it.
fn line(n: u64) -> String {
    format!(
        r#"{{"@timestamp":"{}","event":{{"category":["file"],"kind":"event"}},"file":{{"path":"/w/f{n}"}}}}"#,
        Timestamp::now()
    )
}

/// Writes a batch through the real writer; returns its path.
fn batch(store: &mut Store, codec: Codec, lines: impl IntoIterator<Item = String>) -> PathBuf {
    let mut b = store.open_batch(Timestamp::now(), codec).expect("batch");
    for l in lines {
        b.append(l.as_bytes()).expect("append");
    }
    let f = b.commit().expect("commit");
    let path = f.path.clone();
    store.add(f);
    path
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

/// A data dir holding good batches among every kind of broken file.
/// Returns the number of good events and the broken files' paths.
fn damaged_data_dir(data: &Path) -> (usize, Vec<PathBuf>) {
    let mut store = Store::open(data).expect("store");
    let gz = Codec::Gzip { level: 6 };
    let mut good = 0;
    batch(&mut store, gz, (0..100).map(line));
    good += 100;
    let to_truncate = batch(&mut store, gz, (100..1100).map(line));
    let to_flip = batch(&mut store, gz, (1100..2100).map(line));
    let random = batch(&mut store, gz, [line(0)]);
    let empty = batch(&mut store, gz, [line(0)]);
    let garbage_gz = batch(&mut store, gz, [line(0)]);
    let garbage_plain = batch(&mut store, Codec::None, [line(0)]);
    batch(&mut store, Codec::None, (3000..3050).map(line));
    good += 50;
    batch(&mut store, gz, (4000..4010).map(line));
    good += 10;

    let bytes = std::fs::read(&to_truncate).expect("read");
    std::fs::write(&to_truncate, &bytes[..bytes.len() / 2]).expect("truncate");
    let mut bytes = std::fs::read(&to_flip).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&to_flip, &bytes).expect("flip");
    let noise: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&random, &noise).expect("random");
    std::fs::write(&empty, b"").expect("empty");
    std::fs::write(
        &garbage_gz,
        gzip(b"not json at all\n\xff\xfe invalid utf-8\n{\"half\": \n"),
    )
    .expect("garbage");
    std::fs::write(
        &garbage_plain,
        [
            line(5000).as_bytes(),
            b"\n{broken\n\x00\x01\x02\n",
            line(5001).as_bytes(),
            b"\n",
        ]
        .concat(),
    )
    .expect("garbage");
    good += 2;
    // A directory where a batch file should be.
    let day = to_truncate.parent().expect("day dir");
    std::fs::create_dir(day.join("29990101T000000000Z-999999.json.gz")).expect("dir");
    (
        good,
        vec![
            to_truncate,
            to_flip,
            random,
            empty,
            garbage_gz,
            garbage_plain,
        ],
    )
}

#[test]
fn stats_skips_unreadable_batches_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (_, broken) = damaged_data_dir(&data);
    let out = cli(&["stats", "--json"], &data);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let err = stderr(&out);
    // The ones that cannot be decompressed are named.
    for b in &broken[..4] {
        assert!(
            err.contains(&format!("warning: skipping {}", b.display())),
            "{} not warned about: {err}",
            b.display()
        );
    }
    assert!(err.contains("29990101T000000000Z-999999.json.gz"), "{err}");
    assert_eq!(v["total"]["skipped"], 5, "{v}");
    let text = stdout(&cli(&["stats", "--summary"], &data));
    assert!(text.contains("5 unreadable files skipped"), "{text}");
}

#[test]
fn events_outputs_every_good_event_and_warns_about_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (good, broken) = damaged_data_dir(&data);
    let out = cli(&["events"], &data);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let mut paths = Vec::new();
    for l in text.lines() {
        let v: serde_json::Value = serde_json::from_str(l)
            .unwrap_or_else(|e| panic!("`events` printed a non-JSON line {l:?}: {e}"));
        // A damaged file may still yield JSON with garbled keys.
        if let Some(p) = v["file"]["path"].as_str() {
            paths.push(p.to_string());
        }
    }
    // Everything from the intact files, and whatever was readable before
    // the damage in the others.
    for n in (0..100)
        .chain(3000..3050)
        .chain(4000..4010)
        .chain([5000, 5001])
    {
        assert!(paths.contains(&format!("/w/f{n}")), "event {n} missing");
    }
    assert!(paths.len() >= good, "{} of {good}", paths.len());
    let err = stderr(&out);
    for b in &broken {
        assert!(
            err.contains(&b.display().to_string()),
            "{} not warned about: {err}",
            b.display()
        );
    }
    eprintln!(
        "events: {} printed ({good} from intact files); warnings:\n{err}",
        paths.len()
    );
}

#[test]
fn report_skips_a_corrupt_metrics_day_with_a_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path();
    let mut w = HistoryWriter::new(data);
    let now = Timestamp::now().as_millis();
    for i in 0..120 {
        let s = MetricsSample {
            ts: Timestamp(now - (120 - i) * 1000),
            rss_bytes: 9 << 20,
            ..MetricsSample::default()
        };
        w.push(&s, None).expect("push");
    }
    w.flush().expect("flush");
    // Yesterday's file is garbage; today's ends in a torn member.
    let metrics = data.join("metrics");
    let yesterday = Timestamp(now - 86_400_000).day();
    std::fs::write(
        metrics.join(format!("{yesterday}.csv.gz")),
        b"\x1f\x8b garbage",
    )
    .expect("write");
    let today = metrics.join(format!("{}.csv.gz", Timestamp(now).day()));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&today)
        .expect("open");
    f.write_all(&gzip(b"ts_ms,more\n")[..10]).expect("torn");
    drop(f);
    let out_file = dir.path().join("r.svg");
    let out = common::agent::bin()
        .args(["report", "--since", "2d", "--out"])
        .arg(&out_file)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("report runs");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(stdout(&out).contains("120 samples"), "{}", stdout(&out));
    assert!(
        err.contains(&yesterday),
        "no warning about the corrupt day: {err}"
    );
    assert!(out_file.exists());
}
