//! Setting up the watches and reporting the ones that failed.
//!
//! A path that cannot be watched never stops the collector: it is listed in
//! `coverage.unwatched_paths` with the reason and counted, and the other
//! paths are watched as usual.

use std::io;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use notify::{ErrorKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use crate::{coverage, CollectorContext, UnwatchedPath};
use edr_config::expand_home;

/// Entries kept in `coverage.unwatched_paths`; directories created later
/// can each fail, and the report must stay small.
const MAX_UNWATCHED: usize = 100;
/// A recursive watch fails as a whole when any directory under it vanishes
/// mid-walk; busy trees get a few tries.
const WATCH_ATTEMPTS: usize = 3;

/// Why a path is not watched; the message is the coverage `reason`.
#[derive(Debug, thiserror::Error)]
pub(super) enum WatchError {
    #[error("does not exist")]
    Missing,
    #[error("cannot read {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "inotify watch limit reached: fs.inotify.max_user_watches is exhausted \
         (raise it, e.g. `sysctl fs.inotify.max_user_watches=524288`)"
    )]
    WatchLimit,
    #[error("cannot start the file watcher: {0}")]
    NoWatcher(String),
    #[error("cannot watch: {0}")]
    Other(#[source] notify::Error),
    #[error("{0}")]
    Fanotify(String),
}

impl WatchError {
    fn from_notify(e: notify::Error, root: &Path) -> WatchError {
        let path = e.paths.first().map_or_else(
            || root.to_string_lossy().into_owned(),
            |p| p.to_string_lossy().into_owned(),
        );
        match e.kind {
            ErrorKind::MaxFilesWatch => WatchError::WatchLimit,
            ErrorKind::PathNotFound => WatchError::Missing,
            ErrorKind::Io(source) => match source.raw_os_error() {
                Some(libc::ENOSPC) => WatchError::WatchLimit,
                _ if source.kind() == io::ErrorKind::NotFound => WatchError::Missing,
                _ => WatchError::Unreadable { path, source },
            },
            kind => WatchError::Other(notify::Error {
                kind,
                paths: e.paths,
            }),
        }
    }
}

/// Watches each configured path recursively, recording the outcome in the
/// coverage report as it goes (so `status` shows progress on big trees).
pub(super) fn watch_all<W: Watcher>(
    watcher: &mut W,
    watch_paths: &[String],
    ctx: &CollectorContext,
    stop: &CancellationToken,
) {
    for configured in watch_paths {
        if stop.is_cancelled() {
            return;
        }
        let path = expand_home(configured);
        let started = std::time::Instant::now();
        match watch_one(watcher, &path) {
            Ok(()) => {
                tracing::debug!(
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "watching {}",
                    path.display()
                );
                coverage(ctx)
                    .watched_paths
                    .push(path.to_string_lossy().into_owned());
            }
            Err(e) => record_unwatched(ctx, &path, &e),
        }
    }
}

fn watch_one<W: Watcher>(watcher: &mut W, path: &Path) -> Result<(), WatchError> {
    let mut attempt = 1;
    loop {
        let is_dir = precheck(path)?;
        // A single file is watched through its directory (the worker keeps
        // only its name): editors and installers replace files by renaming
        // over them, which a watch on the file itself would not survive.
        let (target, mode) = match path.parent() {
            Some(parent) if !is_dir => (parent, RecursiveMode::NonRecursive),
            _ => (path, RecursiveMode::Recursive),
        };
        match watcher.watch(target, mode) {
            Ok(()) => return Ok(()),
            Err(e) => {
                // A recursive watch that failed half way keeps the watches it
                // made; give them back (they count against a per-user limit).
                if let Err(unwatch) = watcher.unwatch(target) {
                    tracing::debug!("nothing to unwatch at {}: {unwatch}", path.display());
                }
                let err = WatchError::from_notify(e, path);
                if !matches!(err, WatchError::Missing) || attempt >= WATCH_ATTEMPTS {
                    return Err(err);
                }
                attempt += 1;
            }
        }
    }
}

/// Catches the common failures with a plainer reason than the watcher's.
/// True for a directory.
fn precheck(path: &Path) -> Result<bool, WatchError> {
    let unreadable = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            WatchError::Missing
        } else {
            WatchError::Unreadable {
                path: path.to_string_lossy().into_owned(),
                source,
            }
        }
    };
    let meta = std::fs::metadata(path).map_err(unreadable)?;
    if meta.is_dir() {
        std::fs::read_dir(path).map_err(unreadable)?;
    }
    Ok(meta.is_dir())
}

/// Lists a path as unwatched (once) and counts it.
pub(super) fn record_unwatched(ctx: &CollectorContext, path: &Path, why: &WatchError) {
    let path = path.to_string_lossy().into_owned();
    tracing::warn!("file monitor: not watching {path}: {why}");
    let mut cov = coverage(ctx);
    if cov.unwatched_paths.iter().any(|u| u.path == path) {
        return;
    }
    ctx.counters.unwatched_paths.fetch_add(1, Relaxed);
    if cov.unwatched_paths.len() < MAX_UNWATCHED {
        cov.unwatched_paths.push(UnwatchedPath {
            path,
            reason: why.to_string(),
        });
    }
}

/// Errors the watcher reports while running. The one that matters is the
/// watch limit: new subdirectories then go unwatched, which must show.
pub(super) fn handle_runtime_error(ctx: &CollectorContext, e: notify::Error) {
    let paths = e.paths.clone();
    let root = paths.first().cloned().unwrap_or_default();
    match WatchError::from_notify(e, &root) {
        WatchError::WatchLimit => {
            for path in &paths {
                record_unwatched(ctx, path, &WatchError::WatchLimit);
            }
        }
        other => tracing::warn!("file watcher error: {other}"),
    }
}

/// A watcher that could not be created leaves every path unwatched.
pub(super) fn record_no_watcher(ctx: &CollectorContext, watch_paths: &[String], e: &notify::Error) {
    let why = match &e.kind {
        ErrorKind::Io(io) if io.raw_os_error() == Some(libc::EMFILE) => WatchError::NoWatcher(
            format!("{e} (fs.inotify.max_user_instances may be exhausted)"),
        ),
        _ => WatchError::NoWatcher(e.to_string()),
    };
    for configured in watch_paths {
        record_unwatched(ctx, &expand_home(configured), &why);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_limit_reason_names_the_sysctl() {
        let e = notify::Error::new(ErrorKind::MaxFilesWatch).add_path("/x/y".into());
        let why = WatchError::from_notify(e, Path::new("/x"));
        assert!(matches!(why, WatchError::WatchLimit));
        assert!(why
            .to_string()
            .contains("fs.inotify.max_user_watches is exhausted"));
    }

    #[test]
    fn permission_error_names_the_failing_subdirectory() {
        let io = io::Error::from_raw_os_error(libc::EACCES);
        let e = notify::Error::io(io).add_path("/x/private".into());
        let why = WatchError::from_notify(e, Path::new("/x"));
        assert!(
            why.to_string().starts_with("cannot read /x/private:"),
            "{why}"
        );
    }
}
