//! Loading rules (built-in and from `detection.rule_paths`) into one
//! compiled engine, with every rule that does not load reported.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use edr_config::{DetectionConfig, RuleLevel};
use edr_model::event::Event;
use rsigma_eval::{apply_pipelines, compile_rule, CompiledRule, Engine, Pipeline};
use rsigma_parser::{parse_sigma_yaml, FilterRule, Level, SigmaRule};
use serde::Serialize;
use serde_json::Value;

use crate::view::{json_logsources, logsources, EcsEvent, JsonEcsEvent};
use crate::DetectError;

include!(concat!(env!("OUT_DIR"), "/builtin_rules.rs"));

/// `rule.ruleset` of the rules built into the agent.
pub const BUILTIN: &str = "builtin";

/// `rule.license` of the built-in rules: the project's.
pub const PROJECT_LICENSE: &str = "Apache-2.0";

/// `rule.license` of rules from a SigmaHQ checkout.
pub const SIGMAHQ_LICENSE: &str = "DRL-1.1";

/// The file a SigmaHQ checkout keeps its rule license in.
const SIGMAHQ_LICENSE_FILE: &str = "LICENSE.Detection.Rules.md";

/// The Sigma categories our events are routed to.
pub const SUPPORTED_CATEGORIES: &[&str] = &[
    "process_creation",
    "file_event",
    "file_change",
    "file_rename",
    "file_delete",
    "network_connection",
];

/// What a loaded rule is, for alerts and listings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleInfo {
    /// The rule's `id` (its title when it has none).
    pub id: String,
    pub title: String,
    pub level: RuleLevel,
    pub description: Option<String>,
    pub author: Vec<String>,
    pub license: Option<String>,
    pub references: Vec<String>,
    pub falsepositives: Vec<String>,
    pub tags: Vec<String>,
    /// `modified`, else `date`.
    pub version: Option<String>,
    /// [`BUILTIN`] or the configured rule path it came from.
    pub ruleset: String,
    /// The file: relative to `rules/` for built-in rules.
    pub file: String,
    pub category: Option<String>,
    pub product: Option<String>,
    /// ATT&CK tactic names from `attack.<tactic>` tags.
    pub tactics: Vec<String>,
    /// ATT&CK technique ids (`T1059`) from `attack.tNNNN[.NNN]` tags.
    pub techniques: Vec<String>,
}

/// A rule that did not load, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SkippedRule {
    pub file: String,
    /// The title when the file got far enough to have one.
    pub title: Option<String>,
    pub reason: String,
}

/// What to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    pub builtin: bool,
    pub paths: Vec<String>,
    pub min_level: RuleLevel,
}

impl LoadOptions {
    pub fn of(c: &DetectionConfig) -> LoadOptions {
        LoadOptions {
            builtin: c.builtin_rules,
            paths: c.rule_paths.clone(),
            min_level: c.min_level,
        }
    }
}

/// One rule that matched an event.
#[derive(Debug, Clone)]
pub struct Match<'a> {
    pub rule: &'a RuleInfo,
    /// ECS field to the value the rule matched on.
    pub matched_fields: BTreeMap<String, String>,
}

/// Loaded rules, compiled into one engine.
pub struct RuleSet {
    engine: Engine,
    rules: Vec<RuleInfo>,
    by_key: HashMap<String, usize>,
    skipped: Vec<SkippedRule>,
    below_level: usize,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("rules", &self.rules.len())
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

/// A rule file to load: its text, where it came from.
struct Source {
    file: String,
    ruleset: String,
    text: Result<String, String>,
    license: Option<&'static str>,
}

impl RuleSet {
    /// No rules.
    pub fn empty() -> Result<RuleSet, DetectError> {
        Ok(RuleSet {
            engine: new_engine(),
            rules: Vec::new(),
            by_key: HashMap::new(),
            skipped: Vec::new(),
            below_level: 0,
        })
    }

    /// Loads what `opts` names; rules that fail are in [`RuleSet::skipped`].
    /// Fails only if our own field mapping does not compile.
    pub fn load(opts: &LoadOptions) -> Result<RuleSet, DetectError> {
        let mut sources = Vec::new();
        if opts.builtin {
            for (file, text) in BUILTIN_RULES {
                sources.push(Source {
                    file: (*file).to_string(),
                    ruleset: BUILTIN.to_string(),
                    text: Ok((*text).to_string()),
                    license: Some(PROJECT_LICENSE),
                });
            }
        }
        let mut set = RuleSet::empty()?;
        let mut licenses = LicenseCache::default();
        for p in &opts.paths {
            let root = edr_config::expand_home(p);
            match rule_files(&root) {
                Ok(files) => {
                    for f in files {
                        sources.push(Source {
                            file: f.display().to_string(),
                            ruleset: p.clone(),
                            text: std::fs::read_to_string(&f).map_err(|e| e.to_string()),
                            license: licenses.sigmahq(&f).then_some(SIGMAHQ_LICENSE),
                        });
                    }
                }
                Err(e) => set.skipped.push(SkippedRule {
                    file: root.display().to_string(),
                    title: None,
                    reason: e,
                }),
            }
        }
        set.add_sources(sources, opts.min_level, &crate::mapping::pipeline()?);
        if !set.skipped.is_empty() {
            tracing::warn!(
                skipped = set.skipped.len(),
                loaded = set.rules.len(),
                "some detection rules were skipped; `edr-agent rules list` says why"
            );
        }
        Ok(set)
    }

    /// Loads exactly these files or directories (no built-in rules, every
    /// level): what `rules check` validates.
    pub fn check(paths: &[PathBuf]) -> Result<RuleSet, DetectError> {
        RuleSet::load(&LoadOptions {
            builtin: false,
            paths: paths.iter().map(|p| p.display().to_string()).collect(),
            min_level: RuleLevel::Informational,
        })
    }

    fn add_sources(&mut self, sources: Vec<Source>, min_level: RuleLevel, pipeline: &Pipeline) {
        let mut filters: Vec<(String, FilterRule)> = Vec::new();
        let mut compiled: Vec<CompiledRule> = Vec::new();
        for src in sources {
            let text = match &src.text {
                Ok(t) => t.as_str(),
                Err(reason) => {
                    self.skip(&src.file, None, format!("cannot read: {reason}"));
                    continue;
                }
            };
            let collection = match parse_sigma_yaml(text) {
                Ok(c) => c,
                Err(e) => {
                    self.skip(&src.file, title_of(text), e.to_string());
                    continue;
                }
            };
            for err in &collection.errors {
                self.skip(&src.file, title_of(text), err.clone());
            }
            for c in &collection.correlations {
                self.skip(
                    &src.file,
                    Some(c.title.clone()),
                    "correlation rules are not supported".to_string(),
                );
            }
            for f in collection.filters {
                filters.push((src.file.clone(), f));
            }
            for rule in collection.rules {
                if let Some(c) = self.add_rule(&src, rule, min_level, pipeline) {
                    compiled.push(c);
                }
            }
        }
        // One batch, so the engine builds its candidate index once over
        // every rule. Added one by one, a rule that needs a substring waits
        // outside the index, checked against every event, until the rule
        // count doubles.
        self.engine.extend_compiled_rules(compiled);
        for (file, mut f) in filters {
            if let Err(e) = map_filter(pipeline, &mut f) {
                self.skip(&file, Some(f.title.clone()), format!("filter: {e}"));
                continue;
            }
            if let Err(e) = self.engine.apply_filter(&f) {
                self.skip(&file, Some(f.title.clone()), format!("filter: {e}"));
            }
        }
    }

    /// Records the rule and returns it compiled, or records why not.
    fn add_rule(
        &mut self,
        src: &Source,
        rule: SigmaRule,
        min_level: RuleLevel,
        pipeline: &Pipeline,
    ) -> Option<CompiledRule> {
        let title = Some(rule.title.clone());
        let ls = &rule.logsource;
        if let Some(p) = ls.product.as_deref() {
            if !matches!(p, "linux" | "macos") {
                return self.skipped_rule(
                    &src.file,
                    title,
                    format!("logsource product {p:?}: the agent runs on linux and macos"),
                );
            }
        }
        if let Some(c) = ls.category.as_deref() {
            if !SUPPORTED_CATEGORIES.contains(&c) {
                return self.skipped_rule(
                    &src.file,
                    title,
                    format!(
                        "logsource category {c:?}: the agent produces {}",
                        SUPPORTED_CATEGORIES.join(", ")
                    ),
                );
            }
        }
        if let Some(s) = ls.service.as_deref() {
            return self.skipped_rule(
                &src.file,
                title,
                format!("logsource service {s:?}: the agent reads no log services"),
            );
        }
        let level = level_of(rule.level);
        if level < min_level {
            self.below_level += 1;
            return None;
        }
        let id = rule.id.clone().unwrap_or_else(|| rule.title.clone());
        if let Some(&i) = self.by_key.get(&id) {
            return self.skipped_rule(
                &src.file,
                title,
                format!(
                    "duplicate rule id {id} (already loaded from {})",
                    self.rules[i].file
                ),
            );
        }
        // Compiled here rather than by `Engine::add_rule`, which also keeps
        // every rule's intermediate form for a cache we do not use (over 1 MiB
        // of 7.6 with SigmaHQ's rules loaded).
        let compiled = match compile_with(pipeline, &rule) {
            Ok(c) => c,
            Err(e) => return self.skipped_rule(&src.file, title, e.to_string()),
        };
        let (tactics, techniques) = attack_of(&rule.tags);
        let license = rule
            .license
            .clone()
            .or_else(|| src.license.map(String::from));
        self.by_key.insert(id.clone(), self.rules.len());
        self.rules.push(RuleInfo {
            id,
            title: rule.title,
            level,
            description: rule.description.map(|d| d.trim().to_string()),
            author: rule
                .author
                .as_deref()
                .map(|a| {
                    a.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default(),
            license,
            references: rule.references,
            falsepositives: rule.falsepositives,
            tags: rule.tags,
            version: rule.modified.or(rule.date),
            ruleset: src.ruleset.clone(),
            file: src.file.clone(),
            category: rule.logsource.category,
            product: rule.logsource.product,
            tactics,
            techniques,
        });
        Some(compiled)
    }

    fn skipped_rule(
        &mut self,
        file: &str,
        title: Option<String>,
        reason: String,
    ) -> Option<CompiledRule> {
        self.skip(file, title, reason);
        None
    }

    fn skip(&mut self, file: &str, title: Option<String>, reason: String) {
        // Per rule at debug: a SigmaHQ checkout holds thousands of rules for
        // other products; the summary below is the warning.
        tracing::debug!(file, title = title.as_deref().unwrap_or(""), %reason, "rule skipped");
        self.skipped.push(SkippedRule {
            file: file.to_string(),
            title,
            reason,
        });
    }

    pub fn rules(&self) -> &[RuleInfo] {
        &self.rules
    }

    pub fn skipped(&self) -> &[SkippedRule] {
        &self.skipped
    }

    /// Rules not loaded because their level is below `min_level`.
    pub fn below_level(&self) -> usize {
        self.below_level
    }

    pub fn rule(&self, id: &str) -> Option<&RuleInfo> {
        self.by_key.get(id).map(|&i| &self.rules[i])
    }

    /// The rules that match a typed event: only those of its logsource
    /// (product from `host.os.type`, category from the event).
    pub fn evaluate(&self, e: &Event) -> Vec<Match<'_>> {
        let view = EcsEvent(e);
        self.collect(logsources(e).flat_map(|ls| self.engine.evaluate_with_logsource(&view, &ls)))
    }

    /// As [`RuleSet::evaluate`], for an ECS-shaped JSON event.
    pub fn evaluate_json(&self, v: &Value) -> Vec<Match<'_>> {
        let view = JsonEcsEvent::new(v);
        self.collect(
            json_logsources(v).flat_map(|ls| self.engine.evaluate_with_logsource(&view, &ls)),
        )
    }

    fn collect(
        &self,
        results: impl Iterator<Item = rsigma_eval::EvaluationResult>,
    ) -> Vec<Match<'_>> {
        let mut out: Vec<Match<'_>> = Vec::new();
        for r in results {
            let key = r.header.rule_id.as_deref().unwrap_or(&r.header.rule_title);
            let Some(&i) = self.by_key.get(key) else {
                continue;
            };
            // A rule without a category matches under each of an event's
            // categories; it is one match.
            if out.iter().any(|m| std::ptr::eq(m.rule, &self.rules[i])) {
                continue;
            }
            let mut matched_fields = BTreeMap::new();
            if let Some(d) = r.as_detection() {
                for f in &d.matched_fields {
                    let v = match &f.value {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    matched_fields.insert(f.field.clone(), v);
                }
            }
            out.push(Match {
                rule: &self.rules[i],
                matched_fields,
            });
        }
        out
    }
}

/// The rules arrive compiled, with our field mapping already applied, so
/// the engine holds no pipeline of its own.
fn new_engine() -> Engine {
    let mut engine = Engine::new();
    // The per-field bloom filters serve only the bloom pre-filter, which
    // stays off (rsigma's default); without a budget they are built anyway.
    engine.set_bloom_max_bytes(0);
    engine
}

/// Our field mapping applied to a filter document's detection: rsigma
/// compiles a filter's fields as written, so a filter naming `User` or
/// `CommandLine`, as Sigma filters do, would look for fields our events do
/// not have and never exclude anything. The pipeline takes rules only, so
/// the detection passes through it inside a rule that carries nothing else.
fn map_filter(pipeline: &Pipeline, f: &mut FilterRule) -> Result<(), String> {
    const CARRIER: &str =
        "title: filter\nlogsource: {}\ndetection:\n  sel:\n    x: y\n  condition: sel\n";
    let mut carrier = parse_sigma_yaml(CARRIER)
        .map_err(|e| e.to_string())?
        .rules
        .pop()
        .ok_or("the rule that carries a filter through the field mapping did not parse")?;
    carrier.logsource = f.logsource.clone().unwrap_or_default();
    carrier.detection = f.detection.clone();
    apply_pipelines(std::slice::from_ref(pipeline), &mut carrier).map_err(|e| e.to_string())?;
    f.detection = carrier.detection;
    Ok(())
}

/// What `Engine::add_rule` does with a pipeline, minus keeping the
/// intermediate form.
fn compile_with(pipeline: &Pipeline, rule: &SigmaRule) -> rsigma_eval::Result<CompiledRule> {
    let mut mapped = rule.clone();
    apply_pipelines(std::slice::from_ref(pipeline), &mut mapped)?;
    compile_rule(&mapped)
}

/// A rule without a level is treated as low.
fn level_of(l: Option<Level>) -> RuleLevel {
    match l {
        Some(Level::Informational) => RuleLevel::Informational,
        Some(Level::Low) | None => RuleLevel::Low,
        Some(Level::Medium) => RuleLevel::Medium,
        Some(Level::High) => RuleLevel::High,
        Some(Level::Critical) => RuleLevel::Critical,
    }
}

/// The rule title of a file that did not parse, for the report.
fn title_of(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        l.strip_prefix("title:")
            .map(|t| t.trim().trim_matches(['\'', '"']).to_string())
            .filter(|t| !t.is_empty())
    })
}

/// The `.yml`/`.yaml` files under `root` (or `root` itself), sorted.
pub fn rule_files(root: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(root).map_err(|e| e.to_string())?;
    if meta.is_file() {
        return Ok(vec![root.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_dir() {
                stack.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yml" | "yaml")
            ) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a file lies in a SigmaHQ checkout (its rule license file is in
/// the file's directory or one above), cached per directory.
#[derive(Default)]
struct LicenseCache(HashMap<PathBuf, bool>);

impl LicenseCache {
    fn sigmahq(&mut self, file: &Path) -> bool {
        let Some(dir) = file.parent() else {
            return false;
        };
        if let Some(&v) = self.0.get(dir) {
            return v;
        }
        let v = dir
            .ancestors()
            .any(|d| d.join(SIGMAHQ_LICENSE_FILE).is_file());
        self.0.insert(dir.to_path_buf(), v);
        v
    }
}

const TACTICS: &[(&str, &str)] = &[
    ("reconnaissance", "Reconnaissance"),
    ("resource_development", "Resource Development"),
    ("initial_access", "Initial Access"),
    ("execution", "Execution"),
    ("persistence", "Persistence"),
    ("privilege_escalation", "Privilege Escalation"),
    ("defense_evasion", "Defense Evasion"),
    // ATT&CK v18 split Defense Evasion into these two.
    ("stealth", "Stealth"),
    ("defense_impairment", "Defense Impairment"),
    ("credential_access", "Credential Access"),
    ("discovery", "Discovery"),
    ("lateral_movement", "Lateral Movement"),
    ("collection", "Collection"),
    ("command_and_control", "Command and Control"),
    ("exfiltration", "Exfiltration"),
    ("impact", "Impact"),
];

/// ATT&CK tactic names and technique ids (sub-techniques folded into their
/// technique) from `attack.*` tags, each once, in tag order.
pub fn attack_of(tags: &[String]) -> (Vec<String>, Vec<String>) {
    let mut tactics = Vec::new();
    let mut techniques = Vec::new();
    for t in tags {
        let Some(rest) = t.strip_prefix("attack.") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let rest = rest.replace('-', "_");
        if let Some((_, name)) = TACTICS.iter().find(|(k, _)| *k == rest) {
            if !tactics.iter().any(|x| x == name) {
                tactics.push((*name).to_string());
            }
        } else if let Some(num) = rest.strip_prefix('t') {
            let base = num.split('.').next().unwrap_or_default();
            if base.len() == 4 && base.bytes().all(|b| b.is_ascii_digit()) {
                let id = format!("T{base}");
                if !techniques.contains(&id) {
                    techniques.push(id);
                }
            }
        }
    }
    (tactics, techniques)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_tags_parse() {
        let tags: Vec<String> = [
            "attack.defense_evasion",
            "attack.t1140",
            "attack.t1059.004",
            "attack.t1059.006",
            "attack.command-and-control",
            "attack.g0007",
            "cve.2021-1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let (tactics, techniques) = attack_of(&tags);
        assert_eq!(tactics, ["Defense Evasion", "Command and Control"]);
        assert_eq!(techniques, ["T1140", "T1059"]);
    }

    #[test]
    fn builtin_rules_are_embedded() {
        assert!(!BUILTIN_RULES.is_empty());
        let set = RuleSet::load(&LoadOptions {
            builtin: true,
            paths: Vec::new(),
            min_level: RuleLevel::Informational,
        })
        .expect("loads");
        assert!(set.skipped().is_empty(), "{:?}", set.skipped());
        assert_eq!(set.rules().len(), BUILTIN_RULES.len());
        assert!(set
            .rules()
            .iter()
            .all(|r| r.ruleset == BUILTIN && r.license.as_deref() == Some(PROJECT_LICENSE)));
    }

    /// The regex crate builds a one-pass DFA for every pattern with a
    /// capturing group, and Unicode `\w`, `\d` and `\b` pull in tables of
    /// hundreds of ranges: together 2 MiB of resident memory for our 56
    /// `|re` patterns, which match ASCII command lines and paths and
    /// capture nothing. Our rules use `(?:...)`, `[0-9]`, `[A-Za-z0-9_]`
    /// and `(?-u:\b)` instead.
    #[test]
    fn builtin_regexes_capture_nothing_and_use_ascii_classes() {
        let mut offenders = Vec::new();
        for (path, text) in BUILTIN_RULES {
            for line in text.lines() {
                let Some((_, pattern)) = line.split_once("|re: ") else {
                    continue;
                };
                let bytes = pattern.as_bytes();
                let mut i = 0;
                let mut in_class = false;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => {
                            let escaped = bytes.get(i + 1).copied();
                            let unicode_outside = !in_class
                                && matches!(escaped, Some(b'w' | b'd' | b'b'))
                                && !pattern[..i].ends_with("(?-u:");
                            let unicode_inside = in_class && matches!(escaped, Some(b'w' | b'd'));
                            if unicode_outside || unicode_inside {
                                offenders.push(format!("{path}: {pattern}"));
                            }
                            i += 2;
                            continue;
                        }
                        b'[' if !in_class => in_class = true,
                        b']' if in_class => in_class = false,
                        b'(' if !in_class && bytes.get(i + 1) != Some(&b'?') => {
                            offenders.push(format!("{path}: {pattern}"));
                        }
                        _ => {}
                    }
                    i += 1;
                }
            }
        }
        offenders.dedup();
        assert!(offenders.is_empty(), "{offenders:#?}");
    }
}
