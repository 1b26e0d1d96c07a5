//! `convert`: alerts from files or stdin to records on stdout.

use super::{bail_rejected, stream::stream, syslog_header};
use crate::cli::ConvertArgs;
use anyhow::{Context as _, Result};
use defender_bridge::convert::Summary;
use defender_bridge::format::{Formatter, MessageEncoder};
use defender_bridge::output::OutputEncoder;
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

pub(crate) async fn convert(args: ConvertArgs) -> Result<ExitCode> {
    let formatter = Formatter::load(&args.format)?;
    let output = Arc::new(OutputEncoder::plain(MessageEncoder {
        formatter: Arc::new(formatter),
        header: syslog_header(args.syslog, &args.header)?,
        max_message: args.max_size,
    }));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
    let mut err = std::io::stderr();
    let mut summary = Summary::default();
    let unreadable = stream(
        &args.files,
        args.jobs.map(usize::from),
        vec![output],
        args.tenant_name.clone(),
        async |origin, encoded| {
            summary
                .add(&encoded, origin, &mut out, &mut err)
                .context("cannot write to stdout")
        },
    )
    .await?;
    out.flush().context("cannot write to stdout")?;
    let rejected = summary.rejected + unreadable;
    if rejected > 0 {
        bail_rejected(rejected)
    } else {
        Ok(ExitCode::SUCCESS)
    }
}
