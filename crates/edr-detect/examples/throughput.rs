//! Rough evaluation throughput on one core: a mix of process, file and
//! network events through the built-in rules plus any rule paths given as
//! arguments (e.g. a SigmaHQ checkout's `rules/linux`). For a quick look
//! while developing; the benchmarks live in `edr-bench`.
//!
//! `cargo run --release -p edr-detect --example throughput -- PATH...`

use std::sync::Arc;
use std::time::Instant;

use edr_config::RuleLevel;
use edr_detect::{LoadOptions, RuleSet};
use edr_model::event::{
    Action, Endpoint, Event, EventMeta, File, Network, Origin, ParentProcess, Process, Timestamp,
    User,
};

fn meta(category: &'static [&'static str], types: &'static [&'static str]) -> EventMeta {
    EventMeta {
        kind: "event",
        category,
        types,
        action: Action::ProcessStarted,
        duration: None,
        severity: None,
        risk_score: None,
    }
}

fn main() {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    let set = match RuleSet::load(&LoadOptions {
        builtin: true,
        paths,
        min_level: RuleLevel::Informational,
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let mut origin = Origin::detect();
    Arc::make_mut(&mut origin.host).os.kind = "linux";
    let programs = [
        ("/usr/bin/git", "git status --porcelain"),
        ("/usr/bin/cargo", "cargo build --release -p edr-agent"),
        ("/usr/bin/ls", "ls -la /home/alice/src"),
        ("/usr/bin/grep", "grep -rn TODO src/"),
        (
            "/usr/bin/python3",
            "python3 manage.py runserver 0.0.0.0:8000",
        ),
        ("/usr/bin/bash", "bash -c make -j4 all"),
        (
            "/usr/bin/tar",
            "tar -xzf release-1.2.3.tar.gz -C /tmp/build",
        ),
        ("/usr/bin/vim", "vim README.md"),
    ];
    let mut events = Vec::new();
    for i in 0..30_000usize {
        let (exe, cmd) = programs[i % programs.len()];
        let mut e = Event::new(&origin, Timestamp(i as u64), meta(&["process"], &["start"]));
        e.process = Some(Box::new(Process {
            pid: i as u32,
            name: exe.rsplit('/').next().unwrap_or(exe).to_string(),
            executable: Some(exe.to_string()),
            args: cmd.split(' ').map(String::from).collect(),
            command_line: Some(format!("{cmd} --run {i}")),
            entity_id: format!("{i:016x}"),
            parent: Some(ParentProcess {
                pid: 1,
                executable: Some("/usr/bin/bash".into()),
                command_line: Some("bash".into()),
                ..ParentProcess::default()
            }),
            user: Some(User {
                id: Some("1000".into()),
                name: Some("alice".into()),
            }),
            ..Process::default()
        }));
        events.push(e);
        let mut f = Event::new(&origin, Timestamp(i as u64), meta(&["file"], &["change"]));
        f.file = Some(Box::new(File {
            path: format!("/home/alice/src/project/file{i}.rs"),
            ..File::default()
        }));
        events.push(f);
        let mut n = Event::new(
            &origin,
            Timestamp(i as u64),
            meta(&["network"], &["start", "connection"]),
        );
        n.destination = Some(Endpoint {
            ip: std::net::IpAddr::from([140, 82, 112, (i % 250) as u8]),
            port: 443,
        });
        n.network = Some(Network {
            transport: "tcp",
            kind: "ipv4",
            direction: "outbound",
        });
        events.push(n);
    }
    let t0 = Instant::now();
    let mut hits = 0usize;
    for e in &events {
        hits += set.evaluate(e).len();
    }
    let dt = t0.elapsed();
    let mut by_rule = std::collections::BTreeMap::new();
    for e in events.iter().take(programs.len() * 3) {
        for m in set.evaluate(e) {
            *by_rule.entry(m.rule.title.clone()).or_insert(0) += 1;
        }
    }
    for (title, n) in by_rule {
        println!("matched in the first round: {title} ({n})");
    }
    println!(
        "{} rules ({} skipped), {} events in {:?}: {:.0} events/s, {hits} matches",
        set.rules().len(),
        set.skipped().len(),
        events.len(),
        dt,
        events.len() as f64 / dt.as_secs_f64()
    );
}
