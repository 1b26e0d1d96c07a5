//! `convert`: alerts from files or stdin to records on stdout.

use super::{bail_rejected, input_names, read_input, syslog_header};
use crate::cli::ConvertArgs;
use anyhow::{Context as _, Result};
use defender_bridge::format::{Context, Formatter, MessageEncoder};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) fn convert(args: ConvertArgs) -> Result<ExitCode> {
    let formatter = Formatter::load(&args.format)?;
    let encoder = MessageEncoder {
        formatter: Arc::new(formatter),
        header: syslog_header(args.syslog, &args.header)?,
        max_message: args.max_size,
    };
    let ctx = Context {
        tenant_name: args.tenant_name.as_deref(),
        hostname: None,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut err = std::io::stderr();
    let mut rejected = 0;
    for name in input_names(&args.files) {
        let Some((origin, bytes)) = read_input(&name, &mut rejected)? else {
            continue;
        };
        let summary =
            defender_bridge::convert::convert(&origin, &bytes, &encoder, &ctx, &mut out, &mut err)
                .context("cannot write to stdout")?;
        rejected += summary.rejected;
    }
    out.flush().context("cannot write to stdout")?;
    if rejected > 0 {
        bail_rejected(rejected)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
