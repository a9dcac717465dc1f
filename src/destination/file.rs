//! The `file` destination: each update appended as one identify line of NDJSON. It lets the
//! shipped configuration run without a network, and gives operators a dry record to inspect.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use anyhow::Context;
use serde::Serialize;
use tokio::sync::oneshot;

use super::{DeliveryError, RowResults, UserUpdate, for_every_row};
use crate::tenure::Tenure;

pub struct FileDestination {
    /// Each call's lines go in one write of their own (no buffer to carry a failed write's
    /// rest into the next), by the appending thread, in the order the calls were made.
    appends: std::sync::mpsc::Sender<Append>,
}

/// One call's lines, the tenure within which they may be written, and where to say whether
/// they are on disk.
struct Append {
    lines: Vec<u8>,
    tenure: Tenure,
    done: oneshot::Sender<Result<(), DeliveryError>>,
}

#[derive(Serialize)]
struct Identify<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(rename = "userId")]
    user_id: &'a str,
    traits: std::collections::BTreeMap<&'a str, &'a serde_json::value::RawValue>,
}

impl FileDestination {
    pub fn open(path: &Path) -> anyhow::Result<FileDestination> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = if path.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
            open_fifo(path)?
        } else {
            // Read too, to find a line torn by a crash; a file the process may only write is
            // appended to all the same.
            let open = |read| OpenOptions::new().create(true).append(true).read(read).open(path);
            open(true)
                .or_else(|_| open(false))
                .with_context(|| format!("cannot open the destination file {}", path.display()))?
        };
        let (appends, calls) = std::sync::mpsc::channel::<Append>();
        std::thread::Builder::new()
            .name("file-destination".into())
            .spawn(move || {
                for Append { lines, tenure, done } in calls {
                    let _ = done.send(append(&file, &lines, &tenure));
                }
            })
            .context("cannot start the destination file's writer")?;
        Ok(FileDestination { appends })
    }

    /// Appends one line per update and syncs them to disk; the lines are acknowledged once
    /// synced. The append and its sync run on a thread of their own: on the runtime's thread
    /// they would hold up every other call meanwhile (the encoding of the next, the answers of
    /// the last), where a few calls in flight are meant to overlap.
    /// Lines queued there while the process stalled past `tenure` are not written.
    pub async fn send(&self, updates: &[UserUpdate], tenure: &Tenure) -> RowResults {
        let mut lines = Vec::with_capacity(updates.len() * 128);
        let encoded: Vec<Result<(), DeliveryError>> = updates.iter().map(|update| encode(update, &mut lines)).collect();
        let (done, appended) = oneshot::channel();
        let stopped = || Err(cannot_append(std::io::Error::other("the file's writer stopped")));
        let written = match self.appends.send(Append { lines, tenure: tenure.clone(), done }) {
            Ok(()) => appended.await.unwrap_or_else(|_| stopped()),
            Err(_) => stopped(),
        };
        updates
            .iter()
            .zip(&encoded)
            .flat_map(|(update, line)| for_every_row(std::slice::from_ref(update), &line.clone().and(written.clone())))
            .collect()
    }
}

/// Opens the FIFO at `path` for writing only, and only while a process reads it. Opened for
/// reading too, this process was a reader of its own: lines nobody else read counted as
/// delivered and went with it. (The check and the open are two steps: a reader that leaves
/// between them makes the open wait for the next one.)
fn open_fifo(path: &Path) -> anyhow::Result<File> {
    // A non-blocking open for writing fails at once when no process has the FIFO open to read.
    let probe = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(path);
    if let Err(e) = probe {
        if e.raw_os_error() == Some(libc::ENXIO) {
            anyhow::bail!("the destination file {} is a FIFO that no process reads", path.display());
        }
        return Err(e).with_context(|| format!("cannot open the destination file {}", path.display()));
    }
    OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the destination file {}", path.display()))
}

/// Appends `update`'s identify line to `lines`, or leaves them as they were.
fn encode(update: &UserUpdate, lines: &mut Vec<u8>) -> Result<(), DeliveryError> {
    let identify = Identify { kind: "identify", user_id: &update.user_id, traits: update.traits()? };
    let before = lines.len();
    serde_json::to_writer(&mut *lines, &identify).map_err(|e| {
        lines.truncate(before);
        DeliveryError::permanent(e.to_string())
    })?;
    lines.push(b'\n');
    Ok(())
}

/// Appends `lines` under the file's lock (other processes may append to the same file for
/// other computations), after any torn line, and syncs them: they count as delivered only once
/// on disk, so a power loss must not keep them acknowledged in the state and lost from the
/// file. A write that failed half-way (a full disk) is cut back. Nothing is written past
/// `tenure` unless a renewal says the leases are still ours, asked before taking the file's lock
/// (the other process may be waiting for it while holding the state's), and checked again
/// after the lock's wait.
fn append(mut file: &File, lines: &[u8], tenure: &Tenure) -> Result<(), DeliveryError> {
    if !file.metadata().map_err(cannot_append)?.is_file() {
        // a pipe or a device (/dev/null): nothing to keep whole
        return may_write(tenure).and_then(|()| file.write_all(lines).map_err(cannot_append));
    }
    loop {
        may_write(tenure)?;
        file.lock().map_err(cannot_append)?;
        if tenure.lapsed().is_none() {
            break;
        }
        file.unlock().map_err(cannot_append)?;
    }
    let appended = write_whole(file, lines).map_err(cannot_append);
    file.unlock().map_err(cannot_append)?;
    appended
}

/// Under the file's lock: `lines` after the last whole line, synced, or cut back.
fn write_whole(mut file: &File, lines: &[u8]) -> std::io::Result<()> {
    cut_torn_line(file)?;
    let before = file.metadata()?.len();
    file.write_all(lines).and_then(|()| file.sync_data()).inspect_err(|_| {
        let _ = file.set_len(before);
    })
}

fn cannot_append(e: std::io::Error) -> DeliveryError {
    DeliveryError::transient(format!("cannot append to the destination file: {e}"))
}

/// Refused, unsent, once the sender's leases may have lapsed. Blocking.
fn may_write(tenure: &Tenure) -> Result<(), DeliveryError> {
    tenure.confirm().map_or(Ok(()), |why| Err(DeliveryError::unsent(why)))
}

/// Cuts the file back to its last whole line: a process killed in the middle of an append left
/// part of a line, never acknowledged (its call is sent again), onto which the next line would
/// be appended.
fn cut_torn_line(file: &File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    let mut last = [0u8];
    // A file opened write-only is not read.
    if len == 0 || file.read_exact_at(&mut last, len - 1).is_err() || last[0] == b'\n' {
        return Ok(()); // every call but one after a crash: a byte read, nothing cut
    }
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let read = &mut chunk[..(end - start) as usize];
        file.read_exact_at(read, start)?;
        if let Some(i) = read.iter().rposition(|&b| b == b'\n') {
            return file.set_len(start + i as u64 + 1);
        }
        end = start;
    }
    file.set_len(0)
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::*;
    use crate::change::PendingValue;
    use crate::config::Kind;

    fn update(user: &str) -> UserUpdate {
        let value = PendingValue {
            key: "vip".into(),
            value: "true".into(),
            kind: Kind::Audience,
            changed_at: "2026-12-06T00:00:00.000Z".into(),
        };
        UserUpdate { user_id: user.into(), values: vec![value] }
    }

    #[tokio::test]
    async fn a_line_torn_by_a_kill_is_cut_before_the_next_append() {
        // Review finding: killed mid-append, the next pass appended its first line onto the
        // fragment, and recorded it acknowledged.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        let whole = "{\"type\":\"identify\",\"userId\":\"u0\",\"traits\":{\"vip\":true}}\n";
        std::fs::write(&path, format!("{whole}{{\"type\":\"identify\",\"userId\":\"u1\",\"tr")).unwrap();
        let destination = FileDestination::open(&path).unwrap();
        assert!(destination.send(&[update("u2")], &crate::tenure::UNBOUNDED).await.iter().all(Result::is_ok));
        let text = std::fs::read_to_string(&path).unwrap();
        let users: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["userId"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(users, ["u0", "u2"]);
    }

    /// A call's append and sync wait off the runtime's thread: on the one thread of `sync`
    /// and `run`, a destination file that stalls (a full pipe here, a hung mount for an
    /// operator) held up every other task meanwhile, SIGTERM's handling included.
    #[test]
    fn a_stalled_append_leaves_the_runtimes_thread_free() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        // A reader that does not read yet (opening it non-blocking does not wait for a writer).
        let _idle = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(&path).unwrap();
        let destination = FileDestination::open(&path).unwrap();
        // More than a pipe holds, so that the append waits for a reader.
        let updates: Vec<UserUpdate> = (0..5000).map(|i| update(&format!("user-{i:06}"))).collect();
        let (polled, first_poll) = std::sync::mpsc::channel();
        let sending = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let send = destination.send(&updates, &crate::tenure::UNBOUNDED);
                tokio::pin!(send);
                polled.send(futures::poll!(&mut send).is_pending()).unwrap();
                send.await
            })
        });
        // Only a deadlock detector: the old code never came back from that first poll.
        let pending = first_poll.recv_timeout(std::time::Duration::from_secs(60));
        assert_eq!(pending, Ok(true), "the first poll of a stalled append must come back pending");
        let lines = BufReader::new(File::open(&path).unwrap()).lines().take(5000).count();
        assert_eq!(lines, 5000);
        assert!(sending.join().unwrap().iter().all(Result::is_ok));
    }

    /// Review finding: a FIFO no process read was opened for reading too, so this process read
    /// it itself: every line counted as delivered, and went with the process.
    #[test]
    fn a_fifo_that_no_process_reads_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.fifo");
        assert!(std::process::Command::new("mkfifo").arg(&path).status().unwrap().success());
        let refused = FileDestination::open(&path).err().expect("a FIFO nobody reads must be refused");
        assert!(refused.to_string().contains("is a FIFO that no process reads"), "{refused:#}");
    }

    #[tokio::test]
    async fn dev_null_still_takes_every_line() {
        // Review finding: cutting an "empty file's torn line" truncated /dev/null, which fails.
        let destination = FileDestination::open(Path::new("/dev/null")).unwrap();
        assert!(destination.send(&[update("u1")], &crate::tenure::UNBOUNDED).await.iter().all(Result::is_ok));
    }

    #[test]
    fn a_file_of_whole_lines_or_of_one_torn_line_is_kept_or_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        std::fs::write(&path, "a\nb\n").unwrap();
        cut_torn_line(&File::open(&path).unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a\nb\n");
        std::fs::write(&path, "x".repeat(200_000)).unwrap();
        cut_torn_line(&OpenOptions::new().write(true).read(true).open(&path).unwrap()).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
    }
}
