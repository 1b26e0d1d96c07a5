//! `state export` and `state import` (README "Scale-out").

use std::process::ExitCode;

use anyhow::Result;
use defender_bridge::state::{self, Imported};

use super::{init_logging_at, load_instance};
use crate::cli::StateCommand;

pub(crate) fn state(cmd: StateCommand) -> Result<ExitCode> {
    init_logging_at("warn");
    match cmd {
        StateCommand::Export {
            config,
            instance,
            tenant,
        } => {
            // Every tenant of the file: the old owner's store may hold tenants its shard no
            // longer owns (that is what is moving).
            let mut all = instance.clone();
            all.shard = None;
            all.shard_from_hostname = None;
            let c = load_instance(&config.config, &all)?;
            let export = state::export(&c, &tenant)?;
            eprintln!("{} checkpoint(s) exported", export.checkpoints.len());
            println!("{}", serde_json::to_string_pretty(&export)?);
            Ok(ExitCode::SUCCESS)
        }
        StateCommand::Import {
            config,
            instance,
            files,
        } => {
            let c = load_instance(&config.config, &instance)?;
            let exports = files
                .iter()
                .map(|f| state::read(f))
                .collect::<Result<Vec<_>>>()?;
            let (mut stored, mut kept, mut other) = (0, 0, 0);
            for (tenant, api, what) in state::import(&c, &exports)? {
                match what {
                    Imported::Stored => {
                        stored += 1;
                        println!("{tenant} ({api}): imported");
                    }
                    Imported::KeptOwn => {
                        kept += 1;
                        println!("{tenant} ({api}): kept this instance's own, as new or newer");
                    }
                    Imported::NotOurs => other += 1,
                }
            }
            println!(
                "{stored} imported, {kept} kept, {other} not this instance's tenant(s){}",
                c.shard.map(|s| format!(" (shard {s})")).unwrap_or_default()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
