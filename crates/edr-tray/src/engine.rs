//! The engine this tray runs when no root service answers, and its API on
//! a socket of this user's alone (mode 0600: `edr_api::BoundSocket` gives
//! a socket made by a user [`edr_api::peer::Access::Owner`]).

use std::path::{Path, PathBuf};

use edr_config::ConfigSource;
use edr_engine::{EngineHandle, EngineOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why the engine did not start, said in the menu.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another tray (or agent) serves this user's socket.
    #[error("another edr-tray already serves {} (one tray a user)", .0.display())]
    InUse(PathBuf),
    #[error("{0}")]
    Failed(String),
}

/// The running engine and the task serving its API.
pub struct Own {
    engine: EngineHandle,
    api_stop: CancellationToken,
    api: JoinHandle<Result<(), edr_api::ServeError>>,
}

impl Own {
    /// Writes the config file if missing (the app's first config: the
    /// two share it), starts the engine as
    /// `edr-agent run` does (shipping included) and serves its API at
    /// `socket`.
    pub async fn start(config_path: &Path, socket: &Path) -> Result<Own, StartError> {
        let (path, sock) = (config_path.to_path_buf(), socket.to_path_buf());
        // File and socket set-up block (the stale-socket probe connects).
        let prepared = tokio::task::spawn_blocking(move || {
            edr_desktop::ensure_config_file(&path).map_err(|e| {
                StartError::Failed(format!("cannot create {}: {e}", path.display()))
            })?;
            let bound = edr_api::BoundSocket::bind(&sock).map_err(|e| match e {
                edr_api::ServeError::InUse { path } => StartError::InUse(path),
                e => StartError::Failed(format!("cannot serve the tray's API: {e}")),
            })?;
            let source = ConfigSource {
                file: Some(path.clone()),
                ..Default::default()
            };
            let config = source
                .load()
                .map_err(|e| StartError::Failed(e.to_string()))?;
            Ok::<_, StartError>((bound, source, config))
        })
        .await
        .map_err(|e| StartError::Failed(format!("internal error: {e}")))?;
        let (bound, source, config) = prepared?;
        let mut sinks: Vec<Box<dyn edr_store::sink::Sink>> = Vec::new();
        if config.shipping.nats.enabled {
            let host = edr_model::event::Host::detect().name;
            let sink =
                edr_ship::NatsSink::new(config.shipping.nats.clone(), &config.data_dir(), &host)
                    .map_err(|e| StartError::Failed(format!("cannot start shipping: {e}")))?;
            sinks.push(Box::new(sink));
        }
        let opts = EngineOptions {
            recent_events: edr_api::server::RECENT_EVENTS,
            config_source: source,
            sinks,
        };
        let engine = EngineHandle::start(config, opts, CancellationToken::new())
            .map_err(|e| StartError::Failed(e.to_string()))?;
        let api_stop = CancellationToken::new();
        let api = tokio::spawn(edr_api::serve(bound, engine.clone(), api_stop.clone()));
        tracing::info!(socket = %socket.display(), "engine started; its API is this user's only");
        Ok(Own {
            engine,
            api_stop,
            api,
        })
    }

    /// The API first (no request sees a half-stopped engine), then the
    /// engine, whose open batch is committed.
    pub async fn stop(self) {
        self.api_stop.cancel();
        match self.api.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "the tray's API ended with an error"),
            Err(e) => tracing::warn!(error = %e, "the tray's API task failed"),
        }
        self.engine.shutdown().await;
    }
}
