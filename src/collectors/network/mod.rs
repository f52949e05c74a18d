//! Placeholder being replaced by the real collector.
use crate::collectors::CollectorContext;
use crate::config::NetworkMonitorConfig;

pub async fn run(_cfg: NetworkMonitorConfig, ctx: CollectorContext) {
    ctx.cancel.cancelled().await;
}
