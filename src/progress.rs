//! Progress of long work (loading, diff, delivery): bars in a terminal, a plain line every ten
//! seconds otherwise, nothing in the daemon (whose passes log their summaries).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing::Level;

use crate::say::say;

/// How often a plain progress line is written when standard error is not a terminal.
const LINE_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
enum Mode {
    Off,
    Lines,
    Bars(MultiProgress),
}

/// Where progress goes for one command.
#[derive(Clone)]
pub struct Progress(Mode);

impl Progress {
    /// Bars when standard error is a terminal, plain lines otherwise.
    pub fn for_command() -> Progress {
        if std::io::stderr().is_terminal() {
            Progress(Mode::Bars(MultiProgress::with_draw_target(ProgressDrawTarget::stderr())))
        } else {
            Progress(Mode::Lines)
        }
    }

    /// No progress output.
    pub fn off() -> Progress {
        Progress(Mode::Off)
    }

    /// A new stage, e.g. "order_completed: loading", counting `unit`s towards `total` if known.
    pub fn stage(&self, label: String, unit: &'static str, total: Option<u64>) -> Stage {
        let bar = match &self.0 {
            Mode::Off => return Stage(None),
            Mode::Lines => None,
            Mode::Bars(multi) => {
                let bar = match total {
                    Some(n) => ProgressBar::new(n).with_style(
                        ProgressStyle::with_template(
                            "{msg:40} [{bar:30}] {human_pos}/{human_len} ({elapsed}, eta {eta})",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    ),
                    None => ProgressBar::new_spinner().with_style(
                        ProgressStyle::with_template("{spinner} {msg:40} {human_pos} {per_sec}")
                            .expect("valid template"),
                    ),
                };
                let bar = multi.add(bar);
                bar.set_message(label.clone());
                Some(bar)
            }
        };
        Stage(Some(Arc::new(Inner {
            label,
            unit,
            bar,
            done: AtomicU64::new(0),
            last_line: Mutex::new(Instant::now()),
        })))
    }
}

struct Inner {
    label: String,
    unit: &'static str,
    bar: Option<ProgressBar>,
    done: AtomicU64,
    last_line: Mutex<Instant>,
}

/// One stage's counter; cheap to clone and to bump from any thread.
#[derive(Clone, Default)]
pub struct Stage(Option<Arc<Inner>>);

impl Stage {
    pub fn inc(&self, n: u64) {
        let Some(inner) = &self.0 else { return };
        let done = inner.done.fetch_add(n, Ordering::Relaxed) + n;
        match &inner.bar {
            Some(bar) => bar.inc(n),
            // Look at the clock only now and then: this runs once per row.
            None if (done - n) / 4096 == done / 4096 => {}
            None => {
                let mut last = inner.last_line.lock().unwrap_or_else(|p| p.into_inner());
                if last.elapsed() >= LINE_EVERY {
                    *last = Instant::now();
                    say(Level::INFO, &format!("{}: {done} {}", inner.label, inner.unit));
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = self.0.as_ref().and_then(|i| i.bar.as_ref()) {
            bar.finish();
        }
    }
}
