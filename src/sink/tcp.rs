//! The TCP and TLS writer: one task per destination.
//!
//! The pattern is Vector's `src/sinks/util/tcp.rs` (rust-stack.md §4.1): connect only when a
//! message waits, and before every write check, with a no-op waker, whether the peer has
//! closed or reset the connection, so that a batch is not written into a dead socket. While
//! idle the writer also waits on the read side, so a receiver that goes away is reported down
//! at once rather than at the next message (syslog receivers never send data).
//!
//! A batch is sent once the receiver's TCP has acknowledged its last byte ([`Socket::acked`],
//! one `ioctl` per batch, and on a short timer while idle), not when the write returned: until
//! then it is kept, and if the connection breaks it is written again, whole, on the next one.
//! Data that stays unacknowledged for the write timeout means a receiver that stopped reading.
//!
//! What the receiver's TCP acknowledged, its program may still have lost: it read the data and
//! then closed or reset the connection (a crash, a restart that drops its input buffers). So the
//! records of the last `resend_on_reconnect` bytes that were acknowledged are kept, and after a
//! break that the *receiver* began (EOF, reset, broken pipe) they are written again first on the
//! next connection: duplicates rather than loss. Not after a break we began (a receiver that
//! stopped reading keeps what it acknowledged, we only leave it), nor after keepalive or the
//! user timeout gave up on a silent connection (a receiver behind a partition still has it all),
//! nor at our own clean close.
//!
//! Closing never leaves unread bytes in the receive queue: Linux answers a `close()` with
//! unread data by RST instead of FIN, purges what our send queue still held, and the receiver
//! may lose what it had not read yet. A TLS 1.3 server always sends something after the
//! handshake (its session tickets), so this is the normal case for TLS unless we read.

use std::collections::VecDeque;
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
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_util::either::Either;

use super::socket::{Liveness, Socket};
use super::tls::TlsClient;
use super::{Backoff, Destination, Error, Framing, Shared};

/// A plain or TLS connection, both over a [`Socket`] that counts the bytes written to it.
pub(crate) type Stream = Either<Socket, TlsStream<Socket>>;

/// A batch is written once it holds this many bytes or the queue is empty. Large enough to
/// amortise syscalls (and TLS records of 16 KiB), small enough to bound what a broken
/// connection makes us send twice.
const BATCH_BYTES: usize = 128 * 1024;
/// Room for the message that takes a batch past [`BATCH_BYTES`].
const BATCH_CAPACITY: usize = BATCH_BYTES + 16 * 1024;
/// Messages the writer takes from its queue at once.
const TAKE_MANY: usize = 64;
/// Buffers of written batches kept for the next ones: one being filled while one is written.
const SPARE_BATCHES: usize = 2;

/// An idle writer with unacknowledged data asks the kernel again after this, doubling up to
/// [`ACK_POLL_MAX`]: on loopback the acknowledgement is there at once, across a WAN it takes a
/// round trip, and a flush should not wait much longer than that.
const ACK_POLL_MIN: Duration = Duration::from_millis(1);
const ACK_POLL_MAX: Duration = Duration::from_millis(50);

pub(crate) struct Connector {
    pub destination: Destination,
    pub tls: Option<TlsClient>,
    pub timeout: Duration,
    pub write_timeout: Duration,
    pub close_timeout: Duration,
    pub liveness: Liveness,
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
        let socket =
            Socket::new(tcp, &self.liveness).map_err(|source| Error::Connect { addr, source })?;
        match &self.tls {
            None => Ok(Either::Left(socket)),
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), socket)
                    .await
                    .map_err(|source| Error::Handshake { addr, source })?;
                Ok(Either::Right(stream))
            }
        }
    }
}

fn socket(stream: &Stream) -> &Socket {
    match stream {
        Either::Left(socket) => socket,
        Either::Right(tls) => tls.get_ref().0,
    }
}

/// Ends a connection whose receiver should get everything: `close_notify` for TLS (RFC 5425
/// §4.4) and FIN, then reads and discards until the receiver closes its side too, or until
/// `until`. Only then is the socket dropped, with nothing unread (see the module docs).
pub(crate) async fn close(stream: &mut Stream, until: Instant) {
    let ended = tokio::time::timeout_at(until, async {
        stream.shutdown().await?;
        let mut buf = [0u8; 4096];
        while stream.read(&mut buf).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
    match ended {
        Ok(Ok(())) => {}
        // rustls reports a receiver that closes without its own close_notify as UnexpectedEof;
        // either way nothing is left to read.
        Ok(Err(e)) => tracing::debug!("closing the connection: {e}"),
        Err(_) => {
            tracing::debug!("the receiver did not close its side in time");
            read_ready(stream);
        }
    }
}

/// Reads, without waiting, whatever the receiver has sent: syslog receivers send nothing, but
/// TLS has records of its own (session tickets, alerts). `Some` if the connection has ended
/// (see [`read_outcome`]). Vector's `shutdown_check`.
fn read_ready(stream: &mut Stream) -> Option<Ended> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = [0u8; 4096];
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

/// Why a connection ended, and whether the receiver ended it.
struct Ended {
    reason: String,
    by_peer: bool,
}

/// Whether an error means the receiver closed or reset the connection (rather than, say, our
/// keepalive or user timeout giving up on a silent one). rustls reports a TCP close without
/// `close_notify` as `UnexpectedEof`.
fn by_peer(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof
    )
}

/// Interprets a read on a connection we only write to.
fn read_outcome(result: std::io::Result<usize>) -> Option<Ended> {
    match result {
        Ok(0) => Some(Ended {
            reason: "the receiver closed the connection".into(),
            by_peer: true,
        }),
        Ok(n) => {
            tracing::debug!("ignoring {n} unexpected bytes from the receiver");
            None
        }
        Err(e) => Some(Ended {
            by_peer: by_peer(&e),
            reason: format!("connection lost: {e}"),
        }),
    }
}

/// Framed messages written or to be written together.
struct Batch {
    data: Bytes,
    messages: usize,
    /// Where each message ends in `data`, so that a resend can start at a message.
    ends: Vec<usize>,
    /// Messages already counted as sent: a resend after a drop, not counted again.
    counted: bool,
    /// Once written: the connection's byte count after its last byte.
    end: u64,
}

impl Batch {
    /// The messages of `batches` that have a byte among their last `bytes` bytes, as one batch.
    fn tail(batches: &VecDeque<Batch>, bytes: usize) -> Option<Batch> {
        let total: usize = batches.iter().map(|b| b.data.len()).sum();
        let from = total.saturating_sub(bytes);
        let mut data = BytesMut::new();
        let mut ends = Vec::new();
        let mut offset = 0;
        for b in batches {
            let mut start = 0;
            for &end in &b.ends {
                if offset + end > from {
                    data.extend_from_slice(&b.data[start..end]);
                    ends.push(data.len());
                }
                start = end;
            }
            offset += b.data.len();
        }
        (!ends.is_empty()).then(|| Batch {
            data: data.freeze(),
            messages: ends.len(),
            ends,
            counted: true,
            end: 0,
        })
    }
}

enum Idle {
    Message(Option<Bytes>),
    Read(std::io::Result<usize>),
    AckPoll,
}

/// The writer's state between messages.
struct Writer {
    connector: Connector,
    backoff: Backoff,
    shared: Arc<Shared>,
    /// Acknowledged bytes to write again after a break the receiver began.
    resend: usize,
    /// Acknowledged batches, oldest first, covering at least the last `resend` bytes.
    history: VecDeque<Batch>,
    history_bytes: usize,
    /// Buffers of batches done with, for the next ones (see [`Writer::recycle`]).
    spares: Vec<BytesMut>,
    conn: Option<Stream>,
    ever_connected: bool,
    /// Consecutive failures (connect or write) since the last successful write.
    failures: u32,
    /// Batches to write, oldest first; after a break, everything not acknowledged.
    unwritten: VecDeque<Batch>,
    /// Written on the current connection, not yet acknowledged, oldest first.
    in_flight: VecDeque<Batch>,
    /// Bytes of the current connection acknowledged so far, and when that last grew.
    acked: u64,
    progress_at: Instant,
    /// The next wait before asking the kernel again while idle.
    ack_poll: Duration,
}

/// The writer task. Ends when the handle is gone and everything queued has been written.
pub(crate) async fn run(
    connector: Connector,
    framing: Framing,
    backoff: Backoff,
    resend: usize,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut w = Writer {
        connector,
        backoff,
        shared,
        resend,
        history: VecDeque::new(),
        history_bytes: 0,
        spares: Vec::new(),
        conn: None,
        ever_connected: false,
        failures: 0,
        unwritten: VecDeque::new(),
        in_flight: VecDeque::new(),
        acked: 0,
        progress_at: Instant::now(),
        ack_poll: ACK_POLL_MIN,
    };
    let mut batch = BytesMut::with_capacity(BATCH_CAPACITY);
    let mut batch_messages = 0usize;
    let mut ends = Vec::new();
    let mut scratch = [0u8; 512];
    // Messages taken from the queue and not yet in a batch, oldest first: at most TAKE_MANY.
    let mut taken: VecDeque<Bytes> = VecDeque::with_capacity(TAKE_MANY);
    let mut received = Vec::with_capacity(TAKE_MANY);

    loop {
        if batch_messages == 0 && w.unwritten.is_empty() && taken.is_empty() {
            let idle = match w.conn.as_mut() {
                None => Idle::Message(rx.recv().await),
                Some(stream) => tokio::select! {
                    biased;
                    msg = rx.recv() => Idle::Message(msg),
                    read = stream.read(&mut scratch) => Idle::Read(read),
                    () = tokio::time::sleep(w.ack_poll), if !w.in_flight.is_empty() => Idle::AckPoll,
                },
            };
            match idle {
                Idle::Message(None) => break,
                Idle::Message(Some(msg)) => taken.push_back(msg),
                Idle::Read(read) => {
                    if let Some(ended) = read_outcome(read) {
                        w.lost(ended.reason, ended.by_peer);
                    }
                    continue;
                }
                Idle::AckPoll => {
                    w.ack_poll = (w.ack_poll * 2).min(ACK_POLL_MAX);
                    w.check_acks();
                    continue;
                }
            }
        }
        // Take more only while nothing waits to be written: a destination that is down must
        // leave its messages in the bounded queue, so that `Sink::send` waits, instead of
        // drawing them into memory batch by batch.
        while w.unwritten.is_empty() && batch.len() < BATCH_BYTES {
            if taken.is_empty() {
                // Many at once: the queue's room is given back once per take, not per message.
                // `recv_many` does not wait here: the queue is not empty and this is its only
                // reader.
                if rx.is_empty() || rx.recv_many(&mut received, TAKE_MANY).await == 0 {
                    break;
                }
                taken.extend(received.drain(..));
            }
            let Some(msg) = taken.pop_front() else { break };
            framing.encode(&msg, &mut batch);
            ends.push(batch.len());
            batch_messages += 1;
        }
        if batch_messages > 0 {
            w.unwritten.push_back(Batch {
                data: batch.split().freeze(),
                messages: batch_messages,
                ends: std::mem::take(&mut ends),
                counted: false,
                end: 0,
            });
            if batch.capacity() < BATCH_CAPACITY {
                if let Some(spare) = w.spares.pop() {
                    batch = spare;
                }
            }
            batch.reserve(BATCH_CAPACITY);
            batch_messages = 0;
        }
        w.write().await;
    }

    if let Some(mut stream) = w.conn.take() {
        let mut until = Instant::now() + w.connector.close_timeout;
        if let Some(&deadline) = w.shared.close_by.get() {
            until = until.min(deadline);
        }
        close(&mut stream, until).await;
    }
}

impl Writer {
    /// Connects if needed, then writes every unwritten batch in order.
    async fn write(&mut self) {
        if let Some(ended) = self.conn.as_mut().and_then(read_ready) {
            self.lost(ended.reason, ended.by_peer);
        }
        if self.conn.is_none() && !self.connect().await {
            return;
        }
        while let (Some(stream), Some(batch)) = (self.conn.as_mut(), self.unwritten.front()) {
            let written = tokio::time::timeout(self.connector.write_timeout, async {
                stream.write_all(&batch.data).await?;
                stream.flush().await
            })
            .await;
            match written {
                Ok(Ok(())) => {
                    let end = socket(stream).written();
                    if let Some(mut batch) = self.unwritten.pop_front() {
                        batch.end = end;
                        if self.in_flight.is_empty() {
                            self.progress_at = Instant::now();
                        }
                        self.in_flight.push_back(batch);
                    }
                    self.failures = 0;
                }
                Ok(Err(e)) => {
                    self.failures += 1;
                    self.lost(format!("writing failed: {e}"), by_peer(&e));
                    return;
                }
                // The receiver accepted the connection but reads nothing: without this, the
                // destination would look up while nothing moves.
                Err(_) => {
                    self.give_up();
                    return;
                }
            }
        }
        self.ack_poll = ACK_POLL_MIN;
        self.check_acks();
    }

    /// One connection attempt, after the backoff delay if the last ones failed.
    async fn connect(&mut self) -> bool {
        // The first attempt after a break is immediate; then back off.
        if self.failures > 1 {
            tokio::time::sleep(self.backoff.delay(self.failures - 1)).await;
        }
        match self.connector.connect().await {
            Ok((stream, peer)) => {
                if self.ever_connected {
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                self.ever_connected = true;
                self.shared.up(peer);
                self.conn = Some(stream);
                self.acked = 0;
                true
            }
            Err(e) => {
                self.failures += 1;
                self.shared.down(e.to_string());
                false
            }
        }
    }

    /// Counts the batches the receiver's TCP has acknowledged as sent, and gives the
    /// connection up if nothing was acknowledged for the write timeout.
    fn check_acks(&mut self) {
        if let Err(e) = self.count_acked() {
            return self.lost(format!("connection lost: {e}"), false);
        }
        if !self.in_flight.is_empty() && self.progress_at.elapsed() >= self.connector.write_timeout
        {
            self.give_up();
        }
    }

    fn count_acked(&mut self) -> std::io::Result<()> {
        let Some(stream) = &self.conn else {
            return Ok(());
        };
        let acked = socket(stream).acked()?;
        if acked > self.acked {
            self.acked = acked;
            self.progress_at = Instant::now();
        }
        while self.in_flight.front().is_some_and(|b| b.end <= acked) {
            if let Some(b) = self.in_flight.pop_front() {
                if !b.counted {
                    self.shared.sent(b.messages, b.data.len());
                }
                self.remember(b);
            }
        }
        Ok(())
    }

    /// Leaves a connection whose receiver stopped reading. Whatever it sent is read first, so
    /// that dropping the socket sends FIN, not RST: what the receiver's TCP acknowledged stays
    /// with it.
    fn give_up(&mut self) {
        if let Some(stream) = self.conn.as_mut() {
            read_ready(stream);
        }
        self.failures += 1;
        self.lost(
            format!(
                "nothing acknowledged for {:?}: the receiver is not reading",
                self.connector.write_timeout
            ),
            false,
        );
    }

    /// Keeps an acknowledged batch for a resend, dropping the oldest ones no longer needed to
    /// cover the last `resend` bytes.
    fn remember(&mut self, batch: Batch) {
        if self.resend == 0 {
            return self.recycle(batch);
        }
        self.history_bytes += batch.data.len();
        self.history.push_back(batch);
        while let Some(front) = self.history.front() {
            if self.history_bytes - front.data.len() < self.resend {
                break;
            }
            self.history_bytes -= front.data.len();
            if let Some(old) = self.history.pop_front() {
                self.recycle(old);
            }
        }
    }

    /// Keeps the buffer of a batch that is done with for a next batch: a fresh one each time
    /// cost a page fault per 4 KiB written, as glibc gives buffers of this size back to the
    /// kernel when they are freed (see `crate::pool`).
    fn recycle(&mut self, batch: Batch) {
        if self.spares.len() >= SPARE_BATCHES {
            return;
        }
        // Unique once the writer holds no other slice of it; a resend's batch of a large
        // `resend_on_reconnect` is not kept.
        if let Ok(mut buf) = batch.data.try_into_mut() {
            if buf.capacity() <= 2 * BATCH_CAPACITY {
                buf.clear();
                self.spares.push(buf);
            }
        }
    }

    /// The connection is gone: what it had not acknowledged is written again on the next one,
    /// and if the receiver broke it (`by_peer`), first the records of the last `resend`
    /// acknowledged bytes.
    fn lost(&mut self, reason: String, by_peer: bool) {
        // The socket still knows what was acknowledged before the close or reset, which may be
        // more than we last asked.
        let _ = self.count_acked();
        self.conn = None;
        while let Some(batch) = self.in_flight.pop_back() {
            self.unwritten.push_front(batch);
        }
        if by_peer {
            if let Some(tail) = Batch::tail(&self.history, self.resend) {
                tracing::debug!(
                    destination = %self.shared.destination,
                    messages = tail.messages,
                    bytes = tail.data.len(),
                    "the receiver broke the connection: writing its last acknowledged records again"
                );
                self.shared
                    .resent
                    .fetch_add(tail.messages as u64, Ordering::Relaxed);
                self.unwritten.push_front(tail);
            }
        }
        // Written again or not, these are no longer the last bytes of a connection.
        while let Some(old) = self.history.pop_front() {
            self.recycle(old);
        }
        self.history_bytes = 0;
        self.shared.down(reason);
    }
}
