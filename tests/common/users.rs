//! Real users for the API's access tests: the group `edr-agent`, one of its
//! members and one user outside it, made with the system's own tools.

use std::process::{Command, Output};

/// The group whose members may use the service's API.
pub const GROUP: &str = "edr-agent";

/// Runs a system tool; a missing one fails the test.
pub fn sh(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Makes `member` a member of [`GROUP`] and `outsider` not one, creating
/// the group and the users (system users without a home) when missing.
/// Needs root, which the caller has required.
pub fn member_and_outsider(member: &str, outsider: &str) {
    // The tests of one binary run in parallel; the user database takes
    // one writer at a time.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let _ = sh("groupadd", &["--system", GROUP]);
    for u in [member, outsider] {
        if !sh("id", &[u]).status.success() {
            let o = sh(
                "useradd",
                &["--system", "--no-create-home", "--shell", "/bin/sh", u],
            );
            assert!(
                o.status.success(),
                "useradd {u}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
    }
    let o = sh("usermod", &["-a", "-G", GROUP, member]);
    assert!(
        o.status.success(),
        "usermod: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // "not a member" is the expected answer.
    let _ = sh("gpasswd", &["-d", outsider, GROUP]);
}
