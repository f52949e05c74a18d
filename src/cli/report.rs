//! `edr-agent report`: the dashboard charts of a past period, from the
//! metrics history, as an SVG or PNG file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use edr_charts::{dashboard_from_history, render_png, render_svg_page};
use edr_config::{AlertsConfig, Config};
use edr_engine::read_status;
use edr_metrics::read_history;

use super::api::Source;
use super::events::parse_when;
use super::out;
use crate::DataDirArgs;

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    #[command(flatten)]
    dir: DataDirArgs,
    /// Start of the period: a duration ago (`15m`, `2h`, `3days`) or a UTC
    /// time (`2026-11-25`, `2026-11-25T10:00:00Z`).
    #[arg(long, value_name = "WHEN", default_value = "1h")]
    since: String,
    /// Output file; `.svg` or `.png` decides the format.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Image width in pixels.
    #[arg(long, value_name = "N", default_value_t = 800,
          value_parser = clap::value_parser!(u32).range(320..=4096))]
    width: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Svg,
    Png,
}

fn format_of(path: &Path) -> anyhow::Result<Format> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => bail!(
            "cannot tell the format of {}: the file name must end in .svg or .png",
            path.display()
        ),
    }
}

/// Charts keep the dashboard's 560x180 proportions up to a readable height.
fn height_each(width: u32) -> u32 {
    (width * 180 / 560).clamp(180, 360)
}

pub fn report(args: ReportArgs) -> anyhow::Result<ExitCode> {
    let format = format_of(&args.out)?;
    let since = parse_when(&args.since, SystemTime::now())?;
    let source = args.dir.source()?;
    let data_dir = source.data_dir().to_path_buf();
    let (rows, reported_cap) = match &source {
        Source::DataDir(d) => (
            read_history(d, since),
            read_status(d).map(|s| s.storage.cap_bytes),
        ),
        Source::Api(service) => (
            service.call(service.client.stored_history(since))?,
            Some(service.call(service.client.status())?.storage.cap_bytes),
        ),
    };
    let (cap, alerts) = limits(&args.dir, reported_cap)?;

    let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
        bail!(
            "no metrics history in {} since {since}: the agent has not run there in that period (try a longer --since)",
            data_dir.display()
        );
    };
    let charts = dashboard_from_history(&rows, cap, &alerts);
    let height = height_each(args.width);
    let bytes = match format {
        Format::Svg => render_svg_page(&charts, args.width, height)?.into_bytes(),
        Format::Png => render_png(&charts, args.width, height)?,
    };
    std::fs::write(&args.out, bytes)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    out(format_args!(
        "{}: {} charts of {} samples, {} to {}\n",
        args.out.display(),
        charts.len(),
        rows.len(),
        first.ts,
        last.ts
    ))?;
    Ok(ExitCode::SUCCESS)
}

/// The storage cap and alert thresholds to draw: from the config file if
/// one is named, else the cap the agent last reported, else the defaults.
fn limits(dir: &DataDirArgs, reported_cap: Option<u64>) -> anyhow::Result<(u64, AlertsConfig)> {
    if let Some(file) = &dir.config {
        let config = Config::from_file(file)?;
        return Ok((config.max_storage_bytes(), config.alerts));
    }
    let defaults = Config::default();
    let cap = reported_cap
        .filter(|c| *c > 0)
        .unwrap_or_else(|| defaults.max_storage_bytes());
    Ok((cap, defaults.alerts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(format_of(Path::new("a/b.SVG")).expect("svg"), Format::Svg);
        assert_eq!(format_of(Path::new("r.png")).expect("png"), Format::Png);
        assert!(format_of(Path::new("r.jpg")).is_err());
        assert!(format_of(Path::new("report")).is_err());
    }
}
