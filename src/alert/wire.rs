//! The alert as it comes over the wire, from either API, and its translation into [`Alert`].
//!
//! One struct holds the union of both APIs' alert-level field names, so a single serde pass
//! decodes either shape; which API it was is decided afterwards from the fields present. Evidence
//! objects are decoded by kind ([`evidence`]). Every scalar goes through
//! [`scalar`], which takes a string, number, boolean or null (the docs and the real payloads
//! disagree: `incidentId` is a number in MDE and a string in Graph, `osBuild` may be null, …).

mod evidence;

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use std::borrow::Cow;

use super::{
    Account, Alert, Api, Comment, DecodeError, Device, Evidence, EvidenceDetail, FileDetails,
    Severity, Text, Timestamp, UserEvidence,
};

/// The visitor methods for JSON `null` (and an `Option` around a value): null gives `$value`,
/// anything else is visited as itself.
macro_rules! null_gives {
    ($value:expr) => {
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    };
}

/// The visitor methods for the JSON scalars a visitor has no use for: each gives `$value`.
macro_rules! other_scalars_give {
    ($value:expr) => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

#[derive(Deserialize, Default)]
#[serde(
    rename_all = "camelCase",
    default,
    bound(deserialize = "'de: 'a, E: Deserialize<'de> + Default")
)]
pub(super) struct WireAlert<'a, E> {
    #[serde(deserialize_with = "scalar")]
    id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    provider_alert_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    incident_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    investigation_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    tenant_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    aad_tenant_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    title: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    description: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    recommended_actions: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    severity: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    status: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    classification: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    determination: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    category: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    service_source: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    detection_source: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    product_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    detector_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    alert_policy_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    investigation_state: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    threat_display_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    threat_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    threat_family_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    actor_display_name: Option<Text<'a>>,
    #[serde(deserialize_with = "strings")]
    mitre_techniques: Vec<Text<'a>>,
    #[serde(deserialize_with = "strings")]
    system_tags: Vec<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    assigned_to: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    rbac_group_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    alert_web_url: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    incident_web_url: Option<Text<'a>>,
    // Graph times.
    #[serde(deserialize_with = "time")]
    created_date_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    last_update_date_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    first_activity_date_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    last_activity_date_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    resolved_date_time: Option<Timestamp>,
    // MDE times (defender-api.md §3.6 pairs them with the Graph ones).
    #[serde(deserialize_with = "time")]
    alert_creation_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    last_update_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    first_event_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    last_event_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    resolved_time: Option<Timestamp>,
    // MDE device and user, which Graph carries as evidence.
    #[serde(deserialize_with = "scalar")]
    machine_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    computer_dns_name: Option<Text<'a>>,
    #[serde(deserialize_with = "lenient")]
    related_user: Option<WireAccount<'a>>,
    #[serde(deserialize_with = "lenient_list")]
    comments: Vec<WireComment<'a>>,
    /// [`OnePass`] or [`RawList`]: see [`decode`].
    evidence: E,
    // 2019-era MDE fields, before `evidence` existed (the demisto fixture).
    #[serde(borrow)]
    alert_user: Option<&'a RawValue>,
    #[serde(borrow)]
    alert_files: Option<&'a RawValue>,
    #[serde(borrow)]
    alert_domains: Option<&'a RawValue>,
    #[serde(borrow)]
    alert_ips: Option<&'a RawValue>,
    #[serde(borrow)]
    custom_details: Option<&'a RawValue>,
    #[serde(borrow)]
    additional_data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default, bound(deserialize = "'de: 'a"))]
struct WireComment<'a> {
    #[serde(deserialize_with = "scalar")]
    comment: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    created_by_display_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    created_by: Option<Text<'a>>,
    #[serde(deserialize_with = "time")]
    created_date_time: Option<Timestamp>,
    #[serde(deserialize_with = "time")]
    created_time: Option<Timestamp>,
    // The MDE docs' text says `createTime`, its examples `createdTime` (defender-api.md §1.6).
    #[serde(deserialize_with = "time")]
    create_time: Option<Timestamp>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default, bound(deserialize = "'de: 'a"))]
struct WireAccount<'a> {
    #[serde(deserialize_with = "scalar")]
    account_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    user_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    domain_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    user_sid: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    azure_ad_user_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    aad_user_id: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    user_principal_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    display_name: Option<Text<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default, bound(deserialize = "'de: 'a"))]
struct WireFile<'a> {
    #[serde(deserialize_with = "scalar")]
    file_name: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    file_path: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    sha1: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    sha256: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    md5: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    file_size: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    file_publisher: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    signer: Option<Text<'a>>,
    #[serde(deserialize_with = "scalar")]
    issuer: Option<Text<'a>>,
}

/// Decodes one alert. The fast way decodes each evidence object in the same pass as the alert
/// ([`OnePass`]); it cannot keep the JSON text of an evidence kind it does not type, nor handle
/// the rare shapes (an evidence object that is not an object or does not name its kind first,
/// Elastic's split shape), so an alert
/// with any of those, or one the fast way rejects, is decoded again the thorough way
/// ([`RawList`]), which keeps each evidence object's text. Both give the same alert.
pub(super) fn decode(json: &str) -> Result<Alert<'_>, DecodeError> {
    if let Ok(wire) = serde_json::from_str::<WireAlert<'_, OnePass>>(json) {
        if !wire.evidence.needs_raw {
            return wire.into_alert();
        }
    }
    serde_json::from_str::<WireAlert<'_, RawList<'_>>>(json)?.into_alert()
}

/// The evidence list, decoded.
pub(super) trait EvidenceList<'a> {
    fn into_evidence(self) -> Vec<Evidence<'a>>;
}

/// Why the one-pass decoding stops early: an evidence object needs its JSON text.
const NEEDS_RAW: &str = "an evidence object needs its JSON text";

/// Evidence objects decoded in the alert's pass. `needs_raw` when `evidence` is not a list (see
/// [`decode`]); an object that needs its JSON text ends the pass instead ([`NEEDS_RAW`]).
#[derive(Default)]
pub(super) struct OnePass<'a> {
    items: Vec<Evidence<'a>>,
    needs_raw: bool,
}

impl<'a> EvidenceList<'a> for OnePass<'a> {
    fn into_evidence(self) -> Vec<Evidence<'a>> {
        self.items
    }
}

/// Each evidence object kept as its JSON text, then decoded (see [`decode`]).
#[derive(Default)]
pub(super) struct RawList<'a>(Vec<RawEvidence<'a>>);

impl<'a> EvidenceList<'a> for RawList<'a> {
    fn into_evidence(self) -> Vec<Evidence<'a>> {
        let mut out = Vec::with_capacity(self.0.len());
        for raw in self.0 {
            match raw {
                RawEvidence::Borrowed(r) if r.get() == "null" => {}
                RawEvidence::Borrowed(r) => out.push(evidence::decode_raw(r)),
                // Rebuilt here, so the evidence cannot borrow from it.
                RawEvidence::Owned(r) => out.push(evidence::decode_raw(&r).into_owned()),
            }
        }
        out
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for RawList<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        evidence_list(d).map(RawList)
    }
}

impl<'de> Deserialize<'de> for OnePass<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OnePass<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of evidence objects")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = OnePass {
                    // Graph alerts carry a few items, usually.
                    items: Vec::with_capacity(seq.size_hint().unwrap_or(4).min(64)),
                    needs_raw: false,
                };
                while let Some(item) = seq.next_element::<OnePassItem>()? {
                    match item {
                        OnePassItem::Null => {}
                        OnePassItem::Typed(e) => out.items.push(e),
                        // The thorough way reads the whole alert again: the rest of this pass
                        // would be thrown away.
                        OnePassItem::NeedsRaw => return Err(de::Error::custom(NEEDS_RAW)),
                    }
                }
                Ok(out)
            }
            null_gives!(OnePass::default());
            // Anything else (Elastic's single object, a scalar): the thorough way.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(OnePass {
                    items: Vec::new(),
                    needs_raw: true,
                })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(OnePass {
                    items: Vec::new(),
                    needs_raw: true,
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                self.visit_str("")
            }
        }
        d.deserialize_any(V)
    }
}

/// One element of the evidence list in the one-pass decoding. Moved straight into the list, so
/// the size of `Typed` costs nothing, where a box would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum OnePassItem<'a> {
    Null,
    Typed(Evidence<'a>),
    NeedsRaw,
}

impl<'de> Deserialize<'de> for OnePassItem<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OnePassItem<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an evidence object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                Ok(
                    evidence::decode_in_pass(map)?
                        .map_or(OnePassItem::NeedsRaw, OnePassItem::Typed),
                )
            }
            null_gives!(OnePassItem::Null);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(OnePassItem::NeedsRaw)
            }
            other_scalars_give!(OnePassItem::NeedsRaw);
        }
        d.deserialize_any(V)
    }
}

impl<'a, E: EvidenceList<'a>> WireAlert<'a, E> {
    pub(super) fn into_alert(self) -> Result<Alert<'a>, DecodeError> {
        let w = self;
        let id =
            w.id.clone()
                .ok_or(DecodeError::NotAnAlert("it has no \"id\""))?;
        let graph_shape = w.created_date_time.is_some()
            || w.last_update_date_time.is_some()
            || w.tenant_id.is_some()
            || w.service_source.is_some()
            || w.provider_alert_id.is_some()
            || w.alert_web_url.is_some();
        let mde_shape = w.alert_creation_time.is_some()
            || w.last_update_time.is_some()
            || w.machine_id.is_some()
            || w.aad_tenant_id.is_some()
            || w.computer_dns_name.is_some();
        // An object whose every field but its id is null (or missing) is not an alert: there
        // is nothing to forward, and no time to order or de-duplicate it by (README "Which
        // objects are alerts"). Null and missing are the same here (`Option`), so the message
        // names both.
        if !graph_shape && !mde_shape && w.title.is_none() && w.severity.is_none() {
            return Err(DecodeError::NotAnAlert(
                "besides \"id\", every field that marks a Graph or Defender for Endpoint alert \
                 (title, severity, createdDateTime, lastUpdateDateTime, tenantId, … or their MDE \
                 names) is null or missing",
            ));
        }
        let api = if mde_shape && !graph_shape {
            Api::Mde
        } else {
            Api::Graph
        };

        let mut evidence = w.evidence.into_evidence();
        if api == Api::Mde && evidence.is_empty() {
            // The device and the user below: room for two, not the four a first push makes,
            // which at 1,536 bytes went past glibc's per-thread cache of small blocks (see
            // `ITEMS_ROOM` in `format/mod.rs`).
            evidence.reserve_exact(2);
        }
        if api == Api::Mde && (w.machine_id.is_some() || w.computer_dns_name.is_some()) {
            // MDE names the device on the alert; Graph as deviceEvidence (defender-api.md §3.6).
            let (host, domain) = split_fqdn(w.computer_dns_name.clone());
            evidence.insert(
                0,
                evidence::plain(EvidenceDetail::Device(Box::new(Device {
                    mde_device_id: w.machine_id.clone(),
                    device_dns_name: w.computer_dns_name.clone(),
                    host_name: host,
                    dns_domain: domain,
                    rbac_group_name: w.rbac_group_name.clone(),
                    ..Device::default()
                }))),
            );
        }
        if let Some(user) = w.related_user {
            let account = user.into_account();
            let known = evidence.iter().any(|e| match &e.detail {
                EvidenceDetail::User(u) => {
                    u.user_account.account_name.is_some()
                        && u.user_account.account_name == account.account_name
                }
                _ => false,
            });
            if !known && account.account_name.is_some() {
                evidence.push(evidence::plain(EvidenceDetail::User(UserEvidence {
                    user_account: account,
                })));
            }
        }
        for (name, raw) in [
            ("alertUser", w.alert_user),
            ("alertFiles", w.alert_files),
            ("alertDomains", w.alert_domains),
            ("alertIps", w.alert_ips),
        ] {
            if let Some(raw) = raw {
                let text = raw.get().trim();
                if text != "null" && text != "[]" && text != "{}" {
                    evidence.push(evidence::plain(EvidenceDetail::Other {
                        name: Cow::Borrowed(name),
                        raw: compact(raw),
                    }));
                }
            }
        }

        let service_source = w
            .service_source
            .map(camel)
            .or_else(|| (api == Api::Mde).then_some(Cow::Borrowed("microsoftDefenderForEndpoint")));
        Ok(Alert {
            api,
            id,
            provider_alert_id: w.provider_alert_id,
            tenant_id: w.tenant_id.or(w.aad_tenant_id),
            incident_id: w.incident_id,
            investigation_id: w.investigation_id,
            title: w.title,
            description: w.description,
            recommended_actions: w.recommended_actions,
            severity: w
                .severity
                .as_deref()
                .map(Severity::parse)
                .unwrap_or_default(),
            status: w.status.map(camel),
            classification: w.classification.map(camel),
            determination: w.determination.map(camel),
            // The 2019 API sent the string "null" (demisto fixture).
            category: w.category.filter(|c| c != "null"),
            service_source,
            detection_source: w.detection_source.map(detection_source),
            product_name: w.product_name,
            detector_id: w.detector_id,
            alert_policy_id: w.alert_policy_id,
            investigation_state: w.investigation_state.map(camel),
            threat_display_name: w.threat_display_name.or(w.threat_name),
            threat_family_name: w.threat_family_name,
            actor_display_name: w.actor_display_name,
            mitre_techniques: w.mitre_techniques,
            system_tags: w.system_tags,
            assigned_to: w.assigned_to,
            rbac_group_name: w.rbac_group_name,
            alert_web_url: w.alert_web_url,
            incident_web_url: w.incident_web_url,
            created_date_time: w.created_date_time.or(w.alert_creation_time),
            last_update_date_time: w.last_update_date_time.or(w.last_update_time),
            first_activity_date_time: w.first_activity_date_time.or(w.first_event_time),
            last_activity_date_time: w.last_activity_date_time.or(w.last_event_time),
            resolved_date_time: w.resolved_date_time.or(w.resolved_time),
            comments: w
                .comments
                .into_iter()
                .map(|c| Comment {
                    comment: c.comment,
                    created_by: c.created_by_display_name.or(c.created_by),
                    created_date_time: c.created_date_time.or(c.created_time).or(c.create_time),
                })
                .collect(),
            evidence,
            custom_details: w.custom_details.filter(|r| r.get() != "{}").map(compact),
            additional_data: w.additional_data.map(compact),
        })
    }
}

impl<'a> WireAccount<'a> {
    fn into_account(self) -> Account<'a> {
        Account {
            account_name: self.account_name.or(self.user_name),
            domain_name: self.domain_name,
            user_sid: self.user_sid,
            azure_ad_user_id: self.azure_ad_user_id.or(self.aad_user_id),
            user_principal_name: self.user_principal_name,
            display_name: self.display_name,
        }
    }
}

impl<'a> From<WireFile<'a>> for FileDetails<'a> {
    fn from(f: WireFile<'a>) -> Self {
        FileDetails {
            file_name: f.file_name,
            file_path: f.file_path,
            sha1: f.sha1,
            sha256: f.sha256,
            md5: f.md5,
            file_size: f.file_size,
            file_publisher: f.file_publisher,
            signer: f.signer,
            issuer: f.issuer,
        }
    }
}

/// Raw JSON kept in the model without its line breaks and indentation, so that a JSON record
/// that embeds it stays on one line.
///
/// `RawValue` checks only the grammar, so the text may be what a `Value` cannot hold: a lone
/// UTF-16 surrogate escape (`"\ud800"`), a number out of range (`1e400`), nesting deeper than
/// 128. Such text used to be kept as sent, line breaks and all, and a JSON record then spanned
/// several lines (found by `format::fuzz`): now its lone surrogates become U+FFFD, as elsewhere in
/// the input (`input.rs`), and the white space between its tokens is removed.
fn compact(raw: &RawValue) -> Cow<'_, RawValue> {
    let text = raw.get();
    if !text.contains(['\n', '\r', '\t']) && !has_surrogate_escape(text) {
        return Cow::Borrowed(raw);
    }
    if let Some(v) = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| serde_json::value::to_raw_value(&v).ok())
    {
        return Cow::Owned(v);
    }
    let fixed = crate::input::replace_lone_surrogates(text);
    if let Some(v) = serde_json::from_str::<serde_json::Value>(&fixed)
        .ok()
        .and_then(|v| serde_json::value::to_raw_value(&v).ok())
    {
        return Cow::Owned(v);
    }
    RawValue::from_string(minify(&fixed))
        .or_else(|_| serde_json::value::to_raw_value(text))
        .map_or(Cow::Borrowed(raw), Cow::Owned)
}

/// Whether `text` has a `\uD800`-`\uDFFF` escape (paired or not; the caller sorts that out).
fn has_surrogate_escape(text: &str) -> bool {
    text.match_indices("\\u").any(|(i, _)| {
        let b = text.as_bytes();
        b.get(i + 2).is_some_and(|c| c.eq_ignore_ascii_case(&b'd'))
            && b.get(i + 3)
                .is_some_and(|c| matches!(c, b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F'))
    })
}

/// JSON text without the white space between its tokens (strings are copied as they are).
fn minify(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// `host.example.com` → (`host`, `example.com`).
fn split_fqdn(fqdn: Option<Text<'_>>) -> (Option<Text<'_>>, Option<Text<'_>>) {
    let Some(f) = fqdn else {
        return (None, None);
    };
    // An address is not a name to split.
    if f.parse::<std::net::IpAddr>().is_ok() {
        return (Some(f), None);
    }
    let Some(dot) = f.find('.').filter(|&i| i > 0 && i + 1 < f.len()) else {
        return (Some(f), None);
    };
    match f {
        Cow::Borrowed(b) => (
            Some(Cow::Borrowed(&b[..dot])),
            Some(Cow::Borrowed(&b[dot + 1..])),
        ),
        Cow::Owned(mut host) => {
            let domain = host.split_off(dot + 1);
            host.pop();
            (Some(Cow::Owned(host)), Some(Cow::Owned(domain)))
        }
    }
}

/// PascalCase enum members (MDE, some Graph examples) → Graph's camelCase (defender-api.md §3.2:
/// "parse enums case-insensitively").
fn camel(mut s: Text<'_>) -> Text<'_> {
    if s.starts_with(|c: char| c.is_ascii_uppercase())
        // An all-capitals acronym (`MTP`) is left alone.
        && !s
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
    {
        if let Some(known) = KNOWN_MEMBERS.iter().find(|k| is_camel_of(k, &s)) {
            return Cow::Borrowed(known);
        }
        s.to_mut()[..1].make_ascii_lowercase();
    }
    s
}

/// The members MDE sends in PascalCase for `status`, `investigationState`, `classification`
/// and `determination` (defender-api.md §1.6), camelCased: found here, they need no copy.
const KNOWN_MEMBERS: &[&str] = &[
    "unknown",
    "new",
    "inProgress",
    "resolved",
    "terminated",
    "successfullyRemediated",
    "benign",
    "failed",
    "partiallyRemediated",
    "running",
    "pendingApproval",
    "pendingResource",
    "partiallyInvestigated",
    "terminatedByUser",
    "terminatedBySystem",
    "queued",
    "innerFailure",
    "preexistingAlert",
    "unsupportedOs",
    "unsupportedAlertType",
    "suppressedAlert",
    "truePositive",
    "falsePositive",
    "informationalExpectedActivity",
    "multiStagedAttack",
    "maliciousUserActivity",
    "compromisedUser",
    "malware",
    "phishing",
    "unwantedSoftware",
    "other",
    "securityTesting",
    "lineOfBusinessApplication",
    "confirmedUserActivity",
    "confirmedActivity",
    "notMalicious",
    "clean",
    "insufficientData",
];

/// Whether `camel` is `pascal` with its first letter in lower case.
fn is_camel_of(camel: &str, pascal: &str) -> bool {
    camel.len() == pascal.len()
        && camel.as_bytes()[0] == pascal.as_bytes()[0].to_ascii_lowercase()
        && camel.as_bytes()[1..] == pascal.as_bytes()[1..]
}

/// MDE `detectionSource` values → the Graph enum (defender-api.md §3.6, §1.7). Unknown values are
/// kept, camelCased.
fn detection_source(s: Text<'_>) -> Text<'_> {
    let mapped = match s.as_ref() {
        "WindowsDefenderAv" => "antivirus",
        "WindowsDefenderAtp" => "microsoftDefenderForEndpoint",
        "CustomerTI" => "customTi",
        "CustomDetection" => "customDetection",
        "AutomatedInvestigation" => "automatedInvestigation",
        "WindowsDefenderSmartScreen" => "smartScreen",
        "ThreatExperts" => "microsoftThreatExperts",
        "MTP" => "microsoft365Defender",
        "OfficeATP" => "microsoftDefenderForOffice365",
        "MCAS" => "cloudAppSecurity",
        "AzureATP" => "microsoftDefenderForIdentity",
        _ => return camel(s),
    };
    Cow::Borrowed(mapped)
}

// ---- lenient deserializers ----------------------------------------------------------------

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Option<Text<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number, boolean or null")
    }
    // A string without escapes is borrowed from the input; one with escapes is unescaped into
    // a copy.
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(non_empty(v).map(Cow::Borrowed))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(non_empty(v).map(|v| Cow::Owned(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(if v { "true" } else { "false" })))
    }
    null_gives!(None);
    // An object or array where a scalar was expected: keep it as compact JSON text.
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let v = serde_json::Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(Some(Cow::Owned(v.to_string())))
    }
}

/// `None` for a value that is empty or only white space. Nearly every value starts with a
/// printable ASCII character, which settles it without `trim`'s Unicode scan.
fn non_empty(s: &str) -> Option<&str> {
    match s.as_bytes().first() {
        Some(b) if b.is_ascii_graphic() => Some(s),
        _ if s.trim().is_empty() => None,
        _ => Some(s),
    }
}

fn scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Text<'de>>, D::Error> {
    d.deserialize_any(ScalarVisitor)
}

/// A timestamp, parsed from the borrowed text (no copy unless it is not a time); anything else
/// as [`scalar`] reads it, kept as text.
fn time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
    struct V;
    fn text(s: Option<Text<'_>>) -> Option<Timestamp> {
        s.map(|s| Timestamp::parse(&s))
    }
    impl<'de> Visitor<'de> for V {
        type Value = Option<Timestamp>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a timestamp")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(non_empty(v).map(Timestamp::parse))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            ScalarVisitor.visit_i64(v).map(text)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            ScalarVisitor.visit_u64(v).map(text)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            ScalarVisitor.visit_f64(v).map(text)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            ScalarVisitor.visit_bool(v).map(text)
        }
        null_gives!(None);
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            ScalarVisitor.visit_seq(seq).map(text)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            ScalarVisitor.visit_map(map).map(text)
        }
    }
    d.deserialize_any(V)
}

struct Scalar<'a>(Option<Text<'a>>);

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(d).map(Scalar)
    }
}

/// A list of strings; also a single string (the MDE docs type `mitreTechniques` as String) or null.
fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Text<'de>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<Text<'de>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of strings")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Scalar(s)) = seq.next_element()? {
                out.extend(s);
            }
            Ok(out)
        }
        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(comma_list(v).map(Cow::Borrowed).collect())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(comma_list(v).map(|s| Cow::Owned(s.to_string())).collect())
        }
        null_gives!(Vec::new());
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            ScalarVisitor.visit_i64(v).map(Vec::from_iter)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            ScalarVisitor.visit_u64(v).map(Vec::from_iter)
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            ScalarVisitor.visit_f64(v).map(Vec::from_iter)
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
            ScalarVisitor.visit_bool(v).map(Vec::from_iter)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            ScalarVisitor.visit_map(map).map(Vec::from_iter)
        }
    }
    d.deserialize_any(V)
}

/// `"T1059, T1086"` → `T1059`, `T1086`.
fn comma_list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').filter_map(|s| non_empty(s.trim()))
}

/// An object of type `T`, or `None` for null or anything that is not an object. Decoded in the
/// same pass: `T`'s fields are all lenient themselves, so an object never fails to decode.
struct LenientVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Some)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    other_scalars_give!(None);
    null_gives!(None);
}

fn lenient<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    d.deserialize_any(LenientVisitor(std::marker::PhantomData))
}

struct Lenient<T>(Option<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        lenient(d).map(Lenient)
    }
}

/// A list of `T`; elements that are not objects are skipped, and a non-list is an empty list.
fn lenient_list<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    struct V<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(Lenient(item)) = seq.next_element::<Lenient<T>>()? {
                out.extend(item);
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map
                .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                .is_some()
            {}
            Ok(Vec::new())
        }
        other_scalars_give!(Vec::new());
        null_gives!(Vec::new());
    }
    d.deserialize_any(V(std::marker::PhantomData))
}

/// `evidence` is a list of objects, each kept as raw JSON for [`evidence::decode_raw`] (which needs
/// the whole object for kinds it does not type); Elastic's split shape gives one object (fixture
/// `mde-alerts-elastic-split-evidence.ndjson`); null or absent means none. One pass either way.
fn evidence_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<RawEvidence<'de>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<RawEvidence<'de>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a list of evidence objects")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(raw) = seq.next_element::<&'de RawValue>()? {
                out.push(RawEvidence::Borrowed(raw));
            }
            Ok(out)
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            let v = serde_json::Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
            let raw = serde_json::value::to_raw_value(&v).map_err(de::Error::custom)?;
            Ok(vec![RawEvidence::Owned(raw)])
        }
        other_scalars_give!(Vec::new());
        null_gives!(Vec::new());
    }
    d.deserialize_any(V)
}

/// One evidence object's JSON: borrowed from the input, or rebuilt (the split shape).
pub(super) enum RawEvidence<'a> {
    Borrowed(&'a RawValue),
    Owned(Box<RawValue>),
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use crate::alert::{Alert, DecodeError};

    #[test]
    fn pascal_case_members_become_camel_case() {
        for (input, want, borrowed) in [
            ("New", "new", true),
            ("InProgress", "inProgress", true),
            ("SuccessfullyRemediated", "successfullyRemediated", true),
            (
                "InformationalExpectedActivity",
                "informationalExpectedActivity",
                true,
            ),
            // Not a member we know: copied, first letter lowered.
            ("SomethingNew", "somethingNew", false),
            // Already camelCase, an acronym, or a near miss: as they are (no copy).
            ("inProgress", "inProgress", true),
            ("MTP", "MTP", true),
            ("Inprogress", "inprogress", false),
        ] {
            let out = super::camel(Cow::Borrowed(input));
            assert_eq!(out, want, "{input}");
            assert_eq!(matches!(out, Cow::Borrowed(_)), borrowed, "{input}");
        }
    }

    const NO_ALERT: &str = "not an alert: besides \"id\", every field that marks a Graph or \
        Defender for Endpoint alert (title, severity, createdDateTime, lastUpdateDateTime, \
        tenantId, … or their MDE names) is null or missing";

    #[test]
    fn an_id_with_nothing_else_is_not_an_alert() {
        for json in [
            r#"{"id":"a"}"#,
            // Every field of a Graph alert null but the id.
            r#"{"id":"a","title":null,"severity":null,"createdDateTime":null,"lastUpdateDateTime":null,
                "tenantId":null,"serviceSource":null,"providerAlertId":null,"alertWebUrl":null,
                "description":null,"status":null,"evidence":null,"mitreTechniques":null}"#,
            // And of an MDE alert.
            r#"{"id":"a","title":null,"severity":null,"alertCreationTime":null,"lastUpdateTime":null,
                "machineId":null,"aadTenantId":null,"computerDnsName":null,"relatedUser":null}"#,
            // Fields that do not mark an alert do not make one.
            r#"{"id":"a","description":"d","status":"new"}"#,
        ] {
            match Alert::from_json(json) {
                Err(e @ DecodeError::NotAnAlert(_)) => {
                    assert_eq!(e.to_string(), NO_ALERT, "{json}")
                }
                other => panic!("{json}: {other:?}"),
            }
        }
    }

    #[test]
    fn one_marking_field_with_a_value_makes_an_alert() {
        for field in [
            r#""title":"t""#,
            r#""severity":"high""#,
            r#""createdDateTime":"0001-01-01T00:00:00Z""#,
            r#""lastUpdateTime":"2026-01-02T03:04:05Z""#,
            r#""aadTenantId":"t""#,
        ] {
            let json = format!(r#"{{"id":"a","description":null,"status":null,{field}}}"#);
            assert!(Alert::from_json(&json).is_ok(), "{json}");
        }
        assert!(matches!(
            Alert::from_json(r#"{"title":"t"}"#),
            Err(DecodeError::NotAnAlert("it has no \"id\""))
        ));
    }
}
