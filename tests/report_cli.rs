//! `edr-agent report` on a metrics history written by the real writer.

use std::path::Path;
use std::process::{Command, Output};

use edr_charts::dashboard_from_history;
use edr_config::AlertsConfig;
use edr_metrics::{read_history, HistoryWriter, MetricsSample};
use edr_model::event::Timestamp;

const MIB: u64 = 1024 * 1024;

/// `minutes` of 1 Hz samples ending `ago_ms` before now: memory creeping
/// up, a burst of file events, a batch written every 10 s.
fn write_history(data_dir: &Path, minutes: u64, ago_ms: u64) {
    let mut w = HistoryWriter::new(data_dir);
    let n = minutes * 60;
    let t0 = Timestamp::now().as_millis() - ago_ms - n * 1000;
    let (mut raw, mut stored, mut events) = (0u64, 0u64, 0u64);
    for i in 0..n {
        let wobble = ((i * 7919) % 97) as f32 / 97.0;
        let burst = if (120..150).contains(&i) { 400.0 } else { 0.0 };
        if i % 10 == 9 {
            raw += 500_000;
            stored += 45_000 + (i % 7) * 1000;
            events += 600;
        }
        let s = MetricsSample {
            ts: Timestamp(t0 + i * 1000),
            rss_bytes: 9 * MIB + i * 4096,
            vsz_bytes: 310 * MIB,
            cpu_percent: 0.5 + 2.0 * wobble,
            events_per_sec: [10.0 * wobble, 40.0 + burst, 3.0],
            stored_total: [events / 3, events / 3, events - 2 * (events / 3)],
            raw_bytes_total: raw,
            stored_bytes_total: stored,
            storage_used_bytes: 120 * MIB + stored,
            ..MetricsSample::default()
        };
        w.push(&s, None).expect("push sample");
        if i % 60 == 59 {
            w.flush().expect("flush history");
        }
    }
    w.flush().expect("flush history");
}

fn report(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edr-agent"))
        .arg("report")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("run edr-agent")
}

/// The content of every `<text>` element.
fn svg_texts(svg: &str) -> Vec<&str> {
    svg.split("</text>")
        .filter_map(|chunk| chunk.rsplit_once("<text").map(|(_, t)| t))
        .filter_map(|t| t.split_once('>').map(|(_, content)| content.trim()))
        .collect()
}

fn titles(data_dir: &Path) -> Vec<String> {
    let rows = read_history(data_dir, Timestamp(0));
    dashboard_from_history(&rows, 10 << 30, &AlertsConfig::default())
        .into_iter()
        .map(|c| c.title)
        .collect()
}

#[test]
fn svg_report_is_self_contained_and_shows_every_chart() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_history(dir.path(), 6, 0);
    let out = dir.path().join("report.svg");
    let o = report(
        dir.path(),
        &["--since", "1h", "--out", out.to_str().expect("utf-8")],
    );
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("6 charts of 360 samples"));

    let svg = std::fs::read_to_string(&out).expect("svg written");
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());
    for forbidden in ["<script", "href", "url(", "@import", "<image"] {
        assert!(!svg.contains(forbidden), "SVG contains {forbidden}");
    }
    let texts = svg_texts(&svg);
    let titles = titles(dir.path());
    assert!(titles.iter().any(|t| t == "Memory") && titles.len() == 6);
    for t in &titles {
        assert!(texts.contains(&t.as_str()), "title {t:?} missing");
    }
    // Values and axes are in human units.
    assert!(texts.iter().any(|t| t.ends_with(" MB")), "no MB label");
    assert!(texts.iter().any(|t| t.ends_with(" events/s")));
    assert!(
        texts
            .iter()
            .any(|t| t.len() == 5 && t.as_bytes()[2] == b':'),
        "no HH:MM"
    );
}

#[test]
fn png_report_has_the_requested_width() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_history(dir.path(), 6, 0);
    let out = dir.path().join("report.png");
    let o = report(
        dir.path(),
        &["--out", out.to_str().expect("utf-8"), "--width", "640"],
    );
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let png = std::fs::read(&out).expect("png written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    assert_eq!(be(&png[16..20]), 640);
    let height = be(&png[20..24]);
    assert!(height > 6 * 180, "six charts stacked, got height {height}");
    assert!(
        png.len() > 10_000,
        "an image with content, got {} bytes",
        png.len()
    );
}

#[test]
fn no_history_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("report.svg");
    let o = report(dir.path(), &["--out", out.to_str().expect("utf-8")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no metrics history"), "stderr: {err}");
    assert!(!out.exists());
}

#[test]
fn since_selects_the_period() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Five minutes of history that ended three hours ago.
    write_history(dir.path(), 5, 3 * 3600 * 1000);
    let out = dir.path().join("report.svg");
    let path = out.to_str().expect("utf-8");
    let o = report(dir.path(), &["--since", "1h", "--out", path]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no metrics history"));
    let o = report(dir.path(), &["--since", "4h", "--out", path]);
    assert!(
        o.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("of 300 samples"));
}

#[test]
fn unknown_format_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_history(dir.path(), 1, 0);
    let out = dir.path().join("report.jpg");
    let o = report(dir.path(), &["--out", out.to_str().expect("utf-8")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(".svg or .png"), "stderr: {err}");
    assert!(!out.exists());
}
