//! The detection stage on typed events: alert contents, suppression,
//! exceptions, min_level, live reconfiguration and hot reload of rule
//! files. The rules are the tests' own, written to a temporary directory,
//! so the built-in set can change without touching these tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edr_config::{Config, DetectionException, RuleLevel};
use edr_detect::{DetectionShared, DetectionStage};
use edr_model::event::{Action, Event, EventMeta, Origin, ParentProcess, Process, Timestamp, User};
use edr_pipeline::stage::{Item, Stage};

const BASE64_RULE: &str = "5e1d7c0a-1b2c-4d3e-8f4a-5b6c7d8e9f00";
const BASE64_CMD: &str = "sh -c echo ZWNobyBoaQ== | base64 -d | sh";

fn origin() -> Origin {
    let mut o = Origin::detect();
    // The built-in test rule is for Linux; the stage routes by host OS.
    Arc::make_mut(&mut o.host).os.kind = "linux";
    o
}

fn proc_event(o: &Origin, ts: u64, exe: &str, cmd: &str, parent: &str) -> Event {
    let mut e = Event::new(
        o,
        Timestamp(ts),
        EventMeta {
            kind: "event",
            category: &["process"],
            types: &["start"],
            action: Action::ProcessStarted,
            duration: None,
            severity: None,
            risk_score: None,
        },
    );
    e.process = Some(Box::new(Process {
        pid: 4242,
        name: exe.rsplit('/').next().unwrap_or(exe).to_string(),
        executable: Some(exe.to_string()),
        args: cmd.split(' ').map(String::from).collect(),
        command_line: Some(cmd.to_string()),
        entity_id: "e1".into(),
        parent: Some(ParentProcess {
            pid: 1,
            executable: Some(parent.to_string()),
            command_line: Some(parent.to_string()),
            ..ParentProcess::default()
        }),
        user: Some(User {
            id: Some("1000".into()),
            name: Some("alice".into()),
        }),
        ..Process::default()
    }));
    e
}

/// Runs one event through the stage; returns the alerts it emitted.
fn run(stage: &mut DetectionStage, e: &Event, now: Instant) -> Vec<Event> {
    let mut buf = Vec::new();
    let mut item = Item::new(e, &mut buf);
    stage.process(&mut item, now);
    item.take_emitted().into_iter().map(|(_, e)| e).collect()
}

/// A rule in the shape of SigmaHQ's, with all the metadata an alert
/// carries.
fn base64_rule(level: &str) -> String {
    format!(
        "title: Test Base64 Into Shell
id: {BASE64_RULE}
status: test
description: A shell decodes base64 into another shell.
references:
    - https://attack.mitre.org/techniques/T1140/
    - https://example.org/second
author: Test Author, Second Author
date: 2026-11-01
modified: 2026-11-20
tags:
    - attack.stealth
    - attack.execution
    - attack.t1140
    - attack.t1059.004
logsource:
    product: linux
    category: process_creation
detection:
    selection:
        Image|endswith: /dash
        CommandLine|contains|all:
            - 'base64 -d'
            - '| sh'
    condition: selection
falsepositives:
    - Installers
level: {level}
"
    )
}

/// A directory laid out like a SigmaHQ checkout (its rule license file
/// at the top) holding `rules`.
fn rule_dir(rules: &[(&str, String)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("LICENSE.Detection.Rules.md"), "DRL 1.1").expect("write");
    let sub = dir.path().join("rules/linux");
    std::fs::create_dir_all(&sub).expect("mkdir");
    for (name, text) in rules {
        std::fs::write(sub.join(name), text).expect("write rule");
    }
    dir
}

fn base64_dir() -> tempfile::TempDir {
    rule_dir(&[("b64.yml", base64_rule("high"))])
}

/// Detection on with only the rules in `dir`.
fn config(dir: &tempfile::TempDir) -> Config {
    let mut c = Config::default();
    c.detection.enabled = true;
    c.detection.builtin_rules = false;
    c.detection.rule_paths = vec![dir.path().display().to_string()];
    c
}

#[test]
fn an_alert_carries_the_rule_the_threat_and_the_process() {
    let o = origin();
    let shared = DetectionShared::new();
    let dir = base64_dir();
    let mut stage = DetectionStage::new(&config(&dir), Arc::clone(&shared));
    let e = proc_event(&o, 1_000, "/usr/bin/dash", BASE64_CMD, "/usr/bin/bash");
    let alerts = run(&mut stage, &e, Instant::now());
    assert_eq!(alerts.len(), 1);
    let v = serde_json::to_value(&alerts[0]).expect("serializes");
    assert_eq!(v["event"]["kind"], "alert");
    assert_eq!(v["event"]["category"][0], "process");
    assert_eq!(v["event"]["type"][0], "start");
    assert_eq!(v["event"]["severity"], 73);
    assert_eq!(v["event"]["risk_score"], 73.0);
    assert_eq!(v["rule"]["id"], BASE64_RULE);
    assert_eq!(v["rule"]["name"], "Test Base64 Into Shell");
    assert_eq!(
        v["rule"]["author"],
        serde_json::json!(["Test Author", "Second Author"])
    );
    // The rule lies in a SigmaHQ-style checkout.
    assert_eq!(v["rule"]["license"], edr_detect::SIGMAHQ_LICENSE);
    assert_eq!(v["rule"]["ruleset"], dir.path().display().to_string());
    assert_eq!(v["rule"]["version"], "2026-11-20");
    assert_eq!(
        v["rule"]["description"],
        "A shell decodes base64 into another shell."
    );
    assert_eq!(
        v["rule"]["reference"],
        "https://attack.mitre.org/techniques/T1140/"
    );
    assert_eq!(v["threat"]["framework"], "MITRE ATT&CK");
    assert_eq!(
        v["threat"]["tactic"]["name"],
        serde_json::json!(["Stealth", "Execution"])
    );
    assert_eq!(
        v["threat"]["technique"]["id"],
        serde_json::json!(["T1140", "T1059"])
    );
    assert_eq!(v["process"]["executable"], "/usr/bin/dash");
    assert_eq!(v["process"]["command_line"], BASE64_CMD);
    assert_eq!(v["process"]["parent"]["executable"], "/usr/bin/bash");
    assert_eq!(v["user"]["name"], "alice");
    let a = &v["edr"]["alert"];
    assert_eq!(a["level"], "high");
    assert_eq!(a["count"], 1);
    assert_eq!(a["matched_fields"]["process.command_line"], BASE64_CMD);
    assert_eq!(a["matched_fields"]["process.executable"], "/usr/bin/dash");
    assert_eq!(a["falsepositives"], serde_json::json!(["Installers"]));
    assert_eq!(a["references"][1], "https://example.org/second");
    let s = shared.status();
    assert!(s.enabled);
    assert_eq!(s.events_evaluated, 1);
    assert_eq!(s.alerts_raised, 1);
    assert_eq!(s.rules_loaded, 1);
    // The event itself is not an alert: its stored bytes carry none of it.
    let plain = serde_json::to_value(&e).expect("serializes");
    for key in ["rule", "threat", "user"] {
        assert!(plain.get(key).is_none(), "{key} in {plain}");
    }
    assert!(plain["event"].get("severity").is_none());
    assert!(plain["event"].get("risk_score").is_none());
    assert!(plain.get("edr").is_none());
}

#[test]
fn repeats_within_the_window_are_one_alert_with_a_count() {
    let o = origin();
    let shared = DetectionShared::new();
    let dir = base64_dir();
    let mut c = config(&dir);
    c.detection.suppress_window_ms = 60_000;
    let mut stage = DetectionStage::new(&c, Arc::clone(&shared));
    let t0 = Instant::now();
    let mut alerts = Vec::new();
    for i in 0..5u64 {
        let e = proc_event(&o, 1_000 + i, "/usr/bin/dash", BASE64_CMD, "/usr/bin/bash");
        alerts.extend(run(&mut stage, &e, t0 + Duration::from_secs(i)));
    }
    assert_eq!(alerts.len(), 1);
    assert_eq!(shared.status().alerts_suppressed, 4);
    // Another parent is another alert.
    let e = proc_event(&o, 2_000, "/usr/bin/dash", BASE64_CMD, "/usr/sbin/cron");
    assert_eq!(run(&mut stage, &e, t0 + Duration::from_secs(6)).len(), 1);
    // After the window, the next alert stands for itself and the repeats.
    let e = proc_event(&o, 90_000, "/usr/bin/dash", BASE64_CMD, "/usr/bin/bash");
    let after = run(&mut stage, &e, t0 + Duration::from_secs(61));
    assert_eq!(after.len(), 1);
    let v = serde_json::to_value(&after[0]).expect("serializes");
    assert_eq!(v["edr"]["alert"]["count"], 5);
    assert_eq!(
        v["edr"]["alert"]["first_seen"],
        Timestamp(1_001).to_string()
    );
    assert_eq!(
        v["edr"]["alert"]["last_seen"],
        Timestamp(90_000).to_string()
    );
    let s = shared.status();
    assert_eq!((s.alerts_raised, s.alerts_suppressed), (3, 4));
}

#[test]
fn a_zero_window_raises_every_match() {
    let o = origin();
    let dir = base64_dir();
    let mut c = config(&dir);
    c.detection.suppress_window_ms = 0;
    let mut stage = DetectionStage::new(&c, DetectionShared::new());
    let e = proc_event(&o, 1_000, "/usr/bin/dash", BASE64_CMD, "/usr/bin/bash");
    let now = Instant::now();
    assert_eq!(run(&mut stage, &e, now).len(), 1);
    assert_eq!(run(&mut stage, &e, now).len(), 1);
}

#[test]
fn exceptions_silence_what_they_name_and_nothing_else() {
    let o = origin();
    let e = proc_event(&o, 1_000, "/usr/bin/dash", BASE64_CMD, "/usr/bin/bash");
    let cases = [
        (
            DetectionException {
                rule_id: Some(BASE64_RULE.into()),
                ..Default::default()
            },
            0,
        ),
        (
            DetectionException {
                executable: Some("/usr/bin/*".into()),
                ..Default::default()
            },
            0,
        ),
        (
            DetectionException {
                command_line_contains: Some("ZWNobyBoaQ==".into()),
                ..Default::default()
            },
            0,
        ),
        // Every field set must hold.
        (
            DetectionException {
                rule_id: Some(BASE64_RULE.into()),
                executable: Some("/opt/**".into()),
                ..Default::default()
            },
            1,
        ),
        (
            DetectionException {
                rule_id: Some("another-rule".into()),
                ..Default::default()
            },
            1,
        ),
    ];
    for (x, expected) in cases {
        let dir = base64_dir();
        let mut c = config(&dir);
        c.detection.exceptions = vec![x.clone()];
        c.validate().expect("valid");
        let shared = DetectionShared::new();
        let mut stage = DetectionStage::new(&c, Arc::clone(&shared));
        let got = run(&mut stage, &e, Instant::now()).len();
        assert_eq!(got, expected, "{x:?}");
        assert_eq!(
            shared.status().alerts_excepted,
            1 - expected as u64,
            "{x:?}"
        );
    }
}

#[test]
fn rules_below_min_level_are_not_loaded() {
    let o = origin();
    let e = proc_event(&o, 1_000, "/usr/bin/dash", BASE64_CMD, "/usr/bin/bash");
    let critical = base64_rule("critical")
        .replace(BASE64_RULE, "c0000000-0000-4000-8000-000000000001")
        .replace(
            "Image|endswith: /dash",
            "Image|endswith: /nothing-runs-this",
        );
    let low = base64_rule("low").replace(BASE64_RULE, "c0000000-0000-4000-8000-000000000002");
    let dir = rule_dir(&[
        ("high.yml", base64_rule("high")),
        ("critical.yml", critical),
        ("low.yml", low),
    ]);
    let mut c = config(&dir);
    c.detection.min_level = RuleLevel::Critical;
    let shared = DetectionShared::new();
    let mut stage = DetectionStage::new(&c, Arc::clone(&shared));
    assert!(run(&mut stage, &e, Instant::now()).is_empty());
    let s = shared.status();
    assert_eq!((s.rules_loaded, s.rules_below_level), (1, 2), "{s:?}");
    assert!(stage
        .rules()
        .expect("loaded")
        .rules()
        .iter()
        .all(|r| r.level == RuleLevel::Critical));
    // The high rule loads at min_level high, the low one does not.
    c.detection.min_level = RuleLevel::High;
    let mut stage = DetectionStage::new(&c, DetectionShared::new());
    let alerts = run(&mut stage, &e, Instant::now());
    assert_eq!(alerts.len(), 1);
    assert_eq!(
        alerts[0].rule.as_ref().map(|r| r.id.as_str()),
        Some(BASE64_RULE)
    );
    // Both at the default, low.
    c.detection.min_level = RuleLevel::Low;
    let mut stage = DetectionStage::new(&c, DetectionShared::new());
    assert_eq!(run(&mut stage, &e, Instant::now()).len(), 2);
}

/// Feeds `e` every 50 ms until `want` holds for the alerts, for at most
/// `limit`.
fn until(
    stage: &mut DetectionStage,
    e: &Event,
    limit: Duration,
    want: impl Fn(&[Event]) -> bool,
) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if want(&run(stage, e, Instant::now())) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn rule_yaml(id: &str, needle: &str) -> String {
    format!(
        "title: Hot Rule {needle}\nid: {id}\nauthor: tester\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n  sel:\n    CommandLine|contains: {needle}\n  condition: sel\nlevel: medium\n"
    )
}

#[test]
fn rule_files_are_reloaded_when_added_and_edited() {
    let o = origin();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = config(&dir);
    c.detection.suppress_window_ms = 0;
    let shared = DetectionShared::new();
    let mut stage = DetectionStage::with_poll(&c, Arc::clone(&shared), Duration::from_millis(100));
    assert_eq!(shared.status().rules_loaded, 0);
    let first = proc_event(&o, 1, "/usr/bin/touch", "touch canary-one", "/bin/sh");
    let second = proc_event(&o, 2, "/usr/bin/touch", "touch canary-two", "/bin/sh");
    assert!(run(&mut stage, &first, Instant::now()).is_empty());

    // Polls every 100 ms; 10 s leaves room for a loaded CI machine.
    let id = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
    let sub = dir.path().join("nested");
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(sub.join("hot.yml"), rule_yaml(id, "canary-one")).expect("write");
    assert!(
        until(&mut stage, &first, Duration::from_secs(10), |a| a.len()
            == 1),
        "the added rule was not picked up"
    );
    assert_eq!(shared.status().rules_loaded, 1);
    assert!(shared.status().reloads >= 1);

    std::fs::write(sub.join("hot.yml"), rule_yaml(id, "canary-two")).expect("write");
    assert!(
        until(&mut stage, &second, Duration::from_secs(10), |a| a.len()
            == 1),
        "the edited rule was not picked up"
    );
    assert!(run(&mut stage, &first, Instant::now()).is_empty());

    // A broken edit: the rule is reported as skipped, the stage goes on.
    std::fs::write(sub.join("hot.yml"), "title: Broken\ndetection: [\n").expect("write");
    assert!(until(&mut stage, &second, Duration::from_secs(10), |a| a
        .is_empty()));
    let s = shared.status();
    assert_eq!((s.rules_loaded, s.rules_skipped), (0, 1), "{s:?}");
    assert_eq!(s.skipped[0].title.as_deref(), Some("Broken"));
}

#[test]
fn detection_is_switched_and_reconfigured_live() {
    let o = origin();
    let e = proc_event(&o, 1_000, "/usr/bin/dash", BASE64_CMD, "/usr/bin/bash");
    let dir = base64_dir();
    let mut c = config(&dir);
    c.detection.suppress_window_ms = 0;
    let shared = DetectionShared::new();
    let mut stage = DetectionStage::with_poll(&c, Arc::clone(&shared), Duration::from_millis(100));
    assert_eq!(run(&mut stage, &e, Instant::now()).len(), 1);
    c.detection.enabled = false;
    stage.reconfigure(&c);
    assert!(run(&mut stage, &e, Instant::now()).is_empty());
    assert!(!shared.status().enabled);
    c.detection.enabled = true;
    stage.reconfigure(&c);
    assert!(until(&mut stage, &e, Duration::from_secs(10), |a| a.len() == 1));
    // An exception added live applies to the next event.
    c.detection.exceptions = vec![DetectionException {
        rule_id: Some(BASE64_RULE.into()),
        ..Default::default()
    }];
    stage.reconfigure(&c);
    assert!(run(&mut stage, &e, Instant::now()).is_empty());
    // Removing the rule path reloads without its rules.
    c.detection.exceptions.clear();
    c.detection.rule_paths.clear();
    stage.reconfigure(&c);
    assert!(until(&mut stage, &e, Duration::from_secs(10), |a| a
        .is_empty()
        && shared.status().rules_loaded == 0));
}

#[test]
fn hostile_typed_events_neither_crash_nor_stall() {
    let o = origin();
    let dir = base64_dir();
    let mut stage = DetectionStage::new(&config(&dir), DetectionShared::new());
    let huge = format!("{} {BASE64_CMD}", "x".repeat(1 << 20));
    let lossy = String::from_utf8_lossy(b"sh -c \xff\xfe | base64 -d | sh").into_owned();
    let t0 = Instant::now();
    let a = run(
        &mut stage,
        &proc_event(&o, 1, "/bin/dash", &huge, "/bin/bash"),
        Instant::now(),
    );
    assert_eq!(a.len(), 1);
    let b = run(
        &mut stage,
        &proc_event(&o, 2, "/usr/bin/dash", &lossy, "/bin/bash"),
        Instant::now(),
    );
    assert_eq!(b.len(), 1);
    // Milliseconds in a release build; a debug build on a loaded 2-core
    // runner is much slower, hence the wide margin. A stall would not end.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}

#[test]
fn an_alert_names_the_processes_above_the_one_it_is_about() {
    let o = origin();
    let dir = base64_dir();
    let mut stage = DetectionStage::new(&config(&dir), DetectionShared::new());
    let now = Instant::now();
    // sshd (pid 100) started bash (200), which started the shell (4242).
    let mut sshd = proc_event(&o, 1, "/usr/sbin/sshd", "sshd: alice", "/sbin/init");
    let mut bash = proc_event(&o, 2, "/usr/bin/bash", "-bash", "/usr/sbin/sshd");
    let mut sh = proc_event(&o, 3, "/usr/bin/dash", BASE64_CMD, "/usr/bin/bash");
    for (e, pid, ppid, id) in [
        (&mut sshd, 100, 1, "e-sshd"),
        (&mut bash, 200, 100, "e-bash"),
        (&mut sh, 4242, 200, "e-sh"),
    ] {
        let p = e.process.as_mut().expect("process");
        p.pid = pid;
        p.entity_id = id.into();
        p.start = Some(e.timestamp);
        if let Some(parent) = p.parent.as_mut() {
            parent.pid = ppid;
        }
    }
    assert!(run(&mut stage, &sshd, now).is_empty());
    assert!(run(&mut stage, &bash, now).is_empty());
    let alerts = run(&mut stage, &sh, now);
    assert_eq!(alerts.len(), 1);
    let v = serde_json::to_value(&alerts[0]).expect("serializes");
    let chain = &v["edr"]["alert"]["ancestors"];
    assert_eq!(chain[0]["pid"], 200);
    assert_eq!(chain[0]["executable"], "/usr/bin/bash");
    assert_eq!(chain[0]["entity_id"], "e-bash");
    assert_eq!(chain[1]["pid"], 100);
    assert_eq!(chain[1]["command_line"], "sshd: alice");
    assert_eq!(chain.as_array().map(Vec::len), Some(2));
}
