//! Sample alerts (written for this project in the Graph `alerts_v2` and MDE `/api/alerts`
//! shapes, defender-api.md §1.6 and §3.2) and the `demo` feed that serves them over time.
use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{Api, FakeApi, FakeApiError, FakeCredential};

const GRAPH_SAMPLES: [&str; 4] = [
    include_str!("samples/graph-powershell.json"),
    include_str!("samples/graph-mimikatz.json"),
    include_str!("samples/graph-phishing.json"),
    include_str!("samples/graph-ransomware.json"),
];
const MDE_SAMPLE: &str = include_str!("samples/mde-alert.json");

/// Timestamp as the APIs write it: 7 fraction digits, `Z`.
pub fn api_time(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

/// The bundled Graph sample alerts, parsed once: a test makes 100,000 alerts from them, and
/// parsing all four for each one was wasted work.
fn graph_templates() -> &'static [Value] {
    static TEMPLATES: OnceLock<Vec<Value>> = OnceLock::new();
    TEMPLATES.get_or_init(|| {
        GRAPH_SAMPLES
            .iter()
            .map(|s| serde_json::from_str(s).expect("bundled sample is valid JSON"))
            .collect()
    })
}

/// The bundled Graph sample alerts, as templates.
pub fn graph_samples() -> Vec<Value> {
    graph_templates().to_vec()
}

/// A Graph alert from sample `variant` with the given id, tenant, times and status.
pub fn graph_alert(
    tenant_id: &str,
    id: &str,
    last_update: DateTime<Utc>,
    status: &str,
    variant: usize,
) -> Value {
    let mut a = graph_templates()[variant % GRAPH_SAMPLES.len()].clone();
    let t = api_time(last_update);
    a["id"] = id.into();
    a["providerAlertId"] = id.trim_start_matches("da").into();
    a["tenantId"] = tenant_id.into();
    a["status"] = status.into();
    a["lastUpdateDateTime"] = t.clone().into();
    a["createdDateTime"] = t.clone().into();
    a["firstActivityDateTime"] = t.clone().into();
    a["lastActivityDateTime"] = t.into();
    a["alertWebUrl"] = format!("https://security.microsoft.com/alerts/{id}?tid={tenant_id}").into();
    a
}

/// An MDE alert with the given id, tenant, lastUpdate time and status (`New`, `InProgress`,
/// `Resolved`).
pub fn mde_alert(tenant_id: &str, id: &str, last_update: DateTime<Utc>, status: &str) -> Value {
    static TEMPLATE: OnceLock<Value> = OnceLock::new();
    let mut a = TEMPLATE
        .get_or_init(|| serde_json::from_str(MDE_SAMPLE).expect("bundled sample is valid JSON"))
        .clone();
    let t = api_time(last_update);
    a["id"] = id.into();
    a["aadTenantId"] = tenant_id.into();
    a["status"] = status.into();
    a["lastUpdateTime"] = t.clone().into();
    a["alertCreationTime"] = t.clone().into();
    a["firstEventTime"] = t.clone().into();
    a["lastEventTime"] = t.into();
    a
}

/// A tenant of the demo feed.
#[derive(Clone, Debug)]
pub struct DemoTenant {
    pub tenant_id: String,
    pub client_id: String,
    pub secret: String,
}

impl FakeApi {
    /// Starts the fake with `tenants` and a feed of Graph sample alerts: three alerts a few
    /// minutes old at once, then every `every` either a new alert or a status change of an
    /// existing one (new → inProgress → resolved with a classification), round-robin over the
    /// tenants. The feed stops when the `FakeApi` is dropped.
    pub async fn start_demo(
        tenants: &[DemoTenant],
        every: Duration,
    ) -> Result<FakeApi, FakeApiError> {
        let fake = FakeApi::start().await?;
        for t in tenants {
            fake.add_tenant(
                &t.tenant_id,
                &t.client_id,
                FakeCredential::Secret(t.secret.clone()),
            );
        }
        let mut feed = DemoFeed::default();
        let now = Utc::now();
        for t in tenants {
            for m in [6i64, 4, 2] {
                feed.new_alert(&fake, &t.tenant_id, now - chrono::Duration::minutes(m));
            }
        }
        let ids: Vec<String> = tenants.iter().map(|t| t.tenant_id.clone()).collect();
        let shared = fake.shared.clone();
        let stop = fake.stop.clone();
        let handle = FakeApi {
            shared,
            addr: fake.addr,
            ca_pem: fake.ca_pem.clone(),
            // A child token: dropping this handle inside the task must not stop the server.
            stop: stop.child_token(),
        };
        tokio::spawn(async move {
            let mut step = 0usize;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
                if ids.is_empty() {
                    continue;
                }
                let tenant = &ids[step % ids.len()];
                if step.is_multiple_of(2) {
                    feed.new_alert(&handle, tenant, Utc::now());
                } else {
                    feed.advance(&handle, tenant);
                }
                step += 1;
            }
        });
        Ok(fake)
    }
}

#[derive(Default)]
struct DemoFeed {
    made: usize,
    /// (tenant, id) of alerts not yet resolved.
    open: Vec<(String, String)>,
}

impl DemoFeed {
    fn new_alert(&mut self, fake: &FakeApi, tenant: &str, at: DateTime<Utc>) {
        self.made += 1;
        let id = format!("da{}_{}", uuid::Uuid::new_v4(), self.made);
        fake.upsert_alert(
            tenant,
            Api::Graph,
            graph_alert(tenant, &id, at, "new", self.made - 1),
        );
        self.open.push((tenant.to_string(), id));
    }

    fn advance(&mut self, fake: &FakeApi, tenant: &str) {
        let Some(pos) = self.open.iter().position(|(t, _)| t == tenant) else {
            return;
        };
        let id = self.open[pos].1.clone();
        let Some(mut alert) = fake.alert(tenant, Api::Graph, &id) else {
            return;
        };
        let now = api_time(Utc::now());
        if alert["status"] == "new" {
            alert["status"] = "inProgress".into();
            alert["assignedTo"] = "soc-analyst@mssp.example".into();
        } else {
            alert["status"] = "resolved".into();
            alert["classification"] = "truePositive".into();
            alert["determination"] = "malware".into();
            alert["resolvedDateTime"] = now.clone().into();
            self.open.remove(pos);
        }
        alert["lastUpdateDateTime"] = now.into();
        fake.upsert_alert(tenant, Api::Graph, alert);
    }
}
