//! Graph alerts_v2 polling against the HTTPS fake through the real azure_identity path:
//! nextLink paging, ties across pages, late arrivals, update policies, server-side filters.
mod source_support;

use std::collections::BTreeSet;

use defender_bridge::fake_api::samples::graph_alert;
use defender_bridge::source::{Api, Severity, UpdatePolicy};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use source_support::{ago, assert_exactly, Harness, OnPage, Received, Version};

const T1: &str = "3adb963c-8e61-48e8-a06d-6dbb0dacea39";

/// 25 alerts over 25 seconds with `$top=10` come in three pages linked by `@odata.nextLink`;
/// every one arrives once and the checkpoint moves to the end.
#[tokio::test]
async fn pages_through_next_link() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let mut expected = BTreeSet::new();
    for i in 0..25 {
        let t = ago(60.0 - i as f64);
        let id = format!("da{i:04}");
        h.fake
            .upsert_alert(T1, Api::Graph, graph_alert(T1, &id, t, "new", i));
        expected.insert((T1.to_string(), id, t));
    }
    let mut poller = h.poller(settings);
    let got = Received::default();
    let stats = poller.poll_once(&got.channel()).await.expect("poll");
    assert_exactly(&got.all(), &expected);
    assert_eq!(stats.requests, 3);
    let lists: Vec<_> = h
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1.0/security/alerts_v2")
        .collect();
    assert_eq!(lists.len(), 3);
    let first: std::collections::HashMap<_, _> = lists[0].query.iter().cloned().collect();
    let second: std::collections::HashMap<_, _> = lists[1].query.iter().cloned().collect();
    // Page 1 carried a nextLink: page 2 starts at page 1's newest instant (da0009's time).
    let newest = h.fake.alert(T1, Api::Graph, "da0009").expect("alert")["lastUpdateDateTime"]
        .as_str()
        .expect("time")
        .to_string();
    let from = format!("lastUpdateDateTime ge {newest}");
    assert!(
        second["$filter"].starts_with(&from),
        "{}",
        second["$filter"]
    );
    assert_eq!(first["$orderby"], "lastUpdateDateTime asc");
    assert!(lists
        .iter()
        .all(|r| r.prefer.as_deref() == Some("include-unknown-enum-members")));
    assert_eq!(first["$top"], "10");
    assert!(
        first["$filter"].starts_with("lastUpdateDateTime ge "),
        "{}",
        first["$filter"]
    );

    // A second poll sees the same alerts again (overlap) and forwards none of them.
    poller.poll_once(&got.channel()).await.expect("second poll");
    assert_eq!(got.len(), 25);
}

/// 50 alerts share one lastUpdate instant, with pages of 30: the split inside the tie loses
/// nothing and duplicates nothing, also across a restart between the two pages.
#[tokio::test]
async fn fifty_alerts_with_one_timestamp_split_across_pages() {
    let h = Harness::new().await;
    let mut settings = h.tenant("contoso", T1, Api::Graph);
    settings.page_size = Some(30);
    let t = ago(30.0);
    let mut expected = BTreeSet::new();
    for i in 0..50 {
        let id = format!("da-tie-{i:02}");
        h.fake
            .upsert_alert(T1, Api::Graph, graph_alert(T1, &id, t, "new", i));
        expected.insert((T1.to_string(), id, t));
    }
    let got = Received::default();
    let mut poller = h.poller(settings.clone());
    poller.poll_once(&got.channel()).await.expect("poll");
    assert_exactly(&got.all(), &expected);
    // The tie filled a page: the poller went through it with the nextLink ($skiptoken).
    assert!(h
        .fake
        .requests()
        .iter()
        .any(|r| r.query.iter().any(|(k, _)| k == "$skiptoken")));
    // The checkpoint holds all 50 versions so a new poller re-reading the tie sends nothing.
    let mut again = h.poller(settings);
    again
        .poll_once(&got.channel())
        .await
        .expect("poll after restart");
    assert_exactly(&got.all(), &expected);
}

/// An alert that becomes visible after the poll that covered its lastUpdate time (it shows up
/// "late", 20 s in the past) is caught by the overlap window on the next poll.
#[tokio::test]
async fn late_arrival_inside_overlap_is_caught() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let mut poller = h.poller(settings);
    let got = Received::default();
    let on_time = ago(5.0);
    h.fake.upsert_alert(
        T1,
        Api::Graph,
        graph_alert(T1, "da-on-time", on_time, "new", 0),
    );
    poller.poll_once(&got.channel()).await.expect("poll 1");
    assert_eq!(got.len(), 1);
    assert!(poller.checkpoint().cursor > on_time);

    let late = ago(20.0);
    assert!(
        late < poller.checkpoint().cursor,
        "the late alert is behind the cursor"
    );
    h.fake
        .upsert_alert(T1, Api::Graph, graph_alert(T1, "da-late", late, "new", 1));
    poller.poll_once(&got.channel()).await.expect("poll 2");
    let expected: BTreeSet<Version> = [
        (T1.to_string(), "da-on-time".to_string(), on_time),
        (T1.to_string(), "da-late".to_string(), late),
    ]
    .into();
    assert_exactly(&got.all(), &expected);
}

/// Three updates of one alert, each polled: `all` forwards every version, `first` only the
/// first, `status` only those whose status, classification or determination changed.
#[tokio::test]
async fn status_updates_under_each_policy() {
    for policy in [UpdatePolicy::All, UpdatePolicy::First, UpdatePolicy::Status] {
        let h = Harness::new().await;
        let mut settings = h.tenant("contoso", T1, Api::Graph);
        settings.update_policy = policy;
        let mut poller = h.poller(settings);
        let got = Received::default();
        let id = "da-updated";
        let v1 = ago(40.0);
        let v2 = ago(30.0);
        let v3 = ago(20.0);
        let v4 = ago(10.0);
        // v1 new; v2 a comment only (same triage); v3 resolved; v4 classified.
        h.fake
            .upsert_alert(T1, Api::Graph, graph_alert(T1, id, v1, "new", 0));
        poller.poll_once(&got.channel()).await.expect("poll v1");
        let mut a = graph_alert(T1, id, v2, "new", 0);
        a["comments"] = serde_json::json!([{"comment": "looking", "createdByDisplayName": "soc"}]);
        h.fake.upsert_alert(T1, Api::Graph, a);
        poller.poll_once(&got.channel()).await.expect("poll v2");
        h.fake
            .upsert_alert(T1, Api::Graph, graph_alert(T1, id, v3, "resolved", 0));
        poller.poll_once(&got.channel()).await.expect("poll v3");
        let mut a = graph_alert(T1, id, v4, "resolved", 0);
        a["classification"] = "truePositive".into();
        a["determination"] = "malware".into();
        h.fake.upsert_alert(T1, Api::Graph, a);
        poller.poll_once(&got.channel()).await.expect("poll v4");

        let times: Vec<_> = match policy {
            UpdatePolicy::All => vec![v1, v2, v3, v4],
            UpdatePolicy::First => vec![v1],
            UpdatePolicy::Status => vec![v1, v3, v4],
        };
        let expected = times
            .into_iter()
            .map(|t| (T1.to_string(), id.to_string(), t))
            .collect();
        assert_exactly(&got.all(), &expected);
    }
}

/// Minimum severity and service sources go into `$filter`, and the fake (which evaluates it)
/// returns only matching alerts.
#[tokio::test]
async fn filters_are_pushed_into_the_query() {
    let h = Harness::new().await;
    let mut settings = h.tenant("contoso", T1, Api::Graph);
    settings.filters.min_severity = Some(Severity::Medium);
    settings.filters.service_sources = vec!["microsoftDefenderForEndpoint".into()];
    // Sample variants: 0 medium MDE, 1 high MDE, 2 informational Office 365, 3 high MDE.
    let mut expected = BTreeSet::new();
    for v in 0..4 {
        let t = ago(50.0 - v as f64);
        let id = format!("da-sev-{v}");
        h.fake
            .upsert_alert(T1, Api::Graph, graph_alert(T1, &id, t, "new", v));
        if v != 2 {
            expected.insert((T1.to_string(), id, t));
        }
    }
    let got = Received::default();
    h.poller(settings)
        .poll_once(&got.channel())
        .await
        .expect("poll");
    assert_exactly(&got.all(), &expected);
    let q = &h
        .fake
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("alerts_v2"))
        .expect("a list request")
        .query;
    let filter = &q.iter().find(|(k, _)| k == "$filter").expect("$filter").1;
    assert!(
        filter.contains("(severity eq 'medium' or severity eq 'high')"),
        "{filter}"
    );
    assert!(
        filter.contains("(serviceSource eq 'microsoftDefenderForEndpoint')"),
        "{filter}"
    );
}

/// An alert on page 1 is updated while the poller reads page 2 of a long catch-up poll (an
/// hour of alerts, 2 minutes of overlap). With offset paging the results would shift and the
/// alert right after page 1 would be skipped for good; here every alert arrives, the updated
/// one in both versions.
#[tokio::test]
async fn update_during_paging_does_not_skip_an_alert() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let mut expected = BTreeSet::new();
    for i in 0..30 {
        let t = ago(3000.0 - 60.0 * i as f64);
        let id = format!("da-old-{i:02}");
        h.fake
            .upsert_alert(T1, Api::Graph, graph_alert(T1, &id, t, "new", i));
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
            // Between page 1 and page 2: da-old-02 is resolved now.
            let t = ago(0.0);
            h.fake.upsert_alert(
                T1,
                Api::Graph,
                graph_alert(T1, "da-old-02", t, "resolved", 2),
            );
            expected
                .lock()
                .unwrap()
                .insert((T1.to_string(), "da-old-02".to_string(), t));
        }
    });
    let result = poller.poll_once(&sink).await;
    let (got, expected) = (got.into_inner().unwrap(), expected.into_inner().unwrap());
    result.expect("poll");
    // The update itself is newer than this poll's end; the next poll brings it, alone.
    let later = Received::default();
    poller.poll_once(&later.channel()).await.expect("poll 2");
    let update = (
        T1.to_string(),
        "da-old-02".to_string(),
        expected
            .iter()
            .filter(|v| v.1 == "da-old-02")
            .map(|v| v.2)
            .max()
            .expect("t"),
    );
    let mut first_poll = expected.clone();
    first_poll.remove(&update);
    assert_exactly(&got, &first_poll);
    assert_exactly(&later.all(), &[update].into());
}

/// `probe` (for `check --online`) reads one page and changes nothing: no checkpoint file, no
/// batch; the next real poll still forwards everything.
#[tokio::test]
async fn probe_reads_one_page_without_side_effects() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let mut expected = BTreeSet::new();
    for i in 0..12 {
        let t = ago(30.0 - i as f64);
        let id = format!("da-probe-{i}");
        h.fake
            .upsert_alert(T1, Api::Graph, graph_alert(T1, &id, t, "new", i));
        expected.insert((T1.to_string(), id, t));
    }
    let mut poller = h.poller(settings);
    assert_eq!(poller.probe().await.expect("probe"), 10);
    assert!(!h.state_dir().exists() || std::fs::read_dir(h.state_dir()).expect("dir").count() == 0);
    let got = Received::default();
    poller.poll_once(&got.channel()).await.expect("poll");
    assert_exactly(&got.all(), &expected);
}
