//! What a notification says: a digest of a rule's matched alerts and health events, written as
//! an e-mail (plain text and HTML) or as a webhook body (generic JSON, a Teams Adaptive Card, a
//! Slack message). Like Defender's own mails (defender-api.md §4.4: organisation name,
//! tenant-specific portal link, device information optional), and with counts by tenant and
//! severity for a digest.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::rule::{AlertFacts, Change};
use crate::event::Event;

/// One thing a rule matched, as kept in its pending digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Item {
    Alert(Box<AlertFacts>),
    Health { at: DateTime<Utc>, event: Event },
}

/// Alerts listed one by one in a message; the rest are counted.
pub const LIST_MAX: usize = 50;
/// Listed in a Slack message (50 blocks at most, two per alert) and a Teams card (about 28 KB).
const CHAT_LIST_MAX: usize = 10;

/// (tenant, alerts, [(severity, alerts)] from the highest severity).
type TenantCount = (String, u64, Vec<(String, u64)>);

/// A rule's digest, as it is sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Digest {
    pub rule: String,
    /// The first [`LIST_MAX`] alerts, in the order they came.
    pub alerts: Vec<AlertFacts>,
    pub alert_count: u64,
    /// (tenant, severity) → alerts.
    pub counts: BTreeMap<(String, String), u64>,
    pub health: Vec<(DateTime<Utc>, Event)>,
    /// Alerts that waited because the rule's `max_per_hour` was reached.
    pub folded: u64,
    pub max_per_hour: u32,
    /// A `notify-test` message.
    pub test: bool,
}

impl Digest {
    pub fn add(&mut self, item: Item) {
        match item {
            Item::Alert(a) => {
                let a = *a;
                self.alert_count += 1;
                *self
                    .counts
                    .entry((a.tenant.clone(), a.severity.clone()))
                    .or_default() += 1;
                if self.alerts.len() < LIST_MAX {
                    self.alerts.push(a);
                }
            }
            Item::Health { at, event } => {
                if self.health.len() < LIST_MAX {
                    self.health.push((at, event));
                }
            }
        }
    }

    /// Appends `later` (what came while this one waited to be sent again).
    pub fn merge(&mut self, later: Digest) {
        for a in later.alerts {
            if self.alerts.len() < LIST_MAX {
                self.alerts.push(a);
            }
        }
        self.alert_count += later.alert_count;
        for (k, n) in later.counts {
            *self.counts.entry(k).or_default() += n;
        }
        for h in later.health {
            if self.health.len() < LIST_MAX {
                self.health.push(h);
            }
        }
        self.folded += later.folded;
    }

    pub fn is_empty(&self) -> bool {
        self.alert_count == 0 && self.health.is_empty()
    }

    /// Counts by tenant: (tenant, total, [(severity, n)] from the highest severity).
    fn by_tenant(&self) -> Vec<TenantCount> {
        let mut out: BTreeMap<&str, Vec<(String, u64)>> = BTreeMap::new();
        for ((t, s), n) in &self.counts {
            out.entry(t).or_default().push((s.clone(), *n));
        }
        out.into_iter()
            .map(|(t, mut sev)| {
                sev.sort_by_key(|(s, _)| {
                    std::cmp::Reverse(crate::alert::Severity::parse(s).rank())
                });
                (t.to_string(), sev.iter().map(|(_, n)| n).sum(), sev)
            })
            .collect()
    }

    /// Counts by severity, highest first.
    fn by_severity(&self) -> Vec<(String, u64)> {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for ((_, s), n) in &self.counts {
            *m.entry(s.clone()).or_default() += n;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by_key(|(s, _)| std::cmp::Reverse(crate::alert::Severity::parse(s).rank()));
        v
    }

    fn tenants(&self) -> Vec<String> {
        self.by_tenant().into_iter().map(|(t, _, _)| t).collect()
    }

    /// The subject of the mail, the title of the card and the Slack header.
    pub fn subject(&self) -> String {
        let mark = if self.test {
            "[defender-bridge TEST] "
        } else {
            "[defender-bridge] "
        };
        let body = match (self.alert_count, self.health.len()) {
            (1, _) => {
                let a = &self.alerts[0];
                format!(
                    "{} alert at {}: {}",
                    title_case(&a.severity),
                    a.tenant,
                    a.title.as_deref().unwrap_or("(no title)")
                )
            }
            (0, 1) => self.health[0].1.text(),
            (0, n) => format!("{n} collector events"),
            (n, h) => {
                let sev: Vec<String> = self
                    .by_severity()
                    .iter()
                    .map(|(s, c)| format!("{c} {s}"))
                    .collect();
                let tenants = self.tenants();
                let at = if tenants.len() <= 3 {
                    tenants.join(", ")
                } else {
                    format!("{} tenants", tenants.len())
                };
                let mut s = format!("{n} alerts ({}) at {at}", sev.join(", "));
                if h > 0 {
                    let _ = write!(s, ", and {h} collector event(s)");
                }
                s
            }
        };
        // A subject is one line (RFC 5322 §2.2: no CR or LF in a header's value).
        let one_line: String = format!("{mark}{body}")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        truncate(&one_line, 200)
    }

    fn summary_lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.test {
            out.push(format!(
                "This is a test message of notification rule \"{}\" (defender-bridge notify-test). Nothing happened in any tenant.",
                self.rule
            ));
        }
        if self.alert_count > 0 {
            out.push(format!("{} alert(s):", self.alert_count));
            for (t, n, sev) in self.by_tenant() {
                let parts: Vec<String> = sev.iter().map(|(s, c)| format!("{s} {c}")).collect();
                out.push(format!("  {t}: {n} ({})", parts.join(", ")));
            }
        }
        if self.folded > 0 {
            out.push(format!(
                "{} of these alerts waited for this message: the rule sends at most {} message(s) an hour (max_per_hour).",
                self.folded, self.max_per_hour
            ));
        }
        out
    }

    /// The plain-text part of the mail.
    pub fn text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{}\n", self.subject());
        for l in self.summary_lines() {
            let _ = writeln!(s, "{l}");
        }
        for a in &self.alerts {
            let _ = writeln!(s);
            let _ = writeln!(
                s,
                "{} | {} | {}",
                title_case(&a.severity),
                a.tenant,
                a.title.as_deref().unwrap_or("(no title)")
            );
            for (k, v) in facts(a) {
                let _ = writeln!(s, "  {k}: {v}");
            }
        }
        let more = self.alert_count.saturating_sub(self.alerts.len() as u64);
        if more > 0 {
            let _ = writeln!(s, "\n… and {more} more alert(s): your SIEM has every one.");
        }
        if !self.health.is_empty() {
            let _ = writeln!(s, "\nCollector health:");
            for (at, e) in &self.health {
                let _ = writeln!(
                    s,
                    "  {} {}",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    e.text()
                );
            }
        }
        let _ = writeln!(
            s,
            "\n-- \ndefender-bridge, notification rule \"{}\"",
            self.rule
        );
        s
    }

    /// The HTML part of the mail.
    pub fn html(&self) -> String {
        let mut s = String::from(
            "<!DOCTYPE html><html><body style=\"font-family:Segoe UI,Arial,sans-serif\">",
        );
        let _ = write!(s, "<h2>{}</h2>", esc(&self.subject()));
        for l in self.summary_lines() {
            let _ = write!(s, "<p>{}</p>", esc(&l));
        }
        for a in &self.alerts {
            let _ = write!(
                s,
                "<h3><a href=\"{}\">{}</a></h3><p>{} &middot; {}</p><table>",
                esc(&a.alert_url),
                esc(a.title.as_deref().unwrap_or("(no title)")),
                esc(&title_case(&a.severity)),
                esc(&a.tenant)
            );
            for (k, v) in facts(a) {
                if k == "Alert" || k == "Incident" {
                    let _ = write!(
                        s,
                        "<tr><td>{}</td><td><a href=\"{}\">{}</a></td></tr>",
                        esc(k),
                        esc(&v),
                        esc(&v)
                    );
                } else {
                    let _ = write!(s, "<tr><td>{}</td><td>{}</td></tr>", esc(k), esc(&v));
                }
            }
            s.push_str("</table>");
        }
        let more = self.alert_count.saturating_sub(self.alerts.len() as u64);
        if more > 0 {
            let _ = write!(
                s,
                "<p>… and {more} more alert(s): your SIEM has every one.</p>"
            );
        }
        if !self.health.is_empty() {
            s.push_str("<h3>Collector health</h3><ul>");
            for (at, e) in &self.health {
                let _ = write!(
                    s,
                    "<li>{} {}</li>",
                    esc(&at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
                    esc(&e.text())
                );
            }
            s.push_str("</ul>");
        }
        let _ = write!(
            s,
            "<p style=\"color:#666\">defender-bridge, notification rule \"{}\"</p></body></html>",
            esc(&self.rule)
        );
        s
    }

    /// The generic webhook body (README "Notifications": schema `defender-bridge.notification/1`).
    pub fn generic(&self) -> Value {
        let health: Vec<Value> = self
            .health
            .iter()
            .map(|(at, e)| {
                let mut v = serde_json::to_value(e).unwrap_or(Value::Null);
                if let Value::Object(m) = &mut v {
                    m.insert("at".into(), json!(at));
                    m.insert("text".into(), json!(e.text()));
                }
                v
            })
            .collect();
        json!({
            "schema": "defender-bridge.notification/1",
            "rule": self.rule,
            "test": self.test,
            "subject": self.subject(),
            "alertCount": self.alert_count,
            "folded": self.folded,
            "counts": self.counts.iter().map(|((t, s), n)| json!({"tenant": t, "severity": s, "count": n})).collect::<Vec<_>>(),
            "alerts": self.alerts,
            "moreAlerts": self.alert_count.saturating_sub(self.alerts.len() as u64),
            "health": health,
        })
    }

    /// A Microsoft Teams Workflows webhook body: a message with one Adaptive Card 1.4 (Teams
    /// renders up to 1.5; "Post to a channel when a webhook request is received" takes this
    /// envelope). Elements: TextBlock, FactSet, Container, ActionSet, Action.OpenUrl
    /// (adaptivecards.io/explorer).
    pub fn teams(&self) -> Value {
        let mut body = vec![json!({
            "type": "TextBlock", "text": self.subject(), "size": "Large", "weight": "Bolder", "wrap": true
        })];
        for l in self.summary_lines() {
            body.push(
                json!({"type": "TextBlock", "text": l.trim(), "wrap": true, "spacing": "Small"}),
            );
        }
        for a in self.alerts.iter().take(CHAT_LIST_MAX) {
            let mut items = vec![json!({
                "type": "TextBlock",
                "text": format!("{} · {} · {}", title_case(&a.severity), a.tenant, a.title.as_deref().unwrap_or("(no title)")),
                "weight": "Bolder", "wrap": true
            })];
            let fs: Vec<Value> = facts(a)
                .into_iter()
                .filter(|(k, _)| *k != "Alert" && *k != "Incident")
                .map(|(k, v)| json!({"title": k, "value": v}))
                .collect();
            if !fs.is_empty() {
                items.push(json!({"type": "FactSet", "facts": fs}));
            }
            let mut links =
                vec![json!({"type": "Action.OpenUrl", "title": "Open alert", "url": a.alert_url})];
            if let Some(u) = &a.incident_url {
                links.push(json!({"type": "Action.OpenUrl", "title": "Open incident", "url": u}));
            }
            items.push(json!({"type": "ActionSet", "actions": links}));
            body.push(json!({"type": "Container", "separator": true, "spacing": "Medium", "items": items}));
        }
        let more = self
            .alert_count
            .saturating_sub(self.alerts.len().min(CHAT_LIST_MAX) as u64);
        if more > 0 {
            body.push(json!({"type": "TextBlock", "text": format!("… and {more} more alert(s): your SIEM has every one."), "wrap": true, "isSubtle": true}));
        }
        if !self.health.is_empty() {
            body.push(json!({"type": "TextBlock", "text": "Collector health", "weight": "Bolder", "separator": true}));
            for (at, e) in self.health.iter().take(CHAT_LIST_MAX) {
                body.push(json!({"type": "TextBlock", "text": format!("{} {}", at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), e.text()), "wrap": true, "spacing": "Small"}));
            }
        }
        body.push(json!({"type": "TextBlock", "text": format!("defender-bridge, rule \"{}\"", self.rule), "isSubtle": true, "size": "Small", "wrap": true}));
        json!({
            "type": "message",
            "attachments": [{
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": null,
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body
                }
            }]
        })
    }

    /// A Slack incoming-webhook body: `text` (the notification's fallback) and Block Kit
    /// `blocks` within Slack's limits (api.slack.com/reference/block-kit/blocks: 50 blocks, a
    /// header's text 150 characters, a section's 3000, a button's 75, a URL 3000).
    pub fn slack(&self) -> Value {
        let mut blocks = vec![json!({
            "type": "header",
            "text": {"type": "plain_text", "text": truncate(&self.subject(), 150), "emoji": false}
        })];
        let summary = self.summary_lines().join("\n");
        if !summary.is_empty() {
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&mrkdwn(&summary), 3000)}}));
        }
        for a in self.alerts.iter().take(CHAT_LIST_MAX) {
            let mut t = format!(
                "*<{}|{}>*\n{} · {}",
                slack_url(&a.alert_url),
                mrkdwn(&truncate(a.title.as_deref().unwrap_or("(no title)"), 500)),
                mrkdwn(&title_case(&a.severity)),
                mrkdwn(&a.tenant)
            );
            for (k, v) in facts(a) {
                if k == "Alert" {
                    continue;
                }
                if k == "Incident" {
                    let _ = write!(t, "\n{k}: <{}|open>", slack_url(&v));
                } else {
                    let _ = write!(t, "\n{k}: {}", mrkdwn(&truncate(&v, 300)));
                }
            }
            blocks.push(json!({"type": "divider"}));
            blocks.push(
                json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&t, 3000)}}),
            );
        }
        let more = self
            .alert_count
            .saturating_sub(self.alerts.len().min(CHAT_LIST_MAX) as u64);
        if more > 0 {
            blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("… and {more} more alert(s): your SIEM has every one.")}]}));
        }
        if !self.health.is_empty() {
            let lines: Vec<String> = self
                .health
                .iter()
                .take(CHAT_LIST_MAX)
                .map(|(at, e)| {
                    format!(
                        "• {} {}",
                        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        mrkdwn(&e.text())
                    )
                })
                .collect();
            blocks.push(json!({"type": "divider"}));
            blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": truncate(&format!("*Collector health*\n{}", lines.join("\n")), 3000)}}));
        }
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn(&format!("defender-bridge, rule \"{}\"", self.rule))}]}));
        json!({"text": truncate(&self.subject(), 3000), "blocks": blocks})
    }
}

/// The lines under an alert: what an analyst reads before opening the portal.
fn facts(a: &AlertFacts) -> Vec<(&'static str, String)> {
    let mut v: Vec<(&'static str, String)> = Vec::new();
    let time =
        |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let status = match (&a.change, &a.previous_status, &a.status) {
        (Change::Status, Some(p), Some(s)) => Some(format!("{s} (was {p})")),
        (_, _, s) => s.clone(),
    };
    let mut push = |k: &'static str, val: Option<String>| {
        if let Some(val) = val.filter(|x| !x.is_empty()) {
            v.push((k, val));
        }
    };
    push("Status", status);
    push("Category", a.category.clone());
    push(
        "Source",
        match (&a.service_source, &a.detection_source) {
            (Some(s), Some(d)) => Some(format!("{s} / {d}")),
            (s, d) => s.clone().or(d.clone()),
        },
    );
    push(
        "Device group",
        (!a.device_groups.is_empty()).then(|| a.device_groups.join(", ")),
    );
    push(
        "Device",
        (!a.devices.is_empty()).then(|| a.devices.join(", ")),
    );
    push("User", (!a.users.is_empty()).then(|| a.users.join(", ")));
    push(
        "MITRE",
        (!a.mitre_techniques.is_empty()).then(|| a.mitre_techniques.join(", ")),
    );
    push("First activity", time(&a.first_activity));
    push("Last activity", time(&a.last_activity));
    push("Alert", Some(a.alert_url.clone()));
    push("Incident", a.incident_url.clone());
    v
}

fn title_case(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// At most `max` characters, with "…" when cut.
fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// HTML text and attribute escaping.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Slack's mrkdwn escaping: only `&`, `<` and `>` (api.slack.com/reference/surfaces/formatting
/// "Escaping text").
fn mrkdwn(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A URL inside `<url|text>`: `|` and `>` would end it.
fn slack_url(u: &str) -> String {
    truncate(
        &u.replace('|', "%7C")
            .replace('>', "%3E")
            .replace('<', "%3C"),
        2000,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(tenant: &str, severity: &str, title: &str) -> AlertFacts {
        AlertFacts {
            tenant: tenant.into(),
            tenant_id: "t".into(),
            id: format!("da-{title}"),
            change: Change::New,
            previous_status: None,
            title: Some(title.into()),
            severity: severity.into(),
            status: Some("new".into()),
            category: Some("Execution".into()),
            service_source: None,
            detection_source: None,
            device_groups: vec![],
            devices: vec!["host<1>".into()],
            users: vec![],
            mitre_techniques: vec!["T1059.001".into()],
            created: None,
            first_activity: None,
            last_activity: None,
            last_update: None,
            alert_url: "https://security.microsoft.com/alerts/da-1?tid=t".into(),
            incident_url: None,
        }
    }

    #[test]
    fn a_digest_counts_by_tenant_and_severity_and_lists_at_most_its_limit() {
        let mut d = Digest {
            rule: "soc".into(),
            max_per_hour: 12,
            ..Digest::default()
        };
        for i in 0..(LIST_MAX + 5) {
            d.add(Item::Alert(Box::new(alert(
                if i % 2 == 0 { "contoso" } else { "fabrikam" },
                if i % 3 == 0 { "high" } else { "medium" },
                &format!("a{i}"),
            ))));
        }
        assert_eq!(d.alert_count, 55);
        assert_eq!(d.alerts.len(), LIST_MAX);
        assert_eq!(d.counts[&("contoso".into(), "high".into())], 10);
        assert_eq!(
            d.subject(),
            "[defender-bridge] 55 alerts (19 high, 36 medium) at contoso, fabrikam"
        );
        let text = d.text();
        assert!(
            text.contains("  contoso: 28 (high 10, medium 18)"),
            "{text}"
        );
        assert!(text.contains("and 5 more alert(s)"), "{text}");
        // HTML escapes what an alert carries.
        assert!(d.html().contains("host&lt;1&gt;"));
        assert!(!d.html().contains("host<1>"));
    }

    #[test]
    fn a_subject_is_one_line_whatever_the_title_holds() {
        let mut d = Digest::default();
        d.add(Item::Alert(Box::new(alert(
            "contoso",
            "high",
            "evil\r\nBcc: x@y",
        ))));
        assert_eq!(
            d.subject(),
            "[defender-bridge] High alert at contoso: evil  Bcc: x@y"
        );
    }

    #[test]
    fn slack_text_is_escaped_and_within_limits() {
        let mut d = Digest::default();
        d.add(Item::Alert(Box::new(alert(
            "contoso",
            "high",
            &format!("<!channel> & {}", "x".repeat(5000)),
        ))));
        let v = d.slack();
        // header, summary, divider, the alert's section.
        let s = v["blocks"][3]["text"]["text"].as_str().unwrap();
        assert!(s.contains("&lt;!channel&gt; &amp;"), "{s}");
        assert!(s.chars().count() <= 3000);
        assert!(
            v["blocks"][0]["text"]["text"]
                .as_str()
                .unwrap()
                .chars()
                .count()
                <= 150
        );
    }
}
