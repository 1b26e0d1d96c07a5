//! One alert version as the queue stores it: its tenant, its identity and the alert object as
//! the API sent it, as JSON (a record is read back by the version that wrote it or a newer one;
//! an unknown or damaged record is an error, not a panic: the forwarder dead-letters it).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// One alert version in the queue.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub tenant_name: String,
    pub tenant_id: String,
    pub api: String,
    pub alert_id: String,
    pub last_update: DateTime<Utc>,
    /// The alert object exactly as the API returned it.
    pub alert: Box<serde_json::value::RawValue>,
    /// Only for the destination with this URL (a dead letter replayed for it); `None`: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only: Option<String>,
}

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and a raw JSON value: serialising cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The record decoder meets whatever a damaged file holds: it answers, never panics.
        #[test]
        fn any_bytes_decode_to_a_record_or_an_error(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Record::decode(&bytes);
        }

        /// What is encoded decodes to the same, whatever the texts hold.
        #[test]
        fn records_round_trip(name in ".*", id in ".*", title in ".*") {
            let alert = serde_json::json!({"id": id, "title": title}).to_string();
            let r = Record {
                tenant_name: name,
                tenant_id: "t".into(),
                api: "graph".into(),
                alert_id: id,
                last_update: Utc::now(),
                alert: serde_json::value::RawValue::from_string(alert).expect("json"),
                only: None,
            };
            let back = Record::decode(&r.encode()).expect("decodes");
            proptest::prop_assert_eq!(&back.tenant_name, &r.tenant_name);
            proptest::prop_assert_eq!(&back.alert_id, &r.alert_id);
            proptest::prop_assert_eq!(back.alert.get(), r.alert.get());
            proptest::prop_assert_eq!(back.last_update, r.last_update);
        }
    }
}
