//! The read commands' way to the service: its API when it answers, so an
//! operator in the group `edr-agent` reads a root agent without reading
//! its data dir (mode 0700); the data dir itself when no service answers.
//!
//! What a user meets, by case (README, "Reading a running service"):
//! - the service answers and serves this data dir: the API, silently
//!   (`--verbose` says so);
//! - no service (no socket, a socket nobody answers on): the data dir,
//!   silently;
//! - the service answers for another data dir than `--config` names: that
//!   data dir (the user asked about another agent);
//! - the service refuses this user (not in the group): the service's
//!   message and how to be let in, exit 4 — unless the data dir is one the
//!   user can read (their own agent's), which is then read, with a note;
//! - the service speaks another protocol version: a sentence saying which
//!   side to update, exit 1 (`--data-dir` reads the dir without it);
//! - anything else (a service that answers garbage or too late): a warning,
//!   then the data dir.

use std::future::Future;
use std::path::{Path, PathBuf};

use edr_api::{Client, ClientError};

/// Exit code of a read command the service refused (LSB's "insufficient
/// privilege").
pub const NOT_AUTHORIZED: u8 = 4;

/// What a read command was asked to read.
#[derive(Debug, Clone)]
pub struct Target {
    /// The data dir (`--data-dir`, the config's, or the default).
    pub data_dir: PathBuf,
    /// The service's socket to try first; None: the data dir only
    /// (`--data-dir`).
    pub socket: Option<PathBuf>,
    /// Whether the service's data dir must be `data_dir` (`--config` names
    /// one agent); without it any service on the socket is the machine's.
    pub same_dir_only: bool,
    pub verbose: bool,
}

/// Where a read command reads from.
pub enum Source {
    Api(Service),
    DataDir(PathBuf),
}

impl Source {
    /// The data dir read, directly or by the service.
    pub fn data_dir(&self) -> &Path {
        match self {
            Source::Api(s) => &s.data_dir,
            Source::DataDir(d) => d,
        }
    }
}

/// A service that answered, version-checked.
pub struct Service {
    rt: tokio::runtime::Runtime,
    pub client: Client,
    /// The service's data dir.
    pub data_dir: PathBuf,
}

impl Service {
    /// Runs one call of the client to its end.
    pub fn call<T>(&self, f: impl Future<Output = Result<T, ClientError>>) -> anyhow::Result<T> {
        self.rt.block_on(f).map_err(api_error)
    }

    /// Runs a future to its end (reading a stream a line at a time).
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }
}

/// A failure of the service's API, as the user should read it.
#[derive(Debug)]
pub struct ApiError(pub ClientError);

/// The service refused this user.
#[derive(Debug)]
pub struct NotAuthorized(pub ClientError);

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::fmt::Display for NotAuthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ApiError {}
impl std::error::Error for NotAuthorized {}

/// What to tell a user the service refused, after its message.
pub fn not_authorized_hint() -> String {
    let group = edr_config::api::API_GROUP;
    format!(
        "hint: you are not in the group `{group}` (`id -nG` lists your groups): an administrator \
         adds you with `sudo edr-agent service install --operator $USER` or `sudo usermod -aG \
         {group} $USER`; log in again afterwards (or start a shell with `newgrp {group}`)"
    )
}

/// A client error for the user: a refusal of this user as
/// [`NotAuthorized`] (its hint follows), anything else as [`ApiError`].
pub fn api_error(e: ClientError) -> anyhow::Error {
    if e.is_not_authorized() {
        NotAuthorized(e).into()
    } else {
        ApiError(e).into()
    }
}

fn note(verbose: bool, text: std::fmt::Arguments<'_>) {
    if verbose {
        eprintln!("edr-agent: {text}");
    }
}

/// The service's API if it answers for this target, else the data dir
/// (see the module's cases).
pub fn choose(t: &Target) -> anyhow::Result<Source> {
    let Some(socket) = &t.socket else {
        note(
            t.verbose,
            format_args!("reading the data dir {} (--data-dir)", t.data_dir.display()),
        );
        return Ok(Source::DataDir(t.data_dir.clone()));
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Hidden: lets a test meet the real service with another protocol.
    let protocol = std::env::var("EDR_AGENT_TEST_API_PROTOCOL")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(edr_api::PROTOCOL_VERSION);
    let answer = rt.block_on(async {
        let (client, hello) = Client::connect_speaking(socket, protocol).await?;
        let data_dir = match hello.data_dir {
            Some(d) => d,
            // A server older than the field.
            None => client.status().await?.data_dir,
        };
        Ok::<_, ClientError>((client, PathBuf::from(data_dir)))
    });
    let fallback = || Ok(Source::DataDir(t.data_dir.clone()));
    match answer {
        Ok((client, data_dir)) => {
            if t.same_dir_only && data_dir != t.data_dir {
                note(
                    t.verbose,
                    format_args!(
                        "the service at {} keeps {}, not {}: reading the data dir",
                        socket.display(),
                        data_dir.display(),
                        t.data_dir.display()
                    ),
                );
                return fallback();
            }
            note(
                t.verbose,
                format_args!(
                    "reading the service's API at {} (data dir {})",
                    socket.display(),
                    data_dir.display()
                ),
            );
            Ok(Source::Api(Service {
                rt,
                client,
                data_dir,
            }))
        }
        Err(e) if e.is_unavailable() => {
            if matches!(e, ClientError::Timeout) {
                eprintln!(
                    "warning: {e}; reading the data dir {}",
                    t.data_dir.display()
                );
            } else {
                note(
                    t.verbose,
                    format_args!("{e}; reading the data dir {}", t.data_dir.display()),
                );
            }
            fallback()
        }
        Err(e) if e.is_not_authorized() => {
            // The user's own agent (the app's embedded one, say) is still
            // theirs to read; the service's data dir is not, and falling
            // back to it would only trade this message for "permission
            // denied".
            if std::fs::read_dir(&t.data_dir).is_ok() {
                eprintln!(
                    "note: the service at {} refused you (not in the group `{}`); reading {} instead",
                    socket.display(),
                    edr_config::api::API_GROUP,
                    t.data_dir.display()
                );
                return fallback();
            }
            Err(NotAuthorized(e).into())
        }
        Err(e @ ClientError::ProtocolMismatch { .. }) => Err(anyhow::anyhow!(
            "{e}; `--data-dir {}` reads the data dir without the service",
            t.data_dir.display()
        )),
        Err(e) => {
            eprintln!(
                "warning: {e}; reading the data dir {}",
                t.data_dir.display()
            );
            fallback()
        }
    }
}

/// The service's hello, version-checked (`service status`).
pub fn hello(socket: &Path) -> Result<edr_api::wire::Hello, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Http(format!("cannot start a runtime: {e}")))?
        .block_on(async { Client::connect(socket).await.map(|(_, h)| h) })
}
