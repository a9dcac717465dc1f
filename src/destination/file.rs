//! The `file` destination: each update appended as one identify line of NDJSON. It lets the
//! shipped configuration run without a network, and gives operators a dry record to inspect.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use serde::Serialize;

use super::{DeliveryError, UserUpdate};

pub struct FileDestination {
    out: Mutex<BufWriter<File>>,
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
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the destination file {}", path.display()))?;
        Ok(FileDestination {
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    /// Appends the update as one line and flushes it; the line is acknowledged once written.
    pub fn send(&self, update: &UserUpdate) -> Result<(), DeliveryError> {
        let identify = Identify {
            kind: "identify",
            user_id: &update.user_id,
            traits: update.traits()?,
        };
        let mut line =
            serde_json::to_vec(&identify).map_err(|e| DeliveryError::new(e.to_string()))?;
        line.push(b'\n');
        let mut out = self
            .out
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        out.write_all(&line)
            .and_then(|()| out.flush())
            .map_err(|e| DeliveryError::new(format!("cannot append to the destination file: {e}")))
    }
}
