//! A file snapshot's fingerprint: size, modification time and SHA-256 of its bytes. The same
//! size and hash as the last recorded diff's prove the snapshot unchanged, so the diff (the
//! costliest part of an unchanged pass) can be skipped; the time is kept for the staleness check.
//!
//! The fingerprint a diff records is taken in the very read that loads the snapshot
//! (`Hashing`), so a file replaced between a check and the load can never be recorded under
//! the bytes of the other.

use std::fs::File;
use std::io::Read;

use sha2::{Digest, Sha256};

use crate::config::Source;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub size: u64,
    /// RFC 3339 with nanoseconds, UTC.
    pub modified_at: String,
    /// Hex; empty when the state no longer vouches for any content (a first sync started).
    pub sha256: String,
}

impl Fingerprint {
    /// The same bytes (size and SHA-256), whatever the modification time says: a snapshot
    /// rewritten unchanged by a nightly export is still unchanged.
    pub fn same_content(&self, other: &Fingerprint) -> bool {
        self.may_be(other.size) && self.sha256 == other.sha256
    }

    /// Whether a file of `size` bytes may hold the content this fingerprint vouches for (then
    /// only its hash tells).
    pub fn may_be(&self, size: u64) -> bool {
        !self.sha256.is_empty() && self.size == size
    }
}

/// A file's modification time, as recorded.
fn modified_at(meta: &std::fs::Metadata) -> std::io::Result<String> {
    let modified = chrono::DateTime::<chrono::Utc>::from(meta.modified()?);
    Ok(modified.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
}

/// A reader that hashes and counts every byte read through it.
pub struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
    modified_at: String,
}

impl Hashing<File> {
    /// Wraps an open snapshot file; its modification time is taken now, before the read, so
    /// that a write during the read shows as a different time next pass.
    pub fn new(file: File) -> std::io::Result<Self> {
        let modified_at = modified_at(&file.metadata()?)?;
        Ok(Hashing { inner: file, hasher: Sha256::new(), size: 0, modified_at })
    }
}

impl<R> Hashing<R> {
    /// The fingerprint of everything read so far.
    pub fn fingerprint(&self) -> Fingerprint {
        let sha256 = self.hasher.clone().finalize().iter().map(|b| format!("{b:02x}")).collect();
        Fingerprint { size: self.size, modified_at: self.modified_at.clone(), sha256 }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

/// The size and modification time of a file snapshot as it is now, from its metadata; `None`
/// for other sources or a missing file. The file is not opened: this runs on the pass's own
/// thread, where opening a named pipe would wait for a writer, past any SIGTERM.
pub fn size_and_time(source: &Source) -> Option<(u64, String)> {
    let Source::File { path, .. } = source else { return None };
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.len(), modified_at(&meta).ok()?))
}

/// The fingerprint of a file snapshot as it is now, for the unchanged check before a load;
/// `None` for other sources or an unreadable file (the load then reports the error).
pub fn fingerprint(source: &Source) -> Option<Fingerprint> {
    let Source::File { path, .. } = source else { return None };
    let mut reader = Hashing::new(File::open(path).ok()?).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    while reader.read(&mut buf).ok()? > 0 {}
    Some(reader.fingerprint())
}
