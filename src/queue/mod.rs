//! The durable queue between the pollers and the destinations (DESIGN.md "queue"; issue 9).
//!
//! One redb file, `<state_dir>/queue.redb` (rust-stack.md §3.3), holds:
//! - `alerts`: sequence number → one alert version as the API sent it, with its tenant
//!   ([`Record`]). Each alert is stored once; every destination encodes it with its own format
//!   when it reads it.
//! - `checkpoints`: per tenant, the poller's checkpoint (cursor, de-duplication set, policy
//!   state). A page's alerts and the checkpoint after them are committed in **one transaction**
//!   ([`Queue::append`]), so a crash leaves both or neither: no page is lost, none is enqueued
//!   twice (delivery.md §4: "commit before you acknowledge upstream").
//! - `cursors`: per destination (its stable name), the last sequence number it has delivered.
//!   Records at or below the slowest cursor are deleted in the same transaction that moves it.
//! - `dead_letters`: what could not be forwarded or delivered (an alert without an id, a record
//!   too large even after cutting, a damaged record), one JSON object each with its reason
//!   (issue 9 §5). A page's dead letters are committed with the page; a destination's before its
//!   cursor moves past the record. `dead-letters list` reads them while the daemon runs (the
//!   store is opened in redb's single-writer mode, which lets other processes read).
//! - `meta`: the next sequence numbers and the bytes the alerts take.
//!
//! Writes go through one committer thread that groups what is waiting into one transaction, so a
//! catch-up of 100,000 alerts costs a few hundred fsyncs, not 100,000. The queue is bounded by
//! bytes: when it is full, [`Queue::append`] waits (the pollers pause) until the slowest
//! destination frees space; nothing is dropped.
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::source::{Api, Checkpoint};

mod record;
pub use record::Record;

const ALERTS: TableDefinition<u64, &[u8]> = TableDefinition::new("alerts");
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");
const CURSORS: TableDefinition<&str, u64> = TableDefinition::new("cursors");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
/// The notifier's state (src/notify/): pending digests and the alerts it has seen, by key.
const NOTIFY: TableDefinition<&str, &[u8]> = TableDefinition::new("notify");

/// Most requests folded into one transaction.
const GROUP_MAX: usize = 256;

/// redb's page cache (its default is 1 GiB). The queue is read once, in order, by each
/// destination, so cached alert pages are hardly ever read again; with the default, the pages
/// a destination had read ahead and not yet acknowledged stayed cached, and a catch-up of a
/// long backlog held about 112 MB (`cargo bench --bench replay`); with 4 MiB, 37 MB. A few MiB
/// keep the tree's upper pages and the tenants' checkpoints.
const CACHE_BYTES: usize = 4 << 20;

/// The daemon is the one writer; `SingleWriter` (not redb's default, which locks the whole file)
/// lets `dead-letters list` open the store read-only while the daemon runs.
fn open_store(path: &Path) -> Result<Database, redb::DatabaseError> {
    redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .create(path)
}

/// Opens the store, creates every table (so readers never meet a missing one) and reads the
/// head and byte count.
fn open_and_prepare(path: &Path) -> Result<(Database, u64, u64), QueueError> {
    let err = |e: &dyn std::fmt::Display| QueueError::Store {
        path: path.to_path_buf(),
        detail: e.to_string(),
    };
    let db = open_store(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => err(&"another process has it open"),
        e => err(&format!("{e}; {DAMAGED_HINT}")),
    })?;
    let txn = db.begin_write().map_err(|e| err(&e))?;
    let (head, bytes) = {
        txn.open_table(ALERTS).map_err(|e| err(&e))?;
        txn.open_table(CHECKPOINTS).map_err(|e| err(&e))?;
        txn.open_table(CURSORS).map_err(|e| err(&e))?;
        txn.open_table(DEAD_LETTERS).map_err(|e| err(&e))?;
        txn.open_table(NOTIFY).map_err(|e| err(&e))?;
        let meta = txn.open_table(META).map_err(|e| err(&e))?;
        let next = meta
            .get("next_seq")
            .map_err(|e| err(&e))?
            .map(|v| v.value());
        let bytes = meta.get("bytes").map_err(|e| err(&e))?.map(|v| v.value());
        (next.unwrap_or(1).saturating_sub(1), bytes.unwrap_or(0))
    };
    txn.commit().map_err(|e| err(&e))?;
    Ok((db, head, bytes))
}

/// What a store that cannot be opened tells the operator (README "Recovery").
const DAMAGED_HINT: &str = "if the file is damaged, stop defender-bridge, move it aside \
    (mv queue.redb queue.redb.damaged) and start again: tenants are then polled again from \
    initial_lookback and what was queued but not delivered is sent again from the API \
    (duplicates, not loss, within the look-back)";

/// The dead letters of the store in `dir`, oldest first, as (number, letter JSON). Opens the
/// store read-only, so it works while the daemon runs; no store means none.
pub fn read_dead_letters(dir: &Path) -> Result<Vec<(u64, Vec<u8>)>, QueueError> {
    let path = dir.join("queue.redb");
    let err = |e: &dyn std::fmt::Display| QueueError::Store {
        path: path.clone(),
        detail: e.to_string(),
    };
    if !path.exists() {
        return Ok(Vec::new());
    }
    let db = redb::Builder::new()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open_read_only(&path)
        .map_err(|e| err(&e))?;
    let txn = db.begin_read().map_err(|e| err(&e))?;
    let table = match txn.open_table(DEAD_LETTERS) {
        Ok(t) => t,
        // A store written before dead letters moved in.
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(err(&e)),
    };
    collect_letters(&table).map_err(|e| err(&e))
}

fn collect_letters(
    table: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<Vec<(u64, Vec<u8>)>, redb::StorageError> {
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (k, v) = entry?;
        out.push((k.value(), v.value().to_vec()));
    }
    Ok(out)
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue {path}: {detail}")]
    Store { path: PathBuf, detail: String },
    #[error("queue {path}: a record at sequence {seq} is damaged ({detail})")]
    Damaged {
        path: PathBuf,
        seq: u64,
        detail: String,
    },
    #[error("the queue has stopped")]
    Closed,
}

enum Request {
    Append {
        /// The tenant's checkpoint key and checkpoint, stored with the records; `None` for
        /// records that belong to no poll (`dead-letters replay`).
        checkpoint: Option<(String, Vec<u8>)>,
        records: Vec<Vec<u8>>,
        /// Dead letters to keep, and the numbers of dead letters to forget (replayed or purged).
        letters: Vec<Vec<u8>>,
        forget: Vec<u64>,
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
    Ack {
        destination: String,
        seq: u64,
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
    /// The notifier's changes, with its cursor when it has read records (src/notify/).
    Notify {
        change: NotifyChange,
        reply: oneshot::Sender<Result<(), QueueError>>,
    },
    /// Commit what came before, then end the thread.
    Stop,
}

/// One write of the notifier's state: keys put, key ranges deleted, and its queue cursor moved,
/// all in one transaction (so a crash neither loses a matched alert nor matches it twice).
#[derive(Debug, Default)]
pub struct NotifyChange {
    /// The cursor's name and the last record read.
    pub cursor: Option<(String, u64)>,
    pub put: Vec<(String, Vec<u8>)>,
    /// Half-open key ranges `[start, end)` to delete.
    pub delete: Vec<(String, String)>,
}

/// Counters of the queue, for logs, `status` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Sequence number of the newest record (0: none yet).
    pub head: u64,
    /// Bytes the queued records take.
    pub bytes: u64,
    pub max_bytes: u64,
    /// Write transactions committed since start.
    pub commits: u64,
}

struct Shared {
    path: PathBuf,
    /// `None` while the store is being reopened after an I/O error (a full disk): redb refuses
    /// every transaction after one ("Previous I/O error occurred. Please close and re-open the
    /// database"), so the committer drops it and opens it again once the disk takes writes.
    db: std::sync::RwLock<Option<Arc<Database>>>,
    /// Newest sequence number committed; destinations wait on it.
    head: watch::Sender<u64>,
    bytes: AtomicU64,
    max_bytes: u64,
    /// Signalled when records are reclaimed.
    space: Notify,
    full_logged: AtomicBool,
    commits: AtomicU64,
    committer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Shared {
    /// The open store, or an error while it is being reopened.
    fn db(&self) -> Result<Arc<Database>, QueueError> {
        self.db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| QueueError::Store {
                path: self.path.clone(),
                detail: "the store is being reopened after an I/O error".into(),
            })
    }

    /// Drops the store and opens it again (redb rolls back to the last durable commit).
    /// Readers hold it only for a moment, so the file lock is free again soon.
    fn reopen(&self) -> Result<(), QueueError> {
        let err = |e: &dyn std::fmt::Display| QueueError::Store {
            path: self.path.clone(),
            detail: e.to_string(),
        };
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        slot.take();
        let mut tries = 0;
        let db = loop {
            match open_store(&self.path) {
                Ok(db) => break db,
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(err(&e)),
            }
        };
        let (next, bytes) = {
            let txn = db.begin_read().map_err(|e| err(&e))?;
            let meta = txn.open_table(META).map_err(|e| err(&e))?;
            let get = |k: &str| -> Result<Option<u64>, QueueError> {
                Ok(meta.get(k).map_err(|e| err(&e))?.map(|v| v.value()))
            };
            (get("next_seq")?.unwrap_or(1), get("bytes")?.unwrap_or(0))
        };
        self.bytes.store(bytes, Ordering::Relaxed);
        self.head.send_replace(next.saturating_sub(1));
        *slot = Some(Arc::new(db));
        Ok(())
    }
}

/// The queue. Cheap to clone; the committer thread ends when the last clone is dropped.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
    requests: mpsc::Sender<Request>,
}

impl Queue {
    /// Opens (or creates) `<dir>/queue.redb`, bounded to `max_bytes` of records.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Queue, QueueError> {
        let path = dir.join("queue.redb");
        let err = |e: &dyn std::fmt::Display| QueueError::Store {
            path: path.clone(),
            detail: e.to_string(),
        };
        // redb may panic, rather than answer an error, on a file altered behind its back
        // (its `set_check_integrity_on_open` documentation says so): that is a damaged store,
        // said as such, not a crash of the daemon at every start.
        let opened =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| open_and_prepare(&path)));
        let (db, head, bytes) = match opened {
            Ok(r) => r?,
            Err(_) => {
                return Err(err(&format!(
                    "the store is damaged (reading it failed); {DAMAGED_HINT}"
                )))
            }
        };
        let shared = Arc::new(Shared {
            path: path.clone(),
            db: std::sync::RwLock::new(Some(Arc::new(db))),
            head: watch::Sender::new(head),
            bytes: AtomicU64::new(bytes),
            max_bytes: max_bytes.max(1),
            space: Notify::new(),
            full_logged: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            committer: std::sync::Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(1024);
        let committer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("queue-committer".into())
            .spawn(move || commit_loop(&committer, rx))
            .map_err(|e| err(&e))?;
        *shared.committer.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(Queue {
            shared,
            requests: tx,
        })
    }

    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn store_err(&self, e: &dyn std::fmt::Display) -> QueueError {
        QueueError::Store {
            path: self.shared.path.clone(),
            detail: e.to_string(),
        }
    }

    /// The checkpoint stored under `key`, if any.
    pub fn checkpoint(&self, key: &str) -> Result<Option<Checkpoint>, QueueError> {
        let txn = self
            .shared
            .db()?
            .begin_read()
            .map_err(|e| self.store_err(&e))?;
        let table = txn
            .open_table(CHECKPOINTS)
            .map_err(|e| self.store_err(&e))?;
        let Some(v) = table.get(key).map_err(|e| self.store_err(&e))? else {
            return Ok(None);
        };
        serde_json::from_slice(v.value())
            .map(Some)
            .map_err(|e| self.store_err(&format!("checkpoint {key:?} is damaged: {e}")))
    }

    /// Every checkpoint, by key (`state export`).
    pub fn checkpoints(&self) -> Result<Vec<(String, Checkpoint)>, QueueError> {
        let txn = self
            .shared
            .db()?
            .begin_read()
            .map_err(|e| self.store_err(&e))?;
        let table = txn
            .open_table(CHECKPOINTS)
            .map_err(|e| self.store_err(&e))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| self.store_err(&e))? {
            let (k, v) = entry.map_err(|e| self.store_err(&e))?;
            let cp = serde_json::from_slice(v.value()).map_err(|e| {
                self.store_err(&format!("checkpoint {:?} is damaged: {e}", k.value()))
            })?;
            out.push((k.value().to_string(), cp));
        }
        Ok(out)
    }

    /// Stores `checkpoint` under `key`, replacing what is there (`state import` with the
    /// daemon stopped, and the move of a checkpoint file into the store).
    pub fn put_checkpoint(&self, key: &str, checkpoint: &Checkpoint) -> Result<(), QueueError> {
        let bytes = serde_json::to_vec(checkpoint).map_err(|e| self.store_err(&e))?;
        let txn = self
            .shared
            .db()?
            .begin_write()
            .map_err(|e| self.store_err(&e))?;
        {
            let mut table = txn
                .open_table(CHECKPOINTS)
                .map_err(|e| self.store_err(&e))?;
            table
                .insert(key, bytes.as_slice())
                .map_err(|e| self.store_err(&e))?;
        }
        txn.commit().map_err(|e| self.store_err(&e))
    }

    /// Moves a checkpoint file of the days before the queue into the store (once: the file is
    /// renamed to `….json.migrated`). Returns whether it did.
    pub fn migrate_checkpoint_file(&self, key: &str, file: &Path) -> Result<bool, QueueError> {
        if self.checkpoint(key)?.is_some() {
            return Ok(false);
        }
        let Some(cp) = Checkpoint::load(file).map_err(|e| self.store_err(&e))? else {
            return Ok(false);
        };
        self.put_checkpoint(key, &cp)?;
        let mut done = file.as_os_str().to_owned();
        done.push(".migrated");
        std::fs::rename(file, &done).map_err(|e| self.store_err(&e))?;
        Ok(true)
    }

    /// Appends a page's records, its dead letters and the tenant's checkpoint after them, in
    /// one transaction, and returns once they are on disk. Waits while the queue is full
    /// (backpressure; dead letters do not count: they stay until an operator replays them).
    pub async fn append(
        &self,
        key: &str,
        records: Vec<Vec<u8>>,
        letters: Vec<Vec<u8>>,
        checkpoint: &Checkpoint,
    ) -> Result<(), QueueError> {
        let size: u64 = records.iter().map(|r| r.len() as u64).sum();
        loop {
            // Register interest before checking, so a reclaim in between is not missed.
            let space = self.shared.space.notified();
            let used = self.shared.bytes.load(Ordering::Relaxed);
            // A page larger than the whole queue still goes in once the queue is empty.
            if size == 0 || used == 0 || used + size <= self.shared.max_bytes {
                break;
            }
            if !self.shared.full_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    queue = %self.shared.path.display(),
                    "the queue is full ({used} of {} bytes): polling pauses until the slowest \
                     destination has delivered more",
                    self.shared.max_bytes
                );
            }
            space.await;
        }
        if self.shared.full_logged.swap(false, Ordering::Relaxed) {
            tracing::info!(queue = %self.shared.path.display(), "the queue has room again: polling resumes");
        }
        let checkpoint = serde_json::to_vec(checkpoint).map_err(|e| self.store_err(&e))?;
        self.commit(
            Some((key.to_string(), checkpoint)),
            records,
            letters,
            Vec::new(),
        )
        .await
    }

    /// Appends records that belong to no poll (a benchmark's backlog), without backpressure.
    pub async fn append_records(&self, records: Vec<Vec<u8>>) -> Result<(), QueueError> {
        self.commit(None, records, Vec::new(), Vec::new()).await
    }

    /// Keeps dead letters (a destination's records that cannot be delivered); returns once
    /// they are on disk.
    pub async fn keep_dead_letters(&self, letters: Vec<Vec<u8>>) -> Result<(), QueueError> {
        self.commit(None, Vec::new(), letters, Vec::new()).await
    }

    /// Queues `records` (replayed dead letters) and forgets the dead letters `forget`, in one
    /// transaction: a crash replays all or none. No backpressure: an operator asked for them.
    pub async fn replay_dead_letters(
        &self,
        records: Vec<Vec<u8>>,
        forget: Vec<u64>,
    ) -> Result<(), QueueError> {
        self.commit(None, records, Vec::new(), forget).await
    }

    /// The dead letters, oldest first, as (number, letter JSON).
    pub fn dead_letters(&self) -> Result<Vec<(u64, Vec<u8>)>, QueueError> {
        let txn = self
            .shared
            .db()?
            .begin_read()
            .map_err(|e| self.store_err(&e))?;
        let table = txn
            .open_table(DEAD_LETTERS)
            .map_err(|e| self.store_err(&e))?;
        collect_letters(&table).map_err(|e| self.store_err(&e))
    }

    async fn commit(
        &self,
        checkpoint: Option<(String, Vec<u8>)>,
        records: Vec<Vec<u8>>,
        letters: Vec<Vec<u8>>,
        forget: Vec<u64>,
    ) -> Result<(), QueueError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Append {
                checkpoint,
                records,
                letters,
                forget,
                reply,
            })
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Registers the configured destinations: a new one starts at the head (it gets what is
    /// queued from now on), one no longer configured has its cursor dropped.
    pub fn attach(&self, names: &[String]) -> Result<(), QueueError> {
        let wanted: HashSet<&str> = names.iter().map(String::as_str).collect();
        let head = *self.shared.head.borrow();
        let txn = self
            .shared
            .db()?
            .begin_write()
            .map_err(|e| self.store_err(&e))?;
        {
            let mut cursors = txn.open_table(CURSORS).map_err(|e| self.store_err(&e))?;
            let existing: Vec<String> = cursors
                .iter()
                .map_err(|e| self.store_err(&e))?
                .filter_map(Result::ok)
                .map(|(k, _)| k.value().to_string())
                .collect();
            for name in &existing {
                if !wanted.contains(name.as_str()) {
                    tracing::info!(destination = %name, "destination no longer configured: its queue cursor is dropped");
                    cursors
                        .remove(name.as_str())
                        .map_err(|e| self.store_err(&e))?;
                }
            }
            for name in names {
                if !existing.contains(name) {
                    cursors
                        .insert(name.as_str(), head)
                        .map_err(|e| self.store_err(&e))?;
                }
            }
            let mut alerts = txn.open_table(ALERTS).map_err(|e| self.store_err(&e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.store_err(&e))?;
            let freed = reclaim(&cursors, &mut alerts).map_err(|e| self.store_err(&e))?;
            let bytes = self
                .shared
                .bytes
                .load(Ordering::Relaxed)
                .saturating_sub(freed);
            meta.insert("bytes", bytes)
                .map_err(|e| self.store_err(&e))?;
            self.shared.bytes.store(bytes, Ordering::Relaxed);
        }
        txn.commit().map_err(|e| self.store_err(&e))?;
        self.shared.space.notify_waiters();
        Ok(())
    }

    /// The last sequence number `destination` has delivered.
    pub fn cursor(&self, destination: &str) -> Result<u64, QueueError> {
        let txn = self
            .shared
            .db()?
            .begin_read()
            .map_err(|e| self.store_err(&e))?;
        let table = txn.open_table(CURSORS).map_err(|e| self.store_err(&e))?;
        let v = table.get(destination).map_err(|e| self.store_err(&e))?;
        Ok(v.map_or(0, |v| v.value()))
    }

    /// Up to `max` records after sequence number `after`, in order.
    pub fn read(&self, after: u64, max: usize) -> Result<Vec<(u64, Vec<u8>)>, QueueError> {
        let txn = self
            .shared
            .db()?
            .begin_read()
            .map_err(|e| self.store_err(&e))?;
        let table = txn.open_table(ALERTS).map_err(|e| self.store_err(&e))?;
        let mut out = Vec::new();
        for entry in table
            .range(after.saturating_add(1)..)
            .map_err(|e| self.store_err(&e))?
            .take(max)
        {
            let (k, v) = entry.map_err(|e| self.store_err(&e))?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// Records that `destination` has delivered everything up to `seq`; space below the
    /// slowest destination is reclaimed in the same transaction.
    pub async fn ack(&self, destination: &str, seq: u64) -> Result<(), QueueError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Ack {
                destination: destination.to_string(),
                seq,
                reply,
            })
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// Commits the notifier's `change`; returns once it is on disk.
    pub async fn notify_commit(&self, change: NotifyChange) -> Result<(), QueueError> {
        let (reply, rx) = oneshot::channel();
        self.requests
            .send(Request::Notify { change, reply })
            .await
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    /// The notifier's keys starting with `prefix`, in key order, with their values.
    pub fn notify_scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, QueueError> {
        let txn = self
            .shared
            .db()?
            .begin_read()
            .map_err(|e| self.store_err(&e))?;
        let table = txn.open_table(NOTIFY).map_err(|e| self.store_err(&e))?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(|e| self.store_err(&e))? {
            let (k, v) = entry.map_err(|e| self.store_err(&e))?;
            if !k.value().starts_with(prefix) {
                break;
            }
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The notifier's values under `keys`, in one read transaction.
    pub fn notify_get(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, QueueError> {
        let txn = self
            .shared
            .db()?
            .begin_read()
            .map_err(|e| self.store_err(&e))?;
        let table = txn.open_table(NOTIFY).map_err(|e| self.store_err(&e))?;
        keys.iter()
            .map(|k| {
                let v = table.get(k.as_str()).map_err(|e| self.store_err(&e))?;
                Ok(v.map(|v| v.value().to_vec()))
            })
            .collect()
    }

    /// Follows the head: `changed().await` wakes when records are appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.head.subscribe()
    }

    pub fn stats(&self) -> QueueStats {
        QueueStats {
            head: *self.shared.head.borrow(),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            max_bytes: self.shared.max_bytes,
            commits: self.shared.commits.load(Ordering::Relaxed),
        }
    }

    /// Commits what was asked before, stops the committer and closes the file (a later
    /// request of any clone fails with [`QueueError::Closed`]).
    pub async fn close(self) {
        let _ = self.requests.send(Request::Stop).await;
        let thread = self
            .shared
            .committer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    /// Waits up to `timeout` for the committer to be idle (tests and shutdown).
    pub async fn sync(&self, timeout: Duration) -> bool {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .requests
            .send(Request::Ack {
                destination: String::new(),
                seq: 0,
                reply,
            })
            .await;
        sent.is_ok() && tokio::time::timeout(timeout, rx).await.is_ok()
    }
}

/// Deletes records at or below the slowest cursor; returns the bytes freed.
fn reclaim(
    cursors: &redb::Table<&str, u64>,
    alerts: &mut redb::Table<u64, &[u8]>,
) -> Result<u64, redb::Error> {
    let mut slowest: Option<u64> = None;
    for entry in cursors.iter()? {
        let (_, v) = entry?;
        slowest = Some(slowest.map_or(v.value(), |s: u64| s.min(v.value())));
    }
    let Some(slowest) = slowest else {
        // No destination: nothing will ever read the records.
        return Ok(0);
    };
    let mut freed = 0u64;
    alerts.retain_in(..=slowest, |_, v| {
        freed += v.len() as u64;
        false
    })?;
    Ok(freed)
}

/// The committer thread: takes what is waiting, commits it in one transaction, answers.
fn commit_loop(shared: &Shared, mut rx: mpsc::Receiver<Request>) {
    let mut stop = false;
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < GROUP_MAX {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        if let Some(i) = group.iter().position(|r| matches!(r, Request::Stop)) {
            // What came after Stop is answered with Closed when the channel drops.
            group.truncate(i);
            stop = true;
        }
        let reopened = match shared.db() {
            Ok(_) => Ok(()),
            Err(_) => shared.reopen(),
        };
        let result = reopened.and_then(|()| commit_group(shared, &group));
        match &result {
            Err(e) => {
                tracing::error!("{e}");
                // Whatever the error, the next group gets a freshly opened store.
                shared.db.write().unwrap_or_else(|p| p.into_inner()).take();
                if let Err(e) = shared.reopen() {
                    tracing::debug!(
                        "reopening the queue failed, tried again with the next write: {e}"
                    );
                }
            }
            // Before the replies: whoever was answered sees the new head.
            Ok(head) => {
                shared.head.send_if_modified(|h| {
                    let moved = *h != *head;
                    *h = *head;
                    moved
                });
            }
        }
        for request in group {
            let reply = match request {
                Request::Append { reply, .. }
                | Request::Ack { reply, .. }
                | Request::Notify { reply, .. } => reply,
                Request::Stop => continue,
            };
            let _ = reply.send(result.clone().map(|_| ()));
        }
        if stop {
            return;
        }
    }
}

fn commit_group(shared: &Shared, group: &[Request]) -> Result<u64, QueueError> {
    let err = |e: &dyn std::fmt::Display| QueueError::Store {
        path: shared.path.clone(),
        detail: e.to_string(),
    };
    let txn = shared.db()?.begin_write().map_err(|e| err(&e))?;
    let (head, bytes) = {
        let mut alerts = txn.open_table(ALERTS).map_err(|e| err(&e))?;
        let mut checkpoints = txn.open_table(CHECKPOINTS).map_err(|e| err(&e))?;
        let mut cursors = txn.open_table(CURSORS).map_err(|e| err(&e))?;
        let mut meta = txn.open_table(META).map_err(|e| err(&e))?;
        let mut dead = txn.open_table(DEAD_LETTERS).map_err(|e| err(&e))?;
        let mut notify = txn.open_table(NOTIFY).map_err(|e| err(&e))?;
        let mut next = meta
            .get("next_seq")
            .map_err(|e| err(&e))?
            .map_or(1, |v| v.value());
        let mut next_letter = meta
            .get("next_letter")
            .map_err(|e| err(&e))?
            .map_or(1, |v| v.value());
        let letters_before = next_letter;
        let mut bytes = shared.bytes.load(Ordering::Relaxed);
        // The last checkpoint of each tenant in the group is the one that counts.
        let mut latest: BTreeMap<&str, &[u8]> = BTreeMap::new();
        let mut acked = false;
        for request in group {
            match request {
                Request::Append {
                    checkpoint,
                    records,
                    letters,
                    forget,
                    ..
                } => {
                    for r in records {
                        alerts.insert(next, r.as_slice()).map_err(|e| err(&e))?;
                        bytes += r.len() as u64;
                        next += 1;
                    }
                    for l in letters {
                        dead.insert(next_letter, l.as_slice())
                            .map_err(|e| err(&e))?;
                        next_letter += 1;
                    }
                    for n in forget {
                        dead.remove(*n).map_err(|e| err(&e))?;
                    }
                    if let Some((key, cp)) = checkpoint {
                        latest.insert(key.as_str(), cp.as_slice());
                    }
                }
                Request::Ack {
                    destination, seq, ..
                } if !destination.is_empty() => {
                    let current = cursors
                        .get(destination.as_str())
                        .map_err(|e| err(&e))?
                        .map(|v| v.value());
                    // Only a configured destination has a cursor; acks never go backwards.
                    if current.is_some_and(|c| c < *seq) {
                        cursors
                            .insert(destination.as_str(), *seq)
                            .map_err(|e| err(&e))?;
                        acked = true;
                    }
                }
                Request::Notify { change, .. } => {
                    for (start, end) in &change.delete {
                        notify
                            .retain_in(start.as_str()..end.as_str(), |_, _| false)
                            .map_err(|e| err(&e))?;
                    }
                    for (k, v) in &change.put {
                        notify
                            .insert(k.as_str(), v.as_slice())
                            .map_err(|e| err(&e))?;
                    }
                    if let Some((name, seq)) = &change.cursor {
                        let current = cursors
                            .get(name.as_str())
                            .map_err(|e| err(&e))?
                            .map(|v| v.value());
                        if current.is_some_and(|c| c < *seq) {
                            cursors.insert(name.as_str(), *seq).map_err(|e| err(&e))?;
                            acked = true;
                        }
                    }
                }
                Request::Ack { .. } | Request::Stop => {}
            }
        }
        for (key, cp) in latest {
            checkpoints.insert(key, cp).map_err(|e| err(&e))?;
        }
        if acked {
            let freed = reclaim(&cursors, &mut alerts).map_err(|e| err(&e))?;
            bytes = bytes.saturating_sub(freed);
        }
        meta.insert("next_seq", next).map_err(|e| err(&e))?;
        meta.insert("bytes", bytes).map_err(|e| err(&e))?;
        if next_letter != letters_before {
            meta.insert("next_letter", next_letter)
                .map_err(|e| err(&e))?;
        }
        (next - 1, bytes)
    };
    txn.commit().map_err(|e| err(&e))?;
    shared.commits.fetch_add(1, Ordering::Relaxed);
    let before = shared.bytes.swap(bytes, Ordering::Relaxed);
    if bytes < before {
        shared.space.notify_waiters();
    }
    Ok(head)
}

/// The key of a tenant's checkpoint: the name its checkpoint file had.
pub fn checkpoint_key(tenant_id: &str, api: Api) -> String {
    Checkpoint::path(Path::new(""), tenant_id, &api.to_string())
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn record(i: u64) -> Vec<u8> {
        Record {
            tenant_name: "contoso".into(),
            tenant_id: "t".into(),
            api: "graph".into(),
            alert_id: format!("da{i}"),
            last_update: Utc::now(),
            alert: serde_json::value::RawValue::from_string(format!("{{\"id\":\"da{i}\"}}"))
                .expect("json"),
            only: None,
        }
        .encode()
    }

    fn ids(q: &Queue, after: u64) -> Vec<String> {
        q.read(after, 100)
            .expect("read")
            .into_iter()
            .map(|(_, b)| Record::decode(&b).expect("record").alert_id)
            .collect()
    }

    /// The notifier's changes commit with its cursor, which holds records like a destination's;
    /// deleted ranges go, put keys stay across a reopen.
    #[tokio::test]
    async fn the_notifiers_state_commits_with_its_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = Checkpoint::fresh("t", "graph", Utc::now());
        {
            let q = Queue::open(dir.path(), 1 << 20).expect("open");
            q.attach(&["siem".into(), "@notifications".into()])
                .expect("attach");
            q.append("t-graph", (1..=4).map(record).collect(), Vec::new(), &cp)
                .await
                .expect("append");
            q.ack("siem", 4).await.expect("ack");
            // The notifier has not read them: they stay.
            assert_eq!(ids(&q, 0).len(), 4);
            let put = |k: &str| (k.to_string(), k.as_bytes().to_vec());
            q.notify_commit(NotifyChange {
                cursor: Some(("@notifications".into(), 3)),
                put: vec![
                    put("p/r/0/01"),
                    put("p/r/0/02"),
                    put("p/r/0/10"),
                    put("s/t/da1"),
                ],
                delete: Vec::new(),
            })
            .await
            .expect("commit");
            assert_eq!(ids(&q, 0), ["da4"]);
            q.notify_commit(NotifyChange {
                cursor: None,
                put: Vec::new(),
                delete: vec![("p/r/0/".into(), "p/r/0/03".into())],
            })
            .await
            .expect("delete");
            q.close().await;
        }
        let q = Queue::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(q.cursor("@notifications").expect("cursor"), 3);
        let left: Vec<String> = q
            .notify_scan("p/")
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(left, ["p/r/0/10"]);
        assert_eq!(
            q.notify_get(&["s/t/da1".into(), "s/t/da9".into()])
                .expect("get"),
            [Some(b"s/t/da1".to_vec()), None]
        );
    }

    #[tokio::test]
    async fn pages_and_checkpoints_survive_a_reopen_and_space_is_reclaimed_below_the_slowest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = Checkpoint::fresh("t", "graph", Utc::now());
        let q = Queue::open(dir.path(), 1 << 20).expect("open");
        q.attach(&["a".into(), "b".into()]).expect("attach");
        q.append("t-graph", (1..=3).map(record).collect(), Vec::new(), &cp)
            .await
            .expect("append");
        q.append("t-graph", (4..=5).map(record).collect(), Vec::new(), &cp)
            .await
            .expect("append");
        assert_eq!(q.stats().head, 5);
        assert_eq!(ids(&q, 0), ["da1", "da2", "da3", "da4", "da5"]);
        q.ack("a", 4).await.expect("ack");
        // b has delivered nothing: everything stays.
        assert_eq!(ids(&q, 0).len(), 5);
        q.ack("b", 2).await.expect("ack");
        assert_eq!(ids(&q, 0), ["da3", "da4", "da5"]);
        let used = q.stats().bytes;
        q.close().await;

        let q = Queue::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(q.stats().head, 5);
        assert_eq!(q.stats().bytes, used);
        assert_eq!(q.cursor("a").expect("cursor"), 4);
        assert_eq!(q.checkpoint("t-graph").expect("cp"), Some(cp.clone()));
        // b is removed and c added: c starts at the head, a alone holds records back.
        q.attach(&["a".into(), "c".into()]).expect("attach");
        assert_eq!(q.cursor("c").expect("cursor"), 5);
        assert_eq!(ids(&q, 0), ["da5"]);
        q.append("t-graph", vec![record(6)], Vec::new(), &cp)
            .await
            .expect("append");
        assert_eq!(q.stats().head, 6);
    }

    #[tokio::test]
    async fn a_full_queue_makes_append_wait_until_a_destination_frees_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = Checkpoint::fresh("t", "graph", Utc::now());
        let one = record(1).len() as u64;
        let q = Queue::open(dir.path(), one * 3).expect("open");
        q.attach(&["a".into()]).expect("attach");
        q.append("k", (1..=3).map(record).collect(), Vec::new(), &cp)
            .await
            .expect("append");
        let waiting = tokio::spawn({
            let q = q.clone();
            let cp = cp.clone();
            async move { q.append("k", vec![record(4)], Vec::new(), &cp).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "append went past a full queue");
        assert_eq!(q.stats().head, 3);
        q.ack("a", 1).await.expect("ack");
        waiting.await.expect("task").expect("append");
        assert_eq!(ids(&q, 0), ["da2", "da3", "da4"]);
    }

    /// A page's dead letters are committed with it; `read_dead_letters` sees them from another
    /// handle while the queue is open (as `dead-letters list` does while the daemon runs); a
    /// replay queues records and forgets the letters in one transaction.
    #[tokio::test]
    async fn dead_letters_go_with_their_page_and_are_readable_while_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cp = Checkpoint::fresh("t", "graph", Utc::now());
        let q = Queue::open(dir.path(), 1 << 20).expect("open");
        q.attach(&["a".into()]).expect("attach");
        q.append(
            "k",
            vec![record(1)],
            vec![b"{\"reason\":\"one\"}".to_vec()],
            &cp,
        )
        .await
        .expect("append");
        q.keep_dead_letters(vec![b"{\"reason\":\"two\"}".to_vec()])
            .await
            .expect("keep");
        let seen = read_dead_letters(dir.path()).expect("read while open");
        let reasons: Vec<&[u8]> = seen.iter().map(|(_, l)| l.as_slice()).collect();
        assert_eq!(
            reasons,
            [&b"{\"reason\":\"one\"}"[..], &b"{\"reason\":\"two\"}"[..]]
        );
        q.replay_dead_letters(vec![record(2)], vec![seen[0].0])
            .await
            .expect("replay");
        let left = q.dead_letters().expect("letters");
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, seen[1].0);
        assert_eq!(ids(&q, 0), ["da1", "da2"]);
        // Numbers are never reused, so a letter listed earlier is never confused with a new one.
        q.keep_dead_letters(vec![b"{}".to_vec()])
            .await
            .expect("keep");
        let newest = q.dead_letters().expect("letters");
        assert!(newest[1].0 > seen[1].0, "{newest:?}");
    }

    /// Power lost during a commit leaves a torn write at the end of the file. The store commits
    /// in two phases (redb does in single-writer mode): the commit's pages, fsync, then the
    /// header, fsync; so a crash leaves any part of the new pages written under the old header,
    /// or the file cut short. Made here from two crash images (the file copied while the queue
    /// is open, as a crash leaves it) after commit 1 and after commit 2, as the image of commit
    /// 2 with parts of it put back as they were: each opens to commit 1 or commit 2, whole, never
    /// a mix. A file altered in a way no crash can make (a new header over missing pages) opens
    /// or is refused with a clear error; it never panics.
    #[test]
    fn a_torn_last_commit_opens_as_the_commit_before_or_whole() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("queue.redb");
        let cp = Checkpoint::fresh("t", "graph", Utc::now());
        let (one, two) = rt.block_on(async {
            let q = Queue::open(dir.path(), 1 << 30).expect("open");
            q.attach(&["a".into()]).expect("attach");
            q.append("k", (1..=50).map(record).collect(), Vec::new(), &cp)
                .await
                .expect("commit 1");
            let one = std::fs::read(&path).expect("image 1");
            q.append("k", (51..=400).map(record).collect(), Vec::new(), &cp)
                .await
                .expect("commit 2");
            let two = std::fs::read(&path).expect("image 2");
            q.close().await;
            (one, two)
        });
        const PAGE: usize = 4096;
        // Pages commit 2 changed or added; page 0 holds the header.
        let changed: Vec<usize> = (0..two.len().div_ceil(PAGE))
            .filter(|&p| {
                let r = p * PAGE..((p + 1) * PAGE).min(two.len());
                one.get(r.clone()) != Some(&two[r])
            })
            .collect();
        let data: Vec<usize> = changed.iter().copied().filter(|&p| p != 0).collect();
        assert!(data.len() > 2, "commit 2 changed {changed:?}");
        let torn = |pages: &[usize]| {
            let mut t = two.clone();
            for &p in pages {
                let r = p * PAGE..((p + 1) * PAGE).min(t.len());
                match one.get(r.clone()) {
                    Some(old) => t[r].copy_from_slice(old),
                    None => t[r].fill(0),
                }
            }
            t
        };
        let with_header = |pages: &[usize]| [&[0usize][..], pages].concat();
        let odd: Vec<usize> = data.iter().copied().step_by(2).collect();
        let crashes: Vec<(&str, Vec<u8>)> = vec![
            ("every page written, not the header", torn(&[0])),
            (
                "every other page written, not the header",
                torn(&with_header(&odd)),
            ),
            (
                "the first page written, not the header",
                torn(&with_header(&data[1..])),
            ),
            ("the file cut where commit 1 ended", {
                let mut t = torn(&[0]);
                t.truncate(one.len());
                t
            }),
            ("the whole commit", two.clone()),
        ];
        let altered: Vec<(&str, Vec<u8>)> = vec![
            ("a new header over missing pages", torn(&odd)),
            ("a new header, no new page", torn(&data)),
        ];
        let open = |image: &[u8]| {
            let dir = tempfile::tempdir().expect("tempdir");
            std::fs::write(dir.path().join("queue.redb"), image).expect("write");
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _guard = rt.enter();
                Queue::open(dir.path(), 1 << 30).map(|q| {
                    let ids: Result<Vec<String>, String> =
                        q.read(0, 1000).map_err(|e| e.to_string()).and_then(|rs| {
                            rs.iter()
                                .map(|(_, b)| {
                                    Record::decode(b)
                                        .map(|r| r.alert_id)
                                        .map_err(|e| e.to_string())
                                })
                                .collect()
                        });
                    (ids, q.stats().head)
                })
            }))
        };
        let want = |n: u64| (1..=n).map(|i| format!("da{i}")).collect::<Vec<_>>();
        for (what, image) in crashes {
            match open(&image) {
                Err(_) => panic!("{what}: opening panicked"),
                Ok(Err(e)) => panic!("{what}: {e}"),
                Ok(Ok((ids, head))) => {
                    let ids = ids.unwrap_or_else(|e| panic!("{what}: reading: {e}"));
                    assert!(
                        (ids == want(50) && head == 50) || (ids == want(400) && head == 400),
                        "{what}: {} records, head {head}",
                        ids.len()
                    );
                }
            }
        }
        for (what, image) in altered {
            match open(&image) {
                Err(_) => panic!("{what}: opening panicked"),
                Ok(Err(e)) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("queue.redb") && e.contains("move it aside"),
                        "{what}: {e}"
                    );
                }
                // Reading may meet the damage: an error, not a panic.
                Ok(Ok(_)) => {}
            }
        }
    }

    /// A file that is not a queue (damaged beyond repair) is a clear error naming it, not a
    /// panic and not a silently empty queue.
    #[test]
    fn a_damaged_store_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("queue.redb"), vec![0x5a; 64 * 1024]).expect("write");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let err = match Queue::open(dir.path(), 1 << 20) {
            Ok(_) => panic!("a damaged file opened as a queue"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("queue.redb"), "{err}");
        assert!(err.contains("mv queue.redb queue.redb.damaged"), "{err}");
    }

    #[test]
    fn a_checkpoint_file_is_migrated_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let _guard = rt.enter();
        let cp = Checkpoint::fresh("t", "mde", Utc::now());
        let file = Checkpoint::path(dir.path(), "t", "mde");
        cp.save(&file).expect("save");
        let q = Queue::open(dir.path(), 1 << 20).expect("open");
        let key = checkpoint_key("t", Api::Mde);
        assert_eq!(key, "t-mde");
        assert!(q.migrate_checkpoint_file(&key, &file).expect("migrate"));
        assert!(!file.exists());
        assert_eq!(q.checkpoint(&key).expect("read"), Some(cp));
        assert!(!q.migrate_checkpoint_file(&key, &file).expect("again"));
    }
}
