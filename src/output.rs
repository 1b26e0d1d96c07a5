//! An output: one configured destination with the format, syslog header and size limit its
//! messages are made with ([`MessageEncoder`]: pure and synchronous) and its writer
//! ([`sink::Sink`]). A record that cannot fit is handed back to the caller, who keeps it as a
//! dead letter (the daemon in its queue, `send` in its file).
//!
//! Each output has its own writer task and queue, so a slow or dead SIEM holds up no other
//! output until its own queue is full. (While the queue is in memory, a full queue pushes back
//! on the caller; the durable queue of a later issue gives each destination its own cursor.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::alert::Alert;
use crate::dead_letter::Letter;
use crate::format::{Context, EncodeError, FormatError, Formatter, MessageEncoder, SyslogHeader};
use crate::pool::BufferPool;
use crate::sink::{self, Sink, SinkConfig};

/// Everything one output is built from.
#[derive(Debug, Clone)]
pub struct OutputConfig {
    pub sink: SinkConfig,
    /// A built-in format name or a format file path.
    pub format: String,
    pub header: SyslogHeader,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(transparent)]
    Sink(#[from] sink::Error),
}

/// Counters of one output: the writer's, plus what encoding did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputStats {
    pub sink: sink::Stats,
    /// Values cut short to their key's length or to fit the message size.
    pub truncated: u64,
    /// Records that could not fit, handed back for the dead letters.
    pub dead_lettered: u64,
}

/// What became of one alert's records.
#[derive(Debug, Default)]
pub struct Sent {
    /// Messages handed to the writer.
    pub queued: usize,
    /// Records that cannot fit the destination, for the caller's dead letters.
    pub refused: Vec<Refused>,
}

/// A record that cannot fit the destination even with every value cut that may be cut.
#[derive(Debug)]
pub struct Refused {
    pub reason: String,
    /// The whole record, as it would be without a size limit.
    pub record: String,
}

impl Refused {
    /// The dead letter of this record of `alert` (`source`: the alert as the API sent it, which
    /// `dead-letters replay` queues again).
    pub fn letter<'a>(
        &'a self,
        destination: &'a str,
        alert: &'a Alert<'_>,
        source: Option<&'a serde_json::value::RawValue>,
        ctx: &Context<'a>,
    ) -> Letter<'a> {
        Letter {
            destination,
            alert_id: Some(&alert.id),
            last_update_date_time: alert.last_update().map(|t| t.to_rfc3339()),
            tenant_name: ctx.tenant_name,
            reason: self.reason.clone(),
            record: &self.record,
            alert: source,
        }
    }
}

/// Bytes a HEC event object takes around its record (time, host, source, sourcetype, index,
/// fields; a string record's escaping can take more, and a record is cut to leave this).
const HEC_ENVELOPE_ROOM: usize = 4096;

/// What a destination's protocol puts around each record.
enum Envelope {
    /// Syslog: the record as it is (its header is the encoder's).
    None,
    /// A HEC event object.
    Hec(crate::format::hec::HecEnvelope),
    /// A Kafka message's key, headers and time.
    Kafka(crate::format::kafka::KafkaEnvelope),
}

/// The messages of some alerts for one output, in order, in one buffer (a worker fills it; the
/// writer's queue then holds slices of it, not one allocation per message).
#[derive(Debug, Default)]
pub struct Messages {
    buf: Vec<u8>,
    ends: Vec<usize>,
    /// Where the buffer came from and goes back to, for a chunk's messages.
    pool: Option<BufferPool>,
}

impl Messages {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of all the messages.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(self.ends.iter()).map(|(s, &e)| &self.buf[s..e])
    }

    /// One `Bytes` per message, sharing one buffer (which goes back to its pool, if it came
    /// from one, once the last of them is dropped).
    pub fn into_bytes(mut self) -> impl Iterator<Item = Bytes> {
        let mut buf = std::mem::take(&mut self.buf);
        let ends = std::mem::take(&mut self.ends);
        let all = match self.pool.take() {
            Some(pool) => pool.freeze(buf),
            None => {
                // The writer's queue holds up to `queue_capacity` messages, and so their
                // buffers: much spare room is given back (a copy, worth it for one alert's
                // messages; a chunk's buffer is pooled instead).
                if buf.capacity() - buf.len() > buf.len() / 4 {
                    buf.shrink_to_fit();
                }
                Bytes::from(buf)
            }
        };
        let starts = std::iter::once(0).chain(ends.clone());
        starts.zip(ends).map(move |(s, e)| all.slice(s..e))
    }
}

impl Drop for Messages {
    fn drop(&mut self) {
        if let Some(pool) = &self.pool {
            pool.give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// Spare chunk buffers kept per output: about as many as are in use at once (two chunks per
/// worker on two cores, and those whose messages wait in the writer's queue).
const CHUNK_BUFFERS: usize = 8;

/// How one output makes its messages from alerts: the format, the syslog header, the size
/// limit and the protocol's envelope. Pure and synchronous, so the worker threads share it.
pub struct OutputEncoder {
    encoder: MessageEncoder,
    envelope: Envelope,
    /// Buffers for chunks' messages ([`OutputEncoder::messages`]).
    buffers: BufferPool,
    /// The destination's limit for a whole message (envelope included).
    max_message_size: usize,
    destination: String,
    truncated: AtomicU64,
    dead_lettered: AtomicU64,
}

impl OutputEncoder {
    /// An encoder for stdout (`convert`): records as they are, cut to `encoder.max_message`.
    pub fn plain(encoder: MessageEncoder) -> OutputEncoder {
        OutputEncoder {
            max_message_size: encoder.max_message.unwrap_or(usize::MAX),
            encoder,
            envelope: Envelope::None,
            destination: "stdout".to_string(),
            buffers: BufferPool::new(CHUNK_BUFFERS),
            truncated: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
        }
    }

    pub fn formatter(&self) -> &Formatter {
        &self.encoder.formatter
    }

    /// The destination URL (`stdout` for `convert`).
    pub fn destination(&self) -> &str {
        &self.destination
    }

    /// An empty [`Messages`] with room for about `bytes` of messages, `count` of them, in a
    /// buffer that is used again once the writer is done with it: for a chunk's messages.
    pub fn messages(&self, bytes: usize, count: usize) -> Messages {
        Messages {
            buf: self.buffers.take(bytes),
            ends: Vec::with_capacity(count),
            pool: Some(self.buffers.clone()),
        }
    }

    /// Values cut short so far.
    pub fn truncated(&self) -> u64 {
        self.truncated.load(Ordering::Relaxed)
    }

    /// Appends the alert's messages to `out`, in order. A record that cannot fit the
    /// destination's size is handed back instead.
    pub fn encode(&self, alert: &Alert<'_>, ctx: &Context<'_>, out: &mut Messages) -> Vec<Refused> {
        let mut refused = Vec::new();
        let mut record = Vec::new();
        for index in 0..self.encoder.formatter.record_count(alert) {
            let buf = match self.envelope {
                Envelope::None => &mut out.buf,
                _ => {
                    record.clear();
                    &mut record
                }
            };
            match self.encoder.encode(alert, ctx, index, buf) {
                Ok(e) => {
                    self.truncated
                        .fetch_add(u64::from(e.truncated), Ordering::Relaxed);
                    let start = out.buf.len();
                    match &self.envelope {
                        Envelope::None => {}
                        Envelope::Hec(env) => env.wrap(
                            alert,
                            ctx,
                            &record,
                            self.encoder.formatter.is_json(),
                            &mut out.buf,
                        ),
                        Envelope::Kafka(env) => env.wrap(alert, ctx, &record, &mut out.buf),
                    }
                    let size = out.buf.len() - out.ends.last().copied().unwrap_or(0);
                    if !matches!(self.envelope, Envelope::None) && size > self.max_message_size {
                        // A string record whose escaping grew it past the event limit.
                        out.buf.truncate(start);
                        let e = EncodeError::TooLarge {
                            size,
                            limit: self.max_message_size,
                        };
                        refused.push(self.refuse(alert, ctx, index, &e));
                        continue;
                    }
                    out.ends.push(out.buf.len());
                }
                Err(e @ EncodeError::TooLarge { .. }) => {
                    refused.push(self.refuse(alert, ctx, index, &e))
                }
            }
        }
        refused
    }

    fn refuse(
        &self,
        alert: &Alert<'_>,
        ctx: &Context<'_>,
        index: usize,
        e: &EncodeError,
    ) -> Refused {
        self.dead_lettered.fetch_add(1, Ordering::Relaxed);
        let mut whole = Vec::new();
        let unlimited = MessageEncoder {
            max_message: None,
            ..self.encoder.clone()
        };
        // Without a limit encoding cannot fail.
        let _ = unlimited.encode(alert, ctx, index, &mut whole);
        let reason = e.to_string();
        tracing::warn!(
            destination = %self.destination,
            alert = %alert.id,
            %reason,
            "record does not fit the destination; it goes to the dead letters"
        );
        Refused {
            reason,
            record: String::from_utf8_lossy(&whole).into_owned(),
        }
    }
}

/// A running output.
pub struct Output {
    encoder: Arc<OutputEncoder>,
    sink: Sink,
}

impl Output {
    /// Loads the format and starts the writer (inside a tokio runtime).
    pub fn build(cfg: &OutputConfig) -> Result<Output, Error> {
        let formatter = Formatter::load(&cfg.format)?;
        let sink = cfg.sink.build()?;
        let transport = cfg.sink.destination.transport;
        let envelope = if transport.is_hec() {
            let h = &cfg.sink.hec;
            Envelope::Hec(crate::format::hec::HecEnvelope {
                source: h.source.clone(),
                sourcetype: h.sourcetype.clone(),
                index: h.index.clone(),
                host: cfg.header.hostname().to_string(),
            })
        } else if transport.is_kafka() {
            Envelope::Kafka(crate::format::kafka::KafkaEnvelope)
        } else {
            Envelope::None
        };
        // The record leaves room for what goes around it.
        let max_message = match &envelope {
            Envelope::None => sink.max_message_size(),
            Envelope::Hec(_) => sink.max_message_size().saturating_sub(HEC_ENVELOPE_ROOM),
            Envelope::Kafka(_) => sink
                .max_message_size()
                .saturating_sub(crate::format::kafka::ENVELOPE_ROOM),
        };
        Ok(Output {
            encoder: Arc::new(OutputEncoder {
                envelope,
                encoder: MessageEncoder {
                    formatter: Arc::new(formatter),
                    header: cfg.header.clone(),
                    max_message: Some(max_message),
                },
                max_message_size: sink.max_message_size(),
                destination: sink.destination().to_string(),
                buffers: BufferPool::new(CHUNK_BUFFERS),
                truncated: AtomicU64::new(0),
                dead_lettered: AtomicU64::new(0),
            }),
            sink,
        })
    }

    /// The destination URL.
    pub fn destination(&self) -> &str {
        self.sink.destination()
    }

    /// Messages handed to the writer so far (see [`Sink::accepted`]).
    pub fn accepted(&self) -> u64 {
        self.sink.accepted()
    }

    /// The messages the receiver refused since the last call (see [`Sink::take_refusals`]).
    pub fn take_refusals(&self) -> Vec<sink::Refusal> {
        self.sink.take_refusals()
    }

    /// Messages the writer has delivered so far, in order (see [`Sink::done`]).
    pub fn done(&self) -> tokio::sync::watch::Receiver<u64> {
        self.sink.done()
    }

    pub fn formatter(&self) -> &Formatter {
        self.encoder.formatter()
    }

    /// How this output makes its messages, for the worker threads.
    pub fn encoder(&self) -> Arc<OutputEncoder> {
        self.encoder.clone()
    }

    /// Makes the alert's messages and queues them, in order. A record that cannot fit the
    /// destination's size is handed back in [`Sent::refused`]. Waits while the writer's queue
    /// is full.
    pub async fn send(&self, alert: &Alert<'_>, ctx: &Context<'_>) -> Result<Sent, Error> {
        let mut messages = Messages::default();
        let refused = self.encoder.encode(alert, ctx, &mut messages);
        let queued = self.hand_over(messages).await?;
        Ok(Sent { queued, refused })
    }

    /// Queues one message made by [`OutputEncoder::encode`]; waits while the writer's queue is
    /// full.
    pub async fn queue(&self, message: Bytes) -> Result<(), Error> {
        Ok(self.sink.send(message).await?)
    }

    /// Queues messages made by [`OutputEncoder::encode`], in order; waits while the writer's
    /// queue is full. Returns how many were queued.
    pub async fn hand_over(&self, messages: Messages) -> Result<usize, Error> {
        let n = messages.len();
        self.sink.send_many(messages.into_bytes()).await?;
        Ok(n)
    }

    pub fn stats(&self) -> OutputStats {
        OutputStats {
            sink: self.sink.stats(),
            truncated: self.encoder.truncated.load(Ordering::Relaxed),
            dead_lettered: self.encoder.dead_lettered.load(Ordering::Relaxed),
        }
    }

    pub fn status(&self) -> tokio::sync::watch::Receiver<sink::Status> {
        self.sink.status()
    }

    /// Waits until everything queued has been written.
    pub async fn flush(&self, timeout: Duration) -> Result<(), Error> {
        Ok(self.sink.flush(timeout).await?)
    }

    /// Flushes and closes within `timeout`.
    pub async fn shutdown(self, timeout: Duration) -> Result<OutputStats, Error> {
        let (stats, closed) = self.close(timeout).await;
        closed.map(|()| stats)
    }

    /// Flushes and closes within `timeout`; the counters say what was sent even when that
    /// fails.
    pub async fn close(self, timeout: Duration) -> (OutputStats, Result<(), Error>) {
        let deadline = tokio::time::Instant::now() + timeout;
        let flushed = self.sink.flush(timeout).await;
        let stats = self.stats();
        let closed = match flushed {
            Ok(()) => {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                self.sink.shutdown(left).await.map_err(Error::from)
            }
            // Dropping the sink stops its writer; waiting once was enough.
            Err(e) => Err(e.into()),
        };
        (stats, closed)
    }
}

/// The synthetic alert of `send-test`: clearly marked, informational, never mistaken for a
/// detection.
pub fn test_alert() -> Alert<'static> {
    let now = chrono::Utc::now();
    let id = format!("defender-bridge-test-{}", uuid::Uuid::new_v4());
    let json = serde_json::json!({
        "id": id,
        "title": "defender-bridge test alert (not a real detection)",
        "description": "A synthetic alert sent by `defender-bridge send-test` to check that this destination receives and parses defender-bridge records. No action is needed.",
        "severity": "informational",
        "status": "resolved",
        "classification": "informationalExpectedActivity",
        "determination": "securityTesting",
        "category": "Test",
        "serviceSource": "unknown",
        "detectionSource": "manual",
        "productName": "defender-bridge",
        "detectorId": "defender-bridge-test",
        "createdDateTime": now.to_rfc3339(),
        "lastUpdateDateTime": now.to_rfc3339(),
        "firstActivityDateTime": now.to_rfc3339(),
        "lastActivityDateTime": now.to_rfc3339(),
        "evidence": [],
    });
    // The literal above is a valid alert.
    Alert::from_json(&json.to_string())
        .expect("the test alert decodes")
        .into_owned()
}
