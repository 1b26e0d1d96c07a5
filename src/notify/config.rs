//! `[smtp]` and `[[notification]]` in the configuration file: read as serde reads them, then
//! checked (line numbers, unknown keys, secrets from env or file) into [`Notifications`].

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::rule::{Action, HealthEvents, Rule, Shape, Updates, EVENT_NAMES};
use super::{Notifications, SmtpSettings, SmtpTls};
use crate::config::{
    duration, resolve_secret, severity, ConfigError, Ctx, DurationRange, SecretRef,
};
use crate::source::SecretString;

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawSmtp {
    pub server: Spanned<String>,
    #[serde(default)]
    pub port: Option<u16>,
    /// "starttls" (the default, port 587), "tls" (implicit, port 465) or "none" (port 25).
    #[serde(default)]
    pub tls: Option<Spanned<String>>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Spanned<SecretRef>>,
    pub from: Spanned<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub name: Spanned<String>,
    #[serde(default)]
    pub tenants: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub min_severity: Option<Spanned<String>>,
    #[serde(default)]
    pub device_groups: Vec<String>,
    #[serde(default)]
    pub categories: Vec<String>,
    #[serde(default)]
    pub service_sources: Vec<String>,
    #[serde(default)]
    pub detection_sources: Vec<String>,
    #[serde(default)]
    pub statuses: Vec<String>,
    #[serde(default)]
    pub mitre_techniques: Vec<String>,
    #[serde(default)]
    pub title_contains: Option<String>,
    #[serde(default)]
    pub title_regex: Option<Spanned<String>>,
    #[serde(default)]
    pub updates: Option<Spanned<String>>,
    #[serde(default)]
    pub max_age: Option<Spanned<String>>,
    #[serde(default)]
    pub alerts: Option<bool>,
    #[serde(default)]
    pub events: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub failing_polls: Option<Spanned<u32>>,
    #[serde(default)]
    pub down_for: Option<Spanned<String>>,
    #[serde(default)]
    pub queue_fill_percent: Option<Spanned<u8>>,
    #[serde(default)]
    pub include_device_user: Option<bool>,
    #[serde(default)]
    pub window: Option<Spanned<String>>,
    #[serde(default)]
    pub max_per_hour: Option<Spanned<u32>>,
    #[serde(default)]
    pub email: Option<Spanned<RawEmail>>,
    #[serde(default)]
    pub webhook: Option<Spanned<RawWebhook>>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawEmail {
    pub to: Vec<String>,
    #[serde(default)]
    pub cc: Vec<String>,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub url: Spanned<RawUrl>,
    /// "generic" (the default), "teams" or "slack".
    #[serde(default)]
    pub shape: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
}

/// A webhook URL, written out or (for a Teams or Slack URL, which carries its own signature)
/// from an environment variable or a file.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum RawUrl {
    Plain(String),
    Secret(SecretRef),
}

/// Digest window: a second gathers a burst; an hour is as long as an alert may wait.
pub const WINDOW: DurationRange = DurationRange {
    key: "window",
    min: Duration::from_secs(1),
    max: Duration::from_secs(3600),
};
pub const MAX_AGE: DurationRange = DurationRange {
    key: "max_age",
    min: Duration::from_secs(60),
    max: Duration::from_secs(180 * 86400),
};
pub const DOWN_FOR: DurationRange = DurationRange {
    key: "down_for",
    min: Duration::ZERO,
    max: Duration::from_secs(86400),
};
pub const SMTP_TIMEOUT: DurationRange = DurationRange {
    key: "timeout",
    min: Duration::from_secs(1),
    max: Duration::from_secs(600),
};

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(60);
pub const DEFAULT_MAX_PER_HOUR: u32 = 12;
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_FAILING_POLLS: u32 = 3;
pub const DEFAULT_DOWN_FOR: Duration = Duration::from_secs(300);
pub const DEFAULT_QUEUE_FILL_PERCENT: u8 = 80;

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn mailbox(
    c: &Ctx,
    span: std::ops::Range<usize>,
    key: &str,
    text: &str,
) -> Result<lettre::message::Mailbox, ConfigError> {
    text.trim().parse().or_else(|e| {
        c.err(
            span,
            format!("{key}: {text:?} is not an e-mail address ({e})"),
        )
    })
}

/// Checks `[smtp]` and the rules. `tenant_names` are the configured tenants.
pub(crate) fn load(
    c: &Ctx,
    smtp: &Option<Spanned<RawSmtp>>,
    rules: &[Spanned<RawRule>],
    tenant_names: &HashSet<String>,
    warnings: &mut Vec<String>,
) -> Result<Notifications, ConfigError> {
    let smtp = match smtp {
        None => None,
        Some(s) => {
            let span = s.span();
            let s = s.get_ref();
            let host = s.server.get_ref().trim().to_string();
            if host.is_empty() || host.contains(['/', ':', ' ']) {
                return c.err(
                    s.server.span(),
                    "server is the mail server's host name (the port goes in port = …)",
                );
            }
            let tls = match s.tls.as_ref().map(|t| (t.get_ref().as_str(), t.span())) {
                None | Some(("starttls", _)) => SmtpTls::StartTls,
                Some(("tls", _)) => SmtpTls::Implicit,
                Some(("none", _)) => SmtpTls::None,
                Some((other, span)) => {
                    return c.err(span, format!("tls is {other:?}: use \"starttls\" (port 587), \"tls\" (port 465) or \"none\""))
                }
            };
            let password = match &s.password {
                Some(p) => Some(resolve_secret(c, p.get_ref(), p.span(), warnings)?),
                None => None,
            };
            if password.is_some() != s.username.is_some() {
                return c.err(
                    span,
                    "[smtp] takes username and password together, or neither",
                );
            }
            if tls == SmtpTls::None && !is_loopback(&host) {
                if password.is_some() {
                    return c.err(span, "[smtp] with tls = \"none\" would send the password in clear over the network: use tls = \"starttls\" or \"tls\"");
                }
                warnings.push(format!(
                    "[smtp]: mail to {host} goes without TLS (tls = \"none\")"
                ));
            }
            Some(SmtpSettings {
                port: s.port.unwrap_or(match tls {
                    SmtpTls::StartTls => 587,
                    SmtpTls::Implicit => 465,
                    SmtpTls::None => 25,
                }),
                host,
                tls,
                username: s.username.clone(),
                password,
                from: mailbox(c, s.from.span(), "from", s.from.get_ref())?,
                ca_file: s.ca_file.clone(),
                timeout: duration(c, &s.timeout, SMTP_TIMEOUT)?.unwrap_or(Duration::from_secs(30)),
            })
        }
    };
    let mut out: Vec<Rule> = Vec::new();
    for r in rules {
        let span = r.span();
        let r = r.get_ref();
        let name = r.name.get_ref().trim().to_string();
        if name.is_empty() || name.contains('/') {
            return c.err(r.name.span(), "a notification rule needs a name, without /");
        }
        if out.iter().any(|x| x.name == name) {
            return c.err(
                r.name.span(),
                format!("two notification rules are named {name:?}"),
            );
        }
        let tenants = match &r.tenants {
            None => None,
            Some(list) => {
                for n in list.get_ref() {
                    if !tenant_names.contains(n) {
                        return c.err(list.span(), format!("rule {name:?} names tenant {n:?}, which no [[tenant]] block defines"));
                    }
                }
                Some(list.get_ref().iter().cloned().collect())
            }
        };
        let mut events = HealthEvents::default();
        if let Some(list) = &r.events {
            for e in list.get_ref() {
                if !events.set(e) {
                    return c.err(
                        list.span(),
                        format!(
                            "events: {e:?} is not an event; use {}",
                            EVENT_NAMES.join(", ")
                        ),
                    );
                }
            }
        }
        let updates = match r.updates.as_ref().map(|u| (u.get_ref().as_str(), u.span())) {
            None | Some(("none", _)) => Updates::None,
            Some(("status", _)) => Updates::Status,
            Some(("all", _)) => Updates::All,
            Some((other, span)) => {
                return c.err(span, format!("updates is {other:?}: use \"none\" (new alerts only), \"status\" (and status changes) or \"all\""))
            }
        };
        let title_regex = match &r.title_regex {
            None => None,
            Some(t) => Some(regex::Regex::new(t.get_ref()).or_else(|e| {
                c.err(
                    t.span(),
                    format!("title_regex is not a regular expression: {e}"),
                )
            })?),
        };
        let mut actions = Vec::new();
        if let Some(e) = &r.email {
            let Some(_) = &smtp else {
                return c.err(e.span(), "e-mail needs the mail server: add an [smtp] block (server, from, and username and password if it asks)");
            };
            let raw = e.get_ref();
            if raw.to.is_empty() {
                return c.err(e.span(), "email needs at least one address in to = [...]");
            }
            let to = raw
                .to
                .iter()
                .map(|a| mailbox(c, e.span(), "to", a))
                .collect::<Result<_, _>>()?;
            let cc = raw
                .cc
                .iter()
                .map(|a| mailbox(c, e.span(), "cc", a))
                .collect::<Result<_, _>>()?;
            actions.push(Action::Email { to, cc });
        }
        if let Some(w) = &r.webhook {
            let raw = w.get_ref();
            let url = match raw.url.get_ref() {
                RawUrl::Plain(u) => SecretString::new(u.trim()),
                RawUrl::Secret(s) => resolve_secret(c, s, raw.url.span(), warnings)?,
            };
            // Checked without repeating the URL: it may carry its signature.
            match url::Url::parse(url.expose()) {
                Ok(u) if u.scheme() == "https" => {}
                Ok(u) if u.scheme() == "http" && u.host_str().is_some_and(is_loopback) => {}
                Ok(_) => {
                    return c.err(
                        raw.url.span(),
                        "webhook url must be https:// (http:// only to this machine)",
                    )
                }
                Err(e) => return c.err(raw.url.span(), format!("webhook url is not a URL: {e}")),
            }
            let shape = match raw.shape.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
                None | Some(("generic", _)) => Shape::Generic,
                Some(("teams", _)) => Shape::Teams,
                Some(("slack", _)) => Shape::Slack,
                Some((other, span)) => {
                    return c.err(
                        span,
                        format!("shape is {other:?}: use \"generic\", \"teams\" or \"slack\""),
                    )
                }
            };
            let mut headers = Vec::new();
            for (k, v) in &raw.headers {
                if reqwest::header::HeaderName::from_bytes(k.as_bytes()).is_err() {
                    return c.err(
                        w.span(),
                        format!("webhook header {k:?} is not a header name"),
                    );
                }
                headers.push((k.clone(), resolve_secret(c, v, w.span(), warnings)?));
            }
            actions.push(Action::Webhook {
                url,
                shape,
                headers,
            });
        }
        if actions.is_empty() {
            return c.err(
                span,
                format!(
                    "rule {name:?} needs email = {{ to = [...] }} or webhook = {{ url = ... }}"
                ),
            );
        }
        let max_per_hour = match &r.max_per_hour {
            None => DEFAULT_MAX_PER_HOUR,
            Some(m) if *m.get_ref() == 0 => {
                return c.err(m.span(), "max_per_hour must be at least 1")
            }
            Some(m) => *m.get_ref(),
        };
        let queue_fill_percent = match &r.queue_fill_percent {
            None => DEFAULT_QUEUE_FILL_PERCENT,
            Some(p) if !(1..=100).contains(p.get_ref()) => {
                return c.err(p.span(), "queue_fill_percent must be from 1 to 100")
            }
            Some(p) => *p.get_ref(),
        };
        let failing_polls = match &r.failing_polls {
            None => DEFAULT_FAILING_POLLS,
            Some(p) if *p.get_ref() == 0 => {
                return c.err(p.span(), "failing_polls must be at least 1")
            }
            Some(p) => *p.get_ref(),
        };
        let lower = |v: &[String]| {
            v.iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        };
        out.push(Rule {
            name,
            tenants,
            min_severity: severity(c, &r.min_severity)?,
            device_groups: lower(&r.device_groups),
            categories: lower(&r.categories),
            service_sources: lower(&r.service_sources),
            detection_sources: lower(&r.detection_sources),
            statuses: lower(&r.statuses),
            mitre_techniques: lower(&r.mitre_techniques),
            title_contains: r.title_contains.as_ref().map(|t| t.to_lowercase()),
            title_regex,
            updates,
            max_age: duration(c, &r.max_age, MAX_AGE)?.unwrap_or(DEFAULT_MAX_AGE),
            // A rule that names events is about the collector unless it says alerts = true.
            alerts: r.alerts.unwrap_or(!events.any()),
            events,
            failing_polls,
            down_for: duration(c, &r.down_for, DOWN_FOR)?.unwrap_or(DEFAULT_DOWN_FOR),
            queue_fill_percent,
            include_device_user: r.include_device_user.unwrap_or(true),
            window: duration(c, &r.window, WINDOW)?.unwrap_or(DEFAULT_WINDOW),
            max_per_hour,
            actions,
        });
    }
    Ok(Notifications { smtp, rules: out })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const BASE: &str = "[[tenant]]\nname = \"contoso\"\ntenant_id = \"t\"\nclient_id = \"c\"\nclient_secret = { env = \"DB_NOTIFY_TEST_SECRET\" }\n";
    const SMTP: &str = "[smtp]\nserver = \"mail.example.com\"\nfrom = \"Defender Bridge <bridge@example.com>\"\nusername = \"bridge\"\npassword = { env = \"DB_NOTIFY_TEST_SECRET\" }\n";

    fn load(extra: &str) -> Result<Config, crate::config::ConfigError> {
        std::env::set_var("DB_NOTIFY_TEST_SECRET", "pw-never-shown");
        Config::from_toml("c.toml", &format!("{BASE}{extra}"))
    }

    #[test]
    fn a_rule_loads_with_its_defaults() {
        let c = load(&format!(
            "{SMTP}[[notification]]\nname = \"soc\"\nmin_severity = \"high\"\nemail = {{ to = [\"soc@example.com\"], cc = [\"Lead <lead@example.com>\"] }}\nwebhook = {{ url = \"https://example.webhook.office.com/x?sig=s3cret\", shape = \"teams\", headers = {{ \"X-Key\" = {{ env = \"DB_NOTIFY_TEST_SECRET\" }} }} }}\n"
        ))
        .unwrap();
        let n = &c.notifications;
        let s = n.smtp.as_ref().unwrap();
        assert_eq!((s.port, s.tls), (587, super::SmtpTls::StartTls));
        let r = &n.rules[0];
        assert_eq!(r.window, super::DEFAULT_WINDOW);
        assert_eq!(r.max_per_hour, super::DEFAULT_MAX_PER_HOUR);
        assert_eq!(r.updates, super::Updates::None);
        assert!(r.alerts && !r.events.any() && r.include_device_user);
        assert_eq!(r.actions.len(), 2);
        // The webhook URL carries its signature: a target shows the host only.
        assert_eq!(
            r.actions[1].target(),
            "https://example.webhook.office.com/…"
        );
        assert_eq!(r.actions[0].target(), "soc@example.com, lead@example.com");
        // No secret in the Debug form either (it is what a reload compares).
        let debug = format!("{n:?}");
        assert!(
            !debug.contains("pw-never-shown") && !debug.contains("s3cret"),
            "{debug}"
        );
    }

    /// The commented example of packaging/config.toml, uncommented, loads as it says.
    #[test]
    fn the_packaged_example_rules_load() {
        std::env::set_var("SMTP_PASSWORD", "x");
        std::env::set_var(
            "TEAMS_WEBHOOK_URL",
            "https://example.webhook.office.com/w?sig=x",
        );
        let example = include_str!("../../packaging/config.toml");
        let start = example.find("# [smtp]").expect("the example");
        let rules: String = example[start..]
            .lines()
            .map(|l| l.strip_prefix("# ").unwrap_or(l))
            .map(|l| format!("{l}\n"))
            .collect();
        let c = load(&rules).unwrap();
        let n = &c.notifications;
        assert_eq!(n.smtp.as_ref().unwrap().host, "smtp.office365.com");
        assert_eq!(n.rules.len(), 2);
        assert_eq!(n.rules[0].min_severity, Some(crate::alert::Severity::High));
        assert!(n.rules[1].events.credential_expiring && !n.rules[1].alerts);
    }

    #[test]
    fn an_events_rule_takes_no_alerts_unless_it_says_so() {
        let c = load("[[notification]]\nname = \"ops\"\nevents = [\"tenant_failing\", \"destination_down\"]\nwebhook = { url = \"http://127.0.0.1:9/hook\" }\n").unwrap();
        let r = &c.notifications.rules[0];
        assert!(!r.alerts);
        assert!(r.events.tenant_failing && r.events.destination_down && !r.events.queue_full);
    }

    /// Mistakes are errors at their line, and never repeat a secret.
    #[test]
    fn mistakes_are_refused_at_their_line() {
        let base_lines = BASE.lines().count();
        for (extra, line, says) in [
            ("[[notification]]\nname = \"x\"\nemail = { to = [\"a@example.com\"] }\n", 3, "add an [smtp] block"),
            ("[[notification]]\nname = \"x\"\n", 1, "needs email"),
            ("[[notification]]\nname = \"x\"\ncolour = \"red\"\nwebhook = { url = \"https://h/\" }\n", 3, "unknown field `colour`"),
            ("[[notification]]\nname = \"x\"\nwebhook = { url = \"http://hooks.example.com/x\" }\n", 3, "must be https://"),
            ("[[notification]]\nname = \"x\"\nwebhook = { url = \"https://h/\", shape = \"discord\" }\n", 3, "shape is \"discord\""),
            ("[[notification]]\nname = \"x\"\ntitle_regex = \"(\"\nwebhook = { url = \"https://h/\" }\n", 3, "not a regular expression"),
            ("[[notification]]\nname = \"x\"\nevents = [\"tenant_fail\"]\nwebhook = { url = \"https://h/\" }\n", 3, "is not an event"),
            ("[[notification]]\nname = \"x\"\ntenants = [\"nobody\"]\nwebhook = { url = \"https://h/\" }\n", 3, "which no [[tenant]] block defines"),
            ("[[notification]]\nname = \"x\"\nwindow = \"2h\"\nwebhook = { url = \"https://h/\" }\n", 3, "window is \"2h\""),
            ("[[notification]]\nname = \"x\"\nmax_per_hour = 0\nwebhook = { url = \"https://h/\" }\n", 3, "at least 1"),
            ("[[notification]]\nname = \"x\"\nwebhook = { url = \"https://h/\", headers = { Authorization = \"Bearer abc123\" } }\n", 3, "cannot be written in the configuration"),
            ("[smtp]\nserver = \"mail.example.com\"\nfrom = \"not an address\"\n", 3, "not an e-mail address"),
            ("[smtp]\nserver = \"mail.example.com\"\ntls = \"none\"\nfrom = \"a@example.com\"\nusername = \"u\"\npassword = { env = \"DB_NOTIFY_TEST_SECRET\" }\n", 1, "in clear"),
        ] {
            let e = match load(extra) {
                Ok(_) => panic!("accepted:\n{extra}"),
                Err(e) => e,
            };
            let text = e.to_string();
            assert!(text.contains(says), "{extra}: {text}");
            assert_eq!(e.line, Some(base_lines + line), "{extra}: {text}");
            assert!(!text.contains("abc123") && !text.contains("pw-never-shown"), "{text}");
        }
    }
}
