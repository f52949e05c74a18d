//! Desktop notifications for detection alerts: one per alert while they
//! are few, one summary for a burst, so a flood never floods the desktop.

use edr_api::wire::AlertRow;

/// Alerts notified one by one in a tick; more make one summary.
pub const NOTIFY_EACH_MAX: usize = 3;

/// A desktop notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub title: String,
    pub body: String,
}

/// What to show for `new` (this tick's alerts, oldest first) out of
/// `total` raised since the last tick.
pub fn notices(new: &[AlertRow], total: u64) -> Vec<Notice> {
    if total == 0 {
        return Vec::new();
    }
    if total <= NOTIFY_EACH_MAX as u64 && new.len() as u64 == total {
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
    Notice {
        title: format!("{} · {}", a.rule_name, a.level),
        body: format!("{} · {program}{pid} — {}", a.level, a.rule_name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_api::wire::ProcessRow;
    use edr_model::event::Timestamp;

    /// An alert row: what a notice reads, the rest empty.
    fn alert(seq: u64, rule: &str) -> AlertRow {
        AlertRow {
            seq,
            timestamp: Timestamp(1_795_600_800_000),
            level: "high".into(),
            severity: 73,
            rule_id: "r".into(),
            rule_name: rule.into(),
            description: None,
            author: Vec::new(),
            license: None,
            references: Vec::new(),
            falsepositives: Vec::new(),
            process: Some(ProcessRow {
                pid: 4242,
                name: Some("base64".into()),
                executable: Some("/usr/bin/base64".into()),
                command_line: None,
                entity_id: None,
            }),
            parent: None,
            ancestry: Vec::new(),
            file_path: None,
            destination: None,
            user: None,
            matched_fields: Vec::new(),
            count: 1,
            first_seen: Timestamp(1_795_600_800_000),
        }
    }

    #[test]
    fn a_few_alerts_notify_each_and_a_burst_notifies_once() {
        let one = notices(&[alert(1, "Base64 to shell")], 1);
        assert_eq!(
            one,
            [Notice {
                title: "Base64 to shell · high".into(),
                body: "high · /usr/bin/base64 (pid 4242) — Base64 to shell".into(),
            }]
        );
        let few: Vec<AlertRow> = (1..=3).map(|i| alert(i, "r")).collect();
        assert_eq!(notices(&few, 3).len(), 3);
        let many: Vec<AlertRow> = (1..=8).map(|i| alert(i, &format!("r{}", i % 5))).collect();
        let n = notices(&many, 40);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].title, "40 alerts");
        assert!(n[0].body.contains("and 2 more rules"), "{}", n[0].body);
        // More raised than fetched: one summary, even if few were fetched.
        assert_eq!(notices(&few[..1], 5).len(), 1);
        assert!(notices(&[], 0).is_empty());
    }
}
