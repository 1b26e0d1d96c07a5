//! Restarts: a new poller built from the saved checkpoint, between polls and in the middle of
//! one. Nothing is lost and nothing is sent twice (the batch in flight when the process stops
//! was not accepted, so it is sent again — and only it).
mod source_support;

use std::collections::BTreeSet;

use defender_bridge::fake_api::samples::{graph_alert, mde_alert};
use defender_bridge::source::{Api, PollError, UpdatePolicy};
use source_support::{ago, assert_exactly, wait_until, Harness, Received, Version};
use tokio_util::sync::CancellationToken;

const T1: &str = "6def296f-b194-4c1b-9d39-90ee3f3d1d6c";

fn add(h: &Harness, api: Api, id: &str, secs_ago: f64, status: &str) -> Version {
    let t = ago(secs_ago);
    let alert = match api {
        Api::Graph => graph_alert(T1, id, t, status, 0),
        Api::Mde => mde_alert(T1, id, t, status),
    };
    h.fake.upsert_alert(T1, api, alert);
    (T1.to_string(), id.to_string(), t)
}

/// Poll, stop, add new alerts and updates, start a new poller from the checkpoint: it sends
/// exactly the new versions, although its window overlaps the old ones.
#[tokio::test]
async fn restart_between_polls() {
    for api in [Api::Graph, Api::Mde] {
        let h = Harness::new().await;
        let settings = h.tenant("contoso", T1, api);
        let got = Received::default();
        let mut expected = BTreeSet::new();
        for i in 0..12 {
            expected.insert(add(&h, api, &format!("da-r{i:02}"), 80.0 - i as f64, "New"));
        }
        h.poller(settings.clone())
            .poll_once(&got.channel())
            .await
            .expect("poll before restart");
        assert_exactly(&got.all(), &expected);

        // While "down": two new alerts, one update, one late alert inside the overlap.
        expected.insert(add(&h, api, "da-new-1", 20.0, "New"));
        expected.insert(add(&h, api, "da-new-2", 19.0, "New"));
        expected.insert(add(&h, api, "da-r03", 18.0, "Resolved"));
        expected.insert(add(&h, api, "da-late", 70.0, "New"));
        let mut restarted = h.poller(settings);
        restarted
            .poll_once(&got.channel())
            .await
            .expect("poll after restart");
        restarted
            .poll_once(&got.channel())
            .await
            .expect("second poll after restart");
        // da-r03's first version is gone from the API but was received before the restart.
        assert_exactly(&got.all(), &expected);
    }
}

/// The `status` policy's memory survives a restart: a comment-only update after the restart is
/// not sent, a status change is.
#[tokio::test]
async fn policy_state_survives_restart() {
    let h = Harness::new().await;
    let mut settings = h.tenant("contoso", T1, Api::Graph);
    settings.update_policy = UpdatePolicy::Status;
    let got = Received::default();
    let v1 = add(&h, Api::Graph, "da-p", 40.0, "new");
    h.poller(settings.clone())
        .poll_once(&got.channel())
        .await
        .expect("poll 1");
    let mut restarted = h.poller(settings);
    let t2 = ago(30.0);
    let mut a = graph_alert(T1, "da-p", t2, "new", 0);
    a["comments"] = serde_json::json!([{"comment": "checked", "createdByDisplayName": "soc"}]);
    h.fake.upsert_alert(T1, Api::Graph, a);
    restarted.poll_once(&got.channel()).await.expect("poll 2");
    let v3 = add(&h, Api::Graph, "da-p", 20.0, "resolved");
    restarted.poll_once(&got.channel()).await.expect("poll 3");
    assert_exactly(&got.all(), &[v1, v3].into());
}

/// Graph paging stops after the first page was accepted: the second batch is refused (the
/// receiver could not queue it). A new poller resumes: pages 2 and 3 arrive, page 1 is not
/// sent again.
#[tokio::test]
async fn restart_in_the_middle_of_a_graph_poll() {
    let h = Harness::new().await;
    let settings = h.tenant("contoso", T1, Api::Graph);
    let mut expected = BTreeSet::new();
    for i in 0..30 {
        expected.insert(add(
            &h,
            Api::Graph,
            &format!("da-m{i:02}"),
            90.0 - 2.0 * i as f64,
            "new",
        ));
    }
    let got = Received::default();
    let err = h
        .poller(settings.clone())
        .poll_once(&got.channel_accepting(1, false))
        .await
        .expect_err("second batch refused");
    assert!(matches!(err, PollError::NotAccepted), "{err}");
    assert_eq!(got.len(), 10);
    h.poller(settings)
        .poll_once(&got.channel())
        .await
        .expect("resume");
    assert_exactly(&got.all(), &expected);
}

/// The MDE poller's task is killed while it waits for the acknowledgement of its third batch
/// (a crash mid-poll). A new poller from the checkpoint delivers exactly the rest.
#[tokio::test]
async fn crash_in_the_middle_of_an_mde_poll() {
    let h = Harness::new().await;
    let settings = h.tenant("fabrikam", T1, Api::Mde);
    let mut expected = BTreeSet::new();
    for i in 0..45 {
        expected.insert(add(
            &h,
            Api::Mde,
            &format!("da63c{i:02}_1"),
            100.0 - 2.0 * i as f64,
            "New",
        ));
    }
    let got = Received::default();
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        h.poller(settings.clone())
            .run(got.channel_accepting(2, true), stop.clone()),
    );
    wait_until("batches accepted and checkpointed", || {
        got.len() > 0 && std::fs::read_dir(h.state_dir()).is_ok_and(|d| d.count() > 0)
    })
    .await;
    // Let the poller reach its third delivery, then kill it.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    task.abort();
    let _ = task.await;
    let before = got.len();
    assert!(
        before > 0 && before < 45,
        "{before} alerts before the crash"
    );

    let mut resumed = h.poller(settings);
    resumed.poll_once(&got.channel()).await.expect("resume");
    assert_exactly(&got.all(), &expected);
}

/// The destinations accepted a page but the checkpoint cannot be written (here: its path is a
/// directory; in life a full disk, a read-only state directory, no file descriptors left). The
/// poller keeps what it delivered in memory: later polls send nothing twice, and once the file
/// can be written again it holds everything, so a restart sends nothing twice either.
#[tokio::test]
async fn failed_checkpoint_save_sends_nothing_twice() {
    for api in [Api::Graph, Api::Mde] {
        let h = Harness::new().await;
        let settings = h.tenant("contoso", T1, api);
        let got = Received::default();
        let mut expected = BTreeSet::new();
        expected.insert(add(&h, api, "da-s01", 90.0, "New"));
        let mut poller = h.poller(settings.clone());
        poller.poll_once(&got.channel()).await.expect("first poll");
        // Make every save fail from now on.
        let path = std::fs::read_dir(h.state_dir())
            .expect("state dir")
            .map(|e| e.expect("entry").path())
            .find(|p| p.extension().is_some_and(|e| e == "json"))
            .expect("a checkpoint file");
        std::fs::remove_file(&path).expect("remove checkpoint");
        std::fs::create_dir(&path).expect("a directory in its place");
        expected.insert(add(&h, api, "da-s02", 60.0, "New"));
        for _ in 0..3 {
            match poller.poll_once(&got.channel()).await {
                Err(PollError::Unsaved(_)) => {}
                other => panic!("{api}: expected an unsaved checkpoint, got {other:?}"),
            }
        }
        assert_exactly(&got.all(), &expected);
        // Writable again: the next poll saves what was delivered, and a new poller starts
        // from there.
        std::fs::remove_dir(&path).expect("remove the directory");
        poller.poll_once(&got.channel()).await.expect("saves again");
        expected.insert(add(&h, api, "da-s03", 30.0, "New"));
        h.poller(settings)
            .poll_once(&got.channel())
            .await
            .expect("after restart");
        assert_exactly(&got.all(), &expected);
    }
}
