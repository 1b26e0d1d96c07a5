//! MDE /api/alerts polling: time-window paging that never relies on nextLink.
mod source_support;

use std::collections::BTreeSet;

use defender_bridge::fake_api::samples::mde_alert;
use defender_bridge::source::Api;
use source_support::{ago, assert_exactly, Harness, Received};

const T1: &str = "4bdc074d-9f72-4af9-b17e-7ecc1e1bfb4a";

fn list_queries(h: &Harness) -> Vec<std::collections::HashMap<String, String>> {
    h.fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/api/alerts" && r.status == 200)
        .map(|r| r.query.into_iter().collect())
        .collect()
}

/// 35 alerts in one window with `$top=10`: a full page halves the window until each window
/// fits in a page. Every alert arrives once; no request uses `$skip`.
#[tokio::test]
async fn full_page_halves_the_window() {
    let h = Harness::new().await;
    let settings = h.tenant("fabrikam", T1, Api::Mde);
    let mut expected = BTreeSet::new();
    for i in 0..35 {
        let t = ago(100.0 - 2.0 * i as f64);
        let id = format!("da63{i:04}_100");
        h.fake
            .upsert_alert(T1, Api::Mde, mde_alert(T1, &id, t, "New"));
        expected.insert((T1.to_string(), id, t));
    }
    let got = Received::default();
    let mut poller = h.poller(settings);
    poller.poll_once(&got.channel()).await.expect("poll");
    assert_exactly(&got.all(), &expected);
    let queries = list_queries(&h);
    assert!(
        queries.len() > 4,
        "the window was split: {} requests",
        queries.len()
    );
    for q in &queries {
        assert_eq!(q["$expand"], "evidence");
        assert_eq!(q["$top"], "10");
        assert!(!q.contains_key("$skip"));
        let f = &q["$filter"];
        assert!(
            f.starts_with("lastUpdateTime ge ") && f.contains(" and lastUpdateTime lt "),
            "{f}"
        );
    }
    // Nothing new: the next poll forwards nothing.
    poller.poll_once(&got.channel()).await.expect("poll 2");
    assert_eq!(got.len(), 35);
}

/// 25 alerts sharing one instant with `$top=10`: halving cannot split an instant, so that
/// one-instant window is paged with `$skip` 10 and 20.
#[tokio::test]
async fn one_full_instant_is_paged_with_skip() {
    let h = Harness::new().await;
    let settings = h.tenant("fabrikam", T1, Api::Mde);
    let t = ago(30.0);
    let mut expected = BTreeSet::new();
    for i in 0..25 {
        let id = format!("da63tie{i:02}_7");
        h.fake
            .upsert_alert(T1, Api::Mde, mde_alert(T1, &id, t, "New"));
        expected.insert((T1.to_string(), id, t));
    }
    // Two neighbours on either side of the instant.
    for (id, secs) in [("da63before_1", 31.0), ("da63after_1", 29.0)] {
        let t = ago(secs);
        h.fake
            .upsert_alert(T1, Api::Mde, mde_alert(T1, id, t, "New"));
        expected.insert((T1.to_string(), id.to_string(), t));
    }
    let got = Received::default();
    let mut poller = h.poller(settings.clone());
    poller.poll_once(&got.channel()).await.expect("poll");
    assert_exactly(&got.all(), &expected);
    let skips: BTreeSet<String> = list_queries(&h)
        .into_iter()
        .filter_map(|q| q.get("$skip").cloned())
        .collect();
    assert_eq!(skips, ["10".to_string(), "20".to_string()].into());
    // A restarted poller re-reads the instant (overlap) and sends nothing again.
    h.poller(settings)
        .poll_once(&got.channel())
        .await
        .expect("poll after restart");
    assert_eq!(got.len(), 27);
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
