//! What the window shows, as serializable view types built from the
//! engine's snapshot, history and recent events. Only translation: every
//! number comes from the engine, every chart from `edr_charts`.

use std::sync::Arc;
use std::time::Duration;

use edr_api::wire::{Alerts, Endpoint, EventRow as WireEvent};
use edr_charts::{self as charts, Unit};
use edr_collect::Coverage;
use edr_config::Config;
use edr_engine::Snapshot;
use edr_metrics::{Alert, AlertKind, MetricsSample};
use edr_model::event::EventType;
use serde::{Deserialize, Serialize};

use crate::alerts::{self as detections, DetectionsView, MAX_ALERTS_PER_POLL};
use crate::error::CommandError;
use crate::state::{AppState, Service, RECENT_EVENTS};

/// Time windows the dashboard offers, in seconds.
pub const WINDOWS_SECS: [u64; 3] = [60, 600, 3600];
/// Largest chart the window asks for; bounds the work of one poll.
pub const MAX_CHART_WIDTH: u32 = 2400;
pub const MAX_CHART_HEIGHT: u32 = 1200;
const MAX_FILTER_CHARS: usize = 200;
const MAX_SUMMARY_CHARS: usize = 240;

/// One poll of the dashboard.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DashboardRequest {
    pub window_secs: u64,
    /// False while the settings view is shown: no chart is drawn.
    pub charts: bool,
    pub chart_width: u32,
    pub chart_height: u32,
    pub events: EventQuery,
    /// Detection alerts numbered above this are sent (0: the latest).
    #[serde(default)]
    pub alerts_since: u64,
    /// The Alerts view is shown: every alert sent counts as seen.
    #[serde(default)]
    pub alerts_open: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    pub limit: usize,
    /// `process`, `file`, `network`, or none for all.
    pub kind: Option<String>,
    /// Case-insensitive text the summary or action must contain.
    pub text: String,
}

impl DashboardRequest {
    pub fn validate(&self) -> Result<(), CommandError> {
        if !WINDOWS_SECS.contains(&self.window_secs) {
            return Err(CommandError::invalid(format!(
                "window_secs must be one of {WINDOWS_SECS:?}"
            )));
        }
        if self.charts
            && !((charts::MIN_WIDTH..=MAX_CHART_WIDTH).contains(&self.chart_width)
                && (charts::MIN_HEIGHT..=MAX_CHART_HEIGHT).contains(&self.chart_height))
        {
            return Err(CommandError::invalid(format!(
                "chart size must be within {}..={MAX_CHART_WIDTH} x {}..={MAX_CHART_HEIGHT}",
                charts::MIN_WIDTH,
                charts::MIN_HEIGHT
            )));
        }
        let q = &self.events;
        if q.limit > RECENT_EVENTS {
            return Err(CommandError::invalid(format!(
                "events.limit must be at most {RECENT_EVENTS}"
            )));
        }
        if q.kind
            .as_deref()
            .is_some_and(|k| EventType::parse(k).is_none())
        {
            return Err(CommandError::invalid(
                "events.kind must be process, file or network",
            ));
        }
        if q.text.chars().count() > MAX_FILTER_CHARS {
            return Err(CommandError::invalid(format!(
                "events.text must be at most {MAX_FILTER_CHARS} characters"
            )));
        }
        Ok(())
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardView {
    pub engine: EngineView,
    pub charts: Vec<ChartView>,
    pub alerts: Vec<AlertView>,
    /// Detection alerts (`alerts` are the agent's own threshold alerts).
    pub detections: DetectionsView,
    pub coverage: Option<CoverageView>,
    pub totals: Option<TotalsView>,
    /// None unless shipping is on.
    pub shipping: Option<ShippingView>,
    pub events: Vec<EventRow>,
    /// Events held before filtering.
    pub events_held: usize,
}

/// The engine as the window and the tray show it; `ui/app.js` reads the
/// lowercase names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineState {
    Running,
    Paused,
    /// Not started (`EDR_APP_ENGINE=off`), or stopped.
    Off,
    /// Did not start.
    Failed,
}

/// The engine's state in one line, as the tray shows it too.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EngineView {
    pub state: EngineState,
    pub status: String,
    /// Why the engine is off or failed, or why a hand edit of the config
    /// file was refused.
    pub message: Option<String>,
    pub config_file: String,
    pub data_dir: Option<String>,
    pub alerting: bool,
    /// How events are captured: the service, or the engine in the app.
    pub mode: String,
    /// Why the app is not the service's client although one runs, or
    /// that it just switched.
    pub service_note: Option<String>,
    /// No service answers (the tray offers to install it).
    pub service_absent: bool,
}

#[derive(Debug, Serialize)]
pub struct ChartView {
    pub title: String,
    /// The current value, formatted with its unit.
    pub value: String,
    pub svg: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertView {
    pub kind: AlertKind,
    pub message: String,
    pub value: String,
    pub threshold: String,
}

#[derive(Debug, Serialize)]
pub struct CoverageView {
    pub process: String,
    pub network: String,
    pub files: String,
    pub watched: Vec<String>,
    pub unwatched: Vec<UnwatchedView>,
}

#[derive(Debug, Serialize)]
pub struct UnwatchedView {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TotalsView {
    pub produced: u64,
    pub stored: u64,
    pub dropped: u64,
    pub batches: u64,
    pub storage_used: String,
    pub storage_cap: String,
    pub files: u64,
}

/// Shipping (`shipping.nats`) in words, for the Capture card.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ShippingView {
    /// "connected", "not connected" or the last error.
    pub state: String,
    pub ok: bool,
    /// "3 batches (12.0 KB), oldest 5m 2s", or "none".
    pub pending: String,
    /// "120 batches, 1,200 events (5.0 MB)".
    pub shipped: String,
    pub duplicates: u64,
    pub gaps: u64,
}

/// One row of the recent-events table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRow {
    /// RFC 3339, UTC (the window shows it in local time).
    pub time: String,
    pub kind: String,
    pub action: String,
    pub summary: String,
}

/// The engine's state for the window header and the tray, and the
/// snapshot it was made from (None without an engine, or when the
/// service did not answer).
pub async fn engine_view(state: &AppState) -> (EngineView, Option<Snapshot>) {
    let config_file = state.config_path.display().to_string();
    let service = state.service();
    let Some(backend) = state.backend() else {
        let (failed, message) = state.no_engine().unwrap_or((true, "no engine".to_string()));
        let view = EngineView {
            state: if failed {
                EngineState::Failed
            } else {
                EngineState::Off
            },
            status: if failed {
                "Engine failed to start".into()
            } else {
                "Engine off".into()
            },
            message: Some(message),
            config_file,
            data_dir: None,
            alerting: failed,
            mode: edr_desktop::mode_line(false, None),
            service_note: service_note(&service, state.switch_note()),
            service_absent: matches!(service, Service::Absent(_)),
        };
        return (view, None);
    };
    let is_service = state.shows_service(&backend);
    match backend.snapshot().await {
        Ok(snap) => {
            let mut view = engine_view_of(&snap, config_file);
            if is_service {
                view.config_file = "the edr-agent service's config file".into();
            }
            view.mode = edr_desktop::mode_line(is_service, Some(&snap));
            view.service_note = service_note(&service, state.switch_note());
            view.service_absent = matches!(service, Service::Absent(_));
            (view, Some(snap))
        }
        Err(e) => (
            EngineView {
                state: EngineState::Failed,
                status: "Service not answering".into(),
                message: Some(e.to_string()),
                config_file,
                data_dir: None,
                alerting: true,
                mode: edr_desktop::mode_line(is_service, None),
                service_note: None,
                service_absent: false,
            },
            None,
        ),
    }
}

/// Why the app is not the service's client, or what just changed.
fn service_note(service: &Service, switched: Option<String>) -> Option<String> {
    if let Some(s) = switched {
        return Some(s);
    }
    match service {
        Service::Unusable(m) => Some(format!(
            "The edr-agent service runs, but the app cannot use it: {m}"
        )),
        _ => None,
    }
}

fn engine_view_of(s: &Snapshot, config_file: String) -> EngineView {
    let state = match s.state() {
        edr_engine::EngineState::Running => EngineState::Running,
        edr_engine::EngineState::Paused => EngineState::Paused,
        edr_engine::EngineState::Stopped => EngineState::Off,
    };
    let status = edr_desktop::status_line(s);
    EngineView {
        state,
        status,
        message: s.config_error.clone(),
        config_file,
        data_dir: Some(s.data_dir.clone()),
        alerting: !s.alerts.is_empty(),
        mode: String::new(),
        service_note: None,
        service_absent: false,
    }
}

/// What one poll needs, fetched from the backend.
pub struct Fetched {
    pub engine: EngineView,
    pub snap: Option<Snapshot>,
    pub samples: Vec<MetricsSample>,
    pub config: Option<Arc<Config>>,
    pub events: Vec<WireEvent>,
    pub alerts: Alerts,
    pub from_service: bool,
}

pub async fn fetch(state: &AppState, req: &DashboardRequest) -> Fetched {
    let (engine, snap) = engine_view(state).await;
    let mut f = Fetched {
        engine,
        snap,
        samples: Vec::new(),
        config: None,
        events: Vec::new(),
        alerts: Alerts {
            last_seq: 0,
            alerts: Vec::new(),
        },
        from_service: false,
    };
    if f.snap.is_none() {
        return f;
    }
    let Some(backend) = state.backend() else {
        return f;
    };
    f.from_service = backend.is_service();
    let warn = |what: &str, e: CommandError| {
        tracing::warn!(error = %e, "{what} not read");
    };
    if req.charts {
        match backend.history(Duration::from_secs(req.window_secs)).await {
            Ok(s) => f.samples = s,
            Err(e) => warn("history", e),
        }
        match backend.config().await {
            Ok(c) => f.config = Some(c),
            Err(e) => warn("config", e),
        }
    }
    match backend.events(RECENT_EVENTS).await {
        Ok(e) => f.events = e,
        Err(e) => warn("events", e),
    }
    match backend.alerts(req.alerts_since, MAX_ALERTS_PER_POLL).await {
        Ok(a) => f.alerts = a,
        Err(e) => warn("alerts", e),
    }
    f
}

pub fn dashboard(state: &AppState, req: &DashboardRequest, f: Fetched) -> DashboardView {
    let Some(snap) = f.snap else {
        return DashboardView {
            engine: f.engine,
            charts: Vec::new(),
            alerts: Vec::new(),
            detections: DetectionsView::default(),
            coverage: None,
            totals: None,
            shipping: None,
            events: Vec::new(),
            events_held: 0,
        };
    };
    let charts = match (&f.config, req.charts) {
        (Some(config), true) => charts_view(&f.samples, config, req),
        _ => Vec::new(),
    };
    let got = f.alerts;
    if req.alerts_open {
        state.marks.mark_seen(got.last_seq);
    }
    let d = &snap.detection;
    let detections = DetectionsView {
        last_seq: got.last_seq,
        alerts: got
            .alerts
            .iter()
            .rev()
            .map(detections::alert_view)
            .collect(),
        unseen: state.marks.unseen(got.last_seq),
        rules_loaded: d.rules_loaded,
        raised: d.alerts_raised,
        suppressed: d.alerts_suppressed,
        excepted: d.alerts_excepted,
        evaluated: d.events_evaluated,
        eval_us_mean: d.eval_ns_mean as f64 / 1000.0,
        from_service: f.from_service,
    };
    DashboardView {
        engine: f.engine,
        charts,
        alerts: snap.alerts.iter().map(alert_view).collect(),
        detections,
        coverage: Some(coverage_view(&snap.coverage)),
        totals: Some(totals_view(&snap)),
        shipping: snap.shipping.as_ref().map(shipping_view),
        events: filter_events(&f.events, &req.events),
        events_held: f.events.len(),
    }
}

fn charts_view(
    samples: &[MetricsSample],
    config: &Config,
    req: &DashboardRequest,
) -> Vec<ChartView> {
    charts::dashboard_from_samples(samples, config.max_storage_bytes(), &config.alerts)
        .into_iter()
        .filter_map(|chart| {
            let svg = charts::render_svg(&chart, req.chart_width, req.chart_height)
                .map_err(|e| tracing::warn!(error = %e, chart = %chart.title, "chart not drawn"))
                .ok()?;
            Some(ChartView {
                value: chart
                    .current()
                    .map(|v| chart.unit.format(v))
                    .unwrap_or_else(|| "–".into()),
                title: chart.title,
                svg,
            })
        })
        .collect()
}

pub fn alert_view(a: &Alert) -> AlertView {
    let (value, threshold) = match a.kind {
        AlertKind::Memory => (
            format!("{:.1} MB", a.value),
            format!("{:.0} MB", a.threshold),
        ),
        AlertKind::Cpu => (
            Unit::Percent.format(a.value),
            Unit::Percent.format(a.threshold),
        ),
        AlertKind::StorageGrowth => (
            format!("{:.0} MB/day", a.value),
            format!("{:.0} MB/day", a.threshold),
        ),
        AlertKind::Compression => (Unit::Ratio.format(a.value), Unit::Ratio.format(a.threshold)),
        AlertKind::StorageWrite => (format!("{:.0} events lost", a.value), "none".into()),
        AlertKind::ShipLag => (format!("{:.0} s", a.value), format!("{:.0} s", a.threshold)),
    };
    AlertView {
        kind: a.kind,
        message: a.message.clone(),
        value,
        threshold,
    }
}

fn coverage_view(c: &Coverage) -> CoverageView {
    let describe = |source: &Option<String>, note: Option<&String>| match (source, note) {
        (Some(s), Some(n)) => format!("{s} ({n})"),
        (Some(s), None) => s.clone(),
        (None, _) => "not collected".to_string(),
    };
    CoverageView {
        process: describe(&c.process_source, c.process_note.as_ref()),
        network: describe(&c.network_source, c.network_note.as_ref()),
        files: describe(&c.file_source, c.file_note.as_ref()),
        watched: c.watched_paths.clone(),
        unwatched: c
            .unwatched_paths
            .iter()
            .map(|u| UnwatchedView {
                path: u.path.clone(),
                reason: u.reason.clone(),
            })
            .collect(),
    }
}

pub fn shipping_view(s: &edr_store::sink::ShippingStatus) -> ShippingView {
    let (state, ok) = match (&s.last_error, s.connected) {
        (Some(e), _) => (e.clone(), false),
        (None, true) => ("connected".to_string(), true),
        (None, false) => ("not connected".to_string(), false),
    };
    let pending = if s.pending_batches == 0 {
        "none".to_string()
    } else {
        let age = s.oldest_pending_ms.map(|t| {
            let now = edr_model::event::Timestamp::now().as_millis();
            let secs = now.saturating_sub(t) / 1000;
            match secs {
                0..=59 => format!("{secs}s"),
                60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
                _ => format!("{}h {}m", secs / 3600, (secs / 60) % 60),
            }
        });
        format!(
            "{} batches ({}){}",
            s.pending_batches,
            Unit::Bytes.format(s.pending_bytes as f64),
            age.map(|a| format!(", oldest {a}")).unwrap_or_default()
        )
    };
    ShippingView {
        state,
        ok,
        pending,
        shipped: format!(
            "{} batches, {} events ({})",
            s.shipped_batches,
            s.shipped_events,
            Unit::Bytes.format(s.shipped_bytes as f64)
        ),
        duplicates: s.duplicates,
        gaps: s.gaps,
    }
}

fn totals_view(s: &Snapshot) -> TotalsView {
    let t = &s.totals;
    TotalsView {
        produced: t.produced.iter().sum(),
        stored: t.stored.iter().sum(),
        dropped: t.dropped_total(),
        batches: t.batches_written,
        storage_used: Unit::Bytes.format(s.storage.used_bytes as f64),
        storage_cap: Unit::Bytes.format(s.storage.cap_bytes as f64),
        files: s.storage.files,
    }
}

/// The recent events (newest last) as rows (newest first) that match the
/// query.
pub fn filter_events(events: &[WireEvent], q: &EventQuery) -> Vec<EventRow> {
    let needle = q.text.trim().to_lowercase();
    events
        .iter()
        .rev()
        .map(event_row)
        .filter(|r| q.kind.as_deref().is_none_or(|k| r.kind == k))
        .filter(|r| {
            needle.is_empty()
                || r.summary.to_lowercase().contains(&needle)
                || r.action.to_lowercase().contains(&needle)
        })
        .take(q.limit)
        .collect()
}

/// The few fields a person scans a table for.
pub fn event_row(e: &WireEvent) -> EventRow {
    let summary = match e.kind.as_str() {
        "process" => process_summary(e),
        "file" => {
            let path = e.file_path.as_deref().unwrap_or("?");
            match &e.original_path {
                Some(from) => format!("{from} → {path}"),
                None => path.to_string(),
            }
        }
        _ => network_summary(e),
    };
    EventRow {
        time: e.timestamp.to_string(),
        kind: e.kind.clone(),
        action: e.action.clone(),
        summary: truncate(summary, MAX_SUMMARY_CHARS),
    }
}

fn process_summary(e: &WireEvent) -> String {
    let Some(p) = &e.process else {
        return "?".to_string();
    };
    let who = format!("{} ({})", p.name.as_deref().unwrap_or("?"), p.pid);
    match &p.command_line {
        Some(c) if !c.is_empty() => format!("{who}: {c}"),
        _ => who,
    }
}

fn network_summary(e: &WireEvent) -> String {
    let end = |side: Option<Endpoint>| {
        side.map(|Endpoint { ip, port }| match ip {
            std::net::IpAddr::V6(_) => format!("[{ip}]:{port}"),
            std::net::IpAddr::V4(_) => format!("{ip}:{port}"),
        })
    };
    let transport = e.transport.as_deref().unwrap_or("");
    let mut out = match (end(e.source), end(e.destination)) {
        (Some(s), Some(d)) => format!("{transport} {s} → {d}"),
        (Some(s), None) => format!("{transport} {s}"),
        (None, Some(d)) => format!("{transport} → {d}"),
        (None, None) => transport.to_string(),
    };
    if let Some(p) = &e.process {
        out.push_str(&format!(" ({})", p.name.as_deref().unwrap_or("?")));
    }
    out.trim().to_string()
}

fn truncate(mut s: String, max: usize) -> String {
    if let Some((i, _)) = s.char_indices().nth(max) {
        s.truncate(i);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_engine::recent::{RecentEvent, RecentProcess};
    use edr_model::event::{Action, Timestamp};

    #[test]
    fn shipping_reads_as_words() {
        let now = Timestamp::now().as_millis();
        let down = edr_store::sink::ShippingStatus {
            last_error: Some("cannot connect to nats://127.0.0.1:4222: timed out".into()),
            pending_batches: 3,
            pending_bytes: 2048,
            oldest_pending_ms: Some(now - 125_000),
            gaps: 1,
            ..Default::default()
        };
        let v = shipping_view(&down);
        assert!(!v.ok);
        assert!(v.state.starts_with("cannot connect"));
        assert!(
            v.pending.starts_with("3 batches (2.0 KB), oldest 2m "),
            "{}",
            v.pending
        );
        assert_eq!(v.gaps, 1);
        let up = edr_store::sink::ShippingStatus {
            connected: true,
            shipped_batches: 12,
            shipped_events: 120,
            ..Default::default()
        };
        let v = shipping_view(&up);
        assert!(v.ok);
        assert_eq!(
            (v.state.as_str(), v.pending.as_str()),
            ("connected", "none")
        );
        assert!(
            v.shipped.starts_with("12 batches, 120 events"),
            "{}",
            v.shipped
        );
    }

    fn wire(e: &RecentEvent) -> WireEvent {
        WireEvent::of(e)
    }

    fn query(kind: Option<&str>, text: &str) -> EventQuery {
        EventQuery {
            limit: 10,
            kind: kind.map(String::from),
            text: text.into(),
        }
    }

    fn row(kind: EventType, action: Action) -> RecentEvent {
        RecentEvent {
            timestamp: Timestamp(1_795_600_800_000),
            kind,
            action,
            process: None,
            file_path: None,
            original_path: None,
            transport: None,
            source: None,
            destination: None,
        }
    }

    fn samples() -> [RecentEvent; 4] {
        let file = RecentEvent {
            file_path: Some("/tmp/w/a.txt".into()),
            ..row(EventType::File, Action::FileCreated)
        };
        let rename = RecentEvent {
            file_path: Some("/tmp/w/b.txt".into()),
            original_path: Some("/tmp/w/a.txt".into()),
            ..row(EventType::File, Action::FileRenamed)
        };
        let proc = RecentEvent {
            process: Some(RecentProcess {
                pid: 42,
                name: "curl".into(),
                command_line: Some("curl -s https://example.org".into()),
            }),
            ..row(EventType::Process, Action::ProcessExec)
        };
        let net = RecentEvent {
            transport: Some("tcp"),
            source: Some(("::1".parse().expect("ip"), 8080)),
            process: Some(RecentProcess {
                pid: 7,
                name: "python3".into(),
                command_line: None,
            }),
            ..row(EventType::Network, Action::Listening)
        };
        [file, rename, proc, net]
    }

    #[test]
    fn rows_summarize_each_type() {
        let [file, rename, proc, net] = samples().map(|e| wire(&e));
        assert_eq!(event_row(&file).summary, "/tmp/w/a.txt");
        assert_eq!(event_row(&file).time, "2026-11-25T10:00:00.000Z");
        assert_eq!(event_row(&rename).summary, "/tmp/w/a.txt → /tmp/w/b.txt");
        let p = event_row(&proc);
        assert_eq!(
            (p.kind.as_str(), p.summary.as_str()),
            ("process", "curl (42): curl -s https://example.org")
        );
        assert_eq!(event_row(&net).summary, "tcp [::1]:8080 (python3)");
    }

    #[test]
    fn newest_first_filtered_by_type_and_text() {
        let [file, rename, proc, net] = samples().map(|e| wire(&e));
        let events = vec![file, proc, rename, net];
        let all = filter_events(&events, &query(None, ""));
        assert_eq!(all.len(), 4);
        assert_eq!(all[0].kind, "network");
        let files = filter_events(&events, &query(Some("file"), ""));
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].action, "file-renamed");
        let curl = filter_events(&events, &query(None, "CURL"));
        assert_eq!(curl.len(), 1);
        let renames = filter_events(&events, &query(None, "rename"));
        assert_eq!(renames.len(), 1);
    }

    #[test]
    fn long_summaries_are_cut_on_a_char_boundary() {
        let s = truncate("é".repeat(300), 10);
        assert_eq!(s.chars().count(), 11);
        assert!(s.ends_with('…'));
    }

    #[test]
    fn requests_out_of_bounds_are_refused() {
        let ok = DashboardRequest {
            window_secs: 60,
            charts: true,
            chart_width: 480,
            chart_height: 200,
            events: query(None, ""),
            alerts_since: 0,
            alerts_open: false,
        };
        assert!(ok.validate().is_ok());
        let bad = [
            DashboardRequest {
                window_secs: 61,
                ..ok.clone()
            },
            DashboardRequest {
                chart_width: 100_000,
                ..ok.clone()
            },
            DashboardRequest {
                events: EventQuery {
                    limit: 100_000,
                    ..query(None, "")
                },
                ..ok.clone()
            },
            DashboardRequest {
                events: query(Some("registry"), ""),
                ..ok.clone()
            },
            DashboardRequest {
                events: query(None, &"x".repeat(1000)),
                ..ok.clone()
            },
        ];
        for b in bad {
            assert!(b.validate().is_err(), "{b:?}");
        }
    }
}
