//! The real `edr-agent` binary as an operator runs it: spawn, wait until it
//! watches, read its status, measure it from `/proc`, stop or kill it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edr_config::Config;
use edr_engine::{read_status, Snapshot};

use super::{test_config, wait_for};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_edr-agent"))
}

/// Writes `test_config(root)` with `edit` applied to `root/config.yaml`.
pub fn write_config(root: &Path, edit: impl FnOnce(&mut Config)) -> PathBuf {
    let mut c = test_config(root);
    edit(&mut c);
    let path = root.join("config.yaml");
    c.save(&path).expect("write config");
    path
}

/// How to start the agent besides its config.
#[derive(Default, Clone)]
pub struct Launch {
    /// Run as this uid/gid (dropping root).
    pub user: Option<(u32, u32)>,
    /// Process umask.
    pub umask: Option<u32>,
    /// Run inside a new user namespace whose inotify watch limit is this
    /// (the limit is per user and per namespace, so nothing global changes).
    pub inotify_watch_limit: Option<u32>,
    /// Log filter passed to `--log`.
    pub log: Option<&'static str>,
    /// The agent's `HOME` (what `~` in watch paths means).
    pub home: Option<PathBuf>,
    /// A command the agent runs under, e.g. `capsh --drop=cap_sys_admin --`
    /// (the agent's path and arguments follow it).
    pub wrapper: Option<Vec<String>>,
    /// Run inside a new UTS namespace with this host name (needs root):
    /// several agents on one machine that look like several machines.
    pub host_name: Option<&'static str>,
}

/// A running agent process, killed on drop if still alive.
pub struct Agent {
    pub child: Child,
    pub data: PathBuf,
    /// Its stderr (the log), drained as it comes: an unread pipe would
    /// fill up and block the agent's logging.
    log: Arc<Mutex<String>>,
    log_reader: Option<std::thread::JoinHandle<()>>,
}

/// Log kept per agent; older lines are dropped beyond this.
const LOG_KEEP: usize = 4 * 1024 * 1024;

impl Agent {
    pub fn spawn(config: &Path, data: &Path) -> Agent {
        Agent::launch(config, data, Launch::default())
    }

    pub fn launch(config: &Path, data: &Path, how: Launch) -> Agent {
        let agent = env!("CARGO_BIN_EXE_edr-agent");
        let log = how.log.unwrap_or("warn");
        let mut cmd = match how.inotify_watch_limit {
            Some(limit) => {
                let mut c = Command::new("unshare");
                c.args(["--user", "--map-root-user", "sh", "-c"])
                    .arg(format!(
                        "echo {limit} > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\""
                    ))
                    .arg(agent);
                c
            }
            None => match (&how.wrapper, how.host_name) {
                (Some(wrapper), _) => {
                    let mut c = Command::new(&wrapper[0]);
                    c.args(&wrapper[1..]).arg(agent);
                    c
                }
                (None, Some(name)) => {
                    let mut c = Command::new("unshare");
                    c.args(["--uts", "sh", "-c"])
                        .arg(format!(
                            "echo {name} > /proc/sys/kernel/hostname && exec \"$0\" \"$@\""
                        ))
                        .arg(agent);
                    c
                }
                (None, None) => Command::new(agent),
            },
        };
        if let Some(home) = &how.home {
            cmd.env("HOME", home);
        }
        cmd.args(["run", "--log", log, "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = how.user {
            // std also drops the supplementary groups.
            cmd.uid(uid).gid(gid);
        }
        if let Some(mask) = how.umask {
            // SAFETY: umask is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    libc::umask(mask as libc::mode_t);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().expect("agent starts");
        let log = Arc::new(Mutex::new(String::new()));
        let log_reader = child.stderr.take().map(|stderr| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
                    if log.len() > LOG_KEEP {
                        let cut = log.len() / 2;
                        let cut = log[cut..].find('\n').map_or(cut, |i| cut + i + 1);
                        log.drain(..cut);
                    }
                    log.push_str(&line);
                    log.push('\n');
                }
            })
        });
        Agent {
            child,
            data: data.to_path_buf(),
            log,
            log_reader,
        }
    }

    /// What the agent has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The status this agent wrote (not one left by an earlier agent).
    pub fn status(&self) -> Option<Snapshot> {
        read_status(&self.data).filter(|s| s.pid == self.pid())
    }

    /// Waits until the status file shows this agent running with at least
    /// one watched path.
    pub fn wait_watching(&mut self) -> Snapshot {
        let s = wait_for(Duration::from_secs(15), || {
            self.assert_alive();
            self.status()
                .filter(|s| s.running && !s.coverage.watched_paths.is_empty())
        });
        s.expect("agent did not come up watching")
    }

    /// Waits until the status file shows this agent running.
    pub fn wait_running(&mut self) -> Snapshot {
        let s = wait_for(Duration::from_secs(15), || {
            self.assert_alive();
            self.status().filter(|s| s.running)
        });
        s.expect("agent did not come up")
    }

    /// Polls the status file until `f` holds.
    pub fn wait_status(&mut self, what: &str, f: impl Fn(&Snapshot) -> bool) -> Snapshot {
        let s = wait_for(Duration::from_secs(20), || {
            self.assert_alive();
            self.status().filter(|s| f(s))
        });
        s.unwrap_or_else(|| {
            panic!(
                "agent status never showed: {what}; last: {:?}",
                self.status()
            )
        })
    }

    /// Panics with the agent's stderr if it has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(code)) = self.child.try_wait() {
            if let Some(r) = self.log_reader.take() {
                let _ = r.join();
            }
            panic!("agent exited with {code}: {}", self.log());
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    pub fn sigkill(mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits; returns the exit status and the log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().expect("agent exits");
        if let Some(r) = self.log_reader.take() {
            let _ = r.join();
        }
        (status, self.log())
    }

    /// Resident memory in bytes, from `/proc/<pid>/status`.
    pub fn rss_bytes(&self) -> Option<u64> {
        proc_rss_bytes(self.pid())
    }

    /// User + system CPU time in clock ticks, from `/proc/<pid>/stat`.
    pub fn cpu_ticks(&self) -> Option<u64> {
        proc_cpu_ticks(self.pid())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn proc_rss_bytes(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised name; utime and stime are 14 and 15.
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Runs an operator command (`status`, `stats`, `events`) against a data
/// dir and returns its output.
pub fn cli(args: &[&str], data: &Path) -> Output {
    bin()
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .expect("edr-agent runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every file under `dir`, recursively (directories not listed).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Every directory under `dir`, recursively, `dir` included.
pub fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk_dirs(&p));
            }
        }
    }
    out
}

/// Hidden batch temporaries (`.<name>.tmp`) under a data dir.
pub fn temporaries(data: &Path) -> Vec<PathBuf> {
    walk(&data.join("events"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            name.is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"))
        })
        .collect()
}
