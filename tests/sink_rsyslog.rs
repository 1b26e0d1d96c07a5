//! UDP, TCP (LF and octet counting) against a real rsyslogd: every record arrives byte for
//! byte and in order, over-size messages are refused, and a receiver restart loses nothing.

mod support;

use std::time::Duration;

use bytes::Bytes;
use defender_bridge::sink::{Backoff, Error, Framing, Sink, SinkConfig};
use support::{mixed_records, rsyslog, RsyslogInput, WAIT};

fn config(url: &str) -> SinkConfig {
    let mut c = SinkConfig::new(url.parse().expect("destination URL"));
    // Short delays keep the restart test quick; the logic is the same as with the defaults.
    c.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(500),
    };
    c
}

async fn send_all(sink: &Sink, records: &[Bytes]) {
    for r in records {
        sink.send(r.clone()).await.expect("send");
    }
}

fn as_lines(records: &[Bytes]) -> Vec<Vec<u8>> {
    records.iter().map(|r| r.to_vec()).collect()
}

/// `base` (a record) padded with ASCII to exactly `size` bytes.
fn exactly(base: &Bytes, size: usize) -> Bytes {
    let mut v = base.to_vec();
    v.extend_from_slice(b" cs2Label=pad cs2=");
    assert!(v.len() < size);
    v.resize(size, b'p');
    Bytes::from(v)
}

#[tokio::test]
async fn udp_delivers_every_record_byte_for_byte_in_order() {
    let rsyslog = rsyslog(RsyslogInput::Udp).await;
    let records = mixed_records(3000, 2048, 1);
    let sink = config(&format!("udp://127.0.0.1:{}", rsyslog.port))
        .build()
        .unwrap();
    send_all(&sink, &records).await;
    sink.flush(WAIT).await.unwrap();

    let lines = rsyslog.wait_for_lines(records.len()).await;
    assert_eq!(lines, as_lines(&records));
    let stats = sink.stats();
    assert_eq!(stats.messages_sent, 3000);
    assert_eq!(stats.send_errors, 0);
    assert_eq!(
        stats.bytes_sent,
        records.iter().map(|r| r.len() as u64).sum::<u64>()
    );
    sink.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn tcp_lf_delivers_every_record_byte_for_byte_in_order() {
    let rsyslog = rsyslog(RsyslogInput::Tcp).await;
    let records = mixed_records(3000, 8192, 2);
    let sink = config(&format!("tcp://127.0.0.1:{}", rsyslog.port))
        .build()
        .unwrap();
    send_all(&sink, &records).await;
    sink.shutdown(WAIT).await.unwrap();

    let lines = rsyslog.wait_for_lines(records.len()).await;
    assert_eq!(lines, as_lines(&records));
}

#[tokio::test]
async fn tcp_octet_counting_delivers_records_with_raw_line_feeds() {
    let rsyslog = rsyslog(RsyslogInput::Tcp).await;
    let mut records = mixed_records(3000, 8192, 3);
    // Octet counting is transparent (RFC 6587 §3.4.1): a raw LF stays inside its message.
    for i in (0..records.len()).step_by(100) {
        let mut v = records[i].to_vec();
        v.extend_from_slice(" raw\nline feed\r\n\tand tab".as_bytes());
        records[i] = Bytes::from(v);
    }
    let mut cfg = config(&format!("tcp://[::ffff:127.0.0.1]:{}", rsyslog.port));
    cfg.framing = Some(Framing::OctetCounting);
    let sink = cfg.build().unwrap();
    send_all(&sink, &records).await;
    sink.flush(WAIT).await.unwrap();

    // The template appends LF to each raw message, so the file is exactly this:
    let want: Vec<u8> = records
        .iter()
        .flat_map(|r| [&r[..], b"\n"].concat())
        .collect();
    let got = rsyslog.wait_for_bytes(want.len()).await;
    assert!(got == want, "rsyslog output differs from what was sent");
    assert_eq!(sink.stats().messages_sent, 3000);
    sink.shutdown(WAIT).await.unwrap();
}

#[tokio::test]
async fn tls_to_rsyslog_gtls_delivers_every_record_byte_for_byte_in_order() {
    let pki = support::Pki::new("rsyslog");
    let rsyslog = rsyslog(RsyslogInput::Tls {
        ca: pki.ca.clone(),
        cert: pki.cert.clone(),
        key: pki.key.clone(),
    })
    .await;
    let records = mixed_records(3000, 8192, 6);
    let mut cfg = config(&format!("tls://127.0.0.1:{}", rsyslog.port));
    cfg.tls.ca_file = Some(pki.ca.clone());
    let sink = cfg.build().unwrap();
    send_all(&sink, &records).await;
    sink.shutdown(WAIT).await.unwrap();

    let lines = rsyslog.wait_for_lines(records.len()).await;
    assert_eq!(lines, as_lines(&records));
}

#[tokio::test]
async fn over_size_messages_are_refused_and_counted_and_exact_size_ones_arrive_whole() {
    let base = &mixed_records(1, 1024, 4)[0];

    for (url_scheme, input, max) in [
        ("udp", RsyslogInput::Udp, 2048),
        ("tcp", RsyslogInput::Tcp, 8192),
    ] {
        let rsyslog = rsyslog(input).await;
        let sink = config(&format!("{url_scheme}://127.0.0.1:{}", rsyslog.port))
            .build()
            .unwrap();
        assert_eq!(sink.max_message_size(), max);

        let fits = exactly(base, max);
        let too_big = exactly(base, max + 1);
        sink.send(fits.clone()).await.unwrap();
        let err = sink.send(too_big).await.unwrap_err();
        assert!(
            matches!(err, Error::TooLarge { size, max: m, .. } if size == max + 1 && m == max),
            "{err}"
        );
        assert!(err.to_string().contains(&format!(
            "{} bytes is larger than the maximum of {max}",
            max + 1
        )));
        // Under LF framing a message with LF is refused too (it would arrive as two).
        if url_scheme == "tcp" {
            let err = sink
                .send(Bytes::from_static(b"<13>1 a\nb"))
                .await
                .unwrap_err();
            assert!(matches!(err, Error::ContainsLf), "{err}");
        }
        assert!(matches!(
            sink.send(Bytes::new()).await.unwrap_err(),
            Error::Empty
        ));
        let marker = base.clone();
        sink.send(marker.clone()).await.unwrap();
        sink.flush(WAIT).await.unwrap();

        // Counted before waiting, so that a failure says what the writer did (CI once saw
        // 0 of 2 lines here, not reproduced since).
        let stats = sink.stats();
        eprintln!("{url_scheme} to port {}: {stats:?}", rsyslog.port);
        let lines = rsyslog.wait_for_lines(2).await;
        assert_eq!(lines, vec![fits.to_vec(), marker.to_vec()], "{url_scheme}");
        assert_eq!(stats.messages_sent, 2);
        assert_eq!(
            stats.rejected,
            if url_scheme == "tcp" { 3 } else { 2 },
            "{url_scheme}"
        );
        sink.shutdown(WAIT).await.unwrap();
    }
}

#[tokio::test]
async fn receiver_restart_mid_stream_loses_nothing() {
    let mut rsyslog = rsyslog(RsyslogInput::Tcp).await;
    // By name: it is resolved again on every reconnect.
    let cfg = config(&format!("tcp://localhost:{}", rsyslog.port));
    support::restart_mid_stream(&mut rsyslog, cfg, &mixed_records(3000, 8192, 5)).await;
}
