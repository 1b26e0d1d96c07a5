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
    /// The alert as the API sent it, when known: what `dead-letters replay` queues again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert: Option<&'a serde_json::value::RawValue>,
}

/// A dead letter read back from the file, and its line as it was.
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
    #[serde(skip)]
    pub line: String,
}

/// Every letter of the file at `path`, in order (none when there is no file). A line that is
/// not a letter is kept as it is, its reason saying so.
pub fn read_letters(path: &Path) -> std::io::Result<Vec<StoredLetter>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut letter =
                serde_json::from_str::<StoredLetter>(line).unwrap_or_else(|e| StoredLetter {
                    time: String::new(),
                    destination: String::new(),
                    alert_id: None,
                    tenant_name: None,
                    reason: format!("(not a dead letter: {e})"),
                    record: String::new(),
                    alert: None,
                    line: String::new(),
                });
            letter.line = line.to_string();
            letter
        })
        .collect())
}

/// Replaces the file at `path` with `lines`, atomically (temp file, fsync, rename).
pub fn rewrite_letters<'a>(
    path: &Path,
    lines: impl Iterator<Item = &'a str>,
) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.create(true).write(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        for l in lines {
            f.write_all(l.as_bytes())?;
            f.write_all(b"\n")?;
        }
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
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

    /// Appends one letter as one line and makes it durable (`fdatasync`) before returning: the
    /// caller acknowledges the page or moves the queue cursor past the record right after, so a
    /// letter still in the page cache at a power loss would be an alert lost.
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
        file.sync_data()
    }
}

#[derive(Serialize)]
struct LetterLine<'a> {
    time: String,
    #[serde(flatten)]
    letter: &'a Letter<'a>,
}

/// What `dead-letters replay` did.
#[derive(Debug, Default)]
pub struct Replay {
    /// Letters whose alert went back into the queue (and out of the file).
    pub replayed: usize,
    /// Letters that matched but stay in the file, with why.
    pub kept: Vec<(String, String)>,
    /// Letters that did not match the filters.
    pub other: usize,
}

/// Puts the alerts of the matching dead letters back into the queue of `config`'s state
/// directory, for the destination each letter names ("-": every destination), and removes them
/// from the file (issue 9 §7). Takes the state directory's lock: the daemon must be stopped.
/// `destination` matches a letter's destination URL or name; `reason` a part of its reason.
pub async fn replay(
    config: &crate::config::Config,
    destination: Option<&str>,
    reason: Option<&str>,
) -> anyhow::Result<Replay> {
    use crate::queue::{Queue, Record};
    let _lock = crate::daemon::lock_state_dir(&config.state_dir)?;
    let letters = read_letters(&config.dead_letter)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.dead_letter.display()))?;
    let mut report = Replay::default();
    let mut records = Vec::new();
    let mut keep: Vec<&str> = Vec::new();
    for l in &letters {
        let dest = config.destinations.iter().find(|d| {
            d.output.sink.destination.to_string() == l.destination || d.name == l.destination
        });
        let matches = destination
            .is_none_or(|want| l.destination == want || dest.is_some_and(|d| d.name == want))
            && reason.is_none_or(|r| l.reason.contains(r));
        if !matches {
            report.other += 1;
            keep.push(&l.line);
            continue;
        }
        let mut keep_it = |why: String| {
            report
                .kept
                .push((l.alert_id.clone().unwrap_or_else(|| "-".into()), why));
            keep.push(&l.line);
        };
        let raw = match &l.alert {
            Some(a) => a.clone(),
            None => match serde_json::value::RawValue::from_string(l.record.clone()) {
                Ok(a) if l.destination == "-" => a,
                _ => {
                    keep_it("the letter holds the record only, not the alert".into());
                    continue;
                }
            },
        };
        let alert = match crate::alert::Alert::from_json(raw.get()) {
            Ok(a) => a,
            Err(e) => {
                keep_it(format!("the alert still cannot be decoded: {e}"));
                continue;
            }
        };
        let Some(last_update) = alert.last_update().and_then(|t| t.valid()).copied() else {
            keep_it("the alert has no readable lastUpdate time".into());
            continue;
        };
        if alert.id.trim().is_empty() {
            keep_it("the alert has no id".into());
            continue;
        }
        let only = match (l.destination.as_str(), dest) {
            ("-", _) => None,
            (_, Some(d)) => Some(d.output.sink.destination.to_string()),
            (_, None) => {
                keep_it(format!(
                    "destination {} is no longer configured",
                    l.destination
                ));
                continue;
            }
        };
        let tenant = l
            .tenant_name
            .as_deref()
            .and_then(|n| config.tenants.iter().find(|t| t.settings.name == n));
        records.push(
            Record {
                tenant_name: l.tenant_name.clone().unwrap_or_else(|| "-".into()),
                tenant_id: tenant.map_or_else(|| "-".into(), |t| t.settings.tenant_id.clone()),
                api: tenant.map_or_else(|| "graph".into(), |t| t.settings.api.to_string()),
                alert_id: alert.id.to_string(),
                last_update,
                alert: raw.clone(),
                only,
            }
            .encode(),
        );
        report.replayed += 1;
    }
    if report.replayed > 0 {
        std::fs::create_dir_all(&config.state_dir)?;
        let queue = Queue::open(&config.state_dir, config.queue_max_bytes)?;
        queue.append_records(records).await?;
        queue.close().await;
        // Queued first, then out of the file: a crash in between replays a letter twice (a
        // duplicate at the SIEM), never loses one.
        rewrite_letters(&config.dead_letter, keep.into_iter())
            .map_err(|e| anyhow::anyhow!("{}: {e}", config.dead_letter.display()))?;
    }
    Ok(report)
}
