//! Credential redaction for command lines and environments.
//!
//! Runs before an event is queued, so secrets never reach the batch files.
//! It errs on the side of redacting: a false positive costs a little
//! forensic detail, a false negative leaks a password to disk.

/// What replaces a secret.
pub const REDACTED: &str = "[REDACTED]";

/// Flags whose value is a secret, as `--flag value` or `--flag=value`,
/// compared case-insensitively after stripping leading dashes.
const SECRET_FLAGS: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "secret",
    "token",
    "apikey",
    "api-key",
    "api_key",
    "key",
    "auth",
    "authorization",
    "bearer",
    "credential",
    "credentials",
    "passphrase",
    "storepass",
    "keypass",
    "connection-string",
    "oauth2-bearer",
];

/// Suffixes (after `-` or `_`) that make any flag or variable name secret.
const SECRET_SUFFIXES: &[&str] = &[
    "password",
    "passwd",
    "pass",
    "secret",
    "token",
    "key",
    "apikey",
    "passphrase",
    "pwd",
];

/// Per-tool flags whose next argument (or glued remainder) is a secret.
const TOOL_FLAGS: &[(&str, &[&str])] = &[
    ("mysql", &["-p"]),
    ("mysqldump", &["-p"]),
    ("mysqladmin", &["-p"]),
    ("mariadb", &["-p"]),
    ("mariadb-dump", &["-p"]),
    ("sshpass", &["-p"]),
    ("redis-cli", &["-a"]),
    (
        "curl",
        &["-u", "--user", "-H", "--header", "--proxy-user", "-U"],
    ),
    (
        "wget",
        &["--http-password", "--ftp-password", "--proxy-password"],
    ),
    ("htpasswd", &["-b"]),
    ("smbclient", &["-U"]),
    ("openssl", &["-passin", "-passout", "-pass", "-k"]),
    ("docker", &["-p"]),
    ("ldapsearch", &["-w"]),
    ("ldapmodify", &["-w"]),
    ("ldapadd", &["-w"]),
    ("zip", &["-P"]),
    ("unzip", &["-P"]),
    ("7z", &["-p"]),
    ("7za", &["-p"]),
    ("sqlcmd", &["-P"]),
    ("bcp", &["-P"]),
    ("ipmitool", &["-P"]),
    ("xfreerdp", &["/p"]),
];

/// Environment variable name parts that mark a value as a secret, besides
/// the suffixes above.
const SECRET_NAME_PARTS: &[&str] = &[
    "TOKEN",
    "SECRET",
    "PASSWORD",
    "PASSWD",
    "PASSPHRASE",
    "CREDENTIAL",
    "APIKEY",
    "API_KEY",
    "PRIVATE_KEY",
    "ACCESS_KEY",
    "AUTHORIZATION",
    "COOKIE",
    "MYSQL_PWD",
    "PGPASSWORD",
    "CONNECTION_STRING",
];

/// Whether a variable or flag name marks its value as secret:
/// `*TOKEN*`, `*SECRET*`, `*PASSWORD*`, `*_KEY`, `--db-pass`, ...
pub fn is_secret_name(name: &str) -> bool {
    let bare = name.trim_start_matches('-').trim_start_matches('/');
    if bare.is_empty() {
        return false;
    }
    let lower = bare.to_ascii_lowercase();
    if SECRET_FLAGS.contains(&lower.as_str()) {
        return true;
    }
    let upper = bare.to_ascii_uppercase();
    if SECRET_NAME_PARTS.iter().any(|p| upper.contains(p)) {
        return true;
    }
    SECRET_SUFFIXES.iter().any(|s| {
        lower
            .strip_suffix(s)
            .is_some_and(|head| head.ends_with('-') || head.ends_with('_'))
    })
}

/// Redacts one `NAME=value` environment entry.
pub fn redact_env_entry(entry: &str) -> String {
    match entry.split_once('=') {
        Some((name, _)) if is_secret_name(name) => format!("{name}={REDACTED}"),
        Some((name, value)) => format!("{name}={}", redact_value(value)),
        None => redact_value(entry),
    }
}

/// Redacts a process's arguments; `args[0]` is the program.
pub fn redact_args(args: &[String]) -> Vec<String> {
    let program = args
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a).to_ascii_lowercase())
        .unwrap_or_default();
    let tool_flags: &[&str] = TOOL_FLAGS
        .iter()
        .find(|(t, _)| *t == program)
        .map(|(_, f)| *f)
        .unwrap_or(&[]);

    let mut out = Vec::with_capacity(args.len());
    let mut secret_next = false;
    for (i, arg) in args.iter().enumerate() {
        if std::mem::take(&mut secret_next) {
            out.push(redact_flag_value(arg));
            continue;
        }
        if i > 0 {
            if let Some(redacted) = redact_flag(arg, tool_flags, &mut secret_next) {
                out.push(redacted);
                continue;
            }
        }
        out.push(redact_value(arg));
    }
    out
}

/// Handles one argument that may be a secret-bearing flag. Returns the
/// redacted argument, or None if it is not such a flag. Sets `secret_next`
/// when the flag's value is the following argument.
fn redact_flag(arg: &str, tool_flags: &[&str], secret_next: &mut bool) -> Option<String> {
    // `--password=x`, `password=x`, `DB_PASSWORD=x`, `/p:x`
    if let Some((name, _)) = arg.split_once(['=', ':']) {
        let flagish = name.starts_with('-') || name.starts_with('/') || !name.contains(['/', ' ']);
        if flagish && (is_secret_name(name) || tool_flags.contains(&name)) {
            let sep = &arg[name.len()..=name.len()];
            return Some(format!("{name}{sep}{REDACTED}"));
        }
    }
    if !arg.starts_with('-') {
        return None;
    }
    if tool_flags.contains(&arg) || (arg.starts_with("--") && is_secret_name(arg)) {
        *secret_next = true;
        return Some(arg.to_string());
    }
    // Glued short flags: `mysql -psecret`, `redis-cli -asecret`.
    if !arg.starts_with("--") {
        if let Some(f) = tool_flags
            .iter()
            .find(|f| f.len() == 2 && arg.len() > 2 && arg.starts_with(**f))
        {
            return Some(format!("{f}{REDACTED}"));
        }
    }
    None
}

/// The value after a secret flag. `user:pass` and `Header: value` keep
/// their first part, which is rarely secret and useful in an investigation.
fn redact_flag_value(arg: &str) -> String {
    match arg.split_once(':') {
        Some((head, _)) if !head.is_empty() && head.len() < 64 && !head.contains([' ', '/']) => {
            format!("{head}:{REDACTED}")
        }
        _ => REDACTED.to_string(),
    }
}

/// Redacts secrets inside a free-standing value: URLs with credentials,
/// HTTP authorization schemes, PEM private keys and well-known token shapes.
pub fn redact_value(v: &str) -> String {
    if v.contains("-----BEGIN") && v.contains("PRIVATE KEY") {
        return REDACTED.to_string();
    }
    let s = redact_url_credentials(v);
    let s = redact_authorization(&s);
    redact_token_shapes(&s)
}

/// `scheme://user:pass@host` -> `scheme://user:[REDACTED]@host`, and a bare
/// token as user (`https://ghp_x@github.com`) -> `https://[REDACTED]@...`.
fn redact_url_credentials(v: &str) -> String {
    if !v.contains("://") || !v.contains('@') {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    let mut rest = v;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                match authority[..at].split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(REDACTED),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// `Bearer x`, `Basic x`, `token x` (as in HTTP `Authorization` headers).
fn redact_authorization(v: &str) -> String {
    let lower = v.to_ascii_lowercase();
    for scheme in ["bearer ", "basic ", "token "] {
        if let Some(pos) = lower.find(scheme) {
            let start = pos + scheme.len();
            let end = v[start..]
                .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .map_or(v.len(), |e| start + e);
            if end > start {
                return format!("{}{REDACTED}{}", &v[..start], &v[end..]);
            }
        }
    }
    v.to_string()
}

/// Prefixes of well-known credential formats: GitHub, GitLab, Slack, AWS
/// key ids, Stripe, Google, OpenAI-style keys, npm, PyPI, JWTs, SendGrid,
/// Hugging Face, DigitalOcean, Shopify.
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxs-",
    "sk_live_",
    "sk_test_",
    "rk_live_",
    "sk-",
    "AIza",
    "ya29.",
    "npm_",
    "pypi-",
    "AKIA",
    "ASIA",
    "eyJ",
    "SG.",
    "hf_",
    "dop_v1_",
    "shpat_",
];

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+' | '/' | '=')
}

fn looks_like_token(word: &str) -> bool {
    TOKEN_PREFIXES.iter().any(|p| {
        word.len() >= p.len() + 12 && word.starts_with(p) && word.chars().all(is_token_char)
    })
}

fn redact_token_shapes(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut changed = false;
    let mut word_start = None;
    let flush = |out: &mut String, word: &str, changed: &mut bool| {
        if looks_like_token(word) {
            out.push_str(REDACTED);
            *changed = true;
        } else {
            out.push_str(word);
        }
    };
    for (i, c) in v.char_indices() {
        // `=` and `:` separate `NAME=token` / `user:token` pairs.
        let in_word = is_token_char(c) && c != '=';
        match (in_word, word_start) {
            (true, None) => word_start = Some(i),
            (false, Some(s)) => {
                flush(&mut out, &v[s..i], &mut changed);
                word_start = None;
                out.push(c);
            }
            (false, None) => out.push(c),
            (true, Some(_)) => {}
        }
    }
    if let Some(s) = word_start {
        flush(&mut out, &v[s..], &mut changed);
    }
    if changed {
        out
    } else {
        v.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn flags_with_equals_and_next_value() {
        assert_eq!(
            redact_args(&args(&["app", "--password=hunter2", "--user", "bob"])),
            args(&["app", "--password=[REDACTED]", "--user", "bob"])
        );
        assert_eq!(
            redact_args(&args(&["app", "--api-key", "abc123", "run"])),
            args(&["app", "--api-key", "[REDACTED]", "run"])
        );
        assert_eq!(
            redact_args(&args(&["app", "--db-password", "x"])),
            args(&["app", "--db-password", "[REDACTED]"])
        );
    }

    #[test]
    fn tool_specific_short_flags() {
        assert_eq!(
            redact_args(&args(&["/usr/bin/mysql", "-uroot", "-phunter2", "db"])),
            args(&["/usr/bin/mysql", "-uroot", "-p[REDACTED]", "db"])
        );
        assert_eq!(
            redact_args(&args(&["curl", "-u", "bob:hunter2", "https://x"])),
            args(&["curl", "-u", "bob:[REDACTED]", "https://x"])
        );
        assert_eq!(
            redact_args(&args(&["curl", "-H", "Authorization: Bearer abc.def", "u"])),
            args(&["curl", "-H", "Authorization:[REDACTED]", "u"])
        );
        // `-p` means something else for most tools.
        assert_eq!(
            redact_args(&args(&["mkdir", "-p", "/tmp/x"])),
            args(&["mkdir", "-p", "/tmp/x"])
        );
    }

    #[test]
    fn urls_env_and_tokens() {
        assert_eq!(
            redact_value("postgres://app:s3cret@db:5432/x"),
            "postgres://app:[REDACTED]@db:5432/x"
        );
        assert_eq!(
            redact_env_entry("GITHUB_TOKEN=abc"),
            "GITHUB_TOKEN=[REDACTED]"
        );
        assert_eq!(
            redact_env_entry("AWS_SECRET_ACCESS_KEY=abc"),
            "AWS_SECRET_ACCESS_KEY=[REDACTED]"
        );
        assert_eq!(redact_env_entry("MY_KEY=abc"), "MY_KEY=[REDACTED]");
        assert_eq!(redact_env_entry("PATH=/usr/bin"), "PATH=/usr/bin");
        assert_eq!(redact_env_entry("PWD=/home/u"), "PWD=/home/u");
        assert_eq!(
            redact_value("push ghp_abcdefghijklmnopqrstuvwxyz0123456789 now"),
            "push [REDACTED] now"
        );
        assert_eq!(
            redact_args(&args(&["env", "DB_PASSWORD=x", "app"])),
            args(&["env", "DB_PASSWORD=[REDACTED]", "app"])
        );
    }

    #[test]
    fn ordinary_arguments_survive() {
        let a = args(&["ls", "-la", "/home/u/key-notes.txt", "--color=auto", "a=b"]);
        assert_eq!(redact_args(&a), a);
    }
}
