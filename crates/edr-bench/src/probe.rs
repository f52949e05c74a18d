//! Measuring a process from outside, as `ps` or `top` would: CPU time from
//! `/proc/PID/stat`, memory from `/proc/PID/status`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    pub at: Instant,
    /// utime + stime.
    pub cpu: Duration,
    pub rss_kb: u64,
    /// Peak RSS (`VmHWM`).
    pub hwm_kb: u64,
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn read(pid: u32) -> anyhow::Result<Reading> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("process {pid} is gone"))?;
    let cpu = cpu_from_stat(&stat).with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    Ok(Reading {
        at,
        cpu,
        rss_kb: status_kb(&status, "VmRSS:").unwrap_or(0),
        hwm_kb: status_kb(&status, "VmHWM:").unwrap_or(0),
    })
}

/// utime + stime (fields 14 and 15) of a stat line, counted after the
/// command name's closing parenthesis (names may hold spaces).
pub fn cpu_from_stat(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|h| *h > 0)
        .unwrap_or(100);
    Some(Duration::from_micros((utime + stime) * 1_000_000 / hz))
}

fn status_kb(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Readings of one process over a run, once a second.
#[derive(Debug, Default)]
pub struct Series {
    pub readings: Vec<Reading>,
}

impl Series {
    pub fn push(&mut self, r: Reading) {
        self.readings.push(r);
    }

    /// CPU time over wall time between the first and the last reading, in
    /// percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        match (self.readings.first(), self.readings.last()) {
            (Some(a), Some(b)) if b.at > a.at => {
                b.cpu.saturating_sub(a.cpu).as_secs_f64() / (b.at - a.at).as_secs_f64() * 100.0
            }
            _ => 0.0,
        }
    }

    pub fn cpu_seconds(&self) -> f64 {
        match (self.readings.first(), self.readings.last()) {
            (Some(a), Some(b)) => b.cpu.saturating_sub(a.cpu).as_secs_f64(),
            _ => 0.0,
        }
    }

    pub fn wall(&self) -> Duration {
        match (self.readings.first(), self.readings.last()) {
            (Some(a), Some(b)) => b.at - a.at,
            _ => Duration::ZERO,
        }
    }

    /// (mean, median, max) RSS in MiB.
    pub fn rss_mib(&self) -> (f64, f64, f64) {
        let mut v: Vec<f64> = self
            .readings
            .iter()
            .map(|r| r.rss_kb as f64 / 1024.0)
            .collect();
        if v.is_empty() {
            return (0.0, 0.0, 0.0);
        }
        v.sort_by(f64::total_cmp);
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        (mean, v[v.len() / 2], v[v.len() - 1])
    }

    pub fn peak_mib(&self) -> f64 {
        self.readings.iter().map(|r| r.hwm_kb).max().unwrap_or(0) as f64 / 1024.0
    }

    /// Median CPU % of one core over one-second steps.
    pub fn cpu_median(&self) -> f64 {
        let mut steps: Vec<f64> = self
            .readings
            .windows(2)
            .filter(|w| w[1].at > w[0].at)
            .map(|w| {
                w[1].cpu.saturating_sub(w[0].cpu).as_secs_f64() / (w[1].at - w[0].at).as_secs_f64()
                    * 100.0
            })
            .collect();
        if steps.is_empty() {
            return 0.0;
        }
        steps.sort_by(f64::total_cmp);
        steps[steps.len() / 2]
    }
}

/// `ps -o rss=,pcpu= -p PID`: RSS in KiB and ps's own CPU figure (CPU time
/// over the process's whole life), as a cross-check with a stock tool.
pub fn ps(pid: u32) -> anyhow::Result<(u64, f64)> {
    let out = std::process::Command::new("ps")
        .args(["-o", "rss=,pcpu=", "-p", &pid.to_string()])
        .output()
        .context("cannot run ps")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut it = text.split_whitespace();
    match (
        it.next().and_then(|v| v.parse().ok()),
        it.next().and_then(|v| v.parse().ok()),
    ) {
        (Some(rss), Some(cpu)) => Ok((rss, cpu)),
        _ => bail!("ps printed nothing usable for pid {pid}: {text:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_reads_and_stat_fields_are_counted_after_the_name() {
        let r = read(std::process::id()).expect("readable");
        assert!(r.rss_kb > 0 && r.hwm_kb >= r.rss_kb);
        let stat = "77 (a b) c)) S 1 77 77 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 1 0 123456";
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        assert_eq!(
            cpu_from_stat(stat),
            Some(Duration::from_micros(300 * 1_000_000 / hz))
        );
        let (rss, _) = ps(std::process::id()).expect("ps works");
        assert!(rss > 0);
    }
}
