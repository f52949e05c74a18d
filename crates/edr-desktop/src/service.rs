//! Installing the root service from a menu bar: `pkexec edr-agent
//! service install --operator USER` on Linux, an administrator prompt on
//! macOS.

use std::path::{Path, PathBuf};

/// Where a program is: next to this process's binary first (an
/// installed bundle ships them together), then on PATH.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)));
    beside
        .into_iter()
        .chain(
            std::env::var_os("PATH")
                .iter()
                .flat_map(std::env::split_paths)
                .map(|d| d.join(name))
                .collect::<Vec<_>>(),
        )
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The command that installs the service for `user`, or why there is none.
pub fn install_command(user: &str) -> Result<(PathBuf, Vec<String>), String> {
    let agent = find_program("edr-agent").ok_or_else(|| {
        "edr-agent is neither next to the app nor on PATH: install it first".to_string()
    })?;
    #[cfg(target_os = "macos")]
    {
        // An administrator prompt: osascript's "with administrator privileges".
        let script = format!(
            "do shell script \"'{}' service install --operator '{}'\" with administrator privileges",
            agent.display(),
            user
        );
        Ok((
            PathBuf::from("/usr/bin/osascript"),
            vec!["-e".into(), script],
        ))
    }
    #[cfg(not(target_os = "macos"))]
    {
        let pkexec = find_program("pkexec").ok_or_else(|| {
            format!(
                "pkexec is not installed (package policykit-1 or pkexec): run `sudo {} service install --operator {user}` in a terminal",
                agent.display()
            )
        })?;
        Ok((
            pkexec,
            vec![
                agent.display().to_string(),
                "service".into(),
                "install".into(),
                "--operator".into(),
                user.to_string(),
            ],
        ))
    }
}

/// Runs the install for `user` (blocking: it waits for the administrator's
/// consent); what went wrong, said for the user.
pub fn install_service(user: &str) -> Result<(), String> {
    if user.is_empty() {
        return Err("cannot tell who you are (no user database entry for this uid)".to_string());
    }
    let (program, args) = install_command(user)?;
    tracing::info!(program = %program.display(), ?args, "installing the service");
    let out = std::process::Command::new(&program)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "the install failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
