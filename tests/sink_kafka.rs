//! The Kafka writer against a real Kafka-protocol broker on loopback (librdkafka's mock
//! cluster, tests/support/kafka.rs), read back by an independent client (librdkafka's
//! consumer): every alert version arrives, in its key's partition, with its key, headers and
//! time; broker outages, retriable errors and a missing topic lose nothing; TLS works; the
//! daemon loses nothing across a broker outage and a SIGKILL.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use defender_bridge::alert::Alert;
use defender_bridge::format::kafka::KafkaEnvelope;
use defender_bridge::format::Context;
use defender_bridge::sink::{partition_for_key, Sink, SinkConfig, Status};
use support::kafka::{read, Consumed, MockKafka, TlsFront};

const TENANT_ID: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const READ: Duration = Duration::from_secs(60);

fn config(url: &str) -> SinkConfig {
    let mut c = SinkConfig::new(url.parse().unwrap());
    c.backoff.initial = Duration::from_millis(50);
    c.backoff.max = Duration::from_millis(500);
    c.connect_timeout = Duration::from_secs(3);
    c.write_timeout = Duration::from_secs(5);
    c
}

/// Version `v` of alert `i`, as the output packs it: the record is a small JSON object.
fn message(i: usize, v: usize) -> Bytes {
    let json = format!(
        r#"{{"id":"da-{i:05}","tenantId":"{TENANT_ID}","severity":"high","lastUpdateDateTime":"2026-12-01T10:{:02}:{:02}.{v:03}Z"}}"#,
        i / 60 % 60,
        i % 60
    );
    let alert = Alert::from_json(&json).unwrap();
    let ctx = Context {
        tenant_name: Some("contoso"),
        hostname: None,
    };
    let record = format!(r#"{{"id":"da-{i:05}","version":{v}}}"#);
    let mut out = Vec::new();
    KafkaEnvelope.wrap(&alert, &ctx, record.as_bytes(), &mut out);
    Bytes::from(out)
}

/// (id, version) of a message read back.
fn version(m: &Consumed) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
    (
        v["id"].as_str().unwrap().to_string(),
        v["version"].as_u64().unwrap(),
    )
}

fn counts(got: &[Consumed]) -> BTreeMap<(String, u64), usize> {
    let mut c = BTreeMap::new();
    for m in got {
        *c.entry(version(m)).or_default() += 1;
    }
    c
}

fn want(n: usize, versions: usize) -> Vec<(String, u64)> {
    let mut w: Vec<(String, u64)> = (0..n)
        .flat_map(|i| (0..versions).map(move |v| (format!("da-{i:05}"), v as u64)))
        .collect();
    w.sort();
    w
}

async fn send_all(sink: &Sink, n: usize, v: usize) {
    for i in 0..n {
        sink.send(message(i, v)).await.unwrap();
    }
}

/// Two versions of 600 alerts over three partitions: each arrives once, in the partition its
/// key picks (Kafka's murmur2 partitioner), the versions of one alert in order, with the key
/// `tenantId:alertId`, the headers and the alert's time as the message timestamp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_arrives_once_in_its_keys_partition_with_its_headers() {
    let kafka = MockKafka::start(1);
    kafka.create_topic("alerts", 3);
    let sink = config(&format!("kafka://{}/alerts", kafka.bootstrap()))
        .build()
        .unwrap();
    send_all(&sink, 600, 0).await;
    send_all(&sink, 600, 1).await;
    sink.flush(Duration::from_secs(60)).await.unwrap();
    let stats = sink.stats();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!((stats.messages_sent, stats.resent), (1200, 0), "{stats:?}");

    let got = read(&kafka.bootstrap(), "alerts", 1200, READ).await;
    let c = counts(&got);
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), want(600, 2));
    assert!(c.values().all(|&n| n == 1), "duplicates: {c:?}");
    let mut partitions_used = std::collections::BTreeSet::new();
    let mut offsets: BTreeMap<(String, u64), (i32, i64)> = BTreeMap::new();
    for m in &got {
        let (id, v) = version(m);
        let key = format!("{TENANT_ID}:{id}");
        assert_eq!(m.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(m.partition as usize, partition_for_key(key.as_bytes(), 3));
        partitions_used.insert(m.partition);
        let headers: BTreeMap<&str, &[u8]> = m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        let i: usize = id[3..].parse().unwrap();
        let last_update = format!("2026-12-01T10:{:02}:{:02}.{v:03}Z", i / 60 % 60, i % 60);
        let t = chrono::DateTime::parse_from_rfc3339(&last_update).unwrap();
        let header_time = std::str::from_utf8(headers["lastUpdate"]).unwrap();
        assert_eq!(
            chrono::DateTime::parse_from_rfc3339(header_time).unwrap(),
            t
        );
        assert_eq!(
            headers,
            BTreeMap::from([
                ("tenant", &b"contoso"[..]),
                ("tenantId", TENANT_ID.as_bytes()),
                ("severity", b"high"),
                ("lastUpdate", header_time.as_bytes()),
            ])
        );
        assert_eq!(m.timestamp_ms, Some(t.timestamp_millis()));
        offsets.insert((id, v), (m.partition, m.offset));
    }
    assert_eq!(partitions_used.len(), 3, "keys spread over the partitions");
    for i in 0..600 {
        let id = format!("da-{i:05}");
        let (p0, o0) = offsets[&(id.clone(), 0)];
        let (p1, o1) = offsets[&(id, 1)];
        assert!(p0 == p1 && o0 < o1, "alert {i}: versions out of order");
    }
}

/// The broker goes down mid-stream and comes back: the writer says it is down, and every
/// message arrives; a duplicate only where a request was sent again, and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_stream_loses_nothing() {
    let kafka = MockKafka::start(1);
    kafka.create_topic("alerts", 2);
    let sink = config(&format!("kafka://{}/alerts", kafka.bootstrap()))
        .build()
        .unwrap();
    let mut status = sink.status();
    send_all(&sink, 1000, 0).await;
    sink.flush(Duration::from_secs(30)).await.unwrap();
    kafka.broker_down(1);
    // Queued while the broker is down.
    let more = async {
        for i in 1000..3000 {
            sink.send(message(i, 0)).await.unwrap();
        }
    };
    let went_down = async {
        tokio::time::timeout(
            Duration::from_secs(30),
            status.wait_for(|s| matches!(s, Status::Down { .. })),
        )
        .await
        .expect("the writer says the broker is down")
        .unwrap()
        .clone()
    };
    let (_, down) = tokio::join!(more, went_down);
    assert!(sink.stats().messages_sent < 3000);
    kafka.broker_up(1);
    sink.flush(Duration::from_secs(60)).await.unwrap();
    let stats = sink.stats();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(stats.messages_sent, 3000, "{stats:?} ({down:?})");

    let got = read(&kafka.bootstrap(), "alerts", 3000, READ).await;
    let c = counts(&got);
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), want(3000, 1));
    let duplicates: usize = c.values().map(|n| n - 1).sum();
    assert!(
        duplicates as u64 <= stats.resent,
        "{duplicates} duplicates, {} resent",
        stats.resent
    );
}

/// A broker that writes but answers later than `write_timeout` (answers lost, as on a network
/// that drops them): the writer sends those requests again, so the topic has some messages
/// twice; none is lost, and every duplicate is counted as resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_come_too_late_give_counted_duplicates_not_loss() {
    let kafka = MockKafka::start(1);
    kafka.create_topic("alerts", 2);
    let mut cfg = config(&format!("kafka://{}/alerts", kafka.bootstrap()));
    cfg.write_timeout = Duration::from_secs(1);
    let sink = cfg.build().unwrap();
    send_all(&sink, 200, 0).await;
    sink.flush(Duration::from_secs(30)).await.unwrap();
    kafka.set_rtt(1, Duration::from_millis(1500));
    for i in 200..400 {
        sink.send(message(i, 0)).await.unwrap();
    }
    // Let at least one request time out, then answer promptly again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kafka.set_rtt(1, Duration::ZERO);
    sink.flush(Duration::from_secs(60)).await.unwrap();
    let stats = sink.stats();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(stats.messages_sent, 400);
    assert!(stats.resent > 0, "{stats:?}");

    let got = read(&kafka.bootstrap(), "alerts", 400, READ).await;
    let c = counts(&got);
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), want(400, 1));
    let duplicates: usize = c.values().map(|n| n - 1).sum();
    assert!(
        duplicates > 0,
        "the late answers' requests were written twice"
    );
    assert!(
        duplicates as u64 <= stats.resent,
        "{duplicates} duplicates, {} resent",
        stats.resent
    );
}

/// Produce requests answered with retriable errors (NOT_ENOUGH_REPLICAS, a leader that
/// moved) are sent again: every message once, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_broker_errors_are_sent_again() {
    use rdkafka::types::RDKafkaRespErr::*;
    let kafka = MockKafka::start(1);
    kafka.create_topic("alerts", 1);
    kafka.produce_errors(&[
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
    ]);
    let sink = config(&format!("kafka://{}/alerts", kafka.bootstrap()))
        .build()
        .unwrap();
    send_all(&sink, 500, 0).await;
    sink.flush(Duration::from_secs(60)).await.unwrap();
    let stats = sink.stats();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(stats.messages_sent, 500);
    let got = read(&kafka.bootstrap(), "alerts", 500, READ).await;
    let c = counts(&got);
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), want(500, 1));
    assert!(c.values().all(|&n| n == 1), "duplicates: {c:?}");
}

/// A topic that does not exist: the destination is down with that reason (the writer does not
/// create topics), the messages wait, and they go once the topic is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_said_and_its_messages_wait_for_it() {
    let kafka = MockKafka::start(1);
    let sink = config(&format!("kafka://{}/later", kafka.bootstrap()))
        .build()
        .unwrap();
    let mut status = sink.status();
    send_all(&sink, 100, 0).await;
    let down = tokio::time::timeout(
        Duration::from_secs(30),
        status.wait_for(|s| matches!(s, Status::Down { .. })),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(
        matches!(&down, Status::Down { reason } if reason.contains("topic \"later\" does not exist")),
        "{down:?}"
    );
    assert_eq!(sink.stats().messages_sent, 0);
    kafka.create_topic("later", 2);
    sink.flush(Duration::from_secs(30)).await.unwrap();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    let got = read(&kafka.bootstrap(), "later", 100, READ).await;
    assert_eq!(
        counts(&got).keys().cloned().collect::<Vec<_>>(),
        want(100, 1)
    );
}

/// `kafka+tls://`: the broker behind TLS (a TLS front whose address the broker advertises),
/// the writer verifying it against the CA file; the probe of `check --online` connects and
/// finds the topic, and refuses a broker whose certificate it cannot verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_brokers_are_verified_and_written_to() {
    let pki = support::Pki::new("kafka");
    let kafka = MockKafka::start(1);
    kafka.create_topic("alerts", 2);
    let front = TlsFront::start(kafka.listen_addr(1), &pki.cert, &pki.key).await;
    kafka.advertise(1, "localhost", front.port);
    let url = format!("kafka+tls://localhost:{}/alerts", front.port);

    let untrusted = config(&url).probe().await.unwrap_err().to_string();
    assert!(
        untrusted.contains("Kafka kafka+tls://localhost"),
        "{untrusted}"
    );

    let mut cfg = config(&url);
    cfg.tls.ca_file = Some(pki.ca.clone());
    cfg.probe().await.unwrap();
    let sink = cfg.build().unwrap();
    send_all(&sink, 300, 0).await;
    sink.flush(Duration::from_secs(30)).await.unwrap();
    sink.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(
        front.connections() > 0,
        "the writer went through the TLS front"
    );

    // The reader speaks plaintext: the broker names its own listener again.
    let plain = kafka.listen_addr(1);
    kafka.advertise(1, &plain.ip().to_string(), plain.port());
    let got = read(&kafka.bootstrap(), "alerts", 300, READ).await;
    let c = counts(&got);
    assert_eq!(c.keys().cloned().collect::<Vec<_>>(), want(300, 1));
    assert!(c.values().all(|&n| n == 1), "duplicates: {c:?}");
}

/// The daemon with a Kafka destination: versions queued while the broker is down wait in the
/// durable queue across a SIGKILL and go after the restart. Every version of every alert is
/// in the topic, with the normalised alert as the value and its key and headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_delivers_every_version_across_an_outage_and_a_kill_9() {
    use defender_bridge::fake_api::samples::graph_alert;
    use defender_bridge::fake_api::{FakeApi, FakeCredential};
    use defender_bridge::source::Api;
    const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
    let kafka = MockKafka::start(1);
    kafka.create_topic("defender", 3);
    let fake = FakeApi::start().await.unwrap();
    fake.add_tenant(TENANT_ID, CLIENT, FakeCredential::Secret("s3cret".into()));
    let dir = tempfile::tempdir().unwrap();
    let ca = fake.write_ca_file(dir.path()).unwrap();
    let base = fake.base_url();
    let t0 = chrono::Utc::now() - chrono::Duration::seconds(120);
    let mut versions = Vec::new();
    for i in 0..100 {
        let t = t0 + chrono::Duration::milliseconds(i * 10);
        let id = format!("da-{i:05}");
        fake.upsert_alert(
            TENANT_ID,
            Api::Graph,
            graph_alert(TENANT_ID, &id, t, "new", i as usize),
        );
        versions.push((id, t));
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
tenant_id = "{TENANT_ID}"
client_id = "{CLIENT}"
client_secret = {{ env = "T1_SECRET" }}
authority_host = "{base}"
api_base_url = "{base}"

[[destination]]
name = "kafka"
url = "kafka://{bootstrap}/defender"
format = "json"
"#,
            state = dir.path().join("state").display(),
            ca = ca.display(),
            bootstrap = kafka.bootstrap(),
        ),
    )
    .unwrap();
    let start = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
            .args(["run", "--config", config.to_str().unwrap()])
            .env("T1_SECRET", "s3cret")
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut child = start();
    // The first versions arrive; then the broker goes down and second versions come.
    let first = read(&kafka.bootstrap(), "defender", 100, READ).await;
    assert_eq!(first.len(), 100);
    kafka.broker_down(1);
    for (i, (id, t)) in versions.iter_mut().enumerate() {
        *t += chrono::Duration::seconds(30);
        fake.upsert_alert(
            TENANT_ID,
            Api::Graph,
            graph_alert(TENANT_ID, id, *t, "inProgress", i),
        );
    }
    // Polled and queued (the broker is down, so nothing of it is delivered), then killed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    child.start_kill().unwrap();
    let _ = child.wait().await;
    kafka.broker_up(1);
    let child = start();
    let got = read(&kafka.bootstrap(), "defender", 200, READ).await;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let out = child.wait_with_output().await.unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");

    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for m in &got {
        let v: serde_json::Value = serde_json::from_slice(&m.value).unwrap();
        let id = v["id"].as_str().unwrap().to_string();
        let last = v["lastUpdateDateTime"].as_str().unwrap().to_string();
        let key = format!("{TENANT_ID}:{id}");
        assert_eq!(m.key.as_deref(), Some(key.as_bytes()));
        assert_eq!(m.partition as usize, partition_for_key(key.as_bytes(), 3));
        assert_eq!(v["tenantName"], "contoso");
        let h: BTreeMap<&str, &[u8]> = m
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        assert_eq!(h["tenant"], b"contoso");
        assert_eq!(h["tenantId"], TENANT_ID.as_bytes());
        let header_time =
            chrono::DateTime::parse_from_rfc3339(std::str::from_utf8(h["lastUpdate"]).unwrap())
                .unwrap();
        assert_eq!(
            header_time,
            chrono::DateTime::parse_from_rfc3339(&last).unwrap()
        );
        assert_eq!(m.timestamp_ms, Some(header_time.timestamp_millis()));
        *seen.entry((id, last)).or_default() += 1;
    }
    // Both versions of every alert, each once (nothing of the second ones was delivered
    // before the kill, and the first ones' cursor had moved past them).
    assert_eq!(seen.len(), 200, "{seen:?}");
    assert!(seen.values().all(|&n| n == 1), "duplicates: {seen:?}");
    assert!(!log.contains("s3cret"), "{log}");
}

/// `send` to a Kafka topic: every alert of a sample file arrives, keyed, with no syslog header
/// in the value; a HEC destination without its token is refused before anything connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_writes_a_file_of_alerts_to_a_topic() {
    let kafka = MockKafka::start(1);
    kafka.create_topic("alerts", 2);
    let sample = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/graph-alerts-v2-demisto-linux-and-air.json"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args([
            "send",
            "--to",
            &format!("kafka://{}/alerts", kafka.bootstrap()),
            "--format",
            "json",
            "--tenant-name",
            "contoso",
            sample,
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: serde_json::Value = serde_json::from_slice(&std::fs::read(sample).unwrap()).unwrap();
    let mut want: Vec<String> = page["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    want.sort();
    let got = read(&kafka.bootstrap(), "alerts", want.len(), READ).await;
    let mut ids: Vec<String> = got
        .iter()
        .map(|m| {
            let v: serde_json::Value =
                serde_json::from_slice(&m.value).expect("a JSON value, no header");
            let id = v["id"].as_str().unwrap().to_string();
            let key = format!("{}:{id}", v["tenantId"].as_str().unwrap());
            assert_eq!(m.key.as_deref(), Some(key.as_bytes()));
            id
        })
        .collect();
    ids.sort();
    assert_eq!(ids, want);

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args([
            "send-test",
            "--to",
            "hec+https://127.0.0.1:1",
            "--format",
            "json",
        ])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--hec-token-env"),
        "{err}"
    );
}
