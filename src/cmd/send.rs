//! `send` and `send-test`: alerts from files or stdin, or one test alert, to destinations.

use super::{fits, init_logging, output_configs, shutdown_signal, stream::stream};
use crate::cli::{SendArgs, SendTestArgs};
use anyhow::{Context as _, Result};
use defender_bridge::convert::problem_line;
use defender_bridge::format::Context;
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
    let mut rejected = 0usize;
    let mut alerts = 0usize;
    let work = async {
        let unreadable = stream(
            &args.files,
            args.jobs.map(usize::from),
            outputs.iter().map(Output::encoder).collect(),
            args.tenant_name.clone(),
            async |origin, encoded| {
                alerts += encoded.alerts;
                for p in &encoded.problems {
                    rejected += usize::from(p.rejected);
                    eprintln!("{}", problem_line(origin, p));
                }
                if let Some(file) = &letters {
                    for r in &encoded.refused {
                        file.write_json(&r.letter).with_context(|| {
                            format!("dead-letter file {}", file.path().display())
                        })?;
                    }
                }
                for (o, messages) in outputs.iter().zip(encoded.messages) {
                    o.hand_over(messages).await?;
                }
                Ok(())
            },
        )
        .await?;
        rejected += unreadable;
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
