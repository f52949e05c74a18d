//! A tray menu as a desktop panel reaches it: a com.canonical.dbusmenu
//! object on the exporting process's bus connection, read with
//! `GetLayout` and clicked with `Event`.

use std::collections::HashMap;
use std::time::Duration;

use zbus::blocking::fdo::DBusProxy;
use zbus::blocking::{Connection, Proxy};
use zbus::names::BusName;
use zbus::zvariant::{OwnedValue, Value};

/// Who exports the menu, which says where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exporter {
    /// The Tauri app (libayatana-appindicator):
    /// `/org/ayatana/NotificationItem/<id>/Menu`.
    Ayatana,
    /// `edr-tray` (ksni): `/MenuBar`.
    Ksni,
}

#[derive(Debug, Clone)]
pub struct Item {
    pub id: i32,
    pub label: String,
    pub enabled: bool,
}

/// An exported tray menu.
pub struct TrayMenu {
    proxy: Proxy<'static>,
}

impl TrayMenu {
    /// Finds the menu among the bus connections of process `pid`.
    pub fn find(conn: &Connection, pid: u32, exporter: Exporter) -> Option<TrayMenu> {
        let dbus = DBusProxy::new(conn).ok()?;
        for name in dbus.list_names().ok()? {
            if !name.starts_with(':') {
                continue;
            }
            let bus = BusName::try_from(name.to_string()).ok()?;
            if dbus.get_connection_unix_process_id(bus).ok() != Some(pid) {
                continue;
            }
            if let Some(menu) = Self::on_connection(conn, name.as_str(), exporter) {
                return Some(menu);
            }
        }
        None
    }

    fn on_connection(conn: &Connection, name: &str, exporter: Exporter) -> Option<TrayMenu> {
        let path = match exporter {
            Exporter::Ayatana => Self::ayatana_menu_path(conn, name)?,
            Exporter::Ksni => "/MenuBar".to_string(),
        };
        let proxy = Proxy::new(conn, name.to_string(), path, "com.canonical.dbusmenu").ok()?;
        let menu = TrayMenu { proxy };
        // The item is exported a moment before its menu is filled in.
        menu.try_items().filter(|i| !i.is_empty())?;
        Some(menu)
    }

    fn ayatana_menu_path(conn: &Connection, name: &str) -> Option<String> {
        let root = "/org/ayatana/NotificationItem";
        let intro = Proxy::new(
            conn,
            name.to_string(),
            root,
            "org.freedesktop.DBus.Introspectable",
        )
        .ok()?;
        let xml: String = intro.call("Introspect", &()).ok()?;
        let item = xml
            .split("<node name=\"")
            .nth(1)?
            .split('"')
            .next()?
            .to_string();
        Some(format!("{root}/{item}/Menu"))
    }

    /// The top-level items, separators left out.
    pub fn items(&self) -> Vec<Item> {
        self.try_items().expect("GetLayout")
    }

    pub fn try_items(&self) -> Option<Vec<Item>> {
        type Node = (i32, HashMap<String, OwnedValue>, Vec<OwnedValue>);
        let (_rev, (_root, _props, children)): (u32, Node) = self
            .proxy
            .call("GetLayout", &(0i32, -1i32, Vec::<&str>::new()))
            .ok()?;
        let items = children
            .into_iter()
            .filter_map(|child| {
                let (id, props, _): Node = child.try_into().ok()?;
                let s = |k: &str| {
                    props
                        .get(k)
                        .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
                };
                if s("type").as_deref() == Some("separator") {
                    return None;
                }
                let enabled = props
                    .get("enabled")
                    .and_then(|v| bool::try_from(v).ok())
                    .unwrap_or(true);
                Some(Item {
                    id,
                    label: s("label").unwrap_or_default(),
                    enabled,
                })
            })
            .collect();
        Some(items)
    }

    pub fn labels(&self) -> Vec<String> {
        self.items().into_iter().map(|i| i.label).collect()
    }

    pub fn status(&self) -> String {
        self.labels().into_iter().next().unwrap_or_default()
    }

    pub fn click(&self, label: &str) {
        self.try_click(label).expect("click");
    }

    /// A click that ends the exporter (Quit): it may leave the bus before
    /// it answers, which the bus reports as `NoReply`; any other error fails.
    pub fn click_to_quit(&self, label: &str) {
        match self.try_click(label) {
            Ok(()) => {}
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.DBus.Error.NoReply" => {}
            Err(e) => panic!("click {label:?}: {e}"),
        }
    }

    fn try_click(&self, label: &str) -> zbus::Result<()> {
        let item = self
            .items()
            .into_iter()
            .find(|i| i.label == label)
            .unwrap_or_else(|| panic!("no menu item {label:?} in {:?}", self.labels()));
        self.proxy
            .call("Event", &(item.id, "clicked", Value::I32(0), 0u32))
    }
}

/// Calls time out: one of the app's connections (GTK's accessibility
/// bridge, when `NO_AT_BRIDGE` is not set as scripts/test.sh sets it)
/// never answers, and a call without a limit would wait forever.
pub fn session_bus() -> Connection {
    zbus::blocking::connection::Builder::session()
        .map(|b| b.method_timeout(Duration::from_secs(5)))
        .and_then(|b| b.build())
        .expect("a session bus (run under dbus-run-session)")
}

/// "Pause" and then "Resume" clicked in `menu` reach the service whose
/// data dir is `service_data`: the menu says paused, and so does the
/// service's own status file, then running again.
pub fn pause_and_resume_reach_the_service(menu: &TrayMenu, service_data: &std::path::Path) {
    let soon = Duration::from_secs(15);
    menu.click("Pause");
    super::wait_for("the service paused", Duration::from_secs(30), || {
        Some(()).filter(|()| menu.status() == "Paused")
    });
    let paused = || edr_engine::read_status(service_data).map(|s| s.paused);
    super::wait_for("the service's status to say paused", soon, || {
        (paused() == Some(true)).then_some(())
    });
    menu.click("Resume");
    super::wait_for("the service's status to say running", soon, || {
        (paused() == Some(false)).then_some(())
    });
}
