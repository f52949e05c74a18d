//! Finding the service and offering to install it: the look-again timer,
//! and "Install the service…" (`pkexec edr-agent service install
//! --operator USER` on Linux).

use std::path::{Path, PathBuf};

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

/// Where a program is: next to the app's binary first (an installed
/// bundle ships both), then on PATH.
fn find_program(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)));
    beside
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join(name))
                .collect::<Vec<_>>(),
        )
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The command that installs the service for `user`, or why there is none.
pub fn install_command(user: &str) -> Result<(PathBuf, Vec<String>), String> {
    let agent = find_program("edr-agent").ok_or_else(|| {
        "edr-agent is neither next to the app nor on PATH: install it first".to_string()
    })?;
    #[cfg(target_os = "macos")]
    {
        // An administrator prompt: osascript's "with administrator privileges".
        let script = format!(
            "do shell script \"'{}' service install --operator '{}'\" with administrator privileges",
            agent.display(),
            user
        );
        Ok((
            PathBuf::from("/usr/bin/osascript"),
            vec!["-e".into(), script],
        ))
    }
    #[cfg(not(target_os = "macos"))]
    {
        let pkexec = find_program("pkexec").ok_or_else(|| {
            format!(
                "pkexec is not installed (package policykit-1 or pkexec): run `sudo {} service install --operator {user}` in a terminal",
                agent.display()
            )
        })?;
        Ok((
            pkexec,
            vec![
                agent.display().to_string(),
                "service".into(),
                "install".into(),
                "--operator".into(),
                user.to_string(),
            ],
        ))
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
        let outcome = if user.is_empty() {
            Err("cannot tell who you are (no user database entry for this uid)".to_string())
        } else {
            install_command(&user).and_then(|(program, args)| {
                tracing::info!(program = %program.display(), ?args, "installing the service");
                let out = std::process::Command::new(&program)
                    .args(&args)
                    .stdin(std::process::Stdio::null())
                    .output()
                    .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "the install failed ({}): {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
                }
            })
        };
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
