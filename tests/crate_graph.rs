//! The workspace's dependency rules (ARCHITECTURE.md, "Invariants"), read
//! from cargo's own resolution of `Cargo.lock`: no library crate that
//! collects, stores, measures or runs the engine pulls in a GUI, CLI or
//! benchmark crate, and the agent binary builds without GUI libraries.

use std::process::Command;

/// The engine's library crates.
const LIBRARIES: &[&str] = &[
    "edr-model",
    "edr-config",
    "edr-pipeline",
    "edr-collect",
    "edr-store",
    "edr-metrics",
    "edr-detect",
    "edr-engine",
    "edr-ship",
    "edr-api",
    "edr-desktop",
];

/// Crates none of them may depend on, directly or not.
const FORBIDDEN: &[&str] = &[
    "tauri",
    "wry",
    "gtk",
    "webkit2gtk",
    "plotters",
    "clap",
    "anyhow",
    "criterion",
    "edr-bench",
    "edr-charts",
];

/// GUI crates the `edr-agent` binary must not pull in.
const GUI: &[&str] = &["tauri", "wry", "gtk", "webkit2gtk", "tao"];

/// The names of the normal (non-dev, non-build) dependencies of `package`.
fn normal_dependencies(package: &str) -> Vec<String> {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "-p",
            package,
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree -p {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn library_crates_depend_on_no_gui_cli_or_bench_crate() {
    for lib in LIBRARIES {
        let deps = normal_dependencies(lib);
        assert!(deps.iter().any(|d| d == lib), "{lib}: not in its own tree");
        let bad: Vec<&String> = deps
            .iter()
            .filter(|d| FORBIDDEN.contains(&d.as_str()))
            .collect();
        assert!(bad.is_empty(), "{lib} depends on {bad:?}");
    }
}

#[test]
fn the_check_sees_transitive_dependencies() {
    // edr-charts draws with plotters; the app embeds tauri: if these were
    // not found, the checks above could not fail.
    assert!(normal_dependencies("edr-charts")
        .iter()
        .any(|d| d == "plotters"));
    assert!(normal_dependencies("edr-agent-app")
        .iter()
        .any(|d| d == "wry"));
}

#[test]
fn the_agent_binary_builds_without_gui_libraries() {
    let deps = normal_dependencies("edr-agent");
    assert!(deps.iter().any(|d| d == "edr-engine"));
    let bad: Vec<&String> = deps.iter().filter(|d| GUI.contains(&d.as_str())).collect();
    assert!(bad.is_empty(), "edr-agent depends on {bad:?}");
}

/// The light tray exists to keep the web engine out of the menu bar: no
/// GUI toolkit (and no charts) in its tree.
#[test]
fn the_light_tray_builds_without_gui_libraries() {
    let deps = normal_dependencies("edr-tray");
    assert!(deps.iter().any(|d| d == "ksni"));
    let bad: Vec<&String> = deps
        .iter()
        .filter(|d| {
            GUI.contains(&d.as_str()) || d.as_str() == "edr-charts" || d.as_str() == "plotters"
        })
        .collect();
    assert!(bad.is_empty(), "edr-tray depends on {bad:?}");
}
