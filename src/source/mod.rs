//! Snapshots: the complete current members or values of one computation, read whole and
//! handed to the diff sorted by user, or not at all.

mod file;
pub mod fingerprint;
mod http;
mod member;
mod page;
mod sort;
mod sql;
mod value;

use std::path::Path;

use tokio::runtime::Handle;

use crate::config::{Computation, Kind, Source};
use crate::progress::Stage;
use crate::record::{SnapshotRecord, TRUE};
use crate::redact::redact_url;
use member::Rules;

pub use sort::{SortedRecords, Sorter};
pub use value::canonical_value;

/// A snapshot that did not load: where, and what is wrong.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}{}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default(), field.map(|f| format!(": {f}")).unwrap_or_default())]
pub struct SnapshotError {
    pub source_name: String,
    pub line: Option<u64>,
    pub field: Option<&'static str>,
    pub message: String,
}

impl SnapshotError {
    pub(crate) fn new(
        source_name: &str,
        line: Option<u64>,
        field: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        SnapshotError { source_name: source_name.to_string(), line, field, message: message.into() }
    }
}

/// Reads the whole snapshot and sorts it; the iterator then checks for users listed twice.
/// Runs on a blocking thread: HTTP and SQL sources are driven through the runtime's handle.
pub fn load_sorted(
    computation: &Computation,
    sort_buffer_bytes: usize,
    loading: &Stage,
) -> Result<Deduplicated, SnapshotError> {
    let name = source_name(&computation.source);
    let rules = Rules {
        kind: computation.kind,
        allow_structured: computation.allow_structured,
        max_user_id_bytes: computation.max_user_id_bytes,
    };
    let mut sorter = Sorter::new(sort_buffer_bytes);
    let mut read = 0u64;
    let mut fingerprint = None;
    let mut push = |rec: SnapshotRecord| {
        read += 1;
        if read.is_multiple_of(4096) {
            loading.inc(4096);
        }
        sorter.push(rec).map_err(|e| {
            let dir = std::env::temp_dir();
            SnapshotError::new(&name, None, None, format!("cannot spill to a temp file in {}: {e}", dir.display()))
        })
    };
    match &computation.source {
        Source::File { path, format, gzip, ready_file } => {
            if let Some(marker) = ready_file {
                check_ready(path, marker)?;
            }
            fingerprint = Some(file::read(path, *format, *gzip, rules, &mut push)?);
        }
        Source::Http { url, format, authorization, timeout, max_retries, max_pages } => {
            let source = http::HttpSource {
                url,
                format: *format,
                authorization: authorization.as_ref(),
                timeout: *timeout,
                max_retries: *max_retries,
                max_pages: *max_pages,
            };
            http::read(&Handle::current(), &source, rules, &mut push)?;
        }
        Source::Sql { url, query } => sql::read(&Handle::current(), url, query, rules, &mut push)?,
    }
    loading.inc(read % 4096);
    loading.finish();
    let sorted = sorter.finish().map_err(|e| {
        let dir = std::env::temp_dir();
        SnapshotError::new(&name, None, None, format!("cannot sort (temp files in {}): {e}", dir.display()))
    })?;
    Ok(Deduplicated { name, inner: sorted, previous: None, fingerprint })
}

/// How a source is named in errors, logs and the state: never with credentials.
pub fn source_name(source: &Source) -> String {
    match source {
        Source::File { path, .. } => path.display().to_string(),
        Source::Http { url, .. } => redact_url(url.as_str()),
        Source::Sql { url, .. } => redact_url(url.expose()),
    }
}

/// A snapshot with a `ready_file` is read only once the exporter wrote that marker, after the
/// snapshot: a missing or older marker means the export may still be running.
fn check_ready(snapshot: &Path, marker: &Path) -> Result<(), SnapshotError> {
    let name = snapshot.display().to_string();
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified());
    let marker_at = modified(marker).map_err(|_| {
        SnapshotError::new(
            &name,
            None,
            None,
            format!("the ready file {} is missing: the export may be unfinished", marker.display()),
        )
    })?;
    let snapshot_at =
        modified(snapshot).map_err(|e| SnapshotError::new(&name, None, None, format!("cannot open snapshot: {e}")))?;
    if marker_at < snapshot_at {
        return Err(SnapshotError::new(
            &name,
            None,
            None,
            format!("the ready file {} is older than the snapshot: the export may be unfinished", marker.display()),
        ));
    }
    Ok(())
}

/// Sorted records, failing on the first user listed twice (naming both lines).
pub struct Deduplicated {
    name: String,
    inner: SortedRecords,
    previous: Option<(String, u64)>,
    /// A file snapshot's fingerprint, taken in the read that loaded these records.
    pub fingerprint: Option<fingerprint::Fingerprint>,
}

impl Iterator for Deduplicated {
    type Item = Result<SnapshotRecord, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rec = match self.inner.next()? {
            Ok(r) => r,
            Err(e) => {
                return Some(Err(SnapshotError::new(&self.name, None, None, format!("cannot read a sorted run: {e}"))));
            }
        };
        if let Some((prev, prev_line)) = &self.previous
            && *prev == rec.user_id
        {
            return Some(Err(SnapshotError::new(
                &self.name,
                Some(rec.line),
                Some("user_id"),
                format!("user {:?} is listed twice (lines {prev_line} and {})", rec.user_id, rec.line),
            )));
        }
        match &mut self.previous {
            Some((prev, line)) => {
                prev.clear();
                prev.push_str(&rec.user_id);
                *line = rec.line;
            }
            None => self.previous = Some((rec.user_id.clone(), rec.line)),
        }
        Some(Ok(rec))
    }
}

/// Checks that a source can be read (used by `check`): loads it whole and counts its users.
pub fn count_users(computation: &Computation, sort_buffer_bytes: usize) -> Result<u64, SnapshotError> {
    let mut n = 0;
    for rec in load_sorted(computation, sort_buffer_bytes, &Stage::default())? {
        rec?;
        n += 1;
    }
    Ok(n)
}

/// The `value` of an audience member.
pub(crate) fn member_value(kind: Kind) -> Option<&'static str> {
    (kind == Kind::Audience).then_some(TRUE)
}
