//! Kafka test helpers: librdkafka's mock cluster as a real Kafka-protocol broker on 127.0.0.1,
//! a TLS-terminating front for it, and an independent reader (an rdkafka consumer) that returns
//! every record of a topic, duplicates included.
//!
//! The mock is driven through the raw FFI of `rdkafka::bindings` because rdkafka's safe
//! `MockCluster` does not expose `rd_kafka_mock_broker_set_host_port`.

use std::ffi::{CStr, CString};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::bindings as rd;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// The Kafka protocol's api key of Produce requests.
const PRODUCE_API_KEY: i16 = 0;

/// A librdkafka mock cluster of brokers 1..=n listening on 127.0.0.1 (plaintext). Topics are
/// created explicitly with [`MockKafka::create_topic`]; each partition has one replica and keeps
/// only its last 5 MB or 100,000 messages (`rdkafka_mock.c`): more is deleted from its start,
/// as retention would.
pub struct MockKafka {
    rk: *mut rd::rd_kafka_t,
    cluster: *mut rd::rd_kafka_mock_cluster_t,
    bootstrap: String,
}

// SAFETY: the mock cluster runs on its own thread. The mutating calls used here either post an
// op to that thread's op queue and wait for its reply (topic create, broker up/down, rtt) or
// take the cluster's mutex (request errors, advertised host/port), so they may be called from
// any thread, concurrently. The handle `rk` is only used to create and destroy the cluster,
// and `bootstrap` is an owned copy.
unsafe impl Send for MockKafka {}
unsafe impl Sync for MockKafka {}

impl MockKafka {
    /// Starts a cluster of `brokers` brokers, ids 1..=`brokers`.
    pub fn start(brokers: i32) -> MockKafka {
        assert!(brokers >= 1, "a mock cluster needs at least one broker");
        unsafe {
            let conf = rd::rd_kafka_conf_new();
            let mut errstr = [0 as std::ffi::c_char; 512];
            // Drop notices such as "No `bootstrap.servers` configured": this handle only hosts
            // the cluster.
            let r = rd::rd_kafka_conf_set(
                conf,
                c"log_level".as_ptr(),
                c"4".as_ptr(),
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            assert_eq!(
                r,
                rd::rd_kafka_conf_res_t::RD_KAFKA_CONF_OK,
                "set log_level"
            );
            let rk = rd::rd_kafka_new(
                rd::rd_kafka_type_t::RD_KAFKA_PRODUCER,
                conf,
                errstr.as_mut_ptr(),
                errstr.len(),
            );
            if rk.is_null() {
                // rd_kafka_new takes ownership of `conf` only on success.
                rd::rd_kafka_conf_destroy(conf);
                let msg = CStr::from_ptr(errstr.as_ptr()).to_string_lossy();
                panic!("create the librdkafka handle of the mock cluster: {msg}");
            }
            let cluster = rd::rd_kafka_mock_cluster_new(rk, brokers);
            if cluster.is_null() {
                rd::rd_kafka_destroy(rk);
                panic!("create a librdkafka mock cluster of {brokers} brokers");
            }
            let bootstrap = CStr::from_ptr(rd::rd_kafka_mock_cluster_bootstraps(cluster))
                .to_str()
                .expect("mock cluster bootstraps are UTF-8")
                .to_owned();
            MockKafka {
                rk,
                cluster,
                bootstrap,
            }
        }
    }

    /// The plaintext bootstrap list, "127.0.0.1:p1,127.0.0.1:p2,…" in broker-id order, as it
    /// was at start (later [`MockKafka::advertise`] calls do not change it).
    pub fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    /// The address broker `broker_id` really listens on, whatever it advertises.
    pub fn listen_addr(&self, broker_id: i32) -> SocketAddr {
        // rd_kafka_mock_cluster_new creates brokers 1..=n in order, appends each to its list
        // and builds the bootstraps string by walking that list: entry i is broker i + 1.
        let entry = usize::try_from(broker_id - 1)
            .ok()
            .and_then(|i| self.bootstrap.split(',').nth(i))
            .unwrap_or_else(|| panic!("no mock broker {broker_id} in {}", self.bootstrap));
        entry
            .parse()
            .unwrap_or_else(|e| panic!("mock broker address {entry:?}: {e}"))
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1), leaders spread
    /// over the brokers.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let name = CString::new(topic).expect("topic name without NUL");
        let err =
            unsafe { rd::rd_kafka_mock_topic_create(self.cluster, name.as_ptr(), partitions, 1) };
        check(
            err,
            &format!("create mock topic {topic} ({partitions} partitions)"),
        );
    }

    /// Closes broker `id`'s connections and stops accepting: connecting is refused (the port
    /// stays reserved) until [`MockKafka::broker_up`]. Metadata still names it.
    pub fn broker_down(&self, id: i32) {
        let err = unsafe { rd::rd_kafka_mock_broker_set_down(self.cluster, id) };
        check(err, &format!("set mock broker {id} down"));
    }

    /// Makes broker `id` accept connections again, on the same port.
    pub fn broker_up(&self, id: i32) {
        let err = unsafe { rd::rd_kafka_mock_broker_set_up(self.cluster, id) };
        check(err, &format!("set mock broker {id} up"));
    }

    /// Makes Metadata responses name `host:port` for broker `broker_id`; it keeps listening on
    /// [`MockKafka::listen_addr`]. Clients that bootstrapped anywhere then connect to
    /// `host:port` for everything this broker leads.
    pub fn advertise(&self, broker_id: i32, host: &str, port: u16) {
        let c_host = CString::new(host).expect("host without NUL");
        // Returns nothing: an unknown broker id is silently ignored, so check it here.
        self.listen_addr(broker_id);
        unsafe {
            rd::rd_kafka_mock_broker_set_host_port(
                self.cluster,
                broker_id,
                c_host.as_ptr(),
                i32::from(port),
            )
        };
    }

    /// Makes the next `errors.len()` Produce requests (to any broker) fail with these errors,
    /// in order, one per request, for every partition of the request. Nothing is appended for
    /// a failed request.
    pub fn produce_errors(&self, errors: &[RDKafkaRespErr]) {
        unsafe {
            rd::rd_kafka_mock_push_request_errors_array(
                self.cluster,
                PRODUCE_API_KEY,
                errors.len(),
                errors.as_ptr(),
            )
        };
    }

    /// Delays every response of broker `broker_id` by `rtt`.
    pub fn set_rtt(&self, broker_id: i32, rtt: Duration) {
        let ms = i32::try_from(rtt.as_millis()).expect("rtt fits in i32 milliseconds");
        let err = unsafe { rd::rd_kafka_mock_broker_set_rtt(self.cluster, broker_id, ms) };
        check(err, &format!("set the rtt of mock broker {broker_id}"));
    }
}

impl Drop for MockKafka {
    fn drop(&mut self) {
        // The cluster uses the handle (its internal broker, its op queues): cluster first.
        unsafe {
            rd::rd_kafka_mock_cluster_destroy(self.cluster);
            rd::rd_kafka_destroy(self.rk);
        }
    }
}

fn check(err: RDKafkaRespErr, what: &str) {
    if err != RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR {
        let msg = unsafe { CStr::from_ptr(rd::rd_kafka_err2str(err)) }.to_string_lossy();
        panic!("{what}: {err:?} ({msg})");
    }
}

/// A TLS-terminating TCP proxy on 127.0.0.1:`port`: each connection completes a TLS handshake
/// with the given server certificate and is then piped to `target` in plaintext. Dropping it
/// stops accepting and closes every connection.
pub struct TlsFront {
    pub port: u16,
    handshakes: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl TlsFront {
    /// Listens on a free port; `cert_pem` may hold a chain, `key_pem` one private key.
    pub async fn start(target: SocketAddr, cert_pem: &Path, key_pem: &Path) -> TlsFront {
        let acceptor = acceptor(cert_pem, key_pem);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the TLS front");
        let port = listener.local_addr().expect("TLS front address").port();
        let handshakes = Arc::new(AtomicU64::new(0));
        let counter = handshakes.clone();
        let task = tokio::spawn(async move {
            // Owned by this task, so aborting it (Drop) aborts every connection too.
            let mut conns = JoinSet::new();
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("TLS front :{port}: accept: {e}");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let counter = counter.clone();
                conns.spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(s) => s,
                        Err(e) => {
                            return eprintln!("TLS front :{port}: handshake with {peer}: {e}")
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let mut upstream = match TcpStream::connect(target).await {
                        Ok(s) => s,
                        Err(e) => return eprintln!("TLS front :{port}: connect {target}: {e}"),
                    };
                    // Ends when either side closes (or fails); both are then dropped.
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
                while conns.try_join_next().is_some() {} // reap finished connections
            }
        });
        TlsFront {
            port,
            handshakes,
            task,
        }
    }

    /// TLS handshakes completed so far.
    pub fn connections(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn acceptor(cert_pem: &Path, key_pem: &Path) -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_pem)
        .unwrap_or_else(|e| panic!("read {}: {e}", cert_pem.display()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("parse {}: {e}", cert_pem.display()));
    let key = PrivateKeyDer::from_pem_file(key_pem)
        .unwrap_or_else(|e| panic!("read {}: {e}", key_pem.display()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS server config of the TLS front");
    TlsAcceptor::from(Arc::new(config))
}

/// One record as read back from Kafka.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// A null value reads as empty.
    pub value: Vec<u8>,
    /// In record order; a null header value reads as empty.
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: Option<i64>,
}

/// How long [`read_topic`] keeps reading once it has `at_least` records, to catch extras.
const GRACE: Duration = Duration::from_secs(1);

/// Reads every partition of `topic` from the beginning (no consumer group offsets are used or
/// committed) until `at_least` records were read and then [`GRACE`] more, or until `timeout`;
/// returns what it read sorted by (partition, offset), so duplicates are visible. Blocking:
/// from async code call it in `tokio::task::spawn_blocking`.
///
/// It connects where the cluster's metadata points: after [`MockKafka::advertise`] to a
/// [`TlsFront`], this plaintext reader can no longer reach that broker, so advertise the
/// broker's [`MockKafka::listen_addr`] again before reading.
pub fn read_topic(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let deadline = Instant::now() + timeout;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kafka-test-reader") // required by librdkafka, never used: assign()
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .create()
        .unwrap_or_else(|e| panic!("create a Kafka reader for {bootstrap}: {e}"));
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .unwrap_or_else(|e| panic!("metadata of topic {topic} from {bootstrap}: {e}"));
    let meta = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .unwrap_or_else(|| panic!("no topic {topic} in the metadata from {bootstrap}"));
    if let Some(err) = meta.error() {
        panic!("metadata of topic {topic} from {bootstrap}: {err:?}");
    }
    let mut assignment = TopicPartitionList::new();
    for p in meta.partitions() {
        assignment
            .add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("add a partition to the assignment");
    }
    consumer
        .assign(&assignment)
        .unwrap_or_else(|e| panic!("assign the partitions of {topic}: {e}"));

    let mut out = Vec::new();
    let mut end = deadline;
    let mut enough = false;
    loop {
        let now = Instant::now();
        if !enough && out.len() >= at_least {
            enough = true;
            end = end.min(now + GRACE);
        }
        if now >= end {
            break;
        }
        match consumer.poll(end - now) {
            None => {}
            Some(Ok(m)) => out.push(Consumed {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                            .collect()
                    })
                    .unwrap_or_default(),
                timestamp_ms: m.timestamp().to_millis(),
            }),
            // Transient (e.g. a broker going away); librdkafka retries by itself.
            Some(Err(e)) => eprintln!("Kafka reader of {topic}: {e}"),
        }
    }
    out.sort_by_key(|c| (c.partition, c.offset));
    out
}

/// [`read_topic`] from async code (on a blocking thread).
pub async fn read(
    bootstrap: &str,
    topic: &str,
    at_least: usize,
    timeout: Duration,
) -> Vec<Consumed> {
    let (b, t) = (bootstrap.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || read_topic(&b, &t, at_least, timeout))
        .await
        .expect("the reader thread")
}
