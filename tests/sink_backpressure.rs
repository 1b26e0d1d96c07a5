//! A TCP destination that is down keeps its messages in its bounded queue: `Sink::send` waits
//! once the queue is full instead of the writer drawing the backlog into memory, and everything
//! arrives, in order, once the receiver is up; `Sink::send_many` keeps the order and its
//! refusals. Loopback only.

mod support;

use std::time::Duration;

use bytes::Bytes;
use defender_bridge::sink::{Backoff, Sink, SinkConfig};
use support::{free_port, Proto};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the first connection to `listener` sends, until it closes.
fn read_all(listener: TcpListener) -> JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.expect("accept");
        let mut out = Vec::new();
        let _ = conn.read_to_end(&mut out).await;
        out
    })
}

/// Shuts `sink` down and returns what `reader` read.
async fn close(sink: Sink, reader: JoinHandle<Vec<u8>>) -> Vec<u8> {
    sink.shutdown(Duration::from_secs(20))
        .await
        .expect("shutdown");
    tokio::time::timeout(Duration::from_secs(20), reader)
        .await
        .expect("reader ends")
        .expect("reader")
}

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
    let reader = read_all(listener);
    for i in taken..taken + 10 {
        sink.send(msg(i)).await.expect("send");
    }
    let out = close(sink, reader).await;
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

/// `Sink::send_many` (a chunk's messages at once): more messages than the queue holds all
/// arrive, in order, and a refused one stops the group there, the ones before it queued.
#[tokio::test]
async fn send_many_queues_in_order_and_stops_at_a_refused_message() {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let reader = read_all(listener);
    let mut cfg = SinkConfig::new(format!("tcp://127.0.0.1:{port}").parse().expect("url"));
    cfg.queue_capacity = 5;
    cfg.max_message_size = Some(100);
    let sink = cfg.build().expect("sink");
    let msg = |i: usize| Bytes::from(format!("<14>1 - h app - - - record {i:04}"));

    // 600 messages through a queue of 5: groups of at most the queue's size.
    sink.send_many((0..600).map(msg)).await.expect("send_many");
    // Then 3 good ones, one too large, and 2 more that must not be queued.
    let mut group: Vec<Bytes> = (600..603).map(msg).collect();
    group.push(Bytes::from(vec![b'x'; 101]));
    group.extend((603..605).map(msg));
    let refused = sink.send_many(group).await;
    assert!(
        matches!(
            refused,
            Err(defender_bridge::sink::Error::TooLarge {
                size: 101,
                max: 100,
                ..
            })
        ),
        "{refused:?}"
    );
    let stats = sink.stats();
    assert_eq!((stats.accepted, stats.rejected), (603, 1));

    let out = close(sink, reader).await;
    let want: String = (0..603)
        .map(|i| format!("<14>1 - h app - - - record {i:04}\n"))
        .collect();
    assert_eq!(String::from_utf8_lossy(&out), want);
}
