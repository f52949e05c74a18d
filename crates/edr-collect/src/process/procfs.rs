//! Reading a process from `/proc` the moment an event source names it.
//!
//! The order matters: `exe` and `cmdline` vanish when the process exits
//! (its memory is released), while `stat` and `status` remain as long as
//! it is an unreaped zombie. A process that lives a millisecond is read
//! first where it will vanish first.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use super::hash::FileId;
use super::source::Exec;
use super::start_time::{parse_starttime, start_ms_from_ticks};
use edr_model::event::Timestamp;

/// Bytes of a command line kept; the rest is dropped. Long enough for any
/// command line a person reads, and it bounds what one event can queue.
const CMDLINE_MAX: usize = 64 * 1024;
/// Bytes of an environment kept, when environments are collected.
const ENVIRON_MAX: usize = 64 * 1024;

/// Reads processes with reused buffers.
pub(crate) struct ProcReader {
    buf: Vec<u8>,
    environ: bool,
}

/// A process's program, read right after its exec.
#[derive(Debug)]
pub(crate) struct Program {
    executable: Option<String>,
    executable_id: Option<FileId>,
    args: Option<Vec<String>>,
    cwd: Option<String>,
    env: Vec<String>,
}

/// The fields of `/proc/<pid>/stat` the events need.
#[derive(Debug, PartialEq)]
pub(crate) struct Stat<'a> {
    pub comm: &'a str,
    pub ppid: u32,
    pub start_ticks: u64,
}

impl ProcReader {
    pub fn new(environ: bool) -> ProcReader {
        ProcReader {
            buf: Vec::with_capacity(4096),
            environ,
        }
    }

    /// What an exec event needs, read as fast as possible after the exec.
    /// What could not be read (the process is gone) is left out.
    pub fn exec(&mut self, pid: u32, at: Timestamp) -> Exec {
        let program = self.program(pid);
        self.exec_with(pid, program, at)
    }

    /// The part of an exec that vanishes first: when several execs wait,
    /// this is read for all of them before the rest.
    pub fn program(&mut self, pid: u32) -> Program {
        // One open pins the executable file (O_PATH: nothing is read or
        // run), so its path and identity can be read after the process is
        // gone; read separately, the identity was sometimes lost in the
        // microseconds the command line took.
        let exe = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(format!("/proc/{pid}/exe"))
            .ok();
        let args = self
            .read(pid, "cmdline", CMDLINE_MAX)
            .ok()
            .and_then(args_of);
        // Released at exit like the command line, so read with it.
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let executable = exe.as_ref().and_then(|f| {
            std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()))
                .ok()
                .map(|p| p.to_string_lossy().into_owned())
        });
        let executable_id = exe
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| FileId::of(&m));
        drop(exe);
        let env = if self.environ {
            self.read(pid, "environ", ENVIRON_MAX)
                .map(nul_separated)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        Program {
            executable,
            executable_id,
            args,
            cwd,
            env,
        }
    }

    /// Completes an exec from its program: what a zombie still shows.
    pub fn exec_with(&mut self, pid: u32, program: Program, at: Timestamp) -> Exec {
        let Program {
            executable,
            executable_id,
            args,
            cwd,
            env,
        } = program;
        let mut x = Exec {
            pid,
            cwd,
            env,
            at,
            ..Exec::default()
        };
        if let Ok(text) = self.read(pid, "stat", usize::MAX) {
            if let Some(stat) = parse_stat(&String::from_utf8_lossy(text)) {
                x.comm = Some(stat.comm.to_string());
                x.ppid = Some(stat.ppid);
                x.start_ms = start_ms_from_ticks(stat.start_ticks);
            }
        }
        x.executable = executable;
        x.executable_id = executable_id;
        x.args = args;
        x.uid = self
            .read(pid, "status", usize::MAX)
            .ok()
            .and_then(|b| effective_uid(&String::from_utf8_lossy(b)));
        x
    }

    /// Reads `/proc/<pid>/<file>` (at most `max` bytes) into the buffer.
    fn read(&mut self, pid: u32, file: &str, max: usize) -> io::Result<&[u8]> {
        self.buf.clear();
        let f = File::open(format!("/proc/{pid}/{file}"))?;
        f.take(u64::try_from(max).unwrap_or(u64::MAX))
            .read_to_end(&mut self.buf)?;
        Ok(&self.buf)
    }
}

/// Reads a live process afresh, for the rare fork whose parent the
/// collector does not know.
pub(crate) fn reread(pid: u32, at: Timestamp) -> Option<Exec> {
    let x = ProcReader::new(false).exec(pid, at);
    x.start_ms.is_some().then_some(x)
}

/// The arguments in a `/proc/<pid>/cmdline`, None if they are gone.
/// Nothing at all (not even argv[0]'s NUL) means the process has released
/// its memory: it is exiting, whatever state `stat` still shows (a zombie,
/// or still running its exit), so its arguments are unknown, not empty.
/// Since Linux 5.18 an exec always has an argv[0]; before, a program run
/// with no argv at all reads the same and is reported partial too.
fn args_of(cmdline: &[u8]) -> Option<Vec<String>> {
    (!cmdline.is_empty()).then(|| nul_separated(cmdline))
}

/// `cmdline` and `environ` hold NUL-terminated strings.
fn nul_separated(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|b| *b == 0)
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// Fields are counted from the last `)`: the name (field 2) may itself
/// contain spaces and parentheses.
pub(crate) fn parse_stat(line: &str) -> Option<Stat<'_>> {
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let comm = line.get(open + 1..close)?;
    let mut rest = line.get(close + 1..)?.split_ascii_whitespace();
    // Field 3, the state, is skipped: an exec's reader goes by what the
    // files hold, not by what the state says (see `args_of`).
    rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    Some(Stat {
        comm,
        ppid,
        start_ticks: parse_starttime(line)?,
    })
}

/// The arguments of `pid`, empty if they cannot be read (gone, or not
/// the agent's to read): for sources that name a pid after the fact (a
/// file's writer, a connection's owner).
pub(crate) fn read_cmdline(pid: u32) -> Vec<String> {
    let mut bytes = Vec::new();
    let read = File::open(format!("/proc/{pid}/cmdline"))
        .and_then(|f| f.take(CMDLINE_MAX as u64).read_to_end(&mut bytes));
    if read.is_err() {
        return Vec::new();
    }
    nul_separated(&bytes)
}

/// The effective uid of `pid`, None if it cannot be read.
pub(crate) fn read_effective_uid(pid: u32) -> Option<u32> {
    effective_uid(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// The second value of the `Uid:` line (real, effective, saved, fs).
fn effective_uid(status: &str) -> Option<u32> {
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_ascii_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_odd_names() {
        let line = "4242 (we (ird) x) Z 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                comm: "we (ird) x",
                ppid: 17,
                start_ticks: 987_654,
            })
        );
        assert_eq!(parse_stat("4242 (short) S 1"), None);
    }

    #[test]
    fn nul_separated_lists() {
        assert_eq!(nul_separated(b"ls\0-l\0\0"), ["ls", "-l", ""]);
        assert_eq!(nul_separated(b"ls\0-l\0"), ["ls", "-l"]);
        assert_eq!(nul_separated(b"rewritten title"), ["rewritten title"]);
        assert!(nul_separated(b"").is_empty());
    }

    #[test]
    fn a_command_line_that_reads_nothing_is_gone_not_empty() {
        assert_eq!(args_of(b""), None);
        assert_eq!(args_of(b"\0"), Some(Vec::new()));
        assert_eq!(
            args_of(b"/bin/true\0run-1\0"),
            Some(vec!["/bin/true".to_string(), "run-1".to_string()])
        );
    }

    #[test]
    fn effective_uid_is_the_second_value() {
        let status = "Name:\tsudo\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";
        assert_eq!(effective_uid(status), Some(0));
        assert_eq!(effective_uid("Name:\tx\n"), None);
    }

    #[test]
    fn a_live_process_reads_whole() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .current_dir("/tmp")
            .spawn()
            .expect("spawn sleep");
        // The parent of a vfork resumes before the kernel has set up the
        // new program's arguments: read until they are there.
        let mut reader = ProcReader::new(true);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let x = loop {
            let x = reader.exec(child.id(), Timestamp::now());
            if x.comm.as_deref() == Some("sleep") && x.args.as_ref().is_some_and(|a| a.len() == 2)
                || std::time::Instant::now() > deadline
            {
                break x;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        let start_ms = super::super::process_start_ms(child.id());
        child.kill().expect("kill");
        child.wait().expect("reap");
        let sleep = std::fs::canonicalize(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .map(|d| d.join("sleep"))
                .find(|p| p.exists())
                .expect("sleep on PATH"),
        )
        .expect("canonical");
        assert_eq!(x.executable.as_deref(), sleep.to_str());
        assert_eq!(x.args, Some(vec!["sleep".to_string(), "30".to_string()]));
        assert_eq!(x.ppid, Some(std::process::id()));
        assert_eq!(x.comm.as_deref(), Some("sleep"));
        let tmp = std::fs::canonicalize("/tmp").expect("canonical /tmp");
        assert_eq!(x.cwd.as_deref(), tmp.to_str());
        assert!(start_ms.is_some());
        assert_eq!(x.start_ms, start_ms);
        // SAFETY: geteuid cannot fail.
        assert_eq!(x.uid, Some(unsafe { libc::geteuid() }));
        assert!(!x.env.is_empty());
    }

    #[test]
    fn a_reaped_process_reads_as_nothing() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("reap");
        let x = ProcReader::new(false).exec(pid, Timestamp::now());
        assert_eq!((x.executable, x.args, x.start_ms), (None, None, None));
        assert_eq!(x.cwd, None);
    }
}
