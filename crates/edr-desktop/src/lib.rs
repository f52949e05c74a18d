//! What both menu bars of edr-agent, the Tauri app (`src-tauri`) and the
//! light tray (`edr-tray`), say and keep alike, so a user moving between
//! them sees the same lines, the same notifications and the same config
//! file. No GUI
//! toolkit and no engine logic here: texts, one file and the command that
//! installs the service.

pub mod config_file;
pub mod lines;
pub mod notice;
pub mod service;

pub use config_file::{ensure_config_file, first_config, first_config_yaml};
pub use lines::{mode_line, status_line, MODE_POLLING, MODE_REALTIME, MODE_SERVICE};
pub use notice::{notices, Notice, NOTIFY_EACH_MAX};
pub use service::{find_program, install_command, install_service};
