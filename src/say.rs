//! What the program says on standard error outside its logs (exit reasons, progress lines,
//! lease waits): as text for a person, or as JSON lines with `--log-format json`. A ground
//! floor shared by the command line, the commands, the pass and the progress lines.

use std::sync::OnceLock;

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How `say` writes: set once by `main`, from `--log-format`.
static SAYING: OnceLock<LogFormat> = OnceLock::new();

/// Writes standard error as `format`, from now on.
pub fn say_as(format: LogFormat) {
    let _ = SAYING.set(format);
}

/// Says `line` on standard error outside the logs (an exit reason, a progress line): as it is
/// for a person, or with `--log-format json` as one JSON object shaped like a log event of
/// `level`, so that what reads standard error reads JSON only.
pub fn say(level: tracing::Level, line: &str) {
    match SAYING.get() {
        Some(LogFormat::Json) => {
            let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
            let event = serde_json::json!({
                "timestamp": timestamp, "level": level.as_str(), "message": line, "target": "audience_sync",
            });
            eprintln!("{event}");
        }
        _ => eprintln!("{line}"),
    }
}
