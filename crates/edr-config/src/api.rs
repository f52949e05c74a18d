//! `api.*`: the local API that `edr-agent run` serves on a Unix socket
//! (for the menu-bar app and the CLI of an unprivileged operator).

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::FieldError;

/// The socket when `api.socket` is null.
#[cfg(target_os = "macos")]
pub const DEFAULT_SOCKET: &str = "/var/run/edr-agent/api.sock";
/// The socket when `api.socket` is null.
#[cfg(not(target_os = "macos"))]
pub const DEFAULT_SOCKET: &str = "/run/edr-agent/api.sock";

/// The group whose members may use the API (besides root).
pub const API_GROUP: &str = "edr-agent";

/// `api.enabled`: `auto` (serve when running as root: only a root agent
/// captures in real time, and a per-user agent has no one to serve), or
/// `true` / `false`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ApiEnabled {
    #[default]
    Auto,
    On,
    Off,
}

impl Serialize for ApiEnabled {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ApiEnabled::Auto => s.serialize_str("auto"),
            ApiEnabled::On => s.serialize_bool(true),
            ApiEnabled::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for ApiEnabled {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ApiEnabled;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("one of `auto`, `true`, `false`")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ApiEnabled, E> {
                Ok(if v { ApiEnabled::On } else { ApiEnabled::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ApiEnabled, E> {
                match v {
                    "auto" => Ok(ApiEnabled::Auto),
                    "true" => Ok(ApiEnabled::On),
                    "false" => Ok(ApiEnabled::Off),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// `api.*`. Read at start only: a change takes effect when the agent
/// restarts (the live API refuses to change it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ApiConfig {
    /// Serve the API: `auto` (when running as root), `true` or `false`.
    pub enabled: ApiEnabled,
    /// The Unix socket; null: `/run/edr-agent/api.sock` on Linux,
    /// `/var/run/edr-agent/api.sock` on macOS.
    pub socket: Option<String>,
}

impl ApiConfig {
    /// Whether an agent running as root (`is_root`) or not serves the API.
    pub fn serves(&self, is_root: bool) -> bool {
        match self.enabled {
            ApiEnabled::Auto => is_root,
            ApiEnabled::On => true,
            ApiEnabled::Off => false,
        }
    }

    /// The socket path, resolved.
    pub fn socket_path(&self) -> PathBuf {
        match self.socket.as_deref() {
            Some(s) if !s.trim().is_empty() => crate::expand_home(s),
            _ => PathBuf::from(DEFAULT_SOCKET),
        }
    }

    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        if let Some(s) = &self.socket {
            // sun_path holds 108 bytes on Linux, 104 on macOS, with the NUL.
            if s.contains('\0')
                || s.len() > 100
                || (!s.trim().is_empty() && !s.starts_with(['/', '~']))
            {
                errors.push(FieldError {
                    key: "api.socket".to_string(),
                    value: format!("{s:?}"),
                    allowed: "an absolute path of at most 100 bytes without NUL, or null"
                        .to_string(),
                });
            }
        }
    }
}
