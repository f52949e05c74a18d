//! `edr-agent run`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use edr_config::{ConfigError, ConfigSource, Layer};
use edr_engine::{EngineHandle, EngineOptions};
use tokio_util::sync::CancellationToken;

/// Worker threads of the async runtime: with two, a signal or a collector
/// is never stuck behind another task; blocking work (batches, status,
/// history) has threads of its own.
const RUNTIME_WORKERS: usize = 2;

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Config file, merged over the defaults (and over the preset).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// A named preset merged over the defaults: desktop, dev-server,
    /// production-server, low-memory, low-cpu, low-storage.
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// Overrides `storage.local_storage.data_dir`.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter, e.g. `info` or `edr_collect=debug` (default: RUST_LOG, else info).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

/// The config layers, in order: preset, then file.
pub fn layers(file: Option<&Path>, preset: Option<&str>) -> Result<Vec<Layer>, ConfigError> {
    let mut layers = Vec::new();
    if let Some(p) = preset {
        layers.push(Layer::preset(p)?);
    }
    if let Some(f) = file {
        layers.push(Layer::from_file(f)?);
    }
    Ok(layers)
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let source = ConfigSource {
        preset: args.preset,
        file: args.config,
        data_dir: args.data_dir,
    };
    // Validate everything before any file is created or touched.
    let config = source.load()?;
    edr_engine::logging::init(args.log.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_WORKERS)
        .thread_name("edr-runtime")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Reads its cursor and agent id: before the runtime, which must not
    // block on files.
    let mut sinks: Vec<Box<dyn edr_store::sink::Sink>> = Vec::new();
    if config.shipping.nats.enabled {
        let host = edr_model::event::Host::detect().name;
        let sink = edr_ship::NatsSink::new(config.shipping.nats.clone(), &config.data_dir(), &host)
            .context("cannot start shipping")?;
        sinks.push(Box::new(sink));
    }
    let api = bind_api(&config)?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        // Kept for options added later (other sources, sinks).
        #[allow(clippy::needless_update)]
        let opts = EngineOptions {
            config_source: source,
            sinks,
            recent_events: if api.is_some() {
                edr_api::server::RECENT_EVENTS
            } else {
                0
            },
            ..EngineOptions::default()
        };
        let engine = EngineHandle::start(config, opts, shutdown.clone())?;
        // Stopped before the engine: no request sees it half shut down.
        let api_stop = CancellationToken::new();
        let api_task =
            api.map(|bound| tokio::spawn(edr_api::serve(bound, engine.clone(), api_stop.clone())));
        wait_for_signal().await?;
        tracing::info!("signal received, stopping");
        api_stop.cancel();
        if let Some(task) = api_task {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the API ended with an error"),
                Err(e) => tracing::warn!(error = %e, "the API task failed"),
            }
        }
        engine.shutdown().await;
        Ok(ExitCode::SUCCESS)
    })
}

/// The API's socket, when `api.enabled` asks for it (`auto`: as root).
/// Bound before the runtime starts (it probes and replaces a stale socket
/// with blocking calls). A socket another live agent serves is an error
/// when the API was asked for explicitly, and a warning under `auto`.
fn bind_api(config: &edr_config::Config) -> anyhow::Result<Option<edr_api::BoundSocket>> {
    // SAFETY: geteuid has no side effects.
    let is_root = unsafe { libc::geteuid() } == 0;
    if !config.api.serves(is_root) {
        return Ok(None);
    }
    let path = config.api.socket_path();
    match edr_api::BoundSocket::bind(&path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if config.api.enabled == edr_config::ApiEnabled::Auto => {
            tracing::warn!(error = %e, "running without the API");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context("cannot serve the API (api.enabled: true)")),
    }
}

pub async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
