//! The real agent with the fanotify file source: persistence changes name
//! the process that made them, and every refusal falls back to inotify
//! with the reason in `edr-agent status`.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::agent::{cli, stdout, write_config, Agent, Launch};
use common::root::{chown_tree, require_root, require_root_because};
use common::{read_events, str_field, wait_for};
use edr_config::{FileMonitorConfig, FileSource};
use serde_json::Value;

const NOBODY: (u32, u32) = (65_534, 65_534);

/// Removes the files a test writes outside its tempdir, even if it fails.
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn marker() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("edr-fan-{}-{nanos}", std::process::id())
}

/// A config watching the Linux persistence defaults (with `HOME` = `home`)
/// and recording processes, so the writer's own start event is stored.
fn persistence_config(root: &Path, source: FileSource) -> PathBuf {
    write_config(root, |c| {
        c.collectors.file_monitor.source = source;
        c.collectors.file_monitor.watch_paths = Vec::new();
        c.collectors.file_monitor.linux_watch_paths =
            FileMonitorConfig::default().linux_watch_paths;
        c.collectors.process_monitor.enabled = true;
        c.agent.collection_interval_ms = 200;
        // Every event of the writer is wanted, not one per window.
        c.filters.coalesce_file_changes_ms = 0;
        c.filters.repeat_window_ms = 0;
    })
}

fn events_of(data: &Path, pid: u32) -> Vec<Value> {
    read_events(data)
        .into_iter()
        .filter(|e| e["process"]["pid"].as_u64() == Some(u64::from(pid)))
        .collect()
}

#[test]
fn persistence_changes_name_the_process_that_made_them() {
    let _heavy = common::heavy();
    require_root("the fanotify source test (CAP_SYS_ADMIN, writes /etc)");
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");
    let bashrc = home.join(".bashrc");
    std::fs::write(&bashrc, b"# bashrc\n").expect("bashrc");
    let data = dir.path().join("data");
    let config = persistence_config(dir.path(), FileSource::Auto);
    let mut agent = Agent::launch(
        &config,
        &data,
        Launch {
            home: Some(home.clone()),
            ..Launch::default()
        },
    );
    agent.wait_status("fanotify and process events", |s| {
        s.coverage.file_source.as_deref() == Some("fanotify") && s.coverage.process_source.is_some()
    });
    let text = stdout(&cli(&["status"], &data));
    assert!(
        text.contains("files:       fanotify (filesystem-wide marks"),
        "{text}"
    );

    let m = marker();
    let cron = PathBuf::from(format!("/etc/cron.d/{m}"));
    let staged = PathBuf::from(format!("/etc/.{m}.tmp"));
    let unit = PathBuf::from(format!("/etc/systemd/system/{m}.service"));
    let _cleanup = Cleanup(vec![cron.clone(), staged.clone(), unit.clone()]);
    // One process does it all (perl's builtins: no child does the work),
    // and stays alive until the test has its events, so its program can be
    // read whenever the agent gets to it.
    let script = r##"
        $| = 1;
        my ($m, $cron, $bashrc, $staged, $unit) = @ARGV;
        open(my $f, '>', $cron) or die "cron: $!"; print $f "# $m\n"; close $f;
        open($f, '>>', $bashrc) or die "bashrc: $!"; print $f "# $m\n"; close $f;
        open($f, '>', $staged) or die "staged: $!"; print $f "[Unit]\n"; close $f;
        rename($staged, $unit) or die "rename: $!";
        unlink($unit) or die "unlink unit: $!";
        unlink($cron) or die "unlink cron: $!";
        print "done\n";
        <STDIN>;
    "##;
    let mut writer = Command::new("/usr/bin/perl")
        .arg("-e")
        .arg(script)
        .arg(&m)
        .args([&cron, &bashrc, &staged, &unit])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("perl runs");
    let pid = writer.id();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(writer.stdout.take().expect("stdout")),
        &mut line,
    )
    .expect("perl reports");
    assert_eq!(line, "done\n", "the writer failed");

    let expected: [(&str, &Path); 5] = [
        ("file-created", &cron),
        ("file-modified", &bashrc),
        ("file-renamed", &unit),
        ("file-deleted", &unit),
        ("file-deleted", &cron),
    ];
    let found = wait_for(Duration::from_secs(20), || {
        let mine = events_of(&data, pid);
        let all = expected.iter().all(|(action, path)| {
            mine.iter().any(|e| {
                str_field(e, "event.action") == Some(*action)
                    && str_field(e, "file.path") == path.to_str()
            })
        });
        let started = mine.iter().any(|e| e["event"]["category"][0] == "process");
        (all && started).then_some(mine)
    });
    if let Some(mut stdin) = writer.stdin.take() {
        let _ = stdin.write_all(b"\n");
    }
    let _ = writer.wait();
    let (status, log) = agent.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let mine = found.unwrap_or_else(|| {
        panic!(
            "not every change was stored with the writer's pid {pid}; its events: {:#?}",
            events_of(&data, pid)
        )
    });

    let entity = mine
        .iter()
        .find(|e| {
            e["event"]["category"][0] == "process"
                && matches!(
                    str_field(e, "event.action"),
                    Some("process-started" | "process-exec")
                )
                && str_field(e, "process.executable") == Some("/usr/bin/perl")
        })
        .and_then(|e| str_field(e, "process.entity_id"))
        .map(String::from)
        .expect("the writer's own process event");
    for (action, path) in expected {
        let e = mine
            .iter()
            .find(|e| {
                str_field(e, "event.action") == Some(action)
                    && str_field(e, "file.path") == path.to_str()
            })
            .expect("found above");
        assert_eq!(
            str_field(e, "process.executable"),
            Some("/usr/bin/perl"),
            "{e}"
        );
        assert_eq!(
            str_field(e, "process.entity_id"),
            Some(entity.as_str()),
            "{e}"
        );
        assert_eq!(str_field(e, "process.name"), Some("perl"), "{e}");
        assert!(
            e["process"]["args"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == m.as_str())),
            "{e}"
        );
        assert_eq!(str_field(e, "process.user.id"), Some("0"), "{e}");
        assert_eq!(str_field(e, "process.user.name"), Some("root"), "{e}");
    }
    assert!(!cron.exists() && !unit.exists() && !staged.exists());
}

/// What `edr-agent status` says about files once the agent is up.
fn files_line(agent: &mut Agent, data: &Path) -> String {
    agent.wait_status("a file source", |s| s.coverage.file_source.is_some());
    let text = stdout(&cli(&["status"], data));
    text.lines()
        .find(|l| l.starts_with("files:"))
        .unwrap_or_else(|| panic!("no files line: {text}"))
        .to_string()
}

/// Started with `how`, the agent watches a file in its tempdir with
/// inotify: a change is stored (without a process) and status says why.
fn falls_back(how: Launch, chown: bool, why: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let watched = dir.path().join("watched");
    let single = dir.path().join("profile");
    std::fs::write(&single, b"x\n").expect("file");
    let config = write_config(dir.path(), |c| {
        c.collectors.file_monitor.watch_paths =
            vec![watched.display().to_string(), single.display().to_string()];
        c.agent.collection_interval_ms = 200;
    });
    if chown {
        chown_tree(dir.path(), NOBODY);
    }
    let mut agent = Agent::launch(&config, &data, how);
    let line = files_line(&mut agent, &data);
    assert!(
        line.starts_with("files:       inotify (fanotify unavailable (fanotify_")
            && line.contains(why),
        "{line}"
    );
    agent.wait_watching();
    // The single file is watched through its directory: a sibling is not
    // news, the file itself is.
    std::fs::write(dir.path().join("sibling"), b"y").expect("sibling");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&single)
        .and_then(|mut f| f.write_all(b"appended\n"))
        .expect("append");
    let stored = wait_for(Duration::from_secs(15), || {
        let events = read_events(&data);
        events
            .iter()
            .any(|e| str_field(e, "file.path") == single.to_str())
            .then_some(events)
    });
    let (status, log) = agent.stop();
    assert_eq!(status.code(), Some(0), "{log}");
    let events = stored.expect("the watched single file's change was stored");
    assert!(
        !events
            .iter()
            .any(|e| str_field(e, "file.path").is_some_and(|p| p.ends_with("/sibling"))),
        "a sibling of a watched file was reported"
    );
}

#[test]
fn not_root_falls_back_to_inotify_and_says_why() {
    require_root_because(
        "the unprivileged fallback test",
        "it runs the agent as nobody",
    );
    falls_back(
        Launch {
            user: Some(NOBODY),
            ..Launch::default()
        },
        true,
        "not permitted (needs root or CAP_SYS_ADMIN)",
    );
}

#[test]
fn root_without_cap_sys_admin_falls_back_to_inotify_and_says_why() {
    require_root("the lowered-capability fallback test");
    falls_back(
        Launch {
            wrapper: Some(
                ["setpriv", "--bounding-set", "-sys_admin", "--"]
                    .map(String::from)
                    .to_vec(),
            ),
            ..Launch::default()
        },
        false,
        "not permitted (needs root or CAP_SYS_ADMIN)",
    );
}

/// `source: fanotify` where it is refused: nothing is recorded, and status
/// says so.
#[test]
fn required_fanotify_that_is_refused_is_reported() {
    require_root("the lowered-capability test");
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = write_config(dir.path(), |c| {
        c.collectors.file_monitor.source = FileSource::Fanotify;
    });
    let mut agent = Agent::launch(
        &config,
        &data,
        Launch {
            wrapper: Some(
                ["setpriv", "--bounding-set", "-sys_admin", "--"]
                    .map(String::from)
                    .to_vec(),
            ),
            ..Launch::default()
        },
    );
    let line = files_line(&mut agent, &data);
    assert!(
        line.starts_with("files:       none (fanotify unavailable (fanotify_")
            && line.ends_with(
                "not permitted (needs root or CAP_SYS_ADMIN)) and inotify is off \
                 (source: fanotify): no file events are recorded)"
            ),
        "{line}"
    );
    let (status, log) = agent.stop();
    assert_eq!(status.code(), Some(0), "{log}");
}
