//! `demo`: the real pipeline end to end without an Azure account. A built-in fake of the Entra
//! token endpoint and of the Graph API (HTTPS on loopback, its own CA) serves sample alerts
//! over time; the real pollers sign in and poll it, and the records go to `--to`, or to a
//! receiver on loopback that prints them, as a SIEM would receive them.

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Destination, Tenant};
use crate::fake_api::samples::DemoTenant;
use crate::fake_api::FakeApi;
use crate::format::SyslogHeader;
use crate::output::OutputConfig;
use crate::sink::SinkConfig;
use crate::source::{Credential, HttpSettings, SecretString, TenantSettings};

/// What the demo runs with.
pub struct DemoOptions {
    pub format: String,
    pub header: SyslogHeader,
    /// A destination URL; `None` prints what a loopback receiver gets.
    pub to: Option<String>,
    pub tenants: usize,
    /// How often the fake publishes a new alert or a status change.
    pub every: Duration,
    /// Stop after this long; `None` runs until `stop`.
    pub duration: Option<Duration>,
}

/// Demo tenant names: customers of an MSSP.
const NAMES: &[&str] = &[
    "contoso",
    "fabrikam",
    "northwind",
    "tailspin",
    "woodgrove",
    "adatum",
];

pub async fn run(opts: DemoOptions, stop: CancellationToken) -> anyhow::Result<()> {
    let tenants: Vec<DemoTenant> = (0..opts.tenants.max(1))
        .map(|i| DemoTenant {
            tenant_id: format!("00000000-0000-4000-8000-{:012}", i + 1),
            client_id: "d3m0c11e-0000-4000-8000-000000000001".to_string(),
            secret: format!("demo-secret-{}", uuid::Uuid::new_v4()),
        })
        .collect();
    let fake = FakeApi::start_demo(&tenants, opts.every).await?;
    let dir = tempfile_dir()?;
    let ca = fake
        .write_ca_file(&dir)
        .context("writing the fake API's CA")?;

    // Without --to: a receiver on loopback that prints each record as it arrives. It stops
    // after the pipeline has flushed into it.
    let printer_stop = CancellationToken::new();
    let to = match opts.to {
        Some(url) => url,
        None => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let printing = printer_stop.clone();
            tokio::spawn(async move {
                while let Ok((conn, _)) = listener.accept().await {
                    let mut lines = tokio::io::BufReader::new(conn).lines();
                    loop {
                        tokio::select! {
                            line = lines.next_line() => match line {
                                Ok(Some(l)) => println!("{l}"),
                                _ => break,
                            },
                            _ = printing.cancelled() => return,
                        }
                    }
                }
            });
            format!("tcp://{addr}")
        }
    };

    let base = fake.base_url();
    let config = Config {
        state_dir: dir.join("state"),
        dead_letter: dir.join("state").join("dead-letter.ndjson"),
        http: HttpSettings {
            extra_ca_file: Some(ca),
            ..HttpSettings::default()
        },
        log_level: "info".to_string(),
        shutdown_timeout: Duration::from_secs(10),
        queue_max_bytes: crate::config::DEFAULT_QUEUE_MAX_BYTES,
        max_concurrent_requests: crate::config::DEFAULT_MAX_CONCURRENT_REQUESTS,
        metrics_listen: None,
        shard: None,
        tenants_in_file: 0,
        tenants: tenants
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let name = NAMES
                    .get(i)
                    .map_or_else(|| format!("customer-{}", i + 1), |n| n.to_string());
                let mut s = TenantSettings::new(
                    name.clone(),
                    t.tenant_id.clone(),
                    t.client_id.clone(),
                    Credential::Secret(SecretString::new(t.secret.clone())),
                );
                s.authority_host = Some(base.clone());
                s.api_base_url = Some(base.clone());
                s.poll_interval = Duration::from_secs(2);
                s.overlap = Duration::from_secs(60);
                s.initial_lookback = Duration::from_secs(3600);
                Tenant {
                    settings: s,
                    syslog_hostname: None,
                }
            })
            .collect(),
        destinations: vec![Destination {
            name: to.clone(),
            output: OutputConfig {
                sink: SinkConfig::new(to.parse()?),
                format: opts.format.clone(),
                header: opts.header.clone(),
            },
            tenants: None,
            min_severity: None,
        }],
        notifications: Default::default(),
        warnings: Vec::new(),
    };
    eprintln!(
        "demo: fake Entra ID and Graph API at {base}, {} tenant(s), records to {to} as {}",
        config.tenants.len(),
        opts.format
    );
    if let Some(d) = opts.duration {
        let timer = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            timer.cancel();
        });
    }
    let result = crate::daemon::run(config, stop).await;
    printer_stop.cancel();
    drop(fake);
    let _ = std::fs::remove_dir_all(&dir);
    for (dest, s) in result?.outputs {
        eprintln!("demo: {dest}: {} record(s) written", s.sink.messages_sent);
    }
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("defender-bridge-demo-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
