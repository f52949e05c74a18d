//! SHA-256 of executables, cached so each binary is read once.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

/// Executables larger than this are not hashed: reading one would hold up
/// the scan loop for most of a second.
pub(crate) const MAX_HASH_BYTES: u64 = 256 * 1024 * 1024;

/// Cached digests; distinct binaries on a host rarely exceed a few hundred.
pub(crate) const CACHE_ENTRIES: usize = 4096;

const CHUNK: usize = 64 * 1024;

/// A binary as it is on disk now: a rebuilt or replaced file differs in
/// mtime, size or inode and is hashed again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    path: Arc<str>,
    mtime_s: i64,
    mtime_ns: i64,
    size: u64,
    ino: u64,
}

impl CacheKey {
    fn new(path: &str, meta: &Metadata) -> CacheKey {
        CacheKey::of(path, FileId::of(meta))
    }

    fn of(path: &str, id: FileId) -> CacheKey {
        CacheKey {
            path: Arc::from(path),
            mtime_s: id.mtime_s,
            mtime_ns: id.mtime_ns,
            size: id.size,
            ino: id.ino,
        }
    }
}

/// What tells one version of a file from another (as [`CacheKey`] does),
/// read while a process still ran it, to hash its binary after it exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    mtime_s: i64,
    mtime_ns: i64,
    size: u64,
    ino: u64,
}

impl FileId {
    pub fn of(meta: &Metadata) -> FileId {
        FileId {
            mtime_s: meta.mtime(),
            mtime_ns: meta.mtime_nsec(),
            size: meta.size(),
            ino: meta.ino(),
        }
    }
}

/// Why a digest is absent; the `edr.hash_skipped` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    TooLarge,
    Vanished,
    Unreadable,
    NotRegular,
}

impl Skip {
    pub fn as_str(self) -> &'static str {
        match self {
            Skip::TooLarge => "too_large",
            Skip::Vanished => "vanished",
            Skip::Unreadable => "unreadable",
            Skip::NotRegular => "not_regular",
        }
    }

    fn from_io(e: &io::Error) -> Skip {
        match e.kind() {
            io::ErrorKind::NotFound => Skip::Vanished,
            _ => Skip::Unreadable,
        }
    }
}

/// Digests keyed by (path, mtime, size, inode), evicting the oldest entry
/// when full.
#[derive(Debug)]
pub(crate) struct HashCache {
    digests: HashMap<CacheKey, [u8; 32]>,
    order: VecDeque<CacheKey>,
    capacity: usize,
    /// Reused read buffer, allocated on the first miss.
    buf: Vec<u8>,
}

impl HashCache {
    pub fn new(capacity: usize) -> HashCache {
        HashCache {
            digests: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            buf: Vec::new(),
        }
    }

    /// The digest of the executable known as `path`, read through `open`
    /// (on Linux `/proc/<pid>/exe`, which reaches the binary the process
    /// runs even if the path was since replaced or deleted).
    pub fn digest(
        &mut self,
        path: &str,
        open: &Path,
        cancel: &CancellationToken,
    ) -> Result<[u8; 32], Skip> {
        let meta = std::fs::metadata(open).map_err(|e| Skip::from_io(&e))?;
        // Checked before opening: opening a FIFO blocks, a device may be
        // endless or have side effects.
        if !meta.is_file() {
            return Err(Skip::NotRegular);
        }
        if meta.size() > MAX_HASH_BYTES {
            return Err(Skip::TooLarge);
        }
        let key = CacheKey::new(path, &meta);
        if let Some(d) = self.digests.get(&key) {
            return Ok(*d);
        }
        let file = open_regular(open)?;
        let digest = self.hash_file(file, cancel)?;
        self.insert(key, digest);
        Ok(digest)
    }

    /// The digest of the file `id` identifies (a binary a process ran,
    /// read before it exited): from the cache, or from `path` if the file
    /// there is still that one.
    pub fn digest_of(
        &mut self,
        path: &str,
        id: FileId,
        cancel: &CancellationToken,
    ) -> Result<[u8; 32], Skip> {
        let key = CacheKey::of(path, id);
        if let Some(d) = self.digests.get(&key) {
            return Ok(*d);
        }
        let file = open_regular(Path::new(path))?;
        let meta = file.metadata().map_err(|e| Skip::from_io(&e))?;
        if FileId::of(&meta) != id {
            return Err(Skip::Vanished);
        }
        if meta.size() > MAX_HASH_BYTES {
            return Err(Skip::TooLarge);
        }
        let digest = self.hash_file(file, cancel)?;
        self.insert(key, digest);
        Ok(digest)
    }

    fn hash_file(&mut self, mut file: File, cancel: &CancellationToken) -> Result<[u8; 32], Skip> {
        self.buf.resize(CHUNK, 0);
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        loop {
            // Shutdown must not wait for a large binary; the event this
            // digest was for is not sent once cancelled.
            if cancel.is_cancelled() {
                return Err(Skip::Unreadable);
            }
            let n = match file.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Skip::from_io(&e)),
            };
            total += n as u64;
            // The file may have grown since it was measured.
            if total > MAX_HASH_BYTES {
                return Err(Skip::TooLarge);
            }
            hasher.update(&self.buf[..n]);
        }
        Ok(hasher.finalize().into())
    }

    fn insert(&mut self, key: CacheKey, digest: [u8; 32]) {
        while self.digests.len() >= self.capacity {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.digests.remove(&oldest);
                }
                None => break,
            }
        }
        self.order.push_back(key.clone());
        self.digests.insert(key, digest);
    }
}

/// Opens without blocking and re-checks the opened file, in case the path
/// was swapped for a FIFO or device after the metadata check.
fn open_regular(path: &Path) -> Result<File, Skip> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Skip::from_io(&e))?;
    let meta = file.metadata().map_err(|e| Skip::from_io(&e))?;
    if !meta.is_file() {
        return Err(Skip::NotRegular);
    }
    Ok(file)
}

/// Lowercase hex, the form ECS hash fields use.
pub(crate) fn hex(digest: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn sha256_hex(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes).into())
    }

    fn digest_of(cache: &mut HashCache, p: &Path) -> Result<String, Skip> {
        let path = p.to_str().expect("utf-8 temp path");
        cache
            .digest(path, p, &CancellationToken::new())
            .map(|d| hex(&d))
    }

    #[test]
    fn hashes_match_sha256_and_changes_are_rehashed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("tool");
        std::fs::write(&p, b"first version").expect("write");
        let mut cache = HashCache::new(8);
        assert_eq!(digest_of(&mut cache, &p), Ok(sha256_hex(b"first version")));
        assert_eq!(digest_of(&mut cache, &p), Ok(sha256_hex(b"first version")));
        assert_eq!(cache.digests.len(), 1);

        // A different size is a different key even within one mtime tick.
        std::fs::write(&p, b"second, longer version").expect("rewrite");
        assert_eq!(
            digest_of(&mut cache, &p),
            Ok(sha256_hex(b"second, longer version"))
        );
        assert_eq!(cache.digests.len(), 2);
    }

    #[test]
    fn multi_chunk_files_hash_correctly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("big");
        let data: Vec<u8> = (0..(3 * CHUNK + 17)).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&p)
            .and_then(|mut f| f.write_all(&data))
            .expect("write");
        let mut cache = HashCache::new(8);
        assert_eq!(digest_of(&mut cache, &p), Ok(sha256_hex(&data)));
    }

    #[test]
    fn the_oldest_entry_is_evicted_when_full() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cache = HashCache::new(2);
        let paths: Vec<_> = (0..3)
            .map(|i| {
                let p = dir.path().join(format!("bin{i}"));
                std::fs::write(&p, format!("binary {i}")).expect("write");
                p
            })
            .collect();
        for p in &paths {
            digest_of(&mut cache, p).expect("hashed");
        }
        assert_eq!(cache.digests.len(), 2);
        let first = CacheKey::new(
            paths[0].to_str().expect("utf-8"),
            &std::fs::metadata(&paths[0]).expect("meta"),
        );
        assert!(!cache.digests.contains_key(&first));
        assert_eq!(cache.order.len(), 2);
    }

    #[test]
    fn a_binary_is_hashed_by_identity_only_while_unchanged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("tool");
        std::fs::write(&p, b"what ran").expect("write");
        let path = p.to_str().expect("utf-8");
        let id = FileId::of(&std::fs::metadata(&p).expect("meta"));
        let cancel = CancellationToken::new();
        let mut cache = HashCache::new(8);
        assert_eq!(
            cache.digest_of(path, id, &cancel).map(|d| hex(&d)),
            Ok(sha256_hex(b"what ran"))
        );
        // Replaced since the process ran it: not the binary that ran.
        std::fs::remove_file(&p).expect("remove");
        std::fs::write(&p, b"something else entirely").expect("rewrite");
        let mut fresh = HashCache::new(8);
        assert_eq!(fresh.digest_of(path, id, &cancel), Err(Skip::Vanished));
        // The first cache still knows what ran.
        assert_eq!(
            cache.digest_of(path, id, &cancel).map(|d| hex(&d)),
            Ok(sha256_hex(b"what ran"))
        );
    }

    #[test]
    fn fifos_and_devices_are_never_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("no nul");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let mut cache = HashCache::new(8);
        // Opening a FIFO without a writer would block this test forever.
        assert_eq!(digest_of(&mut cache, &fifo), Err(Skip::NotRegular));
        assert_eq!(
            digest_of(&mut cache, Path::new("/dev/zero")),
            Err(Skip::NotRegular)
        );
        assert_eq!(digest_of(&mut cache, dir.path()), Err(Skip::NotRegular));
    }

    #[test]
    fn oversized_and_missing_files_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = dir.path().join("huge");
        // Sparse: costs no disk, and must not be read.
        std::fs::File::create(&big)
            .and_then(|f| f.set_len(MAX_HASH_BYTES + 1))
            .expect("sparse file");
        let mut cache = HashCache::new(8);
        assert_eq!(digest_of(&mut cache, &big), Err(Skip::TooLarge));
        assert_eq!(
            digest_of(&mut cache, &dir.path().join("absent")),
            Err(Skip::Vanished)
        );
        assert_eq!(cache.digests.len(), 0);
    }
}
