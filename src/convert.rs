//! `convert`: alerts from JSON files or stdin to records, one per line.

use std::io::Write;

use crate::format::{Context, MessageEncoder};
use crate::input::{self, Decoded, Limits};

/// What a conversion did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub alerts: usize,
    pub records: usize,
    pub rejected: usize,
    pub truncated: u64,
}

/// Converts one input (`origin` names it in messages) and writes each record followed by `\n`
/// to `out`, and `ORIGIN:LINE: reason` for each problem to `err`.
pub fn convert(
    origin: &str,
    input: &[u8],
    encoder: &MessageEncoder,
    ctx: &Context<'_>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> std::io::Result<Summary> {
    let mut summary = Summary::default();
    let mut buf = Vec::with_capacity(4096);
    let mut io_error = None;
    input::decode(input, Limits::default(), |d| match d {
        Decoded::Alert(line, alert) => {
            summary.alerts += 1;
            for i in 0..encoder.formatter.record_count(&alert) {
                buf.clear();
                match encoder.encode(&alert, ctx, i, &mut buf) {
                    Ok(e) => {
                        summary.records += 1;
                        summary.truncated += u64::from(e.truncated);
                        buf.push(b'\n');
                        if let Err(e) = out.write_all(&buf) {
                            io_error.get_or_insert(e);
                        }
                    }
                    Err(e) => {
                        summary.rejected += 1;
                        let _ = writeln!(err, "{origin}:{line}: alert {}: {e}", alert.id);
                    }
                }
            }
        }
        Decoded::Problem(p) => {
            if p.rejected {
                summary.rejected += 1;
            }
            let kind = if p.rejected { "" } else { "warning: " };
            let _ = writeln!(err, "{origin}:{}: {kind}{}", p.line, p.message);
        }
    });
    match io_error {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}
