//! Detaching an alert from the JSON text it borrows from ([`Alert::into_owned`]).

use std::borrow::Cow;

use serde_json::value::RawValue;

use super::{
    Account, Alert, Comment, Device, Evidence, EvidenceDetail, FileDetails, FileEvidence, Ip,
    Mailbox, Process, Registry, Text, Url, UserEvidence,
};

fn own(t: Text<'_>) -> Text<'static> {
    Cow::Owned(t.into_owned())
}

fn opt(t: Option<Text<'_>>) -> Option<Text<'static>> {
    t.map(own)
}

fn texts(v: Vec<Text<'_>>) -> Vec<Text<'static>> {
    v.into_iter().map(own).collect()
}

fn raw(r: Cow<'_, RawValue>) -> Cow<'static, RawValue> {
    Cow::Owned(r.into_owned())
}

impl EvidenceDetail<'_> {
    fn into_owned(self) -> EvidenceDetail<'static> {
        match self {
            EvidenceDetail::Device(d) => EvidenceDetail::Device(Box::new(d.into_owned())),
            EvidenceDetail::File(f) => EvidenceDetail::File(f.into_owned()),
            EvidenceDetail::Process(p) => EvidenceDetail::Process(Box::new(p.into_owned())),
            EvidenceDetail::User(u) => EvidenceDetail::User(u.into_owned()),
            EvidenceDetail::Ip(i) => EvidenceDetail::Ip(i.into_owned()),
            EvidenceDetail::Url(u) => EvidenceDetail::Url(u.into_owned()),
            EvidenceDetail::Registry(r) => EvidenceDetail::Registry(r.into_owned()),
            EvidenceDetail::Mailbox(m) => EvidenceDetail::Mailbox(m.into_owned()),
            EvidenceDetail::Other { name, raw: r } => EvidenceDetail::Other {
                name: own(name),
                raw: raw(r),
            },
        }
    }
}

impl Alert<'_> {
    /// The same alert, owning its texts: for an alert kept after the JSON it was decoded
    /// from is gone.
    pub fn into_owned(self) -> Alert<'static> {
        Alert {
            api: self.api,
            id: own(self.id),
            provider_alert_id: opt(self.provider_alert_id),
            tenant_id: opt(self.tenant_id),
            incident_id: opt(self.incident_id),
            investigation_id: opt(self.investigation_id),
            title: opt(self.title),
            description: opt(self.description),
            recommended_actions: opt(self.recommended_actions),
            severity: self.severity,
            status: opt(self.status),
            classification: opt(self.classification),
            determination: opt(self.determination),
            category: opt(self.category),
            service_source: opt(self.service_source),
            detection_source: opt(self.detection_source),
            product_name: opt(self.product_name),
            detector_id: opt(self.detector_id),
            alert_policy_id: opt(self.alert_policy_id),
            investigation_state: opt(self.investigation_state),
            threat_display_name: opt(self.threat_display_name),
            threat_family_name: opt(self.threat_family_name),
            actor_display_name: opt(self.actor_display_name),
            mitre_techniques: texts(self.mitre_techniques),
            system_tags: texts(self.system_tags),
            assigned_to: opt(self.assigned_to),
            rbac_group_name: opt(self.rbac_group_name),
            alert_web_url: opt(self.alert_web_url),
            incident_web_url: opt(self.incident_web_url),
            created_date_time: self.created_date_time,
            last_update_date_time: self.last_update_date_time,
            first_activity_date_time: self.first_activity_date_time,
            last_activity_date_time: self.last_activity_date_time,
            resolved_date_time: self.resolved_date_time,
            comments: self.comments.into_iter().map(Comment::into_owned).collect(),
            evidence: self
                .evidence
                .into_iter()
                .map(Evidence::into_owned)
                .collect(),
            custom_details: self.custom_details.map(raw),
            additional_data: self.additional_data.map(raw),
        }
    }
}

impl Comment<'_> {
    fn into_owned(self) -> Comment<'static> {
        Comment {
            comment: opt(self.comment),
            created_by: opt(self.created_by),
            created_date_time: self.created_date_time,
        }
    }
}

impl Evidence<'_> {
    /// The same evidence item, owning its texts.
    pub fn into_owned(self) -> Evidence<'static> {
        Evidence {
            created_date_time: self.created_date_time,
            verdict: opt(self.verdict),
            remediation_status: opt(self.remediation_status),
            detection_status: opt(self.detection_status),
            roles: texts(self.roles),
            tags: texts(self.tags),
            detail: self.detail.into_owned(),
        }
    }
}

impl Device<'_> {
    fn into_owned(self) -> Device<'static> {
        Device {
            mde_device_id: opt(self.mde_device_id),
            azure_ad_device_id: opt(self.azure_ad_device_id),
            device_dns_name: opt(self.device_dns_name),
            host_name: opt(self.host_name),
            nt_domain: opt(self.nt_domain),
            dns_domain: opt(self.dns_domain),
            os_platform: opt(self.os_platform),
            os_build: opt(self.os_build),
            version: opt(self.version),
            health_status: opt(self.health_status),
            risk_score: opt(self.risk_score),
            rbac_group_id: opt(self.rbac_group_id),
            rbac_group_name: opt(self.rbac_group_name),
            onboarding_status: opt(self.onboarding_status),
            defender_av_status: opt(self.defender_av_status),
            first_seen_date_time: self.first_seen_date_time,
            last_ip_address: opt(self.last_ip_address),
            last_external_ip_address: opt(self.last_external_ip_address),
            ip_interfaces: texts(self.ip_interfaces),
            logged_on_users: self
                .logged_on_users
                .into_iter()
                .map(Account::into_owned)
                .collect(),
        }
    }
}

impl FileDetails<'_> {
    fn into_owned(self) -> FileDetails<'static> {
        FileDetails {
            file_name: opt(self.file_name),
            file_path: opt(self.file_path),
            sha1: opt(self.sha1),
            sha256: opt(self.sha256),
            md5: opt(self.md5),
            file_size: opt(self.file_size),
            file_publisher: opt(self.file_publisher),
            signer: opt(self.signer),
            issuer: opt(self.issuer),
        }
    }
}

impl FileEvidence<'_> {
    fn into_owned(self) -> FileEvidence<'static> {
        FileEvidence {
            file_details: self.file_details.into_owned(),
            mde_device_id: opt(self.mde_device_id),
        }
    }
}

impl Account<'_> {
    fn into_owned(self) -> Account<'static> {
        Account {
            account_name: opt(self.account_name),
            domain_name: opt(self.domain_name),
            user_sid: opt(self.user_sid),
            azure_ad_user_id: opt(self.azure_ad_user_id),
            user_principal_name: opt(self.user_principal_name),
            display_name: opt(self.display_name),
        }
    }
}

impl UserEvidence<'_> {
    fn into_owned(self) -> UserEvidence<'static> {
        UserEvidence {
            user_account: self.user_account.into_owned(),
        }
    }
}

impl Process<'_> {
    fn into_owned(self) -> Process<'static> {
        Process {
            process_id: opt(self.process_id),
            parent_process_id: opt(self.parent_process_id),
            process_command_line: opt(self.process_command_line),
            process_creation_date_time: self.process_creation_date_time,
            parent_process_creation_date_time: self.parent_process_creation_date_time,
            image_file: self.image_file.into_owned(),
            parent_process_image_file: self.parent_process_image_file.into_owned(),
            user_account: self.user_account.into_owned(),
            mde_device_id: opt(self.mde_device_id),
        }
    }
}

impl Ip<'_> {
    fn into_owned(self) -> Ip<'static> {
        Ip {
            ip_address: opt(self.ip_address),
            country_letter_code: opt(self.country_letter_code),
        }
    }
}

impl Url<'_> {
    fn into_owned(self) -> Url<'static> {
        Url { url: opt(self.url) }
    }
}

impl Registry<'_> {
    fn into_owned(self) -> Registry<'static> {
        Registry {
            registry_key: opt(self.registry_key),
            registry_hive: opt(self.registry_hive),
            registry_value_name: opt(self.registry_value_name),
            registry_value: opt(self.registry_value),
            registry_value_type: opt(self.registry_value_type),
        }
    }
}

impl Mailbox<'_> {
    fn into_owned(self) -> Mailbox<'static> {
        Mailbox {
            display_name: opt(self.display_name),
            primary_address: opt(self.primary_address),
            user_account: self.user_account.into_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{self, Decoded, Limits};

    #[test]
    fn borrows_plain_text_only() {
        let plain = Alert::from_json(r#"{"id":"a","title":"x y"}"#).expect("decodes");
        assert!(matches!(plain.title, Some(Cow::Borrowed(_))));
        // Text with JSON escapes has to be copied.
        let escaped = Alert::from_json(r#"{"id":"a","title":"x\ny"}"#).expect("decodes");
        assert!(matches!(escaped.title, Some(Cow::Owned(_))));
    }

    #[test]
    fn owned_copy_is_the_same_alert() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).expect("tests/data") {
            let path = entry.expect("entry").path();
            if !path
                .extension()
                .is_some_and(|e| e == "json" || e == "ndjson")
            {
                continue;
            }
            let bytes = std::fs::read(&path).expect("fixture");
            input::decode(&bytes, Limits::default(), |d| {
                if let Decoded::Alert(_, alert) = d {
                    let before = serde_json::to_string(&alert).expect("serializes");
                    let owned: Alert<'static> = alert.into_owned();
                    assert_eq!(serde_json::to_string(&owned).expect("serializes"), before);
                    seen += 1;
                }
            });
        }
        assert!(seen >= 10, "{seen} alerts");
    }
}
