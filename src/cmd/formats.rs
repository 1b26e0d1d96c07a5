//! `formats list|show`.

use crate::cli::FormatsCommand;
use anyhow::{bail, Result};
use defender_bridge::format::{self, Formatter};
use std::process::ExitCode;

pub(crate) fn formats(cmd: FormatsCommand) -> Result<ExitCode> {
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
