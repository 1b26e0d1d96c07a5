//! Evidence objects, decoded by kind: each Graph `alertEvidence` subtype into its own small
//! struct, and MDE's flat evidence object (defender-api.md §1.6) into another.
//!
//! A struct per kind is what makes evidence cheap to decode: with one struct holding the union of
//! every kind's fields (70 of them), evidence cost twice as much per byte as the rest of the alert
//! (callgrind). Graph writes `@odata.type` first and MDE `entityType` first, so in the alert's
//! single pass the kind is read before the fields ([`decode_in_pass`]); an object written in
//! another order, or of a kind this version does not type, is decoded from its JSON text
//! ([`decode_raw`]), which also keeps that text for the untyped kinds.

use std::borrow::Cow;

use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{camel, compact, lenient, lenient_list, scalar, split_fqdn, strings, time};
use super::{WireAccount, WireFile};
use crate::alert::{
    Account, Device, Evidence, EvidenceDetail, FileDetails, FileEvidence, Ip, Mailbox, Process,
    Registry, Text, Timestamp, Url, UserEvidence,
};

/// The kinds the model types; any other kind is kept as JSON ([`EvidenceDetail::Other`]).
#[derive(Clone, Copy)]
enum Kind {
    Device,
    File,
    Process,
    User,
    Ip,
    Url,
    Registry,
    Mailbox,
}

impl Kind {
    /// From a kind name: Graph's `#microsoft.graph.security.fileEvidence` reduced by
    /// [`kind_name`], or MDE's `entityType` (`File`), in any case.
    fn from_name(name: &str) -> Option<Kind> {
        const NAMES: &[(&str, Kind)] = &[
            ("device", Kind::Device),
            ("machine", Kind::Device),
            ("file", Kind::File),
            ("process", Kind::Process),
            ("user", Kind::User),
            ("account", Kind::User),
            ("ip", Kind::Ip),
            ("url", Kind::Url),
            ("registryKey", Kind::Registry),
            ("registryValue", Kind::Registry),
            ("registry", Kind::Registry),
            ("mailbox", Kind::Mailbox),
        ];
        NAMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, k)| *k)
    }
}

/// `#microsoft.graph.security.fileEvidence` → `file`.
fn kind_name(odata_type: &str) -> &str {
    let t = odata_type.rsplit('.').next().unwrap_or(odata_type);
    t.strip_suffix("Evidence").unwrap_or(t)
}

/// Which API's shape an evidence object has, by the key that names its kind.
#[derive(Clone, Copy)]
enum Shape {
    Graph,
    Mde,
}

/// One evidence object in the alert's pass: `Ok(None)` when it has to be decoded from its text
/// instead ([`decode_raw`]): its kind is untyped, or not its first key.
pub(super) fn decode_in_pass<'de, A: MapAccess<'de>>(
    mut map: A,
) -> Result<Option<Evidence<'de>>, A::Error> {
    // (A `Cow` key would be copied: serde's `Cow` always deserializes owned.)
    let shape = match map.next_key_seed(Scalar)?.flatten().as_deref() {
        Some("@odata.type") => Shape::Graph,
        Some("entityType") => Shape::Mde,
        _ => return skip_rest(map),
    };
    let name = map.next_value_seed(Scalar)?;
    let kind = name.as_deref().and_then(|n| match shape {
        Shape::Graph => Kind::from_name(kind_name(n)),
        Shape::Mde => Kind::from_name(n),
    });
    match kind {
        Some(kind) => decode_kind(shape, kind, MapAccessDeserializer::new(map)).map(Some),
        None => skip_rest(map),
    }
}

fn skip_rest<'de, A: MapAccess<'de>>(mut map: A) -> Result<Option<Evidence<'de>>, A::Error> {
    while map
        .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
        .is_some()
    {}
    Ok(None)
}

/// One evidence object from its JSON text, whatever its kind and key order.
pub(super) fn decode_raw(raw: &RawValue) -> Evidence<'_> {
    #[derive(Deserialize)]
    struct Names<'a> {
        #[serde(rename = "@odata.type", borrow, default, deserialize_with = "scalar")]
        odata_type: Option<Text<'a>>,
        #[serde(rename = "entityType", borrow, default, deserialize_with = "scalar")]
        entity_type: Option<Text<'a>>,
    }
    let untyped = |name: &str| {
        plain(EvidenceDetail::Other {
            name: camel(Cow::Owned(name.to_string())),
            raw: compact(raw),
        })
    };
    // Not an object: kept whole rather than dropped.
    let Ok(names) = serde_json::from_str::<Names>(raw.get()) else {
        return untyped("unknown");
    };
    let (shape, name) = match (&names.odata_type, &names.entity_type) {
        (Some(t), _) => (Shape::Graph, kind_name(t)),
        (None, Some(t)) => (Shape::Mde, &**t),
        (None, None) => return untyped("unknown"),
    };
    let Some(kind) = Kind::from_name(name) else {
        return untyped(name);
    };
    let mut d = serde_json::Deserializer::from_str(raw.get());
    // Every field is lenient, so an object always decodes.
    decode_kind(shape, kind, &mut d).unwrap_or_else(|_| untyped(name))
}

/// An evidence object of a known kind and shape; a kind's struct skips the key naming the kind.
fn decode_kind<'de, D: Deserializer<'de>>(
    shape: Shape,
    kind: Kind,
    d: D,
) -> Result<Evidence<'de>, D::Error> {
    Ok(match (shape, kind) {
        (Shape::Mde, kind) => MdeEvidence::deserialize(d)?.into_evidence(kind),
        (Shape::Graph, Kind::Device) => GraphDevice::deserialize(d)?.into_evidence(),
        (Shape::Graph, Kind::File) => GraphFile::deserialize(d)?.into_evidence(),
        (Shape::Graph, Kind::Process) => GraphProcess::deserialize(d)?.into_evidence(),
        (Shape::Graph, Kind::User) => GraphUser::deserialize(d)?.into_evidence(),
        (Shape::Graph, Kind::Ip) => GraphIp::deserialize(d)?.into_evidence(),
        (Shape::Graph, Kind::Url) => GraphUrl::deserialize(d)?.into_evidence(),
        (Shape::Graph, Kind::Registry) => GraphRegistry::deserialize(d)?.into_evidence(),
        (Shape::Graph, Kind::Mailbox) => GraphMailbox::deserialize(d)?.into_evidence(),
    })
}

/// The kind name's value, read as [`scalar`] reads any value.
struct Scalar;

impl<'de> de::DeserializeSeed<'de> for Scalar {
    type Value = Option<Text<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        scalar(d)
    }
}

pub(super) fn plain(detail: EvidenceDetail<'_>) -> Evidence<'_> {
    Evidence {
        created_date_time: None,
        verdict: None,
        remediation_status: None,
        detection_status: None,
        roles: Vec::new(),
        tags: Vec::new(),
        detail,
    }
}

/// A Graph evidence struct: the fields every `alertEvidence` has, then the kind's own; and
/// `into_evidence`, which moves the common fields into [`Evidence`] around the kind's detail.
macro_rules! graph_evidence {
    ($name:ident { $($(#[$attr:meta])* $field:ident: $ty:ty,)* } |$w:ident| $detail:expr) => {
        #[derive(Deserialize, Default)]
        #[serde(rename_all = "camelCase", default, bound(deserialize = "'de: 'a"))]
        struct $name<'a> {
            #[serde(deserialize_with = "time")]
            created_date_time: Option<Timestamp>,
            #[serde(deserialize_with = "scalar")]
            verdict: Option<Text<'a>>,
            #[serde(deserialize_with = "scalar")]
            remediation_status: Option<Text<'a>>,
            #[serde(deserialize_with = "scalar")]
            detection_status: Option<Text<'a>>,
            #[serde(deserialize_with = "strings")]
            roles: Vec<Text<'a>>,
            #[serde(deserialize_with = "strings")]
            tags: Vec<Text<'a>>,
            $($(#[$attr])* $field: $ty,)*
        }

        impl<'a> $name<'a> {
            fn into_evidence(self) -> Evidence<'a> {
                let $w = self;
                Evidence {
                    created_date_time: $w.created_date_time,
                    verdict: $w.verdict.map(camel),
                    remediation_status: $w.remediation_status.map(camel),
                    detection_status: $w.detection_status.map(camel),
                    roles: $w.roles,
                    tags: $w.tags,
                    detail: $detail,
                }
            }
        }
    };
}

graph_evidence!(GraphDevice {
    #[serde(deserialize_with = "scalar")]
    mde_device_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    azure_ad_device_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    device_dns_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    host_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    nt_domain: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    dns_domain: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    os_platform: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    os_build: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    version: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    health_status: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    risk_score: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    rbac_group_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    rbac_group_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    onboarding_status: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    defender_av_status: Option<Text<'a>>,
    #[serde(deserialize_with = "time")]
    first_seen_date_time: Option<Timestamp>,
    #[serde(deserialize_with = "scalar")]
    last_ip_address: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    last_external_ip_address: Option<Text<'a>>,
    #[serde(deserialize_with = "strings")]
    ip_interfaces: Vec<Text<'a>>,
    #[serde(deserialize_with = "lenient_list")]
    logged_on_users: Vec<WireAccount<'a>>,
} |w| EvidenceDetail::Device(Box::new(with_host_and_domain(Device {
    mde_device_id: w.mde_device_id,
    azure_ad_device_id: w.azure_ad_device_id,
    device_dns_name: w.device_dns_name,
    host_name: w.host_name,
    nt_domain: w.nt_domain,
    dns_domain: w.dns_domain,
    os_platform: w.os_platform,
    os_build: w.os_build,
    version: w.version,
    health_status: w.health_status,
    risk_score: w.risk_score,
    rbac_group_id: w.rbac_group_id,
    rbac_group_name: w.rbac_group_name,
    onboarding_status: w.onboarding_status,
    defender_av_status: w.defender_av_status,
    first_seen_date_time: w.first_seen_date_time,
    last_ip_address: w.last_ip_address,
    last_external_ip_address: w.last_external_ip_address,
    ip_interfaces: w.ip_interfaces,
    logged_on_users: w.logged_on_users.into_iter().map(WireAccount::into_account).collect(),
}))));

graph_evidence!(GraphFile {
    #[serde(deserialize_with = "lenient")]
    file_details: Option<WireFile<'a>>,
    #[serde(deserialize_with = "scalar")]
    mde_device_id: Option<Text<'a>>,
} |w| EvidenceDetail::File(FileEvidence {
    file_details: w.file_details.map(FileDetails::from).unwrap_or_default(),
    mde_device_id: w.mde_device_id,
}));

graph_evidence!(GraphProcess {
    #[serde(deserialize_with = "scalar")]
    process_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    parent_process_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    process_command_line: Option<Text<'a>>,
    #[serde(deserialize_with = "time")]
    process_creation_date_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    parent_process_creation_date_time: Option<Timestamp>,
    #[serde(deserialize_with = "lenient")]
    image_file: Option<WireFile<'a>>,
    #[serde(deserialize_with = "lenient")]
    parent_process_image_file: Option<WireFile<'a>>,
    #[serde(deserialize_with = "lenient")]
    user_account: Option<WireAccount<'a>>,
    #[serde(deserialize_with = "scalar")]
    mde_device_id: Option<Text<'a>>,
} |w| EvidenceDetail::Process(Box::new(Process {
    process_id: w.process_id,
    parent_process_id: w.parent_process_id,
    process_command_line: w.process_command_line,
    process_creation_date_time: w.process_creation_date_time,
    parent_process_creation_date_time: w.parent_process_creation_date_time,
    image_file: w.image_file.map(FileDetails::from).unwrap_or_default(),
    parent_process_image_file: w.parent_process_image_file.map(FileDetails::from).unwrap_or_default(),
    user_account: account(w.user_account),
    mde_device_id: w.mde_device_id,
})));

graph_evidence!(GraphUser {
    #[serde(deserialize_with = "lenient")]
    user_account: Option<WireAccount<'a>>,
} |w| EvidenceDetail::User(UserEvidence { user_account: account(w.user_account) }));

graph_evidence!(GraphIp {
    #[serde(deserialize_with = "scalar")]
    ip_address: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    country_letter_code: Option<Text<'a>>,
} |w| EvidenceDetail::Ip(Ip {
    ip_address: w.ip_address,
    country_letter_code: w.country_letter_code,
}));

graph_evidence!(GraphUrl {
    #[serde(deserialize_with = "scalar")]
    url: Option<Text<'a>>,
} |w| EvidenceDetail::Url(Url { url: w.url }));

// `registryKeyEvidence` and `registryValueEvidence`.
graph_evidence!(GraphRegistry {
    #[serde(deserialize_with = "scalar")]
    registry_key: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    registry_hive: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    registry_value_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    registry_value: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    registry_value_type: Option<Text<'a>>,
} |w| EvidenceDetail::Registry(Registry {
    registry_key: w.registry_key,
    registry_hive: w.registry_hive,
    registry_value_name: w.registry_value_name,
    registry_value: w.registry_value,
    registry_value_type: w.registry_value_type,
}));

graph_evidence!(GraphMailbox {
    #[serde(deserialize_with = "scalar")]
    display_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    primary_address: Option<Text<'a>>,
    #[serde(deserialize_with = "lenient")]
    user_account: Option<WireAccount<'a>>,
} |w| EvidenceDetail::Mailbox(Mailbox {
    display_name: w.display_name,
    primary_address: w.primary_address,
    user_account: account(w.user_account),
}));

fn account(a: Option<WireAccount<'_>>) -> Account<'_> {
    a.map(WireAccount::into_account).unwrap_or_default()
}

/// MDE's evidence object: one flat object whatever the kind (defender-api.md §1.6).
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default, bound(deserialize = "'de: 'a"))]
struct MdeEvidence<'a> {
    #[serde(deserialize_with = "time")]
    evidence_creation_time: Option<Timestamp>,
    #[serde(deserialize_with = "scalar")]
    detection_status: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    sha1: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    sha256: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    file_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    file_path: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    process_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    process_command_line: Option<Text<'a>>,
    #[serde(deserialize_with = "time")]
    process_creation_time: Option<Timestamp>,
    #[serde(deserialize_with = "scalar")]
    parent_process_id: Option<Text<'a>>,
    #[serde(deserialize_with = "time")]
    parent_process_creation_time: Option<Timestamp>,
    #[serde(deserialize_with = "scalar")]
    parent_process_file_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    parent_process_file_path: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    ip_address: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    url: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    registry_key: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    registry_hive: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    registry_value_type: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    registry_value: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    registry_value_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    account_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    domain_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    user_sid: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    aad_user_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    user_principal_name: Option<Text<'a>>,
}

impl<'a> MdeEvidence<'a> {
    fn into_evidence(self, kind: Kind) -> Evidence<'a> {
        let w = self;
        let file = FileDetails {
            file_name: w.file_name,
            file_path: w.file_path,
            sha1: w.sha1,
            sha256: w.sha256,
            ..FileDetails::default()
        };
        let account = Account {
            account_name: w.account_name,
            domain_name: w.domain_name,
            user_sid: w.user_sid,
            azure_ad_user_id: w.aad_user_id,
            user_principal_name: w.user_principal_name,
            display_name: None,
        };
        let detail = match kind {
            Kind::Device => EvidenceDetail::Device(Box::default()),
            Kind::File => EvidenceDetail::File(FileEvidence {
                file_details: file,
                mde_device_id: None,
            }),
            Kind::Process => EvidenceDetail::Process(Box::new(Process {
                process_id: w.process_id,
                parent_process_id: w.parent_process_id,
                process_command_line: w.process_command_line,
                process_creation_date_time: w.process_creation_time,
                parent_process_creation_date_time: w.parent_process_creation_time,
                image_file: file,
                parent_process_image_file: FileDetails {
                    file_name: w.parent_process_file_name,
                    file_path: w.parent_process_file_path,
                    ..FileDetails::default()
                },
                user_account: account,
                mde_device_id: None,
            })),
            Kind::User => EvidenceDetail::User(UserEvidence {
                user_account: account,
            }),
            Kind::Ip => EvidenceDetail::Ip(Ip {
                ip_address: w.ip_address,
                country_letter_code: None,
            }),
            Kind::Url => EvidenceDetail::Url(Url { url: w.url }),
            Kind::Registry => EvidenceDetail::Registry(Registry {
                registry_key: w.registry_key,
                registry_hive: w.registry_hive,
                registry_value_name: w.registry_value_name,
                registry_value: w.registry_value,
                registry_value_type: w.registry_value_type,
            }),
            Kind::Mailbox => EvidenceDetail::Mailbox(Mailbox {
                display_name: None,
                primary_address: None,
                user_account: account,
            }),
        };
        Evidence {
            created_date_time: w.evidence_creation_time,
            detection_status: w.detection_status.map(camel),
            ..plain(detail)
        }
    }
}

/// Graph sends `hostName` and `dnsDomain` only since 2026 (the Wazuh fixture); before that the
/// device is named by `deviceDnsName` alone, which is split so that format files can rely on both.
fn with_host_and_domain(mut d: Device<'_>) -> Device<'_> {
    if d.host_name.is_none() || d.dns_domain.is_none() {
        let (host, domain) = split_fqdn(d.device_dns_name.clone());
        if d.host_name.is_none() {
            d.host_name = host;
        }
        if d.dns_domain.is_none() {
            d.dns_domain = domain;
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use crate::alert::Alert;

    fn evidence_json(items: &str) -> String {
        let json = format!(
            r#"{{"id":"a","createdDateTime":"2026-01-01T00:00:00Z","evidence":[{items}]}}"#
        );
        let alert = Alert::from_json(&json).expect("decodes");
        serde_json::to_string(&alert.evidence).expect("serializes")
    }

    #[test]
    fn key_order_does_not_matter() {
        // In the alert's pass (kind first) and from the text (kind last).
        let graph_first = r##"{"@odata.type":"#microsoft.graph.security.processEvidence","verdict":"Suspicious","processId":7,"imageFile":{"fileName":"a.exe"},"userAccount":{"accountName":"u"}}"##;
        let graph_last = r##"{"verdict":"Suspicious","processId":7,"imageFile":{"fileName":"a.exe"},"userAccount":{"accountName":"u"},"@odata.type":"#microsoft.graph.security.processEvidence"}"##;
        let mde_first =
            r#"{"entityType":"Process","processId":7,"fileName":"a.exe","accountName":"u"}"#;
        let mde_last =
            r#"{"processId":7,"fileName":"a.exe","accountName":"u","entityType":"Process"}"#;
        let from_graph = evidence_json(graph_first);
        assert!(from_graph.contains(r#""type":"process""#), "{from_graph}");
        assert!(
            from_graph.contains(r#""verdict":"suspicious""#),
            "{from_graph}"
        );
        assert!(from_graph.contains(r#""fileName":"a.exe""#), "{from_graph}");
        assert_eq!(evidence_json(graph_last), from_graph);
        let from_mde = evidence_json(mde_first);
        assert!(from_mde.contains(r#""processId":"7""#), "{from_mde}");
        assert!(from_mde.contains(r#""accountName":"u""#), "{from_mde}");
        assert_eq!(evidence_json(mde_last), from_mde);
    }

    #[test]
    fn untyped_kinds_and_odd_items_are_kept() {
        let out = evidence_json(
            r##"{"@odata.type":"#microsoft.graph.security.cloudApplicationEvidence","appId":42},
               {"entityType":"MailCluster","x":1},
               {"no":"kind"},
               "text",
               null"##,
        );
        assert!(
            out.contains(r##"{"type":"other","name":"cloudApplication","raw":{"@odata.type":"#microsoft.graph.security.cloudApplicationEvidence","appId":42}}"##),
            "{out}"
        );
        assert!(
            out.contains(
                r#"{"type":"other","name":"mailCluster","raw":{"entityType":"MailCluster","x":1}}"#
            ),
            "{out}"
        );
        assert!(
            out.contains(r#"{"type":"other","name":"unknown","raw":{"no":"kind"}}"#),
            "{out}"
        );
        assert!(
            out.contains(r#"{"type":"other","name":"unknown","raw":"text"}"#),
            "{out}"
        );
        assert_eq!(out.matches(r#""type":"other""#).count(), 4, "{out}");
    }

    mod same_either_way {
        use super::evidence_json;
        use proptest::prelude::*;

        /// Keys of every kind, both APIs, and one nobody knows.
        const KEYS: &[&str] = &[
            "createdDateTime",
            "verdict",
            "remediationStatus",
            "detectionStatus",
            "roles",
            "tags",
            "mdeDeviceId",
            "deviceDnsName",
            "hostName",
            "osBuild",
            "loggedOnUsers",
            "ipInterfaces",
            "fileDetails",
            "imageFile",
            "parentProcessImageFile",
            "userAccount",
            "processId",
            "processCommandLine",
            "processCreationDateTime",
            "ipAddress",
            "url",
            "registryKey",
            "displayName",
            "primaryAddress",
            "evidenceCreationTime",
            "sha1",
            "fileName",
            "accountName",
            "aadUserId",
            "parentProcessFileName",
            "somethingNew",
        ];
        const KINDS: &[(&str, &str)] = &[
            ("@odata.type", "#microsoft.graph.security.deviceEvidence"),
            ("@odata.type", "#microsoft.graph.security.processEvidence"),
            ("@odata.type", "#microsoft.graph.security.fileEvidence"),
            ("@odata.type", "#microsoft.graph.security.userEvidence"),
            ("@odata.type", "#microsoft.graph.security.ipEvidence"),
            ("@odata.type", "#microsoft.graph.security.urlEvidence"),
            (
                "@odata.type",
                "#microsoft.graph.security.registryValueEvidence",
            ),
            ("@odata.type", "#microsoft.graph.security.mailboxEvidence"),
            ("entityType", "File"),
            ("entityType", "Process"),
            ("entityType", "User"),
            ("entityType", "Ip"),
            ("entityType", "Url"),
            ("entityType", "Registry"),
        ];

        fn value() -> impl Strategy<Value = serde_json::Value> {
            let scalar = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i64>().prop_map(serde_json::Value::from),
                any::<String>().prop_map(serde_json::Value::from),
                "[a-z\\\\\"\n ]{0,12}".prop_map(serde_json::Value::from),
                Just(serde_json::json!("2026-01-02T03:04:05.1234567Z")),
            ];
            scalar.prop_recursive(2, 8, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..3)
                        .prop_map(serde_json::Value::from),
                    proptest::collection::vec((proptest::sample::select(KEYS), inner), 0..3)
                        .prop_map(|kv| {
                            serde_json::Value::Object(
                                kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
                            )
                        }),
                ]
            })
        }

        proptest! {
            /// An evidence object decodes to the same item in the alert's pass (kind first) and
            /// from its text (the alert also holds an untyped item, which sends every item that
            /// way), whatever its fields hold; and it never fails the alert.
            #[test]
            fn in_pass_and_from_text(
                (kind_key, kind) in proptest::sample::select(KINDS),
                fields in proptest::collection::vec((proptest::sample::select(KEYS), value()), 0..8),
            ) {
                let mut text = format!(r#"{{"{kind_key}":"{kind}""#);
                for (k, v) in &fields {
                    text.push_str(&format!(r#","{k}":{v}"#));
                }
                text.push('}');
                let in_pass = evidence_json(&text);
                let from_text = evidence_json(&format!(
                    r##"{text},{{"@odata.type":"#microsoft.graph.security.cloudApplicationEvidence"}}"##
                ));
                let in_pass = in_pass.trim_end_matches(']');
                prop_assert!(from_text.starts_with(in_pass), "{in_pass}\n{from_text}");
            }
        }
    }
}
