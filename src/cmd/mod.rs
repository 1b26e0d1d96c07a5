//! One module per command; what several share (logging, the config, the destination flags)
//! is here. `main.rs` only parses and dispatches.

pub(crate) mod check;
pub(crate) mod convert;
pub(crate) mod dead_letters;
#[cfg(feature = "demo")]
pub(crate) mod demo;
pub(crate) mod formats;
pub(crate) mod notify_test;
pub(crate) mod run;
pub(crate) mod send;
pub(crate) mod state;
pub(crate) mod status;
pub(crate) mod stream;
pub(crate) mod tenants;

use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};

use crate::cli::{DestinationArgs, FramingArg, HeaderArgs, SyslogArg};
use defender_bridge::config::Config;
use defender_bridge::format::{self, syslog, Formatter, SyslogHeader};
use defender_bridge::output::{self, OutputConfig};
use defender_bridge::sink::{Framing, SinkConfig};

/// `--log-format`, set once before the command runs.
pub(crate) static LOG_FORMAT: std::sync::OnceLock<crate::cli::LogFormat> =
    std::sync::OnceLock::new();

pub(crate) fn init_logging() {
    init_logging_at("info")
}

/// Logs to stderr (journald takes it from there); `RUST_LOG` overrides `level`.
pub(crate) fn init_logging_at(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match LOG_FORMAT.get() {
        Some(crate::cli::LogFormat::Json) => builder.json().try_init(),
        // Colours only on a terminal: journald would store the escape codes.
        _ => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
}

pub(crate) fn load_config(path: &std::path::Path) -> Result<Config> {
    let config = Config::load(path)?;
    for w in &config.warnings {
        eprintln!("warning: {w}");
    }
    Ok(config)
}

/// The configuration file with this instance's `--shard`, `--state-dir` and `--metrics-listen`
/// over it.
pub(crate) fn load_instance(
    path: &std::path::Path,
    i: &crate::cli::InstanceArgs,
) -> Result<Config> {
    let mut config = load_config(path)?;
    apply_instance(&mut config, i)?;
    Ok(config)
}

pub(crate) fn apply_instance(config: &mut Config, i: &crate::cli::InstanceArgs) -> Result<()> {
    use defender_bridge::shard::Shard;
    let shard = match (&i.shard, i.shard_from_hostname) {
        (Some(s), _) => Some(s.parse::<Shard>().map_err(anyhow::Error::msg)?),
        (None, Some(n)) => {
            let host = hostname::get()?.to_string_lossy().into_owned();
            Some(Shard::from_hostname(&host, n).map_err(anyhow::Error::msg)?)
        }
        (None, None) => None,
    };
    if let Some(s) = shard {
        config.set_shard(s);
    }
    if let Some(dir) = &i.state_dir {
        config.set_state_dir(dir.clone());
    }
    if let Some(m) = &i.metrics_listen {
        config.metrics_listen = match m.trim() {
            "" => None,
            a => Some(a.parse().map_err(|_| {
                anyhow::anyhow!("--metrics-listen {a:?}: write an address and port such as 127.0.0.1:9464, or \"\" for none")
            })?),
        };
    }
    Ok(())
}

/// `--to` and its options → one output config per destination.
pub(crate) fn output_configs(d: &DestinationArgs) -> Result<Vec<OutputConfig>> {
    // Load the format once, up front, so a mistake in it is reported before anything connects.
    Formatter::load(&d.format)?;
    let secret = |flag: &str, name: &str| -> Result<defender_bridge::source::SecretString> {
        match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => {
                Ok(defender_bridge::source::SecretString::new(v.trim()))
            }
            _ => anyhow::bail!("{flag} {name}: that environment variable is not set"),
        }
    };
    d.to.iter()
        .map(|url| {
            let mut sink = SinkConfig::new(url.parse()?);
            let transport = sink.destination.transport;
            // A HEC event and a Kafka message carry their own time and tenant: no syslog
            // header unless asked for (and never in a HEC event).
            let kind = d.syslog.unwrap_or(if transport.is_hec() || transport.is_kafka() {
                SyslogArg::None
            } else {
                SyslogArg::Rfc5424
            });
            if transport.is_hec() && kind != SyslogArg::None {
                anyhow::bail!("{url}: a HEC event has no syslog header: leave --syslog out");
            }
            let header = syslog_header(kind, &d.header)?;
            if transport.is_hec() {
                let Some(name) = &d.hec_token_env else {
                    anyhow::bail!("{url}: a HEC destination needs --hec-token-env NAME (the variable that holds the token)");
                };
                sink.hec.token = Some(secret("--hec-token-env", name)?);
                sink.hec.indexer_ack = d.indexer_ack;
            } else if d.hec_token_env.is_some() || d.indexer_ack {
                anyhow::bail!("{url}: --hec-token-env and --indexer-ack apply to hec+https:// only");
            }
            if let (Some(user), Some(pw)) = (&d.sasl_username, &d.sasl_password_env) {
                if !transport.is_kafka() {
                    anyhow::bail!("{url}: SASL applies to kafka:// and kafka+tls:// only");
                }
                sink.kafka.sasl = Some(defender_bridge::sink::Sasl {
                    mechanism: d.sasl_mechanism.parse().map_err(anyhow::Error::msg)?,
                    username: user.clone(),
                    password: secret("--sasl-password-env", pw)?,
                });
            }
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
                header,
            })
        })
        .collect()
}

/// Resolves when SIGINT or SIGTERM arrives.
pub(crate) async fn shutdown_signal() {
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

pub(crate) fn input_names(files: &[std::path::PathBuf]) -> Vec<String> {
    if files.is_empty() {
        vec!["-".to_string()]
    } else {
        files
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }
}

pub(crate) fn syslog_header(kind: SyslogArg, h: &HeaderArgs) -> Result<SyslogHeader> {
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

/// The test alert was queued whole: a destination whose size limit cannot hold it fails the
/// check rather than reporting a record that was never sent.
pub(crate) fn fits(sent: output::Sent) -> Result<()> {
    match sent.refused.first() {
        Some(r) => bail!("the test alert does not fit: {}", r.reason),
        None => Ok(()),
    }
}

pub(crate) fn bail_rejected(n: usize) -> Result<ExitCode> {
    eprintln!("defender-bridge: {n} input(s) rejected");
    Ok(ExitCode::from(1))
}
