//! The UDP writer: one message per datagram, nothing else in it (RFC 5426 §3.1).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{Backoff, Destination, Error, Shared};

/// Resolves the destination and returns a socket connected to its first address, so that
/// ICMP errors (port unreachable) come back to us as `ECONNREFUSED` on a later send.
pub(crate) async fn bind(destination: &Destination) -> Result<(UdpSocket, SocketAddr), Error> {
    let peer = destination.resolve().await?[0];
    let local: SocketAddr = if peer.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let connect_err = |source| Error::Connect { addr: peer, source };
    let socket = UdpSocket::bind(local).await.map_err(connect_err)?;
    socket.connect(peer).await.map_err(connect_err)?;
    Ok((socket, peer))
}

/// What became of one datagram.
enum Sent {
    /// Sent, and no earlier datagram was reported refused.
    Clean(usize),
    /// Sent, but the send first reported that an earlier datagram was refused.
    AfterRefusal(usize),
    Failed(std::io::Error),
}

/// Sends one datagram. A pending ICMP port-unreachable belongs to an earlier datagram and is
/// reported (as `ECONNREFUSED`) instead of sending this one (Linux), so the send is then tried
/// once more.
async fn send(socket: &UdpSocket, msg: &[u8]) -> Sent {
    match socket.send(msg).await {
        Ok(n) => Sent::Clean(n),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => match socket.send(msg).await {
            Ok(n) => Sent::AfterRefusal(n),
            Err(e) => Sent::Failed(e),
        },
        Err(e) => Sent::Failed(e),
    }
}

/// The writer task. Send errors are counted and logged, never fatal: the datagram is dropped
/// (UDP has no retransmission; RFC 5426 §3.1). `send_errors` counts datagrams known lost:
/// refused ones and ones that could not be sent. Resolution or bind errors keep the message and
/// retry with backoff, like a TCP destination that is down.
pub(crate) async fn run(
    destination: Destination,
    backoff: Backoff,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut socket: Option<(UdpSocket, SocketAddr)> = None;
    let mut waiting: Option<Bytes> = None;
    let mut failures = 0u32;
    loop {
        let msg = match waiting.take() {
            Some(msg) => msg,
            None => match rx.recv().await {
                Some(msg) => msg,
                None => break,
            },
        };
        let (sock, peer) = match &socket {
            Some(s) => s,
            None => {
                if failures > 0 {
                    tokio::time::sleep(backoff.delay(failures)).await;
                }
                match bind(&destination).await {
                    Ok(s) => socket.insert(s),
                    Err(e) => {
                        failures += 1;
                        shared.down(e.to_string());
                        waiting = Some(msg);
                        continue;
                    }
                }
            }
        };
        match send(sock, &msg).await {
            Sent::Clean(n) => {
                failures = 0;
                shared.up(*peer);
                shared.sent(1, n);
            }
            Sent::AfterRefusal(n) => {
                // An earlier datagram was lost; this one went out.
                shared.send_errors.fetch_add(1, Ordering::Relaxed);
                shared.down(format!("{peer} refused a datagram (ICMP port unreachable)"));
                shared.sent(1, n);
            }
            Sent::Failed(e) => {
                shared.dropped();
                shared.down(format!("sending a datagram to {peer} failed: {e}"));
                // Refused means the port is closed now; anything else may be a stale route
                // or address, so resolve and bind again.
                if e.kind() != ErrorKind::ConnectionRefused {
                    socket = None;
                }
            }
        }
    }
}
