//! A receiver that the network drops silently (no FIN, no RST, nothing): keepalive notices it
//! on an idle connection and `TCP_USER_TIMEOUT` on one with data in flight, within seconds
//! rather than the ~15 minutes of TCP retransmission; then the records go to the receiver once
//! it is reachable again, on a new connection.
//!
//! The receiver and the sink each live in a network namespace the test makes, joined by a veth
//! pair with TEST-NET-1 addresses (RFC 5737), so nothing outside them is touched; "dropped" is
//! the receiver's end of the link going down. Needs root and iproute2 (`ip`), as CI has.

mod support;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use defender_bridge::sink::{Backoff, Framing, Liveness, Sink, SinkConfig, Status};
use support::{mixed_records, WAIT};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const SINK_ADDR: &str = "192.0.2.1";
const RECEIVER_ADDR: &str = "192.0.2.2";
/// Hang guard: the liveness settings below notice a dead peer in about 3 s; without them it
/// takes minutes (idle: never).
const NOTICE: Duration = Duration::from_secs(20);

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run `ip` (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair; deleted (with the pair) on drop.
struct Net {
    sink: String,
    receiver: String,
}

impl Net {
    fn new() -> Net {
        static N: AtomicUsize = AtomicUsize::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            sink: format!("dbsink-{id}"),
            receiver: format!("dbrecv-{id}"),
        };
        ip(&["netns", "add", &net.sink]);
        ip(&["netns", "add", &net.receiver]);
        ip(&[
            "-n",
            &net.sink,
            "link",
            "add",
            "veth-s",
            "type",
            "veth",
            "peer",
            "name",
            "veth-r",
            "netns",
            &net.receiver,
        ]);
        for (ns, dev, addr) in [
            (&net.sink, "veth-s", SINK_ADDR),
            (&net.receiver, "veth-r", RECEIVER_ADDR),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        net
    }

    /// The receiver's end of the link down (`false`) or up again.
    fn receiver_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.receiver, "link", "set", "veth-r", state]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.sink, &self.receiver] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `f` on a thread that has entered namespace `ns`: sockets it creates live there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        let thread = s.spawn(|| {
            let file = File::open(format!("/run/netns/{ns}")).expect("open the namespace");
            // SAFETY: setns(2) on an open namespace descriptor; it changes only this thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        });
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn framed(records: &[Bytes]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for r in records {
        Framing::Lf.encode(r, &mut out);
    }
    out.to_vec()
}

async fn send_all(sink: &Sink, records: &[Bytes]) {
    for r in records {
        sink.send(r.clone()).await.expect("send");
    }
}

/// `busy`: the link goes down with records in flight (only `TCP_USER_TIMEOUT` notices);
/// otherwise while the connection is idle (only keepalive notices).
fn dropped_receiver(busy: bool) {
    let net = Net::new();
    let listener = in_netns(&net.receiver, || {
        std::net::TcpListener::bind((RECEIVER_ADDR, 0)).expect("bind in the receiver namespace")
    });
    let addr = listener.local_addr().unwrap();
    in_netns(&net.sink, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            listener.set_nonblocking(true).unwrap();
            let listener = TcpListener::from_std(listener).unwrap();
            let mut cfg = SinkConfig::new(format!("tcp://{addr}").parse().unwrap());
            cfg.liveness = Liveness {
                keepalive_time: Duration::from_secs(1),
                keepalive_interval: Duration::from_secs(1),
                keepalive_retries: 2,
                user_timeout: Duration::from_secs(3),
            };
            cfg.connect_timeout = Duration::from_secs(2);
            cfg.backoff = Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(500),
            };
            let sink = cfg.build().unwrap();
            let mut status = sink.status();

            let first = mixed_records(100, 8192, 91);
            send_all(&sink, &first).await;
            let (mut conn, _) = tokio::time::timeout(WAIT, listener.accept())
                .await
                .expect("the sink connects")
                .unwrap();
            let mut got = vec![0; framed(&first).len()];
            conn.read_exact(&mut got).await.unwrap();
            assert!(got == framed(&first));
            sink.flush(WAIT).await.unwrap();

            net.receiver_link(false);
            let second = mixed_records(200, 8192, 92);
            if busy {
                send_all(&sink, &second).await;
            }
            let reason = tokio::time::timeout(
                NOTICE,
                status.wait_for(|s| matches!(s, Status::Down { .. })),
            )
            .await
            .unwrap_or_else(|_| panic!("the dead receiver is not noticed (busy: {busy})"))
            .unwrap()
            .clone();
            if !busy {
                send_all(&sink, &second).await;
            }
            assert_eq!(sink.stats().messages_sent, 100, "{reason:?}");

            net.receiver_link(true);
            let (fresh, _) = tokio::time::timeout(WAIT, listener.accept())
                .await
                .expect("the sink connects again once the receiver is reachable")
                .unwrap();
            let reading = tokio::spawn(async move {
                let mut fresh = fresh;
                let mut buf = Vec::new();
                fresh.read_to_end(&mut buf).await.map(|_| buf)
            });
            sink.shutdown(WAIT).await.unwrap();
            let got = tokio::time::timeout(WAIT, reading)
                .await
                .expect("the sink closes")
                .unwrap()
                .unwrap();
            assert!(
                got == framed(&second),
                "the new connection got {} bytes, want {} (busy: {busy}, {reason:?})",
                got.len(),
                framed(&second).len()
            );
            drop(conn);
        });
    });
}

#[test]
fn keepalive_notices_a_receiver_dropped_while_idle() {
    dropped_receiver(false);
}

#[test]
fn user_timeout_notices_a_receiver_dropped_with_records_in_flight() {
    dropped_receiver(true);
}
