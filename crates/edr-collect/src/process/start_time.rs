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
//! `btime` drops the fraction of a second the machine booted at, so that
//! value is up to a second early: stable (the ids stay the same across
//! restarts of the agent), but wrong as a date. [`wall_start_ms`] adds the
//! fraction back for the dates events carry (`process.start`, the start
//! event's `@timestamp`, `event.duration`).
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

/// The date of a process whose identity start is `start_ms`, accurate to
/// the kernel's clock tick.
pub fn wall_start_ms(start_ms: u64) -> u64 {
    start_ms.saturating_add(boot_fraction_ms())
}

/// What whole-second `btime` cut off the boot time: the wall clock minus
/// the time since boot, less `btime`. Read once per run, like `btime`, so
/// every date of a run moves by the same amount.
fn boot_fraction_ms() -> u64 {
    static FRACTION: OnceLock<u64> = OnceLock::new();
    *FRACTION.get_or_init(|| {
        let Some(btime) = boot_time_secs() else {
            return 0;
        };
        let booted_ms =
            (clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME)) / 1_000_000;
        boot_fraction(booted_ms, btime)
    })
}

/// Within one second: the kernel truncates the same difference to make
/// `btime`, and a clock slewed since then moves it by far less.
pub(crate) fn boot_fraction(booted_ms: i128, btime_secs: u64) -> u64 {
    let fraction = booted_ms - i128::from(btime_secs) * 1000;
    u64::try_from(fraction.clamp(0, 999)).unwrap_or(0)
}

pub(crate) fn clock_ns(clock: libc::clockid_t) -> i128 {
    // SAFETY: clock_gettime writes into the timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
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
    fn boot_fraction_stays_within_a_second() {
        assert_eq!(boot_fraction(1_700_000_000_750, 1_700_000_000), 750);
        assert_eq!(boot_fraction(1_699_999_999_999, 1_700_000_000), 0);
        assert_eq!(boot_fraction(1_700_000_001_200, 1_700_000_000), 999);
    }

    #[test]
    fn own_start_date_is_within_a_tick_of_the_clocks() {
        // Our own start, measured from the clocks alone: now less how long
        // ago /proc says we started.
        let stat = std::fs::read_to_string("/proc/self/stat").expect("own stat");
        let ticks = parse_starttime(&stat).expect("starttime");
        let hz = clock_ticks_per_sec().expect("hz");
        let since_boot_ms = clock_ns(libc::CLOCK_BOOTTIME) / 1_000_000;
        let now_ms = clock_ns(libc::CLOCK_REALTIME) / 1_000_000;
        let started_ms = now_ms - (since_boot_ms - i128::from(ticks * 1000 / hz));
        let date = wall_start_ms(process_start_ms(std::process::id()).expect("own start"));
        let off = (i128::from(date) - started_ms).abs();
        assert!(off <= 20, "dated {date}, the clocks say {started_ms}");
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
