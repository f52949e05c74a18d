//! Log output for the front ends (the `edr-agent` binary and the app): one
//! `tracing` subscriber writing to stderr, filtered by `RUST_LOG`-style
//! target directives.

/// The filter text could not be read.
#[derive(Debug, thiserror::Error)]
#[error("bad log filter {spec:?}: {source}")]
pub struct LogFilterError {
    pub spec: String,
    #[source]
    pub source: tracing_subscriber::filter::ParseError,
}

/// Installs the subscriber. The filter is `filter`, else `RUST_LOG`, else
/// `info`; nothing is installed if it cannot be parsed. Call once.
pub fn init(filter: Option<&str>) -> Result<(), LogFilterError> {
    let spec = filter
        .map(str::to_string)
        .or_else(|| std::env::var("RUST_LOG").ok())
        .unwrap_or_else(|| "info".to_string());
    let targets: tracing_subscriber::filter::Targets = spec
        .parse()
        .map_err(|source| LogFilterError { spec, source })?;
    use tracing_subscriber::prelude::*;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .with(targets)
        .init();
    Ok(())
}
