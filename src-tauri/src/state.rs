//! What the app holds: the engine (or why there is none) and the config
//! file it was started from.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use edr_config::{self as config, Config, ConfigError, ConfigSource};
use edr_engine::{EngineHandle, EngineOptions};
use tokio_util::sync::CancellationToken;

use crate::alerts::AlertMarks;

/// Latest stored events kept for the dashboard's table.
pub const RECENT_EVENTS: usize = 300;

/// Whether the engine runs inside the app.
pub enum Engine {
    Running(EngineHandle),
    /// Started with `EDR_APP_ENGINE=off` (to measure the engine's cost).
    Off,
    /// The engine could not start: bad config, another agent on the data dir.
    Failed(String),
}

pub struct AppState {
    pub engine: Engine,
    pub config_path: PathBuf,
    /// Which detection alerts the person has seen.
    pub marks: AlertMarks,
    /// Held while an edit of the config is applied and saved, so two
    /// edits from the window cannot both start from the same config and
    /// lose one.
    pub config_edit: tokio::sync::Mutex<()>,
}

impl AppState {
    /// Reads the environment, creates the config file if missing and starts
    /// the engine in the current tokio runtime. Never fails: a failure is
    /// kept and shown.
    pub fn start() -> AppState {
        let config_path = std::env::var_os("EDR_APP_CONFIG")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(config::default_config_file);
        let engine = if std::env::var("EDR_APP_ENGINE").is_ok_and(|v| v == "off") {
            tracing::info!("engine off (EDR_APP_ENGINE=off)");
            Engine::Off
        } else {
            match start_engine(&config_path) {
                Ok(handle) => Engine::Running(handle),
                Err(message) => {
                    tracing::error!(error = %message, "engine did not start");
                    Engine::Failed(message)
                }
            }
        };
        AppState {
            engine,
            config_path,
            marks: AlertMarks::default(),
            config_edit: tokio::sync::Mutex::new(()),
        }
    }

    pub fn handle(&self) -> Option<&EngineHandle> {
        match &self.engine {
            Engine::Running(h) => Some(h),
            _ => None,
        }
    }
}

fn start_engine(config_path: &Path) -> Result<EngineHandle, String> {
    ensure_config_file(config_path)
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

/// The app's first config: the defaults, with a memory alert fitting a
/// process that also holds GTK and WebKit (measured 120-170 MB with the
/// engine using about 6 MB of it), where the headless agent's 200 MB would
/// fire in ordinary use.
pub fn app_default_config() -> Config {
    let mut c = Config::default();
    c.alerts.max_memory_mb = 400;
    c
}

/// [`app_default_config`] as the commented default document, written by
/// the same document editing as `Config::save`.
pub fn app_default_yaml() -> Result<String, ConfigError> {
    app_default_config().to_commented_yaml()
}

/// Writes the app's first config ([`app_default_yaml`]) if there is no
/// file yet, readable only by its owner. `create_new` so a file that
/// appears meanwhile is kept.
pub fn ensure_config_file(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let text = app_default_yaml().map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    tracing::info!(path = %path.display(), "created the default config file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_a_private_commented_default_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/config.yaml");
        ensure_config_file(&path).expect("created");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, app_default_yaml().expect("app defaults"));
        let c = edr_config::Config::from_yaml("app", &text).expect("valid");
        assert_eq!(c.alerts.max_memory_mb, 400);
        let mut expected = edr_config::Config::default();
        expected.alerts.max_memory_mb = 400;
        assert_eq!(c, expected, "only the memory alert differs");
        assert!(text.contains("# "), "comments kept");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn keeps_an_existing_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "agent:\n  max_events_per_batch: 7\n").expect("write");
        ensure_config_file(&path).expect("kept");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("max_events_per_batch: 7"));
    }
}
