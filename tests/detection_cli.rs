//! `edr-agent rules`: list, check and test, on real files.

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edr-agent"))
}

const GOOD: &str = "title: Touch Canary\nid: 6c0e1c1e-0000-4000-8000-00000000c0de\nauthor: tester\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n  sel:\n    CommandLine|contains: canary-file\n  condition: sel\nlevel: medium\n";

#[test]
fn rules_check_passes_good_files_and_names_what_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.yml");
    std::fs::write(&good, GOOD).expect("write");
    let ok = agent()
        .args(["rules", "check"])
        .arg(&good)
        .output()
        .expect("runs");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("1 rules load, 0 do not"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "title: Unknown Modifier\nlogsource:\n  category: process_creation\ndetection:\n  sel:\n    Image|sideways: x\n  condition: sel\n",
    )
    .expect("write");
    let out = agent()
        .args(["rules", "check"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SKIPPED"), "{text}");
    assert!(
        text.contains("bad.yaml") && text.contains("(Unknown Modifier)"),
        "{text}"
    );
    assert!(text.contains("1 rules load, 1 do not"), "{text}");
}

#[test]
fn rules_list_shows_builtin_and_configured_rules_and_the_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).expect("mkdir");
    std::fs::write(rules.join("good.yml"), GOOD).expect("write");
    std::fs::write(
        rules.join("broken.yml"),
        "title: Broken One\ndetection: [\n",
    )
    .expect("write");
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "detection:\n  rule_paths: [{:?}]\n",
            rules.display().to_string()
        ),
    )
    .expect("write");
    let out = agent()
        .args(["rules", "list", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("builtin:linux/process_creation/"), "{text}");
    assert!(text.contains("Touch Canary"), "{text}");
    assert!(
        text.contains("SKIPPED") && text.contains("(Broken One)"),
        "{text}"
    );
    assert!(text.contains("1 skipped"), "{text}");
}

#[test]
fn rules_test_runs_over_ndjson_including_hostile_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rule = dir.path().join("canary.yml");
    std::fs::write(&rule, GOOD).expect("write");
    let events = dir.path().join("events.ndjson");
    let mut f = std::fs::File::create(&events).expect("create");
    let hit = serde_json::json!({"@timestamp": "2026-12-01T10:00:00.000Z",
        "event": {"kind": "event", "category": ["process"], "type": ["start"]},
        "host": {"os": {"type": "linux"}},
        "process": {"executable": "/usr/bin/touch", "command_line": "touch canary-file"}});
    writeln!(f, "{hit}").expect("write");
    // Not a process start: no match.
    let end = serde_json::json!({"event": {"kind": "event", "category": ["process"], "type": ["end"]},
        "host": {"os": {"type": "linux"}},
        "process": {"executable": "/usr/bin/touch", "command_line": "touch canary-file"}});
    writeln!(f, "{end}").expect("write");
    // A 1 MB command line that matches.
    let huge = serde_json::json!({"event": {"kind": "event", "category": ["process"], "type": ["start"]},
        "host": {"os": {"type": "linux"}},
        "process": {"executable": "/usr/bin/touch",
                    "command_line": format!("{} canary-file", "y".repeat(1 << 20))}});
    writeln!(f, "{huge}").expect("write");
    // Invalid UTF-8 inside a string, read lossily: still an event, matches.
    f.write_all(b"{\"event\":{\"kind\":\"event\",\"category\":[\"process\"],\"type\":[\"start\"]},\"host\":{\"os\":{\"type\":\"linux\"}},\"process\":{\"executable\":\"/bin/x\",\"command_line\":\"\xff\xfe canary-file\"}}\n")
        .expect("write");
    // Deeply nested JSON: rejected by the parser's depth limit, reported.
    writeln!(f, "{}{}", "[".repeat(100_000), "]".repeat(100_000)).expect("write");
    writeln!(f, "not json at all").expect("write");
    drop(f);
    let t0 = Instant::now();
    let out = agent()
        .args(["rules", "test", "--events"])
        .arg(&events)
        .arg("--rules")
        .arg(&rule)
        .output()
        .expect("runs");
    // Milliseconds of work; the margin is for a loaded debug-build CI run.
    assert!(t0.elapsed() < Duration::from_secs(30), "{:?}", t0.elapsed());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let matches = text.lines().filter(|l| l.contains("Touch Canary")).count();
    assert_eq!(matches, 3, "{text}");
    assert!(text.contains("2026-12-01T10:00:00.000Z"), "{text}");
    assert!(
        text.contains("4 events, 3 matches, 2 lines not JSON; 1 rules"),
        "{text}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 5") && err.contains("line 6"), "{err}");
}

#[test]
fn rules_test_without_rules_uses_the_builtin_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.ndjson");
    let e = serde_json::json!({"event": {"kind": "event", "category": ["process"], "type": ["start"]},
        "host": {"os": {"type": "linux"}},
        "process": {"executable": "/usr/bin/dash", "command_line": "sh -c echo aWQK | base64 -d | sh"}});
    std::fs::write(&events, format!("{e}\n")).expect("write");
    let out = agent()
        .args(["rules", "test", "--events"])
        .arg(&events)
        .output()
        .expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    // Whichever built-in rules cover decoding into a shell, one matches.
    assert!(
        text.lines().any(|l| l.ends_with("  /usr/bin/dash")),
        "{text}"
    );
    assert!(
        text.contains("1 events, ") && !text.contains("1 events, 0 matches"),
        "{text}"
    );
}
