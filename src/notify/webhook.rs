//! A digest POSTed as JSON through the daemon's HTTP client (its proxy and CA): the generic
//! shape, a Teams Workflows card or a Slack message (src/notify/message.rs).

use std::time::Duration;

use super::message::Digest;
use super::rule::Shape;
use super::NotifyError;
use crate::http_body::{first_line, read_head};
use crate::source::SecretString;

/// A webhook that has not answered by then is tried again later.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The most of an error answer's body that is read: a message shows its first line only, and
/// `TIMEOUT` bounds the time of a receiver that streams a body without end, not its bytes.
const ERROR_BODY_BYTES: usize = 8 * 1024;

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
    let head = read_head(resp, ERROR_BODY_BYTES).await;
    Err(NotifyError::Http {
        host,
        status: status.as_u16(),
        body: first_line(&String::from_utf8_lossy(&head)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Reads one request (headers and a `Content-Length` body) and answers 500 with a chunked
    /// body that never ends; returns how many bytes it wrote before the client hung up.
    async fn endless_500(listener: tokio::net::TcpListener) -> usize {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).await.expect("read");
            assert!(n > 0, "the client closed before its request was whole");
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req).to_ascii_lowercase();
            if let Some(end) = text.find("\r\n\r\n") {
                let length: usize = text
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if req.len() >= end + 4 + length {
                    break;
                }
            }
        }
        let mut written = 0;
        let head = "HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n\
                    transfer-encoding: chunked\r\n\r\n11\r\n\nbusy, try later\n\r\n";
        if conn.write_all(head.as_bytes()).await.is_err() {
            return written;
        }
        written += head.len();
        let mut chunk = b"10000\r\n".to_vec();
        chunk.extend(std::iter::repeat_n(b'x', 0x10000));
        chunk.extend_from_slice(b"\r\n");
        while conn.write_all(&chunk).await.is_ok() {
            written += chunk.len();
        }
        written
    }

    #[tokio::test]
    async fn an_error_answer_that_never_ends_is_read_only_as_far_as_its_first_line() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = tokio::spawn(endless_500(listener));
        let url = SecretString::new(format!("http://127.0.0.1:{port}/hook"));
        let posted = tokio::time::timeout(
            Duration::from_secs(10),
            post(
                &reqwest::Client::new(),
                &url,
                &[],
                &serde_json::json!({"x": 1}),
            ),
        )
        .await
        .expect("post returns without reading the body to its end");
        match posted {
            Err(NotifyError::Http { host, status, body }) => {
                assert_eq!(
                    (host.as_str(), status, body.as_str()),
                    ("127.0.0.1", 500, "busy, try later")
                );
            }
            other => panic!("expected the 500, got {other:?}"),
        }
        let written = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server sees the client hang up")
            .expect("server task");
        // What the kernel buffers on loopback (a few MiB) plus the 8 KiB read; reading the body
        // to its end would take the whole 30 s timeout and gigabytes.
        assert!(
            written < 64 << 20,
            "{written} bytes written before the client hung up"
        );
    }
}
