//! MDE /api/alerts polling: time-window paging that never relies on nextLink.
mod source_support;

use std::collections::BTreeSet;

use defender_bridge::fake_api::samples::mde_alert;
use defender_bridge::source::Api;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use source_support::{ago, assert_exactly, Harness, OnPage, Received, Version};

const T1: &str = "4bdc074d-9f72-4af9-b17e-7ecc1e1bfb4a";

fn list_queries(h: &Harness) -> Vec<std::collections::HashMap<String, String>> {
    h.fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/alerts" && r.status == 200)
        .map(|r| r.query.into_iter().collect())
        .collect()
}

/// 35 alerts in one window with `$top=10` are paged with `$skip`, each page repeating a tenth
/// of the one before. One of them is updated between page 1 and page 2 and so leaves the window
/// being paged, shifting the later ones back by one: the overlap keeps that shift from
/// skipping an alert (plain `$skip` paging would lose one), and both versions of the updated
/// alert arrive. The alerts are older than the overlap, so a miss would be for good.
#[tokio::test]
async fn skip_paging_survives_an_update_during_paging() {
    let h = Harness::new().await;
    let settings = h.tenant("fabrikam", T1, Api::Mde);
    let mut expected = BTreeSet::new();
    for i in 0..35 {
        let t = ago(3000.0 - 60.0 * i as f64);
        let id = format!("da63{i:04}_100");
        h.fake
            .upsert_alert(T1, Api::Mde, mde_alert(T1, &id, t, "New"));
        expected.insert((T1.to_string(), id, t));
    }
    let mut poller = h.poller(settings);
    let got = Mutex::new(Vec::<Version>::new());
    let expected = Mutex::new(expected);
    let batches = AtomicUsize::new(0);
    let sink = OnPage(|batch: &defender_bridge::source::AlertBatch| {
        let mut got = got.lock().unwrap();
        for a in &batch.alerts {
            got.push((batch.tenant_id.clone(), a.id.clone(), a.last_update));
        }
        if batches.fetch_add(1, Ordering::SeqCst) == 0 {
            // On page 1 (ids sort first): resolved now, so it leaves the window.
            let t = ago(0.0);
            h.fake
                .upsert_alert(T1, Api::Mde, mde_alert(T1, "da630001_100", t, "Resolved"));
            expected
                .lock()
                .unwrap()
                .insert((T1.to_string(), "da630001_100".to_string(), t));
        }
    });
    let result = poller.poll_once(&sink).await;
    let (mut got, expected) = (got.into_inner().unwrap(), expected.into_inner().unwrap());
    result.expect("poll");
    // The new version is after this window: the next poll brings it.
    let got2 = Received::default();
    poller.poll_once(&got2.channel()).await.expect("poll 2");
    got.extend(got2.all());
    assert_exactly(&got, &expected);
    let queries = list_queries(&h);
    for q in &queries {
        assert_eq!(q["$expand"], "evidence");
        assert_eq!(q["$top"], "10");
        let f = &q["$filter"];
        assert!(
            f.starts_with("lastUpdateTime ge ") && f.contains(" and lastUpdateTime lt "),
            "{f}"
        );
    }
    let skips: Vec<String> = queries
        .iter()
        .take(4)
        .map(|q| q.get("$skip").cloned().unwrap_or_default())
        .collect();
    assert_eq!(skips, ["", "9", "18", "27"]);
}

/// issue 8 §2: a burst of 30 alerts with one `lastUpdateTime`, more than a page (20), stays
/// inside the overlap for many polls while some of its alerts are updated again. Each poll
/// costs a small, fixed number of requests (halving the window down to one instant cost 42 to
/// 84), and every version arrives once.
#[tokio::test]
async fn a_burst_at_one_instant_costs_few_requests_per_poll() {
    let h = Harness::new().await;
    let mut settings = h.tenant("fabrikam", T1, Api::Mde);
    settings.page_size = Some(20);
    let burst = ago(60.0);
    let mut expected = BTreeSet::new();
    for i in 0..30 {
        let id = format!("da63burst{i:02}_1");
        h.fake
            .upsert_alert(T1, Api::Mde, mde_alert(T1, &id, burst, "New"));
        expected.insert((T1.to_string(), id, burst));
    }
    let got = Received::default();
    let mut poller = h.poller(settings);
    let mut per_poll = Vec::new();
    for round in 0..8 {
        let stats = poller.poll_once(&got.channel()).await.expect("poll");
        per_poll.push(stats.requests);
        // Three alerts of the burst are updated before the next poll.
        for k in 0..3 {
            let id = format!("da63burst{:02}_1", (round * 3 + k) % 30);
            let t = ago(0.0) + chrono::Duration::milliseconds(k as i64);
            h.fake
                .upsert_alert(T1, Api::Mde, mde_alert(T1, &id, t, "InProgress"));
            expected.insert((T1.to_string(), id, t));
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    poller.poll_once(&got.channel()).await.expect("last poll");
    assert_exactly(&got.all(), &expected);
    assert!(
        per_poll.iter().all(|&n| n <= 3),
        "requests per poll: {per_poll:?}"
    );
}

/// issue 8 §10: a server that returns at most 7 alerts a page although `$top=50` was asked.
/// A short page is not taken for the end of the window until the server has shown it fills
/// pages to `$top`: one more request finds the rest, and pages of 7 count as full from then on.
#[tokio::test]
async fn a_server_that_caps_pages_below_top_loses_nothing() {
    let h = Harness::new().await;
    let mut settings = h.tenant("fabrikam", T1, Api::Mde);
    settings.page_size = Some(50);
    h.fake.cap_pages(T1, 7);
    let mut expected = BTreeSet::new();
    for i in 0..25 {
        let t = ago(3000.0 - 60.0 * i as f64);
        let id = format!("da63cap{i:02}_1");
        h.fake
            .upsert_alert(T1, Api::Mde, mde_alert(T1, &id, t, "New"));
        expected.insert((T1.to_string(), id, t));
    }
    let got = Received::default();
    let mut poller = h.poller(settings);
    poller.poll_once(&got.channel()).await.expect("poll");
    assert_exactly(&got.all(), &expected);
    // The next poll knows the cap: nothing new, nothing again.
    poller.poll_once(&got.channel()).await.expect("poll 2");
    assert_eq!(got.len(), 25);
}

/// issue 8 §11: a server that ignores `$skip` returns its first page for every offset. The
/// poll stops with a clear error after a few requests instead of looping, and forwards each
/// alert once.
#[tokio::test]
async fn a_server_that_ignores_skip_is_an_error_not_a_loop() {
    let h = Harness::new().await;
    let settings = h.tenant("fabrikam", T1, Api::Mde);
    h.fake.ignore_skip(T1);
    let t = ago(30.0);
    for i in 0..25 {
        let id = format!("da63noskip{i:02}_1");
        h.fake
            .upsert_alert(T1, Api::Mde, mde_alert(T1, &id, t, "New"));
    }
    let got = Received::default();
    let mut poller = h.poller(settings);
    let err = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        poller.poll_once(&got.channel()),
    )
    .await
    .expect("the poll ends")
    .expect_err("an ignored $skip is an error");
    assert!(err.to_string().contains("ignores $skip"), "{err}");
    assert!(
        list_queries(&h).len() <= 3,
        "{} requests",
        list_queries(&h).len()
    );
    assert_eq!(got.len(), 10);
    let unique: BTreeSet<_> = got.all().into_iter().collect();
    assert_eq!(unique.len(), 10);
}

/// A status change is a new version (new lastUpdate) and is forwarded under the default policy.
#[tokio::test]
async fn mde_update_is_a_new_version() {
    let h = Harness::new().await;
    let settings = h.tenant("fabrikam", T1, Api::Mde);
    let got = Received::default();
    let mut poller = h.poller(settings);
    let (t1, t2) = (ago(20.0), ago(10.0));
    h.fake
        .upsert_alert(T1, Api::Mde, mde_alert(T1, "da63upd_1", t1, "New"));
    poller.poll_once(&got.channel()).await.expect("poll 1");
    h.fake
        .upsert_alert(T1, Api::Mde, mde_alert(T1, "da63upd_1", t2, "Resolved"));
    poller.poll_once(&got.channel()).await.expect("poll 2");
    let expected = [t1, t2]
        .into_iter()
        .map(|t| (T1.to_string(), "da63upd_1".to_string(), t))
        .collect();
    assert_exactly(&got.all(), &expected);
}
