//! Hostile files under a watched tree, through the whole agent to disk:
//! files that vanish, unreadable, huge and sparse files, FIFOs and devices,
//! symlink loops, odd names; and the hasher never leaves the watched tree.

mod common;

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use common::agent::{cli, stdout, write_config, Agent, Launch};
use common::root::{chown_tree, require_root, Mount, NOBODY};
use common::{field, read_events, str_field, watched};
use serde_json::Value;
use sha2::Digest;

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL")
}

fn mknod(p: &Path, mode: libc::mode_t, dev: libc::dev_t) {
    // SAFETY: a valid path and plain arguments.
    let rc = unsafe { libc::mknod(cpath(p).as_ptr(), mode, dev) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
}

/// Reports every open of the watched files, by anyone.
struct OpenSpy {
    fd: libc::c_int,
}

impl OpenSpy {
    fn new(paths: &[&Path]) -> OpenSpy {
        // SAFETY: plain flags.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(fd >= 0, "inotify_init1");
        for p in paths {
            // SAFETY: valid fd and path.
            let wd = unsafe {
                libc::inotify_add_watch(fd, cpath(p).as_ptr(), libc::IN_OPEN | libc::IN_ACCESS)
            };
            assert!(wd >= 0, "watch {}", p.display());
        }
        OpenSpy { fd }
    }

    /// Number of opens and reads seen since the last call.
    fn count(&self) -> usize {
        let mut buf = [0u8; 4096];
        let mut n = 0;
        loop {
            // SAFETY: reading into our own buffer.
            let r = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                return n;
            }
            let mut off = 0usize;
            while off < r as usize {
                // SAFETY: the kernel writes whole inotify_event records.
                let ev = unsafe { &*(buf.as_ptr().add(off) as *const libc::inotify_event) };
                n += 1;
                off += std::mem::size_of::<libc::inotify_event>() + ev.len as usize;
            }
        }
    }
}

impl Drop for OpenSpy {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.fd) };
    }
}

fn events_for<'a>(events: &'a [Value], path: &Path) -> Vec<&'a Value> {
    let p = path.to_string_lossy();
    events
        .iter()
        .filter(|e| str_field(e, "file.path") == Some(p.as_ref()))
        .collect()
}

/// The path has an event skipped for `reason`, and any hash among its
/// events is one of `allowed` (a file hashed while still empty, say).
fn assert_skipped(events: &[Value], path: &Path, reason: &str, allowed: &[&[u8]]) {
    let evs = events_for(events, path);
    assert!(
        evs.iter()
            .any(|e| str_field(e, "edr.hash_skipped") == Some(reason)),
        "no {reason} skip for {}: {evs:?}",
        path.display()
    );
    let allowed: Vec<String> = allowed.iter().map(|c| sha256_hex(c)).collect();
    for e in evs {
        if let Some(h) = str_field(e, "file.hash.sha256") {
            assert!(allowed.iter().any(|a| a == h), "unexpected hash: {e}");
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn hostile_files_give_correct_events_or_counted_skips() {
    require_root("the hostile files test (it runs the agent as nobody and makes devices)");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("data");
    let w = watched(root);
    let config = write_config(root, |c| {
        c.agent.collection_interval_ms = 200;
        c.collectors.file_monitor.calculate_hashes = true;
        c.collectors.file_monitor.max_file_size_mb = 1;
    });
    // An unprivileged agent, so that an unreadable file is unreadable.
    chown_tree(root, NOBODY);
    let mut agent = Agent::launch(
        &config,
        &data,
        Launch {
            user: Some(NOBODY),
            ..Launch::default()
        },
    );
    agent.wait_watching();

    // Special files, watched for any open or read.
    let fifo = w.join("pipe");
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(cpath(&fifo).as_ptr(), 0o666) }, 0);
    let null = w.join("null-device");
    mknod(&null, libc::S_IFCHR | 0o666, libc::makedev(1, 3));
    let zero = w.join("zero-device");
    mknod(&zero, libc::S_IFCHR | 0o666, libc::makedev(1, 5));
    let spy = OpenSpy::new(&[&fifo, &null, &zero]);

    // Unreadable to the agent (root-owned, mode 000).
    let unreadable = w.join("unreadable.txt");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        // Created with mode 000: unreadable from its first event.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&unreadable)
            .expect("create");
        f.write_all(b"private").expect("write");
    }
    // Too large to hash: one real, one sparse and enormous.
    let large = w.join("large.bin");
    std::fs::write(&large, vec![1u8; 2 * 1024 * 1024]).expect("write");
    let sparse = w.join("sparse.img");
    std::fs::File::create(&sparse)
        .and_then(|f| f.set_len(64 << 30))
        .expect("sparse file");
    // Symlink loops and a link out of the tree.
    let self_loop = w.join("loop");
    std::os::unix::fs::symlink("loop", &self_loop).expect("symlink");
    let (a, b) = (w.join("a"), w.join("b"));
    std::os::unix::fs::symlink("b", &a).expect("symlink");
    std::os::unix::fs::symlink("a", &b).expect("symlink");
    let up = w.join("up");
    std::os::unix::fs::symlink("..", &up).expect("symlink");
    // Names that break naive line-based formats.
    let newline = w.join("two\nlines.txt");
    std::fs::write(&newline, b"n").expect("write");
    let invalid = w.join(OsStr::from_bytes(b"caf\xe9\xff.txt"));
    std::fs::write(&invalid, b"i").expect("write");
    // Files that vanish between their event and their hash.
    for i in 0..300 {
        let p = w.join(format!("vanish-{i}"));
        std::fs::write(&p, b"gone soon").expect("write");
        std::fs::remove_file(&p).expect("remove");
    }
    // A plain file last: when it is hashed, nothing above hung the hasher.
    let last = w.join("last.txt");
    std::fs::write(&last, b"last").expect("write");

    let hashed_last = common::wait_for(Duration::from_secs(20), || {
        agent.assert_alive();
        let out = cli(&["events", "--grep", "last.txt"], &data);
        stdout(&out).contains(&sha256_hex(b"last")).then_some(())
    });
    assert!(
        hashed_last.is_some(),
        "the file after the hostile ones was not hashed"
    );
    assert_eq!(spy.count(), 0, "the agent opened a FIFO or a device");
    let (status, err) = agent.stop();
    assert_eq!(status.code(), Some(0), "{err}");
    // The status written as the agent stopped has the final totals.
    let snapshot = edr_engine::read_status(&data).expect("final status");

    let events = read_events(&data);
    assert_skipped(&events, &fifo, "not_regular", &[]);
    assert_skipped(&events, &null, "not_regular", &[]);
    assert_skipped(&events, &zero, "not_regular", &[]);
    assert_skipped(&events, &large, "too_large", &[b""]);
    assert_skipped(&events, &sparse, "too_large", &[b""]);
    for link in [&self_loop, &a, &b, &up] {
        assert_skipped(&events, link, "not_regular", &[]);
        let e = events_for(&events, link)[0];
        assert_eq!(str_field(e, "file.type"), Some("symlink"), "{e}");
    }
    // Every event of the unreadable file that wanted a hash says why it has
    // none.
    let unreadable_events = events_for(&events, &unreadable);
    assert!(!unreadable_events.is_empty());
    for e in &unreadable_events {
        assert!(field(e, "file.hash").is_none(), "{e}");
    }
    assert_skipped(&events, &unreadable, "unreadable", &[]);
    let newline_events = events_for(&events, &newline);
    assert!(!newline_events.is_empty());
    assert_eq!(
        str_field(newline_events[0], "file.name"),
        Some("two\nlines.txt")
    );
    let invalid_events = events_for(&events, &invalid);
    assert!(
        !invalid_events.is_empty(),
        "no event for the invalid UTF-8 name"
    );
    assert_eq!(
        str_field(invalid_events[0], "file.name"),
        Some("caf\u{fffd}\u{fffd}.txt")
    );
    // Vanished files: a creation each, hashed in time or skipped and counted.
    let mut vanished_skips = 0;
    for i in 0..300 {
        for e in events_for(&events, &w.join(format!("vanish-{i}"))) {
            if str_field(e, "edr.hash_skipped") == Some("vanished") {
                vanished_skips += 1;
            } else if let Some(h) = str_field(e, "file.hash.sha256") {
                // Hashed before or after the write: either content is true.
                assert!(h == sha256_hex(b"gone soon") || h == sha256_hex(b""), "{e}");
            }
        }
    }
    // Every skip is counted.
    let t = &snapshot.totals;
    assert!(t.hash_skipped > 0, "{t:?}");
    // `events` keeps one event per line whatever the names hold.
    let text = stdout(&cli(&["events"], &data));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), events.len());
    for l in &lines {
        serde_json::from_str::<Value>(l).expect("each line of `events` is JSON");
    }
    // The detector sees opens: the absence above means something.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_nonblock()
        .open(&fifo)
        .expect("open fifo");
    drop(f);
    assert!(spy.count() > 0, "the open detector is blind");
    eprintln!(
        "hostile files: {} events; {} hash skips counted, {vanished_skips} of them vanished files",
        events.len(),
        t.hash_skipped
    );
}

trait NonBlock {
    fn custom_flags_nonblock(&mut self) -> &mut Self;
}

impl NonBlock for std::fs::OpenOptions {
    fn custom_flags_nonblock(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NONBLOCK)
    }
}

#[test]
fn hashing_never_follows_a_symlink_out_of_the_watched_tree() {
    require_root("the symlink escape test (tmpfs)");
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let data = root.join("data");
    let w = watched(root);
    let _fast = Mount::tmpfs(&w, 512 * 1024 * 1024);
    let outside = root.join("outside");
    std::fs::create_dir_all(&outside).expect("dir");
    std::fs::write(outside.join("secret.txt"), b"OUTSIDE SECRET").expect("write");
    let config = write_config(root, |c| {
        c.agent.collection_interval_ms = 200;
        c.collectors.file_monitor.calculate_hashes = true;
        c.collectors.file_monitor.max_file_size_mb = 1024;
        c.collectors.file_monitor.hash_rate_limit_mb_per_sec = 10_240;
    });
    // Directories whose files will be hashed after the directory has been
    // swapped for a link out of the tree.
    const ROUNDS: usize = 4;
    for round in 0..ROUNDS {
        std::fs::create_dir(w.join(format!("d{round}"))).expect("dir");
    }
    let mut agent = Agent::spawn(&config, &data);
    agent.wait_watching();

    // A link to a file and a link to a directory outside.
    let file_link = w.join("secret-link.txt");
    std::os::unix::fs::symlink(outside.join("secret.txt"), &file_link).expect("symlink");
    let dir_link = w.join("outside-link");
    std::os::unix::fs::symlink(&outside, &dir_link).expect("symlink");
    std::fs::write(outside.join("written-through-link.txt"), b"x").expect("write");

    // The swap happens while the file's hash job waits behind a big file
    // (hundreds of milliseconds of SHA-256).
    let mut swapped = Vec::new();
    for round in 0..ROUNDS {
        std::fs::write(w.join("big.bin"), vec![round as u8; 200 * 1024 * 1024]).expect("write");
        let d = w.join(format!("d{round}"));
        let inner = d.join("secret.txt");
        std::fs::write(&inner, b"inside").expect("write");
        std::thread::sleep(Duration::from_millis(20));
        std::fs::rename(&d, w.join(format!("d{round}.moved"))).expect("move");
        std::os::unix::fs::symlink(&outside, &d).expect("symlink");
        swapped.push(inner);
    }
    let last = w.join("last.txt");
    std::fs::write(&last, b"last").expect("write");
    let done = common::wait_for(Duration::from_secs(30), || {
        agent.assert_alive();
        let out = cli(&["events", "--grep", "last.txt"], &data);
        stdout(&out).contains(&sha256_hex(b"last")).then_some(())
    });
    assert!(done.is_some(), "the hasher never got to the last file");
    let (status, err) = agent.stop();
    assert_eq!(status.code(), Some(0), "{err}");

    let events = read_events(&data);
    let secret = sha256_hex(b"OUTSIDE SECRET");
    for e in &events {
        assert_ne!(
            str_field(e, "file.hash.sha256"),
            Some(secret.as_str()),
            "a file outside the watched tree was hashed: {e}"
        );
        let p = str_field(e, "file.path").unwrap_or_default();
        assert!(
            !p.contains("written-through-link"),
            "a symlinked directory was followed: {e}"
        );
    }
    assert_skipped(&events, &file_link, "not_regular", &[]);
    let outcomes: Vec<_> = swapped
        .iter()
        .flat_map(|p| events_for(&events, p))
        .map(|e| {
            str_field(e, "edr.hash_skipped")
                .or(str_field(e, "file.hash.sha256"))
                .unwrap_or("none")
                .to_string()
        })
        .collect();
    eprintln!("swapped directories: {outcomes:?}");
    // The race was run: some job found its directory already swapped.
    assert!(
        outcomes.iter().any(|o| o == "not_regular"),
        "no hash job ran after its directory was swapped: {outcomes:?}"
    );
}
