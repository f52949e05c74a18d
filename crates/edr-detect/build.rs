//! Embeds the repository's `rules/{linux,macos,common}/**/*.yml` in the
//! binary: generates a table of (relative path, `include_str!`) pairs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yml" | "yaml")
        ) {
            out.push(path);
        }
    }
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest.join("../../rules");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    for sub in ["linux", "macos", "common"] {
        let dir = root.join(sub);
        // Cargo rescans a directory named here whenever a file under it
        // changes, so added and edited rules rebuild the table.
        println!("cargo:rerun-if-changed={}", dir.display());
        walk(&dir, &mut files);
    }
    files.sort();
    let mut code = String::from("/// Built-in rules: (path under `rules/`, YAML text).\npub static BUILTIN_RULES: &[(&str, &str)] = &[\n");
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .expect("under rules/")
            .to_string_lossy()
            .replace('\\', "/");
        let abs = f.canonicalize().expect("rule file exists");
        writeln!(
            code,
            "    ({rel:?}, include_str!({:?})),",
            abs.display().to_string()
        )
        .expect("write to string");
    }
    code.push_str("];\n");
    let out =
        PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("builtin_rules.rs");
    std::fs::write(out, code).expect("write generated table");
}
