//! `edr-tray`, the menu bar without a web engine, as a desktop user meets
//! it: its menu clicked over D-Bus as a panel would (ksni exports it at
//! `/MenuBar`), the engine it runs read through its API socket, the
//! dashboard it opens (the real app, `--viewer`) shown under Xvfb and
//! closed the way a window manager closes it. Run in a private session bus
//! under Xvfb, as `scripts/test.sh` does. Needs `edr-tray` built beside
//! the app (`cargo test --workspace` builds both).

#[allow(dead_code)] // each test binary uses part of the helpers
mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::dbusmenu::{pause_and_resume_reach_the_service, session_bus, Exporter, TrayMenu};
use common::{
    descendants_named, end_child, run_base64_to_shell, wait_for, Fixture, Notifications,
    ServiceAgent, APP, BASE64_TITLE,
};
use edr_store::list_batches;

const START: Duration = Duration::from_secs(30);
const SOON: Duration = Duration::from_secs(15);

/// `edr-tray`, next to the app's binary.
fn tray_binary() -> PathBuf {
    let p = Path::new(APP).with_file_name("edr-tray");
    assert!(
        p.exists(),
        "no edr-tray at {} (build it: `cargo build -p edr-tray`; `cargo test --workspace` does, \
         as edr-tray has tests of its own)",
        p.display()
    );
    p
}

struct Tray {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
}

impl Tray {
    fn launch(fx: &Fixture) -> Tray {
        // No service here: the tray runs its own engine.
        Tray::launch_with_service(fx, &fx.dir.path().join("no-service.sock"))
    }

    /// With the root service's socket at `service`.
    fn launch_with_service(fx: &Fixture, service: &Path) -> Tray {
        Tray::launch_with(fx, service, &[])
    }

    /// ... and `env` on top.
    fn launch_with(fx: &Fixture, service: &Path, env: &[(&str, &Path)]) -> Tray {
        let log = fx.dir.path().join("tray.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let socket = fx.dir.path().join("run").join("tray.sock");
        let child = Command::new(tray_binary())
            .env("EDR_APP_CONFIG", &fx.config)
            .env("EDR_APP_API_SOCKET", service)
            .env("EDR_TRAY_SOCKET", &socket)
            .env("EDR_TRAY_VIEWER", APP)
            .env("HOME", fx.home())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("edr-tray runs");
        Tray { child, log, socket }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_for("edr-tray to exit", SOON, || {
            self.child.try_wait().ok().flatten()
        })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The engine's status through the tray's own socket.
    fn status(&self) -> edr_engine::Snapshot {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let (client, _) = edr_api::Client::connect(&self.socket)
                .await
                .expect("the tray's API answers");
            client.status().await.expect("status")
        })
    }
}

impl Drop for Tray {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- edr-tray log ---\n{}", self.log());
        }
        end_child(&mut self.child);
    }
}

fn menu_of(tray: &Tray) -> TrayMenu {
    let conn = session_bus();
    wait_for("the tray menu on D-Bus", START, || {
        TrayMenu::find(&conn, tray.pid(), Exporter::Ksni)
    })
}

fn wait_status(menu: &TrayMenu, what: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_for(what, START, || Some(menu.status()).filter(|s| ok(s)))
}

/// Libraries mapped into `pid` whose file name contains `part`.
fn mapped(pid: u32, part: &str) -> Vec<String> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut found: Vec<String> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.contains(part))
        .map(str::to_string)
        .collect();
    found.dedup();
    found
}

/// X windows named like the dashboard.
fn dashboard_windows() -> Vec<String> {
    let out = Command::new("xdotool")
        .args(["search", "--name", "^EDR Agent$"])
        .output()
        .expect("xdotool runs (scripts/setup.sh installs it)");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// WM_DELETE_WINDOW to every window of the dashboard, as a window
/// manager's close button sends (`scripts/close-window.py`).
fn close_dashboard() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/close-window.py");
    for w in dashboard_windows() {
        let st = Command::new("python3")
            .arg(&script)
            .arg(&w)
            .status()
            .expect("python3 runs");
        assert!(st.success(), "close-window.py {w}: {st}");
    }
}

#[test]
fn the_light_tray_runs_the_engine_steers_it_notifies_and_opens_the_dashboard_apart() {
    let notifications = Notifications::start();
    let fx = Fixture::detecting(1, 200);
    let mut tray = Tray::launch(&fx);
    let menu = menu_of(&tray);
    let status = wait_status(&menu, "the engine running", |s| s.starts_with("Running"));
    let labels = menu.labels();
    assert_eq!(labels[0], status);
    assert!(labels[1].starts_with("Embedded"), "mode line: {labels:?}");
    assert_eq!(
        &labels[2..],
        [
            "Pause",
            "Open Dashboard",
            "Open Data Folder",
            "Install the service…",
            "Quit"
        ],
        "{labels:?}"
    );
    // What makes it light: no web engine and no GTK in the process.
    for lib in ["libwebkit2gtk", "libjavascriptcoregtk", "libgtk-3"] {
        assert_eq!(
            mapped(tray.pid(), lib),
            Vec::<String>::new(),
            "{lib} is mapped"
        );
    }
    // Its API socket is there, and says the engine runs.
    assert!(!tray.status().paused);

    menu.click("Pause");
    wait_status(&menu, "Paused in the menu", |s| s == "Paused");
    assert!(tray.status().paused, "the engine is not paused");
    assert!(menu.labels().contains(&"Resume".to_string()));
    menu.click("Resume");
    wait_status(&menu, "running again", |s| s.starts_with("Running"));
    assert!(!tray.status().paused);

    // A detection alert becomes a desktop notification naming the rule.
    run_base64_to_shell("light-tray");
    wait_for("the alert's notification", START, || {
        notifications
            .seen()
            .into_iter()
            .find(|(title, _)| title.starts_with(BASE64_TITLE))
    });

    // The dashboard is another process, the app as a viewer of this
    // tray's engine; closing its window ends it, and the tray stays.
    menu.click("Open Dashboard");
    let viewer = wait_for("the viewer process", START, || {
        descendants_named(tray.pid(), "edr-agent-app")
            .first()
            .copied()
    });
    let cmdline = std::fs::read_to_string(format!("/proc/{viewer}/cmdline")).unwrap_or_default();
    assert!(
        cmdline.contains("--viewer") && cmdline.contains("--tray-engine"),
        "{cmdline:?}"
    );
    wait_for("the dashboard window", START, || {
        Some(()).filter(|()| !dashboard_windows().is_empty())
    });
    close_dashboard();
    wait_for("the viewer to exit", SOON, || {
        Some(()).filter(|()| descendants_named(tray.pid(), "edr-agent-app").is_empty())
    });
    assert!(tray.running(), "the tray ended with its dashboard");
    assert!(menu.status().starts_with("Running"));

    menu.click_to_quit("Quit");
    let st = tray.wait_exit();
    assert!(st.success(), "{st}; log:\n{}", tray.log());
    assert!(!tray.socket.exists(), "the API socket was left behind");
    let batches = list_batches(&fx.data).expect("data dir");
    assert!(!batches.is_empty(), "nothing was stored");
}

#[test]
fn a_second_light_tray_of_the_same_user_says_one_runs_and_leaves() {
    let fx = Fixture::new(100, 1000);
    let first = Tray::launch(&fx);
    menu_of(&first);
    let second_log = fx.dir.path().join("second.log");
    let out = std::fs::File::create(&second_log).expect("log");
    let mut second = Command::new(tray_binary())
        .env("EDR_APP_CONFIG", &fx.config)
        .env("EDR_APP_API_SOCKET", fx.dir.path().join("no-service.sock"))
        .env("EDR_TRAY_SOCKET", &first.socket)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("edr-tray runs");
    let st = wait_for("the second tray to leave", SOON, || {
        second.try_wait().ok().flatten()
    });
    let log = std::fs::read_to_string(&second_log).unwrap_or_default();
    assert!(!st.success(), "the second tray exited 0");
    assert!(log.contains("another edr-tray already serves"), "{log}");
    assert!(
        first.socket.exists(),
        "the second tray took the first one's socket"
    );
}

/// With the root service running the tray is its client and runs no engine
/// (its own socket is not there); when the service stops the tray starts
/// its engine and says so, and when it is back the tray lets go of it.
#[test]
fn the_light_tray_is_the_services_client_while_it_answers() {
    let fx = Fixture::new(1000, 2000);
    let service = fx.dir.path().join("service").join("api.sock");
    let agent = ServiceAgent::start(fx.dir.path(), &service);
    wait_for("the service's socket", START, || {
        service.exists().then_some(())
    });
    let tray = Tray::launch_with_service(&fx, &service);
    let menu = menu_of(&tray);
    let mode = || menu.labels().get(1).cloned().unwrap_or_default();
    wait_for("the service mode line", START, || {
        (mode() == "Real-time · service").then_some(())
    });
    wait_status(&menu, "a running status", |s| s.starts_with("Running ·"));
    assert!(
        !tray.socket.exists(),
        "the tray runs an engine beside the service"
    );
    assert!(
        !menu.labels().iter().any(|l| l == "Install the service…"),
        "{:?}",
        menu.labels()
    );

    // Pause goes to the service: its own status says paused.
    pause_and_resume_reach_the_service(&menu, &fx.dir.path().join("agent-data"));

    drop(agent);
    wait_for("the embedded mode line", SOON, || {
        mode().starts_with("Embedded ·").then_some(())
    });
    wait_for("the tray's own socket", SOON, || {
        tray.socket.exists().then_some(())
    });
    assert!(!tray.status().paused);

    let _agent = ServiceAgent::start(fx.dir.path(), &service);
    wait_for("the service mode line again", START, || {
        (mode() == "Real-time · service").then_some(())
    });
    wait_for("the own engine stopped", SOON, || {
        (!tray.socket.exists()).then_some(())
    });
}

/// "Install the service…" without pkexec says what to run instead, in the
/// menu, and the tray lives on.
#[test]
fn install_the_service_without_pkexec_says_what_to_run() {
    let fx = Fixture::new(1000, 2000);
    // A PATH without pkexec (edr-agent is found beside the tray).
    let empty = fx.dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).expect("dir");
    let mut tray = Tray::launch_with(
        &fx,
        &fx.dir.path().join("no-service.sock"),
        &[("PATH", &empty)],
    );
    let menu = menu_of(&tray);
    wait_status(&menu, "the engine running", |s| s.starts_with("Running"));
    menu.click("Install the service…");
    let said = wait_for("the install's outcome in the menu", SOON, || {
        menu.labels()
            .into_iter()
            .find(|l| l.starts_with("The service was not installed"))
    });
    assert!(said.contains("pkexec is not installed"), "{said}");
    assert!(said.contains("service install --operator"), "{said}");
    assert!(tray.running(), "the tray ended");
}
