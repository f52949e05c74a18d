//! End to end, as root, with the kernel's process events: harmless
//! re-enactments of attacker behaviour, run by the test as real processes,
//! each raise the alert of a built-in rule or of one of SigmaHQ's (loaded
//! from the shared reference through `detection.rule_paths`), stored with
//! the rule's id and author and the process that did it; and an ordinary
//! working session (builds, git, package queries, editors, shells,
//! archives, scripting) raises none.
//!
//! Nothing the attack test runs changes the machine outside its temp dir:
//! tools whose real run would (crontab, setcap, chattr, journalctl, ...)
//! or that exit before the collector can read them are stand-ins, a copy
//! of bash under the tool's name in the temp dir, run as
//! `<tool> -c 'sleep 0.5; :' <the rule-matching arguments>`: the kernel
//! reports an exec of `<tmp>/bin/<tool>` with exactly those arguments,
//! which is all a process_creation rule sees, and bash only sleeps.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::root::require_root;
use common::{read_events, start_engine, test_config, wait_for_async, wait_process_source};
use edr_config::{Config, DetectionException, ProcessSource};
use edr_engine::EngineHandle;
use serde_json::Value;

const PROJECT: &str = "edr-agent project";

/// Held by each test for its whole run (an async lock: it is held across
/// awaits).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// SigmaHQ's Linux rules, where CI checks out the shared reference.
fn sigma_linux() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/sigma/rules/linux");
    assert!(
        p.is_dir(),
        "SigmaHQ reference rules not found at {}: the shared folder must sit at ../shared \
         relative to the repository root",
        p.display()
    );
    p
}

/// The engine with the process collector on the kernel's events, the
/// built-in rules and SigmaHQ's Linux rules.
async fn start(dir: &Path, exceptions: Vec<DetectionException>) -> (EngineHandle, PathBuf) {
    let mut c: Config = test_config(dir);
    c.collectors.file_monitor.enabled = false;
    c.collectors.process_monitor.enabled = true;
    c.collectors.process_monitor.source = ProcessSource::Event;
    c.agent.collection_interval_ms = 200;
    c.detection.enabled = true;
    c.detection.builtin_rules = true;
    c.detection.rule_paths = vec![sigma_linux().display().to_string()];
    c.detection.exceptions = exceptions;
    let data = c.data_dir();
    let engine = start_engine(c);
    wait_process_source(&engine).await;
    let status = engine.snapshot().detection;
    assert!(status.enabled, "{status:?}");
    // 100 built-in rules plus SigmaHQ's Linux ones that load.
    assert!(status.rules_loaded > 200, "{status:?}");
    (engine, data)
}

fn alerts(data: &Path) -> Vec<Value> {
    read_events(data)
        .into_iter()
        .filter(|e| e["event"]["kind"] == "alert")
        .collect()
}

/// Runs `sh -c script` to completion, output discarded.
fn sh(script: &str) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("sh runs");
    assert!(st.success(), "{script}: {st}");
}

/// Runs `program args` to completion; its success is not required (a
/// stand-in never fails, a real tool may, e.g. a connection refused).
fn run(program: &Path, args: &[&str]) {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{} runs: {e}", program.display()));
}

/// A stand-in for `tool`: bash copied to `<bin>/<tool>`.
fn stand_in(bin: &Path, tool: &str) -> PathBuf {
    let p = bin.join(tool);
    std::fs::copy("/bin/bash", &p).expect("copy bash");
    p
}

/// Runs a stand-in: it sleeps half a second (long enough for the collector
/// to read its executable and arguments after the exec event) and exits.
fn stand_in_run(bin: &Path, tool: &str, args: &[&str]) {
    let mut all = vec!["-c", "sleep 0.5; :"];
    all.extend_from_slice(args);
    run(&bin.join(tool), &all);
}

struct Expect {
    rule_id: &'static str,
    /// A substring of one of the rule's authors.
    author: &'static str,
    /// How `process.executable` ends.
    exe_ends: &'static str,
    /// A substring of `process.command_line`.
    cmd_has: &'static str,
}

const fn x(
    rule_id: &'static str,
    author: &'static str,
    exe_ends: &'static str,
    cmd_has: &'static str,
) -> Expect {
    Expect {
        rule_id,
        author,
        exe_ends,
        cmd_has,
    }
}

/// Every rule the behaviours below raise, with the process that raises it.
const EXPECTED: &[Expect] = &[
    // Built-in rules.
    x(
        "89722dd3-f9f6-4072-b1eb-aa586c0aa9fa",
        PROJECT,
        "/bin/chmod",
        "u+s",
    ),
    x(
        "6a2d18a5-9a68-4560-85ab-cf2292ed558d",
        PROJECT,
        "/bin/chmod",
        "u+s",
    ),
    x(
        "22f59e2a-c00f-480d-8a4d-a75fe1b983d8",
        PROJECT,
        "/bin/chmod",
        "u+s",
    ),
    x(
        "6dd85e6a-d8df-48c1-abaf-7caca382f68c",
        PROJECT,
        "/find",
        "-perm -4000",
    ),
    x(
        "19bc17cb-cd87-4d05-9ed0-e1e2297bdfb7",
        PROJECT,
        "sh",
        "base64 -d | sh",
    ),
    x(
        "68e8fe07-f827-4dc0-a096-064ac295fd62",
        PROJECT,
        "/bash",
        "history -c",
    ),
    x(
        "0c14cc81-6526-4e02-b5e9-b25a256de275",
        PROJECT,
        "sh",
        "rm -f",
    ),
    x(
        "8e9f5f31-e92c-4cd2-bae4-798e263cd9fe",
        PROJECT,
        "/bin/nmap",
        "-sT",
    ),
    x(
        "19ad139a-3a8b-42d9-b05a-53d0d60d3067",
        PROJECT,
        "/bin/getcap",
        " -r ",
    ),
    x(
        "33a96279-35ad-4459-85e8-e28e09dae01d",
        PROJECT,
        "/bin/journalctl",
        "--vacuum-time",
    ),
    x(
        "056155ad-c32c-4485-9dfe-7863cfe425c7",
        PROJECT,
        "/bash",
        "/dev/tcp/127.0.0.1/",
    ),
    x(
        "d126d43e-bbf2-4d45-8b36-cf48a0e24b2f",
        PROJECT,
        "sh",
        "LD_PRELOAD=",
    ),
    x(
        "0911048c-91d0-4bfc-902c-a82a7f11adef",
        PROJECT,
        "/bin/cat",
        "/etc/shadow",
    ),
    x(
        "55d3ed35-89ed-4db3-964d-fc0f0546460b",
        PROJECT,
        "/bin/cat",
        "/.ssh/id_rsa",
    ),
    x(
        "9b7383c2-5b76-4db5-a063-2333cdc1c0f2",
        PROJECT,
        "/bin/setcap",
        "cap_setuid",
    ),
    x(
        "b4003fe5-8e4c-44ab-9d9e-e72971b0193e",
        PROJECT,
        "/bin/touch",
        "/usr/bin/",
    ),
    x(
        "7fda6061-984a-46da-b157-373082142d01",
        PROJECT,
        "/bash",
        "/proc/1/environ",
    ),
    x(
        "cbc21241-edab-4c73-ba1f-6ebd9444272d",
        PROJECT,
        "/python3.11",
        "socket",
    ),
    x(
        "d9ca66a6-73e0-4543-9338-7a0ef85aaee4",
        PROJECT,
        "/python3.11",
        "pty",
    ),
    x(
        "fa0c1f7d-dea1-4100-88b2-ae22c1b023ce",
        PROJECT,
        "/perl",
        "IO::Socket",
    ),
    // SigmaHQ's.
    x(
        "e2072cab-8c9a-459b-b63c-40ae79e27031",
        "Daniil Yugoslavskiy",
        "/base64",
        "-d",
    ),
    x(
        "ba592c6d-6888-43c3-b8c6-689b8fe47337",
        "pH-T",
        "sh",
        "base64 -d | sh",
    ),
    x(
        "c21c4eaa-ba2e-419a-92b2-8371703cbe21",
        "Ömer Günal",
        "sh",
        "chown root",
    ),
    x(
        "8344c0e5-5783-47cc-9cf9-a0f7fd03e6cf",
        "Nasreddine Bencherchali",
        "/find",
        "-perm -4000",
    ),
    x(
        "403ed92c-b7ec-4edd-9947-5b535ee12d46",
        "Joseliyo Sanchez",
        "/bin/crontab",
        " -l",
    ),
    x(
        "c4042d54-110d-45dd-a0e1-05c47822c937",
        "Nextron Systems",
        "/python3.11",
        "import pty",
    ),
    x(
        "32e62bc7-3de0-4bb1-90af-532978fe42c0",
        "@d4ns4n_",
        "/python3.11",
        ".connect",
    ),
    x(
        "2d2f44ff-4611-4778-a8fc-323a0e9850cc",
        "Li Ling",
        "/python3.11",
        "os.system(",
    ),
    x(
        "3e102cd9-a70d-4a7a-9508-403963092f31",
        "Alejandro Ortuno",
        "/bin/nmap",
        "-sT",
    ),
    x(
        "999c3b12-0a8c-40b6-8e13-dd7d62b75c7a",
        "Nasreddine Bencherchali",
        "/bin/mkfifo",
        " /tmp/",
    ),
    x(
        "34979410-e4b5-4e5d-8cfb-389fdff05c12",
        "Nasreddine Bencherchali",
        "/bin/chattr",
        " -i ",
    ),
    x(
        "0f79c4d2-4e1f-4683-9c36-b5469a665e06",
        "Florian Roth",
        "/bin/cat",
        " /etc/sudoers",
    ),
    x(
        "312b42b1-bded-4441-8b58-163a3af58775",
        "Joseliyo Sanchez",
        "/bin/chmod",
        "u+s",
    ),
    x(
        "1182f3b3-e716-4efa-99ab-d2685d04360f",
        "Florian Roth",
        "/bin/rm",
        ".bash_history",
    ),
    x(
        "d7821ff1-4527-4e33-9f84-d0d57fa2fb66",
        "Florian Roth",
        "/bin/cat",
        ".bash_history",
    ),
    x(
        "ed447910-bc30-4575-a598-3a2e49516a7a",
        "Luc Génaux",
        "/bin/setcap",
        "cap_setuid",
    ),
];

impl Expect {
    fn raised_by(&self, a: &Value) -> bool {
        let exe = a["process"]["executable"].as_str().unwrap_or_default();
        let cmd = a["process"]["command_line"].as_str().unwrap_or_default();
        a["rule"]["id"] == self.rule_id
            && exe.ends_with(self.exe_ends)
            && cmd.contains(self.cmd_has)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attacker_behaviours_raise_their_rules_alerts() {
    require_root("detection end to end (kernel process events)");
    // The process events are the whole machine's: the other test's
    // processes must not run meanwhile.
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let python = Path::new("/usr/bin/python3.11");
    assert!(
        python.exists(),
        "the Python rules are asserted on /usr/bin/python3.11 (the CI image's)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let tmp = dir.path().to_path_buf();
    let bin = tmp.join("bin");
    std::fs::create_dir(&bin).expect("mkdir bin");
    for tool in [
        "chmod",
        "nmap",
        "getcap",
        "journalctl",
        "cat",
        "setcap",
        "touch",
        "crontab",
        "mkfifo",
        "chattr",
        "rm",
    ] {
        stand_in(&bin, tool);
    }
    let target = tmp.join("target");
    std::fs::write(&target, b"x").expect("write target");
    let t = target.display().to_string();
    let (engine, data) = start(&tmp, Vec::new()).await;

    let tmp2 = tmp.clone();
    let bin2 = bin.clone();
    tokio::task::spawn_blocking(move || {
        let (tmp, bin) = (tmp2, bin2);
        let td = tmp.display().to_string();
        // A setuid bit on a temp file (the stand-in: a real chmod exits
        // before it is read; the real one runs in the next step).
        stand_in_run(&bin, "chmod", &["u+s", &t]);
        // ... and the real thing, on the temp file, as one shell line.
        sh(&format!("chown root {t}; chmod u+s {t}; sleep 0.5"));
        // Searching for setuid files: a real find, kept alive by -exec.
        run(
            Path::new("/usr/bin/find"),
            &[
                &td,
                "-maxdepth",
                "1",
                "-perm",
                "-4000",
                "-exec",
                "sleep",
                "0.5",
                ";",
            ],
        );
        // Base64 decoded into a shell; the decoded script is `echo hi`.
        sh("(sleep 0.5; echo ZWNobyBoaQ==) | base64 -d | sh ; sleep 0.5");
        // Shell history cleared, then the history file removed.
        run(Path::new("/bin/bash"), &["-c", "history -c; sleep 0.5"]);
        sh(&format!("rm -f {td}/.bash_history; sleep 0.5"));
        stand_in_run(&bin, "rm", &[&format!("{td}/.bash_history")]);
        stand_in_run(&bin, "cat", &[&format!("{td}/.bash_history")]);
        // A port scan of localhost (the stand-in only sleeps).
        stand_in_run(&bin, "nmap", &["-sT", "-p", "1-1024", "127.0.0.1"]);
        stand_in_run(&bin, "getcap", &["-r", "/"]);
        stand_in_run(&bin, "journalctl", &["--vacuum-time=1s"]);
        // A /dev/tcp redirection to a closed local port: refused.
        run(
            Path::new("/bin/bash"),
            &[
                "-c",
                "sleep 0.5; (exec 3<>/dev/tcp/127.0.0.1/9) 2>/dev/null; :",
            ],
        );
        // LD_PRELOAD of a library in a temp dir (missing: ld.so warns).
        sh(&format!("LD_PRELOAD={td}/none.so true; sleep 0.5"));
        // Credential files read by generic tools (stand-ins: nothing read).
        stand_in_run(&bin, "cat", &["/etc/shadow"]);
        stand_in_run(&bin, "cat", &[&format!("{td}/.ssh/id_rsa")]);
        stand_in_run(&bin, "cat", &["/etc/sudoers"]);
        stand_in_run(&bin, "setcap", &["cap_setuid+ep", &t]);
        stand_in_run(&bin, "touch", &["-r", "/etc/passwd", "/usr/bin/ls"]);
        // The environment of pid 1 read through /proc, discarded (bash:
        // the rule names bash and sh, and sh is dash here).
        run(
            Path::new("/bin/bash"),
            &["-c", "head -c 0 /proc/1/environ; sleep 0.5"],
        );
        stand_in_run(&bin, "crontab", &["-l"]);
        stand_in_run(&bin, "mkfifo", &[&format!("{td}/pipe")]);
        stand_in_run(&bin, "chattr", &["-i", &t]);
        // A Python reverse shell's shape: the socket connects to a closed
        // local port (refused) and pty.spawn is named, never called.
        run(
            Path::new("/usr/bin/python3.11"),
            &[
                "-c",
                "import pty\nimport socket, time\ntime.sleep(0.5)\ns = socket.socket()\n\
                 s.connect_ex(('127.0.0.1', 9))\nshell, spawn = '/bin/sh', pty.spawn\ns.close()",
            ],
        );
        // os.system running a shell that does nothing.
        run(
            Path::new("/usr/bin/python3.11"),
            &[
                "-c",
                "import os, time\ntime.sleep(0.5)\nos.system('/bin/sh -c true')",
            ],
        );
        // A Perl reverse shell's shape: it exits before the system().
        run(
            Path::new("/usr/bin/perl"),
            &[
                "-MIO::Socket",
                "-e",
                "select(undef, undef, undef, 0.5); exit 0; system('/bin/sh')",
            ],
        );
    })
    .await
    .expect("behaviours run");

    // Each process was read within ~0.5 s of its start; the batcher flushes
    // every 200 ms. 30 s covers a CI machine loaded by parallel builds.
    let found = wait_for_async(Duration::from_secs(30), || {
        let got = alerts(&data);
        EXPECTED
            .iter()
            .all(|x| got.iter().any(|a| x.raised_by(a)))
            .then_some(got)
    })
    .await;
    let snapshot = engine.snapshot().detection;
    engine.shutdown().await;
    let got = found.unwrap_or_else(|| {
        let got = alerts(&data);
        let missing: Vec<&str> = EXPECTED
            .iter()
            .filter(|x| !got.iter().any(|a| x.raised_by(a)))
            .map(|x| x.rule_id)
            .collect();
        let seen: Vec<String> = got
            .iter()
            .map(|a| {
                format!(
                    "{} {} [{}] {}",
                    a["rule"]["id"],
                    a["rule"]["name"],
                    a["process"]["executable"],
                    a["process"]["command_line"]
                )
            })
            .collect();
        panic!(
            "missing alerts {missing:?}; stored:\n{}\ndetection {snapshot:?}",
            seen.join("\n")
        )
    });
    let distinct: std::collections::BTreeSet<&str> = EXPECTED.iter().map(|x| x.rule_id).collect();
    assert!(distinct.len() >= 20, "{}", distinct.len());
    for x in EXPECTED {
        let a = got.iter().find(|a| x.raised_by(a)).expect("found above");
        let authors = a["rule"]["author"].to_string();
        assert!(
            authors.contains(x.author),
            "{}: author {authors}",
            x.rule_id
        );
        let license = if x.author == PROJECT {
            edr_detect::PROJECT_LICENSE
        } else {
            edr_detect::SIGMAHQ_LICENSE
        };
        assert_eq!(a["rule"]["license"], license, "{}", x.rule_id);
        if x.author == PROJECT {
            assert_eq!(a["rule"]["ruleset"], edr_detect::BUILTIN, "{}", x.rule_id);
        }
        assert!(
            a["process"]["pid"].as_u64().is_some_and(|p| p > 0),
            "{}: {a}",
            x.rule_id
        );
        assert_eq!(a["event"]["category"][0], "process", "{}", x.rule_id);
        assert!(a["event"]["severity"].as_u64().is_some(), "{}", x.rule_id);
        assert!(
            a["edr"]["alert"]["matched_fields"].is_object(),
            "{}",
            x.rule_id
        );
        // Stand-ins and shells are started by this test (or by the shell
        // it started): the alert names an ancestor.
        assert!(
            a["edr"]["alert"]["ancestors"][0]["pid"].as_u64().is_some(),
            "{}: {a}",
            x.rule_id
        );
    }
    // The stand-ins' alerts are about the programs in this test's temp dir.
    let bin_s = bin.display().to_string();
    for x in EXPECTED.iter().filter(|x| x.exe_ends.starts_with("/bin/")) {
        assert!(
            got.iter().any(|a| x.raised_by(a)
                && a["process"]["executable"]
                    .as_str()
                    .is_some_and(|e| e.starts_with(&bin_s))),
            "{}: no alert on the stand-in in {bin_s}",
            x.rule_id
        );
    }
    assert!(
        snapshot.alerts_raised as usize >= EXPECTED.len(),
        "{snapshot:?}"
    );
}

/// SigmaHQ's rules that fire on ordinary work by design (they are
/// building blocks for hunting, not alerts): the documented default
/// exceptions an operator loading SigmaHQ's Linux folder would set. Each
/// entry names the step of the workload it fires on.
fn sigmahq_benign_exceptions() -> Vec<DetectionException> {
    BENIGN_EXCEPTIONS
        .iter()
        .map(|(id, exe, _why)| DetectionException {
            rule_id: Some((*id).to_string()),
            executable: exe.map(str::to_string),
            command_line_contains: None,
        })
        .collect()
}

/// (rule id, executable glob or every program, why).
const BENIGN_EXCEPTIONS: &[(&str, Option<&str>, &str)] = &[
    (
        // "Curl Usage on Linux" (low): every curl run, `curl --version`
        // here; its own falsepositives name developers' and admins' scripts.
        "ea34fb97-e2c4-4afb-810f-785e4459b194",
        None,
        "matches any execution of curl",
    ),
    (
        // "Local System Accounts Discovery - Linux" (low): its selection_4
        // is any run of `id`. Only that program is excepted: the rule's
        // other selections (cat /etc/passwd, lastlog, lsof, ...) still
        // alert.
        "b45e3d6f-42c6-47d8-a478-df6bd6cf534c",
        Some("*/id"),
        "matches any execution of id",
    ),
];

/// One step of the workload: a program and its arguments, run in the work
/// dir.
fn step(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordinary_working_session_raises_no_alert() {
    require_root("detection end to end (kernel process events)");
    let _one_at_a_time = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    // The work happens where a developer works, in a project directory
    // (not /tmp: running a program built in /tmp is what a rule is for).
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("work dir");
    let w = work.path();
    std::fs::write(
        w.join("hello.c"),
        "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    )
    .expect("write hello.c");
    std::fs::write(
        w.join("Makefile"),
        "hello: hello.c\n\tcc -O2 -o hello hello.c\n",
    )
    .expect("write Makefile");
    std::fs::write(w.join("notes.txt"), "b line\na line\nc line\n").expect("write notes");
    let (engine, data) = start(dir.path(), sigmahq_benign_exceptions()).await;

    let mut steps: Vec<Vec<String>> = vec![
        // Builds.
        step(&["cargo", "--version"]),
        step(&["make", "-v"]),
        step(&["make", "hello"]),
        step(&["./hello"]),
        step(&["cc", "-c", "-o", "hello.o", "hello.c"]),
        // Git in a fresh repository.
        step(&["git", "init", "-q"]),
        step(&["git", "add", "hello.c", "Makefile", "notes.txt"]),
        step(&[
            "git",
            "-c",
            "user.name=Dev",
            "-c",
            "user.email=dev@example.org",
            "commit",
            "-q",
            "-m",
            "first",
        ]),
        step(&["git", "log", "--oneline"]),
        step(&["git", "diff"]),
        step(&["git", "status", "--short"]),
        // Package manager queries.
        step(&["sh", "-c", "dpkg -l | head -20"]),
        step(&["apt-cache", "policy", "bash"]),
        // Editors.
        step(&["vi", "-es", "-c", "wq", "notes.txt"]),
        // Shells with ordinary commands.
        step(&["bash", "-c", "for i in 3 1 2; do echo $i; done | sort -n"]),
        step(&["sh", "-c", "ls -la | wc -l"]),
        // Archives.
        step(&["tar", "czf", "src.tgz", "hello.c", "Makefile"]),
        step(&["mkdir", "-p", "out"]),
        step(&["tar", "xzf", "src.tgz", "-C", "out"]),
        step(&["gzip", "-k", "notes.txt"]),
        step(&["gunzip", "-f", "notes.txt.gz"]),
        step(&["zip", "-q", "src.zip", "hello.c"]),
        step(&["unzip", "-l", "src.zip"]),
        // Scripting.
        step(&["python3", "-c", "print(1)"]),
        step(&["perl", "-e", "print 1"]),
        // Everyday tools.
        step(&["ls", "-l"]),
        step(&["cat", "notes.txt"]),
        step(&["grep", "-n", "line", "notes.txt"]),
        step(&["sed", "-n", "2p", "notes.txt"]),
        step(&["awk", "{ print $1 }", "notes.txt"]),
        step(&["sort", "notes.txt"]),
        step(&["curl", "--version"]),
        step(&["ssh", "-V"]),
        step(&["id"]),
        step(&["whoami"]),
        step(&["uname", "-a"]),
    ];
    if Path::new("/usr/bin/nano").exists() {
        steps.push(step(&["nano", "--version"]));
    }
    // The end marker: once its event is stored, so are the alerts of
    // every event before it (the stage emits an event's alerts with it).
    steps.push(step(&["sh", "-c", "sleep 0.5; : end-of-workday"]));
    let wd = w.to_path_buf();
    let ran = steps.len();
    tokio::task::spawn_blocking(move || {
        for s in &steps {
            let st = Command::new(&s[0])
                .args(&s[1..])
                .current_dir(&wd)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap_or_else(|e| panic!("{s:?}: {e}"));
            assert!(st.success(), "{s:?}: {st}");
        }
    })
    .await
    .expect("workload runs");

    // 30 s for the marker's event on a loaded CI machine (it takes < 1 s).
    let seen = wait_for_async(Duration::from_secs(30), || {
        let events = read_events(&data);
        events
            .iter()
            .any(|e| {
                e["process"]["command_line"]
                    .as_str()
                    .is_some_and(|c| c.contains("end-of-workday"))
            })
            .then_some(events)
    })
    .await;
    let snapshot = engine.snapshot().detection;
    engine.shutdown().await;
    let events = seen.expect("the workload's end marker was stored");
    // The session was seen: its processes reached the stage (short-lived
    // ones can exit before the collector reads them; most do not).
    let names: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| e["event"]["category"][0] == "process" && e["event"]["kind"] != "alert")
        .filter_map(|e| e["process"]["name"].as_str().map(str::to_string))
        .collect();
    let workload = [
        "cargo",
        "make",
        "cc",
        "cc1",
        "as",
        "ld",
        "hello",
        "git",
        "dpkg",
        "apt-cache",
        "vi",
        "vim.basic",
        "bash",
        "dash",
        "sh",
        "tar",
        "gzip",
        "zip",
        "unzip",
        "python3.11",
        "perl",
        "ls",
        "cat",
        "grep",
        "sed",
        "awk",
        "mawk",
        "gawk",
        "sort",
        "curl",
        "ssh",
        "id",
        "whoami",
        "uname",
        "head",
        "wc",
        "mkdir",
        "collect2",
    ];
    let seen_names: Vec<&str> = workload
        .iter()
        .copied()
        .filter(|n| names.contains(*n))
        .collect();
    assert!(
        seen_names.len() >= 12,
        "only {seen_names:?} of the {ran} steps' programs were seen; all: {names:?}"
    );
    // The process events are the machine's: on a shared machine other
    // users' processes may raise alerts meanwhile. An alert is the
    // session's unless its ancestry is known and leads elsewhere.
    let me = u64::from(std::process::id());
    let ours = |a: &Value| match a["edr"]["alert"]["ancestors"].as_array() {
        Some(chain) if !chain.is_empty() => chain.iter().any(|p| p["pid"].as_u64() == Some(me)),
        _ => true,
    };
    let raised: Vec<String> = events
        .iter()
        .filter(|e| e["event"]["kind"] == "alert" && ours(e))
        .map(|a| {
            format!(
                "{} {} ({}) [{}] {}",
                a["rule"]["id"],
                a["rule"]["name"],
                a["rule"]["ruleset"],
                a["process"]["executable"],
                a["process"]["command_line"]
            )
        })
        .collect();
    assert!(
        raised.is_empty(),
        "an ordinary session raised alerts:\n{}\nseen: {seen_names:?}\ndetection {snapshot:?}",
        raised.join("\n")
    );
    assert!(snapshot.events_evaluated > 0, "{snapshot:?}");
}
