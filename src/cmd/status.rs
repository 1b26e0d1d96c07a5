//! `status`: the running daemon's tenants and destinations, read from its `/status`.

use anyhow::{bail, Context as _, Result};
use std::process::ExitCode;

/// `status`: asks the running daemon (its `/status`) and prints one table for the operator.
pub(crate) async fn status(args: crate::cli::StatusArgs) -> Result<ExitCode> {
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
pub(crate) fn metrics_listen(path: &std::path::Path) -> Result<String> {
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

pub(crate) fn status_table(
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
    if let Some(shard) = &r.shard {
        let _ = writeln!(out, "shard: {shard}");
    }
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
pub(crate) fn short_secs(s: f64) -> String {
    let s = s.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}
