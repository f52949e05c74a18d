//! Desktop notifications for detection alerts: the freedesktop
//! `org.freedesktop.Notifications.Notify` call on the session bus, which
//! every Linux desktop's notification daemon answers.

use std::collections::HashMap;

use edr_api::wire::AlertRow;
use zbus::zvariant::Value;

/// Alerts notified one by one in a tick; more make one summary.
pub const EACH_MAX: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub title: String,
    pub body: String,
}

/// What to show for `new` (oldest first) out of `total` raised since the
/// last look: one notice each while they are few, one summary for a burst.
pub fn notices(new: &[AlertRow], total: u64) -> Vec<Notice> {
    if total == 0 {
        return Vec::new();
    }
    if total <= EACH_MAX as u64 && new.len() as u64 == total {
        return new.iter().map(notice).collect();
    }
    let mut rules: Vec<&str> = Vec::new();
    for a in new.iter().rev() {
        if !rules.contains(&a.rule_name.as_str()) {
            rules.push(&a.rule_name);
        }
    }
    let mut body = rules.iter().take(3).copied().collect::<Vec<_>>().join("; ");
    if rules.len() > 3 {
        body.push_str(&format!("; and {} more rules", rules.len() - 3));
    }
    vec![Notice {
        title: format!("{total} alerts"),
        body,
    }]
}

fn notice(a: &AlertRow) -> Notice {
    let program = a
        .process
        .as_ref()
        .and_then(|p| p.executable.clone().or_else(|| p.name.clone()))
        .unwrap_or_else(|| "?".into());
    let pid = a
        .process
        .as_ref()
        .map(|p| format!(" (pid {})", p.pid))
        .unwrap_or_default();
    let parent = a
        .parent
        .as_ref()
        .and_then(|p| p.executable.clone().or_else(|| p.name.clone()))
        .map(|p| format!(", started by {p}"))
        .unwrap_or_default();
    Notice {
        title: format!("{} · {}", a.rule_name, a.level),
        body: format!("{program}{pid}{parent}"),
    }
}

/// Shows `n`; the daemon's id for it.
pub async fn show(bus: &zbus::Connection, n: &Notice) -> zbus::Result<u32> {
    let hints: HashMap<&str, Value<'_>> = HashMap::new();
    let reply = bus
        .call_method(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            Some("org.freedesktop.Notifications"),
            "Notify",
            &(
                "EDR Agent",
                0u32,
                "",
                n.title.as_str(),
                n.body.as_str(),
                Vec::<&str>::new(),
                hints,
                -1i32,
            ),
        )
        .await?;
    reply.body().deserialize::<u32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An alert row: the fields a notice reads, the rest empty.
    fn alert(rule: &str) -> AlertRow {
        AlertRow {
            seq: 1,
            timestamp: edr_model::event::Timestamp::now(),
            level: "high".into(),
            severity: 73,
            rule_id: "r".into(),
            rule_name: rule.into(),
            description: None,
            author: Vec::new(),
            license: None,
            references: Vec::new(),
            falsepositives: Vec::new(),
            process: Some(edr_api::wire::ProcessRow {
                pid: 42,
                name: Some("sh".into()),
                executable: Some("/usr/bin/sh".into()),
                command_line: None,
                entity_id: None,
            }),
            parent: Some(edr_api::wire::ProcessRow {
                pid: 1,
                name: Some("bash".into()),
                executable: Some("/usr/bin/bash".into()),
                command_line: None,
                entity_id: None,
            }),
            ancestry: Vec::new(),
            file_path: None,
            destination: None,
            user: None,
            matched_fields: Vec::new(),
            count: 1,
            first_seen: edr_model::event::Timestamp::now(),
        }
    }

    #[test]
    fn a_few_alerts_are_one_notice_each_naming_the_program_and_its_parent() {
        let got = notices(&[alert("Base64 decoded into a shell")], 1);
        assert_eq!(
            got,
            vec![Notice {
                title: "Base64 decoded into a shell · high".into(),
                body: "/usr/bin/sh (pid 42), started by /usr/bin/bash".into(),
            }]
        );
    }

    #[test]
    fn a_burst_is_one_summary() {
        let new: Vec<AlertRow> = (0..5).map(|i| alert(&format!("rule {i}"))).collect();
        let got = notices(&new, 40);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].title, "40 alerts");
        assert_eq!(got[0].body, "rule 4; rule 3; rule 2; and 2 more rules");
    }
}
