//! `send` and `send-test`: alerts from files or stdin, or one test alert, to destinations.

use super::{fits, init_logging, input_names, output_configs, read_input, shutdown_signal};
use crate::cli::{SendArgs, SendTestArgs};
use anyhow::{Context as _, Result};
use defender_bridge::alert::Alert;
use defender_bridge::format::Context;
use defender_bridge::input::{self, Decoded, Limits};
use defender_bridge::output::{self, Output};
use std::process::ExitCode;

pub(crate) async fn send(args: SendArgs) -> Result<ExitCode> {
    init_logging();
    let configs = output_configs(&args.destination)?;
    let letters = match &args.dead_letter {
        Some(path) => Some(
            defender_bridge::dead_letter::DeadLetterFile::open(path)
                .with_context(|| format!("dead-letter file {}", path.display()))?,
        ),
        None => None,
    };
    let outputs = configs
        .iter()
        .map(Output::build)
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = Context {
        tenant_name: args.tenant_name.as_deref(),
        hostname: None,
    };
    let mut rejected = 0usize;
    let mut alerts = 0usize;
    let work = async {
        for name in input_names(&args.files) {
            // Read off the async threads: a signal must still be noticed while stdin blocks.
            let (read, unreadable) = tokio::task::spawn_blocking(move || {
                let mut unreadable = 0;
                read_input(&name, &mut unreadable).map(|r| (r, unreadable))
            })
            .await
            .context("reading input")??;
            rejected += unreadable;
            let Some((origin, bytes)) = read else {
                continue;
            };
            let mut decoded: Vec<Alert<'static>> = Vec::new();
            input::decode(&bytes, Limits::default(), |d| match d {
                Decoded::Alert(_, a) => decoded.push(a.into_owned()),
                Decoded::Problem(p) => {
                    if p.rejected {
                        rejected += 1;
                    }
                    let kind = if p.rejected { "" } else { "warning: " };
                    eprintln!("{origin}:{}: {kind}{}", p.line, p.message);
                }
            });
            for alert in decoded {
                for o in &outputs {
                    let sent = o.send(&alert, &ctx).await?;
                    for r in &sent.refused {
                        if let Some(file) = &letters {
                            file.write(&r.letter(o.destination(), &alert, None, &ctx))
                                .with_context(|| {
                                    format!("dead-letter file {}", file.path().display())
                                })?;
                        }
                    }
                }
                alerts += 1;
            }
        }
        anyhow::Ok(())
    };
    let interrupted = tokio::select! {
        r = work => { r?; false }
        _ = shutdown_signal() => true,
    };
    if interrupted {
        eprintln!("defender-bridge: interrupted; flushing what was accepted");
    }
    let mut failed = interrupted || rejected > 0;
    for o in outputs {
        let destination = o.destination().to_string();
        let (stats, closed) = o.close(args.timeout).await;
        // Written: acknowledged by the receiver's TCP (or sent, for UDP), not merely queued.
        eprintln!(
            "{destination}: {} record(s) written, {} value(s) truncated, {} dead-lettered",
            stats.sink.messages_sent, stats.truncated, stats.dead_lettered
        );
        // A dead-lettered record was not written: not a success.
        failed |= stats.dead_lettered > 0;
        if let Err(e) = closed {
            eprintln!("defender-bridge: {e}");
            failed = true;
        }
    }
    eprintln!("{alerts} alert(s) read, {rejected} input(s) rejected");
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) async fn send_test(args: SendTestArgs) -> Result<ExitCode> {
    init_logging();
    let configs = output_configs(&args.destination)?;
    let alert = output::test_alert();
    let mut failed = false;
    for cfg in &configs {
        let url = cfg.sink.destination.to_string();
        // Connect first, so that a wrong address, CA or certificate is said plainly.
        if let Err(e) = cfg.sink.probe().await {
            eprintln!("{url}: FAILED: {e}");
            failed = true;
            continue;
        }
        let result = async {
            let o = Output::build(cfg)?;
            fits(o.send(&alert, &Context::default()).await?)?;
            anyhow::Ok(o.shutdown(args.timeout).await?)
        }
        .await;
        match result {
            Ok(_) => println!("{url}: OK: sent test alert {}", alert.id),
            Err(e) => {
                eprintln!("{url}: FAILED: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
