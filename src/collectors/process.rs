//! Placeholder being replaced by the real collector.
use crate::collectors::CollectorContext;
use crate::config::ProcessMonitorConfig;

pub async fn run(_cfg: ProcessMonitorConfig, ctx: CollectorContext) {
    ctx.cancel.cancelled().await;
}
