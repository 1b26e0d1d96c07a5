//! defender-bridge: the command line. Parsing and wiring only; the work is in the library.

mod cli;
mod generate;

use std::io::{Read, Write};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use clap::Parser;

#[cfg(feature = "demo")]
use cli::DemoArgs;
use cli::{
    CheckArgs, Cli, CloudArg, Command, ConfigArg, ConvertArgs, DeadLettersCommand, DestinationArgs,
    FormatsCommand, FramingArg, HeaderArgs, SendArgs, SendTestArgs, SyslogArg, TenantsCommand,
};
use defender_bridge::alert::Alert;
use defender_bridge::config::Config;
use defender_bridge::daemon;
use defender_bridge::format::{self, syslog, Context, Formatter, MessageEncoder, SyslogHeader};
use defender_bridge::input::{self, Decoded, Limits};
use defender_bridge::output::{self, Output, OutputConfig};
use defender_bridge::sink::{Framing, SinkConfig};
use defender_bridge::source::{build_http_client, Cloud, Poller};
use tokio_util::sync::CancellationToken;

/// `--log-format`, set once before the command runs.
static LOG_FORMAT: std::sync::OnceLock<cli::LogFormat> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = LOG_FORMAT.set(cli.log_format);
    let result = match cli.command {
        Command::Convert(args) => convert(args),
        Command::Send(args) => block_on(send(args)),
        Command::SendTest(args) => block_on(send_test(args)),
        Command::Run(args) => block_on(run_daemon(args)),
        #[cfg(feature = "demo")]
        Command::Demo(args) => block_on(demo(args)),
        Command::Check(args) => block_on(check(args)),
        Command::Status(args) => block_on(status(args)),
        Command::Tenants(cmd) => block_on(tenants(cmd)),
        Command::Formats(cmd) => formats(cmd),
        Command::DeadLetters(cmd) => block_on(dead_letters(cmd)),
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

fn init_logging() {
    init_logging_at("info")
}

/// Logs to stderr (journald takes it from there); `RUST_LOG` overrides `level`.
fn init_logging_at(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LOG_FORMAT.get() {
        Some(cli::LogFormat::Json) => builder.json().try_init(),
        // Colours only on a terminal: journald would store the escape codes.
        _ => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    let config = Config::load(path)?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    Ok(config)
}

async fn run_daemon(args: ConfigArg) -> Result<ExitCode> {
    let config = load_config(&args.config)?;
    init_logging_at(&config.log_level);
    if config.tenants.is_empty() || config.destinations.is_empty() {
        bail!(
            "{}: nothing to do: the configuration needs at least one [[tenant]] and one [[destination]]",
            args.config.display()
        );
    }
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("signal received");
        signal.cancel();
    });
    let (reloads, reload_rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(reload_on_sighup(args.config.clone(), reloads));
    daemon::run_with_reload(config, stop, Some(reload_rx)).await?;
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP (`systemctl reload`): reads and validates the configuration file again and hands it
/// to the daemon; a file that does not validate is refused, with its errors in the log, and the
/// running configuration stays (issue 10 §3).
async fn reload_on_sighup(path: std::path::PathBuf, reloads: tokio::sync::mpsc::Sender<Config>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reloading needs a restart");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading {}", path.display());
            match Config::load(&path) {
                Ok(c) if c.tenants.is_empty() || c.destinations.is_empty() => tracing::error!(
                    "reload refused: {} needs at least one [[tenant]] and one [[destination]]; the running configuration stays",
                    path.display()
                ),
                Ok(c) => {
                    if reloads.send(c).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(
                    "reload refused, the running configuration stays: {e:#}"
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (path, reloads);
}

#[cfg(feature = "demo")]
async fn demo(args: DemoArgs) -> Result<ExitCode> {
    init_logging_at("warn");
    Formatter::load(&args.format)?;
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        signal.cancel();
    });
    let opts = defender_bridge::demo::DemoOptions {
        format: args.format.clone(),
        header: syslog_header(args.syslog, &args.header)?,
        to: args.to,
        tenants: args.tenants,
        every: args.every,
        duration: args.duration,
    };
    defender_bridge::demo::run(opts, stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// `status`: asks the running daemon (its `/status`) and prints one table for the operator.
async fn status(args: cli::StatusArgs) -> Result<ExitCode> {
    use defender_bridge::metrics::StatusReport;
    let endpoint = match &args.endpoint {
        Some(e) => e.clone(),
        None => metrics_listen(&args.config.config)?,
    };
    let url = format!("http://{endpoint}/status");
    // The daemon is on loopback: no proxy from the environment may stand between.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let report: StatusReport = match client.get(&url).send().await {
        Ok(r) => {
            let body = r
                .text()
                .await
                .with_context(|| format!("reading the answer of {url}"))?;
            serde_json::from_str(&body).with_context(|| format!("{url} did not answer a status"))?
        }
        Err(e) => {
            eprintln!(
                "defender-bridge: cannot reach the daemon at {url}: {e} (is it running? is \
                 metrics_listen set in {}?)",
                args.config.config.display()
            );
            return Ok(ExitCode::from(2));
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", status_table(&report, chrono::Utc::now()));
    }
    Ok(if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `metrics_listen` of the config file, read without resolving its secrets: whoever runs
/// `status` need not have the service's environment.
fn metrics_listen(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let table: toml::Table = toml::from_str(&text).with_context(|| path.display().to_string())?;
    match table.get("metrics_listen") {
        None => Ok(defender_bridge::config::DEFAULT_METRICS_LISTEN.to_string()),
        Some(toml::Value::String(s)) if s.trim().is_empty() => bail!(
            "{}: metrics_listen is \"\": the daemon serves no status; set it (for example \"127.0.0.1:9464\") and restart it",
            path.display()
        ),
        Some(toml::Value::String(s)) => Ok(s.trim().to_string()),
        Some(_) => bail!("{}: metrics_listen must be a string", path.display()),
    }
}

fn status_table(
    r: &defender_bridge::metrics::StatusReport,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    use std::fmt::Write as _;
    let ago = |t: Option<chrono::DateTime<chrono::Utc>>| match t {
        None => "never".to_string(),
        Some(t) => format!("{} ago", short_secs((now - t).num_seconds().max(0) as f64)),
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<6} {:<9} {:<12} {:<8} LAST ERROR",
        "TENANT", "API", "STATE", "LAST POLL", "BEHIND"
    );
    for t in &r.tenants {
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:<9} {:<12} {:<8} {}",
            t.name,
            t.api,
            t.state,
            ago(t.last_success),
            short_secs(t.behind_seconds),
            t.last_error.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<20} {:<6} {:>8} {:<9} {:<13} {:>10} URL",
        "DESTINATION", "STATE", "QUEUED", "OLDEST", "LAST DELIVERY", "DELIVERED"
    );
    for d in &r.destinations {
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:>8} {:<9} {:<13} {:>10} {}",
            d.name,
            d.state,
            d.queued,
            d.oldest_age_seconds.map_or("-".to_string(), short_secs),
            ago(d.last_delivery),
            d.delivered,
            d.url
        );
    }
    let _ = writeln!(
        out,
        "\nqueue: {} of {} bytes; {} dead letter(s)",
        r.queue_bytes, r.queue_max_bytes, r.dead_letters
    );
    if r.problems.is_empty() {
        let _ = writeln!(out, "all well");
    } else {
        let _ = writeln!(out, "needs attention:");
        for p in &r.problems {
            let _ = writeln!(out, "  - {p}");
        }
    }
    out
}

/// 42s, 7m, 3h, 2d.
fn short_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The hosts a tenant really uses: overrides said as such, so that `check` never calls a tenant
/// with a custom sign-in host "commercial cloud" (issue 10 §8).
fn endpoints(s: &defender_bridge::source::TenantSettings) -> String {
    let custom = match (s.authority_host.is_some(), s.api_base_url.is_some()) {
        (false, false) => format!("{} cloud", s.cloud),
        (true, false) => format!("{} cloud, sign-in host overridden", s.cloud),
        (false, true) => format!("{} cloud, API base overridden", s.cloud),
        (true, true) => "custom endpoints".to_string(),
    };
    format!(
        "{} API, sign-in {}, API {} ({custom})",
        s.api,
        s.authority_host(),
        s.api_base()
    )
}

async fn check(args: CheckArgs) -> Result<ExitCode> {
    init_logging_at("error");
    let config = load_config(&args.config.config)?;
    println!(
        "{}: OK: {} tenant(s), {} destination(s)",
        args.config.config.display(),
        config.tenants.len(),
        config.destinations.len()
    );
    for t in &config.tenants {
        println!("tenant {}: {}", t.settings.name, endpoints(&t.settings));
    }
    if !args.online {
        for d in &config.destinations {
            let dest = &d.output.sink.destination;
            match dest.resolve().await {
                Ok(addrs) => println!(
                    "destination {dest}: format {}, resolves to {}",
                    d.output.format,
                    addrs
                        .iter()
                        .map(|a| a.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                // Not a failure: at boot DNS may not be up yet when the unit's ExecStartPre runs
                // this, and the writer resolves the name again at every connection attempt
                // (issue 10 §2).
                Err(e) => println!(
                    "destination {dest}: format {}, WARNING: {e}; it is resolved again at every connection attempt",
                    d.output.format
                ),
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let mut failed = false;
    let http = build_http_client(&config.http)?;
    for t in &config.tenants {
        let name = &t.settings.name;
        let result = async {
            let dir = std::env::temp_dir()
                .join(format!("defender-bridge-check-{}", uuid::Uuid::new_v4()));
            let poller = Poller::connect(t.settings.clone(), http.clone(), &dir)?;
            let n = poller.probe().await;
            let _ = std::fs::remove_dir_all(&dir);
            n
        }
        .await;
        match result {
            Ok(n) => println!("tenant {name}: OK: signed in, {n} alert(s) on the first page"),
            Err(e) => {
                failed = true;
                println!("tenant {name}: FAILED: {e}");
            }
        }
    }
    let alert = output::test_alert();
    for d in &config.destinations {
        let url = d.output.sink.destination.to_string();
        let result = async {
            d.output.sink.probe().await?;
            if args.no_send {
                return anyhow::Ok(());
            }
            let o = Output::build(&d.output)?;
            fits(o.send(&alert, &Context::default()).await?)?;
            o.shutdown(std::time::Duration::from_secs(10)).await?;
            anyhow::Ok(())
        }
        .await;
        match result {
            Ok(()) if args.no_send => {
                println!("destination {url}: OK: connected (no test record: --no-send)")
            }
            Ok(()) => println!("destination {url}: OK: test alert {} sent", alert.id),
            Err(e) => {
                failed = true;
                println!("destination {url}: FAILED: {e:#}");
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn tenants(cmd: TenantsCommand) -> Result<ExitCode> {
    match cmd {
        TenantsCommand::ConsentUrl {
            client_id,
            cloud,
            tenant,
            redirect_uri,
        } => {
            let cloud = match cloud {
                CloudArg::Commercial => Cloud::Commercial,
                CloudArg::Gcc => Cloud::Gcc,
                CloudArg::GccHigh => Cloud::GccHigh,
                CloudArg::Dod => Cloud::Dod,
            };
            println!(
                "{}",
                defender_bridge::tenants::consent_url(
                    &client_id,
                    cloud,
                    tenant.as_deref(),
                    redirect_uri.as_deref()
                )
            );
            Ok(ExitCode::SUCCESS)
        }
        TenantsCommand::Verify(args) => {
            init_logging_at("error");
            let config = load_config(&args.config)?;
            let http = build_http_client(&config.http)?;
            let mut failed = false;
            for t in &config.tenants {
                match defender_bridge::tenants::verify(t, http.clone()).await {
                    Ok(msg) => println!("tenant {}: OK: {msg}", t.settings.name),
                    Err(e) => {
                        failed = true;
                        println!("tenant {}: FAILED: {e}", t.settings.name);
                    }
                }
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// `--to` and its options → one output config per destination.
fn output_configs(d: &DestinationArgs) -> Result<Vec<OutputConfig>> {
    // Load the format once, up front, so a mistake in it is reported before anything connects.
    Formatter::load(&d.format)?;
    let header = syslog_header(d.syslog, &d.header)?;
    d.to.iter()
        .map(|url| {
            let mut sink = SinkConfig::new(url.parse()?);
            sink.framing = d.framing.map(|f| match f {
                FramingArg::Lf => Framing::Lf,
                FramingArg::OctetCounting => Framing::OctetCounting,
            });
            sink.max_message_size = d.max_size;
            sink.tls.ca_file = d.ca.clone();
            sink.tls.client_cert = d.client_cert.clone();
            sink.tls.client_key = d.client_key.clone();
            sink.tls.server_name = d.server_name.clone();
            sink.tls.insecure_skip_verify = d.insecure_skip_verify;
            Ok(OutputConfig {
                sink,
                format: d.format.clone(),
                header: header.clone(),
            })
        })
        .collect()
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn send(args: SendArgs) -> Result<ExitCode> {
    init_logging();
    let configs = output_configs(&args.destination)?;
    let letters = match &args.dead_letter {
        Some(path) => Some(
            defender_bridge::dead_letter::DeadLetterFile::open(path)
                .with_context(|| format!("dead-letter file {}", path.display()))?,
        ),
        None => None,
    };
    let outputs = configs
        .iter()
        .map(Output::build)
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = Context {
        tenant_name: args.tenant_name.as_deref(),
        hostname: None,
    };
    let mut rejected = 0usize;
    let mut alerts = 0usize;
    let work = async {
        for name in input_names(&args.files) {
            // Read off the async threads: a signal must still be noticed while stdin blocks.
            let (read, unreadable) = tokio::task::spawn_blocking(move || {
                let mut unreadable = 0;
                read_input(&name, &mut unreadable).map(|r| (r, unreadable))
            })
            .await
            .context("reading input")??;
            rejected += unreadable;
            let Some((origin, bytes)) = read else {
                continue;
            };
            let mut decoded: Vec<Alert<'static>> = Vec::new();
            input::decode(&bytes, Limits::default(), |d| match d {
                Decoded::Alert(_, a) => decoded.push(a.into_owned()),
                Decoded::Problem(p) => {
                    if p.rejected {
                        rejected += 1;
                    }
                    let kind = if p.rejected { "" } else { "warning: " };
                    eprintln!("{origin}:{}: {kind}{}", p.line, p.message);
                }
            });
            for alert in decoded {
                for o in &outputs {
                    let sent = o.send(&alert, &ctx).await?;
                    for r in &sent.refused {
                        if let Some(file) = &letters {
                            file.write(&r.letter(o.destination(), &alert, None, &ctx))
                                .with_context(|| {
                                    format!("dead-letter file {}", file.path().display())
                                })?;
                        }
                    }
                }
                alerts += 1;
            }
        }
        anyhow::Ok(())
    };
    let interrupted = tokio::select! {
        r = work => { r?; false }
        _ = shutdown_signal() => true,
    };
    if interrupted {
        eprintln!("defender-bridge: interrupted; flushing what was accepted");
    }
    let mut failed = interrupted || rejected > 0;
    for o in outputs {
        let destination = o.destination().to_string();
        let (stats, closed) = o.close(args.timeout).await;
        // Written: acknowledged by the receiver's TCP (or sent, for UDP), not merely queued.
        eprintln!(
            "{destination}: {} record(s) written, {} value(s) truncated, {} dead-lettered",
            stats.sink.messages_sent, stats.truncated, stats.dead_lettered
        );
        // A dead-lettered record was not written: not a success.
        failed |= stats.dead_lettered > 0;
        if let Err(e) = closed {
            eprintln!("defender-bridge: {e}");
            failed = true;
        }
    }
    eprintln!("{alerts} alert(s) read, {rejected} input(s) rejected");
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn send_test(args: SendTestArgs) -> Result<ExitCode> {
    init_logging();
    let configs = output_configs(&args.destination)?;
    let alert = output::test_alert();
    let mut failed = false;
    for cfg in &configs {
        let url = cfg.sink.destination.to_string();
        // Connect first, so that a wrong address, CA or certificate is said plainly.
        if let Err(e) = cfg.sink.probe().await {
            eprintln!("{url}: FAILED: {e}");
            failed = true;
            continue;
        }
        let result = async {
            let o = Output::build(cfg)?;
            fits(o.send(&alert, &Context::default()).await?)?;
            anyhow::Ok(o.shutdown(args.timeout).await?)
        }
        .await;
        match result {
            Ok(_) => println!("{url}: OK: sent test alert {}", alert.id),
            Err(e) => {
                eprintln!("{url}: FAILED: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn input_names(files: &[std::path::PathBuf]) -> Vec<String> {
    if files.is_empty() {
        vec!["-".to_string()]
    } else {
        files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }
}

/// Reads one input; a file that cannot be read is reported and counted, not fatal.
fn read_input(name: &str, rejected: &mut usize) -> Result<Option<(String, Vec<u8>)>> {
    if name == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        return Ok(Some(("<stdin>".to_string(), buf)));
    }
    match std::fs::read(name) {
        Ok(b) => Ok(Some((name.to_string(), b))),
        Err(e) => {
            eprintln!("{name}: cannot read: {e}");
            *rejected += 1;
            Ok(None)
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

/// The test alert was queued whole: a destination whose size limit cannot hold it fails the
/// check rather than reporting a record that was never sent.
fn fits(sent: output::Sent) -> Result<()> {
    match sent.refused.first() {
        Some(r) => bail!("the test alert does not fit: {}", r.reason),
        None => Ok(()),
    }
}

fn bail_rejected(n: usize) -> Result<ExitCode> {
    eprintln!("defender-bridge: {n} input(s) rejected");
    Ok(ExitCode::from(1))
}

impl cli::LetterSelection {
    pub fn selection(&self) -> defender_bridge::dead_letter::Selection<'_> {
        defender_bridge::dead_letter::Selection {
            destination: self.destination.as_deref(),
            reason: self.reason.as_deref(),
        }
    }
}

async fn dead_letters(cmd: DeadLettersCommand) -> Result<ExitCode> {
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
