//! Stages: what every event passes between the queue and the batch writer.
//!
//! The pipeline runs, on one thread, in this fixed order (independent of
//! the config):
//!
//! ```text
//! queue ─► filter ─► detection ─► taps (recent events) ─► batch writer ─► sinks
//! ```
//!
//! A [`Stage`] sees each event as an [`Item`]: the typed [`Event`] and its
//! serialized line, made at most once and only when a stage asks for it
//! (the filter's repeat check) or the writer needs it, so a dropped event
//! costs no serialization. A stage may drop the event ([`Verdict::Drop`],
//! counted by the chain under `filtered`) and may add events of its own
//! (an alert) to [`Item::emit`], which go on to the stages after it. A
//! stage is rebuilt from a new config by [`Stage::reconfigure`] between
//! two events, so nothing queued is lost to a settings change.

use std::sync::Arc;
use std::time::Instant;

use edr_config::Config;
use edr_model::event::Event;

use crate::filter::Filter;
use crate::Counters;

/// What a stage decides for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The event goes on to the next stage.
    Keep,
    /// The event is dropped here (counted as filtered).
    Drop,
}

/// One event on its way through the stages.
pub struct Item<'a> {
    pub event: &'a Event,
    line: &'a mut Vec<u8>,
    serialized: bool,
    /// The stage running now.
    stage: usize,
    /// Events stages added, with the stage that added each.
    emitted: Vec<(usize, Event)>,
}

impl<'a> Item<'a> {
    /// `line` is a reused buffer; its content is replaced.
    pub fn new(event: &'a Event, line: &'a mut Vec<u8>) -> Item<'a> {
        Item {
            event,
            line,
            serialized: false,
            stage: 0,
            emitted: Vec::new(),
        }
    }

    /// Adds an event of the stage's own (an alert): it goes on through the
    /// stages after this one, then to the writer, after this event.
    pub fn emit(&mut self, event: Event) {
        self.emitted.push((self.stage, event));
    }

    /// What the stages emitted, each with the index of the first stage it
    /// still has to pass.
    pub fn take_emitted(&mut self) -> Vec<(usize, Event)> {
        std::mem::take(&mut self.emitted)
            .into_iter()
            .map(|(stage, e)| (stage + 1, e))
            .collect()
    }

    /// The event as one line of JSON (no newline), serialized on first use.
    pub fn line(&mut self) -> Result<&[u8], serde_json::Error> {
        if !self.serialized {
            self.line.clear();
            serde_json::to_writer(&mut *self.line, self.event)?;
            self.serialized = true;
        }
        Ok(self.line)
    }
}

/// A step between the queue and the batch writer.
pub trait Stage: Send {
    /// For logs, and the order written down in the module doc.
    fn name(&self) -> &'static str;

    /// Decides on one event; `now` is the same for every stage.
    fn process(&mut self, item: &mut Item<'_>, now: Instant) -> Verdict;

    /// Takes a new config (between two events).
    fn reconfigure(&mut self, config: &Config);
}

/// The stages in their fixed order.
pub struct Chain {
    stages: Vec<Box<dyn Stage>>,
    counters: Arc<Counters>,
}

impl Chain {
    pub fn new(stages: Vec<Box<dyn Stage>>, counters: Arc<Counters>) -> Chain {
        Chain { stages, counters }
    }

    /// Passes `item` through every stage. Returns whether it survived; what
    /// the stages emitted waits in the item ([`Item::take_emitted`]).
    pub fn run(&mut self, item: &mut Item<'_>, now: Instant) -> Verdict {
        self.run_from(0, item, now)
    }

    /// As [`Chain::run`], starting at stage `from` (for events a stage
    /// emitted, which only the stages after it see).
    pub fn run_from(&mut self, from: usize, item: &mut Item<'_>, now: Instant) -> Verdict {
        for (i, stage) in self.stages.iter_mut().enumerate().skip(from) {
            item.stage = i;
            if stage.process(item, now) == Verdict::Drop {
                self.counters.filtered.add(item.event.event_type(), 1);
                return Verdict::Drop;
            }
        }
        Verdict::Keep
    }

    pub fn reconfigure(&mut self, config: &Config) {
        for s in &mut self.stages {
            s.reconfigure(config);
        }
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.stages.iter().map(|s| s.name()).collect()
    }
}

/// The filter as a stage: exclusions and coalescing on the typed event,
/// exact repeats on its serialized line.
pub struct FilterStage {
    filters: edr_config::FiltersConfig,
    filter: Filter,
}

impl FilterStage {
    pub fn new(config: &Config) -> FilterStage {
        FilterStage {
            filter: Filter::new(&config.filters),
            filters: config.filters.clone(),
        }
    }
}

impl Stage for FilterStage {
    fn name(&self) -> &'static str {
        "filter"
    }

    fn process(&mut self, item: &mut Item<'_>, now: Instant) -> Verdict {
        if !self.filter.admit(item.event, now) {
            return Verdict::Drop;
        }
        match item.line() {
            Ok(line) if self.filter.is_repeat(line, now) => Verdict::Drop,
            // An event that cannot be serialized is the writer's to count
            // as lost; the filter has no say on it.
            Ok(_) | Err(_) => Verdict::Keep,
        }
    }

    fn reconfigure(&mut self, config: &Config) {
        if config.filters != self.filters {
            self.filter = Filter::new(&config.filters);
            self.filters = config.filters.clone();
        }
    }
}
