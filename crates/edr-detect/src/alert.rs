//! An alert: an ECS event built from a rule match and the matched event.

use std::sync::Arc;

use edr_config::RuleLevel;
use edr_model::event::{
    AlertAncestor, AlertExt, EdrExt, Event, EventMeta, Origin, Rule, Threat, ThreatIds,
    ThreatNames, Timestamp,
};

use crate::rules::Match;

/// `event.severity` and `event.risk_score` of a Sigma level.
pub fn severity(level: RuleLevel) -> u8 {
    match level {
        RuleLevel::Informational => 1,
        RuleLevel::Low => 21,
        RuleLevel::Medium => 47,
        RuleLevel::High => 73,
        RuleLevel::Critical => 99,
    }
}

/// The alert for `m` on `e`, standing for `count` matches since
/// `first_seen`; `ancestors`: the processes above `e`'s, parent first.
pub fn alert_event(
    m: &Match<'_>,
    e: &Event,
    count: u64,
    first_seen: Timestamp,
    ancestors: Vec<AlertAncestor>,
) -> Event {
    let r = m.rule;
    let origin = Origin {
        host: Arc::clone(&e.host),
        agent: Arc::clone(&e.agent),
    };
    let sev = severity(r.level);
    let mut a = Event::new(
        &origin,
        e.timestamp,
        EventMeta {
            kind: "alert",
            category: e.event.category,
            types: e.event.types,
            action: e.event.action,
            duration: None,
            severity: Some(sev),
            risk_score: Some(f32::from(sev)),
        },
    );
    a.process = e.process.as_ref().map(|p| {
        let mut p = p.clone();
        // The environment stays on the event itself: an alert repeats what
        // a person needs to judge it, and environments are large.
        p.env_vars = Vec::new();
        p
    });
    a.user = e.process.as_ref().and_then(|p| p.user.clone());
    a.file = e.file.clone();
    a.source = e.source.clone();
    a.destination = e.destination.clone();
    a.network = e.network.clone();
    a.rule = Some(Box::new(Rule {
        id: r.id.clone(),
        name: r.title.clone(),
        description: r.description.clone(),
        author: r.author.clone(),
        license: r.license.clone(),
        reference: r.references.first().cloned(),
        ruleset: r.ruleset.clone(),
        version: r.version.clone(),
    }));
    if !r.tactics.is_empty() || !r.techniques.is_empty() {
        a.threat = Some(Box::new(Threat {
            framework: "MITRE ATT&CK",
            tactic: ThreatNames {
                name: r.tactics.clone(),
            },
            technique: ThreatIds {
                id: r.techniques.clone(),
            },
        }));
    }
    a.edr = Some(Box::new(EdrExt {
        original_path: e.edr.as_ref().and_then(|x| x.original_path.clone()),
        alert: Some(Box::new(AlertExt {
            level: r.level.as_str(),
            matched_fields: m.matched_fields.clone(),
            falsepositives: r.falsepositives.clone(),
            references: r.references.clone(),
            count,
            first_seen,
            last_seen: e.timestamp,
            ancestors,
        })),
        ..EdrExt::default()
    }));
    a
}
