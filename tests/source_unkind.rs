//! The source against unkind servers and machines (issue 8): a Graph server that ignores
//! `$orderby` or repeats its nextLink, a page too large to read, a local clock ahead of
//! Microsoft's, restarts under the rate limit, a tenant held up by its own rate limiter, alert
//! objects without an id or a readable time, and a damaged checkpoint during a failed poll.
mod source_support;

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defender_bridge::fake_api::samples::graph_alert;
use defender_bridge::source::Api;
use source_support::{ago, assert_exactly, wait_until, Harness, Received, Version};
use tokio_util::sync::CancellationToken;

const T1: &str = "3adb963c-8e61-48e8-a06d-6dbb0dacea39";

fn seed(h: &Harness, n: usize, secs_ago: impl Fn(usize) -> f64) -> BTreeSet<Version> {
    (0..n)
        .map(|i| {
            let t = ago(secs_ago(i));
            let id = format!("da-{i:03}");
            h.fake
                .upsert_alert(T1, Api::Graph, graph_alert(T1, &id, t, "new", i));
            (T1.to_string(), id, t)
        })
        .collect()
}

/// issue 8 §8: alerts_v2 documents no `$orderby`. A server that ignores it (here: id order,
/// ids running opposite to time) must not make the poller take "everything before the newest
/// instant of a page" as done; the alerts are older than the overlap, so a miss would be for
/// good.
#[tokio::test]
async fn a_graph_server_that_ignores_orderby_loses_nothing() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    h.fake.ignore_orderby(T1);
    let expected = seed(&h, 25, |i| 1000.0 + 20.0 * i as f64);
    let got = Received::default();
    let mut poller = h.poller(settings);
    poller.poll_once(&got.channel()).await.expect("poll");
    poller.poll_once(&got.channel()).await.expect("poll 2");
    assert_exactly(&got.all(), &expected);
}

/// issue 8 §11: a server that ignores `$skiptoken` repeats its nextLink. Paging through one
/// instant (a whole page with one timestamp) follows the link once, then stops with an error.
#[tokio::test]
async fn a_repeated_next_link_is_an_error_not_a_loop() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    h.fake.ignore_skip(T1);
    let t = ago(30.0);
    for i in 0..25 {
        let id = format!("da-tie-{i:02}");
        h.fake
            .upsert_alert(T1, Api::Graph, graph_alert(T1, &id, t, "new", i));
    }
    let got = Received::default();
    let mut poller = h.poller(settings);
    let err = tokio::time::timeout(Duration::from_secs(20), poller.poll_once(&got.channel()))
        .await
        .expect("the poll ends")
        .expect_err("a repeated nextLink is an error");
    assert!(err.to_string().contains("nextLink"), "{err}");
    assert!(h.list_requests().len() <= 3);
    assert!(got.all().iter().all(|v| v.2 == t));
}

/// issue 8 §11: a page larger than the poller reads is an error, not memory without bound;
/// the poller then asks for half as many alerts, and everything arrives.
#[tokio::test]
async fn a_page_too_large_to_read_asks_for_smaller_pages() {
    let h = Harness::new().await;
    let mut settings = h.tenant("contoso", T1, Api::Graph);
    settings.page_size = Some(20);
    settings.max_page_bytes = 24 * 1024;
    let expected = seed(&h, 20, |i| 60.0 - i as f64);
    let got = Received::default();
    let mut poller = h.poller(settings);
    let mut errors = 0;
    loop {
        match poller.poll_once(&got.channel()).await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.to_string().contains("larger than"), "{e}");
                errors += 1;
                assert!(errors < 6, "never got a page it could read");
            }
        }
    }
    assert!(errors >= 1);
    assert_exactly(&got.all(), &expected);
    let tops: BTreeSet<String> = h
        .list_requests()
        .iter()
        .filter_map(|r| {
            r.query
                .iter()
                .find(|(k, _)| k == "$top")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(tops.contains("20") && tops.len() > 1, "{tops:?}");
}

/// issue 8 §9: the local clock is 10 minutes ahead of Microsoft's (more than the overlap).
/// Windows end at the API's clock (its `Date` header), so an alert written after the first
/// poll, by Microsoft's clock, is still in the next window.
#[tokio::test]
async fn a_local_clock_ahead_of_the_api_loses_nothing() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    h.fake.set_clock_offset(chrono::Duration::minutes(-10));
    let at = |secs: i64| {
        use chrono::SubsecRound;
        (h.fake.now() - chrono::Duration::seconds(secs)).trunc_subsecs(3)
    };
    let mut expected = BTreeSet::new();
    let t1 = at(30);
    h.fake
        .upsert_alert(T1, Api::Graph, graph_alert(T1, "da-skew-1", t1, "new", 0));
    expected.insert((T1.to_string(), "da-skew-1".to_string(), t1));
    let got = Received::default();
    let mut poller = h.poller(settings);
    poller.poll_once(&got.channel()).await.expect("poll 1");
    let offset = poller.clock_offset().expect("the API's clock was seen");
    assert!(
        (offset + chrono::Duration::minutes(10)).num_seconds().abs() <= 2,
        "{offset:?}"
    );
    let t2 = at(1);
    h.fake
        .upsert_alert(T1, Api::Graph, graph_alert(T1, "da-skew-2", t2, "new", 1));
    expected.insert((T1.to_string(), "da-skew-2".to_string(), t2));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    poller.poll_once(&got.channel()).await.expect("poll 2");
    assert_exactly(&got.all(), &expected);
    assert!(poller.checkpoint().cursor <= h.fake.now());
}

/// issue 8 §3: the API counts the requests of a daemon before and after its restarts alike.
/// A poller restarted five times in the middle of paging still keeps every 4 s window at the
/// fake within the limit of 40 requests per 4 s.
#[tokio::test]
async fn restarts_keep_under_the_rate_limit() {
    let h = Harness::new().await;
    let mut settings = h.tenant("contoso", T1, Api::Graph);
    settings.page_size = Some(2);
    let period = Duration::from_secs(4);
    settings.rate_limits = Some(vec![(40, period)]);
    seed(&h, 300, |i| 100.0 - 0.3 * i as f64);
    let got = Received::default();
    for _ in 0..6 {
        let mut poller = h.poller(settings.clone());
        let _ = tokio::time::timeout(Duration::from_millis(700), poller.poll_once(&got.channel()))
            .await;
    }
    let reqs = h.list_requests();
    assert!(reqs.len() > 20, "only {} requests", reqs.len());
    let max = (0..reqs.len())
        .map(|i| {
            reqs[i..]
                .iter()
                .take_while(|r| r.at.duration_since(reqs[i].at) < period)
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(max <= 40, "{max} requests within {period:?}");
}

/// A `tracing` writer into a buffer, for the tests that read what the daemon logs.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

/// issue 8 §4: a tenant whose poll takes longer than its poll interval because of its own rate
/// limiter says so in the log (and in its status), and says when it has caught up.
#[tokio::test]
async fn a_tenant_held_by_its_rate_limiter_says_so() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::new().await;
    let mut settings = h.tenant("contoso", T1, Api::Graph);
    settings.page_size = Some(1);
    settings.rate_limits = Some(vec![(20, Duration::from_secs(1))]);
    // Older than the overlap: the first poll pages them one by one, the later ones are quick.
    let expected = seed(&h, 30, |i| 1000.0 - i as f64);
    let got = Received::default();
    let poller = h.poller(settings);
    let status = poller.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(got.channel(), stop.clone()));
    wait_until("the lag warning", || log.text().contains("behind")).await;
    wait_until("the catch-up note", || log.text().contains("caught up")).await;
    stop.cancel();
    task.await.expect("poller task");
    assert_exactly(&got.all(), &expected);
    let text = log.text();
    assert!(
        text.contains("WARN") && text.contains("rate limiter"),
        "{text}"
    );
    assert!(!status.lock().expect("lock").lagging);
}

/// issue 10 §6: a tenant paused by its own rate limiter for much of its interval, though not
/// behind, says so in the log once.
#[tokio::test]
async fn a_tenant_paused_by_its_rate_limiter_says_so_though_not_behind() {
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = Harness::new().await;
    let mut settings = h.tenant("contoso", T1, Api::Graph);
    settings.page_size = Some(1);
    settings.poll_interval = Duration::from_secs(8);
    // About 40 requests at 10 a second: some 3 s of waiting, more than a quarter of the
    // interval, while the poll still ends well within it.
    settings.rate_limits = Some(vec![(10, Duration::from_secs(1))]);
    let expected = seed(&h, 20, |i| 1000.0 - i as f64);
    let got = Received::default();
    let poller = h.poller(settings);
    let status = poller.status();
    let stop = CancellationToken::new();
    let task = tokio::spawn(poller.run(got.channel(), stop.clone()));
    wait_until("the first poll", || got.len() >= expected.len()).await;
    wait_until("the pause warning", || {
        log.text().contains("for the tenant's rate limiter")
    })
    .await;
    stop.cancel();
    task.await.expect("poller task");
    assert_exactly(&got.all(), &expected);
    let text = log.text();
    assert!(
        !text.contains("behind (more than the poll interval"),
        "{text}"
    );
    assert_eq!(
        text.matches("for the tenant's rate limiter").count(),
        1,
        "{text}"
    );
    assert!(status.lock().expect("lock").rate_limited);
}

/// issue 8 §12: alert objects the poller cannot forward (no id; no readable lastUpdate) are
/// handed over as rejected, for the dead-letter file, once each although the overlap serves
/// them again; the cursor moves past them only once the batch is accepted.
#[tokio::test]
async fn alerts_without_id_or_time_are_handed_over_once() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let mut expected = seed(&h, 3, |i| 50.0 - i as f64);
    h.fake.add_raw_object(
        T1,
        Api::Graph,
        ago(40.0),
        serde_json::json!({"title": "no id", "lastUpdateDateTime": "2026-11-30T10:00:00Z"}),
    );
    h.fake.add_raw_object(
        T1,
        Api::Graph,
        ago(40.0),
        serde_json::json!({"id": "da-badtime", "lastUpdateDateTime": "yesterday"}),
    );
    // A receiver that refuses: nothing moves, the objects come again.
    let refused = Received::default();
    let mut poller = h.poller(settings);
    poller
        .poll_once(&refused.channel_accepting(0, false))
        .await
        .expect_err("not accepted");
    let before = poller.checkpoint().cursor;
    let got = Received::default();
    poller.poll_once(&got.channel()).await.expect("poll");
    assert!(poller.checkpoint().cursor > before);
    poller.poll_once(&got.channel()).await.expect("poll 2");
    let mut reasons = got.rejected();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "the alert has no id",
            "the alert has no readable lastUpdate time"
        ]
    );
    let t = ago(1.0);
    h.fake
        .upsert_alert(T1, Api::Graph, graph_alert(T1, "da-late", t, "new", 0));
    expected.insert((T1.to_string(), "da-late".to_string(), t));
    poller.poll_once(&got.channel()).await.expect("poll 3");
    assert_exactly(&got.all(), &expected);
    assert_eq!(got.rejected().len(), 2);
}

/// issue 8 §7: a poll that fails while the checkpoint file cannot be read (damaged here) goes
/// back to the state the receiver accepted, not to a fresh one: nothing is sent twice, and the
/// next save writes the good state over the damaged file.
#[tokio::test]
async fn a_failed_poll_with_a_damaged_checkpoint_sends_nothing_twice() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let mut expected = seed(&h, 10, |i| 60.0 - i as f64);
    let got = Received::default();
    let mut poller = h.poller(settings.clone());
    poller.poll_once(&got.channel()).await.expect("poll 1");
    let file = std::fs::read_dir(h.state_dir())
        .expect("state dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a checkpoint file");
    std::fs::write(&file, b"{ damaged").expect("damage");
    h.fake.fail_for(T1, Duration::from_millis(300));
    poller.poll_once(&got.channel()).await.expect_err("500s");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = ago(1.0);
    h.fake
        .upsert_alert(T1, Api::Graph, graph_alert(T1, "da-new", t, "new", 0));
    expected.insert((T1.to_string(), "da-new".to_string(), t));
    poller.poll_once(&got.channel()).await.expect("poll 3");
    assert_exactly(&got.all(), &expected);
    // The good state is on disk again.
    let restarted = h.poller(settings);
    assert_eq!(restarted.checkpoint(), poller.checkpoint());
}
