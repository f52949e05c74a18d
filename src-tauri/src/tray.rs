//! The menu-bar (tray) icon and its menu. One background task owns every
//! update of the menu and icon, once a second or when woken, so the UI
//! thread never waits for the engine and no two updates race. The task
//! only decides; the change itself is handed to the UI thread, where the
//! menu and icon live, without waiting for it.

use std::sync::Arc;
use std::time::Duration;

use edr_metrics::AlertKind;
use tauri::image::Image;
use tauri::menu::{Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tauri::tray::{TrayIcon, TrayIconBuilder};
use tauri::{include_image, AppHandle, Manager, Wry};
use tauri_plugin_notification::NotificationExt;
use tokio::sync::Notify;

use crate::backend::Backend;
use crate::state::AppState;
use crate::view::{self, EngineState, EngineView};
use crate::window::{self, View};

const ICON_RUNNING: Image<'static> = include_image!("../icons/tray-running.png");
const ICON_PAUSED: Image<'static> = include_image!("../icons/tray-paused.png");
const ICON_ALERT: Image<'static> = include_image!("../icons/tray-alert.png");

/// The tray's id; on Linux it also names the D-Bus menu object.
pub const TRAY_ID: &str = "edr-agent";
pub const LABEL_PAUSE: &str = "Pause";
pub const LABEL_RESUME: &str = "Resume";
pub const LABEL_INSTALL: &str = "Install the service…";
/// Where "Install the service…" goes in the menu: after "Open Data Folder".
const INSTALL_POSITION: usize = 8;

mod id {
    pub const STATUS: &str = "status";
    pub const MODE: &str = "mode";
    pub const INSTALL: &str = "install-service";
    pub const PAUSE: &str = "pause";
    pub const OPEN: &str = "open";
    pub const ALERTS: &str = "alerts";
    pub const SETTINGS: &str = "settings";
    pub const DATA: &str = "data";
    pub const QUIT: &str = "quit";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IconKind {
    Running,
    Paused,
    Alert,
}

/// What the tray shows; compared each tick so unchanged items are not
/// re-sent over D-Bus (or to the menu bar).
#[derive(Debug, Clone, PartialEq)]
struct Shown {
    status: String,
    mode: String,
    /// Why the app is not the service's client, or what just switched
    /// (in the tooltip).
    note: Option<String>,
    /// "Install the service…" is in the menu (no service answers).
    install: bool,
    pause_label: &'static str,
    pause_enabled: bool,
    alerts_label: String,
    icon: IconKind,
}

/// Wakes the update task before its next tick (after a click or a command).
struct Wake(Arc<Notify>);

#[derive(Clone)]
struct Items {
    tray: TrayIcon,
    menu: Menu<Wry>,
    status: MenuItem<Wry>,
    mode: MenuItem<Wry>,
    install: MenuItem<Wry>,
    pause: MenuItem<Wry>,
    alerts: MenuItem<Wry>,
}

/// Builds the tray and starts the task that keeps it current.
pub fn build(app: &AppHandle) -> tauri::Result<()> {
    let status = MenuItem::with_id(app, id::STATUS, "Starting…", false, None::<&str>)?;
    let mode = MenuItem::with_id(
        app,
        id::MODE,
        "Looking for the service…",
        false,
        None::<&str>,
    )?;
    let install = MenuItem::with_id(app, id::INSTALL, LABEL_INSTALL, true, None::<&str>)?;
    let pause = MenuItem::with_id(app, id::PAUSE, LABEL_PAUSE, true, None::<&str>)?;
    let alerts = MenuItem::with_id(app, id::ALERTS, alerts_label(0), true, None::<&str>)?;
    let menu = Menu::with_items(
        app,
        &[
            &status,
            &mode,
            &PredefinedMenuItem::separator(app)?,
            &pause,
            &MenuItem::with_id(app, id::OPEN, "Open Dashboard", true, None::<&str>)?,
            &alerts,
            &MenuItem::with_id(app, id::SETTINGS, "Settings…", true, None::<&str>)?,
            &MenuItem::with_id(app, id::DATA, "Open Data Folder", true, None::<&str>)?,
            &PredefinedMenuItem::separator(app)?,
            &MenuItem::with_id(app, id::QUIT, "Quit", true, None::<&str>)?,
        ],
    )?;
    let builder = TrayIconBuilder::with_id(TRAY_ID)
        .icon(ICON_RUNNING)
        .tooltip("EDR Agent")
        .menu(&menu)
        .show_menu_on_left_click(true)
        .on_menu_event(on_menu_event);
    // A template image follows the menu bar's light or dark look; only
    // its alpha is drawn, which the icons' cut-out glyphs are made for.
    #[cfg(target_os = "macos")]
    let builder = builder.icon_as_template(true);
    let tray = builder.build(app)?;

    let wake = Arc::new(Notify::new());
    app.manage(Wake(Arc::clone(&wake)));
    let items = Items {
        tray,
        menu,
        status,
        mode,
        install,
        pause,
        alerts,
    };
    tauri::async_runtime::spawn(update_loop(app.clone(), items, wake));
    Ok(())
}

/// Asks for an update now (the engine's state just changed).
pub fn refresh(app: &AppHandle) {
    if let Some(w) = app.try_state::<Wake>() {
        w.0.notify_one();
    }
}

fn on_menu_event(app: &AppHandle, event: MenuEvent) {
    match event.id().as_ref() {
        id::PAUSE => {
            let app = app.clone();
            tauri::async_runtime::spawn(async move {
                if let Some(b) = app.state::<AppState>().backend() {
                    let paused = b.snapshot().await.map(|s| s.paused);
                    match paused {
                        Ok(p) => {
                            if let Err(e) = b.set_paused(!p).await {
                                tracing::warn!(error = %e, "cannot pause or resume");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot pause or resume"),
                    }
                }
                refresh(&app);
            });
        }
        id::INSTALL => crate::service::install(app),
        id::OPEN => window::show(app, View::Dashboard),
        id::ALERTS => window::show(app, View::Alerts),
        id::SETTINGS => window::show(app, View::Settings),
        id::DATA => {
            let app = app.clone();
            tauri::async_runtime::spawn(async move {
                if let Some(b) = app.state::<AppState>().backend() {
                    match b.snapshot().await {
                        Ok(s) => {
                            if let Err(e) = window::open_folder(std::path::Path::new(&s.data_dir)) {
                                tracing::warn!(error = %e, "cannot open the data folder");
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot open the data folder"),
                    }
                }
            });
        }
        id::QUIT => crate::quit(app),
        _ => {}
    }
}

async fn update_loop(app: AppHandle, items: Items, wake: Arc<Notify>) {
    let mut shown: Option<Shown> = None;
    let mut alerts: Vec<AlertKind> = Vec::new();
    // Detection alerts numbered up to this were notified; those raised
    // before the app started (or attached) are the engine's, not news.
    let mut notified: Option<(bool, u64)> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A detection alert wakes the loop at once, its notification should not
    // wait for the next tick: the embedded engine's through its watch, the
    // service's through the API's live stream (whose snapshots the loop
    // does not use, so they are asked for rarely).
    let mut raised: Option<tokio::sync::watch::Receiver<u64>> = None;
    let mut service_alerts: Option<edr_api::client::Stream> = None;
    // A service that accepts connections but does not answer costs each
    // attempt its whole 2 s limit, and the loop waits for it: attempts
    // that fail are spaced out (the tick's alert query still notifies
    // within a second meanwhile).
    let mut stream_retry = Retry::default();
    loop {
        if raised.is_none() {
            raised = app
                .state::<AppState>()
                .handle()
                .and_then(|h| h.alert_raised());
        }
        if service_alerts.is_none() && stream_retry.due(tokio::time::Instant::now()) {
            if let Some(Backend::Service(c)) = app.state::<AppState>().backend() {
                let opened =
                    tokio::time::timeout(Duration::from_secs(2), c.stream(Duration::from_secs(60)))
                        .await;
                service_alerts = opened.ok().and_then(Result::ok);
                stream_retry.record(service_alerts.is_some(), tokio::time::Instant::now());
            }
        }
        let engine_gone = tokio::select! {
            _ = tick.tick() => false,
            _ = wake.notified() => false,
            item = async {
                match service_alerts.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            } => {
                // Ended or broken: the service stopped, or a new one is
                // attached; opened again on the next turn if one answers.
                if !matches!(item, Some(Ok(_))) {
                    service_alerts = None;
                }
                false
            }
            ok = async {
                match raised.as_mut() {
                    Some(r) => r.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            } => !ok,
        };
        if engine_gone {
            // The engine was replaced (settings applied, or the service
            // took over): follow the new one.
            raised = None;
        }
        let state = app.state::<AppState>();
        let (engine, snap) = view::engine_view(&state).await;
        let backend = state.backend();
        let last = match &backend {
            Some(b) => b
                .alerts(u64::MAX, 0)
                .await
                .ok()
                .map(|a| (b.is_service(), a.last_seq)),
            None => None,
        };
        // A new backend numbers its alerts anew: start from its newest.
        if let Some((service, seq)) = last {
            if notified.is_none_or(|(s, _)| s != service) {
                notified = Some((service, seq));
            }
        }
        let last_seq = last.map_or(0, |(_, s)| s);
        let want = wanted(&engine, state.marks.unseen(last_seq));
        if shown.as_ref() != Some(&want) {
            let (items, was, now) = (items.clone(), shown.clone(), want.clone());
            let sent = app.run_on_main_thread(move || {
                if let Err(e) = apply(&items, &now, was.as_ref(), &engine) {
                    tracing::warn!(error = %e, "cannot update the tray");
                }
            });
            if let Err(e) = sent {
                tracing::warn!(error = %e, "cannot update the tray");
            }
            shown = Some(want);
        }
        if let (Some(b), Some(snap), Some((_, seq))) = (&backend, &snap, notified.as_mut()) {
            notify_new_alerts(&app, &snap.alerts, &mut alerts);
            notify_detections(&app, b, seq).await;
        }
    }
}

/// When to try again something that failed: after 1 s, then twice as
/// long after each failure, at most 30 s; at once after a success.
#[derive(Debug)]
struct Retry {
    next: Option<tokio::time::Instant>,
    wait: Duration,
}

impl Retry {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);

    fn due(&self, now: tokio::time::Instant) -> bool {
        self.next.is_none_or(|t| now >= t)
    }

    fn record(&mut self, ok: bool, now: tokio::time::Instant) {
        if ok {
            *self = Retry::default();
        } else {
            self.next = Some(now + self.wait);
            self.wait = (self.wait * 2).min(Retry::MAX);
        }
    }
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            next: None,
            wait: Retry::FIRST,
        }
    }
}

/// The menu item that opens the Alerts view.
fn alerts_label(unseen: u64) -> String {
    if unseen == 0 {
        "Alerts".to_string()
    } else {
        format!("Alerts ({unseen} unseen)")
    }
}

/// `unseen`: detection alerts raised since the Alerts view was last open.
fn wanted(engine: &EngineView, unseen: u64) -> Shown {
    Shown {
        alerts_label: alerts_label(unseen),
        status: engine.status.clone(),
        mode: engine.mode.clone(),
        note: engine.service_note.clone(),
        install: engine.service_absent,
        pause_label: if engine.state == EngineState::Paused {
            LABEL_RESUME
        } else {
            LABEL_PAUSE
        },
        pause_enabled: matches!(engine.state, EngineState::Running | EngineState::Paused),
        icon: if engine.alerting || unseen > 0 {
            IconKind::Alert
        } else if engine.state == EngineState::Running {
            IconKind::Running
        } else {
            IconKind::Paused
        },
    }
}

fn apply(
    items: &Items,
    want: &Shown,
    was: Option<&Shown>,
    engine: &EngineView,
) -> tauri::Result<()> {
    if was.map(|w| &w.status) != Some(&want.status) {
        items.status.set_text(&want.status)?;
    }
    if was.map(|w| (&w.status, &w.mode, &w.note)) != Some((&want.status, &want.mode, &want.note)) {
        let mut tip = format!("EDR Agent: {}\n{}", want.status, want.mode);
        for m in [&engine.message, &engine.service_note]
            .into_iter()
            .flatten()
        {
            tip.push('\n');
            tip.push_str(m);
        }
        items.tray.set_tooltip(Some(tip))?;
    }
    if was.map(|w| &w.mode) != Some(&want.mode) {
        items.mode.set_text(&want.mode)?;
    }
    if was.map(|w| w.install) != Some(want.install) {
        if want.install {
            items.menu.insert(&items.install, INSTALL_POSITION)?;
        } else if was.is_some() {
            items.menu.remove(&items.install)?;
        }
    }
    if was.map(|w| w.pause_label) != Some(want.pause_label) {
        items.pause.set_text(want.pause_label)?;
    }
    if was.map(|w| w.pause_enabled) != Some(want.pause_enabled) {
        items.pause.set_enabled(want.pause_enabled)?;
    }
    if was.map(|w| &w.alerts_label) != Some(&want.alerts_label) {
        items.alerts.set_text(&want.alerts_label)?;
    }
    if was.map(|w| w.icon) != Some(want.icon) {
        let icon = match want.icon {
            IconKind::Running => ICON_RUNNING,
            IconKind::Paused => ICON_PAUSED,
            IconKind::Alert => ICON_ALERT,
        };
        items.tray.set_icon(Some(icon))?;
        #[cfg(target_os = "macos")]
        items.tray.set_icon_as_template(true)?;
    }
    Ok(())
}

/// A desktop notification per new detection alert; a burst (more than
/// a few in one tick) is one "N alerts" notification.
async fn notify_detections(app: &AppHandle, b: &Backend, notified_seq: &mut u64) {
    let got = match b
        .alerts(*notified_seq, edr_desktop::NOTIFY_EACH_MAX + 1)
        .await
    {
        Ok(got) => got,
        Err(e) => {
            tracing::debug!(error = %e, "alerts not read");
            return;
        }
    };
    let total = got.last_seq.saturating_sub(*notified_seq);
    *notified_seq = got.last_seq;
    for n in edr_desktop::notices(&got.alerts, total) {
        tracing::info!(title = %n.title, body = %n.body, "alert notification");
        let shown = app
            .notification()
            .builder()
            .title(n.title)
            .body(n.body)
            .show();
        if let Err(e) = shown {
            tracing::warn!(error = %e, "cannot show a notification");
        }
    }
}

/// One desktop notification per raised alert, not one per second.
fn notify_new_alerts(
    app: &AppHandle,
    active: &[edr_metrics::Alert],
    notified: &mut Vec<AlertKind>,
) {
    notified.retain(|k| active.iter().any(|a| a.kind == *k));
    for a in active {
        if notified.contains(&a.kind) {
            continue;
        }
        notified.push(a.kind);
        let v = view::alert_view(a);
        let body = format!(
            "{} (value {}, threshold {})",
            v.message, v.value, v.threshold
        );
        let shown = app
            .notification()
            .builder()
            .title("EDR Agent alert")
            .body(body)
            .show();
        if let Err(e) = shown {
            tracing::warn!(error = %e, "cannot show a notification");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_attempts_are_spaced_out_and_a_success_resets_them() {
        let t0 = tokio::time::Instant::now();
        let s = Duration::from_secs;
        let mut r = Retry::default();
        assert!(r.due(t0));
        let mut waits = Vec::new();
        let mut now = t0;
        for _ in 0..7 {
            r.record(false, now);
            let next = r.next.expect("a retry time after a failure");
            assert!(!r.due(next - Duration::from_millis(1)));
            assert!(r.due(next));
            waits.push((next - now).as_secs());
            now = next;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30]);
        r.record(true, now);
        assert!(r.due(now));
        r.record(false, now);
        assert_eq!(r.next, Some(now + s(1)));
    }

    fn engine(state: EngineState, alerting: bool) -> EngineView {
        EngineView {
            state,
            status: format!("{state:?}"),
            message: None,
            config_file: "/etc/edr-agent/config.yaml".into(),
            data_dir: None,
            alerting,
            mode: edr_desktop::MODE_POLLING.into(),
            service_note: None,
            service_absent: true,
        }
    }

    #[test]
    fn engine_states_reach_the_window_as_lowercase_names() {
        let names: Vec<String> = [
            EngineState::Running,
            EngineState::Paused,
            EngineState::Off,
            EngineState::Failed,
        ]
        .iter()
        .map(|s| serde_json::to_string(s).expect("serialize"))
        .collect();
        assert_eq!(
            names,
            ["\"running\"", "\"paused\"", "\"off\"", "\"failed\""]
        );
        let view = serde_json::to_value(engine(EngineState::Paused, false)).expect("serialize");
        assert_eq!(view["state"], "paused");
    }

    #[test]
    fn pause_item_and_icon_follow_the_engine_state() {
        let running = wanted(&engine(EngineState::Running, false), 0);
        assert_eq!(
            (running.pause_label, running.pause_enabled, running.icon),
            (LABEL_PAUSE, true, IconKind::Running)
        );
        let paused = wanted(&engine(EngineState::Paused, false), 0);
        assert_eq!(
            (paused.pause_label, paused.pause_enabled, paused.icon),
            (LABEL_RESUME, true, IconKind::Paused)
        );
        for state in [EngineState::Off, EngineState::Failed] {
            let w = wanted(&engine(state, false), 0);
            assert_eq!(
                (w.pause_label, w.pause_enabled, w.icon),
                (LABEL_PAUSE, false, IconKind::Paused),
                "{state:?}"
            );
        }
        assert_eq!(
            wanted(&engine(EngineState::Running, true), 0).icon,
            IconKind::Alert
        );
    }

    #[test]
    fn unseen_detection_alerts_mark_the_icon_and_the_menu() {
        let w = wanted(&engine(EngineState::Running, false), 3);
        assert_eq!(w.icon, IconKind::Alert);
        assert_eq!(w.alerts_label, "Alerts (3 unseen)");
        let w = wanted(&engine(EngineState::Running, false), 0);
        assert_eq!(
            (w.icon, w.alerts_label.as_str()),
            (IconKind::Running, "Alerts")
        );
    }
}
