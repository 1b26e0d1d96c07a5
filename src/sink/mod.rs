//! Destinations: syslog over UDP (RFC 5426), TCP (RFC 6587), TLS (RFC 5425) and RELP (librelp
//! `doc/relp.md`), plain or over TLS; Splunk HEC; Kafka.
//!
//! A [`SinkConfig`] is validated and turned by [`SinkConfig::build`] into a running [`Sink`]: a
//! handle plus one tokio writer task per destination, so a slow or dead destination never
//! holds up another (they share nothing on the hot path). The handle takes complete syslog
//! messages (header included, no framing) in order; the writer frames them, batches them
//! into few syscalls, connects lazily, reconnects with capped exponential backoff and jitter,
//! and reports [`Status`] changes.
//!
//! Over TCP and TLS a message counts as **sent** once the receiver's TCP has acknowledged every
//! byte of its batch (the kernel's send queue has drained past it, `SIOCOUTQ`), not when it was
//! copied into that queue; [`Sink::flush`], [`Stats::messages_sent`] and `send`'s report follow
//! this. Delivery is **at least once** from the writer's point of view: messages wait in a
//! bounded in-memory queue while the destination is down (a full queue makes [`Sink::send`]
//! wait), and batches not yet acknowledged when a connection breaks are written again, whole,
//! on the next one, so the receiver may see some of them twice. Connections are closed
//! without RST (see `tcp.rs`), and keepalive with `TCP_USER_TIMEOUT` ends a silently dropped
//! one within about 30 s ([`Liveness`]). Plain syslog over TCP has no application-level
//! acknowledgement (RFC 6587 §4 / RFC 5425 §4.3): what a receiver had acknowledged but not yet
//! processed when it died is lost to any sender, unless it is written again: after a break the
//! receiver began, the records of the last [`SinkConfig::resend_on_reconnect`] acknowledged
//! bytes are written again first (duplicates rather than loss). UDP is best effort: a datagram the network
//! refuses is counted and dropped, never retried.
//!
//! RELP (`relp.rs`) acknowledges every message: one counts as sent once the receiver's `rsp 200`
//! for it has arrived, and after a break everything unanswered goes again. Splunk HEC (`hec.rs`)
//! and Kafka (`kafka.rs`) count a message once the collector's ack or the broker's `acks=all`
//! answer says so; their messages are the output's event objects and packed Kafka messages.

mod destination;
mod framing;
mod hec;
mod kafka;
mod relp;
mod socket;
mod tcp;
mod tls;
mod udp;

pub use destination::{Destination, Host, KafkaTarget, Transport};
pub use framing::Framing;
pub use hec::{HecOptions, DEFAULT_ACK_TIMEOUT};
pub use kafka::{partition_for_key, KafkaOptions, Sasl, SaslMechanism};
pub use relp::{DEFAULT_WINDOW, MAX_WINDOW};
pub use socket::Liveness;
pub use tls::TlsOptions;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Errors of configuration, of sending and of connecting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid destination {url:?}: {reason}")]
    Destination { url: String, reason: String },
    #[error("{0}")]
    Config(String),
    #[error("{}: {reason}", path.display())]
    TlsFile { path: PathBuf, reason: String },
    #[error("message of {size} bytes is larger than the maximum of {max} bytes for {destination}")]
    TooLarge {
        destination: String,
        size: usize,
        max: usize,
    },
    #[error("message contains a line feed, which LF framing would split in two; use octet-counting framing")]
    ContainsLf,
    #[error("empty message")]
    Empty,
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("HEC {destination}: {reason}")]
    Hec { destination: String, reason: String },
    #[error("Kafka {destination}: {reason}")]
    Kafka { destination: String, reason: String },
    #[error("RELP session with {addr}: {reason}")]
    Relp { addr: SocketAddr, reason: String },
    #[error("TLS handshake with {addr} failed: {source}")]
    Handshake {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{destination}: {unsent} message(s) not written within {timeout:?}")]
    Unsent {
        destination: String,
        unsent: u64,
        timeout: Duration,
    },
    #[error("{destination}: everything was written, but closing the connection took longer than {timeout:?}")]
    CloseTimeout {
        destination: String,
        timeout: Duration,
    },
    #[error("{destination}: the writer has stopped")]
    Closed { destination: String },
}

/// Connection state of a destination, as reported by [`Sink::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not connected yet: connections are made when the first message waits.
    Idle,
    /// Connected (TCP/TLS) or sending without errors (UDP) to this address.
    Up { peer: SocketAddr },
    /// Not connected, or the last datagram failed; messages wait (TCP/TLS).
    Down { reason: String },
}

/// A message the receiver refused (RELP `rsp 500`): done, never delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Its place in queue order: the n-th message taken by [`Sink::send`].
    pub number: u64,
    /// The receiver's answer.
    pub reason: String,
}

/// Counters of one sink. `messages_sent` counts each message once, even when a broken
/// batch was written again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages taken by [`Sink::send`].
    pub accepted: u64,
    /// Messages sent: TCP/TLS, acknowledged by the receiver's TCP; RELP, answered `rsp 200` by
    /// the receiver; UDP, handed to the kernel.
    pub messages_sent: u64,
    /// Bytes of the messages in `messages_sent`, framing included (not TLS overhead).
    pub bytes_sent: u64,
    /// Connections made after the first one.
    pub reconnects: u64,
    /// Messages refused by [`Sink::send`]: too large, empty, or with an LF under LF framing.
    pub rejected: u64,
    /// Datagrams known to be lost (UDP only): refused by the receiver (ICMP port unreachable,
    /// reported on a later send) or not sent at all. They are not retried.
    pub send_errors: u64,
    /// Messages the receiver answered with an error (RELP `rsp 500`, say): done, not sent again.
    pub refused: u64,
    /// TCP/TLS: messages already acknowledged that were written again after the receiver closed
    /// or reset the connection ([`SinkConfig::resend_on_reconnect`]); counted once each time.
    pub resent: u64,
    /// Accepted messages not yet sent or dropped (TCP/TLS: including those written and not yet
    /// acknowledged).
    pub queued: u64,
}

/// Reconnect delays: `initial * 2^(n-1)` capped at `max` for the n-th consecutive failure,
/// each picked at random in its upper half (jitter, so many bridges do not reconnect in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    fn delay(&self, failures: u32) -> Duration {
        crate::backoff::backoff(self.initial, self.max, failures)
    }
}

/// Settings of one destination. [`SinkConfig::new`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    pub destination: Destination,
    /// Stream framing; `None` means octet counting for TLS and LF for TCP. Must be `None` for
    /// UDP.
    pub framing: Option<Framing>,
    /// Largest syslog message (header included, framing excluded) that may be sent; `None`
    /// means 8192 for TCP and TLS (formats.md §0 rule 14) and 2048 for UDP (RFC 5426 §3.2).
    pub max_message_size: Option<usize>,
    /// Used by `tls://` and `relp+tls://` only.
    pub tls: TlsOptions,
    /// RELP: messages that may wait for their answer at once.
    pub window: usize,
    /// TCP and TLS: after a connection the receiver closed or reset, the records of the last
    /// this-many acknowledged bytes are written again first on the next one; 0 turns it off.
    pub resend_on_reconnect: usize,
    /// Messages held in memory while the destination is slow or down; when full,
    /// [`Sink::send`] waits.
    pub queue_capacity: usize,
    /// Limit for resolving, connecting and the TLS handshake together.
    pub connect_timeout: Duration,
    /// TCP and TLS: nothing acknowledged for this long while data waits (a write that cannot
    /// finish, or a send queue that does not drain) means a receiver that accepted the
    /// connection but stopped reading; the connection is dropped and what it had not
    /// acknowledged is written again on a new one.
    pub write_timeout: Duration,
    /// TCP and TLS: after our `close_notify` and FIN, how long to read on while waiting for the
    /// receiver to close its side, so that the socket is never dropped with unread data (which
    /// makes Linux send RST and discard what was still queued).
    pub close_timeout: Duration,
    /// TCP and TLS: keepalive and `TCP_USER_TIMEOUT`.
    pub liveness: Liveness,
    pub backoff: Backoff,
    /// Splunk HEC: token, indexer acknowledgement, channel (hec+https:// and hec+http://).
    pub hec: HecOptions,
    /// Kafka: SASL (kafka:// and kafka+tls://).
    pub kafka: KafkaOptions,
}

/// `resend_on_reconnect` default, 1 MiB. What a receiver's TCP acknowledged but its program had
/// not processed when it closed or died sits in its socket receive buffer (Linux starts one at
/// 128 KiB, `tcp_rmem`, and grows it only while the program keeps up) and in the program's own
/// input buffers; 1 MiB covers both for a receiver that was keeping up, and costs at most
/// 1 MiB of duplicates (a few hundred alerts, which the SIEM can drop by alert id and
/// lastUpdate) per break the receiver began, which are rare.
pub const DEFAULT_RESEND_ON_RECONNECT: usize = 1024 * 1024;

/// The largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP header octets).
const MAX_UDP_PAYLOAD: usize = 65_507;

impl SinkConfig {
    pub fn new(destination: Destination) -> Self {
        SinkConfig {
            destination,
            framing: None,
            max_message_size: None,
            tls: TlsOptions::default(),
            window: DEFAULT_WINDOW,
            resend_on_reconnect: DEFAULT_RESEND_ON_RECONNECT,
            queue_capacity: 10_000,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(60),
            close_timeout: Duration::from_secs(5),
            liveness: Liveness::default(),
            backoff: Backoff::default(),
            hec: HecOptions::default(),
            kafka: KafkaOptions::default(),
        }
    }

    /// The framing in effect: `None` for UDP and RELP.
    pub fn effective_framing(&self) -> Option<Framing> {
        match self.destination.transport {
            // RELP frames carry their length: any bytes, no syslog framing.
            Transport::Udp
            | Transport::Relp
            | Transport::RelpTls
            | Transport::Hec
            | Transport::HecHttp
            | Transport::Kafka
            | Transport::KafkaTls => None,
            Transport::Tcp => Some(self.framing.unwrap_or(Framing::Lf)),
            Transport::Tls => Some(self.framing.unwrap_or(Framing::OctetCounting)),
        }
    }

    /// The maximum message size in effect.
    pub fn effective_max_message_size(&self) -> usize {
        self.max_message_size
            .unwrap_or(match self.destination.transport {
                Transport::Udp => 2048,
                // RELP: imrelp's maxDataSize defaults to rsyslog's maxMessageSize, 8k
                // (delivery.md §1).
                Transport::Tcp | Transport::Tls | Transport::Relp | Transport::RelpTls => 8192,
                // One event of a batch; HEC's own limit is per request (limits.conf
                // `max_content_length`, 1 MB on older versions), and batches stay under it.
                Transport::Hec | Transport::HecHttp => hec::MAX_EVENT,
                Transport::Kafka | Transport::KafkaTls => kafka::MAX_MESSAGE,
            })
    }

    fn validate(&self) -> Result<(), Error> {
        let dest = &self.destination;
        let max = self.effective_max_message_size();
        if self.framing.is_some() && self.effective_framing().is_none() {
            return Err(Error::Config(format!(
                "{dest}: framing applies to tcp:// and tls:// only (UDP sends one message per datagram, RELP frames carry their length)"
            )));
        }
        if dest.transport.is_relp() && !(1..=MAX_WINDOW).contains(&self.window) {
            return Err(Error::Config(format!(
                "{dest}: the RELP window must be between 1 and {MAX_WINDOW}"
            )));
        }
        if dest.transport == Transport::Udp && max > MAX_UDP_PAYLOAD {
            return Err(Error::Config(format!(
                "{dest}: maximum message size {max} exceeds the largest UDP datagram ({MAX_UDP_PAYLOAD})"
            )));
        }
        if dest.transport.is_hec() {
            if self.hec.token.is_none() {
                return Err(Error::Config(format!(
                    "{dest}: a HEC destination needs hec_token = {{ env = \"…\" }} or {{ file = \"…\" }}"
                )));
            }
            if self.tls.client_cert.is_some() || self.tls.server_name.is_some() {
                return Err(Error::Config(format!(
                    "{dest}: client_cert and server_name are not supported for HEC (ca_file and insecure_skip_verify are)"
                )));
            }
        }
        if dest.transport.is_kafka() && self.tls.server_name.is_some() {
            return Err(Error::Config(format!(
                "{dest}: server_name is not supported for Kafka (each broker is checked against its own name)"
            )));
        }
        if !dest.transport.is_kafka() && self.kafka != KafkaOptions::default() {
            return Err(Error::Config(format!(
                "{dest}: SASL applies to kafka:// and kafka+tls:// destinations only"
            )));
        }
        if !dest.transport.is_tls() && self.tls != TlsOptions::default() {
            return Err(Error::Config(format!(
                "{dest}: TLS options need a tls://, relp+tls://, hec+https:// or kafka+tls:// destination"
            )));
        }
        if max == 0 {
            return Err(Error::Config(format!(
                "{dest}: the maximum message size must be at least 1"
            )));
        }
        if self.queue_capacity == 0 {
            return Err(Error::Config(format!(
                "{dest}: the queue capacity must be at least 1"
            )));
        }
        if dest.transport != Transport::Udp {
            self.liveness
                .validate()
                .map_err(|e| Error::Config(format!("{dest}: {e}")))?;
        }
        if self.backoff.initial.is_zero() || self.backoff.max < self.backoff.initial {
            return Err(Error::Config(format!(
                "{dest}: backoff needs 0 < initial <= max"
            )));
        }
        Ok(())
    }

    fn connector(&self) -> Result<tcp::Connector, Error> {
        let tls = match self.destination.transport.is_tls() {
            true => Some(
                self.tls
                    .build(&self.destination.host, &self.destination.to_string())?,
            ),
            false => None,
        };
        Ok(tcp::Connector {
            destination: self.destination.clone(),
            tls,
            timeout: self.connect_timeout,
            write_timeout: self.write_timeout,
            close_timeout: self.close_timeout,
            liveness: self.liveness,
        })
    }

    /// Validates the settings, loads the TLS files and starts the writer task. Must be called
    /// inside a tokio runtime. Nothing connects until the first message waits.
    pub fn build(&self) -> Result<Sink, Error> {
        self.validate()?;
        let (tx, rx) = mpsc::channel(self.queue_capacity);
        let shared = Arc::new(Shared::new(self.destination.to_string()));
        let task = match (self.destination.transport, self.effective_framing()) {
            (Transport::Hec | Transport::HecHttp, _) => tokio::spawn(hec::run(
                hec::Endpoint::new(self)?,
                self.backoff,
                rx,
                shared.clone(),
            )),
            (Transport::Kafka | Transport::KafkaTls, _) => tokio::spawn(kafka::run(
                kafka::Endpoint::new(self)?,
                self.backoff,
                rx,
                shared.clone(),
            )),
            (Transport::Relp | Transport::RelpTls, _) => tokio::spawn(relp::run(
                self.connector()?,
                self.window,
                self.backoff,
                rx,
                shared.clone(),
            )),
            (_, Some(framing)) => tokio::spawn(tcp::run(
                self.connector()?,
                framing,
                self.backoff,
                self.resend_on_reconnect,
                rx,
                shared.clone(),
            )),
            (_, None) => tokio::spawn(udp::run(
                self.destination.clone(),
                self.backoff,
                rx,
                shared.clone(),
            )),
        };
        Ok(Sink {
            tx,
            shared,
            task: AbortOnDrop(task),
            framing: self.effective_framing(),
            max_message_size: self.effective_max_message_size(),
        })
    }

    /// Connects now (TCP, TLS handshake included; RELP, `open` and `close` too) and closes again
    /// cleanly, for `check --online` and `send-test`. Returns the address connected to. For UDP
    /// only resolution and binding can be checked.
    pub async fn probe(&self) -> Result<SocketAddr, Error> {
        self.validate()?;
        match self.destination.transport {
            Transport::Udp => udp::bind(&self.destination).await.map(|(_, peer)| peer),
            Transport::Tcp | Transport::Tls => {
                let (mut stream, peer) = self.connector()?.connect().await?;
                let until = tokio::time::Instant::now() + self.close_timeout;
                tcp::close(&mut stream, until).await;
                Ok(peer)
            }
            Transport::Relp | Transport::RelpTls => relp::probe(&self.connector()?).await,
            Transport::Hec | Transport::HecHttp => hec::Endpoint::new(self)?.probe().await,
            Transport::Kafka | Transport::KafkaTls => kafka::Endpoint::new(self)?.probe().await,
        }
    }
}

/// State shared by a [`Sink`] handle and its writer task.
struct Shared {
    destination: String,
    accepted: AtomicU64,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
    reconnects: AtomicU64,
    rejected: AtomicU64,
    send_errors: AtomicU64,
    refused: AtomicU64,
    /// The refused messages not yet taken by [`Sink::take_refusals`].
    refusals: std::sync::Mutex<Vec<Refusal>>,
    resent: AtomicU64,
    /// Messages sent or dropped so far, in queue order: [`Sink::flush`] waits on it.
    done: watch::Sender<u64>,
    status: watch::Sender<Status>,
    /// Set by [`Sink::shutdown`]: the writer's clean close must be over by then.
    close_by: OnceLock<tokio::time::Instant>,
}

impl Shared {
    fn new(destination: String) -> Self {
        Shared {
            destination,
            accepted: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            send_errors: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refusals: std::sync::Mutex::new(Vec::new()),
            resent: AtomicU64::new(0),
            done: watch::Sender::new(0),
            status: watch::Sender::new(Status::Idle),
            close_by: OnceLock::new(),
        }
    }

    fn sent(&self, messages: usize, bytes: usize) {
        self.messages_sent
            .fetch_add(messages as u64, Ordering::Relaxed);
        self.bytes_sent.fetch_add(bytes as u64, Ordering::Relaxed);
        self.done.send_modify(|n| *n += messages as u64);
    }

    fn dropped(&self) {
        self.send_errors.fetch_add(1, Ordering::Relaxed);
        self.done.send_modify(|n| *n += 1);
    }

    /// The next message in queue order was refused by the receiver for `reason`. Recorded
    /// before `done` moves past it, so whoever sees `done` at or past it finds its refusal.
    fn refused(&self, reason: String) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let number = *self.done.borrow() + 1;
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Refusal { number, reason });
        self.done.send_modify(|n| *n += 1);
    }

    fn up(&self, peer: SocketAddr) {
        let status = Status::Up { peer };
        if *self.status.borrow() != status {
            tracing::info!(destination = %self.destination, %peer, "destination up");
            self.status.send_replace(status);
        }
    }

    /// Logs a transition to down at warn level; repeated failures while down go to debug so
    /// that a long outage does not flood the log.
    fn down(&self, reason: String) {
        let was_down = matches!(*self.status.borrow(), Status::Down { .. });
        if was_down {
            tracing::debug!(destination = %self.destination, %reason, "destination still down");
        } else {
            tracing::warn!(destination = %self.destination, %reason, "destination down");
        }
        self.status.send_replace(Status::Down { reason });
    }
}

/// Messages [`Sink::send_many`] takes the queue's room for at once.
const SEND_MANY: usize = 256;

/// What [`Sink::shutdown`] gives the writer beyond its deadline to drop the connection.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Aborts the writer task when the handle is dropped without [`Sink::shutdown`].
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running destination. Dropping it without [`Sink::shutdown`] stops the writer and
/// abandons what is still queued.
pub struct Sink {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    task: AbortOnDrop,
    framing: Option<Framing>,
    max_message_size: usize,
}

impl Sink {
    /// Queues one complete syslog message (header included, unframed). Waits while the queue
    /// is full. Refuses, and counts, a message larger than the maximum size, an empty one, and
    /// under LF framing one containing LF: such a message is never sent.
    pub async fn send(&self, msg: Bytes) -> Result<(), Error> {
        if let Err(e) = self.check(&msg) {
            self.shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        // Reserve first: if this future is dropped while waiting, nothing was counted.
        let permit = self.tx.reserve().await.map_err(|_| self.closed())?;
        self.shared.accepted.fetch_add(1, Ordering::Relaxed);
        permit.send(msg);
        Ok(())
    }

    /// Queues messages in order, as [`Sink::send`] would one by one, but taking the queue's room
    /// for up to [`SEND_MANY`] of them at once (as many as `msgs` says it still has): one wait
    /// and one release per group instead of per message (a chunk's messages, from
    /// [`crate::output::Output::hand_over`]). On a refused message the ones before it are
    /// queued and the rest are not.
    pub async fn send_many(&self, msgs: impl IntoIterator<Item = Bytes>) -> Result<(), Error> {
        let mut msgs = msgs.into_iter().peekable();
        while msgs.peek().is_some() {
            let group = msgs
                .size_hint()
                .0
                .clamp(1, SEND_MANY)
                .min(self.tx.max_capacity());
            // Reserve first, as `send` does; permits not used go back when dropped.
            let permits = self
                .tx
                .reserve_many(group)
                .await
                .map_err(|_| self.closed())?;
            for (permit, msg) in permits.zip(msgs.by_ref()) {
                if let Err(e) = self.check(&msg) {
                    self.shared.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                // Counted before the writer can see it, as in `send`.
                self.shared.accepted.fetch_add(1, Ordering::Relaxed);
                permit.send(msg);
            }
        }
        Ok(())
    }

    fn check(&self, msg: &[u8]) -> Result<(), Error> {
        if msg.len() > self.max_message_size {
            return Err(Error::TooLarge {
                destination: self.shared.destination.clone(),
                size: msg.len(),
                max: self.max_message_size,
            });
        }
        match self.framing {
            Some(framing) => framing.check(msg),
            None if msg.is_empty() => Err(Error::Empty),
            None => Ok(()),
        }
    }

    /// Waits until every message accepted so far has been sent (TCP/TLS: acknowledged by the
    /// receiver's TCP) or, for UDP, sent or dropped. Fails with [`Error::Unsent`] after `timeout`.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        let target = self.shared.accepted.load(Ordering::Relaxed);
        let mut done = self.shared.done.subscribe();
        let waited = tokio::time::timeout(timeout, done.wait_for(|&n| n >= target))
            .await
            .map(|r| r.is_ok());
        match waited {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.closed()),
            Err(_) => Err(Error::Unsent {
                destination: self.shared.destination.clone(),
                unsent: target.saturating_sub(*done.borrow()),
                timeout,
            }),
        }
    }

    /// Flushes, then closes the connection cleanly (TLS: `close_notify`, RFC 5425 §4.4; then
    /// waiting up to [`SinkConfig::close_timeout`] for the receiver to close its side) and stops
    /// the writer, all within `timeout`. On timeout the writer is stopped anyway and the error
    /// says how many messages were not sent.
    pub async fn shutdown(self, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        let flushed = self.flush(timeout).await;
        let Sink {
            tx, shared, task, ..
        } = self;
        flushed?;
        // End of input: nothing is left to write; the writer closes, by the deadline, and returns.
        let _ = shared.close_by.set(deadline);
        drop(tx);
        let mut task = task;
        match tokio::time::timeout_at(deadline + CLOSE_GRACE, &mut task.0).await {
            Ok(_) => Ok(()),
            // Dropping `task` aborts the writer.
            Err(_) => Err(Error::CloseTimeout {
                destination: shared.destination.clone(),
                timeout,
            }),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        let accepted = s.accepted.load(Ordering::Relaxed);
        Stats {
            accepted,
            messages_sent: s.messages_sent.load(Ordering::Relaxed),
            bytes_sent: s.bytes_sent.load(Ordering::Relaxed),
            reconnects: s.reconnects.load(Ordering::Relaxed),
            rejected: s.rejected.load(Ordering::Relaxed),
            send_errors: s.send_errors.load(Ordering::Relaxed),
            refused: s.refused.load(Ordering::Relaxed),
            resent: s.resent.load(Ordering::Relaxed),
            queued: accepted.saturating_sub(*s.done.borrow()),
        }
    }

    /// Messages taken by [`Sink::send`] so far; the n-th message is done once
    /// [`Sink::done`] reaches n.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Messages done so far, in queue order (written, or for UDP sent or dropped); wakes on
    /// every change.
    pub fn done(&self) -> watch::Receiver<u64> {
        self.shared.done.subscribe()
    }

    /// The messages refused since the last call, in order. Each is recorded before
    /// [`Sink::done`] moves past it: read `done` first, then take the refusals, and every
    /// refused message up to that `done` is among them.
    pub fn take_refusals(&self) -> Vec<Refusal> {
        std::mem::take(
            &mut *self
                .shared
                .refusals
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// The connection state; `changed().await` on the receiver to follow transitions.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.shared.status.subscribe()
    }

    /// The destination as a canonical URL.
    pub fn destination(&self) -> &str {
        &self.shared.destination
    }

    /// The largest message [`Sink::send`] accepts.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    fn closed(&self) -> Error {
        Error::Closed {
            destination: self.shared.destination.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        for (failures, base) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (60, 1000),
        ] {
            let d = b.delay(failures);
            let base = Duration::from_millis(base);
            assert!(d >= base / 2 && d <= base, "{failures}: {d:?}");
        }
    }

    #[test]
    fn defaults_follow_the_transport() {
        let cfg = |url: &str| SinkConfig::new(url.parse().unwrap());
        assert_eq!(cfg("tcp://h").effective_framing(), Some(Framing::Lf));
        assert_eq!(
            cfg("tls://h").effective_framing(),
            Some(Framing::OctetCounting)
        );
        assert_eq!(cfg("udp://h").effective_framing(), None);
        assert_eq!(cfg("udp://h").effective_max_message_size(), 2048);
        assert_eq!(cfg("tls://h").effective_max_message_size(), 8192);

        let mut c = cfg("udp://h");
        c.framing = Some(Framing::Lf);
        assert!(c.validate().unwrap_err().to_string().contains("framing"));
        let mut c = cfg("tcp://h");
        c.tls.insecure_skip_verify = true;
        assert!(c.validate().unwrap_err().to_string().contains("tls://"));
        let mut c = cfg("relp+tls://h");
        c.tls.insecure_skip_verify = true;
        assert!(c.validate().is_ok());
        assert_eq!(c.effective_framing(), None);
        assert_eq!(c.effective_max_message_size(), 8192);
        c.framing = Some(Framing::OctetCounting);
        assert!(c.validate().unwrap_err().to_string().contains("framing"));
        let mut c = cfg("relp://h");
        c.window = 0;
        assert!(c.validate().unwrap_err().to_string().contains("window"));
        let mut c = cfg("udp://h");
        c.max_message_size = Some(70_000);
        assert!(c.validate().is_err());
    }
}
