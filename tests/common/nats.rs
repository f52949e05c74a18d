//! A real `nats-server` (Debian's 2.9, installed by scripts/setup.sh) with
//! JetStream, on a free 127.0.0.1 port and a store of its own.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::wait_for;

/// A `nats-server` with JetStream on 127.0.0.1, killed with SIGKILL on drop.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    conf: Option<PathBuf>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl NatsServer {
    /// A server that is not running yet (see [`NatsServer::launch`]).
    pub fn new(root: &Path, conf: Option<&str>) -> NatsServer {
        let store = root.join("nats-store");
        std::fs::create_dir_all(&store).expect("store dir");
        let conf = conf.map(|text| {
            let p = root.join("nats.conf");
            std::fs::write(&p, text).expect("nats.conf");
            p
        });
        NatsServer {
            child: None,
            port: free_port(),
            store,
            conf,
        }
    }

    pub fn start(root: &Path, conf: Option<&str>) -> NatsServer {
        let mut s = NatsServer::new(root, conf);
        s.launch();
        s
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts it on its port and store (again after a kill: the same
    /// store, so the same stream); returns once it accepts connections.
    pub fn launch(&mut self) {
        let mut cmd = Command::new("nats-server");
        if let Some(c) = &self.conf {
            cmd.arg("-c").arg(c);
        }
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(&self.store)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        self.child = Some(
            cmd.spawn()
                .expect("nats-server runs (scripts/setup.sh installs it)"),
        );
        // It listens within a second; 15 s is for a loaded machine.
        let up = wait_for(Duration::from_secs(15), || {
            TcpStream::connect(("127.0.0.1", self.port)).ok()
        });
        assert!(up.is_some(), "nats-server did not listen on {}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
