//! What detection rules match on besides the process itself: who started
//! it (`process.parent.*`) and where (`process.working_directory`), as the
//! real engine stores them for real processes run by this test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::root::require_root_because;
use common::{read_events, str_field, test_config, wait_for_async};
use edr_config::ProcessSource;
use edr_engine::{EngineHandle, EngineOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// The inventory may hash nothing here, but reads every process.
const INVENTORY_DEADLINE: Duration = Duration::from_secs(60);
const DEADLINE: Duration = Duration::from_secs(30);

fn canonical(p: &Path) -> String {
    std::fs::canonicalize(p)
        .unwrap_or_else(|e| panic!("canonicalize {}: {e}", p.display()))
        .to_string_lossy()
        .into_owned()
}

/// Where `sh` resolves on PATH, as the test runs it.
fn sh_on_path() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("sh"))
        .find(|p| p.exists())
        .expect("sh on PATH")
}

fn pid(e: &Value) -> Option<u64> {
    e["process"]["pid"].as_u64()
}

fn is_start(e: &Value) -> bool {
    e["event"]["category"][0] == "process" && e["event"]["type"][0] == "start"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_name_their_parent_and_working_directory() {
    require_root_because(
        "the process enrichment test",
        "it reads the kernel's process events",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.collectors.process_monitor.enabled = true;
    c.collectors.process_monitor.source = ProcessSource::Event;
    c.collectors.process_monitor.scan_interval_ms = 200;
    c.agent.collection_interval_ms = 200;
    let data = c.data_dir();
    let engine =
        EngineHandle::start(c, EngineOptions::default(), CancellationToken::new()).expect("starts");
    // Anything started after this process's inventory is a start event.
    let me = u64::from(std::process::id());
    let inventoried = wait_for_async(INVENTORY_DEADLINE, || {
        read_events(&data)
            .iter()
            .any(|e| e["event"]["kind"] == "state" && pid(e) == Some(me))
            .then_some(())
    })
    .await;
    assert!(inventoried.is_some(), "no inventory of this process stored");

    // The shell starts in one directory, changes to another and runs a
    // child there; the child's parent is the shell, with a secret in its
    // arguments.
    let start_dir = dir.path().join("start here");
    let then_dir = dir.path().join("then there");
    std::fs::create_dir_all(&start_dir).expect("mkdir");
    std::fs::create_dir_all(&then_dir).expect("mkdir");
    let marker = format!("edr-enrich-{}", std::process::id());
    let sh = sh_on_path();
    let script = r#"cd "$1" && sleep 0.2; exit 0"#;
    let then_arg = then_dir.to_string_lossy().into_owned();
    let status = Command::new(&sh)
        .arg("-c")
        .arg(script)
        .arg(&marker)
        .arg(&then_arg)
        .arg("--password=hunter2")
        .current_dir(&start_dir)
        .status()
        .expect("sh runs");
    assert!(status.success());

    let found = wait_for_async(DEADLINE, || {
        let events = read_events(&data);
        let shell = events
            .iter()
            .find(|e| {
                is_start(e)
                    && e["process"]["args"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == marker.as_str()))
            })?
            .clone();
        let child = events
            .iter()
            .find(|e| {
                is_start(e)
                    && e["process"]["parent"]["pid"] == shell["process"]["pid"]
                    && str_field(e, "process.executable").is_some_and(|x| x.ends_with("/sleep"))
            })?
            .clone();
        Some((shell, child, events))
    })
    .await;
    engine.shutdown().await;
    let (shell, child, events) = found.expect("the shell's and its child's starts stored");

    // The shell: started by this test, in the directory it was given.
    assert_eq!(
        str_field(&shell, "process.working_directory"),
        Some(canonical(&start_dir).as_str()),
        "{shell}"
    );
    assert_eq!(shell["process"]["parent"]["pid"], me);
    let own_exe = std::fs::read_link("/proc/self/exe").expect("own exe");
    assert_eq!(
        str_field(&shell, "process.parent.executable"),
        own_exe.to_str(),
        "{shell}"
    );
    let own_args: Vec<String> = std::env::args().collect();
    assert_eq!(
        str_field(&shell, "process.parent.command_line"),
        Some(edr_model::redact::redact_args(&own_args).join(" ").as_str())
    );

    // The child: in the directory the shell changed to, with the shell as
    // its parent: program, command line (redacted), name and identity.
    assert_eq!(
        str_field(&child, "process.working_directory"),
        Some(canonical(&then_dir).as_str()),
        "{child}"
    );
    assert_eq!(
        str_field(&child, "process.parent.executable"),
        Some(canonical(&sh).as_str()),
        "{child}"
    );
    let shell_line = [
        sh.to_string_lossy().as_ref(),
        "-c",
        script,
        &marker,
        &then_arg,
        "--password=[REDACTED]",
    ]
    .join(" ");
    assert_eq!(
        str_field(&child, "process.parent.command_line"),
        Some(shell_line.as_str()),
        "{child}"
    );
    assert_eq!(
        child["process"]["parent"]["args"], shell["process"]["args"],
        "{child}"
    );
    assert_eq!(child["process"]["parent"]["name"], shell["process"]["name"]);
    assert_eq!(
        child["process"]["parent"]["entity_id"],
        shell["process"]["entity_id"]
    );
    let stored: String = events.iter().map(Value::to_string).collect();
    assert!(!stored.contains("hunter2"), "a secret was stored");
}
