//! What the app holds: the embedded engine or the service's client (or why
//! there is none), what the last look for the service found, and the
//! config file it was started from.

use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::Duration;

use edr_api::Client;
use edr_config::{self as config, ConfigSource};
use edr_engine::{EngineHandle, EngineOptions};
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertMarks;
use crate::backend::Backend;

/// Latest stored events kept for the dashboard's table.
pub const RECENT_EVENTS: usize = 300;

/// What the app reads and steers.
pub enum Engine {
    Running(EngineHandle),
    /// The root service, over its local API: the app embeds no engine.
    Service(Client),
    /// Started with `EDR_APP_ENGINE=off` (to measure the engine's cost).
    Off,
    /// The engine could not start: bad config, another agent on the data dir.
    Failed(String),
}

/// What the last look for the service found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// The app is its client.
    Attached,
    /// No service answers at the socket (not installed, stopped).
    Absent(String),
    /// A service answers but this user may not use it (not in the group),
    /// or it speaks another protocol: the sentence says which.
    Unusable(String),
}

pub struct AppState {
    engine: RwLock<Engine>,
    /// The service's socket (`api.socket`'s default, or `EDR_APP_API_SOCKET`).
    pub socket: PathBuf,
    service: RwLock<Service>,
    /// Said once after a switch (e.g. the service stopped), until the next.
    switch_note: RwLock<Option<String>>,
    pub config_path: PathBuf,
    /// Which detection alerts the person has seen.
    pub marks: AlertMarks,
    /// Held while an edit of the config is applied and saved, so two
    /// edits from the window cannot both start from the same config and
    /// lose one.
    pub config_edit: tokio::sync::Mutex<()>,
    /// Started by `edr-tray` as its dashboard (`--viewer`): only a client
    /// of the socket it was given, never an engine of its own.
    pub viewer: Option<Viewer>,
}

/// Whose engine a viewer shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// The root service's.
    Service,
    /// The engine `edr-tray` runs as this user (`--viewer --tray-engine`).
    TrayEngine,
}

/// How long a look for the service may take before it counts as absent.
const LOOK_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the app looks for the service (a stopped service is noticed
/// within this plus [`LOOK_TIMEOUT`]).
pub const LOOK_EVERY: Duration = Duration::from_secs(2);

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl AppState {
    /// Reads the environment, creates the config file if missing, looks
    /// for the service and, when none answers, starts the engine in the
    /// current tokio runtime. Never fails: a failure is kept and shown.
    pub async fn start(viewer: Option<Viewer>) -> AppState {
        let config_path = std::env::var_os("EDR_APP_CONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(config::default_config_file);
        let socket = std::env::var_os("EDR_APP_API_SOCKET")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| config::ApiConfig::default().socket_path());
        let (service, client) = look(&socket).await;
        let engine = match (client, &service) {
            (Some(c), _) => {
                tracing::info!(socket = %socket.display(), "attached to the edr-agent service");
                Engine::Service(c)
            }
            (None, Service::Absent(m) | Service::Unusable(m)) if viewer.is_some() => {
                Engine::Failed(format!("The tray's engine does not answer: {m}"))
            }
            (None, _) if viewer.is_some() => {
                Engine::Failed("The tray's engine does not answer".into())
            }
            (None, _) => embedded(&config_path),
        };
        AppState {
            engine: RwLock::new(engine),
            socket,
            service: RwLock::new(service),
            switch_note: RwLock::new(None),
            config_path,
            marks: AlertMarks::default(),
            config_edit: tokio::sync::Mutex::new(()),
            viewer,
        }
    }

    /// Whether what the window shows is the root service (and not the
    /// engine of `edr-tray`, which is reached the same way).
    pub fn shows_service(&self, backend: &Backend) -> bool {
        backend.is_service() && self.viewer != Some(Viewer::TrayEngine)
    }

    /// What the window and the tray talk to now (None: no engine).
    pub fn backend(&self) -> Option<Backend> {
        match &*read(&self.engine) {
            Engine::Running(h) => Some(Backend::Embedded(h.clone())),
            Engine::Service(c) => Some(Backend::Service(c.clone())),
            Engine::Off | Engine::Failed(_) => None,
        }
    }

    /// The embedded engine, if that is what runs.
    pub fn handle(&self) -> Option<EngineHandle> {
        match &*read(&self.engine) {
            Engine::Running(h) => Some(h.clone()),
            _ => None,
        }
    }

    /// Why there is no engine: `Some((failed, message))`.
    pub fn no_engine(&self) -> Option<(bool, String)> {
        match &*read(&self.engine) {
            Engine::Off => Some((
                false,
                "The engine is off (started with EDR_APP_ENGINE=off).".into(),
            )),
            Engine::Failed(e) => Some((true, e.clone())),
            _ => None,
        }
    }

    pub fn service(&self) -> Service {
        read(&self.service).clone()
    }

    pub fn switch_note(&self) -> Option<String> {
        read(&self.switch_note).clone()
    }

    /// Something the window and the tooltip should say until the next
    /// switch (the outcome of installing the service).
    pub fn set_note(&self, note: Option<String>) {
        *write(&self.switch_note) = note;
    }

    /// One look for the service, and the switch it calls for: attach
    /// (stopping the embedded engine, so two engines never run) or fall
    /// back to the embedded engine. Returns whether anything changed.
    pub async fn look_again(&self) -> bool {
        let (found, client) = look(&self.socket).await;
        let was = std::mem::replace(&mut *write(&self.service), found.clone());
        let attached = matches!(&*read(&self.engine), Engine::Service(_));
        match (client, attached) {
            (Some(c), false) => {
                // The note first: a view that sees the service never
                // shows the note of the fallback.
                *write(&self.switch_note) = None;
                self.marks.reset();
                let old = std::mem::replace(&mut *write(&self.engine), Engine::Service(c));
                tracing::info!(socket = %self.socket.display(), "attached to the edr-agent service");
                if let Engine::Running(h) = old {
                    h.shutdown().await;
                    tracing::info!("embedded engine stopped: the service captures now");
                }
                true
            }
            (None, true) => {
                let why = match &found {
                    Service::Absent(m) | Service::Unusable(m) => m.clone(),
                    _ => String::new(),
                };
                tracing::warn!(reason = %why, "the service stopped answering: running the engine in the app");
                *write(&self.switch_note) = Some(format!(
                    "The edr-agent service stopped answering: {why}. Until it is back, the app runs the engine itself."
                ));
                let engine = if std::env::var("EDR_APP_ENGINE").is_ok_and(|v| v == "off") {
                    Engine::Off
                } else {
                    embedded(&self.config_path)
                };
                self.marks.reset();
                *write(&self.engine) = engine;
                true
            }
            _ => was != found,
        }
    }

    /// Stops what runs in the app (the service keeps running).
    pub async fn shutdown(&self) {
        if let Some(h) = self.handle() {
            h.shutdown().await;
        }
    }
}

/// Looks for the service at `socket`: a client when it answers with this
/// app's protocol and lets this user in.
async fn look(socket: &Path) -> (Service, Option<Client>) {
    // A test hook: speak another protocol version, to see how the app
    // takes a service it cannot talk to.
    let protocol = std::env::var("EDR_APP_API_PROTOCOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(edr_api::PROTOCOL_VERSION);
    match tokio::time::timeout(LOOK_TIMEOUT, Client::connect_speaking(socket, protocol)).await {
        Ok(Ok((client, _hello))) => (Service::Attached, Some(client)),
        Ok(Err(e)) if e.is_unavailable() => (Service::Absent(e.to_string()), None),
        Ok(Err(e)) => (Service::Unusable(e.to_string()), None),
        Err(_) => (
            Service::Absent(format!(
                "the edr-agent service at {} did not answer within {} s",
                socket.display(),
                LOOK_TIMEOUT.as_secs()
            )),
            None,
        ),
    }
}

fn embedded(config_path: &Path) -> Engine {
    if std::env::var("EDR_APP_ENGINE").is_ok_and(|v| v == "off") {
        tracing::info!("engine off (EDR_APP_ENGINE=off)");
        return Engine::Off;
    }
    match start_engine(config_path) {
        Ok(handle) => Engine::Running(handle),
        Err(message) => {
            tracing::error!(error = %message, "engine did not start");
            Engine::Failed(message)
        }
    }
}

fn start_engine(config_path: &Path) -> Result<EngineHandle, String> {
    edr_desktop::ensure_config_file(config_path)
        .map_err(|e| format!("cannot create {}: {e}", config_path.display()))?;
    let source = ConfigSource {
        file: Some(config_path.to_path_buf()),
        ..Default::default()
    };
    let config = source.load().map_err(|e| e.to_string())?;
    // As `edr-agent run` does: shipping is a sink given to the engine at
    // start (a change of `shipping.nats` applies at the next start).
    let mut sinks: Vec<Box<dyn edr_store::sink::Sink>> = Vec::new();
    if config.shipping.nats.enabled {
        let host = edr_model::event::Host::detect().name;
        let sink = edr_ship::NatsSink::new(config.shipping.nats.clone(), &config.data_dir(), &host)
            .map_err(|e| format!("cannot start shipping: {e}"))?;
        sinks.push(Box::new(sink));
    }
    let opts = EngineOptions {
        recent_events: RECENT_EVENTS,
        config_source: source,
        sinks,
    };
    EngineHandle::start(config, opts, CancellationToken::new()).map_err(|e| e.to_string())
}
