//! `generate`: man pages and shell completions from the clap definitions in cli.rs, written by
//! the binary itself (as ripgrep does) so that they always match it and no build.rs is needed.
//! packaging/build.sh runs it; it is hidden from `--help`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::{Cli, GenerateArgs, GenerateKind};

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let shell = match args.kind {
        GenerateKind::Man => {
            // clap's `help` subcommand gets no page, so the program's page must not list one.
            let mut cmd = public_command().disable_help_subcommand(true);
            // Gives each subcommand its display name ("defender-bridge-run") and full usage.
            cmd.build();
            let source = format!("defender-bridge {}", env!("CARGO_PKG_VERSION"));
            man_pages(&cmd, &source, &args.dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        GenerateKind::CompleteBash => Shell::Bash,
        GenerateKind::CompleteZsh => Shell::Zsh,
        GenerateKind::CompleteFish => Shell::Fish,
    };
    let mut cmd = public_command();
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// The command line without its hidden subcommands: clap_complete would offer them, and clap
/// has no way to remove a subcommand, so the root is made again around the visible ones.
fn public_command() -> clap::Command {
    let full = Cli::command();
    // Cli's `#[command(name, version)]`, as static strings (clap takes no String without its
    // `string` feature).
    let mut cmd = clap::Command::new("defender-bridge")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(full.is_subcommand_required_set())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    cmd
}

/// One page for the program and one for each visible subcommand, nested ones included
/// (`defender-bridge-tenants-consent-url.1`), as git does.
fn man_pages(cmd: &clap::Command, source: &str, dir: &Path) -> Result<()> {
    let name = cmd
        .get_display_name()
        .unwrap_or_else(|| cmd.get_name())
        .to_string();
    let mut page = Vec::new();
    // `source`: every page's footer names the program and its version, not "run ".
    clap_mangen::Man::new(cmd.clone())
        .source(source.to_string())
        .render(&mut page)
        .with_context(|| format!("cannot render the man page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("cannot write {}", path.display()))?;
    for sub in cmd.get_subcommands() {
        if !sub.is_hide_set() {
            man_pages(sub, source, dir)?;
        }
    }
    Ok(())
}
