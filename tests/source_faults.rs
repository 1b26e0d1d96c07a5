//! API faults scripted at the HTTPS fake: 429 with Retry-After, 500s for one tenant while
//! others flow, token expiry in the middle of paging, dropped connections, bad secrets, a gateway's
//! HTML error page.
mod source_support;

use std::collections::BTreeSet;
use std::time::Duration;

use defender_bridge::fake_api::samples::graph_alert;
use defender_bridge::source::{Api, Credential, SecretString};
use source_support::{ago, assert_exactly, wait_until, Harness, Received, Version};
use tokio_util::sync::CancellationToken;

const A: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const B: &str = "bbbbbbbb-0000-4000-8000-000000000002";
const C: &str = "cccccccc-0000-4000-8000-000000000003";

fn seed(h: &Harness, tenant: &str, n: usize, prefix: &str) -> BTreeSet<Version> {
    (0..n)
        .map(|i| {
            let t = ago(90.0 - i as f64);
            let id = format!("da-{prefix}-{i:03}");
            h.fake
                .upsert_alert(tenant, Api::Graph, graph_alert(tenant, &id, t, "new", i));
            (tenant.to_string(), id, t)
        })
        .collect()
}

/// Two 429s with `Retry-After: 1`: the poller waits at least that second before asking again,
/// and the request rate seen at the fake never exceeds the configured limit (20 per 2 s) in
/// any 2 s window.
#[tokio::test]
async fn throttled_requests_wait_retry_after_and_rate_stays_under_limit() {
    let h = Harness::new().await;
    let mut settings = h.tenant("contoso", A, Api::Graph);
    settings.page_size = Some(2);
    let period = Duration::from_secs(2);
    settings.rate_limits = Some(vec![(20, period)]);
    let expected = seed(&h, A, 40, "rate");
    h.fake.throttle_next(A, 2, 1);
    let got = Received::default();
    let mut poller = h.poller(settings);
    poller.poll_once(&got.channel()).await.expect("poll");
    assert_exactly(&got.all(), &expected);

    let reqs: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET")
        .collect();
    assert_eq!(reqs.iter().filter(|r| r.status == 429).count(), 2);
    for pair in reqs.windows(2) {
        if pair[0].status == 429 {
            let waited = pair[1].at.duration_since(pair[0].at);
            assert!(
                waited >= Duration::from_secs(1),
                "asked again after {waited:?}"
            );
        }
    }
    for (i, r) in reqs.iter().enumerate() {
        let in_window = reqs[i..]
            .iter()
            .take_while(|u| u.at.duration_since(r.at) < period)
            .count();
        assert!(in_window <= 20, "{in_window} requests within {period:?}");
    }
}

/// Tenant A answers 500 for as long as the outage lasts; B and C, polled by their own tasks,
/// get all their alerts meanwhile. When A's API recovers, A catches up with nothing lost.
#[tokio::test]
async fn server_errors_for_one_tenant_do_not_delay_the_others() {
    let h = Harness::new().await;
    let got = Received::default();
    let stop = CancellationToken::new();
    let mut expected = BTreeSet::new();
    let mut status_a = None;
    for (name, tenant) in [("a", A), ("b", B), ("c", C)] {
        let settings = h.tenant(name, tenant, Api::Graph);
        expected.extend(seed(&h, tenant, 15, name));
        if tenant == A {
            h.fake.fail_for(A, Duration::from_secs(3600));
        }
        let poller = h.poller(settings);
        if tenant == A {
            status_a = Some(poller.status());
        }
        tokio::spawn(poller.run(got.channel(), stop.clone()));
    }
    let status_a = status_a.expect("status of A");
    wait_until("B and C complete", || {
        got.of(B).len() == 15 && got.of(C).len() == 15
    })
    .await;
    wait_until("A reported failing", || {
        status_a.lock().expect("lock").consecutive_failures >= 2
    })
    .await;
    assert!(got.of(A).is_empty());
    let err = status_a
        .lock()
        .expect("lock")
        .last_error
        .clone()
        .expect("error text");
    assert!(err.contains("HTTP 500"), "{err}");
    // More alerts for B during A's outage still flow.
    let more_b = seed(&h, B, 20, "b2");
    expected.extend(more_b);
    wait_until("B's new alerts", || got.of(B).len() == 15 + 20).await;
    assert!(got.of(A).is_empty());

    h.fake.fail_for(A, Duration::ZERO);
    wait_until("A catches up", || got.of(A).len() == 15).await;
    stop.cancel();
    let of = |t: &str| {
        expected
            .iter()
            .filter(|v| v.0 == t)
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_exactly(&got.of(A), &of(A));
    assert_exactly(&got.of(B), &of(B));
    assert_exactly(&got.of(C), &of(C));
}

/// The fake declares every token expired after the first page: the second page gets a 401, the
/// poller signs in again once and finishes the paging.
#[tokio::test]
async fn token_expiry_in_the_middle_of_paging() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", A, Api::Graph);
    let expected = seed(&h, A, 30, "exp");
    h.fake.expire_tokens_after(A, 1);
    let got = Received::default();
    h.poller(settings)
        .poll_once(&got.channel())
        .await
        .expect("poll");
    assert_exactly(&got.all(), &expected);
    assert_eq!(h.fake.tokens_issued(A), 2, "one sign-in, one renewal");
    let statuses: Vec<u16> = h
        .fake
        .requests()
        .iter()
        .filter(|r| r.method == "GET")
        .map(|r| r.status)
        .collect();
    // Page 1, then the expired token's 401, then page 2 asked again and the rest.
    assert_eq!(statuses[..3], [200, 401, 200], "{statuses:?}");
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        1,
        "{statuses:?}"
    );
}

/// Two responses break off mid-body (connection dropped): retried with backoff, nothing lost.
#[tokio::test]
async fn dropped_connections_are_retried() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", A, Api::Graph);
    let expected = seed(&h, A, 12, "drop");
    h.fake.drop_connections(A, 2);
    let got = Received::default();
    h.poller(settings)
        .poll_once(&got.channel())
        .await
        .expect("poll");
    assert_exactly(&got.all(), &expected);
}

/// A wrong secret and an expired secret are reported by meaning, without the secret; a third
/// tenant polled at the same time gets all its alerts.
#[tokio::test]
async fn wrong_and_expired_secrets_are_clear_and_isolated() {
    let h = Harness::new().await;
    let wrong_secret = "Wr0ng~Secret.Value_123";
    let mut wrong = h.tenant("wrong", A, Api::Graph);
    wrong.credential = Credential::Secret(SecretString::new(wrong_secret));
    let expired = h.tenant("expired", B, Api::Graph);
    h.fake.expire_secret(B);
    let good = h.tenant("good", C, Api::Graph);
    let expected_c = seed(&h, C, 12, "good");
    seed(&h, A, 3, "a");
    seed(&h, B, 3, "b");

    // One poll each shows the error text directly.
    let got = Received::default();
    let e = h
        .poller(wrong.clone())
        .poll_once(&got.channel())
        .await
        .expect_err("wrong secret");
    let text = e.to_string();
    assert!(
        text.contains("wrong client secret (AADSTS7000215)"),
        "{text}"
    );
    assert!(!text.contains(wrong_secret) && !format!("{e:?}").contains(wrong_secret));
    let e = h
        .poller(expired.clone())
        .poll_once(&got.channel())
        .await
        .expect_err("expired");
    assert!(
        e.to_string()
            .contains("client secret expired (AADSTS7000222)"),
        "{e}"
    );

    // Running together, the good tenant is unaffected.
    let stop = CancellationToken::new();
    let (pa, pb) = (h.poller(wrong), h.poller(expired));
    let (sa, sb) = (pa.status(), pb.status());
    tokio::spawn(pa.run(got.channel(), stop.clone()));
    tokio::spawn(pb.run(got.channel(), stop.clone()));
    tokio::spawn(h.poller(good).run(got.channel(), stop.clone()));
    wait_until("good tenant complete", || got.of(C).len() == 12).await;
    wait_until("failures reported", || {
        sa.lock().expect("lock").last_error.is_some()
            && sb.lock().expect("lock").last_error.is_some()
    })
    .await;
    stop.cancel();
    assert_exactly(&got.all(), &expected_c);
    assert!(sa
        .lock()
        .expect("lock")
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("AADSTS7000215"));
    assert!(sb
        .lock()
        .expect("lock")
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("AADSTS7000222"));
}

/// Two responses take longer than the client's request timeout: each times out, is retried
/// with backoff, and the poll completes with nothing lost.
#[tokio::test]
async fn timeouts_are_retried() {
    let mut h = Harness::new().await;
    h.http = defender_bridge::source::build_http_client(&defender_bridge::source::HttpSettings {
        extra_ca_file: Some(h.fake.write_ca_file(h.dir.path()).expect("ca")),
        request_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .expect("client");
    let settings = h.tenant("contoso", A, Api::Graph);
    let expected = seed(&h, A, 12, "slow");
    h.fake.set_latency(Duration::from_millis(20));
    h.fake.slow_next(A, 2, Duration::from_secs(3));
    let got = Received::default();
    h.poller(settings)
        .poll_once(&got.channel())
        .await
        .expect("poll");
    assert_exactly(&got.all(), &expected);
    assert!(
        h.fake
            .requests()
            .iter()
            .filter(|r| r.method == "GET")
            .count()
            >= 4
    );
}

/// A gateway's 502 page of 200 KiB in the API's place: HTML, not the JSON error envelope, and
/// larger than the error read limit. The error names the status and shows the page's start on
/// one line (not a placeholder, not 200 KiB); two such answers are retried within the poll, and
/// every alert arrives once the API answers again.
#[tokio::test]
async fn a_large_html_error_page_is_shown_by_its_start() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", A, Api::Graph);
    let expected = seed(&h, A, 12, "gw");
    let page = format!(
        "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\u{1b}[1m\t{}</body></html>\r\n",
        "x".repeat(200 * 1024)
    );
    let mut poller = h.poller(settings);
    let got = Received::default();

    // Every attempt of the poll gets the page: the poll fails with its start.
    h.fake.error_page_next(A, 3, 502, page.clone());
    let e = poller.poll_once(&got.channel()).await.expect_err("502s");
    let text = e.to_string();
    assert!(
        text.contains(
            "HTTP 502: <html> <head><title>502 Bad Gateway</title></head> <body> [1m xxx"
        ),
        "{text}"
    );
    assert!(text.len() < 1_000, "{} bytes", text.len());
    assert!(got.all().is_empty());

    // Two pages, then the API: retried within one poll, nothing lost.
    h.fake.error_page_next(A, 2, 502, page);
    poller.poll_once(&got.channel()).await.expect("poll");
    assert_exactly(&got.all(), &expected);
    let gateway_errors = h.fake.requests().iter().filter(|r| r.status == 502).count();
    assert_eq!(gateway_errors, 5);
}
