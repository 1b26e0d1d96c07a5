//! The configuration file (`/etc/defender-bridge/config.toml`): global settings, `[[tenant]]`
//! blocks and `[[destination]]` blocks (DESIGN.md "Configuration").
//!
//! Two stages, as in ripgrep: [`RawConfig`] is the file as serde reads it (unknown keys are
//! errors with their line number); [`Config::load`] validates it and resolves secrets, format
//! files and destination URLs into the runtime settings the source and the outputs take.
//! Secrets are never inline: `{ env = "NAME" }` or `{ file = "/path" }`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::format::{syslog, Formatter, HeaderKind, SyslogHeader};
use crate::output::OutputConfig;
use crate::sink::{Framing, SinkConfig, Transport, MAX_WINDOW};
use crate::source::{
    Api, Checkpoint, Cloud, Credential, Filters, HttpSettings, SecretString, Severity,
    TenantSettings, UpdatePolicy,
};

/// A configuration that could not be loaded: the file, the line when known, and why.
#[derive(Debug, thiserror::Error)]
#[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    pub origin: String,
    pub line: Option<usize>,
    pub message: String,
}

/// The accepted range of a duration key. Checked at load, so that no value in the file can
/// overflow the poller's date arithmetic or make a sleep meaningless (issue 8 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationRange {
    pub key: &'static str,
    pub min: Duration,
    pub max: Duration,
}

const fn range(key: &'static str, min: Duration, max_secs: u64) -> DurationRange {
    DurationRange {
        key,
        min,
        max: Duration::from_secs(max_secs),
    }
}

const HOUR: u64 = 3600;
const DAY: u64 = 24 * HOUR;

/// Polling more often than ten times a second only spends the APIs' rate limits; a day is the
/// longest interval that still delivers alerts the same day.
pub const POLL_INTERVAL: DurationRange = range("poll_interval", Duration::from_millis(100), DAY);
/// Alerts become visible minutes late (peers.md §6); a day of read-back covers any delay seen,
/// and the de-duplication set holds every version of the overlap, so more only costs memory.
pub const OVERLAP: DurationRange = range("overlap", Duration::ZERO, DAY);
/// Neither API returns alerts older than the tenant's data retention, at most 180 days
/// (defender-api.md §1.4 "Retention"; Defender for Endpoint's retention setting goes from 30 to
/// 180 days): looking back further only asks for nothing.
pub const INITIAL_LOOKBACK: DurationRange = range("initial_lookback", Duration::ZERO, 180 * DAY);
/// systemd's default stop timeout is 90 s; an hour is far past any sensible flush.
pub const SHUTDOWN_TIMEOUT: DurationRange = range("shutdown_timeout", Duration::ZERO, HOUR);

/// A range bound in the largest whole unit, as the documentation writes it ("180d", not
/// humantime's "5months 27days 19h 12m").
fn short(d: Duration) -> String {
    let s = d.as_secs();
    match () {
        _ if d.subsec_nanos() != 0 => format!("{}ms", d.as_millis()),
        _ if s == 0 => "0s".to_string(),
        _ if s.is_multiple_of(DAY) => format!("{}d", s / DAY),
        _ if s.is_multiple_of(HOUR) => format!("{}h", s / HOUR),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

/// A duration key's value: parsed ("60s", "5m"), checked against its range, errors at its line.
pub(crate) fn duration(
    c: &Ctx,
    value: &Option<Spanned<String>>,
    r: DurationRange,
) -> Result<Option<Duration>, ConfigError> {
    let Some(v) = value else { return Ok(None) };
    let text = v.get_ref();
    let d = match humantime::parse_duration(text) {
        Ok(d) => d,
        Err(e) => {
            return c.err(
                v.span(),
                format!(
                    "{} is {text:?}, not a duration like \"60s\" or \"5m\": {e}",
                    r.key
                ),
            )
        }
    };
    if d < r.min || d > r.max {
        return c.err(
            v.span(),
            format!(
                "{} is {text:?}: it must be from {} to {}",
                r.key,
                short(r.min),
                short(r.max)
            ),
        );
    }
    Ok(Some(d))
}

/// Where a secret is: an environment variable or a file (whose content, trimmed, is the
/// secret).
#[derive(Debug, Clone)]
pub struct SecretRef {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

/// Said when a secret is written into the config itself. serde's own message would quote the
/// value ("invalid type: string \"SuperSecret…\"") on stderr and, through the unit's
/// `ExecStartPre=check`, in the journal (issue 10 §6): this one never does.
const INLINE_SECRET: &str = "a secret cannot be written in the configuration file (it would be \
     readable by anyone who can read the file, and shown in errors): put it in an environment \
     variable and write { env = \"NAME\" }, or in a file readable only by the service and write \
     { file = \"/path\" }";

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            #[serde(default)]
            env: Option<String>,
            #[serde(default)]
            file: Option<PathBuf>,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Table;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("{ env = \"NAME\" } or { file = \"/path\" }")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Table, A::Error> {
                Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
            // Every other kind of value is refused without repeating it.
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Table, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Table, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Table, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Table, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Table, E> {
                Err(E::custom(INLINE_SECRET))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Table, A::Error> {
                Err(serde::de::Error::custom(INLINE_SECRET))
            }
        }
        let t = d.deserialize_any(Visitor)?;
        Ok(SecretRef {
            env: t.env,
            file: t.file,
        })
    }
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// `"I/N"`: this instance polls only shard I's tenants (src/shard.rs).
    #[serde(default)]
    pub shard: Option<Spanned<String>>,
    #[serde(default)]
    pub poll_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub overlap: Option<Spanned<String>>,
    #[serde(default)]
    pub initial_lookback: Option<Spanned<String>>,
    #[serde(default)]
    pub update_policy: Option<Spanned<String>>,
    #[serde(default)]
    pub page_size: Option<u32>,
    #[serde(default)]
    pub proxy: Option<String>,
    #[serde(default)]
    pub proxy_username: Option<String>,
    #[serde(default)]
    pub proxy_password: Option<SecretRef>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub log_level: Option<String>,
    #[serde(default)]
    pub dead_letter: Option<PathBuf>,
    #[serde(default)]
    pub queue_max_bytes: Option<Spanned<u64>>,
    #[serde(default)]
    pub max_concurrent_requests: Option<Spanned<u64>>,
    #[serde(default)]
    pub shutdown_timeout: Option<Spanned<String>>,
    #[serde(default)]
    pub metrics_listen: Option<Spanned<String>>,
    #[serde(default)]
    pub tenant: Vec<Spanned<RawTenant>>,
    #[serde(default)]
    pub destination: Vec<Spanned<RawDestination>>,
    /// The mail server of the notification rules' e-mail.
    #[serde(default)]
    pub smtp: Option<Spanned<crate::notify::config::RawSmtp>>,
    #[serde(default)]
    pub notification: Vec<Spanned<crate::notify::config::RawRule>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    pub name: Spanned<String>,
    pub tenant_id: Spanned<String>,
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<Spanned<SecretRef>>,
    #[serde(default)]
    pub certificate: Option<Spanned<RawCertificate>>,
    #[serde(default)]
    pub api: Option<Spanned<String>>,
    #[serde(default)]
    pub cloud: Option<Spanned<String>>,
    #[serde(default)]
    pub authority_host: Option<Spanned<String>>,
    #[serde(default)]
    pub api_base_url: Option<Spanned<String>>,
    #[serde(default)]
    pub min_severity: Option<Spanned<String>>,
    #[serde(default)]
    pub service_sources: Vec<String>,
    #[serde(default)]
    pub syslog_hostname: Option<String>,
    #[serde(default)]
    pub poll_interval: Option<Spanned<String>>,
    #[serde(default)]
    pub update_policy: Option<Spanned<String>>,
    /// "2027-03-31" or an RFC 3339 time: when the client secret expires (issue 10 §7).
    #[serde(default)]
    pub secret_expires: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawCertificate {
    #[serde(default)]
    pub pem: Option<PathBuf>,
    #[serde(default)]
    pub key: Option<PathBuf>,
    #[serde(default)]
    pub pfx: Option<PathBuf>,
    #[serde(default)]
    pub password: Option<SecretRef>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawDestination {
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    pub url: Spanned<String>,
    pub format: Spanned<String>,
    #[serde(default)]
    pub syslog: Option<Spanned<String>>,
    #[serde(default)]
    pub framing: Option<Spanned<String>>,
    #[serde(default)]
    pub facility: Option<Spanned<String>>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub app_name: Option<String>,
    #[serde(default)]
    pub max_message_size: Option<usize>,
    #[serde(default)]
    pub queue_capacity: Option<usize>,
    /// RELP: messages that may wait for their answer at once.
    #[serde(default)]
    pub window: Option<Spanned<usize>>,
    /// TCP/TLS: acknowledged bytes written again after a break the receiver began.
    #[serde(default)]
    pub resend_on_reconnect: Option<Spanned<usize>>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub tenants: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub min_severity: Option<Spanned<String>>,
    /// Splunk HEC (hec+https://): the token, from env or file.
    #[serde(default)]
    pub hec_token: Option<Spanned<SecretRef>>,
    #[serde(default)]
    pub sourcetype: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub indexer_ack: Option<bool>,
    #[serde(default)]
    pub ack_timeout: Option<Spanned<String>>,
    /// Kafka (kafka://, kafka+tls://): SASL mechanism, user and password (env or file).
    #[serde(default)]
    pub sasl_mechanism: Option<Spanned<String>>,
    #[serde(default)]
    pub sasl_username: Option<Spanned<String>>,
    #[serde(default)]
    pub sasl_password: Option<Spanned<SecretRef>>,
}

/// `ack_timeout`: HEC acks come within seconds; Splunk advises five minutes before taking one
/// as lost; an hour is far past any.
pub const ACK_TIMEOUT: DurationRange = range("ack_timeout", Duration::from_secs(1), HOUR);

/// One tenant, validated.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub settings: TenantSettings,
    /// HOSTNAME in this tenant's syslog headers (QRadar: one log source per customer).
    pub syslog_hostname: Option<String>,
}

/// One destination, validated.
#[derive(Debug, Clone)]
pub struct Destination {
    /// Its stable identity in the queue (its read cursor): `name`, or the URL.
    pub name: String,
    pub output: OutputConfig,
    /// Only these tenants' alerts (by name); `None` for all.
    pub tenants: Option<HashSet<String>>,
    pub min_severity: Option<Severity>,
}

impl Destination {
    /// Whether an alert of `tenant` with `severity` goes to this destination.
    pub fn wants(&self, tenant: &str, severity: &crate::alert::Severity) -> bool {
        self.tenants.as_ref().is_none_or(|t| t.contains(tenant))
            && self
                .min_severity
                .as_ref()
                .is_none_or(|min| severity.rank() >= min.rank())
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    /// Alerts that cannot be forwarded and records that cannot fit a destination go here:
    /// The dead-letter file of older versions, imported into the queue at start: `dead_letter`,
    /// or `<state_dir>/dead-letter.ndjson`. Dead letters are kept in the queue now (issue 9 §5).
    pub dead_letter: PathBuf,
    pub http: HttpSettings,
    pub log_level: String,
    pub shutdown_timeout: Duration,
    /// Most bytes the durable queue holds before polling pauses (issue 9 §2).
    pub queue_max_bytes: u64,
    /// Most sign-in and API requests in flight at once, over all tenants (issue 13 §5).
    pub max_concurrent_requests: usize,
    /// Where `/metrics`, `/healthz`, `/readyz` and `/status` are served (`metrics_listen`;
    /// `None`: off). Loopback by default: the endpoint has no authentication.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// This instance's tenants: all of the file's, or with a shard only those it owns.
    pub tenants: Vec<Tenant>,
    /// The shard this instance is (`shard` or `--shard`), and how many tenants the file has.
    pub shard: Option<crate::shard::Shard>,
    pub tenants_in_file: usize,
    pub destinations: Vec<Destination>,
    /// `[smtp]` and the `[[notification]]` rules (src/notify/).
    pub notifications: crate::notify::Notifications,
    /// Warnings found while loading (a secret file readable by others, skipped TLS checks).
    pub warnings: Vec<String>,
}

pub const DEFAULT_PATH: &str = "/etc/defender-bridge/config.toml";

/// `metrics_listen` default: loopback, the port Prometheus exporters of this kind use.
pub const DEFAULT_METRICS_LISTEN: std::net::SocketAddr = std::net::SocketAddr::V4(
    std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9464),
);

/// `queue_max_bytes` default: 1 GiB holds about 300,000 alerts with evidence.
pub const DEFAULT_QUEUE_MAX_BYTES: u64 = 1 << 30;
const MIN_QUEUE_MAX_BYTES: u64 = 1 << 20;

/// `max_concurrent_requests` default. Each request in flight holds a pooled HTTPS connection
/// (70 KiB with its TLS buffers, README "Performance"); 256 of them poll 10,000 tenants in a
/// tenth of a 60 s interval at Graph's usual answer time of about half a second.
pub const DEFAULT_MAX_CONCURRENT_REQUESTS: usize = 256;
const MAX_CONCURRENT_REQUESTS: u64 = 65_536;

pub(crate) struct Ctx<'a> {
    origin: &'a str,
    src: &'a str,
}

impl Ctx<'_> {
    pub(crate) fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(ConfigError {
            origin: self.origin.to_string(),
            line: Some(self.line(&span)),
            message: message.into(),
        })
    }

    pub(crate) fn line(&self, span: &std::ops::Range<usize>) -> usize {
        self.src[..span.start.min(self.src.len())]
            .matches('\n')
            .count()
            + 1
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            origin: path.display().to_string(),
            line: None,
            message: format!("cannot read the configuration: {e}"),
        })?;
        Config::from_toml(&path.display().to_string(), &src)
    }

    /// Parses and validates configuration text; `origin` names it in errors.
    pub fn from_toml(origin: &str, src: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(src).map_err(|e| ConfigError {
            origin: origin.to_string(),
            line: e
                .span()
                .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1),
            message: e.message().to_string(),
        })?;
        let c = Ctx { origin, src };
        let mut warnings = Vec::new();

        let policy = |p: &Option<Spanned<String>>| -> Result<Option<UpdatePolicy>, ConfigError> {
            match p.as_ref().map(|p| (p.get_ref().as_str(), p.span())) {
                None => Ok(None),
                Some(("all", _)) => Ok(Some(UpdatePolicy::All)),
                Some(("first", _)) => Ok(Some(UpdatePolicy::First)),
                Some(("status", _)) => Ok(Some(UpdatePolicy::Status)),
                Some((other, span)) => c.err(
                    span,
                    format!("update_policy is {other:?}: use \"all\", \"first\" or \"status\""),
                ),
            }
        };
        let global_policy = policy(&raw.update_policy)?;
        let poll_interval = duration(&c, &raw.poll_interval, POLL_INTERVAL)?;
        let overlap = duration(&c, &raw.overlap, OVERLAP)?;
        let initial_lookback = duration(&c, &raw.initial_lookback, INITIAL_LOOKBACK)?;
        let shutdown_timeout = duration(&c, &raw.shutdown_timeout, SHUTDOWN_TIMEOUT)?;

        let mut tenants: Vec<Tenant> = Vec::new();
        // (tenant id normalised, API, checkpoint file name) → the line of the block that has it.
        let mut polled: Vec<(String, Api, PathBuf, usize)> = Vec::new();
        for t in &raw.tenant {
            let span = t.span();
            let t = t.get_ref();
            let name = t.name.get_ref().trim().to_string();
            if name.is_empty() {
                return c.err(t.name.span(), "a tenant needs a name");
            }
            if tenants.iter().any(|x| x.settings.name == name) {
                return c.err(t.name.span(), format!("two tenants are named {name:?}"));
            }
            let credential = match (&t.client_secret, &t.certificate) {
                (Some(s), None) => {
                    Credential::Secret(resolve_secret(&c, s.get_ref(), s.span(), &mut warnings)?)
                }
                (None, Some(cert)) => {
                    let r = cert.get_ref();
                    match (&r.pem, &r.pfx) {
                        (Some(pem), None) => {
                            if r.password.is_some() {
                                return c.err(cert.span(), "a PEM certificate takes no password (only pfx does)");
                            }
                            Credential::CertificatePem { cert: pem.clone(), key: r.key.clone() }
                        }
                        (None, Some(pfx)) => Credential::CertificatePfx {
                            path: pfx.clone(),
                            password: match &r.password {
                                Some(p) => Some(resolve_secret(&c, p, cert.span(), &mut warnings)?),
                                None => None,
                            },
                        },
                        _ => return c.err(cert.span(), "certificate takes either pem = \"…\" (with key = \"…\" unless the file holds both) or pfx = \"…\""),
                    }
                }
                (Some(s), Some(_)) => {
                    return c.err(s.span(), "give client_secret or certificate, not both")
                }
                (None, None) => {
                    return c.err(
                        span,
                        format!(
                        "tenant {name:?} needs client_secret = {{ env = \"…\" }} or a certificate"
                    ),
                    )
                }
            };
            let mut s = TenantSettings::new(
                name.clone(),
                t.tenant_id.get_ref().trim(),
                t.client_id.trim(),
                credential,
            );
            if s.tenant_id.is_empty() || s.tenant_id.contains(['/', '?', '#', ' ']) {
                return c.err(
                    t.tenant_id.span(),
                    "tenant_id must be the customer's Entra tenant ID (a GUID) or domain",
                );
            }
            s.api = match t.api.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
                None | Some(("graph", _)) => Api::Graph,
                Some(("mde", _)) => Api::Mde,
                Some((other, span)) => {
                    return c.err(span, format!("api is {other:?}: use \"graph\" or \"mde\""))
                }
            };
            // One tenant and API polled twice would send every alert twice, and both pollers
            // would write one checkpoint file (issue 8 §6). Tenant ids are case-insensitive
            // (GUIDs and domain names); the file name check catches ids that differ only in
            // characters the file name replaces.
            let id = s.tenant_id.to_ascii_lowercase();
            let file = Checkpoint::path(Path::new(""), &id, &s.api.to_string());
            if let Some((_, _, _, line)) = polled
                .iter()
                .find(|(i, a, f, _)| (*i == id && *a == s.api) || *f == file)
            {
                return c.err(
                    t.tenant_id.span(),
                    format!(
                        "tenant {name:?} polls the same tenant_id and api as the [[tenant]] block at line {line}: give each customer tenant and API one block"
                    ),
                );
            }
            polled.push((id, s.api, file, c.line(&span)));
            s.cloud = match t.cloud.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
                None | Some(("commercial", _)) => Cloud::Commercial,
                Some(("gcc", _)) => Cloud::Gcc,
                Some(("gcc-high", _)) => Cloud::GccHigh,
                Some(("dod", _)) => Cloud::Dod,
                Some((other, span)) => {
                    return c.err(
                        span,
                        format!(
                        "cloud is {other:?}: use \"commercial\", \"gcc\", \"gcc-high\" or \"dod\""
                    ),
                    )
                }
            };
            for (field, value, slot) in [
                ("authority_host", &t.authority_host, &mut s.authority_host),
                ("api_base_url", &t.api_base_url, &mut s.api_base_url),
            ] {
                if let Some(v) = value {
                    let url = url::Url::parse(v.get_ref())
                        .or_else(|e| c.err(v.span(), format!("{field} is not a URL: {e}")))?;
                    if url.scheme() != "https" {
                        return c.err(v.span(), format!("{field} must be an https:// URL"));
                    }
                    *slot = Some(url);
                }
            }
            s.filters = Filters {
                min_severity: severity(&c, &t.min_severity)?,
                service_sources: t.service_sources.clone(),
            };
            if let Some(p) = duration(&c, &t.poll_interval, POLL_INTERVAL)?.or(poll_interval) {
                s.poll_interval = p;
            }
            if let Some(e) = &t.secret_expires {
                let text = e.get_ref().trim();
                let parsed = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .ok()
                    .and_then(|d| d.and_hms_opt(0, 0, 0))
                    .map(|d| d.and_utc())
                    .or_else(|| {
                        chrono::DateTime::parse_from_rfc3339(text)
                            .ok()
                            .map(|d| d.with_timezone(&chrono::Utc))
                    });
                match parsed {
                    Some(d) if t.client_secret.is_some() => s.secret_expires = Some(d),
                    Some(_) => {
                        return c.err(
                            e.span(),
                            "secret_expires is for a client_secret; a certificate's expiry is read from the certificate".to_string(),
                        )
                    }
                    None => {
                        return c.err(
                            e.span(),
                            format!("secret_expires is {text:?}: write a date such as \"2027-03-31\""),
                        )
                    }
                }
            }
            if let Some(o) = overlap {
                s.overlap = o;
            }
            if let Some(l) = initial_lookback {
                s.initial_lookback = l;
            }
            if let Some(p) = raw.page_size {
                // Clamped to the API's maximum by TenantSettings::page_size.
                s.page_size = Some(p.max(1));
            }
            if let Some(p) = policy(&t.update_policy)?.or(global_policy) {
                s.update_policy = p;
            }
            tenants.push(Tenant {
                settings: s,
                syslog_hostname: t.syslog_hostname.clone(),
            });
        }

        let state_dir = raw
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/defender-bridge"));
        let dead_letter = raw
            .dead_letter
            .clone()
            .unwrap_or_else(|| state_dir.join("dead-letter.ndjson"));
        let names: HashSet<String> = tenants.iter().map(|t| t.settings.name.clone()).collect();
        let default_hostname = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "-".to_string());
        let mut destinations = Vec::new();
        for d in &raw.destination {
            let d = d.get_ref();
            let mut sink = SinkConfig::new(
                d.url
                    .get_ref()
                    .parse()
                    .or_else(|e: crate::sink::Error| c.err(d.url.span(), e.to_string()))?,
            );
            if let Err(e) = Formatter::load(d.format.get_ref()) {
                return c.err(
                    d.format.span(),
                    format!("format {:?}: {e}", d.format.get_ref()),
                );
            }
            let hec = sink.destination.transport.is_hec();
            let kafka = sink.destination.transport.is_kafka();
            let kind = match d.syslog.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
                // A HEC event carries its own time and host: no syslog header in it. A Kafka
                // message has its time and tenant in its timestamp and headers; a header can
                // still be asked for (a consumer that expects syslog lines).
                None if hec || kafka => HeaderKind::None,
                None => HeaderKind::Rfc5424,
                Some((s, span)) => {
                    let k: HeaderKind = s.parse().or_else(|e: String| c.err(span.clone(), e))?;
                    if hec && k != HeaderKind::None {
                        return c.err(
                            span,
                            "a HEC event has no syslog header: leave syslog out (or \"none\")",
                        );
                    }
                    k
                }
            };
            if hec {
                let Some(t) = &d.hec_token else {
                    return c.err(d.url.span(), "a HEC destination needs hec_token = { env = \"SPLUNK_HEC_TOKEN\" } or { file = \"/path\" }");
                };
                sink.hec.token = Some(resolve_secret(&c, t.get_ref(), t.span(), &mut warnings)?);
                if let Some(v) = &d.sourcetype {
                    sink.hec.sourcetype = v.clone();
                }
                if let Some(v) = &d.source {
                    sink.hec.source = v.clone();
                }
                sink.hec.index = d.index.clone();
                sink.hec.indexer_ack = d.indexer_ack.unwrap_or(false);
                if let Some(t) = duration(&c, &d.ack_timeout, ACK_TIMEOUT)? {
                    sink.hec.ack_timeout = t;
                }
            } else if let Some(key) = [
                ("hec_token", d.hec_token.is_some()),
                ("sourcetype", d.sourcetype.is_some()),
                ("source", d.source.is_some()),
                ("index", d.index.is_some()),
                ("indexer_ack", d.indexer_ack.is_some()),
                ("ack_timeout", d.ack_timeout.is_some()),
            ]
            .iter()
            .find_map(|(k, set)| set.then_some(*k))
            {
                return c.err(
                    d.url.span(),
                    format!("{key} applies to hec+https:// destinations only"),
                );
            }
            if kafka {
                sink.kafka.sasl = match (&d.sasl_mechanism, &d.sasl_username, &d.sasl_password) {
                    (None, None, None) => None,
                    (m, Some(user), Some(pw)) => Some(crate::sink::Sasl {
                        mechanism: match m {
                            None => crate::sink::SaslMechanism::Plain,
                            Some(m) => m.get_ref().parse().or_else(|e: String| c.err(m.span(), e))?,
                        },
                        username: user.get_ref().clone(),
                        password: resolve_secret(&c, pw.get_ref(), pw.span(), &mut warnings)?,
                    }),
                    _ => return c.err(
                        d.url.span(),
                        "SASL needs sasl_username and sasl_password = { env = \"…\" } or { file = \"…\" } (sasl_mechanism defaults to PLAIN)",
                    ),
                };
                if d.server_name.is_some() {
                    return c.err(d.url.span(), "server_name is not supported for Kafka: each broker's certificate is checked against that broker's own name");
                }
            } else if let Some(key) = [
                ("sasl_mechanism", d.sasl_mechanism.is_some()),
                ("sasl_username", d.sasl_username.is_some()),
                ("sasl_password", d.sasl_password.is_some()),
            ]
            .iter()
            .find_map(|(k, set)| set.then_some(*k))
            {
                return c.err(
                    d.url.span(),
                    format!("{key} applies to kafka:// and kafka+tls:// destinations only"),
                );
            }
            sink.framing = match d.framing.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
                None => None,
                Some((s, span)) => Some(
                    s.parse::<Framing>()
                        .or_else(|e| c.err(span, e.to_string()))?,
                ),
            };
            sink.max_message_size = d.max_message_size;
            if let Some(q) = d.queue_capacity {
                sink.queue_capacity = q.max(1);
            }
            if let Some(w) = &d.window {
                if !sink.destination.transport.is_relp() {
                    return c.err(w.span(), "window applies to relp:// and relp+tls:// only");
                }
                if !(1..=MAX_WINDOW).contains(w.get_ref()) {
                    return c.err(
                        w.span(),
                        format!("window must be between 1 and {MAX_WINDOW}"),
                    );
                }
                sink.window = *w.get_ref();
            }
            if let Some(r) = &d.resend_on_reconnect {
                if !matches!(sink.destination.transport, Transport::Tcp | Transport::Tls) {
                    return c.err(
                        r.span(),
                        "resend_on_reconnect applies to tcp:// and tls:// only (RELP resends what was not answered)",
                    );
                }
                sink.resend_on_reconnect = *r.get_ref();
            }
            sink.tls.ca_file = d.ca_file.clone();
            sink.tls.client_cert = d.client_cert.clone();
            sink.tls.client_key = d.client_key.clone();
            sink.tls.server_name = d.server_name.clone();
            sink.tls.insecure_skip_verify = d.insecure_skip_verify;
            if d.insecure_skip_verify {
                warnings.push(format!(
                    "destination {}: TLS certificate verification is off (insecure_skip_verify)",
                    d.url.get_ref()
                ));
            }
            let facility = match &d.facility {
                None => 20,
                Some(f) => syslog::facility_from_name(f.get_ref()).map_or_else(
                    || {
                        c.err(
                            f.span(),
                            format!("unknown syslog facility {:?}", f.get_ref()),
                        )
                    },
                    Ok,
                )?,
            };
            let tenant_filter = match &d.tenants {
                None => None,
                Some(list) => {
                    for n in list.get_ref() {
                        if !names.contains(n) {
                            return c.err(list.span(), format!("destination names tenant {n:?}, which no [[tenant]] block defines"));
                        }
                    }
                    Some(list.get_ref().iter().cloned().collect())
                }
            };
            let dest_name = match &d.name {
                Some(n) if n.get_ref().trim().is_empty() => {
                    return c.err(n.span(), "a destination name cannot be empty")
                }
                Some(n) if n.get_ref().trim().starts_with('@') => {
                    return c.err(n.span(), "a destination name cannot start with @ (the queue keeps such names for itself)")
                }
                Some(n) => n.get_ref().trim().to_string(),
                None => sink.destination.to_string(),
            };
            if destinations
                .iter()
                .any(|x: &Destination| x.name == dest_name)
            {
                let span = d.name.as_ref().map_or(d.url.span(), |n| n.span());
                return c.err(
                    span,
                    format!("two destinations are named {dest_name:?} (a destination's name is its URL unless name = \"…\" says otherwise); give each its own name"),
                );
            }
            destinations.push(Destination {
                name: dest_name,
                output: OutputConfig {
                    sink,
                    format: d.format.get_ref().clone(),
                    header: SyslogHeader::new(
                        kind,
                        facility,
                        d.hostname.as_deref().unwrap_or(&default_hostname),
                        d.app_name.as_deref().unwrap_or("defender-bridge"),
                    ),
                },
                tenants: tenant_filter,
                min_severity: severity(&c, &d.min_severity)?,
            });
        }

        let mut proxy = raw.proxy.clone();
        if let (Some(p), Some(user)) = (&raw.proxy, &raw.proxy_username) {
            let mut url = url::Url::parse(p).map_err(|e| ConfigError {
                origin: origin.to_string(),
                line: None,
                message: format!("proxy is not a URL: {e}"),
            })?;
            let _ = url.set_username(user);
            if let Some(pw) = &raw.proxy_password {
                let secret = resolve_secret(&c, pw, 0..0, &mut warnings)?;
                let _ = url.set_password(Some(secret.expose()));
            }
            proxy = Some(url.to_string());
        }
        let notifications =
            crate::notify::config::load(&c, &raw.smtp, &raw.notification, &names, &mut warnings)?;
        let http = HttpSettings {
            proxy: proxy.map(SecretString::new),
            extra_ca_file: raw.ca_file.clone(),
            ..HttpSettings::default()
        };
        Ok(Config {
            state_dir,
            dead_letter,
            http,
            log_level: raw.log_level.clone().unwrap_or_else(|| "info".to_string()),
            shutdown_timeout: shutdown_timeout.unwrap_or(Duration::from_secs(30)),
            queue_max_bytes: match &raw.queue_max_bytes {
                None => DEFAULT_QUEUE_MAX_BYTES,
                Some(q) if *q.get_ref() < MIN_QUEUE_MAX_BYTES => {
                    return c.err(
                        q.span(),
                        format!("queue_max_bytes must be at least {MIN_QUEUE_MAX_BYTES} (1 MiB)"),
                    )
                }
                Some(q) => *q.get_ref(),
            },
            max_concurrent_requests: match &raw.max_concurrent_requests {
                None => DEFAULT_MAX_CONCURRENT_REQUESTS,
                Some(n) if !(1..=MAX_CONCURRENT_REQUESTS).contains(n.get_ref()) => {
                    return c.err(
                        n.span(),
                        format!("max_concurrent_requests must be from 1 to {MAX_CONCURRENT_REQUESTS}"),
                    )
                }
                Some(n) => *n.get_ref() as usize,
            },
            metrics_listen: match &raw.metrics_listen {
                None => Some(DEFAULT_METRICS_LISTEN),
                Some(m) if m.get_ref().trim().is_empty() => None,
                Some(m) => match m.get_ref().trim().parse() {
                    Ok(a) => Some(a),
                    Err(_) => {
                        return c.err(
                            m.span(),
                            format!(
                                "metrics_listen is {:?}: write an address and port such as \"127.0.0.1:9464\", or \"\" for no endpoint",
                                m.get_ref()
                            ),
                        )
                    }
                },
            },
            shard: match &raw.shard {
                None => None,
                Some(v) => Some(
                    v.get_ref()
                        .parse()
                        .or_else(|e: String| c.err(v.span(), e))?,
                ),
            },
            tenants_in_file: tenants.len(),
            tenants,
            destinations,
            notifications,
            warnings,
        })
        .map(|mut c| {
            if let Some(s) = c.shard {
                c.set_shard(s);
            }
            c
        })
    }

    /// Makes this instance shard `shard` (over `shard` in the file): it keeps only the tenants
    /// the shard owns.
    pub fn set_shard(&mut self, shard: crate::shard::Shard) {
        self.shard = Some(shard);
        self.tenants
            .retain(|t| shard.owns(&t.settings.tenant_id, t.settings.api));
    }

    /// `--state-dir`: another state directory (and the dead-letter file in it, unless the
    /// file names one).
    pub fn set_state_dir(&mut self, dir: PathBuf) {
        if self.dead_letter == self.state_dir.join("dead-letter.ndjson") {
            self.dead_letter = dir.join("dead-letter.ndjson");
        }
        self.state_dir = dir;
    }
}

pub(crate) fn severity(
    c: &Ctx,
    s: &Option<Spanned<String>>,
) -> Result<Option<Severity>, ConfigError> {
    match s
        .as_ref()
        .map(|s| (s.get_ref().to_ascii_lowercase(), s.span()))
    {
        None => Ok(None),
        Some((v, span)) => match v.as_str() {
            "informational" => Ok(Some(Severity::Informational)),
            "low" => Ok(Some(Severity::Low)),
            "medium" => Ok(Some(Severity::Medium)),
            "high" => Ok(Some(Severity::High)),
            other => c.err(
                span,
                format!("min_severity is {other:?}: use informational, low, medium or high"),
            ),
        },
    }
}

/// Reads a secret from the environment or a file. Errors name the variable or file, never the
/// secret.
pub(crate) fn resolve_secret(
    c: &Ctx,
    r: &SecretRef,
    span: std::ops::Range<usize>,
    warnings: &mut Vec<String>,
) -> Result<SecretString, ConfigError> {
    match (&r.env, &r.file) {
        (Some(var), None) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(SecretString::new(v.trim())),
            Ok(_) => c.err(span, format!("environment variable {var} is empty")),
            Err(_) => c.err(span, format!("environment variable {var} is not set")),
        },
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).or_else(|e| {
                c.err(
                    span.clone(),
                    format!("cannot read secret file {}: {e}", path.display()),
                )
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                if let Ok(meta) = std::fs::metadata(path) {
                    if meta.permissions().mode() & 0o077 != 0 {
                        warnings.push(format!(
                            "secret file {} is readable by others than its owner (mode {:o}); chmod 600 it",
                            path.display(),
                            meta.permissions().mode() & 0o777
                        ));
                    }
                }
            }
            let t = text.trim();
            if t.is_empty() {
                return c.err(span, format!("secret file {} is empty", path.display()));
            }
            Ok(SecretString::new(t))
        }
        _ => c.err(
            span,
            "a secret is { env = \"NAME\" } or { file = \"/path\" }",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> ConfigError {
        match Config::from_toml("c.toml", src) {
            Ok(_) => panic!("accepted:\n{src}"),
            Err(e) => e,
        }
    }

    const TENANT: &str = "[[tenant]]\nname = \"a\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"DB_TEST_SECRET_A\" }\n";

    #[test]
    fn the_packaged_example_loads() {
        std::env::set_var("CONTOSO_CLIENT_SECRET", "x");
        let dir = tempfile::tempdir().unwrap();
        let src = include_str!("../packaging/config.toml").replace(
            "/etc/defender-bridge/fabrikam.secret",
            dir.path().join("f.secret").to_str().unwrap(),
        );
        std::fs::write(dir.path().join("f.secret"), "y").unwrap();
        let c = Config::from_toml("config.toml", &src).unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.destinations.len(), 2);
        assert_eq!(c.tenants[1].settings.api, Api::Mde);
        assert_eq!(c.destinations[0].output.format, "qradar");
    }

    #[test]
    fn max_concurrent_requests_is_bounded() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let dest = "[[destination]]\nurl = \"udp://127.0.0.1:514\"\nformat = \"json\"\n";
        let load = |v: &str| Config::from_toml("c.toml", &format!("{v}\n{TENANT}{dest}"));
        assert_eq!(
            load("").unwrap().max_concurrent_requests,
            DEFAULT_MAX_CONCURRENT_REQUESTS
        );
        assert_eq!(
            load("max_concurrent_requests = 8")
                .unwrap()
                .max_concurrent_requests,
            8
        );
        for bad in ["0", "65537"] {
            let e = err(&format!("max_concurrent_requests = {bad}\n{TENANT}{dest}")).to_string();
            assert!(
                e.contains("c.toml:1") && e.contains("from 1 to 65536"),
                "{e}"
            );
        }
    }

    /// A HEC destination needs its token; HEC keys elsewhere are mistakes; a HEC event has no
    /// syslog header.
    #[test]
    fn hec_destinations_are_checked() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        std::env::set_var("DB_TEST_HEC_TOKEN", "t0k3n");
        let ok = Config::from_toml(
            "c.toml",
            &format!("{TENANT}[[destination]]\nurl = \"hec+https://splunk:8088\"\nformat = \"json\"\nhec_token = {{ env = \"DB_TEST_HEC_TOKEN\" }}\nindexer_ack = true\nindex = \"sec\"\nack_timeout = \"30s\"\n"),
        )
        .unwrap();
        let d = &ok.destinations[0].output;
        assert_eq!(d.header.kind, HeaderKind::None);
        assert!(d.sink.hec.indexer_ack);
        assert_eq!(d.sink.hec.index.as_deref(), Some("sec"));
        assert_eq!(d.sink.hec.ack_timeout, Duration::from_secs(30));
        assert_eq!(d.sink.hec.token.as_ref().unwrap().expose(), "t0k3n");
        for (dest, says) in [
            ("url = \"hec+https://splunk:8088\"\nformat = \"json\"\n", "needs hec_token"),
            ("url = \"tcp://siem:514\"\nformat = \"json\"\nindex = \"x\"\n", "index applies to hec+https:// destinations only"),
            ("url = \"hec+https://splunk\"\nformat = \"json\"\nhec_token = { env = \"DB_TEST_HEC_TOKEN\" }\nsyslog = \"rfc5424\"\n", "no syslog header"),
            ("url = \"hec+https://splunk\"\nformat = \"json\"\nhec_token = \"t0k3n\"\n", "cannot be written in the configuration"),
        ] {
            let e = err(&format!("{TENANT}[[destination]]\n{dest}"));
            assert!(e.to_string().contains(says), "{dest}: {e}");
            assert!(!e.to_string().contains("t0k3n"), "{e}");
        }
    }

    /// `shard = "I/N"` keeps this shard's tenants only; a bad value is said at its line.
    #[test]
    fn a_shard_keeps_its_tenants() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let mut src = String::from("shard = \"1/2\"\n");
        for i in 0..40 {
            src.push_str(&format!("[[tenant]]\nname = \"t{i}\"\ntenant_id = \"aaaaaaaa-0000-4000-8000-{i:012}\"\nclient_id = \"c\"\nclient_secret = {{ env = \"DB_TEST_SECRET_A\" }}\n"));
        }
        src.push_str("[[destination]]\nurl = \"tcp://siem:514\"\nformat = \"json\"\n");
        let c = Config::from_toml("c.toml", &src).unwrap();
        let shard = c.shard.unwrap();
        assert_eq!(shard.to_string(), "1/2");
        assert_eq!(c.tenants_in_file, 40);
        assert!(
            c.tenants.len() > 5 && c.tenants.len() < 35,
            "{}",
            c.tenants.len()
        );
        assert!(c
            .tenants
            .iter()
            .all(|t| shard.owns(&t.settings.tenant_id, t.settings.api)));
        let e = Config::from_toml("c.toml", &src.replace("1/2", "2/2")).unwrap_err();
        assert!(
            e.to_string().contains("does not exist") && e.line == Some(1),
            "{e}"
        );
    }

    /// Kafka: SASL from env or file, no syslog header unless asked for, keys of other kinds
    /// refused.
    #[test]
    fn kafka_destinations_are_checked() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        std::env::set_var(
            "DB_TEST_EH_CONN",
            "Endpoint=sb://ns/;SharedAccessKey=s3cr3t",
        );
        let ok = Config::from_toml(
            "c.toml",
            &format!("{TENANT}[[destination]]\nurl = \"kafka+tls://ns.servicebus.windows.net:9093/defender\"\nformat = \"json\"\nsasl_username = \"$ConnectionString\"\nsasl_password = {{ env = \"DB_TEST_EH_CONN\" }}\n"),
        )
        .unwrap();
        let d = &ok.destinations[0].output;
        assert_eq!(d.header.kind, HeaderKind::None);
        let sasl = d.sink.kafka.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, crate::sink::SaslMechanism::Plain);
        assert_eq!(sasl.username, "$ConnectionString");
        assert!(sasl.password.expose().ends_with("s3cr3t"));
        let ok = Config::from_toml(
            "c.toml",
            &format!("{TENANT}[[destination]]\nurl = \"kafka://b1,b2:9093/t\"\nformat = \"arcsight\"\nsyslog = \"rfc5424\"\nsasl_mechanism = \"SCRAM-SHA-512\"\nsasl_username = \"u\"\nsasl_password = {{ env = \"DB_TEST_EH_CONN\" }}\n"),
        )
        .unwrap();
        let d = &ok.destinations[0].output;
        assert_eq!(d.header.kind, HeaderKind::Rfc5424);
        assert_eq!(
            d.sink.kafka.sasl.as_ref().unwrap().mechanism,
            crate::sink::SaslMechanism::ScramSha512
        );
        for (dest, says) in [
            ("url = \"kafka://b1/t\"\nformat = \"json\"\nsasl_username = \"u\"\n", "SASL needs sasl_username and sasl_password"),
            ("url = \"kafka://b1/t\"\nformat = \"json\"\nsasl_mechanism = \"GSSAPI\"\nsasl_username = \"u\"\nsasl_password = { env = \"DB_TEST_EH_CONN\" }\n", "SCRAM-SHA-256"),
            ("url = \"kafka://b1/t\"\nformat = \"json\"\nsasl_username = \"u\"\nsasl_password = \"s3cr3t\"\n", "cannot be written in the configuration"),
            ("url = \"kafka+tls://b1/t\"\nformat = \"json\"\nserver_name = \"x\"\n", "server_name is not supported for Kafka"),
            ("url = \"tcp://siem:514\"\nformat = \"json\"\nsasl_username = \"u\"\n", "sasl_username applies to kafka://"),
            ("url = \"kafka://b1\"\nformat = \"json\"\n", "names its topic"),
        ] {
            let e = err(&format!("{TENANT}[[destination]]\n{dest}"));
            assert!(e.to_string().contains(says), "{dest}: {e}");
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    /// A secret written into the file is refused with its line and the way to do it, and the
    /// error never repeats it, whatever its type or where it is (issue 10 §6).
    #[test]
    fn an_inline_secret_is_refused_without_being_repeated() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let dest = "[[destination]]\nurl = \"udp://127.0.0.1:514\"\nformat = \"json\"\n";
        let tenant = |secret: &str| {
            format!("[[tenant]]\nname = \"a\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = {secret}\n{dest}")
        };
        for (src, line) in [
            (tenant("\"SuperSecretValue123\""), 5),
            (tenant("987654321"), 5),
            (tenant("[\"SuperSecretValue123\"]"), 5),
            (tenant("{ value = \"SuperSecretValue123\" }"), 5),
            (
                format!("proxy = \"http://proxy:3128\"\nproxy_username = \"u\"\nproxy_password = \"SuperSecretValue123\"\n{TENANT}{dest}"),
                3,
            ),
        ] {
            let e = err(&src);
            let text = e.to_string();
            assert!(!text.contains("SuperSecretValue123") && !text.contains("987654321"), "{text}");
            assert_eq!(e.line, Some(line), "{text}");
            // An unknown key in the table is named, its value is not.
            if !src.contains("value =") {
                assert!(text.contains("{ env = \"NAME\" }"), "{text}");
            }
        }
    }

    #[test]
    fn mistakes_name_their_line() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let cases: &[(&str, usize, &str)] = &[
            ("polling = \"60s\"\n", 1, "unknown field `polling`"),
            ("poll_interval = \"sixty\"\n", 1, "not a duration"),
            ("update_policy = \"some\"\n", 1, "update_policy is \"some\""),
            ("[[tenant]]\nname = \"a\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = \"plain\"\n", 5, "a secret cannot be written in the configuration file"),
            ("[[tenant]]\nname = \"a\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"DB_TEST_UNSET_VAR\" }\n", 5, "environment variable DB_TEST_UNSET_VAR is not set"),
            ("[[tenant]]\nname = \"a\"\ntenant_id = \"t\"\nclient_id = \"c\"\n", 1, "needs client_secret"),
            ("[[tenant]]\nname = \"a\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"DB_TEST_SECRET_A\" }\ncloud = \"azure-china\"\n", 6, "cloud is \"azure-china\""),
            ("[[tenant]]\nname = \"a\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"DB_TEST_SECRET_A\" }\napi_base_url = \"http://x\"\n", 6, "must be an https:// URL"),
            ("[[tenant]]\nname = \"a\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"DB_TEST_SECRET_A\" }\n[[tenant]]\nname = \"a\"\ntenant_id = \"u\"\nclient_id = \"c\"\nclient_secret = { env = \"DB_TEST_SECRET_A\" }\n", 7, "two tenants are named \"a\""),
            (&format!("{TENANT}[[tenant]]\nname = \"b\"\ntenant_id = \" T \"\nclient_id = \"c\"\nclient_secret = {{ env = \"DB_TEST_SECRET_A\" }}\n"), 8, "polls the same tenant_id and api as the [[tenant]] block at line 1"),
            (&format!("{TENANT}api = \"mde\"\n[[tenant]]\nname = \"b\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = {{ env = \"DB_TEST_SECRET_A\" }}\napi = \"mde\"\n"), 9, "polls the same tenant_id and api"),
            (&format!("{TENANT}secret_expires = \"soon\"\n"), 6, "secret_expires is \"soon\": write a date"),
            ("[[destination]]\nurl = \"ftp://x\"\nformat = \"json\"\n", 2, "invalid destination"),
            ("[[destination]]\nurl = \"tcp://x:514\"\nformat = \"qradr\"\n", 3, "no built-in format of that name"),
            ("[[destination]]\nurl = \"tcp://x:514\"\nformat = \"json\"\nframing = \"nul\"\n", 4, "unknown framing"),
            ("[[destination]]\nurl = \"tcp://x:514\"\nformat = \"json\"\ntenants = [\"nobody\"]\n", 4, "no [[tenant]] block defines"),
            ("[[destination]]\nurl = \"tcp://x:514\"\nformat = \"json\"\nmin_severity = \"severe\"\n", 4, "min_severity is \"severe\""),
            ("[[destination]]\nurl = \"tcp://x:514\"\nformat = \"json\"\ncolour = 1\n", 4, "unknown field `colour`"),
            ("[[destination]]\nurl = \"tcp://x:514\"\nformat = \"json\"\nwindow = 8\n", 4, "window applies to relp"),
            ("[[destination]]\nurl = \"relp://x\"\nformat = \"json\"\nwindow = 0\n", 4, "window must be between"),
            ("[[destination]]\nurl = \"udp://x\"\nformat = \"json\"\nresend_on_reconnect = 0\n", 4, "resend_on_reconnect applies to tcp"),
        ];
        let mut wrong = Vec::new();
        for (src, line, msg) in cases {
            let e = err(src);
            if e.line != Some(*line) || !e.message.contains(msg) {
                wrong.push(format!("{src:?}\n  want {line} {msg:?}\n  got  {e}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn durations_out_of_range_name_the_key_the_range_and_the_line() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let cases: &[(&str, usize, &str)] = &[
            // The value of issue 8 §5 that panicked the daemon.
            (
                "initial_lookback = \"300000y\"\n",
                1,
                "initial_lookback is \"300000y\": it must be from 0s to 180d",
            ),
            (
                "\noverlap = \"1000000d\"\n",
                2,
                "overlap is \"1000000d\": it must be from 0s to 1d",
            ),
            (
                "poll_interval = \"10ms\"\n",
                1,
                "poll_interval is \"10ms\": it must be from 100ms to 1d",
            ),
            (
                "shutdown_timeout = \"2h\"\n",
                1,
                "shutdown_timeout is \"2h\": it must be from 0s to 1h",
            ),
            (
                "shutdown_timeout = \"soon\"\n",
                1,
                "shutdown_timeout is \"soon\", not a duration",
            ),
            (
                &format!("{TENANT}poll_interval = \"400d\"\n"),
                6,
                "poll_interval is \"400d\"",
            ),
        ];
        let mut wrong = Vec::new();
        for (src, line, msg) in cases {
            let e = err(src);
            if e.line != Some(*line) || !e.message.contains(msg) {
                wrong.push(format!("{src:?}\n  want {line} {msg:?}\n  got  {e}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    /// Every duration at its upper bound loads, and the poller's start (now minus the initial
    /// look-back minus the overlap) is a representable time.
    #[tokio::test]
    async fn the_largest_durations_allowed_are_safe() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let max = |r: DurationRange| short(r.max);
        let src = format!(
            "poll_interval = \"{}\"\noverlap = \"{}\"\ninitial_lookback = \"{}\"\nshutdown_timeout = \"{}\"\n{TENANT}",
            max(POLL_INTERVAL),
            max(OVERLAP),
            max(INITIAL_LOOKBACK),
            max(SHUTDOWN_TIMEOUT)
        );
        let c = Config::from_toml("c.toml", &src).unwrap();
        let s = &c.tenants[0].settings;
        assert_eq!(s.initial_lookback, INITIAL_LOOKBACK.max);
        assert_eq!(c.shutdown_timeout, SHUTDOWN_TIMEOUT.max);
        let back = chrono::Duration::from_std(s.initial_lookback + s.overlap).unwrap();
        assert!(chrono::Utc::now().checked_sub_signed(back).is_some());
        let dir = tempfile::tempdir().unwrap();
        let http = crate::source::build_http_client(&HttpSettings::default()).unwrap();
        crate::source::Poller::connect(s.clone(), http, dir.path()).unwrap();
    }

    /// The same tenant on both APIs is two pollers with two checkpoints, not a duplicate.
    #[test]
    fn one_tenant_may_be_polled_through_both_apis() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let src = format!("{TENANT}[[tenant]]\nname = \"b\"\ntenant_id = \"T\"\nclient_id = \"c\"\nclient_secret = {{ env = \"DB_TEST_SECRET_A\" }}\napi = \"mde\"\n");
        let c = Config::from_toml("c.toml", &src).unwrap();
        assert_eq!(c.tenants[1].settings.api, Api::Mde);
    }

    #[test]
    fn the_old_dead_letter_file_is_looked_for_in_the_state_dir() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let dest = "[[destination]]\nurl = \"udp://127.0.0.1:514\"\nformat = \"json\"\n";
        let c = Config::from_toml(
            "c.toml",
            &format!("state_dir = \"/srv/db\"\n{TENANT}{dest}"),
        )
        .unwrap();
        assert_eq!(c.dead_letter, Path::new("/srv/db/dead-letter.ndjson"));
        let c = Config::from_toml(
            "c.toml",
            &format!("dead_letter = \"/srv/letters.ndjson\"\n{TENANT}{dest}"),
        )
        .unwrap();
        assert_eq!(c.dead_letter, Path::new("/srv/letters.ndjson"));
    }

    #[test]
    fn secrets_from_files_never_show_and_loose_modes_are_warned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "  hunter2\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let src = format!(
            "[[tenant]]\nname = \"a\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = {{ file = \"{}\" }}\n",
            path.display()
        );
        let c = Config::from_toml("c.toml", &src).unwrap();
        match &c.tenants[0].settings.credential {
            Credential::Secret(s) => assert_eq!(s.expose(), "hunter2"),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{c:?}").contains("hunter2"));
        #[cfg(unix)]
        assert!(
            c.warnings[0].contains("readable by others"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn proxy_credentials_never_show() {
        std::env::set_var("DB_TEST_PROXY_PW", "pr0xy-pw");
        let c = Config::from_toml(
            "c.toml",
            "proxy = \"http://proxy.example:3128\"\nproxy_username = \"svc\"\nproxy_password = { env = \"DB_TEST_PROXY_PW\" }\n",
        )
        .unwrap();
        assert_eq!(
            c.http.proxy.as_ref().unwrap().expose(),
            "http://svc:pr0xy-pw@proxy.example:3128/"
        );
        assert!(!format!("{c:?}").contains("pr0xy-pw"));
    }

    #[test]
    fn destination_filters() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let src = format!("{TENANT}\n[[destination]]\nurl = \"udp://[::1]:514\"\nformat = \"json\"\ntenants = [\"a\"]\nmin_severity = \"medium\"\n");
        let c = Config::from_toml("c.toml", &src).unwrap();
        let d = &c.destinations[0];
        use crate::alert::Severity as S;
        assert!(d.wants("a", &S::High));
        assert!(d.wants("a", &S::Medium));
        assert!(!d.wants("a", &S::Low));
        assert!(!d.wants("b", &S::High));
        assert_eq!(d.output.sink.destination.to_string(), "udp://[::1]:514");
    }

    #[test]
    fn relp_destination_keys() {
        std::env::set_var("DB_TEST_SECRET_A", "x");
        let src = format!("{TENANT}\n[[destination]]\nurl = \"relp+tls://siem:20514\"\nformat = \"json\"\nwindow = 64\nca_file = \"/ca.pem\"\n");
        let c = Config::from_toml("c.toml", &src).unwrap();
        let sink = &c.destinations[0].output.sink;
        assert_eq!(sink.destination.to_string(), "relp+tls://siem:20514");
        assert_eq!(sink.window, 64);
        assert_eq!(
            sink.tls.ca_file.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );

        let src = format!("{TENANT}\n[[destination]]\nurl = \"tcp://siem:514\"\nformat = \"json\"\nresend_on_reconnect = 0\n");
        let c = Config::from_toml("c.toml", &src).unwrap();
        assert_eq!(c.destinations[0].output.sink.resend_on_reconnect, 0);
    }
}
