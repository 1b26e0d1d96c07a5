//! From alert JSON to each output's messages, a chunk of input at a time: what `convert` and
//! `send` run on the worker threads ([`encode_chunk`]), and [`convert`] for a whole input in
//! memory (the golden tests).

use std::io::Write;
use std::sync::Arc;

use crate::format::{Context, MessageEncoder};
use crate::input::{Chunk, Decoded, Limits, Problem, Reader};
use crate::output::{Messages, OutputEncoder};

/// What a conversion did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub alerts: usize,
    pub records: usize,
    pub rejected: usize,
    pub truncated: u64,
}

/// A record that cannot fit its output.
#[derive(Debug)]
pub struct Refusal {
    /// Which output (index in the encoders given to [`encode_chunk`]).
    pub output: usize,
    pub line: usize,
    pub alert_id: String,
    pub reason: String,
    /// Its dead letter ([`crate::dead_letter::Letter::to_json`]).
    pub letter: Vec<u8>,
}

/// One chunk of input made into every output's messages.
#[derive(Debug, Default)]
pub struct Encoded {
    /// Alerts decoded.
    pub alerts: usize,
    /// Problems of the input, in input order (rejected ones and warnings).
    pub problems: Vec<Problem>,
    /// Each output's messages, in input order.
    pub messages: Vec<Messages>,
    pub refused: Vec<Refusal>,
}

/// Decodes `chunk` and makes each alert's messages for each of `outputs`.
pub fn encode_chunk(chunk: &Chunk, outputs: &[Arc<OutputEncoder>], ctx: &Context<'_>) -> Encoded {
    let mut encoded = Encoded {
        // Records are about the size of their alerts (a format writes most of its fields).
        messages: outputs
            .iter()
            .map(|o| o.messages(chunk.len() + chunk.len() / 4, chunk.units()))
            .collect(),
        ..Encoded::default()
    };
    chunk.decode(&mut |d| match d {
        Decoded::Alert(line, alert) => {
            encoded.alerts += 1;
            for (i, output) in outputs.iter().enumerate() {
                for r in output.encode(&alert, ctx, &mut encoded.messages[i]) {
                    encoded.refused.push(Refusal {
                        output: i,
                        line,
                        alert_id: alert.id.to_string(),
                        letter: r.letter(output.destination(), &alert, None, ctx).to_json(),
                        reason: r.reason,
                    });
                }
            }
        }
        Decoded::Problem(p) => encoded.problems.push(p),
    });
    encoded
}

/// `ORIGIN:LINE: reason` (a warning says so).
pub fn problem_line(origin: &str, p: &Problem) -> String {
    let kind = if p.rejected { "" } else { "warning: " };
    format!("{origin}:{}: {kind}{}", p.line, p.message)
}

/// Converts one input held in memory (`origin` names it in messages) and writes each record
/// followed by `\n` to `out`, and `ORIGIN:LINE: reason` for each problem to `err`.
pub fn convert(
    origin: &str,
    input: &[u8],
    encoder: &MessageEncoder,
    ctx: &Context<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<Summary> {
    let output = Arc::new(OutputEncoder::plain(encoder.clone()));
    let outputs = [output.clone()];
    let mut summary = Summary::default();
    let mut reader = Reader::new(input, Limits::default());
    while let Some(chunk) = reader.next_chunk()? {
        let encoded = encode_chunk(&chunk, &outputs, ctx);
        summary.add(&encoded, origin, out, err)?;
    }
    summary.truncated = output.truncated();
    Ok(summary)
}

impl Summary {
    /// Writes one output's records (`encoded.messages[0]`, each followed by `\n`) to `out` and
    /// the problems and refusals to `err`, and counts them.
    pub fn add(
        &mut self,
        encoded: &Encoded,
        origin: &str,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> std::io::Result<()> {
        self.alerts += encoded.alerts;
        for p in &encoded.problems {
            self.rejected += usize::from(p.rejected);
            let _ = writeln!(err, "{}", problem_line(origin, p));
        }
        for r in &encoded.refused {
            self.rejected += 1;
            let _ = writeln!(
                err,
                "{origin}:{}: alert {}: {}",
                r.line, r.alert_id, r.reason
            );
        }
        if let Some(messages) = encoded.messages.first() {
            self.records += messages.len();
            for m in messages.iter() {
                out.write_all(m)?;
                out.write_all(b"\n")?;
            }
        }
        Ok(())
    }
}
