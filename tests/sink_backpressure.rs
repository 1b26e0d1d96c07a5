//! A TCP destination that is down keeps its messages in its bounded queue: `Sink::send` waits
//! once the queue is full instead of the writer drawing the backlog into memory, and everything
//! arrives, in order, once the receiver is up. Loopback only.

mod support;

use std::time::Duration;

use bytes::Bytes;
use defender_bridge::sink::{Backoff, SinkConfig};
use support::{free_port, Proto};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

#[tokio::test]
async fn a_down_destination_makes_send_wait_once_its_queue_is_full() {
    let port = free_port(Proto::Tcp);
    let mut cfg = SinkConfig::new(format!("tcp://127.0.0.1:{port}").parse().expect("url"));
    cfg.queue_capacity = 5;
    cfg.backoff = Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(100),
    };
    let sink = cfg.build().expect("sink");
    let msg = |i: usize| Bytes::from(format!("<14>1 - h app - - - record {i:04}"));
    // Nobody listens: the queue (5) and the writer's one batch take a few; then send waits.
    let mut taken = 0;
    for i in 0..200 {
        match tokio::time::timeout(Duration::from_millis(300), sink.send(msg(i))).await {
            Ok(sent) => {
                sent.expect("send");
                taken += 1;
            }
            Err(_) => break,
        }
    }
    assert!(
        taken < 50,
        "a down destination took {taken} messages into memory"
    );
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("listen");
    let reader = tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out).await;
        out
    });
    for i in taken..taken + 10 {
        sink.send(msg(i)).await.expect("send");
    }
    sink.shutdown(Duration::from_secs(20))
        .await
        .expect("shutdown");
    let out = tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("reader ends")
        .expect("reader");
    let want: Vec<u8> = (0..taken + 10)
        .flat_map(|i| {
            let mut m = msg(i).to_vec();
            m.push(b'\n');
            m
        })
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&want)
    );
}
