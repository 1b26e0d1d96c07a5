//! The webhook receiver of tests/support/webhook.rs against reqwest (the client defender-bridge
//! posts with): requests are recorded as sent, replies follow the script with the last one
//! repeating, a slow reply trips a client timeout, a dropped connection is an error without a
//! status, and HTTPS works with the test CA.

mod support;

use std::time::Duration;

use support::webhook::{Reply, Request, WebhookServer};
use support::Pki;

const WAIT: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("reqwest client")
}

#[tokio::test]
async fn records_requests_and_answers_from_the_script() {
    let server = WebhookServer::start(vec![
        Reply::Status(500, "first fails"),
        Reply::Status(429, "slow down"),
        Reply::Status(200, "ok"),
    ]);
    let client = client();
    let body = serde_json::json!({"text": "Hoch: Ransomware ランサムウェア", "n": 1});
    let mut got = Vec::new();
    for _ in 0..4 {
        let response = client
            .post(server.url("/hooks/teams?sig=abc"))
            .header("x-api-key", "k-123")
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("JSON"))
            .send()
            .await
            .expect("post");
        let status = response.status().as_u16();
        got.push((status, response.text().await.expect("body")));
    }
    assert_eq!(
        got,
        [
            (500, "first fails".to_string()),
            (429, "slow down".into()),
            (200, "ok".into()),
            (200, "ok".into()),
        ]
    );
    let requests = server.wait_for(4, WAIT).await;
    assert_eq!(requests.len(), 4);
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hooks/teams?sig=abc");
        assert_eq!(r.header("X-Api-Key"), Some("k-123"));
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.json(), body);
        assert_eq!(r.body, serde_json::to_vec(&body).expect("JSON"));
        assert_eq!(r.content_encoding, None);
    }
    assert_eq!(
        requests.iter().map(|r| r.reply.clone()).collect::<Vec<_>>(),
        [
            Reply::Status(500, "first fails"),
            Reply::Status(429, "slow down"),
            Reply::Status(200, "ok"),
            Reply::Status(200, "ok"),
        ]
    );
    // reqwest keeps the connection alive across requests.
    assert_eq!(server.connections(), 1);
    assert!(requests.iter().all(|r| r.connection == 0));
}

#[tokio::test]
async fn full_replies_carry_headers() {
    let server = WebhookServer::start(vec![Reply::Full {
        status: 503,
        headers: vec![("retry-after".into(), "7".into())],
        body: "maintenance".into(),
    }]);
    let response = client()
        .post(server.url("/"))
        .body("x")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("7")
    );
    assert_eq!(response.text().await.expect("body"), "maintenance");
}

/// The body is kept as it came: compressed bytes stay compressed, the encoding is noted.
#[tokio::test]
async fn bodies_are_recorded_as_received() {
    let server = WebhookServer::start(vec![Reply::Status(202, "")]);
    let bytes: Vec<u8> = vec![0x1f, 0x8b, 0x08, 0x00, 0xff, 0x00, 0x0d, 0x0a];
    let response = client()
        .post(server.url("/gz"))
        .header("content-encoding", "gzip")
        .body(bytes.clone())
        .send()
        .await
        .expect("post");
    assert_eq!(response.status().as_u16(), 202);
    // A chunked body (written by hand: reqwest here has no streaming bodies) is recorded
    // de-chunked.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
            .await
            .expect("connect");
        stream
            .write_all(
                b"PUT /chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\
                  Connection: close\r\n\r\nb\r\nchunk one, \r\n9\r\nchunk two\r\n0\r\n\r\n",
            )
            .await
            .expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("read");
        assert!(answer.starts_with("HTTP/1.1 202 Accepted\r\n"), "{answer}");
    }
    let requests = server.wait_for(2, WAIT).await;
    assert_eq!(requests[0].body, bytes);
    assert_eq!(requests[0].content_encoding.as_deref(), Some("gzip"));
    assert_eq!(requests[1].method, "PUT");
    assert_eq!(requests[1].header("transfer-encoding"), Some("chunked"));
    assert_eq!(requests[1].text(), "chunk one, chunk two");
}

#[tokio::test]
async fn a_hanging_reply_trips_the_client_timeout_and_then_answers() {
    let server = WebhookServer::start(vec![
        Reply::Hang(Duration::from_millis(1500)),
        Reply::Hang(Duration::from_millis(200)),
        Reply::Status(204, ""),
    ]);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .expect("client");
    let err = impatient
        .post(server.url("/slow"))
        .body("1")
        .send()
        .await
        .expect_err("times out");
    assert!(err.is_timeout(), "{err}");
    let started = std::time::Instant::now();
    let response = client()
        .post(server.url("/slow"))
        .body("2")
        .send()
        .await
        .expect("a patient client gets the answer");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(response.text().await.expect("body"), "ok");
    assert!(started.elapsed() >= Duration::from_millis(200));
    let requests = server.wait_for(2, WAIT).await;
    assert_eq!(requests[0].reply, Reply::Hang(Duration::from_millis(1500)));
    assert_eq!(requests[1].text(), "2");
}

#[tokio::test]
async fn close_drops_the_connection_without_an_answer() {
    let server = WebhookServer::start(vec![Reply::Close, Reply::Status(200, "ok")]);
    let client = client();
    let err = client
        .post(server.url("/drop"))
        .body("first")
        .send()
        .await
        .expect_err("no answer");
    assert_eq!(err.status(), None, "{err}");
    assert!(!err.is_timeout(), "{err}");
    let response = client
        .post(server.url("/drop"))
        .body("second")
        .send()
        .await
        .expect("the next request is answered");
    assert_eq!(response.status().as_u16(), 200);
    let requests = server.wait_for(2, WAIT).await;
    assert_eq!(
        requests.iter().map(Request::text).collect::<Vec<_>>(),
        ["first", "second"]
    );
    // The dropped connection is not reused.
    assert_eq!(server.connections(), 2);
    assert_eq!((requests[0].connection, requests[1].connection), (0, 1));
}

#[tokio::test]
async fn https_with_the_test_ca() {
    let pki = Pki::new("webhook");
    let server = WebhookServer::start_tls(vec![Reply::Status(200, "ok")], &pki);
    let ca = std::fs::read(&pki.ca).expect("read the CA");
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA"))
        .timeout(WAIT)
        .build()
        .expect("client");
    assert!(server.url("/x").starts_with("https://localhost:"));
    let response = client
        .post(server.url("/x"))
        .body("secure")
        .send()
        .await
        .expect("post over TLS");
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(server.wait_for(1, WAIT).await[0].text(), "secure");

    // Without the test CA, the handshake fails and nothing is recorded.
    let err = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client")
        .post(server.url("/x"))
        .body("insecure")
        .send()
        .await
        .expect_err("an unknown CA");
    assert!(err.is_connect(), "{err}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
#[should_panic(expected = "the webhook server got 0 of 1 requests")]
async fn wait_for_panics_with_what_it_has() {
    let server = WebhookServer::start(vec![Reply::Status(200, "ok")]);
    server.wait_for(1, Duration::from_millis(200)).await;
}

#[test]
fn set_script_restarts_from_its_first_reply() {
    let server = WebhookServer::start(vec![Reply::Status(500, "no")]);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let post = |body: &'static str| {
        runtime.block_on(async {
            client()
                .post(server.url("/"))
                .body(body)
                .send()
                .await
                .expect("post")
                .status()
                .as_u16()
        })
    };
    assert_eq!(post("a"), 500);
    assert_eq!(post("b"), 500);
    server.set_script(vec![Reply::Status(201, "yes"), Reply::Status(200, "ok")]);
    assert_eq!((post("c"), post("d"), post("e")), (201, 200, 200));
    assert_eq!(server.wait_for_blocking(5, WAIT).len(), 5);
}
