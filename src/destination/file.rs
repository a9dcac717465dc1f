//! The `file` destination: each update appended as one identify line of NDJSON. It lets the
//! shipped configuration run without a network, and gives operators a dry record to inspect.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use serde::Serialize;

use super::{DeliveryError, RowResults, UserUpdate, for_every_row};

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
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the destination file {}", path.display()))?;
        Ok(FileDestination { out: Mutex::new(BufWriter::with_capacity(1 << 20, file)) })
    }

    /// Appends one line per update and syncs them to disk; the lines are acknowledged once
    /// synced.
    pub fn send(&self, updates: &[UserUpdate]) -> RowResults {
        let encoded: Vec<Result<Vec<u8>, DeliveryError>> = updates
            .iter()
            .map(|update| {
                let identify = Identify { kind: "identify", user_id: &update.user_id, traits: update.traits()? };
                serde_json::to_vec(&identify).map_err(|e| DeliveryError::permanent(e.to_string()))
            })
            .collect();
        let mut lines = Vec::with_capacity(updates.len() * 128);
        for line in encoded.iter().flatten() {
            lines.extend_from_slice(line);
            lines.push(b'\n');
        }
        let written = {
            let mut out = self.out.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            // Synced before the lines count as delivered: a power loss must not keep them
            // acknowledged in the state and lost from the file.
            out.write_all(&lines)
                .and_then(|()| out.flush())
                .and_then(|()| out.get_ref().sync_data())
                .map_err(|e| DeliveryError::transient(format!("cannot append to the destination file: {e}")))
        };
        updates
            .iter()
            .zip(&encoded)
            .flat_map(|(update, line)| {
                let result = match line {
                    Ok(_) => written.clone(),
                    Err(e) => Err(e.clone()),
                };
                for_every_row(std::slice::from_ref(update), &result)
            })
            .collect()
    }
}
