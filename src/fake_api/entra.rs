//! Fake Entra ID v2 token endpoint: `POST /{tenant}/oauth2/v2.0/token`, client credentials
//! with a secret or a certificate assertion. Error bodies follow Entra's shape
//! (`error`, `error_description` starting with the AADSTS code and ending in
//! `\r\nTrace ID: … \r\nCorrelation ID: … \r\nTimestamp: …`, `error_codes`).
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, State};
use axum::response::Response;
use chrono::Utc;
use serde_json::json;

use super::{json_response, Api, FakeCredential, Issued, RequestRecord, Shared};

/// An Entra error response.
fn entra_error(status: u16, error: &str, code: u32, description: &str) -> Response {
    let trace = uuid::Uuid::new_v4();
    let corr = uuid::Uuid::new_v4();
    let now = Utc::now().format("%Y-%m-%d %H:%M:%SZ");
    json_response(
        status,
        json!({
            "error": error,
            "error_description": format!(
                "AADSTS{code}: {description}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {now}"
            ),
            "error_codes": [code],
            "timestamp": now.to_string(),
            "trace_id": trace.to_string(),
            "correlation_id": corr.to_string(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        }),
    )
}

pub(super) async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant_id): Path<String>,
    body: String,
) -> Response {
    shared.wait_latency().await;
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let field = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let resp = answer(&shared, &tenant_id, field);
    // Record without the form: it holds the secret.
    shared.lock().requests.push(RequestRecord {
        at: Instant::now(),
        tenant: Some(tenant_id),
        method: "POST".into(),
        path: "/oauth2/v2.0/token".into(),
        query: Vec::new(),
        status: resp.status().as_u16(),
        prefer: None,
    });
    resp
}

fn answer<'a>(
    shared: &Shared,
    tenant_id: &str,
    field: impl Fn(&str) -> Option<&'a str>,
) -> Response {
    let client_id = field("client_id").unwrap_or("");
    if field("grant_type") != Some("client_credentials") {
        return entra_error(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    let scope = field("scope").unwrap_or("");
    let api = if scope.contains("graph.microsoft") {
        Api::Graph
    } else if scope.contains("securitycenter") {
        Api::Mde
    } else {
        return entra_error(
            400,
            "invalid_resource",
            500011,
            &format!("The resource principal named {scope} was not found in the tenant named {tenant_id}."),
        );
    };
    let (credential, expired, roles) = {
        let inner = shared.lock();
        let Some(t) = inner.tenants.get(tenant_id) else {
            return entra_error(
                400,
                "invalid_request",
                90002,
                &format!("Tenant '{tenant_id}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
            );
        };
        if t.client_id != client_id {
            return entra_error(
                400,
                "unauthorized_client",
                700016,
                &format!("Application with identifier '{client_id}' was not found in the directory '{tenant_id}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."),
            );
        }
        (t.credential.clone(), t.secret_expired, t.roles.clone())
    };
    let secret = field("client_secret");
    let assertion = field("client_assertion");
    match (&credential, secret, assertion) {
        (FakeCredential::Secret(_), Some(_), _) if expired => {
            return entra_error(
                401,
                "invalid_client",
                7000222,
                &format!("The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."),
            )
        }
        (FakeCredential::Secret(expected), Some(given), _) => {
            if given != expected {
                return entra_error(
                    401,
                    "invalid_client",
                    7000215,
                    &format!("Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."),
                );
            }
        }
        (FakeCredential::Certificate(pem), _, Some(jwt)) => {
            let token_url = format!("{}/{tenant_id}/oauth2/v2.0/token", shared.base_url);
            if let Err(why) = check_assertion(pem, jwt, client_id, &token_url) {
                return entra_error(
                    401,
                    "invalid_client",
                    700027,
                    &format!("Client assertion failed signature validation. ({})", why.replace('"', "'")),
                );
            }
        }
        _ => {
            return entra_error(
                401,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
            )
        }
    }
    let lifetime = *shared
        .token_lifetime
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let now = Utc::now();
    let token = access_token(tenant_id, client_id, api, roles, now, lifetime);
    let mut inner = shared.lock();
    inner.tokens.insert(
        token.clone(),
        Issued {
            tenant: tenant_id.to_string(),
            api,
            issued: now,
            expires: now + chrono::Duration::from_std(lifetime).unwrap_or(chrono::Duration::MAX),
        },
    );
    *inner
        .token_requests
        .entry(tenant_id.to_string())
        .or_default() += 1;
    json_response(
        200,
        json!({
            "token_type": "Bearer",
            "expires_in": lifetime.as_secs(),
            "ext_expires_in": lifetime.as_secs(),
            "access_token": token,
        }),
    )
}

/// Verifies the client assertion as Entra does: RS256 signed by the registered certificate's
/// key, `x5t` = its SHA-1 thumbprint, aud = token URL, iss = sub = client id, not expired.
fn check_assertion(
    cert_pem: &str,
    jwt: &str,
    client_id: &str,
    token_url: &str,
) -> Result<(), String> {
    use base64::Engine as _;
    use sha1::{Digest, Sha1};
    use tokio_rustls::rustls::pki_types::{pem::PemObject, CertificateDer};
    let header = jsonwebtoken::decode_header(jwt).map_err(|e| e.to_string())?;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let x5t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha1::digest(der.as_ref()));
    if header.x5t.as_deref() != Some(x5t.as_str()) {
        return Err(format!(
            "x5t {:?} does not match the registered certificate",
            header.x5t
        ));
    }
    let key =
        jsonwebtoken::DecodingKey::from_rsa_pem(cert_pem.as_bytes()).map_err(|e| e.to_string())?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[token_url]);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_string());
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "nbf", "aud", "iss", "sub"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
        .map_err(|e| e.to_string())?;
    if data.claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err("no jti".into());
    }
    Ok(())
}

/// A JWT-shaped access token with the claims a real one carries (`aud`, `tid`, `appid`,
/// `roles`, times), so `tenants verify` can read `tid` and `roles` (defender-api.md §4.5 step 6).
/// The signature is random: the fake recognises its tokens by lookup, not by signature.
fn access_token(
    tenant_id: &str,
    client_id: &str,
    api: Api,
    roles: Option<Vec<String>>,
    now: chrono::DateTime<Utc>,
    lifetime: std::time::Duration,
) -> String {
    use base64::Engine as _;
    let b64 = |v: &serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let (aud, role) = match api {
        Api::Graph => ("https://graph.microsoft.com", "SecurityAlert.Read.All"),
        Api::Mde => ("https://api.securitycenter.microsoft.com", "Alert.Read.All"),
    };
    let iat = now.timestamp();
    let claims = json!({
        "aud": aud,
        "iss": format!("https://sts.windows.net/{tenant_id}/"),
        "iat": iat,
        "nbf": iat,
        "exp": iat + i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX / 2),
        "appid": client_id,
        "azp": client_id,
        "idtyp": "app",
        "oid": uuid::Uuid::new_v4().to_string(),
        "sub": uuid::Uuid::new_v4().to_string(),
        "tid": tenant_id,
        "roles": roles.unwrap_or_else(|| vec![role.to_string()]),
        "ver": "1.0",
    });
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": "fake-api"});
    let signature =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes());
    format!("{}.{}.{signature}", b64(&header), b64(&claims))
}
