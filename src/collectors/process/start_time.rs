//! When a process started, in milliseconds since the Unix epoch: the input
//! of `process.entity_id`.
//!
//! Any source of process events (this scanner, a future netlink or
//! eslogger source) must derive the same value for the same process, or the
//! ids of its start and end events would disagree. The derivation is
//! therefore fixed and documented here:
//!
//! - Linux: `btime` from `/proc/stat` (boot time, whole seconds) * 1000 plus
//!   field 22 of `/proc/<pid>/stat` (`starttime`, clock ticks since boot)
//!   converted to milliseconds, rounded to the nearest millisecond.
//! - Elsewhere: sysinfo's `Process::start_time()` (whole seconds) * 1000.
//!
//! Linux only; the module is compiled for Linux.

use std::sync::OnceLock;

/// Start time of a live process in ms since the epoch, as every event
/// source must compute it on Linux. None if the process is gone or `/proc`
/// is unreadable.
pub fn process_start_ms(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_ms_from_ticks(parse_starttime(&stat)?)
}

/// The start time of a process whose `starttime` field reads `ticks`.
pub(crate) fn start_ms_from_ticks(ticks: u64) -> Option<u64> {
    Some(start_ms_from(
        boot_time_secs()?,
        ticks,
        clock_ticks_per_sec()?,
    ))
}

/// `btime * 1000 + round(ticks * 1000 / hz)`.
pub(crate) fn start_ms_from(boot_secs: u64, ticks: u64, hz: u64) -> u64 {
    let hz = hz.max(1);
    let since_boot = (u128::from(ticks) * 1000 + u128::from(hz / 2)) / u128::from(hz);
    boot_secs
        .saturating_mul(1000)
        .saturating_add(u64::try_from(since_boot).unwrap_or(u64::MAX))
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` line. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted from
/// its last closing parenthesis: `state` is field 3.
pub(crate) fn parse_starttime(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm
        .split_ascii_whitespace()
        .nth(22 - 3)?
        .parse()
        .ok()
}

/// Read once per run: the kernel only moves `btime` when the wall clock is
/// stepped, and every source in this process must use the same value.
fn boot_time_secs() -> Option<u64> {
    static BOOT: OnceLock<Option<u64>> = OnceLock::new();
    *BOOT.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        parse_btime(&stat)
    })
}

pub(crate) fn parse_btime(proc_stat: &str) -> Option<u64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

pub(crate) fn clock_ticks_per_sec() -> Option<u64> {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(hz).ok().filter(|hz| *hz > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starttime_survives_odd_command_names() {
        let line = "4242 (we (ird) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_starttime(line), Some(987_654));
        assert_eq!(parse_starttime("4242 (short) S 1"), None);
        assert_eq!(parse_starttime("no parenthesis"), None);
    }

    #[test]
    fn start_ms_rounds_ticks_to_milliseconds() {
        assert_eq!(start_ms_from(1_700_000_000, 250, 100), 1_700_000_002_500);
        // 1 tick at 1024 Hz is 0.9765625 ms.
        assert_eq!(start_ms_from(0, 1, 1024), 1);
        assert_eq!(start_ms_from(0, 3, 1024), 3);
    }

    #[test]
    fn btime_is_found_in_proc_stat() {
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
    }

    #[test]
    fn own_start_time_agrees_with_sysinfo() {
        let pid = std::process::id();
        let ms = process_start_ms(pid).expect("own /proc entry");
        let mut sys = sysinfo::System::new().expect("sysinfo");
        let spid = sysinfo::Pid::from_u32(pid);
        sys.refresh_processes(sysinfo::ProcessesToUpdate::Some(&[spid]), true);
        let secs = sys.process(spid).expect("own process").start_time();
        assert_eq!(ms / 1000, secs);
    }
}
