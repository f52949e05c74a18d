//! The latest stored events, kept in memory for a live view (the app's
//! event table): a tap stage after the filter fills a bounded ring with
//! typed rows, so a display reads fields instead of parsing JSON.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use edr_config::Config;
use edr_model::event::{Action, Event, EventType, Timestamp};
use edr_pipeline::stage::{Item, Stage, Verdict};

/// The process an event is about, as a table row shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentProcess {
    pub pid: u32,
    pub name: String,
    pub command_line: Option<String>,
}

/// One stored event, reduced to what a person scans a table for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecentEvent {
    pub timestamp: Timestamp,
    pub kind: EventType,
    pub action: Action,
    pub process: Option<RecentProcess>,
    pub file_path: Option<String>,
    /// On renames: where the file was before.
    pub original_path: Option<String>,
    /// `tcp` or `udp`.
    pub transport: Option<&'static str>,
    pub source: Option<(IpAddr, u16)>,
    pub destination: Option<(IpAddr, u16)>,
}

impl RecentEvent {
    pub fn of(e: &Event) -> RecentEvent {
        RecentEvent {
            timestamp: e.timestamp,
            kind: e.event_type(),
            action: e.event.action,
            process: e.process.as_ref().map(|p| RecentProcess {
                pid: p.pid,
                name: p.name.clone(),
                command_line: p.command_line.clone(),
            }),
            file_path: e.file.as_ref().map(|f| f.path.clone()),
            original_path: e.edr.as_ref().and_then(|x| x.original_path.clone()),
            transport: e.network.as_ref().map(|n| n.transport),
            source: e.source.as_ref().map(|s| (s.ip, s.port)),
            destination: e.destination.as_ref().map(|d| (d.ip, d.port)),
        }
    }
}

/// A bounded ring of the latest rows, newest last.
#[derive(Debug)]
pub struct RecentEvents {
    rows: Mutex<VecDeque<RecentEvent>>,
    capacity: usize,
}

impl RecentEvents {
    pub fn new(capacity: usize) -> Arc<RecentEvents> {
        Arc::new(RecentEvents {
            rows: Mutex::new(VecDeque::with_capacity(capacity)),
            capacity,
        })
    }

    /// The latest `limit` rows, newest last.
    pub fn latest(&self, limit: usize) -> Vec<RecentEvent> {
        let q = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        let skip = q.len().saturating_sub(limit);
        q.iter().skip(skip).cloned().collect()
    }

    fn push(&self, row: RecentEvent) {
        let mut q = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == self.capacity {
            q.pop_front();
        }
        q.push_back(row);
    }
}

/// The tap: passes every event on and remembers its row.
pub struct RecentTap(pub Arc<RecentEvents>);

impl Stage for RecentTap {
    fn name(&self) -> &'static str {
        "recent-events"
    }

    fn process(&mut self, item: &mut Item<'_>, _now: Instant) -> Verdict {
        self.0.push(RecentEvent::of(item.event));
        Verdict::Keep
    }

    fn reconfigure(&mut self, _config: &Config) {}
}
