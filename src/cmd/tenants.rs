//! `tenants consent-url` and `tenants verify`.

use super::{init_logging_at, load_config};
use crate::cli::{CloudArg, TenantsCommand};
use anyhow::Result;
use defender_bridge::source::{build_http_client, Cloud};
use std::process::ExitCode;

pub(crate) async fn tenants(cmd: TenantsCommand) -> Result<ExitCode> {
    match cmd {
        TenantsCommand::ConsentUrl {
            client_id,
            cloud,
            tenant,
            redirect_uri,
        } => {
            let cloud = match cloud {
                CloudArg::Commercial => Cloud::Commercial,
                CloudArg::Gcc => Cloud::Gcc,
                CloudArg::GccHigh => Cloud::GccHigh,
                CloudArg::Dod => Cloud::Dod,
            };
            println!(
                "{}",
                defender_bridge::tenants::consent_url(
                    &client_id,
                    cloud,
                    tenant.as_deref(),
                    redirect_uri.as_deref()
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Verify(args) => {
            init_logging_at("error");
            let config = load_config(&args.config)?;
            let http = build_http_client(&config.http)?;
            let mut failed = false;
            for t in &config.tenants {
                match defender_bridge::tenants::verify(t, http.clone()).await {
                    Ok(msg) => println!("tenant {}: OK: {msg}", t.settings.name),
                    Err(e) => {
                        failed = true;
                        println!("tenant {}: FAILED: {e}", t.settings.name);
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
