//! `tenants consent-url` and `tenants verify`: onboarding a customer tenant to the MSSP's
//! multi-tenant app (defender-api.md §4.5).

use base64::Engine;

use crate::config::Tenant;
use crate::source::{Api, Cloud, EntraTokenProvider, TokenProvider};

/// The admin-consent link a customer's administrator opens to grant the MSSP's multi-tenant
/// app in their tenant (defender-api.md §4.5 step 4). `tenant` narrows it to one customer
/// tenant instead of `common`.
pub fn consent_url(
    client_id: &str,
    cloud: Cloud,
    tenant: Option<&str>,
    redirect_uri: Option<&str>,
) -> String {
    let mut url =
        url::Url::parse(cloud.authority_host()).expect("the cloud's sign-in host is a URL");
    url.set_path(&format!("{}/oauth2/authorize", tenant.unwrap_or("common")));
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("prompt", "consent")
            .append_pair("client_id", client_id)
            .append_pair("response_type", "code")
            .append_pair("sso_reload", "true");
        if let Some(r) = redirect_uri {
            q.append_pair("redirect_uri", r);
        }
    }
    url.to_string()
}

/// The application permissions (token `roles`) that let the app read alerts.
pub fn required_roles(api: Api) -> &'static [&'static str] {
    match api {
        // defender-api.md §3.1
        Api::Graph => &["SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All"],
        // defender-api.md §1.2
        Api::Mde => &["Alert.Read.All", "Alert.ReadWrite.All"],
    }
}

/// Gets a token for the tenant and checks its `tid` and `roles` claims. Returns one line
/// saying OK or exactly what is wrong.
pub async fn verify(tenant: &Tenant, http: reqwest::Client) -> Result<String, String> {
    let s = &tenant.settings;
    let provider = EntraTokenProvider::new(s, http).map_err(|e| e.to_string())?;
    let token = provider.token().await.map_err(|e| e.to_string())?;
    let claims =
        claims(token.token.secret()).ok_or("the token is not a JWT; cannot read its claims")?;
    let tid = claims["tid"].as_str().unwrap_or_default();
    if looks_like_guid(&s.tenant_id) && !tid.eq_ignore_ascii_case(&s.tenant_id) {
        return Err(format!(
            "the token is for tenant {tid}, not {}",
            s.tenant_id
        ));
    }
    let roles: Vec<&str> = claims["roles"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let need = required_roles(s.api);
    if !roles.iter().any(|r| need.contains(r)) {
        return Err(format!(
            "the app has no {} permission in this tenant (token roles: {}); grant it and admin-consent again",
            need[0],
            if roles.is_empty() { "none".to_string() } else { roles.join(", ") }
        ));
    }
    Ok(format!("tenant {tid}, roles {}", roles.join(", ")))
}

fn looks_like_guid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// The payload of a JWT, unverified: Entra signed it, and we only read what it says about us.
fn claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_links_per_cloud() {
        assert_eq!(
            consent_url("11111111-2222-3333-4444-555555555555", Cloud::Commercial, None, None),
            "https://login.microsoftonline.com/common/oauth2/authorize?prompt=consent&client_id=11111111-2222-3333-4444-555555555555&response_type=code&sso_reload=true"
        );
        assert_eq!(
            consent_url("app", Cloud::GccHigh, Some("contoso.onmicrosoft.us"), Some("https://portal.azure.us")),
            "https://login.microsoftonline.us/contoso.onmicrosoft.us/oauth2/authorize?prompt=consent&client_id=app&response_type=code&sso_reload=true&redirect_uri=https%3A%2F%2Fportal.azure.us"
        );
    }

    #[test]
    fn reads_claims() {
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"tid":"t","roles":["Alert.Read.All"]}"#);
        let c = claims(&format!("h.{payload}.s")).unwrap();
        assert_eq!(c["tid"], "t");
        assert!(claims("not a jwt").is_none());
    }
}
