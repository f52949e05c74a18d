//! uid -> user name, cached.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The user list is re-read at most this often, and only when a uid is not
/// in the cache: new accounts are rare, and reading `/etc/passwd` on every
/// unknown uid (containers run many) would be wasteful.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Bound on cached names; a host with more accounts gets the first ones.
const MAX_USERS: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct UserNames {
    names: HashMap<u32, Box<str>>,
    last_refresh: Option<Instant>,
}

impl UserNames {
    pub fn name(&mut self, uid: u32) -> Option<&str> {
        if !self.names.contains_key(&uid) && self.refresh_due(Instant::now()) {
            self.refresh();
        }
        self.names.get(&uid).map(|n| &**n)
    }

    fn refresh_due(&self, now: Instant) -> bool {
        self.last_refresh
            .is_none_or(|at| now.duration_since(at) >= REFRESH_EVERY)
    }

    fn refresh(&mut self) {
        self.last_refresh = Some(Instant::now());
        match sysinfo::Users::new_with_refreshed_list() {
            Ok(users) => {
                self.names.clear();
                self.names.extend(
                    users
                        .iter()
                        .take(MAX_USERS)
                        .map(|u| (**u.id(), Box::from(u.name()))),
                );
                self.names.shrink_to_fit();
            }
            Err(e) => tracing::warn!("cannot list users, process.user.name left out: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_named_and_unknown_uids_do_not_refresh_again() {
        let mut users = UserNames::default();
        assert_eq!(users.name(0), Some("root"));
        let first = users.last_refresh.expect("refreshed on first miss");
        assert_eq!(users.name(0xFFFF_FFF0), None);
        assert_eq!(users.last_refresh, Some(first));
        assert!(users.refresh_due(first + REFRESH_EVERY));
        assert!(!users.refresh_due(first + Duration::from_secs(1)));
    }
}
