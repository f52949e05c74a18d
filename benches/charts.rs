//! Rendering cost of the dashboard: six charts of an hour of 1 Hz samples,
//! as the desktop app draws them (one SVG each at 560x180) and as
//! `edr-agent report` writes them (one PNG page).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use edr_agent::charts::{dashboard_from_samples, render_png, render_svg};
use edr_agent::config::AlertsConfig;
use edr_agent::event::Timestamp;
use edr_agent::metrics::MetricsSample;

/// An hour of plausible samples: slowly growing memory, noisy CPU and
/// event rates, a batch every 10 s.
fn hour_of_samples() -> Vec<MetricsSample> {
    let t0 = 1_795_600_950_000u64;
    let mut stored = 0u64;
    (0..3600u64)
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

fn bench(c: &mut Criterion) {
    let charts = dashboard_from_samples(&hour_of_samples(), 10 << 30, &AlertsConfig::default());
    c.bench_function("dashboard_svg_6x560x180", |b| {
        b.iter(|| {
            for chart in &charts {
                black_box(render_svg(chart, 560, 180).expect("svg"));
            }
        })
    });
    c.bench_function("report_png_800", |b| {
        b.iter(|| black_box(render_png(&charts, 800, 257).expect("png")))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
