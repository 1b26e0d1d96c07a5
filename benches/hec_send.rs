//! Throughput of the Splunk HEC writer with indexer acknowledgement on: ~1 KB JSON event
//! objects to the test collector on loopback (tests/support/hec.rs: gunzips, parses, indexes
//! on ack), acks true as soon as asked. Records/s from the first send to the last ack.
//!
//! cargo bench --bench hec_send        (prints the median of 5 runs of 50,000 events)

#[path = "../tests/support/hec.rs"]
mod hec;

use std::time::{Duration, Instant};

use bytes::Bytes;
use defender_bridge::sink::SinkConfig;
use defender_bridge::source::SecretString;
use hec::{Acks, HecScript, HecServer};

const EVENTS: usize = 50_000;
const RUNS: usize = 5;

fn event(i: usize) -> Bytes {
    let mut s = format!(
        r#"{{"time":1796119200.{:03},"host":"bridge","source":"defender-bridge","sourcetype":"ms:defender:alert","fields":{{"tenant":"contoso","severity":"high"}},"event":{{"id":"da638{i:010}","title":"Suspicious PowerShell command line","description":""#,
        i % 1000
    );
    while s.len() < 980 {
        s.push_str("A process ran a PowerShell command with an encoded script. ");
    }
    s.truncate(980);
    s.push_str("\"}}");
    Bytes::from(s)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let events: Vec<Bytes> = (0..EVENTS).map(event).collect();
    let mut rates = Vec::new();
    for _ in 0..RUNS {
        let server = HecServer::start(HecScript {
            token: "bench".into(),
            acks: Some(Acks::After(Duration::ZERO)),
        });
        let rate = rt.block_on(async {
            let mut c = SinkConfig::new(
                format!("hec+http://127.0.0.1:{}", server.port())
                    .parse()
                    .expect("url"),
            );
            c.hec.token = Some(SecretString::new("bench"));
            c.hec.indexer_ack = true;
            let sink = c.build().expect("sink");
            let start = Instant::now();
            for e in &events {
                sink.send(e.clone()).await.expect("send");
            }
            sink.flush(Duration::from_secs(300)).await.expect("flush");
            let rate = EVENTS as f64 / start.elapsed().as_secs_f64();
            sink.shutdown(Duration::from_secs(5))
                .await
                .expect("shutdown");
            rate
        });
        assert_eq!(server.indexed().len(), EVENTS, "every event indexed");
        rates.push(rate);
    }
    rates.sort_by(|a, b| a.total_cmp(b));
    println!(
        "hec_send: {EVENTS} events of ~1 KB, indexer ack on: median {:.0} events/s (runs: {})",
        rates[RUNS / 2],
        rates
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
