//! Running `eslogger` (macOS 13+), which streams Endpoint Security events
//! as JSON lines: shared by the process collector (`exec fork exit`) and
//! the file collector (`create close rename unlink`), each with its own
//! child.
//!
//! Nothing here is macOS-specific but the program's path, so the start-up
//! check and the line reader are tested on Linux with real children.

use std::io::{self, BufRead, Read};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

#[cfg(target_os = "macos")]
pub(crate) const ESLOGGER: &str = "/usr/bin/eslogger";
/// Without root or Full Disk Access, eslogger exits within this long.
#[cfg(target_os = "macos")]
pub(crate) const STARTUP: Duration = Duration::from_millis(1500);

/// Starts `program args`, output piped, and watches it for `startup`: a
/// program that exits meanwhile was refused, and its stderr says why.
pub(crate) fn spawn(
    program: &str,
    args: &[&str],
    startup: Duration,
) -> Result<(Child, ChildStdout), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program} (macOS 13 or later): {e}"))?;
    let started = Instant::now();
    while started.elapsed() < startup {
        if let Ok(Some(status)) = child.try_wait() {
            let mut why = String::new();
            if let Some(err) = child.stderr.take() {
                // Bounded: a refusal is one line, and a child that floods
                // stderr must not hold the collector's start.
                let _ = err.take(4096).read_to_string(&mut why);
            }
            return Err(format!(
                "eslogger exited ({status}): {} (it needs root and Full Disk Access)",
                why.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // What it says later goes to the log: an unread pipe would block it
    // once full, and a closed one would end it (SIGPIPE).
    if let Some(err) = child.stderr.take() {
        let logged = std::thread::Builder::new()
            .name("edr-eslogger-err".into())
            .spawn(move || log_stderr(err));
        if let Err(e) = logged {
            tracing::warn!("cannot start the eslogger stderr reader: {e}");
        }
    }
    match child.stdout.take() {
        Some(stdout) => Ok((child, stdout)),
        None => {
            stop(&mut child);
            Err("eslogger has no output".into())
        }
    }
}

fn log_stderr(err: std::process::ChildStderr) {
    let _ = for_each_line(io::BufReader::new(err), 4096, |line| {
        if let Line::Text(t) = line {
            tracing::warn!("eslogger: {}", String::from_utf8_lossy(t).trim());
        }
        true
    });
}

/// Ends the child when the collector stops, which ends its reader (EOF).
pub(crate) fn stop_on_cancel(mut child: Child, cancel: CancellationToken) {
    while !cancel.is_cancelled() {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop(&mut child);
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// One line of output as [`for_each_line`] hands it over.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line<'a> {
    /// Without its newline.
    Text(&'a [u8]),
    /// A line longer than the limit, skipped up to its newline without
    /// being kept.
    TooLong,
}

/// Calls `f` with each line of `r`, keeping at most `max` bytes of one
/// line in memory, until EOF, a read error, or `f` returns false.
pub(crate) fn for_each_line(
    mut r: impl BufRead,
    max: usize,
    mut f: impl FnMut(Line<'_>) -> bool,
) -> io::Result<()> {
    let mut line = Vec::with_capacity(4096);
    let mut too_long = false;
    loop {
        let buf = match r.fill_buf() {
            Ok([]) => break,
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let (chunk, ended) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        if !too_long {
            if line.len() + chunk.len() > max {
                too_long = true;
                line.clear();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = ended.unwrap_or(buf.len());
        r.consume(used);
        if ended.is_some() {
            let go_on = if too_long {
                f(Line::TooLong)
            } else {
                f(Line::Text(&line))
            };
            line.clear();
            // A buffer grown by one long line is not kept for the rest.
            line.shrink_to(4096);
            too_long = false;
            if !go_on {
                return Ok(());
            }
        }
    }
    // A last line without its newline: the child died mid-write.
    if too_long {
        f(Line::TooLong);
    } else if !line.is_empty() {
        f(Line::Text(&line));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize, cap: usize) -> Vec<Option<String>> {
        let mut out = Vec::new();
        // A small read buffer, so lines span several reads.
        let r = io::BufReader::with_capacity(cap, input);
        for_each_line(r, max, |l| {
            out.push(match l {
                Line::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
                Line::TooLong => None,
            });
            true
        })
        .expect("reads");
        out
    }

    #[test]
    fn long_lines_are_skipped_whole_and_the_next_line_is_intact() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 10_000));
        input.extend(b"\nafter\nlast-without-newline");
        for cap in [3, 64, 1 << 16] {
            assert_eq!(
                lines(&input, 100, cap),
                [
                    Some("short".into()),
                    None,
                    Some("after".into()),
                    Some("last-without-newline".into())
                ],
                "read buffer {cap}"
            );
        }
        assert_eq!(lines(b"exactly5\n", 8, 2), [Some("exactly5".into())]);
        assert_eq!(lines(b"exactly9\n", 7, 2), [None]);
        assert!(lines(b"", 8, 2).is_empty());
    }

    #[test]
    fn the_callback_can_stop_the_reader() {
        let mut seen = 0;
        for_each_line(&b"a\nb\nc\n"[..], 8, |_| {
            seen += 1;
            seen < 2
        })
        .expect("reads");
        assert_eq!(seen, 2);
    }

    #[test]
    fn a_child_that_exits_at_once_is_refused_with_its_stderr() {
        let err = spawn(
            "/bin/sh",
            &[
                "-c",
                "echo 'ES_NEW_CLIENT_RESULT_ERR_NOT_PERMITTED' >&2; exit 1",
            ],
            Duration::from_secs(5),
        )
        .expect_err("refused");
        assert!(
            err.contains("ES_NEW_CLIENT_RESULT_ERR_NOT_PERMITTED"),
            "{err}"
        );
        assert!(err.contains("exit status: 1"), "{err}");
        let missing = spawn("/nonexistent/eslogger", &[], Duration::from_secs(1))
            .expect_err("no such program");
        assert!(
            missing.contains("cannot run /nonexistent/eslogger"),
            "{missing}"
        );
    }

    #[test]
    fn a_child_that_keeps_running_is_read_and_stopped_on_cancel() {
        let (child, stdout) = spawn(
            "/bin/sh",
            &["-c", "echo '{\"a\":1}'; exec sleep 60"],
            Duration::from_millis(200),
        )
        .expect("runs");
        let cancel = CancellationToken::new();
        let stopper = {
            let cancel = cancel.clone();
            std::thread::spawn(move || stop_on_cancel(child, cancel))
        };
        let mut got = Vec::new();
        for_each_line(io::BufReader::new(stdout), 64, |l| {
            if let Line::Text(t) = l {
                got.push(t.to_vec());
            }
            cancel.cancel();
            true
        })
        .expect("reads until EOF");
        assert_eq!(got, [b"{\"a\":1}".to_vec()]);
        stopper.join().expect("stopper");
    }
}
