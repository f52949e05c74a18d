//! Credentials never reach disk: a corpus of credential shapes in the
//! arguments and environments of real child processes, collected by the
//! running agent (`collect_environment: true`), and none of them found in
//! any stored byte. Ordinary arguments that merely look like secrets
//! survive.

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::agent::{cli, stdout, walk, write_config, Agent};
use common::wait_for;

/// A process to start: its `argv[0]`, arguments, extra environment, and
/// the secrets among them.
struct Case {
    tool: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    secrets: Vec<String>,
}

fn args_case(tool: &'static str, args: &[&str], secret: &str) -> Case {
    Case {
        tool,
        args: args.iter().map(|a| a.replace("{S}", secret)).collect(),
        env: Vec::new(),
        secrets: vec![secret.to_string()],
    }
}

fn env_case(name: &'static str, value: &str, secret: &str) -> Case {
    Case {
        tool: "app",
        args: Vec::new(),
        env: vec![(name, value.replace("{S}", secret))],
        secrets: vec![secret.to_string()],
    }
}

/// Credential shapes seen in real command lines and environments.
fn corpus() -> Vec<Case> {
    let s = |n: u32| format!("Sx{n:02}q7Wv3kLm9Zp");
    let ghp = "ghp_R4nd0mT0k3nV4lu3F0rT3st1ngAbCdEf12".to_string();
    vec![
        args_case("app", &["--password={S}"], &s(1)),
        args_case("app", &["--password", "{S}", "--user", "bob"], &s(2)),
        args_case("mysql", &["-uroot", "-p{S}", "appdb"], &s(3)),
        args_case(
            "mysqldump",
            &["--user=root", "--password={S}", "appdb"],
            &s(4),
        ),
        args_case("curl", &["-u", "bob:{S}", "https://example.com/"], &s(5)),
        args_case(
            "curl",
            &["-H", "Authorization: Bearer {S}", "https://x.example/"],
            &s(6),
        ),
        args_case("curl", &["https://alice:{S}@example.com/path"], &s(7)),
        args_case("psql", &["postgres://app:{S}@db:5432/appdb"], &s(8)),
        args_case(
            "mongosh",
            &["mongodb+srv://u:{S}@cluster0.example.net/db"],
            &s(9),
        ),
        args_case("redis-cli", &["-h", "cache", "-a", "{S}", "ping"], &s(10)),
        args_case("sshpass", &["-p", "{S}", "ssh", "host"], &s(11)),
        args_case("git", &["clone", "https://{S}@github.com/o/r.git"], &ghp),
        args_case("glab", &["--token", "{S}"], "glpat-Abc123Def456Ghi789Jk"),
        args_case("app", &["--api-key", "{S}"], "sk-proj-Q1w2E3r4T5y6U7i8O9p0"),
        args_case(
            "aws",
            &["configure", "set", "aws_secret_access_key", "{S}"],
            "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY12",
        ),
        args_case(
            "docker",
            &["login", "-u", "me", "-p", "{S}", "registry.example"],
            &s(16),
        ),
        args_case(
            "htpasswd",
            &["-b", "/etc/nginx/htpasswd", "admin", "{S}"],
            &s(17),
        ),
        args_case("openssl", &["enc", "-aes256", "-pass", "pass:{S}"], &s(18)),
        args_case("ldapsearch", &["-x", "-D", "cn=admin", "-w", "{S}"], &s(19)),
        args_case(
            "docker",
            &["run", "--env", r#"{"AWS_SECRET_ACCESS_KEY":"{S}"}"#, "img"],
            &s(20),
        ),
        args_case("docker", &["run", "-e", "DB_PASSWORD={S}", "img"], &s(21)),
        args_case(
            "app",
            &["{S}"],
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlMTIzNDU2",
        ),
        args_case(
            "wget",
            &["--header", "Authorization: Basic {S}", "https://x/"],
            &s(23),
        ),
        args_case("smbclient", &["//srv/share", "-U", "user%{S}"], &s(24)),
        args_case("app", &["--client-secret={S}"], &s(25)),
        args_case(
            "java",
            &["-Djavax.net.ssl.keyStorePassword={S}", "-jar", "app.jar"],
            &s(26),
        ),
        args_case(
            "app",
            &["jdbc:mysql://db:3306/app?user=u&password={S}&ssl=true"],
            &s(27),
        ),
        args_case(
            "app",
            &["Server=db;Database=x;User Id=u;Password={S};"],
            &s(28),
        ),
        args_case("sqlcmd", &["-S", "db", "-U", "sa", "-P", "{S}"], &s(29)),
        args_case(
            "az",
            &["login", "--service-principal", "-u", "appid", "-p", "{S}"],
            &s(30),
        ),
        args_case(
            "vault",
            &["login", "{S}"],
            "hvs.CAESIJ4kLmNoPqRsTuVwXyZ0123",
        ),
        args_case("app", &["--token={S}"], &s(32)),
        args_case(
            "npm",
            &["publish", "--//registry.npmjs.org/:_authToken={S}"],
            &s(33),
        ),
        args_case(
            "app",
            &["--auth-config", r#"{"auths":{"r.io":{"auth":"{S}"}}}"#],
            &s(34),
        ),
        args_case(
            "curl",
            &["--data", "user=x&password={S}", "https://x/login"],
            &s(35),
        ),
        args_case(
            "ssh-keygen",
            &["-t", "ed25519", "-N", "{S}", "-f", "key"],
            &s(36),
        ),
        args_case(
            "gpg",
            &["--batch", "--passphrase", "{S}", "-d", "f.gpg"],
            &s(37),
        ),
        args_case(
            "git",
            &["-c", "http.extraHeader=Authorization: Bearer {S}", "fetch"],
            &s(38),
        ),
        args_case(
            "kubectl",
            &[
                "create",
                "secret",
                "generic",
                "db",
                "--from-literal=password={S}",
            ],
            &s(39),
        ),
        args_case(
            "app",
            &["https://store.example/x?sv=2022&sig={S}&se=2030"],
            &s(40),
        ),
        env_case("AWS_SECRET_ACCESS_KEY", "{S}", &s(51)),
        env_case("AWS_SESSION_TOKEN", "{S}", &s(52)),
        env_case("GITHUB_TOKEN", "{S}", &s(53)),
        env_case("DATABASE_URL", "postgres://u:{S}@db/app", &s(54)),
        env_case("MYSQL_PWD", "{S}", &s(55)),
        env_case("PGPASSWORD", "{S}", &s(56)),
        env_case("REDIS_URL", "redis://:{S}@cache:6379/0", &s(57)),
        env_case("SENTRY_DSN", "https://{S}@o1.ingest.sentry.io/1", &s(58)),
        env_case("https_proxy", "http://u:{S}@proxy:3128", &s(59)),
        env_case(
            "DOCKER_AUTH_CONFIG",
            r#"{"auths":{"r.io":{"auth":"{S}"}}}"#,
            &s(60),
        ),
        env_case("OPENAI_API_KEY", "{S}", "sk-Tk61aBcDeFgHiJkLmNoP"),
        env_case("SSHPASS", "{S}", &s(62)),
        env_case("VAULT_TOKEN", "{S}", &s(63)),
        env_case("SLACK_BOT_TOKEN", "{S}", "xoxb-1234567890-abcdefghijkl"),
        env_case("AZURE_CLIENT_SECRET", "{S}", &s(65)),
        env_case("DJANGO_SECRET_KEY", "{S}", &s(66)),
        env_case("CONNECTION_STRING", "Server=db;Password={S};", &s(67)),
        env_case("LDAP_BIND_PW", "{S}", &s(68)),
        env_case("TF_VAR_db_password", "{S}", &s(69)),
        env_case(
            "JWT",
            "{S}",
            "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2lnVGVzdDcwMTIz",
        ),
        env_case("GOOGLE_API_KEY", "{S}", "AIzaSyA71bCdEfGhIjKlMnOpQrStUv"),
        env_case("SESSION_COOKIE", "{S}", &s(72)),
        env_case("APP_CONFIG", r#"{"db":{"password":"{S}"}}"#, &s(73)),
        env_case("CI_JOB_TOKEN", "{S}", &s(74)),
    ]
}

/// Arguments that only look like secrets: kept as they are.
fn ordinary() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("ssh", vec!["-p", "2222", "user@host"]),
        ("docker", vec!["run", "-p", "8080:80", "nginx"]),
        ("python3", vec!["-m", "http.server", "8080"]),
        (
            "cp",
            vec!["/etc/ssl/private/server.key", "/tmp/backup-key.pem"],
        ),
        ("ls", vec!["--color=auto", "/home/u/keys/id_rsa.pub"]),
        ("ssh", vec!["-o", "PasswordAuthentication=no", "host"]),
        ("grep", vec!["-r", "token", "src/"]),
        ("make", vec!["KEY_DIR=/etc/keys", "install"]),
        ("kubectl", vec!["get", "secret", "my-secret", "-o", "yaml"]),
        (
            "curl",
            vec!["-H", "Accept: application/json", "https://x.example/"],
        ),
        ("tar", vec!["-czf", "keys-backup.tar.gz", "./keys"]),
        ("mkdir", vec!["-p", "/tmp/passwords"]),
    ]
}

/// Starts a process named `tool` that lives a few seconds with `args`
/// after its script (sh keeps its own argv while it runs `sleep`).
fn spawn(tool: &str, args: &[String], env: &[(&str, String)], tag: &str) -> Child {
    Command::new("/bin/sh")
        .arg0(tool)
        .arg("-c")
        .arg("sleep 6; :")
        .args(args)
        .env("EDR_CASE", tag)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn case")
}

/// Every byte under a data dir, gzip files decompressed.
fn all_stored_bytes(data: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for f in walk(data) {
        let raw = std::fs::read(&f).expect("read stored file");
        if f.to_string_lossy().ends_with(".gz") {
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut out)
                .expect("decompress");
        } else {
            out.extend_from_slice(&raw);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn no_credential_reaches_disk() {
    let cases = corpus();
    let benign = ordinary();
    assert!(cases.len() >= 30);
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let config = write_config(dir.path(), |c| {
        c.agent.collection_interval_ms = 200;
        c.collectors.process_monitor.enabled = true;
        c.collectors.process_monitor.scan_interval_ms = 100;
        c.collectors.process_monitor.collect_environment = true;
        c.collectors.process_monitor.calculate_hashes = false;
    });
    let mut agent = Agent::spawn(&config, &data);
    agent.wait_watching();

    let run = std::process::id();
    let mut children = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        children.push(spawn(c.tool, &c.args, &c.env, &format!("s{run}-{i}")));
    }
    for (i, (tool, args)) in benign.iter().enumerate() {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        children.push(spawn(tool, &args, &[], &format!("b{run}-{i}")));
    }
    // Every case was recorded (found by its tag in the stored events).
    let tags: Vec<String> = (0..cases.len())
        .map(|i| format!("EDR_CASE=s{run}-{i}\""))
        .chain((0..benign.len()).map(|i| format!("EDR_CASE=b{run}-{i}\"")))
        .collect();
    let all_seen = wait_for(Duration::from_secs(20), || {
        let text = stdout(&cli(&["events", "--type", "process"], &data));
        tags.iter().all(|t| text.contains(t.as_str())).then_some(())
    });
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let (status, err) = agent.stop();
    assert_eq!(status.code(), Some(0), "{err}");
    let text = stdout(&cli(&["events", "--type", "process"], &data));
    let missing: Vec<_> = tags.iter().filter(|t| !text.contains(t.as_str())).collect();
    assert!(all_seen.is_some(), "cases not recorded: {missing:?}");

    let stored = all_stored_bytes(&data);
    let leaked: Vec<String> = cases
        .iter()
        .flat_map(|c| &c.secrets)
        .filter(|s| contains(&stored, s))
        .cloned()
        .collect();
    assert!(leaked.is_empty(), "secrets found on disk: {leaked:?}");

    // The ordinary arguments are stored as they were.
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    for (i, (tool, args)) in benign.iter().enumerate() {
        let tag = format!("EDR_CASE=b{run}-{i}");
        let e = events
            .iter()
            .find(|e| {
                e["process"]["args"][0] == *tool
                    && e["process"]["env_vars"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|x| x == tag.as_str()))
            })
            .unwrap_or_else(|| panic!("no event for {tool} {args:?}"));
        let stored_args: Vec<&str> = e["process"]["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(
            &stored_args[3..],
            &args[..],
            "{tool}: ordinary arguments changed"
        );
    }
    eprintln!(
        "{} credential cases ({} secrets) and {} ordinary commands through the agent: no leak, ordinary args intact",
        cases.len(),
        cases.iter().map(|c| c.secrets.len()).sum::<usize>(),
        benign.len()
    );
}
