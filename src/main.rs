//! defender-bridge: the command line. Parsing and dispatch only; each command is in src/cmd/,
//! the work in the library.

mod cli;
mod cmd;
mod generate;

use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::Parser;

use cli::{Cli, Command};
#[cfg(feature = "demo")]
use cmd::demo::demo;
use cmd::{
    check::check, convert::convert, dead_letters::dead_letters, formats::formats,
    notify_test::notify_test, run::run_daemon, send::send, send::send_test, status::status,
    tenants::tenants, LOG_FORMAT,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The daemon's memory, not the speed of `send` and `convert` (src/limits.rs).
    if matches!(cli.command, Command::Run(_)) {
        defender_bridge::limits::limit_malloc_arenas();
    }
    let _ = LOG_FORMAT.set(cli.log_format);
    let result = match cli.command {
        Command::Convert(args) => block_on(convert(args)),
        Command::Send(args) => block_on(send(args)),
        Command::SendTest(args) => block_on(send_test(args)),
        Command::Run(args) => block_on(run_daemon(args)),
        #[cfg(feature = "demo")]
        Command::Demo(args) => block_on(demo(args)),
        Command::Check(args) => block_on(check(args)),
        Command::Status(args) => block_on(status(args)),
        Command::NotifyTest(args) => block_on(notify_test(args)),
        Command::Tenants(cmd) => block_on(tenants(cmd)),
        Command::Formats(cmd) => formats(cmd),
        Command::DeadLetters(cmd) => block_on(dead_letters(cmd)),
        Command::State(cmd) => cmd::state::state(cmd),
        Command::Generate(args) => generate::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("defender-bridge: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs a command on a tokio runtime. The runtime is not waited for at the end: a blocking
/// read of stdin interrupted by a signal must not keep the process alive.
fn block_on(f: impl std::future::Future<Output = Result<ExitCode>>) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(f);
    rt.shutdown_background();
    result
}
