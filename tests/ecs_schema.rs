//! Every field the agent stores is an ECS field of the right type with an
//! allowed value (or lives under our own `edr.*` namespace). Events come
//! from all three collectors running against real activity.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::time::Duration;

use common::{read_events, test_config, wait_for_async, watched};
use edr_engine::{EngineHandle, EngineOptions};
use edr_model::event::{Action, Timestamp};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(serde::Deserialize)]
struct FieldSpec {
    #[serde(rename = "type")]
    kind: String,
    allowed: Option<Vec<String>>,
}

fn ecs_fields() -> BTreeMap<String, FieldSpec> {
    let text = include_str!("data/ecs-fields.json");
    serde_json::from_str(text).expect("ecs-fields.json parses")
}

/// Flattens an event into (dotted path, scalar value) pairs; array
/// elements share their array's path (ECS fields may hold arrays).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, child, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                flatten(prefix, item, out);
            }
        }
        scalar => out.push((prefix.to_string(), scalar.clone())),
    }
}

/// Why `value` does not fit an ECS field of type `kind`, if it does not.
fn type_error(kind: &str, value: &Value) -> Option<String> {
    let ok = match kind {
        "keyword" | "wildcard" | "constant_keyword" | "match_only_text" | "text" => {
            value.is_string()
        }
        "long" | "integer" | "short" | "byte" | "unsigned_long" => value.is_i64() || value.is_u64(),
        "float" | "double" | "scaled_float" | "half_float" => value.is_number(),
        "boolean" => value.is_boolean(),
        "ip" => value.as_str().is_some_and(|s| s.parse::<IpAddr>().is_ok()),
        "date" => value
            .as_str()
            .is_some_and(|s| Timestamp::parse(s).is_some()),
        other => return Some(format!("unexpected ECS type {other} for a scalar")),
    };
    (!ok).then(|| format!("{value} is not a valid {kind}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stored_field_is_valid_ecs() {
    common::root::require_root_because(
        "the ECS check of every collector's fields",
        "as root file events carry the writer's process.* (fanotify)",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = test_config(dir.path());
    c.collectors.process_monitor.enabled = true;
    c.collectors.process_monitor.scan_interval_ms = 200;
    c.collectors.process_monitor.calculate_hashes = true;
    c.collectors.process_monitor.collect_environment = true;
    c.collectors.network_monitor.enabled = true;
    c.collectors.network_monitor.scan_interval_ms = 200;
    c.collectors.file_monitor.calculate_hashes = true;
    c.agent.collection_interval_ms = 200;
    let data = c.data_dir();
    let engine =
        EngineHandle::start(c, EngineOptions::default(), CancellationToken::new()).expect("starts");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A process that starts and ends.
    let status = std::process::Command::new("sleep")
        .arg("0.6")
        .status()
        .expect("sleep runs");
    assert!(status.success());
    // File activity of every kind.
    let w = watched(dir.path());
    std::fs::write(w.join("a.txt"), b"hello").expect("write");
    std::fs::rename(w.join("a.txt"), w.join("b.txt")).expect("rename");
    std::fs::remove_file(w.join("b.txt")).expect("remove");
    // A connection on loopback, held across a scan.
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"ping").expect("write");
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).expect("read");
    // A UDP send to a new peer (recorded by the eBPF source as root).
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let sender = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    sender
        .send_to(b"x", peer.local_addr().expect("addr"))
        .expect("send");
    tokio::time::sleep(Duration::from_millis(600)).await;
    drop((client, server, listener));

    let all_kinds = wait_for_async(Duration::from_secs(15), || {
        let events = read_events(&data);
        let cats: BTreeSet<String> = events
            .iter()
            .filter_map(|e| e["event"]["category"][0].as_str().map(String::from))
            .collect();
        (cats.len() == 3).then_some(())
    })
    .await;
    engine.shutdown().await;
    assert!(
        all_kinds.is_some(),
        "not all three collectors produced events"
    );

    let events = read_events(&data);
    let (mut problems, stored_paths) = problems_of(&events);
    // What detection rules match on is held to the check only if stored.
    for path in [
        "process.working_directory",
        "process.parent.name",
        "process.parent.executable",
        "process.parent.args",
        "process.parent.command_line",
        "network: process.executable",
        // As root the file source is fanotify, which names the writer.
        "file: process.executable",
        "process.user.id",
        "process.command_line",
    ] {
        if !stored_paths.contains(path) {
            problems.insert(format!("{path}: never stored, so never checked"));
        }
    }
    assert!(
        problems.is_empty(),
        "{} events checked; problems:\n{}",
        events.len(),
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// Every field of `events` that is not ECS (outside `edr.*`), of the wrong
/// type or not an allowed value; and the paths stored.
fn problems_of(events: &[Value]) -> (BTreeSet<String>, BTreeSet<String>) {
    let fields = ecs_fields();
    let mut problems = BTreeSet::new();
    let mut stored_paths = BTreeSet::new();
    for e in events {
        let mut flat = Vec::new();
        flatten("", e, &mut flat);
        if e["event"]["category"][0] == "network" && e["process"].get("executable").is_some() {
            stored_paths.insert("network: process.executable".to_string());
        }
        if e["event"]["category"][0] == "file" && e["process"].get("executable").is_some() {
            stored_paths.insert("file: process.executable".to_string());
        }
        for (path, value) in flat {
            stored_paths.insert(path.clone());
            if path == "edr" || path.starts_with("edr.") {
                continue;
            }
            let Some(spec) = fields.get(&path) else {
                problems.insert(format!("{path}: not an ECS field"));
                continue;
            };
            if let Some(err) = type_error(&spec.kind, &value) {
                problems.insert(format!("{path}: {err}"));
            }
            if let (Some(allowed), Some(s)) = (&spec.allowed, value.as_str()) {
                if !allowed.iter().any(|a| a == s) {
                    problems.insert(format!("{path}: {s:?} is not an allowed value"));
                }
            }
        }
        // Every action can be named in `filters.exclude_actions`, and
        // belongs to the event type it is stored under.
        if let Some(action) = e["event"]["action"].as_str() {
            match Action::parse(action) {
                None => {
                    problems.insert(format!(
                        "action {action:?} is missing from edr_model::event::Action"
                    ));
                }
                Some(a) if e["event"]["category"][0] != a.event_type().as_str() => {
                    problems.insert(format!(
                        "action {action:?} stored under category {}",
                        e["event"]["category"]
                    ));
                }
                Some(_) => {}
            }
        }
        for required in ["@timestamp", "event", "host", "agent", "ecs"] {
            if e.get(required).is_none() {
                problems.insert(format!("event without {required}: {e}"));
            }
        }
    }
    (problems, stored_paths)
}

/// Alerts, of each kind of event the rules see, built by the real
/// detection stage from the built-in rules.
#[test]
fn alert_fields_are_valid_ecs() {
    use std::sync::Arc;
    use std::time::Instant;

    use edr_detect::{DetectionShared, DetectionStage};
    use edr_model::event::{
        Endpoint, Event, EventMeta, File, Network, Origin, ParentProcess, Process, User,
    };
    use edr_pipeline::stage::{Item, Stage};

    let mut origin = Origin::detect();
    Arc::make_mut(&mut origin.host).os.kind = "linux";
    let meta =
        |category: &'static [&'static str], types: &'static [&'static str], action| EventMeta {
            kind: "event",
            category,
            types,
            action,
            duration: None,
            severity: None,
            risk_score: None,
        };
    let process = |exe: &str, cmd: &str| Process {
        pid: 77,
        name: exe.rsplit('/').next().unwrap_or_default().to_string(),
        executable: Some(exe.to_string()),
        args: cmd.split(' ').map(String::from).collect(),
        command_line: Some(cmd.to_string()),
        working_directory: Some("/home/alice".into()),
        start: Some(Timestamp::now()),
        entity_id: "0123456789abcdef".into(),
        parent: Some(ParentProcess {
            pid: 1,
            entity_id: Some("fedcba9876543210".into()),
            name: Some("bash".into()),
            executable: Some("/usr/bin/bash".into()),
            args: vec!["bash".into()],
            command_line: Some("bash".into()),
        }),
        user: Some(User {
            id: Some("1000".into()),
            name: Some("alice".into()),
        }),
        ..Process::default()
    };
    let mut p = Event::new(
        &origin,
        Timestamp::now(),
        meta(&["process"], &["start"], Action::ProcessStarted),
    );
    p.process = Some(Box::new(process(
        "/usr/bin/dash",
        "sh -c echo ZWNobyBoaQ== | base64 -d | sh",
    )));
    let mut f = Event::new(
        &origin,
        Timestamp::now(),
        meta(&["file"], &["creation"], Action::FileCreated),
    );
    f.file = Some(Box::new(File {
        path: "/etc/cron.d/updater".into(),
        name: Some("updater".into()),
        directory: Some("/etc/cron.d".into()),
        kind: Some("file"),
        ..File::default()
    }));
    f.process = Some(Box::new(process("/usr/bin/tee", "tee /etc/cron.d/updater")));
    let mut n = Event::new(
        &origin,
        Timestamp::now(),
        meta(
            &["network"],
            &["start", "connection"],
            Action::ConnectionOpened,
        ),
    );
    n.process = Some(Box::new(process("/usr/bin/bash", "bash -i")));
    n.source = Some(Endpoint {
        ip: "192.0.2.10".parse().expect("ip"),
        port: 40_000,
    });
    n.destination = Some(Endpoint {
        ip: "203.0.113.7".parse().expect("ip"),
        port: 4444,
    });
    n.network = Some(Network {
        transport: "tcp",
        kind: "ipv4",
        direction: "outbound",
    });

    let mut config = edr_config::Config::default();
    config.detection.enabled = true;
    let mut stage = DetectionStage::new(&config, DetectionShared::new());
    let mut alerts = Vec::new();
    for e in [&p, &f, &n] {
        let mut buf = Vec::new();
        let mut item = Item::new(e, &mut buf);
        stage.process(&mut item, Instant::now());
        let emitted = item.take_emitted();
        assert!(!emitted.is_empty(), "no built-in rule matched {e:?}");
        for (_, a) in emitted {
            alerts.push(serde_json::to_value(&a).expect("serializes"));
        }
    }
    for a in &alerts {
        assert_eq!(a["event"]["kind"], "alert");
        assert!(a["rule"]["id"].is_string() && a["threat"]["framework"].is_string());
    }
    let (problems, _) = problems_of(&alerts);
    assert!(
        problems.is_empty(),
        "problems:\n{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
}
