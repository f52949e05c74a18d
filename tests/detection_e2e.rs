//! End to end, as root: the engine with detection on and the process
//! collector on the kernel's process events; a real one-liner that decodes
//! base64 into a shell raises the built-in rule and two of SigmaHQ's
//! (loaded from the shared reference), each stored as an alert with the
//! rule id, author and the process that did it.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::root::require_root;
use common::{read_events, start_engine, test_config, wait_for_async, wait_process_source};
use edr_config::ProcessSource;
use serde_json::Value;

struct Expect {
    /// `None`: any built-in rule (the built-in set may change).
    rule_id: Option<&'static str>,
    author: &'static str,
    license: &'static str,
    /// The program the alert is about.
    executable_ends: &'static str,
}

const EXPECTED: &[Expect] = &[
    // Built-in: the shell running the decode pipeline.
    Expect {
        rule_id: None,
        author: "edr-agent project",
        license: edr_detect::PROJECT_LICENSE,
        executable_ends: "sh",
    },
    // SigmaHQ "Linux Base64 Encoded Pipe to Shell".
    Expect {
        rule_id: Some("ba592c6d-6888-43c3-b8c6-689b8fe47337"),
        author: "pH-T (Nextron Systems)",
        license: edr_detect::SIGMAHQ_LICENSE,
        executable_ends: "sh",
    },
    // SigmaHQ "Decode Base64 Encoded Text", on the base64 process.
    Expect {
        rule_id: Some("e2072cab-8c9a-459b-b63c-40ae79e27031"),
        author: "Daniil Yugoslavskiy",
        license: edr_detect::SIGMAHQ_LICENSE,
        executable_ends: "/base64",
    },
];

impl Expect {
    fn raised_by(&self, a: &Value) -> bool {
        let exe = a["process"]["executable"].as_str().unwrap_or_default();
        match self.rule_id {
            Some(id) => a["rule"]["id"] == id,
            None => {
                a["rule"]["ruleset"] == edr_detect::BUILTIN && exe.ends_with(self.executable_ends)
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base64_decode_into_a_shell_raises_its_alerts() {
    require_root("detection end to end (kernel process events)");
    let sigma = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/sigma/rules/linux/process_creation");
    assert!(
        sigma.is_dir(),
        "SigmaHQ reference rules not found at {}: the shared folder must sit at ../shared \
         relative to the repository root",
        sigma.display()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.collectors.file_monitor.enabled = false;
    c.collectors.process_monitor.enabled = true;
    c.collectors.process_monitor.source = ProcessSource::Event;
    c.agent.collection_interval_ms = 200;
    c.detection.enabled = true;
    c.detection.rule_paths = vec![sigma.display().to_string()];
    let data = c.data_dir();
    let engine = start_engine(c);
    wait_process_source(&engine).await;
    let status = engine.snapshot().detection;
    assert!(status.enabled);
    assert!(status.rules_loaded > 100, "{status:?}");

    // The sleeps keep each process alive long enough for the collector to
    // read its executable and arguments after the exec event.
    let run = tokio::task::spawn_blocking(|| {
        Command::new("sh")
            .arg("-c")
            .arg("(sleep 0.3; echo ZWNobyBoaQ==) | base64 -d | sh ; sleep 0.3")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("sh runs")
    })
    .await
    .expect("runner");
    assert!(run.success());

    let found = wait_for_async(Duration::from_secs(15), || {
        let alerts: Vec<Value> = read_events(&data)
            .into_iter()
            .filter(|e| e["event"]["kind"] == "alert")
            .collect();
        EXPECTED
            .iter()
            .all(|x| alerts.iter().any(|a| x.raised_by(a)))
            .then_some(alerts)
    })
    .await;
    let snapshot = engine.snapshot().detection;
    engine.shutdown().await;
    let alerts = found.unwrap_or_else(|| {
        let got: Vec<Value> = read_events(&data)
            .into_iter()
            .filter(|e| e["event"]["kind"] == "alert")
            .map(|a| a["rule"]["name"].clone())
            .collect();
        panic!("not every expected alert was stored; got {got:?}; detection {snapshot:?}")
    });
    for x in EXPECTED {
        let a = alerts.iter().find(|a| x.raised_by(a)).expect("found above");
        let authors = a["rule"]["author"].to_string();
        assert!(
            authors.contains(x.author),
            "{:?}: author {authors}",
            x.rule_id
        );
        assert_eq!(a["rule"]["license"], x.license, "{:?}", x.rule_id);
        let exe = a["process"]["executable"].as_str().unwrap_or_default();
        assert!(exe.ends_with(x.executable_ends), "{:?}: {exe}", x.rule_id);
        assert!(a["process"]["pid"].as_u64().is_some_and(|p| p > 0));
        assert!(a["process"]["command_line"]
            .as_str()
            .is_some_and(|c| c.contains("base64")));
        assert!(a["event"]["severity"].as_u64().is_some());
        assert_eq!(a["event"]["category"][0], "process");
        assert!(a["edr"]["alert"]["matched_fields"].is_object());
    }
    assert!(snapshot.alerts_raised >= 3, "{snapshot:?}");
    // The metrics history (flushed at shutdown) has the detection totals
    // of the last second's sample.
    let rows = edr_metrics::read_history(&data, edr_model::Timestamp(0));
    let last = rows
        .iter()
        .rev()
        .find_map(|r| r.detection)
        .unwrap_or_else(|| {
            panic!(
                "no history row with detection totals in {} rows",
                rows.len()
            )
        });
    assert!(
        last.events_evaluated > 0 && last.alerts_raised >= 3,
        "{last:?}"
    );
    // The shell's alert names who started it: this test process.
    let sh_alert = alerts
        .iter()
        .find(|a| EXPECTED[0].raised_by(a))
        .expect("found above");
    assert_eq!(
        sh_alert["edr"]["alert"]["ancestors"][0]["pid"],
        std::process::id(),
        "{sh_alert}"
    );

    // What an operator sees: the alerts table, NDJSON, and the status.
    let bin = env!("CARGO_BIN_EXE_edr-agent");
    let table = Command::new(bin)
        .args(["alerts", "--data-dir"])
        .arg(&data)
        .output()
        .expect("edr-agent alerts runs");
    assert!(table.status.success());
    let text = String::from_utf8_lossy(&table.stdout);
    for name in [
        "Linux Base64 Encoded Pipe to Shell",
        "Decode Base64 Encoded Text",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    assert!(
        text.contains("medium") && text.contains("/base64"),
        "{text}"
    );
    let json = Command::new(bin)
        .args(["alerts", "--json", "--since", "1h", "--data-dir"])
        .arg(&data)
        .output()
        .expect("edr-agent alerts --json runs");
    assert!(json.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&json.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    assert_eq!(lines.len(), alerts.len());
    assert!(lines.iter().all(|a| a["event"]["kind"] == "alert"));
    let status = Command::new(bin)
        .args(["status", "--data-dir"])
        .arg(&data)
        .output()
        .expect("edr-agent status runs");
    let text = String::from_utf8_lossy(&status.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("detection:"))
        .unwrap_or_else(|| panic!("no detection line in:\n{text}"));
    assert!(
        line.contains("rules loaded") && line.contains("alerts raised"),
        "{line}"
    );
}

/// A file written under a watched directory raises a file_event rule (the
/// test's own, loaded from `detection.rule_paths`) with the file's path:
/// the real file collector's events are routed to file rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_write_raises_a_file_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("mkdir");
    let os = if cfg!(target_os = "macos") {
        "macos"
    } else {
        "linux"
    };
    std::fs::write(
        rules.join("canary.yml"),
        format!(
            "title: Canary Script Dropped\nid: 7a0c1f4e-3d2b-4c5a-9e8f-0a1b2c3d4e5f\nauthor: tester\n\
             logsource:\n  product: {os}\n  category: file_event\ndetection:\n  sel:\n    \
             TargetFilename|endswith: /dropped-canary.sh\n  condition: sel\nlevel: high\n"
        ),
    )
    .expect("write rule");
    let mut c = test_config(dir.path());
    c.collectors.process_monitor.enabled = false;
    c.agent.collection_interval_ms = 200;
    c.detection.enabled = true;
    c.detection.builtin_rules = false;
    c.detection.rule_paths = vec![rules.display().to_string()];
    let data = c.data_dir();
    let watched = common::watched(dir.path());
    let engine = start_engine(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let target = watched.join("dropped-canary.sh");
    std::fs::write(&target, b"#!/bin/sh\n").expect("write file");
    let alert = wait_for_async(Duration::from_secs(15), || {
        read_events(&data)
            .into_iter()
            .find(|e| e["event"]["kind"] == "alert")
    })
    .await;
    engine.shutdown().await;
    let a = alert.expect("the file rule raised an alert");
    assert_eq!(a["rule"]["id"], "7a0c1f4e-3d2b-4c5a-9e8f-0a1b2c3d4e5f");
    assert_eq!(a["rule"]["author"][0], "tester");
    assert_eq!(a["event"]["category"][0], "file");
    assert_eq!(a["file"]["path"], target.display().to_string());
    assert_eq!(
        a["edr"]["alert"]["matched_fields"]["file.path"],
        target.display().to_string()
    );
}

/// An outbound TCP connection the network collector sees raises a
/// network_connection rule on its destination port and `Initiated`
/// (mapped to `network.direction`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_connection_raises_a_network_rule() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("mkdir");
    std::fs::write(
        rules.join("port.yml"),
        format!(
            "title: Connection To Test Port\nid: 3b9e2d1c-8a7f-4e6d-b5c4-a3b2c1d0e9f8\nauthor: tester\n\
             logsource:\n  category: network_connection\ndetection:\n  sel:\n    \
             Initiated: 'true'\n    DestinationPort: {port}\n  condition: sel\nlevel: medium\n"
        ),
    )
    .expect("write rule");
    let mut c = test_config(dir.path());
    c.collectors.file_monitor.enabled = false;
    c.collectors.network_monitor.enabled = true;
    c.collectors.network_monitor.scan_interval_ms = 100;
    c.agent.collection_interval_ms = 200;
    c.detection.enabled = true;
    c.detection.builtin_rules = false;
    c.detection.rule_paths = vec![rules.display().to_string()];
    let data = c.data_dir();
    let engine = start_engine(c);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).expect("read");
    let alert = wait_for_async(Duration::from_secs(15), || {
        read_events(&data)
            .into_iter()
            .find(|e| e["event"]["kind"] == "alert")
    })
    .await;
    drop((client, server, listener));
    engine.shutdown().await;
    let a = alert.expect("the network rule raised an alert");
    assert_eq!(a["rule"]["id"], "3b9e2d1c-8a7f-4e6d-b5c4-a3b2c1d0e9f8");
    assert_eq!(a["event"]["category"][0], "network");
    assert_eq!(a["destination"]["port"], port);
    assert_eq!(a["network"]["direction"], "outbound");
    // Both sides of the connection are seen; only the initiating one
    // matches.
    let alerts = read_events(&data)
        .into_iter()
        .filter(|e| e["event"]["kind"] == "alert")
        .count();
    assert_eq!(alerts, 1);
}
