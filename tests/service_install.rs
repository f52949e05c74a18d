//! `edr-agent service install` / `uninstall` under a root prefix, as on a
//! machine without a running systemd: exactly the files it lists are
//! written and removed, twice in a row; the group goes into the prefix's
//! group database (shadow's own tools, `-P`); the unit passes
//! `systemd-analyze verify`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::agent::walk;
use common::root::require_root_because;

/// The prefix's user database: the real tools need all four files. Their
/// `-` backups exist already, so the tools' own backups add no file.
fn user_database(root: &Path) {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    for (f, lines) in [
        (
            "passwd",
            "root:x:0:0:root:/root:/bin/sh\noperator1:x:1500:1500::/nonexistent:/bin/sh\n",
        ),
        ("group", "root:x:0:\noperator1:x:1500:\n"),
        (
            "shadow",
            "root:*:19000:0:99999:7:::\noperator1:!:19000::::::\n",
        ),
        ("gshadow", "root:*::\noperator1:!::\n"),
    ] {
        std::fs::write(etc.join(f), lines).unwrap();
        std::fs::write(etc.join(format!("{f}-")), lines).unwrap();
    }
}

fn files(root: &Path) -> BTreeSet<PathBuf> {
    walk(root).into_iter().collect()
}

/// The group database files, which `groupadd`/`groupdel` rewrite.
fn is_group_db(root: &Path, p: &Path) -> bool {
    ["etc/group", "etc/group-", "etc/gshadow", "etc/gshadow-"]
        .iter()
        .any(|f| p == root.join(f))
}

/// Runs `edr-agent service ARGS --root ROOT`; returns stdout.
fn service(root: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_edr-agent"))
        .arg("service")
        .args(args)
        .arg("--root")
        .arg(root)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "service {args:?}: {out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The paths a run says it wrote or removed.
fn listed(out: &str, verb: &str) -> BTreeSet<PathBuf> {
    out.lines()
        .filter_map(|l| l.strip_prefix(verb))
        .filter(|p| p.starts_with('/'))
        .map(|p| PathBuf::from(p.trim()))
        .collect()
}

fn group_line(root: &Path) -> Option<String> {
    std::fs::read_to_string(root.join("etc/group"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("edr-agent:"))
        .map(str::to_string)
}

#[test]
fn install_and_uninstall_write_and_remove_exactly_what_they_list_twice() {
    require_root_because("service install", "it needs root, as on a real machine");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    user_database(root);
    let initial = files(root);
    let untouched: Vec<(PathBuf, Vec<u8>)> = initial
        .iter()
        .filter(|p| !is_group_db(root, p))
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect();

    for round in 0..2 {
        let out = service(root, &["install", "--operator", "operator1"]);
        let wrote = listed(&out, "wrote ");
        let expected: BTreeSet<PathBuf> = [
            "usr/local/sbin/edr-agent",
            "etc/edr-agent/config.yaml",
            "etc/systemd/system/edr-agent.service",
        ]
        .iter()
        .map(|p| root.join(p))
        .collect();
        assert_eq!(wrote, expected, "round {round}: {out}");
        let now = files(root);
        let added: BTreeSet<PathBuf> = now.difference(&initial).cloned().collect();
        assert_eq!(
            added, expected,
            "round {round}: files written besides those listed"
        );
        for (p, was) in &untouched {
            assert_eq!(&std::fs::read(p).unwrap(), was, "{} changed", p.display());
        }
        assert!(out.contains("systemd is not running here"), "{out}");
        let line = group_line(root).expect("the group in the prefix's /etc/group");
        assert!(line.ends_with(":operator1"), "{line}");

        // The installed config loads, and puts the data in /var/lib.
        let c = edr_config::Config::from_file(&root.join("etc/edr-agent/config.yaml")).unwrap();
        assert_eq!(c.data_dir(), Path::new("/var/lib/edr-agent"));
        assert!(c.api.serves(true));
        // A second install keeps what is there.
        let again = service(root, &["install"]);
        assert!(
            again.contains("kept") && again.contains("group edr-agent exists"),
            "{again}"
        );

        let status = Command::new(env!("CARGO_BIN_EXE_edr-agent"))
            .args(["service", "status", "--root"])
            .arg(root)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(
            text.contains("installed") && text.contains("edr-agent exists"),
            "{text}"
        );

        let out = service(root, &["uninstall"]);
        assert_eq!(listed(&out, "removed "), expected, "round {round}: {out}");
        assert!(out.contains("removed group edr-agent"), "{out}");
        let after = files(root);
        assert_eq!(
            after, initial,
            "round {round}: uninstall left or removed other files"
        );
        assert_eq!(group_line(root), None);
        // Twice is fine, and removes nothing more.
        let out = service(root, &["uninstall"]);
        assert!(listed(&out, "removed ").is_empty(), "{out}");
        assert_eq!(files(root), initial);
    }
}

#[test]
fn an_edited_config_is_kept_by_uninstall() {
    require_root_because("service install", "it needs root, as on a real machine");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    user_database(root);
    service(root, &["install"]);
    let config = root.join("etc/edr-agent/config.yaml");
    let mut c = edr_config::Config::from_file(&config).unwrap();
    c.agent.max_events_per_batch = 77;
    c.save(&config).unwrap();
    let out = service(root, &["uninstall"]);
    assert!(out.contains("kept") && config.exists(), "{out}");
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    require_root_because("service install", "it needs root, as on a real machine");
    let Ok(tool) = which("systemd-analyze") else {
        // scripts/setup.sh installs the Debian package `systemd`, which
        // has the tool; only a machine set up otherwise gets here.
        println!("skipped: systemd-analyze is not installed (Debian package `systemd`)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    user_database(root);
    service(root, &["install"]);
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/edr-agent.service")).unwrap();
    // verify checks that ExecStart's program exists on this machine: point
    // it at the copy the install made in the prefix.
    let binary = root.join("usr/local/sbin/edr-agent");
    let unit = unit.replace(
        "ExecStart=/usr/local/sbin/edr-agent",
        &format!("ExecStart={}", binary.display()),
    );
    let check = root.join("check");
    std::fs::create_dir_all(&check).unwrap();
    std::fs::write(check.join("edr-agent.service"), unit).unwrap();
    let o = Command::new(tool)
        .arg("verify")
        .arg(check.join("edr-agent.service"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "systemd-analyze verify: {err}");
    assert!(
        !err.contains("edr-agent.service:"),
        "warnings about the unit: {err}"
    );
}

fn which(tool: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(())
}

/// The unit's capability bounding set is enough for what it promises: the
/// agent, as root with only those capabilities and no new privileges (as
/// systemd runs it), takes process events from the kernel, records the
/// program of another user's short process, and gives its API socket to
/// the group.
#[test]
fn the_units_capabilities_are_enough_for_capture() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::time::Duration;

    use common::{read_events, str_field, test_config, wait_for};
    use edr_model::capture::ProcessCapture;

    require_root_because("the capability test", "it runs the agent as root");
    let _ = Command::new("groupadd")
        .args(["--system", "edr-agent"])
        .output();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    user_database(root);
    service(root, &["install"]);
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/edr-agent.service")).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("the unit bounds capabilities")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    assert!(caps.contains(&"+net_admin".to_string()), "{caps:?}");

    let work = tempfile::tempdir().unwrap();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = work.path().join("run/api.sock");
    let mut c = test_config(work.path());
    c.collectors.process_monitor.enabled = true;
    c.collectors.process_monitor.source = edr_config::ProcessSource::Event;
    c.agent.collection_interval_ms = 200;
    c.api.enabled = edr_config::ApiEnabled::On;
    c.api.socket = Some(socket.display().to_string());
    let config = work.path().join("config.yaml");
    c.save(&config).unwrap();
    let data = c.data_dir();

    let agent = Command::new("setpriv")
        .arg(format!("--bounding-set=-all,{}", caps.join(",")))
        .args(["--inh-caps=-all", "--no-new-privs", "--"])
        .arg(env!("CARGO_BIN_EXE_edr-agent"))
        .args(["run", "--log", "warn", "--config"])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let capture = wait_for(Duration::from_secs(20), || {
        edr_engine::read_status(&data)
            .filter(|s| s.running)
            .and_then(|s| s.coverage.process_capture)
    });
    assert_eq!(
        capture,
        Some(ProcessCapture::Event),
        "process events with the unit's capabilities"
    );
    let gid = edr_api::peer::group_gid("edr-agent").expect("group");
    let socket_gid = wait_for(Duration::from_secs(10), || {
        std::fs::metadata(&socket).ok().map(|m| m.gid())
    });
    assert_eq!(socket_gid, Some(gid), "the socket's group");

    // Another user's short process, with its program.
    let ran = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--",
            "/bin/sleep",
            "0.4321",
        ])
        .status()
        .unwrap();
    assert!(ran.success());
    let seen = wait_for(Duration::from_secs(20), || {
        read_events(&data).into_iter().find(|e| {
            // setpriv execs sleep: the same process, a new program.
            str_field(e, "event.action") == Some("process-exec")
                && str_field(e, "process.executable").is_some_and(|x| x.ends_with("/sleep"))
                && str_field(e, "process.command_line").is_some_and(|c| c.contains("0.4321"))
        })
    });
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output().unwrap();
    let e = seen.unwrap_or_else(|| {
        panic!(
            "no start event of the sleep: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(str_field(&e, "process.user.id"), Some("65534"), "{e}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
