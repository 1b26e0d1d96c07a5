//! Per-tenant checkpoint: the cursor, the de-duplication set and the update-policy state, as one
//! JSON file in the state directory, replaced atomically.
//!
//! The cursor means "every alert version with a lastUpdate time before this instant has been
//! handed over and accepted". Each poll starts again at `cursor - overlap` (late alerts,
//! peers.md §6 "Missed alerts"); the de-dup set of (alert id, lastUpdate) over that span makes
//! every version go out once (peers.md §7.2).
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("checkpoint {path} is damaged ({detail}); move it away to start again from the initial look-back")]
    Parse { path: PathBuf, detail: String },
    #[error("cannot write checkpoint {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the `status` policy compares between versions of one alert (and `first` needs to know
/// the id was seen).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    pub last_update: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub determination: Option<String>,
}

impl AlertState {
    /// Same status, classification and determination (enum spellings compared
    /// case-insensitively: Graph camelCase, MDE PascalCase — defender-api.md §3.2).
    pub fn same_triage(&self, other: &AlertState) -> bool {
        fn eq(a: &Option<String>, b: &Option<String>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => a.eq_ignore_ascii_case(b),
                (None, None) => true,
                _ => false,
            }
        }
        eq(&self.status, &other.status)
            && eq(&self.classification, &other.classification)
            && eq(&self.determination, &other.determination)
    }
}

/// One tenant's source state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub version: u32,
    pub tenant_id: String,
    pub api: String,
    pub cursor: DateTime<Utc>,
    /// (lastUpdate, alert id) of every version already handled at or after `cursor - overlap`.
    /// Ordered by time so pruning is cheap.
    pub seen: BTreeSet<(DateTime<Utc>, String)>,
    /// Per alert id, for the `first` and `status` update policies.
    #[serde(default)]
    pub alerts: HashMap<String, AlertState>,
    /// Alert objects that could not be forwarded (no id, no readable time) and went to the
    /// dead-letter file, by digest of their JSON, with the (server) time first seen: the
    /// overlap serves them again, and each should be dead-lettered once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rejected: BTreeMap<String, DateTime<Utc>>,
}

impl Checkpoint {
    /// First run: start at `start` (now minus the initial look-back).
    pub fn fresh(tenant_id: &str, api: &str, start: DateTime<Utc>) -> Self {
        Checkpoint {
            version: FORMAT_VERSION,
            tenant_id: tenant_id.to_string(),
            api: api.to_string(),
            cursor: start,
            seen: BTreeSet::new(),
            alerts: HashMap::new(),
            rejected: BTreeMap::new(),
        }
    }

    /// `<state_dir>/<tenant id>-<api>.json`. Keyed by tenant id, not the configured name, so
    /// renaming a tenant in the config does not restart it from the look-back.
    pub fn path(state_dir: &Path, tenant_id: &str, api: &str) -> PathBuf {
        let safe: String = tenant_id
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        state_dir.join(format!("{safe}-{api}.json"))
    }

    /// Loads the checkpoint, or `None` when there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>, CheckpointError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(CheckpointError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        let cp: Checkpoint =
            serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Parse {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        if cp.version != FORMAT_VERSION {
            return Err(CheckpointError::Parse {
                path: path.to_path_buf(),
                detail: format!("format version {} (expected {FORMAT_VERSION})", cp.version),
            });
        }
        Ok(Some(cp))
    }

    /// Writes atomically: temp file, fsync, rename over the old one, fsync the directory. A
    /// crash leaves either the old or the new checkpoint, never a torn one.
    pub fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        let err = |source| CheckpointError::Write {
            path: path.to_path_buf(),
            source,
        };
        let json = serde_json::to_vec(self).map_err(|e| err(std::io::Error::other(e)))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        // Unique per process and per save: two savers of one file (two daemons, or two pollers
        // of one tenant) never write into each other's temp file (issue 8 §6).
        static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let save = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = path.with_extension(format!("json.tmp{}.{save}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(err)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }

    /// Removes the temp files (`*.json.tmp*`, see [`Checkpoint::save`]) that saves interrupted
    /// by a crash left in `state_dir`; returns their paths. Only for a caller that holds the
    /// state directory's lock, so that no save is under way.
    pub fn remove_temp_files(state_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let mut removed = Vec::new();
        for entry in std::fs::read_dir(state_dir)? {
            let entry = entry?;
            let is_temp = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.contains(".json.tmp"));
            if is_temp && entry.file_type()?.is_file() {
                std::fs::remove_file(entry.path())?;
                removed.push(entry.path());
            }
        }
        Ok(removed)
    }

    pub fn has_seen(&self, id: &str, last_update: DateTime<Utc>) -> bool {
        // BTreeSet<(DateTime, String)> lookup needs an owned key; alerts per page are few.
        self.seen.contains(&(last_update, id.to_string()))
    }

    /// Forgets de-dup entries older than `horizon` (the start of the next poll's window) and
    /// policy state of alerts not updated since `policy_horizon`.
    pub fn prune(&mut self, horizon: DateTime<Utc>, policy_horizon: DateTime<Utc>) {
        self.seen = self.seen.split_off(&(horizon, String::new()));
        self.alerts.retain(|_, s| s.last_update >= policy_horizon);
        // A rejected object was first seen after its own lastUpdate, so once that instant is
        // before the horizon the window no longer serves it.
        self.rejected.retain(|_, first_seen| *first_seen >= horizon);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn save_load_round_trip_and_prune() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t0 = Utc
            .with_ymd_and_hms(2026, 11, 1, 10, 0, 0)
            .single()
            .expect("time");
        let path = Checkpoint::path(dir.path(), "contoso.onmicrosoft.com", "graph");
        assert!(Checkpoint::load(&path).expect("load").is_none());
        let mut cp = Checkpoint::fresh("contoso.onmicrosoft.com", "graph", t0);
        for i in 0..5 {
            cp.seen
                .insert((t0 + chrono::Duration::seconds(i), format!("a{i}")));
        }
        cp.save(&path).expect("save");
        let back = Checkpoint::load(&path).expect("load").expect("present");
        assert_eq!(back, cp);
        assert!(back.has_seen("a3", t0 + chrono::Duration::seconds(3)));
        cp.prune(t0 + chrono::Duration::seconds(2), t0);
        assert_eq!(cp.seen.len(), 3);
        assert!(!cp.has_seen("a1", t0 + chrono::Duration::seconds(1)));
        assert!(cp.has_seen("a2", t0 + chrono::Duration::seconds(2)));
    }

    #[test]
    fn damaged_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("t-graph.json");
        std::fs::write(&path, b"{ not json").expect("write");
        let err = Checkpoint::load(&path).expect_err("damaged");
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
