//! Paths into the [`Alert`] model, as format files write them: `title`, `createdDateTime`,
//! `file.sha256`, `process.image.fileName`, `evidence.verdict`, `tenant.name`.
//!
//! A path is resolved once, when the format file is compiled, to a plain function pointer; the hot
//! path calls it and never looks at the path text again.

use crate::alert::{Alert, Evidence, EvidenceDetail, EvidenceKind, Text, Timestamp};

/// A value read from an alert, borrowed where it can be.
#[derive(Debug, Clone)]
pub enum Val<'a> {
    None,
    Str(&'a str),
    Time(&'a Timestamp),
    List(Vec<&'a str>),
    Owned(String),
}

impl Val<'_> {
    pub fn is_none(&self) -> bool {
        match self {
            Val::None => true,
            Val::List(l) => l.is_empty(),
            _ => false,
        }
    }
}

pub type AlertGetter = for<'a> fn(&'a Alert<'_>) -> Val<'a>;
pub type EvidenceGetter = for<'a> fn(&'a Evidence<'_>) -> Val<'a>;

/// A compiled path.
#[derive(Clone, Copy)]
pub enum Path {
    Alert(AlertGetter),
    /// A field of the evidence items of one kind.
    Evidence(EvidenceKind, EvidenceGetter),
    /// A field of the evidence item a per-evidence record is made for (`evidence.…`).
    Current(EvidenceGetter),
    /// The configured name of the tenant the alert came from.
    TenantName,
}

impl std::fmt::Debug for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Alert(_) => f.write_str("Path::Alert"),
            Path::Evidence(k, _) => write!(f, "Path::Evidence({k:?})"),
            Path::Current(_) => f.write_str("Path::Current"),
            Path::TenantName => f.write_str("Path::TenantName"),
        }
    }
}

fn s<'a>(o: &'a Option<Text<'_>>) -> Val<'a> {
    o.as_deref().map_or(Val::None, Val::Str)
}
fn t(o: &Option<Timestamp>) -> Val<'_> {
    o.as_ref().map_or(Val::None, Val::Time)
}
fn l<'a>(v: &'a [Text<'_>]) -> Val<'a> {
    Val::List(v.iter().map(|t| t.as_ref()).collect())
}

static ALERT: &[(&str, AlertGetter)] = &[
    ("id", |a| Val::Str(&a.id)),
    ("api", |a| Val::Str(a.api.as_str())),
    ("providerAlertId", |a| s(&a.provider_alert_id)),
    ("tenantId", |a| s(&a.tenant_id)),
    ("incidentId", |a| s(&a.incident_id)),
    ("investigationId", |a| s(&a.investigation_id)),
    ("title", |a| s(&a.title)),
    ("description", |a| s(&a.description)),
    ("recommendedActions", |a| s(&a.recommended_actions)),
    ("severity", |a| Val::Str(a.severity.as_str())),
    ("status", |a| s(&a.status)),
    ("classification", |a| s(&a.classification)),
    ("determination", |a| s(&a.determination)),
    ("category", |a| s(&a.category)),
    ("serviceSource", |a| s(&a.service_source)),
    ("detectionSource", |a| s(&a.detection_source)),
    ("productName", |a| s(&a.product_name)),
    ("detectorId", |a| s(&a.detector_id)),
    ("alertPolicyId", |a| s(&a.alert_policy_id)),
    ("investigationState", |a| s(&a.investigation_state)),
    ("threatDisplayName", |a| s(&a.threat_display_name)),
    ("threatFamilyName", |a| s(&a.threat_family_name)),
    ("actorDisplayName", |a| s(&a.actor_display_name)),
    ("mitreTechniques", |a| l(&a.mitre_techniques)),
    ("systemTags", |a| l(&a.system_tags)),
    ("assignedTo", |a| s(&a.assigned_to)),
    ("rbacGroupName", |a| s(&a.rbac_group_name)),
    ("alertWebUrl", |a| s(&a.alert_web_url)),
    ("incidentWebUrl", |a| s(&a.incident_web_url)),
    ("createdDateTime", |a| t(&a.created_date_time)),
    ("lastUpdateDateTime", |a| t(&a.last_update_date_time)),
    ("firstActivityDateTime", |a| t(&a.first_activity_date_time)),
    ("lastActivityDateTime", |a| t(&a.last_activity_date_time)),
    ("resolvedDateTime", |a| t(&a.resolved_date_time)),
    ("comments", |a| {
        Val::List(
            a.comments
                .iter()
                .filter_map(|c| c.comment.as_deref())
                .collect(),
        )
    }),
    ("evidenceCount", |a| {
        Val::Owned(a.evidence.len().to_string())
    }),
];

static COMMON: &[(&str, EvidenceGetter)] = &[
    ("type", |e| Val::Str(e.detail.name())),
    ("createdDateTime", |e| t(&e.created_date_time)),
    ("verdict", |e| s(&e.verdict)),
    ("remediationStatus", |e| s(&e.remediation_status)),
    ("detectionStatus", |e| s(&e.detection_status)),
    ("roles", |e| l(&e.roles)),
    ("tags", |e| l(&e.tags)),
    ("json", |e| match &e.detail {
        EvidenceDetail::Other { raw, .. } => Val::Str(raw.get()),
        d => serde_json::to_string(d).map_or(Val::None, Val::Owned),
    }),
];

macro_rules! ev {
    ($variant:ident, $conv:ident, $($field:ident).+) => {
        |e| match &e.detail {
            EvidenceDetail::$variant(x) => $conv(&x.$($field).+),
            _ => Val::None,
        }
    };
}

static DEVICE: &[(&str, EvidenceGetter)] = &[
    ("mdeDeviceId", ev!(Device, s, mde_device_id)),
    ("azureAdDeviceId", ev!(Device, s, azure_ad_device_id)),
    ("deviceDnsName", ev!(Device, s, device_dns_name)),
    ("hostName", ev!(Device, s, host_name)),
    ("ntDomain", ev!(Device, s, nt_domain)),
    ("dnsDomain", ev!(Device, s, dns_domain)),
    ("osPlatform", ev!(Device, s, os_platform)),
    ("osBuild", ev!(Device, s, os_build)),
    ("version", ev!(Device, s, version)),
    ("healthStatus", ev!(Device, s, health_status)),
    ("riskScore", ev!(Device, s, risk_score)),
    ("rbacGroupId", ev!(Device, s, rbac_group_id)),
    ("rbacGroupName", ev!(Device, s, rbac_group_name)),
    ("onboardingStatus", ev!(Device, s, onboarding_status)),
    ("defenderAvStatus", ev!(Device, s, defender_av_status)),
    ("firstSeenDateTime", ev!(Device, t, first_seen_date_time)),
    ("lastIpAddress", ev!(Device, s, last_ip_address)),
    (
        "lastExternalIpAddress",
        ev!(Device, s, last_external_ip_address),
    ),
    ("ipInterfaces", ev!(Device, l, ip_interfaces)),
    ("loggedOnUsers", |e| match &e.detail {
        // `DOMAIN\name`, the SIEM API's LogOnUsers form (defender-api.md §2.3).
        EvidenceDetail::Device(d) if !d.logged_on_users.is_empty() => Val::Owned(
            d.logged_on_users
                .iter()
                .filter_map(|u| {
                    let name = u.account_name.as_deref()?;
                    Some(match u.domain_name.as_deref() {
                        Some(dom) => format!("{dom}\\{name}"),
                        None => name.to_string(),
                    })
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        _ => Val::None,
    }),
];

macro_rules! file_fields {
    ($variant:ident, $($prefix:literal, $($base:ident).+);+) => {
        &[$(
            (concat!($prefix, "fileName"), ev!($variant, s, $($base).+.file_name)),
            (concat!($prefix, "filePath"), ev!($variant, s, $($base).+.file_path)),
            (concat!($prefix, "sha1"), ev!($variant, s, $($base).+.sha1)),
            (concat!($prefix, "sha256"), ev!($variant, s, $($base).+.sha256)),
            (concat!($prefix, "md5"), ev!($variant, s, $($base).+.md5)),
            (concat!($prefix, "fileSize"), ev!($variant, s, $($base).+.file_size)),
            (concat!($prefix, "filePublisher"), ev!($variant, s, $($base).+.file_publisher)),
            (concat!($prefix, "signer"), ev!($variant, s, $($base).+.signer)),
            (concat!($prefix, "issuer"), ev!($variant, s, $($base).+.issuer)),
        )+]
    };
}

macro_rules! account_fields {
    ($variant:ident, $prefix:literal, $($base:ident).+) => {
        &[
            (concat!($prefix, "accountName"), ev!($variant, s, $($base).+.account_name)),
            (concat!($prefix, "domainName"), ev!($variant, s, $($base).+.domain_name)),
            (concat!($prefix, "userSid"), ev!($variant, s, $($base).+.user_sid)),
            (concat!($prefix, "azureAdUserId"), ev!($variant, s, $($base).+.azure_ad_user_id)),
            (concat!($prefix, "userPrincipalName"), ev!($variant, s, $($base).+.user_principal_name)),
            (concat!($prefix, "displayName"), ev!($variant, s, $($base).+.display_name)),
        ]
    };
}

static FILE: &[(&str, EvidenceGetter)] = file_fields!(File, "", file_details);
static FILE_OTHER: &[(&str, EvidenceGetter)] = &[("mdeDeviceId", ev!(File, s, mde_device_id))];
static PROCESS_IMAGES: &[(&str, EvidenceGetter)] =
    file_fields!(Process, "image.", image_file; "parentImage.", parent_process_image_file);
static PROCESS_USER: &[(&str, EvidenceGetter)] = account_fields!(Process, "user.", user_account);
static PROCESS: &[(&str, EvidenceGetter)] = &[
    ("processId", ev!(Process, s, process_id)),
    ("parentProcessId", ev!(Process, s, parent_process_id)),
    ("processCommandLine", ev!(Process, s, process_command_line)),
    (
        "processCreationDateTime",
        ev!(Process, t, process_creation_date_time),
    ),
    (
        "parentProcessCreationDateTime",
        ev!(Process, t, parent_process_creation_date_time),
    ),
    ("mdeDeviceId", ev!(Process, s, mde_device_id)),
];
static USER: &[(&str, EvidenceGetter)] = account_fields!(User, "", user_account);
static IP: &[(&str, EvidenceGetter)] = &[
    ("ipAddress", ev!(Ip, s, ip_address)),
    ("countryLetterCode", ev!(Ip, s, country_letter_code)),
];
static URL: &[(&str, EvidenceGetter)] = &[("url", ev!(Url, s, url))];
static REGISTRY: &[(&str, EvidenceGetter)] = &[
    ("registryKey", ev!(Registry, s, registry_key)),
    ("registryHive", ev!(Registry, s, registry_hive)),
    ("registryValueName", ev!(Registry, s, registry_value_name)),
    ("registryValue", ev!(Registry, s, registry_value)),
    ("registryValueType", ev!(Registry, s, registry_value_type)),
];
static MAILBOX: &[(&str, EvidenceGetter)] = &[
    ("displayName", ev!(Mailbox, s, display_name)),
    ("primaryAddress", ev!(Mailbox, s, primary_address)),
];
static MAILBOX_USER: &[(&str, EvidenceGetter)] = account_fields!(Mailbox, "user.", user_account);

/// The evidence kinds a path may start with, and their field tables.
type FieldTable = &'static [(&'static str, EvidenceGetter)];

fn kind_tables(kind: &str) -> Option<(EvidenceKind, Vec<FieldTable>)> {
    Some(match kind {
        "device" => (EvidenceKind::Device, vec![DEVICE]),
        "file" => (EvidenceKind::File, vec![FILE, FILE_OTHER]),
        "process" => (
            EvidenceKind::Process,
            vec![PROCESS, PROCESS_IMAGES, PROCESS_USER],
        ),
        "user" => (EvidenceKind::User, vec![USER]),
        "ip" => (EvidenceKind::Ip, vec![IP]),
        "url" => (EvidenceKind::Url, vec![URL]),
        "registry" => (EvidenceKind::Registry, vec![REGISTRY]),
        "mailbox" => (EvidenceKind::Mailbox, vec![MAILBOX, MAILBOX_USER]),
        _ => return None,
    })
}

const KINDS: &str = "device, file, process, user, ip, url, registry, mailbox";

fn find<G: Copy>(tables: &[&[(&str, G)]], name: &str) -> Option<G> {
    tables
        .iter()
        .flat_map(|t| t.iter())
        .find(|(n, _)| *n == name)
        .map(|(_, g)| *g)
}

fn names<G>(tables: &[&[(&'static str, G)]]) -> String {
    tables
        .iter()
        .flat_map(|t| t.iter().map(|(n, _)| *n))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves a path, or says what the valid ones are.
pub fn compile(path: &str) -> Result<Path, String> {
    if path == "tenant.name" {
        return Ok(Path::TenantName);
    }
    if let Some(g) = find(&[ALERT], path) {
        return Ok(Path::Alert(g));
    }
    let Some((head, rest)) = path.split_once('.') else {
        return Err(format!(
            "unknown path {path:?}: alert fields are {}; evidence fields start with one of {KINDS} or `evidence.`; and `tenant.name`",
            names(&[ALERT])
        ));
    };
    if head == "evidence" {
        return find(&[COMMON], rest).map(Path::Current).ok_or_else(|| {
            format!(
                "unknown path {path:?}: `evidence.` takes {}",
                names(&[COMMON])
            )
        });
    }
    let Some((kind, mut tables)) = kind_tables(head) else {
        return Err(format!(
            "unknown path {path:?}: {head:?} is not an alert field nor an evidence kind ({KINDS})"
        ));
    };
    tables.push(COMMON);
    find(&tables, rest)
        .map(|g| Path::Evidence(kind, g))
        .ok_or_else(|| format!("unknown path {path:?}: `{head}.` takes {}", names(&tables)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_and_rejects() {
        for ok in [
            "title",
            "tenant.name",
            "file.sha256",
            "process.image.fileName",
            "process.parentImage.sha1",
            "process.user.accountName",
            "device.loggedOnUsers",
            "evidence.verdict",
            "mailbox.user.userPrincipalName",
            "ip.verdict",
        ] {
            assert!(compile(ok).is_ok(), "{ok}");
        }
        let err = compile("titel").err().unwrap();
        assert!(err.contains("unknown path \"titel\""), "{err}");
        let err = compile("file.sha512").err().unwrap();
        assert!(err.contains("`file.` takes fileName"), "{err}");
        let err = compile("disk.size").err().unwrap();
        assert!(
            err.contains("not an alert field nor an evidence kind"),
            "{err}"
        );
    }
}
