//! Fault injection that needs root: small filesystems, read-only mounts.
//! Every mount is undone by a guard's `Drop`, so a failing test leaves
//! nothing mounted.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Fails (never skips) a test that needs root when run without it: CI runs
/// as root, and a fault test that silently passes proves nothing.
pub fn require_root(what: &str) {
    require_root_because(what, "it mounts filesystems or changes owners");
}

/// [`require_root`] for a test that needs root for another reason (`why`).
pub fn require_root_because(what: &str, why: &str) {
    // SAFETY: geteuid has no side effects.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "{what} needs root ({why}); run the test suite as root, as CI does"
    );
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

fn check(rc: libc::c_int, what: &str, path: &Path) {
    assert_eq!(
        rc,
        0,
        "{what} {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// A mount that is detached when dropped.
pub struct Mount {
    path: PathBuf,
}

impl Mount {
    /// A tmpfs of `bytes` bytes at `path` (created if missing), mode 0700.
    pub fn tmpfs(path: &Path, bytes: u64) -> Mount {
        std::fs::create_dir_all(path).expect("mount point");
        let target = cpath(path);
        let opts = CString::new(format!("size={bytes},mode=0700")).expect("options");
        // SAFETY: every pointer is a valid NUL-terminated string.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        check(rc, "mount tmpfs on", path);
        Mount {
            path: path.to_path_buf(),
        }
    }

    /// Makes `path` read-only for every new open through it (files already
    /// open for writing stay writable, as on a real remount), by bind
    /// mounting it over itself read-only.
    pub fn read_only(path: &Path) -> Mount {
        let target = cpath(path);
        // SAFETY: valid strings; null fstype/data are allowed for binds.
        let rc = unsafe {
            libc::mount(
                target.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        check(rc, "bind mount", path);
        let guard = Mount {
            path: path.to_path_buf(),
        };
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                std::ptr::null(),
            )
        };
        check(rc, "remount read-only", path);
        guard
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let target = cpath(&self.path);
        // SAFETY: valid string. MNT_DETACH succeeds even while busy.
        let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 {
            eprintln!(
                "could not unmount {}: {}",
                self.path.display(),
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Fills the filesystem holding `dir` with a file until writes fail with
/// ENOSPC. Returns the filler's path.
pub fn fill_disk(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).expect("filler");
    let chunk = vec![0xa5u8; 64 * 1024];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", dir.display()),
        }
    }
    // Smaller writes take the last partial page.
    let small = [0u8; 512];
    while let Ok(n) = f.write(&small) {
        if n == 0 {
            break;
        }
    }
    path
}

/// The unprivileged `nobody` user.
pub const NOBODY: (u32, u32) = (65534, 65534);

/// Hands `path` (recursively) to `owner`.
pub fn chown_tree(path: &Path, owner: (u32, u32)) {
    std::os::unix::fs::chown(path, Some(owner.0), Some(owner.1)).expect("chown");
    if path.is_dir() && !path.is_symlink() {
        for e in std::fs::read_dir(path).expect("read dir").flatten() {
            chown_tree(&e.path(), owner);
        }
    }
}
