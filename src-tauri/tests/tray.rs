//! The tray menu, clicked over D-Bus as a desktop panel would: the app
//! exports it with libayatana-appindicator as a com.canonical.dbusmenu
//! object on its own bus connection. Run in a private session bus under
//! Xvfb, as `scripts/test.sh` does.

mod common;

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::dbusmenu::{pause_and_resume_reach_the_service, session_bus, Exporter, TrayMenu};
use common::{
    assert_file_events_stay, descendants_named, end_child, no_app_on_the_bus, one_app_at_a_time,
    run_base64_to_shell, wait_for, FileActivity, Fixture, ServiceAgent, APP, BASE64_TITLE,
};
use edr_store::{list_batches, open_batch_reader};
use zbus::blocking::Connection;

const START: Duration = Duration::from_secs(30);
const SOON: Duration = Duration::from_secs(15);

/// The app started directly (no WebDriver), ended with SIGTERM if a test
/// leaves it running.
struct App {
    child: Child,
    log: std::path::PathBuf,
}

impl App {
    fn launch(fx: &Fixture, args: &[&str], env: &[(&str, &str)]) -> App {
        let log = fx.log_path();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        let child = Command::new(APP)
            .args(args)
            .env("EDR_APP_CONFIG", &fx.config)
            // No service here: these tests are of the embedded engine.
            .env("EDR_APP_API_SOCKET", fx.dir.path().join("no-service.sock"))
            .env("HOME", fx.home())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("app binary");
        App { child, log }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        wait_for("the app to exit", SOON, || {
            self.child.try_wait().ok().flatten()
        })
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- app log ---\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        end_child(&mut self.child);
    }
}

fn tray_of(conn: &Connection, app: &App) -> TrayMenu {
    wait_for("the tray menu on D-Bus", START, || {
        TrayMenu::find(conn, app.pid(), Exporter::Ayatana)
    })
}

fn wait_status(menu: &TrayMenu, what: &str, ok: impl Fn(&str) -> bool) -> String {
    wait_for(what, START, || Some(menu.status()).filter(|s| ok(s)))
}

#[test]
fn menu_lists_its_items_and_pause_toggles_the_engine() {
    let _turn = one_app_at_a_time();
    let fx = Fixture::new(1000, 2000);
    let conn = session_bus();
    let mut app = App::launch(&fx, &["--minimized"], &[]);
    let menu = tray_of(&conn, &app);
    let status = wait_status(&menu, "a running status", |s| s.starts_with("Running ·"));
    assert!(
        status.ends_with("MB") && status.contains("ev/s"),
        "{status}"
    );
    // No service at the test's socket: the engine runs in the app (in real
    // time when the test runs as root, by polling otherwise), and the menu
    // offers to install the service.
    let labels = menu.labels();
    assert!(
        labels[1] == "Embedded · real-time"
            || labels[1] == "Embedded · polling (processes shorter than 1 s can be missed)",
        "{labels:?}"
    );
    assert_eq!(
        labels[2..],
        [
            "Pause",
            "Open Dashboard",
            "Alerts",
            "Settings…",
            "Open Data Folder",
            "Install the service…",
            "Quit"
        ]
    );
    assert!(!menu.items()[1].enabled, "the mode line is not clickable");
    assert!(!menu.items()[0].enabled, "the status line is not clickable");

    let _activity = FileActivity::start(&fx.watch);
    wait_for("file events", SOON, || (fx.file_events() > 0).then_some(()));

    menu.click("Pause");
    wait_for("the Resume item", SOON, || {
        (menu.labels()[2] == "Resume").then_some(())
    });
    wait_status(&menu, "a paused status", |s| s == "Paused");
    assert_file_events_stay(&fx, Duration::from_secs(3));

    let paused_at = fx.file_events();
    menu.click("Resume");
    wait_for("the Pause item", SOON, || {
        (menu.labels()[2] == "Pause").then_some(())
    });
    wait_for("file events after resume", SOON, || {
        (fx.file_events() > paused_at).then_some(())
    });

    assert_eq!(web_processes(app.pid()), 0, "started minimized: no window");
    menu.click("Settings…");
    wait_for("a window from the menu", START, || {
        (web_processes(app.pid()) > 0).then_some(())
    });

    menu.click_to_quit("Quit");
    assert_eq!(app.wait_exit().code(), Some(0));
}

#[test]
fn quit_commits_the_open_batch_and_exits_zero() {
    let _turn = one_app_at_a_time();
    // Batches close only when full or after an hour: just the shutdown
    // flush can write this one.
    let fx = Fixture::new(100_000, 3_600_000);
    let conn = session_bus();
    let mut app = App::launch(&fx, &["--minimized"], &[]);
    let menu = tray_of(&conn, &app);
    wait_status(&menu, "a running status", |s| s.starts_with("Running"));
    wait_for("the watch", SOON, || fx.watching().then_some(()));
    let activity = FileActivity::start(&fx.watch);
    wait_for("file events", START, || {
        (fx.file_events() >= 5).then_some(())
    });
    drop(activity);
    let produced = fx.file_events();
    assert_eq!(
        list_batches(&fx.data).expect("list"),
        Vec::<std::path::PathBuf>::new()
    );

    menu.click_to_quit("Quit");
    assert_eq!(app.wait_exit().code(), Some(0));

    let batches = list_batches(&fx.data).expect("list");
    assert_eq!(batches.len(), 1, "{batches:?}");
    let reader = open_batch_reader(&batches[0]).expect("open");
    let file_events = std::io::BufRead::lines(reader)
        .map(|l| l.expect("line"))
        .filter(|l| l.contains("\"category\":[\"file\"]"))
        .count() as u64;
    assert!(
        file_events >= produced,
        "{file_events} file events flushed, {produced} produced before Quit"
    );
    let last = fx.status().expect("final status");
    assert!(!last.running, "the final status says stopped");
    assert_eq!(last.totals.stored[1], file_events);
}

#[test]
fn a_second_launch_opens_the_first_ones_dashboard_and_exits() {
    let _turn = one_app_at_a_time();
    let fx = Fixture::new(1000, 5000);
    let conn = session_bus();
    let mut first = App::launch(&fx, &["--minimized"], &[]);
    let menu = tray_of(&conn, &first);
    wait_status(&menu, "a running status", |s| s.starts_with("Running"));
    assert_eq!(
        web_processes(first.pid()),
        0,
        "started minimized: no window"
    );

    let mut second = App::launch(&fx, &[], &[]);
    assert_eq!(second.wait_exit().code(), Some(0));
    assert!(first.running());
    wait_for("the first app's dashboard", START, || {
        (web_processes(first.pid()) > 0).then_some(())
    });

    menu.click_to_quit("Quit");
    assert_eq!(first.wait_exit().code(), Some(0));
}

#[test]
fn the_tray_says_when_the_engine_is_not_running() {
    let _turn = one_app_at_a_time();
    let conn = session_bus();

    let bad = Fixture::with(|data, _| {
        format!("agent:\n  max_events_per_batch: 0\nstorage:\n  local_storage:\n    data_dir: \"{data}\"\n")
    });
    let mut app = App::launch(&bad, &["--minimized"], &[]);
    let menu = tray_of(&conn, &app);
    wait_status(&menu, "a failed status", |s| s == "Engine failed to start");
    assert!(!menu.items()[2].enabled, "no Pause without an engine");
    assert!(app.running(), "a bad config does not end the app");
    menu.click_to_quit("Quit");
    assert_eq!(app.wait_exit().code(), Some(0));

    no_app_on_the_bus();
    let off = Fixture::new(1000, 5000);
    let mut app = App::launch(&off, &["--minimized"], &[("EDR_APP_ENGINE", "off")]);
    let menu = tray_of(&conn, &app);
    wait_status(&menu, "an engine-off status", |s| s == "Engine off");
    assert!(!off.data.exists(), "the engine never started");
    menu.click_to_quit("Quit");
    assert_eq!(app.wait_exit().code(), Some(0));
}

#[test]
fn a_detection_alert_is_notified_and_marked_in_the_menu_until_the_alerts_view_opens() {
    let _turn = one_app_at_a_time();
    let fx = Fixture::detecting(1000, 5000);
    let conn = session_bus();
    let mut app = App::launch(&fx, &["--minimized"], &[]);
    let menu = tray_of(&conn, &app);
    wait_status(&menu, "a running status", |s| s.starts_with("Running"));
    wait_for("the rules and the process collector", START, || {
        fx.status()
            .filter(|s| s.detection.rules_loaded > 0 && s.coverage.process_source.is_some())
            .map(|_| ())
    });
    std::thread::sleep(Duration::from_secs(1));
    let pid = run_base64_to_shell("edr-tray");
    let label = wait_for("an unseen alert in the menu", SOON, || {
        menu.labels()
            .into_iter()
            .find(|l| l.starts_with("Alerts (") && l.ends_with(" unseen)"))
    });
    // The notification names the rule, the severity, the program and its
    // pid (there is no notification daemon under Xvfb to show it; the app
    // logs what it sends).
    let log = std::fs::read_to_string(fx.log_path()).expect("app log");
    let sent = log
        .lines()
        .find(|l| l.contains("alert notification") && l.contains(&format!("(pid {pid})")))
        .unwrap_or_else(|| panic!("no notification for pid {pid} in\n{log}"));
    assert!(
        sent.contains(BASE64_TITLE) && sent.contains("high"),
        "{sent}"
    );
    assert!(sent.contains("bash"), "{sent}");

    assert_eq!(web_processes(app.pid()), 0, "started minimized: no window");
    menu.click(&label);
    wait_for("the Alerts view from the menu", START, || {
        (web_processes(app.pid()) > 0).then_some(())
    });
    // Programs elsewhere on the machine may raise alerts too; while the
    // view is open each is seen within a poll.
    wait_for("the mark to clear once the view is open", START, || {
        menu.labels().iter().any(|l| l == "Alerts").then_some(())
    });
    menu.click_to_quit("Quit");
    assert_eq!(app.wait_exit().code(), Some(0));
}

/// WebKit web processes under `pid`: one exists while a window is open.
fn web_processes(pid: u32) -> usize {
    descendants_named(pid, "WebKitWebProces").len()
}

const MODE_SERVICE: &str = "Real-time · service";
const INSTALL: &str = "Install the service…";

/// The tray follows the service: its mode line, "Install the service…"
/// only while none answers, and Pause steering the service itself.
#[test]
fn the_tray_says_service_mode_and_follows_the_service_coming_and_going() {
    let _turn = one_app_at_a_time();
    let fx = Fixture::new(1000, 2000);
    let socket = fx.dir.path().join("run").join("api.sock");
    let agent = ServiceAgent::start(fx.dir.path(), &socket);
    wait_for("the service's socket", START, || {
        socket.exists().then_some(())
    });
    let conn = session_bus();
    let socket_env = socket.display().to_string();
    let app = App::launch(
        &fx,
        &["--minimized"],
        &[("EDR_APP_API_SOCKET", socket_env.as_str())],
    );
    let menu = tray_of(&conn, &app);
    let mode = || menu.labels().get(1).cloned().unwrap_or_default();
    wait_for("the service mode line", START, || {
        (mode() == MODE_SERVICE).then_some(())
    });
    wait_status(&menu, "a running status", |s| s.starts_with("Running ·"));
    assert!(
        !menu.labels().iter().any(|l| l == INSTALL),
        "{:?}",
        menu.labels()
    );

    // Pause goes to the service: its own status says paused.
    pause_and_resume_reach_the_service(&menu, &fx.dir.path().join("agent-data"));

    drop(agent);
    wait_for("the embedded mode line", SOON, || {
        mode().starts_with("Embedded ·").then_some(())
    });
    wait_for("Install the service… offered", SOON, || {
        menu.labels().iter().any(|l| l == INSTALL).then_some(())
    });

    let _agent = ServiceAgent::start(fx.dir.path(), &socket);
    wait_for("the service mode line again", START, || {
        (mode() == MODE_SERVICE).then_some(())
    });
    wait_for("Install the service… gone", SOON, || {
        (!menu.labels().iter().any(|l| l == INSTALL)).then_some(())
    });
}

/// "Install the service…" without pkexec says what to run instead, and
/// the app lives on.
#[test]
fn install_the_service_without_pkexec_says_what_to_run() {
    let _turn = one_app_at_a_time();
    let fx = Fixture::new(1000, 2000);
    // A PATH without pkexec (edr-agent is found beside the app).
    let empty = fx.dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).expect("dir");
    let path = empty.display().to_string();
    let conn = session_bus();
    let mut app = App::launch(&fx, &["--minimized"], &[("PATH", path.as_str())]);
    let menu = tray_of(&conn, &app);
    wait_for("Install the service… offered", START, || {
        menu.labels().iter().any(|l| l == INSTALL).then_some(())
    });
    menu.click(INSTALL);
    let said = wait_for("the app to say pkexec is missing", SOON, || {
        std::fs::read_to_string(fx.log_path())
            .ok()?
            .lines()
            .find(|l| l.contains("service not installed"))
            .map(str::to_string)
    });
    assert!(said.contains("pkexec is not installed"), "{said}");
    assert!(said.contains("service install --operator"), "{said}");
    assert!(app.running(), "the app lives on");
}
