//! A file snapshot's fingerprint: size, modification time and SHA-256 of its bytes. The same
//! size and hash as the last recorded diff's prove the snapshot unchanged, so the diff (the
//! costliest part of an unchanged pass) can be skipped; the time is kept for the staleness check.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::config::Source;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub size: u64,
    /// RFC 3339 with nanoseconds, UTC.
    pub modified_at: String,
    pub sha256: String,
}

impl Fingerprint {
    /// The same bytes (size and SHA-256), whatever the modification time says: a snapshot
    /// rewritten unchanged by a nightly export is still unchanged.
    pub fn same_content(&self, other: &Fingerprint) -> bool {
        self.size == other.size && self.sha256 == other.sha256
    }
}

/// The size and modification time of a file snapshot, taken before it is read (so that a write
/// during the read shows as a different time next pass).
fn metadata(source: &Source) -> Option<(u64, String)> {
    let Source::File { path, .. } = source else { return None };
    let meta = std::fs::metadata(path).ok()?;
    let modified = chrono::DateTime::<chrono::Utc>::from(meta.modified().ok()?);
    Some((meta.len(), modified.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)))
}

/// SHA-256 of a file, hex.
pub fn sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// The fingerprint of a file snapshot; `None` for other sources or an unreadable file (the
/// load then reports the error).
pub fn fingerprint(source: &Source) -> Option<Fingerprint> {
    let Source::File { path, .. } = source else { return None };
    let (size, modified_at) = metadata(source)?;
    let sha256 = sha256(path).ok()?;
    Some(Fingerprint { size, modified_at, sha256 })
}
