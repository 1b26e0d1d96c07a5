//! `run`: the daemon, with SIGHUP reloads.

use super::{apply_instance, init_logging_at, load_instance, shutdown_signal};
use crate::cli::{InstanceArgs, RunArgs};
use anyhow::{bail, Result};
use defender_bridge::config::Config;
use defender_bridge::daemon;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

pub(crate) async fn run_daemon(run: RunArgs) -> Result<ExitCode> {
    let args = run.config;
    let config = load_instance(&args.config, &run.instance)?;
    init_logging_at(&config.log_level);
    if let Some(n) = defender_bridge::limits::raise_open_files() {
        tracing::debug!("open files: up to {n}");
    }
    if config.tenants_in_file == 0 || config.destinations.is_empty() {
        bail!(
            "{}: nothing to do: the configuration needs at least one [[tenant]] and one [[destination]]",
            args.config.display()
        );
    }
    if let Some(shard) = config.shard {
        // A shard may own none of a few tenants: it runs (and takes its share after a reload).
        tracing::info!(
            "shard {shard}: polls {} of the {} tenant(s) of the configuration",
            config.tenants.len(),
            config.tenants_in_file
        );
    }
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received");
        signal.cancel();
    });
    let (reloads, reload_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(reload_on_sighup(args.config.clone(), run.instance, reloads));
    daemon::run_with_reload(config, stop, Some(reload_rx)).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP (`systemctl reload`): reads and validates the configuration file again and hands it
/// to the daemon; a file that does not validate is refused, with its errors in the log, and the
/// running configuration stays (issue 10 §3).
pub(crate) async fn reload_on_sighup(
    path: std::path::PathBuf,
    instance: InstanceArgs,
    reloads: tokio::sync::mpsc::Sender<Config>,
) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reloading needs a restart");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading {}", path.display());
            let loaded = Config::load(&path)
                .map_err(anyhow::Error::from)
                .and_then(|mut c| {
                    apply_instance(&mut c, &instance)?;
                    Ok(c)
                });
            match loaded {
                Ok(c) if c.tenants_in_file == 0 || c.destinations.is_empty() => tracing::error!(
                    "reload refused: {} needs at least one [[tenant]] and one [[destination]]; the running configuration stays",
                    path.display()
                ),
                Ok(c) => {
                    if reloads.send(c).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(
                    "reload refused, the running configuration stays: {e:#}"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, instance, reloads);
}
