//! `watch_paths` as prefix filters: a change is reported when its path is a
//! configured path or lies beneath one (components, not bytes: `/etc/cron`
//! does not cover `/etc/cron.d`).

use std::path::{Path, PathBuf};

use edr_config::expand_home;

/// The configured paths, made absolute.
#[derive(Debug, Clone, Default)]
pub(super) struct Prefixes {
    paths: Vec<PathBuf>,
}

impl Prefixes {
    /// `~` expanded and relative paths made absolute; nothing is resolved
    /// (inotify reports paths as configured).
    pub(super) fn as_configured(configured: &[String]) -> Prefixes {
        Prefixes {
            paths: configured.iter().map(|p| absolute(p)).collect(),
        }
    }

    /// Like [`as_configured`](Self::as_configured), with the part of each
    /// path that exists resolved (links followed): fanotify reports the
    /// kernel's path of a file, which has no links in it (as does
    /// Endpoint Security's: `/etc` is `/private/etc` on macOS). A missing
    /// tail is kept as written so its creation can be matched.
    #[cfg(any(target_os = "linux", target_os = "macos"))]
    pub(super) fn resolved(configured: &[String]) -> Prefixes {
        Prefixes {
            paths: configured.iter().map(|p| resolve(&absolute(p))).collect(),
        }
    }

    pub(super) fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The path is a configured one or beneath one.
    pub(super) fn covers(&self, path: &Path) -> bool {
        self.paths.iter().any(|p| path.starts_with(p))
    }
}

fn absolute(configured: &str) -> PathBuf {
    let p = expand_home(configured);
    std::path::absolute(&p).unwrap_or(p)
}

/// The longest existing ancestor canonicalized, the rest appended.
#[cfg(any(target_os = "linux", target_os = "macos"))]
fn resolve(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            let mut out = real;
            out.extend(rest.iter().rev());
            return out;
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The nearest existing directory at or above `path` (the directory
/// itself, a file's parent, or a missing path's nearest ancestor).
#[cfg(target_os = "linux")]
pub(super) fn anchor_dir(path: &Path) -> Option<PathBuf> {
    let mut p = Some(path);
    while let Some(cur) = p {
        if std::fs::metadata(cur).is_ok_and(|m| m.is_dir()) {
            return Some(cur.to_path_buf());
        }
        p = cur.parent();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_components() {
        let p = Prefixes::as_configured(&["/etc/cron.d".into(), "/root/.bashrc".into()]);
        assert!(p.covers(Path::new("/etc/cron.d")));
        assert!(p.covers(Path::new("/etc/cron.d/job")));
        assert!(p.covers(Path::new("/root/.bashrc")));
        assert!(!p.covers(Path::new("/root/.bashrc.swp")));
        assert!(!p.covers(Path::new("/etc/cron.daily/x")));
        assert!(!p.covers(Path::new("/etc")));
    }

    #[test]
    fn a_missing_tail_is_kept_under_the_resolved_parent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        std::fs::create_dir(&real).expect("mkdir");
        std::os::unix::fs::symlink(&real, dir.path().join("link")).expect("symlink");
        let configured = dir.path().join("link/not/yet").display().to_string();
        let p = Prefixes::resolved(&[configured]);
        let canon = std::fs::canonicalize(&real).expect("canon");
        assert_eq!(p.paths(), [canon.join("not/yet")]);
        assert_eq!(anchor_dir(&p.paths()[0]), Some(canon));
    }
}
