//! What the WebDriver suites (`e2e.rs`, `service.rs`) both do with a page:
//! run a script, click, wait for a condition; and the free port their
//! tauri-driver listens on.

use std::future::Future;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::Value;

pub async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.expect("script")
}

pub async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// Polls `f` every 200 ms until it gives a value; fails the test naming
/// `what` after `timeout`.
pub async fn eventually<T, Fut>(what: &str, timeout: Duration, mut f: impl FnMut() -> Fut) -> T
where
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
