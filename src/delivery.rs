//! One destination's delivery loop: read the queue from the destination's own cursor, make
//! each record with the destination's format, hand it to the writer, and move the cursor past
//! what the writer has *delivered* (DESIGN.md "delivered"; issue 9 §1, §5).
//!
//! A destination that is down or slow holds up only itself: its records wait in the queue,
//! the pollers and the other destinations go on. A restart resumes every destination from its
//! cursor, so what was delivered is not sent again and what was not is sent then.
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::alert::Alert;
use crate::config::{Destination, Tenant};
use crate::dead_letter::Letter;
use crate::format::Context;
use crate::output::{Messages, Output};
use crate::queue::{Queue, QueueError, Record};
use crate::workers::{InOrder, Workers};
use bytes::Bytes;

/// Records read from the queue at once.
const READ_BATCH: usize = 512;
/// Records handed to the writer and not yet delivered, at most: bounds what a reconnect can
/// send again and what this loop holds in memory.
const IN_FLIGHT: usize = 20_000;
/// How long to wait before reading the queue again after it failed (a full disk, a store
/// being reopened).
const QUEUE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sleeps `delay`; false when `stop` came first.
async fn sleep_unless(stop: &CancellationToken, delay: std::time::Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stop.cancelled() => false,
    }
}

/// How often the cursor is written while records are being delivered. A crash sends again at
/// most what was delivered in this span (at-least-once).
const ACK_EVERY: Duration = Duration::from_millis(250);

/// What a delivery loop needs besides its queue.
#[derive(Clone)]
pub struct Forwarder {
    pub destination: Destination,
    pub output: Arc<Output>,
    /// Tenants by name, for each record's syslog host name and portal link; replaced when
    /// the configuration is reloaded.
    pub tenants: TenantMap,
    /// When it last delivered, for `status`.
    pub progress: Arc<crate::metrics::Progress>,
    /// Cancelled to take the destination out of a running daemon (a reload removed or changed
    /// it): the loop reads nothing more, waits for what its writer holds, moves its cursor and
    /// ends; the rest stays queued.
    pub leave: CancellationToken,
    /// Where "records went to the dead letters" is said (the log and the notifier).
    pub events: crate::event::Events,
    /// The threads that decode and encode the records, shared by every destination.
    pub workers: Workers,
}

/// Records a worker makes at once: a read of the queue ([`READ_BATCH`]) is spread over the
/// workers in pieces of this many.
const PIECE: usize = 128;

/// One queue record made ready on a worker: its messages and its dead letters.
struct Prepared {
    seq: u64,
    messages: Vec<Bytes>,
    letters: Vec<Vec<u8>>,
}

/// The tenants by name, as the delivery loops read them.
pub type TenantMap = Arc<std::sync::RwLock<Arc<HashMap<String, Tenant>>>>;

/// Delays before a delivery loop that panicked starts again.
const RESTART_BASE: Duration = Duration::from_secs(1);
const RESTART_MAX: Duration = Duration::from_secs(60);

impl Forwarder {
    /// [`Forwarder::run`] in its own task, started again from the destination's queue cursor
    /// after a panic (redb may panic on a store damaged under a read), with a capped backoff:
    /// one destination's failure never stops the others, and does not stop this one for good.
    /// What the writer held when it panicked may go twice (at-least-once).
    pub async fn run_supervised(
        self,
        queue: Queue,
        stop: CancellationToken,
        drain_until: Arc<tokio::sync::Notify>,
    ) -> Result<u64, QueueError> {
        let mut failures = 0u32;
        loop {
            let run = tokio::spawn(self.clone().run(
                queue.clone(),
                stop.clone(),
                drain_until.clone(),
            ));
            let panic = match run.await {
                Ok(r) => return r,
                Err(e) => e,
            };
            failures = failures.saturating_add(1);
            let delay = crate::backoff::backoff(RESTART_BASE, RESTART_MAX, failures);
            tracing::error!(destination = %self.destination.name,
                "the delivery loop failed ({panic}); it starts again from its queue cursor in {delay:?}");
            if !sleep_unless(&stop, delay).await {
                // Stopping: what it had not delivered stays queued.
                return queue.cursor(&self.destination.name);
            }
        }
    }

    /// Delivers until `stop`, then until everything queued is delivered or `drain_until`
    /// passes (the caller bounds the whole stop with `shutdown_timeout`). Returns the last
    /// sequence number delivered.
    pub async fn run(
        self,
        queue: Queue,
        stop: CancellationToken,
        drain_until: Arc<tokio::sync::Notify>,
    ) -> Result<u64, QueueError> {
        let name = self.destination.name.clone();
        let mut acked = loop {
            match queue.cursor(&name) {
                Ok(c) => break c,
                Err(QueueError::Closed) => return Err(QueueError::Closed),
                Err(e) => {
                    tracing::error!(destination = %name, "cannot read the queue cursor, trying again: {e}");
                    if !sleep_unless(&stop, QUEUE_RETRY).await {
                        return Err(e);
                    }
                }
            }
        };
        let mut read = acked;
        let mut delivered = acked;
        let mut last_ack = tokio::time::Instant::now();
        // (writer's accepted count once the record's messages are in, sequence number, when it
        // was handed over)
        let mut pending: VecDeque<(u64, u64, std::time::Instant)> = VecDeque::new();
        let latency = metrics::histogram!("defender_bridge_delivery_latency_seconds", "destination" => name.clone());
        let mut head = queue.subscribe();
        let mut done = self.output.done();
        let stopping = stop.clone();
        let drained = drain_until.notified();
        tokio::pin!(drained);
        loop {
            let now_done = *done.borrow_and_update();
            // Before the records they belong to leave `pending`.
            self.keep_refused(&queue, &pending).await;
            let before = delivered;
            while pending
                .front()
                .is_some_and(|(target, _, _)| *target <= now_done)
            {
                if let Some((_, seq, handed)) = pending.pop_front() {
                    latency.record(handed.elapsed().as_secs_f64());
                    delivered = seq;
                }
            }
            if delivered > before {
                self.progress.delivered_now();
            }
            if pending.is_empty() && read > delivered {
                // Records that made no message (filtered out, dead-lettered) count as delivered.
                delivered = read;
            }
            if delivered > acked && (last_ack.elapsed() >= ACK_EVERY || pending.is_empty()) {
                // A queue that cannot be written (a full disk) keeps the cursor where it is: the
                // records stay delivered in memory and the ack is tried again.
                match queue.ack(&name, delivered).await {
                    Ok(()) => acked = delivered,
                    Err(QueueError::Closed) => return Err(QueueError::Closed),
                    Err(e) => {
                        tracing::warn!(destination = %name, "cannot move the queue cursor yet: {e}")
                    }
                }
                last_ack = tokio::time::Instant::now();
            }
            let head_now = *head.borrow_and_update();
            let leaving = self.leave.is_cancelled();
            if pending.is_empty() && (leaving || (stopping.is_cancelled() && read >= head_now)) {
                return Ok(acked);
            }
            if !leaving && pending.len() < IN_FLIGHT && read < head_now {
                let batch = match queue.read(read, READ_BATCH) {
                    Ok(b) => b,
                    Err(QueueError::Closed) => return Err(QueueError::Closed),
                    Err(e) => {
                        tracing::error!(destination = %name, "cannot read the queue, trying again: {e}");
                        tokio::select! {
                            _ = tokio::time::sleep(QUEUE_RETRY) => {}
                            _ = &mut drained => break,
                        }
                        continue;
                    }
                };
                if batch.is_empty() {
                    // Reclaimed under us (another destination cannot do that below our cursor,
                    // so the store was changed by hand): skip to the head.
                    read = head_now;
                    continue;
                }
                let mut out_of_time = false;
                // The pieces are made on the workers at once and handed over in order.
                let tenants = self
                    .tenants
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let mut pieces = InOrder::new(batch.len().div_ceil(PIECE));
                let mut batch = batch.into_iter();
                loop {
                    let piece: Vec<(u64, Vec<u8>)> = batch.by_ref().take(PIECE).collect();
                    if piece.is_empty() {
                        break;
                    }
                    let (me, tenants) = (self.clone(), tenants.clone());
                    pieces.push(
                        self.workers
                            .spawn(move || {
                                piece
                                    .into_iter()
                                    .map(|(seq, bytes)| me.prepare(&tenants, seq, &bytes))
                                    .collect::<Vec<_>>()
                            })
                            .await,
                    );
                }
                'pieces: while !pieces.is_empty() {
                    let prepared = pieces.next().await;
                    for record in prepared {
                        let seq = record.seq;
                        // Handing over waits while the writer's queue is full (a destination
                        // that is down): the stop's deadline must still reach this loop.
                        tokio::select! {
                            () = self.deliver(&queue, record) => {}
                            () = &mut drained => {
                                out_of_time = true;
                                break 'pieces;
                            }
                        }
                        pending.push_back((self.output.accepted(), seq, std::time::Instant::now()));
                        read = seq;
                    }
                }
                if out_of_time {
                    break;
                }
                continue;
            }
            tokio::select! {
                _ = head.changed() => {}
                _ = done.changed() => {}
                _ = tokio::time::sleep(ACK_EVERY) => {}
                _ = stop.cancelled(), if !stop.is_cancelled() => {}
                _ = self.leave.cancelled(), if !self.leave.is_cancelled() => {}
                _ = &mut drained => break,
            }
        }
        // Out of time: keep what was delivered; the rest stays queued for the next start.
        let now_done = *done.borrow();
        self.keep_refused(&queue, &pending).await;
        while pending
            .front()
            .is_some_and(|(target, _, _)| *target <= now_done)
        {
            if let Some((_, seq, _)) = pending.pop_front() {
                delivered = seq;
            }
        }
        if delivered > acked {
            queue.ack(&name, delivered).await?;
            acked = delivered;
        }
        Ok(acked)
    }

    /// Makes one record's messages (on a worker). A record that cannot be read or decoded,
    /// or that cannot fit the destination, becomes a dead letter, kept by [`Self::deliver`]
    /// before the cursor can move past it: it must not hold up the records behind it.
    fn prepare(&self, tenants: &HashMap<String, Tenant>, seq: u64, bytes: &[u8]) -> Prepared {
        let name = &self.destination.name;
        let mut prepared = Prepared {
            seq,
            messages: Vec::new(),
            letters: Vec::new(),
        };
        let record = match Record::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                let text = String::from_utf8_lossy(bytes);
                let reason = format!("queue record {seq} is damaged: {e}");
                self.log_letter(None, &reason);
                let letter = Letter {
                    destination: name,
                    alert_id: None,
                    last_update_date_time: None,
                    tenant_name: None,
                    reason,
                    record: &text,
                    alert: None,
                };
                prepared.letters.push(letter.to_json());
                return prepared;
            }
        };
        #[cfg(test)]
        if record.alert_id == "da-panics-once"
            && !tests::PANICKED.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("a delivery loop that panics (test)");
        }
        let mut alert = match Alert::from_json(record.alert.get()) {
            Ok(a) => a,
            Err(e) => {
                let reason = format!("cannot decode alert: {e}");
                self.log_letter(Some(&record.alert_id), &reason);
                let letter = Letter {
                    destination: name,
                    alert_id: Some(&record.alert_id),
                    last_update_date_time: Some(record.last_update.to_rfc3339()),
                    tenant_name: Some(&record.tenant_name),
                    reason,
                    record: record.alert.get(),
                    alert: Some(&record.alert),
                };
                prepared.letters.push(letter.to_json());
                return prepared;
            }
        };
        // A record replayed for one destination (`dead-letters replay`) is only its.
        let mine = record
            .only
            .as_deref()
            .is_none_or(|d| d == self.destination.output.sink.destination.to_string());
        if !mine || !self.destination.wants(&record.tenant_name, &alert.severity) {
            return prepared;
        }
        let tenant = tenants.get(&record.tenant_name);
        if alert.alert_web_url.is_none() {
            // The MDE API has no alert link; Graph's alertWebUrl has this form.
            if let Some(t) = tenant {
                let tid = alert.tenant_id.as_deref().unwrap_or(&t.settings.tenant_id);
                alert.alert_web_url = Some(t.settings.cloud.alert_link(&alert.id, tid).into());
            }
        }
        let ctx = Context {
            tenant_name: Some(&record.tenant_name),
            hostname: tenant.and_then(|t| t.syslog_hostname.as_deref()),
        };
        let mut messages = Messages::default();
        let encoder = self.output.encoder();
        for r in encoder.encode(&alert, &ctx, &mut messages) {
            prepared
                .letters
                .push(r.letter(name, &alert, Some(&record.alert), &ctx).to_json());
        }
        prepared.messages = messages.into_bytes().collect();
        prepared
    }

    /// Hands a prepared record's messages to the writer, in order, and keeps its dead letters.
    async fn deliver(&self, queue: &Queue, prepared: Prepared) {
        let name = &self.destination.name;
        let mut failures = 0u32;
        for m in prepared.messages {
            loop {
                match self.output.queue(m.clone()).await {
                    Ok(()) => break,
                    Err(e) => {
                        // The writer has stopped: retry, this destination alone waits.
                        failures += 1;
                        let delay = Duration::from_millis(100 * u64::from(failures.min(50)));
                        tracing::error!(destination = %name, seq = prepared.seq,
                            "cannot hand the record over, retrying in {delay:?}: {e}");
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
        if !prepared.letters.is_empty() {
            keep_letters(queue, &self.events, name, prepared.letters).await;
        }
    }

    /// Keeps as dead letters the records whose messages the receiver refused (RELP `rsp 500`):
    /// the writer counts them done, so the cursor would move past them (issue 9 §5).
    async fn keep_refused(
        &self,
        queue: &Queue,
        pending: &VecDeque<(u64, u64, std::time::Instant)>,
    ) {
        let refusals = self.output.take_refusals();
        if refusals.is_empty() {
            return;
        }
        let name = &self.destination.name;
        let mut letters = Vec::new();
        for r in refusals {
            // The record whose messages end at or after the refused one.
            let Some(&(_, seq, _)) = pending.iter().find(|(target, _, _)| *target >= r.number)
            else {
                tracing::error!(destination = %name, "a refused message belongs to no record in flight: {}", r.reason);
                continue;
            };
            let stored = queue
                .read(seq.saturating_sub(1), 1)
                .ok()
                .and_then(|v| v.into_iter().next())
                .filter(|(s, _)| *s == seq)
                .and_then(|(_, bytes)| Record::decode(&bytes).ok());
            let reason = format!("{} (queue record {seq})", r.reason);
            self.log_letter(stored.as_ref().map(|s| s.alert_id.as_str()), &reason);
            let letter = match &stored {
                Some(record) => Letter {
                    destination: name,
                    alert_id: Some(&record.alert_id),
                    last_update_date_time: Some(record.last_update.to_rfc3339()),
                    tenant_name: Some(&record.tenant_name),
                    reason,
                    record: record.alert.get(),
                    alert: Some(&record.alert),
                },
                None => Letter {
                    destination: name,
                    alert_id: None,
                    last_update_date_time: None,
                    tenant_name: None,
                    reason,
                    record: "",
                    alert: None,
                },
            }
            .to_json();
            letters.push(letter);
        }
        if !letters.is_empty() {
            keep_letters(queue, &self.events, name, letters).await;
        }
    }

    fn log_letter(&self, id: Option<&str>, reason: &str) {
        tracing::error!(destination = %self.destination.name, alert = id.unwrap_or("-"),
            "{reason}; it goes to the dead letters");
    }
}

/// Commits dead letters, trying again while the store cannot be written (a full disk): the
/// record is not counted as delivered, and the cursor does not move past it, until they are.
async fn keep_letters(
    queue: &Queue,
    events: &crate::event::Events,
    destination: &str,
    letters: Vec<Vec<u8>>,
) {
    loop {
        match queue.keep_dead_letters(letters.clone()).await {
            Ok(()) => {
                metrics::counter!("defender_bridge_dead_letters_total", "destination" => destination.to_string())
                    .increment(letters.len() as u64);
                let reason = letters
                    .first()
                    .and_then(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
                    .and_then(|v| v["reason"].as_str().map(str::to_string))
                    .unwrap_or_default();
                events.emit(crate::event::Event::DeadLettered {
                    source: format!("destination {destination}"),
                    count: letters.len() as u64,
                    reason,
                });
                return;
            }
            Err(QueueError::Closed) => {
                // Stopping: the cursor cannot move either; the record comes again next start.
                std::future::pending::<()>().await;
            }
            Err(e) => {
                tracing::error!(destination = %destination, "cannot keep the dead letters yet, trying again: {e}");
                tokio::time::sleep(QUEUE_RETRY).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{HeaderKind, SyslogHeader};
    use crate::output::OutputConfig;
    use crate::sink::SinkConfig;
    use crate::source::Checkpoint;
    use tokio::io::AsyncBufReadExt;

    pub(super) static PANICKED: std::sync::atomic::AtomicBool =
        std::sync::atomic::AtomicBool::new(false);

    /// A queued alert of tenant "contoso" (`t`, Graph) with this id.
    fn record(id: &str) -> Vec<u8> {
        Record {
            tenant_name: "contoso".into(),
            tenant_id: "t".into(),
            api: "graph".into(),
            alert_id: id.into(),
            last_update: chrono::Utc::now(),
            alert: serde_json::value::RawValue::from_string(format!(
                r#"{{"id":"{id}","title":"t","severity":"high"}}"#
            ))
            .expect("json"),
            only: None,
        }
        .encode()
    }

    /// A queue in `dir` holding `records` for the destination `name` (JSON to `url`), and its
    /// forwarder.
    async fn queued(
        dir: &std::path::Path,
        name: &str,
        url: &str,
        records: Vec<Vec<u8>>,
    ) -> (Queue, Forwarder) {
        let queue = Queue::open(dir, 1 << 20).expect("queue");
        let destination = Destination {
            name: name.into(),
            output: OutputConfig {
                sink: SinkConfig::new(url.parse().expect("url")),
                format: "json".into(),
                header: SyslogHeader::new(HeaderKind::None, 20, "h", "defender-bridge"),
            },
            tenants: None,
            min_severity: None,
        };
        queue.attach(&[name.into()]).expect("attach");
        let cp = Checkpoint::fresh("t", "graph", chrono::Utc::now());
        queue
            .append("t-graph", records, Vec::new(), &cp)
            .await
            .expect("append");
        let forwarder = Forwarder {
            output: Arc::new(Output::build(&destination.output).expect("output")),
            destination,
            tenants: TenantMap::default(),
            progress: Arc::default(),
            leave: CancellationToken::new(),
            events: crate::event::Events::new(),
            workers: Workers::new(2),
        };
        (queue, forwarder)
    }

    /// What a delivery loop that was told to stop acknowledged.
    async fn acked_at_stop(run: tokio::task::JoinHandle<Result<u64, QueueError>>) -> u64 {
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the loop ends")
            .expect("task")
            .expect("no queue error")
    }

    /// A delivery loop that panics is started again from its cursor, and delivers the record
    /// it panicked on and the ones after it.
    #[tokio::test]
    async fn a_delivery_loop_that_panics_starts_again_from_its_cursor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let addr = listener.local_addr().expect("addr");
        let receiver = tokio::spawn(async move {
            let mut got = Vec::new();
            while got.len() < 2 {
                let (conn, _) = listener.accept().await.expect("accept");
                let mut lines = tokio::io::BufReader::new(conn).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    got.push(l);
                    if got.len() == 2 {
                        break;
                    }
                }
            }
            got
        });
        let url = format!("tcp://{addr}");
        let records = vec![record("da-panics-once"), record("da-after")];
        let (queue, forwarder) = queued(dir.path(), "siem", &url, records).await;
        let stop = CancellationToken::new();
        let run = tokio::spawn(forwarder.run_supervised(
            queue.clone(),
            stop.clone(),
            Arc::new(tokio::sync::Notify::new()),
        ));
        let got = tokio::time::timeout(Duration::from_secs(20), receiver)
            .await
            .expect("both records arrive after the restart")
            .expect("receiver");
        assert!(PANICKED.load(std::sync::atomic::Ordering::SeqCst));
        assert!(
            got[0].contains("da-panics-once") && got[1].contains("da-after"),
            "{got:?}"
        );
        stop.cancel();
        assert_eq!(acked_at_stop(run).await, 2);
    }

    /// A damaged record in the queue (here: bytes that are not a record) goes to the dead
    /// letters with its sequence number, and the records behind it are delivered; the cursor moves
    /// past all of them.
    #[tokio::test]
    async fn a_damaged_queue_record_is_dead_lettered_and_the_rest_delivered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let addr = listener.local_addr().expect("addr");
        let receiver = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.expect("accept");
            let mut lines = tokio::io::BufReader::new(conn).lines();
            lines.next_line().await.expect("read").expect("a line")
        });
        let url = format!("tcp://{addr}");
        let records = vec![b"\x00not a record".to_vec(), record("da-good")];
        let (queue, forwarder) = queued(dir.path(), "siem", &url, records).await;
        let stop = CancellationToken::new();
        let run = tokio::spawn(forwarder.run(
            queue.clone(),
            stop.clone(),
            Arc::new(tokio::sync::Notify::new()),
        ));
        let line = tokio::time::timeout(Duration::from_secs(20), receiver)
            .await
            .expect("the good record arrives")
            .expect("receiver");
        assert!(line.contains("\"da-good\""), "{line}");
        stop.cancel();
        assert_eq!(acked_at_stop(run).await, 2);
        let letters = queue.dead_letters().expect("letters");
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter: serde_json::Value = serde_json::from_slice(&letters[0].1).expect("JSON");
        assert_eq!(letter["destination"], "siem");
        let reason = letter["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("queue record 1 is damaged"), "{letter}");
    }

    /// Reads one RELP frame of our writer: (txnr, command).
    async fn relp_frame(
        r: &mut tokio::io::BufReader<tokio::net::TcpStream>,
    ) -> Option<(u32, String)> {
        use tokio::io::AsyncReadExt;
        let txnr: u32 = {
            let mut f = Vec::new();
            r.read_until(b' ', &mut f).await.ok()?;
            f.pop();
            String::from_utf8(f).ok()?.parse().ok()?
        };
        let command = {
            let mut f = Vec::new();
            r.read_until(b' ', &mut f).await.ok()?;
            f.pop();
            String::from_utf8(f).ok()?
        };
        if command == "close" {
            return Some((txnr, command));
        }
        let len: usize = {
            let mut f = Vec::new();
            r.read_until(b' ', &mut f).await.ok()?;
            f.pop();
            String::from_utf8(f).ok()?.parse().ok()?
        };
        let mut data = vec![0; len + 1];
        r.read_exact(&mut data).await.ok()?;
        Some((txnr, command))
    }

    /// A record whose message the RELP receiver refuses (`rsp 500`) is never delivered: it goes
    /// to the dead letters with the receiver's answer and its alert, and the cursor moves past
    /// it and the delivered ones.
    #[tokio::test]
    async fn a_record_the_receiver_refuses_is_dead_lettered() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let addr = listener.local_addr().expect("addr");
        let receiver = tokio::spawn(async move {
            let (conn, _) = listener.accept().await.expect("accept");
            let mut r = tokio::io::BufReader::new(conn);
            let mut answered = 0;
            while let Some((txnr, command)) = relp_frame(&mut r).await {
                let reply = match command.as_str() {
                    "open" => {
                        "200 OK\nrelp_version=0\nrelp_software=test\ncommands=syslog".to_string()
                    }
                    "close" => break,
                    _ => {
                        answered += 1;
                        // The second alert's message is refused.
                        if answered == 2 {
                            "500 command disabled".into()
                        } else {
                            "200 OK".into()
                        }
                    }
                };
                let frame = format!("{txnr} rsp {} {reply}\n", reply.len());
                if r.get_mut().write_all(frame.as_bytes()).await.is_err() {
                    break;
                }
            }
            answered
        });
        let url = format!("relp://{addr}");
        let records = ["da-1", "da-2", "da-3"].map(record).to_vec();
        let (queue, forwarder) = queued(dir.path(), "relp-siem", &url, records).await;
        let stop = CancellationToken::new();
        let run = tokio::spawn(forwarder.run(
            queue.clone(),
            stop.clone(),
            Arc::new(tokio::sync::Notify::new()),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while queue.cursor("relp-siem").expect("cursor") < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the cursor did not move"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let letters = queue.dead_letters().expect("letters");
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter: serde_json::Value = serde_json::from_slice(&letters[0].1).expect("JSON");
        assert_eq!(letter["destination"], "relp-siem");
        assert_eq!(letter["alertId"], "da-2");
        assert_eq!(letter["alert"]["id"], "da-2");
        let reason = letter["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("rsp 500 command disabled"), "{letter}");
        stop.cancel();
        acked_at_stop(run).await;
        drop(queue);
        let answered = tokio::time::timeout(Duration::from_secs(20), receiver)
            .await
            .expect("receiver ends")
            .expect("receiver");
        assert_eq!(answered, 3);
    }
}
