//! Placeholder being replaced by the real collector.
use crate::collectors::CollectorContext;
use crate::config::FileMonitorConfig;

pub async fn run(_cfg: FileMonitorConfig, ctx: CollectorContext) {
    ctx.cancel.cancelled().await;
}
