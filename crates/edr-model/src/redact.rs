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
    "sig",
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
    "pw",
    "signature",
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
        &[
            "--http-password",
            "--ftp-password",
            "--proxy-password",
            "--header",
        ],
    ),
    ("smbclient", &["-U"]),
    ("openssl", &["-passin", "-passout", "-pass", "-k"]),
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
    ("ssh-keygen", &["-N", "-P"]),
];

/// Flags that are secret only under a subcommand: `docker login -p` is a
/// password, `docker run -p` a port.
const SUBCOMMAND_FLAGS: &[(&str, &str, &[&str])] = &[
    ("docker", "login", &["-p"]),
    ("podman", "login", &["-p"]),
    ("nerdctl", "login", &["-p"]),
    ("az", "login", &["-p"]),
];

/// Flags whose value is an HTTP header: secret only if the header is.
const HEADER_FLAGS: &[&str] = &["-H", "--header"];

/// Values that switch a setting rather than hold a secret
/// (`-o PasswordAuthentication=no`).
const SETTING_WORDS: &[&str] = &["yes", "no", "true", "false", "on", "off", "none", "null"];

fn is_setting_word(v: &str) -> bool {
    SETTING_WORDS.iter().any(|w| v.eq_ignore_ascii_case(w))
}

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
    "SSHPASS",
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
    let tool_flags = tool_flags(&program, args);

    let mut out = Vec::with_capacity(args.len());
    let mut secret_next: Option<&str> = None;
    for (i, arg) in args.iter().enumerate() {
        if let Some(flag) = secret_next.take() {
            out.push(redact_flag_value(flag, arg));
            continue;
        }
        if i > 0 {
            if let Some(redacted) = redact_flag(arg, &tool_flags, &mut secret_next) {
                out.push(redacted);
                continue;
            }
        }
        out.push(redact_value(arg));
    }
    redact_positional(&program, args, &mut out);
    out
}

/// The secret-bearing flags of a program, subcommand-specific ones included.
fn tool_flags<'a>(program: &str, args: &[String]) -> Vec<&'a str> {
    let mut flags: Vec<&str> = TOOL_FLAGS
        .iter()
        .filter(|(t, _)| *t == program)
        .flat_map(|(_, f)| f.iter().copied())
        .collect();
    for (tool, sub, f) in SUBCOMMAND_FLAGS {
        if *tool == program && args.iter().skip(1).any(|a| a == sub) {
            flags.extend(f.iter().copied());
        }
    }
    flags
}

/// Secrets given as positional arguments of well-known commands:
/// `htpasswd -b file user PASSWORD`, `aws configure set aws_secret_access_key
/// VALUE`.
fn redact_positional(program: &str, args: &[String], out: &mut [String]) {
    match program {
        "htpasswd" => {
            let batch = args.iter().skip(1).any(|a| {
                a.strip_prefix('-').is_some_and(|f| {
                    !f.starts_with('-')
                        && f.chars().all(|c| c.is_ascii_alphabetic())
                        && f.contains('b')
                })
            });
            if let (true, Some(last)) = (batch, out.last_mut()) {
                if args.len() > 2 && !last.starts_with('-') {
                    *last = REDACTED.to_string();
                }
            }
        }
        "aws" => {
            let set = args
                .windows(3)
                .position(|w| w[0] == "configure" && w[1] == "set" && is_secret_name(&w[2]));
            if let Some(value) = set.and_then(|i| out.get_mut(i + 3)) {
                *value = REDACTED.to_string();
            }
        }
        _ => {}
    }
}

/// Handles one argument that may be a secret-bearing flag. Returns the
/// redacted argument, or None if it is not such a flag. Sets `secret_next`
/// to the flag when its value is the following argument.
fn redact_flag<'a>(
    arg: &'a str,
    tool_flags: &[&str],
    secret_next: &mut Option<&'a str>,
) -> Option<String> {
    // `--password=x`, `password=x`, `DB_PASSWORD=x`, `/p:x`
    if let Some((name, value)) = arg.split_once(['=', ':']) {
        let flagish = name.starts_with('-') || name.starts_with('/') || !name.contains(['/', ' ']);
        if flagish && (is_secret_name(name) || tool_flags.contains(&name)) {
            if is_setting_word(value) {
                return Some(arg.to_string());
            }
            let sep = &arg[name.len()..=name.len()];
            return Some(format!("{name}{sep}{REDACTED}"));
        }
    }
    if !arg.starts_with('-') {
        return None;
    }
    // A value given inline (`--opt=password=x`) is not a flag whose value
    // follows; its pairs are redacted as a value.
    let takes_next = !arg.contains('=') && arg.starts_with("--") && is_secret_name(arg);
    if tool_flags.contains(&arg) || takes_next {
        *secret_next = Some(arg);
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
/// their first part, which is rarely secret and useful in an investigation;
/// a header that is not secret (`Accept: text/html`) is kept whole.
fn redact_flag_value(flag: &str, arg: &str) -> String {
    match arg.split_once(':') {
        Some((head, value)) if HEADER_FLAGS.contains(&flag) && !is_secret_name(head.trim()) => {
            format!("{head}:{}", redact_value(value))
        }
        Some((head, _)) if !head.is_empty() && head.len() < 64 && !head.contains([' ', '/']) => {
            format!("{head}:{REDACTED}")
        }
        _ => REDACTED.to_string(),
    }
}

/// Redacts secrets inside a free-standing value: URLs with credentials,
/// HTTP authorization schemes, `name=value` pairs with a secret name (query
/// strings, connection strings, JSON, form data), PEM private keys and
/// well-known token shapes.
pub fn redact_value(v: &str) -> String {
    if v.contains("-----BEGIN") && v.contains("PRIVATE KEY") {
        return REDACTED.to_string();
    }
    let s = redact_url_credentials(v);
    let s = redact_authorization(&s);
    let s = redact_pairs(&s);
    redact_token_shapes(&s)
}

/// `password=x&`, `Password=x;`, `"token": "x"`, `'secret':'x'` anywhere in
/// a value: the value of every pair whose name is secret.
fn redact_pairs(v: &str) -> String {
    if !v.contains(['=', ':']) {
        return v.to_string();
    }
    let mut out = String::with_capacity(v.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = v[at..].find(['=', ':']) {
        let sep = at + found;
        at = sep + 1;
        // `scheme://` is a URL, not a `name:value` pair.
        let scheme = v[sep..].starts_with("://");
        let secret = !scheme && key_before(v, sep).is_some_and(is_secret_name);
        let Some((start, end)) = secret.then(|| value_after(v, sep + 1)).flatten() else {
            continue;
        };
        if is_setting_word(&v[start..end]) {
            continue;
        }
        out.push_str(&v[copied..start]);
        out.push_str(REDACTED);
        copied = end;
        at = end.max(at);
    }
    out.push_str(&v[copied..]);
    out
}

/// The name before a `=` or `:` at `sep`, without its quotes.
fn key_before(v: &str, sep: usize) -> Option<&str> {
    let head = &v[..sep];
    let head = head.strip_suffix(['"', '\'']).unwrap_or(head);
    let start = head
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let key = &head[start..];
    (!key.is_empty()).then_some(key)
}

/// The byte range of the value starting at `from` (after spaces): inside
/// its quotes, or up to the next delimiter. None for an empty value or a
/// nested object, whose own pairs are examined one by one.
fn value_after(v: &str, from: usize) -> Option<(usize, usize)> {
    let rest = &v[from..];
    let start = from + (rest.len() - rest.trim_start_matches(' ').len());
    let first = v[start..].chars().next()?;
    match first {
        '"' | '\'' => {
            let inner = start + 1;
            let mut escaped = false;
            let close = v[inner..].char_indices().find(|&(_, c)| {
                let closes = c == first && !escaped;
                escaped = c == '\\' && !escaped;
                closes
            });
            let end = close.map_or(v.len(), |(i, _)| inner + i);
            (end > inner).then_some((inner, end))
        }
        '{' | '[' => None,
        _ => {
            let end = v[start..]
                .find(|c: char| {
                    c.is_whitespace() || matches!(c, '&' | ';' | ',' | '"' | '\'' | '}' | ']')
                })
                .map_or(v.len(), |e| start + e);
            (end > start).then_some((start, end))
        }
    }
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
        let mut end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        // `a@b://u:p@h`: the authority ran into the scheme of a glued second
        // URL; stop before it so the next round sees its `://`.
        if tail[..end].ends_with(':') && tail[end..].starts_with("//") {
            let scheme: usize = tail[..end - 1]
                .chars()
                .rev()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
                .map(char::len_utf8)
                .sum();
            end -= 1 + scheme;
        }
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

/// `Bearer x`, `Basic x`, `token x` (as in HTTP `Authorization` headers),
/// every occurrence: one value may carry several headers.
fn redact_authorization(v: &str) -> String {
    const SCHEMES: [&str; 3] = ["bearer ", "basic ", "token "];
    // ASCII lowercasing keeps every byte offset.
    let lower = v.to_ascii_lowercase();
    // Next occurrence of each scheme at or after `at`, found once each.
    let find = |s: &str, from: usize| lower[from..].find(s).map(|p| from + p);
    let mut next: [Option<usize>; 3] = [
        find(SCHEMES[0], 0),
        find(SCHEMES[1], 0),
        find(SCHEMES[2], 0),
    ];
    let mut out = String::with_capacity(v.len());
    let (mut copied, mut at) = (0, 0);
    loop {
        for (i, n) in next.iter_mut().enumerate() {
            if n.is_some_and(|p| p < at) {
                *n = find(SCHEMES[i], at);
            }
        }
        let Some((i, pos)) = next
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.map(|p| (i, p)))
            .min_by_key(|&(_, p)| p)
        else {
            break;
        };
        let start = pos + SCHEMES[i].len();
        let end = v[start..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .map_or(v.len(), |e| start + e);
        if end > start {
            out.push_str(&v[copied..start]);
            out.push_str(REDACTED);
            copied = end;
        }
        at = end.max(start);
    }
    out.push_str(&v[copied..]);
    out
}

/// Prefixes of well-known credential formats: GitHub, GitLab, Slack, AWS
/// key ids, Stripe, Google, OpenAI-style keys, npm, PyPI, JWTs, SendGrid,
/// Hugging Face, DigitalOcean, Shopify, HashiCorp Vault.
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
    "hvs.",
    "hvb.",
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
        for a in [
            &["ssh", "-p", "2222", "host"][..],
            &["docker", "run", "-p", "8080:80", "nginx"],
            &["ssh", "-o", "PasswordAuthentication=no", "host"],
            &["curl", "-H", "Accept: application/json", "https://x/"],
            &["make", "KEY_DIR=/etc/keys"],
            &["kubectl", "get", "secret", "my-secret"],
            &["cp", "/etc/ssl/private/server.key", "/backup/"],
            &["app", "--url", "https://example.com/a?page=2&sort=name"],
        ] {
            let a = args(a);
            assert_eq!(redact_args(&a), a);
        }
    }

    #[test]
    fn pairs_inside_values() {
        assert_eq!(
            redact_value("jdbc:mysql://db/app?user=u&password=pw1&ssl=true"),
            "jdbc:mysql://db/app?user=u&password=[REDACTED]&ssl=true"
        );
        assert_eq!(
            redact_value("Server=db;User Id=u;Password=pw2;"),
            "Server=db;User Id=u;Password=[REDACTED];"
        );
        assert_eq!(
            redact_value(r#"{"AWS_SECRET_ACCESS_KEY":"pw3","region":"eu"}"#),
            r#"{"AWS_SECRET_ACCESS_KEY":"[REDACTED]","region":"eu"}"#
        );
        assert_eq!(
            redact_value(r#"{"auths":{"r.io":{"auth":"pw4"}}}"#),
            r#"{"auths":{"r.io":{"auth":"[REDACTED]"}}}"#
        );
        assert_eq!(
            redact_value(r#"{"password": "p\"w5", "user": "x"}"#),
            r#"{"password": "[REDACTED]", "user": "x"}"#
        );
        assert_eq!(
            redact_value("x?sv=1&sig=pw6&se=2"),
            "x?sv=1&sig=[REDACTED]&se=2"
        );
    }

    #[test]
    fn inline_values_of_flags_are_not_taken_for_flags() {
        assert_eq!(
            redact_args(&args(&["kubectl", "--from-literal=password=pw7", "next"])),
            args(&["kubectl", "--from-literal=password=[REDACTED]", "next"])
        );
        assert_eq!(
            redact_args(&args(&["npm", "--//r.example/:_authToken=pw8"])),
            args(&["npm", "--//r.example/:_authToken=[REDACTED]"])
        );
    }

    #[test]
    fn positional_and_subcommand_secrets() {
        assert_eq!(
            redact_args(&args(&["htpasswd", "-bc", "/etc/htpasswd", "admin", "pw9"])),
            args(&["htpasswd", "-bc", "/etc/htpasswd", "admin", "[REDACTED]"])
        );
        assert_eq!(
            redact_args(&args(&[
                "aws",
                "configure",
                "set",
                "aws_secret_access_key",
                "pw10"
            ])),
            args(&[
                "aws",
                "configure",
                "set",
                "aws_secret_access_key",
                "[REDACTED]"
            ])
        );
        assert_eq!(
            redact_args(&args(&["docker", "login", "-p", "pw11", "reg"])),
            args(&["docker", "login", "-p", "[REDACTED]", "reg"])
        );
        assert_eq!(
            redact_args(&args(&["ssh-keygen", "-N", "pw12"])),
            args(&["ssh-keygen", "-N", "[REDACTED]"])
        );
        assert_eq!(
            redact_args(&args(&["wget", "--header", "X-Api-Key: pw13", "u"])),
            args(&["wget", "--header", "X-Api-Key:[REDACTED]", "u"])
        );
    }

    #[test]
    fn glued_urls_are_each_redacted() {
        // Found by the redact fuzz target.
        assert_eq!(
            redact_value("x://p@psASIA://u:p@x/"),
            "x://[REDACTED]@psASIA://u:[REDACTED]@x/"
        );
        assert_eq!(
            redact_value("https://a:b@h1/https://c:d@h2"),
            "https://a:[REDACTED]@h1/https://c:[REDACTED]@h2"
        );
        // A scheme named like a secret is still a scheme.
        let once = redact_value("oris://u:p@APIKEYzps://u:p@x/");
        assert_eq!(once, "oris://u:[REDACTED]@APIKEYzps://u:[REDACTED]@x/");
        assert_eq!(redact_value(&once), once);
    }

    #[test]
    fn every_authorization_in_a_value() {
        let v = redact_value("X-A: Bearer tok1 X-B: Basic tok2 x token tok3");
        assert_eq!(
            v,
            "X-A: Bearer [REDACTED] X-B: Basic [REDACTED] x token [REDACTED]"
        );
    }

    #[test]
    fn more_secret_names() {
        assert_eq!(redact_env_entry("SSHPASS=pw14"), "SSHPASS=[REDACTED]");
        assert_eq!(
            redact_env_entry("LDAP_BIND_PW=pw15"),
            "LDAP_BIND_PW=[REDACTED]"
        );
        assert_eq!(redact_env_entry("PWD=/home/u"), "PWD=/home/u");
        assert_eq!(
            redact_value("vault login hvs.CAESIJ4kLmNoPqRsTuVw"),
            "vault login [REDACTED]"
        );
    }
}
