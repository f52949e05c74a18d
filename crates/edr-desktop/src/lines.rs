//! The menu bar's first two lines: what the engine does, and where its
//! events come from.

use edr_engine::{EngineState, Snapshot};
use edr_model::capture::ProcessCapture;

pub const MODE_SERVICE: &str = "Real-time · service";
pub const MODE_POLLING: &str = "Embedded · polling (processes shorter than 1 s can be missed)";
pub const MODE_REALTIME: &str = "Embedded · real-time";

/// `Running · 12 ev/s · 9.8 MB`, `Paused` or `Engine stopped`.
pub fn status_line(s: &Snapshot) -> String {
    match s.state() {
        EngineState::Running => format!(
            "Running · {} ev/s · {}",
            rate(s.latest.events_per_sec_total()),
            bytes(s.latest.rss_bytes as f64)
        ),
        EngineState::Paused => "Paused".to_string(),
        EngineState::Stopped => "Engine stopped".to_string(),
    }
}

/// How events are captured: the root service's, or an engine of the
/// user's own (the app's or the light tray's), real-time or polling.
pub fn mode_line(service: bool, snap: Option<&Snapshot>) -> String {
    if service {
        return MODE_SERVICE.to_string();
    }
    match snap.and_then(|s| s.coverage.process_capture) {
        Some(ProcessCapture::Event) => MODE_REALTIME.to_string(),
        _ => MODE_POLLING.to_string(),
    }
}

fn rate(v: f32) -> String {
    if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Binary units and about three significant digits, as the dashboard's
/// charts label memory (`edr_charts::Unit::Bytes`), so the menu and the
/// window say the same number.
fn bytes(v: f64) -> String {
    const UNITS: [&str; 5] = [" B", " KB", " MB", " GB", " TB"];
    let mut div = 1.0;
    let mut i = 0;
    while v / div >= 1024.0 && i < UNITS.len() - 1 {
        div *= 1024.0;
        i += 1;
    }
    let x = v / div;
    if i == 0 {
        format!("{x:.0}{}", UNITS[0])
    } else if x < 100.0 {
        format!("{x:.1}{}", UNITS[i])
    } else {
        format!("{x:.0}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_as_the_charts_label_it() {
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(16.0 * 1024.0 * 1024.0), "16.0 MB");
        assert_eq!(bytes(162.8 * 1024.0 * 1024.0), "163 MB");
        assert_eq!(rate(0.0), "0");
        assert_eq!(rate(2.25), "2.2");
        assert_eq!(rate(42.4), "42");
    }
}
