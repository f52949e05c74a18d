//! The commands the window may call (and nothing else: see
//! `capabilities/main.json`). Each checks its input, then translates
//! between the backend (the embedded engine or the service) and the view
//! types. All are `async` so they run on
//! the runtime's threads, never on the UI thread; the slow parts (drawing
//! charts, saving the config file) go to its blocking pool so no runtime
//! thread waits on them either.

use edr_config as config;
use tauri::{AppHandle, Manager, State};
use tauri_plugin_autostart::ManagerExt;

use crate::alerts::{self, AddException, ExceptionView};
use crate::backend::Backend;
use crate::error::CommandError;
use crate::settings::{self, Form};
use crate::state::AppState;
use crate::view::{self, DashboardRequest, DashboardView, EngineView};
use crate::{tray, window};

/// The embedded engine or the service, whichever the app talks to now.
fn engine(state: &AppState) -> Result<Backend, CommandError> {
    state.backend().ok_or_else(|| {
        // The status line the tray and the window show for it.
        CommandError::NoEngine(match state.no_engine() {
            Some((false, _)) => "Engine off".to_string(),
            _ => "Engine failed to start".to_string(),
        })
    })
}

/// Runs `work` on the runtime's blocking pool and waits for it.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CommandError> {
    tauri::async_runtime::spawn_blocking(work)
        .await
        .map_err(|e| CommandError::Failed(format!("internal error: {e}")))
}

/// Everything the dashboard shows, polled about once a second.
#[tauri::command]
pub async fn dashboard(
    app: AppHandle,
    request: DashboardRequest,
) -> Result<DashboardView, CommandError> {
    request.validate()?;
    let open = request.alerts_open;
    let fetched = view::fetch(&app.state::<AppState>(), &request).await;
    let app2 = app.clone();
    let view =
        blocking(move || view::dashboard(&app2.state::<AppState>(), &request, fetched)).await?;
    if open {
        // The alerts just counted as seen: the tray drops its mark now,
        // not at its next tick.
        tray::refresh(&app);
    }
    Ok(view)
}

/// The settings form filled from the running config, with the schema
/// (labels, ranges, hints, presets) the window draws it from.
#[tauri::command]
pub async fn get_settings(
    state: State<'_, AppState>,
) -> Result<settings::SettingsView, CommandError> {
    settings::settings_view(&*engine(&state)?.config().await?)
}

/// The settings form with a preset merged over the running config; nothing
/// is applied.
#[tauri::command]
pub async fn preset_settings(
    state: State<'_, AppState>,
    name: String,
) -> Result<Form, CommandError> {
    if !config::preset_names().contains(&name.as_str()) {
        return Err(CommandError::invalid(format!(
            "unknown preset; expected one of {}",
            config::preset_names().join(", ")
        )));
    }
    settings::preset_form(&*engine(&state)?.config().await?, &name)
}

/// Applies the form live, then saves it to the config file. A refused
/// value applies and writes nothing.
#[tauri::command]
pub async fn apply_settings(
    app: AppHandle,
    state: State<'_, AppState>,
    form: Form,
) -> Result<Form, CommandError> {
    let engine = engine(&state)?;
    let _one_edit = state.config_edit.lock().await;
    let new = settings::from_form(&*engine.config().await?, &form)?;
    engine.apply_config(new.clone(), &state.config_path).await?;
    tracing::info!(service = engine.is_service(), "settings applied and saved");
    tray::refresh(&app);
    settings::to_form(&new)
}

/// Pauses or resumes collection; returns the engine's state.
#[tauri::command]
pub async fn set_paused(
    app: AppHandle,
    state: State<'_, AppState>,
    paused: bool,
) -> Result<EngineView, CommandError> {
    engine(&state)?.set_paused(paused).await?;
    tray::refresh(&app);
    Ok(view::engine_view(&state).await.0)
}

/// Shows the data folder in the file manager.
#[tauri::command]
pub async fn open_data_folder(state: State<'_, AppState>) -> Result<(), CommandError> {
    let snap = engine(&state)?.snapshot().await?;
    window::open_folder(std::path::Path::new(&snap.data_dir))
        .map_err(|e| CommandError::Failed(e.to_string()))
}

/// Builds a new config from the running one with `edit` applied to its
/// `detection.exceptions`, applies it live, then saves it to the config
/// file (editing the user's document, comments kept). A refused config
/// applies and writes nothing. Returns the exceptions now in force.
async fn edit_exceptions(
    state: &AppState,
    edit: impl FnOnce(&mut Vec<config::DetectionException>) -> Result<(), CommandError>,
) -> Result<Vec<ExceptionView>, CommandError> {
    let engine = engine(state)?;
    let _one_edit = state.config_edit.lock().await;
    let mut new = (*engine.config().await?).clone();
    edit(&mut new.detection.exceptions)?;
    let list = alerts::exceptions_view(&new.detection.exceptions);
    engine.apply_config(new, &state.config_path).await?;
    tracing::info!(
        service = engine.is_service(),
        exceptions = list.len(),
        "detection exceptions applied and saved"
    );
    Ok(list)
}

/// "Silence this rule" (a rule id) or "Allow this program" (a rule id and
/// the program's path): adds the exception to `detection.exceptions`.
#[tauri::command]
pub async fn add_exception(
    state: State<'_, AppState>,
    exception: AddException,
) -> Result<Vec<ExceptionView>, CommandError> {
    edit_exceptions(&state, |list| alerts::add_exception(list, &exception)).await
}

/// Removes an entry of `detection.exceptions` as Settings listed it (undo).
#[tauri::command]
pub async fn remove_exception(
    state: State<'_, AppState>,
    exception: ExceptionView,
) -> Result<Vec<ExceptionView>, CommandError> {
    edit_exceptions(&state, |list| alerts::remove_exception(list, &exception)).await
}

/// Whether the app starts at login ("Launch at login" in Settings).
#[tauri::command]
pub async fn get_autostart(app: AppHandle) -> Result<bool, CommandError> {
    blocking(move || app.autolaunch().is_enabled())
        .await?
        .map_err(|e| {
            CommandError::Failed(format!("cannot tell whether the app starts at login: {e}"))
        })
}

/// Switches "Launch at login": writes or removes the autostart entry
/// (XDG autostart on Linux, a LaunchAgent on macOS); returns the state now.
#[tauri::command]
pub async fn set_autostart(app: AppHandle, enabled: bool) -> Result<bool, CommandError> {
    blocking(move || {
        let m = app.autolaunch();
        if enabled { m.enable() } else { m.disable() }?;
        m.is_enabled()
    })
    .await?
    .map_err(|e| CommandError::Failed(format!("cannot change launch at login: {e}")))
    .inspect(|on| tracing::info!(enabled = on, "launch at login"))
}
