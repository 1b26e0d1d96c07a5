//! The Splunk HEC writer against a real HTTP collector on loopback that implements the event,
//! ack and health endpoints with scripted behaviour (tests/support/hec.rs): each test asserts
//! the exact set of events indexed, and that duplicates come only from acks never seen.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use defender_bridge::sink::{Sink, SinkConfig, Status};
use defender_bridge::source::SecretString;
use support::hec::{Acks, HecScript, HecServer};

const TOKEN: &str = "11112222-3333-4444-5555-666677778888";

fn config(port: u16, ack: bool, ack_timeout: Duration) -> SinkConfig {
    let mut c = SinkConfig::new(format!("hec+http://127.0.0.1:{port}").parse().unwrap());
    c.hec.token = Some(SecretString::new(TOKEN));
    c.hec.indexer_ack = ack;
    c.hec.ack_timeout = ack_timeout;
    c.backoff.initial = Duration::from_millis(50);
    c.backoff.max = Duration::from_millis(500);
    c
}

fn event(i: usize) -> Bytes {
    Bytes::from(format!(
        r#"{{"time":1796119200.{:03},"sourcetype":"ms:defender:alert","event":{{"id":"da-{i:05}"}}}}"#,
        i % 1000
    ))
}

fn want(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("da-{i:05}")).collect()
}

async fn send_all(sink: &Sink, n: usize) {
    for i in 0..n {
        sink.send(event(i)).await.unwrap();
    }
}

/// Each id → how many times it was indexed.
fn counts(ids: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for id in ids {
        *m.entry(id.clone()).or_default() += 1;
    }
    m
}

/// With indexer acknowledgement a batch counts only once its ack is true: `flush` waits for
/// the acks, every event is indexed once, on one channel, gzip-compressed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_count_as_delivered_only_once_acknowledged() {
    let hec = HecServer::start(HecScript {
        token: TOKEN.into(),
        acks: Some(Acks::After(Duration::from_millis(700))),
    });
    let sink = config(hec.port(), true, Duration::from_secs(60))
        .build()
        .unwrap();
    send_all(&sink, 2000).await;
    // Sent, not yet acknowledged: not delivered.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(sink.stats().messages_sent < 2000, "{:?}", sink.stats());
    sink.flush(Duration::from_secs(30)).await.unwrap();
    let stats = sink.stats();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(hec.ids(), want(2000));
    assert_eq!(stats.messages_sent, 2000);
    assert_eq!(stats.resent, 0);
    assert_eq!(hec.channels().len(), 1);
    assert!(hec.ack_queries() > 0);
    assert!(hec.content_encodings().iter().all(|e| e == "gzip"));
}

/// Acks that never come: after `ack_timeout` the batches go again, and once acks work every
/// event is indexed, once (the collector lost the unacknowledged ones).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_batches_are_sent_again_after_the_ack_timeout() {
    let hec = HecServer::start(HecScript {
        token: TOKEN.into(),
        acks: Some(Acks::Never),
    });
    let sink = config(hec.port(), true, Duration::from_secs(2))
        .build()
        .unwrap();
    send_all(&sink, 300).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(sink.stats().messages_sent, 0, "nothing acknowledged yet");
    hec.set_acks(Some(Acks::After(Duration::from_millis(100))));
    sink.flush(Duration::from_secs(30)).await.unwrap();
    let stats = sink.stats();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(hec.ids(), want(300));
    assert!(stats.resent >= 300, "{stats:?}");
}

/// Acks that come in reverse order: events still leave in order, and all are indexed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_deliver_in_order() {
    let hec = HecServer::start(HecScript {
        token: TOKEN.into(),
        acks: Some(Acks::Reversed(Duration::from_millis(200))),
    });
    let sink = config(hec.port(), true, Duration::from_secs(60))
        .build()
        .unwrap();
    let mut done = sink.done();
    for i in 0..1500 {
        sink.send(event(i)).await.unwrap();
        // Small batches, so that several wait for their acks at once.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    sink.flush(Duration::from_secs(30)).await.unwrap();
    assert_eq!(*done.borrow_and_update(), 1500);
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    let mut ids = hec.ids();
    assert_eq!(ids.len(), 1500);
    ids.sort();
    assert_eq!(ids, want(1500));
}

/// A storm of 503 "server is busy": the writer backs off and goes on; nothing lost, nothing
/// twice; the destination is down during the storm and up after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_storm_backs_off_and_loses_nothing() {
    let hec = HecServer::start(HecScript {
        token: TOKEN.into(),
        acks: Some(Acks::After(Duration::from_millis(50))),
    });
    hec.busy(12);
    let sink = config(hec.port(), true, Duration::from_secs(60))
        .build()
        .unwrap();
    let mut status = sink.status();
    send_all(&sink, 500).await;
    let mut saw_down = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while sink.stats().messages_sent < 500 && tokio::time::Instant::now() < deadline {
        if let Status::Down { reason } = &*status.borrow_and_update() {
            assert!(
                reason.contains("503") && reason.contains("Server is busy"),
                "{reason}"
            );
            saw_down = true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sink.flush(Duration::from_secs(10)).await.unwrap();
    assert!(saw_down);
    assert!(matches!(*status.borrow(), Status::Up { .. }));
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(hec.ids(), want(500));
}

/// A 200 whose body is cut off before its ackId: the batch's fate is unknown (here the
/// collector loses it), so it goes again instead of counting as delivered; every event is
/// indexed once, and the sink said why it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_batch_without_a_readable_ack_id_goes_again() {
    let hec = HecServer::start(HecScript {
        token: TOKEN.into(),
        acks: Some(Acks::After(Duration::from_millis(50))),
    });
    hec.garble(3);
    let sink = config(hec.port(), true, Duration::from_secs(60))
        .build()
        .unwrap();
    let mut status = sink.status();
    let watch = tokio::spawn(async move {
        let mut reasons = Vec::new();
        while status.changed().await.is_ok() {
            if let Status::Down { reason } = &*status.borrow_and_update() {
                reasons.push(reason.clone());
            }
        }
        reasons
    });
    send_all(&sink, 1200).await;
    sink.flush(Duration::from_secs(30)).await.unwrap();
    let stats = sink.stats();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    let got = counts(&hec.ids());
    let missing: Vec<String> = want(1200)
        .into_iter()
        .filter(|id| !got.contains_key(id))
        .collect();
    let again: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n != 1).collect();
    assert!(
        missing.is_empty() && again.is_empty() && got.len() == 1200,
        "{} indexed; missing {missing:?}; more than once {again:?}",
        got.len()
    );
    assert_eq!(stats.messages_sent, 1200);
    let reasons = watch.await.unwrap();
    assert!(
        reasons.iter().any(|r| r.contains("without an ackId")),
        "{reasons:?}"
    );
}

/// A 400 naming one event of a batch: that event is refused (for the dead letters, with
/// Splunk's text), the rest of the batch is sent again and indexed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_event_is_refused_and_the_rest_delivered() {
    let hec = HecServer::start(HecScript {
        token: TOKEN.into(),
        acks: None,
    });
    hec.reject("da-00042");
    let sink = config(hec.port(), false, Duration::from_secs(60))
        .build()
        .unwrap();
    send_all(&sink, 200).await;
    sink.flush(Duration::from_secs(30)).await.unwrap();
    let refusals = sink.take_refusals();
    let stats = sink.stats();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert_eq!(refusals[0].number, 43, "the 43rd message");
    assert!(
        refusals[0].reason.contains("Invalid data format (code 6)"),
        "{refusals:?}"
    );
    let mut w = want(200);
    w.retain(|id| id != "da-00042");
    assert_eq!(hec.ids(), w);
    assert_eq!(stats.refused, 1);
}

/// A collector restart that forgets its channels while acks are awaited: the new ack ids start
/// again at 0, the writer takes the awaited ones as void and sends their batches again;
/// everything is indexed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_forgets_its_channel_loses_nothing() {
    let hec = HecServer::start(HecScript {
        token: TOKEN.into(),
        acks: Some(Acks::After(Duration::from_secs(3))),
    });
    let sink = config(hec.port(), true, Duration::from_secs(60))
        .build()
        .unwrap();
    send_all(&sink, 400).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    hec.forget();
    hec.set_acks(Some(Acks::After(Duration::from_millis(100))));
    send_all_from(&sink, 400, 600).await;
    sink.flush(Duration::from_secs(30)).await.unwrap();
    let stats = sink.stats();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    let c = counts(&hec.ids());
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), want(600));
    assert!(c.values().all(|&n| n == 1), "duplicates: {c:?}");
    assert!(stats.resent >= 400, "{stats:?}");
}

async fn send_all_from(sink: &Sink, from: usize, to: usize) {
    for i in from..to {
        sink.send(event(i)).await.unwrap();
    }
}

/// A token the collector refuses: the destination is down with the reason, nothing is taken
/// as delivered, and `flush` times out rather than pretending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_is_said_and_nothing_counts_as_delivered() {
    let hec = HecServer::start(HecScript {
        token: "another-token".into(),
        acks: None,
    });
    let sink = config(hec.port(), false, Duration::from_secs(60))
        .build()
        .unwrap();
    let mut status = sink.status();
    send_all(&sink, 10).await;
    let down = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Status::Down { reason } = &*status.borrow_and_update() {
                return reason.clone();
            }
            status.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(
        down.contains("HEC refused the token: HTTP 401: Invalid token"),
        "{down}"
    );
    assert!(!down.contains(TOKEN));
    assert!(sink.flush(Duration::from_secs(1)).await.is_err());
    assert_eq!(sink.stats().messages_sent, 0);
    assert!(hec.ids().is_empty());
}

/// Without indexer acknowledgement, 200 means delivered; the health endpoint answers the probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_acks_200_is_delivered_and_the_probe_reads_health() {
    let hec = HecServer::start(HecScript {
        token: TOKEN.into(),
        acks: None,
    });
    let cfg = config(hec.port(), false, Duration::from_secs(60));
    cfg.probe().await.unwrap();
    let sink = cfg.build().unwrap();
    send_all(&sink, 1000).await;
    sink.flush(Duration::from_secs(30)).await.unwrap();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(hec.ids(), want(1000));
    assert!(hec.channels().is_empty(), "no channel without acks");
}

/// The daemon with a HEC destination and acknowledgement: batches awaiting their ack when the
/// daemon is killed with SIGKILL go again after the restart, on the same channel (kept in the
/// state store); every alert version is indexed exactly once, as an event object with its
/// time, sourcetype and indexed fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_resends_what_was_unacknowledged_at_a_kill_9() {
    use defender_bridge::fake_api::samples::graph_alert;
    use defender_bridge::fake_api::{FakeApi, FakeCredential};
    use defender_bridge::source::Api;
    const T1: &str = "aaaaaaaa-0000-4000-8000-000000000001";
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
    let hec = HecServer::start(HecScript {
        token: TOKEN.into(),
        acks: Some(Acks::Never),
    });
    let fake = FakeApi::start().await.unwrap();
    fake.add_tenant(T1, CLIENT, FakeCredential::Secret("s3cret".into()));
    let dir = tempfile::tempdir().unwrap();
    let ca = fake.write_ca_file(dir.path()).unwrap();
    let base = fake.base_url();
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(60);
    let mut times = BTreeMap::new();
    for i in 0..120 {
        let t = t0 + chrono::Duration::milliseconds(i * 10);
        let id = format!("da-{i:05}");
        fake.upsert_alert(T1, Api::Graph, graph_alert(T1, &id, t, "new", i as usize));
        times.insert(id, t);
    }
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
state_dir = "{state}"
poll_interval = "300ms"
initial_lookback = "1h"
ca_file = "{ca}"
metrics_listen = ""

[[tenant]]
name = "contoso"
tenant_id = "{T1}"
client_id = "{CLIENT}"
client_secret = {{ env = "T1_SECRET" }}
authority_host = "{base}"
api_base_url = "{base}"

[[destination]]
name = "splunk"
url = "hec+http://127.0.0.1:{port}"
format = "json"
hec_token = {{ env = "HEC_TOKEN" }}
index = "defender"
indexer_ack = true
ack_timeout = "3s"
"#,
            state = dir.path().join("state").display(),
            ca = ca.display(),
            port = hec.port(),
        ),
    )
    .unwrap();
    let start = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("T1_SECRET", "s3cret")
            .env("HEC_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut child = start();
    // Everything is sent and awaits its ack (which never comes: lost at the collector).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while hec.requests() == 0 || hec.ack_queries() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "nothing sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(hec.ids().is_empty());
    hec.set_acks(Some(Acks::After(Duration::from_millis(100))));
    let child = start();
    let got = hec.wait_for(120, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let ids = hec.ids();
    let c = counts(&ids);
    assert_eq!(c.len(), 120, "{c:?}");
    assert!(c.values().all(|&n| n == 1), "duplicates: {c:?}");
    assert_eq!(hec.channels().len(), 1, "one channel across the restart");
    for e in got {
        let id = e["event"]["id"].as_str().unwrap();
        let t = times[id];
        assert_eq!(
            e["time"].as_f64().unwrap(),
            format!("{}.{:03}", t.timestamp(), t.timestamp_subsec_millis())
                .parse::<f64>()
                .unwrap()
        );
        assert_eq!(e["sourcetype"], "ms:defender:alert");
        assert_eq!(e["index"], "defender");
        assert_eq!(e["fields"]["tenant"], "contoso");
        assert_eq!(e["fields"]["tenantId"], T1);
        assert!(e["fields"]["severity"].is_string());
        assert_eq!(e["event"]["tenantName"], "contoso");
    }
    assert!(!log.contains(TOKEN) && !log.contains("s3cret"), "{log}");
}
