//! The Kafka writer (`kafka://broker1:9092,broker2:9092/topic`, `kafka+tls://…`), one task per
//! destination, on rskafka (pure Rust, rustls; the choice is in the README, "Kafka").
//!
//! Messages are packed by the output (`format::kafka`): key `tenantId:alertId`, headers, the
//! alert's time and the record as the value. The key picks the partition the way Kafka's Java
//! client does (murmur2 of the key, modulo the partition count), so one alert's versions stay
//! in order in one partition, and consumers written against Java producers find them where
//! they expect.
//!
//! Produce requests ask for `acks = all` (rskafka's only mode): a message counts as delivered
//! once the broker answered that every in-sync replica has it. Up to [`BATCH`] waiting messages
//! go at once, one request per partition (at most [`CHUNK_BYTES`] each, below the brokers'
//! default `message.max.bytes`), the partitions in parallel; messages leave in order: one counts
//! as delivered once it and every message before it are. A failed request is sent again after
//! a backoff, so a broker that wrote a batch but whose answer was lost sees it twice (rskafka
//! has no idempotent producer): delivery is at least once, the duplicates counted as resent. A
//! message the broker refuses as such (too large, invalid) goes to the dead letters with the
//! broker's reason; authentication and authorisation failures mark the destination down with
//! the reason and wait the longest backoff before trying again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rskafka::client::error::{Error as KError, ProtocolError};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use rskafka::record::Record;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;

use super::{Backoff, Error, Shared, SinkConfig};
use crate::format::kafka::unpack;
use crate::source::SecretString;

/// Largest message by default: the brokers' `message.max.bytes` (1 MiB + 12) holds a record
/// batch; Azure Event Hubs' limit is 1 MB too.
pub const MAX_MESSAGE: usize = 1_000_000;
/// Messages sent at once (over all partitions).
const BATCH: usize = 2000;
/// Bytes of one produce request to one partition (values, keys and headers).
const CHUNK_BYTES: usize = 900 * 1024;

/// SASL settings of a Kafka destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: SecretString,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl std::str::FromStr for SaslMechanism {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_uppercase().as_str() {
            "PLAIN" => Ok(SaslMechanism::Plain),
            "SCRAM-SHA-256" => Ok(SaslMechanism::ScramSha256),
            "SCRAM-SHA-512" => Ok(SaslMechanism::ScramSha512),
            _ => Err(format!(
                "sasl_mechanism {s:?}: write \"PLAIN\", \"SCRAM-SHA-256\" or \"SCRAM-SHA-512\""
            )),
        }
    }
}

/// Kafka settings of a destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KafkaOptions {
    pub sasl: Option<Sasl>,
}

/// Where and how the writer produces.
pub(crate) struct Endpoint {
    brokers: Vec<String>,
    topic: String,
    tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    sasl: Option<Sasl>,
    connect_timeout: Duration,
    /// A request not answered by then has failed (rskafka sets no timeout of its own): the
    /// destination's `write_timeout`.
    request_timeout: Duration,
    destination: String,
}

/// A connected client and the topic's partitions.
struct Connection {
    client: Client,
    partitions: Vec<i32>,
    leaders: HashMap<i32, Arc<PartitionClient>>,
}

impl Endpoint {
    pub(crate) fn new(cfg: &SinkConfig) -> Result<Endpoint, Error> {
        let d = &cfg.destination;
        let target = d.kafka.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "{d}: a Kafka destination names brokers and a topic"
            ))
        })?;
        let tls = match d.transport.is_tls() {
            true => Some(cfg.tls.client_config(&d.to_string())?),
            false => None,
        };
        Ok(Endpoint {
            brokers: target.brokers.clone(),
            topic: target.topic.clone(),
            tls,
            sasl: cfg.kafka.sasl.clone(),
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.write_timeout,
            destination: d.to_string(),
        })
    }

    async fn connect(&self) -> Result<Connection, Failure> {
        let mut b = ClientBuilder::new(self.brokers.clone())
            .client_id("defender-bridge")
            // rskafka retries on its own, forever by default: within a deadline here, so that
            // the writer sees the failure, says so and backs off itself.
            .backoff_config(rskafka::BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                base: 3.0,
                deadline: Some(self.connect_timeout),
            });
        if let Some(tls) = &self.tls {
            b = b.tls_config(tls.clone());
        }
        if let Some(s) = &self.sasl {
            let c = Credentials::new(s.username.clone(), s.password.expose().to_string());
            b = b.sasl_config(match s.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(c),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(c),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(c),
            });
        }
        let client = match tokio::time::timeout(self.connect_timeout, b.build()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(classify(&e, "connecting")),
            Err(_) => {
                return Err(Failure::Again(format!(
                    "no broker answered within {:?}",
                    self.connect_timeout
                )))
            }
        };
        let topics = tokio::time::timeout(self.request_timeout, client.list_topics())
            .await
            .map_err(|_| Failure::Again("the metadata request timed out".into()))?
            .map_err(|e| classify(&e, "reading the metadata"))?;
        let Some(t) = topics.into_iter().find(|t| t.name == self.topic) else {
            return Err(Failure::Stop(format!(
                "topic {:?} does not exist (or this user may not see it); the writer does not create topics",
                self.topic
            )));
        };
        let partitions: Vec<i32> = t.partitions.into_iter().collect();
        if partitions.is_empty() {
            return Err(Failure::Again(format!(
                "topic {:?} has no partitions yet",
                self.topic
            )));
        }
        Ok(Connection {
            client,
            partitions,
            leaders: HashMap::new(),
        })
    }

    /// The address to report as up (the first broker's first address).
    async fn peer(&self) -> SocketAddr {
        let first = self.brokers.first().map(String::as_str).unwrap_or("");
        tokio::net::lookup_host(first)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Connects, reads the metadata and checks that the topic exists (`check --online`).
    pub(crate) async fn probe(&self) -> Result<SocketAddr, Error> {
        match self.connect().await {
            Ok(_) => Ok(self.peer().await),
            Err(Failure::Again(reason) | Failure::Stop(reason) | Failure::Refused(reason)) => {
                Err(Error::Kafka {
                    destination: self.destination.clone(),
                    reason,
                })
            }
        }
    }
}

/// What a failed request comes to.
#[derive(Debug, Clone)]
enum Failure {
    /// Try again after a backoff.
    Again(String),
    /// Credentials, permissions, a missing topic: wait the longest backoff.
    Stop(String),
    /// The broker refuses these records as such.
    Refused(String),
}

fn classify(e: &KError, doing: &str) -> Failure {
    let text = match e {
        // rskafka's text of a server error carries the whole request context: the code and
        // the broker's message are what a reader needs.
        KError::ServerError {
            protocol_error,
            error_message,
            ..
        } => match error_message {
            Some(m) if !m.is_empty() => format!("{protocol_error}: {m}"),
            _ => protocol_error.to_string(),
        },
        e => e.to_string(),
    };
    let text = format!("{doing}: {text}");
    match e {
        KError::ServerError { protocol_error, .. } => match protocol_error {
            ProtocolError::MessageTooLarge
            | ProtocolError::RecordListTooLarge
            | ProtocolError::InvalidRecord
            | ProtocolError::CorruptMessage => Failure::Refused(text),
            ProtocolError::TopicAuthorizationFailed
            | ProtocolError::ClusterAuthorizationFailed
            | ProtocolError::SaslAuthenticationFailed
            | ProtocolError::UnsupportedSaslMechanism
            | ProtocolError::IllegalSaslState => Failure::Stop(text),
            _ => Failure::Again(text),
        },
        _ if is_sasl(e) => Failure::Stop(text),
        _ => Failure::Again(text),
    }
}

/// A SASL failure while connecting comes as a connection error whose text says so.
fn is_sasl(e: &KError) -> bool {
    let t = e.to_string();
    t.contains("SASL") || t.contains("Sasl")
}

/// Kafka's Java client's default partitioner: murmur2 of the key, positive, modulo the count
/// (`org.apache.kafka.common.utils.Utils.murmur2`, `BuiltInPartitioner.partitionForKey`).
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Waiting,
    Delivered,
    Refused(String),
}

struct Message {
    packed: Bytes,
    state: State,
    /// Sent before without an answer: a resend, counted once.
    tried: bool,
}

/// A record of a packed message; `None` if it is not one (cannot happen: the output packs).
fn record(packed: &[u8]) -> Option<(Vec<u8>, Record)> {
    let m = unpack(packed)?;
    let timestamp = m
        .timestamp_ms
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or_else(chrono::Utc::now);
    let headers: BTreeMap<String, Vec<u8>> = m
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect();
    Some((
        m.key.to_vec(),
        Record {
            key: Some(m.key.to_vec()),
            value: Some(m.value.to_vec()),
            headers,
            timestamp,
        },
    ))
}

pub(crate) async fn run(
    ep: Endpoint,
    backoff: Backoff,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut window: VecDeque<Message> = VecDeque::new();
    let mut input_open = true;
    let mut failures: u32 = 0;
    let mut retry_at: Option<Instant> = None;
    let mut conn: Option<Connection> = None;
    let mut ever_up = false;
    loop {
        while input_open && window.len() < BATCH {
            match rx.try_recv() {
                Ok(packed) => window.push_back(Message {
                    packed,
                    state: State::Waiting,
                    tried: false,
                }),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => input_open = false,
            }
        }
        while let Some(front) = window.front() {
            match &front.state {
                State::Delivered => shared.sent(1, front.packed.len()),
                State::Refused(reason) => shared.refused(reason.clone()),
                State::Waiting => break,
            }
            window.pop_front();
        }
        if window.is_empty() && !input_open {
            return;
        }
        if let Some(&deadline) = shared.close_by.get() {
            if Instant::now() >= deadline {
                return;
            }
        }
        let waiting = window.iter().any(|m| m.state == State::Waiting);
        if waiting && retry_at.is_none_or(|t| Instant::now() >= t) {
            let outcome = match conn.as_mut() {
                Some(c) => produce(c, &ep, &mut window, &shared).await,
                None => match ep.connect().await {
                    Ok(c) => {
                        tracing::debug!(destination = %ep.destination, partitions = c.partitions.len(), "connected to the Kafka cluster");
                        conn = Some(c);
                        continue;
                    }
                    Err(f) => Err(f),
                },
            };
            match outcome {
                Ok(()) => {
                    failures = 0;
                    retry_at = None;
                    if !ever_up || !matches!(*shared.status.borrow(), super::Status::Up { .. }) {
                        if ever_up {
                            shared.reconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        ever_up = true;
                        shared.up(ep.peer().await);
                    }
                }
                Err(Failure::Stop(reason)) => {
                    failures = failures.saturating_add(1);
                    shared.down(reason);
                    conn = None;
                    retry_at = Some(Instant::now() + backoff.max);
                }
                Err(Failure::Again(reason) | Failure::Refused(reason)) => {
                    failures = failures.saturating_add(1);
                    shared.down(reason);
                    // A fresh client finds the brokers and leaders again.
                    conn = None;
                    retry_at = Some(Instant::now() + backoff.delay(failures));
                }
            }
            continue;
        }
        let mut wake = Instant::now() + Duration::from_secs(1);
        if let Some(t) = retry_at.filter(|_| waiting) {
            wake = wake.min(t);
        }
        if let Some(&deadline) = shared.close_by.get() {
            wake = wake.min(deadline);
        }
        let room = input_open && window.len() < BATCH;
        tokio::select! {
            msg = rx.recv(), if room => match msg {
                Some(packed) => window.push_back(Message { packed, state: State::Waiting, tried: false }),
                None => input_open = false,
            },
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// Produces every waiting message of the window, one request per partition and chunk, the
/// partitions in parallel. Marks what the broker took or refused; `Err` if any request failed
/// (its messages stay waiting).
async fn produce(
    conn: &mut Connection,
    ep: &Endpoint,
    window: &mut VecDeque<Message>,
    shared: &Shared,
) -> Result<(), Failure> {
    // Per partition: the window indices and records, in order.
    let mut by_partition: BTreeMap<i32, Vec<(usize, Record)>> = BTreeMap::new();
    for (i, m) in window.iter_mut().enumerate() {
        if m.state != State::Waiting {
            continue;
        }
        let Some((key, rec)) = record(&m.packed) else {
            m.state = State::Refused("not a packed Kafka message".into());
            continue;
        };
        if m.tried {
            shared.resent.fetch_add(1, Ordering::Relaxed);
        }
        let p = conn.partitions[partition_for_key(&key, conn.partitions.len())];
        by_partition.entry(p).or_default().push((i, rec));
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (p, recs) in by_partition {
        let leader = match conn.leaders.get(&p) {
            Some(l) => l.clone(),
            None => {
                let l = tokio::time::timeout(
                    ep.request_timeout,
                    conn.client
                        .partition_client(ep.topic.clone(), p, UnknownTopicHandling::Error),
                )
                .await
                .map_err(|_| {
                    Failure::Again(format!("finding the leader of partition {p} timed out"))
                })?
                .map_err(|e| classify(&e, &format!("finding the leader of partition {p}")))?;
                let l = Arc::new(l);
                conn.leaders.insert(p, l.clone());
                l
            }
        };
        tasks.spawn(produce_partition(leader, recs, ep.request_timeout));
    }
    let mut first_failure = None;
    while let Some(joined) = tasks.join_next().await {
        let Ok(results) = joined else {
            first_failure.get_or_insert(Failure::Again("a produce task failed".into()));
            continue;
        };
        for (i, result) in results {
            match result {
                Ok(()) => window[i].state = State::Delivered,
                Err(Failure::Refused(reason)) => {
                    tracing::error!(destination = %ep.destination, "Kafka refused a message: {reason}; it goes to the dead letters");
                    window[i].state =
                        State::Refused(format!("Kafka refused the message: {reason}"));
                }
                Err(f) => {
                    window[i].tried = true;
                    first_failure.get_or_insert(f);
                }
            }
        }
    }
    match first_failure {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

/// One partition's records, in chunks, in order; the result of each record that was sent. After
/// a failed chunk the rest are not sent (they would overtake it) and stay waiting.
async fn produce_partition(
    leader: Arc<PartitionClient>,
    recs: Vec<(usize, Record)>,
    timeout: Duration,
) -> Vec<(usize, Result<(), Failure>)> {
    let mut out = Vec::with_capacity(recs.len());
    let mut rest = recs.into_iter().peekable();
    while rest.peek().is_some() {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some((_, r)) = rest.peek() {
            let size = r.approximate_size() + 64;
            if !chunk.is_empty() && bytes + size > CHUNK_BYTES {
                break;
            }
            bytes += size;
            chunk.extend(rest.next());
        }
        let (idx, records): (Vec<usize>, Vec<Record>) = chunk.into_iter().unzip();
        let single = records.len() == 1;
        let answer = match tokio::time::timeout(
            timeout,
            leader.produce(records.clone(), Compression::NoCompression),
        )
        .await
        {
            Ok(Ok(_offsets)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e, "producing")),
            Err(_) => Err(Failure::Again(format!(
                "the broker did not answer within {timeout:?}"
            ))),
        };
        match answer {
            Ok(()) => out.extend(idx.into_iter().map(|i| (i, Ok(())))),
            // Which record is it? Each goes alone: only that one is refused.
            Err(Failure::Refused(_)) if !single => {
                for (i, r) in idx.into_iter().zip(records) {
                    let one = match tokio::time::timeout(
                        timeout,
                        leader.produce(vec![r], Compression::NoCompression),
                    )
                    .await
                    {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(classify(&e, "producing")),
                        Err(_) => Err(Failure::Again("the broker did not answer".into())),
                    };
                    let failed = matches!(one, Err(Failure::Again(_) | Failure::Stop(_)));
                    out.push((i, one));
                    if failed {
                        return out;
                    }
                }
            }
            Err(f) => {
                out.extend(idx.into_iter().map(|i| (i, Err(f.clone()))));
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vectors of Kafka's own `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_is_kafkas() {
        for (key, want) in [
            ("21", -973932308i32),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
        assert_eq!(partition_for_key(b"abc", 1), 0);
        assert!(partition_for_key(b"21", 7) < 7);
    }

    #[test]
    fn sasl_mechanisms_parse_as_kafka_writes_them() {
        assert_eq!("PLAIN".parse(), Ok(SaslMechanism::Plain));
        assert_eq!("scram-sha-512".parse(), Ok(SaslMechanism::ScramSha512));
        assert!("GSSAPI"
            .parse::<SaslMechanism>()
            .unwrap_err()
            .contains("SCRAM-SHA-256"));
    }
}
