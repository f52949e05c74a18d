//! Network collector: TCP and UDP sockets (IPv4 and IPv6) with their owning
//! process, as `start` / `end` events.
//!
//! Every `scan_interval_ms` the platform lister (`linux.rs`: netlink
//! sock_diag; `macos.rs`: `lsof`) returns the live sockets, and a
//! [`Tracker`] diffs them against the previous scan. The first scan is the
//! inventory (`event.kind: state`). Polling means a connection shorter than
//! the interval can be missed; what is seen is seen with its owner. Scans
//! that find no change stretch the interval up to `max_scan_interval_ms`
//! ([`AdaptiveInterval`]); a change brings it back.
//!
//! Scans run on the blocking pool: the scan state is moved into
//! `spawn_blocking` and handed back, so nothing is shared or locked.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::adaptive::AdaptiveInterval;
use crate::CollectorContext;
use edr_config::{NetworkMonitorConfig, NetworkSource};
use edr_model::event::{
    Action, EdrExt, Endpoint, Event, EventMeta, Network, Origin, Process, Timestamp, User,
};
use edr_pipeline::{Counters, EventTx};

#[cfg(target_os = "linux")]
mod ebpf;
#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
use linux as platform;

#[cfg(any(target_os = "macos", test))]
mod lsof;
#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
use macos as platform;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
compile_error!("the network collector supports Linux and macOS only");

/// Scan failures are counted every time but logged at most this often, so a
/// persistent failure does not flood the log at the scan rate.
const WARN_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

/// What identifies one socket across scans. The inode tells apart sockets
/// that reuse the same addresses (a reconnect between two scans).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SocketKey {
    transport: Transport,
    local: SocketAddr,
    remote: SocketAddr,
    inode: u64,
}

/// The process that holds a socket open.
#[derive(Debug, PartialEq)]
struct Owner {
    pid: u32,
    name: String,
    entity_id: String,
    start: Option<Timestamp>,
    /// What rules match a connection's program on (Sigma's `Image`).
    executable: Option<String>,
    /// Already redacted.
    args: Vec<String>,
    /// Effective user (`process.user`).
    user: Option<OwnerUser>,
}

#[derive(Debug, PartialEq)]
struct OwnerUser {
    id: u32,
    name: Option<String>,
}

/// One socket as a platform lister reports it.
#[derive(Debug, Clone)]
struct Socket {
    key: SocketKey,
    /// The kernel's address family. An IPv4 peer of a dual-stack listener
    /// lives in an IPv6 socket (as `::ffff:a.b.c.d`), and direction must be
    /// matched against listeners of the socket's own family.
    ipv6_family: bool,
    /// TCP state name; UDP has none worth reporting.
    state: Option<&'static str>,
    owner: Option<Arc<Owner>>,
}

impl Socket {
    /// A TCP listener, or a UDP socket with no fixed peer (it receives from
    /// anyone on its port).
    fn is_listener(&self) -> bool {
        match self.key.transport {
            Transport::Tcp => self.state == Some("LISTEN"),
            Transport::Udp => self.key.remote.port() == 0,
        }
    }

    /// A TCP connection on its way out: closed by one side or both.
    fn is_closing(&self) -> bool {
        matches!(
            self.state,
            Some("FIN_WAIT1" | "FIN_WAIT2" | "TIME_WAIT" | "CLOSE_WAIT" | "LAST_ACK" | "CLOSING")
        )
    }

    fn port_key(&self) -> PortKey {
        (self.key.transport, self.ipv6_family, self.key.local.port())
    }
}

type PortKey = (Transport, bool, u16);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Listen,
    Inbound,
    Outbound,
}

struct Tracked {
    first_seen: Instant,
    direction: Direction,
    state: Option<&'static str>,
    owner: Option<Arc<Owner>>,
    /// The scan that last saw this socket; older ones have closed.
    seen: u64,
}

/// Remembers the sockets of the last scan and turns the next scan into
/// events.
struct Tracker {
    origin: Origin,
    live: HashMap<SocketKey, Tracked>,
    /// Ports with a listener in the current scan, to tell inbound
    /// connections from outbound ones.
    listening: HashSet<PortKey>,
    scans: u64,
}

impl Tracker {
    fn new(origin: Origin) -> Tracker {
        Tracker {
            origin,
            live: HashMap::new(),
            listening: HashSet::new(),
            scans: 0,
        }
    }

    /// Diffs one scan against the previous one. The first scan reports every
    /// socket as inventory; later scans report opened and closed ones.
    fn update(
        &mut self,
        sockets: &[Socket],
        now: Instant,
        ts: Timestamp,
        emit: &mut dyn FnMut(Event),
    ) {
        let first = self.scans == 0;
        self.scans += 1;
        let scan = self.scans;
        self.listening.clear();
        self.listening.extend(
            sockets
                .iter()
                .filter(|s| s.is_listener())
                .map(Socket::port_key),
        );
        let mut by_peers: Option<HashMap<(Transport, SocketAddr, SocketAddr), u64>> = None;
        for s in sockets {
            if let Some(t) = self.live.get_mut(&s.key) {
                t.seen = scan;
                t.state = s.state;
                continue;
            }
            if self.adopt_accepted(s, scan) || self.adopt_orphaned(s, scan, &mut by_peers) {
                continue;
            }
            let direction = if s.is_listener() {
                Direction::Listen
            } else if self.listening.contains(&s.port_key()) {
                Direction::Inbound
            } else {
                Direction::Outbound
            };
            let tracked = Tracked {
                first_seen: now,
                direction,
                state: s.state,
                owner: s.owner.clone(),
                seen: scan,
            };
            let phase = if first {
                Phase::Inventory
            } else {
                Phase::Opened
            };
            emit(build_event(&self.origin, ts, &s.key, &tracked, phase));
            self.live.insert(s.key, tracked);
        }
        let origin = &self.origin;
        self.live.retain(|key, t| {
            if t.seen == scan {
                return true;
            }
            let lived = now.saturating_duration_since(t.first_seen);
            emit(build_event(origin, ts, key, t, Phase::Closed(lived)));
            false
        });
        // Keep a burst of sockets from pinning its memory for good.
        self.live.shrink_to(self.live.len() * 2);
    }

    /// A connection its program has closed loses its inode and lingers in
    /// a closing state (FIN_WAIT, TIME_WAIT, ...): the same connection, not
    /// a new one, so it keeps its owner and first sighting and takes the
    /// new key. `by_peers` indexes the live sockets by address, built on
    /// the first closing socket of a scan.
    fn adopt_orphaned(
        &mut self,
        s: &Socket,
        scan: u64,
        by_peers: &mut Option<HashMap<(Transport, SocketAddr, SocketAddr), u64>>,
    ) -> bool {
        if s.key.inode != 0 || !s.is_closing() {
            return false;
        }
        let index = by_peers.get_or_insert_with(|| {
            self.live
                .keys()
                .filter(|k| k.inode != 0)
                .map(|k| ((k.transport, k.local, k.remote), k.inode))
                .collect()
        });
        let Some(inode) = index.remove(&(s.key.transport, s.key.local, s.key.remote)) else {
            return false;
        };
        let held = SocketKey { inode, ..s.key };
        match self.live.remove(&held) {
            Some(mut t) => {
                t.seen = scan;
                t.state = s.state;
                self.live.insert(s.key, t);
                true
            }
            None => false,
        }
    }

    /// A connection seen in the accept queue had no inode yet (Linux gives
    /// it one when the server accepts it): the same connection, not a new
    /// one, so it keeps its first sighting and takes the new key.
    fn adopt_accepted(&mut self, s: &Socket, scan: u64) -> bool {
        if s.key.inode == 0 {
            return false;
        }
        let pending = SocketKey { inode: 0, ..s.key };
        match self.live.remove(&pending) {
            Some(mut t) if t.seen != scan => {
                t.seen = scan;
                t.state = s.state;
                if s.owner.is_some() {
                    t.owner.clone_from(&s.owner);
                }
                self.live.insert(s.key, t);
                true
            }
            Some(t) => {
                self.live.insert(pending, t);
                false
            }
            None => false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    Inventory,
    Opened,
    Closed(Duration),
}

fn meta(direction: Direction, phase: Phase) -> EventMeta {
    const NETWORK: &[&str] = &["network"];
    let listener = direction == Direction::Listen;
    let (kind, types, action, duration): (_, &'static [&'static str], _, _) = match phase {
        Phase::Inventory => (
            "state",
            &["info"],
            if listener {
                Action::Listening
            } else {
                Action::Connected
            },
            None,
        ),
        Phase::Opened if listener => ("event", &["start"], Action::ListenStarted, None),
        Phase::Opened => (
            "event",
            &["start", "connection"],
            Action::ConnectionOpened,
            None,
        ),
        Phase::Closed(d) => {
            let nanos = Some(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            if listener {
                ("event", &["end"], Action::ListenStopped, nanos)
            } else {
                (
                    "event",
                    &["end", "connection"],
                    Action::ConnectionClosed,
                    nanos,
                )
            }
        }
    };
    EventMeta {
        kind,
        category: NETWORK,
        types,
        action,
        duration,
        severity: None,
        risk_score: None,
    }
}

fn endpoint(addr: &SocketAddr) -> Endpoint {
    Endpoint {
        ip: addr.ip().to_canonical(),
        port: addr.port(),
    }
}

fn build_event(
    origin: &Origin,
    ts: Timestamp,
    key: &SocketKey,
    t: &Tracked,
    phase: Phase,
) -> Event {
    let mut e = Event::new(origin, ts, meta(t.direction, phase));
    let local = endpoint(&key.local);
    let remote = endpoint(&key.remote);
    let kind = if local.ip.is_ipv4() || (local.ip.is_unspecified() && remote.ip.is_ipv4()) {
        "ipv4"
    } else {
        "ipv6"
    };
    let direction = match t.direction {
        Direction::Listen => {
            e.source = Some(local);
            "unknown"
        }
        Direction::Inbound => {
            e.source = Some(remote);
            e.destination = Some(local);
            "inbound"
        }
        Direction::Outbound => {
            e.source = Some(local);
            e.destination = Some(remote);
            "outbound"
        }
    };
    e.network = Some(Network {
        transport: key.transport.as_str(),
        kind,
        direction,
    });
    e.process = t.owner.as_deref().map(|o| {
        Box::new(Process {
            pid: o.pid,
            name: o.name.clone(),
            entity_id: o.entity_id.clone(),
            start: o.start,
            executable: o.executable.clone(),
            args: o.args.clone(),
            command_line: (!o.args.is_empty()).then(|| o.args.join(" ")),
            user: o.user.as_ref().map(|u| User {
                id: Some(u.id.to_string()),
                name: u.name.clone(),
            }),
            ..Process::default()
        })
    });
    if t.state.is_some() {
        e.edr = Some(Box::new(EdrExt {
            socket_state: t.state,
            ..EdrExt::default()
        }));
    }
    e
}

/// Lets a warning through at most once per [`WARN_EVERY`], counting the ones
/// held back so the next warning can say how many there were.
struct WarnLimiter {
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    /// `Some(suppressed)` when a warning may be logged now.
    fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < WARN_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// How long the inventory may wait for room in the queue, in all.
const INVENTORY_PATIENCE: Duration = Duration::from_secs(10);

/// Everything one scan needs; moved onto the blocking pool and back.
struct ScanState {
    lister: Option<platform::Lister>,
    host_name: String,
    sockets: Vec<Socket>,
    tracker: Tracker,
    tx: EventTx,
    counters: Arc<Counters>,
    cancel: CancellationToken,
    warn: WarnLimiter,
}

impl ScanState {
    fn new(ctx: &CollectorContext) -> ScanState {
        ScanState {
            lister: None,
            host_name: ctx.origin.host.name.clone(),
            sockets: Vec::new(),
            tracker: Tracker::new(ctx.origin.clone()),
            tx: ctx.tx.clone(),
            counters: Arc::clone(&ctx.counters),
            cancel: ctx.cancel.clone(),
            warn: WarnLimiter {
                last: None,
                suppressed: 0,
            },
        }
    }

    /// One scan; returns how many changes it reported.
    fn scan(&mut self) -> usize {
        let started = Instant::now();
        if let Err(e) = self.list() {
            self.counters
                .scan_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(suppressed) = self.warn.allow(started) {
                tracing::warn!(error = %e, suppressed, "network scan failed");
            }
            return 0;
        }
        // A scan that outlived a cancellation must not report into the
        // next collector's run.
        if self.cancel.is_cancelled() {
            return 0;
        }
        let tx = &self.tx;
        let cancel = &self.cancel;
        // The first scan reports every open socket at once; on a busy
        // server that is tens of thousands, more than the queue holds, so
        // it waits for room (it runs where blocking is allowed). Later
        // scans report changes as they come, dropping and counting what
        // does not fit.
        let patient = (self.tracker.scans == 0).then(|| started + INVENTORY_PATIENCE);
        let mut changes = 0;
        self.tracker
            .update(&self.sockets, Instant::now(), Timestamp::now(), &mut |e| {
                changes += 1;
                match patient {
                    Some(deadline) if !cancel.is_cancelled() => tx.send_by(e, deadline),
                    _ => tx.send(e),
                };
            });
        tracing::debug!(
            sockets = self.sockets.len(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "network scan"
        );
        self.sockets.shrink_to(self.sockets.len() * 2);
        changes
    }

    fn list(&mut self) -> Result<(), platform::ScanError> {
        let lister = match &mut self.lister {
            Some(l) => l,
            None => self.lister.insert(platform::Lister::new(&self.host_name)?),
        };
        self.sockets.clear();
        lister.list(&mut self.sockets)
    }
}

/// Runs the network collector until `ctx.cancel` fires: kernel events
/// where `source` allows and the system permits, else polling.
pub async fn run(cfg: NetworkMonitorConfig, ctx: CollectorContext) {
    let why_polling = match cfg.source {
        NetworkSource::Scan => None,
        NetworkSource::Auto | NetworkSource::Event => match run_events(&ctx).await {
            None => return,
            Some(reason) if cfg.source == NetworkSource::Event => {
                record_unavailable(&ctx, &reason);
                ctx.cancel.cancelled().await;
                return;
            }
            Some(reason) => Some(reason),
        },
    };
    record_polling(&ctx, &cfg, why_polling.as_deref());
    poll(cfg, ctx).await;
}

/// The kernel event source until cancelled (None), or why it could not
/// start or stopped.
#[cfg(target_os = "linux")]
async fn run_events(ctx: &CollectorContext) -> Option<String> {
    // The reader stops on this token, which also fires if this task is
    // dropped without being cancelled, so it never outlives it.
    let cancel = ctx.cancel.child_token();
    let _stop_reader = cancel.clone().drop_guard();
    let c = ctx.clone();
    let opened = tokio::task::spawn_blocking(move || {
        let probe = ebpf::open()?;
        // The inventory: one scan of what is open now. Its closes are
        // matched by address later.
        let mut state = ScanState::new(&c);
        state.scan();
        let handler = ebpf::Handler::new(&c, std::mem::take(&mut state.tracker.live));
        Ok::<_, String>((probe, handler))
    })
    .await
    .unwrap_or_else(|e| Err(format!("starting the eBPF source panicked: {e}")));
    let (probe, handler) = match opened {
        Ok(x) => x,
        Err(reason) => return Some(reason),
    };
    if ctx.cancel.is_cancelled() {
        return None;
    }
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let token = cancel.clone();
    let spawned = std::thread::Builder::new()
        .name("edr-net-events".into())
        .spawn(move || {
            let _ = done_tx.send(ebpf::read_loop(probe, handler, token));
        });
    if let Err(e) = spawned {
        return Some(format!("cannot start the eBPF reader: {e}"));
    }
    {
        tracing::info!("connections from eBPF");
        let mut cov = crate::coverage(ctx);
        cov.network_source = Some(ebpf::SOURCE.to_string());
        cov.network_note = Some(
            "TCP connects, accepts, listens and closes and UDP sends to new peers as the kernel \
             makes them, with their process; one sock_diag scan took the inventory at start"
                .to_string(),
        );
    }
    // The reader sees the cancellation within 100 ms; waiting for it keeps
    // a restarted collector from running beside it.
    match done_rx.await {
        Ok(None) => None,
        Ok(Some(reason)) if !ctx.cancel.is_cancelled() => {
            Some(format!("the eBPF source stopped: {reason}"))
        }
        Ok(Some(_)) => None,
        Err(_) => Some("the eBPF reader panicked".to_string()),
    }
}

#[cfg(not(target_os = "linux"))]
async fn run_events(_: &CollectorContext) -> Option<String> {
    Some("no kernel connection events on this platform".to_string())
}

/// Polling, by choice or because events are unavailable (`why`).
fn record_polling(ctx: &CollectorContext, cfg: &NetworkMonitorConfig, why: Option<&str>) {
    let period = if cfg.max_scan_interval_ms > cfg.scan_interval_ms {
        format!("{}-{} ms", cfg.scan_interval_ms, cfg.max_scan_interval_ms)
    } else {
        format!("{} ms", cfg.scan_interval_ms)
    };
    let polling =
        format!("polling every {period}: connections shorter than the interval can be missed");
    let note = match why {
        Some(why) => {
            tracing::warn!("connection events unavailable ({why}); {polling}");
            format!("connection events unavailable ({why}); {polling}")
        }
        None => polling,
    };
    let mut cov = crate::coverage(ctx);
    cov.network_source = Some(platform::SOURCE.to_string());
    cov.network_note = Some(note);
}

/// `source: event` without events: nothing is recorded, and status says so.
fn record_unavailable(ctx: &CollectorContext, why: &str) {
    tracing::error!(
        "connection events unavailable ({why}) and polling is off \
         (collectors.network_monitor.source: event): no connections are recorded"
    );
    let mut cov = crate::coverage(ctx);
    cov.network_source = Some("none".to_string());
    cov.network_note = Some(format!(
        "connection events unavailable ({why}) and polling is off (source: event): \
         no connections are recorded"
    ));
}

/// Polls the socket table until `ctx.cancel` fires.
async fn poll(cfg: NetworkMonitorConfig, ctx: CollectorContext) {
    let mut pace = AdaptiveInterval::from_millis(cfg.scan_interval_ms, cfg.max_scan_interval_ms);
    let mut state = ScanState::new(&ctx);
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            biased;
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep_until(next) => {}
        }
        let started = tokio::time::Instant::now();
        let job = tokio::task::spawn_blocking(move || {
            let changes = state.scan();
            (state, changes)
        });
        tokio::select! {
            biased;
            // The scan in flight finishes on the blocking pool, sees the
            // cancellation and drops its state there.
            _ = ctx.cancel.cancelled() => return,
            done = job => match done {
                Ok((s, changes)) => {
                    state = s;
                    next = started + pace.after_scan(changes);
                }
                Err(e) => {
                    tracing::error!(error = %e, "network scan panicked; network collection stopped");
                    return;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv6Addr};

    fn owner() -> Arc<Owner> {
        Arc::new(Owner {
            pid: 42,
            name: "srv".to_string(),
            entity_id: "00000000000000aa".to_string(),
            start: Some(Timestamp(1_000)),
            executable: Some("/usr/sbin/srv".to_string()),
            args: vec!["srv".to_string(), "--port=1".to_string()],
            user: Some(OwnerUser {
                id: 0,
                name: Some("root".to_string()),
            }),
        })
    }

    fn tcp(local: &str, remote: &str, inode: u64, state: &'static str) -> Socket {
        let local: SocketAddr = local.parse().expect("addr");
        Socket {
            key: SocketKey {
                transport: Transport::Tcp,
                local,
                remote: remote.parse().expect("addr"),
                inode,
            },
            ipv6_family: local.is_ipv6(),
            state: Some(state),
            owner: Some(owner()),
        }
    }

    fn run_scan(t: &mut Tracker, sockets: &[Socket], now: Instant) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        t.update(sockets, now, Timestamp(5_000), &mut |e| {
            out.push(serde_json::to_value(&e).expect("serializes"))
        });
        out
    }

    #[test]
    fn first_scan_is_inventory_then_changes_are_events() {
        let mut t = Tracker::new(Origin::detect());
        let t0 = Instant::now();
        let listener = tcp("0.0.0.0:8080", "0.0.0.0:0", 1, "LISTEN");
        let inv = run_scan(&mut t, std::slice::from_ref(&listener), t0);
        assert_eq!(inv.len(), 1);
        assert_eq!(inv[0]["event"]["kind"], "state");
        assert_eq!(inv[0]["event"]["type"], serde_json::json!(["info"]));
        assert_eq!(inv[0]["network"]["direction"], "unknown");

        let inbound = tcp("127.0.0.1:8080", "127.0.0.1:50000", 2, "ESTABLISHED");
        let outbound = tcp("127.0.0.1:50000", "127.0.0.1:8080", 3, "ESTABLISHED");
        let both = [listener.clone(), inbound.clone(), outbound.clone()];
        let opened = run_scan(&mut t, &both, t0);
        assert_eq!(opened.len(), 2);
        for e in &opened {
            assert_eq!(e["event"]["kind"], "event");
            assert_eq!(e["event"]["action"], "connection-opened");
            assert_eq!(
                e["event"]["type"],
                serde_json::json!(["start", "connection"])
            );
            assert_eq!(e["source"]["port"], 50000, "{e}");
            assert_eq!(e["destination"]["port"], 8080, "{e}");
        }
        let dirs: Vec<_> = opened
            .iter()
            .map(|e| e["network"]["direction"].clone())
            .collect();
        assert_eq!(dirs, ["inbound", "outbound"]);

        // Unchanged scan: nothing to say.
        assert!(run_scan(&mut t, &both, t0).is_empty());

        let later = t0 + Duration::from_millis(1500);
        let closed = run_scan(&mut t, std::slice::from_ref(&listener), later);
        assert_eq!(closed.len(), 2);
        for e in &closed {
            assert_eq!(e["event"]["action"], "connection-closed");
            assert_eq!(e["event"]["type"], serde_json::json!(["end", "connection"]));
            assert_eq!(e["event"]["duration"], 1_500_000_000u64);
            assert_eq!(e["process"]["pid"], 42);
            assert_eq!(e["process"]["executable"], "/usr/sbin/srv");
            assert_eq!(e["process"]["args"], serde_json::json!(["srv", "--port=1"]));
            assert_eq!(e["process"]["command_line"], "srv --port=1");
            assert_eq!(e["edr"]["socket_state"], "ESTABLISHED");
        }

        let gone = run_scan(&mut t, &[], later);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0]["event"]["action"], "listen-stopped");
        assert_eq!(gone[0]["source"]["port"], 8080);
        assert!(gone[0].get("destination").is_none());
    }

    #[test]
    fn same_addresses_with_a_new_inode_is_a_new_connection() {
        let mut t = Tracker::new(Origin::detect());
        let now = Instant::now();
        run_scan(&mut t, &[], now);
        let a = tcp("10.0.0.1:40000", "10.0.0.2:443", 7, "ESTABLISHED");
        let b = tcp("10.0.0.1:40000", "10.0.0.2:443", 8, "ESTABLISHED");
        assert_eq!(run_scan(&mut t, std::slice::from_ref(&a), now).len(), 1);
        let actions: Vec<_> = run_scan(&mut t, std::slice::from_ref(&b), now)
            .iter()
            .map(|e| e["event"]["action"].clone())
            .collect();
        assert_eq!(actions, ["connection-opened", "connection-closed"]);
    }

    #[test]
    fn accepting_a_queued_connection_does_not_reopen_it() {
        let mut t = Tracker::new(Origin::detect());
        let now = Instant::now();
        let listener = tcp("127.0.0.1:8080", "0.0.0.0:0", 1, "LISTEN");
        run_scan(&mut t, std::slice::from_ref(&listener), now);
        let mut queued = tcp("127.0.0.1:8080", "127.0.0.1:50000", 0, "ESTABLISHED");
        queued.owner = None;
        let accepted = tcp("127.0.0.1:8080", "127.0.0.1:50000", 5, "ESTABLISHED");
        assert_eq!(run_scan(&mut t, &[listener.clone(), queued], now).len(), 1);
        assert!(run_scan(&mut t, &[listener.clone(), accepted], now).is_empty());
        let later = now + Duration::from_secs(2);
        let closed = run_scan(&mut t, &[listener], later);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0]["event"]["duration"], 2_000_000_000u64);
        assert_eq!(closed[0]["process"]["pid"], 42, "owner learnt on accept");
    }

    #[test]
    fn a_closed_connection_lingering_without_inode_is_the_same_connection() {
        let mut t = Tracker::new(Origin::detect());
        let now = Instant::now();
        run_scan(&mut t, &[], now);
        let mut est = tcp("10.0.0.1:40000", "10.0.0.2:443", 7, "ESTABLISHED");
        est.owner = Some(Arc::new(Owner {
            pid: 42,
            name: "curl".into(),
            entity_id: "e".into(),
            start: None,
            executable: None,
            args: Vec::new(),
            user: None,
        }));
        assert_eq!(run_scan(&mut t, &[est], now).len(), 1);
        // Closed by curl: inode 0, TIME_WAIT. Not a second connection.
        let tw = tcp("10.0.0.1:40000", "10.0.0.2:443", 0, "TIME_WAIT");
        assert!(run_scan(&mut t, &[tw], now).is_empty());
        let closed = run_scan(&mut t, &[], now);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0]["event"]["action"], "connection-closed");
        assert_eq!(closed[0]["edr"]["socket_state"], "TIME_WAIT");
        assert_eq!(closed[0]["process"]["pid"], 42, "owner kept");
    }

    #[test]
    fn a_short_connection_first_seen_closing_is_recorded() {
        let mut t = Tracker::new(Origin::detect());
        let now = Instant::now();
        run_scan(&mut t, &[], now);
        let tw = tcp("10.0.0.1:40001", "10.0.0.2:443", 0, "TIME_WAIT");
        let opened = run_scan(&mut t, &[tw], now);
        assert_eq!(opened.len(), 1);
        assert_eq!(opened[0]["event"]["action"], "connection-opened");
        assert_eq!(opened[0]["edr"]["socket_state"], "TIME_WAIT");
        let cw = tcp("10.0.0.1:40002", "10.0.0.2:443", 9, "CLOSE_WAIT");
        assert_eq!(
            run_scan(&mut t, &[cw], now).len(),
            2,
            "one closed, one opened"
        );
    }

    #[test]
    fn state_changes_do_not_reopen_and_end_reports_last_state() {
        let mut t = Tracker::new(Origin::detect());
        let now = Instant::now();
        run_scan(&mut t, &[], now);
        let syn = tcp("10.0.0.1:40000", "10.0.0.2:443", 7, "SYN_SENT");
        let est = tcp("10.0.0.1:40000", "10.0.0.2:443", 7, "ESTABLISHED");
        assert_eq!(
            run_scan(&mut t, &[syn], now)[0]["edr"]["socket_state"],
            "SYN_SENT"
        );
        assert!(run_scan(&mut t, &[est], now).is_empty());
        assert_eq!(
            run_scan(&mut t, &[], now)[0]["edr"]["socket_state"],
            "ESTABLISHED"
        );
    }

    #[test]
    fn mapped_ipv4_peer_of_dual_stack_listener_is_inbound_ipv4() {
        let mut t = Tracker::new(Origin::detect());
        let now = Instant::now();
        let listener = tcp("[::]:22", "[::]:0", 1, "LISTEN");
        run_scan(&mut t, std::slice::from_ref(&listener), now);
        let accepted = tcp(
            "[::ffff:127.0.0.1]:22",
            "[::ffff:127.0.0.1]:51000",
            2,
            "ESTABLISHED",
        );
        let e = &run_scan(&mut t, &[listener, accepted], now)[0];
        assert_eq!(e["network"]["direction"], "inbound");
        assert_eq!(e["network"]["type"], "ipv4");
        assert_eq!(e["source"]["ip"], "127.0.0.1");
        assert_eq!(e["destination"]["port"], 22);
    }

    #[test]
    fn listener_of_the_other_family_does_not_make_a_connection_inbound() {
        let mut t = Tracker::new(Origin::detect());
        let now = Instant::now();
        let v6_listener = tcp("[::1]:9000", "[::]:0", 1, "LISTEN");
        let v4_conn = tcp("127.0.0.1:9000", "127.0.0.1:9999", 2, "ESTABLISHED");
        let events = run_scan(&mut t, &[v6_listener, v4_conn], now);
        assert_eq!(events[1]["network"]["direction"], "outbound");
        assert_eq!(events[1]["network"]["type"], "ipv4");
    }

    #[test]
    fn udp_without_peer_is_a_listener_and_unowned_sockets_still_report() {
        let mut t = Tracker::new(Origin::detect());
        let now = Instant::now();
        run_scan(&mut t, &[], now);
        let bound = Socket {
            key: SocketKey {
                transport: Transport::Udp,
                local: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 5353),
                remote: SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
                inode: 9,
            },
            ipv6_family: true,
            state: None,
            owner: None,
        };
        let e = &run_scan(&mut t, &[bound], now)[0];
        assert_eq!(e["event"]["action"], "listen-started");
        assert_eq!(e["event"]["type"], serde_json::json!(["start"]));
        assert_eq!(e["network"]["transport"], "udp");
        assert_eq!(e["network"]["type"], "ipv6");
        assert_eq!(e["network"]["direction"], "unknown");
        assert_eq!(e["source"]["ip"], "::1");
        assert!(e.get("process").is_none());
        assert!(e.get("edr").is_none());
    }

    #[test]
    fn warnings_are_rate_limited_and_count_what_was_held_back() {
        let mut w = WarnLimiter {
            last: None,
            suppressed: 0,
        };
        let t0 = Instant::now();
        assert_eq!(w.allow(t0), Some(0));
        assert_eq!(w.allow(t0 + Duration::from_secs(1)), None);
        assert_eq!(w.allow(t0 + Duration::from_secs(30)), None);
        assert_eq!(w.allow(t0 + Duration::from_secs(61)), Some(2));
    }
}
