//! The detection stage: every event through the rules, an alert per match
//! (minus exceptions and suppressed repeats), rules reloaded off the
//! pipeline thread.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use edr_config::{Config, DetectionConfig, DetectionException};
use edr_model::event::AlertAncestor;
use edr_model::event::{Event, Timestamp};
use edr_pipeline::lineage::{Lineage, MAX_ANCESTORS};
use edr_pipeline::stage::{Item, Stage, Verdict};
use serde::{Deserialize, Serialize};

use crate::alert::alert_event;
use crate::rules::{rule_files, LoadOptions, Match, RuleSet, SkippedRule};

/// How often the loader looks at the rule files' modification times.
pub const RELOAD_POLL: Duration = Duration::from_secs(2);

/// Skipped rules named in the status (written every second); the count
/// is always exact, `edr-agent rules list` names them all.
pub const STATUS_SKIPPED_MAX: usize = 100;

/// Suppression entries kept before expired ones are dropped.
const SUPPRESS_PRUNE_AT: usize = 4096;
/// Hard cap: past it the table is cleared (a flood of distinct programs
/// must not grow memory without bound; the cost is a few early alerts).
const SUPPRESS_MAX: usize = 65_536;

/// Counters the engine reads while the stage runs.
#[derive(Debug, Default)]
pub struct DetectionStats {
    pub rules_loaded: AtomicU64,
    pub rules_skipped: AtomicU64,
    pub rules_below_level: AtomicU64,
    pub events_evaluated: AtomicU64,
    /// Nanoseconds spent evaluating, over `events_evaluated` events.
    pub eval_ns_total: AtomicU64,
    pub alerts_raised: AtomicU64,
    pub alerts_suppressed: AtomicU64,
    /// Matches an entry of `detection.exceptions` turned away.
    pub alerts_excepted: AtomicU64,
    /// Rule sets swapped in after the first.
    pub reloads: AtomicU64,
}

/// What the stage shares with the engine.
#[derive(Debug, Default)]
pub struct DetectionShared {
    pub stats: DetectionStats,
    state: Mutex<SharedState>,
}

#[derive(Debug, Default)]
struct SharedState {
    enabled: bool,
    skipped: Vec<SkippedRule>,
}

/// A status display's view of detection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DetectionStatus {
    pub enabled: bool,
    pub rules_loaded: u64,
    pub rules_skipped: u64,
    pub rules_below_level: u64,
    pub skipped: Vec<SkippedRule>,
    pub events_evaluated: u64,
    /// Mean evaluation time per event, in nanoseconds.
    pub eval_ns_mean: u64,
    pub alerts_raised: u64,
    pub alerts_suppressed: u64,
    pub alerts_excepted: u64,
    pub reloads: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DetectionShared {
    pub fn new() -> Arc<DetectionShared> {
        Arc::new(DetectionShared::default())
    }

    /// Whether the stage evaluates events (false: `detection.enabled` off,
    /// or no rule loaded yet).
    pub fn enabled(&self) -> bool {
        lock(&self.state).enabled
    }

    pub fn status(&self) -> DetectionStatus {
        let s = &self.stats;
        let state = lock(&self.state);
        let evaluated = s.events_evaluated.load(Relaxed);
        DetectionStatus {
            enabled: state.enabled,
            rules_loaded: s.rules_loaded.load(Relaxed),
            rules_skipped: s.rules_skipped.load(Relaxed),
            rules_below_level: s.rules_below_level.load(Relaxed),
            skipped: state
                .skipped
                .iter()
                .take(STATUS_SKIPPED_MAX)
                .cloned()
                .collect(),
            events_evaluated: evaluated,
            eval_ns_mean: s
                .eval_ns_total
                .load(Relaxed)
                .checked_div(evaluated)
                .unwrap_or(0),
            alerts_raised: s.alerts_raised.load(Relaxed),
            alerts_suppressed: s.alerts_suppressed.load(Relaxed),
            alerts_excepted: s.alerts_excepted.load(Relaxed),
            reloads: s.reloads.load(Relaxed),
        }
    }

    fn publish(&self, enabled: bool, set: Option<&RuleSet>) {
        let s = &self.stats;
        let n = |v: usize| v as u64;
        s.rules_loaded
            .store(set.map_or(0, |r| n(r.rules().len())), Relaxed);
        s.rules_skipped
            .store(set.map_or(0, |r| n(r.skipped().len())), Relaxed);
        s.rules_below_level
            .store(set.map_or(0, |r| n(r.below_level())), Relaxed);
        let mut state = lock(&self.state);
        state.enabled = enabled;
        state.skipped = set.map(|r| r.skipped().to_vec()).unwrap_or_default();
    }
}

/// One compiled entry of `detection.exceptions`.
struct Exception {
    rule_id: Option<String>,
    executable: Option<globset::GlobMatcher>,
    command_line_contains: Option<String>,
}

impl Exception {
    fn compile(x: &DetectionException) -> Option<Exception> {
        let executable = match x.executable.as_deref().filter(|s| !s.is_empty()) {
            Some(g) => match globset::Glob::new(g) {
                Ok(g) => Some(g.compile_matcher()),
                Err(e) => {
                    // Validation rejects this before it gets here.
                    tracing::warn!(glob = g, error = %e, "detection exception ignored");
                    return None;
                }
            },
            None => None,
        };
        let x = Exception {
            rule_id: x.rule_id.clone().filter(|s| !s.is_empty()),
            executable,
            command_line_contains: x.command_line_contains.clone().filter(|s| !s.is_empty()),
        };
        (x.rule_id.is_some() || x.executable.is_some() || x.command_line_contains.is_some())
            .then_some(x)
    }

    fn covers(&self, rule_id: &str, e: &Event) -> bool {
        let p = e.process.as_deref();
        self.rule_id.as_deref().is_none_or(|id| id == rule_id)
            && self.executable.as_ref().is_none_or(|g| {
                p.and_then(|p| p.executable.as_deref())
                    .is_some_and(|exe| g.is_match(exe))
            })
            && self.command_line_contains.as_deref().is_none_or(|s| {
                p.and_then(|p| p.command_line.as_deref())
                    .is_some_and(|c| c.contains(s))
            })
    }
}

struct Suppressed {
    window_start: Instant,
    repeats: u64,
    first_repeat: Option<Timestamp>,
}

/// The loader thread's end of the stage.
struct Loader {
    desired: Arc<Mutex<LoadOptions>>,
    wake: SyncSender<()>,
    sets: Receiver<RuleSet>,
}

impl Loader {
    /// Starts the loader. `current`: what the stage already has loaded
    /// (with the rule files' state when it was loaded); `None` loads at
    /// once.
    fn spawn(opts: LoadOptions, current: Option<Fingerprint>, poll: Duration) -> Loader {
        let desired = Arc::new(Mutex::new(opts));
        let (wake, wake_rx) = sync_channel::<()>(1);
        // One set in flight: the loader waits for the stage to take it
        // before compiling the next.
        let (tx, sets) = sync_channel::<RuleSet>(1);
        let d = Arc::clone(&desired);
        let spawned = std::thread::Builder::new()
            .name("edr-rules".into())
            .spawn(move || loader_loop(d, wake_rx, tx, current, poll));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "rule loader thread did not start: rules are not reloaded");
        }
        Loader {
            desired,
            wake,
            sets,
        }
    }

    fn want(&self, opts: LoadOptions) {
        *lock(&self.desired) = opts;
        // Full means a wake-up is already pending.
        let _ = self.wake.try_send(());
    }
}

/// The loaded options and the state of their rule files.
type Fingerprint = (LoadOptions, Vec<(PathBuf, Option<SystemTime>, u64)>);

fn fingerprint(opts: &LoadOptions) -> Fingerprint {
    let mut files = Vec::new();
    for p in &opts.paths {
        let root = edr_config::expand_home(p);
        for f in rule_files(&root).unwrap_or_default() {
            let meta = std::fs::metadata(&f).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            files.push((f, mtime, meta.map_or(0, |m| m.len())));
        }
    }
    (opts.clone(), files)
}

fn loader_loop(
    desired: Arc<Mutex<LoadOptions>>,
    wake: Receiver<()>,
    tx: SyncSender<RuleSet>,
    mut current: Option<Fingerprint>,
    poll: Duration,
) {
    loop {
        let opts = lock(&desired).clone();
        let fp = fingerprint(&opts);
        if current.as_ref() != Some(&fp) {
            match RuleSet::load(&opts) {
                Ok(set) => {
                    tracing::info!(
                        loaded = set.rules().len(),
                        skipped = set.skipped().len(),
                        "detection rules reloaded"
                    );
                    if tx.send(set).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(error = %e, "detection rules not reloaded"),
            }
            current = Some(fp);
        }
        match wake.recv_timeout(poll) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The stage.
pub struct DetectionStage {
    config: DetectionConfig,
    shared: Arc<DetectionShared>,
    rules: Option<RuleSet>,
    loader: Option<Loader>,
    exceptions: Vec<Exception>,
    window: Duration,
    suppressed: HashMap<(String, String, String), Suppressed>,
    /// Who started whom, from the process events passing by: an alert
    /// names the chain of programs above the one it is about.
    lineage: Lineage,
    poll: Duration,
}

impl DetectionStage {
    /// Loads the rules now (on the caller's thread, so the first event is
    /// already checked) and starts the loader.
    pub fn new(config: &Config, shared: Arc<DetectionShared>) -> DetectionStage {
        DetectionStage::with_poll(config, shared, RELOAD_POLL)
    }

    /// As [`DetectionStage::new`], looking for rule changes every `poll`.
    pub fn with_poll(
        config: &Config,
        shared: Arc<DetectionShared>,
        poll: Duration,
    ) -> DetectionStage {
        let c = &config.detection;
        let mut stage = DetectionStage {
            config: c.clone(),
            shared,
            rules: None,
            loader: None,
            exceptions: Vec::new(),
            window: Duration::from_millis(c.suppress_window_ms),
            suppressed: HashMap::new(),
            lineage: Lineage::default(),
            poll,
        };
        stage.set_exceptions();
        if c.enabled {
            stage.start();
        } else {
            stage.shared.publish(false, None);
        }
        stage
    }

    fn start(&mut self) {
        let opts = LoadOptions::of(&self.config);
        let fp = fingerprint(&opts);
        match RuleSet::load(&opts) {
            Ok(set) => {
                self.shared.publish(true, Some(&set));
                self.rules = Some(set);
                self.loader = Some(Loader::spawn(opts, Some(fp), self.poll));
            }
            Err(e) => {
                tracing::error!(error = %e, "detection off: the field mapping does not compile");
                self.shared.publish(false, None);
            }
        }
    }

    fn set_exceptions(&mut self) {
        self.exceptions = self
            .config
            .exceptions
            .iter()
            .filter_map(Exception::compile)
            .collect();
    }

    /// Takes a rule set the loader finished.
    fn poll_loader(&mut self) {
        let Some(l) = &self.loader else { return };
        match l.sets.try_recv() {
            Ok(set) => {
                self.shared.publish(true, Some(&set));
                self.shared.stats.reloads.fetch_add(1, Relaxed);
                self.rules = Some(set);
            }
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => {
                tracing::warn!("rule loader stopped: rules are not reloaded");
                self.loader = None;
            }
        }
    }

    /// The rule set in use.
    pub fn rules(&self) -> Option<&RuleSet> {
        self.rules.as_ref()
    }

    fn raise(&mut self, m: &Match<'_>, e: &Event, now: Instant, out: &mut Vec<Event>) {
        let shared = Arc::clone(&self.shared);
        let stats = &shared.stats;
        if self.exceptions.iter().any(|x| x.covers(&m.rule.id, e)) {
            stats.alerts_excepted.fetch_add(1, Relaxed);
            return;
        }
        if self.window.is_zero() {
            stats.alerts_raised.fetch_add(1, Relaxed);
            out.push(alert_event(m, e, 1, e.timestamp, self.ancestors(e)));
            return;
        }
        let p = e.process.as_deref();
        let exe = p.and_then(|p| p.executable.clone()).unwrap_or_default();
        let parent = p
            .and_then(|p| p.parent.as_ref())
            .map(|pp| {
                pp.executable
                    .clone()
                    .or_else(|| pp.entity_id.clone())
                    .unwrap_or_else(|| pp.pid.to_string())
            })
            .unwrap_or_default();
        let key = (m.rule.id.clone(), exe, parent);
        let (count, first) = match self.suppressed.get_mut(&key) {
            Some(s) if now.duration_since(s.window_start) < self.window => {
                s.repeats += 1;
                s.first_repeat.get_or_insert(e.timestamp);
                stats.alerts_suppressed.fetch_add(1, Relaxed);
                return;
            }
            Some(s) => {
                let r = (1 + s.repeats, s.first_repeat.unwrap_or(e.timestamp));
                *s = Suppressed {
                    window_start: now,
                    repeats: 0,
                    first_repeat: None,
                };
                r
            }
            None => {
                self.prune(now);
                self.suppressed.insert(
                    key,
                    Suppressed {
                        window_start: now,
                        repeats: 0,
                        first_repeat: None,
                    },
                );
                (1, e.timestamp)
            }
        };
        stats.alerts_raised.fetch_add(1, Relaxed);
        out.push(alert_event(m, e, count, first, self.ancestors(e)));
    }

    fn ancestors(&self, e: &Event) -> Vec<AlertAncestor> {
        let Some(p) = e.process.as_deref() else {
            return Vec::new();
        };
        self.lineage.ancestry(p.pid, MAX_ANCESTORS)
    }

    fn prune(&mut self, now: Instant) {
        if self.suppressed.len() < SUPPRESS_PRUNE_AT {
            return;
        }
        let window = self.window;
        self.suppressed
            .retain(|_, s| s.repeats > 0 || now.duration_since(s.window_start) < window);
        if self.suppressed.len() >= SUPPRESS_MAX {
            self.suppressed.clear();
        }
    }
}

impl Stage for DetectionStage {
    fn name(&self) -> &'static str {
        "detection"
    }

    fn process(&mut self, item: &mut Item<'_>, now: Instant) -> Verdict {
        self.poll_loader();
        let Some(rules) = &self.rules else {
            return Verdict::Keep;
        };
        let e = item.event;
        if e.event.kind != "event" && e.event.kind != "state" {
            return Verdict::Keep;
        }
        // The inventory (`state`) feeds the lineage only; no rule applies.
        self.lineage.observe(e);
        if e.event.kind != "event" {
            return Verdict::Keep;
        }
        let t0 = Instant::now();
        let matches = rules.evaluate(e);
        let stats = &self.shared.stats;
        stats.events_evaluated.fetch_add(1, Relaxed);
        stats
            .eval_ns_total
            .fetch_add(t0.elapsed().as_nanos() as u64, Relaxed);
        if matches.is_empty() {
            return Verdict::Keep;
        }
        // The matches borrow the rule set; alerts are built first, the
        // suppression state updated by `raise` after.
        let owned: Vec<(
            crate::rules::RuleInfo,
            std::collections::BTreeMap<String, String>,
        )> = matches
            .into_iter()
            .map(|m| (m.rule.clone(), m.matched_fields))
            .collect();
        let mut out = Vec::new();
        for (rule, matched_fields) in &owned {
            let m = Match {
                rule,
                matched_fields: matched_fields.clone(),
            };
            self.raise(&m, e, now, &mut out);
        }
        for a in out {
            item.emit(a);
        }
        Verdict::Keep
    }

    fn reconfigure(&mut self, config: &Config) {
        let new = &config.detection;
        if *new == self.config {
            return;
        }
        let old = std::mem::replace(&mut self.config, new.clone());
        if new.exceptions != old.exceptions {
            self.set_exceptions();
        }
        if new.suppress_window_ms != old.suppress_window_ms {
            self.window = Duration::from_millis(new.suppress_window_ms);
            self.suppressed.clear();
        }
        match (old.enabled, new.enabled) {
            (true, false) => {
                // Dropping the loader's ends stops its thread.
                self.loader = None;
                self.rules = None;
                self.suppressed.clear();
                self.lineage = Lineage::default();
                self.shared.publish(false, None);
            }
            (false, true) => {
                self.loader = Some(Loader::spawn(LoadOptions::of(new), None, self.poll));
            }
            (true, true) => {
                let opts = LoadOptions::of(new);
                if opts != LoadOptions::of(&old) {
                    match &self.loader {
                        Some(l) => l.want(opts),
                        None => self.loader = Some(Loader::spawn(opts, None, self.poll)),
                    }
                }
            }
            (false, false) => {}
        }
    }
}
