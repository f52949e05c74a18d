//! macOS: `eslogger` (shipped with macOS 13+) streams Endpoint Security
//! events as JSON lines. Run as `eslogger exec fork exit`, it reports what
//! the proc connector does on Linux, with the program and its arguments
//! already in the event. It needs root, and Full Disk Access for the
//! program that runs it; without them it exits at once, saying so on
//! stderr.
//!
//! The parser is plain JSON work and is tested on every platform; only
//! starting `eslogger` is macOS code.

use serde_json::Value;

use super::source::{exit_code_from_wait_status, Exec, Exit, Fork, SourceEvent};
use edr_model::event::Timestamp;

/// One line of `eslogger` output, or None for anything else. Returns the
/// event and the line's `global_seq_num` (gaps mean Endpoint Security
/// dropped events).
pub(crate) fn parse_line(line: &str, environ: bool) -> Option<(SourceEvent, Option<u64>)> {
    let v: Value = serde_json::from_str(line).ok()?;
    let at = v
        .get("time")
        .and_then(Value::as_str)
        .and_then(Timestamp::parse)
        .unwrap_or_else(Timestamp::now);
    let seq = v.get("global_seq_num").and_then(Value::as_u64);
    let event = v.get("event")?;
    let parsed = if let Some(exec) = event.get("exec") {
        SourceEvent::Exec(Box::new(parse_exec(exec, at, environ)?))
    } else if let Some(fork) = event.get("fork") {
        let child = fork.get("child")?;
        let parent = v.get("process").and_then(pid_of);
        SourceEvent::Fork(Fork {
            pid: pid_of(child)?,
            ppid: child.get("ppid").and_then(as_u32).or(parent)?,
            start_ms: start_ms(child).unwrap_or(at.as_millis() / 1000 * 1000),
        })
    } else if let Some(exit) = event.get("exit") {
        let status = exit.get("stat").and_then(Value::as_i64);
        SourceEvent::Exit(Exit {
            pid: v.get("process").and_then(pid_of)?,
            exit_code: status
                .and_then(|s| i32::try_from(s).ok())
                .map(exit_code_from_wait_status),
            at,
        })
    } else {
        return None;
    };
    Some((parsed, seq))
}

fn parse_exec(exec: &Value, at: Timestamp, environ: bool) -> Option<Exec> {
    let target = exec.get("target")?;
    let strings = |key: &str| -> Option<Vec<String>> {
        let items = exec.get(key)?.as_array()?;
        Some(
            items
                .iter()
                .filter_map(|a| a.as_str().map(String::from))
                .collect(),
        )
    };
    Some(Exec {
        pid: pid_of(target)?,
        ppid: target.get("ppid").and_then(as_u32),
        start_ms: start_ms(target),
        uid: audit_token_field(target, "euid", 1),
        comm: None,
        executable: target
            .get("executable")
            .and_then(|e| e.get("path"))
            .and_then(Value::as_str)
            .map(String::from),
        executable_id: None,
        args: strings("args"),
        // Endpoint Security reports the exec's working directory (message
        // version 3 and later); the parent's program is not in the event,
        // it comes from the collector's live view.
        cwd: exec
            .get("cwd")
            .and_then(|c| c.get("path"))
            .and_then(Value::as_str)
            .map(String::from),
        env: if environ {
            strings("env").unwrap_or_default()
        } else {
            Vec::new()
        },
        at,
    })
}

fn pid_of(process: &Value) -> Option<u32> {
    audit_token_field(process, "pid", 5)
}

/// A field of an `audit_token`: an object up to message version 9, an
/// array (auid, euid, egid, ruid, rgid, pid, asid, pidversion) from 10.
fn audit_token_field(process: &Value, name: &str, index: usize) -> Option<u32> {
    let token = process.get("audit_token")?;
    let value = match token {
        Value::Array(items) => items.get(index)?,
        other => other.get(name)?,
    };
    as_u32(value)
}

fn as_u32(v: &Value) -> Option<u32> {
    u32::try_from(v.as_u64()?).ok()
}

/// Whole seconds, as the scan (sysinfo) derives start times on macOS, so
/// both produce the same `process.entity_id`.
fn start_ms(process: &Value) -> Option<u64> {
    let t = Timestamp::parse(process.get("start_time")?.as_str()?)?;
    Some(t.as_millis() / 1000 * 1000)
}

#[cfg(target_os = "macos")]
pub(crate) use spawn::start;

#[cfg(target_os = "macos")]
mod spawn {
    use std::io::{BufReader, Read};
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::super::monitor::Source;
    use super::super::source::{source_queue, SourceEvent, SourceTx};
    use super::parse_line;
    use crate::eslogger::{for_each_line, spawn, stop_on_cancel, Line, ESLOGGER, STARTUP};
    use edr_pipeline::Counters;

    /// An exec line carries the arguments and (when asked) the
    /// environment, at most ARG_MAX (1 MiB) before JSON escaping.
    const MAX_LINE: usize = 8 << 20;

    /// Starts `eslogger exec fork exit` and a thread reading its output.
    pub(crate) fn start(
        environ: bool,
        counters: Arc<Counters>,
        cancel: CancellationToken,
    ) -> Result<Source, String> {
        let (child, stdout) = spawn(ESLOGGER, &["exec", "fork", "exit"], STARTUP)?;
        let (tx, rx) = source_queue(counters);
        let reader = std::thread::Builder::new()
            .name("edr-eslogger".into())
            .spawn(move || read_loop(stdout, tx, environ))
            .map_err(|e| format!("cannot start the eslogger reader: {e}"))?;
        std::thread::Builder::new()
            .name("edr-eslogger-stop".into())
            .spawn(move || stop_on_cancel(child, cancel))
            .map_err(|e| format!("cannot start the eslogger watcher: {e}"))?;
        Ok(Source {
            rx,
            reader,
            reread: None,
        })
    }

    fn read_loop(stdout: impl Read, mut tx: SourceTx, environ: bool) {
        let mut last_seq: Option<u64> = None;
        let read = for_each_line(BufReader::new(stdout), MAX_LINE, |line| {
            let Line::Text(line) = line else {
                tx.lost();
                return true;
            };
            let Some((event, seq)) = std::str::from_utf8(line)
                .ok()
                .and_then(|l| parse_line(l, environ))
            else {
                return true;
            };
            if let (Some(prev), Some(seq)) = (last_seq, seq) {
                if seq > prev + 1 {
                    tx.lost();
                }
            }
            last_seq = seq.or(last_seq);
            tx.send(event)
        });
        let why = match read {
            Ok(()) => "eslogger stopped".to_string(),
            Err(e) => format!("eslogger output unreadable: {e}"),
        };
        tx.send(SourceEvent::Stopped(why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped as eslogger writes them (message version 9, macOS 15).
    const EXEC_V9: &str = r#"{"event_type":9,"global_seq_num":75,"time":"2025-08-07T13:21:35.880814738Z","version":9,"process":{"audit_token":{"auid":501,"asid":100019,"egid":20,"pid":97391,"pidversion":149091,"rgid":20,"euid":501,"ruid":501},"ppid":58916,"original_ppid":58916,"start_time":"2025-08-07T13:21:35.877422Z","executable":{"path":"\/bin\/zsh","path_truncated":false}},"event":{"exec":{"target":{"audit_token":{"pid":97391,"rgid":20,"euid":0,"auid":501,"egid":20,"asid":100019,"pidversion":149092,"ruid":501},"ppid":58916,"original_ppid":58916,"start_time":"2025-08-07T13:21:35.877422Z","executable":{"path":"\/usr\/bin\/curl","path_truncated":false},"is_platform_binary":true},"args":["curl","-s","--user","me:secret","https:\/\/example.com"],"env":["HOME=\/Users\/me"],"cwd":{"path":"\/Users\/me"},"script":null}}}"#;
    /// Message version 10 (macOS 26) writes audit tokens as arrays.
    const FORK_V10: &str = r#"{"version":10,"event_type":11,"global_seq_num":1,"time":"2025-07-22T15:09:01.084030274Z","event":{"fork":{"child":{"audit_token":[501,501,20,501,20,21497,100013,38282],"ppid":19745,"original_ppid":19745,"start_time":"2025-07-22T15:09:01.083979Z","executable":{"path":"\/Applications\/Mullvad VPN.app\/Contents\/MacOS\/Mullvad VPN"}}}},"process":{"audit_token":[501,501,20,501,20,19745,100013,35165],"ppid":1,"start_time":"2025-07-22T15:05:14.076236Z","executable":{"path":"\/Applications\/Mullvad VPN.app\/Contents\/MacOS\/Mullvad VPN"}}}"#;
    const EXIT_V9: &str = r#"{"event_type":15,"global_seq_num":1103,"time":"2025-08-07T15:13:09.811587464Z","version":9,"process":{"audit_token":{"euid":0,"pid":11221,"pidversion":170692},"ppid":532,"start_time":"2025-08-07T15:13:09.798115Z","executable":{"path":"\/usr\/sbin\/ipconfig"}},"event":{"exit":{"stat":256}}}"#;

    fn ms(s: &str) -> u64 {
        Timestamp::parse(s).expect("timestamp").as_millis()
    }

    #[test]
    fn exec_lines_carry_program_arguments_parent_and_user() {
        let (event, seq) = parse_line(EXEC_V9, false).expect("parses");
        assert_eq!(seq, Some(75));
        let SourceEvent::Exec(x) = event else {
            panic!("not an exec: {event:?}");
        };
        assert_eq!(x.pid, 97391);
        assert_eq!(x.ppid, Some(58916));
        assert_eq!(x.uid, Some(0));
        assert_eq!(x.executable.as_deref(), Some("/usr/bin/curl"));
        assert_eq!(
            x.args.as_deref(),
            Some(
                &["curl", "-s", "--user", "me:secret", "https://example.com"].map(String::from)[..]
            )
        );
        assert!(x.env.is_empty());
        assert_eq!(x.cwd.as_deref(), Some("/Users/me"));
        assert_eq!(x.start_ms, Some(ms("2025-08-07T13:21:35Z")));
        assert_eq!(x.at, Timestamp(ms("2025-08-07T13:21:35.880Z")));
        let Some((SourceEvent::Exec(x), _)) = parse_line(EXEC_V9, true) else {
            panic!("parses");
        };
        assert_eq!(x.env, ["HOME=/Users/me"]);
    }

    #[test]
    fn fork_lines_with_array_audit_tokens() {
        let (event, _) = parse_line(FORK_V10, false).expect("parses");
        let SourceEvent::Fork(f) = event else {
            panic!("not a fork: {event:?}");
        };
        assert_eq!((f.pid, f.ppid), (21497, 19745));
        assert_eq!(f.start_ms, ms("2025-07-22T15:09:01Z"));
    }

    #[test]
    fn exit_lines_carry_the_exit_code() {
        let (event, _) = parse_line(EXIT_V9, false).expect("parses");
        let SourceEvent::Exit(e) = event else {
            panic!("not an exit: {event:?}");
        };
        assert_eq!(e.pid, 11221);
        assert_eq!(e.exit_code, Some(1));
        assert_eq!(e.at, Timestamp(ms("2025-08-07T15:13:09.811Z")));
    }

    #[test]
    fn other_lines_are_skipped() {
        for line in [
            "",
            "eslogger: ES_NEW_CLIENT_RESULT_ERR_NOT_PERMITTED",
            r#"{"event":{"open":{"file":{"path":"/x"}}},"process":{"audit_token":{"pid":5}}}"#,
            r#"{"event":{"exec":{"target":{"audit_token":{}}}}}"#,
            r#"{"event":{"exit":{"stat":0}}}"#,
        ] {
            assert!(parse_line(line, false).is_none(), "{line}");
        }
    }
}
