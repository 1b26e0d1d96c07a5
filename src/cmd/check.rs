//! `check`: the configuration, and with `--online` the tenants and destinations.

use super::{fits, init_logging_at, load_instance};
use crate::cli::CheckArgs;
use anyhow::Result;
use defender_bridge::format::Context;
use defender_bridge::output::{self, Output};
use defender_bridge::source::{build_http_client, Poller};
use std::process::ExitCode;

/// The hosts a tenant really uses: overrides said as such, so that `check` never calls a tenant
/// with a custom sign-in host "commercial cloud" (issue 10 §8).
pub(crate) fn endpoints(s: &defender_bridge::source::TenantSettings) -> String {
    let custom = match (s.authority_host.is_some(), s.api_base_url.is_some()) {
        (false, false) => format!("{} cloud", s.cloud),
        (true, false) => format!("{} cloud, sign-in host overridden", s.cloud),
        (false, true) => format!("{} cloud, API base overridden", s.cloud),
        (true, true) => "custom endpoints".to_string(),
    };
    format!(
        "{} API, sign-in {}, API {} ({custom})",
        s.api,
        s.authority_host(),
        s.api_base()
    )
}

pub(crate) async fn check(args: CheckArgs) -> Result<ExitCode> {
    init_logging_at("error");
    let config = load_instance(&args.config.config, &args.instance)?;
    match config.shard {
        Some(shard) => println!(
            "{}: OK: shard {shard}: {} of {} tenant(s), {} destination(s)",
            args.config.config.display(),
            config.tenants.len(),
            config.tenants_in_file,
            config.destinations.len()
        ),
        None => println!(
            "{}: OK: {} tenant(s), {} destination(s)",
            args.config.config.display(),
            config.tenants.len(),
            config.destinations.len()
        ),
    }
    for t in &config.tenants {
        println!("tenant {}: {}", t.settings.name, endpoints(&t.settings));
    }
    for r in &config.notifications.rules {
        let actions: Vec<String> = r
            .actions
            .iter()
            .map(|a| format!("{} to {}", a.kind(), a.target()))
            .collect();
        println!(
            "notification {}: {} (`notify-test {}` sends a test message)",
            r.name,
            actions.join(", "),
            r.name
        );
    }
    if !args.online {
        for d in &config.destinations {
            let dest = &d.output.sink.destination;
            match dest.resolve().await {
                Ok(addrs) => println!(
                    "destination {dest}: format {}, resolves to {}",
                    d.output.format,
                    addrs
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                // Not a failure: at boot DNS may not be up yet when the unit's ExecStartPre runs
                // this, and the writer resolves the name again at every connection attempt
                // (issue 10 §2).
                Err(e) => println!(
                    "destination {dest}: format {}, WARNING: {e}; it is resolved again at every connection attempt",
                    d.output.format
                ),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    let http = build_http_client(&config.http)?;
    for t in &config.tenants {
        let name = &t.settings.name;
        let result = async {
            let dir = std::env::temp_dir()
                .join(format!("defender-bridge-check-{}", uuid::Uuid::new_v4()));
            let poller = Poller::connect(t.settings.clone(), http.clone(), &dir)?;
            let n = poller.probe().await;
            let _ = std::fs::remove_dir_all(&dir);
            n
        }
        .await;
        match result {
            Ok(n) => println!("tenant {name}: OK: signed in, {n} alert(s) on the first page"),
            Err(e) => {
                failed = true;
                println!("tenant {name}: FAILED: {e}");
            }
        }
    }
    let alert = output::test_alert();
    for d in &config.destinations {
        let url = d.output.sink.destination.to_string();
        let result = async {
            d.output.sink.probe().await?;
            if args.no_send {
                return anyhow::Ok(());
            }
            let o = Output::build(&d.output)?;
            fits(o.send(&alert, &Context::default()).await?)?;
            o.shutdown(std::time::Duration::from_secs(10)).await?;
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) if args.no_send => {
                println!("destination {url}: OK: connected (no test record: --no-send)")
            }
            Ok(()) => println!("destination {url}: OK: test alert {} sent", alert.id),
            Err(e) => {
                failed = true;
                println!("destination {url}: FAILED: {e:#}");
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
