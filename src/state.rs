//! `state export` and `state import`: tenants' checkpoints out of one instance's state store
//! and into another's, so that a tenant that moves to another shard (the shard count changed)
//! is resumed where its old owner stopped: nothing polled twice, nothing skipped (README
//! "Scale-out").
//!
//! A checkpoint is the poller's position (cursor, the alert versions already handled in the
//! overlap, update-policy state). What the old owner had queued but not yet delivered stays in
//! its own queue and is delivered by it, whatever tenants it polls afterwards: only the
//! position moves. Both commands want the daemon of that state directory stopped (they take its
//! lock), so that no poll moves a checkpoint while it is copied.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::queue::{checkpoint_key, Queue};
use crate::shard::Shard;
use crate::source::Checkpoint;

/// The file `state export` writes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Export {
    /// `defender-bridge.state/1`.
    pub format: String,
    pub checkpoints: Vec<Checkpoint>,
}

pub const FORMAT: &str = "defender-bridge.state/1";

fn open(config: &Config) -> anyhow::Result<(std::fs::File, Queue)> {
    std::fs::create_dir_all(&config.state_dir)?;
    let lock = crate::daemon::lock_state_dir(&config.state_dir)
        .map_err(|e| anyhow::anyhow!("{e:#} (stop the daemon of this state directory first)"))?;
    let queue = Queue::open(&config.state_dir, config.queue_max_bytes)?;
    Ok((lock, queue))
}

/// The checkpoints of the state store of `config`: all, or those of the tenants named.
pub fn export(config: &Config, tenants: &[String]) -> anyhow::Result<Export> {
    let (_lock, queue) = open(config)?;
    let mut checkpoints = Vec::new();
    for (_, cp) in queue.checkpoints()? {
        let name = config
            .tenants
            .iter()
            .find(|t| t.settings.tenant_id.eq_ignore_ascii_case(&cp.tenant_id))
            .map(|t| t.settings.name.as_str());
        if tenants.is_empty()
            || tenants
                .iter()
                .any(|n| Some(n.as_str()) == name || n.eq_ignore_ascii_case(&cp.tenant_id))
        {
            checkpoints.push(cp);
        }
    }
    Ok(Export {
        format: FORMAT.to_string(),
        checkpoints,
    })
}

/// What import did with one checkpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Imported {
    /// Stored: the tenant had none here, or an older one.
    Stored,
    /// This store's own is as new or newer.
    KeptOwn,
    /// Not this instance's tenant (not in its configuration, or another shard's).
    NotOurs,
}

/// Stores each checkpoint of `exports` that belongs to this instance's tenants (its shard's,
/// with a shard) where the store has none or an older one (an earlier cursor). Returns what
/// became of each, with the tenant id and API.
pub fn import(
    config: &Config,
    exports: &[Export],
) -> anyhow::Result<Vec<(String, String, Imported)>> {
    let (_lock, queue) = open(config)?;
    let mut out = Vec::new();
    for cp in exports.iter().flat_map(|e| &e.checkpoints) {
        let ours = config.tenants.iter().find(|t| {
            t.settings.tenant_id.eq_ignore_ascii_case(&cp.tenant_id)
                && t.settings.api.to_string() == cp.api
        });
        let verdict = match ours {
            // config.tenants is this shard's already; the check says so for a reader.
            Some(t)
                if config
                    .shard
                    .is_none_or(|s: Shard| s.owns(&cp.tenant_id, t.settings.api)) =>
            {
                let key = checkpoint_key(&t.settings.tenant_id, t.settings.api);
                match queue.checkpoint(&key)? {
                    Some(own) if own.cursor >= cp.cursor => Imported::KeptOwn,
                    _ => {
                        let mut cp = cp.clone();
                        // The configuration's spelling of the id, as the poller writes it.
                        cp.tenant_id = t.settings.tenant_id.clone();
                        queue.put_checkpoint(&key, &cp)?;
                        Imported::Stored
                    }
                }
            }
            _ => Imported::NotOurs,
        };
        out.push((cp.tenant_id.clone(), cp.api.clone(), verdict));
    }
    Ok(out)
}

/// Reads an export file.
pub fn read(path: &Path) -> anyhow::Result<Export> {
    let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let e: Export = serde_json::from_slice(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a state export: {e}", path.display()))?;
    if e.format != FORMAT {
        anyhow::bail!(
            "{}: format {:?}, this version reads {FORMAT:?}",
            path.display(),
            e.format
        );
    }
    Ok(e)
}
