//! Sign-in through azure_identity against the fake Entra endpoint over HTTPS: certificates
//! (PEM and PFX, assertions signed in pure Rust), token caching and early refresh, errors by
//! meaning, and the proxy setting (CONNECT tunnel with basic auth, and its 407).
#[path = "support/proxy.rs"]
mod proxy;
mod source_support;

use std::collections::BTreeSet;
use std::time::Duration;

use base64::Engine as _;
use defender_bridge::fake_api::samples::graph_alert;
use defender_bridge::fake_api::FakeCredential;
use defender_bridge::source::{
    build_http_client, Api, AuthError, Credential, EntraTokenProvider, HttpSettings, Poller,
    SecretString, TokenProvider,
};
use source_support::{ago, assert_exactly, Harness, Received};

const T1: &str = "5cde185e-a083-4b0a-8c28-8fdd2f2c0c5b";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

/// An RSA key and a self-signed certificate for it, as an admin would upload to the app.
fn make_cert() -> (rcgen::KeyPair, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "defender-bridge test app");
    let cert = params.self_signed(&key).expect("certificate");
    (key, cert)
}

async fn poll_one_alert(h: &Harness, settings: defender_bridge::source::TenantSettings) {
    let t = ago(10.0);
    h.fake
        .upsert_alert(T1, Api::Graph, graph_alert(T1, "da-cert", t, "new", 0));
    let got = Received::default();
    Poller::connect(settings, h.http.clone(), &h.state_dir())
        .expect("poller")
        .poll_once(&got.channel())
        .await
        .expect("poll with certificate sign-in");
    let expected: BTreeSet<_> = [(T1.to_string(), "da-cert".to_string(), t)].into();
    assert_exactly(&got.all(), &expected);
    assert_eq!(h.fake.tokens_issued(T1), 1);
}

/// Certificate and key in two PEM files, and both in one file.
#[tokio::test]
async fn certificate_pem_signs_in() {
    for combined in [false, true] {
        let h = Harness::new().await;
        let (key, cert) = make_cert();
        h.fake
            .add_tenant(T1, CLIENT, FakeCredential::Certificate(cert.pem()));
        let cert_path = h.dir.path().join("app.crt");
        let key_path = h.dir.path().join("app.key");
        let credential = if combined {
            std::fs::write(&cert_path, format!("{}{}", cert.pem(), key.serialize_pem()))
                .expect("write");
            Credential::CertificatePem {
                cert: cert_path,
                key: None,
            }
        } else {
            std::fs::write(&cert_path, cert.pem()).expect("write");
            std::fs::write(&key_path, key.serialize_pem()).expect("write");
            Credential::CertificatePem {
                cert: cert_path,
                key: Some(key_path),
            }
        };
        poll_one_alert(&h, h.settings("cert", T1, Api::Graph, credential)).await;
    }
}

/// A password-protected PKCS#12 file (AES-256, as OpenSSL 3 and Windows export them).
#[tokio::test]
async fn certificate_pfx_signs_in() {
    let h = Harness::new().await;
    let (key, cert) = make_cert();
    h.fake
        .add_tenant(T1, CLIENT, FakeCredential::Certificate(cert.pem()));
    let chain = p12_keystore::PrivateKeyChain::new(
        vec![1u8; 20],
        p12_keystore::PrivateKey::from_der(&key.serialize_der()).expect("pkcs8"),
        [p12_keystore::Certificate::from_der(cert.der()).expect("cert")],
    );
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry("app", p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    let pfx = store.writer("pfx-pass").write().expect("pfx");
    let path = h.dir.path().join("app.pfx");
    std::fs::write(&path, pfx).expect("write");

    // A wrong password is a clear error at start.
    let bad = Credential::CertificatePfx {
        path: path.clone(),
        password: Some(SecretString::new("nope")),
    };
    let err = EntraTokenProvider::new(&h.settings("pfx", T1, Api::Graph, bad), h.http.clone())
        .err()
        .expect("wrong PFX password");
    assert!(err.to_string().contains("wrong password"), "{err}");

    let good = Credential::CertificatePfx {
        path,
        password: Some(SecretString::new("pfx-pass")),
    };
    poll_one_alert(&h, h.settings("pfx", T1, Api::Graph, good)).await;
}

/// A certificate Entra does not know for the app is refused with its AADSTS code.
#[tokio::test]
async fn unknown_certificate_is_refused() {
    let h = Harness::new().await;
    let (_, registered) = make_cert();
    let (key, other) = make_cert();
    h.fake
        .add_tenant(T1, CLIENT, FakeCredential::Certificate(registered.pem()));
    let path = h.dir.path().join("other.pem");
    std::fs::write(&path, format!("{}{}", other.pem(), key.serialize_pem())).expect("write");
    let settings = h.settings(
        "cert",
        T1,
        Api::Graph,
        Credential::CertificatePem {
            cert: path,
            key: None,
        },
    );
    let provider = EntraTokenProvider::new(&settings, h.http.clone()).expect("provider");
    let err = provider.token().await.expect_err("refused");
    assert!(matches!(err, AuthError::Refused { .. }), "{err:?}");
    assert!(err.to_string().contains("AADSTS700027"), "{err}");
}

/// The token is cached across polls (one sign-in for three polls); a token with less than the
/// SDK's 300 s refresh margin left is renewed before use, so an expiring token is never sent.
#[tokio::test]
async fn tokens_are_cached_and_refreshed_before_expiry() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let mut poller = h.poller(settings.clone());
    let got = Received::default();
    for _ in 0..3 {
        poller.poll_once(&got.channel()).await.expect("poll");
    }
    assert_eq!(h.fake.tokens_issued(T1), 1);

    h.fake.set_token_lifetime(Duration::from_secs(240));
    let provider = EntraTokenProvider::new(&settings, h.http.clone()).expect("provider");
    let first = provider.token().await.expect("token");
    let second = provider.token().await.expect("token");
    assert_ne!(
        first.token.secret(),
        second.token.secret(),
        "renewed inside the refresh margin"
    );
    assert_eq!(h.fake.tokens_issued(T1), 3);
}

/// Unknown tenant and an app without consent in the tenant: messages say what to fix.
#[tokio::test]
async fn unknown_tenant_and_missing_consent() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let mut unknown = settings.clone();
    unknown.tenant_id = "99999999-9999-4999-8999-999999999999".into();
    let err = EntraTokenProvider::new(&unknown, h.http.clone())
        .expect("provider")
        .token()
        .await
        .expect_err("unknown");
    assert!(matches!(err, AuthError::UnknownTenant { .. }), "{err:?}");
    assert!(err.to_string().contains("AADSTS90002"));

    let mut other_app = settings;
    other_app.client_id = "00000000-aaaa-4bbb-8ccc-dddddddddddd".into();
    let err = EntraTokenProvider::new(&other_app, h.http.clone())
        .expect("provider")
        .token()
        .await
        .expect_err("no consent");
    assert!(matches!(err, AuthError::AppNotConsented { .. }), "{err:?}");
    assert!(err.to_string().contains("consent-url"), "{err}");
}

/// Through the proxy with the right credentials, sign-in and polling work and every request
/// went through the tunnel; with wrong ones the error says "proxy authentication required".
#[tokio::test]
async fn proxy_setting_is_used_and_407_is_explained() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let t = ago(10.0);
    h.fake
        .upsert_alert(T1, Api::Graph, graph_alert(T1, "da-proxy", t, "new", 0));
    let (proxy, seen) = proxy::start_proxy(h.fake.local_addr(), "user", "pa ss").await;
    let ca = h.fake.write_ca_file(h.dir.path()).expect("ca");
    let client = |proxy_url: String| {
        build_http_client(&HttpSettings {
            proxy: Some(proxy_url.into()),
            extra_ca_file: Some(ca.clone()),
            ..HttpSettings::default()
        })
        .expect("client")
    };

    let good = client(format!("http://user:pa%20ss@{proxy}"));
    let got = Received::default();
    Poller::connect(settings.clone(), good, &h.state_dir())
        .expect("poller")
        .poll_once(&got.channel())
        .await
        .expect("poll through the proxy");
    let expected: BTreeSet<_> = [(T1.to_string(), "da-proxy".to_string(), t)].into();
    assert_exactly(&got.all(), &expected);
    let port = h.fake.local_addr().port();
    let connects = seen.lock().expect("lock").clone();
    assert!(!connects.is_empty());
    assert!(
        connects
            .iter()
            .all(|l| l == &format!("connect localhost:{port} http/1.1")),
        "{connects:?}"
    );

    let bad = client(format!("http://user:wrong@{proxy}"));
    let err = EntraTokenProvider::new(&settings, bad)
        .expect("provider")
        .token()
        .await
        .expect_err("407");
    assert!(matches!(err, AuthError::ProxyAuthRequired), "{err:?}");
    assert!(!err.to_string().contains("wrong"));
}

/// Tokens are JWT-shaped with the claims `tenants verify` checks: `tid` is the tenant and
/// `roles` holds the API's permission (or what the fake was told, e.g. nothing).
#[tokio::test]
async fn token_carries_tid_and_roles_claims() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let claims = |token: &str| -> serde_json::Value {
        let payload = token.split('.').nth(1).expect("JWT payload");
        let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .expect("base64url");
        serde_json::from_slice(&json).expect("claims JSON")
    };
    let provider = EntraTokenProvider::new(&settings, h.http.clone()).expect("provider");
    let c = claims(provider.token().await.expect("token").token.secret());
    assert_eq!(c["tid"], T1);
    assert_eq!(c["roles"], serde_json::json!(["SecurityAlert.Read.All"]));
    assert_eq!(c["aud"], "https://graph.microsoft.com");

    h.fake.set_roles(T1, &[]);
    provider.invalidate();
    let c = claims(provider.token().await.expect("token").token.secret());
    assert_eq!(c["roles"], serde_json::json!([]));
}
