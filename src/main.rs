//! `edr-agent`: the headless agent and its operator commands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "edr-agent",
    version,
    about = "Endpoint telemetry agent: process, file and network events stored as compressed ECS JSON"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where to find the data dir for read-only commands: an explicit dir,
/// or the one a config file names, or the platform default.
#[derive(clap::Args, Clone, Debug)]
pub struct DataDirArgs {
    /// The agent's data directory.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Take the data directory (and the service's API socket) from this
    /// config file.
    #[arg(long, value_name = "FILE", conflicts_with = "data_dir")]
    config: Option<PathBuf>,
    /// Say on stderr whether the service's API or the data dir was read,
    /// and why.
    #[arg(short, long)]
    verbose: bool,
}

impl DataDirArgs {
    fn config(&self) -> anyhow::Result<edr_config::Config> {
        Ok(match &self.config {
            Some(f) => edr_config::Config::from_file(f)?,
            None => edr_config::Config::default(),
        })
    }

    /// What to read: `--data-dir` alone; else the service's API at the
    /// config's `api.socket` (or the default), for the config's data dir
    /// if one is named, and that data dir when no service answers.
    fn target(&self) -> anyhow::Result<cli::api::Target> {
        if let Some(d) = &self.data_dir {
            return Ok(cli::api::Target {
                data_dir: d.clone(),
                socket: None,
                same_dir_only: true,
                verbose: self.verbose,
            });
        }
        let config = self.config()?;
        Ok(cli::api::Target {
            data_dir: config.data_dir(),
            socket: Some(config.api.socket_path()),
            same_dir_only: self.config.is_some(),
            verbose: self.verbose,
        })
    }

    /// The service's API when it answers for this target, else the data dir.
    fn source(&self) -> anyhow::Result<cli::api::Source> {
        cli::api::choose(&self.target()?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent until SIGINT or SIGTERM (the open batch is written first).
    Run(cli::run::RunArgs),
    /// Whether an agent runs on a data dir, its live metrics, alerts and storage.
    Status {
        #[command(flatten)]
        dir: DataDirArgs,
        /// Print the raw status snapshot as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Storage efficiency per batch file and in total.
    Stats {
        #[command(flatten)]
        dir: DataDirArgs,
        /// Only the total line.
        #[arg(long)]
        summary: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stream stored events as NDJSON (one JSON event per line).
    Events(cli::events::EventsArgs),
    /// Chart the agent's metrics history (memory, CPU, events, storage) to an SVG or PNG file.
    Report(cli::report::ReportArgs),
    /// Check or print configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Stored detection alerts: a table, or NDJSON with --json.
    Alerts(cli::detect::AlertsArgs),
    /// The central side of shipping: a durable JetStream consumer writing
    /// every host's events to DIR/hosts/<host>/ (read it with
    /// `events|stats|alerts --data-dir DIR/hosts/<host>`).
    Collect(cli::collect::CollectArgs),
    /// Detection rules: list, check files, test over events.
    #[command(subcommand)]
    Rules(cli::detect::RulesCommand),
    /// The agent as a system service: install, uninstall, status.
    #[command(subcommand)]
    Service(cli::service::ServiceCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a config file (merged over the defaults, and over a preset if given).
    Check {
        file: PathBuf,
        #[arg(long, value_name = "NAME")]
        preset: Option<String>,
    },
    /// Print the default configuration, with comments.
    Default,
    /// Print the effective configuration of a file and/or preset.
    Show {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        #[arg(long, value_name = "NAME")]
        preset: Option<String>,
    },
    /// List the presets.
    Presets,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run(_) | Command::Collect(_)) {
        // The library's warnings (a damaged history file, say) must reach
        // the operator of the read-only commands too.
        if let Err(e) = edr_engine::logging::init(Some("warn")) {
            eprintln!("warning: no log output: {e:#}");
        }
    }
    let result = match cli.command {
        Command::Run(args) => cli::run::run(args),
        Command::Status { dir, json } => dir.source().and_then(|s| cli::status::status(&s, json)),
        Command::Stats { dir, summary, json } => dir
            .source()
            .and_then(|s| cli::stats::stats(&s, summary, json)),
        Command::Events(args) => cli::events::events(args),
        Command::Report(args) => cli::report::report(args),
        Command::Config(c) => config_command(c),
        Command::Alerts(args) => cli::detect::alerts(args),
        Command::Rules(c) => cli::detect::rules(c),
        Command::Service(c) => cli::service::service(c),
        Command::Collect(args) => cli::collect::collect(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.downcast_ref::<cli::api::NotAuthorized>().is_some() {
                eprintln!("{}", cli::api::not_authorized_hint());
                return ExitCode::from(cli::api::NOT_AUTHORIZED);
            }
            if denied(&e) {
                eprintln!(
                    "hint: the service's data dir is root's; members of the group `{}` read the \
                     running service through its API: `edr-agent status`, or `curl --unix-socket {} \
                     http://edr/v1/events`",
                    edr_config::api::API_GROUP,
                    edr_config::api::DEFAULT_SOCKET
                );
            }
            if e.downcast_ref::<edr_config::ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Whether an unprivileged user was refused the data dir (not, say, the
/// output file of `report`).
fn denied(e: &anyhow::Error) -> bool {
    // SAFETY: geteuid has no side effects.
    let root = unsafe { libc::geteuid() } == 0;
    !root
        && e.chain()
            .any(|c| c.downcast_ref::<edr_store::StorageError>().is_some())
        && e.chain().any(|c| {
            c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        })
}

fn config_command(c: ConfigCommand) -> anyhow::Result<ExitCode> {
    use edr_config::{self as config, Config, Layer};
    match c {
        ConfigCommand::Check { file, preset } => {
            let config = Config::load(&cli::run::layers(Some(&file), preset.as_deref())?)?;
            cli::out(format_args!(
                "{}: ok (data dir {})\n",
                file.display(),
                config.data_dir().display()
            ))?;
        }
        ConfigCommand::Default => cli::out(format_args!("{}", config::DEFAULT_YAML))?,
        ConfigCommand::Show { config, preset } => {
            let layers: Vec<Layer> = cli::run::layers(config.as_deref(), preset.as_deref())?;
            let c = Config::load(&layers).context("invalid configuration")?;
            cli::out(format_args!("{}", c.to_yaml()))?;
        }
        ConfigCommand::Presets => {
            for p in config::PRESETS {
                let (name, summary) = (p.name, p.summary());
                cli::out(format_args!("{name:<18} {summary}\n"))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
