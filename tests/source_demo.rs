//! The `demo` feed: the fake serves bundled sample alerts over time (new alerts and status
//! changes), and the real poller receives exactly what it served.
mod source_support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use defender_bridge::fake_api::samples::DemoTenant;
use defender_bridge::fake_api::FakeApi;
use defender_bridge::source::{
    build_http_client, Api, Credential, HttpSettings, Poller, SecretString, TenantSettings,
};
use source_support::{assert_exactly, Received, Version};

#[tokio::test]
async fn demo_feed_serves_new_alerts_and_updates() {
    let tenant = DemoTenant {
        tenant_id: "0d3f4a5b-6c7d-4e8f-9a0b-1c2d3e4f5a6b".into(),
        client_id: "7e8f9a0b-1c2d-4e3f-8a5b-6c7d8e9f0a1b".into(),
        secret: "demo-secret".into(),
    };
    let fake = FakeApi::start_demo(std::slice::from_ref(&tenant), Duration::from_millis(150))
        .await
        .expect("demo fake");
    let dir = tempfile::tempdir().expect("tempdir");
    let http = build_http_client(&HttpSettings {
        extra_ca_file: Some(fake.write_ca_file(dir.path()).expect("ca")),
        ..HttpSettings::default()
    })
    .expect("client");
    let mut settings = TenantSettings::new(
        "demo",
        &tenant.tenant_id,
        &tenant.client_id,
        Credential::Secret(SecretString::new(tenant.secret.clone())),
    );
    settings.authority_host = Some(fake.base_url());
    settings.api_base_url = Some(fake.base_url());
    settings.overlap = Duration::from_secs(30);
    let mut poller = Poller::connect(settings, http, dir.path()).expect("poller");
    let got = Received::default();
    // Poll until at least one alert was seen new, in progress and resolved.
    loop {
        poller.poll_once(&got.channel()).await.expect("poll");
        let mut versions: HashMap<String, usize> = HashMap::new();
        for v in got.all() {
            *versions.entry(v.1).or_default() += 1;
        }
        if versions.values().any(|n| *n >= 3) && versions.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Every poll completed, so what was served is exactly what was received.
    let served: BTreeSet<Version> = fake
        .served()
        .into_iter()
        .filter(|s| s.api == Api::Graph)
        .map(|s| (s.tenant, s.id, s.last_update))
        .collect();
    assert_exactly(&got.all(), &served);
}
