//! The read commands (`status`, `events`, `alerts`, `stats`, `report`) of
//! an unprivileged operator against the real root agent: through its API
//! they print what root reading the data dir prints for the same data; a
//! user outside the group `edr-agent` gets the service's refusal and how
//! to be let in; with the agent stopped (socket gone, or left by a crash)
//! the data dir is read again.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::agent::{stderr, stdout, write_config, Agent, Launch};
use common::root::require_root_because;
use common::users::sh;
use common::{heavy, wait_for, watched};
use edr_config::ApiEnabled;

const MEMBER: &str = "edr-read-member";
const OUTSIDER: &str = "edr-read-outsider";
const RULE_ID: &str = "0c6f2a1e-7d3b-4e5f-9a8b-1c2d3e4f5a6b";

/// The group, a member and an outsider: real entries in the user database.
fn users() {
    require_root_because(
        "the read commands' API test",
        "it creates users and runs the agent as root",
    );
    common::users::member_and_outsider(MEMBER, OUTSIDER);
}

/// `edr-agent ARGS` as `user` (root: directly).
fn run_as(user: &str, args: &[&str]) -> Output {
    let bin = env!("CARGO_BIN_EXE_edr-agent");
    let mut c = if user == "root" {
        Command::new(bin)
    } else {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--", bin]);
        c
    };
    // The users have no home; the default data dir must not matter.
    c.args(args)
        .env("HOME", "/nonexistent")
        .output()
        .expect("runs")
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    socket: PathBuf,
    config: PathBuf,
    /// The same data dir and socket, readable by the users.
    user_config: PathBuf,
}

fn setup() -> Setup {
    users();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().to_path_buf();
    std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let rules = root.join("rules");
    std::fs::create_dir(&rules).unwrap();
    std::fs::write(
        rules.join("canary.yml"),
        format!(
            "title: Read Canary\nid: {RULE_ID}\nauthor: tester\nlogsource:\n  product: linux\n  \
             category: file_event\ndetection:\n  sel:\n    TargetFilename|endswith: \
             /read-canary.sh\n  condition: sel\nlevel: high\n"
        ),
    )
    .unwrap();
    let socket = root.join("run").join("api.sock");
    let config = write_config(&root, |c| {
        c.api.enabled = ApiEnabled::On;
        c.api.socket = Some(socket.display().to_string());
        c.detection.enabled = true;
        c.detection.builtin_rules = false;
        c.detection.rule_paths = vec![rules.display().to_string()];
    });
    let data = root.join("data");
    let user_config = root.join("user-config.yaml");
    std::fs::write(
        &user_config,
        format!(
            "storage:\n  local_storage:\n    data_dir: {}\napi:\n  socket: {}\n",
            data.display(),
            socket.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&user_config, std::fs::Permissions::from_mode(0o644)).unwrap();
    Setup {
        _dir: dir,
        root,
        data,
        socket,
        config,
        user_config,
    }
}

fn start(s: &Setup) -> Agent {
    let mut agent = Agent::launch(
        &s.config,
        &s.data,
        Launch {
            log: Some("info"),
            ..Launch::default()
        },
    );
    agent.wait_watching();
    let up = wait_for(Duration::from_secs(15), || {
        agent.assert_alive();
        let o = run_as("root", &["status", "--config", s.config.to_str()?]);
        stdout(&o).contains("the service's API").then_some(())
    });
    assert!(up.is_some(), "the API never answered: {}", agent.log());
    agent
}

/// What a read command printed, and how it ended.
#[derive(Debug, PartialEq)]
struct Printed {
    code: Option<i32>,
    stdout: String,
}

fn printed(o: &Output) -> Printed {
    Printed {
        code: o.status.code(),
        stdout: stdout(o),
    }
}

/// `report` as `user` into `out`: its line (the file named OUT: the two
/// runs write two) and the image, or the error (no history written yet).
fn report_as(user: &str, out: &Path, how: &[&str]) -> Result<(String, Vec<u8>), String> {
    let _ = std::fs::remove_file(out);
    let mut args = vec!["report", "--since", "1h", "--out", out.to_str().unwrap()];
    args.extend_from_slice(how);
    let o = run_as(user, &args);
    if !o.status.success() {
        return Err(format!("{user}: {}{}", stdout(&o), stderr(&o)));
    }
    let line = stdout(&o).replace(out.to_str().unwrap(), "OUT");
    Ok((line, std::fs::read(out).map_err(|e| e.to_string())?))
}

#[test]
fn a_group_member_reads_through_the_api_what_the_data_dir_holds() {
    let _heavy = heavy();
    let s = setup();
    let agent = start(&s);
    let user_config = s.user_config.to_str().unwrap().to_string();
    let data = s.data.to_str().unwrap().to_string();
    let via_api = ["--config", user_config.as_str()];
    let via_dir = ["--data-dir", data.as_str()];

    // A marker event and an alert, stored.
    let marker = format!("read-marker-{}", std::process::id());
    std::fs::write(watched(&s.root).join(&marker), b"x").unwrap();
    std::fs::write(watched(&s.root).join("read-canary.sh"), b"#!/bin/sh\n").unwrap();
    let stored = wait_for(Duration::from_secs(30), || {
        let events = stdout(&run_as(
            "root",
            &["events", "--grep", &marker, "--data-dir", &data],
        ));
        let alerts = stdout(&run_as("root", &["alerts", "--data-dir", &data]));
        (events.contains(&marker) && alerts.contains("Read Canary")).then_some(())
    });
    assert!(
        stored.is_some(),
        "marker or alert never stored: {}",
        agent.log()
    );
    // Paused, the agent writes its open batch and no more events: the
    // stored data holds still while the two paths read it.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (client, _) = edr_api::Client::connect(&s.socket).await.unwrap();
        assert!(client.pause().await.unwrap().paused);
    });

    // The member cannot read the data dir itself (root's, 0700)…
    let o = run_as(MEMBER, &["events", "--data-dir", &data]);
    assert!(!o.status.success(), "{}", stdout(&o));
    assert!(stderr(&o).contains("ermission denied"), "{}", stderr(&o));

    // …and reads the same through the API, command by command. Batches
    // may still land right after the pause, and the metrics history gains
    // a minute at a time: a few tries until the data holds still.
    let commands: Vec<Vec<&str>> = vec![
        vec!["events", "--grep", &marker],
        vec!["events", "--type", "file", "--limit", "3"],
        vec!["events", "--since", "1h", "--until", "2099-01-01"],
        vec!["alerts"],
        vec!["alerts", "--json", "--since", "1h"],
        vec!["stats"],
        vec!["stats", "--json"],
        vec!["stats", "--summary"],
    ];
    for cmd in &commands {
        let agreed = wait_for(Duration::from_secs(20), || {
            let member = run_as(MEMBER, &[cmd.as_slice(), &via_api, &["--verbose"]].concat());
            let root = run_as("root", &[cmd.as_slice(), &via_dir].concat());
            let (m, r) = (printed(&member), printed(&root));
            assert_eq!(
                m.code,
                Some(0),
                "member {cmd:?}: {}{}",
                m.stdout,
                stderr(&member)
            );
            assert!(
                stderr(&member).contains("reading the service's API"),
                "{cmd:?}: {}",
                stderr(&member)
            );
            (m == r).then_some(m)
        });
        let m = agreed.unwrap_or_else(|| {
            let member = run_as(MEMBER, &[cmd.as_slice(), &via_api].concat());
            let root = run_as("root", &[cmd.as_slice(), &via_dir].concat());
            panic!(
                "{cmd:?} differs:\n--- API (member)\n{}\n--- data dir (root)\n{}",
                stdout(&member),
                stdout(&root)
            )
        });
        assert!(!m.stdout.trim().is_empty(), "{cmd:?} printed nothing");
    }
    let events = run_as(
        MEMBER,
        &["events", "--grep", &marker, "--config", &user_config],
    );
    let line = stdout(&events);
    let event: serde_json::Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert!(
        event["file"]["path"].as_str().unwrap().ends_with(&marker),
        "{line}"
    );
    let alerts = stdout(&run_as(
        MEMBER,
        &["alerts", "--json", "--config", &user_config],
    ));
    let alert: serde_json::Value = serde_json::from_str(alerts.lines().next().unwrap()).unwrap();
    assert_eq!(alert["rule"]["id"], RULE_ID, "{alerts}");

    // The report: the same line and the same image, once the history has
    // its first minute on disk.
    let outs = s.root.join("reports");
    std::fs::create_dir(&outs).unwrap();
    std::fs::set_permissions(&outs, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut last = (Err(String::new()), Err(String::new()));
    let agreed = wait_for(Duration::from_secs(150), || {
        let m = report_as(MEMBER, &outs.join("member.svg"), &via_api);
        let r = report_as("root", &outs.join("root.svg"), &via_dir);
        let same = matches!((&m, &r), (Ok(a), Ok(b)) if a == b);
        last = (m, r);
        if !same {
            std::thread::sleep(Duration::from_secs(1));
        }
        same.then(|| last.0.clone())
    });
    let (line, _) = agreed
        .unwrap_or_else(|| {
            let line = |r: &Result<(String, Vec<u8>), String>| match r {
                Ok((l, img)) => format!("{l} ({} bytes of image)", img.len()),
                Err(e) => e.clone(),
            };
            panic!("the reports differ: {} | {}", line(&last.0), line(&last.1))
        })
        .unwrap();
    assert!(line.contains(" charts of "), "{line}");

    // Status: the same keys, agent and data dir (its figures are live).
    let m = run_as(MEMBER, &["status", "--json", "--config", &user_config]);
    let r = run_as("root", &["status", "--json", "--data-dir", &data]);
    assert_eq!(m.status.code(), Some(0), "{}", stderr(&m));
    let (m, r): (serde_json::Value, serde_json::Value) = (
        serde_json::from_slice(&m.stdout).unwrap(),
        serde_json::from_slice(&r.stdout).unwrap(),
    );
    let keys = |v: &serde_json::Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(keys(&m), keys(&r));
    assert_eq!(keys(&m["status"]), keys(&r["status"]));
    for k in ["running", "pid", "data_dir"] {
        assert_eq!(m[k], r[k], "{k}");
    }
    assert_eq!(m["pid"], agent.pid());
    assert_eq!(m["status"]["paused"], true);
    let m = stdout(&run_as(MEMBER, &["status", "--config", &user_config]));
    let r = stdout(&run_as("root", &["status", "--data-dir", &data]));
    let labels = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split(':').next().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(labels(&m), labels(&r), "{m}\n---\n{r}");
    assert!(m.contains("source:      the service's API"), "{m}");

    // Stopped: the socket is gone and root reads the data dir again, the
    // same lines as the member read through the API.
    let api_lines = stdout(&run_as(
        MEMBER,
        &["events", "--grep", &marker, "--config", &user_config],
    ));
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    assert!(!s.socket.exists());
    let config = s.config.to_str().unwrap();
    let o = run_as(
        "root",
        &["events", "--grep", &marker, "--config", config, "-v"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), api_lines);
    assert!(
        stderr(&o).contains("no edr-agent service") && stderr(&o).contains("reading the data dir"),
        "{}",
        stderr(&o)
    );
    let o = run_as("root", &["status", "--config", config]);
    assert_eq!(o.status.code(), Some(3), "{}", stdout(&o));
    assert!(stdout(&o).contains("not running") && stdout(&o).contains("source:      the data dir"));
}

#[test]
fn an_outsider_is_told_the_group_and_a_crashed_service_falls_back_to_the_data_dir() {
    let _heavy = heavy();
    let s = setup();
    let agent = start(&s);
    let user_config = s.user_config.to_str().unwrap();

    let refused = |what: &str| {
        for cmd in [
            vec!["status"],
            vec!["events", "--limit", "1"],
            vec!["alerts"],
            vec!["stats"],
            vec!["report", "--out", "/tmp/never.svg"],
        ] {
            let o = run_as(
                OUTSIDER,
                &[cmd.as_slice(), &["--config", user_config]].concat(),
            );
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(4), "{what} {cmd:?}: {err}");
            assert!(o.stdout.is_empty(), "{what} {cmd:?}: {}", stdout(&o));
            assert!(
                err.contains("group `edr-agent`")
                    && err.contains("hint:")
                    && err.contains("usermod"),
                "{what} {cmd:?}: {err}"
            );
            assert_eq!(err.matches("error:").count(), 1, "{err}");
        }
    };
    // The kernel refuses the connection (socket mode 0660)…
    refused("socket mode");
    // …and the service by the peer's credentials, in its own words.
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused("403");
    let o = run_as(OUTSIDER, &["status", "--config", user_config]);
    assert!(
        stderr(&o).contains("may not use the edr-agent API") && stderr(&o).contains("HTTP 403"),
        "{}",
        stderr(&o)
    );
    std::fs::set_permissions(&s.socket, std::fs::Permissions::from_mode(0o660)).unwrap();

    // Outside the group but with a data dir of their own: that is read,
    // with a note saying why.
    let own = s.root.join("own");
    std::fs::create_dir(&own).unwrap();
    let outsider_uid: u32 = stdout(&sh("id", &["-u", OUTSIDER])).trim().parse().unwrap();
    common::root::chown_tree(&own, (outsider_uid, 0));
    let own_config = s.root.join("own-config.yaml");
    std::fs::write(
        &own_config,
        format!(
            "storage:\n  local_storage:\n    data_dir: {}\napi:\n  socket: {}\n",
            own.display(),
            s.socket.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&own_config, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = run_as(
        OUTSIDER,
        &["status", "--config", own_config.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(3), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("no agent has run on"), "{}", stdout(&o));
    assert!(stderr(&o).contains("refused you"), "{}", stderr(&o));

    // Bad parameters of the stored paths: 400 with a reason.
    for path in [
        "/v1/stored/events?type=process,bogus",
        "/v1/stored/events?limit=0",
        "/v1/stored/events?since=yesterday",
        "/v1/stored/alerts?bogus=1",
        "/v1/stored/history?since=-5",
    ] {
        let o = Command::new("curl")
            .args(["-s", "-w", "\n%{http_code}", "--unix-socket"])
            .arg(&s.socket)
            .arg(format!("http://edr-agent{path}"))
            .output()
            .unwrap();
        let text = stdout(&o);
        let (body, code) = text.rsplit_once('\n').unwrap();
        assert_eq!(code, "400", "{path}: {text}");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(!v["error"].as_str().unwrap().is_empty(), "{path}: {body}");
    }

    // A service speaking another protocol: which side to update, and the
    // way around it; not a misread answer.
    let o = Command::new(env!("CARGO_BIN_EXE_edr-agent"))
        .args(["events", "--config", s.config.to_str().unwrap()])
        .env(
            "EDR_AGENT_TEST_API_PROTOCOL",
            (edr_api::PROTOCOL_VERSION + 1).to_string(),
        )
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "speaks API protocol {} and this program speaks {}",
            edr_api::PROTOCOL_VERSION,
            edr_api::PROTOCOL_VERSION + 1
        )) && err.contains("update the service")
            && err.contains("--data-dir"),
        "{err}"
    );

    // A crash leaves the socket: nobody answers on it, and root reads the
    // data dir (the member, who cannot, is told the data dir's refusal).
    let before = stdout(&run_as(
        "root",
        &["stats", "--json", "--config", s.config.to_str().unwrap()],
    ));
    assert!(before.contains("\"events\""), "{before}");
    agent.sigkill();
    assert!(s.socket.exists(), "a crash leaves the socket");
    let o = run_as(
        "root",
        &["stats", "--config", s.config.to_str().unwrap(), "-v"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("total:"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("does not answer") && stderr(&o).contains("reading the data dir"),
        "{}",
        stderr(&o)
    );
    let o = run_as(MEMBER, &["events", "--config", user_config]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ermission denied"), "{}", stderr(&o));
}
