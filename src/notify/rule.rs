//! `[[notification]]` rules: which alerts and which health events a rule takes, and what it
//! knows of an alert (issue 11 §1, §3).
//!
//! Defender's own e-mail rules filter by device group and severity only and are set per
//! customer tenant (defender-api.md §4.4); a rule here spans every tenant and also filters by
//! category, service and detection source, status, MITRE technique and title.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::alert::{Alert, EvidenceDetail, Severity};
use crate::event::Event;
use crate::source::{Cloud, SecretString};

/// Which updates of an alert a rule notifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Updates {
    /// New alerts only (the default, as Defender's own mails).
    None,
    /// New alerts, and an alert whose status changed (new → inProgress → resolved).
    Status,
    /// Every new version.
    All,
}

/// The health events a rule takes (issue 11 §5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthEvents {
    pub tenant_failing: bool,
    pub tenant_recovered: bool,
    pub destination_down: bool,
    pub destination_recovered: bool,
    pub dead_letters: bool,
    pub queue_full: bool,
    pub credential_expiring: bool,
}

/// The names `events = [...]` takes.
pub const EVENT_NAMES: &[&str] = &[
    "tenant_failing",
    "tenant_recovered",
    "destination_down",
    "destination_recovered",
    "dead_letters",
    "queue_full",
    "credential_expiring",
];

impl HealthEvents {
    pub fn set(&mut self, name: &str) -> bool {
        let slot = match name {
            "tenant_failing" => &mut self.tenant_failing,
            "tenant_recovered" => &mut self.tenant_recovered,
            "destination_down" => &mut self.destination_down,
            "destination_recovered" => &mut self.destination_recovered,
            "dead_letters" => &mut self.dead_letters,
            "queue_full" => &mut self.queue_full,
            "credential_expiring" => &mut self.credential_expiring,
            _ => return false,
        };
        *slot = true;
        true
    }

    pub fn any(&self) -> bool {
        *self != HealthEvents::default()
    }
}

/// How a webhook body is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// defender-bridge's own JSON (README "Notifications", versioned by `schema`).
    Generic,
    /// A Microsoft Teams Workflows webhook: a message with an Adaptive Card.
    Teams,
    /// A Slack incoming webhook (or Mattermost, Rocket.Chat): `text` and `blocks`.
    Slack,
}

/// What a rule does with a digest.
#[derive(Debug, Clone)]
pub enum Action {
    Email {
        to: Vec<lettre::message::Mailbox>,
        cc: Vec<lettre::message::Mailbox>,
    },
    Webhook {
        /// The whole URL is a secret for Teams and Slack (it carries the signature).
        url: SecretString,
        shape: Shape,
        /// Header names and their secret values.
        headers: Vec<(String, SecretString)>,
    },
}

impl Action {
    /// The action's name in logs, metrics and `notify-test`: "email" or "webhook".
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Email { .. } => "email",
            Action::Webhook { .. } => "webhook",
        }
    }

    /// Where it goes, without secrets: the recipients, or the webhook's host.
    pub fn target(&self) -> String {
        match self {
            Action::Email { to, cc } => to
                .iter()
                .chain(cc)
                .map(|m| m.email.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            Action::Webhook { url, .. } => url::Url::parse(url.expose())
                .ok()
                .and_then(|u| u.host_str().map(|h| format!("{}://{h}/…", u.scheme())))
                .unwrap_or_else(|| "(webhook)".to_string()),
        }
    }
}

/// One validated `[[notification]]` rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub tenants: Option<HashSet<String>>,
    pub min_severity: Option<Severity>,
    /// Lower case, as every list below: matching ignores case.
    pub device_groups: Vec<String>,
    pub categories: Vec<String>,
    pub service_sources: Vec<String>,
    pub detection_sources: Vec<String>,
    pub statuses: Vec<String>,
    /// "T1059" also takes its sub-techniques ("T1059.001").
    pub mitre_techniques: Vec<String>,
    pub title_contains: Option<String>,
    pub title_regex: Option<regex::Regex>,
    pub updates: Updates,
    /// An alert created longer ago than this when first seen (a back-fill, the first start's
    /// look-back) does not notify.
    pub max_age: Duration,
    pub alerts: bool,
    pub events: HealthEvents,
    pub failing_polls: u32,
    pub down_for: Duration,
    pub queue_fill_percent: u8,
    pub include_device_user: bool,
    pub window: Duration,
    pub max_per_hour: u32,
    pub actions: Vec<Action>,
}

/// What changed in an alert, as the notifier sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    New,
    Status,
    Update,
}

impl Rule {
    /// Whether the alert (of the tenant named in `facts`) goes in this rule's digest.
    pub fn takes_alert(&self, facts: &AlertFacts, now: DateTime<Utc>) -> bool {
        if !self.alerts {
            return false;
        }
        match (self.updates, facts.change) {
            (_, Change::New) => {
                let created = facts.created.or(facts.first_activity).or(facts.last_update);
                let age = created.map_or(chrono::Duration::zero(), |c| now - c);
                if age.to_std().is_ok_and(|a| a > self.max_age) {
                    return false;
                }
            }
            (Updates::Status | Updates::All, Change::Status) | (Updates::All, Change::Update) => {}
            _ => return false,
        }
        let any = |wanted: &[String], have: Option<&str>| {
            wanted.is_empty()
                || have.is_some_and(|h| wanted.iter().any(|w| w.eq_ignore_ascii_case(h)))
        };
        self.tenants
            .as_ref()
            .is_none_or(|t| t.contains(&facts.tenant))
            && self
                .min_severity
                .as_ref()
                .is_none_or(|m| Severity::parse(&facts.severity).rank() >= m.rank())
            && (self.device_groups.is_empty()
                || facts
                    .device_groups
                    .iter()
                    .any(|g| self.device_groups.iter().any(|w| w.eq_ignore_ascii_case(g))))
            && any(&self.categories, facts.category.as_deref())
            && any(&self.service_sources, facts.service_source.as_deref())
            && any(&self.detection_sources, facts.detection_source.as_deref())
            && any(&self.statuses, facts.status.as_deref())
            && (self.mitre_techniques.is_empty()
                || facts.mitre_techniques.iter().any(|t| {
                    self.mitre_techniques.iter().any(|w| {
                        let t = t.to_ascii_lowercase();
                        t == *w
                            || t.strip_prefix(w.as_str())
                                .is_some_and(|r| r.starts_with('.'))
                    })
                }))
            && self.title_contains.as_ref().is_none_or(|s| {
                facts
                    .title
                    .as_deref()
                    .is_some_and(|t| t.to_lowercase().contains(s.as_str()))
            })
            && self
                .title_regex
                .as_ref()
                .is_none_or(|r| facts.title.as_deref().is_some_and(|t| r.is_match(t)))
    }

    /// Whether a health event (as such: the thresholds in time are the notifier's) is one this
    /// rule takes.
    pub fn takes_event(&self, event: &Event) -> bool {
        if let Some(t) = event.tenant() {
            if self.tenants.as_ref().is_some_and(|set| !set.contains(t)) {
                return false;
            }
        }
        let e = &self.events;
        match event {
            Event::PollFailed { failures, .. } => {
                e.tenant_failing && *failures == self.failing_polls
            }
            Event::PollRecovered { failures, .. } => {
                e.tenant_recovered && *failures >= self.failing_polls
            }
            Event::CredentialExpiring { .. } => e.credential_expiring,
            Event::DestinationDown { .. } => e.destination_down,
            Event::DestinationUp { .. } => e.destination_recovered,
            Event::DeadLettered { .. } => e.dead_letters,
            Event::QueueFill { percent } => e.queue_full && *percent >= self.queue_fill_percent,
        }
    }
}

/// What a notification says about one alert: read once from the queued record, kept in the
/// pending digest (so it survives a restart), and shown in every message shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertFacts {
    pub tenant: String,
    pub tenant_id: String,
    pub id: String,
    pub change: Change,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub severity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mitre_techniques: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_activity: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<DateTime<Utc>>,
    pub alert_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_url: Option<String>,
}

/// Most devices or users kept per alert: a notification names them, the SIEM has the rest.
const MAX_NAMES: usize = 5;

impl AlertFacts {
    /// The facts of `alert`, a version of an alert of `tenant` (`tenant_id`, `cloud`).
    pub fn of(alert: &Alert<'_>, tenant: &str, tenant_id: &str, cloud: Cloud) -> AlertFacts {
        let text = |t: &Option<std::borrow::Cow<'_, str>>| t.as_ref().map(|t| t.to_string());
        let time =
            |t: &Option<crate::alert::Timestamp>| t.as_ref().and_then(|t| t.valid().copied());
        let mut device_groups: Vec<String> = Vec::new();
        let mut devices: Vec<String> = Vec::new();
        let mut users: Vec<String> = Vec::new();
        let push = |list: &mut Vec<String>, v: Option<&str>| {
            if let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) {
                if list.len() < MAX_NAMES && !list.iter().any(|x| x.eq_ignore_ascii_case(v)) {
                    list.push(v.to_string());
                }
            }
        };
        push(&mut device_groups, alert.rbac_group_name.as_deref());
        for e in &alert.evidence {
            match &e.detail {
                EvidenceDetail::Device(d) => {
                    push(&mut device_groups, d.rbac_group_name.as_deref());
                    push(
                        &mut devices,
                        d.device_dns_name.as_deref().or(d.host_name.as_deref()),
                    );
                }
                EvidenceDetail::User(u) => {
                    let a = &u.user_account;
                    let name = a
                        .user_principal_name
                        .as_deref()
                        .map(str::to_string)
                        .or_else(
                            || match (a.domain_name.as_deref(), a.account_name.as_deref()) {
                                (Some(d), Some(n)) => Some(format!("{d}\\{n}")),
                                (None, Some(n)) => Some(n.to_string()),
                                _ => None,
                            },
                        );
                    push(&mut users, name.as_deref());
                }
                _ => {}
            }
        }
        let tid = alert.tenant_id.as_deref().unwrap_or(tenant_id);
        let alert_url = match alert.alert_web_url.as_deref() {
            Some(u) if u.contains("tid=") => u.to_string(),
            Some(u) if u.starts_with("https://") => {
                format!("{u}{}tid={tid}", if u.contains('?') { '&' } else { '?' })
            }
            _ => cloud.alert_link(&alert.id, tid),
        };
        let incident_url = match (
            alert.incident_web_url.as_deref(),
            alert.incident_id.as_deref(),
        ) {
            (Some(u), _) if u.contains("tid=") => Some(u.to_string()),
            (Some(u), _) if u.starts_with("https://") => Some(format!(
                "{u}{}tid={tid}",
                if u.contains('?') { '&' } else { '?' }
            )),
            (_, Some(id)) if !id.is_empty() => {
                Some(format!("{}/incidents/{id}?tid={tid}", cloud.portal()))
            }
            _ => None,
        };
        AlertFacts {
            tenant: tenant.to_string(),
            tenant_id: tenant_id.to_string(),
            id: alert.id.to_string(),
            change: Change::New,
            previous_status: None,
            title: text(&alert.title),
            severity: alert.severity.as_str().to_string(),
            status: text(&alert.status),
            category: text(&alert.category),
            service_source: text(&alert.service_source),
            detection_source: text(&alert.detection_source),
            device_groups,
            devices,
            users,
            mitre_techniques: alert
                .mitre_techniques
                .iter()
                .map(|t| t.to_string())
                .collect(),
            created: time(&alert.created_date_time),
            first_activity: time(&alert.first_activity_date_time),
            last_activity: time(&alert.last_activity_date_time),
            last_update: time(&alert.last_update_date_time),
            alert_url,
            incident_url,
        }
    }

    /// Leaves out device and user names (a rule's `include_device_user = false`, as
    /// Defender's "Include device information" option: mail may leave the data's region).
    pub fn without_device_user(mut self) -> AlertFacts {
        self.devices.clear();
        self.users.clear();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn rule(body: &str) -> Rule {
        std::env::set_var("DB_RULE_TEST_SECRET", "x");
        let src = format!(
            "[[tenant]]\nname = \"contoso\"\ntenant_id = \"t1\"\nclient_id = \"c\"\nclient_secret = {{ env = \"DB_RULE_TEST_SECRET\" }}\n[[tenant]]\nname = \"fabrikam\"\ntenant_id = \"t2\"\nclient_id = \"c\"\nclient_secret = {{ env = \"DB_RULE_TEST_SECRET\" }}\n[[notification]]\nname = \"r\"\nwebhook = {{ url = \"https://h/\" }}\n{body}\n"
        );
        Config::from_toml("c.toml", &src)
            .unwrap()
            .notifications
            .rules
            .remove(0)
    }

    /// A Graph alert with device evidence in group "Servers", a user, T1059.001.
    fn facts(change: Change) -> AlertFacts {
        let json = r##"{"id":"da1","tenantId":"t1","title":"Suspicious PowerShell download","severity":"high","status":"new",
            "category":"Execution","serviceSource":"microsoftDefenderForEndpoint","detectionSource":"antivirus",
            "mitreTechniques":["T1059.001"],"createdDateTime":"2026-12-01T10:00:00Z","lastUpdateDateTime":"2026-12-01T10:05:00Z",
            "evidence":[{"@odata.type":"#microsoft.graph.security.deviceEvidence","deviceDnsName":"ws1.contoso.local","rbacGroupName":"Servers"},
                        {"@odata.type":"#microsoft.graph.security.userEvidence","userAccount":{"accountName":"alice","domainName":"CONTOSO"}}]}"##;
        let a = Alert::from_json(json).unwrap();
        let mut f = AlertFacts::of(&a, "contoso", "t1", Cloud::Commercial);
        f.change = change;
        f
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn what_an_alert_tells_a_notification() {
        let f = facts(Change::New);
        assert_eq!(f.device_groups, ["Servers"]);
        assert_eq!(f.devices, ["ws1.contoso.local"]);
        assert_eq!(f.users, ["CONTOSO\\alice"]);
        assert_eq!(
            f.alert_url,
            "https://security.microsoft.com/alerts/da1?tid=t1"
        );
        let private = f.without_device_user();
        assert!(private.devices.is_empty() && private.users.is_empty());
    }

    #[test]
    fn rules_match_as_their_filters_say() {
        let soon = at("2026-12-01T11:00:00Z");
        for (body, change, now, want) in [
            ("", Change::New, soon, true),
            ("", Change::Update, soon, false),
            ("", Change::Status, soon, false),
            ("updates = \"status\"", Change::Status, soon, true),
            ("updates = \"status\"", Change::Update, soon, false),
            ("updates = \"all\"", Change::Update, soon, true),
            // First seen two days after it was created: a back-fill, not news.
            ("", Change::New, at("2026-12-03T10:00:01Z"), false),
            (
                "max_age = \"7d\"",
                Change::New,
                at("2026-12-03T10:00:01Z"),
                true,
            ),
            ("tenants = [\"contoso\"]", Change::New, soon, true),
            ("tenants = [\"fabrikam\"]", Change::New, soon, false),
            ("min_severity = \"high\"", Change::New, soon, true),
            ("min_severity = \"HIGH\"", Change::New, soon, true),
            ("device_groups = [\"servers\"]", Change::New, soon, true),
            (
                "device_groups = [\"Workstations\"]",
                Change::New,
                soon,
                false,
            ),
            ("categories = [\"execution\"]", Change::New, soon, true),
            ("categories = [\"Ransomware\"]", Change::New, soon, false),
            (
                "service_sources = [\"microsoftDefenderForEndpoint\"]",
                Change::New,
                soon,
                true,
            ),
            ("detection_sources = [\"edr\"]", Change::New, soon, false),
            ("statuses = [\"new\"]", Change::New, soon, true),
            ("mitre_techniques = [\"T1059\"]", Change::New, soon, true),
            (
                "mitre_techniques = [\"T1059.001\"]",
                Change::New,
                soon,
                true,
            ),
            ("mitre_techniques = [\"T105\"]", Change::New, soon, false),
            ("title_contains = \"powershell\"", Change::New, soon, true),
            ("title_contains = \"mimikatz\"", Change::New, soon, false),
            (
                "title_regex = \"(?i)power\\\\s*shell\"",
                Change::New,
                soon,
                true,
            ),
            ("title_regex = \"^Malware\"", Change::New, soon, false),
            ("events = [\"queue_full\"]", Change::New, soon, false),
            (
                "events = [\"queue_full\"]\nalerts = true",
                Change::New,
                soon,
                true,
            ),
        ] {
            assert_eq!(
                rule(body).takes_alert(&facts(change), now),
                want,
                "{body} {change:?}"
            );
        }
    }

    #[test]
    fn health_events_match_their_thresholds() {
        let r = rule("events = [\"tenant_failing\", \"tenant_recovered\", \"queue_full\"]\nfailing_polls = 2\nqueue_fill_percent = 90\ntenants = [\"contoso\"]");
        let failed = |tenant: &str, n| Event::PollFailed {
            tenant: tenant.into(),
            failures: n,
            retry_in_secs: 1,
            reason: "x".into(),
        };
        assert!(!r.takes_event(&failed("contoso", 1)));
        assert!(r.takes_event(&failed("contoso", 2)));
        // Once per outage, not at every failed poll after.
        assert!(!r.takes_event(&failed("contoso", 3)));
        assert!(!r.takes_event(&failed("fabrikam", 2)));
        assert!(r.takes_event(&Event::PollRecovered {
            tenant: "contoso".into(),
            failures: 5
        }));
        assert!(!r.takes_event(&Event::PollRecovered {
            tenant: "contoso".into(),
            failures: 1
        }));
        assert!(!r.takes_event(&Event::QueueFill { percent: 89 }));
        assert!(r.takes_event(&Event::QueueFill { percent: 90 }));
        assert!(!r.takes_event(&Event::DestinationDown {
            destination: "d".into(),
            reason: "r".into()
        }));
    }
}
