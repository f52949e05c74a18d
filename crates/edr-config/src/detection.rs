//! `detection.*`: Sigma rules evaluated on every event.
//!
//! Kept in its own file so the detection stage's settings and their checks
//! live together; `Config::validate` calls [`DetectionConfig::validate`].

use serde::{Deserialize, Serialize};

use crate::FieldError;

/// Longest suppression window accepted: one day.
pub const MAX_SUPPRESS_WINDOW_MS: u64 = 86_400_000;

/// `detection.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectionConfig {
    /// Evaluate rules on every stored event and store an alert per match.
    pub enabled: bool,
    /// Load the rules built into the agent (the repository's `rules/`).
    pub builtin_rules: bool,
    /// Files or directories of Sigma YAML (`.yml`/`.yaml`, searched
    /// recursively), loaded besides the built-in rules and reloaded when
    /// they change. `~/` is expanded.
    pub rule_paths: Vec<String>,
    /// Rules below this Sigma level are not loaded.
    pub min_level: RuleLevel,
    /// The same rule on the same program and parent within this many
    /// milliseconds raises one alert; repeats are counted and reported on
    /// the next alert. 0 = every match is an alert; at most one day.
    pub suppress_window_ms: u64,
    /// Matches that are not alerts: each entry names at least one of a rule
    /// id, a glob on `process.executable` and a command-line substring; all
    /// named must hold.
    pub exceptions: Vec<DetectionException>,
}

impl Default for DetectionConfig {
    fn default() -> Self {
        DetectionConfig {
            enabled: true,
            builtin_rules: true,
            rule_paths: Vec::new(),
            min_level: RuleLevel::Low,
            suppress_window_ms: 60_000,
            exceptions: Vec::new(),
        }
    }
}

/// A Sigma rule level, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleLevel {
    Informational,
    Low,
    Medium,
    High,
    Critical,
}

impl RuleLevel {
    pub const ALL: [RuleLevel; 5] = [
        RuleLevel::Informational,
        RuleLevel::Low,
        RuleLevel::Medium,
        RuleLevel::High,
        RuleLevel::Critical,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleLevel::Informational => "informational",
            RuleLevel::Low => "low",
            RuleLevel::Medium => "medium",
            RuleLevel::High => "high",
            RuleLevel::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<RuleLevel> {
        RuleLevel::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

/// One entry of `detection.exceptions`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectionException {
    /// The rule's `id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    /// A glob on the matched event's `process.executable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executable: Option<String>,
    /// A substring of the matched event's `process.command_line`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command_line_contains: Option<String>,
}

impl DetectionConfig {
    /// Pushes one [`FieldError`] per rejected value the key table's
    /// ranges cannot express (`meta::CHECKED_IN_CODE`).
    pub fn validate(&self, errors: &mut Vec<FieldError>) {
        for (i, p) in self.rule_paths.iter().enumerate() {
            if p.trim().is_empty() || p.contains('\0') {
                errors.push(FieldError {
                    key: format!("detection.rule_paths[{i}]"),
                    value: format!("{p:?}"),
                    allowed: "a file or directory path, not empty, without NUL bytes".to_string(),
                });
            }
        }
        for (i, x) in self.exceptions.iter().enumerate() {
            let key = format!("detection.exceptions[{i}]");
            let blank = |v: &Option<String>| v.as_deref().is_none_or(|s| s.is_empty());
            if blank(&x.rule_id) && blank(&x.executable) && blank(&x.command_line_contains) {
                errors.push(FieldError {
                    key: key.clone(),
                    value: "{}".to_string(),
                    allowed: "at least one of rule_id, executable, command_line_contains"
                        .to_string(),
                });
            }
            if let Some(g) = &x.executable {
                if let Err(e) = globset::Glob::new(g) {
                    errors.push(FieldError {
                        key: format!("{key}.executable"),
                        value: format!("{g:?}"),
                        allowed: format!("a glob pattern ({})", e.kind()),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_need_a_field_and_a_valid_glob() {
        let c = DetectionConfig {
            exceptions: vec![
                DetectionException::default(),
                DetectionException {
                    executable: Some("/usr/bin/[".to_string()),
                    ..Default::default()
                },
                DetectionException {
                    rule_id: Some("x".to_string()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let mut errors = Vec::new();
        c.validate(&mut errors);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "detection.exceptions[0]",
                "detection.exceptions[1].executable"
            ]
        );
    }

    #[test]
    fn the_loader_names_the_detection_key_that_is_wrong() {
        let e = crate::Config::from_yaml("f.yaml", "detection:\n  min_level: severe\n")
            .expect_err("unknown level");
        assert!(e.to_string().contains("detection.min_level"), "{e}");
        let e = crate::Config::from_yaml("f.yaml", "detection:\n  suppress_window_ms: 86400001\n")
            .expect_err("out of range");
        let keys: Vec<String> = e.field_errors().into_iter().map(|f| f.key).collect();
        assert_eq!(keys, ["detection.suppress_window_ms"]);
        let e = crate::Config::from_yaml(
            "f.yaml",
            "detection:\n  exceptions:\n    - {}\n    - {executable: \"a[\"}\n",
        )
        .expect_err("bad exceptions");
        let keys: Vec<String> = e.field_errors().into_iter().map(|f| f.key).collect();
        assert_eq!(
            keys,
            [
                "detection.exceptions[0]",
                "detection.exceptions[1].executable"
            ]
        );
        let e = crate::Config::from_yaml("f.yaml", "detection:\n  exceptions:\n    - {rule: x}\n")
            .expect_err("unknown exception key");
        assert!(e.to_string().contains("rule"), "{e}");
        let ok = crate::Config::from_yaml(
            "f.yaml",
            "detection:\n  min_level: high\n  exceptions:\n    - {rule_id: x, command_line_contains: --dry-run}\n",
        )
        .expect("valid");
        assert_eq!(ok.detection.min_level, RuleLevel::High);
    }

    #[test]
    fn levels_order_and_parse() {
        assert!(RuleLevel::Low < RuleLevel::Critical);
        for l in RuleLevel::ALL {
            assert_eq!(RuleLevel::parse(l.as_str()), Some(l));
        }
    }
}
