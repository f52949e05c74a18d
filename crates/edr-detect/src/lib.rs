//! Detection: Sigma rules evaluated on every event.
//!
//! Rules come from the repository's `rules/` folder (embedded in the
//! binary) and from `detection.rule_paths`; each is mapped from Sigma's
//! Sysmon-style field names to our ECS names ([`mapping`]) and compiled
//! once by rsigma. The [`DetectionStage`] sits between the filter and the
//! taps: it checks each event against the rules of its logsource only
//! (product from `host.os.type`, category from the event), and emits an
//! alert event per match, minus configured exceptions and repeats within
//! the suppression window. Rule files are watched by a loader thread that
//! compiles a new rule set off the pipeline thread; the stage swaps it in
//! between two events.

pub mod alert;
pub mod mapping;
pub mod rules;
pub mod stage;
pub mod view;

pub use alert::{alert_event, severity};
pub use rules::{
    LoadOptions, Match, RuleInfo, RuleSet, SkippedRule, BUILTIN, BUILTIN_RULES, PROJECT_LICENSE,
    SIGMAHQ_LICENSE,
};
pub use stage::{DetectionShared, DetectionStage, DetectionStats, DetectionStatus, RELOAD_POLL};
pub use view::{EcsEvent, JsonEcsEvent};

/// Why detection could not start at all (a rule that fails is skipped,
/// not an error).
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("the ECS field mapping pipeline does not compile: {0}")]
    Pipeline(#[from] rsigma_eval::EvalError),
}
