//! Redaction on arbitrary arguments and environment entries: never panics,
//! keeps the argument count, and leaves no URL password and no HTTP
//! authorization credential in clear.
#![no_main]

use edr_model::redact::{redact_args, redact_env_entry, redact_value, REDACTED};
use libfuzzer_sys::fuzz_target;

/// `scheme://user:password@host` with a password other than the marker.
fn url_password_in_clear(v: &str) -> Option<&str> {
    let mut rest = v;
    while let Some(p) = rest.find("://") {
        let tail = &rest[p + 3..];
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        if let Some(at) = authority.rfind('@') {
            let userinfo = &authority[..at];
            // A later `://` inside means a glued URL: judged on its own.
            if !userinfo.contains("://") {
                if let Some((_, pass)) = userinfo.split_once(':') {
                    if !pass.is_empty() && !pass.contains(REDACTED) {
                        return Some(authority);
                    }
                }
            }
        }
        rest = tail;
    }
    None
}

/// `Bearer x` / `Basic x` with `x` not redacted.
fn authorization_in_clear(v: &str) -> Option<String> {
    let lower = v.to_ascii_lowercase();
    for scheme in ["bearer ", "basic "] {
        for (pos, _) in lower.match_indices(scheme) {
            let after = &v[pos + scheme.len()..];
            let word: String = after
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
                .collect();
            if !word.is_empty() && !word.contains(REDACTED) && !REDACTED.contains(word.as_str()) {
                return Some(word);
            }
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let args: Vec<String> = text.split('\0').map(str::to_string).collect();
    let once = redact_args(&args);
    assert_eq!(once.len(), args.len(), "argument count changed");
    for a in &args {
        let v = redact_value(a);
        if let Some(found) = url_password_in_clear(&v) {
            panic!("URL password in clear in {v:?} (from {a:?}): {found:?}");
        }
        if let Some(found) = authorization_in_clear(&v) {
            panic!("authorization in clear in {v:?} (from {a:?}): {found:?}");
        }
        let _ = redact_env_entry(a);
    }
});
