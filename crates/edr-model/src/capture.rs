//! How a source captures what it reports, as status displays name it.

use serde::{Deserialize, Serialize};

/// How process starts and ends are captured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessCapture {
    /// From the kernel as they happen (short-lived processes included).
    Event,
    /// By polling: processes shorter than the scan interval can be missed.
    Scan,
}

impl ProcessCapture {
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessCapture::Event => "event",
            ProcessCapture::Scan => "scan",
        }
    }

    pub fn parse(s: &str) -> Option<ProcessCapture> {
        [ProcessCapture::Event, ProcessCapture::Scan]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}
