//! Finding the service and offering to install it: the look-again timer,
//! and "Install the service…" (`pkexec edr-agent service install
//! --operator USER` on Linux).

use tauri::{AppHandle, Manager};

use crate::state::{AppState, LOOK_EVERY};

/// Looks for the service every [`LOOK_EVERY`] and switches between it and
/// the embedded engine: attaching when it answers, falling back when it
/// stops. Runs until the app ends.
pub async fn watch(app: AppHandle) {
    loop {
        tokio::time::sleep(LOOK_EVERY).await;
        if app.state::<AppState>().look_again().await {
            crate::tray::refresh(&app);
        }
    }
}

/// "Install the service…": runs the install with an administrator's
/// consent, off the UI thread; the outcome goes to the log and the
/// window's note, and the next look attaches.
pub fn install(app: &AppHandle) {
    let app = app.clone();
    tauri::async_runtime::spawn_blocking(move || {
        // The user database, not $USER: the environment may lack it or lie.
        let user = edr_api::peer::current_user_name().unwrap_or_default();
        let outcome = edr_desktop::install_service(&user);
        let state = app.state::<AppState>();
        match outcome {
            Ok(()) => {
                tracing::info!("service installed");
                state.set_note(Some(
                    "The service is installed. Log out and in again if the app cannot use it yet (group membership)."
                        .into(),
                ));
            }
            Err(e) => {
                tracing::warn!(error = %e, "service not installed");
                state.set_note(Some(format!("The service was not installed: {e}")));
            }
        }
        crate::tray::refresh(&app);
    });
}
