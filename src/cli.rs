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

    /// Log lines on stderr as text (for journald and people) or as JSON objects, one a line
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Convert alerts (JSON files or stdin) to records on stdout, one per line
    Convert(ConvertArgs),
    /// Send alerts (JSON files or stdin) to syslog destinations; exits 0 only when every
    /// record was written and flushed
    Send(SendArgs),
    /// Send one clearly marked synthetic test alert to a destination
    SendTest(SendTestArgs),
    /// Run the daemon: poll every configured tenant and forward alerts to the destinations
    Run(RunArgs),
    /// The whole pipeline on sample alerts from a built-in fake of Entra ID and the Graph API
    /// (no Azure account needed)
    #[cfg(feature = "demo")]
    Demo(DemoArgs),
    /// Validate the configuration; with --online also sign in, read alerts and send a test
    /// record to every destination
    Check(CheckArgs),
    /// Show the running daemon's tenants and destinations (read from its metrics_listen
    /// endpoint); exits 1 when something needs attention, 2 when the daemon cannot be reached
    Status(StatusArgs),
    /// Send a clearly marked test message through every action (e-mail, webhook) of a
    /// notification rule, and say exactly what went wrong if one fails
    NotifyTest(NotifyTestArgs),
    /// Onboard customer tenants
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// List or show the built-in formats
    #[command(subcommand)]
    Formats(FormatsCommand),
    /// Show the dead letters (what could not be forwarded or sent) and replay them
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Move tenants' checkpoints between instances when the shard count changes (the daemon
    /// of the state directory stopped)
    #[command(subcommand)]
    State(StateCommand),
    /// Write the man pages or a shell completion script (for packagers: packaging/build.sh)
    #[command(hide = true)]
    Generate(GenerateArgs),
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// What to write: man pages go into --dir, one per command; a completion script goes to
    /// stdout
    #[arg(value_enum)]
    pub kind: GenerateKind,
    /// Directory for the man pages
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenerateKind {
    Man,
    CompleteBash,
    CompleteZsh,
    CompleteFish,
}

#[derive(Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// One line per dead letter: time, destination, tenant, alert id, reason. Works while the
    /// daemon runs.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Each letter whole, as one JSON object a line (with the record and the alert)
        #[arg(long)]
        json: bool,
    },
    /// Put the alerts of dead letters back into the queue once the cause is fixed (a corrected
    /// format file, a larger size limit); each goes to the destination its letter names. The
    /// daemon must be stopped; the next `run` delivers them.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        select: LetterSelection,
    },
    /// Remove dead letters for good. The daemon must be stopped.
    Purge {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        select: LetterSelection,
        /// Every dead letter (without it, --destination or --reason is needed)
        #[arg(long)]
        all: bool,
    },
}

/// Which dead letters a command is about.
#[derive(Args, Debug)]
pub struct LetterSelection {
    /// Only letters of this destination (its URL or name; "-": alerts no destination got)
    #[arg(long, value_name = "DESTINATION")]
    pub destination: Option<String>,
    /// Only letters whose reason contains this text
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Args, Debug)]
pub struct ConfigArg {
    /// Configuration file
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        default_value = "/etc/defender-bridge/config.toml"
    )]
    pub config: PathBuf,
}

#[derive(Subcommand, Debug)]
pub enum StateCommand {
    /// Write this instance's checkpoints (all, or the tenants named) as JSON to stdout
    Export {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        instance: InstanceArgs,
        /// A tenant's name or id; may be given more than once [default: every tenant]
        #[arg(long, value_name = "NAME|ID")]
        tenant: Vec<String>,
    },
    /// Store the checkpoints of export files for this instance's tenants (its shard's), where
    /// it has none or an older one
    Import {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        instance: InstanceArgs,
        /// Files written by `state export`
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub instance: InstanceArgs,
}

/// Which instance this is, when several share the tenants (README "Scale-out").
#[derive(Args, Debug, Clone, Default)]
pub struct InstanceArgs {
    /// Poll only the tenants of shard I of N (rendezvous hashing of tenant id and API), over
    /// `shard` in the configuration; also written IofN (systemd: defender-bridge@0of3)
    #[arg(long, value_name = "I/N", conflicts_with = "shard_from_hostname")]
    pub shard: Option<String>,

    /// Take the shard from the host name's trailing -I (a StatefulSet pod defender-bridge-I),
    /// of N shards
    #[arg(long, value_name = "N")]
    pub shard_from_hostname: Option<u32>,

    /// The state directory (queue and checkpoints), over `state_dir` in the configuration;
    /// each instance needs its own
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// The metrics, health and status endpoint, over `metrics_listen` in the configuration
    /// ("" for none)
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
}

#[derive(Args, Debug)]
pub struct NotifyTestArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// The rule's name (its `name` in [[notification]])
    pub rule: String,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,

    /// The daemon's endpoint, instead of metrics_listen from the configuration
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,

    /// Print the daemon's answer as JSON
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArg,

    #[command(flatten)]
    pub instance: InstanceArgs,

    /// Also get a token and one page of alerts per tenant, and send a test record to each
    /// destination
    #[arg(long)]
    pub online: bool,

    /// With --online: connect to each destination but send it no test record (a production
    /// SIEM that must not see a synthetic alert)
    #[arg(long, requires = "online")]
    pub no_send: bool,
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Print the admin-consent link a customer's administrator opens to grant your
    /// multi-tenant app
    ConsentUrl {
        /// Your multi-tenant app's application (client) ID
        #[arg(long, value_name = "ID")]
        client_id: String,
        /// The customer's cloud
        #[arg(long, value_enum, default_value_t = CloudArg::Commercial)]
        cloud: CloudArg,
        /// The customer's tenant ID or domain [default: common]
        #[arg(long, value_name = "TENANT")]
        tenant: Option<String>,
        /// A redirect URI registered on the app, where the browser lands afterwards
        #[arg(long, value_name = "URL")]
        redirect_uri: Option<String>,
    },
    /// Get a token for every configured tenant and check its tenant and permission claims
    Verify(ConfigArg),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudArg {
    Commercial,
    Gcc,
    GccHigh,
    Dod,
}

#[cfg(feature = "demo")]
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Built-in format name or the path of a format file
    #[arg(
        long,
        short = 'f',
        value_name = "NAME|PATH",
        default_value = "arcsight"
    )]
    pub format: String,

    /// Send the records here (udp://, tcp://, tls://) instead of printing them
    #[arg(long, value_name = "URL")]
    pub to: Option<String>,

    /// Syslog header in front of each record
    #[arg(long, value_enum, default_value_t = SyslogArg::Rfc5424)]
    pub syslog: SyslogArg,

    #[command(flatten)]
    pub header: HeaderArgs,

    /// How many demo customer tenants
    #[arg(long, default_value_t = 2)]
    pub tenants: usize,

    /// How often the fake API publishes a new alert or a status change
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    pub every: std::time::Duration,

    /// Stop after this long [default: run until Ctrl-C]
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    pub destination: DestinationArgs,

    /// Tenant name to put in the records (`tenant.name` in format files)
    #[arg(long, value_name = "NAME")]
    pub tenant_name: Option<String>,

    /// Append records too large for the destination here, with the reason (JSON lines)
    #[arg(long, value_name = "FILE")]
    pub dead_letter: Option<PathBuf>,

    /// How long to wait for everything to be written before giving up
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,

    /// Decode and encode on this many threads [default: one more than the cores]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,

    /// Alert files: a single alert, an API page {"value": [...]}, a JSON array or NDJSON,
    /// read as a stream. Reads stdin when none is given or for `-`.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SendTestArgs {
    #[command(flatten)]
    pub destination: DestinationArgs,

    /// How long to wait for the record to be written
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// One syslog destination and how its records are made.
#[derive(Args, Debug)]
pub struct DestinationArgs {
    /// Destination: udp://HOST:PORT, tcp://HOST:PORT, tls://HOST:PORT, relp://HOST:PORT,
    /// relp+tls://HOST:PORT (IPv6 in brackets), hec+https://HOST:PORT or
    /// kafka[+tls]://BROKER:PORT,…/TOPIC.
    /// May be given more than once: each destination gets its own writer
    #[arg(long, value_name = "URL", required = true)]
    pub to: Vec<String>,

    /// Built-in format name (see `formats list`) or the path of a format file
    #[arg(long, short = 'f', value_name = "NAME|PATH")]
    pub format: String,

    /// Syslog header in front of each record [default: rfc5424; none for HEC and Kafka]
    #[arg(long, value_enum)]
    pub syslog: Option<SyslogArg>,

    /// Splunk HEC: the environment variable that holds the token (never the token itself)
    #[arg(long, value_name = "NAME")]
    pub hec_token_env: Option<String>,

    /// Splunk HEC: wait for indexer acknowledgement (the token must have it on)
    #[arg(long)]
    pub indexer_ack: bool,

    /// Kafka: SASL user name (Azure Event Hubs: $ConnectionString)
    #[arg(long, value_name = "NAME", requires = "sasl_password_env")]
    pub sasl_username: Option<String>,

    /// Kafka: the environment variable that holds the SASL password (never the password itself)
    #[arg(long, value_name = "NAME", requires = "sasl_username")]
    pub sasl_password_env: Option<String>,

    /// Kafka: SASL mechanism
    #[arg(long, value_name = "MECHANISM", default_value = "PLAIN")]
    pub sasl_mechanism: String,

    /// TCP/TLS framing [default: octet-counting for tls://, lf for tcp://]
    #[arg(long, value_enum)]
    pub framing: Option<FramingArg>,

    /// Largest message in bytes, syslog header included; longer values are cut to fit
    /// [default: 8192 for TCP and TLS, 2048 for UDP]
    #[arg(long, value_name = "BYTES")]
    pub max_size: Option<usize>,

    #[command(flatten)]
    pub header: HeaderArgs,

    /// CA certificate(s) (PEM) to verify a TLS destination with, instead of the system roots
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,

    /// Client certificate (PEM) for TLS destinations that require one (mutual TLS)
    #[arg(long, value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,

    /// Private key (PEM) of the client certificate
    #[arg(long, value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,

    /// Name to verify the TLS destination's certificate against [default: the URL's host]
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,

    /// Do not verify the TLS destination's certificate (insecure; warned about at every start)
    #[arg(long)]
    pub insecure_skip_verify: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingArg {
    Lf,
    OctetCounting,
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

    /// Decode and encode on this many threads [default: one more than the cores]
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,

    /// Alert files: a single alert, an API page {"value": [...]}, a JSON array or NDJSON,
    /// read as a stream. Reads stdin when none is given or for `-`.
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
