/// The commands the window may call; `capabilities/main.json` allows
/// exactly these.
const COMMANDS: &[&str] = &[
    "dashboard",
    "get_settings",
    "preset_settings",
    "apply_settings",
    "set_paused",
    "open_data_folder",
    "add_exception",
    "remove_exception",
    "get_autostart",
    "set_autostart",
];

fn main() {
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(COMMANDS)),
    )
    .expect("tauri build script");
}
