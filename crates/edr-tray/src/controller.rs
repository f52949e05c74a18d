//! One task decides everything the tray shows and does: once a second it
//! reads the engine's status through the API (the service's or its own),
//! every [`LOOK_EVERY`] it looks for the root service and switches to it
//! or back, and it carries out menu clicks. Nothing else touches the
//! engine, so no two switches race.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use edr_api::Client;
use edr_engine::Snapshot;
use ksni::TrayMethods;
use tokio::process::{Child, Command as Process};
use tokio::sync::mpsc;

use crate::engine::{Own, StartError};
use crate::notify;
use crate::tray::{Command, IconKind, Shown, Tray};

/// How often the tray looks for the root service.
pub const LOOK_EVERY: Duration = Duration::from_secs(2);
/// How long one look (or one status read) may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Where things are, from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: PathBuf,
    /// The root service's socket.
    pub service_socket: PathBuf,
    /// This tray's API socket (its engine's).
    pub own_socket: PathBuf,
    /// The dashboard program, if found.
    pub viewer: Option<PathBuf>,
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
}

impl Settings {
    pub fn from_env() -> Settings {
        Settings {
            config_path: env_path("EDR_APP_CONFIG").unwrap_or_else(edr_config::default_config_file),
            service_socket: env_path("EDR_APP_API_SOCKET")
                .unwrap_or_else(|| edr_config::ApiConfig::default().socket_path()),
            own_socket: env_path("EDR_TRAY_SOCKET").unwrap_or_else(default_own_socket),
            viewer: env_path("EDR_TRAY_VIEWER")
                .or_else(|| edr_desktop::find_program("edr-agent-app")),
        }
    }
}

/// `$XDG_RUNTIME_DIR/edr-agent/tray.sock` (a directory only this user
/// reaches), else one under /tmp named by uid.
fn default_own_socket() -> PathBuf {
    match env_path("XDG_RUNTIME_DIR") {
        Some(d) => d.join("edr-agent").join("tray.sock"),
        None => {
            // SAFETY: getuid has no side effects.
            let uid = unsafe { libc::getuid() };
            PathBuf::from(format!("/tmp/edr-agent-tray-{uid}")).join("tray.sock")
        }
    }
}

/// What the tray reads and steers.
enum Source {
    /// The root service: this tray runs no engine.
    Service(Client),
    /// This tray's engine, read through its own socket like the viewer.
    Own(Own, Client),
    /// Neither could be had; the sentence says why.
    Nothing(String),
}

impl Source {
    fn client(&self) -> Option<&Client> {
        match self {
            Source::Service(c) | Source::Own(_, c) => Some(c),
            Source::Nothing(_) => None,
        }
    }

    async fn stop(self) {
        if let Source::Own(own, _) = self {
            own.stop().await;
        }
    }
}

/// The service's client if it answers and lets this user in; otherwise
/// why not (`Err(true, ..)`: it runs but cannot be used).
async fn look(socket: &Path) -> Result<Client, (bool, String)> {
    match tokio::time::timeout(ANSWER_WITHIN, Client::connect(socket)).await {
        Ok(Ok((c, _hello))) => Ok(c),
        Ok(Err(e)) if e.is_unavailable() => Err((false, e.to_string())),
        Ok(Err(e)) => Err((true, e.to_string())),
        Err(_) => Err((
            false,
            format!(
                "the edr-agent service at {} did not answer within {} s",
                socket.display(),
                ANSWER_WITHIN.as_secs()
            ),
        )),
    }
}

/// The own engine and a client of its socket.
async fn start_own(s: &Settings) -> Result<Source, StartError> {
    let own = Own::start(&s.config_path, &s.own_socket).await?;
    let client = match tokio::time::timeout(ANSWER_WITHIN, Client::connect(&s.own_socket)).await {
        Ok(Ok((c, _))) => c,
        Ok(Err(e)) => {
            own.stop().await;
            return Err(StartError::Failed(format!(
                "the tray's own API does not answer: {e}"
            )));
        }
        Err(_) => {
            own.stop().await;
            return Err(StartError::Failed(
                "the tray's own API did not answer in time".into(),
            ));
        }
    };
    Ok(Source::Own(own, client))
}

/// Runs until Quit, SIGTERM or SIGINT.
pub async fn run(settings: Settings) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let mut note: Option<String> = None;
    let mut source = match look(&settings.service_socket).await {
        Ok(c) => {
            tracing::info!(socket = %settings.service_socket.display(), "attached to the edr-agent service");
            Source::Service(c)
        }
        Err((unusable, why)) => {
            if unusable {
                note = Some(format!(
                    "The edr-agent service runs, but this tray cannot use it: {why}"
                ));
            }
            match start_own(&settings).await {
                Ok(s) => s,
                // A second tray of the same user: say so and leave.
                Err(e @ StartError::InUse(_)) => return Err(e.into()),
                Err(e) => {
                    tracing::error!(error = %e, "engine did not start");
                    Source::Nothing(format!("Not running: {e}"))
                }
            }
        }
    };

    let (commands, mut clicks) = mpsc::channel(16);
    let tray = Tray::new(commands)
        // Without a StatusNotifierWatcher (no panel yet, or a test's
        // private bus) the item is still exported and found.
        .assume_sni_available(true)
        .spawn()
        .await
        .context("cannot put the tray on the session bus")?;
    let bus = zbus::Connection::session().await.ok();

    let mut shown = Shown::starting();
    // Detection alerts numbered up to this were notified (per source:
    // a new one numbers its alerts anew, and what it raised before the
    // tray attached is not news).
    let mut notified: Option<u64> = None;
    let mut viewer: Option<Child> = None;
    // An install waits for the administrator; its outcome comes back here.
    let (install_done, mut installed) = mpsc::channel::<Result<(), String>>(1);
    let mut installing = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_look = tokio::time::Instant::now() + LOOK_EVERY;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = int.recv() => break,
            click = clicks.recv() => match click {
                Some(Command::Quit) | None => break,
                Some(Command::TogglePause) => toggle_pause(&source).await,
                Some(Command::OpenDashboard) => open_dashboard(&settings, &source, &mut viewer),
                Some(Command::OpenData) => open_data(&source).await,
                Some(Command::InstallService) if !installing => {
                    installing = true;
                    note = Some("Installing the service…".into());
                    let done = install_done.clone();
                    tokio::task::spawn_blocking(move || {
                        // The user database, not $USER: the environment may lack it or lie.
                        let user = edr_api::peer::current_user_name().unwrap_or_default();
                        let _ = done.try_send(edr_desktop::install_service(&user));
                    });
                }
                Some(Command::InstallService) => {}
            },
            Some(outcome) = installed.recv() => {
                installing = false;
                note = Some(match outcome {
                    Ok(()) => {
                        tracing::info!("service installed");
                        "The service is installed. Log out and in again if the tray cannot use it yet (group membership).".into()
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "service not installed");
                        format!("The service was not installed: {e}")
                    }
                });
            }
        }
        if tokio::time::Instant::now() >= next_look {
            let (next, switched) = look_again(&settings, source).await;
            source = next;
            if let Some(n) = switched {
                note = Some(n);
                notified = None;
                // A viewer talks to the socket it was given: an open
                // dashboard is opened again on the new one.
                let was_open = viewer.is_some();
                stop_viewer(&mut viewer).await;
                if was_open {
                    open_dashboard(&settings, &source, &mut viewer);
                }
            }
            next_look = tokio::time::Instant::now() + LOOK_EVERY;
        }
        let snap = match source.client() {
            Some(c) => tokio::time::timeout(ANSWER_WITHIN, c.status())
                .await
                .map_err(|_| "the engine did not answer in time".to_string())
                .and_then(|r| r.map_err(|e| e.to_string())),
            None => Err(String::new()),
        };
        let want = wanted(&source, &snap, note.clone());
        if want != shown {
            let now = want.clone();
            if tray.update(move |t| t.shown = now).await.is_none() {
                anyhow::bail!("the tray's D-Bus service ended");
            }
            shown = want;
        }
        if let (Some(c), Some(bus)) = (source.client(), bus.as_ref()) {
            notify_detections(c, bus, &mut notified).await;
        }
        if let Some(v) = viewer.as_mut() {
            if let Ok(Some(status)) = v.try_wait() {
                tracing::info!(%status, "dashboard closed");
                viewer = None;
            }
        }
    }
    tracing::info!("quit");
    stop_viewer(&mut viewer).await;
    tray.shutdown().await;
    source.stop().await;
    Ok(())
}

/// Switches to the service when it answers, back to an own engine when
/// it stops; the note says what happened.
async fn look_again(s: &Settings, source: Source) -> (Source, Option<String>) {
    let found = look(&s.service_socket).await;
    match (source, found) {
        (Source::Service(_), Ok(c)) => (Source::Service(c), None),
        (Source::Service(_), Err((_, why))) => {
            tracing::warn!(reason = %why, "the service stopped answering: running the engine in the tray");
            let next = match start_own(s).await {
                Ok(own) => own,
                Err(e) => Source::Nothing(format!("Not running: {e}")),
            };
            (
                next,
                Some(format!(
                    "The edr-agent service stopped answering: {why}. Until it is back, the tray runs the engine itself."
                )),
            )
        }
        (other @ (Source::Own(..) | Source::Nothing(_)), Ok(c)) => {
            other.stop().await;
            tracing::info!(socket = %s.service_socket.display(), "attached to the edr-agent service; own engine stopped");
            (
                Source::Service(c),
                Some("Attached to the edr-agent service.".into()),
            )
        }
        // Nothing runs (the engine did not start: a config the user may
        // have fixed since, a tray that has gone): try again.
        (Source::Nothing(was), Err(_)) => match start_own(s).await {
            Ok(own) => (own, Some("The engine started.".into())),
            Err(e) => {
                let now = format!("Not running: {e}");
                if now != was {
                    tracing::warn!(error = %e, "engine did not start");
                }
                (Source::Nothing(now), None)
            }
        },
        (own @ Source::Own(..), Err(_)) => (own, None),
    }
}

fn wanted(source: &Source, snap: &Result<Snapshot, String>, note: Option<String>) -> Shown {
    let (status, paused, icon) = match (source, snap) {
        (Source::Nothing(why), _) => (why.clone(), None, IconKind::Alert),
        (_, Err(e)) => (
            format!("No answer from the engine: {e}"),
            None,
            IconKind::Alert,
        ),
        (_, Ok(s)) => {
            let icon = if s.paused {
                IconKind::Paused
            } else if !s.alerts.is_empty() {
                IconKind::Alert
            } else {
                IconKind::Running
            };
            (edr_desktop::status_line(s), Some(s.paused), icon)
        }
    };
    let mode = match source {
        Source::Service(_) => edr_desktop::mode_line(true, None),
        Source::Own(..) => edr_desktop::mode_line(false, snap.as_ref().ok()),
        Source::Nothing(_) => "No engine".to_string(),
    };
    Shown {
        status,
        mode,
        note,
        install: !matches!(source, Source::Service(_)),
        paused,
        icon,
    }
}

async fn toggle_pause(source: &Source) {
    let Some(c) = source.client() else { return };
    let r = match c.status().await {
        Ok(s) if s.paused => c.resume().await.map(|_| ()),
        Ok(_) => c.pause().await.map(|_| ()),
        Err(e) => Err(e),
    };
    if let Err(e) = r {
        tracing::warn!(error = %e, "cannot pause or resume");
    }
}

/// Starts the dashboard against the socket in use. When one is open the
/// new one hands over to it (the app's single-instance plugin), which
/// brings its window forward, and exits.
fn open_dashboard(s: &Settings, source: &Source, viewer: &mut Option<Child>) {
    let Some(program) = &s.viewer else {
        tracing::warn!("edr-agent-app is neither next to edr-tray nor on PATH: no dashboard");
        return;
    };
    let (socket, whose) = match source {
        Source::Service(_) => (&s.service_socket, None),
        Source::Own(..) => (&s.own_socket, Some("--tray-engine")),
        Source::Nothing(_) => {
            tracing::warn!("no engine runs: nothing for the dashboard to show");
            return;
        }
    };
    let spawned = Process::new(program)
        .arg("--viewer")
        .args(whose)
        .env("EDR_APP_API_SOCKET", socket)
        .env("EDR_APP_CONFIG", &s.config_path)
        .stdin(Stdio::null())
        .spawn();
    match spawned {
        Ok(mut child) => {
            tracing::info!(program = %program.display(), pid = ?child.id(), "dashboard opened");
            if viewer.is_none() {
                *viewer = Some(child);
            } else {
                // The hand-over ends at once; reaped off this task.
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
        }
        Err(e) => {
            tracing::warn!(program = %program.display(), error = %e, "cannot open the dashboard")
        }
    }
}

/// SIGTERM to the viewer, then a moment for it to close its window.
async fn stop_viewer(viewer: &mut Option<Child>) {
    let Some(mut v) = viewer.take() else { return };
    if let Some(pid) = v.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill with a pid of our own child, which is not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    if tokio::time::timeout(Duration::from_secs(3), v.wait())
        .await
        .is_err()
    {
        let _ = v.kill().await;
    }
}

async fn open_data(source: &Source) {
    let Some(c) = source.client() else { return };
    let dir = match c.status().await {
        Ok(s) => s.data_dir,
        Err(e) => {
            tracing::warn!(error = %e, "cannot open the data folder");
            return;
        }
    };
    match Process::new("xdg-open")
        .arg(&dir)
        .stdin(Stdio::null())
        .spawn()
    {
        // Reaped in the background: xdg-open may wait for the file manager.
        Ok(mut child) => {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot open the data folder"),
    }
}

async fn notify_detections(c: &Client, bus: &zbus::Connection, notified: &mut Option<u64>) {
    let since = notified.unwrap_or(u64::MAX);
    let got = match tokio::time::timeout(ANSWER_WITHIN, c.alerts(since)).await {
        Ok(Ok(got)) => got,
        _ => return,
    };
    let Some(seen) = *notified else {
        *notified = Some(got.last_seq);
        return;
    };
    let total = got.last_seq.saturating_sub(seen);
    *notified = Some(got.last_seq);
    let extra = got
        .alerts
        .len()
        .saturating_sub(edr_desktop::NOTIFY_EACH_MAX + 1);
    for n in edr_desktop::notices(&got.alerts[extra..], total) {
        tracing::info!(title = %n.title, body = %n.body, "alert notification");
        if let Err(e) = notify::show(bus, &n).await {
            tracing::warn!(error = %e, "cannot show a notification");
        }
    }
}
