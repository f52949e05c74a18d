//! A reproducible stream of realistic events, for benchmarks: the same
//! seed gives the same events on every machine.
//!
//! The mix follows what the agent stores under the `edr-bench`
//! mixed workload: process starts and ends of a few dozen programs with
//! their arguments and executable hashes, file changes under a handful of
//! project directories (each new content with its own SHA-256), and
//! connections with their owners. Identifiers are derived as the
//! collectors derive them (host, pid, start time), not random: random ids
//! would make every event incompressible in part, which ours are not.

use std::net::{IpAddr, Ipv4Addr};

use edr_model::event::{
    entity_id, Action, EdrExt, Endpoint, Event, EventMeta, File, Hash, Network, Origin,
    ParentProcess, Process, Timestamp, User,
};

const PROGRAMS: &[(&str, &str, &[&str])] = &[
    ("bash", "/usr/bin/bash", &["bash", "-c", "make -j2 all"]),
    ("git", "/usr/bin/git", &["git", "status", "--porcelain"]),
    ("git", "/usr/bin/git", &["git", "fetch", "origin", "main"]),
    (
        "cargo",
        "/root/.cargo/bin/cargo",
        &["cargo", "build", "--release"],
    ),
    (
        "rustc",
        "/root/.rustup/toolchains/stable-x86_64-unknown-linux-gnu/bin/rustc",
        &[
            "rustc",
            "--crate-name",
            "serde",
            "--edition=2021",
            "src/lib.rs",
            "--crate-type",
            "lib",
            "-C",
            "opt-level=3",
        ],
    ),
    (
        "python3",
        "/usr/bin/python3.13",
        &["python3", "-m", "pytest", "-q", "tests/"],
    ),
    (
        "node",
        "/usr/bin/node",
        &[
            "node",
            "/usr/lib/node_modules/npm/bin/npm-cli.js",
            "run",
            "build",
        ],
    ),
    (
        "firefox",
        "/usr/lib/firefox/firefox",
        &[
            "/usr/lib/firefox/firefox",
            "-contentproc",
            "-childID",
            "12",
            "-isForBrowser",
            "tab",
        ],
    ),
    (
        "code",
        "/usr/share/code/code",
        &[
            "/usr/share/code/code",
            "--type=utility",
            "--utility-sub-type=node.mojom.NodeService",
        ],
    ),
    ("ssh", "/usr/bin/ssh", &["ssh", "-T", "git@github.com"]),
    (
        "curl",
        "/usr/bin/curl",
        &["curl", "-fsSL", "https://example.org/install.sh"],
    ),
    ("grep", "/usr/bin/grep", &["grep", "-rn", "TODO", "src/"]),
    ("ls", "/usr/bin/ls", &["ls", "--color=auto", "-la"]),
    ("sleep", "/usr/bin/sleep", &["sleep", "2"]),
    (
        "systemd-resolve",
        "/usr/lib/systemd/systemd-resolved",
        &["/usr/lib/systemd/systemd-resolved"],
    ),
    (
        "gcc",
        "/usr/bin/x86_64-linux-gnu-gcc-14",
        &[
            "gcc",
            "-O2",
            "-c",
            "zstd/lib/compress/zstd_compress.c",
            "-o",
            "out/zstd_compress.o",
        ],
    ),
];

const DIRS: &[&str] = &[
    "/home/alice/Documents/reports/2026",
    "/home/alice/Downloads",
    "/home/alice/Desktop/project-atlas/src",
    "/home/alice/Documents/notes",
    "/home/alice/.ssh",
];

const EXTENSIONS: &[&str] = &["txt", "md", "rs", "pdf", "json", "log", "png", "docx"];

const FILE_ACTIONS: &[(Action, &[&str])] = &[
    (Action::FileCreated, &["creation"]),
    (Action::FileModified, &["change"]),
    (Action::FileModified, &["change"]),
    (Action::FileDeleted, &["deletion"]),
];

/// Deterministic generator of mixed events (xorshift; no dependency).
#[derive(Debug, Clone)]
pub struct SyntheticEvents {
    origin: Origin,
    state: u64,
    now_ms: u64,
    next_pid: u32,
}

impl SyntheticEvents {
    pub fn new(origin: Origin, seed: u64) -> SyntheticEvents {
        SyntheticEvents {
            origin,
            state: seed | 1,
            now_ms: 1_795_636_035_000,
            next_pid: 20_000,
        }
    }

    fn rand(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.rand() % items.len() as u64) as usize]
    }

    /// The next event: about 30% process, 50% file, 20% network.
    pub fn next_event(&mut self) -> Event {
        self.now_ms += self.rand() % 20;
        match self.rand() % 10 {
            0..=2 => self.process(),
            3..=7 => self.file(),
            _ => self.network(),
        }
    }

    /// `n` events.
    pub fn take(&mut self, n: usize) -> Vec<Event> {
        (0..n).map(|_| self.next_event()).collect()
    }

    fn process(&mut self) -> Event {
        let (name, exe, args) = self.pick(PROGRAMS);
        let pid = self.next_pid;
        self.next_pid += 1 + (self.rand() % 7) as u32;
        let start = self.now_ms - self.rand() % 3000;
        let ended = self.rand().is_multiple_of(2);
        let host = self.origin.host.name.clone();
        let meta = if ended {
            EventMeta {
                kind: "event",
                category: &["process"],
                types: &["end"],
                action: Action::ProcessEnded,
                duration: Some((self.now_ms - start) * 1_000_000),
                severity: None,
                risk_score: None,
            }
        } else {
            EventMeta {
                kind: "event",
                category: &["process"],
                types: &["start"],
                action: Action::ProcessStarted,
                duration: None,
                severity: None,
                risk_score: None,
            }
        };
        let ts = Timestamp(if ended { self.now_ms } else { start });
        let mut e = Event::new(&self.origin, ts, meta);
        let ppid = 1000 + (self.rand() % 40) as u32;
        e.process = Some(Box::new(Process {
            pid,
            name: name.to_string(),
            executable: Some(exe.to_string()),
            args: args.iter().map(|a| a.to_string()).collect(),
            command_line: Some(args.join(" ")),
            start: Some(Timestamp(start)),
            end: ended.then_some(Timestamp(self.now_ms)),
            exit_code: ended.then_some(0),
            entity_id: entity_id(&host, pid, start),
            parent: Some(ParentProcess {
                pid: ppid,
                entity_id: Some(entity_id(&host, ppid, 1_795_630_000_000)),
                ..ParentProcess::default()
            }),
            user: Some(User {
                id: Some("1000".into()),
                name: Some("alice".into()),
            }),
            hash: (!ended).then(|| Hash {
                sha256: digest_hex(exe.len() as u64 * 7919 + exe.as_bytes()[5] as u64),
            }),
            env_vars: Vec::new(),
            working_directory: None,
        }));
        e.edr = Some(Box::new(EdrExt {
            source: Some("scan"),
            ..EdrExt::default()
        }));
        e
    }

    fn file(&mut self) -> Event {
        let dir = self.pick(DIRS);
        let ext = self.pick(EXTENSIONS);
        let (action, types) = self.pick(FILE_ACTIONS);
        let n = self.rand() % 400;
        let name = format!("draft-{n}.{ext}");
        let meta = EventMeta {
            kind: "event",
            category: &["file"],
            types,
            action,
            duration: None,
            severity: None,
            risk_score: None,
        };
        let mut e = Event::new(&self.origin, Timestamp(self.now_ms), meta);
        let exists = action != Action::FileDeleted;
        let content = self.rand();
        e.file = Some(Box::new(File {
            path: format!("{dir}/{name}"),
            name: Some(name),
            directory: Some(dir.to_string()),
            extension: Some(ext.to_string()),
            kind: exists.then_some("file"),
            size: exists.then_some(content % 200_000),
            mtime: exists.then_some(Timestamp(self.now_ms - 3)),
            hash: exists.then(|| Hash {
                sha256: digest_hex(content),
            }),
        }));
        e
    }

    fn network(&mut self) -> Event {
        let opened = self.rand().is_multiple_of(2);
        let (name, _, _) = self.pick(PROGRAMS);
        let pid = 1000 + (self.rand() % 40) as u32;
        let start = 1_795_630_000_000 + u64::from(pid) * 13;
        let meta = if opened {
            EventMeta {
                kind: "event",
                category: &["network"],
                types: &["start", "connection"],
                action: Action::ConnectionOpened,
                duration: None,
                severity: None,
                risk_score: None,
            }
        } else {
            EventMeta {
                kind: "event",
                category: &["network"],
                types: &["end", "connection"],
                action: Action::ConnectionClosed,
                duration: Some(self.rand() % 60_000_000_000),
                severity: None,
                risk_score: None,
            }
        };
        let mut e = Event::new(&self.origin, Timestamp(self.now_ms), meta);
        let remotes = [
            Ipv4Addr::new(140, 82, 121, 4),
            Ipv4Addr::new(151, 101, 1, 69),
            Ipv4Addr::new(34, 107, 221, 82),
            Ipv4Addr::new(192, 168, 1, 1),
        ];
        e.source = Some(Endpoint {
            ip: IpAddr::V4(Ipv4Addr::new(192, 168, 1, 23)),
            port: 32_768 + (self.rand() % 28_000) as u16,
        });
        e.destination = Some(Endpoint {
            ip: IpAddr::V4(self.pick(&remotes)),
            port: self.pick(&[443u16, 443, 80, 22, 53]),
        });
        e.network = Some(Network {
            transport: "tcp",
            kind: "ipv4",
            direction: "outbound",
        });
        e.process = Some(Box::new(Process {
            pid,
            name: name.to_string(),
            entity_id: entity_id(&self.origin.host.name, pid, start),
            start: Some(Timestamp(start)),
            ..Process::default()
        }));
        e.edr = Some(Box::new(EdrExt {
            socket_state: Some("ESTABLISHED"),
            ..EdrExt::default()
        }));
        e
    }
}

/// 64 hex digits that look like a SHA-256 (as incompressible), derived
/// from `seed` so equal content gives an equal digest.
fn digest_hex(seed: u64) -> String {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = String::with_capacity(64);
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{x:016x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_events_and_a_realistic_mix() {
        let origin = Origin::detect();
        let a = SyntheticEvents::new(origin.clone(), 7).take(1000);
        let b = SyntheticEvents::new(origin, 7).take(1000);
        let lines = |v: &[Event]| -> Vec<String> {
            v.iter()
                .map(|e| serde_json::to_string(e).expect("serializes"))
                .collect()
        };
        assert_eq!(lines(&a), lines(&b));
        let mut per_type = [0usize; 3];
        for e in &a {
            per_type[e.event_type().index()] += 1;
        }
        assert!(per_type.iter().all(|n| *n > 100), "{per_type:?}");
        let mean = lines(&a).iter().map(String::len).sum::<usize>() / a.len();
        assert!((300..800).contains(&mean), "mean line {mean} bytes");
    }
}
