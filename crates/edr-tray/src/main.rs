//! `edr-tray`: the menu bar of edr-agent without a web engine in it.
//!
//! The Tauri app (`edr-agent-app`) links WebKitGTK, and on Linux loading
//! that library set alone costs about 45 MB PSS before a window exists.
//! This process holds only the tray (a StatusNotifierItem over D-Bus), the
//! engine (or, when the root service answers, its client) and the engine's
//! API on a socket only this user can open. "Open Dashboard" starts
//! `edr-agent-app --viewer` against that socket; the viewer exits when its
//! window closes, so the web engine's memory is given back whole.
//!
//! Linux only: on macOS the menu bar is `edr-agent-app` itself.

use std::process::ExitCode;

#[cfg(target_os = "linux")]
mod controller;
#[cfg(target_os = "linux")]
mod engine;
#[cfg(target_os = "linux")]
mod notify;
#[cfg(target_os = "linux")]
mod tray;

const USAGE: &str = "edr-tray: the edr-agent menu bar (Linux), without a web engine

Usage: edr-tray

Environment:
  EDR_APP_CONFIG       the config file (default: ~/.config/edr-agent/config.yaml)
  EDR_APP_API_SOCKET   the root service's socket (default: api.socket's default)
  EDR_TRAY_SOCKET      this tray's own API socket (default: $XDG_RUNTIME_DIR/edr-agent/tray.sock)
  EDR_TRAY_VIEWER      the dashboard program (default: edr-agent-app next to edr-tray, else on PATH)";

fn main() -> ExitCode {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if let Some(a) = std::env::args().nth(1) {
        eprintln!("edr-tray: unexpected argument `{a}`\n\n{USAGE}");
        return ExitCode::from(2);
    }
    if let Err(e) = edr_engine::logging::init(None) {
        eprintln!("{e}; logging at info");
        let _ = edr_engine::logging::init(Some("info"));
    }
    run()
}

#[cfg(target_os = "linux")]
fn run() -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("edr-tray")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(controller::run(controller::Settings::from_env())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "edr-tray stopped");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn run() -> ExitCode {
    eprintln!("edr-tray runs on Linux; on macOS the menu bar is edr-agent-app");
    ExitCode::from(2)
}
