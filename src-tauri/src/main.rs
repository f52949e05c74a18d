//! The menu-bar app of edr-agent: the client of the root service when it
//! answers, otherwise the engine in Tauri's tokio runtime; a tray icon with its status, and a dashboard window made on demand.
//!
//! The engine knows nothing of this crate: here we only translate between
//! its handle and the window (commands, view types) and the tray.

mod alerts;
mod backend;
mod commands;
mod error;
mod service;
mod settings;
mod state;
mod tray;
mod view;
mod window;

use std::process::ExitCode;

use tauri::{AppHandle, Manager, RunEvent};

use crate::state::{AppState, Viewer};
use crate::window::View;

/// The autostart entry's name (`~/.config/autostart/edr-agent-app.desktop`
/// on Linux, `~/Library/LaunchAgents/edr-agent-app.plist` on macOS).
const AUTOSTART_NAME: &str = "edr-agent-app";

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    without_gdk_gl();
    if let Err(e) = edr_engine::logging::init(None) {
        // A bad RUST_LOG must not keep the app from starting.
        eprintln!("{e}; logging at info");
        let _ = edr_engine::logging::init(Some("info"));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let minimized = args.iter().any(|a| a == "--minimized");
    // `edr-tray`'s dashboard: a client of the socket in
    // EDR_APP_API_SOCKET, with no tray and no engine, ending with its window.
    let viewer = args.iter().any(|a| a == "--viewer").then(|| {
        if args.iter().any(|a| a == "--tray-engine") {
            Viewer::TrayEngine
        } else {
            Viewer::Service
        }
    });
    let built = tauri::Builder::default()
        // First, so a second launch is turned away before it starts anything.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            window::show(app, View::Dashboard)
        }))
        .plugin(tauri_plugin_notification::init())
        // "Launch at login" (off until switched on in Settings): an XDG
        // autostart entry on Linux, a LaunchAgent on macOS, starting the
        // app in the menu bar only.
        .plugin(
            tauri_plugin_autostart::Builder::new()
                .app_name(AUTOSTART_NAME)
                .arg("--minimized")
                .build(),
        )
        .invoke_handler(tauri::generate_handler![
            commands::dashboard,
            commands::get_settings,
            commands::preset_settings,
            commands::apply_settings,
            commands::set_paused,
            commands::open_data_folder,
            commands::add_exception,
            commands::remove_exception,
            commands::get_autostart,
            commands::set_autostart,
        ])
        .setup(move |app| {
            setup(app.handle(), minimized, viewer)?;
            Ok(())
        })
        .build(tauri::generate_context!());
    let app = match built {
        Ok(app) => app,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the app");
            return ExitCode::FAILURE;
        }
    };
    let code = app.run_return(move |_, event| {
        // Closing the last window leaves the app in the menu bar; only
        // Quit (an exit with a code) ends it. A viewer has no menu bar:
        // it ends with its window.
        if let RunEvent::ExitRequested {
            code: None, api, ..
        } = event
        {
            if viewer.is_none() {
                api.prevent_exit();
            }
        }
    });
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// GTK opens OpenGL when it opens the display, to pick a GL-capable
/// visual, and Mesa's driver brings LLVM with it: 44 MB RSS (26 MB PSS) in
/// an app that mostly sits in the tray. The dashboard renders without it
/// (WebKit then turns its hardware acceleration off), so it is switched
/// off unless the user set `GDK_GL` themselves (`GDK_GL=` keeps GL on).
/// Runs first in `main`, before any thread exists.
#[cfg(target_os = "linux")]
fn without_gdk_gl() {
    if std::env::var_os("GDK_GL").is_none() {
        std::env::set_var("GDK_GL", "disable");
    }
}

fn setup(app: &AppHandle, minimized: bool, viewer: Option<Viewer>) -> tauri::Result<()> {
    #[cfg(target_os = "macos")]
    app.set_activation_policy(tauri::ActivationPolicy::Accessory)?;
    // Inside the runtime: the engine spawns its tasks on it.
    let state = tauri::async_runtime::block_on(AppState::start(viewer));
    app.manage(state);
    if viewer.is_some() {
        // The tray that started it watches for the service and notifies.
        window::show(app, View::Dashboard);
        tauri::async_runtime::spawn(quit_on_signal(app.clone()));
        return Ok(());
    }
    tray::build(app)?;
    tauri::async_runtime::spawn(service::watch(app.clone()));
    if !minimized {
        window::show(app, View::Dashboard);
    }
    tauri::async_runtime::spawn(quit_on_signal(app.clone()));
    Ok(())
}

/// Stops the engine (its open batch is committed), then exits with 0.
pub(crate) fn quit(app: &AppHandle) {
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        // The embedded engine stops; the service (if that is what the
        // app showed) keeps running.
        app.state::<AppState>().shutdown().await;
        tracing::info!("quit");
        app.exit(0);
    });
}

/// SIGTERM (logout, `kill`) and SIGINT end the app like Quit does.
async fn quit_on_signal(app: AppHandle) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot listen for SIGTERM/SIGINT");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    quit(&app);
}
