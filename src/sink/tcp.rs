//! The TCP and TLS writer: one task per destination.
//!
//! The pattern is Vector's `src/sinks/util/tcp.rs` (rust-stack.md §4.1): connect only when a
//! message waits, and before every write check, with a no-op waker, whether the peer has
//! closed or reset the connection, so that a batch is not written into a dead socket. While
//! idle the writer also waits on the read side, so a receiver that goes away is reported down
//! at once rather than at the next message (syslog receivers never send data).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::tls::TlsClient;
use super::{Backoff, Destination, Error, Framing, Shared};

/// A plain or TLS connection.
pub(crate) type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// A batch is written once it holds this many bytes or the queue is empty. Large enough to
/// amortise syscalls (and TLS records of 16 KiB), small enough to bound what a broken
/// connection makes us send twice.
const BATCH_BYTES: usize = 128 * 1024;

pub(crate) struct Connector {
    pub destination: Destination,
    pub tls: Option<TlsClient>,
    pub timeout: Duration,
    pub write_timeout: Duration,
}

impl Connector {
    /// Resolves the host again (it may have moved), then tries each address in turn.
    pub async fn connect(&self) -> Result<(Stream, SocketAddr), Error> {
        let addrs = tokio::time::timeout(self.timeout, self.destination.resolve())
            .await
            .map_err(|_| Error::Resolve {
                host: self.destination.host.to_string(),
                source: std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"),
            })??;
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(self.timeout, self.connect_to(addr)).await {
                Ok(Ok(stream)) => return Ok((stream, addr)),
                Ok(Err(e)) => last = Some(e),
                Err(_) => {
                    last = Some(Error::ConnectTimeout {
                        addr,
                        timeout: self.timeout,
                    })
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Resolve {
            host: self.destination.host.to_string(),
            source: std::io::Error::other("no addresses"),
        }))
    }

    async fn connect_to(&self, addr: SocketAddr) -> Result<Stream, Error> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Connect { addr, source })?;
        // We batch ourselves; Nagle would only delay the last partial segment of a batch.
        tcp.set_nodelay(true)
            .map_err(|source| Error::Connect { addr, source })?;
        match &self.tls {
            None => Ok(Either::Left(tcp)),
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|source| Error::Handshake { addr, source })?;
                Ok(Either::Right(stream))
            }
        }
    }
}

/// Closes cleanly: for TLS this sends `close_notify` before the TCP FIN (RFC 5425 §4.4).
pub(crate) async fn close(stream: &mut Stream) {
    if let Err(e) = stream.shutdown().await {
        tracing::debug!("closing the connection: {e}");
    }
}

/// Vector's `shutdown_check`: polls the read side once without waiting. `Some(reason)` if
/// the peer has closed or reset the connection.
fn peer_gone(stream: &mut Stream) -> Option<String> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = [0u8; 512];
    // Bounded: a peer that keeps sending must not keep us here.
    for _ in 0..16 {
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut *stream).poll_read(&mut cx, &mut rb) {
            Poll::Pending => return None,
            Poll::Ready(result) => {
                if let Some(reason) = read_outcome(result.map(|()| rb.filled().len())) {
                    return Some(reason);
                }
            }
        }
    }
    None
}

/// Interprets a read on a connection we only write to.
fn read_outcome(result: std::io::Result<usize>) -> Option<String> {
    match result {
        Ok(0) => Some("the receiver closed the connection".into()),
        Ok(n) => {
            tracing::debug!("ignoring {n} unexpected bytes from the receiver");
            None
        }
        Err(e) => Some(format!("connection lost: {e}")),
    }
}

enum Idle {
    Message(Option<Bytes>),
    Read(std::io::Result<usize>),
}

/// The writer task. Ends when the handle is gone and everything queued has been written.
pub(crate) async fn run(
    connector: Connector,
    framing: Framing,
    backoff: Backoff,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut conn: Option<Stream> = None;
    let mut ever_connected = false;
    // Consecutive failures (connect or write) since the last successful write.
    let mut failures = 0u32;
    // Framed messages not yet known to be written; on a failure they are written again whole.
    let mut batch = BytesMut::with_capacity(BATCH_BYTES + 16 * 1024);
    let mut batch_messages = 0usize;
    let mut scratch = [0u8; 512];

    loop {
        if batch_messages == 0 {
            let idle = match conn.as_mut() {
                None => Idle::Message(rx.recv().await),
                Some(stream) => tokio::select! {
                    biased;
                    msg = rx.recv() => Idle::Message(msg),
                    read = stream.read(&mut scratch) => Idle::Read(read),
                },
            };
            match idle {
                Idle::Message(None) => break,
                Idle::Message(Some(msg)) => {
                    framing.encode(&msg, &mut batch);
                    batch_messages = 1;
                }
                Idle::Read(read) => {
                    if let Some(reason) = read_outcome(read) {
                        conn = None;
                        shared.down(reason);
                    }
                    continue;
                }
            }
        }
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(msg) => {
                    framing.encode(&msg, &mut batch);
                    batch_messages += 1;
                }
                Err(_) => break,
            }
        }

        if let Some(reason) = conn.as_mut().and_then(peer_gone) {
            conn = None;
            shared.down(reason);
        }
        let stream = match conn.as_mut() {
            Some(stream) => stream,
            None => {
                // The first attempt after a break is immediate; then back off.
                if failures > 1 {
                    tokio::time::sleep(backoff.delay(failures - 1)).await;
                }
                match connector.connect().await {
                    Ok((stream, peer)) => {
                        if ever_connected {
                            shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever_connected = true;
                        shared.up(peer);
                        conn.insert(stream)
                    }
                    Err(e) => {
                        failures += 1;
                        shared.down(e.to_string());
                        continue;
                    }
                }
            }
        };

        let written = tokio::time::timeout(connector.write_timeout, async {
            stream.write_all(&batch).await?;
            stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {
                shared.sent(batch_messages, batch.len());
                batch.clear();
                batch_messages = 0;
                failures = 0;
            }
            Ok(Err(e)) => {
                // Keep the batch: it goes out again, whole, on the next connection.
                conn = None;
                failures += 1;
                shared.down(format!("writing failed: {e}"));
            }
            Err(_) => {
                // The receiver accepted the connection but reads nothing: without this, the
                // destination would look up while nothing moves. Same as a failed write.
                conn = None;
                failures += 1;
                shared.down(format!(
                    "writing stalled for {:?}: the receiver is not reading",
                    connector.write_timeout
                ));
            }
        }
    }

    if let Some(mut stream) = conn {
        close(&mut stream).await;
    }
}
