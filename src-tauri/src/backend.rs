//! One type for what the window and the tray read and steer: the engine
//! embedded in the app, or the root service over its local API. Both
//! answer in the API's wire types (`edr_api::wire`), so the view building
//! does not know which one it talks to. Only translation: no engine logic.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edr_api::wire::{AlertRow, Alerts, EventRow};
use edr_api::{Client, ClientError};
use edr_config::{Config, ConfigError, FieldError};
use edr_engine::{EngineHandle, Snapshot};
use edr_metrics::MetricsSample;

use crate::error::CommandError;
use crate::settings;

#[derive(Clone)]
pub enum Backend {
    Embedded(EngineHandle),
    Service(Client),
}

fn failed(e: ClientError) -> CommandError {
    CommandError::Failed(e.to_string())
}

impl Backend {
    pub fn is_service(&self) -> bool {
        matches!(self, Backend::Service(_))
    }

    pub async fn snapshot(&self) -> Result<Snapshot, CommandError> {
        match self {
            Backend::Embedded(h) => Ok(h.snapshot()),
            Backend::Service(c) => c.status().await.map_err(failed),
        }
    }

    /// One-second samples of the last `window`, oldest first.
    pub async fn history(&self, window: Duration) -> Result<Vec<MetricsSample>, CommandError> {
        match self {
            Backend::Embedded(h) => Ok(h.history(window)),
            Backend::Service(c) => c.history(window).await.map(|h| h.samples).map_err(failed),
        }
    }

    /// The latest stored events, newest last.
    pub async fn events(&self, limit: usize) -> Result<Vec<EventRow>, CommandError> {
        match self {
            Backend::Embedded(h) => Ok(h.recent_events(limit).iter().map(EventRow::of).collect()),
            Backend::Service(c) => c
                .events(&edr_api::client::EventsQuery {
                    limit: Some(limit),
                    ..Default::default()
                })
                .await
                .map(|e| e.events)
                .map_err(failed),
        }
    }

    /// Detection alerts numbered above `since` (at most `limit`, the
    /// newest), oldest first.
    pub async fn alerts(&self, since: u64, limit: usize) -> Result<Alerts, CommandError> {
        match self {
            Backend::Embedded(h) => {
                let got = h.alerts(since, limit);
                Ok(Alerts {
                    last_seq: got.last_seq,
                    alerts: got.alerts.iter().map(AlertRow::of).collect(),
                })
            }
            Backend::Service(c) => {
                let mut got = c.alerts(since).await.map_err(failed)?;
                let extra = got.alerts.len().saturating_sub(limit);
                got.alerts.drain(..extra);
                Ok(got)
            }
        }
    }

    /// The config in force.
    pub async fn config(&self) -> Result<Arc<Config>, CommandError> {
        match self {
            Backend::Embedded(h) => Ok(h.config()),
            Backend::Service(c) => c.config().await.map(Arc::new).map_err(failed),
        }
    }

    /// Applies `new` live and saves it: the embedded engine's to the app's
    /// config file, the service's by the service to its own. A refused
    /// value applies and writes nothing; the refusal names each key.
    pub async fn apply_config(&self, new: Config, config_path: &Path) -> Result<(), CommandError> {
        match self {
            Backend::Embedded(h) => {
                h.apply_config(new.clone()).map_err(settings::refused)?;
                let path = config_path.to_path_buf();
                tauri::async_runtime::spawn_blocking(move || new.save(&path))
                    .await
                    .map_err(|e| CommandError::Failed(format!("internal error: {e}")))?
                    .map_err(|e| not_saved(&e.to_string()))
            }
            Backend::Service(c) => {
                let change = serde_json::to_value(&new)
                    .map_err(|e| CommandError::Failed(format!("internal error: {e}")))?;
                match c.set_config(&change).await {
                    Ok(applied) => match applied.save_error {
                        Some(e) => Err(not_saved(&e)),
                        None => Ok(()),
                    },
                    Err(ClientError::Refusal {
                        message, fields, ..
                    }) if !fields.is_empty() => Err(settings::refused(ConfigError::Invalid {
                        origin: format!("the service ({message})"),
                        errors: fields
                            .into_iter()
                            .map(|f| FieldError {
                                key: f.key,
                                value: f.value,
                                allowed: f.allowed,
                            })
                            .collect(),
                    })),
                    Err(e) => Err(failed(e)),
                }
            }
        }
    }

    pub async fn set_paused(&self, paused: bool) -> Result<(), CommandError> {
        match self {
            Backend::Embedded(h) => {
                if paused {
                    h.pause();
                } else {
                    h.resume();
                }
                Ok(())
            }
            Backend::Service(c) => {
                let r = if paused {
                    c.pause().await
                } else {
                    c.resume().await
                };
                r.map(|_| ()).map_err(failed)
            }
        }
    }
}

fn not_saved(e: &str) -> CommandError {
    CommandError::Failed(format!(
        "Applied, but not saved (it will be lost on restart): {e}"
    ))
}
