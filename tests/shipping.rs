//! Shipping to NATS JetStream, against a real `nats-server` (Debian's 2.9,
//! installed by scripts/setup.sh) that each test starts on a free port with
//! its own store. A consumer written here reads the stream back and
//! compares it with the batch files: every event of every batch exactly
//! once, across broker crashes, outages and agent crashes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::agent::{write_config, Agent};
use common::nats::NatsServer;
use common::{test_config, touch_files, wait_for_async, wait_watching, watched};
use edr_config::{Config, ShipCompression};
use edr_engine::{EngineHandle, EngineOptions};
use edr_store::sink::ShipState;
use edr_store::{list_batches, open_batch_reader, seq_from_name};
use tokio_util::sync::CancellationToken;

/// One stored message, as a consumer sees it.
#[derive(Debug, Clone)]
struct Received {
    subject: String,
    msg_id: String,
    host: String,
    batch: u64,
    part: String,
    events: usize,
    /// The body, decompressed.
    body: Vec<u8>,
}

fn header(m: &async_nats::HeaderMap, name: &str) -> String {
    m.get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_else(|| panic!("header {name} missing"))
}

/// Every message of stream `EDR`, in stream order.
async fn read_stream(url: &str) -> Vec<Received> {
    read_stream_with(url, async_nats::ConnectOptions::new()).await
}

async fn read_stream_with(url: &str, opts: async_nats::ConnectOptions) -> Vec<Received> {
    let client = opts.connect(url).await.expect("consumer connects");
    let js = jetstream::new(client);
    let mut stream = js.get_stream("EDR").await.expect("the stream exists");
    let (messages, first, last) = {
        let st = &stream.info().await.expect("stream info").state;
        (st.messages, st.first_sequence, st.last_sequence)
    };
    let mut out = Vec::new();
    if messages == 0 {
        return out;
    }
    for seq in first..=last {
        let m = stream.get_raw_message(seq).await.expect("message");
        let gz = m.headers.get("Content-Encoding").map(|v| v.as_str()) == Some("gzip");
        let body = if gz {
            let mut raw = Vec::new();
            flate2::read::GzDecoder::new(&m.payload[..])
                .read_to_end(&mut raw)
                .expect("gzip body");
            raw
        } else {
            m.payload.to_vec()
        };
        out.push(Received {
            subject: m.subject.to_string(),
            msg_id: header(&m.headers, "Nats-Msg-Id"),
            host: header(&m.headers, "Edr-Host"),
            batch: header(&m.headers, "Edr-Batch-Seq").parse().expect("seq"),
            part: header(&m.headers, "Edr-Part"),
            events: header(&m.headers, "Edr-Events").parse().expect("events"),
            body,
        });
    }
    out
}

/// Batch files of a data dir by sequence: their NDJSON, decompressed.
fn batches_on_disk(data: &Path) -> BTreeMap<u64, Vec<u8>> {
    let mut out = BTreeMap::new();
    for p in list_batches(data).expect("list") {
        let seq = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(seq_from_name)
            .expect("a numbered batch");
        let mut raw = Vec::new();
        open_batch_reader(&p)
            .expect("open")
            .read_to_end(&mut raw)
            .expect("read");
        out.insert(seq, raw);
    }
    out
}

/// The stream holds every batch of `data` exactly once, its parts
/// reassembling the file byte for byte, with the right headers. Returns the
/// number of parts seen per batch.
fn assert_stream_matches(data: &Path, got: &[Received]) -> BTreeMap<u64, usize> {
    let agent_id = std::fs::read_to_string(data.join("agent.id"))
        .expect("agent.id")
        .trim()
        .to_string();
    let ids: BTreeSet<&str> = got.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids.len(), got.len(), "a message is in the stream twice");
    let mut parts: BTreeMap<u64, Vec<&Received>> = BTreeMap::new();
    for m in got.iter().filter(|m| m.subject.ends_with(".events")) {
        assert_eq!(m.msg_id, format!("{agent_id}-{}-{}", m.batch, m.part));
        assert_eq!(
            m.events,
            m.body.iter().filter(|b| **b == b'\n').count(),
            "Edr-Events of {}",
            m.msg_id
        );
        assert!(!m.host.is_empty());
        assert_eq!(m.subject, format!("edr.{}.events", m.host));
        parts.entry(m.batch).or_default().push(m);
    }
    let disk = batches_on_disk(data);
    assert!(!disk.is_empty(), "no batches were written");
    assert_eq!(
        parts.keys().copied().collect::<Vec<_>>(),
        disk.keys().copied().collect::<Vec<_>>(),
        "the batches shipped are the batches stored"
    );
    let mut counts = BTreeMap::new();
    for (seq, mut ps) in parts {
        ps.sort_by_key(|m| m.part.parse::<u64>().expect("a numbered part"));
        let numbers: Vec<u64> = ps.iter().map(|m| m.part.parse().expect("n")).collect();
        assert_eq!(
            numbers,
            (0..ps.len() as u64).collect::<Vec<_>>(),
            "parts of {seq}"
        );
        let joined: Vec<u8> = ps.iter().flat_map(|m| m.body.iter().copied()).collect();
        assert_eq!(joined, disk[&seq], "batch {seq} reassembled");
        counts.insert(seq, ps.len());
    }
    counts
}

fn ship_config(root: &Path, url: &str) -> Config {
    let mut c = test_config(root);
    c.agent.max_events_per_batch = 10;
    c.agent.collection_interval_ms = 300;
    c.shipping.nats.enabled = true;
    c.shipping.nats.url = vec![url.to_string()];
    // Long enough for a test to restart a broker or an agent.
    c.shipping.nats.shutdown_timeout_ms = 10_000;
    // The server reserves the stream's cap when it creates it, out of 75%
    // of the free disk: the default 10 GiB is refused on a fuller machine.
    c.shipping.nats.stream_max_gb = TEST_STREAM_GB;
    c
}

/// What test streams may hold; their tests write a few megabytes.
const TEST_STREAM_GB: f64 = 0.25;

fn start_shipping(c: Config) -> (EngineHandle, Arc<ShipState>) {
    let sink =
        edr_ship::NatsSink::new(c.shipping.nats.clone(), &c.data_dir(), "test-host").expect("sink");
    let state = sink.state();
    let opts = EngineOptions {
        sinks: vec![Box::new(sink)],
        ..EngineOptions::default()
    };
    let engine = EngineHandle::start(c, opts, CancellationToken::new()).expect("engine starts");
    (engine, state)
}

/// Waits until everything committed so far is acknowledged.
async fn wait_drained(state: &ShipState, what: &str) {
    // Loopback shipping takes milliseconds; 60 s covers the backoff after
    // an outage (at most one 60 s cap is never reached in these tests).
    let ok = wait_for_async(Duration::from_secs(60), || {
        let s = state.snapshot();
        (s.pending_batches == 0 && s.shipped_batches > 0).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "{what}: never drained: {:?}",
        state.snapshot()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_once_with_its_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(dir.path(), None);
    let c = ship_config(dir.path(), &server.url());
    let data = c.data_dir();
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "a", 45);
    wait_drained(&state, "normal shipping").await;
    let live = engine
        .snapshot()
        .shipping
        .expect("the engine reports shipping");
    assert!(live.connected && live.last_error.is_none(), "{live:?}");
    engine.shutdown().await;
    let got = read_stream(&server.url()).await;
    let parts = assert_stream_matches(&data, &got);
    assert!(parts.len() >= 3, "{parts:?}");
    let s = state.snapshot();
    assert_eq!(s.pending_batches, 0);
    assert_eq!(s.shipped_batches, parts.len() as u64);
    assert_eq!(s.duplicates, 0);
    // Stopped: no longer connected, and that is no error.
    assert!(!s.connected && s.last_error.is_none() && s.last_ack_ms.is_some());
    // The cursor is at the last batch, and gzip was used (the default).
    let cursor = edr_ship::read_cursor(&edr_ship::cursor_path(&data)).expect("cursor");
    assert_eq!(Some(&cursor), parts.keys().last());
    assert!(got.iter().all(|m| m.host == "test-host"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_lost_acknowledged_batches_is_reported_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(dir.path(), None);
    let c = ship_config(dir.path(), &server.url());
    let (engine, state) = start_shipping(c.clone());
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "before", 25);
    wait_drained(&state, "first run").await;
    engine.shutdown().await;
    // Idle restart against the intact stream: connected, nothing to say.
    let (engine, state) = start_shipping(c.clone());
    let up = wait_for_async(Duration::from_secs(20), || {
        state.snapshot().connected.then_some(())
    })
    .await;
    assert!(
        up.is_some(),
        "an idle sink never connected: {:?}",
        state.snapshot()
    );
    assert_eq!(state.snapshot().last_error, None);
    engine.shutdown().await;
    // The operator deletes the stream: what was acknowledged is gone.
    let js = jetstream::new(async_nats::connect(server.url()).await.expect("admin"));
    js.delete_stream("EDR").await.expect("delete stream");
    let (engine, state) = start_shipping(c);
    let warned = wait_for_async(Duration::from_secs(20), || {
        state
            .snapshot()
            .last_error
            .filter(|e| e.contains("lost by the server"))
    })
    .await;
    engine.shutdown().await;
    let warned = warned.unwrap_or_else(|| panic!("no warning: {:?}", state.snapshot()));
    assert!(warned.contains("up to 0"), "{warned}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_three_times_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = NatsServer::start(dir.path(), None);
    let c = ship_config(dir.path(), &server.url());
    let data = c.data_dir();
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    for round in 0..3 {
        touch_files(&watched(dir.path()), &format!("r{round}"), 30);
        // Mid-stream: some of this round's batches are acknowledged, some
        // not yet committed.
        let some = wait_for_async(Duration::from_secs(20), || {
            (state.snapshot().shipped_batches > 0).then_some(())
        })
        .await;
        assert!(some.is_some(), "round {round}: nothing shipped");
        server.kill();
        touch_files(&watched(dir.path()), &format!("down{round}"), 25);
        // Batches commit while the broker is down.
        tokio::time::sleep(Duration::from_millis(800)).await;
        server.launch();
    }
    wait_drained(&state, "after three broker crashes").await;
    engine.shutdown().await;
    let got = read_stream(&server.url()).await;
    assert_stream_matches(&data, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_grows_while_the_broker_is_down_then_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = NatsServer::new(dir.path(), None);
    let c = ship_config(dir.path(), &server.url());
    let data = c.data_dir();
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "offline", 40);
    let grew = wait_for_async(Duration::from_secs(20), || {
        let s = state.snapshot();
        (s.pending_batches >= 3 && s.last_error.is_some()).then_some(s)
    })
    .await
    .expect("pending grows while the broker is down");
    assert!(!grew.connected);
    assert_eq!(grew.shipped_batches, 0);
    assert!(grew.oldest_pending_ms.is_some() && grew.pending_bytes > 0);
    server.launch();
    wait_drained(&state, "after the broker came up").await;
    engine.shutdown().await;
    let got = read_stream(&server.url()).await;
    assert_stream_matches(&data, &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_outage_keeps_unshipped_data_within_its_cap_and_reports_the_gap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = NatsServer::new(dir.path(), None);
    let mut c = ship_config(dir.path(), &server.url());
    // About 3 KB: a few batches of 10 file events (gzip, ~0.5-1 KB each).
    c.shipping.nats.max_unshipped_gb = 3e-6;
    let cap = c.shipping.nats.max_unshipped_bytes();
    let data = c.data_dir();
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    for round in 0..6 {
        touch_files(&watched(dir.path()), &format!("o{round}"), 10);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let over = wait_for_async(Duration::from_secs(20), || {
        (engine.snapshot().totals.retention_deleted_files > 0).then_some(())
    })
    .await;
    assert!(over.is_some(), "the cap never deleted anything");
    let held: u64 = list_batches(&data)
        .expect("list")
        .iter()
        .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
        .sum();
    assert!(held <= cap, "{held} bytes unshipped, cap {cap}");
    server.launch();
    wait_drained(&state, "after the outage").await;
    engine.shutdown().await;
    let s = state.snapshot();
    let deleted = engine.snapshot().totals.retention_deleted_files;
    // Every batch deleted unshipped is reported as a gap, every other one
    // was shipped: together, every batch ever committed.
    assert_eq!(s.gaps, deleted, "{s:?}");
    let got = read_stream(&server.url()).await;
    let shipped = assert_stream_matches(&data, &got);
    let last = *shipped.keys().last().expect("something shipped");
    assert_eq!(s.shipped_batches + s.gaps, last, "{s:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_max_payload_is_split_and_reassembled() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Small enough that a batch of 40 file events (~ 600 bytes each) needs
    // several messages.
    let server = NatsServer::start(dir.path(), Some("max_payload: 4096\n"));
    let mut c = ship_config(dir.path(), &server.url());
    c.agent.max_events_per_batch = 40;
    c.agent.collection_interval_ms = 2000;
    c.shipping.nats.compression = ShipCompression::None;
    let data = c.data_dir();
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "big", 40);
    wait_drained(&state, "split batches").await;
    engine.shutdown().await;
    let got = read_stream(&server.url()).await;
    assert!(got.iter().all(|m| m.body.len() <= 4096));
    let parts = assert_stream_matches(&data, &got);
    assert!(
        parts.values().any(|n| *n > 2),
        "no batch was split: {parts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_less_storage_than_the_stream_asks_for_names_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(dir.path(), Some("jetstream {\n  max_file_store: 64MB\n}\n"));
    let mut c = ship_config(dir.path(), &server.url());
    c.shipping.nats.shutdown_timeout_ms = 1000;
    let data = c.data_dir();
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "no-room", 15);
    let err = wait_for_async(Duration::from_secs(20), || {
        state
            .snapshot()
            .last_error
            .filter(|e| e.contains("insufficient storage"))
    })
    .await;
    let err = err.unwrap_or_else(|| panic!("no storage error: {:?}", state.snapshot()));
    assert!(
        err.contains("shipping.nats.stream_max_gb")
            && err.contains(&format!("{TEST_STREAM_GB} GiB")),
        "the error does not say which setting to change: {err}"
    );
    let stopped = tokio::time::timeout(Duration::from_secs(15), engine.shutdown()).await;
    assert!(stopped.is_ok(), "the engine did not stop");
    let s = state.snapshot();
    assert_eq!(s.shipped_batches, 0);
    assert!(s.pending_batches > 0, "{s:?}");
    assert!(!batches_on_disk(&data).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_are_a_clear_status_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(
        dir.path(),
        Some("authorization {\n  user: edr\n  password: right-one\n}\n"),
    );
    let pw = dir.path().join("password");
    std::fs::write(&pw, "wrong-one\n").expect("password file");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let mut c = ship_config(dir.path(), &server.url());
    c.shipping.nats.user = Some("edr".to_string());
    c.shipping.nats.password_file = Some(pw.display().to_string());
    c.shipping.nats.shutdown_timeout_ms = 1000;
    c.validate().expect("a valid config");
    let data = c.data_dir();
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "denied", 15);
    let err = wait_for_async(Duration::from_secs(20), || {
        state
            .snapshot()
            .last_error
            .filter(|e| e.contains("authorization"))
    })
    .await;
    let err = err.unwrap_or_else(|| panic!("no authorization error: {:?}", state.snapshot()));
    assert!(err.contains(&server.url()), "{err}");
    // The engine goes on storing, and stops within the shutdown limit
    // (1 s) plus a margin for the final commit.
    let stopped = tokio::time::timeout(Duration::from_secs(15), engine.shutdown()).await;
    assert!(stopped.is_ok(), "the engine did not stop");
    let s = state.snapshot();
    assert_eq!(s.shipped_batches, 0);
    assert!(!s.connected);
    assert!(s.pending_batches > 0);
    assert!(!batches_on_disk(&data).is_empty());
    assert!(!edr_ship::cursor_path(&data).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_holds_the_cursor_and_drops_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(dir.path(), None);
    let js = jetstream::new(
        async_nats::connect(server.url())
            .await
            .expect("admin connects"),
    );
    // Room for two messages, then the server refuses new ones.
    let mut full = async_nats::jetstream::stream::Config {
        name: "EDR".to_string(),
        subjects: vec!["edr.>".to_string()],
        max_messages: 2,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        duplicate_window: Duration::from_secs(600),
        ..Default::default()
    };
    js.create_stream(full.clone()).await.expect("stream");
    let c = ship_config(dir.path(), &server.url());
    let data = c.data_dir();
    let cursor = edr_ship::cursor_path(&data);
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "full", 50);
    let held = wait_for_async(Duration::from_secs(20), || {
        let s = state.snapshot();
        (s.shipped_batches == 2 && s.pending_batches >= 2)
            .then_some(s)
            .filter(|s| {
                s.last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("maximum"))
            })
    })
    .await;
    let held =
        held.unwrap_or_else(|| panic!("the full stream was not reported: {:?}", state.snapshot()));
    // Refused, not lost: the connection stays up.
    assert!(held.connected, "{held:?}");
    let at = edr_ship::read_cursor(&cursor).expect("cursor");
    // The batches are numbered from 1: two acknowledged, the cursor there.
    assert_eq!(at, 2, "the cursor moved past a refused batch");
    full.max_messages = -1;
    js.update_stream(&full).await.expect("room again");
    wait_drained(&state, "after the stream had room again").await;
    engine.shutdown().await;
    assert_stream_matches(&data, &read_stream(&server.url()).await);
}

fn private_file(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_authenticates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(
        dir.path(),
        Some("authorization {\n  token: s3cret-token\n}\n"),
    );
    let token = dir.path().join("token");
    private_file(&token, "s3cret-token\n");
    let mut c = ship_config(dir.path(), &server.url());
    c.shipping.nats.token_file = Some(token.display().to_string());
    c.validate().expect("a valid config");
    let data = c.data_dir();
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "tok", 25);
    wait_drained(&state, "with a token").await;
    engine.shutdown().await;
    let opts = async_nats::ConnectOptions::with_token("s3cret-token".to_string());
    assert_stream_matches(&data, &read_stream_with(&server.url(), opts).await);
}

/// Runs openssl, panicking with its output if it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate,
/// all signed by the CA (P-256 keys).
fn make_certs(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=edr-test-ca",
    ]);
    openssl(dir, &ca);
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).expect("ext");
        let key = format!("{name}.key");
        let csr = format!("{name}.csr");
        let subj = format!("/CN=edr-test-{name}");
        let mut req = vec!["req"];
        req.extend(ec);
        req.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
        openssl(dir, &req);
        let pem = format!("{name}.pem");
        let extfile = format!("{name}.ext");
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &extfile,
            ],
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_and_a_client_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).expect("certs dir");
    make_certs(&certs);
    let p = |n: &str| certs.join(n).display().to_string();
    // verify: the server refuses clients without a certificate from the CA.
    let conf = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        p("server.pem"),
        p("server.key"),
        p("ca.pem")
    );
    let server = NatsServer::start(dir.path(), Some(&conf));
    let url = format!("tls://127.0.0.1:{}", server.port);
    let mut c = ship_config(dir.path(), &url);
    c.shipping.nats.tls.ca_file = Some(p("ca.pem"));
    c.shipping.nats.tls.cert_file = Some(p("client.pem"));
    c.shipping.nats.tls.key_file = Some(p("client.key"));
    c.validate().expect("a valid config");
    let data = c.data_dir();
    let (engine, state) = start_shipping(c);
    wait_watching(&engine).await;
    touch_files(&watched(dir.path()), "tls", 25);
    wait_drained(&state, "over TLS").await;
    engine.shutdown().await;
    let opts = async_nats::ConnectOptions::new()
        .require_tls(true)
        .add_root_certificates(certs.join("ca.pem"))
        .add_client_certificate(certs.join("client.pem"), certs.join("client.key"));
    assert_stream_matches(&data, &read_stream_with(&url, opts).await);
}

#[test]
fn an_agent_killed_and_restarted_resends_as_duplicates_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(dir.path(), None);
    let url = server.url();
    let config = write_config(dir.path(), |c| *c = ship_config(dir.path(), &url));
    let data = dir.path().join("data");
    let cursor = edr_ship::cursor_path(&data);

    let mut agent = Agent::spawn(&config, &data);
    agent.wait_watching();
    touch_files(&watched(dir.path()), "first", 40);
    agent.wait_status("four batches shipped", |s| {
        s.shipping.as_ref().is_some_and(|s| s.shipped_batches >= 4)
    });
    agent.sigkill();
    let at = edr_ship::read_cursor(&cursor).expect("cursor");
    assert!(at >= 4, "cursor at {at}");
    // The window a kill can hit: acknowledged but the cursor not yet
    // written. Putting the cursor back recreates it exactly.
    std::fs::write(&cursor, "1").expect("rewind cursor");

    let mut agent = Agent::spawn(&config, &data);
    agent.wait_watching();
    let s = agent.wait_status("the resent batches acknowledged as duplicates", |s| {
        s.shipping
            .as_ref()
            .is_some_and(|s| s.duplicates >= at - 1 && s.pending_batches == 0)
    });
    let sh = s.shipping.expect("shipping status");
    assert_eq!(
        sh.shipped_batches,
        at - 1,
        "only the rewound batches were resent"
    );
    let out = common::agent::bin()
        .args(["status", "--data-dir"])
        .arg(&data)
        .output()
        .expect("status runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("shipping:"))
        .unwrap_or_else(|| panic!("no shipping line: {text}"));
    assert!(
        line.contains("connected") && line.contains("duplicates"),
        "{line}"
    );
    touch_files(&watched(dir.path()), "second", 20);
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    let got = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(read_stream(&url));
    assert_stream_matches(&data, &got);
}

#[test]
fn status_shows_what_is_pending_and_the_lag_alert_fires_then_clears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = NatsServer::new(dir.path(), None);
    let url = server.url();
    let config = write_config(dir.path(), |c| {
        *c = ship_config(dir.path(), &url);
        c.alerts.max_ship_lag_s = 1;
    });
    let data = dir.path().join("data");
    let mut agent = Agent::spawn(&config, &data);
    agent.wait_watching();
    touch_files(&watched(dir.path()), "queued", 30);
    let s = agent.wait_status("the lag alert while the broker is down", |s| {
        s.alerts
            .iter()
            .any(|a| a.kind == edr_metrics::AlertKind::ShipLag)
    });
    let sh = s.shipping.expect("shipping status");
    assert!(
        sh.pending_batches > 0 && sh.oldest_pending_ms.is_some(),
        "{sh:?}"
    );
    let out = common::agent::cli(&["status"], &data);
    let text = common::agent::stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("shipping:"))
        .unwrap_or_else(|| panic!("no shipping line: {text}"));
    assert!(line.contains("error: cannot connect"), "{line}");
    assert!(
        line.contains("pending (") && line.contains("old)"),
        "{line}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ALERT:") && l.contains("shipping is")),
        "{text}"
    );
    server.launch();
    agent.wait_status("drained, the alert cleared", |s| {
        s.shipping
            .as_ref()
            .is_some_and(|sh| sh.pending_batches == 0 && sh.shipped_batches > 0)
            && !s
                .alerts
                .iter()
                .any(|a| a.kind == edr_metrics::AlertKind::ShipLag)
    });
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    // The history has the shipping columns: pending while down, shipped
    // after, with the lag that raised the alert.
    let header = {
        let day = std::fs::read_dir(data.join(edr_metrics::METRICS_DIR))
            .expect("metrics dir")
            .next()
            .expect("a day file")
            .expect("entry")
            .path();
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(std::fs::File::open(day).expect("open"))
            .read_to_string(&mut text)
            .expect("gunzip");
        text.lines().next().expect("header").to_string()
    };
    for col in [
        "ship_pending_batches",
        "ship_pending_bytes",
        "ship_shipped_batches",
        "ship_shipped_events",
        "ship_gaps",
        "ship_lag_ms",
    ] {
        assert!(header.contains(col), "{header}");
    }
    let rows = edr_metrics::read_history(&data, edr_model::event::Timestamp(0));
    let ship: Vec<_> = rows.iter().filter_map(|r| r.ship).collect();
    assert!(ship.len() >= 3, "{} rows with shipping", ship.len());
    assert!(ship
        .iter()
        .any(|s| s.pending_batches > 0 && s.lag_ms > 1000));
    let last = ship.last().expect("rows");
    assert!(
        last.shipped_batches > 0 && last.pending_batches == 0,
        "{last:?}"
    );
}
