//! The user's config file as a menu bar first writes it.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use edr_config::{Config, ConfigError};

/// A menu bar's first config: the defaults, with a memory alert fitting
/// the app, a process that also holds GTK and WebKit (measured 120-170 MB
/// with the engine using about 6 MB of it), where the headless agent's
/// 200 MB would fire in ordinary use. The light tray writes the same, as
/// the two share the file.
pub fn first_config() -> Config {
    let mut c = Config::default();
    c.alerts.max_memory_mb = 400;
    c
}

/// [`first_config`] as the commented default document, written by the
/// same document editing as `Config::save`.
pub fn first_config_yaml() -> Result<String, ConfigError> {
    first_config().to_commented_yaml()
}

/// Writes [`first_config_yaml`] if there is no file yet, readable only by
/// its owner. `create_new` so a file that appears meanwhile is kept.
pub fn ensure_config_file(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let text = first_config_yaml().map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    };
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    tracing::info!(path = %path.display(), "created the default config file");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn creates_a_private_commented_default_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/config.yaml");
        ensure_config_file(&path).expect("created");
        let text = std::fs::read_to_string(&path).expect("read");
        assert_eq!(text, first_config_yaml().expect("first config"));
        let c = edr_config::Config::from_yaml("app", &text).expect("valid");
        assert_eq!(c.alerts.max_memory_mb, 400);
        let mut expected = edr_config::Config::default();
        expected.alerts.max_memory_mb = 400;
        assert_eq!(c, expected, "only the memory alert differs");
        assert!(text.contains("# "), "comments kept");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn keeps_an_existing_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "agent:\n  max_events_per_batch: 7\n").expect("write");
        ensure_config_file(&path).expect("kept");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("max_events_per_batch: 7"));
    }
}
