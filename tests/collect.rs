//! `edr-agent collect`: real agents ship to a real `nats-server`, the real
//! collector writes a central data dir, and `edr-agent events` there must
//! return what each agent stored, event by event, also across collector
//! crashes.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::agent::{bin, cli, stdout, write_config, Agent, Launch};
use common::nats::NatsServer;
use common::root::require_root_because;
use common::{read_events, test_config, touch_files, wait_for, watched};
use edr_store::{list_batches, open_batch_reader, seq_from_name};

/// Batches of a data dir by sequence: (file name, NDJSON decompressed).
fn batches(data: &Path) -> BTreeMap<u64, (String, Vec<u8>)> {
    let mut out = BTreeMap::new();
    for p in list_batches(data).expect("list") {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a name")
            .to_string();
        let seq = seq_from_name(&name).expect("a numbered batch");
        let mut raw = Vec::new();
        open_batch_reader(&p)
            .expect("open")
            .read_to_end(&mut raw)
            .expect("read");
        out.insert(seq, (name, raw));
    }
    out
}

fn batch_count(data: &Path) -> usize {
    list_batches(data).map_or(0, |l| l.len())
}

/// An agent config in `root` that ships to `url` in small batches.
fn agent_config(root: &Path, url: &str) -> PathBuf {
    write_config(root, |c| {
        *c = test_config(root);
        c.agent.max_events_per_batch = 10;
        c.agent.collection_interval_ms = 300;
        c.shipping.nats.enabled = true;
        c.shipping.nats.url = vec![url.to_string()];
        c.shipping.nats.shutdown_timeout_ms = 30_000;
        // The server reserves the stream's cap out of 75% of the free
        // disk: the default 10 GiB is refused on a fuller machine.
        c.shipping.nats.stream_max_gb = 0.25;
    })
}

/// Stops an agent with SIGTERM: it commits its open batch and ships what
/// is pending before it exits. Returns its data dir, everything shipped.
fn stop_shipped(agent: Agent) -> PathBuf {
    let data = agent.data.clone();
    let (status, log) = agent.stop();
    assert!(status.success(), "{log}");
    let cursor = edr_ship::read_cursor(&edr_ship::cursor_path(&data)).expect("cursor");
    let last = *batches(&data).keys().last().expect("batches stored");
    assert_eq!(cursor, last, "not everything shipped before exit: {log}");
    data
}

/// A running `edr-agent collect`, its log in a file.
struct Collect {
    child: Child,
    log: PathBuf,
}

impl Collect {
    fn spawn(url: &str, central: &Path, log: &Path) -> Collect {
        let file = std::fs::File::create(log).expect("log file");
        let child = bin()
            .args(["collect", "--log", "info", "--nats", url, "--data-dir"])
            .arg(central)
            .stdout(Stdio::piped())
            .stderr(file)
            .spawn()
            .expect("collect starts");
        Collect {
            child,
            log: log.to_path_buf(),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(code)) = self.child.try_wait() {
            panic!("collect exited with {code}: {}", self.log());
        }
    }

    fn sigkill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns its summary line.
    fn stop(mut self) -> String {
        // SAFETY: kill(2) on our own child.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let mut out = String::new();
        if let Some(mut o) = self.child.stdout.take() {
            o.read_to_string(&mut out).expect("stdout");
        }
        let status = self.child.wait().expect("collect exits");
        assert!(status.success(), "collect failed: {}", self.log());
        out
    }
}

impl Drop for Collect {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the central host dir holds as many batches as `data`.
fn wait_collected(c: &mut Collect, host_dir: &Path, data: &Path) {
    let want = batch_count(data);
    // Delivery is immediate; what a kill left unacknowledged comes back
    // after the consumer's 30 s ack wait. 120 s covers a loaded machine.
    let done = wait_for(Duration::from_secs(120), || {
        c.assert_alive();
        (batch_count(host_dir) >= want).then_some(())
    });
    assert!(
        done.is_some(),
        "{} of {want} batches collected in {}: {}",
        batch_count(host_dir),
        host_dir.display(),
        c.log()
    );
}

/// The central copy of a host is the agent's store: the same files (name,
/// sequence, content), and `edr-agent events` on it prints the agent's
/// events, in order, each once.
fn assert_same_store(agent_data: &Path, host_dir: &Path) {
    let mine = batches(agent_data);
    let central = batches(host_dir);
    assert_eq!(
        mine.keys().collect::<Vec<_>>(),
        central.keys().collect::<Vec<_>>(),
        "batch numbers of {}",
        host_dir.display()
    );
    for (seq, (name, body)) in &mine {
        let (cname, cbody) = &central[seq];
        assert_eq!(name, cname, "file name of batch {seq}");
        assert!(
            body == cbody,
            "content of batch {seq} in {}",
            host_dir.display()
        );
    }
    let out = cli(&["events"], host_dir);
    assert!(out.status.success(), "{}", common::agent::stderr(&out));
    let got: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("NDJSON"))
        .collect();
    let want = read_events(agent_data);
    assert!(!want.is_empty());
    assert_eq!(got.len(), want.len(), "events of {}", host_dir.display());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "event {i} of {}", host_dir.display());
    }
}

#[test]
fn two_agents_collected_into_one_central_dir() {
    require_root_because(
        "two agents with host names of their own",
        "each runs in a UTS namespace",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(dir.path(), None);
    let url = server.url();
    let central = dir.path().join("central");
    let mut collect = Collect::spawn(&url, &central, &dir.path().join("collect.log"));
    let hosts = ["alpha-01", "beta-02"];
    let mut datas = Vec::new();
    for (i, name) in hosts.into_iter().enumerate() {
        let root = dir.path().join(name);
        std::fs::create_dir_all(&root).expect("agent root");
        let config = agent_config(&root, &url);
        let how = Launch {
            host_name: Some(name),
            ..Launch::default()
        };
        let mut agent = Agent::launch(&config, &root.join("data"), how);
        agent.wait_watching();
        touch_files(&watched(&root), name, 30 + 15 * i);
        // Let the watcher see them before the stop commits the batch.
        agent.wait_status("its files stored", |s| {
            s.totals.stored.iter().sum::<u64>() >= (30 + 15 * i) as u64
        });
        datas.push(stop_shipped(agent));
    }
    // Something on the subjects that is not a batch part: refused, once,
    // and nothing written for it.
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(&url).await.expect("connect"));
            js.publish("edr.mallory.events", "not a batch".into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        });
    for (name, data) in hosts.iter().zip(&datas) {
        let host_dir = central.join("hosts").join(name);
        wait_collected(&mut collect, &host_dir, data);
        assert_same_store(data, &host_dir);
        // The events name their machine: the UTS namespace took.
        let events = read_events(&host_dir);
        assert!(events
            .iter()
            .all(|e| e["host"]["name"].as_str() == Some(name)));
        let stats = cli(&["stats", "--summary"], &host_dir);
        assert!(stats.status.success(), "{}", common::agent::stderr(&stats));
    }
    let mut names: Vec<String> = std::fs::read_dir(central.join("hosts"))
        .expect("hosts dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, hosts);
    let refused = wait_for(Duration::from_secs(30), || {
        collect.log().contains("not a batch part").then_some(())
    });
    assert!(refused.is_some(), "{}", collect.log());
    let summary = collect.stop();
    let total: usize = datas.iter().map(|d| batch_count(d)).sum();
    assert!(
        summary.starts_with(&format!("collected {total} batches")),
        "{summary}"
    );
    assert!(summary.contains(", 1 messages rejected"), "{summary}");
}

#[test]
fn a_collector_killed_mid_stream_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = NatsServer::start(dir.path(), None);
    let url = server.url();
    let config = agent_config(dir.path(), &url);
    let mut agent = Agent::spawn(&config, &dir.path().join("data"));
    agent.wait_watching();
    // A backlog of well over a hundred batches: the collector needs a
    // while to write them one fsync after another, so a kill as soon as
    // it has written something lands in the middle.
    touch_files(&watched(dir.path()), "backlog", 1500);
    agent.wait_status("the backlog stored", |s| {
        s.totals.stored.iter().sum::<u64>() >= 1500
    });
    let data = stop_shipped(agent);
    let total = batch_count(&data);
    assert!(total >= 150, "{total} batches");
    let host = edr_ship::sanitize_host(&edr_model::event::Host::detect().name);
    let central = dir.path().join("central");
    let host_dir = central.join("hosts").join(&host);
    let mut mid_stream_kills = 0;
    for round in 0..4 {
        let before = batch_count(&host_dir);
        if before >= total {
            break;
        }
        let mut c = Collect::spawn(&url, &central, &dir.path().join(format!("c{round}.log")));
        let moved = wait_for(Duration::from_secs(60), || {
            c.assert_alive();
            (batch_count(&host_dir) > before).then_some(())
        });
        assert!(
            moved.is_some(),
            "round {round}: nothing collected: {}",
            c.log()
        );
        c.sigkill();
        if batch_count(&host_dir) < total {
            mid_stream_kills += 1;
        }
    }
    assert!(
        mid_stream_kills >= 1,
        "no kill landed mid-stream ({total} batches)"
    );
    let mut c = Collect::spawn(&url, &central, &dir.path().join("final.log"));
    wait_collected(&mut c, &host_dir, &data);
    let summary = c.stop();
    assert!(summary.contains("0 messages rejected"), "{summary}");
    assert_same_store(&data, &host_dir);
    // Nothing half-written is left behind (the killed runs' temporaries
    // are removed when the dir is opened again).
    assert!(common::agent::temporaries(&host_dir).is_empty());
}
