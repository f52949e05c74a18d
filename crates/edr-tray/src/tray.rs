//! The StatusNotifierItem and its menu (ksni: `org.kde.StatusNotifierItem`
//! at `/StatusNotifierItem`, `com.canonical.dbusmenu` at `/MenuBar`). It
//! only shows what the controller decided and hands clicks back to it
//! over a bounded channel; a click when the channel is full is dropped
//! and logged (the menu never waits).

use ksni::menu::{MenuItem, StandardItem};
use tokio::sync::mpsc;

/// The item's id (in its D-Bus name and for the desktop).
pub const ID: &str = "edr-agent-tray";
pub const LABEL_PAUSE: &str = "Pause";
pub const LABEL_RESUME: &str = "Resume";
pub const LABEL_OPEN: &str = "Open Dashboard";
pub const LABEL_DATA: &str = "Open Data Folder";
pub const LABEL_INSTALL: &str = "Install the service…";
pub const LABEL_QUIT: &str = "Quit";

/// What a click asks the controller for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    TogglePause,
    OpenDashboard,
    OpenData,
    InstallService,
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IconKind {
    Running,
    Paused,
    Alert,
}

/// Everything the menu and icon show; the controller sends a new one only
/// when it differs, so unchanged menus are not re-sent over D-Bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// `Running · 12 ev/s · 9.8 MB`, `Paused`, or why nothing runs.
    pub status: String,
    /// Where the events come from: the service, or this tray's engine.
    pub mode: String,
    /// What just switched, why the service cannot be used, how an install
    /// went (a line of the menu, and the tooltip).
    pub note: Option<String>,
    /// "Install the service…" is offered (no service answers).
    pub install: bool,
    /// None when there is nothing to pause.
    pub paused: Option<bool>,
    pub icon: IconKind,
}

impl Shown {
    pub fn starting() -> Shown {
        Shown {
            status: "Starting…".into(),
            mode: "Looking for the service…".into(),
            note: None,
            install: false,
            paused: None,
            icon: IconKind::Running,
        }
    }
}

pub struct Tray {
    pub shown: Shown,
    icons: Icons,
    commands: mpsc::Sender<Command>,
}

impl Tray {
    pub fn new(commands: mpsc::Sender<Command>) -> Tray {
        Tray {
            shown: Shown::starting(),
            icons: Icons::load(),
            commands,
        }
    }

    fn send(&self, c: Command) {
        if let Err(e) = self.commands.try_send(c) {
            tracing::warn!(command = ?c, error = %e, "menu click dropped");
        }
    }
}

fn item(label: &str, enabled: bool, command: Option<Command>) -> MenuItem<Tray> {
    StandardItem {
        label: label.into(),
        enabled,
        activate: Box::new(move |t: &mut Tray| {
            if let Some(c) = command {
                t.send(c);
            }
        }),
        ..Default::default()
    }
    .into()
}

impl ksni::Tray for Tray {
    // A click on the icon opens the menu, as in the Tauri app.
    const MENU_ON_ACTIVATE: bool = true;

    fn id(&self) -> String {
        ID.into()
    }

    fn title(&self) -> String {
        "EDR Agent".into()
    }

    fn icon_pixmap(&self) -> Vec<ksni::Icon> {
        self.icons.get(self.shown.icon).into_iter().collect()
    }

    fn tool_tip(&self) -> ksni::ToolTip {
        let mut description = self.shown.status.clone();
        if let Some(n) = &self.shown.note {
            description.push('\n');
            description.push_str(n);
        }
        ksni::ToolTip {
            title: "EDR Agent".into(),
            description,
            ..Default::default()
        }
    }

    fn menu(&self) -> Vec<MenuItem<Self>> {
        let pause = match self.shown.paused {
            Some(true) => item(LABEL_RESUME, true, Some(Command::TogglePause)),
            Some(false) => item(LABEL_PAUSE, true, Some(Command::TogglePause)),
            None => item(LABEL_PAUSE, false, None),
        };
        let mut menu = vec![
            item(&self.shown.status, false, None),
            item(&self.shown.mode, false, None),
        ];
        if let Some(n) = &self.shown.note {
            menu.push(item(n, false, None));
        }
        menu.extend([
            MenuItem::Separator,
            pause,
            item(LABEL_OPEN, true, Some(Command::OpenDashboard)),
            item(LABEL_DATA, true, Some(Command::OpenData)),
        ]);
        if self.shown.install {
            menu.push(item(LABEL_INSTALL, true, Some(Command::InstallService)));
        }
        menu.extend([
            MenuItem::Separator,
            item(LABEL_QUIT, true, Some(Command::Quit)),
        ]);
        menu
    }
}

/// The tray icons, decoded once from the PNGs the Tauri app uses too.
struct Icons {
    running: Option<ksni::Icon>,
    paused: Option<ksni::Icon>,
    alert: Option<ksni::Icon>,
}

impl Icons {
    fn load() -> Icons {
        Icons {
            running: decode(include_bytes!("../../../icons/tray-running.png")),
            paused: decode(include_bytes!("../../../icons/tray-paused.png")),
            alert: decode(include_bytes!("../../../icons/tray-alert.png")),
        }
    }

    fn get(&self, kind: IconKind) -> Option<ksni::Icon> {
        match kind {
            IconKind::Running => self.running.clone(),
            IconKind::Paused => self.paused.clone(),
            IconKind::Alert => self.alert.clone(),
        }
    }
}

/// An RGBA PNG as the ARGB32 (network byte order) pixmap the
/// StatusNotifierItem protocol carries; None (no icon, the menu still
/// works) if it does not decode.
fn decode(png_bytes: &[u8]) -> Option<ksni::Icon> {
    let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .map_err(|e| tracing::warn!(error = %e, "tray icon not decoded"))
        .ok()?;
    let mut buf = vec![0; reader.output_buffer_size()?];
    let info = reader
        .next_frame(&mut buf)
        .map_err(|e| tracing::warn!(error = %e, "tray icon not decoded"))
        .ok()?;
    if info.color_type != png::ColorType::Rgba || info.bit_depth != png::BitDepth::Eight {
        tracing::warn!(color = ?info.color_type, "tray icon is not 8-bit RGBA");
        return None;
    }
    let data = buf[..info.buffer_size()]
        .chunks_exact(4)
        .flat_map(|p| [p[3], p[0], p[1], p[2]])
        .collect();
    Some(ksni::Icon {
        width: i32::try_from(info.width).ok()?,
        height: i32::try_from(info.height).ok()?,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_icons_decode_to_argb_pixmaps() {
        let icons = Icons::load();
        for kind in [IconKind::Running, IconKind::Paused, IconKind::Alert] {
            let icon = icons.get(kind).expect("decodes");
            assert_eq!((icon.width, icon.height), (44, 44));
            assert_eq!(icon.data.len(), 44 * 44 * 4);
            // Some pixel is opaque (alpha first).
            assert!(icon.data.chunks_exact(4).any(|p| p[0] == 255));
        }
    }
}
