//! In-process receivers for what a syslog daemon will not do on demand: close or reset a
//! connection at a chosen moment, stall, refuse datagrams. Loopback only.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use defender_bridge::sink::{Backoff, Error, Framing, Sink, SinkConfig, Stats, Status};
use support::{mixed_records, WAIT};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn config(url: &str) -> SinkConfig {
    let mut c = SinkConfig::new(url.parse().expect("destination URL"));
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

fn framed(records: &[Bytes], framing: Framing) -> Vec<u8> {
    let mut out = BytesMut::new();
    for r in records {
        framing.encode(r, &mut out);
    }
    out.to_vec()
}

async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .expect("the sink writes within the wait")
        .expect("read");
    buf
}

async fn read_to_end(mut stream: TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut buf))
        .await
        .expect("the sink closes within the wait")
        .expect("read");
    buf
}

/// A receiver that reads `first_len` bytes, then closes (FIN) or resets (RST) the connection and
/// stops listening (the first channel fires), and once told (the second) listens on the same
/// port again and reads one connection to its end. Returns what each connection got.
#[allow(clippy::type_complexity)]
fn closing_receiver(
    listener: TcpListener,
    first_len: usize,
    reset: bool,
) -> (
    tokio::task::JoinHandle<(Vec<u8>, Vec<u8>)>,
    oneshot::Receiver<()>,
    oneshot::Sender<()>,
) {
    let addr = listener.local_addr().unwrap();
    let (closed_tx, closed_rx) = oneshot::channel();
    let (reopen_tx, reopen_rx) = oneshot::channel::<()>();
    let receiver = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let first = read_exactly(&mut conn, first_len).await;
        if reset {
            conn.set_zero_linger().unwrap();
        }
        drop(conn);
        drop(listener);
        closed_tx.send(()).unwrap();
        reopen_rx.await.unwrap();
        let listener = TcpListener::bind(addr).await.unwrap();
        let (conn, _) = listener.accept().await.unwrap();
        (first, read_to_end(conn).await)
    });
    (receiver, closed_rx, reopen_tx)
}

async fn wait_refused(status: &mut tokio::sync::watch::Receiver<Status>) {
    tokio::time::timeout(
        WAIT,
        status.wait_for(|s| matches!(s, Status::Down { reason } if reason.contains("refused"))),
    )
    .await
    .expect("refused while not listening")
    .unwrap();
}

/// The receiver reads batch A, then closes (FIN) or resets (RST) the connection, stops
/// listening for a while (connections refused), then listens again on the same port and
/// reads batch B. With `resend_on_reconnect` off nothing may be lost or duplicated: the sink
/// notices the dead connection before it writes B.
#[tokio::test]
async fn a_receiver_that_closes_or_resets_loses_nothing() {
    for reset in [false, true] {
        for framing in [Framing::Lf, Framing::OctetCounting] {
            let a = mixed_records(200, 8192, 31);
            let b = mixed_records(300, 8192, 32);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            let a_len = framed(&a, framing).len();

            let (receiver, closed_rx, reopen_tx) = closing_receiver(listener, a_len, reset);

            let mut cfg = config(&format!("tcp://{addr}"));
            cfg.framing = Some(framing);
            cfg.resend_on_reconnect = 0;
            let sink = cfg.build().unwrap();
            let mut status = sink.status();
            send_all(&sink, &a).await;
            sink.flush(WAIT).await.unwrap();
            closed_rx.await.unwrap();

            let reason =
                tokio::time::timeout(WAIT, status.wait_for(|s| matches!(s, Status::Down { .. })))
                    .await
                    .expect("down is reported while idle")
                    .unwrap()
                    .clone();
            let reason = format!("{reason:?}");
            if reset {
                assert!(reason.contains("reset"), "{reason}");
            } else {
                assert!(reason.contains("closed the connection"), "{reason}");
            }

            // B waits while connections are refused, and goes out once the port listens.
            send_all(&sink, &b).await;
            wait_refused(&mut status).await;
            reopen_tx.send(()).unwrap();
            sink.shutdown(WAIT).await.unwrap();

            let (first, second) = receiver.await.unwrap();
            assert!(first == framed(&a, framing), "first connection");
            assert!(
                second == framed(&b, framing),
                "second connection (reset={reset}, {framing})"
            );
        }
    }
}

/// The records of `records` that have a byte among the last `bytes` bytes of their framing.
fn last_bytes(records: &[Bytes], framing: Framing, bytes: usize) -> Vec<Bytes> {
    let total = framed(records, framing).len();
    let mut end = 0;
    records
        .iter()
        .filter(|r| {
            end += framed(std::slice::from_ref(*r), framing).len();
            end > total.saturating_sub(bytes)
        })
        .cloned()
        .collect()
}

/// Issue 9 item 4: the receiver reads batch A (its TCP acknowledges it), then drops what it read
/// and closes (FIN) or resets (RST) the connection, as a receiver that crashes or restarts does.
/// The records of the last `resend_on_reconnect` bytes of A are written again, first, on the
/// next connection, then B; they are not counted as sent twice. Without the resend, the second
/// connection gets only B and what the receiver dropped is lost.
#[tokio::test]
async fn a_receiver_that_drops_what_it_read_gets_the_last_records_again() {
    for reset in [false, true] {
        for resend in [10_000, defender_bridge::sink::DEFAULT_RESEND_ON_RECONNECT] {
            let a = mixed_records(200, 8192, 33);
            let b = mixed_records(50, 8192, 34);
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            let a_len = framed(&a, Framing::Lf).len();

            // What the receiver read of A on the first connection, it drops.
            let (receiver, closed_rx, reopen_tx) = closing_receiver(listener, a_len, reset);

            let mut cfg = config(&format!("tcp://{addr}"));
            cfg.resend_on_reconnect = resend;
            let sink = cfg.build().unwrap();
            let mut status = sink.status();
            send_all(&sink, &a).await;
            sink.flush(WAIT).await.unwrap();
            closed_rx.await.unwrap();
            send_all(&sink, &b).await;
            wait_refused(&mut status).await;
            reopen_tx.send(()).unwrap();
            sink.flush(WAIT).await.unwrap();
            let stats = sink.stats();
            sink.shutdown(WAIT).await.unwrap();

            let again = last_bytes(&a, Framing::Lf, resend);
            assert!(!again.is_empty());
            let mut want = framed(&again, Framing::Lf);
            want.extend(framed(&b, Framing::Lf));
            let (_, got) = receiver.await.unwrap();
            assert!(
                got == want,
                "second connection (reset={reset}, resend={resend}): {} bytes, want {} of A again and B",
                got.len(),
                again.len()
            );
            assert_eq!(stats.resent, again.len() as u64);
            assert_eq!(stats.messages_sent, 250, "each record counted once");
        }
    }
}

/// One stalled destination (accepts, never reads) and one refused destination never hold up
/// a third: separate writer tasks, separate queues. The stalled one applies backpressure to
/// its own caller only, and its shutdown reports what it could not write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_dead_destination_does_not_hold_up_another() {
    let stalled = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    let (hold_tx, hold_rx) = oneshot::channel::<()>();
    let staller = tokio::spawn(async move {
        let (conn, _) = stalled.accept().await.unwrap();
        let _ = hold_rx.await; // keep the connection open, read nothing
        drop(conn);
    });
    let refused_port = support::free_port(support::Proto::Tcp);

    let healthy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let healthy_addr = healthy.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (conn, _) = healthy.accept().await.unwrap();
        read_to_end(conn).await
    });

    let mut slow_cfg = config(&format!("tcp://{stalled_addr}"));
    slow_cfg.queue_capacity = 16;
    let slow = Arc::new(slow_cfg.build().unwrap());
    let dead = config(&format!("tcp://127.0.0.1:{refused_port}"))
        .build()
        .unwrap();
    let good = config(&format!("tcp://{healthy_addr}")).build().unwrap();

    // 40 MB cannot fit in the socket buffers and a 16-message queue: this caller blocks.
    let big = mixed_records(20_000, 8192, 41);
    let blocked = {
        let slow = slow.clone();
        tokio::spawn(async move { send_all(&slow, &big).await })
    };
    let records = mixed_records(2000, 8192, 42);
    for r in &records[..50] {
        dead.send(r.clone()).await.unwrap();
    }
    send_all(&good, &records).await;
    good.shutdown(WAIT).await.unwrap();
    assert!(reader.await.unwrap() == framed(&records, Framing::Lf));

    assert!(
        !blocked.is_finished(),
        "the stalled destination applies backpressure"
    );
    assert!(slow.stats().queued > 0);
    let err = dead.shutdown(Duration::from_millis(200)).await.unwrap_err();
    assert!(matches!(err, Error::Unsent { unsent: 50, .. }), "{err}");

    blocked.abort();
    let _ = blocked.await;
    let slow = Arc::into_inner(slow).expect("sender gone");
    let err = slow.shutdown(Duration::from_millis(200)).await.unwrap_err();
    assert!(
        matches!(err, Error::Unsent { unsent, .. } if unsent > 0),
        "{err}"
    );
    hold_tx.send(()).unwrap();
    staller.await.unwrap();
}

/// A receiver that accepts the connection and then reads nothing: after the write timeout the
/// sink drops that connection and writes the unfinished batch again, whole, on a new one.
/// Without the timeout it would wait on the first connection forever, looking up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_stops_reading_is_left_for_a_new_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut cfg = config(&format!("tcp://{addr}"));
    cfg.write_timeout = Duration::from_millis(300);
    let sink = Arc::new(cfg.build().unwrap());
    // 40 MB: more than the socket buffers of a receiver that reads nothing hold.
    let records = mixed_records(20_000, 8192, 51);
    let sender = {
        let (sink, records) = (sink.clone(), records.clone());
        tokio::spawn(async move { send_all(&sink, &records).await })
    };
    let (stalled, _) = listener.accept().await.unwrap(); // held open, never read
    let (conn, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("the sink gives up on the stalled connection and connects again")
        .unwrap();
    let reading = tokio::spawn(read_to_end(conn));
    tokio::time::timeout(WAIT, sender)
        .await
        .expect("everything is accepted once the new connection reads")
        .unwrap();
    let sink = Arc::into_inner(sink).expect("sender gone");
    assert_eq!(sink.stats().reconnects, 1);
    sink.shutdown(WAIT).await.unwrap();
    drop(stalled);

    // What the new connection got: the batch the stall cut off, from its first record, and
    // everything after it.
    let got = reading.await.unwrap();
    let all = framed(&records, Framing::Lf);
    assert!(!got.is_empty() && got.len() < all.len());
    assert!(all.ends_with(&got), "a suffix of the stream");
    assert_eq!(all[all.len() - got.len() - 1], b'\n', "starts at a record");
}

/// UDP to a closed port: ICMP refusals are counted and logged, never fatal; once a receiver
/// binds the port, datagrams arrive again.
#[tokio::test]
async fn udp_refusals_are_counted_and_not_fatal() {
    let port = support::free_port(support::Proto::Udp);
    let sink = config(&format!("udp://127.0.0.1:{port}")).build().unwrap();
    let lost = mixed_records(50, 2048, 51);
    send_all(&sink, &lost).await;
    sink.flush(WAIT).await.unwrap();
    let stats = sink.stats();
    assert!(stats.send_errors > 0, "{stats:?}");
    assert!(
        matches!(&*sink.status().borrow(), Status::Down { reason } if reason.contains("refused")),
        "{:?}",
        *sink.status().borrow()
    );

    let receiver = tokio::net::UdpSocket::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let records = mixed_records(20, 2048, 52);
    send_all(&sink, &records).await;
    sink.flush(WAIT).await.unwrap();
    let mut buf = vec![0u8; 65536];
    for want in &records {
        let n = tokio::time::timeout(WAIT, receiver.recv(&mut buf))
            .await
            .expect("datagram")
            .unwrap();
        assert!(buf[..n] == want[..]);
    }
    assert!(matches!(*sink.status().borrow(), Status::Up { .. }));
    sink.shutdown(WAIT).await.unwrap();
}

/// A TLS acceptor for the test PKI's server certificate (TLS 1.3 and 1.2, rustls defaults: the
/// server sends its session tickets right after the handshake).
fn tls_acceptor(pki: &support::Pki) -> tokio_rustls::TlsAcceptor {
    use tokio_rustls::rustls::crypto::aws_lc_rs;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::ServerConfig;

    let certs = CertificateDer::pem_file_iter(&pki.cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(&pki.key).unwrap();
    let server = ServerConfig::builder_with_provider(Arc::new(aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    tokio_rustls::TlsAcceptor::from(Arc::new(server))
}

/// What a TLS receiver saw of one connection.
struct TlsReceived {
    bytes: Vec<u8>,
    /// How its read ended: `Err` for a reset, or a TCP EOF without `close_notify`.
    end: Result<(), String>,
    /// A reset (or other error) the socket reported after the stream ended.
    late_error: Option<String>,
}

/// Accepts one TLS connection, reads nothing for `pause` after the handshake (busy, or slow
/// when the sender finishes), then reads to the end, answers with its own `close_notify` and
/// FIN, and looks whether the sender reset the connection.
async fn slow_tls_receiver(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    pause: Duration,
) -> TlsReceived {
    use tokio::io::AsyncWriteExt;
    let (tcp, _) = listener.accept().await.unwrap();
    let mut tls = acceptor.accept(tcp).await.unwrap();
    tokio::time::sleep(pause).await;
    let mut bytes = Vec::new();
    let end = tokio::time::timeout(WAIT, tls.read_to_end(&mut bytes))
        .await
        .expect("the sink closes within the wait")
        .map(|_| ())
        .map_err(|e| e.to_string());
    // A reset that came with or after the end of the stream is the socket's pending error;
    // writing consumes it, so look before our close_notify, and again a moment after it (a
    // sender that drops its socket with our records unread answers them with RST).
    let pending =
        |tls: &tokio_rustls::server::TlsStream<TcpStream>| match tls.get_ref().0.take_error() {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some(e.to_string()),
        };
    let mut late_error = pending(&tls);
    if let Err(e) = tls.shutdown().await {
        late_error.get_or_insert(e.to_string());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Some(e) = pending(&tls) {
        late_error.get_or_insert(e);
    }
    TlsReceived {
        bytes,
        end,
        late_error,
    }
}

/// A `tls://` destination trusting `pki`, served by a [`slow_tls_receiver`].
async fn slow_tls_destination(
    pki: &support::Pki,
    pause: Duration,
) -> (SinkConfig, tokio::task::JoinHandle<TlsReceived>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = tokio::spawn(slow_tls_receiver(listener, tls_acceptor(pki), pause));
    let mut cfg = config(&format!("tls://{addr}"));
    cfg.tls.ca_file = Some(pki.ca.clone());
    (cfg, receiver)
}

/// `shutdown` ends a TLS session with `close_notify` (RFC 5425 §4.4): the receiver's read
/// ends cleanly (rustls reports a missing close_notify as an `UnexpectedEof` error).
#[tokio::test]
async fn tls_shutdown_sends_close_notify() {
    let pki = support::Pki::new("server");
    let (cfg, receiver) = slow_tls_destination(&pki, Duration::ZERO).await;
    let records = mixed_records(1000, 8192, 61);
    let sink = cfg.build().unwrap();
    send_all(&sink, &records).await;
    sink.shutdown(WAIT).await.unwrap();

    let got = receiver.await.unwrap();
    assert!(
        got.end.is_ok(),
        "the session ended without close_notify: {:?}",
        got.end
    );
    assert!(got.bytes == framed(&records, Framing::OctetCounting));
}

/// `records` padded with ASCII to `size` bytes each (a typical alert record is a few KB).
fn padded(records: Vec<Bytes>, size: usize) -> Vec<Bytes> {
    records
        .into_iter()
        .map(|r| {
            let mut v = r.to_vec();
            v.extend_from_slice(b" cs2Label=pad cs2=");
            v.resize(v.len().max(size), b'p');
            Bytes::from(v)
        })
        .collect()
}

/// Issue 8, item 1: `send --to tls://…` to a receiver that is slow to read when the sender
/// finishes lost the tail of the stream. The sender had "written" everything into its kernel
/// send queue and closed with the server's TLS 1.3 session tickets unread, so Linux sent RST
/// instead of FIN and threw away what was still queued. Every record must arrive, byte for
/// byte, the session must end with `close_notify`, and nothing may be reset.
#[tokio::test]
async fn a_tls_receiver_slow_to_read_at_the_end_gets_every_record() {
    let pki = support::Pki::new("slow reader");
    let (cfg, receiver) = slow_tls_destination(&pki, Duration::from_secs(2)).await;
    let records = padded(mixed_records(152, 8192, 71), 4000);
    let sink = cfg.build().unwrap();
    send_all(&sink, &records).await;
    sink.flush(WAIT).await.unwrap();
    assert_eq!(sink.stats().messages_sent, 152);
    sink.shutdown(WAIT).await.unwrap();

    let got = receiver.await.unwrap();
    let want = framed(&records, Framing::OctetCounting);
    assert!(
        got.bytes == want,
        "the receiver got {} of {} bytes ({:?})",
        got.bytes.len(),
        want.len(),
        got.end
    );
    assert!(got.end.is_ok(), "{:?}", got.end);
    assert_eq!(got.late_error, None, "the sender reset the connection");
}

/// `check --online` and `send-test` connect and close again (`SinkConfig::probe`): a TLS
/// receiver that is busy for a moment then sees `close_notify` and FIN, never a reset.
#[tokio::test]
async fn a_tls_probe_closes_without_a_reset() {
    let pki = support::Pki::new("probe");
    let (cfg, receiver) = slow_tls_destination(&pki, Duration::from_millis(500)).await;
    assert_eq!(cfg.probe().await.unwrap().port(), cfg.destination.port);

    let got = receiver.await.unwrap();
    assert!(got.bytes.is_empty());
    assert!(got.end.is_ok(), "{:?}", got.end);
    assert_eq!(got.late_error, None, "the probe reset the connection");
}

/// A listener whose connections' TCP takes a few KB, not megabytes, before the receiver reads.
fn small_window_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // Accepted connections inherit it.
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    socket.listen(4).unwrap()
}

/// ~300 KB of records: far more than a [`small_window_listener`] connection takes, far less
/// than the sender's send queue on loopback (about 1 MB and more), so every write returns.
fn fits_the_send_queue(seed: u64) -> Vec<Bytes> {
    let records = mixed_records(500, 8192, seed);
    let len = framed(&records, Framing::Lf).len();
    assert!(len > 200_000 && len < 800_000, "{len}");
    records
}

/// Waits for the sink's next connection, flushes and shuts the sink down, and returns the
/// counters after the flush and what that connection got.
async fn next_connection_gets(listener: &TcpListener, sink: Sink) -> (Stats, Vec<u8>) {
    let (conn, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("the sink connects again")
        .unwrap();
    let reading = tokio::spawn(read_to_end(conn));
    sink.flush(WAIT).await.unwrap();
    let stats = sink.stats();
    sink.shutdown(WAIT).await.unwrap();
    (stats, reading.await.unwrap())
}

/// Written is not sent: a receiver whose socket buffer is full and that reads nothing leaves
/// most of the stream in the sink's own send queue. `flush` says it is not sent, the counters
/// agree, and when that receiver resets the connection the batches its TCP had not
/// acknowledged are written again on the next connection, starting at the first record not
/// counted as sent. (What the dead receiver had acknowledged but not read is what
/// `resend_on_reconnect`, off here, writes again: see the next test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_acknowledged_records_count_and_the_rest_is_written_again() {
    let listener = small_window_listener();
    let addr = listener.local_addr().unwrap();
    let records = fits_the_send_queue(81);
    let mut cfg = config(&format!("tcp://{addr}"));
    cfg.resend_on_reconnect = 0;
    let sink = cfg.build().unwrap();
    send_all(&sink, &records).await;
    let (stalled, _) = listener.accept().await.unwrap();

    let err = sink.flush(Duration::from_secs(1)).await.unwrap_err();
    assert!(
        matches!(err, Error::Unsent { unsent, .. } if unsent > 0),
        "{err}"
    );
    let sent = sink.stats().messages_sent as usize;
    assert!(sent < records.len(), "{:?}", sink.stats());
    assert_eq!(sink.stats().queued as usize, records.len() - sent);

    stalled.set_zero_linger().unwrap();
    drop(stalled); // RST
    let (stats, got) = next_connection_gets(&listener, sink).await;
    assert_eq!(stats.messages_sent as usize, records.len());
    assert_eq!(stats.reconnects, 1);
    assert!(
        got == framed(&records[sent..], Framing::Lf),
        "the second connection got {} bytes, want records {sent}.. ({} bytes)",
        got.len(),
        framed(&records[sent..], Framing::Lf).len()
    );
}

/// A receiver that takes a few KB and then reads nothing, while every write returned (the
/// rest sits in the sink's send queue): after the write timeout without an acknowledgement the
/// sink leaves that connection and writes what it had not acknowledged on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_data_that_does_not_drain_is_a_stalled_receiver() {
    let listener = small_window_listener();
    let addr = listener.local_addr().unwrap();
    let records = fits_the_send_queue(82);
    let mut cfg = config(&format!("tcp://{addr}"));
    cfg.write_timeout = Duration::from_millis(500);
    let sink = cfg.build().unwrap();
    send_all(&sink, &records).await;
    let (stalled, _) = listener.accept().await.unwrap(); // held open, never read
    let (stats, got) = next_connection_gets(&listener, sink).await;
    assert_eq!(stats.reconnects, 1);
    // We left that receiver, it did not break the connection: what it acknowledged is its.
    assert_eq!(stats.resent, 0);
    drop(stalled);

    // The new connection got everything from the first batch not acknowledged (the stalled
    // receiver's TCP may have taken less than one batch).
    let all = framed(&records, Framing::Lf);
    assert!(
        !got.is_empty() && all.ends_with(&got),
        "a suffix of the stream"
    );
    let skipped = all.len() - got.len();
    assert!(
        skipped == 0 || all[skipped - 1] == b'\n',
        "starts at a record"
    );
}
