//! `edr-agent collect`: the central side of shipping. The consumer itself
//! is `edr_ship::collect`; this only turns options into its settings.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::Context as _;
use edr_config::{NatsConfig, ShippingConfig};
use edr_ship::collect::{CollectOptions, Collector};
use edr_store::Codec;
use tokio_util::sync::CancellationToken;

#[derive(clap::Args, Debug)]
pub struct CollectArgs {
    /// NATS server URL, nats:// or tls:// (repeatable, for a cluster).
    #[arg(long = "nats", value_name = "URL", required = true)]
    urls: Vec<String>,
    /// The JetStream stream the agents ship to.
    #[arg(long, default_value = "EDR")]
    stream: String,
    /// The agents' `shipping.nats.subject_prefix`.
    #[arg(long, default_value = "edr")]
    subject_prefix: String,
    /// Name of the durable consumer (its position survives restarts).
    #[arg(long, default_value = "edr-collect")]
    durable: String,
    /// The central data dir: batches go to DIR/hosts/<host>/events/.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
    /// Do not create the stream when it is missing (wait for it instead).
    #[arg(long)]
    no_create_stream: bool,
    /// NATS credentials (.creds) file, mode 0600.
    #[arg(long, value_name = "FILE")]
    creds: Option<String>,
    /// User name, with --password-file.
    #[arg(long)]
    user: Option<String>,
    /// File holding the password of --user, mode 0600.
    #[arg(long, value_name = "FILE")]
    password_file: Option<String>,
    /// File holding an authentication token, mode 0600.
    #[arg(long, value_name = "FILE")]
    token_file: Option<String>,
    /// CA certificate(s) (PEM) the server's certificate must chain to.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<String>,
    /// Client certificate (PEM), with --tls-key.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<String>,
    /// The client certificate's private key (PEM), mode 0600.
    #[arg(long, value_name = "FILE")]
    tls_key: Option<String>,
    /// Log filter (default: RUST_LOG, else info).
    #[arg(long, value_name = "FILTER")]
    log: Option<String>,
}

pub fn collect(args: CollectArgs) -> anyhow::Result<ExitCode> {
    let mut nats = NatsConfig {
        enabled: true,
        url: args.urls,
        stream: args.stream,
        subject_prefix: args.subject_prefix,
        create_stream: !args.no_create_stream,
        credentials_file: args.creds,
        user: args.user,
        password_file: args.password_file,
        token_file: args.token_file,
        ..NatsConfig::default()
    };
    nats.tls.ca_file = args.tls_ca;
    nats.tls.cert_file = args.tls_cert;
    nats.tls.key_file = args.tls_key;
    // The agent's own checks: schemes, names, one way to authenticate,
    // secrets readable by their owner only.
    let mut errors = Vec::new();
    let shipping = ShippingConfig { nats };
    shipping.validate(&mut errors);
    if let Some(e) = errors.first() {
        anyhow::bail!(
            "{} = {} is not allowed: expected {}",
            e.key.replace("shipping.nats.", "option "),
            e.value,
            e.allowed
        );
    }
    let opts = CollectOptions {
        nats: shipping.nats,
        durable: args.durable,
        data_dir: args.data_dir,
        codec: Codec::Gzip { level: 6 },
    };
    let collector = Collector::new(opts).context("cannot start collecting")?;
    let stats = collector.stats();
    edr_engine::logging::init(args.log.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edr-collect")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let stop = CancellationToken::new();
        let task = tokio::spawn(collector.run(stop.clone()));
        super::run::wait_for_signal().await?;
        stop.cancel();
        task.await.context("the collector failed")?;
        anyhow::Ok(())
    })?;
    super::out(format_args!(
        "collected {} batches ({} events); {} duplicates acknowledged, {} messages rejected\n",
        stats.batches.load(Relaxed),
        stats.events.load(Relaxed),
        stats.duplicates.load(Relaxed),
        stats.rejected.load(Relaxed),
    ))?;
    Ok(ExitCode::SUCCESS)
}
