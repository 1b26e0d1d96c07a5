//! defender-bridge: the command line. Parsing and wiring only; the work is in the library.

mod cli;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Parser;

use cli::{Cli, Command, ConvertArgs, FormatsCommand, HeaderArgs, SyslogArg};
use defender_bridge::format::{self, syslog, Context, Formatter, MessageEncoder, SyslogHeader};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Convert(args) => convert(args),
        Command::Formats(cmd) => formats(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("defender-bridge: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn syslog_header(kind: SyslogArg, h: &HeaderArgs) -> Result<SyslogHeader> {
    let facility = syslog::facility_from_name(&h.facility)
        .with_context(|| format!("unknown syslog facility {:?}", h.facility))?;
    let hostname = match &h.hostname {
        Some(name) => name.clone(),
        None => hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "-".to_string()),
    };
    let kind = match kind {
        SyslogArg::None => format::HeaderKind::None,
        SyslogArg::Rfc5424 => format::HeaderKind::Rfc5424,
        SyslogArg::Rfc3164 => format::HeaderKind::Rfc3164,
    };
    let clock = if h.utc {
        syslog::Clock::Utc
    } else {
        syslog::Clock::Local
    };
    Ok(SyslogHeader::new(kind, facility, &hostname, &h.app_name).with_clock(clock))
}

fn convert(args: ConvertArgs) -> Result<ExitCode> {
    let formatter = Formatter::load(&args.format)?;
    let encoder = MessageEncoder {
        formatter: Arc::new(formatter),
        header: syslog_header(args.syslog, &args.header)?,
        max_message: args.max_size,
    };
    let ctx = Context {
        tenant_name: args.tenant_name.as_deref(),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    let mut err = std::io::stderr();
    let mut rejected = 0;
    let inputs: Vec<String> = if args.files.is_empty() {
        vec!["-".to_string()]
    } else {
        args.files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    };
    for name in &inputs {
        let (origin, bytes) = if name == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .context("cannot read stdin")?;
            ("<stdin>".to_string(), buf)
        } else {
            match std::fs::read(name) {
                Ok(b) => (name.clone(), b),
                Err(e) => {
                    writeln!(err, "{name}: cannot read: {e}")?;
                    rejected += 1;
                    continue;
                }
            }
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

fn bail_rejected(n: usize) -> Result<ExitCode> {
    eprintln!("defender-bridge: {n} input(s) rejected");
    Ok(ExitCode::from(1))
}

fn formats(cmd: FormatsCommand) -> Result<ExitCode> {
    match cmd {
        FormatsCommand::List => {
            for (name, src) in format::BUILTIN {
                let f = Formatter::from_toml(name, src)?;
                println!("{name:<10} {}", f.plan().description);
            }
        }
        FormatsCommand::Show { name } => {
            let Some((_, src)) = format::BUILTIN.iter().find(|(n, _)| *n == name) else {
                bail!(
                    "no built-in format {name:?}; the built-in formats are {}",
                    format::BUILTIN
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            };
            print!("{src}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
