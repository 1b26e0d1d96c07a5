//! `demo`: the whole pipeline against the built-in fake API.

use super::{init_logging_at, shutdown_signal, syslog_header};
use crate::cli::DemoArgs;
use anyhow::Result;
use defender_bridge::format::Formatter;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

pub(crate) async fn demo(args: DemoArgs) -> Result<ExitCode> {
    init_logging_at("warn");
    Formatter::load(&args.format)?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    let opts = defender_bridge::demo::DemoOptions {
        format: args.format.clone(),
        header: syslog_header(args.syslog, &args.header)?,
        to: args.to,
        tenants: args.tenants,
        every: args.every,
        duration: args.duration,
    };
    defender_bridge::demo::run(opts, stop).await?;
    Ok(ExitCode::SUCCESS)
}
