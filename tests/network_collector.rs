//! The network collector against real sockets on the loopback interface:
//! what a SIEM would see for a listener, a connection and a UDP socket
//! owned by this test process.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edr_collect::{network, Coverage};
use edr_config::{NetworkMonitorConfig, NetworkSource};
use edr_pipeline::Counters;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(10);

struct Collector {
    rt: tokio::runtime::Runtime,
    rx: edr_pipeline::EventRx,
    cancel: CancellationToken,
    coverage: Arc<Mutex<Coverage>>,
    counters: Arc<Counters>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Collector {
    fn start() -> Collector {
        let common::Harness { rt, rx, ctx } = common::harness();
        let (counters, coverage, cancel) = (
            Arc::clone(&ctx.counters),
            Arc::clone(&ctx.coverage),
            ctx.cancel.clone(),
        );
        let cfg = NetworkMonitorConfig {
            enabled: true,
            scan_interval_ms: 100,
            max_scan_interval_ms: 100,
            // These tests are of the polling source; tests/network_ebpf.rs
            // has the eBPF one's.
            source: NetworkSource::Scan,
        };
        let task = Some(rt.spawn(network::run(cfg, ctx)));
        Collector {
            rt,
            rx,
            cancel,
            coverage,
            counters,
            task,
        }
    }

    /// Reads events until each predicate has matched one, in any order;
    /// returns the matches in predicate order.
    fn wait_all(&self, what: &str, preds: &[&dyn Fn(&Value) -> bool]) -> Vec<Value> {
        let end = Instant::now() + DEADLINE;
        let mut found: Vec<Option<Value>> = vec![None; preds.len()];
        while found.iter().any(Option::is_none) {
            let left = end.saturating_duration_since(Instant::now());
            let event = self
                .rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("timed out waiting for {what}; found {found:#?}"));
            let v = serde_json::to_value(&event).expect("serializes");
            for (slot, pred) in found.iter_mut().zip(preds) {
                if slot.is_none() && pred(&v) {
                    *slot = Some(v);
                    break;
                }
            }
        }
        found.into_iter().flatten().collect()
    }

    fn wait(&self, what: &str, pred: &dyn Fn(&Value) -> bool) -> Value {
        self.wait_all(what, &[pred]).remove(0)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(DEADLINE, task).await });
        }
    }
}

fn is_ours(v: &Value) -> bool {
    v["process"]["pid"] == std::process::id()
}

fn action(v: &Value) -> &str {
    v["event"]["action"].as_str().unwrap_or_default()
}

fn own_comm() -> String {
    std::fs::read_to_string("/proc/self/comm")
        .expect("comm")
        .trim_end()
        .to_string()
}

#[test]
fn tcp_listener_and_its_connections_start_and_end() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let c = Collector::start();

    let listening = c.wait("inventory of our listener", &|v| {
        action(v) == "listening" && v["source"]["port"] == port
    });
    assert_eq!(listening["event"]["kind"], "state");
    assert_eq!(
        listening["event"]["category"],
        serde_json::json!(["network"])
    );
    assert_eq!(listening["event"]["type"], serde_json::json!(["info"]));
    assert_eq!(listening["network"]["transport"], "tcp");
    assert_eq!(listening["network"]["type"], "ipv4");
    assert_eq!(listening["network"]["direction"], "unknown");
    assert_eq!(listening["source"]["ip"], "127.0.0.1");
    assert_eq!(listening["edr"]["socket_state"], "LISTEN");
    assert!(is_ours(&listening), "{listening}");
    assert_eq!(listening["process"]["name"], own_comm().as_str());
    let entity = listening["process"]["entity_id"]
        .as_str()
        .expect("entity_id");
    assert_eq!(entity.len(), 16);

    let mut client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    client.write_all(b"hello").expect("write");
    let client_port = client.local_addr().expect("addr").port();
    let between = |v: &Value, dir: &str| {
        is_ours(v)
            && v["network"]["direction"] == dir
            && v["source"]["port"] == client_port
            && v["destination"]["port"] == port
    };
    let opened = c.wait_all(
        "both ends of the connection",
        &[
            &|v| action(v) == "connection-opened" && between(v, "outbound"),
            &|v| action(v) == "connection-opened" && between(v, "inbound"),
        ],
    );
    for e in &opened {
        assert_eq!(e["event"]["kind"], "event");
        assert_eq!(
            e["event"]["type"],
            serde_json::json!(["start", "connection"])
        );
        assert_eq!(e["edr"]["socket_state"], "ESTABLISHED");
        assert_eq!(e["destination"]["ip"], "127.0.0.1");
        assert!(is_ours(e), "{e}");
        assert_eq!(e["process"]["entity_id"], entity);
        assert!(e["event"].get("duration").is_none());
    }

    drop(client);
    drop(server);
    let closed = c.wait_all(
        "both ends closed",
        &[
            &|v| action(v) == "connection-closed" && between(v, "outbound"),
            &|v| action(v) == "connection-closed" && between(v, "inbound"),
        ],
    );
    for e in &closed {
        assert_eq!(e["event"]["type"], serde_json::json!(["end", "connection"]));
        assert!(is_ours(e), "{e}");
        let nanos = e["event"]["duration"].as_u64().expect("duration");
        assert!(nanos > 0, "{e}");
    }

    drop(listener);
    let stopped = c.wait("listener stopped", &|v| {
        action(v) == "listen-stopped" && v["source"]["port"] == port
    });
    assert_eq!(stopped["event"]["type"], serde_json::json!(["end"]));
    assert!(stopped["event"]["duration"].as_u64().expect("duration") > 0);
    assert!(is_ours(&stopped));

    assert_eq!(
        c.coverage.lock().expect("lock").network_source.as_deref(),
        Some("netlink sock_diag")
    );
    assert_eq!(
        c.counters
            .scan_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// Rules match a connection on the program behind it: the owner's
/// executable and command line, not only its pid and name.
#[test]
fn a_connection_names_the_program_that_made_it() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let c = Collector::start();
    // A connection made after the first scan: an event, not inventory.
    c.wait("inventory of our listener", &|v| {
        action(v) == "listening" && v["source"]["port"] == port
    });
    let client = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let client_port = client.local_addr().expect("addr").port();
    let (server, _) = listener.accept().expect("accept");
    let opened = c.wait("our outbound connection", &|v| {
        action(v) == "connection-opened"
            && v["network"]["direction"] == "outbound"
            && v["source"]["port"] == client_port
    });
    drop((client, server));
    assert!(is_ours(&opened), "{opened}");
    let exe = std::fs::canonicalize(std::env::current_exe().expect("own path"))
        .expect("canonical own path");
    assert_eq!(
        opened["process"]["executable"].as_str(),
        exe.to_str(),
        "{opened}"
    );
    let args: Vec<String> = std::env::args().collect();
    let args = edr_model::redact::redact_args(&args);
    assert_eq!(
        opened["process"]["args"],
        serde_json::json!(args),
        "{opened}"
    );
    assert_eq!(
        opened["process"]["command_line"].as_str(),
        Some(args.join(" ").as_str())
    );
}

#[test]
fn udp_sockets_show_up_bound_and_connected() {
    let bound = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = bound.local_addr().expect("addr").port();
    let c = Collector::start();

    let inventory = c.wait("inventory of our UDP socket", &|v| {
        v["network"]["transport"] == "udp" && v["source"]["port"] == port
    });
    assert_eq!(inventory["event"]["kind"], "state");
    assert_eq!(inventory["network"]["direction"], "unknown");
    assert!(is_ours(&inventory), "{inventory}");
    assert!(inventory.get("edr").is_none(), "UDP has no TCP state");

    let peer = UdpSocket::bind("127.0.0.1:0").expect("bind");
    peer.connect(("127.0.0.1", port)).expect("connect");
    let peer_port = peer.local_addr().expect("addr").port();
    let opened = c.wait("connected UDP socket", &|v| {
        action(v) == "connection-opened" && v["source"]["port"] == peer_port
    });
    assert_eq!(opened["network"]["transport"], "udp");
    assert_eq!(opened["network"]["direction"], "outbound");
    assert_eq!(opened["destination"]["port"], port);
    assert!(is_ours(&opened), "{opened}");

    drop(peer);
    drop(bound);
    c.wait_all(
        "both UDP sockets closed",
        &[
            &|v| action(v) == "connection-closed" && v["source"]["port"] == peer_port,
            &|v| action(v) == "listen-stopped" && v["source"]["port"] == port,
        ],
    );
}

#[test]
fn ipv6_loopback_and_dual_stack_listeners() {
    // Hosts without IPv6 loopback have nothing to show here.
    let Ok(listener) = TcpListener::bind("[::1]:0") else {
        return;
    };
    let port = listener.local_addr().expect("addr").port();
    let c = Collector::start();
    c.wait("inventory of our IPv6 listener", &|v| {
        action(v) == "listening" && v["source"]["port"] == port && v["source"]["ip"] == "::1"
    });

    let client = TcpStream::connect(("::1", port)).expect("connect");
    let (_server, _) = listener.accept().expect("accept");
    let client_port = client.local_addr().expect("addr").port();
    let inbound = c.wait("inbound IPv6 connection", &|v| {
        action(v) == "connection-opened"
            && v["network"]["direction"] == "inbound"
            && v["source"]["port"] == client_port
    });
    assert_eq!(inbound["network"]["type"], "ipv6");
    assert_eq!(inbound["source"]["ip"], "::1");
    assert_eq!(inbound["destination"]["port"], port);
    assert!(is_ours(&inbound));

    // An IPv4 client of a dual-stack listener is reported as IPv4, not as
    // its IPv4-mapped IPv6 form.
    let dual = TcpListener::bind("[::]:0").expect("bind");
    let dual_port = dual.local_addr().expect("addr").port();
    let Ok(v4_client) = TcpStream::connect(("127.0.0.1", dual_port)) else {
        return; // IPV6_V6ONLY is the host default
    };
    let (_v4_server, _) = dual.accept().expect("accept");
    let v4_port = v4_client.local_addr().expect("addr").port();
    let mapped = c.wait("IPv4 peer of a dual-stack listener", &|v| {
        action(v) == "connection-opened"
            && v["network"]["direction"] == "inbound"
            && v["source"]["port"] == v4_port
    });
    assert_eq!(mapped["network"]["type"], "ipv4");
    assert_eq!(mapped["source"]["ip"], "127.0.0.1");
    assert_eq!(mapped["destination"]["ip"], "127.0.0.1");
    assert_eq!(mapped["destination"]["port"], dual_port);
}

#[test]
fn stops_when_cancelled() {
    let mut c = Collector::start();
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    c.wait("inventory of our listener", &|v| {
        v["source"]["port"] == port
    });
    c.cancel.cancel();
    let task = c.task.take().expect("running");
    let finished =
        c.rt.block_on(async { tokio::time::timeout(DEADLINE, task).await });
    assert!(matches!(finished, Ok(Ok(()))), "{finished:?}");
}

/// A connection that closed between two scans lingers in a closing state
/// (the side that closed first stays in TIME_WAIT for a minute), so a
/// polling scan still records it. Before closing states were listed, a
/// 1 s scan saw almost none of these.
#[test]
fn short_connections_of_short_processes_are_recorded_by_polling() {
    const CONNECTIONS: usize = 20;
    let common::Harness { rt, rx, ctx } = common::harness();
    let cancel = ctx.cancel.clone();
    let cfg = NetworkMonitorConfig {
        enabled: true,
        scan_interval_ms: 1000,
        max_scan_interval_ms: 1000,
        source: NetworkSource::Scan,
    };
    let task = rt.spawn(network::run(cfg, ctx));
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // The server reads to the end before it closes, so the client closes
    // first and its side is the one left in TIME_WAIT.
    let server = std::thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            let (mut s, _) = listener.accept().expect("accept");
            let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
        }
    });
    // Let the first scan (the inventory) pass, so these are new.
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..CONNECTIONS {
        let status = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}; exec 3>&-"))
            .status()
            .expect("bash runs");
        assert!(status.success());
    }
    server.join().expect("server");
    // Every connection is over before a scan can see it open. Three scan
    // intervals and the agent's queue are far inside TIME_WAIT's minute;
    // 20 s is the margin for a loaded machine.
    let mut seen = std::collections::HashSet::new();
    let end = Instant::now() + Duration::from_secs(20);
    while seen.len() < CONNECTIONS {
        let left = end.saturating_duration_since(Instant::now());
        let Ok(event) = rx.recv_timeout(left) else {
            break;
        };
        let v = serde_json::to_value(&event).expect("serializes");
        if v["event"]["action"] == "connection-opened"
            && v["destination"]["port"] == port
            && v["network"]["direction"] == "outbound"
        {
            seen.insert(v["source"]["port"].as_u64().expect("source port"));
        }
    }
    cancel.cancel();
    rt.block_on(task).expect("collector");
    assert_eq!(seen.len(), CONNECTIONS, "recorded {seen:?}");
}

/// The first scan reports every socket open at start in one burst; on a
/// busy server that is more than the event queue holds. The scan waits
/// for room instead of dropping (for up to 10 s in all), so an agent
/// started there still records every connection that was open. Here a
/// queue of 256 and 2,000 connections in TIME_WAIT: without the wait,
/// most of them were dropped before the reader, 0.5 s late, began.
#[test]
fn an_inventory_larger_than_the_queue_is_stored_whole() {
    const QUEUE: usize = 256;
    const SOCKETS: usize = 2000;
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    // The side that closes first keeps its end in TIME_WAIT for a minute,
    // with no descriptor: every scan lists it.
    let mut ports = std::collections::HashSet::new();
    for _ in 0..SOCKETS {
        let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        ports.insert(c.local_addr().expect("addr").port());
        let (s, _) = listener.accept().expect("accept");
        drop(c);
        drop(s);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (ctx, rx) = edr_collect::CollectorContext::standalone(QUEUE);
    let (counters, cancel) = (Arc::clone(&ctx.counters), ctx.cancel.clone());
    let cfg = NetworkMonitorConfig {
        enabled: true,
        // One scan: the inventory.
        scan_interval_ms: 60_000,
        max_scan_interval_ms: 60_000,
        source: NetworkSource::Scan,
    };
    rt.spawn(network::run(cfg, ctx));
    // The scan fills the queue before anything reads it.
    std::thread::sleep(Duration::from_millis(500));
    let mut seen = std::collections::HashSet::new();
    let end = Instant::now() + DEADLINE;
    while !ports.is_subset(&seen) && Instant::now() < end {
        let Ok(e) = rx.recv_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let v = serde_json::to_value(&e).expect("serializes");
        if action(&v) == "connected" && v["destination"]["port"] == port {
            if let Some(p) = v["source"]["port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
            {
                seen.insert(p);
            }
        }
    }
    cancel.cancel();
    let dropped = counters.dropped.get(edr_model::event::EventType::Network);
    let missing = ports.difference(&seen).count();
    assert_eq!(
        (missing, dropped),
        (0, 0),
        "{missing} of {} TIME_WAIT connections not in the inventory, {dropped} network events \
         dropped",
        ports.len()
    );
}
