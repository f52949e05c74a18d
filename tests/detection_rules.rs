//! The rule sets: every built-in rule loads and matches its test events
//! (and not its near misses); every SigmaHQ rule in the shared reference
//! loads or is reported as skipped; broken rule files are reported with
//! file, title and reason while the rest load; hostile events neither
//! crash nor stall evaluation.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use edr_config::RuleLevel;
use edr_detect::{LoadOptions, RuleSet, BUILTIN_RULES};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn builtin() -> RuleSet {
    RuleSet::load(&LoadOptions {
        builtin: true,
        paths: Vec::new(),
        min_level: RuleLevel::Informational,
    })
    .expect("loads")
}

#[derive(serde::Deserialize)]
struct RuleTest {
    rule: String,
    #[serde(rename = "match")]
    matches: Vec<Value>,
    #[serde(default)]
    near_miss: Vec<Value>,
}

fn test_files() -> Vec<(String, RuleTest)> {
    let root = repo().join("rules/tests");
    let files = edr_detect::rules::rule_files(&root).expect("rules/tests exists");
    files
        .into_iter()
        .map(|f| {
            let text = std::fs::read_to_string(&f).expect("read test file");
            let t: RuleTest =
                serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let rel = f
                .strip_prefix(&root)
                .expect("under rules/tests")
                .to_string_lossy()
                .into_owned();
            (rel, t)
        })
        .collect()
}

#[test]
fn every_builtin_rule_loads_and_has_a_test_file() {
    let set = builtin();
    assert!(
        set.skipped().is_empty(),
        "built-in rules skipped: {:#?}",
        set.skipped()
    );
    assert!(!set.rules().is_empty());
    let tests: BTreeSet<String> = test_files().into_iter().map(|(rel, _)| rel).collect();
    for (file, _) in BUILTIN_RULES {
        assert!(
            tests.contains(*file),
            "rules/{file} has no test file rules/tests/{file}"
        );
    }
    for rule in set.rules() {
        for field in [&rule.description, &rule.license] {
            assert!(
                field.is_some(),
                "{}: missing description or license",
                rule.file
            );
        }
        assert!(!rule.author.is_empty(), "{}: no author", rule.file);
        assert!(
            !rule.tactics.is_empty(),
            "{}: no ATT&CK tactic tag",
            rule.file
        );
    }
}

#[test]
fn every_builtin_rule_matches_its_events_and_not_its_near_misses() {
    let set = builtin();
    let mut problems = Vec::new();
    let files = test_files();
    assert!(!files.is_empty());
    for (rel, t) in &files {
        if set.rule(&t.rule).is_none() {
            problems.push(format!("{rel}: rule {} does not exist", t.rule));
            continue;
        }
        let expected_file = set
            .rule(&t.rule)
            .map(|r| r.file.clone())
            .unwrap_or_default();
        if &expected_file != rel {
            problems.push(format!("{rel}: tests rule {} of {expected_file}", t.rule));
        }
        assert!(!t.matches.is_empty(), "{rel}: no event that must match");
        for (i, e) in t.matches.iter().enumerate() {
            let hits = set.evaluate_json(e);
            if !hits.iter().any(|m| m.rule.id == t.rule) {
                problems.push(format!(
                    "{rel}: match[{i}] does not raise the rule (raised {:?})",
                    hits.iter().map(|m| &m.rule.id).collect::<Vec<_>>()
                ));
            }
        }
        for (i, e) in t.near_miss.iter().enumerate() {
            if set.evaluate_json(e).iter().any(|m| m.rule.id == t.rule) {
                problems.push(format!("{rel}: near_miss[{i}] raises the rule"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The shared reference folder: `../shared` beside the repository in CI,
/// the same on a developer machine.
fn sigma_reference() -> PathBuf {
    let p = repo().join("../shared/reference/sigma");
    assert!(
        p.join("rules").is_dir(),
        "SigmaHQ reference rules not found at {}: the shared folder must sit at ../shared \
         relative to the repository root",
        p.display()
    );
    p
}

#[test]
fn every_sigmahq_reference_rule_loads_or_is_reported() {
    let root = sigma_reference();
    let files = edr_detect::rules::rule_files(&root).expect("list");
    assert_eq!(files.len(), 208, "the reference holds 208 rules");
    let set = RuleSet::check(std::slice::from_ref(&root)).expect("loads");
    println!(
        "loaded {}, skipped {}",
        set.rules().len(),
        set.skipped().len()
    );
    for s in set.skipped() {
        println!(
            "skipped {} ({}): {}",
            s.file,
            s.title.as_deref().unwrap_or("?"),
            s.reason
        );
    }
    assert_eq!(
        set.rules().len() + set.skipped().len(),
        208,
        "every rule is loaded or skipped"
    );
    assert!(set.skipped().iter().all(|s| !s.reason.is_empty()));
    assert_eq!(set.rules().len(), EXPECTED_SIGMAHQ_LOADED);
    assert!(set
        .rules()
        .iter()
        .all(|r| r.license.as_deref() == Some(edr_detect::SIGMAHQ_LICENSE)));
    assert!(set.rules().iter().all(|r| !r.author.is_empty()));
}

/// Counted on the reference checkout (commit 8eaafff) with rsigma 0.23.0.
const EXPECTED_SIGMAHQ_LOADED: usize = 208;

#[test]
fn broken_rule_files_are_reported_and_the_rest_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = "title: Good Rule\nid: 11111111-2222-3333-4444-555555555555\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n  sel:\n    Image|endswith: /whoami\n  condition: sel\nlevel: low\n";
    std::fs::write(dir.path().join("good.yml"), good).expect("write");
    std::fs::write(
        dir.path().join("bad_yaml.yml"),
        "title: Bad Yaml\ndetection: [unclosed\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("bad_modifier.yml"),
        "title: Bad Modifier\nlogsource:\n  category: process_creation\ndetection:\n  sel:\n    Image|frobnicate: x\n  condition: sel\n",
    )
    .expect("write");
    std::fs::write(
        dir.path().join("no_detection.yaml"),
        "title: No Detection\nlogsource:\n  category: process_creation\nlevel: high\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a rule").expect("write");
    let set = RuleSet::check(&[dir.path().to_path_buf()]).expect("loads");
    assert_eq!(set.rules().len(), 1);
    assert_eq!(set.rules()[0].title, "Good Rule");
    let mut skipped: Vec<(String, Option<String>)> = set
        .skipped()
        .iter()
        .map(|s| {
            assert!(!s.reason.is_empty());
            (
                Path::new(&s.file)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                s.title.clone(),
            )
        })
        .collect();
    skipped.sort();
    assert_eq!(
        skipped,
        [
            (
                "bad_modifier.yml".to_string(),
                Some("Bad Modifier".to_string())
            ),
            ("bad_yaml.yml".to_string(), Some("Bad Yaml".to_string())),
            (
                "no_detection.yaml".to_string(),
                Some("No Detection".to_string())
            ),
        ],
        "{:#?}",
        set.skipped()
    );
}

#[test]
fn hostile_events_neither_crash_nor_stall() {
    let opts = LoadOptions {
        builtin: true,
        paths: vec![sigma_reference().display().to_string()],
        min_level: RuleLevel::Informational,
    };
    let set = RuleSet::load(&opts).expect("loads");
    let huge = "A".repeat(1 << 20) + " base64 -d | sh";
    let lossy = String::from_utf8_lossy(b"sh -c \xff\xfe\xfd base64 -d | sh").into_owned();
    let mut nested = serde_json::json!("leaf");
    for _ in 0..100 {
        nested = serde_json::json!({ "x": nested });
    }
    let events = [
        serde_json::json!({"event": {"kind": "event", "category": ["process"], "type": ["start"]},
            "host": {"os": {"type": "linux"}},
            "process": {"executable": "/bin/sh", "command_line": huge, "args": [huge]}}),
        serde_json::json!({"event": {"kind": "event", "category": ["process"], "type": ["start"]},
            "host": {"os": {"type": "linux"}},
            "process": {"executable": "/bin/sh", "command_line": lossy}}),
        serde_json::json!({"event": {"kind": "event", "category": ["process"], "type": ["start"]},
            "host": {"os": {"type": "linux"}}, "process": {"executable": "/bin/sh", "deep": nested}}),
        serde_json::json!({"event": {"category": "process", "type": 7}, "process": [1, 2, 3]}),
        serde_json::json!([]),
        serde_json::json!(null),
    ];
    let t0 = Instant::now();
    for e in &events {
        let _ = set.evaluate_json(e);
    }
    // A few milliseconds of work on a quiet machine; a debug build on a
    // loaded 2-core CI runner is far slower, hence the wide margin. A stall
    // (regex backtracking, unbounded recursion) would take minutes.
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
    // The huge command line still matches what it contains (SigmaHQ's
    // "Linux Base64 Encoded Pipe to Shell").
    let hits = set.evaluate_json(&events[0]);
    assert!(
        hits.iter()
            .any(|m| m.rule.id == "ba592c6d-6888-43c3-b8c6-689b8fe47337"),
        "the base64 rule did not match the huge command line"
    );
}

/// A Sigma filter document names fields as rules do (Sysmon-style), and
/// our field mapping applies to it as to the rules: it excludes what it
/// says from the rule it names, and only from that rule.
#[test]
fn a_sigma_filter_excludes_what_it_names_from_its_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rule = |id: &str, title: &str| {
        format!(
            "title: {title}\nid: {id}\nlogsource:\n  product: linux\n  category: process_creation\ndetection:\n  sel:\n    Image|endswith: /whoami\n  condition: sel\nlevel: low\n"
        )
    };
    let filtered = "aaaaaaaa-0000-4000-8000-000000000001";
    let other = "aaaaaaaa-0000-4000-8000-000000000002";
    std::fs::write(dir.path().join("a.yml"), rule(filtered, "Filtered")).expect("write");
    std::fs::write(dir.path().join("b.yml"), rule(other, "Other")).expect("write");
    std::fs::write(
        dir.path().join("filter.yml"),
        format!(
            "title: Not the build account\nlogsource:\n  product: linux\n  category: process_creation\nfilter:\n  rules:\n    - {filtered}\n  selection:\n    User: builder\n    CommandLine|contains: --verbose\n  condition: not selection\n"
        ),
    )
    .expect("write");
    let set = RuleSet::check(&[dir.path().to_path_buf()]).expect("loads");
    assert!(set.skipped().is_empty(), "{:?}", set.skipped());
    let event = |user: &str, args: &str| {
        serde_json::json!({
            "@timestamp": "2026-12-02T10:00:00Z",
            "event": {"kind": "event", "category": ["process"], "type": ["start"]},
            "host": {"os": {"type": "linux"}},
            "process": {"executable": "/usr/bin/whoami", "command_line": format!("whoami {args}")},
            "user": {"name": user}
        })
    };
    let raised = |e: &Value| {
        let mut ids: Vec<String> = set
            .evaluate_json(e)
            .iter()
            .map(|m| m.rule.id.clone())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(raised(&event("alice", "--verbose")), [filtered, other]);
    assert_eq!(raised(&event("builder", "")), [filtered, other]);
    assert_eq!(raised(&event("builder", "--verbose")), [other]);
}
