//! Rendering cost of the dashboard: six charts of an hour of 1 Hz samples,
//! as the desktop app draws them (one SVG each at 560x180) and as
//! `edr-agent report` writes them (one PNG page); and of a day of samples,
//! which decimation should make barely dearer than an hour.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use edr_charts::{dashboard_from_samples, render_png, render_svg, Chart};
use edr_config::AlertsConfig;
use edr_metrics::MetricsSample;
use edr_model::event::Timestamp;

/// `n` seconds of plausible samples: slowly growing memory, noisy CPU and
/// event rates, a batch every 10 s.
fn samples(n: u64) -> Vec<MetricsSample> {
    let t0 = 1_795_600_950_000u64;
    let mut stored = 0u64;
    (0..n)
        .map(|i| {
            let wobble = ((i * 7919) % 101) as f32 / 100.0;
            if i % 10 == 9 {
                stored += 40_000;
            }
            MetricsSample {
                ts: Timestamp(t0 + i * 1000),
                rss_bytes: (9 << 20) + i * 700,
                vsz_bytes: 300 << 20,
                cpu_percent: 1.0 + 3.0 * wobble,
                events_per_sec: [20.0 * wobble, 50.0 + 30.0 * wobble, 5.0],
                raw_bytes_total: stored * 10,
                stored_bytes_total: stored,
                compression_ratio: 0.9 + 0.02 * wobble,
                bytes_per_event: 80.0 + 10.0 * wobble,
                storage_used_bytes: (200 << 20) + stored,
                ..MetricsSample::default()
            }
        })
        .collect()
}

fn dashboard_svg(c: &mut Criterion, name: &str, charts: &[Chart]) {
    c.bench_function(name, |b| {
        b.iter(|| {
            for chart in charts {
                black_box(render_svg(chart, 560, 180).expect("svg"));
            }
        })
    });
}

fn bench(c: &mut Criterion) {
    let alerts = AlertsConfig::default();
    let charts = dashboard_from_samples(&samples(3600), 10 << 30, &alerts);
    dashboard_svg(c, "dashboard_svg_1h", &charts);
    let day = dashboard_from_samples(&samples(86_400), 10 << 30, &alerts);
    dashboard_svg(c, "dashboard_svg_24h", &day);
    c.bench_function("report_png_800", |b| {
        b.iter(|| black_box(render_png(&charts, 800, 257).expect("png")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
