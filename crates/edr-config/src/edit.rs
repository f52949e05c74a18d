//! Writing a config into an existing YAML document without losing what the
//! user wrote: comments, key order, keys left at their defaults. Only the
//! keys whose values differ from what the document says are set; a key the
//! document lacks is added to its section. `yaml-edit` keeps the rest of
//! the text byte for byte.

use std::str::FromStr;

use serde_norway::Value;
use yaml_edit::{Document, Mapping as DocMapping, ScalarValue, YamlValue};

use crate::{lookup, meta, Config, ConfigError};

/// `text` with `config`'s values set in it. Keys `config` has at their
/// default and `text` does not mention stay unmentioned. The result is
/// checked: it must load as exactly `config`.
pub(crate) fn edit_document(text: &str, config: &Config) -> Result<String, ConfigError> {
    let err = |message: String| ConfigError::Edit { message };
    let wanted = serde_norway::to_value(config).map_err(|e| err(e.to_string()))?;
    let defaults = serde_norway::to_value(Config::default()).map_err(|e| err(e.to_string()))?;
    // What the document says now, per key; a key it lacks means the default.
    let current: Value = match serde_norway::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => Value::Mapping(m),
        Ok(Value::Null) => Value::Null,
        Ok(_) => return Err(err("the file is not a mapping of sections".into())),
        Err(e) => return Err(err(format!("the file is not valid YAML: {e}"))),
    };
    let mut changes = Vec::new();
    for k in meta::KEYS {
        let want = lookup(&wanted, k.key).unwrap_or(&Value::Null);
        let now = lookup(&current, k.key).or_else(|| lookup(&defaults, k.key));
        if !now.is_some_and(|n| same(n, want)) {
            changes.push((k.key, to_doc_value(want)));
        }
    }
    let out = if changes.is_empty() {
        text.to_string()
    } else if matches!(current, Value::Null) {
        // Only comments (or nothing): keep them and append the keys.
        let mut out = text.to_string();
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        let mut tree = Value::Mapping(Default::default());
        for (key, _) in &changes {
            if let Some(v) = lookup(&wanted, key) {
                insert(&mut tree, key, v.clone());
            }
        }
        out.push_str(&serde_norway::to_string(&tree).map_err(|e| err(e.to_string()))?);
        out
    } else {
        let doc =
            Document::from_str(text).map_err(|e| err(format!("cannot edit the file: {e}")))?;
        let root = doc
            .as_mapping()
            .ok_or_else(|| err("the file is not a mapping of sections".into()))?;
        for (key, value) in changes {
            let path: Vec<&str> = key.split('.').collect();
            set_path(&root, key, &path, value);
        }
        doc.to_string()
    };
    // yaml-edit decides quoting and layout of what it writes; the file must
    // say exactly what was asked, or it is not written.
    match Config::from_yaml("the edited config", &out) {
        Ok(back) if back == *config => Ok(out),
        Ok(_) => Err(err("the edited file would not hold the new values".into())),
        Err(e) => Err(err(format!("the edited file would not load: {e}"))),
    }
}

fn insert(tree: &mut Value, key: &str, v: Value) {
    let mut node = tree;
    let mut parts = key.split('.').peekable();
    while let Some(part) = parts.next() {
        let Value::Mapping(m) = node else { return };
        let k = Value::String(part.to_string());
        if parts.peek().is_none() {
            m.insert(k, v);
            return;
        }
        if !matches!(m.get(&k), Some(Value::Mapping(_))) {
            m.insert(k.clone(), Value::Mapping(Default::default()));
        }
        let Some(next) = m.get_mut(&k) else { return };
        node = next;
    }
}

/// Equal as config values: `10` and `10.0` are the same number.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => x == y,
            _ => x == y,
        },
        (Value::Sequence(x), Value::Sequence(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b))
        }
        _ => a == b,
    }
}

/// A config leaf as a value `yaml-edit` can write. Leaves are scalars,
/// null, lists of strings, or lists of small mappings
/// (`detection.exceptions`).
fn to_doc_value(v: &Value) -> YamlValue {
    match v {
        Value::Bool(b) => YamlValue::from(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                YamlValue::from(i)
            } else if let Some(u) = n.as_u64() {
                // Above i64::MAX: no config range goes there, but write it
                // exactly rather than as a float.
                YamlValue::from(u.to_string().as_str())
            } else {
                YamlValue::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        // A line break or tab would be written as a block scalar, whose
        // indentation rules a tab breaks; double quotes escape everything.
        Value::String(s) if s.chars().any(char::is_control) => {
            YamlValue::from(ScalarValue::double_quoted(s.as_str()))
        }
        Value::String(s) => YamlValue::from(s.as_str()),
        Value::Sequence(items) => YamlValue::Sequence(items.iter().map(to_doc_value).collect()),
        Value::Mapping(m) => YamlValue::Mapping(
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), to_doc_value(v))))
                .collect(),
        ),
        _ => YamlValue::from(ScalarValue::null()),
    }
}

/// Sets `path` (the rest of dotted `key`) under `mapping`, creating
/// missing sections. A key the section lacks goes after the nearest key
/// before it in [`meta::KEYS`] order, else at the section's end; never
/// before a key, where it would come between that key and its comment. A section the document has as something
/// other than a mapping (`agent:` with nothing under it is null) is
/// replaced by one holding the key.
fn set_path(mapping: &DocMapping, key: &str, path: &[&str], value: YamlValue) {
    match path {
        [] => {}
        [leaf] => {
            if mapping.get(*leaf).is_none() {
                let before = earlier_siblings(key);
                if let Some(prev) = before.iter().rev().find(|k| mapping.get(**k).is_some()) {
                    if mapping.insert_after(*prev, *leaf, &value) {
                        return;
                    }
                }
            }
            mapping.set(*leaf, value)
        }
        [section, rest @ ..] => {
            if let Some(child) = mapping.get(*section).and_then(|n| n.as_mapping().cloned()) {
                set_path(&child, key, rest, value);
                return;
            }
            let mut nested = value;
            for part in rest.iter().rev() {
                let mut m = std::collections::BTreeMap::new();
                m.insert((*part).to_string(), nested);
                nested = YamlValue::Mapping(m);
            }
            mapping.set(*section, nested);
        }
    }
}

/// The last segments of the table's keys in `key`'s section that come
/// before it.
fn earlier_siblings(key: &str) -> Vec<&'static str> {
    let parent = |k: &str| k.rsplit_once('.').map(|(p, _)| p.to_string());
    let mine = parent(key);
    meta::KEYS
        .iter()
        .map(|k| k.key)
        .take_while(|k| *k != key)
        .filter(|k| parent(k) == mine)
        .map(|k| k.rsplit('.').next().unwrap_or(k))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_key_never_takes_another_keys_comment() {
        let mut c = Config::default();
        c.alerts.max_memory_mb = 5;
        c.alerts.max_cpu_percent = 15.0;
        c.alerts.max_storage_growth_mb_per_day = 7;
        let text = "alerts:\n  # cpu comment\n  max_cpu_percent: 15\n  # ratio comment\n  min_compression_ratio: 0.8\n# next\nagent:\n  max_events_per_batch: 1000\n";
        let out = edit_document(text, &c).expect("edited");
        assert_eq!(
            out,
            "alerts:\n  # cpu comment\n  max_cpu_percent: 15\n  max_storage_growth_mb_per_day: 7\n  # ratio comment\n  min_compression_ratio: 0.8\n  max_memory_mb: 5\n# next\nagent:\n  max_events_per_batch: 1000\n"
        );
    }

    #[test]
    fn a_section_written_empty_gets_the_key() {
        let mut c = Config::default();
        c.agent.max_events_per_batch = 9;
        let out =
            edit_document("# mine\nagent:\nalerts:\n  max_memory_mb: 200\n", &c).expect("edited");
        assert!(out.starts_with("# mine\n"), "{out}");
        assert_eq!(Config::from_yaml("out", &out).expect("loads"), c);
    }

    #[test]
    fn exceptions_are_written_as_a_list_of_mappings_and_removed_again() {
        let mut c = Config::default();
        c.detection.suppress_window_ms = 0;
        c.detection.exceptions = vec![
            crate::DetectionException {
                rule_id: Some("19bc17cb-cd87-4d05-9ed0-e1e2297bdfb7".into()),
                executable: Some("/usr/bin/b\\[a\\]sh".into()),
                command_line_contains: None,
            },
            crate::DetectionException {
                rule_id: Some("r2".into()),
                ..Default::default()
            },
        ];
        let text = "# mine\ndetection:\n  # window\n  suppress_window_ms: 0\n";
        let out = edit_document(text, &c).expect("edited");
        assert!(out.contains("# mine") && out.contains("# window"), "{out}");
        assert_eq!(Config::from_yaml("out", &out).expect("loads"), c);
        c.detection.exceptions.remove(0);
        let out = edit_document(&out, &c).expect("one removed");
        assert_eq!(Config::from_yaml("out", &out).expect("loads"), c);
        c.detection.exceptions.clear();
        let out = edit_document(&out, &c).expect("all removed");
        assert!(out.contains("# window"), "{out}");
        assert_eq!(Config::from_yaml("out", &out).expect("loads"), c);
        let fresh = edit_document(crate::DEFAULT_YAML, &c).expect("defaults");
        assert_eq!(Config::from_yaml("fresh", &fresh).expect("loads"), c);
    }
}
