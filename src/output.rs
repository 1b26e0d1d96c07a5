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

/// A running output.
pub struct Output {
    encoder: MessageEncoder,
    envelope: Envelope,
    sink: Sink,
    truncated: AtomicU64,
    dead_lettered: AtomicU64,
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
            envelope,
            encoder: MessageEncoder {
                formatter: Arc::new(formatter),
                header: cfg.header.clone(),
                max_message: Some(max_message),
            },
            sink,
            truncated: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
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
        &self.encoder.formatter
    }

    /// Makes the alert's messages and queues them, in order. A record that cannot fit the
    /// destination's size is handed back in [`Sent::refused`]. Waits while the writer's queue
    /// is full.
    pub async fn send(&self, alert: &Alert<'_>, ctx: &Context<'_>) -> Result<Sent, Error> {
        let mut sent = Sent::default();
        for index in 0..self.encoder.formatter.record_count(alert) {
            let mut buf = Vec::with_capacity(2048);
            match self.encoder.encode(alert, ctx, index, &mut buf) {
                Ok(e) => {
                    self.truncated
                        .fetch_add(u64::from(e.truncated), Ordering::Relaxed);
                    // Exactly the record's size: the writer's queue holds up to `queue_capacity`
                    // records, and a Vec with spare capacity would also cost `Bytes` a second
                    // allocation for its shared header (a full-length one becomes a boxed slice).
                    let wrapped = match &self.envelope {
                        Envelope::None => None,
                        Envelope::Hec(env) => {
                            let mut event = Vec::with_capacity(buf.len() + HEC_ENVELOPE_ROOM);
                            env.wrap(
                                alert,
                                ctx,
                                &buf,
                                self.encoder.formatter.is_json(),
                                &mut event,
                            );
                            Some(event)
                        }
                        Envelope::Kafka(env) => {
                            let mut msg =
                                Vec::with_capacity(buf.len() + crate::format::kafka::ENVELOPE_ROOM);
                            env.wrap(alert, ctx, &buf, &mut msg);
                            Some(msg)
                        }
                    };
                    if let Some(wrapped) = wrapped {
                        if wrapped.len() > self.sink.max_message_size() {
                            // A string record whose escaping grew it past the event limit.
                            let e = EncodeError::TooLarge {
                                size: wrapped.len(),
                                limit: self.sink.max_message_size(),
                            };
                            sent.refused.push(self.refuse(alert, ctx, index, &e));
                            continue;
                        }
                        buf = wrapped;
                    }
                    buf.shrink_to_fit();
                    self.sink.send(Bytes::from(buf)).await?;
                    sent.queued += 1;
                }
                Err(e @ EncodeError::TooLarge { .. }) => {
                    sent.refused.push(self.refuse(alert, ctx, index, &e))
                }
            }
        }
        Ok(sent)
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
            destination = self.destination(),
            alert = %alert.id,
            %reason,
            "record does not fit the destination; it goes to the dead letters"
        );
        Refused {
            reason,
            record: String::from_utf8_lossy(&whole).into_owned(),
        }
    }

    pub fn stats(&self) -> OutputStats {
        OutputStats {
            sink: self.sink.stats(),
            truncated: self.truncated.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
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
