//! The macOS file source as root: `eslogger create close rename unlink`
//! streams Endpoint Security's file events as JSON lines, each with the
//! process that made the change (`es_message_t.process`).
//!
//! What fanotify is on Linux: the watch paths are prefix filters applied
//! here (no watch per directory, paths not created yet covered), and each
//! change names its process with the process collector's `entity_id`
//! (whole-second start time, as the process eslogger source derives it).
//! Endpoint Security does not put the arguments in a file event's process;
//! they are read for the pid at the event (sysinfo, checked against the
//! start time) and cached per process.
//!
//! The parser and the reader loop are plain JSON and I/O work, tested on
//! every platform; only starting `eslogger` is macOS code (in `file/mod.rs`).
//!
//! Losses are counted like fanotify's: a line that does not parse, or is
//! longer than [`MAX_LINE`], in `dropped.file`; a full channel to the
//! worker in `dropped.file`; a gap in `global_seq_num` (Endpoint Security
//! dropped messages for this client) in `watcher_overflows`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, BufRead};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use serde::Deserialize;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind};

use super::prefix::Prefixes;
use super::worker::{Change, What};
use crate::eslogger::{for_each_line, Line};
use crate::process::users::UserNames;
use edr_model::event::{entity_id, EventType, Process, Timestamp, User};
use edr_pipeline::Counters;

/// The event types the source subscribes to, as eslogger names them.
pub(super) const EVENTS: [&str; 4] = ["create", "close", "rename", "unlink"];
/// A file event is two paths of at most 1 KiB and a process; anything
/// this long is not one.
pub(super) const MAX_LINE: usize = 256 * 1024;
/// Processes whose arguments are kept; past this the cache starts over.
const MAX_CACHED: usize = 1024;

/// One `es_message_t` as eslogger serializes it, reduced to what a file
/// event needs (other fields are skipped).
#[derive(Debug, Deserialize)]
struct Message<'a> {
    #[serde(default)]
    global_seq_num: Option<u64>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    process: EsProcess<'a>,
    #[serde(borrow)]
    event: EsEvent<'a>,
}

/// `es_process_t`.
#[derive(Debug, Deserialize)]
struct EsProcess<'a> {
    audit_token: AuditToken,
    #[serde(borrow, default)]
    start_time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    executable: EsFile<'a>,
}

/// An object up to message version 9, an array (auid, euid, egid, ruid,
/// rgid, pid, asid, pidversion) from 10.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum AuditToken {
    Fields {
        pid: u32,
        #[serde(default)]
        euid: Option<u32>,
    },
    Array(Vec<i64>),
}

impl AuditToken {
    fn pid(&self) -> Option<u32> {
        match self {
            AuditToken::Fields { pid, .. } => Some(*pid),
            AuditToken::Array(a) => a.get(5).and_then(|v| u32::try_from(*v).ok()),
        }
    }

    fn euid(&self) -> Option<u32> {
        match self {
            AuditToken::Fields { euid, .. } => *euid,
            AuditToken::Array(a) => a.get(1).and_then(|v| u32::try_from(*v).ok()),
        }
    }
}

/// `es_file_t` (its `stat` is not needed: the worker stats the path).
#[derive(Debug, Deserialize)]
struct EsFile<'a> {
    #[serde(borrow)]
    path: Cow<'a, str>,
}

/// `es_message_t.event`: one key, named by the event type.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EsEvent<'a> {
    Create(#[serde(borrow)] Create<'a>),
    Close(#[serde(borrow)] Close<'a>),
    Rename(#[serde(borrow)] Rename<'a>),
    Unlink(#[serde(borrow)] Unlink<'a>),
}

/// `es_event_create_t`.
#[derive(Debug, Deserialize)]
struct Create<'a> {
    #[serde(borrow)]
    destination: Destination<'a>,
}

/// `es_event_close_t`: `modified` is set when the file was written
/// through this descriptor.
#[derive(Debug, Deserialize)]
struct Close<'a> {
    modified: bool,
    #[serde(borrow)]
    target: EsFile<'a>,
}

/// `es_event_rename_t`.
#[derive(Debug, Deserialize)]
struct Rename<'a> {
    #[serde(borrow)]
    source: EsFile<'a>,
    #[serde(borrow)]
    destination: Destination<'a>,
}

/// `es_event_unlink_t`.
#[derive(Debug, Deserialize)]
struct Unlink<'a> {
    #[serde(borrow)]
    target: EsFile<'a>,
}

/// The union after `destination_type`: a file that exists (a create
/// reported after the fact, a rename over an existing file), or a
/// directory and the new entry's name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Destination<'a> {
    ExistingFile(#[serde(borrow)] EsFile<'a>),
    NewPath(#[serde(borrow)] NewPath<'a>),
}

#[derive(Debug, Deserialize)]
struct NewPath<'a> {
    #[serde(borrow)]
    dir: EsFile<'a>,
    #[serde(borrow)]
    filename: Cow<'a, str>,
}

/// Why a line was skipped.
#[derive(Debug, thiserror::Error)]
pub(super) enum LineError {
    #[error("not an eslogger file event: {0}")]
    Json(#[from] serde_json::Error),
    #[error("path is not absolute and normalized: {0:?}")]
    BadPath(String),
    #[error("file name is not a single path component: {0:?}")]
    BadName(String),
    #[error("the process has no pid")]
    NoPid,
}

/// A parsed line: the changes under the watch paths, in order.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub(super) seq: Option<u64>,
    /// The process's arguments could not be read (it had exited).
    pub(super) partial: bool,
}

/// Turns eslogger lines into [`Change`]s with their process.
pub(super) struct Translator {
    prefixes: Prefixes,
    host: String,
    users: UserNames,
    args: ArgsCache,
}

impl Translator {
    pub(super) fn new(prefixes: Prefixes, host: &str) -> Translator {
        Translator {
            prefixes,
            host: host.to_string(),
            users: UserNames::default(),
            args: ArgsCache::default(),
        }
    }

    /// Parses one line into `out` (nothing when the change is outside the
    /// watch paths or not a change, like a close without a write).
    pub(super) fn line(&mut self, line: &[u8], out: &mut Vec<Change>) -> Result<Parsed, LineError> {
        let msg: Message<'_> = serde_json::from_slice(line)?;
        let at = msg
            .time
            .as_deref()
            .and_then(Timestamp::parse)
            .unwrap_or_else(Timestamp::now);
        let change = |what, path, original| Change {
            at,
            what,
            path,
            original,
            actor: None,
        };
        let first = out.len();
        match &msg.event {
            EsEvent::Create(c) => {
                let path = destination(&c.destination)?;
                if self.prefixes.covers(&path) {
                    out.push(change(What::Created, path, None));
                }
            }
            // Most closes on a machine wrote nothing: not even the path
            // is looked at.
            EsEvent::Close(c) if !c.modified => {}
            EsEvent::Close(c) => {
                let path = absolute(&c.target.path)?;
                if self.prefixes.covers(&path) {
                    out.push(change(What::Modified { data: true }, path, None));
                }
            }
            EsEvent::Rename(r) => {
                let old = absolute(&r.source.path)?;
                let new = destination(&r.destination)?;
                match (self.prefixes.covers(&old), self.prefixes.covers(&new)) {
                    (true, true) => out.push(change(What::Renamed, new, Some(old))),
                    (false, true) => out.push(change(What::RenamedIn, new, None)),
                    (true, false) => out.push(change(What::RenamedOut, old, None)),
                    (false, false) => {}
                }
            }
            EsEvent::Unlink(u) => {
                let path = absolute(&u.target.path)?;
                if self.prefixes.covers(&path) {
                    out.push(change(What::Deleted, path, None));
                }
            }
        }
        let mut parsed = Parsed {
            seq: msg.global_seq_num,
            partial: false,
        };
        if out.len() > first {
            let (process, partial) = self.describe(&msg.process)?;
            parsed.partial = partial;
            for c in &mut out[first..] {
                c.actor = Some(process.clone());
            }
        }
        Ok(parsed)
    }

    /// `process.*` as fanotify's actor fills it: the program and user from
    /// the event, the arguments read for the pid.
    fn describe(&mut self, p: &EsProcess<'_>) -> Result<(Box<Process>, bool), LineError> {
        let pid = p.audit_token.pid().ok_or(LineError::NoPid)?;
        let executable = p.executable.path.as_ref();
        let start_ms = p.start_time.as_deref().and_then(start_ms);
        let args = start_ms.and_then(|ms| self.args.get(pid, ms / 1000));
        let partial = args.is_none();
        let args = args.map(|a| a.to_vec()).unwrap_or_default();
        let user = p.audit_token.euid().map(|uid| User {
            id: Some(uid.to_string()),
            name: self.users.name(uid).map(String::from),
        });
        let process = Process {
            pid,
            name: executable
                .rsplit('/')
                .next()
                .unwrap_or(executable)
                .to_string(),
            executable: (!executable.is_empty()).then(|| executable.to_string()),
            command_line: (!args.is_empty()).then(|| args.join(" ")),
            args,
            start: start_ms.map(Timestamp),
            entity_id: start_ms
                .map(|ms| entity_id(&self.host, pid, ms))
                .unwrap_or_default(),
            user,
            ..Process::default()
        };
        Ok((Box::new(process), partial))
    }
}

/// Whole seconds, as the process collector derives start times on macOS,
/// so both produce the same `process.entity_id`.
fn start_ms(s: &str) -> Option<u64> {
    Some(Timestamp::parse(s)?.as_millis() / 1000 * 1000)
}

/// Endpoint Security reports absolute, resolved paths; anything else
/// could escape the prefix filter (`/watched/../elsewhere`).
fn absolute(p: &str) -> Result<PathBuf, LineError> {
    let path = Path::new(p);
    let clean = path.is_absolute()
        && !p.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    if clean {
        Ok(path.to_path_buf())
    } else {
        Err(LineError::BadPath(p.to_string()))
    }
}

fn destination(d: &Destination<'_>) -> Result<PathBuf, LineError> {
    match d {
        Destination::ExistingFile(f) => absolute(&f.path),
        Destination::NewPath(n) => {
            let name = n.filename.as_ref();
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
                return Err(LineError::BadName(name.to_string()));
            }
            Ok(absolute(&n.dir.path)?.join(name))
        }
    }
}

/// Arguments of the processes that made changes, by pid, checked against
/// the start time (a reused pid is another process).
#[derive(Default)]
struct ArgsCache {
    sys: Option<System>,
    cache: HashMap<u32, (u64, Arc<[String]>)>,
}

impl ArgsCache {
    /// Redacted like every process's; None once the process is gone.
    fn get(&mut self, pid: u32, start_s: u64) -> Option<Arc<[String]>> {
        if let Some((start, args)) = self.cache.get(&pid) {
            if *start == start_s {
                return Some(Arc::clone(args));
            }
        }
        if self.cache.len() >= MAX_CACHED {
            // sysinfo keeps every process it was asked about: start over.
            self.cache.clear();
            self.sys = None;
        }
        let sys = match &mut self.sys {
            Some(sys) => sys,
            none => none.insert(System::new().ok()?),
        };
        let spid = Pid::from_u32(pid);
        sys.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[spid]),
            true,
            ProcessRefreshKind::nothing().with_cmd(UpdateKind::Always),
        );
        let p = sys.process(spid).filter(|p| p.start_time() == start_s)?;
        let raw: Vec<String> = p
            .cmd()
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        if raw.is_empty() {
            return None;
        }
        let args: Arc<[String]> = edr_model::redact::redact_args(&raw).into();
        self.cache.insert(pid, (start_s, Arc::clone(&args)));
        Some(args)
    }
}

/// Reads eslogger's output until EOF (eslogger stopped or was stopped) or
/// the worker is gone, sending the changes under the watch paths.
pub(super) fn read_loop(
    output: impl BufRead,
    mut translator: Translator,
    tx: &SyncSender<Box<Change>>,
    counters: &Counters,
) -> io::Result<()> {
    let mut out = Vec::new();
    let mut last_seq: Option<u64> = None;
    let mut warned = false;
    let mut skip = |why: &dyn std::fmt::Display, last_seq: &mut Option<u64>| {
        counters.dropped.add(EventType::File, 1);
        // The skipped line had a sequence number too: not a gap.
        *last_seq = None;
        if !warned {
            warned = true;
            tracing::warn!("eslogger: line skipped (counted in dropped.file): {why}");
        }
    };
    for_each_line(output, MAX_LINE, |line| {
        let text = match line {
            Line::Text(t) if t.iter().all(u8::is_ascii_whitespace) => return true,
            Line::Text(t) => t,
            Line::TooLong => {
                skip(&format_args!("longer than {MAX_LINE} bytes"), &mut last_seq);
                return true;
            }
        };
        match translator.line(text, &mut out) {
            Ok(parsed) => {
                if let (Some(prev), Some(seq)) = (last_seq, parsed.seq) {
                    if seq > prev.saturating_add(1) {
                        counters.watcher_overflows.fetch_add(1, Relaxed);
                        tracing::warn!(
                            "Endpoint Security dropped {} messages: file events were lost",
                            seq - prev - 1
                        );
                    }
                }
                last_seq = parsed.seq.or(last_seq);
                if parsed.partial {
                    counters.process_partial.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                out.clear();
                skip(&e, &mut last_seq);
            }
        }
        for change in out.drain(..) {
            match tx.try_send(Box::new(change)) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => counters.dropped.add(EventType::File, 1),
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Shaped as eslogger writes them (message version 9, macOS 15):
    /// `es_message_t` with `process` and the event under its type's name,
    /// slashes escaped as eslogger escapes them.
    const PROC_V9: &str = r#"{"audit_token":{"auid":501,"asid":100019,"egid":20,"pid":4242,"pidversion":149091,"rgid":20,"euid":0,"ruid":501},"ppid":58916,"original_ppid":58916,"group_id":4242,"session_id":58916,"is_platform_binary":true,"is_es_client":false,"start_time":"2025-08-07T13:21:35.877422Z","executable":{"path":"\/usr\/bin\/tee","path_truncated":false,"stat":{"st_mode":33261,"st_size":154624}},"signing_id":"com.apple.tee","team_id":null,"tty":{"path":"\/dev\/ttys003","path_truncated":false}}"#;
    /// Message version 10 (macOS 26) writes audit tokens as arrays.
    const PROC_V10: &str = r#"{"audit_token":[501,501,20,501,20,4343,100013,38282],"ppid":1,"start_time":"2025-07-22T15:05:14.076236Z","executable":{"path":"\/bin\/mv","path_truncated":false}}"#;

    fn line(seq: u64, event_type: u32, process: &str, event: &str) -> String {
        format!(
            r#"{{"version":9,"schema_version":1,"event_type":{event_type},"global_seq_num":{seq},"seq_num":{seq},"mach_time":88402352013,"deadline":0,"action_type":1,"time":"2025-08-07T13:21:36.125000000Z","thread":{{"thread_id":5262870}},"process":{process},"event":{event}}}"#
        )
    }

    fn create_new(seq: u64, dir: &str, name: &str) -> String {
        let dir = dir.replace('/', "\\/");
        line(
            seq,
            13,
            PROC_V9,
            &format!(
                r#"{{"create":{{"destination_type":1,"destination":{{"new_path":{{"dir":{{"path":"{dir}","path_truncated":false}},"filename":"{name}","mode":420}}}},"acl":null}}}}"#
            ),
        )
    }

    fn translator() -> Translator {
        Translator::new(
            Prefixes::as_configured(&["/Library/LaunchDaemons".into(), "/Users/me/.zshrc".into()]),
            "mac",
        )
    }

    fn parse(t: &mut Translator, l: &str) -> Vec<Change> {
        let mut out = Vec::new();
        t.line(l.as_bytes(), &mut out).expect("parses");
        out
    }

    #[test]
    fn create_names_the_file_and_the_process() {
        let mut t = translator();
        let out = parse(
            &mut t,
            &create_new(1, "/Library/LaunchDaemons", "com.evil.plist"),
        );
        assert_eq!(out.len(), 1);
        let c = &out[0];
        assert_eq!(c.what, What::Created);
        assert_eq!(c.path, Path::new("/Library/LaunchDaemons/com.evil.plist"));
        assert_eq!(
            c.at,
            Timestamp::parse("2025-08-07T13:21:36.125Z").expect("t")
        );
        let p = c.actor.as_deref().expect("process");
        assert_eq!(p.pid, 4242);
        assert_eq!(p.name, "tee");
        assert_eq!(p.executable.as_deref(), Some("/usr/bin/tee"));
        let start = Timestamp::parse("2025-08-07T13:21:35Z")
            .expect("t")
            .as_millis();
        assert_eq!(p.start, Some(Timestamp(start)));
        assert_eq!(p.entity_id, entity_id("mac", 4242, start));
        let user = p.user.as_ref().expect("user");
        assert_eq!(user.id.as_deref(), Some("0"));
        assert_eq!(user.name.as_deref(), Some("root"));

        // The file existed by the time the event was read.
        let existing = line(
            2,
            13,
            PROC_V9,
            r#"{"create":{"destination_type":0,"destination":{"existing_file":{"path":"\/Library\/LaunchDaemons\/x.plist","path_truncated":false,"stat":{"st_mode":33188}}},"acl":null}}"#,
        );
        let out = parse(&mut t, &existing);
        assert_eq!(out[0].path, Path::new("/Library/LaunchDaemons/x.plist"));
    }

    #[test]
    fn close_after_a_write_is_a_modification_and_other_closes_are_nothing() {
        let mut t = translator();
        let close = |modified: bool| {
            line(
                3,
                12,
                PROC_V9,
                &format!(
                    r#"{{"close":{{"modified":{modified},"target":{{"path":"\/Users\/me\/.zshrc","path_truncated":false}},"was_mapped_writable":false}}}}"#
                ),
            )
        };
        let out = parse(&mut t, &close(true));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].what, What::Modified { data: true });
        assert_eq!(out[0].path, Path::new("/Users/me/.zshrc"));
        assert!(out[0].actor.is_some());
        assert!(parse(&mut t, &close(false)).is_empty());
    }

    #[test]
    fn unlink_is_a_deletion_with_audit_tokens_as_arrays() {
        let mut t = translator();
        let unlink = line(
            4,
            32,
            PROC_V10,
            r#"{"unlink":{"target":{"path":"\/Library\/LaunchDaemons\/com.evil.plist","path_truncated":false},"parent_dir":{"path":"\/Library\/LaunchDaemons","path_truncated":false}}}"#,
        );
        let out = parse(&mut t, &unlink);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].what, What::Deleted);
        let p = out[0].actor.as_deref().expect("process");
        assert_eq!((p.pid, p.name.as_str()), (4343, "mv"));
        assert_eq!(p.user.as_ref().and_then(|u| u.id.as_deref()), Some("501"));
    }

    #[test]
    fn renames_inside_into_and_out_of_the_watch_paths() {
        let mut t = translator();
        let rename = |from: &str, dir: &str, name: &str| {
            let (from, dir) = (from.replace('/', "\\/"), dir.replace('/', "\\/"));
            line(
                5,
                25,
                PROC_V10,
                &format!(
                    r#"{{"rename":{{"source":{{"path":"{from}","path_truncated":false}},"destination_type":1,"destination":{{"new_path":{{"dir":{{"path":"{dir}","path_truncated":false}},"filename":"{name}"}}}}}}}}"#
                ),
            )
        };
        let inside = parse(
            &mut t,
            &rename(
                "/Library/LaunchDaemons/a.tmp",
                "/Library/LaunchDaemons",
                "a.plist",
            ),
        );
        assert_eq!(inside[0].what, What::Renamed);
        assert_eq!(inside[0].path, Path::new("/Library/LaunchDaemons/a.plist"));
        assert_eq!(
            inside[0].original.as_deref(),
            Some(Path::new("/Library/LaunchDaemons/a.tmp"))
        );
        let moved_in = parse(
            &mut t,
            &rename("/private/tmp/x", "/Library/LaunchDaemons", "x.plist"),
        );
        assert_eq!(moved_in[0].what, What::RenamedIn);
        assert_eq!(
            moved_in[0].path,
            Path::new("/Library/LaunchDaemons/x.plist")
        );
        assert_eq!(moved_in[0].original, None);
        let moved_out = parse(
            &mut t,
            &rename("/Library/LaunchDaemons/x.plist", "/private/tmp", "x"),
        );
        assert_eq!(moved_out[0].what, What::RenamedOut);
        assert_eq!(
            moved_out[0].path,
            Path::new("/Library/LaunchDaemons/x.plist")
        );
        assert!(parse(&mut t, &rename("/private/tmp/a", "/private/tmp", "b")).is_empty());

        // Over an existing file: the destination is that file.
        let over = line(
            6,
            25,
            PROC_V9,
            r#"{"rename":{"source":{"path":"\/Users\/me\/.zshrc.new"},"destination_type":0,"destination":{"existing_file":{"path":"\/Users\/me\/.zshrc"}}}}"#,
        );
        let out = parse(&mut t, &over);
        assert_eq!(out[0].what, What::RenamedIn);
        assert_eq!(out[0].path, Path::new("/Users/me/.zshrc"));
    }

    #[test]
    fn the_subscribed_event_types_are_the_ones_parsed() {
        for name in EVENTS {
            let l = line(1, 0, PROC_V9, &format!(r#"{{"{name}":{{}}}}"#));
            let err = translator()
                .line(l.as_bytes(), &mut Vec::new())
                .expect_err("no fields");
            assert!(err.to_string().contains("missing field"), "{name}: {err}");
        }
    }

    #[test]
    fn paths_outside_the_watch_paths_are_ignored() {
        let mut t = translator();
        for l in [
            create_new(7, "/Library/LaunchAgents", "x.plist"),
            // Components, not bytes.
            create_new(8, "/Library", "LaunchDaemons.bak"),
            create_new(9, "/Users/me", ".zshrc.swp"),
        ] {
            assert!(parse(&mut t, &l).is_empty(), "{l}");
        }
    }

    #[test]
    fn the_arguments_are_read_for_a_live_process() {
        // This test's own process, with its real start time.
        let me = std::process::id();
        let mut sys = System::new().expect("process table");
        let spid = Pid::from_u32(me);
        sys.refresh_processes(ProcessesToUpdate::Some(&[spid]), true);
        let start_s = sys.process(spid).expect("own process").start_time();
        let started = Timestamp(start_s * 1000 + 250).to_string();
        let process = format!(
            r#"{{"audit_token":{{"pid":{me},"euid":0}},"start_time":"{started}","executable":{{"path":"\/usr\/bin\/tee"}}}}"#
        );
        let l = line(
            10,
            12,
            &process,
            r#"{"close":{"modified":true,"target":{"path":"\/Users\/me\/.zshrc"}}}"#,
        );
        let mut t = translator();
        let mut out = Vec::new();
        let parsed = t.line(l.as_bytes(), &mut out).expect("parses");
        assert!(!parsed.partial);
        let p = out[0].actor.as_deref().expect("process");
        let own: Vec<String> = std::env::args().collect();
        assert_eq!(p.args, edr_model::redact::redact_args(&own));
        assert_eq!(p.command_line, Some(p.args.join(" ")));
        assert_eq!(p.entity_id, entity_id("mac", me, start_s * 1000));

        // Another start time is another process: no arguments.
        let reused = l.replace(&started, "2001-01-01T00:00:00Z");
        let mut out = Vec::new();
        assert!(t.line(reused.as_bytes(), &mut out).expect("parses").partial);
        assert!(out[0].actor.as_deref().expect("process").args.is_empty());
    }

    #[test]
    fn lines_become_the_ecs_file_events_the_worker_stores() {
        use super::super::worker::Worker;
        use crate::CollectorContext;
        use tokio_util::sync::CancellationToken;

        let dir = tempfile::tempdir().expect("tempdir");
        let watched = std::fs::canonicalize(dir.path())
            .expect("canon")
            .join("LaunchDaemons");
        std::fs::create_dir(&watched).expect("mkdir");
        std::fs::write(watched.join("com.evil.plist"), b"<plist/>").expect("write");
        let w = watched.display().to_string();
        let (ctx, events) = CollectorContext::standalone(64);
        let mut worker = Worker::new(ctx.clone(), &["**/*.swp".into()], None);
        let e = |s: &str| s.replace('/', "\\/");
        let input = [
            create_new(1, &w, "com.evil.plist"),
            line(
                2,
                12,
                PROC_V9,
                &format!(
                    r#"{{"close":{{"modified":true,"target":{{"path":"{}"}}}}}}"#,
                    e(&format!("{w}/.com.evil.plist.swp"))
                ),
            ),
            line(
                3,
                32,
                PROC_V10,
                &format!(
                    r#"{{"unlink":{{"target":{{"path":"{}"}}}}}}"#,
                    e(&format!("{w}/old.plist"))
                ),
            ),
        ]
        .join("\n");
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let translator = Translator::new(
            Prefixes::resolved(std::slice::from_ref(&w)),
            &ctx.origin.host.name,
        );
        read_loop(input.as_bytes(), translator, &tx, &ctx.counters).expect("reads");
        drop(tx);
        worker.run_changes(&rx, &CancellationToken::new());
        let mut stored = Vec::new();
        while let Ok(ev) = events.try_recv() {
            stored.push(serde_json::to_value(&ev).expect("json"));
        }
        assert_eq!(stored.len(), 2, "the .swp is excluded: {stored:#?}");
        let created = &stored[0];
        assert_eq!(created["event"]["action"], "file-created");
        assert_eq!(created["file"]["path"], format!("{w}/com.evil.plist"));
        assert_eq!(created["file"]["name"], "com.evil.plist");
        assert_eq!(created["file"]["directory"], w.as_str());
        assert_eq!(created["file"]["size"], 8);
        let p = &created["process"];
        assert_eq!(p["pid"], 4242);
        assert_eq!(p["name"], "tee");
        assert_eq!(p["executable"], "/usr/bin/tee");
        let start = Timestamp::parse("2025-08-07T13:21:35Z")
            .expect("t")
            .as_millis();
        assert_eq!(
            p["entity_id"],
            entity_id(&ctx.origin.host.name, 4242, start)
        );
        assert_eq!(p["user"]["id"], "0");
        let deleted = &stored[1];
        assert_eq!(deleted["event"]["action"], "file-deleted");
        assert_eq!(deleted["file"]["name"], "old.plist");
        assert_eq!(deleted["process"]["pid"], 4343);
    }

    fn run(input: &[u8], queue: usize) -> (Vec<Change>, Arc<Counters>) {
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::sync_channel(queue);
        read_loop(input, translator(), &tx, &counters).expect("reads");
        drop(tx);
        (rx.iter().map(|c| *c).collect(), counters)
    }

    #[test]
    fn malformed_truncated_and_huge_lines_are_counted_and_skipped() {
        let good = create_new(20, "/Library/LaunchDaemons", "ok.plist");
        let huge = format!(
            r#"{{"process":{PROC_V9},"event":{{"close":{{"modified":true,"target":{{"path":"\/Users\/me\/.zshrc{}"}}}}}}}}"#,
            "x".repeat(MAX_LINE)
        );
        let hostile = [
            "not json at all".to_string(),
            good[..good.len() / 2].to_string(),
            huge,
            // Another event type, a missing pid, a wrong type.
            line(
                21,
                10,
                PROC_V9,
                r#"{"open":{"file":{"path":"\/Users\/me\/.zshrc"},"fflag":1}}"#,
            ),
            line(
                22,
                13,
                r#"{"audit_token":{"euid":0},"executable":{"path":"\/bin\/sh"}}"#,
                r#"{"create":{"destination":{"existing_file":{"path":"\/Library\/LaunchDaemons\/a"}}}}"#,
            ),
            line(
                23,
                12,
                PROC_V9,
                r#"{"close":{"modified":"yes","target":{"path":"\/Users\/me\/.zshrc"}}}"#,
            ),
            // Paths that would escape the prefix filter.
            create_new(24, "/Library/LaunchDaemons", ".."),
            create_new(25, "/Library/LaunchDaemons", "..\\/..\\/etc\\/x"),
            line(
                26,
                32,
                PROC_V9,
                r#"{"unlink":{"target":{"path":"\/Library\/LaunchDaemons\/..\/..\/etc\/x"}}}"#,
            ),
            line(
                27,
                32,
                PROC_V9,
                r#"{"unlink":{"target":{"path":"Library\/LaunchDaemons\/x"}}}"#,
            ),
            "\u{0}\u{ff}{{{{".to_string(),
        ];
        let mut input = Vec::new();
        for h in &hostile {
            input.extend_from_slice(h.as_bytes());
            input.push(b'\n');
        }
        input.extend_from_slice(b"\n\xff\xfe\n");
        input.extend_from_slice(good.as_bytes());
        input.push(b'\n');
        let (changes, counters) = run(&input, 16);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            changes[0].path,
            Path::new("/Library/LaunchDaemons/ok.plist")
        );
        assert_eq!(
            counters.dropped.get(EventType::File),
            hostile.len() as u64 + 1
        );
        assert_eq!(counters.watcher_overflows.load(Relaxed), 0);
    }

    #[test]
    fn sequence_gaps_and_a_full_queue_are_counted() {
        let mut input = String::new();
        for seq in [1, 2, 3, 7, 8] {
            input.push_str(&create_new(
                seq,
                "/Library/LaunchDaemons",
                &format!("{seq}.plist"),
            ));
            input.push('\n');
        }
        let (changes, counters) = run(input.as_bytes(), 3);
        assert_eq!(changes.len(), 3);
        assert_eq!(counters.watcher_overflows.load(Relaxed), 1);
        assert_eq!(counters.dropped.get(EventType::File), 2);
    }
}
