//! Charts of the agent's own metrics: SVG for the desktop dashboard, SVG or
//! PNG pages for `edr-agent report`.
//!
//! Points are reduced to at most four per pixel column of the plot (first,
//! last, min, max) before drawing, so what is drawn does not grow with the
//! period shown: a longer period only costs one more pass over its points.
//! PNG text uses an embedded ASCII subset of DejaVu Sans, so no system font
//! library is needed; SVG text names `sans-serif` and lets the viewer draw
//! it.

use std::ops::Range;
use std::sync::OnceLock;

use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::Shift;
use plotters::element::{Circle, PathElement};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use edr_config::AlertsConfig;
use edr_metrics::{HistoryRow, MetricsSample};
use edr_model::event::{EventType, Timestamp};

/// Failures of chart rendering.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("chart size {width}x{height} is outside {MIN_WIDTH}..={MAX_SIDE} x {MIN_HEIGHT}..={MAX_SIDE} pixels")]
    BadSize { width: u32, height: u32 },
    #[error("no charts to draw")]
    NoCharts,
    #[error("the embedded chart font cannot be read")]
    Font,
    #[error("drawing failed: {0}")]
    Draw(String),
    #[error("PNG encoding failed: {0}")]
    Png(#[from] png::EncodingError),
}

/// What the numbers of a chart measure; decides how they are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    /// Percent of one CPU core (may exceed 100).
    Percent,
    /// Events per second.
    PerSecond,
    BytesPerEvent,
    /// A fraction in [0, 1], shown as a percentage.
    Ratio,
}

impl Unit {
    /// A value as a person reads it: `12.3 MB`, `4.5%`, `120 events/s`,
    /// `310 B/event`, `92.1%`.
    pub fn format(self, v: f64) -> String {
        match self {
            Unit::Bytes => human_bytes(v),
            Unit::Percent => format!("{}%", sig3(v)),
            Unit::PerSecond => format!("{} events/s", compact(v)),
            Unit::BytesPerEvent => format!("{}/event", human_bytes(v)),
            Unit::Ratio => format!("{:.1}%", v * 100.0),
        }
    }

    /// A shorter form for legends, where the title already names the unit.
    fn format_short(self, v: f64) -> String {
        match self {
            Unit::PerSecond => format!("{}/s", compact(v)),
            _ => self.format(v),
        }
    }
}

/// One line of a chart: points are (milliseconds since the epoch, value),
/// oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub points: Vec<(u64, f64)>,
}

/// A chart: one or more series in one unit, and optionally a threshold
/// (e.g. `("cap", bytes)` or `("alert", value)`) drawn as a dashed line.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub unit: Unit,
    pub series: Vec<Series>,
    pub limit: Option<(String, f64)>,
    /// Fit the value axis to the first series (and the limit) only. Other
    /// series that would flatten it, as VSZ would RSS, are then named in
    /// the legend with their value instead of drawn.
    pub fit_first: bool,
}

impl Chart {
    /// The last value of the first series.
    pub fn current(&self) -> Option<f64> {
        self.series.first()?.points.last().map(|p| p.1)
    }

    fn has_points(&self) -> bool {
        self.series.iter().any(|s| !s.points.is_empty())
    }
}

pub const MIN_WIDTH: u32 = 240;
pub const MIN_HEIGHT: u32 = 120;
/// Bounds the PNG buffer (3 bytes a pixel) of a page.
pub const MAX_SIDE: u32 = 8192;

/// Family name the embedded font is registered under; SVG text names it
/// too, so the viewer falls back to its own sans-serif font.
const FAMILY: &str = "sans-serif";
static FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans-ASCII.ttf");

const HEADER_H: u32 = 26;
const PAGE_HEADER_H: u32 = 28;
const TITLE_SIZE: f64 = 16.5;
const LABEL_SIZE: f64 = 14.0;
const PAD: i32 = 8;
/// Horizontal pixels per time label, and vertical pixels per value label.
const X_TICK_SPACING: u32 = 90;
const Y_TICK_SPACING: u32 = 32;
/// A line is broken where points are further apart than this, or than a
/// few columns or typical intervals: the agent was not running.
const MIN_GAP_MS: u64 = 10_000;

const TEXT: RGBColor = RGBColor(0x33, 0x33, 0x33);
const MUTED: RGBColor = RGBColor(0x77, 0x77, 0x77);
const GRID: RGBColor = RGBColor(0xEB, 0xEB, 0xEB);
const AXIS: RGBColor = RGBColor(0xBB, 0xBB, 0xBB);
const LIMIT: RGBColor = RGBColor(0xD6, 0x3A, 0x3A);
/// The first colors of Tableau 10: distinct from each other on white.
const PALETTE: [RGBColor; 4] = [
    RGBColor(0x4E, 0x79, 0xA7),
    RGBColor(0xF2, 0x8E, 0x2B),
    RGBColor(0x59, 0xA1, 0x4F),
    RGBColor(0xB0, 0x7A, 0xA1),
];

/// One chart as a standalone SVG document (no scripts, fonts or links).
pub fn render_svg(chart: &Chart, width: u32, height: u32) -> Result<String, ChartError> {
    check_size(width, height)?;
    register_font()?;
    let mut out = String::with_capacity(32 * 1024);
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let plan = plan(&root, chart)?;
        draw_chart(&root, chart, span(std::slice::from_ref(chart)), &plan)?;
        root.present().map_err(draw_err)?;
    }
    Ok(out)
}

/// Charts stacked under a line naming the period, as one SVG document.
pub fn render_svg_page(
    charts: &[Chart],
    width: u32,
    height_each: u32,
) -> Result<String, ChartError> {
    let height = page_height(charts, width, height_each)?;
    register_font()?;
    let mut out = String::with_capacity(charts.len() * 32 * 1024);
    {
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        draw_page(&root, charts)?;
    }
    Ok(out)
}

/// Charts stacked under a line naming the period, as a PNG image.
pub fn render_png(charts: &[Chart], width: u32, height_each: u32) -> Result<Vec<u8>, ChartError> {
    let height = page_height(charts, width, height_each)?;
    register_font()?;
    let mut rgb = vec![0u8; width as usize * height as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        draw_page(&root, charts)?;
    }
    encode_png(&rgb, width, height)
}

/// The dashboard from live samples: memory, CPU, event rates, compression,
/// stored bytes per event and storage used against the cap.
pub fn dashboard_from_samples(
    samples: &[MetricsSample],
    storage_cap_bytes: u64,
    alerts: &AlertsConfig,
) -> Vec<Chart> {
    let mut c = Columns::default();
    for s in samples {
        let t = s.ts.as_millis();
        c.rss.push((t, s.rss_bytes as f64));
        c.vsz.push((t, s.vsz_bytes as f64));
        c.cpu.push((t, f64::from(s.cpu_percent)));
        for (col, rate) in c.eps.iter_mut().zip(s.events_per_sec) {
            col.push((t, f64::from(rate)));
        }
        // Both are 0 while nothing was stored in the sampler's window.
        if s.bytes_per_event > 0.0 {
            c.ratio.push((t, f64::from(s.compression_ratio)));
            c.per_event.push((t, f64::from(s.bytes_per_event)));
        }
        c.storage.push((t, s.storage_used_bytes as f64));
    }
    c.into_charts(storage_cap_bytes, alerts)
}

/// The dashboard from on-disk history. Compression and bytes per event are
/// computed from the growth of the stored totals between rows.
pub fn dashboard_from_history(
    rows: &[HistoryRow],
    storage_cap_bytes: u64,
    alerts: &AlertsConfig,
) -> Vec<Chart> {
    let mut c = Columns::default();
    for r in rows {
        let t = r.ts.as_millis();
        c.rss.push((t, r.rss_bytes as f64));
        c.vsz.push((t, r.vsz_bytes as f64));
        c.cpu.push((t, f64::from(r.cpu_percent)));
        for (col, rate) in c.eps.iter_mut().zip(r.events_per_sec) {
            col.push((t, f64::from(rate)));
        }
        c.storage.push((t, r.storage_used_bytes as f64));
    }
    (c.ratio, c.per_event) = storage_efficiency(rows);
    c.into_charts(storage_cap_bytes, alerts)
}

/// Shortest span of history a compression point is computed over: one
/// batch's bytes may be counted a second before its events.
const EFFICIENCY_MIN_MS: u64 = 10_000;
/// Rows further apart than this belong to different agent runs, whose
/// totals restarted from zero.
const RUN_GAP_MS: u64 = 30_000;

type Points = Vec<(u64, f64)>;

/// (size reduction, stored bytes per event) over successive intervals in
/// which something was stored.
fn storage_efficiency(rows: &[HistoryRow]) -> (Points, Points) {
    let (mut ratio, mut per_event) = (Vec::new(), Vec::new());
    let Some(first) = rows.first() else {
        return (ratio, per_event);
    };
    let mut anchor = first;
    let mut prev = first;
    for r in &rows[1..] {
        let restarted = r.ts.as_millis().saturating_sub(prev.ts.as_millis()) > RUN_GAP_MS
            || r.raw_bytes < prev.raw_bytes
            || r.stored_bytes < prev.stored_bytes
            || r.stored_events < prev.stored_events;
        prev = r;
        if restarted {
            anchor = r;
            continue;
        }
        let raw = r.raw_bytes - anchor.raw_bytes;
        let stored = r.stored_bytes - anchor.stored_bytes;
        let events = r.stored_events - anchor.stored_events;
        let elapsed = r.ts.as_millis().saturating_sub(anchor.ts.as_millis());
        if raw == 0 || stored == 0 || events == 0 || elapsed < EFFICIENCY_MIN_MS {
            continue;
        }
        let t = r.ts.as_millis();
        ratio.push((t, 1.0 - stored as f64 / raw as f64));
        per_event.push((t, stored as f64 / events as f64));
        anchor = r;
    }
    (ratio, per_event)
}

/// The dashboard's metrics, whatever their source.
#[derive(Default)]
struct Columns {
    rss: Points,
    vsz: Points,
    cpu: Points,
    eps: [Points; 3],
    ratio: Points,
    per_event: Points,
    storage: Points,
}

impl Columns {
    fn into_charts(self, storage_cap_bytes: u64, alerts: &AlertsConfig) -> Vec<Chart> {
        let series = |name: &str, points: Points| Series {
            name: name.to_string(),
            points,
        };
        // The total first, so the title says how busy the agent is.
        let [process, file, network] = self.eps;
        let total = process
            .iter()
            .zip(&file)
            .zip(&network)
            .map(|((p, f), n)| (p.0, p.1 + f.1 + n.1))
            .collect();
        let mut eps = vec![series("total", total)];
        eps.extend(
            EventType::ALL
                .into_iter()
                .zip([process, file, network])
                .map(|(t, p)| series(t.as_str(), p)),
        );
        vec![
            Chart {
                title: "Memory".into(),
                unit: Unit::Bytes,
                series: vec![series("RSS", self.rss), series("VSZ", self.vsz)],
                limit: Some((
                    "alert".into(),
                    alerts.max_memory_mb as f64 * 1024.0 * 1024.0,
                )),
                fit_first: true,
            },
            Chart {
                title: "CPU (one core = 100%)".into(),
                unit: Unit::Percent,
                series: vec![series("CPU", self.cpu)],
                limit: Some(("alert".into(), alerts.max_cpu_percent)),
                fit_first: false,
            },
            Chart {
                title: "Event rate".into(),
                unit: Unit::PerSecond,
                series: eps,
                limit: None,
                fit_first: false,
            },
            Chart {
                title: "Compression (size saved)".into(),
                unit: Unit::Ratio,
                series: vec![series("saved", self.ratio)],
                limit: Some(("alert below".into(), alerts.min_compression_ratio)),
                fit_first: false,
            },
            Chart {
                title: "Stored size per event".into(),
                unit: Unit::BytesPerEvent,
                series: vec![series("per event", self.per_event)],
                limit: None,
                fit_first: false,
            },
            Chart {
                title: "Storage used".into(),
                unit: Unit::Bytes,
                series: vec![series("used", self.storage)],
                limit: (storage_cap_bytes > 0).then(|| ("cap".into(), storage_cap_bytes as f64)),
                fit_first: false,
            },
        ]
    }
}

fn register_font() -> Result<(), ChartError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = REGISTERED
        .get_or_init(|| plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).is_ok());
    if *ok {
        Ok(())
    } else {
        Err(ChartError::Font)
    }
}

fn draw_err<E: std::fmt::Display>(e: E) -> ChartError {
    ChartError::Draw(e.to_string())
}

fn check_size(width: u32, height: u32) -> Result<(), ChartError> {
    if (MIN_WIDTH..=MAX_SIDE).contains(&width) && (MIN_HEIGHT..=MAX_SIDE).contains(&height) {
        Ok(())
    } else {
        Err(ChartError::BadSize { width, height })
    }
}

fn page_height(charts: &[Chart], width: u32, height_each: u32) -> Result<u32, ChartError> {
    if charts.is_empty() {
        return Err(ChartError::NoCharts);
    }
    check_size(width, height_each)?;
    let height = u32::try_from(charts.len())
        .ok()
        .and_then(|n| n.checked_mul(height_each))
        .and_then(|h| h.checked_add(PAGE_HEADER_H))
        .unwrap_or(u32::MAX);
    check_size(width, height)?;
    Ok(height)
}

fn encode_png(rgb: &[u8], width: u32, height: u32) -> Result<Vec<u8>, ChartError> {
    let mut out = Vec::with_capacity(rgb.len() / 8);
    let mut enc = png::Encoder::new(&mut out, width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    enc.set_compression(png::Compression::Fast);
    let mut w = enc.write_header()?;
    w.write_image_data(rgb)?;
    w.finish()?;
    Ok(out)
}

/// The time range shown: from the oldest to the newest point of any chart.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    from: u64,
    to: u64,
}

fn span(charts: &[Chart]) -> Span {
    let mut from = u64::MAX;
    let mut to = 0;
    for p in charts
        .iter()
        .flat_map(|c| &c.series)
        .flat_map(|s| &s.points)
    {
        from = from.min(p.0);
        to = to.max(p.0);
    }
    if from > to {
        // Nothing to show: an empty last hour.
        to = Timestamp::now().as_millis();
        from = to.saturating_sub(3_600_000);
    }
    if to - from < 60_000 {
        // A lone point or a few seconds: widen so the axis has labels.
        let mid = from / 2 + to / 2;
        from = mid.saturating_sub(30_000);
        to = from + 60_000;
    }
    Span { from, to }
}

fn draw_page<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    charts: &[Chart],
) -> Result<(), ChartError> {
    root.fill(&WHITE).map_err(draw_err)?;
    let (header, body) = root.split_vertically(PAGE_HEADER_H);
    let span = span(charts);
    let style = text_style(TITLE_SIZE, &TEXT, HPos::Left);
    header
        .draw_text(&period(span), &style, (PAD, PAGE_HEADER_H as i32 / 2))
        .map_err(draw_err)?;
    let areas = body.split_evenly((charts.len(), 1));
    let mut plans = Vec::with_capacity(charts.len());
    for (area, chart) in areas.iter().zip(charts) {
        plans.push(plan(area, chart)?);
    }
    // One label width for all, so the plots line up.
    let y_label_w = plans.iter().map(|p| p.y_label_w).max().unwrap_or(0);
    for ((area, chart), mut plan) in areas.iter().zip(charts).zip(plans) {
        plan.y_label_w = y_label_w;
        draw_chart(area, chart, span, &plan)?;
    }
    root.present().map_err(draw_err)
}

/// `edr-agent metrics, 2026-11-25 10:02 to 11:02 UTC`.
fn period(span: Span) -> String {
    let (from, to) = (utc_minute(span.from), utc_minute(span.to));
    let to = match to.strip_prefix(&from[..11]) {
        Some(time) => time,
        None => &to,
    };
    format!("edr-agent metrics, {from} to {to} UTC")
}

/// What is decided before drawing a chart.
struct Plan {
    y: ValueAxis,
    y_label_w: u32,
    /// Per series: drawn, or only named in the legend.
    drawn: Vec<bool>,
}

fn series_max(s: &Series) -> f64 {
    s.points
        .iter()
        .map(|p| p.1)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

fn plan<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
) -> Result<Plan, ChartError> {
    let maxes: Vec<f64> = chart.series.iter().map(series_max).collect();
    let data_max = if chart.fit_first {
        maxes.first().copied().unwrap_or(0.0)
    } else {
        maxes.iter().copied().fold(0.0, f64::max)
    };
    // A threshold far above the data would flatten it: it is then only
    // named in the legend.
    let view_max = match &chart.limit {
        Some((_, l)) if data_max > 0.0 && *l <= data_max * 1.5 => data_max.max(*l),
        _ => data_max,
    };
    let plot_h = area.dim_in_pixel().1.saturating_sub(HEADER_H + 24).max(1);
    let y = ValueAxis::new(
        chart.unit,
        view_max,
        (plot_h / Y_TICK_SPACING).clamp(2, 8) as usize,
    );
    let style = text_style(LABEL_SIZE, &MUTED, HPos::Center);
    let mut y_label_w = 0;
    for t in &y.ticks {
        let w = area
            .estimate_text_size(&y.label(*t), &style)
            .map_err(draw_err)?
            .0;
        y_label_w = y_label_w.max(w + 10);
    }
    let drawn = maxes.iter().map(|m| *m <= y.top).collect();
    Ok(Plan {
        y,
        y_label_w,
        drawn,
    })
}

fn draw_chart<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    chart: &Chart,
    span: Span,
    plan: &Plan,
) -> Result<(), ChartError> {
    let (header, body) = area.split_vertically(HEADER_H);
    let y = &plan.y;
    let label_style = text_style(LABEL_SIZE, &MUTED, HPos::Center);
    let plot_w = body
        .dim_in_pixel()
        .0
        .saturating_sub(plan.y_label_w + PAD as u32)
        .max(1);
    let mut x = TimeAxis::new(span, (plot_w / X_TICK_SPACING).clamp(2, 12) as u64);
    x.fit_labels(&body, &label_style, span, plot_w)?;

    let x_label = |t: f64| x.label(t);
    let y_label = |v: f64| y.label(v);
    let mut cc = ChartBuilder::on(&body)
        .margin_right(PAD)
        .margin_top(4)
        .x_label_area_size(20)
        .y_label_area_size(plan.y_label_w)
        .build_cartesian_2d(
            Axis {
                range: span.from as f64..span.to as f64,
                ticks: &x.ticks,
                label: &x_label,
            },
            Axis {
                range: 0.0..y.top,
                ticks: &y.ticks,
                label: &y_label,
            },
        )
        .map_err(draw_err)?;
    cc.configure_mesh()
        .bold_line_style(GRID)
        .axis_style(AXIS)
        .set_all_tick_mark_size(3)
        .x_labels(x.ticks.len())
        .y_labels(y.ticks.len())
        .x_label_style(label_style.clone())
        .y_label_style(label_style.clone())
        .draw()
        .map_err(draw_err)?;

    let single = chart.series.len() == 1;
    for (i, s) in chart.series.iter().enumerate() {
        if !plan.drawn[i] {
            continue;
        }
        let color = PALETTE[i % PALETTE.len()];
        for seg in decimate(&s.points, span, plot_w, gap_ms(s, span, plot_w)) {
            let line = color.stroke_width(stroke_width(&seg));
            if let [p] = seg[..] {
                cc.draw_series(std::iter::once(Circle::new(p, 2, color.filled())))
                    .map_err(draw_err)?;
            } else if single {
                cc.draw_series(AreaSeries::new(seg, 0.0, color.mix(0.15)).border_style(line))
                    .map_err(draw_err)?;
            } else {
                cc.draw_series(LineSeries::new(seg, line))
                    .map_err(draw_err)?;
            }
        }
    }
    if let Some((_, l)) = &chart.limit {
        if *l <= y.top {
            let line = vec![(span.from as f64, *l), (span.to as f64, *l)];
            cc.draw_series(DashedLineSeries::new(line, 6, 4, LIMIT.stroke_width(1)))
                .map_err(draw_err)?;
        }
    }
    if !chart.has_points() {
        let (pw, ph) = cc.plotting_area().dim_in_pixel();
        let (px, py) = cc.plotting_area().get_base_pixel();
        let (bx, by) = body.get_base_pixel();
        let at = (px - bx + pw as i32 / 2, py - by + ph as i32 / 2);
        body.draw_text("no data in this period", &label_style, at)
            .map_err(draw_err)?;
    }
    draw_header(&header, chart, plan)
}

/// The title with the current value at the left, the legend at the right.
fn draw_header<DB: DrawingBackend>(
    header: &DrawingArea<DB, Shift>,
    chart: &Chart,
    plan: &Plan,
) -> Result<(), ChartError> {
    let mid = HEADER_H as i32 / 2 + 2;
    let text_w = |t: &str, style: &TextStyle| {
        header
            .estimate_text_size(t, style)
            .map(|s| s.0 as i32)
            .map_err(draw_err)
    };
    let title_style = text_style(TITLE_SIZE, &TEXT, HPos::Left);
    let mut x = (plan.y_label_w as i32 - 4).max(PAD);
    header
        .draw_text(&chart.title, &title_style, (x, mid))
        .map_err(draw_err)?;
    x += text_w(&chart.title, &title_style)? + 10;
    let value = match chart.current() {
        Some(v) => chart.unit.format(v),
        None => "no data".to_string(),
    };
    let value_style = text_style(TITLE_SIZE, &PALETTE[0], HPos::Left);
    header
        .draw_text(&value, &value_style, (x, mid))
        .map_err(draw_err)?;
    x += text_w(&value, &value_style)?;

    let entries = legend(chart, plan);
    let style = text_style(LABEL_SIZE, &MUTED, HPos::Left);
    let right = header.dim_in_pixel().0 as i32 - PAD;
    // With the series' values if they fit, else without, else no legend.
    for with_values in [true, false] {
        let mut texts = Vec::with_capacity(entries.len());
        for e in &entries {
            let t = if with_values { &e.full } else { &e.short };
            let w = text_w(t, &style)? + if e.swatch.is_some() { SWATCH + 4 } else { 0 };
            texts.push((t, w));
        }
        let total: i32 = texts.iter().map(|(_, w)| w + LEGEND_GAP).sum::<i32>() - LEGEND_GAP;
        let mut at = right - total;
        if at < x + 2 * LEGEND_GAP {
            continue;
        }
        for (e, (t, w)) in entries.iter().zip(texts) {
            let mut text_at = at;
            if let Some((color, dashed)) = e.swatch {
                draw_swatch(header, color, dashed, at, mid)?;
                text_at += SWATCH + 4;
            }
            header
                .draw_text(t, &style, (text_at, mid))
                .map_err(draw_err)?;
            at += w + LEGEND_GAP;
        }
        break;
    }
    Ok(())
}

const SWATCH: i32 = 14;
const LEGEND_GAP: i32 = 12;

struct LegendEntry {
    full: String,
    /// For narrow charts.
    short: String,
    /// Line color and dashing; none for what is not drawn.
    swatch: Option<(RGBColor, bool)>,
}

/// Drawn series (when there are several) and the drawn threshold get a
/// line swatch; what would not fit the value axis is listed after
/// "above chart:" with its value.
fn legend(chart: &Chart, plan: &Plan) -> Vec<LegendEntry> {
    let mut entries = Vec::new();
    let mut above = Vec::new();
    for (i, s) in chart.series.iter().enumerate() {
        let value = s.points.last().map(|p| chart.unit.format_short(p.1));
        let full = match &value {
            Some(v) => format!("{} {v}", s.name),
            None => s.name.clone(),
        };
        if !plan.drawn[i] {
            above.push(full);
        } else if chart.series.len() > 1 {
            entries.push(LegendEntry {
                full,
                short: s.name.clone(),
                swatch: Some((PALETTE[i % PALETTE.len()], false)),
            });
        }
    }
    if let Some((name, l)) = &chart.limit {
        // A threshold is a setting, not a reading: its value always shows.
        let text = format!("{name} {}", chart.unit.format_short(*l));
        if *l > plan.y.top {
            above.push(text);
        } else {
            entries.push(LegendEntry {
                short: text.clone(),
                full: text,
                swatch: Some((LIMIT, true)),
            });
        }
    }
    if !above.is_empty() {
        let text = format!("above chart: {}", above.join(", "));
        entries.push(LegendEntry {
            short: text.clone(),
            full: text,
            swatch: None,
        });
    }
    entries
}

fn draw_swatch<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    color: RGBColor,
    dashed: bool,
    x: i32,
    y: i32,
) -> Result<(), ChartError> {
    let style = color.stroke_width(2);
    let pieces: &[(i32, i32)] = if dashed {
        &[(0, 5), (9, SWATCH)]
    } else {
        &[(0, SWATCH)]
    };
    for (a, b) in pieces {
        area.draw(&PathElement::new(vec![(x + a, y), (x + b, y)], style))
            .map_err(draw_err)?;
    }
    Ok(())
}

fn text_style(size: f64, color: &RGBColor, h: HPos) -> TextStyle<'static> {
    (FAMILY, size)
        .into_font()
        .color(color)
        .pos(Pos::new(h, VPos::Center))
}

/// `YYYY-MM-DD HH:MM` in UTC.
fn utc_minute(ms: u64) -> String {
    let mut buf = [0u8; 24];
    let s = Timestamp(ms).format(&mut buf);
    format!("{} {}", &s[..10], &s[11..16])
}

/// A linear axis with our ticks and labels (plotters' own pick ticks that
/// are round in milliseconds, not in minutes).
struct Axis<'a> {
    range: Range<f64>,
    ticks: &'a [f64],
    label: &'a dyn Fn(f64) -> String,
}

impl Ranged for Axis<'_> {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, (a, b): (i32, i32)) -> i32 {
        let len = self.range.end - self.range.start;
        if len <= 0.0 {
            return a;
        }
        let f = ((v - self.range.start) / len).clamp(-1.0, 2.0);
        a + (f64::from(b - a) * f).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // Only the labelled lines: a finer grid is clutter at this size.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.to_vec()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

impl ValueFormatter<f64> for Axis<'_> {
    fn format_ext(&self, v: &f64) -> String {
        (self.label)(*v)
    }
}

/// Value axis: 0 to a round top, ticks at round steps of the display unit.
#[derive(Debug, Clone, PartialEq)]
struct ValueAxis {
    top: f64,
    ticks: Vec<f64>,
    /// Tick values are divided by this for display...
    div: f64,
    /// ...written with this many decimals, followed by this.
    decimals: usize,
    suffix: &'static str,
}

impl ValueAxis {
    fn new(unit: Unit, max: f64, max_ticks: usize) -> ValueAxis {
        // Idle noise must not fill the chart: 0.05% CPU is not a mountain.
        let floor = match unit {
            Unit::Bytes | Unit::BytesPerEvent => 10.0,
            Unit::Percent | Unit::PerSecond | Unit::Ratio => 1.0,
        };
        let max = if max.is_finite() {
            max.max(floor)
        } else {
            floor
        };
        let (div, suffix) = match unit {
            Unit::Bytes | Unit::BytesPerEvent => binary_scale(max),
            Unit::Percent => (1.0, "%"),
            Unit::PerSecond => decimal_scale(max),
            Unit::Ratio => (0.01, "%"),
        };
        let scaled_max = match unit {
            Unit::Ratio => 100.0,
            _ => max / div * 1.05,
        };
        let step = nice_step(scaled_max / max_ticks.max(1) as f64);
        let steps = (scaled_max / step).ceil().max(1.0) as usize;
        let ticks = (0..=steps).map(|i| i as f64 * step * div).collect();
        let decimals = if step >= 1.0 {
            0
        } else if step >= 0.1 {
            1
        } else {
            2
        };
        ValueAxis {
            top: steps as f64 * step * div,
            ticks,
            div,
            decimals,
            suffix,
        }
    }

    fn label(&self, v: f64) -> String {
        if v == 0.0 {
            format!("0{}", self.suffix)
        } else {
            format!("{:.*}{}", self.decimals, v / self.div, self.suffix)
        }
    }
}

/// 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(raw.log10().floor());
    let norm = raw / mag;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

const BINARY_UNITS: [&str; 5] = [" B", " KB", " MB", " GB", " TB"];

fn binary_scale(max: f64) -> (f64, &'static str) {
    let mut div = 1.0;
    let mut i = 0;
    while max / div >= 1024.0 && i < BINARY_UNITS.len() - 1 {
        div *= 1024.0;
        i += 1;
    }
    (div, BINARY_UNITS[i])
}

fn decimal_scale(max: f64) -> (f64, &'static str) {
    if max >= 1e6 {
        (1e6, "M")
    } else if max >= 1e3 {
        (1e3, "k")
    } else {
        (1.0, "")
    }
}

/// `512 B`, `12.3 MB`, `123 MB` (powers of 1024, as `du -h`).
fn human_bytes(v: f64) -> String {
    let (div, suffix) = binary_scale(v);
    if div == 1.0 {
        format!("{v:.0}{suffix}")
    } else {
        format!("{}{suffix}", sig3(v / div))
    }
}

/// `3.4`, `123`, `1.2k`, `3.4M`.
fn compact(v: f64) -> String {
    let (div, suffix) = decimal_scale(v);
    format!("{}{suffix}", sig3(v / div))
}

/// About three significant digits: `0.42`, `4.2`, `42.1`, `421`.
fn sig3(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a < 1.0 {
        format!("{v:.2}")
    } else if a < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// Time axis: ticks at round UTC times, labelled `HH:MM` (`HH:MM:SS` for
/// short spans; the date at midnight and for spans of days).
#[derive(Debug, Clone, PartialEq)]
struct TimeAxis {
    ticks: Vec<f64>,
    step_ms: u64,
}

const TIME_STEPS_S: [u64; 21] = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10_800, 21_600, 43_200, 86_400,
    172_800, 604_800, 2_592_000,
];
const DAY_MS: u64 = 86_400_000;

impl TimeAxis {
    fn new(span: Span, max_ticks: u64) -> TimeAxis {
        let len = span.to - span.from;
        let step_ms = TIME_STEPS_S
            .iter()
            .map(|s| s * 1000)
            .find(|s| len / s < max_ticks.max(1))
            .unwrap_or(TIME_STEPS_S[TIME_STEPS_S.len() - 1] * 1000);
        let first = span.from.div_ceil(step_ms) * step_ms;
        let ticks = (first..=span.to)
            .step_by(step_ms as usize)
            .map(|t| t as f64)
            .collect();
        TimeAxis { ticks, step_ms }
    }

    /// Drops ticks whose label would stick out past the plot's right edge.
    fn fit_labels<DB: DrawingBackend>(
        &mut self,
        area: &DrawingArea<DB, Shift>,
        style: &TextStyle,
        span: Span,
        plot_w: u32,
    ) -> Result<(), ChartError> {
        let Some(last) = self.ticks.last().copied() else {
            return Ok(());
        };
        let half = area
            .estimate_text_size(&self.label(last), style)
            .map_err(draw_err)?
            .0 as f64
            / 2.0;
        let len = (span.to - span.from).max(1) as f64;
        let room = f64::from(plot_w) - 1.0;
        self.ticks
            .retain(|t| (t - span.from as f64) / len * f64::from(plot_w) + half <= room);
        Ok(())
    }

    fn label(&self, t: f64) -> String {
        let ms = t as u64;
        let mut buf = [0u8; 24];
        let s = Timestamp(ms).format(&mut buf);
        if self.step_ms >= DAY_MS || ms.is_multiple_of(DAY_MS) {
            s[5..10].to_string()
        } else if self.step_ms < 60_000 {
            s[11..19].to_string()
        } else {
            s[11..16].to_string()
        }
    }
}

/// 2 px, or 1 px for a line that zigzags (noise at one point per pixel):
/// plotters' bitmap backend fills a thick line as one polygon, which goes
/// wild at hundreds of sharp turns, and 2 px would only blur noise anyway.
fn stroke_width(seg: &[(f64, f64)]) -> u32 {
    let turns = seg
        .windows(3)
        .filter(|w| (w[1].1 - w[0].1) * (w[2].1 - w[1].1) < 0.0)
        .count();
    if turns * 8 > seg.len() {
        1
    } else {
        2
    }
}

/// Where a line breaks: a pause longer than a few typical intervals, a few
/// pixel columns, and [`MIN_GAP_MS`].
fn gap_ms(s: &Series, span: Span, columns: u32) -> u64 {
    let n = s.points.len() as u64;
    let typical = match (s.points.first(), s.points.last()) {
        (Some(a), Some(b)) if n > 1 => (b.0.saturating_sub(a.0)) / (n - 1),
        _ => 0,
    };
    let column = (span.to - span.from) / u64::from(columns.max(1));
    MIN_GAP_MS.max(column * 3).max(typical * 4)
}

/// Reduces time-ordered points to at most four per pixel column (first,
/// smallest, largest, last), so the line looks the same as with every
/// point. Lines are split where points are more than `gap_ms`
/// apart. Points outside the span or not finite are skipped.
fn decimate(points: &[(u64, f64)], span: Span, columns: u32, gap_ms: u64) -> Vec<Vec<(f64, f64)>> {
    // Float math: a u128 division per point would dominate the cost.
    let per_ms = f64::from(columns.max(1)) / (span.to - span.from + 1) as f64;
    let mut segments = Vec::new();
    let mut seg = Vec::new();
    let mut bucket: Option<Column> = None;
    let mut prev_t: Option<u64> = None;
    for &(t, v) in points {
        if t < span.from || t > span.to || !v.is_finite() {
            continue;
        }
        if prev_t.is_some_and(|p| t.saturating_sub(p) > gap_ms) {
            if let Some(b) = bucket.take() {
                b.push_to(&mut seg);
            }
            segments.push(std::mem::take(&mut seg));
        }
        prev_t = Some(t);
        let index = ((t - span.from) as f64 * per_ms) as u64;
        match &mut bucket {
            Some(b) if b.index == index => b.add(t, v),
            _ => {
                if let Some(b) = bucket.replace(Column::new(index, t, v)) {
                    b.push_to(&mut seg);
                }
            }
        }
    }
    if let Some(b) = bucket {
        b.push_to(&mut seg);
    }
    segments.push(seg);
    segments.retain(|s| !s.is_empty());
    segments
}

/// The first, lowest, highest and last point of one pixel column: drawn
/// in time order they give the same pixels as every point would (M4).
struct Column {
    index: u64,
    first: (u64, f64),
    lo: (u64, f64),
    hi: (u64, f64),
    last: (u64, f64),
}

impl Column {
    fn new(index: u64, t: u64, v: f64) -> Column {
        Column {
            index,
            first: (t, v),
            lo: (t, v),
            hi: (t, v),
            last: (t, v),
        }
    }

    fn add(&mut self, t: u64, v: f64) {
        if v < self.lo.1 {
            self.lo = (t, v);
        }
        if v > self.hi.1 {
            self.hi = (t, v);
        }
        self.last = (t, v);
    }

    /// Appends the column's points in time order, each once.
    fn push_to(self, seg: &mut Vec<(f64, f64)>) {
        let mut pts = [self.first, self.lo, self.hi, self.last];
        pts.sort_by_key(|p| p.0);
        for (i, p) in pts.iter().enumerate() {
            if i == 0 || p.0 != pts[i - 1].0 {
                seg.push((p.0 as f64, p.1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(from: u64, to: u64) -> Span {
        Span { from, to }
    }

    #[test]
    fn decimation_keeps_extremes_within_four_points_per_column() {
        // An hour at 1 Hz with one spike and one dip.
        let mut points: Vec<(u64, f64)> = (0..3600).map(|i| (i * 1000, 10.0)).collect();
        points[1234].1 = 99.0;
        points[2345].1 = -5.0;
        let segs = decimate(&points, span(0, 3_599_000), 100, 10_000);
        assert_eq!(segs.len(), 1);
        let seg = &segs[0];
        assert!(seg.len() <= 400, "{} points", seg.len());
        assert!(seg.iter().any(|p| p.1 == 99.0));
        assert!(seg.iter().any(|p| p.1 == -5.0));
        assert!(seg.windows(2).all(|w| w[0].0 < w[1].0), "time order kept");
        assert_eq!(seg.first().map(|p| p.0), Some(0.0));
        assert_eq!(seg.last().map(|p| p.0), Some(3_599_000.0));
    }

    #[test]
    fn decimation_splits_at_gaps_and_skips_junk() {
        let points = vec![
            (0, 1.0),
            (1000, 2.0),
            (2000, f64::NAN),
            // The agent was stopped for a minute.
            (62_000, 3.0),
            (63_000, 4.0),
            (200_000, 5.0),
        ];
        let segs = decimate(&points, span(0, 100_000), 1000, 10_000);
        assert_eq!(
            segs,
            vec![
                vec![(0.0, 1.0), (1000.0, 2.0)],
                vec![(62_000.0, 3.0), (63_000.0, 4.0)]
            ]
        );
    }

    #[test]
    fn sparse_points_stay_connected() {
        // Compression points come once per batch, minutes apart.
        let s = Series {
            name: "saved".into(),
            points: (0..10).map(|i| (i * 300_000, 0.9)).collect(),
        };
        let sp = span(0, 2_700_000);
        assert_eq!(decimate(&s.points, sp, 500, gap_ms(&s, sp, 500)).len(), 1);
    }

    fn row(secs: u64, raw: u64, stored: u64, events: u64) -> HistoryRow {
        HistoryRow {
            ts: Timestamp(secs * 1000),
            raw_bytes: raw,
            stored_bytes: stored,
            stored_events: events,
            ..HistoryRow::default()
        }
    }

    #[test]
    fn history_efficiency_comes_from_stored_totals() {
        let rows = [
            row(0, 0, 0, 0),
            // A batch's bytes counted a second before its events.
            row(10, 1000, 100, 0),
            row(11, 1000, 100, 10),
            // Nothing stored: no point.
            row(20, 1000, 100, 10),
            row(30, 3000, 400, 20),
            // The agent restarted: totals from zero again.
            row(31, 500, 50, 5),
            row(45, 1500, 150, 15),
        ];
        let (ratio, per_event) = storage_efficiency(&rows);
        assert_eq!(ratio, vec![(11_000, 0.9), (30_000, 0.85), (45_000, 0.9)]);
        assert_eq!(
            per_event,
            vec![(11_000, 10.0), (30_000, 30.0), (45_000, 10.0)]
        );
    }

    #[test]
    fn dashboard_has_every_chart_and_current_values() {
        let samples: Vec<MetricsSample> = (0..5)
            .map(|i| MetricsSample {
                ts: Timestamp(1_000_000 + i * 1000),
                rss_bytes: (10 + i) << 20,
                vsz_bytes: 300 << 20,
                events_per_sec: [1.0, 2.0, 3.0],
                ..MetricsSample::default()
            })
            .collect();
        let charts = dashboard_from_samples(&samples, 1 << 30, &AlertsConfig::default());
        assert_eq!(charts.len(), 6);
        assert_eq!(charts[0].current(), Some((14 << 20) as f64));
        assert_eq!(
            charts[0].limit,
            Some(("alert".into(), 200.0 * 1024.0 * 1024.0))
        );
        assert_eq!(charts[2].series.len(), 4);
        assert_eq!(charts[2].current(), Some(6.0), "total events/s first");
        // Nothing was stored: no compression points, rather than zeros.
        assert_eq!(charts[3].current(), None);
        assert_eq!(charts[5].limit, Some(("cap".into(), (1u64 << 30) as f64)));
        let svg = render_svg(&charts[0], 560, 180).expect("svg");
        assert!(svg.contains("14.0 MB") && svg.contains("above chart: VSZ"));
        assert!(matches!(
            render_svg(&charts[0], 10, 10),
            Err(ChartError::BadSize { .. })
        ));
        assert!(matches!(
            render_png(&[], 560, 180),
            Err(ChartError::NoCharts)
        ));
    }

    #[test]
    fn values_read_in_human_units() {
        assert_eq!(Unit::Bytes.format(512.0), "512 B");
        assert_eq!(Unit::Bytes.format(12.34 * 1024.0 * 1024.0), "12.3 MB");
        assert_eq!(Unit::Bytes.format(1536.0 * 1024.0 * 1024.0), "1.5 GB");
        assert_eq!(Unit::Percent.format(3.456), "3.5%");
        assert_eq!(Unit::Percent.format(150.0), "150%");
        assert_eq!(Unit::PerSecond.format(0.5), "0.50 events/s");
        assert_eq!(Unit::PerSecond.format(1234.0), "1.2k events/s");
        assert_eq!(Unit::PerSecond.format_short(120.0), "120/s");
        assert_eq!(Unit::BytesPerEvent.format(312.4), "312 B/event");
        assert_eq!(Unit::Ratio.format(0.9213), "92.1%");
    }

    #[test]
    fn value_axis_uses_round_steps_of_the_display_unit() {
        let mb = 1024.0 * 1024.0;
        let y = ValueAxis::new(Unit::Bytes, 13.2 * mb, 4);
        let labels: Vec<String> = y.ticks.iter().map(|t| y.label(*t)).collect();
        assert_eq!(labels, ["0 MB", "5 MB", "10 MB", "15 MB"]);
        assert!(y.top >= 13.2 * mb);

        let y = ValueAxis::new(Unit::Ratio, 0.9, 5);
        let labels: Vec<String> = y.ticks.iter().map(|t| y.label(*t)).collect();
        assert_eq!(labels, ["0%", "20%", "40%", "60%", "80%", "100%"]);

        let y = ValueAxis::new(Unit::PerSecond, 2500.0, 4);
        assert_eq!(y.label(*y.ticks.last().expect("ticks")), "3k");

        // No data still gives a usable axis.
        let y = ValueAxis::new(Unit::Percent, 0.0, 4);
        assert!(y.top > 0.0 && y.ticks.len() >= 2);
    }

    #[test]
    fn time_axis_ticks_at_round_utc_times() {
        // 2026-11-25T10:02:30Z to 11:02:30Z.
        let from = 1_795_600_950_000;
        let x = TimeAxis::new(span(from, from + 3_600_000), 6);
        assert_eq!(x.step_ms, 900_000);
        let labels: Vec<String> = x.ticks.iter().map(|t| x.label(*t)).collect();
        assert_eq!(labels, ["10:15", "10:30", "10:45", "11:00"]);
        // Midnight is labelled with the date.
        assert_eq!(
            x.label((1_795_600_950_000 / DAY_MS * DAY_MS) as f64),
            "11-25"
        );
    }
}
