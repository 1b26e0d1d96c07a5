//! The UDP writer: one message per datagram, nothing else in it (RFC 5426 §3.1).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
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

/// Sends one datagram. A pending ICMP error belongs to an earlier datagram and is reported
/// instead of sending this one (Linux), so after `ECONNREFUSED` the send is tried once more.
async fn send(socket: &UdpSocket, msg: &[u8]) -> std::io::Result<usize> {
    match socket.send(msg).await {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => socket.send(msg).await,
        other => other,
    }
}

/// The writer task. Send errors are counted and logged, never fatal: the datagram is dropped
/// (UDP has no retransmission; RFC 5426 §3.1). Resolution or bind errors keep the message and
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
            Ok(n) => {
                failures = 0;
                shared.up(*peer);
                shared.sent(1, n);
            }
            Err(e) => {
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
