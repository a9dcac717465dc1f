//! Who holds a computation's lease, as every backend records it: the holder's process, told
//! apart from any other on the same host, and what an operator is shown of a live lease.

/// The pass writing through a store lost the lease of one of its computations: another
/// process took it over, and this one must stop before writing anything more.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "lost the lease of {keys}: it lapsed, went to another process, or its pass ended; stopping without writing more"
)]
pub struct LeaseLost {
    pub keys: String,
}

/// How a sender past its tenure asks whether its leases (or its shard's claim) are still its
/// own: `renew`, tried again after an answer that says neither (a lock still held after its
/// wait, a lost connection), three times at most and not once shutting down.
pub fn renewal(renew: impl Fn() -> anyhow::Result<()> + Send + Sync + 'static) -> crate::tenure::Renewal {
    std::sync::Arc::new(move || {
        let mut tries = 0;
        loop {
            tries += 1;
            match renew() {
                Err(e) if !e.is::<LeaseLost>() && tries < 3 && !crate::state::signalled() => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot renew leases past their tenure; trying again");
                }
                renewed => return renewed,
            }
        }
    })
}

/// Who holds a lease: this process, described for operators.
#[derive(Debug, Clone)]
pub struct LeaseOwner {
    pub id: String,
    pub pid: u32,
    pub host: String,
    /// This very process, where `/proc` tells (stored as text in `leases.process`).
    pub(crate) process: Option<ProcessIdentity>,
}

impl LeaseOwner {
    /// An owner id unique to this process.
    pub fn this_process() -> LeaseOwner {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let pid = std::process::id();
        let process = ProcessIdentity::of(pid);
        LeaseOwner { id: format!("{host}:{pid}:{:016x}", fastrand::u64(..)), pid, host, process }
    }
}

/// A process as this kernel knows it: a hostname is shared by containers on the host network,
/// and a PID is reused and means another process in another PID namespace, but a boot, a PID
/// namespace, a PID and a start time name one process only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProcessIdentity {
    boot_id: String,
    pid_namespace: String,
    /// Clock ticks after boot (field 22 of `/proc/PID/stat`).
    started: u64,
}

impl ProcessIdentity {
    /// The identity of `pid` as seen from this process's PID namespace.
    fn of(pid: u32) -> Option<ProcessIdentity> {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_string();
        let pid_namespace = std::fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy().into_owned();
        Some(ProcessIdentity { boot_id, pid_namespace, started: start_time(pid)? })
    }

    fn parse(text: &str) -> Option<ProcessIdentity> {
        let mut parts = text.split(' ');
        let (boot_id, pid_namespace, started) = (parts.next()?, parts.next()?, parts.next()?.parse().ok()?);
        Some(ProcessIdentity { boot_id: boot_id.into(), pid_namespace: pid_namespace.into(), started })
    }
}

impl std::fmt::Display for ProcessIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.boot_id, self.pid_namespace, self.started)
    }
}

/// When `pid` started, in clock ticks after boot; `None` if no such process is visible.
fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|(_, started)| started)
}

/// `pid`'s state (`R`, `S`, `Z`, ...) and start time, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count from its end.
    let mut after_name = stat[stat.rfind(')')? + 2..].split(' ');
    let state = after_name.next()?.chars().next()?;
    Some((state, after_name.nth(18)?.parse().ok()?))
}

/// A live lease held by someone else.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct HeldLease {
    pub computation_key: String,
    pub pid: i64,
    pub host: String,
    pub expires_at: String,
    pub process: Option<String>,
}

impl std::fmt::Display for HeldLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is being synced by pid {} on {} (lease expires {})",
            self.computation_key, self.pid, self.host, self.expires_at
        )
    }
}

/// Whether the holder of a live lease is certainly gone: it ran on this boot of this host, in
/// our PID namespace, and its PID is free or now belongs to a process started at another time.
/// In any doubt (another namespace, a lease written without an identity) it is not.
pub fn holder_gone(holder: &HeldLease, owner: &LeaseOwner) -> bool {
    let Some(theirs) = holder.process.as_deref().and_then(ProcessIdentity::parse) else { return false };
    let Some(ours) = &owner.process else { return false };
    if holder.host != owner.host || theirs.boot_id != ours.boot_id || theirs.pid_namespace != ours.pid_namespace {
        return false;
    }
    let Ok(pid) = u32::try_from(holder.pid) else { return false };
    running_since(pid) != Some(theirs.started)
}

/// When `pid` started, if it is still running: a process killed and not yet reaped by its
/// parent (a zombie: state `Z`, or `X` as it goes) keeps its entry in `/proc` with its start
/// time, but holds nothing any more (review finding: after a kill -9, `sync` waited for the
/// lease to expire while this VM's init was slow to reap).
fn running_since(pid: u32) -> Option<u64> {
    stat(pid).filter(|(state, _)| !matches!(state, 'Z' | 'X')).map(|(_, started)| started)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease of `pid`'s, as `owner`'s host would record it.
    fn lease_of(pid: u32, owner: &LeaseOwner) -> HeldLease {
        HeldLease {
            computation_key: "a".into(),
            pid: pid.into(),
            host: owner.host.clone(),
            expires_at: "later".into(),
            process: ProcessIdentity::of(pid).map(|p| p.to_string()),
        }
    }

    /// Waits (a bounded number of looks) until `pid` is a zombie.
    fn zombie(pid: u32) -> bool {
        (0..1_000_000).any(|_| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat.rfind(')').and_then(|end| stat.get(end + 2..end + 3));
            if state == Some("Z") {
                return true;
            }
            std::thread::yield_now();
            false
        })
    }

    #[test]
    fn a_holder_killed_and_not_yet_reaped_is_gone() {
        let owner = LeaseOwner::this_process();
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let lease = lease_of(child.id(), &owner);
        assert!(!holder_gone(&lease, &owner), "a running holder was taken for gone");
        child.kill().unwrap();
        assert!(zombie(child.id()), "the killed child never showed as a zombie");
        let gone = holder_gone(&lease, &owner);
        child.wait().unwrap();
        assert!(gone, "a killed holder, not yet reaped, was taken for alive");
        assert!(holder_gone(&lease, &owner), "a reaped holder was taken for alive");
    }
}
