//! The docs name files of this repository (a source file, a script, a
//! fixture) for a reader to open or run: each one named must exist. Moving
//! code into crates once left five such names pointing nowhere.

use std::path::Path;

/// Where a path the docs name starts: the repository's top-level folders.
const ROOTS: &[&str] = &[
    ".ci/",
    "benches/",
    "config/",
    "crates/",
    "docs/",
    "fuzz/",
    "icons/",
    "rules/",
    "scripts/",
    "src-tauri/",
    "src/",
    "tests/",
    "ui/",
];

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

/// Every repository path in `text`: a run of path characters that starts
/// with one of [`ROOTS`] where no path character precedes it (so
/// `/usr/src/x` and `target/debug/...` are not taken), without the
/// sentence's trailing punctuation. Globs and placeholders are skipped.
fn named_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in text.char_indices() {
        let before = text[..i].chars().next_back();
        if before.is_some_and(is_path_char) {
            continue;
        }
        let rest = &text[i..];
        if !ROOTS.iter().any(|r| rest.starts_with(r)) {
            continue;
        }
        let end = rest.find(|c: char| !is_path_char(c)).unwrap_or(rest.len());
        let after = rest[end..].chars().next();
        // `src/*.rs`, `tests/<name>.rs`: a pattern, not a file.
        if matches!(after, Some('*' | '<' | '{' | '$')) {
            continue;
        }
        let path = rest[..end].trim_end_matches(['.', '-']);
        out.push(path.to_string());
    }
    out
}

#[test]
fn every_file_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            docs.push(path);
        }
    }
    let mut missing = Vec::new();
    let mut checked = 0;
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("doc readable");
        for (n, line) in text.lines().enumerate() {
            for p in named_paths(line) {
                checked += 1;
                if !root.join(&p).exists() {
                    missing.push(format!(
                        "{}:{}: {p}",
                        doc.strip_prefix(root).unwrap_or(doc).display(),
                        n + 1
                    ));
                }
            }
        }
    }
    // The docs do name files; a scanner that finds none is broken.
    assert!(checked > 50, "only {checked} paths found in {docs:?}");
    assert!(
        missing.is_empty(),
        "files the docs name that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_scanner_takes_repository_paths_only() {
    assert_eq!(
        named_paths("see `crates/edr-pipeline/src/filter.rs`, and scripts/test.sh."),
        ["crates/edr-pipeline/src/filter.rs", "scripts/test.sh"]
    );
    assert!(named_paths("/usr/src/linux and target/debug/edr-agent").is_empty());
    assert!(named_paths("`tests/*.rs` and `src/<name>.rs`").is_empty());
}
