//! The standard mixed workload: processes started and ended, file churn in
//! a watched directory, TCP connections on 127.0.0.1, each at a set rate
//! and each paced against the clock (not slept between), so a slow moment
//! is caught up and a run of N seconds generates N x rate of each.

use std::collections::VecDeque;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// Name of the program the workload starts: a copy of `sleep`, so its
/// events are told apart from everything else on the machine.
pub const PROC_NAME: &str = "edr-bench-proc";
/// How long each started process lives: longer than a 1 s scan interval,
/// so a scan sees every one (polling cannot see shorter ones reliably).
pub const PROC_LIFE_S: &str = "1.5";
/// How long each file lives before it is deleted.
const FILE_LIFE: Duration = Duration::from_secs(1);
/// How long each connection stays open: longer than the network scan
/// interval while connections come and go.
const CONN_HOLD: Duration = Duration::from_millis(2500);

/// Events per second of each kind.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub processes: f64,
    pub files: f64,
    pub connections: f64,
}

/// The seed's activity levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Level {
    /// Nothing generated: the machine's own background only.
    Idle,
    /// Normal desktop use: a process, five files and a connection a second.
    Light,
    /// A machine under load: 20 processes, 200 files, 50 connections a second.
    Heavy,
}

impl Level {
    pub fn rates(self) -> Rates {
        match self {
            Level::Idle => Rates {
                processes: 0.0,
                files: 0.0,
                connections: 0.0,
            },
            Level::Light => Rates {
                processes: 1.0,
                files: 5.0,
                connections: 1.0,
            },
            Level::Heavy => Rates {
                processes: 20.0,
                files: 200.0,
                connections: 50.0,
            },
        }
    }
}

/// What the workload did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Generated {
    pub processes: u64,
    pub files_created: u64,
    pub files_deleted: u64,
    pub connections: u64,
}

/// A running workload.
pub struct Load {
    stop: Arc<AtomicBool>,
    procs: Option<JoinHandle<u64>>,
    files: Option<JoinHandle<(u64, u64)>>,
    conns: Option<JoinHandle<u64>>,
    acceptor: Option<JoinHandle<()>>,
    pub port: u16,
}

impl Load {
    /// Starts the generators. `proc_exe` is the program to start (see
    /// [`install_proc`]); files churn in `dir`.
    pub fn start(rates: Rates, dir: &Path, proc_exe: &Path) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot listen on 127.0.0.1")?;
        let port = listener.local_addr()?.port();
        let acceptor = (rates.connections > 0.0)
            .then(|| {
                listener.set_nonblocking(true)?;
                let stop = Arc::clone(&stop);
                anyhow::Ok(std::thread::spawn(move || accept_loop(&listener, &stop)))
            })
            .transpose()?;
        let procs = (rates.processes > 0.0).then(|| {
            let (stop, exe) = (Arc::clone(&stop), proc_exe.to_path_buf());
            std::thread::spawn(move || process_loop(rates.processes, &exe, &stop))
        });
        let files = (rates.files > 0.0).then(|| {
            let (stop, dir) = (Arc::clone(&stop), dir.to_path_buf());
            std::thread::spawn(move || file_loop(rates.files, &dir, &stop))
        });
        let conns = (rates.connections > 0.0).then(|| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || connect_loop(rates.connections, port, &stop))
        });
        Ok(Load {
            stop,
            procs,
            files,
            conns,
            acceptor,
            port,
        })
    }

    /// Stops the generators; every process has exited, every file is
    /// deleted and every connection closed when this returns (each having
    /// lived its full time).
    pub fn stop(self) -> Generated {
        self.stop.store(true, Relaxed);
        let mut g = Generated::default();
        if let Some(h) = self.procs {
            g.processes = h.join().unwrap_or(0);
        }
        if let Some(h) = self.files {
            (g.files_created, g.files_deleted) = h.join().unwrap_or((0, 0));
        }
        if let Some(h) = self.conns {
            g.connections = h.join().unwrap_or(0);
        }
        if let Some(h) = self.acceptor {
            let _ = h.join();
        }
        g
    }
}

/// Copies `sleep` to `<dir>/edr-bench-proc`.
pub fn install_proc(dir: &Path) -> anyhow::Result<PathBuf> {
    let sleep = ["/usr/bin/sleep", "/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("no sleep program to start")?;
    let exe = dir.join(PROC_NAME);
    std::fs::copy(sleep, &exe).with_context(|| format!("cannot copy {sleep}"))?;
    Ok(exe)
}

/// Sleeps until the `i`th tick of a `rate`-per-second clock; false once
/// stopped.
fn pace(start: Instant, i: u64, rate: f64, stop: &AtomicBool) -> bool {
    let due = start + Duration::from_secs_f64(i as f64 / rate);
    loop {
        if stop.load(Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= due {
            return true;
        }
        std::thread::sleep((due - now).min(Duration::from_millis(50)));
    }
}

fn process_loop(rate: f64, exe: &Path, stop: &AtomicBool) -> u64 {
    let start = Instant::now();
    let mut children: VecDeque<Child> = VecDeque::new();
    let mut started = 0;
    while pace(start, started, rate, stop) {
        match Command::new(exe)
            .arg(PROC_LIFE_S)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => {
                children.push_back(c);
                started += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "workload could not start a process");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        while let Some(c) = children.front_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                break;
            }
            children.pop_front();
        }
    }
    for mut c in children {
        let _ = c.wait();
    }
    started
}

fn file_loop(rate: f64, dir: &Path, stop: &AtomicBool) -> (u64, u64) {
    let start = Instant::now();
    let mut live: VecDeque<(Instant, PathBuf)> = VecDeque::new();
    let (mut created, mut deleted) = (0u64, 0u64);
    let delete = |path: &Path, deleted: &mut u64| {
        if std::fs::remove_file(path).is_ok() {
            *deleted += 1;
        }
    };
    while pace(start, created, rate, stop) {
        let path = dir.join(format!("bench-{created}.txt"));
        let body = format!("workload line {created}: the quick brown fox\n").repeat(16);
        if std::fs::write(&path, body).is_ok() {
            live.push_back((Instant::now(), path));
        }
        created += 1;
        while live.front().is_some_and(|(t, _)| t.elapsed() >= FILE_LIFE) {
            if let Some((_, p)) = live.pop_front() {
                delete(&p, &mut deleted);
            }
        }
    }
    for (_, p) in live {
        delete(&p, &mut deleted);
    }
    (created, deleted)
}

fn connect_loop(rate: f64, port: u16, stop: &AtomicBool) -> u64 {
    let start = Instant::now();
    let mut open: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    let mut made = 0u64;
    let mut tick = 0u64;
    while pace(start, tick, rate, stop) {
        tick += 1;
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            open.push_back((Instant::now(), s));
            made += 1;
        }
        while open.front().is_some_and(|(t, _)| t.elapsed() >= CONN_HOLD) {
            open.pop_front();
        }
    }
    // Every connection lives its full time, also the last ones: closing
    // them at once would make them shorter than a scan.
    for (t, s) in open {
        std::thread::sleep(CONN_HOLD.saturating_sub(t.elapsed()));
        drop(s);
    }
    made
}

/// Accepts and holds the server ends as long as the clients hold theirs,
/// and goes on for one hold time after the stop so the last connections
/// are accepted and held too.
fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    let mut held: VecDeque<(Instant, TcpStream)> = VecDeque::new();
    let mut stopped: Option<Instant> = None;
    loop {
        if stopped.is_none() && stop.load(Relaxed) {
            stopped = Some(Instant::now());
        }
        if stopped.is_some_and(|t| t.elapsed() >= CONN_HOLD) && held.is_empty() {
            return;
        }
        match listener.accept() {
            Ok((s, _)) => held.push_back((Instant::now(), s)),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
        while held.front().is_some_and(|(t, _)| t.elapsed() >= CONN_HOLD) {
            held.pop_front();
        }
    }
}
