//! `dead-letters list|replay|purge`.

use super::load_config;
use crate::cli::DeadLettersCommand;
use anyhow::{bail, Result};
use std::process::ExitCode;

impl crate::cli::LetterSelection {
    pub fn selection(&self) -> defender_bridge::dead_letter::Selection<'_> {
        defender_bridge::dead_letter::Selection {
            destination: self.destination.as_deref(),
            reason: self.reason.as_deref(),
        }
    }
}

pub(crate) async fn dead_letters(cmd: DeadLettersCommand) -> Result<ExitCode> {
    use defender_bridge::dead_letter::{self, Selection};
    match cmd {
        DeadLettersCommand::List { config, json } => {
            let config = load_config(&config.config)?;
            let letters = dead_letter::list(&config)?;
            for l in &letters {
                if json {
                    println!("{}", l.line);
                    continue;
                }
                println!(
                    "{}  {}  {}  {}  {}",
                    if l.time.is_empty() { "-" } else { &l.time },
                    if l.destination.is_empty() {
                        "-"
                    } else {
                        &l.destination
                    },
                    l.tenant_name.as_deref().unwrap_or("-"),
                    l.alert_id.as_deref().unwrap_or("-"),
                    l.reason
                );
            }
            eprintln!(
                "{} dead letter(s) in {}",
                letters.len(),
                config.state_dir.join("queue.redb").display()
            );
        }
        DeadLettersCommand::Replay { config, select } => {
            let config = load_config(&config.config)?;
            let r = dead_letter::replay(&config, select.selection()).await?;
            for (id, why) in &r.kept {
                eprintln!("kept {id}: {why}");
            }
            println!(
                "{} replayed into the queue, {} kept, {} not selected",
                r.replayed,
                r.kept.len(),
                r.other
            );
        }
        DeadLettersCommand::Purge {
            config,
            select,
            all,
        } => {
            let config = load_config(&config.config)?;
            let selection: Selection = select.selection();
            if !all && selection.destination.is_none() && selection.reason.is_none() {
                bail!("say which dead letters to remove: --destination, --reason, or --all");
            }
            let r = dead_letter::purge(&config, selection).await?;
            println!("{} removed, {} not selected", r.replayed, r.other);
        }
    }
    Ok(ExitCode::SUCCESS)
}
