//! The app as the client of the root service: `edr-agent run` as root
//! with its API on a temp socket, the real app run as an unprivileged
//! member of the group `edr-agent` (through `runuser`, with a session
//! bus, home and runtime dir of its own) and driven through WebDriver in
//! the real WebKit engine. A short process shows in its Events view; the
//! app falls back to its own engine when the service stops, and
//! reattaches when it is back. Needs root (to run the agent and create
//! the user) and Xvfb, as `scripts/test.sh` runs it.

#[allow(dead_code)] // the helpers the other app tests use
mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{descendants_named, wait_for, APP};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use webdriver::{click, eventually, free_port, js};

/// The API's group (edr_config::api::API_GROUP).
const GROUP: &str = "edr-agent";
/// Distinct from the users the root tests create (`edr-api-*`).
const USER: &str = "edr-app-viewer";
const START: Duration = Duration::from_secs(30);
const SESSION: Duration = Duration::from_secs(90);
const SOON: Duration = Duration::from_secs(20);
/// The promise: a stopped service is noticed within this.
const FALLBACK: Duration = Duration::from_secs(5);
const SERVICE: &str = "Real-time · service";

fn require_root() {
    // SAFETY: geteuid has no side effects.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the app-with-service test needs root (it runs the agent as root and creates a user); run the test suite as root, as CI does"
    );
}

fn sh(cmd: &str, args: &[&str]) -> std::process::Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// The group and its member; `useradd` retried, since another test may
/// hold the passwd lock for a moment.
fn make_user() -> (u32, u32) {
    let _ = sh("groupadd", &["--system", GROUP]);
    if !sh("id", &[USER]).status.success() {
        let mut last = String::new();
        let made = (0..10).any(|_| {
            let o = sh(
                "useradd",
                &["--system", "--no-create-home", "--shell", "/bin/sh", USER],
            );
            last = String::from_utf8_lossy(&o.stderr).into_owned();
            o.status.success() || {
                std::thread::sleep(Duration::from_millis(300));
                sh("id", &[USER]).status.success()
            }
        });
        assert!(made, "useradd {USER}: {last}");
    }
    let o = sh("usermod", &["-a", "-G", GROUP, USER]);
    assert!(
        o.status.success(),
        "usermod: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let id = |flag: &str| -> u32 {
        String::from_utf8_lossy(&sh("id", &[flag, USER]).stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    (id("-u"), id("-g"))
}

/// The agent binary, built beside the app (`cargo test --workspace`
/// builds both; the app also looks for it there).
fn agent_binary() -> PathBuf {
    let p = Path::new(APP).parent().expect("app dir").join("edr-agent");
    assert!(
        p.exists(),
        "{} is missing: build it first (`cargo build --bin edr-agent`; `cargo test --workspace` does)",
        p.display()
    );
    p
}

/// `edr-agent run` as root, serving the API on the test's socket.
struct Agent {
    child: Child,
}

impl Agent {
    fn start(config: &Path, log: &Path) -> Agent {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("agent log");
        let child = Command::new(agent_binary())
            .args(["run", "--log", "info", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("agent starts");
        Agent { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// tauri-driver run as the test user in a session bus of its own; its
/// process group is ended with SIGTERM (SIGKILL would orphan
/// WebKitWebDriver).
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: signals the process group this test started.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

async fn mode(c: &Client) -> String {
    js(c, "return document.getElementById('mode-text').textContent")
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn agent_config(top: &Path, socket: &Path) -> PathBuf {
    let dir = top.join("agent");
    let watch = top.join("agent-watched");
    std::fs::create_dir_all(&dir).expect("agent dir");
    std::fs::create_dir_all(&watch).expect("watch dir");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "collectors:\n  process_monitor:\n    calculate_hashes: false\n  \
             file_monitor:\n    watch_paths: [\"{}\"]\n    calculate_hashes: false\n\
             storage:\n  local_storage:\n    data_dir: \"{}\"\n\
             detection:\n  enabled: false\n\
             api:\n  enabled: true\n  socket: \"{}\"\n",
            watch.display(),
            dir.join("data").display(),
            socket.display()
        ),
    )
    .expect("agent config");
    config
}

/// The user's home: the app's own config (its embedded engine's data dir
/// and watched folder inside), the X cookie, a runtime dir.
fn user_home(top: &Path, uid: u32, gid: u32) -> (PathBuf, PathBuf, PathBuf) {
    let home = top.join("home");
    let runtime = home.join("runtime");
    let watch = home.join("watched");
    for d in [&home, &runtime, &watch, &home.join("config")] {
        std::fs::create_dir_all(d).expect("home dirs");
    }
    let config = home.join("config").join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "collectors:\n  process_monitor:\n    calculate_hashes: false\n  \
             file_monitor:\n    watch_paths: [\"{}\"]\n    calculate_hashes: false\n\
             storage:\n  local_storage:\n    data_dir: \"{}\"\n\
             detection:\n  enabled: false\n",
            watch.display(),
            home.join("data").display()
        ),
    )
    .expect("app config");
    // xvfb-run's cookie is root's: the user gets a copy.
    if let Some(auth) = std::env::var_os("XAUTHORITY") {
        std::fs::copy(&auth, home.join(".Xauthority")).expect("copy the X cookie");
    }
    let status = Command::new("chown")
        .args(["-R", &format!("{uid}:{gid}")])
        .arg(&home)
        .status()
        .expect("chown");
    assert!(status.success());
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    (home, runtime, config)
}

fn start_driver(
    home: &Path,
    runtime: &Path,
    config: &Path,
    socket: &Path,
    log: &Path,
    extra_env: &[(&str, &str)],
) -> Driver {
    // /root is closed to the user: a copy of tauri-driver it can run.
    let found = String::from_utf8_lossy(&sh("sh", &["-c", "command -v tauri-driver"]).stdout)
        .trim()
        .to_string();
    assert!(
        !found.is_empty(),
        "tauri-driver on PATH (scripts/setup.sh installs it)"
    );
    let driver = home.join("tauri-driver");
    std::fs::copy(&found, &driver).expect("copy tauri-driver");
    std::fs::set_permissions(&driver, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let (port, native) = (free_port(), free_port());
    let log = std::fs::File::create(log).expect("log");
    let display = std::env::var("DISPLAY").expect("a display (run under xvfb-run)");
    let mut env = vec![
        format!("HOME={}", home.display()),
        format!("USER={USER}"),
        format!("LOGNAME={USER}"),
        "PATH=/usr/local/bin:/usr/bin:/bin".to_string(),
        format!("DISPLAY={display}"),
        format!("XAUTHORITY={}", home.join(".Xauthority").display()),
        format!("XDG_RUNTIME_DIR={}", runtime.display()),
        format!("EDR_APP_CONFIG={}", config.display()),
        format!("EDR_APP_API_SOCKET={}", socket.display()),
        "NO_AT_BRIDGE=1".to_string(),
        "RUST_LOG=info".to_string(),
    ];
    env.extend(extra_env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", USER, "--", "env", "-i"])
        .args(&env)
        .args(["dbus-run-session", "--"])
        .arg(&driver)
        .args([
            "--port",
            &port.to_string(),
            "--native-port",
            &native.to_string(),
        ])
        .current_dir(home)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .process_group(0);
    let child = cmd.spawn().expect("runuser");
    wait_for("tauri-driver to listen", START, || {
        TcpStream::connect(("127.0.0.1", port)).ok()
    });
    // tauri-driver starts WebKitWebDriver and forwards each request to it:
    // a session asked for before that one listens fails ("client error
    // (Connect)"), as it did once on a cold machine.
    wait_for("WebKitWebDriver to listen", START, || {
        TcpStream::connect(("127.0.0.1", native)).ok()
    });
    Driver { child, port }
}

/// What a scenario gets besides the WebDriver client.
struct Ctx {
    /// The root agent, while it runs.
    agent: Option<Agent>,
    agent_cfg: PathBuf,
    agent_log: PathBuf,
    marker: String,
}

/// The root agent with its API on a temp socket, and the real app run as
/// the group member `USER` (with `extra_env`) under tauri-driver; runs
/// `scenario`, then deletes the session (which ends the app) and stops
/// the driver and the agent, whether the scenario passed or panicked.
fn with_member_app<F, Fut>(extra_env: &[(&str, &str)], scenario: F)
where
    F: FnOnce(Client, Ctx) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    require_root();
    let (uid, gid) = make_user();
    let dir = tempfile::tempdir().expect("tempdir");
    let top = dir.path().to_path_buf();
    // The user must reach its home and the socket inside.
    std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let socket = top.join("run").join("api.sock");
    let agent_cfg = agent_config(&top, &socket);
    let agent_log = top.join("agent.log");
    let app_log = top.join("app.log");
    let (home, runtime, app_cfg) = user_home(&top, uid, gid);
    let marker = format!("edr-app-blink-{}", std::process::id());

    let agent = Agent::start(&agent_cfg, &agent_log);
    wait_for("the service's socket", START, || {
        socket.exists().then_some(())
    });

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let outcome = rt.block_on(async {
        let driver = start_driver(&home, &runtime, &app_cfg, &socket, &app_log, extra_env);
        let mut caps = serde_json::Map::new();
        caps.insert("tauri:options".into(), json!({ "application": APP }));
        let mut builder = ClientBuilder::native();
        builder.capabilities(caps);
        let url = format!("http://127.0.0.1:{}", driver.port);
        let client = tokio::time::timeout(SESSION, builder.connect(&url))
            .await
            .expect("the app to start in time")
            .expect("WebDriver session");
        let app_pid = wait_for("the app process", START, || {
            descendants_named(driver.child.id(), "edr-agent-app")
                .first()
                .copied()
        });
        // The app runs as the user, not root.
        let owner = std::fs::metadata(format!("/proc/{app_pid}")).expect("app proc");
        let ctx = Ctx {
            agent: Some(agent),
            agent_cfg: agent_cfg.clone(),
            agent_log: agent_log.clone(),
            marker,
        };
        let outcome = if std::os::unix::fs::MetadataExt::uid(&owner) == uid {
            tokio::spawn(scenario(client.clone(), ctx)).await
        } else {
            tokio::spawn(async { panic!("the app does not run as {USER}") }).await
        };
        if let Err(e) = client.close().await {
            eprintln!("closing the session: {e}");
        }
        drop(driver);
        outcome
    });
    if let Err(e) = outcome {
        eprintln!(
            "--- agent log ---\n{}\n--- app log ---\n{}",
            std::fs::read_to_string(&agent_log).unwrap_or_default(),
            std::fs::read_to_string(&app_log).unwrap_or_default()
        );
        match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(e) => panic!("scenario: {e}"),
        }
    }
}

async fn service_note(c: &Client) -> String {
    js(
        c,
        "return document.getElementById('service-banner').textContent",
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

#[test]
fn an_unprivileged_member_sees_the_service_falls_back_and_reattaches() {
    with_member_app(&[], |c, ctx| async move {
        let Ctx {
            mut agent,
            agent_cfg: cfg,
            agent_log: log,
            marker,
        } = ctx;
        eventually("the service mode in the window", START, || async {
            (mode(&c).await == SERVICE).then_some(())
        })
        .await;

        // A 10 ms process, shown in the Events view (filtered on its
        // marker, as a person would type it).
        js(
            &c,
            &format!(
                "const i = document.getElementById('event-text'); i.value = '{marker}'; \
                 i.dispatchEvent(new Event('input')); return true"
            ),
        )
        .await;
        let mut seen = false;
        for _ in 0..5 {
            let status = Command::new("sh")
                .args(["-c", "sleep 0.01", &marker])
                .status()
                .expect("sh");
            assert!(status.success());
            let deadline = Instant::now() + Duration::from_secs(6);
            while Instant::now() < deadline {
                let rows = js(
                    &c,
                    "return document.getElementById('events-body').innerText",
                )
                .await;
                if rows.as_str().is_some_and(|r| r.contains(&marker)) {
                    seen = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            if seen {
                break;
            }
        }
        assert!(seen, "the 10 ms process never showed in the Events view");

        // Settings and Pause steer the service: its config file (root's)
        // and its status say so.
        click(&c, "#tab-settings").await;
        let batch = "[name=\"agent.max_events_per_batch\"]";
        eventually("the service's settings in the form", SOON, || async {
            let e = c.find(Locator::Css(batch)).await.ok()?;
            let v = e.prop("value").await.ok().flatten()?;
            (!v.is_empty()).then_some(())
        })
        .await;
        let e = c.find(Locator::Css(batch)).await.expect("field");
        e.clear().await.expect("clear");
        e.send_keys("77").await.expect("type");
        click(&c, "#apply-btn").await;
        eventually(
            "the service's config file to hold the change",
            SOON,
            || async {
                std::fs::read_to_string(&cfg)
                    .ok()
                    .filter(|t| t.contains("max_events_per_batch: 77"))
                    .map(|_| ())
            },
        )
        .await;
        let data = cfg.parent().expect("agent dir").join("data");
        click(&c, "#pause-btn").await;
        eventually("the service paused", SOON, || async {
            edr_engine::read_status(&data)
                .filter(|s| s.paused)
                .map(|_| ())
        })
        .await;
        click(&c, "#pause-btn").await;
        eventually("the service resumed", SOON, || async {
            edr_engine::read_status(&data)
                .filter(|s| !s.paused)
                .map(|_| ())
        })
        .await;

        // The service stops: the app runs its own engine and says so.
        if let Some(mut a) = agent.take() {
            a.kill();
        }
        let killed = Instant::now();
        let fallback = eventually("the embedded mode in the window", SOON, || async {
            let m = mode(&c).await;
            m.starts_with("Embedded ·").then_some(m)
        })
        .await;
        let took = killed.elapsed();
        eprintln!("fell back to the embedded engine {took:?} after the service was killed");
        assert!(
            took <= FALLBACK,
            "fell back after {took:?}, more than {FALLBACK:?}"
        );
        // Polling, unless this kernel gives an unprivileged user the
        // proc connector's events (then the line says real-time).
        assert!(
            fallback == "Embedded · polling (processes shorter than 1 s can be missed)"
                || fallback == "Embedded · real-time",
            "{fallback}"
        );
        let note = service_note(&c).await;
        assert!(note.contains("stopped answering"), "{note}");

        // The service is back: the app is its client again.
        agent = Some(Agent::start(&cfg, &log));
        eventually("the service mode again", START, || async {
            (mode(&c).await == SERVICE).then_some(())
        })
        .await;
        assert_eq!(service_note(&c).await, "", "the note is gone once attached");
        drop(agent);
    });
}

/// A service speaking another protocol version: the window says so and
/// works on its own engine (the app is made to speak version 2 with
/// `EDR_APP_API_PROTOCOL`, a test hook; the agent is the real one).
#[test]
fn a_protocol_mismatch_is_explained_in_a_working_window() {
    with_member_app(&[("EDR_APP_API_PROTOCOL", "2")], |c, _ctx| async move {
        let m = eventually("the embedded mode", START, || async {
            let m = mode(&c).await;
            m.starts_with("Embedded ·").then_some(m)
        })
        .await;
        let note = eventually("the mismatch note", SOON, || async {
            Some(service_note(&c).await).filter(|n| !n.is_empty())
        })
        .await;
        assert!(
            note.contains("speaks API protocol 1 and this program speaks 2"),
            "{note}"
        );
        let status = eventually("a running engine", SOON, || async {
            let s = js(
                &c,
                "return document.getElementById('status-text').textContent",
            )
            .await;
            s.as_str()
                .filter(|s| s.starts_with("Running ·"))
                .map(str::to_string)
        })
        .await;
        eprintln!("{m} / {status} / {note}");
    });
}
