//! The one alert model that both Defender alert APIs decode into.
//!
//! Microsoft Graph `security/alerts_v2` is the vocabulary (field names, camelCase enum members);
//! Defender for Endpoint `/api/alerts` alerts are translated into it (defender-api.md §3.6), so one
//! format file serves both APIs. The model is tolerant of what the APIs really send: unknown fields
//! are ignored, unknown enum members are kept as text, nulls are absent values, numbers may come as
//! strings and the other way round, and a timestamp that cannot be parsed is kept as text.

#[cfg(test)]
pub(crate) mod fuzz;
mod owned;
mod time;
mod wire;

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

pub use time::Timestamp;

/// Text from the alert's JSON, borrowed from it wherever the JSON string needs no unescaping
/// (nearly always), so that decoding copies almost nothing: allocation was a third of the time
/// from JSON to record (issue #2's throughput target). [`Alert::into_owned`] detaches an alert
/// from the text it borrows.
pub type Text<'a> = Cow<'a, str>;

/// Which alert API: the one a tenant is polled through (defender-api.md §0), and the one an
/// alert came from (recognised by its shape).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// Microsoft Graph `security/alerts_v2`, Microsoft's recommended API (defender-api.md §3.5).
    #[default]
    Graph,
    /// Defender for Endpoint `/api/alerts` (defender-api.md §1; including the 2018/2019 shapes).
    Mde,
}

impl Api {
    pub fn as_str(self) -> &'static str {
        match self {
            Api::Graph => "graph",
            Api::Mde => "mde",
        }
    }
}

impl std::fmt::Display for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Alert severity. Graph: `unknown, informational, low, medium, high`; MDE: `UnSpecified,
/// Informational, Low, Medium, High` (defender-api.md §1.6, §3.2). Anything else is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Severity {
    #[default]
    Unknown,
    Informational,
    Low,
    Medium,
    High,
    Other(String),
}

/// The levels a minimum-severity filter may name, lowest first.
pub static LEVELS: [Severity; 4] = [
    Severity::Informational,
    Severity::Low,
    Severity::Medium,
    Severity::High,
];

impl Severity {
    pub fn parse(s: &str) -> Severity {
        let t = s.trim();
        if t.eq_ignore_ascii_case("informational") {
            Severity::Informational
        } else if t.eq_ignore_ascii_case("low") {
            Severity::Low
        } else if t.eq_ignore_ascii_case("medium") {
            Severity::Medium
        } else if t.eq_ignore_ascii_case("high") {
            Severity::High
        } else if t.eq_ignore_ascii_case("unknown")
            || t.eq_ignore_ascii_case("unspecified")
            || t.is_empty()
        {
            Severity::Unknown
        } else {
            Severity::Other(t.to_string())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Severity::Unknown => "unknown",
            Severity::Informational => "informational",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Other(s) => s,
        }
    }

    /// This level and every higher one of [`LEVELS`] (for a minimum-severity filter).
    pub fn and_above(&self) -> impl Iterator<Item = &'static Severity> + '_ {
        LEVELS.iter().filter(move |s| s.rank() >= self.rank())
    }

    /// The enum member as `api` spells it: Graph camelCase (defender-api.md §3.2), MDE
    /// PascalCase (§1.6).
    pub fn api_name(&self, api: Api) -> &str {
        match (api, self) {
            (Api::Mde, Severity::Unknown) => "UnSpecified",
            (Api::Mde, Severity::Informational) => "Informational",
            (Api::Mde, Severity::Low) => "Low",
            (Api::Mde, Severity::Medium) => "Medium",
            (Api::Mde, Severity::High) => "High",
            _ => self.as_str(),
        }
    }

    /// Rank for "minimum severity" filters: unknown and unrecognised values rank lowest.
    pub fn rank(&self) -> u8 {
        match self {
            Severity::Unknown | Severity::Other(_) => 0,
            Severity::Informational => 1,
            Severity::Low => 2,
            Severity::Medium => 3,
            Severity::High => 4,
        }
    }
}

impl Serialize for Severity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One alert, normalised.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert<'a> {
    pub api: Api,
    pub id: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_alert_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub investigation_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommended_actions: Option<Text<'a>>,
    pub severity: Severity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classification: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub determination: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_source: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_source: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub product_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detector_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_policy_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub investigation_state: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threat_display_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threat_family_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor_display_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mitre_techniques: Vec<Text<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub system_tags: Vec<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub assigned_to: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rbac_group_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alert_web_url: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident_web_url: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_date_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_activity_date_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_activity_date_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_date_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub comments: Vec<Comment<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub evidence: Vec<Evidence<'a>>,
    /// Graph `customDetails` and `additionalData` dictionaries, kept verbatim.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_details: Option<Cow<'a, RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub additional_data: Option<Cow<'a, RawValue>>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Comment<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comment: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_by: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<Timestamp>,
}

/// One evidence item: what all kinds share, and the kind-specific part.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Evidence<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_date_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remediation_status: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection_status: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Text<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Text<'a>>,
    #[serde(flatten)]
    pub detail: EvidenceDetail<'a>,
}

impl Evidence<'_> {
    pub fn kind(&self) -> EvidenceKind {
        self.detail.kind()
    }
}

/// The typed evidence kinds the format files can address; any other kind is kept as raw JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum EvidenceDetail<'a> {
    Device(Box<Device<'a>>),
    File(FileEvidence<'a>),
    Process(Box<Process<'a>>),
    User(UserEvidence<'a>),
    Ip(Ip<'a>),
    Url(Url<'a>),
    Registry(Registry<'a>),
    Mailbox(Mailbox<'a>),
    /// An evidence kind this version does not type (Graph has over 40): never dropped.
    Other {
        /// The kind as the API named it (`@odata.type` without the namespace, or `entityType`).
        name: Text<'a>,
        raw: Cow<'a, RawValue>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvidenceKind {
    Device,
    File,
    Process,
    User,
    Ip,
    Url,
    Registry,
    Mailbox,
    Other,
}

impl EvidenceDetail<'_> {
    pub fn kind(&self) -> EvidenceKind {
        match self {
            EvidenceDetail::Device(_) => EvidenceKind::Device,
            EvidenceDetail::File(_) => EvidenceKind::File,
            EvidenceDetail::Process(_) => EvidenceKind::Process,
            EvidenceDetail::User(_) => EvidenceKind::User,
            EvidenceDetail::Ip(_) => EvidenceKind::Ip,
            EvidenceDetail::Url(_) => EvidenceKind::Url,
            EvidenceDetail::Registry(_) => EvidenceKind::Registry,
            EvidenceDetail::Mailbox(_) => EvidenceKind::Mailbox,
            EvidenceDetail::Other { .. } => EvidenceKind::Other,
        }
    }

    /// The kind's name as format files and the JSON output spell it.
    pub fn name(&self) -> &str {
        match self {
            EvidenceDetail::Device(_) => "device",
            EvidenceDetail::File(_) => "file",
            EvidenceDetail::Process(_) => "process",
            EvidenceDetail::User(_) => "user",
            EvidenceDetail::Ip(_) => "ip",
            EvidenceDetail::Url(_) => "url",
            EvidenceDetail::Registry(_) => "registry",
            EvidenceDetail::Mailbox(_) => "mailbox",
            EvidenceDetail::Other { name, .. } => name,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mde_device_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_ad_device_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_dns_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nt_domain: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns_domain: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_platform: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os_build: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_status: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk_score: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rbac_group_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rbac_group_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub onboarding_status: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defender_av_status: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen_date_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_ip_address: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_external_ip_address: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ip_interfaces: Vec<Text<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logged_on_users: Vec<Account<'a>>,
}

/// Graph `fileDetails`; MDE file and process evidence fill the same fields.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileDetails<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_path: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha1: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_size: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_publisher: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<Text<'a>>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEvidence<'a> {
    pub file_details: FileDetails<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mde_device_id: Option<Text<'a>>,
}

/// Graph `userAccount`; MDE user evidence and `relatedUser` fill the same fields.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Account<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_sid: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_ad_user_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_principal_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Text<'a>>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserEvidence<'a> {
    pub user_account: Account<'a>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Process<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_process_id: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_command_line: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_creation_date_time: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_process_creation_date_time: Option<Timestamp>,
    pub image_file: FileDetails<'a>,
    pub parent_process_image_file: FileDetails<'a>,
    pub user_account: Account<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mde_device_id: Option<Text<'a>>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ip<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country_letter_code: Option<Text<'a>>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Url<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<Text<'a>>,
}

/// Graph `registryKeyEvidence` and `registryValueEvidence`, MDE `Registry` evidence.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Registry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_key: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_hive: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_value_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_value: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry_value_type: Option<Text<'a>>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Mailbox<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<Text<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_address: Option<Text<'a>>,
    pub user_account: Account<'a>,
}

/// Why an alert could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not an alert: {0}")]
    NotAnAlert(&'static str),
}

impl<'a> Alert<'a> {
    /// Decodes one alert object of either API (recognised by its shape), borrowing its texts
    /// from `json`.
    pub fn from_json(json: &'a str) -> Result<Alert<'a>, DecodeError> {
        wire::decode(json)
    }

    /// Evidence items of one kind, in API order.
    pub fn evidence_of(&self, kind: EvidenceKind) -> impl Iterator<Item = &Evidence<'a>> {
        self.evidence.iter().filter(move |e| e.kind() == kind)
    }

    /// The alert's version time: `lastUpdateDateTime` (Graph) / `lastUpdateTime` (MDE).
    pub fn last_update(&self) -> Option<&Timestamp> {
        self.last_update_date_time.as_ref()
    }
}
