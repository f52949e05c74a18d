//! macOS socket listing: `lsof` field output.
//!
//! macOS has no sock_diag; `lsof` ships with the OS and lists each socket
//! with its owner in one run. Without root it sees only the user's own
//! processes. It reports no inode, so pid and fd stand in for one.

use std::collections::HashMap;
use std::io;
use std::mem;
use std::process::Command;
use std::sync::Arc;

use super::lsof::parse_lsof;
use super::{Owner, Socket};
use edr_model::event::{entity_id, Timestamp};

pub(super) const SOURCE: &str = "lsof";

/// Numeric addresses and ports, no warnings, full command names, TCP state,
/// and the fields `parse_lsof` reads.
const ARGS: &[&str] = &[
    "-nP", "-w", "+c", "0", "-iTCP", "-iUDP", "-Ts", "-F", "pcfnPTt",
];

#[derive(Debug, thiserror::Error)]
pub(super) enum ScanError {
    #[error("cannot run lsof: {0}")]
    Spawn(#[source] io::Error),
    #[error("lsof failed: {0}")]
    Failed(String),
}

pub(super) struct Lister {
    host_name: String,
    /// Owners of this scan by pid; reused across scans.
    owners: HashMap<u32, Option<Arc<Owner>>>,
}

impl Lister {
    pub(super) fn new(host_name: &str) -> Result<Lister, ScanError> {
        Ok(Lister {
            host_name: host_name.to_string(),
            owners: HashMap::new(),
        })
    }

    pub(super) fn list(&mut self, out: &mut Vec<Socket>) -> Result<(), ScanError> {
        let output = Command::new("lsof")
            .args(ARGS)
            .output()
            .map_err(ScanError::Spawn)?;
        // lsof exits 1 when one selection (say UDP) matched nothing, so only
        // an empty listing with a complaint is a failure.
        if !output.status.success() && output.stdout.is_empty() && !output.stderr.is_empty() {
            return Err(ScanError::Failed(
                String::from_utf8_lossy(&output.stderr).trim().to_string(),
            ));
        }
        self.owners.clear();
        let host = &self.host_name;
        let owners = &mut self.owners;
        parse_lsof(
            &String::from_utf8_lossy(&output.stdout),
            out,
            |pid, name| {
                owners
                    .entry(pid)
                    .or_insert_with(|| describe(host, pid, name).map(Arc::new))
                    .clone()
            },
        );
        Ok(())
    }
}

fn describe(host: &str, pid: u32, name: &str) -> Option<Owner> {
    let start_ms = process_start_ms(pid)?;
    Some(Owner {
        pid,
        name: name.to_string(),
        entity_id: entity_id(host, pid, start_ms),
        start: Some(Timestamp(start_ms)),
        executable: executable(pid),
        // The arguments need KERN_PROCARGS2 parsing; the process events
        // carry them.
        args: Vec::new(),
        user: None,
    })
}

/// The program's path, from `proc_pidpath`.
fn executable(pid: u32) -> Option<String> {
    let mut buf = vec![0u8; libc::PROC_PIDPATHINFO_MAXSIZE as usize];
    // SAFETY: `buf` is valid for its length for the call.
    let n = unsafe {
        libc::proc_pidpath(
            i32::try_from(pid).ok()?,
            buf.as_mut_ptr().cast(),
            u32::try_from(buf.len()).ok()?,
        )
    };
    let n = usize::try_from(n).ok().filter(|n| *n > 0)?;
    buf.truncate(n);
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// Process start in ms since the epoch, from `proc_pidinfo`.
fn process_start_ms(pid: u32) -> Option<u64> {
    // SAFETY: all-zero is a valid `proc_bsdinfo`.
    let mut info: libc::proc_bsdinfo = unsafe { mem::zeroed() };
    let size = mem::size_of::<libc::proc_bsdinfo>() as libc::c_int;
    // SAFETY: `info` is valid for `size` bytes for the call.
    let n = unsafe {
        libc::proc_pidinfo(
            pid as libc::c_int,
            libc::PROC_PIDTBSDINFO,
            0,
            (&mut info as *mut libc::proc_bsdinfo).cast(),
            size,
        )
    };
    (n == size).then_some(info.pbi_start_tvsec * 1000 + info.pbi_start_tvusec / 1000)
}
