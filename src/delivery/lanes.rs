//! The connections the committer writes on. SQLite takes one writer at a time: its one writer
//! runs each transaction on the committer's own thread, as soon as it is asked. PostgreSQL
//! writes beside itself: there each writer has a connection and a thread of its own, and the
//! committer gathers the next batch of answers while earlier ones commit; a 10M first sync's
//! inserts were one server process's work, with the worker waiting on each (docs/performance.md).

use std::collections::VecDeque;
use std::sync::mpsc as std_mpsc;

use tokio::sync::{mpsc, oneshot};

use super::WindowNote;
use crate::change::Outcome;
use crate::state::AnswerWriter;

/// A transaction asked of a lane.
pub enum Job {
    /// Record the answers of `calls`, and drop the notes `answered`.
    Record(Batch),
    /// Note a window about to be sent; `noted` hears how that went once the committer has it.
    Note { note: WindowNote, noted: oneshot::Sender<anyhow::Result<()>> },
    /// Let first syncs' queue runs of users in (`after`, `through`] give back their space.
    Release { after: String, through: String },
}

/// The answers of calls recorded in one transaction, and whom to hand them back to.
pub struct Batch {
    pub calls: Vec<Vec<Outcome>>,
    pub waiting: Vec<oneshot::Sender<Vec<Outcome>>>,
    /// The windows whose calls are in it, with how many each.
    pub windows: Vec<(u64, usize)>,
    /// `sending_windows` rows dropped in the same transaction.
    pub answered: Vec<i64>,
}

/// A job done: what the committer needs to go on from it.
pub enum Finished {
    Recorded { batch: Batch, quarantined: Vec<String> },
    Noted { note: WindowNote, noted: oneshot::Sender<anyhow::Result<()>>, ids: anyhow::Result<Vec<i64>> },
    Released,
}

/// A job's outcome; an error is the state's, and ends delivery (a note's goes to its sender).
pub type Done = anyhow::Result<Finished>;

fn run(writer: &mut AnswerWriter, keys: &[String], job: Job) -> Done {
    let finished = match job {
        Job::Record(batch) => {
            let quarantined = writer.record(&batch.calls, &batch.answered)?;
            writer.catch_up();
            Finished::Recorded { batch, quarantined }
        }
        Job::Note { note, noted } => {
            let ids = writer.note_window(keys, &note.after, &note.last);
            Finished::Noted { note, noted, ids }
        }
        Job::Release { after, through } => {
            writer.answered_through(&after, &through)?;
            Finished::Released
        }
    };
    Ok(finished)
}

pub enum Lanes {
    /// One writer, on this thread.
    Inline { writer: AnswerWriter, keys: Vec<String>, finished: VecDeque<Done> },
    /// Writers on threads of their own: `idle` ones take `jobs`, and say when done.
    Threads { jobs: Vec<std_mpsc::Sender<Job>>, idle: Vec<usize>, finished: mpsc::UnboundedReceiver<(usize, Done)> },
}

impl Lanes {
    /// `writers` on this thread when there is one, else each on a thread of its own; `keys`
    /// are the computations whose windows are noted.
    pub fn new(mut writers: Vec<AnswerWriter>, keys: Vec<String>) -> Lanes {
        if writers.len() == 1 {
            let writer = writers.remove(0);
            return Lanes::Inline { writer, keys, finished: VecDeque::new() };
        }
        let (done, finished) = mpsc::unbounded_channel();
        let jobs =
            writers.into_iter().enumerate().map(|(lane, writer)| spawn(lane, writer, keys.clone(), done.clone()));
        let jobs: Vec<_> = jobs.collect();
        Lanes::Threads { idle: (0..jobs.len()).collect(), jobs, finished }
    }

    /// Whether a job is out whose end the committer has not heard.
    pub fn busy(&self) -> bool {
        match self {
            Lanes::Inline { finished, .. } => !finished.is_empty(),
            Lanes::Threads { jobs, idle, .. } => idle.len() < jobs.len(),
        }
    }

    /// Whether a job may start now.
    pub fn has_idle(&self) -> bool {
        match self {
            Lanes::Inline { finished, .. } => finished.is_empty(),
            Lanes::Threads { idle, .. } => !idle.is_empty(),
        }
    }

    /// Starts `job` on an idle lane (see `has_idle`).
    pub fn start(&mut self, job: Job) {
        match self {
            Lanes::Inline { writer, keys, finished } => finished.push_back(run(writer, keys, job)),
            Lanes::Threads { jobs, idle, .. } => {
                let lane = idle.pop().expect("a lane is idle");
                // A lane's thread ends only once its sender is dropped.
                let _ = jobs[lane].send(job);
            }
        }
    }

    /// The next job to end; pending forever when none is out (see `busy`).
    pub async fn next_finished(&mut self) -> Done {
        match self {
            Lanes::Inline { finished, .. } => match finished.pop_front() {
                Some(done) => done,
                None => std::future::pending().await,
            },
            Lanes::Threads { idle, finished, .. } => match finished.recv().await {
                Some((lane, done)) => {
                    idle.push(lane);
                    done
                }
                None => Err(anyhow::anyhow!("the state's writers stopped")),
            },
        }
    }
}

/// A lane's thread: runs the jobs sent to it, one at a time, until its sender is dropped.
fn spawn(
    lane: usize,
    mut writer: AnswerWriter,
    keys: Vec<String>,
    done: mpsc::UnboundedSender<(usize, Done)>,
) -> std_mpsc::Sender<Job> {
    let (jobs, received) = std_mpsc::channel::<Job>();
    std::thread::spawn(move || {
        for job in received {
            if done.send((lane, run(&mut writer, &keys, job))).is_err() {
                break;
            }
        }
    });
    jobs
}
