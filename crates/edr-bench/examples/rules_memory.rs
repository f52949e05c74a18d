//! The heap a loaded rule set holds: live bytes after `RuleSet::load`, and
//! the peak while loading, counted by a global allocator that wraps the
//! system's. What our own per-rule metadata (`RuleInfo`) takes of it is
//! summed from its strings.
//!
//! ```text
//! cargo run --release -p edr-bench --example rules_memory -- [--events N] [RULE_PATH...]
//! ```
//!
//! Without paths: the built-in rules (the default config). With paths:
//! the built-in rules plus those files or directories, at every level, as
//! `detection.rule_paths` would load them. `--events N` then evaluates N
//! events of the seeded synthetic mix and says what the heap grew by: the
//! matchers' search caches, which are allocated on first use.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;
use std::sync::atomic::{AtomicIsize, Ordering};

use edr_bench::workload::SyntheticEvents;
use edr_config::RuleLevel;
use edr_detect::rules::{LoadOptions, RuleInfo, RuleSet};
use edr_model::event::Origin;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// counters are only arithmetic on the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        grew(l.size() as isize);
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        grew(n as isize - l.size() as isize);
        // SAFETY: as for dealloc, and `n` is the caller's new size.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes of one rule's metadata: the struct and its strings.
fn info_bytes(r: &RuleInfo) -> usize {
    let s = |x: &String| x.capacity();
    let o = |x: &Option<String>| x.as_ref().map_or(0, String::capacity);
    let v = |x: &Vec<String>| {
        x.capacity() * std::mem::size_of::<String>() + x.iter().map(String::capacity).sum::<usize>()
    };
    std::mem::size_of::<RuleInfo>()
        + s(&r.id)
        + s(&r.title)
        + s(&r.ruleset)
        + s(&r.file)
        + o(&r.description)
        + o(&r.license)
        + o(&r.version)
        + o(&r.category)
        + o(&r.product)
        + v(&r.author)
        + v(&r.references)
        + v(&r.falsepositives)
        + v(&r.tags)
        + v(&r.tactics)
        + v(&r.techniques)
}

fn kib(b: isize) -> f64 {
    b as f64 / 1024.0
}

fn main() -> ExitCode {
    let mut paths: Vec<String> = std::env::args().skip(1).collect();
    let mut events = 0usize;
    if let Some(i) = paths.iter().position(|a| a == "--events") {
        let n = paths.get(i + 1).and_then(|n| n.parse().ok());
        let Some(n) = n else {
            eprintln!("--events takes a number of events");
            return ExitCode::FAILURE;
        };
        events = n;
        paths.drain(i..i + 2);
    }
    let opts = if paths.is_empty() {
        LoadOptions::of(&edr_config::Config::default().detection)
    } else {
        LoadOptions {
            builtin: true,
            paths,
            min_level: RuleLevel::Informational,
        }
    };
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let set = match RuleSet::load(&opts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot load the rules: {e}");
            return ExitCode::FAILURE;
        }
    };
    let live = LIVE.load(Ordering::Relaxed) - before;
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let infos: usize = set.rules().iter().map(info_bytes).sum();
    println!(
        "{} rules loaded, {} skipped: {:.0} KiB live after the load ({:.1} KiB a rule), peak {:.0} KiB while loading",
        set.rules().len(),
        set.skipped().len(),
        kib(live),
        kib(live) / set.rules().len().max(1) as f64,
        kib(peak)
    );
    println!(
        "  of which the rules' metadata (RuleInfo): {:.0} KiB; the compiled engine and the rest: {:.0} KiB",
        kib(infos as isize),
        kib(live - infos as isize)
    );
    if events > 0 {
        let evs = SyntheticEvents::new(Origin::detect(), 42).take(events);
        let before = LIVE.load(Ordering::Relaxed);
        let mut matches = 0usize;
        for e in &evs {
            matches += set.evaluate(e).len();
        }
        let grown = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "  after evaluating {events} synthetic events ({matches} matches): {:.0} KiB more live",
            kib(grown)
        );
    }
    std::hint::black_box(&set);
    ExitCode::SUCCESS
}
