//! The commands the window may call (and nothing else: see
//! `capabilities/main.json`). Each checks its input, then translates
//! between the engine and the view types. All are `async` so they run on
//! the runtime's threads, never on the UI thread; the slow parts (drawing
//! charts, saving the config file) go to its blocking pool so no runtime
//! thread waits on them either.

use edr_config as config;
use tauri::{AppHandle, Manager, State};

use crate::error::CommandError;
use crate::settings::{self, Form};
use crate::state::AppState;
use crate::view::{self, DashboardRequest, DashboardView, EngineView};
use crate::{tray, window};

fn engine(state: &AppState) -> Result<&edr_engine::EngineHandle, CommandError> {
    state
        .handle()
        .ok_or_else(|| CommandError::NoEngine(view::engine_view(state).status))
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
    blocking(move || view::dashboard(&app.state::<AppState>(), &request)).await
}

/// The settings form filled from the running config, with the schema
/// (labels, ranges, hints, presets) the window draws it from.
#[tauri::command]
pub async fn get_settings(
    state: State<'_, AppState>,
) -> Result<settings::SettingsView, CommandError> {
    settings::settings_view(&engine(&state)?.config())
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
    settings::preset_form(&engine(&state)?.config(), &name)
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
    let new = settings::from_form(&engine.config(), &form)?;
    engine
        .apply_config(new.clone())
        .map_err(settings::refused)?;
    let (saved, path) = (new.clone(), state.config_path.clone());
    blocking(move || saved.save(&path)).await?.map_err(|e| {
        CommandError::Failed(format!(
            "Applied, but not saved (it will be lost on restart): {e}"
        ))
    })?;
    tracing::info!(path = %state.config_path.display(), "settings applied and saved");
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
    let engine = engine(&state)?;
    if paused {
        engine.pause();
    } else {
        engine.resume();
    }
    tray::refresh(&app);
    Ok(view::engine_view(&state))
}

/// Shows the data folder in the file manager.
#[tauri::command]
pub async fn open_data_folder(state: State<'_, AppState>) -> Result<(), CommandError> {
    window::open_folder(engine(&state)?.data_dir()).map_err(|e| CommandError::Failed(e.to_string()))
}
