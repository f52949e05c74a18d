//! What both app test suites need: a private config whose data dir and
//! watched folder are temp dirs, the engine's status as the app writes it,
//! file activity in the watched folder, and one app at a time.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use edr_engine::{read_status, Snapshot};

#[allow(dead_code)] // the tray tests use it, the e2e tests do not
pub mod dbusmenu;

pub const APP: &str = env!("CARGO_BIN_EXE_edr-agent-app");

/// The name an app holds on the session bus to stay single-instance (the
/// identifier in tauri.conf.json, then `.SingleInstance`).
const INSTANCE_NAME: &str = "org.edr-agent.app.SingleInstance";

/// The app is single-instance per session bus: tests in one binary take
/// turns.
pub fn one_app_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let turn = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    no_app_on_the_bus();
    turn
}

/// Waits until the last app has let go of its bus name: the bus notices a
/// dead process a moment after it is gone, and an app started meanwhile
/// would find the name taken and give up.
pub fn no_app_on_the_bus() {
    let conn = zbus::blocking::Connection::session().expect("a session bus (dbus-run-session)");
    let dbus = zbus::blocking::fdo::DBusProxy::new(&conn).expect("bus proxy");
    let name = zbus::names::BusName::try_from(INSTANCE_NAME).expect("bus name");
    wait_for(
        "the last app to leave the bus",
        Duration::from_secs(15),
        || (!dbus.name_has_owner(name.clone()).unwrap_or(false)).then_some(()),
    );
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub data: PathBuf,
    pub watch: PathBuf,
}

impl Fixture {
    /// A config batching `batch` events or `interval_ms`, watching a temp
    /// folder and storing into a temp data dir. Hashing is off to spare
    /// the test machine; process and network collectors stay on. Detection
    /// is off: an alert raised by some other process on the machine (a
    /// detection test running beside this one) is written out at once, in
    /// a batch of its own, and would change the batch shapes these tests
    /// assert.
    pub fn new(batch: u32, interval_ms: u64) -> Fixture {
        Fixture::config(batch, interval_ms, false)
    }

    /// [`Fixture::new`] with detection on (the default rules).
    #[allow(dead_code)] // the tray tests use it, the e2e tests do not
    pub fn detecting(batch: u32, interval_ms: u64) -> Fixture {
        Fixture::config(batch, interval_ms, true)
    }

    fn config(batch: u32, interval_ms: u64, detection: bool) -> Fixture {
        Fixture::with(|data, watch| {
            format!(
                "agent:\n  max_events_per_batch: {batch}\n  collection_interval_ms: {interval_ms}\n\
                 collectors:\n  process_monitor:\n    calculate_hashes: false\n  \
                 file_monitor:\n    watch_paths: [\"{watch}\"]\n    calculate_hashes: false\n\
                 storage:\n  local_storage:\n    data_dir: \"{data}\"\n\
                 detection:\n  enabled: {detection}\n"
            )
        })
    }

    /// A config with this text; `yaml` gets the data dir and watched folder.
    pub fn with(yaml: impl FnOnce(&str, &str) -> String) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let watch = dir.path().join("watched");
        std::fs::create_dir(&watch).expect("watch dir");
        let config = dir.path().join("config").join("config.yaml");
        std::fs::create_dir_all(config.parent().expect("parent")).expect("config dir");
        let text = yaml(&data.display().to_string(), &watch.display().to_string());
        std::fs::write(&config, text).expect("config");
        Fixture {
            dir,
            config,
            data,
            watch,
        }
    }

    /// The engine's status file (rewritten every second).
    pub fn status(&self) -> Option<Snapshot> {
        read_status(&self.data)
    }

    /// Whether the file collector watches the fixture's folder yet (files
    /// created before that are not seen).
    pub fn watching(&self) -> bool {
        let want = self.watch.display().to_string();
        self.status()
            .is_some_and(|s| s.coverage.watched_paths.contains(&want))
    }

    /// File events the engine has produced so far.
    pub fn file_events(&self) -> u64 {
        self.status().map_or(0, |s| s.totals.produced[1])
    }

    /// The app's home (created on first use).
    pub fn home(&self) -> PathBuf {
        let home = self.dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        home
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("app.log")
    }
}

/// Creates a file in `dir` every 50 ms until dropped.
pub struct FileActivity {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileActivity {
    pub fn start(dir: &Path) -> FileActivity {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, dir) = (Arc::clone(&stop), dir.to_path_buf());
        let thread = std::thread::spawn(move || {
            let mut i = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let _ = std::fs::write(dir.join(format!("f{i}.txt")), b"x");
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        FileActivity {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FileActivity {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `f` every 100 ms until it returns Some, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// While paused, file events must not grow: watched for a few status
/// updates while files keep being created. (A negative needs a window.)
pub fn assert_file_events_stay(fx: &Fixture, window: Duration) {
    wait_for("the status to say paused", Duration::from_secs(10), || {
        fx.status().filter(|s| s.paused).map(|_| ())
    });
    // Collectors stop just after the switch; let the counters settle and
    // the status file catch up.
    std::thread::sleep(Duration::from_millis(1500));
    let before = fx.file_events();
    std::thread::sleep(window);
    assert_eq!(fx.file_events(), before, "file events grew while paused");
}

/// Processes under `pid` (at any depth) whose name is `comm`.
pub fn descendants_named(pid: u32, comm: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for child in children(p) {
            let name = std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
            if name.trim() == comm {
                found.push(child);
            }
            queue.push(child);
        }
    }
    found
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|c| c.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The title of the built-in rule `evasion_base64_decoded_payload_to_shell`
/// (`rules/common/process_creation/`), which [`run_base64_to_shell`] trips.
pub const BASE64_TITLE: &str = "Base64-Decoded Payload Piped to a Shell or Interpreter";

/// Runs the suspicious one-liner the rule describes (the payload is `id`),
/// tagged with `tag`, and waits for it. The shell stays alive a moment
/// after the pipe so its command line can still be read when its start is
/// seen, and ends on a builtin so it is not replaced by `sleep`.
pub fn run_base64_to_shell(tag: &str) -> u32 {
    let mut child = Command::new("/bin/bash")
        .arg("-c")
        .arg(format!(
            "echo aWQK | base64 -d | sh >/dev/null; sleep 1; : {tag}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("bash");
    let pid = child.id();
    let status = child.wait().expect("bash ran");
    assert!(status.success(), "{status}");
    pid
}

/// A notification daemon (dunst) on the session bus, and the title and
/// body of every `Notify` call the bus carries to it, seen by a monitor
/// connection. Dropping it stops the daemon.
#[allow(dead_code)] // the e2e tests use it, the tray tests do not
pub struct Notifications {
    daemon: std::process::Child,
    seen: Arc<Mutex<Vec<(String, String)>>>,
}

#[allow(dead_code)]
const NOTIFICATIONS_NAME: &str = "org.freedesktop.Notifications";

#[allow(dead_code)]
impl Notifications {
    pub fn start() -> Notifications {
        let conn = zbus::blocking::Connection::session().expect("a session bus (dbus-run-session)");
        let dbus = zbus::blocking::fdo::DBusProxy::new(&conn).expect("bus proxy");
        let name = zbus::names::BusName::try_from(NOTIFICATIONS_NAME).expect("bus name");
        assert!(
            !dbus.name_has_owner(name.clone()).unwrap_or(false),
            "another notification daemon is on this session bus"
        );
        let daemon = Command::new("dunst")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dunst runs (scripts/setup.sh installs it)");
        wait_for("dunst on the session bus", Duration::from_secs(15), || {
            dbus.name_has_owner(name.clone())
                .unwrap_or(false)
                .then_some(())
        });
        let monitor = zbus::blocking::Connection::session().expect("a monitor connection");
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::MethodCall)
            .interface(NOTIFICATIONS_NAME)
            .and_then(|b| b.member("Notify"))
            .expect("match rule")
            .build();
        zbus::blocking::fdo::MonitoringProxy::new(&monitor)
            .expect("monitoring proxy")
            .become_monitor(&[rule], 0)
            .expect("a monitor of the session bus");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&seen);
        // Ends with the test process (the iterator waits for messages).
        std::thread::spawn(move || {
            type Notify = (
                String,
                u32,
                String,
                String,
                String,
                Vec<String>,
                std::collections::HashMap<String, zbus::zvariant::OwnedValue>,
                i32,
            );
            for msg in zbus::blocking::MessageIterator::from(monitor).flatten() {
                if let Ok((_, _, _, title, body, ..)) = msg.body().deserialize::<Notify>() {
                    into.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((title, body));
                }
            }
        });
        Notifications { daemon, seen }
    }

    /// The (title, body) of every notification sent so far.
    pub fn seen(&self) -> Vec<(String, String)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
    }
}

/// `edr-agent run` (built beside the app) serving its API on `socket`.
#[allow(dead_code)] // the tray tests use it, the e2e tests do not
pub struct ServiceAgent(std::process::Child);

#[allow(dead_code)]
impl ServiceAgent {
    pub fn start(dir: &Path, socket: &Path) -> ServiceAgent {
        let agent = Path::new(APP).parent().expect("app dir").join("edr-agent");
        assert!(
            agent.exists(),
            "{} is missing: build it first (`cargo build --bin edr-agent`; `cargo test --workspace` does)",
            agent.display()
        );
        let config = dir.join("agent.yaml");
        std::fs::write(
            &config,
            format!(
                "collectors:\n  process_monitor:\n    calculate_hashes: false\n  \
                 file_monitor:\n    watch_paths: []\n\
                 storage:\n  local_storage:\n    data_dir: \"{}\"\n\
                 detection:\n  enabled: false\n\
                 api:\n  enabled: true\n  socket: \"{}\"\n",
                dir.join("agent-data").display(),
                socket.display()
            ),
        )
        .expect("agent config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .expect("agent log");
        let child = Command::new(agent)
            .args(["run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("agent starts");
        ServiceAgent(child)
    }
}

impl Drop for ServiceAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Ends a child a test started, if it still runs: SIGTERM (so it can
/// commit its batch and leave the bus), then SIGKILL after 10 s.
#[allow(dead_code)] // the tray tests use it, the e2e tests do not
pub fn end_child(child: &mut std::process::Child) {
    if !matches!(child.try_wait(), Ok(None)) {
        return;
    }
    // SAFETY: signals our own child, which has not been reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
