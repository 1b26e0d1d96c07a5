//! The command line: raw flags, as clap parses them. `main` validates them into the library's
//! runtime objects and runs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "defender-bridge",
    version,
    about = "Forwards Microsoft Defender for Endpoint alerts to SIEMs as CEF, LEEF or JSON over syslog",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert alerts (JSON files or stdin) to records on stdout, one per line
    Convert(ConvertArgs),
    /// List or show the built-in formats
    #[command(subcommand)]
    Formats(FormatsCommand),
}

#[derive(Subcommand, Debug)]
pub enum FormatsCommand {
    /// List the built-in formats
    List,
    /// Print a built-in format file (a starting point for your own)
    Show {
        /// A built-in format name
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct ConvertArgs {
    /// Built-in format name (see `formats list`) or the path of a format file
    #[arg(long, short = 'f', value_name = "NAME|PATH")]
    pub format: String,

    /// Syslog header in front of each record
    #[arg(long, value_enum, default_value_t = SyslogArg::None)]
    pub syslog: SyslogArg,

    #[command(flatten)]
    pub header: HeaderArgs,

    /// Tenant name to put in the records (`tenant.name` in format files)
    #[arg(long, value_name = "NAME")]
    pub tenant_name: Option<String>,

    /// Largest record in bytes, syslog header included: longer values are cut to fit
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<usize>,

    /// Alert files: a single alert, an API page {"value": [...]}, a JSON array or NDJSON.
    /// Reads stdin when none is given or for `-`.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct HeaderArgs {
    /// Syslog facility (local0-local7, auth, authpriv, audit, user, daemon, ...)
    #[arg(long, default_value = "local4")]
    pub facility: String,

    /// HOSTNAME of the syslog header [default: this machine's name]
    #[arg(long)]
    pub hostname: Option<String>,

    /// APP-NAME of the RFC 5424 header
    #[arg(long, default_value = "defender-bridge")]
    pub app_name: String,

    /// Write RFC 3164 timestamps in UTC instead of local time
    #[arg(long)]
    pub utc: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyslogArg {
    None,
    Rfc5424,
    Rfc3164,
}
