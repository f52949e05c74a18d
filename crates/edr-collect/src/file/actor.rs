//! The process behind a file event, as fanotify names it (a pid), read
//! from `/proc` the moment the event is read.
//!
//! The identity is the process collector's: `process.entity_id` is derived
//! from host, pid and `process_start_ms`, so a file event joins the
//! writer's own process events. A process keeps its description (program,
//! arguments, user) for its life: the cache is keyed by pid and checked
//! against the start time on every use, so a reused pid is a new process.

use std::collections::HashMap;
use std::sync::Arc;

use crate::process::procfs::{read_cmdline, read_effective_uid};
use crate::process::users::UserNames;
use crate::process::{process_start_ms, wall_start_ms};
use edr_model::event::{entity_id, Process, Timestamp, User};

/// Processes whose description is kept; past this the cache starts over
/// (a burst of short-lived writers must not pin memory).
const MAX_CACHED: usize = 1024;

pub(super) struct Actors {
    host: String,
    cache: HashMap<u32, (u64, Arc<Process>)>,
    users: UserNames,
}

impl Actors {
    pub(super) fn new(host: &str) -> Actors {
        Actors {
            host: host.to_string(),
            cache: HashMap::new(),
            users: UserNames::default(),
        }
    }

    /// `process.*` of `pid`. A process that already exited is named by its
    /// pid alone (`partial` is then true).
    pub(super) fn describe(&mut self, pid: u32) -> (Box<Process>, bool) {
        let Some(start_ms) = process_start_ms(pid) else {
            return (
                Box::new(Process {
                    pid,
                    ..Process::default()
                }),
                true,
            );
        };
        if let Some((start, p)) = self.cache.get(&pid) {
            if *start == start_ms {
                return (Box::new(Process::clone(p)), p.executable.is_none());
            }
        }
        let p = Arc::new(self.read(pid, start_ms));
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        self.cache.insert(pid, (start_ms, Arc::clone(&p)));
        let partial = p.executable.is_none();
        (Box::new(Process::clone(&p)), partial)
    }

    /// Executable and arguments first: they vanish at exit, while `comm`
    /// and `status` last as long as the zombie.
    fn read(&mut self, pid: u32, start_ms: u64) -> Process {
        let executable = std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.to_string_lossy().into_owned());
        let args = edr_model::redact::redact_args(&read_cmdline(pid));
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim_end_matches('\n').to_string())
            .unwrap_or_default();
        let user = read_effective_uid(pid).map(|uid| User {
            id: Some(uid.to_string()),
            name: self.users.name(uid).map(String::from),
        });
        // Read after the rest: if the pid was reused meanwhile, what was
        // read belongs to another process and must not carry this id.
        let same = process_start_ms(pid) == Some(start_ms);
        Process {
            pid,
            name,
            executable: executable.filter(|_| same),
            command_line: (same && !args.is_empty()).then(|| args.join(" ")),
            args: if same { args } else { Vec::new() },
            start: Some(Timestamp(wall_start_ms(start_ms))),
            entity_id: entity_id(&self.host, pid, start_ms),
            user: user.filter(|_| same),
            ..Process::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_is_described_with_the_process_collectors_id() {
        let mut actors = Actors::new("h");
        let me = std::process::id();
        let (p, partial) = actors.describe(me);
        assert!(!partial);
        let start = process_start_ms(me).expect("own start");
        assert_eq!(p.entity_id, entity_id("h", me, start));
        assert_eq!(
            p.executable.as_deref(),
            std::env::current_exe()
                .ok()
                .as_deref()
                .and_then(|e| e.to_str())
        );
        // SAFETY: geteuid cannot fail.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(
            p.user.as_ref().and_then(|u| u.id.clone()),
            Some(uid.to_string())
        );
        let (again, _) = actors.describe(me);
        assert_eq!(again.entity_id, p.entity_id);
    }
}
