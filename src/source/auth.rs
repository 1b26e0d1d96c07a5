//! Entra ID sign-in: one credential per tenant, behind a small token trait.
//!
//! Client secrets go through azure_identity's `ClientSecretCredential`; certificates through
//! `ClientAssertionCredential` with an RS256 assertion signed in pure Rust (rust-stack.md §1.5),
//! so no OpenSSL. The SDK caches the token and refreshes it when fewer than 300 s remain
//! (azure_identity 1.0 `cache.rs`, rust-stack.md §1.2); a 401 from the API forces one refresh
//! through [`TokenProvider::invalidate`].
use std::error::Error as _;
use std::path::Path;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use azure_core::cloud::{CloudConfiguration, CustomConfiguration};
use azure_core::credentials::{AccessToken, Secret, TokenCredential};
use azure_core::http::{ClientMethodOptions, ClientOptions, RetryOptions, Transport};
use azure_identity::{
    ClientAssertion, ClientAssertionCredential, ClientAssertionCredentialOptions,
    ClientSecretCredential, ClientSecretCredentialOptions,
};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha1::{Digest, Sha1};
use thiserror::Error;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::tenant::{Credential, TenantSettings};

/// A bearer token source for one tenant and one API scope.
#[async_trait]
pub trait TokenProvider: Send + Sync {
    /// A valid token, from cache when it has more than five minutes left.
    async fn token(&self) -> Result<AccessToken, AuthError>;
    /// Drops the cached token: the API answered 401, so the next `token()` signs in again.
    fn invalidate(&self);
    /// When the credential stops working, where that can be known: a certificate's notAfter,
    /// or the `secret_expires` date of the configuration.
    fn credential_expiry(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        None
    }
}

/// Sign-in failures, by meaning (issue 4 §2; codes from the Entra error reference and
/// peers.md §6 "Token and secret expiry, and proxies"). No variant ever carries the secret.
#[derive(Debug, Error)]
pub enum AuthError {
    #[error(
        "client secret expired (AADSTS7000222): create a new secret for app {client_id} and update the configuration"
    )]
    SecretExpired { client_id: String },
    #[error(
        "wrong client secret (AADSTS7000215): Entra ID does not know this secret for app {client_id}; use the secret's value, not its ID"
    )]
    WrongSecret { client_id: String },
    #[error(
        "application {client_id} not found in tenant {tenant_id} (AADSTS700016): the app is not consented in this tenant (`tenants consent-url` prints the admin-consent link) or the tenant id is wrong"
    )]
    AppNotConsented {
        client_id: String,
        tenant_id: String,
    },
    #[error(
        "unknown tenant {tenant_id} (AADSTS90002): check the tenant id and the cloud (commercial/gcc vs gcc-high/dod sign in on different hosts)"
    )]
    UnknownTenant { tenant_id: String },
    #[error("proxy authentication required (HTTP 407): check the user and password in the proxy setting")]
    ProxyAuthRequired,
    #[error("Entra ID refused the sign-in ({code}): {description}")]
    Refused {
        /// The HTTP status when the SDK kept it.
        status: Option<u16>,
        code: String,
        description: String,
    },
    #[error("cannot reach Entra ID: {0}")]
    Transport(String),
    #[error("cannot use the certificate: {0}")]
    Certificate(String),
    #[error("invalid sign-in settings: {0}")]
    Settings(String),
}

impl AuthError {
    /// A short name of the kind of failure, for the metric's label.
    pub fn kind(&self) -> &'static str {
        match self {
            AuthError::SecretExpired { .. } => "secret_expired",
            AuthError::WrongSecret { .. } => "wrong_secret",
            AuthError::AppNotConsented { .. } => "app_not_consented",
            AuthError::UnknownTenant { .. } => "unknown_tenant",
            AuthError::ProxyAuthRequired => "proxy_auth",
            AuthError::Refused { .. } => "refused",
            AuthError::Transport(_) => "transport",
            AuthError::Certificate(_) => "certificate",
            AuthError::Settings(_) => "settings",
        }
    }

    /// Errors that will not go away by retrying soon; the poller backs off to its maximum.
    pub fn is_permanent(&self) -> bool {
        !matches!(
            self,
            AuthError::Transport(_)
                | AuthError::Refused {
                    status: Some(500..),
                    ..
                }
        )
    }
}

type CredentialFactory = dyn Fn() -> Result<Arc<dyn TokenCredential>, AuthError> + Send + Sync;

/// The real token provider: azure_identity credentials, one per tenant.
pub struct EntraTokenProvider {
    scope: &'static str,
    settings: Arc<TenantSettings>,
    factory: Box<CredentialFactory>,
    credential: RwLock<Arc<dyn TokenCredential>>,
    /// The expiry of the last token handed out: a different one is a refresh.
    last_expiry: std::sync::Mutex<Option<azure_core::time::OffsetDateTime>>,
    credential_expiry: Option<chrono::DateTime<chrono::Utc>>,
}

impl EntraTokenProvider {
    /// Builds the credential for `settings`. `http` is the shared client (system roots + extra
    /// CA + proxy, see `source::http`); azure_core uses it as its transport. Certificates are
    /// read and checked here, so a bad file is reported at start, not at the first poll.
    pub fn new(settings: &TenantSettings, http: reqwest::Client) -> Result<Self, AuthError> {
        let settings = Arc::new(settings.clone());
        let authority = settings.authority_host();
        if !authority.starts_with("https://") {
            return Err(AuthError::Settings(format!(
                "the sign-in host must use https: {authority}"
            )));
        }
        let token_url = format!(
            "{authority}/{}/oauth2/v2.0/token",
            settings.tenant_id.trim()
        );
        let client_options = move || {
            let mut custom = CustomConfiguration::default();
            custom.authority_host = authority.clone();
            ClientOptions {
                transport: Some(Transport::new(Arc::new(http.clone()))),
                // The poller owns retry policy; the SDK default (8 tries, up to 60 s) would stall
                // a poll for a minute on a dead endpoint (rust-stack.md §1.2).
                retry: RetryOptions::none(),
                cloud: Some(Arc::new(CloudConfiguration::Custom(custom))),
                ..Default::default()
            }
        };
        let tenant_id = settings.tenant_id.trim().to_string();
        let client_id = settings.client_id.trim().to_string();
        let mut not_after = None;
        let factory: Box<CredentialFactory> = match &settings.credential {
            Credential::Secret(secret) => {
                let secret = secret.clone();
                Box::new(move || {
                    let cred = ClientSecretCredential::new(
                        &tenant_id,
                        client_id.clone(),
                        Secret::new(secret.expose().to_string()),
                        Some(ClientSecretCredentialOptions {
                            client_options: client_options(),
                        }),
                    )
                    .map_err(|e| AuthError::Settings(e.to_string()))?;
                    Ok(cred as Arc<dyn TokenCredential>)
                })
            }
            Credential::CertificatePem { cert, key } => {
                let signer = CertificateSigner::from_pem_files(cert, key.as_deref())?;
                not_after = signer.not_after;
                cert_factory(signer, tenant_id, client_id, token_url, client_options)
            }
            Credential::CertificatePfx { path, password } => {
                let pw = password.as_ref().map(|p| p.expose()).unwrap_or("");
                let signer = CertificateSigner::from_pfx_file(path, pw)?;
                not_after = signer.not_after;
                cert_factory(signer, tenant_id, client_id, token_url, client_options)
            }
        };
        let credential = factory()?;
        let credential_expiry = not_after.or(settings.secret_expires);
        Ok(EntraTokenProvider {
            scope: settings.scope(),
            settings,
            factory,
            credential: RwLock::new(credential),
            last_expiry: std::sync::Mutex::new(None),
            credential_expiry,
        })
    }

    fn map_error(&self, err: azure_core::Error) -> AuthError {
        let s = &self.settings;
        let mut mapped = classify(&err, &s.client_id, &s.tenant_id);
        // Entra never echoes a secret, but make sure no transport message ever can.
        if let Credential::Secret(secret) = &s.credential {
            if !secret.expose().is_empty() {
                let scrub = |t: &mut String| *t = t.replace(secret.expose(), "***");
                match &mut mapped {
                    AuthError::Refused { description, .. } => scrub(description),
                    AuthError::Transport(t) | AuthError::Settings(t) => scrub(t),
                    _ => {}
                }
            }
        }
        mapped
    }
}

fn cert_factory(
    signer: CertificateSigner,
    tenant_id: String,
    client_id: String,
    token_url: String,
    client_options: impl Fn() -> ClientOptions + Send + Sync + 'static,
) -> Box<CredentialFactory> {
    let assertion = CertificateAssertion(Arc::new(AssertionInner {
        signer,
        client_id: client_id.clone(),
        token_url,
    }));
    Box::new(move || {
        let cred = ClientAssertionCredential::new(
            tenant_id.clone(),
            client_id.clone(),
            assertion.clone(),
            Some(ClientAssertionCredentialOptions {
                client_options: client_options(),
            }),
        )
        .map_err(|e| AuthError::Settings(e.to_string()))?;
        Ok(cred as Arc<dyn TokenCredential>)
    })
}

#[async_trait]
impl TokenProvider for EntraTokenProvider {
    async fn token(&self) -> Result<AccessToken, AuthError> {
        let cred = self
            .credential
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let name = &self.settings.name;
        match cred.get_token(&[self.scope], None).await {
            Ok(token) => {
                // The SDK caches the token: a new expiry is a new token from Entra ID.
                let mut last = self.last_expiry.lock().unwrap_or_else(|p| p.into_inner());
                if *last != Some(token.expires_on) {
                    *last = Some(token.expires_on);
                    metrics::counter!("defender_bridge_token_refreshes_total", "tenant" => name.clone())
                        .increment(1);
                }
                Ok(token)
            }
            Err(e) => {
                let e = self.map_error(e);
                metrics::counter!("defender_bridge_sign_in_failures_total", "tenant" => name.clone(), "kind" => e.kind())
                    .increment(1);
                Err(e)
            }
        }
    }

    fn credential_expiry(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.credential_expiry
    }

    fn invalidate(&self) {
        // The SDK cache has no "forget": a fresh credential starts with an empty cache.
        match (self.factory)() {
            Ok(fresh) => *self.credential.write().unwrap_or_else(|p| p.into_inner()) = fresh,
            Err(e) => {
                tracing::warn!(tenant = %self.settings.name, "cannot renew the credential: {e}")
            }
        }
    }
}

/// Maps an azure_identity error to its meaning. The SDK wraps the token endpoint's answer as
/// `ErrorKind::HttpResponse { status, error_code: "7000215,…" }` inside a `Credential` error
/// (azure_identity 1.0 `handle_entra_response`, rust-stack.md §1.2). But azure_identity 1.0
/// reads `error_description` as a borrowed `&str`, which fails for any description holding a
/// JSON escape (Entra writes `\r\n` before "Trace ID"); the answer then only survives as text
/// in a deserialisation error, so the AADSTS codes are also looked for in the text.
fn classify(err: &azure_core::Error, client_id: &str, tenant_id: &str) -> AuthError {
    use azure_core::error::ErrorKind;
    let mut current = err;
    loop {
        if let ErrorKind::HttpResponse {
            status, error_code, ..
        } = current.kind()
        {
            let codes: Vec<String> = error_code
                .as_deref()
                .unwrap_or("")
                .split(',')
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect();
            let status = u16::from(*status);
            if codes.is_empty() && status == 407 {
                return AuthError::ProxyAuthRequired;
            }
            return by_code(
                &codes,
                Some(status),
                &current.to_string(),
                client_id,
                tenant_id,
            );
        }
        match current
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<azure_core::Error>())
        {
            Some(inner) => current = inner,
            None => break,
        }
    }
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    let codes = aadsts_codes(&text);
    if !codes.is_empty() {
        let from = text.find("AADSTS").unwrap_or(0);
        return by_code(&codes, None, &text[from..], client_id, tenant_id);
    }
    // Transport trouble. A proxy's 407 on CONNECT: hyper-util's tunnel says "proxy
    // authorization required".
    if text.contains("proxy authorization required") || text.contains(" 407") {
        return AuthError::ProxyAuthRequired;
    }
    AuthError::Transport(first_sentence(&text))
}

/// The meaning of Entra's error codes (issue 4 §2; peers.md §6).
fn by_code(
    codes: &[String],
    status: Option<u16>,
    description: &str,
    client_id: &str,
    tenant_id: &str,
) -> AuthError {
    let has = |c: &str| codes.iter().any(|x| x == c);
    if has("7000222") {
        AuthError::SecretExpired {
            client_id: client_id.to_string(),
        }
    } else if has("7000215") {
        AuthError::WrongSecret {
            client_id: client_id.to_string(),
        }
    } else if has("700016") {
        AuthError::AppNotConsented {
            client_id: client_id.to_string(),
            tenant_id: tenant_id.to_string(),
        }
    } else if has("90002") {
        AuthError::UnknownTenant {
            tenant_id: tenant_id.to_string(),
        }
    } else {
        AuthError::Refused {
            status,
            code: if codes.is_empty() {
                "no error code".into()
            } else {
                codes
                    .iter()
                    .map(|c| format!("AADSTS{c}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
            description: first_sentence(description),
        }
    }
}

/// Every `AADSTS<digits>` in `text`, digits only, without repeats.
fn aadsts_codes(text: &str) -> Vec<String> {
    let mut codes: Vec<String> = Vec::new();
    for (i, _) in text.match_indices("AADSTS") {
        let digits: String = text[i + 6..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if !digits.is_empty() && !codes.contains(&digits) {
            codes.push(digits);
        }
    }
    codes
}

/// Entra descriptions end with "Trace ID: … Correlation ID: … Timestamp: …"; keep the meaning.
fn first_sentence(s: &str) -> String {
    let s = s.replace("\\r\\n", " ").replace(['\r', '\n'], " ");
    let s = s.split("Trace ID:").next().unwrap_or(&s);
    let s = s.split("To troubleshoot").next().unwrap_or(s).trim();
    s.chars().take(400).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use azure_core::error::ErrorKind;

    fn http_error(status: u16, code: &str) -> azure_core::Error {
        let inner = azure_core::Error::new(
            ErrorKind::HttpResponse {
                status: azure_core::http::StatusCode::from(status),
                error_code: Some(code.to_string()),
                raw_response: None,
            },
            "AADSTS7000222: The provided client secret keys for app 'x' are expired. Trace ID: 1",
        );
        azure_core::Error::with_error(
            ErrorKind::Credential,
            inner,
            "ClientSecretCredential authentication failed.",
        )
    }

    #[test]
    fn typed_sdk_errors_map_by_code() {
        let e = classify(&http_error(401, "7000222"), "app", "t");
        assert!(matches!(e, AuthError::SecretExpired { .. }), "{e:?}");
        let e = classify(&http_error(400, "700016"), "app", "t");
        assert!(matches!(e, AuthError::AppNotConsented { .. }), "{e:?}");
        let e = classify(&http_error(400, "50126,12345"), "app", "t");
        assert!(e.to_string().contains("AADSTS50126,AADSTS12345"), "{e}");
    }

    #[test]
    fn codes_found_in_text() {
        assert_eq!(
            aadsts_codes("x AADSTS7000215: y AADSTS7000215 AADSTS9"),
            ["7000215", "9"]
        );
        assert_eq!(
            first_sentence("AADSTS1: bad thing.\\r\\nTrace ID: 5"),
            "AADSTS1: bad thing."
        );
    }
}

/// An RS256 key, its certificate's thumbprint and expiry.
pub struct CertificateSigner {
    key: EncodingKey,
    /// base64url(SHA-1(certificate DER)), the JWT `x5t` header (rust-stack.md §1.5).
    x5t: String,
    /// The certificate's notAfter, for the expiry warning (issue 10 §7).
    not_after: Option<chrono::DateTime<chrono::Utc>>,
}

impl std::fmt::Debug for CertificateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateSigner")
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

impl CertificateSigner {
    /// From the DER certificate and a PKCS#1 or PKCS#8 RSA key.
    pub fn new(cert_der: &[u8], key: &PrivateKeyDer<'_>) -> Result<Self, AuthError> {
        let (label, der) = match key {
            PrivateKeyDer::Pkcs1(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
            _ => {
                return Err(AuthError::Certificate(
                    "the private key must be RSA (PKCS#1 or PKCS#8); Entra ID certificate credentials use RS256".into(),
                ))
            }
        };
        let key = EncodingKey::from_rsa_pem(pem_block(label, der).as_bytes()).map_err(|e| {
            AuthError::Certificate(format!("the private key is not a usable RSA key: {e}"))
        })?;
        let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha1::digest(cert_der));
        let not_after = x509_parser::parse_x509_certificate(cert_der)
            .ok()
            .and_then(|(_, c)| {
                chrono::DateTime::from_timestamp(c.validity().not_after.timestamp(), 0)
            });
        Ok(CertificateSigner {
            key,
            x5t,
            not_after,
        })
    }

    /// `cert` holds the certificate (and the key if `key` is `None`), PEM.
    pub fn from_pem_files(cert: &Path, key: Option<&Path>) -> Result<Self, AuthError> {
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| AuthError::Certificate(format!("cannot read {}: {e}", p.display())))
        };
        let cert_pem = read(cert)?;
        let cert_der = CertificateDer::from_pem_slice(&cert_pem).map_err(|e| {
            AuthError::Certificate(format!("no PEM certificate in {}: {e}", cert.display()))
        })?;
        let key_path = key.unwrap_or(cert);
        let key_pem = if key.is_some() {
            read(key_path)?
        } else {
            cert_pem
        };
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            AuthError::Certificate(format!("no PEM private key in {}: {e}", key_path.display()))
        })?;
        Self::new(&cert_der, &key_der)
    }

    /// A PKCS#12 file (p12-keystore, pure Rust; rust-stack.md §1.5).
    pub fn from_pfx_file(path: &Path, password: &str) -> Result<Self, AuthError> {
        let bytes = std::fs::read(path)
            .map_err(|e| AuthError::Certificate(format!("cannot read {}: {e}", path.display())))?;
        let store = p12_keystore::KeyStore::from_pkcs12(
            &bytes,
            password,
            p12_keystore::Pkcs12ImportPolicy::Strict,
        )
        .map_err(|e| {
            AuthError::Certificate(format!(
                "cannot open {} (wrong password or not PKCS#12): {e}",
                path.display()
            ))
        })?;
        let (_, chain) = store.private_key_chain().ok_or_else(|| {
            AuthError::Certificate(format!("{} holds no private key", path.display()))
        })?;
        let cert = chain.certs().first().ok_or_else(|| {
            AuthError::Certificate(format!(
                "{} holds no certificate for its key",
                path.display()
            ))
        })?;
        let key = PrivateKeyDer::Pkcs8(chain.key().as_der().to_vec().into());
        Self::new(cert.as_der(), &key)
    }

    /// The client assertion JWT (Entra "certificate credentials" assertion format; claims per
    /// rust-stack.md §1.5: aud = token URL, iss = sub = client id, jti, nbf, exp = +300 s).
    pub fn assertion(&self, client_id: &str, token_url: &str) -> Result<String, AuthError> {
        let now = chrono::Utc::now().timestamp();
        let claims = serde_json::json!({
            "aud": token_url,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid::Uuid::new_v4().to_string(),
            "nbf": now,
            "iat": now,
            "exp": now + 300,
        });
        let mut header = Header::new(Algorithm::RS256);
        header.x5t = Some(self.x5t.clone());
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| AuthError::Certificate(format!("cannot sign the assertion: {e}")))
    }
}

fn pem_block(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[derive(Debug)]
struct AssertionInner {
    signer: CertificateSigner,
    client_id: String,
    token_url: String,
}

#[derive(Debug, Clone)]
struct CertificateAssertion(Arc<AssertionInner>);

#[async_trait]
impl ClientAssertion for CertificateAssertion {
    async fn secret(&self, _: Option<ClientMethodOptions<'_>>) -> azure_core::Result<String> {
        self.0
            .signer
            .assertion(&self.0.client_id, &self.0.token_url)
            .map_err(|e| {
                azure_core::Error::with_message(
                    azure_core::error::ErrorKind::Credential,
                    e.to_string(),
                )
            })
    }
}
