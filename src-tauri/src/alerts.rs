//! Detection alerts as the window, the tray and notifications show them,
//! and the exceptions a person adds from an alert: view types built from
//! the engine's alert records, the checks on what the window sends, and
//! the notification plan for a tick's new alerts.

use std::sync::atomic::{AtomicU64, Ordering};

use edr_api::wire::{AlertRow as AlertRecord, ProcessRow as AlertProcess};
use edr_config::DetectionException;
use serde::{Deserialize, Serialize};

use crate::error::CommandError;

/// Alerts one poll returns at most (the engine's ring holds 200).
pub const MAX_ALERTS_PER_POLL: usize = 100;
/// Longest command line or value sent to the window; the stored alert has
/// it whole.
const MAX_TEXT_CHARS: usize = 4096;
/// Longest rule id accepted (a UUID is 36; Sigma allows any string).
const MAX_RULE_ID_CHARS: usize = 128;
/// Longest executable path accepted (Linux's PATH_MAX).
const MAX_PATH_BYTES: usize = 4096;
/// Exceptions the app itself adds at most; past it the user edits the file.
pub const MAX_EXCEPTIONS: usize = 1000;

/// The alert numbers the person has seen in the Alerts view and that the
/// tray has notified.
#[derive(Debug, Default)]
pub struct AlertMarks {
    seen: AtomicU64,
}

impl AlertMarks {
    /// Alerts raised after the last one seen.
    pub fn unseen(&self, last_seq: u64) -> u64 {
        last_seq.saturating_sub(self.seen.load(Ordering::Relaxed))
    }

    /// Everything up to `seq` has been seen.
    pub fn mark_seen(&self, seq: u64) {
        self.seen.fetch_max(seq, Ordering::Relaxed);
    }

    /// Another engine numbers its alerts from 1: nothing of it is seen yet.
    pub fn reset(&self) {
        self.seen.store(0, Ordering::Relaxed);
    }
}

/// The `detections` part of a dashboard poll.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectionsView {
    /// The newest alert's number: the next poll's `alertsSince`.
    pub last_seq: u64,
    /// Alerts after the poll's `alertsSince`, newest first.
    pub alerts: Vec<AlertView>,
    pub unseen: u64,
    pub rules_loaded: u64,
    pub raised: u64,
    pub suppressed: u64,
    /// Matches an exception turned away.
    pub excepted: u64,
    pub evaluated: u64,
    /// Mean evaluation time per event since start, in microseconds.
    pub eval_us_mean: f64,
    /// The alerts are the service's (numbered apart from the embedded
    /// engine's): the window starts its list over when this changes.
    pub from_service: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertView {
    pub seq: u64,
    /// RFC 3339, UTC.
    pub time: String,
    pub level: String,
    pub severity: u8,
    pub rule_id: String,
    pub rule_name: String,
    pub description: Option<String>,
    pub author: String,
    pub license: Option<String>,
    /// `http(s)` addresses, shown as links; anything else as text.
    pub references: Vec<String>,
    pub falsepositives: Vec<String>,
    /// The executable, or the process name if it is unknown.
    pub program: String,
    /// The executable path an "Allow this program" exception names.
    pub executable: Option<String>,
    pub pid: Option<u32>,
    pub command_line: Option<String>,
    pub user: Option<String>,
    pub file_path: Option<String>,
    pub destination: Option<String>,
    /// The process tree: the oldest known ancestor first, down to the
    /// alert's process (last).
    pub tree: Vec<TreeNode>,
    pub matched_fields: Vec<MatchedField>,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TreeNode {
    pub pid: u32,
    pub program: String,
    pub command_line: Option<String>,
    pub entity_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatchedField {
    pub field: String,
    pub value: String,
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_TEXT_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn program_of(p: &AlertProcess) -> String {
    p.executable
        .clone()
        .or_else(|| p.name.clone())
        .unwrap_or_else(|| "?".into())
}

pub fn alert_view(a: &AlertRecord) -> AlertView {
    let mut tree: Vec<TreeNode> = a
        .ancestry
        .iter()
        .rev()
        .map(|x| TreeNode {
            pid: x.pid,
            program: x.executable.clone().unwrap_or_else(|| "?".into()),
            command_line: x.command_line.as_deref().map(cut),
            entity_id: Some(x.entity_id.clone()),
        })
        .collect();
    // Without a lineage entry the event's own parent fields still say who
    // started the process.
    if tree.is_empty() {
        if let Some(pp) = &a.parent {
            tree.push(TreeNode {
                pid: pp.pid,
                program: program_of(pp),
                command_line: pp.command_line.as_deref().map(cut),
                entity_id: pp.entity_id.clone(),
            });
        }
    }
    if let Some(p) = &a.process {
        tree.push(TreeNode {
            pid: p.pid,
            program: program_of(p),
            command_line: p.command_line.as_deref().map(cut),
            entity_id: p.entity_id.clone(),
        });
    }
    AlertView {
        seq: a.seq,
        time: a.timestamp.to_string(),
        level: a.level.clone(),
        severity: a.severity,
        rule_id: a.rule_id.clone(),
        rule_name: cut(&a.rule_name),
        description: a.description.as_deref().map(cut),
        author: cut(&a.author.join(", ")),
        license: a.license.clone(),
        references: a.references.iter().map(|r| cut(r)).collect(),
        falsepositives: a.falsepositives.iter().map(|r| cut(r)).collect(),
        program: a.process.as_ref().map_or_else(|| "?".into(), program_of),
        executable: a.process.as_ref().and_then(|p| p.executable.clone()),
        pid: a.process.as_ref().map(|p| p.pid),
        command_line: a
            .process
            .as_ref()
            .and_then(|p| p.command_line.as_deref())
            .map(cut),
        user: a.user.clone(),
        file_path: a.file_path.as_deref().map(cut),
        destination: a
            .destination
            .map(|edr_api::wire::Endpoint { ip, port }| match ip {
                std::net::IpAddr::V6(_) => format!("[{ip}]:{port}"),
                std::net::IpAddr::V4(_) => format!("{ip}:{port}"),
            }),
        tree,
        matched_fields: a
            .matched_fields
            .iter()
            .map(|(f, v)| MatchedField {
                field: f.clone(),
                value: cut(v),
            })
            .collect(),
        count: a.count,
    }
}

/// "Silence this rule" (no executable) or "Allow this program".
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddException {
    pub rule_id: String,
    /// The program's path, literally (not a glob).
    pub executable: Option<String>,
}

/// An entry of `detection.exceptions`, as listed in Settings and sent back
/// to remove it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExceptionView {
    pub rule_id: Option<String>,
    pub executable: Option<String>,
    pub command_line_contains: Option<String>,
}

impl From<&DetectionException> for ExceptionView {
    fn from(x: &DetectionException) -> Self {
        ExceptionView {
            rule_id: x.rule_id.clone(),
            executable: x.executable.clone(),
            command_line_contains: x.command_line_contains.clone(),
        }
    }
}

impl ExceptionView {
    fn is(&self, x: &DetectionException) -> bool {
        self.rule_id == x.rule_id
            && self.executable == x.executable
            && self.command_line_contains == x.command_line_contains
    }
}

pub fn exceptions_view(list: &[DetectionException]) -> Vec<ExceptionView> {
    list.iter().map(ExceptionView::from).collect()
}

/// A Sigma rule id as rules carry them: a UUID or a similar token.
pub fn check_rule_id(id: &str) -> Result<(), CommandError> {
    let ok = !id.is_empty()
        && id.chars().count() <= MAX_RULE_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
    if ok {
        Ok(())
    } else {
        Err(CommandError::invalid(format!(
            "ruleId must be 1 to {MAX_RULE_ID_CHARS} letters, digits, '-', '_', '.' or ':'"
        )))
    }
}

fn check_executable(path: &str) -> Result<(), CommandError> {
    if path.starts_with('/') && path.len() <= MAX_PATH_BYTES && !path.chars().any(char::is_control)
    {
        Ok(())
    } else {
        Err(CommandError::invalid(format!(
            "executable must be an absolute path of at most {MAX_PATH_BYTES} bytes without control characters"
        )))
    }
}

/// `path` as a glob that matches exactly it: the exception's executable
/// is a glob, and a program's path may hold glob characters.
pub fn literal_glob(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Adds the exception `req` asks for, unless an equal one exists.
pub fn add_exception(
    list: &mut Vec<DetectionException>,
    req: &AddException,
) -> Result<(), CommandError> {
    check_rule_id(&req.rule_id)?;
    if let Some(p) = &req.executable {
        check_executable(p)?;
    }
    let x = DetectionException {
        rule_id: Some(req.rule_id.clone()),
        executable: req.executable.as_deref().map(literal_glob),
        command_line_contains: None,
    };
    if list.contains(&x) {
        return Ok(());
    }
    if list.len() >= MAX_EXCEPTIONS {
        return Err(CommandError::invalid(format!(
            "at most {MAX_EXCEPTIONS} exceptions can be added here; edit the config file"
        )));
    }
    list.push(x);
    Ok(())
}

/// Removes the first entry equal to `x`; refused if there is none (it
/// was removed meanwhile, or the window sent something it never listed).
pub fn remove_exception(
    list: &mut Vec<DetectionException>,
    x: &ExceptionView,
) -> Result<(), CommandError> {
    let bounded = |v: &Option<String>| v.as_deref().is_none_or(|s| s.len() <= MAX_PATH_BYTES);
    if !(bounded(&x.rule_id) && bounded(&x.executable) && bounded(&x.command_line_contains)) {
        return Err(CommandError::invalid(format!(
            "exception values must be at most {MAX_PATH_BYTES} bytes"
        )));
    }
    match list.iter().position(|e| x.is(e)) {
        Some(i) => {
            list.remove(i);
            Ok(())
        }
        None => Err(CommandError::invalid("no such exception in the config")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_engine::alerts::{AlertProcess, AlertRecord as EngineRecord};
    use edr_model::event::{AlertAncestor, Timestamp};

    fn record(seq: u64, rule: &str) -> AlertRecord {
        AlertRecord::of(&EngineRecord {
            seq,
            timestamp: Timestamp(1_795_600_800_000),
            level: "high".into(),
            severity: 73,
            rule_id: "19bc17cb-cd87-4d05-9ed0-e1e2297bdfb7".into(),
            rule_name: rule.into(),
            description: Some("Decodes base64 into a shell.".into()),
            author: vec!["edr-agent project".into(), "someone".into()],
            license: Some("MIT".into()),
            references: vec!["https://attack.mitre.org/techniques/T1140/".into()],
            falsepositives: vec!["Installers".into()],
            process: Some(AlertProcess {
                pid: 4242,
                name: Some("base64".into()),
                executable: Some("/usr/bin/base64".into()),
                command_line: Some("base64 -d".into()),
                entity_id: Some("e3".into()),
            }),
            parent: Some(AlertProcess {
                pid: 4200,
                executable: Some("/usr/bin/bash".into()),
                ..AlertProcess::default()
            }),
            ancestry: vec![
                AlertAncestor {
                    pid: 4200,
                    executable: Some("/usr/bin/bash".into()),
                    command_line: Some("bash -c x".into()),
                    entity_id: "e2".into(),
                },
                AlertAncestor {
                    pid: 1,
                    executable: Some("/sbin/init".into()),
                    command_line: None,
                    entity_id: "e1".into(),
                },
            ],
            file_path: None,
            destination: Some(("::1".parse().expect("ip"), 443)),
            user: Some("alice".into()),
            matched_fields: vec![("process.command_line".into(), "base64 -d".into())],
            count: 2,
            first_seen: Timestamp(1_795_600_700_000),
        })
    }

    #[test]
    fn the_tree_runs_from_the_oldest_ancestor_down_to_the_process() {
        let v = alert_view(&record(1, "Base64 to shell"));
        let pids: Vec<u32> = v.tree.iter().map(|n| n.pid).collect();
        assert_eq!(pids, [1, 4200, 4242]);
        assert_eq!(v.tree[2].program, "/usr/bin/base64");
        assert_eq!(v.program, "/usr/bin/base64");
        assert_eq!(v.author, "edr-agent project, someone");
        assert_eq!(v.destination.as_deref(), Some("[::1]:443"));
        assert_eq!(v.time, "2026-11-25T10:00:00.000Z");
        let json = serde_json::to_value(&v).expect("serialize");
        assert_eq!(json["ruleName"], "Base64 to shell");
        assert_eq!(json["matchedFields"][0]["field"], "process.command_line");
        assert_eq!(json["tree"][0]["commandLine"], serde_json::Value::Null);
    }

    #[test]
    fn without_lineage_the_parent_fields_make_the_tree() {
        let mut r = record(1, "x");
        r.ancestry.clear();
        let v = alert_view(&r);
        let pids: Vec<u32> = v.tree.iter().map(|n| n.pid).collect();
        assert_eq!(pids, [4200, 4242]);
    }

    #[test]
    fn long_command_lines_are_cut() {
        let mut r = record(1, "x");
        if let Some(p) = r.process.as_mut() {
            p.command_line = Some("é".repeat(10_000));
        }
        let v = alert_view(&r);
        let c = v.command_line.expect("command line");
        assert_eq!(c.chars().count(), MAX_TEXT_CHARS + 1);
        assert!(c.ends_with('…'));
    }

    #[test]
    fn unseen_counts_alerts_after_the_last_seen() {
        let m = AlertMarks::default();
        assert_eq!(m.unseen(5), 5);
        m.mark_seen(3);
        assert_eq!(m.unseen(5), 2);
        m.mark_seen(1);
        assert_eq!(m.unseen(5), 2, "seen never goes back");
    }

    #[test]
    fn exceptions_are_checked_added_once_and_removed() {
        let mut list = Vec::new();
        let rule = "19bc17cb-cd87-4d05-9ed0-e1e2297bdfb7".to_string();
        let allow = AddException {
            rule_id: rule.clone(),
            executable: Some("/opt/we[ird]/a*b".into()),
        };
        add_exception(&mut list, &allow).expect("added");
        add_exception(&mut list, &allow).expect("again");
        assert_eq!(list.len(), 1, "added once");
        assert_eq!(
            list[0].executable.as_deref(),
            Some("/opt/we\\[ird\\]/a\\*b")
        );
        let glob = globset::Glob::new(list[0].executable.as_deref().expect("glob"))
            .expect("a valid glob")
            .compile_matcher();
        assert!(glob.is_match("/opt/we[ird]/a*b"));
        assert!(!glob.is_match("/opt/wei/aXb"));
        let silence = AddException {
            rule_id: rule.clone(),
            executable: None,
        };
        add_exception(&mut list, &silence).expect("added");
        assert_eq!(list.len(), 2);

        for bad in [
            AddException {
                rule_id: String::new(),
                executable: None,
            },
            AddException {
                rule_id: "x".repeat(200),
                executable: None,
            },
            AddException {
                rule_id: "a b".into(),
                executable: None,
            },
            AddException {
                rule_id: rule.clone(),
                executable: Some("relative/path".into()),
            },
            AddException {
                rule_id: rule.clone(),
                executable: Some("/bin/x\nrule_id: y".into()),
            },
            AddException {
                rule_id: rule.clone(),
                executable: Some(format!("/{}", "a".repeat(5000))),
            },
        ] {
            assert!(add_exception(&mut list, &bad).is_err(), "{bad:?}");
        }
        assert_eq!(list.len(), 2);

        let listed = exceptions_view(&list);
        remove_exception(&mut list, &listed[0]).expect("removed");
        assert_eq!(exceptions_view(&list), listed[1..]);
        assert!(remove_exception(&mut list, &listed[0]).is_err(), "gone");
    }

    #[test]
    fn an_added_exception_is_valid_and_saved_with_the_comments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, "# mine\nagent:\n  max_events_per_batch: 9 # keep\n").expect("write");
        let mut c = edr_config::Config::from_file(&path).expect("loads");
        add_exception(
            &mut c.detection.exceptions,
            &AddException {
                rule_id: "19bc17cb-cd87-4d05-9ed0-e1e2297bdfb7".into(),
                executable: Some("/usr/bin/bash".into()),
            },
        )
        .expect("added");
        c.validate().expect("valid");
        c.save(&path).expect("saved");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("# mine") && text.contains("# keep"), "{text}");
        let back = edr_config::Config::from_file(&path).expect("loads");
        assert_eq!(back.detection.exceptions, c.detection.exceptions);
        assert_eq!(back.agent.max_events_per_batch, 9);
    }
}
