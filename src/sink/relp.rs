//! The RELP writer: rsyslog's Reliable Event Logging Protocol (librelp `doc/relp.md`, notes in
//! delivery.md §1), over TCP or TLS, one task per destination.
//!
//! Every message is a `syslog` command that the receiver answers with an `rsp` carrying the
//! command's transaction number, so a message counts as **sent** only once its `rsp 200` has
//! arrived, in queue order; what the receiver's TCP acknowledged means nothing here. Up to
//! `window` commands wait for their answer at once (librelp's and omrelp's default is 128).
//! When a session breaks, every command still unanswered is sent again, in order, on the next
//! one: at-least-once, the receiver may see some messages twice. imrelp answers once the
//! message is in rsyslog's queue; with a disk queue that is on disk (delivery.md §1).
//!
//! An answer other than 200 (`rsp 500 …`) is the receiver refusing that message: it is counted
//! ([`super::Stats::refused`]), logged with the receiver's reason, treated as done and handed
//! back ([`super::Sink::take_refusals`]: the daemon keeps it as a dead letter). Sending it again
//! would get the same answer (librelp sends 500 for a `syslog` command only when the command is
//! disabled, `src/scsyslog.c`), and waiting for it would hold up the destination for good.
//!
//! The receiver's frames are parsed by [`Parser`], strictly and within fixed bounds: a broken
//! or hostile receiver ends its session, it cannot make the writer allocate without limit,
//! panic or wait forever (an unanswered window is given up after the write timeout).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::time::Instant;

use super::tcp::{self, Connector, Stream};
use super::{Backoff, Error, Shared};

/// Transaction numbers run 1..=999,999,999 and then start again at 1; 0 is for hints
/// (relp.md, "RELP FRAME").
const MAX_TXNR: u32 = 999_999_999;
/// Largest DATA accepted in a frame from the receiver. Its answers are short (the open answer's
/// offers are about 100 bytes); anything larger is a broken or hostile peer.
const MAX_RESPONSE_DATA: usize = 64 * 1024;
/// relp.md: `COMMAND = 1*32ALPHA`.
const MAX_COMMAND: usize = 32;
/// Frames written together in one call, at most about this many bytes.
const BATCH_BYTES: usize = 128 * 1024;
/// The receiver's human-readable text is cut to this many characters in logs and errors.
const MAX_TEXT: usize = 200;

/// Unanswered messages at once, by default: librelp's and omrelp's default.
pub const DEFAULT_WINDOW: usize = 128;
/// The largest window accepted (relp.md: "A very large window can be abused for denial of
/// service attacks", by either side).
pub const MAX_WINDOW: usize = 100_000;

fn next_txnr(txnr: u32) -> u32 {
    if txnr >= MAX_TXNR {
        1
    } else {
        txnr + 1
    }
}

/// One frame from the receiver: `TXNR SP COMMAND SP DATALEN [SP DATA] LF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub txnr: u32,
    pub command: String,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Txnr,
    Command,
    DataLen,
    Data,
    Trailer,
}

/// An incremental parser of the receiver's frames, fed whatever each read returned. It holds
/// at most one frame's DATA ([`MAX_RESPONSE_DATA`]). After an error the session must end: the
/// parser does not resynchronise (relp.md, "ERROR HANDLING": the peer that detects a framing
/// error closes the connection).
#[derive(Debug)]
pub struct Parser {
    state: State,
    number: u32,
    digits: u8,
    txnr: u32,
    command: String,
    datalen: usize,
    data: Vec<u8>,
}

impl Default for Parser {
    fn default() -> Self {
        Parser {
            state: State::Txnr,
            number: 0,
            digits: 0,
            txnr: 0,
            command: String::new(),
            datalen: 0,
            data: Vec::new(),
        }
    }
}

impl Parser {
    /// Parses `input`, appending each complete frame to `frames` (frames before an error are
    /// kept). Every byte is looked at once, so this returns promptly whatever the input.
    pub fn feed(&mut self, mut input: &[u8], frames: &mut Vec<Frame>) -> Result<(), String> {
        while let Some((&b, rest)) = input.split_first() {
            if self.state == State::Data {
                let take = (self.datalen - self.data.len()).min(input.len());
                self.data.extend_from_slice(&input[..take]);
                input = &input[take..];
                if self.data.len() == self.datalen {
                    self.state = State::Trailer;
                }
                continue;
            }
            input = rest;
            match (self.state, b) {
                (State::Txnr | State::DataLen, b'0'..=b'9') => {
                    // relp.md: `NUMBER = 1*9DIGIT`, so neither can overflow a u32.
                    if self.digits == 9 {
                        return Err("a number in a frame has more than 9 digits".into());
                    }
                    self.digits += 1;
                    self.number = self.number * 10 + u32::from(b - b'0');
                }
                (State::Txnr, b' ') if self.digits > 0 => {
                    self.txnr = self.take_number();
                    self.state = State::Command;
                }
                (State::Command, b) if b.is_ascii_alphabetic() => {
                    if self.command.len() == MAX_COMMAND {
                        return Err(format!(
                            "a command in a frame is longer than {MAX_COMMAND} letters"
                        ));
                    }
                    self.command.push(char::from(b));
                }
                (State::Command, b' ') if !self.command.is_empty() => {
                    self.state = State::DataLen;
                }
                // DATALEN 0: no data and no space before the trailer (librelp `relpframe.c`).
                (State::DataLen, b'\n') if self.digits > 0 && self.number == 0 => {
                    self.take_number();
                    self.emit(frames);
                }
                (State::DataLen, b' ') if self.digits > 0 && self.number > 0 => {
                    let len = self.take_number() as usize;
                    if len > MAX_RESPONSE_DATA {
                        return Err(format!(
                            "a frame of {len} bytes from the receiver (at most {MAX_RESPONSE_DATA} are accepted)"
                        ));
                    }
                    self.datalen = len;
                    self.data = Vec::with_capacity(len);
                    self.state = State::Data;
                }
                (State::Trailer, b'\n') => self.emit(frames),
                (state, b) => {
                    return Err(format!(
                        "unexpected byte 0x{b:02x} in a frame from the receiver ({state:?})"
                    ))
                }
            }
        }
        Ok(())
    }

    fn take_number(&mut self) -> u32 {
        self.digits = 0;
        std::mem::take(&mut self.number)
    }

    fn emit(&mut self, frames: &mut Vec<Frame>) {
        frames.push(Frame {
            txnr: self.txnr,
            command: std::mem::take(&mut self.command),
            data: std::mem::take(&mut self.data),
        });
        self.datalen = 0;
        self.state = State::Txnr;
    }
}

/// The DATA of an `rsp`: `STATUS [SP HUMAN-TEXT] [LF CMDDATA]` (relp.md, "Command rsp").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub code: u16,
    pub text: String,
    pub data: Vec<u8>,
}

/// Parses an `rsp`'s DATA. Empty DATA (librelp's answer to `close`) is `None`.
pub fn parse_response(data: &[u8]) -> Result<Option<Response>, String> {
    if data.is_empty() {
        return Ok(None);
    }
    let (head, rest) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[data.len()..]),
    };
    let code = match head {
        [a, b, c, ..] if [a, b, c].iter().all(|d| d.is_ascii_digit()) => {
            u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0')
        }
        _ => return Err("an answer without a 3-digit status".into()),
    };
    let text = match &head[3..] {
        [] => String::new(),
        [b' ', text @ ..] => String::from_utf8_lossy(text)
            .chars()
            .take(MAX_TEXT)
            .collect(),
        _ => return Err("an answer whose status is not followed by a space".into()),
    };
    Ok(Some(Response {
        code,
        text,
        data: rest.to_vec(),
    }))
}

/// The values of offer `name` in an open answer's command data (`name=v1,v2` lines).
fn offer<'a>(offers: &'a [u8], name: &str) -> Option<Vec<&'a [u8]>> {
    offers.split(|&b| b == b'\n').find_map(|line| {
        let (key, values) = match line.iter().position(|&b| b == b'=') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &line[line.len()..]),
        };
        (key == name.as_bytes()).then(|| values.split(|&b| b == b',').collect())
    })
}

/// Checks the answer to `open`: 200, a `relp_version`, and `syslog` among the `commands` (a
/// command the receiver does not list MUST NOT be used, relp.md "commands").
fn check_open(data: &[u8]) -> Result<(), String> {
    let r = parse_response(data)?.ok_or("an empty answer to open")?;
    if r.code != 200 {
        return Err(format!(
            "the receiver refused the session: {} {}",
            r.code, r.text
        ));
    }
    if offer(&r.data, "relp_version").is_none() {
        return Err("the receiver's answer to open has no relp_version".into());
    }
    match offer(&r.data, "commands") {
        Some(commands) if commands.contains(&&b"syslog"[..]) => Ok(()),
        _ => Err("the receiver does not offer the syslog command".into()),
    }
}

/// The offers of our `open` (relp.md, "OFFERS"): librelp itself sends `relp_version=0`
/// (delivery.md §1).
fn open_frame() -> Vec<u8> {
    let offers = format!(
        "relp_version=0\nrelp_software=defender-bridge,{}\ncommands=syslog",
        env!("CARGO_PKG_VERSION")
    );
    format!("1 open {} {offers}\n", offers.len()).into_bytes()
}

/// Reads until a frame arrives that `pick` takes (returns `Some` for); hints (TXNR 0) other
/// than `serverclose` are skipped. Frames after the picked one in the same read are dropped:
/// only the open and close answers are awaited this way, after which nothing else is due.
async fn await_frame<T>(
    stream: &mut Stream,
    parser: &mut Parser,
    mut pick: impl FnMut(&Frame) -> Result<Option<T>, String>,
) -> Result<T, String> {
    let mut buf = [0u8; 4096];
    let mut frames = Vec::new();
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("connection lost: {e}"))?;
        if n == 0 {
            return Err("the receiver closed the connection".into());
        }
        let parsed = parser.feed(&buf[..n], &mut frames);
        for f in frames.drain(..) {
            if f.txnr == 0 && f.command == "serverclose" {
                return Err("the receiver is closing the session (serverclose)".into());
            }
            if f.txnr != 0 {
                if let Some(t) = pick(&f)? {
                    return Ok(t);
                }
            }
        }
        parsed?;
    }
}

/// Sends `open` and checks the answer.
async fn open(stream: &mut Stream, parser: &mut Parser) -> Result<(), String> {
    stream
        .write_all(&open_frame())
        .await
        .map_err(|e| format!("writing open: {e}"))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("writing open: {e}"))?;
    await_frame(stream, parser, |f| match (f.txnr, f.command.as_str()) {
        (1, "rsp") => check_open(&f.data).map(Some),
        (t, c) => Err(format!(
            "unexpected {c:?} frame {t} before the answer to open"
        )),
    })
    .await
}

/// An open RELP session.
struct Session {
    stream: Stream,
    parser: Parser,
    /// The TXNR of the next command.
    next_txnr: u32,
}

impl Session {
    /// Connects and opens a session, within the connect timeout.
    async fn start(connector: &Connector) -> Result<(Session, SocketAddr), Error> {
        let (mut stream, addr) = connector.connect().await?;
        let mut parser = Parser::default();
        match tokio::time::timeout(connector.timeout, open(&mut stream, &mut parser)).await {
            Ok(Ok(())) => Ok((
                Session {
                    stream,
                    parser,
                    next_txnr: 2,
                },
                addr,
            )),
            Ok(Err(reason)) => Err(Error::Relp { addr, reason }),
            Err(_) => Err(Error::Relp {
                addr,
                reason: format!("no answer to open within {:?}", connector.timeout),
            }),
        }
    }

    /// `close`, its answer, then the TCP/TLS close of [`tcp::close`], all by `until`.
    async fn close(mut self, until: Instant) {
        let txnr = self.next_txnr;
        let Session { stream, parser, .. } = &mut self;
        let closed = tokio::time::timeout_at(until, async {
            stream
                .write_all(format!("{txnr} close 0\n").as_bytes())
                .await
                .map_err(|e| format!("writing close: {e}"))?;
            stream
                .flush()
                .await
                .map_err(|e| format!("writing close: {e}"))?;
            await_frame(stream, parser, |f| Ok((f.txnr == txnr).then_some(()))).await
        })
        .await;
        match closed {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => tracing::debug!("closing the RELP session: {reason}"),
            Err(_) => tracing::debug!("the receiver did not answer close in time"),
        }
        tcp::close(&mut self.stream, until).await;
    }
}

/// Connects, opens a session and closes it again, for `check --online` and `send-test`.
pub(crate) async fn probe(connector: &Connector) -> Result<SocketAddr, Error> {
    let (session, addr) = Session::start(connector).await?;
    session
        .close(Instant::now() + connector.close_timeout)
        .await;
    Ok(addr)
}

/// A message written on the current session, waiting for its answer.
struct InFlight {
    txnr: u32,
    msg: Bytes,
    /// Bytes of its frame.
    frame_len: usize,
    /// `Some` once answered: `Ok` for 200, else the receiver's code and text.
    answer: Option<Result<(), (u16, String)>>,
}

enum Event {
    Message(Option<Bytes>),
    Read(std::io::Result<usize>),
    NoAnswer,
}

struct Writer {
    connector: Connector,
    window: usize,
    backoff: Backoff,
    shared: Arc<Shared>,
    session: Option<Session>,
    ever_connected: bool,
    /// Consecutive failures (connect, open, a session that broke) since the last answer.
    failures: u32,
    /// Messages to write, oldest first; after a break, everything unanswered.
    pending: VecDeque<Bytes>,
    /// Written on the current session, oldest first.
    in_flight: VecDeque<InFlight>,
    /// When the last answer came, or the window became non-empty.
    progress_at: Instant,
    /// The last answer was a refusal: further ones in a row are logged at debug.
    refusing: bool,
}

/// The writer task. Ends when the handle is gone and everything queued has been answered.
pub(crate) async fn run(
    connector: Connector,
    window: usize,
    backoff: Backoff,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
) {
    let mut w = Writer {
        connector,
        window,
        backoff,
        shared,
        session: None,
        ever_connected: false,
        failures: 0,
        pending: VecDeque::new(),
        in_flight: VecDeque::new(),
        progress_at: Instant::now(),
        refusing: false,
    };
    let mut input_open = true;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while input_open && w.has_room() {
            match rx.try_recv() {
                Ok(msg) => w.pending.push_back(msg),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => input_open = false,
            }
        }
        let idle = w.pending.is_empty() && w.in_flight.is_empty();
        if idle && !input_open {
            break;
        }
        if !idle && w.session.is_none() && !w.connect().await {
            continue;
        }
        if !w.pending.is_empty() && w.in_flight.len() < w.window {
            w.write().await;
            continue;
        }
        // Idle, or the window is full: wait for a message, an answer, or the receiver to go.
        let room = input_open && w.has_room();
        let answer_by = w.progress_at + w.connector.write_timeout;
        let event = match w.session.as_mut() {
            None => Event::Message(rx.recv().await),
            Some(session) => tokio::select! {
                biased;
                read = session.stream.read(&mut buf) => Event::Read(read),
                msg = rx.recv(), if room => Event::Message(msg),
                () = tokio::time::sleep_until(answer_by), if !idle => Event::NoAnswer,
            },
        };
        match event {
            Event::Message(Some(msg)) => w.pending.push_back(msg),
            Event::Message(None) => input_open = false,
            Event::Read(Ok(0)) => w.lost("the receiver closed the connection".into()),
            Event::Read(Ok(n)) => {
                if let Err(reason) = w.received(&buf[..n]) {
                    w.lost(reason);
                }
            }
            Event::Read(Err(e)) => w.lost(format!("connection lost: {e}")),
            Event::NoAnswer => w.lost(format!(
                "no answer for {:?}: the receiver is not answering",
                w.connector.write_timeout
            )),
        }
    }

    if let Some(session) = w.session.take() {
        let mut until = Instant::now() + w.connector.close_timeout;
        if let Some(&deadline) = w.shared.close_by.get() {
            until = until.min(deadline);
        }
        session.close(until).await;
    }
}

impl Writer {
    /// Whether the window has room for another message taken from the queue.
    fn has_room(&self) -> bool {
        self.pending.len() + self.in_flight.len() < self.window
    }

    /// One connection attempt and `open`, after the backoff delay if the last ones failed.
    async fn connect(&mut self) -> bool {
        if self.failures > 1 {
            tokio::time::sleep(self.backoff.delay(self.failures - 1)).await;
        }
        match Session::start(&self.connector).await {
            Ok((session, peer)) => {
                if self.ever_connected {
                    self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                self.ever_connected = true;
                self.shared.up(peer);
                self.session = Some(session);
                true
            }
            Err(e) => {
                self.failures += 1;
                self.shared.down(e.to_string());
                false
            }
        }
    }

    /// Writes as many pending messages as the window allows, as one batch.
    async fn write(&mut self) {
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if self.in_flight.is_empty() {
            self.progress_at = Instant::now();
        }
        let mut batch = BytesMut::new();
        while self.in_flight.len() < self.window && batch.len() < BATCH_BYTES {
            let Some(msg) = self.pending.pop_front() else {
                break;
            };
            let txnr = session.next_txnr;
            session.next_txnr = next_txnr(txnr);
            let start = batch.len();
            // Writing into a BytesMut cannot fail.
            let _ = write!(batch, "{txnr} syslog {} ", msg.len());
            batch.put_slice(&msg);
            batch.put_u8(b'\n');
            self.in_flight.push_back(InFlight {
                txnr,
                msg,
                frame_len: batch.len() - start,
                answer: None,
            });
        }
        let stream = &mut session.stream;
        let written = tokio::time::timeout(self.connector.write_timeout, async {
            stream.write_all(&batch).await?;
            stream.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.lost(format!("writing failed: {e}")),
            Err(_) => self.lost(format!(
                "nothing written for {:?}: the receiver is not reading",
                self.connector.write_timeout
            )),
        }
    }

    /// Parses what the receiver sent and settles the answered messages, in order.
    fn received(&mut self, bytes: &[u8]) -> Result<(), String> {
        let Some(session) = self.session.as_mut() else {
            return Ok(());
        };
        let mut frames = Vec::new();
        let parsed = session.parser.feed(bytes, &mut frames);
        for f in frames {
            self.frame(f)?;
        }
        parsed
    }

    fn frame(&mut self, f: Frame) -> Result<(), String> {
        match (f.txnr, f.command.as_str()) {
            (0, "serverclose") => {
                return Err("the receiver is closing the session (serverclose)".into())
            }
            // Other hints are advisory (relp.md, "COMMAND SEMANTICS").
            (0, command) => tracing::debug!(command, "ignoring a RELP hint"),
            (txnr, "rsp") => {
                let entry = self
                    .in_flight
                    .iter_mut()
                    .find(|e| e.txnr == txnr && e.answer.is_none())
                    .ok_or_else(|| {
                        format!("the receiver answered transaction {txnr}, which is not waiting")
                    })?;
                entry.answer = Some(match parse_response(&f.data)? {
                    Some(r) if r.code == 200 => Ok(()),
                    Some(r) => Err((r.code, r.text)),
                    None => {
                        return Err(format!(
                            "the receiver sent an empty answer to syslog command {txnr}"
                        ))
                    }
                });
                self.progress_at = Instant::now();
                self.failures = 0;
                self.settle();
            }
            (txnr, command) => {
                return Err(format!(
                    "the receiver sent command {command:?} (transaction {txnr}); only rsp and hints are expected"
                ))
            }
        }
        Ok(())
    }

    /// Counts the answered messages at the front of the window as done.
    fn settle(&mut self) {
        while let Some(answer) = self.in_flight.front().and_then(|e| e.answer.clone()) {
            let Some(e) = self.in_flight.pop_front() else {
                break;
            };
            match answer {
                Ok(()) => {
                    self.refusing = false;
                    self.shared.sent(1, e.frame_len);
                }
                Err((code, text)) => {
                    let destination = &self.shared.destination;
                    if self.refusing {
                        tracing::debug!(%destination, code, %text, "the receiver refused another message");
                    } else {
                        tracing::warn!(%destination, code, %text, "the receiver refused a message; it is not sent again");
                    }
                    self.refusing = true;
                    self.shared
                        .refused(format!("the receiver refused it: rsp {code} {text}"));
                }
            }
        }
    }

    /// The session is gone: everything unanswered is written again on the next one.
    fn lost(&mut self, reason: String) {
        self.session = None;
        self.failures += 1;
        // Answers that came out of order are dropped too: the messages go again, in order.
        while let Some(e) = self.in_flight.pop_back() {
            self.pending.push_front(e.msg);
        }
        self.shared.down(reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Frame>, String> {
        let mut frames = Vec::new();
        Parser::default().feed(input, &mut frames).map(|()| frames)
    }

    fn frame(txnr: u32, command: &str, data: &[u8]) -> Frame {
        Frame {
            txnr,
            command: command.into(),
            data: data.to_vec(),
        }
    }

    /// What librelp's server sends (delivery.md §1): the open answer, message answers, the
    /// close answer with no data, and the serverclose hint.
    #[test]
    fn parses_what_librelp_sends() {
        let open = b"200 OK\nrelp_version=0\nrelp_software=librelp,1.11.0,http://librelp.adiscon.com\ncommands=syslog";
        let mut input = format!("1 rsp {} ", open.len()).into_bytes();
        input.extend_from_slice(open);
        input.extend_from_slice(b"\n2 rsp 6 200 OK\n3 rsp 0\n0 serverclose 0\n");
        let frames = parse_all(&input).unwrap();
        assert_eq!(
            frames,
            vec![
                frame(1, "rsp", open),
                frame(2, "rsp", b"200 OK"),
                frame(3, "rsp", b""),
                frame(0, "serverclose", b""),
            ]
        );
        assert_eq!(check_open(&frames[0].data), Ok(()));
        let ok = parse_response(b"200 OK").unwrap().unwrap();
        assert_eq!((ok.code, ok.text.as_str()), (200, "OK"));
        assert_eq!(parse_response(b"").unwrap(), None);
        let refused = parse_response(b"500 command disabled").unwrap().unwrap();
        assert_eq!(
            (refused.code, refused.text.as_str()),
            (500, "command disabled")
        );
    }

    #[test]
    fn refuses_malformed_frames() {
        for bad in [
            &b"x rsp 6 200 OK\n"[..],
            b"1234567890 rsp 0\n",
            b"1 rsp 1234567890 ",
            b"1 r5p 0\n",
            b"1  rsp 0\n",
            b"1 rsp 0 \n",
            b"1 rsp 6 200 OKx",
            b"1 abcdefghijklmnopqrstuvwxyzabcdefg 0\n",
            b"1 rsp 65537 ",
        ] {
            assert!(
                parse_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        for bad in [&b"20 OK"[..], b"200OK", b"2x0 OK"] {
            assert!(parse_response(bad).is_err());
        }
        assert!(check_open(b"500 error 1 on connect").is_err());
        assert!(check_open(b"200 OK\nrelp_version=0\ncommands=eventlog").is_err());
        assert!(check_open(b"200 OK\ncommands=syslog").is_err());
    }

    #[test]
    fn transaction_numbers_wrap_to_one() {
        assert_eq!(next_txnr(1), 2);
        assert_eq!(next_txnr(MAX_TXNR - 1), MAX_TXNR);
        assert_eq!(next_txnr(MAX_TXNR), 1);
    }

    fn valid_frame() -> impl Strategy<Value = Frame> {
        (
            0u32..=MAX_TXNR,
            "[a-zA-Z]{1,32}",
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(txnr, command, data)| Frame {
                txnr,
                command,
                data,
            })
    }

    fn encode(f: &Frame) -> Vec<u8> {
        let mut out = format!("{} {} {}", f.txnr, f.command, f.data.len()).into_bytes();
        if !f.data.is_empty() {
            out.push(b' ');
            out.extend_from_slice(&f.data);
        }
        out.push(b'\n');
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        /// Arbitrary bytes, fed in arbitrary pieces: no panic, and the parser holds no more than
        /// one frame's bounded data whatever it is fed.
        #[test]
        fn arbitrary_bytes_never_panic_or_grow(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut parser = Parser::default();
            let mut frames = Vec::new();
            let mut rest = &bytes[..];
            for cut in cuts {
                let (piece, tail) = rest.split_at(cut % (rest.len() + 1));
                rest = tail;
                if parser.feed(piece, &mut frames).is_err() {
                    return Ok(());
                }
                prop_assert!(parser.data.capacity() <= MAX_RESPONSE_DATA);
                prop_assert!(parser.command.len() <= MAX_COMMAND);
            }
            let _ = parser.feed(rest, &mut frames);
            prop_assert!(frames.len() <= bytes.len() / 6);
            for f in &frames {
                let _ = parse_response(&f.data);
                let _ = check_open(&f.data);
            }
        }

        /// Valid frames, concatenated and split anywhere, come out exactly as they went in.
        #[test]
        fn valid_frames_split_anywhere_round_trip(
            want in proptest::collection::vec(valid_frame(), 1..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..20),
        ) {
            let input: Vec<u8> = want.iter().flat_map(encode).collect();
            let mut parser = Parser::default();
            let mut got = Vec::new();
            let mut rest = &input[..];
            for cut in cuts {
                let (piece, tail) = rest.split_at(cut % (rest.len() + 1));
                rest = tail;
                parser.feed(piece, &mut got).unwrap();
            }
            parser.feed(rest, &mut got).unwrap();
            prop_assert_eq!(got, want);
        }

        /// Any response text parses without panicking, and well-formed ones keep their code.
        #[test]
        fn responses_parse_without_panic(code in 100u16..1000, text in ".{0,300}", tail in proptest::collection::vec(any::<u8>(), 0..100)) {
            let mut data = format!("{code} {text}").into_bytes();
            let well_formed = !data.contains(&b'\n');
            data.push(b'\n');
            data.extend_from_slice(&tail);
            let r = parse_response(&data);
            if well_formed {
                let r = r.unwrap().unwrap();
                prop_assert_eq!(r.code, code);
                prop_assert!(r.text.chars().count() <= MAX_TEXT);
            }
        }
    }
}
