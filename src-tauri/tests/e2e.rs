//! End to end through the real WebKit engine: tauri-driver starts the app
//! binary, fantoccini clicks and types in its window, and the effects are
//! checked where a user would see them (the window, the config file, the
//! batch files on disk). Run under Xvfb with a session bus, as
//! `scripts/test.sh` does.

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_file_events_stay, descendants_named, one_app_at_a_time, run_base64_to_shell, wait_for,
    FileActivity, Fixture, Notifications, APP, BASE64_TITLE,
};
use edr_config::Config;
use edr_model::event::Timestamp;
use edr_store::{batch_stats, list_batches, started_from_name};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use webdriver::{click, eventually, free_port, js};

const START: Duration = Duration::from_secs(30);
/// A debug build of the app, started by WebKitWebDriver on a loaded
/// two-core machine, may take a while to open its session.
const SESSION: Duration = Duration::from_secs(90);
const SOON: Duration = Duration::from_secs(15);

/// tauri-driver on free ports, stopped with SIGTERM (SIGKILL would orphan
/// WebKitWebDriver, still holding its port).
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(fx: &Fixture) -> Driver {
        let (port, native) = (free_port(), free_port());
        let log = std::fs::File::create(fx.log_path()).expect("log file");
        let child = Command::new("tauri-driver")
            .args([
                "--port",
                &port.to_string(),
                "--native-port",
                &native.to_string(),
            ])
            .env("EDR_APP_CONFIG", &fx.config)
            // No service here: these tests are of the embedded engine.
            .env("EDR_APP_API_SOCKET", fx.dir.path().join("no-service.sock"))
            // A home of its own: "Launch at login" writes under it.
            .env("HOME", fx.home())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("tauri-driver on PATH (scripts/setup.sh installs it)");
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
}

impl Drop for Driver {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child, which has not been reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn config_text(fx: &Fixture) -> String {
    std::fs::read_to_string(&fx.config).expect("config file")
}

/// Event counts of the batch files that started after `since`.
fn batches_since(fx: &Fixture, since: Timestamp) -> Vec<u64> {
    list_batches(&fx.data)
        .unwrap_or_default()
        .iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(started_from_name)
                .is_some_and(|t| t >= since)
        })
        .map(|p| batch_stats(p).expect("batch readable").events)
        .collect()
}

/// Deleting the session ends the app, but WebKitWebDriver may still be
/// doing so when tauri-driver stops: an app left running would hold the
/// single-instance name and turn the next test's app away.
fn end_app(pid: u32) {
    let gone = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !gone() {
        eprintln!("the app outlived its session: killing it");
        // SAFETY: a plain signal to a process this test started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Creates `n` files in `dir` at once.
fn create_files(dir: &std::path::Path, prefix: &str, n: usize) {
    for i in 0..n {
        std::fs::write(dir.join(format!("{prefix}{i}.txt")), b"x").expect("write");
    }
}

/// Runs `scenario` against a fresh app on `fx`'s config. The WebDriver
/// session is deleted (which ends the app) whether the scenario passed or
/// panicked; then its panic is re-raised with the app's log.
fn with_app<F, Fut>(fx: Fixture, scenario: F)
where
    F: FnOnce(Client, Arc<Fixture>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let _turn = one_app_at_a_time();
    let fx = Arc::new(fx);
    let _log = LogOnPanic(fx.log_path());
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let outcome = rt.block_on(async {
        let driver = Driver::start(&fx);
        let mut caps = serde_json::Map::new();
        caps.insert("tauri:options".into(), json!({ "application": APP }));
        let mut builder = ClientBuilder::native();
        builder.capabilities(caps);
        let url = format!("http://127.0.0.1:{}", driver.port);
        let client = tokio::time::timeout(SESSION, builder.connect(&url))
            .await
            .expect("the app to start in time")
            .expect("WebDriver session");
        let app = wait_for("the app process", START, || {
            descendants_named(driver.child.id(), "edr-agent-app")
                .first()
                .copied()
        });
        let outcome = tokio::spawn(scenario(client.clone(), Arc::clone(&fx))).await;
        if let Err(e) = client.close().await {
            eprintln!("closing the session: {e}");
        }
        end_app(app);
        drop(driver);
        outcome
    });
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(p) => std::panic::resume_unwind(p),
            Err(e) => panic!("scenario: {e}"),
        }
    }
}

/// Prints the app's (and tauri-driver's) log if the test fails.
struct LogOnPanic(std::path::PathBuf);

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.0).unwrap_or_default();
            eprintln!("--- app log ---\n{log}");
        }
    }
}

/// Calls an app command the way the window does.
async fn invoke(c: &Client, cmd: &str, args: Value) -> Result<Value, Value> {
    let r = c
        .execute_async(
            "const [cmd, args, done] = arguments;
             window.__TAURI__.core.invoke(cmd, args).then(v => done({ ok: v }), e => done({ err: e }));",
            vec![json!(cmd), args],
        )
        .await
        .expect("invoke");
    match r.get("ok") {
        Some(v) => Ok(v.clone()),
        None => Err(r["err"].clone()),
    }
}

/// Every command the app's IPC knows (its own, the core's, its plugins'),
/// from the ACL manifest the app's build script generates from
/// `build.rs` and the plugins, and the commands the window's capability
/// (`capabilities/main.json`) allows. Read from the files, so a command
/// added to either is tested without editing this test.
fn known_and_allowed_commands() -> (BTreeSet<String>, BTreeSet<String>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let read = |rel: &str| -> Value {
        let text = std::fs::read_to_string(dir.join(rel))
            .unwrap_or_else(|e| panic!("{rel} (written by the app's build): {e}"));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
    };
    let manifests = read("gen/schemas/acl-manifests.json");
    let capability = read("capabilities/main.json");
    // `__app-acl__` holds the app's own commands, invoked by bare name;
    // a plugin's (`core:window`, `notification`) are `plugin:NAME|cmd`.
    let invoke_name = |plugin: &str, cmd: &str| {
        if plugin == "__app-acl__" {
            cmd.to_string()
        } else {
            format!("plugin:{}|{cmd}", plugin.trim_start_matches("core:"))
        }
    };
    let commands_of = |plugin: &str, permission: &Value| -> Vec<String> {
        permission["commands"]["allow"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|cmd| invoke_name(plugin, cmd))
            .collect()
    };
    let mut known = BTreeSet::new();
    for (plugin, manifest) in manifests.as_object().expect("manifests by plugin") {
        for permission in manifest["permissions"].as_object().into_iter().flatten() {
            known.extend(commands_of(plugin, permission.1));
        }
    }
    let mut allowed = BTreeSet::new();
    for id in capability["permissions"].as_array().expect("permissions") {
        let id = id.as_str().expect("a permission named, without scope");
        // `allow-x` is the app's own; `plugin:allow-x` a plugin's. A
        // permission set or default would need resolving: refused here so
        // that adding one makes this test say so.
        let (plugin, name) = id.rsplit_once(':').unwrap_or(("__app-acl__", id));
        let permission = &manifests[plugin]["permissions"][name];
        assert!(
            permission.is_object(),
            "{id} is not a single permission of {plugin}: extend this test to resolve it"
        );
        allowed.extend(commands_of(plugin, permission));
    }
    (known, allowed)
}

/// Calls every command in `cmds` with no arguments at once; the error of
/// each (None if it succeeded).
async fn invoke_all(c: &Client, cmds: &BTreeSet<String>) -> Vec<(String, Option<String>)> {
    let r = c
        .execute_async(
            "const [cmds, done] = arguments;
             Promise.all(cmds.map(cmd => window.__TAURI__.core.invoke(cmd, {}).then(
                 () => [cmd, null],
                 e => [cmd, typeof e === 'string' ? e : JSON.stringify(e)])))
               .then(done);",
            vec![json!(cmds.iter().collect::<Vec<_>>())],
        )
        .await
        .expect("invoke all");
    serde_json::from_value(r).expect("results")
}

async fn text(c: &Client, css: &str) -> String {
    match c.find(Locator::Css(css)).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn field(key: &str) -> String {
    format!("[name=\"{key}\"]")
}

async fn field_value(c: &Client, key: &str) -> String {
    match c.find(Locator::Css(&field(key))).await {
        Ok(e) => e.prop("value").await.ok().flatten().unwrap_or_default(),
        Err(_) => String::new(),
    }
}

async fn type_into(c: &Client, key: &str, value: &str) {
    let e = c.find(Locator::Css(&field(key))).await.expect("field");
    e.clear().await.expect("clear");
    e.send_keys(value).await.expect("type");
}

/// The message shown next to a settings field.
async fn field_error(c: &Client, key: &str) -> String {
    let script = format!(
        "const f = document.querySelector('{}'); return f ? f.parentElement.querySelector('.error').textContent : '';",
        field(key).replace('\'', "\\'")
    );
    js(c, &script)
        .await
        .as_str()
        .unwrap_or_default()
        .to_string()
}

async fn open_settings(c: &Client, key: &str, expect: &str) {
    click(c, "#tab-settings").await;
    eventually("the settings form to be filled", SOON, || async {
        (field_value(c, key).await == expect).then_some(())
    })
    .await;
}

/// Clicks Apply and waits for the outcome message.
async fn apply(c: &Client) -> String {
    c.execute(
        "document.getElementById('settings-message').textContent = ''",
        vec![],
    )
    .await
    .expect("reset message");
    click(c, "#apply-btn").await;
    eventually("the apply outcome", SOON, || async {
        let m = text(c, "#settings-message").await;
        (!m.is_empty() && m != "Applying…").then_some(m)
    })
    .await
}

async fn engine_state(c: &Client) -> String {
    js(
        c,
        "return document.getElementById('status-pill').dataset.state",
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

#[test]
fn charts_appear_and_follow_the_engine() {
    with_app(Fixture::new(1000, 5000), |c, fx| async move {
        // The Capture card names the file source the engine runs (as root
        // here fanotify, else inotify), as `status` does.
        let want = eventually("the engine's file source", START, || async {
            fx.status()?.coverage.file_source
        })
        .await;
        let files = eventually("the file source in the Capture card", SOON, || async {
            let t = text(&c, "#cov-files").await;
            t.starts_with(&want).then_some(t)
        })
        .await;
        assert!(!files.contains("not collected"), "{files}");
        let titles = eventually("six charts", START, || async {
            let v = js(
                &c,
                "return [...document.querySelectorAll('#charts .chart')].map(e => e.dataset.chart || '')",
            )
            .await;
            let t: Vec<String> = serde_json::from_value(v).ok()?;
            (t.len() == 6 && t.iter().all(|s| !s.is_empty())).then_some(t)
        })
        .await;
        for want in [
            "Memory",
            "CPU",
            "Event rate",
            "Compression",
            "per event",
            "Storage used",
        ] {
            assert!(
                titles.iter().any(|t| t.contains(want)),
                "{want} in {titles:?}"
            );
        }
        let values = || async {
            js(
                &c,
                "return [...document.querySelectorAll('#charts .chart')].map(e => e.dataset.value)",
            )
            .await
        };
        let first = eventually("a memory value", SOON, || async {
            let v = values().await;
            v[0].as_str()
                .is_some_and(|m| m.ends_with("MB"))
                .then_some(v)
        })
        .await;
        eventually("current values to change", SOON, || async {
            (values().await != first).then_some(())
        })
        .await;

        // Each tick replaces the SVG of a chart: one per card, however many ticks.
        for _ in 0..3 {
            let plots = js(
                &c,
                "return [...document.querySelectorAll('#charts .chart')].map(p => p.childElementCount + ':' + p.querySelectorAll('svg').length)",
            )
            .await;
            assert_eq!(plots, json!(["1:1", "1:1", "1:1", "1:1", "1:1", "1:1"]));
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }

        click(&c, "[data-window=\"3600\"]").await;
        assert_eq!(
            js(&c, "return document.querySelector('[data-window=\"3600\"]').getAttribute('aria-checked')").await,
            json!("true")
        );
        let status = text(&c, "#status-text").await;
        assert!(status.starts_with("Running ·"), "{status}");
        assert_eq!(js(&c, "return window.edrCspViolations").await, json!([]));

        // The CSP is enforced: an injected inline script does not run.
        js(
            &c,
            "const s = document.createElement('script'); s.textContent = 'window.edrInlineRan = true'; document.head.append(s);",
        )
        .await;
        let blocked = eventually("the CSP to report the inline script", SOON, || async {
            let v = js(&c, "return window.edrCspViolations").await;
            v.as_array().filter(|a| !a.is_empty()).cloned()
        })
        .await;
        assert!(
            blocked[0]
                .as_str()
                .unwrap_or_default()
                .starts_with("script-src"),
            "{blocked:?}"
        );
        assert_eq!(
            js(&c, "return window.edrInlineRan === undefined").await,
            json!(true)
        );

        // Commands check their input.
        let bad = json!({ "request": {
            "windowSecs": 61, "charts": true, "chartWidth": 400, "chartHeight": 200,
            "events": { "limit": 10, "kind": null, "text": "" } } });
        let e = invoke(&c, "dashboard", bad).await.expect_err("refused");
        assert!(
            e["message"]
                .as_str()
                .unwrap_or_default()
                .contains("window_secs"),
            "{e}"
        );
        // Each command that takes input checks it (`get_settings` and
        // `open_data_folder` take none): a wrong value is refused by the
        // command with its message, a wrong type or a missing argument by
        // the IPC, before the command runs.
        let message = |e: &Value| e["message"].as_str().unwrap_or_default().to_string();
        let e = invoke(&c, "preset_settings", json!({ "name": "no-such-preset" }))
            .await
            .expect_err("unknown preset refused");
        assert!(message(&e).contains("unknown preset"), "{e}");
        let e = invoke(
            &c,
            "apply_settings",
            json!({ "form": { "no.such.field": "1" } }),
        )
        .await
        .expect_err("unknown field refused");
        assert!(
            message(&e).contains("`no.such.field` is not a settings field"),
            "{e}"
        );
        let e = invoke(&c, "set_paused", json!({ "paused": "yes" }))
            .await
            .expect_err("a paused that is not a boolean refused");
        assert!(e.to_string().contains("invalid args `paused`"), "{e}");
        let e = invoke(&c, "set_autostart", json!({ "enabled": "yes" }))
            .await
            .expect_err("an enabled that is not a boolean refused");
        assert!(e.to_string().contains("invalid args `enabled`"), "{e}");
        let e = invoke(
            &c,
            "add_exception",
            json!({ "exception": { "ruleId": "no such; rule", "executable": null } }),
        )
        .await
        .expect_err("a malformed rule id refused");
        assert!(message(&e).contains("ruleId must be"), "{e}");
        let e = invoke(
            &c,
            "add_exception",
            json!({ "exception": { "ruleId": "r1", "executable": "relative" } }),
        )
        .await
        .expect_err("a relative program path refused");
        assert!(message(&e).contains("absolute path"), "{e}");
        let e = invoke(
            &c,
            "remove_exception",
            json!({ "exception": { "ruleId": "r1", "executable": null, "commandLineContains": null } }),
        )
        .await
        .expect_err("removing what is not there refused");
        assert!(message(&e).contains("no such exception"), "{e}");
        for cmd in [
            "dashboard",
            "preset_settings",
            "apply_settings",
            "set_paused",
            "set_autostart",
            "add_exception",
            "remove_exception",
        ] {
            let e = invoke(&c, cmd, json!({})).await.expect_err(cmd);
            assert!(e.to_string().contains("invalid args"), "{cmd}: {e}");
        }
        let autostart = fx.home().join(".config/autostart/edr-agent-app.desktop");
        assert!(
            !autostart.exists(),
            "a refused set_autostart wrote {}",
            autostart.display()
        );
        assert_eq!(
            engine_state(&c).await,
            "running",
            "a refused set_paused paused the engine"
        );

        // The window may call the app's own commands and nothing else the
        // IPC knows: every other command, core or plugin, is refused by
        // the capability.
        let (known, allowed) = known_and_allowed_commands();
        let own: BTreeSet<String> = known
            .iter()
            .filter(|c| !c.starts_with("plugin:"))
            .cloned()
            .collect();
        assert_eq!(
            allowed, own,
            "the capability allows other than the app's own commands"
        );
        let others: BTreeSet<String> = known.difference(&allowed).cloned().collect();
        assert!(others.len() > 100, "too few known commands: {others:?}");
        for (cmd, err) in invoke_all(&c, &others).await {
            let err = err.unwrap_or_else(|| panic!("{cmd} ran: the capability does not refuse it"));
            assert!(
                err.contains("not allowed"),
                "{cmd} failed, but not by the capability: {err}"
            );
        }
        eprintln!(
            "capability: {} commands allowed ({allowed:?}), {} others refused",
            allowed.len(),
            others.len()
        );

        // The window holds only its own commands: plugins the app embeds
        // (notifications) and the core's file-system-like APIs are not
        // granted to it.
        for (cmd, args) in [
            (
                "plugin:notification|notify",
                json!({ "options": { "title": "x" } }),
            ),
            ("plugin:notification|request_permission", json!({})),
            ("plugin:path|resolve_directory", json!({ "directory": 1 })),
            (
                "plugin:webview|create_webview_window",
                json!({ "options": { "label": "evil" } }),
            ),
        ] {
            let e = invoke(&c, cmd, args).await.expect_err(cmd);
            assert!(
                e.to_string().contains("not allowed"),
                "{cmd} was not refused by the capability: {e}"
            );
        }
    });
}

#[test]
fn batch_size_set_in_settings_shapes_new_batches_and_the_file() {
    with_app(Fixture::new(1000, 60_000), |c, fx| async move {
        // A world-readable config before: the app's save must make it
        // private, not keep the mode it found.
        std::fs::set_permissions(&fx.config, std::fs::Permissions::from_mode(0o644))
            .expect("chmod config");
        let inode_before =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&fx.config).expect("config"));
        open_settings(&c, "agent.max_events_per_batch", "1000").await;
        type_into(&c, "agent.max_events_per_batch", "7").await;
        assert_eq!(apply(&c).await, "Applied and saved.");
        let applied = Timestamp::now();

        let on_disk = Config::from_file(&fx.config).expect("config file loads");
        assert_eq!(on_disk.agent.max_events_per_batch, 7);
        assert!(config_text(&fx).contains("max_events_per_batch: 7"));
        // Written private and whole: mode 0600, a new file (a temporary
        // renamed over the old one, never rewritten in place), and no
        // temporary left.
        let meta = std::fs::metadata(&fx.config).expect("config");
        let mode = meta.permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "config mode {mode:o}");
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&meta),
            inode_before,
            "the config was rewritten in place"
        );
        let config_dir = fx.config.parent().expect("config dir");
        let leftovers: Vec<_> = std::fs::read_dir(config_dir)
            .expect("config dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporaries left: {leftovers:?}");

        eventually("the watch", SOON, || async { fx.watching().then_some(()) }).await;
        create_files(&fx.watch, "a", 40);
        let sizes = eventually("three batches since the change", START, || async {
            let b = batches_since(&fx, applied);
            (b.len() >= 3).then_some(b)
        })
        .await;
        assert!(sizes.iter().all(|&n| n == 7), "batch sizes {sizes:?}");
    });
}

#[test]
fn invalid_values_show_the_engines_message_and_change_nothing() {
    with_app(Fixture::new(5, 60_000), |c, fx| async move {
        open_settings(&c, "agent.max_events_per_batch", "5").await;
        let before = config_text(&fx);
        type_into(&c, "agent.max_events_per_batch", "0").await;
        type_into(&c, "agent.collection_interval_ms", "soon").await;
        let outcome = apply(&c).await;
        assert!(outcome.contains("nothing was changed"), "{outcome}");
        assert_eq!(
            field_error(&c, "agent.max_events_per_batch").await,
            "0 is not allowed: an integer from 1 to 100000"
        );
        assert_eq!(
            field_error(&c, "agent.collection_interval_ms").await,
            "“soon” is not a whole number."
        );
        assert_eq!(field_error(&c, "storage.retention_days").await, "");
        let refused_at = Timestamp::now();

        assert_eq!(config_text(&fx), before, "the config file was written");
        let running = invoke(&c, "get_settings", json!({}))
            .await
            .expect("settings");
        assert_eq!(running["agent.max_events_per_batch"], json!("5"));
        assert_eq!(running["agent.collection_interval_ms"], json!("60000"));

        eventually("the watch", SOON, || async { fx.watching().then_some(()) }).await;
        create_files(&fx.watch, "b", 30);
        let sizes = eventually("two batches since the refusal", START, || async {
            let b = batches_since(&fx, refused_at);
            (b.len() >= 2).then_some(b)
        })
        .await;
        assert!(sizes.iter().all(|&n| n == 5), "batch sizes {sizes:?}");
        assert_eq!(config_text(&fx), before);
    });
}

#[test]
fn pause_stops_file_events_and_resume_restarts_them() {
    with_app(Fixture::new(1000, 2000), |c, fx| async move {
        eventually("the engine to run", START, || async {
            (engine_state(&c).await == "running").then_some(())
        })
        .await;
        let _activity = FileActivity::start(&fx.watch);
        eventually("file events", SOON, || async {
            (fx.file_events() > 0).then_some(())
        })
        .await;

        click(&c, "#pause-btn").await;
        eventually("the window to say paused", SOON, || async {
            (engine_state(&c).await == "paused" && text(&c, "#pause-btn").await == "Resume")
                .then_some(())
        })
        .await;
        let watcher = Arc::clone(&fx);
        tokio::task::spawn_blocking(move || {
            assert_file_events_stay(&watcher, Duration::from_secs(3))
        })
        .await
        .expect("paused check");

        let paused_at = fx.file_events();
        click(&c, "#pause-btn").await;
        eventually("the window to say running", SOON, || async {
            (engine_state(&c).await == "running" && text(&c, "#pause-btn").await == "Pause")
                .then_some(())
        })
        .await;
        eventually("file events after resume", SOON, || async {
            (fx.file_events() > paused_at).then_some(())
        })
        .await;
    });
}

#[test]
fn retention_and_presets_in_settings() {
    with_app(Fixture::new(1000, 5000), |c, fx| async move {
        open_settings(&c, "storage.retention_days", "30").await;
        // Ranges and presets are drawn from the engine's key table.
        let hint = js(
            &c,
            "return document.querySelector('[name=\"storage.retention_days\"]').parentElement.querySelector('.hint').textContent.replace(/\\s/g, '')",
        )
        .await;
        assert_eq!(hint, json!("1–3650"));
        let presets = js(
            &c,
            "return [...document.querySelectorAll('#preset option')].map((o) => o.value)",
        )
        .await;
        assert_eq!(presets, json!(edr_config::preset_names()));
        type_into(&c, "storage.retention_days", "12").await;
        assert_eq!(apply(&c).await, "Applied and saved.");
        let on_disk = Config::from_file(&fx.config).expect("config file loads");
        assert_eq!(on_disk.storage.retention_days, 12);
        assert!(config_text(&fx).contains("retention_days: 12"));
        eventually("the engine to keep 12 days", SOON, || async {
            fx.status()
                .filter(|s| s.storage.retention_days == 12)
                .map(|_| ())
        })
        .await;

        // A preset fills the form over the running settings; nothing applies.
        c.find(Locator::Css("#preset"))
            .await
            .expect("preset picker")
            .select_by_value("low-storage")
            .await
            .expect("select");
        click(&c, "#preset-btn").await;
        eventually("the preset in the form", SOON, || async {
            (field_value(&c, "storage.retention_days").await == "7").then_some(())
        })
        .await;
        assert_eq!(
            field_value(&c, "collectors.file_monitor.watch_paths").await,
            fx.watch.display().to_string()
        );
        assert!(config_text(&fx).contains("retention_days: 12"));
    });
}

#[test]
fn a_config_the_engine_refuses_is_shown_in_the_window() {
    let fx = Fixture::with(|data, _| {
        format!("agent:\n  max_events_per_batch: 0\nstorage:\n  local_storage:\n    data_dir: \"{data}\"\n")
    });
    with_app(fx, |c, fx| async move {
        eventually("the failure banner", START, || async {
            let b = text(&c, "#engine-banner").await;
            (!b.is_empty()).then_some(b)
        })
        .await;
        let banner = text(&c, "#engine-banner").await;
        assert!(banner.contains("The engine did not start"), "{banner}");
        assert!(banner.contains("agent.max_events_per_batch"), "{banner}");
        assert!(
            banner.contains(&fx.config.display().to_string()),
            "{banner}"
        );
        assert_eq!(engine_state(&c).await, "failed");
        assert_eq!(
            js(&c, "return document.getElementById('pause-btn').disabled").await,
            json!(true)
        );
        click(&c, "#tab-settings").await;
        let e = invoke(&c, "get_settings", json!({}))
            .await
            .expect_err("no engine");
        assert_eq!(e["message"], json!("Engine failed to start"));
    });
}

#[test]
fn an_alert_shows_in_the_banner_with_value_and_threshold() {
    // Any app is above 1 MB: the memory alert is raised at the first sample
    // (and notified, which under Xvfb has no daemon to go to).
    let fx = Fixture::with(|data, watch| {
        format!(
            "collectors:\n  file_monitor:\n    watch_paths: [\"{watch}\"]\n\
             storage:\n  local_storage:\n    data_dir: \"{data}\"\n\
             alerts:\n  max_memory_mb: 1\n"
        )
    });
    with_app(fx, |c, _fx| async move {
        let alert = eventually("the memory alert", START, || async {
            let v = js(
                &c,
                "const li = document.querySelector('#alerts-list li[data-kind=\"memory\"]');
                 return li && !document.getElementById('alerts-banner').classList.contains('hidden') ? li.textContent : null",
            )
            .await;
            v.as_str().map(String::from)
        })
        .await;
        assert!(alert.contains("agent memory"), "{alert}");
        assert!(alert.contains("threshold 1 MB"), "{alert}");
        assert!(alert.contains("value "), "{alert}");
        // Still there a few ticks later: the failed notification changed nothing.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(engine_state(&c).await, "running");
        let still = js(
            &c,
            "return document.querySelectorAll('#alerts-list li[data-kind=\"memory\"]').length",
        )
        .await;
        assert_eq!(still, json!(1), "one memory alert, however many ticks");
    });
}

/// The id of the rule [`run_base64_to_shell`] trips.
const BASE64_RULE: &str = "19bc17cb-cd87-4d05-9ed0-e1e2297bdfb7";

/// The Alerts view's rows for `rule` as (pid text, row text).
async fn alert_rows(c: &Client, rule: &str) -> Vec<String> {
    let v = js(
        c,
        &format!(
            "return [...document.querySelectorAll('#alert-items li[data-rule=\"{rule}\"]')].map(li => li.textContent)"
        ),
    )
    .await;
    serde_json::from_value(v).unwrap_or_default()
}

fn dashboard_request(since: u64) -> Value {
    json!({ "request": {
        "windowSecs": 60, "charts": false, "chartWidth": 400, "chartHeight": 200,
        "events": { "limit": 1, "kind": null, "text": "" }, "alertsSince": since } })
}

/// The number of the newest detection alert (asking for those after the
/// largest number JavaScript holds exactly: none).
async fn last_seq(c: &Client) -> u64 {
    let d = invoke(c, "dashboard", dashboard_request(9_007_199_254_740_991))
        .await
        .expect("dashboard");
    d["detections"]["lastSeq"].as_u64().expect("lastSeq")
}

/// The detection alerts numbered above `since`, as the dashboard sends them.
async fn detections_since(c: &Client, since: u64) -> Vec<Value> {
    let d = invoke(c, "dashboard", dashboard_request(since))
        .await
        .expect("dashboard");
    d["detections"]["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The engine's (alerts raised, matches excepted), from its status file.
fn detection(fx: &Fixture) -> Option<(u64, u64)> {
    fx.status()
        .map(|s| (s.detection.alerts_raised, s.detection.alerts_excepted))
}

#[test]
fn an_alert_from_a_real_process_is_shown_and_allow_this_program_stops_the_next() {
    // No suppression window: without the exception the second run would
    // be a new alert, so its absence is the exception's doing (and the
    // engine's excepted counter says so).
    let fx = Fixture::with(|data, watch| {
        format!(
            "collectors:\n  process_monitor:\n    calculate_hashes: false\n  \
             file_monitor:\n    watch_paths: [\"{watch}\"]\n    calculate_hashes: false\n\
             storage:\n  local_storage:\n    data_dir: \"{data}\"\n\
             detection:\n  suppress_window_ms: 0\n"
        )
    });
    with_app(fx, |c, fx| async move {
        let notes = tokio::task::spawn_blocking(Notifications::start)
            .await
            .expect("the notification daemon");
        eventually("the rules and the process collector", START, || async {
            let s = fx.status()?;
            (s.detection.rules_loaded > 0 && s.coverage.process_source.is_some()).then_some(())
        })
        .await;
        // The process collector needs a moment after it reports its source.
        tokio::time::sleep(Duration::from_secs(1)).await;
        click(&c, "#tab-alerts").await;

        let first_pid = tokio::task::spawn_blocking(|| run_base64_to_shell("edr-e2e-first"))
            .await
            .expect("first run");
        let needle = format!("(pid {first_pid})");
        let row = eventually("the alert in the Alerts view", SOON, || async {
            alert_rows(&c, BASE64_RULE)
                .await
                .into_iter()
                .find(|r| r.contains(&needle))
        })
        .await;
        assert!(row.contains(BASE64_TITLE), "{row}");
        assert!(row.contains("bash"), "the program: {row}");
        assert!(row.to_lowercase().contains("high"), "the severity: {row}");
        // And the desktop was told: a notification naming the rule, its
        // severity and the program, sent to the daemon.
        let (title, body) = eventually("the alert's desktop notification", SOON, || async {
            notes
                .seen()
                .into_iter()
                .find(|(_, body)| body.contains(&needle))
        })
        .await;
        assert!(
            title.contains(BASE64_TITLE) && title.contains("high"),
            "{title}"
        );
        assert!(body.contains("/bash"), "the program: {body}");
        // The view's counters line: how much the stage checked, at what cost.
        let stats = text(&c, "#detection-stats").await;
        assert!(
            stats.contains("events checked")
                && stats.contains("µs each")
                && stats.contains("raised"),
            "{stats}"
        );

        // The detail: the tree down to our shell, its command line, the
        // matched fields and the rule's own words.
        // The shell's own row: its pipeline's subshells (forks of it, with
        // its command line) may raise theirs too.
        click(
            &c,
            &format!("#alert-items li[data-rule=\"{BASE64_RULE}\"][data-pid=\"{first_pid}\"]"),
        )
        .await;
        let detail = eventually("the detail", SOON, || async {
            let t = text(&c, "#alert-detail-body").await;
            t.contains("edr-e2e-first").then_some(t)
        })
        .await;
        assert!(detail.contains(BASE64_TITLE), "{detail}");
        assert!(detail.contains("process.command_line"), "{detail}");
        assert!(detail.contains("edr-agent project"), "the author: {detail}");
        assert!(
            detail.contains("https://attack.mitre.org/techniques/T1140/"),
            "{detail}"
        );
        assert!(
            detail.contains("Installers that ship"),
            "false positives: {detail}"
        );
        let tree = js(
            &c,
            "return [...document.querySelectorAll('#ad-tree .node')].map(n => n.querySelector('.pid').textContent)",
        )
        .await;
        let tree: Vec<String> = serde_json::from_value(tree).expect("tree");
        assert_eq!(
            tree.last().map(String::as_str),
            Some(format!("pid {first_pid}").as_str()),
            "the shell is the last node of {tree:?}"
        );
        let me = format!("pid {}", std::process::id());
        assert!(tree.contains(&me), "the test ({me}) started it: {tree:?}");
        if let Some(path) = std::env::var_os("EDR_E2E_SCREENSHOT") {
            // WebKit paints a moment after the DOM changes.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let shot = Command::new("import")
                .args(["-window", "root"])
                .arg(&path)
                .status();
            eprintln!("screenshot {}: {shot:?}", Path::new(&path).display());
        }
        let executable = js(
            &c,
            "return document.getElementById('allow-btn').disabled ? null : document.querySelector('#ad-tree .node.self .prog').textContent",
        )
        .await;
        let executable = executable.as_str().expect("the shell's path").to_string();
        assert!(executable.ends_with("/bash"), "{executable}");

        click(&c, "#allow-btn").await;
        let said = eventually("the outcome", SOON, || async {
            let m = text(&c, "#alert-message").await;
            (!m.is_empty() && m != "Saving…").then_some(m)
        })
        .await;
        assert!(said.starts_with("Allowed"), "{said}");
        let on_disk = Config::from_file(&fx.config).expect("config file loads");
        assert_eq!(
            on_disk.detection.exceptions,
            [edr_config::DetectionException {
                rule_id: Some(BASE64_RULE.into()),
                executable: Some(executable.clone()),
                command_line_contains: None,
            }]
        );
        let mode = std::fs::metadata(&fx.config)
            .expect("config")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "config mode {mode:o}");
        assert!(
            config_text(&fx).contains("suppress_window_ms: 0"),
            "the file was edited, not replaced"
        );

        // The same behaviour again: the engine sees the match and turns it
        // away (its excepted counter grows), and no row appears.
        let before = detection(&fx).expect("status");
        let seq_before = last_seq(&c).await;
        let second_pid = tokio::task::spawn_blocking(|| run_base64_to_shell("edr-e2e-second"))
            .await
            .expect("second run");
        // The engine saw the second shell start (its event is in the
        // recent events) and turned a match away. Other programs on the
        // machine may match the rule meanwhile: only this run's shell, by
        // its tag, is ours to judge.
        let second = format!("pid {second_pid}");
        eventually("the second shell among the recent events", SOON, || async {
            let d = invoke(
                &c,
                "dashboard",
                json!({ "request": {
                "windowSecs": 60, "charts": false, "chartWidth": 400, "chartHeight": 200,
                "events": { "limit": 50, "kind": "process", "text": "edr-e2e-second" } } }),
            )
            .await
            .ok()?;
            d["events"].as_array().filter(|e| !e.is_empty()).map(|_| ())
        })
        .await;
        let after = eventually("the engine to except the match", SOON, || async {
            detection(&fx).filter(|d| d.1 > before.1)
        })
        .await;
        // Well past the time the first alert took to show.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let rows = alert_rows(&c, BASE64_RULE).await;
        assert!(
            !rows.iter().any(|r| r.contains(&format!("({second})"))),
            "an alert for the allowed program: {rows:?}"
        );
        let new_alerts = detections_since(&c, seq_before).await;
        let ours: Vec<&Value> = new_alerts
            .iter()
            .filter(|a| {
                a["ruleId"] == BASE64_RULE
                    && a["commandLine"]
                        .as_str()
                        .is_some_and(|c| c.contains("edr-e2e-second"))
            })
            .collect();
        assert!(
            ours.is_empty(),
            "raised despite the exception: {ours:?} (counters {after:?})"
        );
        let others: Vec<(&Value, &Value)> = new_alerts
            .iter()
            .map(|a| (&a["ruleName"], &a["program"]))
            .collect();
        eprintln!("other alerts meanwhile: {others:?}");

        // Undo from Settings: the exception goes from the list and the
        // file, and the behaviour alerts again.
        click(&c, "#tab-settings").await;
        eventually("the settings to load", SOON, || async {
            c.find(Locator::Css("#settings-form.ready"))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        let remove = format!("#exceptions-list li[data-rule=\"{BASE64_RULE}\"] .remove-exception");
        eventually("the exception in Settings", SOON, || async {
            c.find(Locator::Css(&remove)).await.ok().map(|_| ())
        })
        .await;
        click(&c, &remove).await;
        eventually("the list to empty", SOON, || async {
            (text(&c, "#exceptions-message").await == "Removed and saved."
                && c.find(Locator::Css("#exceptions-list li")).await.is_err())
            .then_some(())
        })
        .await;
        let on_disk = Config::from_file(&fx.config).expect("config file loads");
        assert!(
            on_disk.detection.exceptions.is_empty(),
            "{:?}",
            on_disk.detection.exceptions
        );
        click(&c, "#tab-alerts").await;
        let third_pid = tokio::task::spawn_blocking(|| run_base64_to_shell("edr-e2e-third"))
            .await
            .expect("third run");
        let needle = format!("(pid {third_pid})");
        eventually(
            "an alert again once the exception is gone",
            SOON,
            || async {
                alert_rows(&c, BASE64_RULE)
                    .await
                    .into_iter()
                    .find(|r| r.contains(&needle))
            },
        )
        .await;
    });
}

#[test]
fn launch_at_login_writes_and_removes_the_autostart_entry_naming_the_app() {
    let fx = Fixture::new(1000, 2000);
    with_app(fx, |c, fx| async move {
        let entry = fx.home().join(".config/autostart/edr-agent-app.desktop");
        open_settings(&c, "agent.max_events_per_batch", "1000").await;
        let checked = "return document.getElementById('autostart').checked";
        assert_eq!(js(&c, checked).await, json!(false), "off by default");
        assert!(!entry.exists());

        click(&c, "#autostart").await;
        // The plugin writes the entry in place: a read can catch it half
        // written (seen once: an empty file).
        let text = eventually("the autostart entry, whole", SOON, || async {
            std::fs::read_to_string(&entry)
                .ok()
                .filter(|t| t.contains("Exec=") && t.contains("Type=Application"))
        })
        .await;
        let exec = text
            .lines()
            .find_map(|l| l.strip_prefix("Exec="))
            .unwrap_or_else(|| panic!("no Exec= in {text}"));
        let (program, args) = exec.split_once(' ').unwrap_or((exec, ""));
        assert_eq!(args.trim(), "--minimized", "{text}");
        assert_eq!(
            std::fs::canonicalize(program).expect("the named program exists"),
            std::fs::canonicalize(APP).expect("app"),
            "the entry names this app: {text}"
        );
        assert!(text.contains("Type=Application"), "{text}");
        eventually("the box checked", SOON, || async {
            (js(&c, checked).await == json!(true)).then_some(())
        })
        .await;

        click(&c, "#autostart").await;
        eventually("the entry removed", SOON, || async {
            (!entry.exists()).then_some(())
        })
        .await;
        eventually("the box unchecked", SOON, || async {
            (js(&c, checked).await == json!(false)).then_some(())
        })
        .await;
    });
}
