//! The latest detection alerts, kept in memory for a live view (the app's
//! Alerts view and its notifications): a tap stage after detection fills
//! a bounded ring with typed records, each numbered, so a client asks for
//! the alerts after the last one it has seen instead of re-reading all.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use edr_config::Config;
use edr_model::event::{AlertAncestor, Event, Timestamp};
use edr_pipeline::stage::{Item, Stage, Verdict};

/// Alerts the ring holds: a screenful of history, a few hundred KB at most.
pub const ALERT_RING: usize = 200;

/// The process an alert is about, or its parent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertProcess {
    pub pid: u32,
    pub name: Option<String>,
    pub executable: Option<String>,
    pub command_line: Option<String>,
    pub entity_id: Option<String>,
}

/// One alert, reduced to what a person needs to judge it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    /// Numbers every alert the ring has seen, from 1, without gaps.
    pub seq: u64,
    pub timestamp: Timestamp,
    /// The rule's Sigma level (`low` … `critical`).
    pub level: String,
    pub severity: u8,
    pub rule_id: String,
    pub rule_name: String,
    pub description: Option<String>,
    pub author: Vec<String>,
    pub license: Option<String>,
    pub references: Vec<String>,
    pub falsepositives: Vec<String>,
    pub process: Option<AlertProcess>,
    pub parent: Option<AlertProcess>,
    /// The processes above `process`, its parent first.
    pub ancestry: Vec<AlertAncestor>,
    pub file_path: Option<String>,
    pub destination: Option<(IpAddr, u16)>,
    pub user: Option<String>,
    /// ECS field name to the value the rule matched on, by name.
    pub matched_fields: Vec<(String, String)>,
    /// Matches this alert stands for (repeats suppressed before it, plus 1).
    pub count: u64,
    pub first_seen: Timestamp,
}

impl AlertRecord {
    /// The record of an alert event; `None` for any other event.
    pub fn of(e: &Event, seq: u64) -> Option<AlertRecord> {
        if e.event.kind != "alert" {
            return None;
        }
        let rule = e.rule.as_deref()?;
        let alert = e.edr.as_ref().and_then(|x| x.alert.as_deref());
        let p = e.process.as_deref();
        Some(AlertRecord {
            seq,
            timestamp: e.timestamp,
            level: alert.map(|a| a.level).unwrap_or_default().to_string(),
            severity: e.event.severity.unwrap_or(0),
            rule_id: rule.id.clone(),
            rule_name: rule.name.clone(),
            description: rule.description.clone(),
            author: rule.author.clone(),
            license: rule.license.clone(),
            references: alert.map(|a| a.references.clone()).unwrap_or_default(),
            falsepositives: alert.map(|a| a.falsepositives.clone()).unwrap_or_default(),
            process: p.map(|p| AlertProcess {
                pid: p.pid,
                name: Some(p.name.clone()),
                executable: p.executable.clone(),
                command_line: p.command_line.clone(),
                entity_id: Some(p.entity_id.clone()),
            }),
            parent: p.and_then(|p| p.parent.as_ref()).map(|pp| AlertProcess {
                pid: pp.pid,
                name: pp.name.clone(),
                executable: pp.executable.clone(),
                command_line: pp.command_line.clone(),
                entity_id: pp.entity_id.clone(),
            }),
            ancestry: alert.map(|a| a.ancestors.clone()).unwrap_or_default(),
            file_path: e.file.as_ref().map(|f| f.path.clone()),
            destination: e.destination.as_ref().map(|d| (d.ip, d.port)),
            user: e
                .user
                .as_ref()
                .or_else(|| p.and_then(|p| p.user.as_ref()))
                .and_then(|u| u.name.clone()),
            matched_fields: alert
                .map(|a| {
                    a.matched_fields
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            count: alert.map_or(1, |a| a.count),
            first_seen: alert.map_or(e.timestamp, |a| a.first_seen),
        })
    }
}

/// What [`AlertRing::since`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertsSince {
    /// The newest alert's number (0 before the first): ask for alerts
    /// after it next time.
    pub last_seq: u64,
    /// Alerts after the asked number, oldest first; only the newest when
    /// more came than were asked for or than the ring holds.
    pub alerts: Vec<AlertRecord>,
}

#[derive(Debug, Default)]
struct Ring {
    records: VecDeque<AlertRecord>,
    last_seq: u64,
}

/// A bounded ring of the latest alerts, newest last.
#[derive(Debug)]
pub struct AlertRing {
    ring: Mutex<Ring>,
    capacity: usize,
    /// The newest alert's number, for clients that wait for the next alert
    /// instead of polling for it (a notification within a second).
    newest: tokio::sync::watch::Sender<u64>,
}

impl AlertRing {
    pub fn new(capacity: usize) -> Arc<AlertRing> {
        Arc::new(AlertRing {
            ring: Mutex::new(Ring {
                records: VecDeque::with_capacity(capacity.min(1024)),
                last_seq: 0,
            }),
            capacity,
            newest: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Changes whenever an alert is recorded; its value is the newest
    /// alert's number (as [`AlertsSince::last_seq`]).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.newest.subscribe()
    }

    /// The alerts numbered above `since_seq`, at most `limit` (the newest).
    pub fn since(&self, since_seq: u64, limit: usize) -> AlertsSince {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let newer = r.records.iter().filter(|a| a.seq > since_seq);
        let n = newer.clone().count();
        AlertsSince {
            last_seq: r.last_seq,
            alerts: newer.skip(n.saturating_sub(limit)).cloned().collect(),
        }
    }

    /// Records `e` if it is an alert.
    pub fn observe(&self, e: &Event) {
        if e.event.kind != "alert" || self.capacity == 0 {
            return;
        }
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let Some(record) = AlertRecord::of(e, r.last_seq + 1) else {
            return;
        };
        r.last_seq = record.seq;
        if r.records.len() == self.capacity {
            r.records.pop_front();
        }
        r.records.push_back(record);
        let seq = r.last_seq;
        drop(r);
        self.newest.send_replace(seq);
    }
}

/// The tap: passes every event on and remembers the alerts.
pub struct AlertTap(pub Arc<AlertRing>);

impl Stage for AlertTap {
    fn name(&self) -> &'static str {
        "alerts"
    }

    fn process(&mut self, item: &mut Item<'_>, _now: Instant) -> Verdict {
        self.0.observe(item.event);
        Verdict::Keep
    }

    fn reconfigure(&mut self, _config: &Config) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use edr_model::event::{
        Action, AlertExt, EdrExt, EventMeta, Origin, ParentProcess, Process, Rule,
    };

    fn process_event() -> Event {
        let origin = Origin::detect();
        let mut e = Event::new(
            &origin,
            Timestamp(1_795_600_800_000),
            EventMeta {
                kind: "event",
                category: &["process"],
                types: &["start"],
                action: Action::ProcessExec,
                duration: None,
                severity: None,
                risk_score: None,
            },
        );
        e.process = Some(Box::new(Process {
            pid: 4242,
            name: "bash".into(),
            executable: Some("/usr/bin/bash".into()),
            command_line: Some("bash -c echo aWQK | base64 -d | sh".into()),
            entity_id: "e-4242".into(),
            parent: Some(ParentProcess {
                pid: 4000,
                executable: Some("/usr/bin/zsh".into()),
                ..ParentProcess::default()
            }),
            ..Process::default()
        }));
        e
    }

    fn alert_event(rule: &str) -> Event {
        let mut e = process_event();
        e.event.kind = "alert";
        e.event.severity = Some(73);
        e.rule = Some(Box::new(Rule {
            id: rule.into(),
            name: "Base64 to shell".into(),
            author: vec!["edr-agent project".into()],
            ..Rule::default()
        }));
        e.edr = Some(Box::new(EdrExt {
            alert: Some(Box::new(AlertExt {
                level: "high",
                matched_fields: [("process.command_line".to_string(), "x".to_string())]
                    .into_iter()
                    .collect(),
                count: 3,
                first_seen: Timestamp(1_795_600_700_000),
                last_seen: Timestamp(1_795_600_800_000),
                ancestors: vec![AlertAncestor {
                    pid: 4000,
                    executable: Some("/usr/bin/zsh".into()),
                    command_line: Some("zsh".into()),
                    entity_id: "e-4000".into(),
                }],
                ..AlertExt::default()
            })),
            ..EdrExt::default()
        }));
        e
    }

    #[test]
    fn records_alerts_only_with_their_fields() {
        let ring = AlertRing::new(10);
        ring.observe(&process_event());
        assert_eq!(ring.since(0, 10), AlertsSince::default());
        ring.observe(&alert_event("r1"));
        let got = ring.since(0, 10);
        assert_eq!(got.last_seq, 1);
        let a = &got.alerts[0];
        assert_eq!(
            (a.seq, a.level.as_str(), a.severity, a.rule_id.as_str()),
            (1, "high", 73, "r1")
        );
        let p = a.process.as_ref().expect("process");
        assert_eq!(
            (p.pid, p.executable.as_deref()),
            (4242, Some("/usr/bin/bash"))
        );
        assert_eq!(a.parent.as_ref().map(|p| p.pid), Some(4000));
        assert_eq!(a.ancestry.len(), 1);
        assert_eq!(a.matched_fields[0].0, "process.command_line");
        assert_eq!((a.count, a.first_seen), (3, Timestamp(1_795_600_700_000)));
        assert_eq!(a.author, ["edr-agent project"]);
    }

    #[test]
    fn since_returns_only_newer_and_the_ring_stays_bounded() {
        let ring = AlertRing::new(3);
        for i in 0..5 {
            ring.observe(&alert_event(&format!("r{i}")));
        }
        let all = ring.since(0, 100);
        assert_eq!(all.last_seq, 5);
        let seqs: Vec<u64> = all.alerts.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, [3, 4, 5], "the oldest fell out");
        let newer = ring.since(4, 100);
        assert_eq!(newer.alerts.len(), 1);
        assert_eq!(newer.alerts[0].rule_id, "r4");
        assert!(ring.since(5, 100).alerts.is_empty());
        let limited = ring.since(0, 2);
        let seqs: Vec<u64> = limited.alerts.iter().map(|a| a.seq).collect();
        assert_eq!(seqs, [4, 5], "the newest of too many");
    }
}
