//! The read commands' way to the service: its API when it answers, so an
//! operator in the group `edr-agent` reads a root agent without reading
//! its data dir (mode 0700).

use std::future::Future;
use std::path::Path;

use edr_api::wire::Hello;
use edr_api::{Client, ClientError};
use edr_engine::Snapshot;

fn block_on<T>(f: impl Future<Output = Result<T, ClientError>>) -> Result<T, ClientError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| ClientError::Http(format!("cannot start a runtime: {e}")))?
        .block_on(f)
}

/// The service's hello, version-checked.
pub fn hello(socket: &Path) -> Result<Hello, ClientError> {
    block_on(async { Client::connect(socket).await.map(|(_, h)| h) })
}

/// The service's status, version-checked.
pub fn status(socket: &Path) -> Result<Snapshot, ClientError> {
    block_on(async {
        let (client, _) = Client::connect(socket).await?;
        client.status().await
    })
}
