//! Linux eBPF connection source: TCP connects, accepts, listens and closes
//! and UDP sends to new peers, as the kernel makes them, with the process
//! that made them.
//!
//! The BPF program (`bpf/conn.bpf.c`: a TCP state tracepoint and cgroup
//! sock_addr hooks for UDP; why these is written there) is a committed CO-RE object, relocated by aya against
//! the kernel's BTF at load. Its records arrive through one ring buffer;
//! records it had no room for are counted in the kernel and added to
//! `network_events_lost`, as are the tracepoint's runs the kernel skipped
//! (its recursion misses: a state change on a CPU where the program was
//! already running, such as a softirq's that interrupted it, is not given
//! to the program at all). A reading thread at real-time priority (the
//! process source's budgeted [`Priority`]) describes each owner from
//! `/proc/<pid>` the moment its first record arrives, while even a 20 ms
//! connection's process still runs; the kernel's own copy of the pid,
//! start time, user and name is what an event falls back to when the
//! process is already gone, so `process.entity_id` joins the process's own
//! events either way.
//!
//! The inventory (connections open when the source starts) comes from one
//! sock_diag scan; closes of those are matched by address.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aya::maps::{MapData, PerCpuArray, RingBuf};
use aya::programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, ProgramFd};
use aya::{Btf, Ebpf, EbpfLoader};
use tokio_util::sync::CancellationToken;

use super::linux::describe_process;
use super::{build_event, Direction, Owner, OwnerUser, Phase, SocketKey, Tracked, Transport};
use crate::process::{clock_ns, clock_ticks_per_sec, start_ms_from_ticks, wall_start_ms};
use crate::process::{Priority, UserNames};
use crate::CollectorContext;
use edr_model::event::{entity_id, EdrExt, Event, Origin, Timestamp};
use edr_pipeline::{Counters, EventTx};

pub(super) const SOURCE: &str = "ebpf";

/// Built by `scripts/build-bpf.sh`; `committed_bpf_object_is_current`
/// holds it equal to its source.
static OBJECT: &[u8] = aya::include_bytes_aligned!("bpf/conn.bpf.o");

/// `struct event` in `conn.bpf.c`.
const RECORD_LEN: usize = 88;

const KIND_CONNECT: u8 = 1;
const KIND_ACCEPT: u8 = 2;
const KIND_CLOSE: u8 = 3;
const KIND_LISTEN: u8 = 4;
const KIND_UDP: u8 = 5;

const DIR_OUTBOUND: u8 = 1;
const DIR_INBOUND: u8 = 2;
const DIR_LISTEN: u8 = 3;

const TCP_SYN_SENT: u8 = 2;

/// Owners described, by (pid, identity start). A process making many
/// connections is read from /proc once; the bound keeps a storm of
/// short-lived processes from growing it.
const OWNER_CACHE: usize = 4096;

/// How often the kernel's lost-record count is read.
const LOST_EVERY: Duration = Duration::from_secs(1);

/// The loaded, attached programs and their maps. Dropping it detaches
/// everything.
pub(super) struct Probe {
    ring: RingBuf<MapData>,
    lost: PerCpuArray<MapData, u64>,
    /// The state tracepoint's program, for its recursion misses.
    state_prog: ProgramFd,
    /// Owns the programs and their links.
    _ebpf: Ebpf,
}

/// Loads and attaches the programs. The error says why the kernel or the
/// system refused (not root, no BTF, a kernel too old, a lowered
/// capability set, a seccomp filter).
pub(super) fn open() -> Result<Probe, String> {
    // Parsing the kernel's BTF (5 MB here) takes tens of MB of heap for a
    // moment. glibc would raise its mmap threshold to the size of the
    // freed BTF buffer, and its trim threshold to twice that: the next
    // large buffers then come from a thread's arena, whose free top
    // (~5 MB after the load) neither free() nor malloc_trim() gives back.
    // Pinning the threshold at glibc's default (128 KiB) keeps large
    // buffers in their own mappings, returned to the system when freed.
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
    let probe = load();
    // What the parse leaves free in the heap's bins, given back.
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
    probe
}

fn load() -> Result<Probe, String> {
    const VMLINUX: &str = "/sys/kernel/btf/vmlinux";
    if !std::path::Path::new(VMLINUX).exists() {
        return Err(format!("the kernel has no BTF ({VMLINUX} is missing)"));
    }
    let btf = Btf::from_sys_fs().map_err(|e| format!("cannot read the kernel's BTF: {e}"))?;
    raise_memlock();
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(OBJECT)
        .map_err(|e| format!("cannot load the eBPF programs: {}", chain(&e)))?;
    let tp: &mut BtfTracePoint = program(&mut ebpf, "on_set_state")?;
    tp.load("inet_sock_set_state", &btf)
        .and_then(|()| tp.attach().map(drop))
        .map_err(|e| format!("cannot attach to inet_sock_set_state: {}", chain(&e)))?;
    let state_prog = tp
        .fd()
        .map_err(|e| format!("program on_set_state: {}", chain(&e)))
        .and_then(|fd| {
            fd.try_clone()
                .map_err(|e| format!("program on_set_state: {e}"))
        })?;
    let root =
        cgroup2_root().ok_or("no cgroup v2 hierarchy is mounted (UDP sends are seen there)")?;
    let cgroup = std::fs::File::open(&root)
        .map_err(|e| format!("cannot open the cgroup v2 root {}: {e}", root.display()))?;
    for name in ["on_sendmsg4", "on_sendmsg6", "on_connect4", "on_connect6"] {
        let p: &mut CgroupSockAddr = program(&mut ebpf, name)?;
        // A BPF link (aya uses one where the kernel has them, 5.7+) runs
        // beside whatever else is attached there, and takes no flags.
        p.load()
            .and_then(|()| p.attach(&cgroup, CgroupAttachMode::Single).map(drop))
            .map_err(|e| format!("cannot attach {name} to the cgroup v2 root: {}", chain(&e)))?;
    }
    let ring = ebpf
        .take_map("events")
        .ok_or("the eBPF object has no `events` map")?;
    let ring = RingBuf::try_from(ring).map_err(|e| format!("ring buffer: {}", chain(&e)))?;
    let lost = ebpf
        .take_map("lost")
        .ok_or("the eBPF object has no `lost` map")?;
    let lost = PerCpuArray::try_from(lost).map_err(|e| format!("lost counter: {}", chain(&e)))?;
    Ok(Probe {
        ring,
        lost,
        state_prog,
        _ebpf: ebpf,
    })
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or
/// `/sys/fs/cgroup/unified` on hybrid systems): its root holds every
/// process.
fn cgroup2_root() -> Option<std::path::PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().find_map(|line| {
        // `... mount-point options [optional...] - fstype source ...`
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split(' ');
        // The root within the filesystem must be the hierarchy's root.
        if fields.nth(3)? != "/" {
            return None;
        }
        Some(std::path::PathBuf::from(fields.next()?))
    })
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, String>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("the eBPF object has no program {name}"))?;
    p.try_into()
        .map_err(|e| format!("program {name}: {}", chain(&e)))
}

/// Kernels before 5.11 charge BPF maps to RLIMIT_MEMLOCK, whose default
/// (64 KiB or 8 MiB) is smaller than the ring buffer; later kernels ignore
/// it. Best effort: without the privilege to raise it, loading says so.
fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall on a valid struct.
    let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// An error and its sources on one line, cut to a readable length (a
/// verifier log can run to megabytes).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    if s.len() > 400 {
        let mut cut = 400;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" ...");
    }
    s
}

/// Reads records until `cancel` fires; runs on its own thread. Returns why
/// it stopped if not cancelled.
pub(super) fn read_loop(
    mut probe: Probe,
    mut handler: Handler,
    cancel: CancellationToken,
) -> Option<String> {
    let mut priority = Priority::raise("network event");
    let mut lost_checked = Instant::now();
    loop {
        if cancel.is_cancelled() {
            // What the kernel already queued is still reported.
            handler.drain(&mut probe);
            handler.count_lost(&probe);
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: probe.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call.
        let n = unsafe { libc::poll(&mut pfd, 1, 100) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Some(format!("polling the ring buffer failed: {e}"));
            }
        }
        let started = Instant::now();
        handler.drain(&mut probe);
        let now = Instant::now();
        priority.account(now.duration_since(started), now);
        if now.duration_since(lost_checked) >= LOST_EVERY {
            lost_checked = now;
            handler.count_lost(&probe);
        }
    }
}

/// One record of the ring buffer, decoded.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Record {
    ts_ns: u64,
    opened_ns: u64,
    proc_start_ns: u64,
    tgid: u32,
    uid: u32,
    kind: u8,
    oldstate: u8,
    ipv6_family: bool,
    direction: u8,
    local: SocketAddr,
    remote: SocketAddr,
    comm: String,
}

impl Record {
    pub(super) fn parse(b: &[u8]) -> Option<Record> {
        if b.len() < RECORD_LEN {
            return None;
        }
        let u64_at = |at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        let ipv6_family = b[34] == 6;
        let addr = |at: usize, port: u16| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[at..at + 16]);
            let v6 = Ipv6Addr::from(octets);
            // An IPv4 socket's addresses, as sock_diag lists them.
            let ip = match v6.to_ipv4_mapped() {
                Some(v4) if !ipv6_family => IpAddr::V4(v4),
                _ if !ipv6_family => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                _ => IpAddr::V6(v6),
            };
            SocketAddr::new(ip, port)
        };
        let comm = &b[72..88];
        let comm_len = comm.iter().position(|c| *c == 0).unwrap_or(comm.len());
        Some(Record {
            ts_ns: u64_at(0),
            opened_ns: u64_at(8),
            proc_start_ns: u64_at(16),
            tgid: u32_at(24),
            uid: u32_at(28),
            kind: b[32],
            oldstate: b[33],
            ipv6_family,
            direction: b[35],
            local: addr(40, u16_at(36)),
            remote: addr(56, u16_at(38)),
            comm: String::from_utf8_lossy(&comm[..comm_len]).into_owned(),
        })
    }
}

/// How many times the kernel skipped the program because it was already
/// running on that CPU (`bpf_prog_info.recursion_misses`, Linux 5.12+; an
/// older kernel reports 0). Each is one record never made. Aya's
/// `ProgramInfo` does not expose the field, hence the direct call.
fn recursion_misses(prog: &ProgramFd) -> Option<u64> {
    use aya_obj::generated::{bpf_attr, bpf_cmd, bpf_prog_info};
    use std::os::fd::AsFd;
    // SAFETY: both are plain C structs of integers, for which all zeroes
    // is a valid value (and what the kernel expects in unused fields).
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    let fd = u32::try_from(prog.as_fd().as_raw_fd()).ok()?;
    attr.info.bpf_fd = fd;
    attr.info.info_len = u32::try_from(std::mem::size_of::<bpf_prog_info>()).ok()?;
    attr.info.info = std::ptr::addr_of_mut!(info) as u64;
    // SAFETY: `attr` names a live program fd and points at `info`, whose
    // length it gives; the kernel writes at most that many bytes.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            std::ptr::addr_of_mut!(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    (rc == 0).then_some(info.recursion_misses)
}

/// TCP state names as the polling source reports them.
fn state_name(state: u8) -> Option<&'static str> {
    Some(match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 | 12 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        _ => return None,
    })
}

type PeerKey = (Transport, SocketAddr, SocketAddr);

/// Why the kernel lost connection records.
#[derive(Debug, Clone, Copy)]
enum Lost {
    /// The ring buffer had no room.
    RingFull,
    /// The program was already running on that CPU (a recursion miss).
    Skipped,
}

impl Lost {
    fn reason(self) -> &'static str {
        match self {
            Lost::RingFull => "the kernel's connection ring buffer was full",
            Lost::Skipped => {
                "the kernel skipped TCP state changes that arrived while the connection \
                 program was already running on their CPU"
            }
        }
    }
}

/// Turns records into events.
pub(super) struct Handler {
    origin: Origin,
    tx: EventTx,
    counters: Arc<Counters>,
    users: UserNames,
    owners: HashMap<(u32, u64), Arc<Owner>>,
    owner_order: VecDeque<(u32, u64)>,
    /// Connections open when the source started (from the sock_diag
    /// scan), so their closes can be reported with what the scan knew.
    inventory: HashMap<PeerKey, Tracked>,
    /// Owners of the listeners the inventory found, by port: the kernel
    /// names no owner for connections they accept.
    listener_owners: HashMap<u16, Arc<Owner>>,
    /// Clock ticks per second, for the kernel's start times.
    hz: u64,
    lost_reported: u64,
    misses_reported: u64,
}

impl Handler {
    pub(super) fn new(ctx: &CollectorContext, inventory: HashMap<SocketKey, Tracked>) -> Handler {
        Handler {
            origin: ctx.origin.clone(),
            tx: ctx.tx.clone(),
            counters: Arc::clone(&ctx.counters),
            users: UserNames::default(),
            owners: HashMap::new(),
            owner_order: VecDeque::new(),
            listener_owners: inventory
                .iter()
                .filter(|(_, t)| t.direction == Direction::Listen)
                .filter_map(|(k, t)| Some((k.local.port(), Arc::clone(t.owner.as_ref()?))))
                .collect(),
            inventory: inventory
                .into_iter()
                .map(|(k, t)| ((k.transport, k.local, k.remote), t))
                .collect(),
            hz: clock_ticks_per_sec().unwrap_or(100),
            lost_reported: 0,
            misses_reported: 0,
        }
    }

    fn drain(&mut self, probe: &mut Probe) {
        // Boot time to wall clock, once per batch of records.
        let offset = clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_BOOTTIME);
        let tx = self.tx.clone();
        while let Some(item) = probe.ring.next() {
            let record = Record::parse(&item);
            drop(item);
            if let Some(r) = record {
                self.record(&r, offset, &mut |e| {
                    tx.send(e);
                });
            }
        }
    }

    fn count_lost(&mut self, probe: &Probe) {
        if let Ok(per_cpu) = probe.lost.get(&0, 0) {
            let total = per_cpu.iter().sum();
            self.add_lost(total, Lost::RingFull);
        }
        if let Some(total) = recursion_misses(&probe.state_prog) {
            self.add_lost(total, Lost::Skipped);
        }
    }

    /// Adds what a kernel counter (`total` since the load) gained since
    /// it was last read to `network_events_lost`.
    fn add_lost(&mut self, total: u64, why: Lost) {
        let reported = match why {
            Lost::RingFull => &mut self.lost_reported,
            Lost::Skipped => &mut self.misses_reported,
        };
        let new = total.saturating_sub(*reported);
        if new == 0 {
            return;
        }
        *reported = total;
        self.counters.network_events_lost.fetch_add(new, Relaxed);
        tracing::warn!(lost = new, reason = why.reason(), "connection records lost");
    }

    /// The events of one record. `offset_ns` is the wall clock minus the
    /// boot clock.
    pub(super) fn record(&mut self, r: &Record, offset_ns: i128, emit: &mut dyn FnMut(Event)) {
        let wall = |ns: u64| {
            let ms = (i128::from(ns) + offset_ns) / 1_000_000;
            Timestamp(u64::try_from(ms).unwrap_or(0))
        };
        let ts = wall(r.ts_ns);
        let transport = if r.kind == KIND_UDP {
            Transport::Udp
        } else {
            Transport::Tcp
        };
        let key = SocketKey {
            transport,
            local: r.local,
            remote: r.remote,
            inode: 0,
        };
        let direction = match r.direction {
            DIR_OUTBOUND => Direction::Outbound,
            DIR_INBOUND => Direction::Inbound,
            DIR_LISTEN => Direction::Listen,
            _ => Direction::Outbound,
        };
        let tracked = |owner: Option<Arc<Owner>>, state| Tracked {
            first_seen: Instant::now(),
            direction,
            state,
            owner,
            seen: 0,
        };
        match r.kind {
            KIND_CONNECT | KIND_ACCEPT | KIND_LISTEN | KIND_UDP => {
                let state = match r.kind {
                    KIND_LISTEN => Some("LISTEN"),
                    KIND_UDP => None,
                    _ => Some("ESTABLISHED"),
                };
                let owner = self.owner(r).or_else(|| self.listener_owner(r));
                let t = tracked(owner, state);
                emit(event(&self.origin, ts, &key, &t, Phase::Opened));
            }
            KIND_CLOSE if r.direction != 0 => {
                let owner = self.owner(r).or_else(|| self.listener_owner(r));
                let lived = Duration::from_nanos(r.ts_ns.saturating_sub(r.opened_ns));
                let t = tracked(owner, state_name(r.oldstate));
                if r.oldstate == TCP_SYN_SENT {
                    // A connection refused or timed out: never reported
                    // open, but tried.
                    emit(event(
                        &self.origin,
                        wall(r.opened_ns),
                        &key,
                        &t,
                        Phase::Opened,
                    ));
                }
                emit(event(&self.origin, ts, &key, &t, Phase::Closed(lived)));
            }
            KIND_CLOSE => {
                // Open before the source started, if at all.
                if let Some(mut t) = self.inventory.remove(&(transport, r.local, r.remote)) {
                    t.state = state_name(r.oldstate).or(t.state);
                    let lived = t.first_seen.elapsed();
                    emit(event(&self.origin, ts, &key, &t, Phase::Closed(lived)));
                    if self.inventory.is_empty() {
                        self.inventory.shrink_to_fit();
                    }
                }
            }
            _ => {}
        }
    }

    /// For an inbound connection the kernel could not attribute: the owner
    /// of the inventory's listener on its port.
    fn listener_owner(&self, r: &Record) -> Option<Arc<Owner>> {
        if r.direction != DIR_INBOUND {
            return None;
        }
        self.listener_owners.get(&r.local.port()).cloned()
    }

    /// The record's process, described from /proc while it runs, else from
    /// what the kernel recorded.
    fn owner(&mut self, r: &Record) -> Option<Arc<Owner>> {
        if r.tgid == 0 && r.proc_start_ns == 0 {
            return None;
        }
        let per_tick = (1_000_000_000 / self.hz.max(1)).max(1);
        let start_ms = start_ms_from_ticks(r.proc_start_ns / per_tick)?;
        let id = (r.tgid, start_ms);
        if let Some(o) = self.owners.get(&id) {
            return Some(Arc::clone(o));
        }
        let host = &self.origin.host.name;
        let owner =
            describe_process(host, &mut self.users, r.tgid, start_ms).unwrap_or_else(|| Owner {
                pid: r.tgid,
                name: r.comm.clone(),
                entity_id: entity_id(host, r.tgid, start_ms),
                start: Some(Timestamp(wall_start_ms(start_ms))),
                executable: None,
                args: Vec::new(),
                user: Some(OwnerUser {
                    id: r.uid,
                    name: self.users.name(r.uid).map(String::from),
                }),
            });
        let owner = Arc::new(owner);
        if self.owner_order.len() >= OWNER_CACHE {
            if let Some(old) = self.owner_order.pop_front() {
                self.owners.remove(&old);
            }
        }
        self.owner_order.push_back(id);
        self.owners.insert(id, Arc::clone(&owner));
        Some(owner)
    }
}

/// An event as the polling source builds it, marked as seen by the kernel
/// (`edr.source: event`) and as partial when its process was gone before
/// its program could be read.
fn event(origin: &Origin, ts: Timestamp, key: &SocketKey, t: &Tracked, phase: Phase) -> Event {
    let mut e = build_event(origin, ts, key, t, phase);
    let ext = e.edr.get_or_insert_with(Box::<EdrExt>::default);
    ext.source = Some("event");
    if t.owner.as_ref().is_some_and(|o| o.executable.is_none()) {
        ext.enrichment = Some("partial");
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A record laid out as `struct event` in conn.bpf.c.
    #[allow(clippy::too_many_arguments)]
    fn raw(
        kind: u8,
        oldstate: u8,
        direction: u8,
        v6: bool,
        local: ([u8; 16], u16),
        remote: ([u8; 16], u16),
        pid: u32,
        proc_start_ns: u64,
        times: (u64, u64),
    ) -> Vec<u8> {
        let mut b = vec![0u8; RECORD_LEN];
        b[0..8].copy_from_slice(&times.1.to_ne_bytes());
        b[8..16].copy_from_slice(&times.0.to_ne_bytes());
        b[16..24].copy_from_slice(&proc_start_ns.to_ne_bytes());
        b[24..28].copy_from_slice(&pid.to_ne_bytes());
        b[28..32].copy_from_slice(&0u32.to_ne_bytes());
        b[32] = kind;
        b[33] = oldstate;
        b[34] = if v6 { 6 } else { 4 };
        b[35] = direction;
        b[36..38].copy_from_slice(&local.1.to_ne_bytes());
        b[38..40].copy_from_slice(&remote.1.to_ne_bytes());
        b[40..56].copy_from_slice(&local.0);
        b[56..72].copy_from_slice(&remote.0);
        b[72..76].copy_from_slice(b"curl");
        b
    }

    fn mapped(a: [u8; 4]) -> [u8; 16] {
        Ipv4Addr::from(a).to_ipv6_mapped().octets()
    }

    /// Our own start in the kernel's terms: boot-time nanoseconds.
    fn own_start_ns() -> u64 {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
        let after = &stat[stat.rfind(')').expect("comm") + 2..];
        let ticks: u64 = after
            .split(' ')
            .nth(19)
            .expect("starttime")
            .parse()
            .expect("ticks");
        ticks * (1_000_000_000 / clock_ticks_per_sec().expect("hz"))
    }

    fn handle(h: &mut Handler, b: &[u8]) -> Vec<serde_json::Value> {
        let r = Record::parse(b).expect("parses");
        let mut out = Vec::new();
        h.record(&r, 0, &mut |e| {
            out.push(serde_json::to_value(&e).expect("json"))
        });
        out
    }

    #[test]
    fn a_connect_and_its_close_name_the_live_process_like_the_polling_source() {
        let (ctx, _rx) = CollectorContext::standalone(16);
        let mut h = Handler::new(&ctx, HashMap::new());
        let me = std::process::id();
        let start = own_start_ns();
        let local = (mapped([127, 0, 0, 1]), 40000);
        let remote = (mapped([127, 0, 0, 1]), 8080);
        let times = (5_000_000_000, 5_000_000_000);
        let opened = handle(
            &mut h,
            &raw(
                KIND_CONNECT,
                TCP_SYN_SENT,
                DIR_OUTBOUND,
                false,
                local,
                remote,
                me,
                start,
                times,
            ),
        );
        assert_eq!(opened.len(), 1);
        let e = &opened[0];
        assert_eq!(e["event"]["action"], "connection-opened");
        assert_eq!(e["network"]["direction"], "outbound");
        assert_eq!(e["network"]["transport"], "tcp");
        assert_eq!(e["network"]["type"], "ipv4");
        assert_eq!(e["source"]["ip"], "127.0.0.1");
        assert_eq!(e["source"]["port"], 40000);
        assert_eq!(e["destination"]["port"], 8080);
        assert_eq!(e["@timestamp"], "1970-01-01T00:00:05.000Z");
        assert_eq!(e["edr"]["source"], "event");
        assert_eq!(e["edr"]["socket_state"], "ESTABLISHED");
        assert_eq!(e["process"]["pid"], me);
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        assert_eq!(e["process"]["executable"], exe.to_str().expect("utf-8"));
        assert!(e["process"]["args"].is_array());
        let start_ms = crate::process::process_start_ms(me).expect("own start");
        assert_eq!(
            e["process"]["entity_id"],
            entity_id(&ctx.origin.host.name, me, start_ms)
        );
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(e["process"]["user"]["id"], uid.to_string());
        assert!(e["edr"].get("enrichment").is_none());

        let closed = handle(
            &mut h,
            &raw(
                KIND_CLOSE,
                6,
                DIR_OUTBOUND,
                false,
                local,
                remote,
                me,
                start,
                (5_000_000_000, 5_030_000_000),
            ),
        );
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0]["event"]["action"], "connection-closed");
        assert_eq!(closed[0]["event"]["duration"], 30_000_000);
        assert_eq!(closed[0]["edr"]["socket_state"], "TIME_WAIT");
        assert_eq!(closed[0]["process"]["entity_id"], e["process"]["entity_id"]);
    }

    #[test]
    fn a_gone_process_is_described_from_the_kernels_record() {
        let (ctx, _rx) = CollectorContext::standalone(16);
        let mut h = Handler::new(&ctx, HashMap::new());
        // A pid that is not running (beyond pid_max's usual range).
        let pid = 4_000_000_000;
        let local = (Ipv6Addr::LOCALHOST.octets(), 5353);
        let remote = (Ipv6Addr::LOCALHOST.octets(), 53);
        let out = handle(
            &mut h,
            &raw(
                KIND_UDP,
                0,
                DIR_OUTBOUND,
                true,
                local,
                remote,
                pid,
                12_000_000_000,
                (0, 13_000_000_000),
            ),
        );
        assert_eq!(out.len(), 1);
        let e = &out[0];
        assert_eq!(e["network"]["transport"], "udp");
        assert_eq!(e["network"]["type"], "ipv6");
        assert_eq!(e["destination"]["ip"], "::1");
        assert_eq!(e["destination"]["port"], 53);
        assert_eq!(e["process"]["pid"], pid);
        assert_eq!(e["process"]["name"], "curl");
        assert_eq!(e["process"]["user"]["id"], "0");
        assert_eq!(e["edr"]["enrichment"], "partial");
        let start_ms = start_ms_from_ticks(12 * clock_ticks_per_sec().expect("hz")).expect("ms");
        assert_eq!(
            e["process"]["entity_id"],
            entity_id(&ctx.origin.host.name, pid, start_ms)
        );
        assert!(e.get("edr").and_then(|x| x.get("socket_state")).is_none());
    }

    #[test]
    fn a_refused_connect_is_an_attempt_and_inventory_closes_match_by_address() {
        let (ctx, _rx) = CollectorContext::standalone(16);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let key = SocketKey {
            transport: Transport::Tcp,
            local: addr,
            remote: "0.0.0.0:0".parse().expect("addr"),
            inode: 7,
        };
        let t = Tracked {
            first_seen: Instant::now(),
            direction: Direction::Listen,
            state: Some("LISTEN"),
            owner: None,
            seen: 1,
        };
        let mut h = Handler::new(&ctx, HashMap::from([(key, t)]));
        let refused = handle(
            &mut h,
            &raw(
                KIND_CLOSE,
                TCP_SYN_SENT,
                DIR_OUTBOUND,
                false,
                (mapped([127, 0, 0, 1]), 41000),
                (mapped([127, 0, 0, 1]), 1),
                std::process::id(),
                own_start_ns(),
                (1_000_000, 2_000_000),
            ),
        );
        let actions: Vec<_> = refused
            .iter()
            .map(|e| e["event"]["action"].clone())
            .collect();
        assert_eq!(actions, ["connection-opened", "connection-closed"]);
        assert_eq!(refused[1]["edr"]["socket_state"], "SYN_SENT");

        let unknown = (mapped([10, 0, 0, 1]), 9);
        let none = handle(
            &mut h,
            &raw(KIND_CLOSE, 1, 0, false, unknown, unknown, 0, 0, (0, 1)),
        );
        assert!(none.is_empty(), "a close of nothing known says nothing");
        let ip = match addr.ip() {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(_) => unreachable!("bound to IPv4"),
        };
        let stopped = handle(
            &mut h,
            &raw(
                KIND_CLOSE,
                10,
                0,
                false,
                (mapped(ip), addr.port()),
                ([0; 16], 0),
                0,
                0,
                (0, 1),
            ),
        );
        assert_eq!(stopped.len(), 1);
        assert_eq!(stopped[0]["event"]["action"], "listen-stopped");
        assert_eq!(stopped[0]["source"]["port"], addr.port());
        assert!(h.inventory.is_empty());
    }

    #[test]
    fn short_records_are_refused() {
        assert!(Record::parse(&[0u8; RECORD_LEN - 1]).is_none());
    }

    /// The committed object is what the script builds from the committed
    /// source (needs clang, llvm and libbpf-dev: scripts/setup.sh).
    #[test]
    fn committed_bpf_object_is_current() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let out = tempfile::NamedTempFile::new().expect("temp");
        let status = std::process::Command::new("bash")
            .arg(root.join("scripts/build-bpf.sh"))
            .arg(out.path())
            .status()
            .expect("runs bash");
        assert!(
            status.success(),
            "scripts/build-bpf.sh failed (clang, llvm-strip and libbpf-dev are needed; \
             scripts/setup.sh installs them)"
        );
        let built = std::fs::read(out.path()).expect("built object");
        assert!(
            built == OBJECT,
            "crates/edr-collect/src/network/bpf/conn.bpf.o is stale: run scripts/build-bpf.sh \
             and commit it"
        );
    }
}
