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
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use edr_config::Config;
use edr_detect::{DetectionShared, DetectionStage};
use edr_model::event::Event;
use edr_pipeline::stage::{Chain, FilterStage, Item, Stage, Verdict};
use edr_pipeline::{Counters, EventRx};
use edr_store::sink::SinkLink;
use edr_store::writer::{BatchWriter, WriterShared};
use edr_store::Store;

/// Longest the pipeline sleeps with nothing to do, so it notices settings
/// changes and flush requests promptly.
const IDLE_TICK: Duration = Duration::from_secs(1);
/// A batch holding an alert is written at once rather than when it is
/// full or due (an alert is read within a second, not at the next
/// `collection_interval_ms`), but not more often than this: a burst of
/// alerts must not cost an fsync each (~12 ms on this project's disk).
const ALERT_FLUSH_MIN: Duration = Duration::from_millis(100);

/// The stages, the writer and the queue they drain.
pub struct Pipeline {
    rx: EventRx,
    config: watch::Receiver<Arc<Config>>,
    chain: Chain,
    writer: BatchWriter,
    counters: Arc<Counters>,
    detection: Arc<DetectionShared>,
    /// Reused serialization buffer.
    buf: Vec<u8>,
    /// The open batch holds an alert not yet written out.
    alert_pending: bool,
    last_alert_flush: Option<Instant>,
}

impl Pipeline {
    /// The standard chain: the filter, detection, then `taps` (stages that
    /// only observe, such as the recent-events ring), then the writer, which
    /// tells `sinks` of every committed batch. The detection stage is always
    /// in the chain so `detection.enabled` can be switched live; disabled,
    /// it passes events through untouched.
    pub fn new(
        rx: EventRx,
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
            alert_pending: false,
            last_alert_flush: None,
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
            match self
                .rx
                .recv_timeout(self.writer.due_in(self.alert_due_in()))
            {
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
            Ok(line) => {
                self.writer.append(t, line);
                if event.event.kind == "alert" {
                    self.alert_pending = true;
                }
            }
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

    /// Time until a pending alert may be written out (`IDLE_TICK` when
    /// none is pending).
    fn alert_due_in(&self) -> Duration {
        if !self.alert_pending {
            return IDLE_TICK;
        }
        self.last_alert_flush.map_or(Duration::ZERO, |t| {
            ALERT_FLUSH_MIN.saturating_sub(t.elapsed())
        })
    }

    fn housekeeping(&mut self) {
        self.apply_config_change();
        if self.alert_pending && self.alert_due_in().is_zero() {
            self.writer.commit();
            self.alert_pending = false;
            self.last_alert_flush = Some(Instant::now());
        }
        self.writer.tick();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use edr_model::event::{Action, EventMeta, File, Origin, Timestamp};

    /// Records the batch size in force when each event passes.
    struct Seen {
        batch: u32,
        log: Arc<Mutex<Vec<u32>>>,
    }

    impl Stage for Seen {
        fn name(&self) -> &'static str {
            "seen"
        }

        fn process(&mut self, _item: &mut Item<'_>, _now: Instant) -> Verdict {
            self.log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(self.batch);
            Verdict::Keep
        }

        fn reconfigure(&mut self, config: &Config) {
            self.batch = config.agent.max_events_per_batch;
        }
    }

    fn event(n: u32) -> Event {
        let mut e = Event::new(
            &Origin::detect(),
            Timestamp::now(),
            EventMeta {
                kind: "event",
                category: &["file"],
                types: &["creation"],
                action: Action::FileCreated,
                duration: None,
                severity: None,
                risk_score: None,
            },
        );
        e.file = Some(Box::new(File {
            path: format!("/home/u/notes-{n}.txt"),
            ..File::default()
        }));
        e
    }

    #[test]
    fn a_change_made_while_quiet_applies_to_the_next_event() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.detection.enabled = false;
        let (config_tx, config_rx) = watch::channel(Arc::new(config.clone()));
        let counters = Counters::new();
        let (tx, rx) = edr_pipeline::channel(16, Arc::clone(&counters));
        let log = Arc::new(Mutex::new(Vec::new()));
        let seen = Seen {
            batch: config.agent.max_events_per_batch,
            log: Arc::clone(&log),
        };
        let pipeline = Pipeline::new(
            rx,
            Store::open(dir.path()).expect("store"),
            config_rx,
            counters,
            Arc::new(WriterShared::default()),
            vec![Box::new(seen)],
            Vec::new(),
        );
        let run = std::thread::spawn(move || pipeline.run());
        let seen_n = |n: usize| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while log.lock().unwrap_or_else(|p| p.into_inner()).len() < n {
                assert!(Instant::now() < deadline, "event {n} never passed");
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        assert!(tx.send(event(1)));
        seen_n(1);
        // The pipeline now waits for the next event (up to its idle tick):
        // the change and the event arrive during that wait.
        config.agent.max_events_per_batch = 7;
        config_tx.send_replace(Arc::new(config));
        assert!(tx.send(event(2)));
        seen_n(2);
        drop(tx);
        run.join().expect("pipeline thread");
        assert_eq!(*log.lock().unwrap_or_else(|p| p.into_inner()), [1000, 7]);
    }

    /// Raises an alert for every event it sees.
    struct AlertEvery;

    impl Stage for AlertEvery {
        fn name(&self) -> &'static str {
            "alert-every"
        }

        fn process(&mut self, item: &mut Item<'_>, _now: Instant) -> Verdict {
            if item.event.event.kind != "alert" {
                let mut alert = item.event.clone();
                alert.event.kind = "alert";
                item.emit(alert);
            }
            Verdict::Keep
        }

        fn reconfigure(&mut self, _config: &Config) {}
    }

    #[test]
    fn a_batch_holding_an_alert_is_written_at_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::default();
        config.detection.enabled = false;
        // Without the alert, this batch would stay open for an hour.
        config.agent.collection_interval_ms = 3_600_000;
        config.agent.adaptive_batching.enabled = false;
        let (_config_tx, config_rx) = watch::channel(Arc::new(config));
        let counters = Counters::new();
        let (tx, rx) = edr_pipeline::channel(16, Arc::clone(&counters));
        let pipeline = Pipeline::new(
            rx,
            Store::open(dir.path()).expect("store"),
            config_rx,
            Arc::clone(&counters),
            Arc::new(WriterShared::default()),
            vec![Box::new(AlertEvery)],
            Vec::new(),
        );
        let run = std::thread::spawn(move || pipeline.run());
        assert!(tx.send(event(1)));
        // 100 ms in the code; 20 s is the margin for a loaded machine, far
        // below the hour the batch would otherwise wait.
        let deadline = Instant::now() + Duration::from_secs(20);
        while edr_store::list_batches(dir.path())
            .expect("list")
            .is_empty()
        {
            assert!(
                Instant::now() < deadline,
                "the alert's batch was not written"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let batches = edr_store::list_batches(dir.path()).expect("list");
        let stats = edr_store::batch_stats(&batches[0]).expect("stats");
        assert_eq!(stats.events, 2, "the event and its alert");
        drop(tx);
        run.join().expect("pipeline thread");
    }
}
