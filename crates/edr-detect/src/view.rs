//! Our events as rsigma sees them: dotted ECS names resolved against the
//! typed [`Event`] without serializing it (the hot path), and the same
//! names over ECS-shaped JSON (stored or exported events, rule tests).

use std::borrow::Cow;
use std::sync::OnceLock;

use edr_model::event::Event;
use rsigma_eval::event::{Event as SigmaEvent, EventValue, JsonEvent};
use rsigma_parser::LogSource;
use serde_json::Value;

fn s(v: &str) -> EventValue<'_> {
    EventValue::Str(Cow::Borrowed(v))
}

fn opt(v: &Option<String>) -> Option<EventValue<'_>> {
    v.as_deref().map(s)
}

fn list<'a>(v: impl Iterator<Item = &'a str>) -> EventValue<'a> {
    EventValue::Array(v.map(s).collect())
}

/// A typed event as a Sigma event.
pub struct EcsEvent<'a>(pub &'a Event);

impl EcsEvent<'_> {
    /// Every string field, for keyword rules.
    fn strings(&self, visit: &mut dyn FnMut(&str)) {
        let e = self.0;
        visit(&e.host.name);
        if let Some(p) = &e.process {
            visit(&p.name);
            for v in [&p.executable, &p.command_line, &p.working_directory]
                .into_iter()
                .flatten()
            {
                visit(v);
            }
            for a in &p.args {
                visit(a);
            }
            if let Some(pp) = &p.parent {
                for v in [&pp.name, &pp.executable, &pp.command_line]
                    .into_iter()
                    .flatten()
                {
                    visit(v);
                }
            }
            if let Some(name) = p.user.as_ref().and_then(|u| u.name.as_deref()) {
                visit(name);
            }
        }
        if let Some(f) = &e.file {
            visit(&f.path);
        }
        if let Some(x) = e.edr.as_ref().and_then(|x| x.original_path.as_deref()) {
            visit(x);
        }
    }
}

impl SigmaEvent for EcsEvent<'_> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        let e = self.0;
        let (root, rest) = path.split_once('.').unwrap_or((path, ""));
        match root {
            "process" => {
                let p = e.process.as_deref()?;
                match rest {
                    "executable" => opt(&p.executable),
                    "command_line" => opt(&p.command_line),
                    "name" => Some(s(&p.name)),
                    "pid" => Some(EventValue::Int(i64::from(p.pid))),
                    "args" if !p.args.is_empty() => Some(list(p.args.iter().map(String::as_str))),
                    "working_directory" => opt(&p.working_directory),
                    "entity_id" => Some(s(&p.entity_id)),
                    "user.name" => p.user.as_ref().and_then(|u| opt(&u.name)),
                    "user.id" => p.user.as_ref().and_then(|u| opt(&u.id)),
                    "hash.sha256" => p.hash.as_ref().map(|h| s(&h.sha256)),
                    _ => {
                        let pp = p.parent.as_ref()?;
                        match rest.strip_prefix("parent.")? {
                            "executable" => opt(&pp.executable),
                            "command_line" => opt(&pp.command_line),
                            "name" => opt(&pp.name),
                            "pid" => Some(EventValue::Int(i64::from(pp.pid))),
                            "args" if !pp.args.is_empty() => {
                                Some(list(pp.args.iter().map(String::as_str)))
                            }
                            "entity_id" => opt(&pp.entity_id),
                            _ => None,
                        }
                    }
                }
            }
            // ECS puts the acting user at the top level; our events carry
            // it under the process.
            "user" => {
                let u = match &e.user {
                    Some(u) => u,
                    None => e.process.as_ref()?.user.as_ref()?,
                };
                match rest {
                    "name" => opt(&u.name),
                    "id" => opt(&u.id),
                    _ => None,
                }
            }
            "file" => {
                let f = e.file.as_deref()?;
                match rest {
                    "path" => Some(s(&f.path)),
                    "name" => opt(&f.name),
                    "directory" => opt(&f.directory),
                    "extension" => opt(&f.extension),
                    _ => None,
                }
            }
            "destination" | "source" => {
                let ep = if root == "destination" {
                    e.destination.as_ref()?
                } else {
                    e.source.as_ref()?
                };
                match rest {
                    "ip" => Some(EventValue::Str(Cow::Owned(ep.ip.to_string()))),
                    "port" => Some(EventValue::Int(i64::from(ep.port))),
                    _ => None,
                }
            }
            "network" => {
                let n = e.network.as_ref()?;
                match rest {
                    "direction" => Some(s(n.direction)),
                    "transport" => Some(s(n.transport)),
                    "type" => Some(s(n.kind)),
                    _ => None,
                }
            }
            "event" => match rest {
                "kind" => Some(s(e.event.kind)),
                "category" => Some(list(e.event.category.iter().copied())),
                "type" => Some(list(e.event.types.iter().copied())),
                _ => None,
            },
            "host" => match rest {
                "name" => Some(s(&e.host.name)),
                "os.type" => Some(s(e.host.os.kind)),
                _ => None,
            },
            "edr" => match rest {
                "original_path" => e.edr.as_ref().and_then(|x| opt(&x.original_path)),
                _ => None,
            },
            _ => None,
        }
    }

    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        let mut hit = false;
        self.strings(&mut |v| hit = hit || pred(v));
        hit
    }

    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        let mut out = Vec::new();
        self.strings(&mut |v| out.push(Cow::Owned(v.to_string())));
        out
    }

    fn visit_string_values(&self, visit: &mut dyn FnMut(&str)) {
        self.strings(visit);
    }

    fn to_json(&self) -> Value {
        serde_json::to_value(self.0).unwrap_or(Value::Null)
    }
}

/// An ECS-shaped JSON event (nested objects) as a Sigma event: rsigma's
/// own JSON resolution, plus the one alias [`EcsEvent`] has
/// (`user.*` falls back to `process.user.*`).
pub struct JsonEcsEvent<'a> {
    inner: JsonEvent<'a>,
}

impl<'a> JsonEcsEvent<'a> {
    pub fn new(v: &'a Value) -> JsonEcsEvent<'a> {
        JsonEcsEvent {
            inner: JsonEvent::borrow(v),
        }
    }
}

impl SigmaEvent for JsonEcsEvent<'_> {
    fn get_field(&self, path: &str) -> Option<EventValue<'_>> {
        self.inner.get_field(path).or_else(|| match path {
            "user.name" => self.inner.get_field("process.user.name"),
            "user.id" => self.inner.get_field("process.user.id"),
            _ => None,
        })
    }
    fn any_string_value(&self, pred: &dyn Fn(&str) -> bool) -> bool {
        self.inner.any_string_value(pred)
    }
    fn all_string_values(&self) -> Vec<Cow<'_, str>> {
        self.inner.all_string_values()
    }
    fn visit_string_values(&self, visit: &mut dyn FnMut(&str)) {
        self.inner.visit_string_values(visit)
    }
    fn to_json(&self) -> Value {
        self.inner.to_json()
    }
    fn top_level_keys(&self) -> Option<Vec<Cow<'_, str>>> {
        // The alias above reads under `process` for a `user` probe, so the
        // root keys alone must not prune the probe.
        None
    }
}

/// The Sigma categories an event is evaluated under, most specific last.
/// Empty: no rule applies (a process end, an inventory record).
pub fn categories<'c>(
    category: &str,
    types: impl Iterator<Item = &'c str> + Clone,
    renamed: bool,
) -> &'static [&'static str] {
    let has = |t: &str| types.clone().any(|x| x == t);
    match category {
        "process" if has("start") => &["process_creation"],
        "file" if renamed => &["file_event", "file_rename"],
        "file" if has("creation") => &["file_event"],
        "file" if has("change") => &["file_event", "file_change"],
        "file" if has("deletion") => &["file_delete"],
        "network" if has("connection") && has("start") => &["network_connection"],
        _ => &[],
    }
}

/// Every (product, category) our events have, built once: looking one up
/// costs no allocation on the hot path.
fn table() -> &'static [LogSource] {
    static TABLE: OnceLock<Vec<LogSource>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Vec::new();
        for product in [Some("linux"), Some("macos"), None] {
            for c in crate::rules::SUPPORTED_CATEGORIES {
                t.push(LogSource {
                    category: Some((*c).to_string()),
                    product: product.map(String::from),
                    ..LogSource::default()
                });
            }
        }
        t
    })
}

fn logsource(product: &str, category: &'static str) -> Cow<'static, LogSource> {
    let product = (!product.is_empty()).then_some(product);
    match table()
        .iter()
        .find(|l| l.category.as_deref() == Some(category) && l.product.as_deref() == product)
    {
        Some(l) => Cow::Borrowed(l),
        // An exported event from another OS: still routed exactly.
        None => Cow::Owned(LogSource {
            category: Some(category.to_string()),
            product: product.map(String::from),
            ..LogSource::default()
        }),
    }
}

/// The logsources of a typed event.
pub fn logsources(e: &Event) -> impl Iterator<Item = Cow<'static, LogSource>> + '_ {
    let cats: &[&str] = if e.event.kind == "event" {
        let renamed = e.edr.as_ref().is_some_and(|x| x.original_path.is_some());
        let cat = e.event.category.first().copied().unwrap_or_default();
        categories(cat, e.event.types.iter().copied(), renamed)
    } else {
        &[]
    };
    cats.iter().map(|c| logsource(e.host.os.kind, c))
}

/// The logsources of an ECS-shaped JSON event.
pub fn json_logsources(v: &Value) -> impl Iterator<Item = Cow<'static, LogSource>> + '_ {
    let cats: &[&str] = if v["event"]["kind"].as_str().is_some_and(|k| k != "event") {
        &[]
    } else {
        let cat = v["event"]["category"][0]
            .as_str()
            .or_else(|| v["event"]["category"].as_str())
            .unwrap_or_default();
        let types: Vec<&str> = match &v["event"]["type"] {
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            Value::String(t) => vec![t.as_str()],
            _ => Vec::new(),
        };
        let renamed = v["edr"]["original_path"].is_string();
        categories(cat, types.iter().copied(), renamed)
    };
    let product = v["host"]["os"]["type"].as_str().unwrap_or_default();
    cats.iter().map(move |c| logsource(product, c))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use edr_model::event::{
        Action, EdrExt, Endpoint, EventMeta, File, Network, Origin, ParentProcess, Process,
        Timestamp, User,
    };

    use super::*;

    fn origin() -> Origin {
        let mut o = Origin::detect();
        Arc::make_mut(&mut o.host).os.kind = "linux";
        o
    }

    fn event(category: &'static [&'static str], types: &'static [&'static str]) -> Event {
        let mut e = Event::new(
            &origin(),
            Timestamp(1),
            EventMeta {
                kind: "event",
                category,
                types,
                action: Action::ProcessStarted,
                duration: None,
                severity: None,
                risk_score: None,
            },
        );
        e.process = Some(Box::new(Process {
            pid: 10,
            name: "curl".into(),
            executable: Some("/usr/bin/curl".into()),
            args: vec!["curl".into(), "-s".into()],
            command_line: Some("curl -s".into()),
            working_directory: Some("/tmp".into()),
            entity_id: "abc".into(),
            parent: Some(ParentProcess {
                pid: 9,
                entity_id: Some("def".into()),
                name: Some("bash".into()),
                executable: Some("/usr/bin/bash".into()),
                args: vec!["bash".into()],
                command_line: Some("bash".into()),
            }),
            user: Some(User {
                id: Some("0".into()),
                name: Some("root".into()),
            }),
            ..Process::default()
        }));
        e.file = Some(Box::new(File {
            path: "/etc/passwd".into(),
            name: Some("passwd".into()),
            directory: Some("/etc".into()),
            ..File::default()
        }));
        e.destination = Some(Endpoint {
            ip: "2001:db8::1".parse().expect("ip"),
            port: 443,
        });
        e.source = Some(Endpoint {
            ip: "10.0.0.1".parse().expect("ip"),
            port: 5555,
        });
        e.network = Some(Network {
            transport: "tcp",
            kind: "ipv6",
            direction: "outbound",
        });
        e.edr = Some(Box::new(EdrExt {
            original_path: Some("/etc/passwd.old".into()),
            ..EdrExt::default()
        }));
        e
    }

    /// The typed view answers every mapped name exactly as the JSON view
    /// answers it on the same event serialized, so rules behave the same
    /// live and in `rules test`.
    #[test]
    fn typed_and_json_views_agree_on_every_mapped_field() {
        let e = event(&["process"], &["start"]);
        let v = serde_json::to_value(&e).expect("serializes");
        let typed = EcsEvent(&e);
        let json = JsonEcsEvent::new(&v);
        let mut names: Vec<&str> = crate::mapping::FIELD_MAP
            .iter()
            .map(|(_, ecs)| *ecs)
            .collect();
        names.extend([
            "process.name",
            "process.args",
            "process.parent.name",
            "process.parent.args",
            "process.parent.pid",
            "process.user.name",
            "event.category",
            "event.type",
            "host.os.type",
            "network.type",
            "file.name",
            "file.directory",
            "no.such.field",
        ]);
        for name in names {
            assert_eq!(
                typed.get_field(name),
                json.get_field(name),
                "{name} differs between the typed and the JSON view"
            );
        }
        assert_eq!(
            typed.get_field("user.name"),
            Some(EventValue::Str(Cow::Borrowed("root")))
        );
        assert_eq!(
            typed.get_field("destination.port"),
            Some(EventValue::Int(443))
        );
        let mut strings = Vec::new();
        typed.visit_string_values(&mut |s| strings.push(s.to_string()));
        for s in ["curl -s", "/usr/bin/bash", "/etc/passwd", "/tmp", "root"] {
            assert!(strings.iter().any(|x| x == s), "{s} not visited");
        }
    }

    #[test]
    fn events_are_routed_by_category_type_and_product() {
        let cats = |e: &Event| {
            logsources(e)
                .map(|l| (l.product.clone(), l.category.clone()))
                .collect::<Vec<_>>()
        };
        let linux = Some("linux".to_string());
        let start = event(&["process"], &["start"]);
        assert_eq!(
            cats(&start),
            [(linux.clone(), Some("process_creation".into()))]
        );
        assert!(cats(&event(&["process"], &["end"])).is_empty());
        let mut created = event(&["file"], &["creation"]);
        created.edr = None;
        assert_eq!(cats(&created), [(linux.clone(), Some("file_event".into()))]);
        // The fixture carries an original path: a rename.
        assert_eq!(
            cats(&event(&["file"], &["change"])),
            [
                (linux.clone(), Some("file_event".into())),
                (linux.clone(), Some("file_rename".into()))
            ]
        );
        assert_eq!(
            cats(&event(&["network"], &["start", "connection"])),
            [(linux, Some("network_connection".into()))]
        );
        let mut alert = event(&["process"], &["start"]);
        alert.event.kind = "alert";
        assert!(cats(&alert).is_empty());
        // Exported events from elsewhere keep their product.
        let v = serde_json::json!({"event": {"category": ["process"], "type": ["start"]},
            "host": {"os": {"type": "windows"}}});
        let ls: Vec<_> = json_logsources(&v).collect();
        assert_eq!(ls[0].product.as_deref(), Some("windows"));
    }
}
