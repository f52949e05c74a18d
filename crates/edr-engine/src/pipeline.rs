//! The pipeline thread: drains the event queue through the stages into
//! the batch writer.
//!
//! ```text
//! queue ─► filter ─► detection ─► taps (recent events, alerts) ─► batch writer ─► sinks
//! ```
//!
//! One thread does all of it because every step is synchronous CPU or disk
//! work and the order of events must hold. Events a stage emits (alerts)
//! pass the stages after it and are written right after the event that
//! caused them. A config change reaches every stage and the writer between
//! two events; nothing queued is lost to it.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use edr_config::Config;
use edr_detect::{DetectionShared, DetectionStage};
use edr_model::event::Event;
use edr_pipeline::stage::{Chain, FilterStage, Item, Stage, Verdict};
use edr_pipeline::Counters;
use edr_store::sink::SinkLink;
use edr_store::writer::{BatchWriter, WriterShared};
use edr_store::Store;

/// Longest the pipeline sleeps with nothing to do, so it notices settings
/// changes and flush requests promptly.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// The stages, the writer and the queue they drain.
pub struct Pipeline {
    rx: Receiver<Event>,
    config: watch::Receiver<Arc<Config>>,
    chain: Chain,
    writer: BatchWriter,
    counters: Arc<Counters>,
    detection: Arc<DetectionShared>,
    /// Reused serialization buffer.
    buf: Vec<u8>,
}

impl Pipeline {
    /// The standard chain: the filter, detection, then `taps` (stages that
    /// only observe, such as the recent-events ring), then the writer, which
    /// tells `sinks` of every committed batch. The detection stage is always
    /// in the chain so `detection.enabled` can be switched live; disabled,
    /// it passes events through untouched.
    pub fn new(
        rx: Receiver<Event>,
        store: Store,
        mut config: watch::Receiver<Arc<Config>>,
        counters: Arc<Counters>,
        shared: Arc<WriterShared>,
        taps: Vec<Box<dyn Stage>>,
        sinks: Vec<SinkLink>,
    ) -> Pipeline {
        let c = Arc::clone(&config.borrow_and_update());
        let detection = DetectionShared::new();
        let mut stages: Vec<Box<dyn Stage>> = vec![
            Box::new(FilterStage::new(&c)),
            Box::new(DetectionStage::new(&c, Arc::clone(&detection))),
        ];
        stages.extend(taps);
        Pipeline {
            rx,
            chain: Chain::new(stages, Arc::clone(&counters)),
            writer: BatchWriter::new(store, &c, Arc::clone(&counters), shared, sinks),
            config,
            counters,
            detection,
            buf: Vec::with_capacity(4096),
        }
    }

    /// The detection stage's counters and status.
    pub fn detection(&self) -> Arc<DetectionShared> {
        Arc::clone(&self.detection)
    }

    /// The stages' names, in order.
    pub fn stages(&self) -> Vec<&'static str> {
        self.chain.names()
    }

    /// Runs until every sender is dropped, then commits the open batch.
    pub fn run(mut self) {
        let mut pending = VecDeque::new();
        loop {
            match self.rx.recv_timeout(self.writer.due_in(IDLE_TICK)) {
                Ok(event) => {
                    // A change made while the queue was quiet applies to
                    // the event that ends the quiet, not only to the next.
                    self.apply_config_change();
                    self.process(event, &mut pending)
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.housekeeping();
        }
        self.writer.finish();
        tracing::debug!("pipeline stopped");
    }

    fn process(&mut self, event: Event, pending: &mut VecDeque<(usize, Event)>) {
        let now = Instant::now();
        self.one(0, &event, now, pending);
        while let Some((from, e)) = pending.pop_front() {
            self.one(from, &e, now, pending);
        }
    }

    fn one(
        &mut self,
        from: usize,
        event: &Event,
        now: Instant,
        pending: &mut VecDeque<(usize, Event)>,
    ) {
        let t = event.event_type();
        let mut item = Item::new(event, &mut self.buf);
        let verdict = self.chain.run_from(from, &mut item, now);
        pending.extend(item.take_emitted());
        if verdict == Verdict::Drop {
            return;
        }
        match item.line() {
            Ok(line) => self.writer.append(t, line),
            Err(e) => {
                tracing::warn!(error = %e, "event could not be serialized");
                self.counters.store_failed.add(t, 1);
            }
        }
    }

    fn apply_config_change(&mut self) {
        if self.config.has_changed().unwrap_or(false) {
            let c = Arc::clone(&self.config.borrow_and_update());
            self.chain.reconfigure(&c);
            self.writer.reconfigure(&c);
        }
    }

    fn housekeeping(&mut self) {
        self.apply_config_change();
        self.writer.tick();
    }
}
