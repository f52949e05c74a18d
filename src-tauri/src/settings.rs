//! The settings form: which config keys it edits (the config crate's key
//! table, [`edr_config::meta`]), the schema the window draws it from, and
//! the translation between a `Config` and the form's text fields. Merging
//! and validation are the engine's (`Config::load` over the current
//! config), so the form shows exactly the messages the YAML file would get.

use std::collections::BTreeMap;

use edr_config::{meta, Config, ConfigError, FieldError, Layer, PRESETS};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{CommandError, FieldMessage};

/// How a field is typed in the form.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    Whole,
    Number,
    Flag,
    /// A list, one item per line.
    Lines,
}

impl Kind {
    /// The form input for a key of this type; `None` for types the form
    /// has no input for (words from a set, free text, lists of records).
    fn of(kind: meta::Kind) -> Option<Kind> {
        match kind {
            meta::Kind::Integer => Some(Kind::Whole),
            meta::Kind::Number => Some(Kind::Number),
            meta::Kind::Bool => Some(Kind::Flag),
            meta::Kind::Strings { .. } => Some(Kind::Lines),
            meta::Kind::Enum { .. } | meta::Kind::Text | meta::Kind::Records => None,
        }
    }
}

/// The config keys the settings view edits: the engine's key table's
/// `form` entries, in its order.
fn form_fields() -> impl Iterator<Item = (&'static str, Kind)> {
    meta::form_keys().filter_map(|k| Kind::of(k.kind).map(|kind| (k.key, kind)))
}

/// One form field as the window renders it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FieldSchema {
    pub key: &'static str,
    pub kind: Kind,
    pub label: &'static str,
    /// Shown after the range, if any; may be empty.
    pub hint: &'static str,
    pub range: Option<meta::Range>,
    pub unit: &'static str,
    /// One line of help (the input's tooltip).
    pub doc: &'static str,
}

/// A preset the picker offers.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresetSchema {
    pub name: &'static str,
    pub title: &'static str,
    pub summary: String,
}

/// What the window needs to draw the form: the fields and the presets,
/// both from the engine's config crate, so nothing is typed in the HTML.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema {
    pub fields: Vec<FieldSchema>,
    pub presets: Vec<PresetSchema>,
}

/// `get_settings`' answer: the form's values by key (at the top level, as
/// `apply_settings` and `preset_settings` answer) and `schema`, which no
/// dotted key can collide with.
#[derive(Debug, Clone, Serialize)]
pub struct SettingsView {
    #[serde(flatten)]
    pub form: Form,
    pub schema: Schema,
    /// `detection.exceptions`, listed with a remove button each.
    pub exceptions: Vec<crate::alerts::ExceptionView>,
}

/// The form's schema.
pub fn schema() -> Schema {
    Schema {
        fields: meta::form_keys()
            .filter_map(|k| {
                let form = k.form?;
                Some(FieldSchema {
                    key: k.key,
                    kind: Kind::of(k.kind)?,
                    label: form.label,
                    hint: form.hint,
                    range: k.range,
                    unit: k.unit,
                    doc: k.doc,
                })
            })
            .collect(),
        presets: PRESETS
            .iter()
            .map(|p| PresetSchema {
                name: p.name,
                title: p.title,
                summary: p.summary(),
            })
            .collect(),
    }
}

/// The form showing `config`, with the schema to draw it.
pub fn settings_view(config: &Config) -> Result<SettingsView, CommandError> {
    Ok(SettingsView {
        form: to_form(config)?,
        schema: schema(),
        exceptions: crate::alerts::exceptions_view(&config.detection.exceptions),
    })
}

/// Longest text a number field may hold, and a list field.
const MAX_NUMBER_CHARS: usize = 64;
const MAX_LINES_CHARS: usize = 64 * 1024;
const MAX_LINES: usize = 1000;

/// A form field's value: a checkbox or the text typed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    Flag(bool),
    Text(String),
}

/// Field values by dotted config key.
pub type Form = BTreeMap<String, FieldValue>;

/// The form showing `config`.
pub fn to_form(config: &Config) -> Result<Form, CommandError> {
    let tree = serde_json::to_value(config).map_err(|e| CommandError::Failed(e.to_string()))?;
    form_fields()
        .map(|(key, kind)| {
            let v = tree
                .pointer(&format!("/{}", key.replace('.', "/")))
                .ok_or_else(|| CommandError::Failed(format!("config has no `{key}`")))?;
            let value = match (kind, v) {
                (Kind::Flag, Value::Bool(b)) => FieldValue::Flag(*b),
                (Kind::Whole | Kind::Number, Value::Number(n)) => FieldValue::Text(n.to_string()),
                (Kind::Lines, Value::Array(items)) => FieldValue::Text(
                    items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                _ => {
                    return Err(CommandError::Failed(format!(
                        "`{key}` has an unexpected type"
                    )))
                }
            };
            Ok((key.to_string(), value))
        })
        .collect()
}

/// The form with a preset merged over `current`.
pub fn preset_form(current: &Config, name: &str) -> Result<Form, CommandError> {
    let preset = Layer::preset(name).map_err(|e| CommandError::invalid(e.to_string()))?;
    let config = Config::load(&[current_layer(current), preset]).map_err(refused)?;
    to_form(&config)
}

/// The config the form describes, over `current`, validated by the
/// config's own rules. Text that is not a number is refused per field
/// before anything is merged.
pub fn from_form(current: &Config, form: &Form) -> Result<Config, CommandError> {
    if let Some(unknown) = form.keys().find(|k| field_kind(k).is_none()) {
        return Err(CommandError::invalid(format!(
            "`{unknown}` is not a settings field"
        )));
    }
    let mut overlay = Value::Object(Map::new());
    let mut errors = Vec::new();
    for (key, kind) in form_fields() {
        let value = form
            .get(key)
            .ok_or_else(|| CommandError::invalid(format!("`{key}` is missing")))?;
        match field_json(kind, value) {
            Ok(Some(v)) => insert(&mut overlay, key, v),
            Ok(None) => errors.push(FieldMessage {
                field: key.to_string(),
                message: not_a_number(kind, value),
            }),
            Err(e) => return Err(CommandError::invalid(format!("`{key}`: {e}"))),
        }
    }
    // JSON is YAML: the form becomes one more layer over the current
    // config. The numbers that parsed are checked too, so every refusal
    // shows at once.
    let loaded = Config::load(&[
        current_layer(current),
        Layer::text("settings", overlay.to_string()),
    ]);
    match loaded {
        Ok(config) if errors.is_empty() => Ok(config),
        Ok(_) => Err(fields_error(errors)),
        Err(e) => {
            let refusals: Vec<FieldMessage> = e.field_errors().iter().map(field_message).collect();
            if refusals.is_empty() && errors.is_empty() {
                return Err(CommandError::Failed(e.to_string()));
            }
            errors.extend(refusals);
            Err(fields_error(errors))
        }
    }
}

/// The config's refusal, addressed to form fields where it names one.
pub fn refused(e: ConfigError) -> CommandError {
    let fields: Vec<FieldMessage> = e.field_errors().iter().map(field_message).collect();
    if fields.is_empty() {
        return CommandError::Failed(e.to_string());
    }
    fields_error(fields)
}

fn fields_error(fields: Vec<FieldMessage>) -> CommandError {
    CommandError::Fields {
        message: "Some values are not valid; nothing was changed.".into(),
        fields,
    }
}

fn current_layer(current: &Config) -> Layer {
    Layer::text("current settings", current.to_yaml())
}

fn field_kind(key: &str) -> Option<Kind> {
    form_fields().find(|(k, _)| *k == key).map(|(_, kind)| kind)
}

/// The JSON value of a field; Ok(None) if it is not a number; Err if the
/// value's shape is not what this field's input produces.
fn field_json(kind: Kind, value: &FieldValue) -> Result<Option<Value>, String> {
    match (kind, value) {
        (Kind::Flag, FieldValue::Flag(b)) => Ok(Some(Value::Bool(*b))),
        (Kind::Whole | Kind::Number, FieldValue::Text(t)) => {
            if t.chars().count() > MAX_NUMBER_CHARS {
                return Ok(None);
            }
            Ok(parse_number(kind, t.trim()))
        }
        (Kind::Lines, FieldValue::Text(t)) => {
            if t.len() > MAX_LINES_CHARS {
                return Err(format!("longer than {MAX_LINES_CHARS} bytes"));
            }
            let items: Vec<Value> = t
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| Value::String(l.to_string()))
                .collect();
            if items.len() > MAX_LINES {
                return Err(format!("more than {MAX_LINES} lines"));
            }
            Ok(Some(Value::Array(items)))
        }
        (Kind::Flag, _) => Err("expected true or false".into()),
        _ => Err("expected text".into()),
    }
}

/// Whole numbers stay integers (negative ones too, so the config's own
/// range check names them); other numbers must be finite.
fn parse_number(kind: Kind, t: &str) -> Option<Value> {
    if let Ok(i) = t.parse::<i64>() {
        return Some(Value::from(i));
    }
    if let Ok(u) = t.parse::<u64>() {
        return Some(Value::from(u));
    }
    if kind == Kind::Number {
        return t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number);
    }
    None
}

fn not_a_number(kind: Kind, value: &FieldValue) -> String {
    let what = if kind == Kind::Whole {
        "a whole number"
    } else {
        "a number"
    };
    match value {
        FieldValue::Text(t) if t.trim().is_empty() => format!("Enter {what}."),
        FieldValue::Text(t) => format!(
            "“{}” is not {what}.",
            t.chars().take(40).collect::<String>()
        ),
        FieldValue::Flag(_) => format!("Enter {what}."),
    }
}

fn insert(tree: &mut Value, key: &str, v: Value) {
    let mut node = tree;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Object(map) = node else { return };
        if parts.peek().is_none() {
            map.insert(part.to_string(), v);
            return;
        }
        node = map
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

/// `collectors.file_monitor.watch_paths[2]` belongs to the watch paths
/// field, as its third line.
fn field_message(e: &FieldError) -> FieldMessage {
    let (field, line) = match e.key.split_once('[') {
        Some((base, rest)) => (
            base.to_string(),
            rest.trim_end_matches(']').parse::<usize>().ok(),
        ),
        None => (e.key.clone(), None),
    };
    let mut message = String::new();
    if let Some(i) = line {
        message.push_str(&format!("Line {}: ", i + 1));
    }
    if e.value.is_empty() {
        message.push_str(&capitalize(&e.allowed));
    } else {
        message.push_str(&format!("{} is not allowed: {}", e.value, e.allowed));
    }
    FieldMessage { field, message }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> FieldValue {
        FieldValue::Text(s.into())
    }

    fn fields(e: CommandError) -> Vec<FieldMessage> {
        match e {
            CommandError::Fields { fields, .. } => fields,
            other => panic!("expected field errors, got {other:?}"),
        }
    }

    #[test]
    fn form_round_trips_the_config() {
        let c = Config::default();
        let form = to_form(&c).expect("form");
        assert_eq!(form.len(), form_fields().count());
        assert_eq!(form["agent.max_events_per_batch"], text("1000"));
        assert_eq!(form["storage.max_storage_size_gb"], text("10.0"));
        assert_eq!(
            form["collectors.process_monitor.enabled"],
            FieldValue::Flag(true)
        );
        assert_eq!(from_form(&c, &form).expect("same"), c);
    }

    #[test]
    fn edits_apply_over_the_current_config() {
        let mut current = Config::default();
        current.collectors.file_monitor.hash_rate_limit_mb_per_sec = 7;
        let mut form = to_form(&current).expect("form");
        form.insert("agent.max_events_per_batch".into(), text(" 25 "));
        form.insert(
            "collectors.file_monitor.watch_paths".into(),
            text("/a\n\n  /b  \n"),
        );
        form.insert("alerts.min_compression_ratio".into(), text("0.5"));
        let c = from_form(&current, &form).expect("valid");
        assert_eq!(c.agent.max_events_per_batch, 25);
        assert_eq!(c.collectors.file_monitor.watch_paths, ["/a", "/b"]);
        assert_eq!(c.alerts.min_compression_ratio, 0.5);
        // Not on the form: kept from the current config.
        assert_eq!(c.collectors.file_monitor.hash_rate_limit_mb_per_sec, 7);
    }

    #[test]
    fn text_that_is_not_a_number_is_a_field_error() {
        let c = Config::default();
        let mut form = to_form(&c).expect("form");
        form.insert("agent.max_events_per_batch".into(), text("ten"));
        form.insert("storage.max_storage_size_gb".into(), text(""));
        form.insert("storage.retention_days".into(), text("1.5"));
        form.insert("alerts.max_memory_mb".into(), text("0"));
        let f = fields(from_form(&c, &form).unwrap_err());
        let keys: Vec<&str> = f.iter().map(|m| m.field.as_str()).collect();
        assert_eq!(
            keys,
            [
                "agent.max_events_per_batch",
                "storage.retention_days",
                "storage.max_storage_size_gb",
                "alerts.max_memory_mb",
            ]
        );
        assert_eq!(f[0].message, "“ten” is not a whole number.");
    }

    #[test]
    fn out_of_range_values_get_the_configs_message() {
        let c = Config::default();
        let mut form = to_form(&c).expect("form");
        form.insert("agent.max_events_per_batch".into(), text("0"));
        form.insert("storage.retention_days".into(), text("-3"));
        form.insert(
            "collectors.file_monitor.exclude_paths".into(),
            text("**/ok/**\n[unclosed"),
        );
        let f = fields(from_form(&c, &form).unwrap_err());
        assert_eq!(f.len(), 1, "serde stops at the first type error: {f:?}");
        assert_eq!(f[0].field, "storage.retention_days");

        form.insert("storage.retention_days".into(), text("3"));
        let f = fields(from_form(&c, &form).unwrap_err());
        assert_eq!(
            f,
            [
                FieldMessage {
                    field: "agent.max_events_per_batch".into(),
                    message: "0 is not allowed: an integer from 1 to 100000".into(),
                },
                FieldMessage {
                    field: "collectors.file_monitor.exclude_paths".into(),
                    message: f[1].message.clone(),
                },
            ]
        );
        assert!(f[1].message.starts_with("Line 2: "), "{}", f[1].message);
    }

    #[test]
    fn malformed_forms_are_refused() {
        let c = Config::default();
        let mut form = to_form(&c).expect("form");
        form.insert("storage.local_storage.data_dir".into(), text("/elsewhere"));
        assert!(matches!(
            from_form(&c, &form),
            Err(CommandError::Invalid(_))
        ));
        let mut form = to_form(&c).expect("form");
        form.remove("alerts.max_cpu_percent");
        assert!(matches!(
            from_form(&c, &form),
            Err(CommandError::Invalid(_))
        ));
        let mut form = to_form(&c).expect("form");
        form.insert("collectors.network_monitor.enabled".into(), text("yes"));
        assert!(matches!(
            from_form(&c, &form),
            Err(CommandError::Invalid(_))
        ));
    }

    #[test]
    fn every_form_key_of_the_table_has_an_input() {
        for k in meta::form_keys() {
            assert!(Kind::of(k.kind).is_some(), "`{}` has no form input", k.key);
        }
        let s = schema();
        assert_eq!(s.fields.len(), form_fields().count());
        assert!(s.fields.iter().all(|f| !f.label.is_empty()));
        let retention = s
            .fields
            .iter()
            .find(|f| f.key == "storage.retention_days")
            .expect("on the form");
        assert_eq!(retention.range.map(|r| (r.min, r.max)), Some((1.0, 3650.0)));
        let names: Vec<&str> = s.presets.iter().map(|p| p.name).collect();
        assert_eq!(names, edr_config::preset_names());
    }

    #[test]
    fn the_settings_view_has_the_form_at_the_top_and_the_schema() {
        let v =
            serde_json::to_value(settings_view(&Config::default()).expect("view")).expect("json");
        assert_eq!(v["agent.max_events_per_batch"], serde_json::json!("1000"));
        assert_eq!(
            v["schema"]["fields"][0]["key"],
            "agent.max_events_per_batch"
        );
        assert_eq!(v["schema"]["fields"][0]["range"]["max"], 100_000.0);
        assert_eq!(v["schema"]["presets"][0]["name"], "desktop");
    }

    #[test]
    fn presets_merge_over_the_current_config() {
        let mut current = Config::default();
        current.agent.max_events_per_batch = 33;
        current.alerts.max_memory_mb = 400;
        let form = preset_form(&current, "desktop").expect("preset");
        // From the preset...
        assert_eq!(form["alerts.max_cpu_percent"], text("5.0"));
        // ...over what the preset leaves alone.
        assert_eq!(form["agent.max_events_per_batch"], text("33"));
        assert_eq!(form["alerts.max_memory_mb"], text("400"));
        assert!(matches!(
            preset_form(&current, "nope"),
            Err(CommandError::Invalid(_))
        ));
    }
}
