//! `shipping.*`: sending every committed batch off the host.
//!
//! Kept in its own file so the shipping settings and their checks live
//! together; `Config::validate` calls [`ShippingConfig::validate`].

use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};

use crate::FieldError;

/// `shipping.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ShippingConfig {
    pub nats: NatsConfig,
}

/// How batches are encoded in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShipCompression {
    None,
    Gzip,
}

/// `shipping.nats.*`: every committed batch published to a NATS JetStream
/// stream; only the server's acknowledgement counts as shipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    /// Ship at all.
    pub enabled: bool,
    /// Server URLs, `nats://` or `tls://` (a single string or a list, for
    /// a cluster).
    #[serde(deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// The JetStream stream that stores the messages.
    pub stream: String,
    /// Subjects are `<subject_prefix>.<host>.events` and `.alerts`.
    pub subject_prefix: String,
    /// Create the stream if it is missing (with the three `stream_*` limits
    /// and file storage); an existing stream with other settings is kept,
    /// with a warning.
    pub create_stream: bool,
    /// Messages older than this many days are dropped by the server (a
    /// created stream only). 1..=3650.
    pub stream_max_age_days: u32,
    /// The created stream's size cap in GiB. (0, 100000].
    pub stream_max_gb: f64,
    /// The server drops a message whose `Nats-Msg-Id` it has seen within
    /// this many seconds: what makes a resend after a crash or an outage
    /// harmless. 1..=86400.
    pub duplicate_window_s: u64,
    /// Message body encoding: `none` or `gzip` (then with a
    /// `Content-Encoding: gzip` header).
    pub compression: ShipCompression,
    /// Data not yet acknowledged is kept past retention up to this many
    /// GiB; past it the oldest unshipped batch is deleted and counted as a
    /// gap. (0, 100000].
    pub max_unshipped_gb: f64,
    /// At shutdown, pending batches keep shipping for at most this long
    /// (milliseconds); the rest ships at the next start. 0..=600000.
    pub shutdown_timeout_ms: u64,
    /// A NATS `.creds` file (user JWT and nkey seed). Mode 0600.
    pub credentials_file: Option<String>,
    /// User name, with `password_file`.
    pub user: Option<String>,
    /// A file holding the password of `user`. Mode 0600.
    pub password_file: Option<String>,
    /// A file holding an authentication token. Mode 0600.
    pub token_file: Option<String>,
    pub tls: NatsTlsConfig,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            enabled: false,
            url: vec!["nats://127.0.0.1:4222".to_string()],
            stream: "EDR".to_string(),
            subject_prefix: "edr".to_string(),
            create_stream: true,
            stream_max_age_days: 30,
            stream_max_gb: 10.0,
            duplicate_window_s: 600,
            compression: ShipCompression::Gzip,
            max_unshipped_gb: 5.0,
            shutdown_timeout_ms: 5000,
            credentials_file: None,
            user: None,
            password_file: None,
            token_file: None,
            tls: NatsTlsConfig::default(),
        }
    }
}

/// `shipping.nats.tls.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct NatsTlsConfig {
    /// CA certificate(s) (PEM) the server's certificate must chain to;
    /// null: the system's roots.
    pub ca_file: Option<String>,
    /// Client certificate (PEM), with `key_file`.
    pub cert_file: Option<String>,
    /// The client certificate's private key (PEM). Mode 0600.
    pub key_file: Option<String>,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl NatsConfig {
    /// Bytes of unshipped data kept at most.
    pub fn max_unshipped_bytes(&self) -> u64 {
        (self.max_unshipped_gb * (1u64 << 30) as f64) as u64
    }
}

impl ShippingConfig {
    /// Pushes one [`FieldError`] per rejected value the key table's
    /// ranges cannot express (`meta::CHECKED_IN_CODE`).
    pub fn validate(&self, errors: &mut Vec<FieldError>) {
        let n = &self.nats;
        if n.url.is_empty() {
            errors.push(FieldError {
                key: "shipping.nats.url".to_string(),
                value: "[]".to_string(),
                allowed: "at least one nats:// or tls:// URL".to_string(),
            });
        }
        for (i, u) in n.url.iter().enumerate() {
            let ok = ["nats://", "tls://"]
                .iter()
                .any(|s| u.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
            if !ok {
                errors.push(FieldError {
                    key: format!("shipping.nats.url[{i}]"),
                    value: format!("{u:?}"),
                    allowed: "a URL starting with nats:// or tls://".to_string(),
                });
            }
        }
        for (key, v) in [
            ("shipping.nats.stream", &n.stream),
            ("shipping.nats.subject_prefix", &n.subject_prefix),
        ] {
            // NATS refuses these in stream names and subject tokens.
            let bad = v.is_empty()
                || v.chars().any(|c| c.is_whitespace() || "*>/\\".contains(c))
                || (key.ends_with("stream") && v.contains('.'));
            if bad {
                errors.push(FieldError {
                    key: key.to_string(),
                    value: format!("{v:?}"),
                    allowed: "a non-empty name without spaces, `*`, `>`, `/` or `\\` (and no `.` in a stream name)".to_string(),
                });
            }
        }
        let auth = [
            n.credentials_file.is_some(),
            n.user.is_some() || n.password_file.is_some(),
            n.token_file.is_some(),
        ];
        if auth.iter().filter(|a| **a).count() > 1 {
            errors.push(FieldError {
                key: "shipping.nats".to_string(),
                value: "several of credentials_file, user, token_file".to_string(),
                allowed: "at most one way to authenticate".to_string(),
            });
        }
        if n.user.is_some() != n.password_file.is_some() {
            errors.push(FieldError {
                key: "shipping.nats.password_file".to_string(),
                value: format!("{:?}", n.password_file),
                allowed: "set together with shipping.nats.user".to_string(),
            });
        }
        if n.tls.cert_file.is_some() != n.tls.key_file.is_some() {
            errors.push(FieldError {
                key: "shipping.nats.tls.key_file".to_string(),
                value: format!("{:?}", n.tls.key_file),
                allowed: "set together with shipping.nats.tls.cert_file".to_string(),
            });
        }
        let files = [
            ("shipping.nats.credentials_file", &n.credentials_file, true),
            ("shipping.nats.password_file", &n.password_file, true),
            ("shipping.nats.token_file", &n.token_file, true),
            ("shipping.nats.tls.key_file", &n.tls.key_file, true),
            ("shipping.nats.tls.ca_file", &n.tls.ca_file, false),
            ("shipping.nats.tls.cert_file", &n.tls.cert_file, false),
        ];
        for (key, path, secret) in files {
            if let Some(p) = path {
                if let Err(why) = check_file(Path::new(p), secret) {
                    errors.push(FieldError {
                        key: key.to_string(),
                        value: format!("{p:?}"),
                        allowed: why,
                    });
                }
            }
        }
    }
}

/// An existing regular file; a secret readable by its owner only, so a
/// config naming a secret anyone on the machine can read is refused.
fn check_file(path: &Path, secret: bool) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("an existing file ({e})"))?;
    if !meta.is_file() {
        return Err("a regular file".to_string());
    }
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "a file readable by its owner only (mode 0600); {} has mode {mode:04o}",
                path.display()
            ));
        }
    }
    let _ = secret;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(c: &ShippingConfig) -> Vec<FieldError> {
        let mut e = Vec::new();
        c.validate(&mut e);
        e
    }

    #[test]
    fn urls_need_a_nats_scheme() {
        let mut c = ShippingConfig::default();
        assert!(errors(&c).is_empty());
        c.nats.url = vec!["nats://a:4222".into(), "http://b".into(), "tls://".into()];
        let keys: Vec<String> = errors(&c).into_iter().map(|e| e.key).collect();
        assert_eq!(keys, ["shipping.nats.url[1]", "shipping.nats.url[2]"]);
    }

    #[test]
    fn a_secret_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret").expect("write");
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let mut c = ShippingConfig::default();
        c.nats.token_file = Some(token.display().to_string());
        let e = errors(&c);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].key, "shipping.nats.token_file");
        assert!(e[0].allowed.contains("mode 0644"), "{}", e[0].allowed);
        assert!(e[0].allowed.contains(&token.display().to_string()));
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(errors(&c).is_empty());
        c.nats.token_file = Some(dir.path().join("missing").display().to_string());
        assert!(errors(&c)[0].allowed.contains("an existing file"));
    }

    #[test]
    fn url_is_a_string_or_a_list() {
        let one: NatsConfig = serde_norway::from_str("url: tls://h:4222\n").expect("one");
        assert_eq!(one.url, ["tls://h:4222"]);
        let two: NatsConfig = serde_norway::from_str("url: [nats://a, nats://b]\n").expect("list");
        assert_eq!(two.url.len(), 2);
    }
}
