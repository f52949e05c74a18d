//! Starting and stopping an agent to measure, optionally under
//! `/usr/bin/time -v` so its whole-process figures come from a stock tool.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use edr_config::Config;

const TIME: &str = "/usr/bin/time";

/// A spawned `edr-agent run`.
pub struct Agent {
    /// `time` when timed, else the agent itself.
    child: Child,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub spawned: Instant,
    /// The same moment by the wall clock, to compare with log timestamps.
    pub spawned_wall: SystemTime,
    stderr: PathBuf,
    timed: bool,
}

/// What `/usr/bin/time -v` said about the agent's whole life.
#[derive(Debug, Default, Clone)]
pub struct TimeReport {
    pub max_rss_kb: Option<u64>,
    pub cpu_percent: Option<f64>,
    pub user_s: Option<f64>,
    pub sys_s: Option<f64>,
}

impl Agent {
    /// Writes `config` to `<root>/agent.yaml` and starts this binary's
    /// `run` with it. `extra_args` go after `run` (e.g. `--log info`).
    pub fn spawn(config: &Config, root: &Path, use_time: bool, log: &str) -> anyhow::Result<Agent> {
        let config_path = root.join("agent.yaml");
        config.save(&config_path)?;
        let exe = crate::agent_binary()?;
        let timed = use_time && Path::new(TIME).exists();
        let mut cmd = if timed {
            let mut c = Command::new(TIME);
            c.arg("-v").arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let stderr = root.join("agent.stderr");
        let err_file = File::create(&stderr).context("cannot create the agent's log file")?;
        cmd.args(["run", "--log", log, "--config"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err_file));
        let spawned_wall = SystemTime::now();
        let spawned = Instant::now();
        let child = cmd.spawn().context("cannot start the agent")?;
        let pid = if timed {
            child_of(child.id(), Duration::from_secs(5))?
        } else {
            child.id()
        };
        Ok(Agent {
            child,
            pid,
            data_dir: config.data_dir(),
            spawned,
            spawned_wall,
            stderr,
            timed,
        })
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Polls `f` every `step` until it answers or `timeout` passes.
    pub fn wait_until<T>(
        &mut self,
        timeout: Duration,
        step: Duration,
        mut f: impl FnMut(&Agent) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = f(self) {
                return Ok(v);
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("the agent exited ({status}):\n{}", self.log());
            }
            if Instant::now() >= deadline {
                bail!("timed out waiting for the agent:\n{}", self.log());
            }
            std::thread::sleep(step);
        }
    }

    /// SIGTERM (the agent commits its open batch), then waits.
    pub fn stop(mut self) -> anyhow::Result<TimeReport> {
        let status = self.terminate().context("waiting for the agent")?;
        if !status.success() {
            bail!("the agent exited with {status}:\n{}", self.log());
        }
        Ok(if self.timed {
            parse_time(&self.log())
        } else {
            TimeReport::default()
        })
    }
}

impl Agent {
    fn terminate(&mut self) -> std::io::Result<std::process::ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill has no memory effects; the pid is our own child or
        // grandchild, still unreaped.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        self.child.wait()
    }
}

/// A bench that fails half-way still stops its agent.
impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

/// The first child of `pid` (the agent under `time`).
fn child_of(pid: u32, timeout: Duration) -> anyhow::Result<u32> {
    let deadline = Instant::now() + timeout;
    let path = format!("/proc/{pid}/task/{pid}/children");
    loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(child) = text.split_whitespace().next().and_then(|c| c.parse().ok()) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            bail!("{TIME} started no agent");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub(crate) fn parse_time(text: &str) -> TimeReport {
    let value = |key: &str| -> Option<&str> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(str::trim)
    };
    TimeReport {
        max_rss_kb: value("Maximum resident set size (kbytes):").and_then(|v| v.parse().ok()),
        cpu_percent: value("Percent of CPU this job got:")
            .and_then(|v| v.trim_end_matches('%').parse().ok()),
        user_s: value("User time (seconds):").and_then(|v| v.parse().ok()),
        sys_s: value("System time (seconds):").and_then(|v| v.parse().ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_gnu_time_verbose_output() {
        let text = "\tCommand being timed: \"edr-agent run\"\n\tUser time (seconds): 0.41\n\tSystem time (seconds): 0.22\n\tPercent of CPU this job got: 1%\n\tMaximum resident set size (kbytes): 9876\n";
        let r = parse_time(text);
        assert_eq!(r.max_rss_kb, Some(9876));
        assert_eq!(r.cpu_percent, Some(1.0));
        assert_eq!(r.user_s, Some(0.41));
        assert_eq!(r.sys_s, Some(0.22));
    }
}
