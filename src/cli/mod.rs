//! Subcommands of the `edr-agent` binary. Output to stdout lives here and
//! only here; the library logs through `tracing`.

use std::io::Write;

pub mod api;
pub mod collect;
pub mod detect;
pub mod events;
pub mod report;
pub mod run;
pub mod service;
pub mod stats;
pub mod status;

/// Writes to stdout. A closed pipe (`edr-agent events | head`) ends the
/// program quietly, as for any Unix filter.
pub fn out(args: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(e.into()),
    }
}

/// `1.2 MB`-style sizes (powers of 1024, as `du -h`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `2h 3m`-style durations.
pub fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m {}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s / 60) % 60),
        _ => format!("{}d {}h", s / 86_400, (s / 3600) % 24),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KB");
        assert_eq!(
            human_duration(std::time::Duration::from_secs(3725)),
            "1h 2m"
        );
    }
}
