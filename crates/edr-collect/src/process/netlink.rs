//! The Linux proc connector: the kernel multicasts every fork, exec and
//! exit to netlink sockets subscribed to it. Subscribing needs
//! CAP_NET_ADMIN (root) in the initial user and pid namespaces.
//!
//! The connector names pids only, so the reading thread reads each new
//! program from `/proc` at once (see [`super::procfs`]) before queueing the
//! event; everything slower (hashing, user names, building events) happens
//! on the collector's thread behind it.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::procfs::{ProcReader, Program};
use super::source::{exit_code_from_wait_status, Exit, Fork, SourceEvent, SourceTx};
use super::start_time::{clock_ns, clock_ticks_per_sec, start_ms_from_ticks};
use edr_model::event::Timestamp;

const NETLINK_CONNECTOR: libc::c_int = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const NLMSG_DONE: u16 = 3;

const NLMSG_HDRLEN: usize = 16;
const CN_MSG_LEN: usize = 20;
/// `what`, `cpu`, `timestamp_ns`, then the event's own fields.
const PROC_EVENT_DATA: usize = 16;

const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 0x1;
const PROC_EVENT_EXEC: u32 = 0x2;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;

/// The parent of every kernel thread; its children are not processes.
const KTHREADD: u32 = 2;

/// Kernel memory for events waiting to be read (set with
/// SO_RCVBUFFORCE, which root may do beyond `rmem_max`): about ten
/// thousand events, a burst the reader would take tens of ms to drain.
const RCVBUF_BYTES: libc::c_int = 8 * 1024 * 1024;
/// How often a blocked read wakes up to check for cancellation.
const READ_TIMEOUT: Duration = Duration::from_millis(100);
/// How long a stopping reader keeps reading what the kernel queued.
const DRAIN_FOR: Duration = Duration::from_millis(50);
/// How long the kernel may take to confirm the subscription.
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

/// Why the connector cannot be used; the collector then polls.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectorError {
    #[error("cannot open a netlink connector socket: {0}")]
    Socket(#[source] io::Error),
    #[error("not permitted: process events need root or CAP_NET_ADMIN")]
    NotPermitted,
    #[error("cannot subscribe to process events: {0}")]
    Subscribe(#[source] io::Error),
    #[error("the kernel did not confirm the subscription (process events are only sent to the initial pid and user namespace)")]
    NoAck,
    #[error("the kernel refused the subscription: {0}")]
    Refused(#[source] io::Error),
}

/// A kernel event as the connector sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Raw {
    Ack {
        seq: u32,
        ack: u32,
        err: u32,
    },
    Fork {
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
        ts_ns: u64,
    },
    Exec {
        tgid: u32,
        ts_ns: u64,
    },
    Exit {
        pid: u32,
        tgid: u32,
        status: u32,
        ts_ns: u64,
    },
}

/// Calls `each` for every proc connector event in one datagram.
pub(crate) fn parse(datagram: &[u8], mut each: impl FnMut(Raw)) {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let Some(len) = u32_at(rest, 0).and_then(|l| usize::try_from(l).ok()) else {
            return;
        };
        if len < NLMSG_HDRLEN || len > rest.len() {
            return;
        }
        if let Some(raw) = parse_cn_msg(&rest[NLMSG_HDRLEN..len]) {
            each(raw);
        }
        let aligned = (len + 3) & !3;
        rest = rest.get(aligned..).unwrap_or_default();
    }
}

fn parse_cn_msg(msg: &[u8]) -> Option<Raw> {
    if u32_at(msg, 0)? != CN_IDX_PROC || u32_at(msg, 4)? != CN_VAL_PROC {
        return None;
    }
    let (seq, ack) = (u32_at(msg, 8)?, u32_at(msg, 12)?);
    let ev = msg.get(CN_MSG_LEN..)?;
    let what = u32_at(ev, 0)?;
    let ts_ns = u64::from_ne_bytes(ev.get(8..16)?.try_into().ok()?);
    let field = |i: usize| u32_at(ev, PROC_EVENT_DATA + 4 * i);
    Some(match what {
        PROC_EVENT_NONE => Raw::Ack {
            seq,
            ack,
            err: field(0)?,
        },
        PROC_EVENT_FORK => Raw::Fork {
            parent_tgid: field(1)?,
            child_pid: field(2)?,
            child_tgid: field(3)?,
            ts_ns,
        },
        PROC_EVENT_EXEC => Raw::Exec {
            tgid: field(1)?,
            ts_ns,
        },
        PROC_EVENT_EXIT => Raw::Exit {
            pid: field(0)?,
            tgid: field(1)?,
            status: field(2)?,
            ts_ns,
        },
        _ => return None,
    })
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// A subscribed proc connector socket; unsubscribes when dropped.
pub(crate) struct Connector {
    fd: OwnedFd,
}

impl Connector {
    /// Opens, subscribes and waits for the kernel to confirm.
    pub fn open() -> Result<Connector, ConnectorError> {
        // SAFETY: plain socket(2); the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_CONNECTOR,
            )
        };
        if fd < 0 {
            return Err(ConnectorError::Socket(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh socket nobody else owns.
        let conn = Connector {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        };
        conn.size_buffer();
        conn.set_read_timeout(READ_TIMEOUT)
            .map_err(ConnectorError::Socket)?;
        conn.bind()?;
        let (seq, ack) = subscription_id();
        conn.send_op(PROC_CN_MCAST_LISTEN, seq, ack)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM) => ConnectorError::NotPermitted,
                _ => ConnectorError::Subscribe(e),
            })?;
        conn.await_ack(ack)?;
        Ok(conn)
    }

    /// One datagram; times out after [`READ_TIMEOUT`] with `WouldBlock`.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_with(buf, 0)
    }

    /// One datagram if one is waiting.
    fn recv_nowait(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.recv_with(buf, libc::MSG_DONTWAIT)
    }

    fn recv_with(&self, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                flags,
            )
        };
        usize::try_from(n).map_err(|_| io::Error::last_os_error())
    }

    /// Root may exceed `rmem_max`; others keep what they may have.
    fn size_buffer(&self) {
        if self.set_int(libc::SO_RCVBUFFORCE, RCVBUF_BYTES).is_err() {
            let _ = self.set_int(libc::SO_RCVBUF, RCVBUF_BYTES);
        }
    }

    fn set_int(&self, opt: libc::c_int, value: libc::c_int) -> io::Result<()> {
        self.setsockopt(opt, &value)
    }

    fn set_read_timeout(&self, d: Duration) -> io::Result<()> {
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: libc::suseconds_t::try_from(d.as_micros()).unwrap_or(100_000),
        };
        self.setsockopt(libc::SO_RCVTIMEO, &tv)
    }

    fn setsockopt<T>(&self, opt: libc::c_int, value: &T) -> io::Result<()> {
        let len = libc::socklen_t::try_from(size_of::<T>()).unwrap_or(0);
        // SAFETY: value points to a live T of the given length.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (value as *const T).cast(),
                len,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn bind(&self) -> Result<(), ConnectorError> {
        // SAFETY: sockaddr_nl is plain data; zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // Port 0: the kernel picks a unique one, so several collectors (in
        // tests) can listen in one process.
        addr.nl_pid = 0;
        addr.nl_groups = CN_IDX_PROC;
        let len = libc::socklen_t::try_from(size_of::<libc::sockaddr_nl>()).unwrap_or(0);
        // SAFETY: addr is a valid sockaddr_nl of that length.
        let rc = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                len,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        Err(match e.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => ConnectorError::NotPermitted,
            _ => ConnectorError::Subscribe(e),
        })
    }

    fn send_op(&self, op: u32, seq: u32, ack: u32) -> io::Result<()> {
        let msg = control_message(op, seq, ack);
        // SAFETY: msg is a live buffer of that length.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The kernel acknowledges to the whole group, so the reply is found
    /// among other listeners' replies and events by its `ack` (our number
    /// plus one; recent kernels replace the sequence number).
    fn await_ack(&self, ack: u32) -> Result<(), ConnectorError> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        let mut buf = [0u8; 1024];
        while Instant::now() < deadline {
            let n = match self.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if is_timeout(&e) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(e) => return Err(ConnectorError::Subscribe(e)),
            };
            let mut reply = None;
            parse(&buf[..n], |raw| {
                if let Raw::Ack { ack: a, err, .. } = raw {
                    if a == ack.wrapping_add(1) {
                        reply = Some(err);
                    }
                }
            });
            match reply {
                Some(0) => return Ok(()),
                Some(err) => {
                    let err = i32::try_from(err).unwrap_or(libc::EINVAL);
                    return Err(if err == libc::EPERM {
                        ConnectorError::NotPermitted
                    } else {
                        ConnectorError::Refused(io::Error::from_raw_os_error(err))
                    });
                }
                None => {}
            }
        }
        Err(ConnectorError::NoAck)
    }
}

impl Drop for Connector {
    fn drop(&mut self) {
        let (seq, ack) = subscription_id();
        let _ = self.send_op(PROC_CN_MCAST_IGNORE, seq, ack);
    }
}

/// (seq, ack) numbers for a control message; the ack is what tells our
/// reply from those to other subscribers, in this or another process.
fn subscription_id() -> (u32, u32) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(2, Relaxed);
    (n, std::process::id().wrapping_shl(10) | (n & 0x3ff))
}

/// nlmsghdr + cn_msg + the operation.
fn control_message(op: u32, seq: u32, ack: u32) -> Vec<u8> {
    let len = NLMSG_HDRLEN + CN_MSG_LEN + 4;
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&u32::try_from(len).unwrap_or(0).to_ne_bytes());
    m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // port: the kernel fills it
    m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
    m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&ack.to_ne_bytes());
    m.extend_from_slice(&4u16.to_ne_bytes()); // payload length
    m.extend_from_slice(&0u16.to_ne_bytes()); // flags
    m.extend_from_slice(&op.to_ne_bytes());
    m
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ETIMEDOUT)
    )
}

/// Real-time scheduling for the reading thread, within a CPU budget.
///
/// `/bin/true` lives about half a millisecond after its exec. On a busy
/// machine an ordinary thread often waits longer than that to be woken,
/// and finds only a zombie with no program or arguments left to read
/// (measured on two loaded cores: 30% lost at normal priority, 7% at
/// nice -20, under 1% at SCHED_FIFO; what remains are waits for kernels
/// built without preemption to reach a point where they switch). The
/// lowest real-time priority lets the reader run the moment an event
/// arrives. It only blocks or reads `/proc`, but an exec
/// storm could keep it busy; past [`BUSY_BUDGET`] of a [`BUDGET_WINDOW`]
/// it drops to normal priority until the window ends, so it never takes
/// more than that share of a core from other programs (execs it is then
/// late for are reported partial, and counted).
pub(crate) struct Priority {
    realtime: bool,
    permitted: bool,
    window_start: Instant,
    busy: Duration,
}

const BUDGET_WINDOW: Duration = Duration::from_millis(100);
const BUSY_BUDGET: Duration = Duration::from_millis(30);

impl Priority {
    /// `what` names the reader in the log line when real time is refused.
    pub(crate) fn raise(what: &str) -> Priority {
        let permitted = set_realtime(true).is_ok();
        if !permitted {
            tracing::info!(
                "{what} reader runs at normal priority (no CAP_SYS_NICE): on a busy machine \
                 some short-lived processes may be reported without their program"
            );
        }
        Priority {
            realtime: permitted,
            permitted,
            window_start: Instant::now(),
            busy: Duration::ZERO,
        }
    }

    /// Accounts time spent handling events; demotes or restores.
    pub(crate) fn account(&mut self, busy: Duration, now: Instant) {
        if !self.permitted {
            return;
        }
        if now.duration_since(self.window_start) >= BUDGET_WINDOW {
            self.window_start = now;
            self.busy = Duration::ZERO;
            if !self.realtime {
                self.realtime = set_realtime(true).is_ok();
            }
        }
        self.busy += busy;
        if self.realtime && self.busy > BUSY_BUDGET {
            tracing::debug!("process event reader over its CPU budget: normal priority for now");
            self.realtime = set_realtime(false).is_err();
        }
    }
}

/// Switches the calling thread between SCHED_FIFO 1 and SCHED_OTHER.
fn set_realtime(on: bool) -> io::Result<()> {
    let (policy, priority) = if on {
        (libc::SCHED_FIFO, 1)
    } else {
        (libc::SCHED_OTHER, 0)
    };
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param.
    if unsafe { libc::sched_setscheduler(0, policy, &param) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads events until cancelled or the socket fails; runs on its own
/// thread. Only `/proc` reads happen here: they must come before the
/// process exits. When cancelled, what the kernel already queued is read
/// too (for at most [`DRAIN_FOR`]), so a shutdown keeps the last events.
pub(crate) fn read_loop(
    conn: Connector,
    mut tx: SourceTx,
    environ: bool,
    cancel: CancellationToken,
) {
    let mut buf = vec![0u8; 4096];
    let mut procs = ProcReader::new(environ);
    let mut priority = Priority::raise("process event");
    let mut batch = Batch::default();
    let mut draining: Option<Instant> = None;
    loop {
        if draining.is_none() && cancel.is_cancelled() {
            draining = Some(Instant::now() + DRAIN_FOR);
        }
        let received = match draining {
            None => conn.recv(&mut buf),
            Some(until) if Instant::now() < until => conn.recv_nowait(&mut buf),
            Some(_) => return,
        };
        let n = match received {
            Ok(n) => n,
            Err(e) if draining.is_some() && e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if is_timeout(&e) => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                tracing::debug!("process events lost: the kernel's buffer overflowed");
                tx.lost();
                continue;
            }
            Err(e) => {
                tx.send(SourceEvent::Stopped(format!(
                    "reading process events failed: {e}"
                )));
                return;
            }
        };
        let began = Instant::now();
        batch.fill(n, &conn, &mut buf, &mut tx);
        if !batch.send(&mut procs, &mut tx) {
            return;
        }
        let now = Instant::now();
        priority.account(now.duration_since(began), now);
    }
}

/// The events that were waiting when the reader woke. After a delay (the
/// reader could not run, or a burst of execs), several execs wait: the
/// programs of all of them are read before anything else, since each is
/// gone as soon as its process exits.
#[derive(Default)]
struct Batch {
    events: Vec<Raw>,
    programs: std::collections::VecDeque<Program>,
}

/// Datagrams taken per wake-up beyond the first.
const BATCH_MAX: usize = 64;

impl Batch {
    /// The events of the datagram in `buf[..n]`, then of those already
    /// queued behind it (read into the same buffer).
    fn fill(&mut self, n: usize, conn: &Connector, buf: &mut [u8], tx: &mut SourceTx) {
        self.events.clear();
        parse(&buf[..n], |raw| self.events.push(raw));
        for _ in 0..BATCH_MAX {
            match conn.recv_nowait(buf) {
                Ok(n) => parse(&buf[..n], |raw| self.events.push(raw)),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => tx.lost(),
                // Nothing more (or an error the next blocking read reports).
                Err(_) => break,
            }
        }
    }

    /// Reads programs first, then completes and queues every event in
    /// order. False once the collector is gone.
    fn send(&mut self, procs: &mut ProcReader, tx: &mut SourceTx) -> bool {
        self.programs.clear();
        for raw in &self.events {
            if let Raw::Exec { tgid, .. } = raw {
                self.programs.push_back(procs.program(*tgid));
            }
        }
        for raw in self.events.drain(..) {
            let program = match raw {
                Raw::Exec { tgid, .. } => Some(
                    self.programs
                        .pop_front()
                        .unwrap_or_else(|| procs.program(tgid)),
                ),
                _ => None,
            };
            if let Some(event) = enrich(raw, program, procs) {
                if !tx.send(event) {
                    return false;
                }
            }
        }
        true
    }
}

/// Turns a kernel event into a source event, reading `/proc` for execs.
/// Threads are not processes: their forks and exits are skipped.
fn enrich(raw: Raw, program: Option<Program>, procs: &mut ProcReader) -> Option<SourceEvent> {
    match raw {
        Raw::Fork {
            parent_tgid,
            child_pid,
            child_tgid,
            ts_ns,
        } if child_pid == child_tgid && parent_tgid != KTHREADD => {
            // Not read from /proc: an exec follows within microseconds and
            // must not wait. The exec, or the collector later, reads the
            // exact start.
            Some(SourceEvent::Fork(Fork {
                pid: child_tgid,
                ppid: parent_tgid,
                start_ms: estimated_start_ms(ts_ns)?,
            }))
        }
        Raw::Exec { tgid, ts_ns } => {
            let at = wall_time(ts_ns);
            let x = match program {
                Some(p) => procs.exec_with(tgid, p, at),
                None => procs.exec(tgid, at),
            };
            Some(SourceEvent::Exec(Box::new(x)))
        }
        Raw::Exit {
            pid,
            tgid,
            status,
            ts_ns,
        } if pid == tgid => Some(SourceEvent::Exit(Exit {
            pid: tgid,
            exit_code: Some(exit_code_from_wait_status(
                i32::try_from(status).unwrap_or(i32::MAX),
            )),
            at: wall_time(ts_ns),
        })),
        _ => None,
    }
}

/// The wall-clock time of a kernel timestamp (CLOCK_MONOTONIC).
fn wall_time(ts_ns: u64) -> Timestamp {
    let ago = clock_ns(libc::CLOCK_MONOTONIC) - i128::from(ts_ns);
    let wall = clock_ns(libc::CLOCK_REALTIME) - ago.max(0);
    Timestamp(u64::try_from(wall / 1_000_000).unwrap_or(0))
}

/// A process's start time from the time of its fork event (taken a few
/// microseconds after the kernel's own): `/proc` counts from boot
/// including suspend, the event's clock excludes it.
fn estimated_start_ms(ts_ns: u64) -> Option<u64> {
    let suspended = clock_ns(libc::CLOCK_BOOTTIME) - clock_ns(libc::CLOCK_MONOTONIC);
    let since_boot = u128::try_from(i128::from(ts_ns) + suspended.max(0)).ok()?;
    let ticks = since_boot * u128::from(clock_ticks_per_sec()?) / 1_000_000_000;
    start_ms_from_ticks(u64::try_from(ticks).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A datagram as the kernel builds it: nlmsghdr, cn_msg, proc_event.
    fn datagram(what: u32, ts_ns: u64, fields: &[u32]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&1u32.to_ne_bytes()); // cpu
        ev.extend_from_slice(&ts_ns.to_ne_bytes());
        for f in fields {
            ev.extend_from_slice(&f.to_ne_bytes());
        }
        let mut m = control_message(0, 7, 8);
        m.truncate(NLMSG_HDRLEN + CN_MSG_LEN);
        m[NLMSG_HDRLEN + 16..NLMSG_HDRLEN + 18]
            .copy_from_slice(&u16::try_from(ev.len()).expect("small").to_ne_bytes());
        m.extend_from_slice(&ev);
        let len = u32::try_from(m.len()).expect("small");
        m[..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn parse_all(d: &[u8]) -> Vec<Raw> {
        let mut out = Vec::new();
        parse(d, |r| out.push(r));
        out
    }

    #[test]
    fn kernel_events_parse() {
        assert_eq!(
            parse_all(&datagram(PROC_EVENT_FORK, 99, &[10, 10, 11, 11])),
            [Raw::Fork {
                parent_tgid: 10,
                child_pid: 11,
                child_tgid: 11,
                ts_ns: 99
            }]
        );
        assert_eq!(
            parse_all(&datagram(PROC_EVENT_EXEC, 5, &[12, 12])),
            [Raw::Exec { tgid: 12, ts_ns: 5 }]
        );
        assert_eq!(
            parse_all(&datagram(PROC_EVENT_EXIT, 6, &[13, 13, 256, 17, 1, 1])),
            [Raw::Exit {
                pid: 13,
                tgid: 13,
                status: 256,
                ts_ns: 6
            }]
        );
        assert_eq!(
            parse_all(&datagram(PROC_EVENT_NONE, 0, &[1])),
            [Raw::Ack {
                seq: 7,
                ack: 8,
                err: 1
            }]
        );
        // COMM and other events, and truncated or foreign messages: none.
        assert!(parse_all(&datagram(0x200, 0, &[1, 1, 0, 0, 0, 0])).is_empty());
        let d = datagram(PROC_EVENT_EXEC, 5, &[12, 12]);
        assert!(parse_all(&d[..d.len() - 6]).is_empty());
        let mut foreign = d.clone();
        foreign[NLMSG_HDRLEN..NLMSG_HDRLEN + 4].copy_from_slice(&9u32.to_ne_bytes());
        assert!(parse_all(&foreign).is_empty());
        // Two messages in one datagram.
        let mut two = datagram(PROC_EVENT_EXEC, 5, &[12, 12]);
        two.extend(datagram(PROC_EVENT_EXEC, 6, &[14, 14]));
        assert_eq!(parse_all(&two).len(), 2);
    }

    #[test]
    fn threads_and_kernel_threads_are_not_processes() {
        let mut procs = ProcReader::new(false);
        let thread = Raw::Fork {
            parent_tgid: 10,
            child_pid: 12,
            child_tgid: 10,
            ts_ns: 1,
        };
        assert!(enrich(thread, None, &mut procs).is_none());
        let kthread = Raw::Fork {
            parent_tgid: KTHREADD,
            child_pid: 12,
            child_tgid: 12,
            ts_ns: 1,
        };
        assert!(enrich(kthread, None, &mut procs).is_none());
        let thread_exit = Raw::Exit {
            pid: 12,
            tgid: 10,
            status: 0,
            ts_ns: 1,
        };
        assert!(enrich(thread_exit, None, &mut procs).is_none());
    }

    #[test]
    fn kernel_timestamps_become_wall_and_start_times() {
        let now_mono = u64::try_from(clock_ns(libc::CLOCK_MONOTONIC)).expect("positive");
        let wall = wall_time(now_mono);
        assert!(wall.as_millis().abs_diff(Timestamp::now().as_millis()) < 1000);
        let own = super::super::process_start_ms(std::process::id()).expect("own start");
        let estimate = estimated_start_ms(now_mono).expect("estimate");
        // Started before now, and the estimate of now is now.
        assert!(own <= estimate);
        assert!(estimate.abs_diff(Timestamp::now().as_millis()) < 1000);
    }
}
