//! Linux socket listing: netlink `NETLINK_SOCK_DIAG` dumps, owners from
//! `/proc/<pid>/fd`.
//!
//! sock_diag returns only the sockets in the states we ask for, where
//! `/proc/net/tcp` would walk the whole hash table on every read. The
//! kernel still walks its TCP established hash (262,144 buckets on a
//! desktop) once per request, and that walk is most of a scan's cost; the
//! legacy `TCPDIAG_GETSOCK` request dumps IPv4 and IPv6 in one walk where
//! `SOCK_DIAG_BY_FAMILY` needs one per family, so TCP is asked for the
//! legacy way (falling back to per-family requests where a kernel refuses
//! it). UDP, with a small hash, stays on the per-family request. Finding
//! the owning process means reading every process's fd links, by far the
//! dominant cost, so owners are cached by inode and /proc is walked only
//! when a scan shows sockets the cache has never seen.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::time::Instant;

use super::{Owner, OwnerUser, PortKey, Socket, SocketKey, Transport};
use crate::process::procfs::read_cmdline;
use crate::process::UserNames;
use crate::process::{process_start_ms, wall_start_ms};
use edr_model::event::{entity_id, Timestamp};

pub(super) const SOURCE: &str = "netlink sock_diag";

/// `linux/sock_diag.h`; not in the libc crate.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `linux/inet_diag.h`: the legacy TCP dump, both families in one walk.
const TCPDIAG_GETSOCK: u16 = 18;
const NLMSG_HDRLEN: usize = 16;
/// `nlmsghdr` + `struct inet_diag_req_v2`.
const REQUEST_LEN: usize = NLMSG_HDRLEN + 56;
/// `nlmsghdr` + `struct inet_diag_req` (v1).
const LEGACY_REQUEST_LEN: usize = NLMSG_HDRLEN + 60;
/// `struct inet_diag_msg`; attributes may follow it.
const INET_DIAG_MSG_LEN: usize = 72;
/// The kernel never builds a dump message larger than 32 KiB, so one
/// buffer of that size always holds a whole datagram.
const RECV_BUF_LEN: usize = 32 * 1024;
/// A dump normally answers in microseconds; this only keeps a wedged
/// socket from holding a blocking thread forever.
const RECV_TIMEOUT_SECS: libc::time_t = 5;

// TCP states (`include/net/tcp_states.h`). UDP reuses ESTABLISHED for a
// connected socket and CLOSE for a bound, unconnected one.
const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_SENT: u8 = 2;
const TCP_SYN_RECV: u8 = 3;
const TCP_FIN_WAIT1: u8 = 4;
const TCP_FIN_WAIT2: u8 = 5;
const TCP_TIME_WAIT: u8 = 6;
const TCP_CLOSE: u8 = 7;
const TCP_CLOSE_WAIT: u8 = 8;
const TCP_LAST_ACK: u8 = 9;
const TCP_LISTEN: u8 = 10;
const TCP_CLOSING: u8 = 11;
const TCP_NEW_SYN_RECV: u8 = 12;

// The closing states are asked for too: a connection that lived less
// than a scan interval is often still in one of them (TIME_WAIT lasts a
// minute) when the next scan comes, and a socket in CLOSE_WAIT is a live
// connection its program has not closed yet.
const TCP_STATES: u32 = 1 << TCP_ESTABLISHED
    | 1 << TCP_SYN_SENT
    | 1 << TCP_SYN_RECV
    | 1 << TCP_FIN_WAIT1
    | 1 << TCP_FIN_WAIT2
    | 1 << TCP_TIME_WAIT
    | 1 << TCP_CLOSE_WAIT
    | 1 << TCP_LAST_ACK
    | 1 << TCP_LISTEN
    | 1 << TCP_CLOSING
    | 1 << TCP_NEW_SYN_RECV;
const UDP_STATES: u32 = 1 << TCP_ESTABLISHED | 1 << TCP_CLOSE;

/// Per-family dumps. The TCP ones are used only where the legacy TCP dump
/// is refused.
const DUMPS: [(u8, Transport); 4] = [
    (libc::AF_INET as u8, Transport::Tcp),
    (libc::AF_INET6 as u8, Transport::Tcp),
    (libc::AF_INET as u8, Transport::Udp),
    (libc::AF_INET6 as u8, Transport::Udp),
];

#[derive(Debug, thiserror::Error)]
pub(super) enum ScanError {
    #[error("cannot open a NETLINK_SOCK_DIAG socket: {0}")]
    Open(#[source] io::Error),
    #[error("sock_diag {what} failed: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused the socket dump: {}", io::Error::from_raw_os_error(*.errno))]
    Kernel { errno: i32 },
    #[error("malformed sock_diag reply: {0}")]
    Malformed(&'static str),
    #[error("cannot read {what}: {source}")]
    Proc {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Lists sockets with their owners; kept across scans for its caches.
pub(super) struct Lister {
    diag: Diag,
    owners: Owners,
    /// The kernel answers the legacy TCP dump (until it refuses once).
    legacy_tcp: bool,
    /// Dumps the kernel cannot answer (no IPv6, no `udp_diag`), skipped
    /// after the first refusal.
    unsupported: [bool; DUMPS.len()],
}

impl Lister {
    pub(super) fn new(host_name: &str) -> Result<Lister, ScanError> {
        Ok(Lister {
            diag: Diag::open()?,
            owners: Owners::new(host_name),
            legacy_tcp: true,
            unsupported: [false; DUMPS.len()],
        })
    }

    pub(super) fn list(&mut self, out: &mut Vec<Socket>) -> Result<(), ScanError> {
        if self.legacy_tcp {
            let before = out.len();
            let seq = self.diag.next_seq();
            match self
                .diag
                .dump(&legacy_tcp_request(seq), Transport::Tcp, out)
            {
                Err(ScanError::Kernel { errno }) => {
                    out.truncate(before);
                    self.legacy_tcp = false;
                    tracing::debug!(
                        error = %io::Error::from_raw_os_error(errno),
                        "legacy TCP dump refused; dumping TCP per family"
                    );
                }
                other => other?,
            }
        }
        for (i, (family, transport)) in DUMPS.into_iter().enumerate() {
            if self.unsupported[i] || (transport == Transport::Tcp && self.legacy_tcp) {
                continue;
            }
            let seq = self.diag.next_seq();
            match self
                .diag
                .dump(&request(family, transport, seq), transport, out)
            {
                Err(ScanError::Kernel {
                    errno: libc::ENOENT,
                }) => {
                    self.unsupported[i] = true;
                    tracing::warn!(
                        transport = transport.as_str(),
                        ipv6 = family == libc::AF_INET6 as u8,
                        "this kernel cannot dump these sockets; they are not reported"
                    );
                }
                other => other?,
            }
        }
        self.owners.assign(out)?;
        attribute_queued(out);
        Ok(())
    }
}

/// A socket with inode 0 in its handshake or waiting in the accept queue
/// is held by no process yet, but its listener's owner is the one that
/// will accept it. (A closing socket with inode 0 has been closed by its
/// program: its owner is whoever had it before, which the tracker keeps.)
fn attribute_queued(sockets: &mut [Socket]) {
    let queued =
        |s: &Socket| s.key.inode == 0 && matches!(s.state, Some("SYN_RECV") | Some("ESTABLISHED"));
    if !sockets.iter().any(queued) {
        return;
    }
    let listeners: HashMap<PortKey, Arc<Owner>> = sockets
        .iter()
        .filter(|s| s.is_listener())
        .filter_map(|s| Some((s.port_key(), s.owner.clone()?)))
        .collect();
    for s in sockets.iter_mut() {
        if queued(s) && s.owner.is_none() {
            s.owner = listeners.get(&s.port_key()).cloned();
        }
    }
}

/// The netlink socket and its reused receive buffer.
struct Diag {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

impl Diag {
    fn open() -> Result<Diag, ScanError> {
        // SAFETY: plain syscall; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return Err(ScanError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let timeout = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: `timeout` outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(ScanError::Open(io::Error::last_os_error()));
        }
        Ok(Diag {
            fd,
            buf: vec![0; RECV_BUF_LEN],
            seq: 0,
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends a dump request (of sequence number `self.seq`) and appends the
    /// sockets of its reply to `out`.
    fn dump(
        &mut self,
        req: &[u8],
        transport: Transport,
        out: &mut Vec<Socket>,
    ) -> Result<(), ScanError> {
        self.send(req)?;
        loop {
            // SAFETY: the buffer is valid for `len` bytes for the call.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ScanError::Io {
                    what: "recv",
                    source: e,
                });
            }
            // With MSG_TRUNC, `n` is the datagram's real length.
            let n = n as usize;
            let Some(datagram) = self.buf.get(..n) else {
                return Err(ScanError::Malformed("reply larger than the receive buffer"));
            };
            if parse_datagram(datagram, self.seq, transport, out)? {
                return Ok(());
            }
        }
    }

    fn send(&self, req: &[u8]) -> Result<(), ScanError> {
        // SAFETY: all-zero is a valid `sockaddr_nl` (the kernel, pid 0).
        let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `req` and `kernel` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(ScanError::Io {
                what: "sendto",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// `nlmsghdr` + `inet_diag_req_v2` asking for a dump of one family and
/// protocol in the states we keep.
fn request(family: u8, transport: Transport, seq: u32) -> [u8; REQUEST_LEN] {
    let (protocol, states) = match transport {
        Transport::Tcp => (libc::IPPROTO_TCP as u8, TCP_STATES),
        Transport::Udp => (libc::IPPROTO_UDP as u8, UDP_STATES),
    };
    let mut req = [0u8; REQUEST_LEN];
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid stays 0: the kernel assigns ours.
    req[16] = family;
    req[17] = protocol;
    // idiag_ext and pad stay 0: no extensions, only the fixed message.
    req[20..24].copy_from_slice(&states.to_ne_bytes());
    // The socket id stays zero: dumps ignore it.
    req
}

/// `nlmsghdr` + `inet_diag_req` (v1) asking for the legacy TCP dump: the
/// kernel ignores the family and walks its tables once for both.
fn legacy_tcp_request(seq: u32) -> [u8; LEGACY_REQUEST_LEN] {
    let mut req = [0u8; LEGACY_REQUEST_LEN];
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
    req[0..4].copy_from_slice(&(LEGACY_REQUEST_LEN as u32).to_ne_bytes());
    req[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    req[6..8].copy_from_slice(&flags.to_ne_bytes());
    req[8..12].copy_from_slice(&seq.to_ne_bytes());
    // What `ss` sends; the kernel answers with both families regardless.
    req[16] = libc::AF_INET as u8;
    // Lengths, extensions and the 48-byte socket id stay zero; then the
    // states mask and the unused `idiag_dbs`.
    req[16 + 52..16 + 56].copy_from_slice(&TCP_STATES.to_ne_bytes());
    req
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one datagram of a dump reply, appending sockets to `out`.
/// Returns true once the dump is complete. Messages of another sequence
/// number (left over from an aborted dump) are skipped. Fields are read
/// byte-wise, so the buffer needs no particular alignment.
fn parse_datagram(
    mut buf: &[u8],
    seq: u32,
    transport: Transport,
    out: &mut Vec<Socket>,
) -> Result<bool, ScanError> {
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32_ne(buf, 0) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(ScanError::Malformed("message length out of bounds"));
        }
        let kind = i32::from(u16_ne(buf, 4));
        let payload = &buf[NLMSG_HDRLEN..len];
        if u32_ne(buf, 8) == seq {
            match kind {
                libc::NLMSG_DONE | libc::NLMSG_ERROR => return end_of_dump(payload),
                k if k == i32::from(SOCK_DIAG_BY_FAMILY) || k == i32::from(TCPDIAG_GETSOCK) => {
                    out.extend(parse_diag_msg(payload, transport)?);
                }
                _ => {}
            }
        }
        // Messages are padded to 4 bytes; the last one may not be.
        buf = buf.get((len + 3) & !3..).unwrap_or_default();
    }
    Ok(false)
}

/// `NLMSG_DONE` and `NLMSG_ERROR` both carry an `int` error code first;
/// negative is an errno (an `NLMSG_ERROR` of 0 is an acknowledgement).
fn end_of_dump(payload: &[u8]) -> Result<bool, ScanError> {
    let code = match payload.get(..4) {
        Some(b) => i32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    };
    if code < 0 {
        return Err(ScanError::Kernel {
            errno: code.saturating_neg(),
        });
    }
    Ok(true)
}

/// Parses an `inet_diag_msg`; `None` for states and families we skip.
fn parse_diag_msg(p: &[u8], transport: Transport) -> Result<Option<Socket>, ScanError> {
    if p.len() < INET_DIAG_MSG_LEN {
        return Err(ScanError::Malformed("inet_diag_msg too short"));
    }
    let (family, state) = (p[0], p[1]);
    let state_name = match (transport, state) {
        (Transport::Tcp, TCP_ESTABLISHED) => Some("ESTABLISHED"),
        (Transport::Tcp, TCP_SYN_SENT) => Some("SYN_SENT"),
        (Transport::Tcp, TCP_SYN_RECV | TCP_NEW_SYN_RECV) => Some("SYN_RECV"),
        (Transport::Tcp, TCP_LISTEN) => Some("LISTEN"),
        (Transport::Tcp, TCP_FIN_WAIT1) => Some("FIN_WAIT1"),
        (Transport::Tcp, TCP_FIN_WAIT2) => Some("FIN_WAIT2"),
        (Transport::Tcp, TCP_TIME_WAIT) => Some("TIME_WAIT"),
        (Transport::Tcp, TCP_CLOSE_WAIT) => Some("CLOSE_WAIT"),
        (Transport::Tcp, TCP_LAST_ACK) => Some("LAST_ACK"),
        (Transport::Tcp, TCP_CLOSING) => Some("CLOSING"),
        (Transport::Udp, TCP_ESTABLISHED | TCP_CLOSE) => None,
        _ => return Ok(None),
    };
    let ip = |at: usize| -> Option<IpAddr> {
        match i32::from(family) {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                p[at],
                p[at + 1],
                p[at + 2],
                p[at + 3],
            ))),
            libc::AF_INET6 => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&p[at..at + 16]);
                Some(IpAddr::V6(Ipv6Addr::from(octets)))
            }
            _ => None,
        }
    };
    let (Some(src), Some(dst)) = (ip(8), ip(24)) else {
        return Ok(None);
    };
    // Ports are big-endian; everything else is host order.
    let sport = u16::from_be_bytes([p[4], p[5]]);
    let dport = u16::from_be_bytes([p[6], p[7]]);
    Ok(Some(Socket {
        key: SocketKey {
            transport,
            local: SocketAddr::new(src, sport),
            remote: SocketAddr::new(dst, dport),
            inode: u64::from(u32_ne(p, 68)),
        },
        ipv6_family: i32::from(family) == libc::AF_INET6,
        state: state_name,
        owner: None,
    }))
}

/// What the cache knows of one inode: its owner, or that /proc had none
/// we could see (another user's process when not root).
struct Cached {
    owner: Option<Arc<Owner>>,
    /// The scan that last listed this inode; the rest are dropped, which
    /// bounds the cache by the number of live sockets.
    seen: u64,
}

/// Maps socket inodes to their owning process.
struct Owners {
    host_name: String,
    by_inode: HashMap<u64, Cached>,
    /// Owners by pid, each valid for its start time: a process opening
    /// many sockets has its program read once. Holds only owners some
    /// cached inode still refers to.
    by_pid: HashMap<u32, Arc<Owner>>,
    /// Inodes of this scan not yet in the cache; reused across scans.
    unknown: HashSet<u64>,
    scan: u64,
    users: UserNames,
}

impl Owners {
    fn new(host_name: &str) -> Owners {
        Owners {
            host_name: host_name.to_string(),
            by_inode: HashMap::new(),
            by_pid: HashMap::new(),
            unknown: HashSet::new(),
            scan: 0,
            users: UserNames::default(),
        }
    }

    /// Fills `owner` on every socket, walking /proc only for inodes never
    /// seen before.
    fn assign(&mut self, sockets: &mut [Socket]) -> Result<(), ScanError> {
        self.scan += 1;
        self.unknown.clear();
        // Inode 0 is a socket no process holds yet (a handshake, or a
        // connection waiting in the accept queue): nothing to find.
        self.unknown.extend(
            sockets
                .iter()
                .map(|s| s.key.inode)
                .filter(|i| *i != 0 && !self.by_inode.contains_key(i)),
        );
        if !self.unknown.is_empty() {
            self.walk_proc()?;
        }
        for s in sockets.iter_mut() {
            if let Some(c) = self.by_inode.get_mut(&s.key.inode) {
                c.seen = self.scan;
                s.owner.clone_from(&c.owner);
            }
        }
        let scan = self.scan;
        self.by_inode.retain(|_, c| c.seen == scan);
        // Referenced by an inode entry besides this map: still an owner.
        self.by_pid.retain(|_, o| Arc::strong_count(o) > 1);
        // Keep a burst of sockets from pinning its memory for good.
        self.by_inode.shrink_to(self.by_inode.len() * 2);
        self.by_pid.shrink_to(self.by_pid.len() * 2);
        self.unknown.shrink_to(0);
        Ok(())
    }

    /// Searches /proc/<pid>/fd for the unknown inodes, stopping as soon as
    /// all are found. Processes that already own sockets go first: a server
    /// accepting connections is the usual owner of new ones.
    fn walk_proc(&mut self) -> Result<(), ScanError> {
        let started = Instant::now();
        let wanted = self.unknown.len();
        let mut likely: Vec<u32> = self
            .by_inode
            .values()
            .filter_map(|c| c.owner.as_ref().map(|o| o.pid))
            .collect();
        likely.sort_unstable();
        likely.dedup();
        let mut searched = 0usize;
        for pid in &likely {
            if self.unknown.is_empty() {
                break;
            }
            self.search_pid(*pid);
            searched += 1;
        }
        if !self.unknown.is_empty() {
            let proc_dir = fs::read_dir("/proc").map_err(|source| ScanError::Proc {
                what: "/proc",
                source,
            })?;
            for entry in proc_dir.flatten() {
                if self.unknown.is_empty() {
                    break;
                }
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                if likely.binary_search(&pid).is_err() {
                    self.search_pid(pid);
                    searched += 1;
                }
            }
        }
        let scan = self.scan;
        let missing = self.unknown.len();
        for inode in self.unknown.drain() {
            self.by_inode.insert(
                inode,
                Cached {
                    owner: None,
                    seen: scan,
                },
            );
        }
        tracing::debug!(
            wanted,
            missing,
            processes = searched,
            elapsed_us = started.elapsed().as_micros() as u64,
            "socket owners searched in /proc"
        );
        Ok(())
    }

    /// Looks through one process's fds for unknown socket inodes. A process
    /// that exits meanwhile or is not ours to read is skipped.
    fn search_pid(&mut self, pid: u32) {
        let path = format!("/proc/{pid}/fd");
        let (Ok(names), Ok(dir)) = (fs::read_dir(&path), fs::File::open(&path)) else {
            return;
        };
        let mut owner: Option<Option<Arc<Owner>>> = None;
        for entry in names.flatten() {
            let Some(inode) = socket_link(&dir, entry.file_name().as_bytes()) else {
                continue;
            };
            if !self.unknown.remove(&inode) {
                continue;
            }
            let owner = owner.get_or_insert_with(|| self.owner(pid)).clone();
            self.by_inode.insert(
                inode,
                Cached {
                    owner,
                    seen: self.scan,
                },
            );
            if self.unknown.is_empty() {
                return;
            }
        }
    }

    /// The owner `pid` is now, from the cache if it is the same process
    /// (same start) as when it was described.
    fn owner(&mut self, pid: u32) -> Option<Arc<Owner>> {
        let start_ms = process_start_ms(pid)?;
        let start = Some(Timestamp(wall_start_ms(start_ms)));
        if let Some(o) = self.by_pid.get(&pid).filter(|o| o.start == start) {
            return Some(Arc::clone(o));
        }
        let owner = Arc::new(self.describe(pid)?);
        self.by_pid.insert(pid, Arc::clone(&owner));
        Some(owner)
    }

    /// Name, identity and program of a process; `None` if it has exited
    /// (or its pid was reused while it was read).
    fn describe(&mut self, pid: u32) -> Option<Owner> {
        let start_ms = process_start_ms(pid)?;
        describe_process(&self.host_name, &mut self.users, pid, start_ms)
    }
}

/// Name, identity, program and user of the process `pid` that started at
/// `start_ms` (identity start, see `process_start_ms`); `None` if it has
/// exited or the pid now belongs to another process. The eBPF source calls
/// this too, so both sources describe an owner alike.
pub(super) fn describe_process(
    host_name: &str,
    users: &mut UserNames,
    pid: u32,
    start_ms: u64,
) -> Option<Owner> {
    use std::os::unix::fs::MetadataExt;
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    let executable = fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    let args = read_cmdline(pid);
    // /proc/<pid> belongs to the process's effective user.
    let uid = fs::metadata(format!("/proc/{pid}")).ok().map(|m| m.uid());
    if process_start_ms(pid)? != start_ms {
        return None;
    }
    Some(Owner {
        pid,
        name: comm.trim_end_matches('\n').to_string(),
        entity_id: entity_id(host_name, pid, start_ms),
        start: Some(Timestamp(wall_start_ms(start_ms))),
        executable,
        args: edr_model::redact::redact_args(&args),
        user: uid.map(|id| OwnerUser {
            id,
            name: users.name(id).map(String::from),
        }),
    })
}

/// The socket inode an fd points to, read relative to the open fd
/// directory: resolving one name instead of `/proc/<pid>/fd/<n>` from the
/// root roughly halves the cost of the readlink that dominates the search.
fn socket_link(fd_dir: &fs::File, name: &[u8]) -> Option<u64> {
    // fd numbers are short; the zeroed tail is the C string's terminator.
    let mut c_name = [0u8; 16];
    c_name.get_mut(..name.len())?.copy_from_slice(name);
    if name.len() == c_name.len() || name.contains(&0) {
        return None;
    }
    // `socket:[4294967295]` fits; longer targets are not sockets.
    let mut target = [0u8; 32];
    // SAFETY: `c_name` is NUL-terminated and `target` is valid for its
    // length for the call.
    let n = unsafe {
        libc::readlinkat(
            fd_dir.as_raw_fd(),
            c_name.as_ptr().cast(),
            target.as_mut_ptr().cast(),
            target.len(),
        )
    };
    socket_inode(target.get(..usize::try_from(n).ok()?)?)
}

/// The inode of an fd link target `socket:[12345]`.
fn socket_inode(link: &[u8]) -> Option<u64> {
    let digits = link.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// A reply captured from this kernel (seq 77): a dual-stack listener on
    /// [::]:60813 (inode 11648), an IPv4 client 127.0.0.1:37442 connected
    /// to it (inode 11649) and the accepted socket, an IPv6 socket with
    /// IPv4-mapped addresses (inode 11650); then NLMSG_DONE. The v4 and v6
    /// dumps were joined into one buffer.
    const CAPTURED: &str = "7c000000140002004d00000077240000020100009242ed8d7f0000010000000000000000000000007f00000100000000000000000000000000000000020000000000000000000000000000000000000000000000812d0000050008000000000008000f00000000000c0015000100000000000000060016005200000084000000140002004d000000772400000a0a0000ed8d0000000000000000000000000000000000000000000000000000000000000000000000000000030000000000000000000000000000008000000000000000802d0000050008000000000005000b000000000008000f00000000000c001500010000000000000006001600120000007c000000140002004d000000772400000a010000ed8d924200000000000000000000ffff7f00000100000000000000000000ffff7f00000100000000040000000000000000000000000000000000000000000000822d0000050008000000000008000f00000000000c0015000100000000000000060016001200000014000000030002004d0000007724000000000000";

    /// A legacy `TCPDIAG_GETSOCK` reply captured from this kernel (seq 91),
    /// kept to our own sockets: an IPv4 listener 127.0.0.1:48297 (inode
    /// 172184) and an IPv6 one [::1]:43679 (172185), a connection to each
    /// (both ends), all in one dump; then NLMSG_DONE.
    const CAPTURED_LEGACY: &str = "7c000000120002005b0000002d6b0000020a0000bca900007f000001000000000000000000000000000000000000000000000000000000000000000091300000000000000000000000000000800000000000000098a00200050008000000000008000f00000000000c0015000100000000000000060016005200000084000000120002005b0000002d6b00000a0a0000aa9f000000000000000000000000000000000001000000000000000000000000000000000000000092300000000000000000000000000000800000000000000099a00200050008000000000005000b000100000008000f00000000000c001500010000000000000006001600120000007c000000120002005b0000002d6b00000a010000aa9fbcb60000000000000000000000000000000100000000000000000000000000000001000000009330000000000000000000000000000000000000000000009da00200050008000000000008000f00000000000c001500010000000000000006001600120000007c000000120002005b0000002d6b000002010000e6e0bca97f0000010000000000000000000000007f000001000000000000000000000000000000009430000000000000000000000000000000000000000000009aa00200050008000000000008000f00000000000c001500010000000000000006001600520000007c000000120002005b0000002d6b00000a010000bcb6aa9f0000000000000000000000000000000100000000000000000000000000000001000000009530000000000000000000000000000000000000000000009ca00200050008000000000008000f00000000000c001500010000000000000006001600120000007c000000120002005b0000002d6b000002010000bca9e6e07f0000010000000000000000000000007f000001000000000000000000000000000000009630000000000000000000000000000000000000000000009ba00200050008000000000008000f00000000000c0015000100000000000000060016005200000014000000030002005b0000002d6b000000000000";

    /// NLMSG_ERROR (EINVAL, seq 78) for a request with a bogus family.
    const CAPTURED_ERROR: &str = "5c000000020000004e000000da250000eaffffff48000000140001034e000000000000006306000002000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";

    /// NLMSG_DONE carrying -ENOENT (seq 77): no handler for the protocol.
    const CAPTURED_DONE_ENOENT: &str = "14000000030002004d00000077240000feffffff";

    #[test]
    fn parses_a_captured_dump() {
        let mut out = Vec::new();
        let done = parse_datagram(&hex(CAPTURED), 77, Transport::Tcp, &mut out).expect("parses");
        assert!(done);
        let got: Vec<_> = out
            .iter()
            .map(|s| {
                (
                    s.key.local.to_string(),
                    s.key.remote.to_string(),
                    s.key.inode,
                    s.state,
                    s.ipv6_family,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                (
                    "127.0.0.1:37442".into(),
                    "127.0.0.1:60813".into(),
                    11649,
                    Some("ESTABLISHED"),
                    false
                ),
                (
                    "[::]:60813".into(),
                    "[::]:0".into(),
                    11648,
                    Some("LISTEN"),
                    true
                ),
                (
                    "[::ffff:127.0.0.1]:60813".into(),
                    "[::ffff:127.0.0.1]:37442".into(),
                    11650,
                    Some("ESTABLISHED"),
                    true
                ),
            ]
        );
    }

    #[test]
    fn messages_of_another_dump_are_skipped() {
        let mut out = Vec::new();
        let done = parse_datagram(&hex(CAPTURED), 78, Transport::Tcp, &mut out).expect("parses");
        assert!(!done);
        assert!(out.is_empty());
    }

    #[test]
    fn kernel_errors_carry_their_errno() {
        let mut out = Vec::new();
        let err = parse_datagram(&hex(CAPTURED_ERROR), 78, Transport::Tcp, &mut out);
        assert!(
            matches!(
                err,
                Err(ScanError::Kernel {
                    errno: libc::EINVAL
                })
            ),
            "{err:?}"
        );
        let err = parse_datagram(&hex(CAPTURED_DONE_ENOENT), 77, Transport::Udp, &mut out);
        assert!(
            matches!(
                err,
                Err(ScanError::Kernel {
                    errno: libc::ENOENT
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn truncated_replies_are_malformed_not_a_panic() {
        let full = hex(CAPTURED);
        for cut in [20, 60, 100, 123] {
            let mut out = Vec::new();
            let r = parse_datagram(&full[..cut], 77, Transport::Tcp, &mut out);
            assert!(
                matches!(r, Err(ScanError::Malformed(_))),
                "cut {cut}: {r:?}"
            );
        }
        // A short message that claims to be complete but lacks the body.
        let mut short = full[..40].to_vec();
        short[0..4].copy_from_slice(&40u32.to_ne_bytes());
        let r = parse_datagram(&short, 77, Transport::Tcp, &mut Vec::new());
        assert!(matches!(r, Err(ScanError::Malformed(_))), "{r:?}");
    }

    #[test]
    fn closing_states_are_reported_and_closed_is_skipped() {
        for (state, name) in [
            (TCP_FIN_WAIT1, "FIN_WAIT1"),
            (TCP_FIN_WAIT2, "FIN_WAIT2"),
            (TCP_TIME_WAIT, "TIME_WAIT"),
            (TCP_CLOSE_WAIT, "CLOSE_WAIT"),
            (TCP_LAST_ACK, "LAST_ACK"),
            (TCP_CLOSING, "CLOSING"),
        ] {
            let mut msg = hex(CAPTURED)[..0x7c].to_vec();
            msg[NLMSG_HDRLEN + 1] = state;
            let mut out = Vec::new();
            parse_datagram(&msg, 77, Transport::Tcp, &mut out).expect("parses");
            assert_eq!(out.len(), 1, "{name}");
            assert_eq!(out[0].state, Some(name));
        }
        let mut msg = hex(CAPTURED)[..0x7c].to_vec();
        msg[NLMSG_HDRLEN + 1] = TCP_CLOSE;
        let mut out = Vec::new();
        parse_datagram(&msg, 77, Transport::Tcp, &mut out).expect("parses");
        assert!(out.is_empty());
    }

    #[test]
    fn one_legacy_dump_lists_both_families() {
        let mut out = Vec::new();
        let done =
            parse_datagram(&hex(CAPTURED_LEGACY), 91, Transport::Tcp, &mut out).expect("parses");
        assert!(done);
        let got: Vec<_> = out
            .iter()
            .map(|s| {
                (
                    s.key.local.to_string(),
                    s.key.remote.to_string(),
                    s.key.inode,
                    s.state,
                    s.ipv6_family,
                )
            })
            .collect();
        let row = |l: &str, r: &str, inode, state, v6| {
            (l.to_string(), r.to_string(), inode, Some(state), v6)
        };
        assert_eq!(
            got,
            [
                row("127.0.0.1:48297", "0.0.0.0:0", 172184, "LISTEN", false),
                row("[::1]:43679", "[::]:0", 172185, "LISTEN", true),
                row("[::1]:43679", "[::1]:48310", 172189, "ESTABLISHED", true),
                row(
                    "127.0.0.1:59104",
                    "127.0.0.1:48297",
                    172186,
                    "ESTABLISHED",
                    false
                ),
                row("[::1]:48310", "[::1]:43679", 172188, "ESTABLISHED", true),
                row(
                    "127.0.0.1:48297",
                    "127.0.0.1:59104",
                    172187,
                    "ESTABLISHED",
                    false
                ),
            ]
        );
        assert!(out.iter().all(|s| s.key.transport == Transport::Tcp));
    }

    #[test]
    fn legacy_request_is_a_v1_tcp_dump() {
        let req = legacy_tcp_request(12);
        assert_eq!(u32_ne(&req, 0) as usize, req.len());
        assert_eq!(req.len(), NLMSG_HDRLEN + 60);
        assert_eq!(u16_ne(&req, 4), TCPDIAG_GETSOCK);
        let flags = u16_ne(&req, 6);
        assert_eq!(flags, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16);
        assert_eq!(u32_ne(&req, 8), 12);
        assert_eq!(req[16], libc::AF_INET as u8);
        // The socket id (a filter for exact lookups) stays zero in a dump.
        assert!(req[17..16 + 52].iter().all(|b| *b == 0));
        assert_eq!(u32_ne(&req, 16 + 52), TCP_STATES);
        assert_eq!(u32_ne(&req, 16 + 56), 0);
    }

    #[test]
    fn the_live_kernel_lists_our_tcp_sockets_of_both_families() {
        let l4 = std::net::TcpListener::bind("127.0.0.1:0").expect("bind v4");
        let Ok(l6) = std::net::TcpListener::bind("[::1]:0") else {
            return; // no IPv6 here: the v4 half is covered by other tests
        };
        let _c4 = std::net::TcpStream::connect(l4.local_addr().expect("addr")).expect("c4");
        let _c6 = std::net::TcpStream::connect(l6.local_addr().expect("addr")).expect("c6");
        let mut lister = Lister::new("h").expect("netlink");
        let mut out = Vec::new();
        lister.list(&mut out).expect("lists");
        for l in [&l4, &l6] {
            let addr = l.local_addr().expect("addr");
            assert!(
                out.iter()
                    .any(|s| s.key.local == addr && s.state == Some("LISTEN")),
                "{addr} missing"
            );
            assert!(
                out.iter()
                    .any(|s| s.key.remote == addr && s.state == Some("ESTABLISHED")),
                "client of {addr} missing"
            );
        }
        assert!(lister.legacy_tcp, "this kernel answers the legacy dump");
    }

    #[test]
    fn request_is_a_sock_diag_dump() {
        let req = request(libc::AF_INET6 as u8, Transport::Udp, 9);
        assert_eq!(u32_ne(&req, 0) as usize, req.len());
        assert_eq!(u16_ne(&req, 4), SOCK_DIAG_BY_FAMILY);
        assert_eq!(u32_ne(&req, 8), 9);
        assert_eq!(req[16], libc::AF_INET6 as u8);
        assert_eq!(req[17], libc::IPPROTO_UDP as u8);
        assert_eq!(u32_ne(&req, 20), UDP_STATES);
    }

    #[test]
    fn fd_links_and_stat_lines() {
        assert_eq!(socket_inode(b"socket:[11650]"), Some(11650));
        assert_eq!(socket_inode(b"pipe:[11650]"), None);
        assert_eq!(socket_inode(b"/dev/null"), None);
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let inode = fs::metadata(format!("/proc/self/fd/{}", sock.as_raw_fd()))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .expect("stat");
        let dir = fs::File::open("/proc/self/fd").expect("fd dir");
        let name = sock.as_raw_fd().to_string();
        assert_eq!(socket_link(&dir, name.as_bytes()), Some(inode));
        assert_eq!(socket_link(&dir, b"999999"), None);
        assert_eq!(socket_link(&dir, b"1234567890123456789"), None);
    }

    #[test]
    fn queued_connections_belong_to_their_listeners_owner() {
        let mut out = Vec::new();
        parse_datagram(&hex(CAPTURED), 77, Transport::Tcp, &mut out).expect("parses");
        let owner = Arc::new(Owner {
            pid: 7,
            name: "srv".to_string(),
            entity_id: String::new(),
            start: None,
            executable: None,
            args: Vec::new(),
            user: None,
        });
        out[1].owner = Some(Arc::clone(&owner));
        // The accepted socket, before accept(): no inode yet.
        out[2].key.inode = 0;
        attribute_queued(&mut out);
        assert_eq!(out[2].owner.as_deref().map(|o| o.pid), Some(7));
        // The client end has an inode of its own and is left alone.
        assert!(out[0].owner.is_none());
    }

    #[test]
    fn own_process_is_described_with_its_start() {
        let mut owners = Owners::new("h");
        let me = owners.describe(std::process::id()).expect("we exist");
        let comm = fs::read_to_string("/proc/self/comm").expect("comm");
        assert_eq!(me.name, comm.trim_end());
        let exe = fs::read_link("/proc/self/exe").expect("own exe");
        assert_eq!(me.executable.as_deref(), exe.to_str());
        let args: Vec<String> = std::env::args().collect();
        assert_eq!(me.args, edr_model::redact::redact_args(&args));
        // Described once per process: the cache hands out the same owner.
        let a = owners.owner(me.pid).expect("owner");
        let b = owners.owner(me.pid).expect("owner");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, me);
        // The same identity and date as the process collector gives us.
        let start_ms = process_start_ms(me.pid).expect("own start");
        assert_eq!(me.entity_id, entity_id("h", me.pid, start_ms));
        let start = me.start.expect("start");
        assert_eq!(start, Timestamp(wall_start_ms(start_ms)));
        assert!(start <= Timestamp::now());
    }
}
