//! A digest POSTed as JSON through the daemon's HTTP client (its proxy and CA): the generic
//! shape, a Teams Workflows card or a Slack message (src/notify/message.rs).

use std::time::Duration;

use super::message::Digest;
use super::rule::Shape;
use super::NotifyError;
use crate::source::SecretString;

/// A webhook that has not answered by then is tried again later.
const TIMEOUT: Duration = Duration::from_secs(30);

pub fn body(shape: Shape, digest: &Digest) -> serde_json::Value {
    match shape {
        Shape::Generic => digest.generic(),
        Shape::Teams => digest.teams(),
        Shape::Slack => digest.slack(),
    }
}

/// Posts `body`; any 2xx is delivered. The errors never show the URL (a Teams or Slack URL
/// is its own credential), only its host.
pub async fn post(
    http: &reqwest::Client,
    url: &SecretString,
    headers: &[(String, SecretString)],
    body: &serde_json::Value,
) -> Result<(), NotifyError> {
    let host = url::Url::parse(url.expose())
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    let bytes = serde_json::to_vec(body).map_err(|e| NotifyError::Message(e.to_string()))?;
    let mut req = http
        .post(url.expose())
        .timeout(TIMEOUT)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(bytes);
    for (k, v) in headers {
        req = req.header(k.as_str(), v.expose());
    }
    let resp = req.send().await.map_err(|e| {
        let e = e.without_url();
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        let lower = text.to_ascii_lowercase();
        if lower.contains("dns") || lower.contains("failed to lookup") || lower.contains("resolve")
        {
            NotifyError::Dns(format!("{host}: {text}"))
        } else if lower.contains("certificate") || lower.contains("tls") {
            NotifyError::Tls(format!("{host}: {text}"))
        } else {
            NotifyError::Connect(format!("{host}: {text}"))
        }
    })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let text = resp.text().await.unwrap_or_default();
    let first: String = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    Err(NotifyError::Http {
        host,
        status: status.as_u16(),
        body: first,
    })
}
