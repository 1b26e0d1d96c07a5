//! `convert` and `send`: the inputs read on a thread of their own, a chunk at a time (memory
//! does not grow with the input), each chunk decoded and encoded on the workers (all cores),
//! and the results taken back in input order, so records leave in the order of the input.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use defender_bridge::convert::{encode_chunk, Encoded};
use defender_bridge::format::Context;
use defender_bridge::input::{Chunk, Limits, Reader};
use defender_bridge::output::OutputEncoder;
use defender_bridge::workers::{InOrder, Workers};
use tokio::sync::mpsc;

use super::input_names;

enum Input {
    Chunk(Arc<str>, Chunk),
    /// A file that cannot be opened or read on: reported and counted, not fatal.
    Unreadable(String),
}

/// Chunks read ahead of the workers.
const READ_AHEAD: usize = 2;

/// Runs `files` (stdin when empty or `-`) through `outputs` on `jobs` workers (one more than
/// the cores when `None`) and hands each chunk's result, in input order, to `deliver` with the
/// name of its input. Returns the number of inputs that could not be read.
pub(crate) async fn stream(
    files: &[PathBuf],
    jobs: Option<usize>,
    outputs: Vec<Arc<OutputEncoder>>,
    tenant_name: Option<String>,
    mut deliver: impl AsyncFnMut(&str, Encoded) -> Result<()>,
) -> Result<usize> {
    let workers = Workers::new(jobs.unwrap_or_else(defender_bridge::workers::stream_jobs));
    let (tx, mut rx) = mpsc::channel(READ_AHEAD);
    let names = input_names(files);
    std::thread::Builder::new()
        .name("input".into())
        .spawn(move || read_all(names, tx))?;
    let outputs: Arc<[Arc<OutputEncoder>]> = outputs.into();
    let tenant: Option<Arc<str>> = tenant_name.map(Into::into);
    // Twice the workers: one batch each being made, one each waiting to be taken.
    let mut in_order: InOrder<(Arc<str>, Encoded)> = InOrder::new(2 * workers.jobs());
    let mut reading = true;
    let mut unreadable = 0;
    loop {
        tokio::select! {
            // What is done goes out first: memory stays at the window.
            biased;
            (origin, encoded) = in_order.next(), if !in_order.is_empty() => {
                deliver(&origin, encoded).await?;
            }
            input = rx.recv(), if reading && in_order.has_room() => match input {
                Some(Input::Chunk(origin, chunk)) => {
                    let (outputs, tenant) = (outputs.clone(), tenant.clone());
                    let job = workers.spawn(move || {
                        let ctx = Context {
                            tenant_name: tenant.as_deref(),
                            hostname: None,
                        };
                        let encoded = encode_chunk(&chunk, &outputs, &ctx);
                        (origin, encoded)
                    });
                    in_order.push(job.await);
                }
                Some(Input::Unreadable(message)) => {
                    eprintln!("{message}");
                    unreadable += 1;
                }
                None => reading = false,
            },
            else => break,
        }
    }
    Ok(unreadable)
}

/// The input thread: every input in turn, cut into chunks.
fn read_all(names: Vec<String>, tx: mpsc::Sender<Input>) {
    for name in names {
        let (origin, src): (Arc<str>, Box<dyn Read>) = if name == "-" {
            ("<stdin>".into(), Box::new(std::io::stdin().lock()))
        } else {
            match std::fs::File::open(&name) {
                Ok(f) => (name.into(), Box::new(f)),
                Err(e) => {
                    if tx
                        .blocking_send(Input::Unreadable(format!("{name}: cannot read: {e}")))
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            }
        };
        let mut reader = Reader::new(src, Limits::default());
        loop {
            let input = match reader.next_chunk() {
                Ok(Some(chunk)) => Input::Chunk(origin.clone(), chunk),
                Ok(None) => break,
                Err(e) => Input::Unreadable(format!("{origin}: cannot read: {e}")),
            };
            let failed = matches!(input, Input::Unreadable(_));
            // The receiver is gone: the command stopped.
            if tx.blocking_send(input).is_err() {
                return;
            }
            if failed {
                break;
            }
        }
    }
}
