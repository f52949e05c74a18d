//! The collector's thread: applies what the event source reports as it
//! arrives, reports forks that do not exec, and scans the process table
//! every interval (the inventory, the polling fallback, and the safety
//! net for whatever the source lost).

use crate::adaptive::AdaptiveInterval;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::RecvTimeoutError;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::emit::{Emitter, LiveProcess};
use super::scanner::{Role, ScanError, ScanStats, Scanner};
use super::source::{EventSide, Reread, SourceEvent, SourceRx, FORK_GRACE};
use super::tracker::Tracker;
use crate::CollectorContext;

/// The longest the thread waits before looking at cancellation again.
const CANCEL_POLL: Duration = Duration::from_millis(100);
/// Source events applied between checks of the timers, so a flood does
/// not hold back due forks and scans.
const BATCH: usize = 256;
/// How long the thread lets source events gather after a batch. Events
/// are dated by the kernel and batches are written seconds apart, so this
/// delays nothing anyone sees.
const COALESCE: Duration = Duration::from_millis(10);
/// How long a stopping collector keeps applying queued source events: the
/// queue is empty unless the machine is so busy this thread fell behind.
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// Whether a batch emptied the source's queue.
enum Received {
    All { applied: usize },
    More,
}

/// A running event source.
pub(crate) struct Source {
    pub rx: SourceRx,
    pub reader: JoinHandle<()>,
    /// Reads a live process afresh, where the platform can.
    pub reread: Option<Reread>,
}

pub(crate) struct Monitor {
    ctx: CollectorContext,
    /// The scan period: short while processes come and go, longer while
    /// nothing changes.
    pace: AdaptiveInterval,
    live: Tracker<LiveProcess>,
    emit: Emitter,
    scanner: Scanner,
    events: Option<(SourceRx, EventSide)>,
    reader: Option<JoinHandle<()>>,
    next_scan: Instant,
    /// The source's queue was empty when last looked at. A reconciling
    /// scan waits for that: events still queued would look like misses.
    caught_up: bool,
    failing: bool,
}

impl Monitor {
    pub fn new(
        ctx: CollectorContext,
        pace: AdaptiveInterval,
        collect_environment: bool,
        calculate_hashes: bool,
        source: Option<Source>,
    ) -> Monitor {
        let (events, reader) = match source {
            Some(s) => (Some((s.rx, EventSide::new(s.reread))), Some(s.reader)),
            None => (None, None),
        };
        Monitor {
            emit: Emitter::new(ctx.clone(), calculate_hashes),
            ctx,
            pace,
            live: Tracker::new(),
            scanner: Scanner::new(collect_environment),
            events,
            reader,
            next_scan: Instant::now(),
            caught_up: true,
            failing: false,
        }
    }

    /// Runs until cancelled; `on_source_stopped` is told why an event
    /// source gave up (the monitor then polls).
    pub fn run(mut self, on_source_stopped: impl Fn(&str)) {
        while !self.ctx.cancel.is_cancelled() {
            let now = Instant::now();
            if now >= self.next_scan && self.caught_up {
                let changes = self.scan();
                self.next_scan = Instant::now() + self.pace.after_scan(changes);
            }
            let wake = self.next_wake(now);
            let received = self.receive(wake);
            self.caught_up = !matches!(received, Ok(Received::More));
            match received {
                // A fork is reported without its exec only once nothing
                // queued (its exec among it) is left to apply.
                Ok(Received::All { applied }) => {
                    if let Some((_, side)) = &mut self.events {
                        side.flush(&mut self.live, &mut self.emit, Instant::now());
                    }
                    // Let the next events gather: one wake-up per burst
                    // rather than per event (the reader never waits on us).
                    if applied > 0 {
                        std::thread::sleep(COALESCE);
                    }
                }
                Ok(Received::More) => {}
                Err(reason) => {
                    tracing::warn!("process event source stopped, polling instead: {reason}");
                    on_source_stopped(&reason);
                    self.events = None;
                }
            }
        }
        // The reader stops on the same token, after queueing what the
        // kernel held; what it queued is still reported.
        if let Some(reader) = self.reader.take() {
            if reader.join().is_err() {
                tracing::error!("the process event reader panicked");
            }
        }
        self.drain();
    }

    /// Applies what the source queued before it stopped (normally little:
    /// this thread keeps up), for at most [`DRAIN_FOR`]; what is left then
    /// is counted lost. Forks still waiting for an exec are reported.
    fn drain(&mut self) {
        let until = Instant::now() + DRAIN_FOR;
        while let Some(event) = self.events.as_ref().and_then(|(rx, _)| rx.try_recv()) {
            if Instant::now() >= until {
                self.abandon(event);
                break;
            }
            if self.apply(event).is_err() {
                break;
            }
        }
        if let Some((_, side)) = &mut self.events {
            side.flush(&mut self.live, &mut self.emit, until + FORK_GRACE);
        }
        self.events = None;
    }

    /// Counts `first` and everything still queued as lost.
    fn abandon(&mut self, first: SourceEvent) {
        let mut left = 1u64;
        while self
            .events
            .as_ref()
            .and_then(|(rx, _)| rx.try_recv())
            .is_some()
        {
            left += 1;
        }
        drop(first);
        tracing::warn!(left, "stopping before all process events were recorded");
        self.ctx
            .counters
            .process_events_lost
            .fetch_add(left, Relaxed);
    }

    fn next_wake(&self, now: Instant) -> Instant {
        let due = self
            .events
            .as_ref()
            .and_then(|(_, side)| side.next_due())
            .unwrap_or(self.next_scan);
        due.min(self.next_scan).min(now + CANCEL_POLL)
    }

    /// Waits until `wake` for source events and applies a batch of them.
    /// Err with the reason when the source has stopped.
    fn receive(&mut self, wake: Instant) -> Result<Received, String> {
        const NONE: Received = Received::All { applied: 0 };
        let Some((rx, _)) = &self.events else {
            std::thread::sleep(wake.saturating_duration_since(Instant::now()));
            return Ok(NONE);
        };
        let first = match rx.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => return Ok(NONE),
            // The reader stops first when the collector stops.
            Err(RecvTimeoutError::Disconnected) if self.ctx.cancel.is_cancelled() => {
                return Ok(NONE)
            }
            Err(RecvTimeoutError::Disconnected) => return Err("the reader ended".into()),
        };
        self.apply(first)?;
        for applied in 1..BATCH {
            match self.events.as_ref().and_then(|(rx, _)| rx.try_recv()) {
                Some(event) => self.apply(event)?,
                None => return Ok(Received::All { applied }),
            }
        }
        Ok(Received::More)
    }

    fn apply(&mut self, event: SourceEvent) -> Result<(), String> {
        let Some((_, side)) = &mut self.events else {
            return Ok(());
        };
        match event {
            SourceEvent::Fork(f) => side.fork(f, &mut self.live, Instant::now()),
            SourceEvent::Exec(x) => side.exec(*x, &mut self.live, &mut self.emit),
            SourceEvent::Exit(e) => side.exit(e, &mut self.live, &mut self.emit),
            // What was lost is found by comparing with the process table.
            SourceEvent::Lost => self.next_scan = Instant::now(),
            SourceEvent::Stopped(reason) => return Err(reason),
        }
        Ok(())
    }

    /// Scans once; returns how many starts and ends it reported.
    fn scan(&mut self) -> usize {
        let role = if self.events.is_some() {
            Role::Reconcile
        } else {
            Role::Alone
        };
        let result = self.scanner.scan(&mut self.live, &mut self.emit, role);
        let changes = result.as_ref().map_or(0, |s| s.started + s.ended);
        report(&self.ctx, result, &mut self.failing);
        changes
    }
}

/// Counts failures; warns once per run of failures rather than every scan.
fn report(ctx: &CollectorContext, result: Result<ScanStats, ScanError>, failing: &mut bool) {
    match result {
        Ok(s) => {
            if std::mem::take(failing) {
                tracing::info!("process scans work again");
            }
            tracing::debug!(
                processes = s.processes,
                started = s.started,
                ended = s.ended,
                elapsed_us = u64::try_from(s.elapsed.as_micros()).unwrap_or(u64::MAX),
                "process scan"
            );
        }
        Err(e) => {
            ctx.counters.scan_errors.fetch_add(1, Relaxed);
            if std::mem::replace(failing, true) {
                tracing::debug!("process scan failed again: {e}");
            } else {
                tracing::warn!("process scan failed: {e}");
            }
        }
    }
}
