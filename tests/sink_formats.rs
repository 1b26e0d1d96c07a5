//! Records made by the real built-in formats (every fixture in tests/data, the hostile one
//! included), each with its syslog header and cut to the destination's maximum size by the
//! format layer, arrive at rsyslog and syslog-ng byte for byte and in order over UDP, TCP (LF
//! and octet counting) and TLS.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use defender_bridge::alert::Alert;
use defender_bridge::format::syslog::Clock;
use defender_bridge::format::{
    Context, Formatter, HeaderKind, MessageEncoder, SyslogHeader, BUILTIN,
};
use defender_bridge::input::{self, Decoded, Limits};
use defender_bridge::sink::{Backoff, Framing, Sink, SinkConfig};
use support::{rsyslog, syslog_ng, Pki, Proto, RsyslogInput, WAIT};

fn alerts() -> Vec<Alert<'static>> {
    let mut alerts = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir("tests/data")
        .expect("tests/data")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "ndjson"))
        .collect();
    files.sort();
    for path in files {
        let bytes = std::fs::read(&path).expect("fixture");
        input::decode(&bytes, Limits::default(), |d| {
            if let Decoded::Alert(_, alert) = d {
                alerts.push(alert.into_owned());
            }
        });
    }
    assert!(alerts.len() >= 10, "fixtures hold {} alerts", alerts.len());
    alerts
}

/// At least `count` messages of every built-in format, cycling through the fixtures, each at
/// most `max` bytes; returns them and how many values the format layer cut to make them fit.
fn messages(kind: HeaderKind, max: usize, count: usize) -> (Vec<Bytes>, u64) {
    let alerts = alerts();
    let ctx = Context {
        tenant_name: Some("Contoso Ltd"),
        hostname: None,
    };
    let mut once = Vec::new();
    let mut truncated = 0;
    for (name, _) in BUILTIN {
        let encoder = MessageEncoder {
            formatter: Arc::new(Formatter::load(name).expect("built-in format")),
            header: SyslogHeader::new(kind, 16, "bridge-01", "defender-bridge")
                .with_clock(Clock::Utc),
            max_message: Some(max),
        };
        for alert in &alerts {
            for i in 0..encoder.formatter.record_count(alert) {
                let mut buf = Vec::new();
                // A record that cannot fit goes to the dead-letter file in the daemon; here it
                // is simply not sent.
                if let Ok(e) = encoder.encode(alert, &ctx, i, &mut buf) {
                    truncated += u64::from(e.truncated);
                    assert!(buf.len() <= max);
                    once.push(Bytes::from(buf));
                }
            }
        }
    }
    let records: Vec<Bytes> = once
        .iter()
        .cycle()
        .take(count.max(once.len()))
        .cloned()
        .collect();
    (records, truncated)
}

fn config(url: &str) -> SinkConfig {
    let mut c = SinkConfig::new(url.parse().expect("destination URL"));
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(500),
    };
    c
}

async fn send_all(sink: Sink, records: &[Bytes]) {
    for r in records {
        sink.send(r.clone()).await.expect("send");
    }
    sink.shutdown(WAIT).await.expect("shutdown");
}

fn as_lines(records: &[Bytes]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.to_vec()).collect()
}

#[tokio::test]
async fn built_in_formats_over_udp_arrive_whole_after_truncation() {
    let rsyslog = rsyslog(RsyslogInput::Udp).await;
    let cfg = config(&format!("udp://127.0.0.1:{}", rsyslog.port));
    let (records, truncated) =
        messages(HeaderKind::Rfc3164, cfg.effective_max_message_size(), 2000);
    assert!(
        truncated > 0,
        "the long fixtures need cutting to 2048 bytes"
    );
    assert!(records.iter().any(|r| r.len() > 1900));
    send_all(cfg.build().unwrap(), &records).await;
    assert_eq!(
        rsyslog.wait_for_lines(records.len()).await,
        as_lines(&records)
    );
}

#[tokio::test]
async fn built_in_formats_over_tcp_lf_and_octet_counting_arrive_byte_for_byte() {
    for framing in [Framing::Lf, Framing::OctetCounting] {
        let rsyslog = rsyslog(RsyslogInput::Tcp).await;
        let mut cfg = config(&format!("tcp://127.0.0.1:{}", rsyslog.port));
        cfg.framing = Some(framing);
        let (records, _) = messages(HeaderKind::Rfc5424, cfg.effective_max_message_size(), 3000);
        send_all(cfg.build().unwrap(), &records).await;
        assert_eq!(
            rsyslog.wait_for_lines(records.len()).await,
            as_lines(&records),
            "{framing}"
        );
    }
}

#[tokio::test]
async fn built_in_formats_over_tls_arrive_byte_for_byte() {
    let pki = Pki::new("server");
    let ng = syslog_ng(
        Proto::Tcp,
        &format!(
            r#"source s {{ syslog(ip("127.0.0.1") port(PORT) transport("tls") flags(no-parse)
    tls(key-file("{}") cert-file("{}") peer-verify(optional-untrusted))); }};
destination d {{ file("OUT" template("${{MSG}}\n")); }};
log {{ source(s); destination(d); }};"#,
            pki.key.display(),
            pki.cert.display()
        ),
    )
    .await;
    let mut cfg = config(&format!("tls://127.0.0.1:{}", ng.port));
    cfg.tls.ca_file = Some(pki.ca.clone());
    let (records, _) = messages(HeaderKind::Rfc5424, cfg.effective_max_message_size(), 3000);
    send_all(cfg.build().unwrap(), &records).await;
    assert_eq!(ng.wait_for_lines(records.len()).await, as_lines(&records));
}
