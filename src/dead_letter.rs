//! The dead-letter file: records that could not be sent at all (too large for the destination
//! even with every value cut that may be cut) and alerts that cannot be forwarded (no id, no
//! readable lastUpdate time, not decodable), one JSON object a line, with the reason, so that
//! nothing is dropped silently and an operator can replay or inspect them. The daemon always has
//! one: `<state_dir>/dead-letter.ndjson` unless the configuration names another.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

/// One dead letter.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Letter<'a> {
    pub destination: &'a str,
    /// `None` for an alert object without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_date_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_name: Option<&'a str>,
    pub reason: String,
    /// The whole record, as it would have been sent without a size limit, or the alert object
    /// as the API returned it.
    pub record: &'a str,
}

/// An append-only dead-letter file, shared by the destinations that name it.
#[derive(Debug)]
pub struct DeadLetterFile {
    path: PathBuf,
    file: Mutex<std::fs::File>,
}

impl DeadLetterFile {
    /// Opens (creating it, mode 0600: records may hold user names) the file for appending.
    pub fn open(path: &Path) -> std::io::Result<DeadLetterFile> {
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        Ok(DeadLetterFile {
            path: path.to_path_buf(),
            file: Mutex::new(opts.open(path)?),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one letter as one line and flushes it to the file.
    pub fn write(&self, letter: &Letter<'_>) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(&LetterLine {
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            letter,
        })
        .map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("dead-letter file lock poisoned"))?;
        // One write call per line: concurrent writers never interleave within a line.
        file.write_all(&line)?;
        file.flush()
    }
}

#[derive(Serialize)]
struct LetterLine<'a> {
    time: String,
    #[serde(flatten)]
    letter: &'a Letter<'a>,
}
