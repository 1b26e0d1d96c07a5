//! Dead letters: alerts that cannot be forwarded (no id, no readable lastUpdate time, not
//! decodable) and records that cannot be delivered (too large for the destination even with
//! every value cut that may be cut, a damaged queue record), each with its reason, so that
//! nothing is dropped silently and an operator can inspect and replay them (issue 9 §5, §7).
//!
//! The daemon keeps them in the queue's store (`crate::queue`), committed with the page or
//! before the destination's cursor moves past the record. `send` writes them to a file
//! ([`DeadLetterFile`], `--dead-letter`). Both hold the same JSON object per letter. A
//! dead-letter file of older versions (`dead_letter`, `<state_dir>/dead-letter.ndjson`) is
//! imported into the store at the daemon's start ([`import_file`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

use crate::config::Config;
use crate::queue::{Queue, Record};

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
    /// The alert as the API sent it, when known: what `dead-letters replay` queues again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<&'a serde_json::value::RawValue>,
}

impl Letter<'_> {
    /// The letter as stored: one JSON object with the time it was made, no newline.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising borrowed strings and a RawValue cannot fail.
        serde_json::to_vec(&LetterLine {
            time: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            letter: self,
        })
        .unwrap_or_default()
    }
}

/// A dead letter read back, and its JSON as it was.
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredLetter {
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub destination: String,
    #[serde(default)]
    pub alert_id: Option<String>,
    #[serde(default)]
    pub tenant_name: Option<String>,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub record: String,
    #[serde(default)]
    pub alert: Option<Box<serde_json::value::RawValue>>,
    /// Its number in the store (0 for a line of a file).
    #[serde(skip)]
    pub number: u64,
    #[serde(skip)]
    pub line: String,
}

impl StoredLetter {
    /// Reads one letter; what is not one is kept as it is, its reason saying so.
    pub fn parse(line: &str) -> StoredLetter {
        let mut letter =
            serde_json::from_str::<StoredLetter>(line).unwrap_or_else(|e| StoredLetter {
                time: String::new(),
                destination: String::new(),
                alert_id: None,
                tenant_name: None,
                reason: format!("(not a dead letter: {e})"),
                record: String::new(),
                alert: None,
                number: 0,
                line: String::new(),
            });
        letter.line = line.to_string();
        letter
    }
}

/// Every letter of the file at `path`, in order (none when there is no file).
pub fn read_letters(path: &Path) -> std::io::Result<Vec<StoredLetter>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(StoredLetter::parse)
        .collect())
}

/// The daemon's dead letters, oldest first: read from the store without taking it, so that it
/// works while the daemon runs (`dead-letters list`).
pub fn list(config: &Config) -> anyhow::Result<Vec<StoredLetter>> {
    Ok(crate::queue::read_dead_letters(&config.state_dir)?
        .into_iter()
        .map(|(number, json)| {
            let mut l = StoredLetter::parse(&String::from_utf8_lossy(&json));
            l.number = number;
            l
        })
        .collect())
}

/// Moves the letters of a dead-letter file of older versions into the store, once: the file is
/// renamed to `….imported` after the letters are committed. Returns how many.
pub async fn import_file(queue: &Queue, path: &Path) -> anyhow::Result<usize> {
    let letters = read_letters(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if letters.is_empty() {
        return Ok(0);
    }
    let n = letters.len();
    queue
        .keep_dead_letters(letters.into_iter().map(|l| l.line.into_bytes()).collect())
        .await?;
    let mut done = path.as_os_str().to_owned();
    done.push(".imported");
    // Committed first, renamed after: a crash in between imports the file twice (letters
    // listed twice), never loses one.
    std::fs::rename(path, &done).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(n)
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

    /// Appends one letter as one line and makes it durable (`fdatasync`) before returning, so
    /// that `send` reports a dead letter only once it is safe.
    pub fn write(&self, letter: &Letter<'_>) -> std::io::Result<()> {
        self.write_json(&letter.to_json())
    }

    /// [`write`](Self::write) of a letter already made ([`Letter::to_json`]).
    pub fn write_json(&self, letter: &[u8]) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(letter.len() + 1);
        line.extend_from_slice(letter);
        line.push(b'\n');
        let mut file = self
            .file
            .lock()
            .map_err(|_| std::io::Error::other("dead-letter file lock poisoned"))?;
        // One write call per line: concurrent writers never interleave within a line.
        file.write_all(&line)?;
        file.sync_data()
    }
}

#[derive(Serialize)]
struct LetterLine<'a> {
    time: String,
    #[serde(flatten)]
    letter: &'a Letter<'a>,
}

/// What `dead-letters replay` or `purge` did.
#[derive(Debug, Default)]
pub struct Replay {
    /// Letters whose alert went back into the queue (or, for `purge`, that were removed).
    pub replayed: usize,
    /// Letters that matched but stay, with why.
    pub kept: Vec<(String, String)>,
    /// Letters that did not match the filters.
    pub other: usize,
}

/// Which letters a `replay` or `purge` is about: a destination (its URL or name; "-" for the
/// alerts no destination got) and a part of the reason.
#[derive(Debug, Default, Clone, Copy)]
pub struct Selection<'a> {
    pub destination: Option<&'a str>,
    pub reason: Option<&'a str>,
}

impl Selection<'_> {
    fn matches(&self, config: &Config, l: &StoredLetter) -> bool {
        let dest = configured(config, &l.destination);
        self.destination
            .is_none_or(|want| l.destination == want || dest.is_some_and(|d| d.name == want))
            && self.reason.is_none_or(|r| l.reason.contains(r))
    }
}

fn configured<'c>(config: &'c Config, destination: &str) -> Option<&'c crate::config::Destination> {
    config
        .destinations
        .iter()
        .find(|d| d.output.sink.destination.to_string() == destination || d.name == destination)
}

/// Takes the store for a change: the daemon must be stopped (it holds the state directory).
fn open_for_change(config: &Config) -> anyhow::Result<(std::fs::File, Queue)> {
    let lock = crate::daemon::lock_state_dir(&config.state_dir).map_err(|e| {
        anyhow::anyhow!("{e}; `dead-letters list` works while it runs, replay and purge do not")
    })?;
    std::fs::create_dir_all(&config.state_dir)?;
    let queue = Queue::open(&config.state_dir, config.queue_max_bytes)?;
    Ok((lock, queue))
}

/// Puts the alerts of the selected dead letters back into the queue, for the destination each
/// letter names ("-": every destination), and removes those letters, in one transaction
/// (issue 9 §7). The daemon must be stopped; its next start delivers them.
pub async fn replay(config: &Config, selection: Selection<'_>) -> anyhow::Result<Replay> {
    let (_lock, queue) = open_for_change(config)?;
    let mut report = Replay::default();
    let mut records = Vec::new();
    let mut forget = Vec::new();
    for (number, json) in queue.dead_letters()? {
        let l = StoredLetter::parse(&String::from_utf8_lossy(&json));
        if !selection.matches(config, &l) {
            report.other += 1;
            continue;
        }
        match requeue(config, &l) {
            Ok(record) => {
                records.push(record);
                forget.push(number);
                report.replayed += 1;
            }
            Err(why) => report
                .kept
                .push((l.alert_id.clone().unwrap_or_else(|| "-".into()), why)),
        }
    }
    if !forget.is_empty() {
        queue.replay_dead_letters(records, forget).await?;
    }
    queue.close().await;
    Ok(report)
}

/// Removes the selected dead letters for good (`dead-letters purge`).
pub async fn purge(config: &Config, selection: Selection<'_>) -> anyhow::Result<Replay> {
    let (_lock, queue) = open_for_change(config)?;
    let mut report = Replay::default();
    let mut forget = Vec::new();
    for (number, json) in queue.dead_letters()? {
        let l = StoredLetter::parse(&String::from_utf8_lossy(&json));
        if selection.matches(config, &l) {
            forget.push(number);
        } else {
            report.other += 1;
        }
    }
    report.replayed = forget.len();
    if !forget.is_empty() {
        queue.replay_dead_letters(Vec::new(), forget).await?;
    }
    queue.close().await;
    Ok(report)
}

/// The queue record a letter's alert becomes again, or why it cannot.
fn requeue(config: &Config, l: &StoredLetter) -> Result<Vec<u8>, String> {
    let raw = match &l.alert {
        Some(a) => a.clone(),
        None => match serde_json::value::RawValue::from_string(l.record.clone()) {
            Ok(a) if l.destination == "-" => a,
            _ => return Err("the letter holds the record only, not the alert".into()),
        },
    };
    let alert = crate::alert::Alert::from_json(raw.get())
        .map_err(|e| format!("the alert still cannot be decoded: {e}"))?;
    let Some(last_update) = alert.last_update().and_then(|t| t.valid()).copied() else {
        return Err("the alert has no readable lastUpdate time".into());
    };
    if alert.id.trim().is_empty() {
        return Err("the alert has no id".into());
    }
    let only = match (l.destination.as_str(), configured(config, &l.destination)) {
        ("-", _) => None,
        (_, Some(d)) => Some(d.output.sink.destination.to_string()),
        (_, None) => {
            return Err(format!(
                "destination {} is no longer configured",
                l.destination
            ))
        }
    };
    let tenant = l
        .tenant_name
        .as_deref()
        .and_then(|n| config.tenants.iter().find(|t| t.settings.name == n));
    Ok(Record {
        tenant_name: l.tenant_name.clone().unwrap_or_else(|| "-".into()),
        tenant_id: tenant.map_or_else(|| "-".into(), |t| t.settings.tenant_id.clone()),
        api: tenant.map_or_else(|| "graph".into(), |t| t.settings.api.to_string()),
        alert_id: alert.id.to_string(),
        last_update,
        alert: raw.clone(),
        only,
    }
    .encode())
}
