//! The dashboard window: created on demand, destroyed when closed (so the
//! web view's memory goes back), and the file manager for the data folder.

use std::path::Path;

use tauri::{AppHandle, Manager, WebviewUrl, WebviewWindowBuilder};

/// The only window; the capability is granted to this label alone.
pub const LABEL: &str = "main";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Dashboard,
    Settings,
    Alerts,
}

impl View {
    fn name(self) -> &'static str {
        match self {
            View::Dashboard => "dashboard",
            View::Settings => "settings",
            View::Alerts => "alerts",
        }
    }
}

/// Brings the window to the front on `view`, creating it if it was closed.
pub fn show(app: &AppHandle, view: View) {
    if let Some(w) = app.get_webview_window(LABEL) {
        let shown = w
            .unminimize()
            .and_then(|()| w.show())
            .and_then(|()| w.set_focus())
            .and_then(|()| {
                w.eval(format!(
                    "window.edrShowView && window.edrShowView('{}')",
                    view.name()
                ))
            });
        if let Err(e) = shown {
            tracing::warn!(error = %e, "cannot show the dashboard");
        }
        return;
    }
    // The page reads its first view from the fragment.
    let url = WebviewUrl::App(format!("index.html#{}", view.name()).into());
    let built = WebviewWindowBuilder::new(app, LABEL, url)
        .title("EDR Agent")
        .inner_size(1180.0, 860.0)
        .min_inner_size(760.0, 540.0)
        .build();
    if let Err(e) = built {
        tracing::error!(error = %e, "cannot open the dashboard");
    }
}

/// Opens `dir` in the platform's file manager.
pub fn open_folder(dir: &Path) -> std::io::Result<()> {
    #[cfg(target_os = "macos")]
    let opener = "open";
    #[cfg(not(target_os = "macos"))]
    let opener = "xdg-open";
    let mut child = std::process::Command::new(opener)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .spawn()?;
    // Reaped off the caller's thread: xdg-open may wait for the file manager.
    std::thread::spawn(move || {
        if let Err(e) = child.wait() {
            tracing::debug!(error = %e, "file manager");
        }
    });
    Ok(())
}
