//! A real SMTP server for the notification tests, on 127.0.0.1 and a free port: RFC 5321
//! sessions, STARTTLS (RFC 3207) or implicit TLS (RFC 8314) with the test [`Pki`], AUTH PLAIN
//! and LOGIN (RFC 4954, RFC 4616), and a switch that makes it fail for a while (421 at the
//! greeting, 451 after the message, or no listener at all) and then recover on the same port.
//!
//! It runs on its own thread with its own tokio runtime, so that it keeps answering while a
//! test blocks (waiting for a child process, say) or runs a current-thread runtime.
//!
//! [`parse_message`] takes a received message apart (unfolded headers with RFC 2047 words
//! decoded, the text/plain and text/html parts of a multipart message decoded from
//! quoted-printable or base64) so that tests can assert on what a reader would see.
#![allow(dead_code)] // each test file uses a different part

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine as _;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

use super::Pki;

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512 octets; AUTH lines may be
/// longer, RFC 4954 §4).
const MAX_COMMAND: usize = 16 * 1024;
/// Largest message accepted (advertised as SIZE).
const MAX_MESSAGE: usize = 20 * 1024 * 1024;
/// How long a session may stay silent before the server hangs up.
const IDLE: Duration = Duration::from_secs(60);

/// How the server speaks TLS.
#[derive(Clone, Copy)]
pub enum SmtpTls<'a> {
    /// Plain SMTP only.
    None,
    /// Plain at first; STARTTLS upgrades with this PKI's server certificate.
    StartTls(&'a Pki),
    /// TLS from the first byte (port 465 style) with this PKI's server certificate.
    Implicit(&'a Pki),
}

/// What [`SmtpServer::start`] sets up.
pub struct SmtpOptions<'a> {
    pub tls: SmtpTls<'a>,
    /// User name and password; when set, MAIL needs a successful AUTH first (530 otherwise).
    pub auth: Option<(String, String)>,
    /// AUTH is advertised and accepted only on a TLS session (538 otherwise, RFC 4954 §6).
    pub require_tls_before_auth: bool,
}

impl Default for SmtpOptions<'_> {
    fn default() -> Self {
        SmtpOptions {
            tls: SmtpTls::None,
            auth: None,
            require_tls_before_auth: false,
        }
    }
}

/// What the server does with the next connections and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A working server.
    Accept,
    /// Greets with `421 4.3.2` and closes (a server going down, RFC 5321 §3.8).
    TempFail,
    /// Takes the whole message, then answers `451 4.3.0` and keeps nothing.
    TempFailAtData,
    /// No listener: connections are refused. Sessions already open are cut.
    Closed,
}

/// One message the server accepted (answered 250 to its final dot).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The reverse-path of MAIL FROM, without the angle brackets (`""` for `<>`).
    pub mail_from: String,
    /// Every RCPT TO forward-path, in order, without the angle brackets.
    pub rcpt_to: Vec<String>,
    /// The message as sent, dot-unstuffed, with its CRLF line ends, without the final `.`.
    pub data: Vec<u8>,
    /// The user name of a successful AUTH in this session.
    pub authenticated_as: Option<String>,
    /// True if the session was encrypted (STARTTLS or implicit TLS) when the message came.
    pub tls: bool,
    /// The name the client gave in EHLO or HELO.
    pub helo: String,
}

impl Received {
    /// The message taken apart; see [`parse_message`].
    pub fn parsed(&self) -> Parsed {
        parse_message(&self.data)
    }
}

#[derive(Default)]
struct State {
    mode: Option<Mode>,
    messages: Vec<Received>,
    connections: u64,
    auth_failures: u64,
    temp_failures: u64,
    /// Every command line received, in order, AUTH payloads replaced by `***`.
    commands: Vec<String>,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().expect("SMTP server state lock")
}

enum Control {
    Mode(Mode, std::sync::mpsc::Sender<()>),
    Stop,
}

/// A running SMTP server; stopped (listener and sessions dropped) on drop.
pub struct SmtpServer {
    port: u16,
    state: Shared,
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Config {
    tls: Option<TlsAcceptor>,
    implicit: bool,
    auth: Option<(String, String)>,
    require_tls_before_auth: bool,
}

/// A TLS acceptor with `pki`'s server certificate (also used by the webhook receiver).
pub fn tls_acceptor(pki: &Pki) -> TlsAcceptor {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&pki.cert)
        .expect("read the test server certificate")
        .collect::<Result<_, _>>()
        .expect("parse the test server certificate");
    let key = PrivateKeyDer::from_pem_file(&pki.key).expect("read the test server key");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS server config");
    TlsAcceptor::from(Arc::new(config))
}

/// Binds 127.0.0.1:`port` (0: any free port) with SO_REUSEADDR, so that the same port can be
/// bound again right after [`Mode::Closed`].
fn bind(port: u16) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(128)
}

impl SmtpServer {
    /// Starts the server and returns once it listens.
    pub fn start(options: SmtpOptions<'_>) -> SmtpServer {
        let (tls, implicit) = match options.tls {
            SmtpTls::None => (None, false),
            SmtpTls::StartTls(pki) => (Some(tls_acceptor(pki)), false),
            SmtpTls::Implicit(pki) => (Some(tls_acceptor(pki)), true),
        };
        let config = Arc::new(Config {
            tls,
            implicit,
            auth: options.auth,
            require_tls_before_auth: options.require_tls_before_auth,
        });
        let state: Shared = Arc::new(Mutex::new(State {
            mode: Some(Mode::Accept),
            ..State::default()
        }));
        let (control, mut commands) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("smtp-test-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("SMTP server runtime");
                runtime.block_on(async move {
                    let listener = bind(0).expect("bind the SMTP server on 127.0.0.1");
                    let port = listener.local_addr().expect("SMTP server address").port();
                    let mut accept = Some(tokio::spawn(accept_loop(
                        listener,
                        config.clone(),
                        thread_state.clone(),
                    )));
                    ready_tx.send(port).expect("report the SMTP port");
                    while let Some(command) = commands.recv().await {
                        match command {
                            Control::Mode(mode, done) => {
                                lock(&thread_state).mode = Some(mode);
                                match (mode, accept.is_some()) {
                                    (Mode::Closed, true) => {
                                        if let Some(task) = accept.take() {
                                            task.abort();
                                            // Wait until the listener and the sessions are gone.
                                            let _ = task.await;
                                        }
                                    }
                                    (Mode::Closed, false) | (_, true) => {}
                                    (_, false) => {
                                        let listener = bind(port).unwrap_or_else(|e| {
                                            panic!("bind the SMTP server again on {port}: {e}")
                                        });
                                        accept = Some(tokio::spawn(accept_loop(
                                            listener,
                                            config.clone(),
                                            thread_state.clone(),
                                        )));
                                    }
                                }
                                let _ = done.send(());
                            }
                            Control::Stop => break,
                        }
                    }
                    if let Some(task) = accept.take() {
                        task.abort();
                        let _ = task.await;
                    }
                });
            })
            .expect("spawn the SMTP server thread");
        let port = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the SMTP server starts");
        SmtpServer {
            port,
            state,
            control,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Switches the mode; when it returns, the listener is gone ([`Mode::Closed`]) or back.
    pub fn set_mode(&self, mode: Mode) {
        let (done, wait) = std::sync::mpsc::channel();
        self.control
            .send(Control::Mode(mode, done))
            .expect("the SMTP server thread runs");
        wait.recv_timeout(Duration::from_secs(10))
            .expect("the SMTP server switches mode");
    }

    pub fn mode(&self) -> Mode {
        lock(&self.state).mode.unwrap_or(Mode::Accept)
    }

    /// The messages accepted so far, in the order of their final 250.
    pub fn messages(&self) -> Vec<Received> {
        lock(&self.state).messages.clone()
    }

    /// TCP connections accepted so far (in every mode but [`Mode::Closed`], which refuses).
    pub fn connections(&self) -> u64 {
        lock(&self.state).connections
    }

    /// AUTH exchanges that ended in 535 (wrong user name or password).
    pub fn auth_failures(&self) -> u64 {
        lock(&self.state).auth_failures
    }

    /// 421 greetings and 451 answers given in the TempFail modes.
    pub fn temp_failures(&self) -> u64 {
        lock(&self.state).temp_failures
    }

    /// Every command line received so far, in order, with AUTH payloads as `***`.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.state).commands.clone()
    }

    /// Waits until at least `n` messages have arrived and returns them all; panics with what
    /// has arrived if they do not within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if tokio::time::Instant::now() > deadline {
                self.timed_out(n, timeout, &messages);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Self::wait_for`] for code outside a tokio runtime.
    pub fn wait_for_blocking(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return messages;
            }
            if std::time::Instant::now() > deadline {
                self.timed_out(n, timeout, &messages);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn timed_out(&self, n: usize, timeout: Duration, messages: &[Received]) -> ! {
        let state = lock(&self.state);
        let mut report = String::new();
        for (i, m) in messages.iter().enumerate() {
            report.push_str(&format!(
                "--- message {i}: from <{}> to {:?}, auth {:?}, tls {}\n{}\n",
                m.mail_from,
                m.rcpt_to,
                m.authenticated_as,
                m.tls,
                String::from_utf8_lossy(&m.data)
            ));
        }
        panic!(
            "the SMTP server got {} of {n} messages within {timeout:?} ({} connections, {} AUTH \
             failures, {} temporary failures, mode {:?}); commands: {:?}\n{report}",
            messages.len(),
            state.connections,
            state.auth_failures,
            state.temp_failures,
            state.mode,
            state.commands,
        );
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.control.send(Control::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, config: Arc<Config>, state: Shared) {
    // Sessions live in this set: aborting the loop (Mode::Closed) drops them too.
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                lock(&state).connections += 1;
                sessions.spawn(session(stream, config.clone(), state.clone()));
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
}

/// Why one pass of [`run`] ended.
enum End {
    /// QUIT, a hang-up, an error or a temporary failure: close.
    Close,
    /// 220 to STARTTLS was written: go on over TLS.
    StartTls,
}

async fn session(stream: TcpStream, config: Arc<Config>, state: Shared) {
    let _ = stream.set_nodelay(true);
    if config.implicit {
        let Some(acceptor) = &config.tls else { return };
        let Ok(Ok(tls)) = tokio::time::timeout(IDLE, acceptor.accept(stream)).await else {
            return;
        };
        let mut reader = BufReader::new(tls);
        let _ = run(&mut reader, &config, &state, true, true).await;
        return;
    }
    let mut reader = BufReader::new(stream);
    if let End::StartTls = run(&mut reader, &config, &state, false, true).await {
        // RFC 3207 §4.2: anything the client sent after STARTTLS before the handshake is
        // not to be used; BufReader::into_inner drops it.
        let Some(acceptor) = &config.tls else { return };
        let stream = reader.into_inner();
        let Ok(Ok(tls)) = tokio::time::timeout(IDLE, acceptor.accept(stream)).await else {
            return;
        };
        let mut reader = BufReader::new(tls);
        // No new greeting after the handshake; the client starts with EHLO.
        let _ = run(&mut reader, &config, &state, true, false).await;
    }
}

/// Reads one line up to and including LF; `None` at the end of the stream, on a timeout or
/// when the line is longer than `max`.
async fn read_line<S: AsyncRead + Unpin>(reader: &mut BufReader<S>, max: usize) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    loop {
        let buf = match tokio::time::timeout(IDLE, reader.fill_buf()).await {
            Ok(Ok(buf)) => buf,
            _ => return None,
        };
        if buf.is_empty() {
            return None;
        }
        let (used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..used]);
        reader.consume(used);
        if line.len() > max {
            return None;
        }
        if done {
            return Some(line);
        }
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

async fn reply<S: AsyncWrite + Unpin>(stream: &mut S, text: &str) -> bool {
    let mut out = text.replace('\n', "\r\n");
    out.push_str("\r\n");
    stream.write_all(out.as_bytes()).await.is_ok() && stream.flush().await.is_ok()
}

/// The address inside `<...>` after `FROM:` or `TO:` (case-insensitive), without parameters.
fn path_argument(args: &str, keyword: &str) -> Option<String> {
    let head = args.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = args[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_string())
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .ok()
}

/// One SMTP conversation on `reader`'s stream until QUIT, a hang-up or STARTTLS.
async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    reader: &mut BufReader<S>,
    config: &Config,
    state: &Shared,
    tls: bool,
    greet: bool,
) -> End {
    macro_rules! say {
        ($text:expr) => {
            if !reply(reader.get_mut(), $text).await {
                return End::Close;
            }
        };
    }
    if greet {
        let mode = lock(state).mode.unwrap_or(Mode::Accept);
        if mode == Mode::TempFail {
            lock(state).temp_failures += 1;
            let _ = reply(
                reader.get_mut(),
                "421 4.3.2 localhost Service not available, closing transmission channel",
            )
            .await;
            return End::Close;
        }
        say!("220 localhost ESMTP defender-bridge test server ready");
    }
    let starttls_offered = config.tls.is_some() && !config.implicit;
    let auth_offered = config.auth.is_some() && (tls || !config.require_tls_before_auth);

    let mut helo: Option<String> = None;
    let mut authenticated: Option<String> = None;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();

    loop {
        let Some(raw) = read_line(reader, MAX_COMMAND).await else {
            return End::Close;
        };
        let line = String::from_utf8_lossy(trim_eol(&raw)).into_owned();
        let (verb, args) = match line.split_once(' ') {
            Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
            None => (line.trim().to_ascii_uppercase(), String::new()),
        };
        lock(state).commands.push(if verb == "AUTH" {
            match args.split_once(' ') {
                Some((mechanism, _)) => format!("AUTH {mechanism} ***"),
                None => line.clone(),
            }
        } else {
            line.clone()
        });
        match verb.as_str() {
            "EHLO" | "HELO" => {
                if args.is_empty() {
                    say!("501 5.5.4 Syntax: EHLO hostname");
                    continue;
                }
                helo = Some(args.clone());
                mail_from = None;
                rcpt_to.clear();
                if verb == "HELO" {
                    say!(&format!("250 localhost greets {args}"));
                    continue;
                }
                let mut lines = vec![
                    format!("localhost greets {args}"),
                    format!("SIZE {MAX_MESSAGE}"),
                    "8BITMIME".to_string(),
                    "SMTPUTF8".to_string(),
                    "ENHANCEDSTATUSCODES".to_string(),
                ];
                if starttls_offered && !tls {
                    lines.push("STARTTLS".into());
                }
                if auth_offered {
                    lines.push("AUTH PLAIN LOGIN".into());
                }
                let last = lines.len() - 1;
                let text: Vec<String> = lines
                    .iter()
                    .enumerate()
                    .map(|(i, l)| format!("250{}{l}", if i == last { ' ' } else { '-' }))
                    .collect();
                say!(&text.join("\n"));
            }
            "STARTTLS" => {
                if !starttls_offered || tls {
                    say!("502 5.5.1 STARTTLS not available");
                } else if !args.is_empty() {
                    say!("501 5.5.4 Syntax: STARTTLS");
                } else {
                    say!("220 2.0.0 Ready to start TLS");
                    return End::StartTls;
                }
            }
            "AUTH" => {
                if config.auth.is_none() {
                    say!("502 5.5.1 AUTH not available");
                    continue;
                }
                if !auth_offered {
                    say!("538 5.7.11 Encryption required for requested authentication mechanism");
                    continue;
                }
                if helo.is_none() {
                    say!("503 5.5.1 EHLO first");
                    continue;
                }
                if authenticated.is_some() {
                    say!("503 5.5.1 Already authenticated");
                    continue;
                }
                if mail_from.is_some() {
                    say!("503 5.5.1 AUTH not permitted during a mail transaction");
                    continue;
                }
                let (mechanism, initial) = match args.split_once(' ') {
                    Some((m, i)) => (m.to_ascii_uppercase(), Some(i.trim().to_string())),
                    None => (args.to_ascii_uppercase(), None),
                };
                // Reads one client response to a 334 challenge; `*` cancels (RFC 4954 §4).
                macro_rules! response {
                    ($challenge:expr) => {{
                        say!(&format!("334 {}", $challenge));
                        let Some(raw) = read_line(reader, MAX_COMMAND).await else {
                            return End::Close;
                        };
                        let text = String::from_utf8_lossy(trim_eol(&raw)).into_owned();
                        lock(state).commands.push("***".into());
                        if text == "*" {
                            say!("501 5.7.0 Authentication cancelled");
                            continue;
                        }
                        text
                    }};
                }
                let (user, password) = match mechanism.as_str() {
                    "PLAIN" => {
                        let encoded = match initial {
                            // "=" is an empty initial response (RFC 4954 §4).
                            Some(i) if i == "=" => String::new(),
                            Some(i) => i,
                            None => response!(""),
                        };
                        let Some(decoded) = unb64(&encoded) else {
                            say!("501 5.5.2 Cannot decode the response");
                            continue;
                        };
                        // authzid NUL authcid NUL passwd (RFC 4616 §2).
                        let fields: Vec<&[u8]> = decoded.split(|&b| b == 0).collect();
                        if fields.len() != 3 {
                            say!("501 5.5.2 Malformed PLAIN response");
                            continue;
                        }
                        (
                            String::from_utf8_lossy(fields[1]).into_owned(),
                            String::from_utf8_lossy(fields[2]).into_owned(),
                        )
                    }
                    "LOGIN" => {
                        let user = match initial {
                            Some(i) => i,
                            None => response!(b64("Username:")),
                        };
                        let password = response!(b64("Password:"));
                        match (unb64(&user), unb64(&password)) {
                            (Some(u), Some(p)) => (
                                String::from_utf8_lossy(&u).into_owned(),
                                String::from_utf8_lossy(&p).into_owned(),
                            ),
                            _ => {
                                say!("501 5.5.2 Cannot decode the response");
                                continue;
                            }
                        }
                    }
                    _ => {
                        say!("504 5.5.4 Unrecognized authentication type");
                        continue;
                    }
                };
                let right = config
                    .auth
                    .as_ref()
                    .is_some_and(|(u, p)| *u == user && *p == password);
                if right {
                    authenticated = Some(user);
                    say!("235 2.7.0 Authentication successful");
                } else {
                    lock(state).auth_failures += 1;
                    say!("535 5.7.8 Authentication credentials invalid");
                }
            }
            "MAIL" => {
                if helo.is_none() {
                    say!("503 5.5.1 EHLO first");
                } else if config.auth.is_some() && authenticated.is_none() {
                    say!("530 5.7.0 Authentication required");
                } else if mail_from.is_some() {
                    say!("503 5.5.1 Nested MAIL command");
                } else if let Some(from) = path_argument(&args, "FROM:") {
                    mail_from = Some(from);
                    rcpt_to.clear();
                    say!("250 2.1.0 Ok");
                } else {
                    say!("501 5.5.4 Syntax: MAIL FROM:<address>");
                }
            }
            "RCPT" => {
                if mail_from.is_none() {
                    say!("503 5.5.1 MAIL first");
                } else if let Some(to) = path_argument(&args, "TO:") {
                    if to.is_empty() {
                        say!("501 5.1.3 Empty recipient");
                    } else {
                        rcpt_to.push(to);
                        say!("250 2.1.5 Ok");
                    }
                } else {
                    say!("501 5.5.4 Syntax: RCPT TO:<address>");
                }
            }
            "DATA" => {
                if mail_from.is_none() {
                    say!("503 5.5.1 MAIL first");
                    continue;
                }
                if rcpt_to.is_empty() {
                    say!("554 5.5.1 No valid recipients");
                    continue;
                }
                say!("354 End data with <CR><LF>.<CR><LF>");
                let mut data = Vec::new();
                let mut too_big = false;
                loop {
                    let Some(raw) = read_line(reader, MAX_MESSAGE).await else {
                        return End::Close;
                    };
                    if raw == b".\r\n" || raw == b".\n" {
                        break;
                    }
                    // Dot-unstuffing (RFC 5321 §4.5.2).
                    let line = raw.strip_prefix(b".").unwrap_or(&raw);
                    if data.len() + line.len() > MAX_MESSAGE {
                        too_big = true;
                    } else {
                        data.extend_from_slice(line);
                    }
                }
                let from = mail_from.take().unwrap_or_default();
                let to = std::mem::take(&mut rcpt_to);
                if too_big {
                    say!("552 5.3.4 Message size exceeds fixed maximum message size");
                    continue;
                }
                let accepted = {
                    let mut s = lock(state);
                    if s.mode == Some(Mode::TempFailAtData) {
                        s.temp_failures += 1;
                        false
                    } else {
                        s.messages.push(Received {
                            mail_from: from,
                            rcpt_to: to,
                            data,
                            authenticated_as: authenticated.clone(),
                            tls,
                            helo: helo.clone().unwrap_or_default(),
                        });
                        true
                    }
                };
                if accepted {
                    say!("250 2.0.0 Ok: queued");
                } else {
                    say!("451 4.3.0 Temporary failure, try again later");
                }
            }
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                say!("250 2.0.0 Ok");
            }
            "NOOP" => say!("250 2.0.0 Ok"),
            "VRFY" => say!("252 2.5.0 Cannot VRFY user"),
            "HELP" => say!("214 2.0.0 See RFC 5321"),
            "QUIT" => {
                let _ = reply(reader.get_mut(), "221 2.0.0 Bye").await;
                let _ = reader.get_mut().shutdown().await;
                return End::Close;
            }
            _ => say!("500 5.5.2 Command not recognized"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Message parsing
// ---------------------------------------------------------------------------------------------

/// A message as a reader sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// The top-level header fields in order: names as sent, values unfolded (RFC 5322 §2.2.3),
    /// trimmed, with RFC 2047 encoded-words decoded (UTF-8, US-ASCII, ISO-8859-1; B and Q).
    pub headers: Vec<(String, String)>,
    /// The first text/plain part (or the body of a text/plain message), decoded from its
    /// transfer encoding and charset, with CRLF line ends turned into LF. In a multipart
    /// message a part ends where its boundary's CRLF starts (RFC 2046 §5.1.1), so a part comes
    /// back exactly as the sender wrote it. A single-part message keeps every line it was
    /// sent with: from lettre, one more line break than its body (lettre writes CRLF.CRLF
    /// after a message that already ends in CRLF, RFC 5321 §4.1.1.4), two for a top-level
    /// `SinglePart` (which adds a CRLF of its own); none after base64, where they lie outside
    /// the encoded text.
    pub text: Option<String>,
    /// The first text/html part, decoded likewise.
    pub html: Option<String>,
    /// The media type of every leaf part, in order (for a single-part message, its own).
    pub part_types: Vec<String>,
}

impl Parsed {
    /// The value of the first header field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header fields named `name` (case-insensitive), in order.
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Splits a message or a MIME part into its header block and body at the first empty line.
fn split_head_body(data: &[u8]) -> (&[u8], &[u8]) {
    if data.starts_with(b"\r\n") {
        return (&[], &data[2..]);
    }
    if data.starts_with(b"\n") {
        return (&[], &data[1..]);
    }
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\n' {
            if data[i + 1..].starts_with(b"\r\n") {
                return (&data[..i + 1], &data[i + 3..]);
            }
            if data[i + 1..].starts_with(b"\n") {
                return (&data[..i + 1], &data[i + 2..]);
            }
        }
        i += 1;
    }
    (data, &[])
}

/// Header fields, unfolded, values trimmed but not decoded.
fn raw_headers(head: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(head);
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // Unfolding removes the CRLF only; the white space stays (RFC 5322 §2.2.3).
            if let Some((_, value)) = fields.last_mut() {
                value.push_str(line);
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            fields.push((name.trim().to_string(), value.to_string()));
        }
    }
    fields
        .into_iter()
        .map(|(n, v)| (n, v.trim().to_string()))
        .collect()
}

fn charset_decode(bytes: &[u8], charset: &str) -> String {
    match charset.to_ascii_lowercase().as_str() {
        "iso-8859-1" | "latin1" | "iso8859-1" => bytes.iter().map(|&b| b as char).collect(),
        _ => String::from_utf8_lossy(bytes).into_owned(),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Quoted-printable (RFC 2045 §6.7): `=XX` octets, `=` at a line end is a soft break, white
/// space at a line end is dropped; hard line breaks stay as they are.
pub fn decode_quoted_printable(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = lines.len() - 1;
    for (n, raw) in lines.iter().enumerate() {
        let had_cr = raw.ends_with(b"\r");
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let end = line
            .iter()
            .rposition(|&b| b != b' ' && b != b'\t')
            .map_or(0, |i| i + 1);
        let line = &line[..end];
        let (line, soft) = match line.strip_suffix(b"=") {
            Some(l) => (l, true),
            None => (line, false),
        };
        let mut i = 0;
        while i < line.len() {
            if line[i] == b'=' {
                if let (Some(h), Some(l)) = (
                    line.get(i + 1).copied().and_then(hex),
                    line.get(i + 2).copied().and_then(hex),
                ) {
                    out.push((h << 4) | l);
                    i += 3;
                    continue;
                }
            }
            out.push(line[i]);
            i += 1;
        }
        if n != last && !soft {
            if had_cr {
                out.push(b'\r');
            }
            out.push(b'\n');
        }
    }
    out
}

fn decode_base64(data: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&clean)
        .unwrap_or_else(|e| panic!("a base64 part does not decode: {e}"))
}

/// One RFC 2047 encoded-word `=?charset?enc?text?=` (the `*language` suffix of RFC 2231 is
/// allowed); `None` if `word` is not one or uses an unknown encoding.
fn decode_encoded_word(word: &str) -> Option<String> {
    let inner = word.strip_prefix("=?")?.strip_suffix("?=")?;
    let mut parts = inner.splitn(3, '?');
    let charset = parts.next()?;
    let encoding = parts.next()?;
    let text = parts.next()?;
    if text.contains('?') || text.contains(' ') {
        return None;
    }
    let charset = charset.split('*').next().unwrap_or(charset);
    let bytes = match encoding {
        "B" | "b" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
        "Q" | "q" => {
            let mut out = Vec::new();
            let b = text.as_bytes();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'_' => out.push(b' '),
                    b'=' => {
                        let h = hex(*b.get(i + 1)?)?;
                        let l = hex(*b.get(i + 2)?)?;
                        out.push((h << 4) | l);
                        i += 2;
                    }
                    c => out.push(c),
                }
                i += 1;
            }
            out
        }
        _ => return None,
    };
    Some(charset_decode(&bytes, charset))
}

/// Decodes every RFC 2047 encoded-word in a header value; white space between two adjacent
/// encoded-words is dropped (RFC 2047 §6.2).
pub fn decode_header_value(value: &str) -> String {
    let mut out = String::new();
    let mut pending_space = String::new();
    let mut last_was_word = false;
    let mut rest = value;
    while !rest.is_empty() {
        let ws_len = rest.len() - rest.trim_start_matches([' ', '\t']).len();
        if ws_len > 0 {
            pending_space.push_str(&rest[..ws_len]);
            rest = &rest[ws_len..];
            continue;
        }
        let token_len = rest.find([' ', '\t']).unwrap_or(rest.len());
        let token = &rest[..token_len];
        rest = &rest[token_len..];
        match decode_encoded_word(token) {
            Some(decoded) => {
                if !last_was_word {
                    out.push_str(&pending_space);
                }
                out.push_str(&decoded);
                last_was_word = true;
            }
            None => {
                out.push_str(&pending_space);
                out.push_str(token);
                last_was_word = false;
            }
        }
        pending_space.clear();
    }
    out.push_str(&pending_space);
    out
}

/// A Content-Type value: the media type lowercased and its parameters (names lowercased,
/// quoted values unquoted).
fn content_type(value: &str) -> (String, Vec<(String, String)>) {
    let mut parts = value.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let mut params = Vec::new();
    for p in parts {
        if let Some((name, v)) = p.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            params.push((name.trim().to_ascii_lowercase(), v.to_string()));
        }
    }
    (media, params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The bodies between `--boundary` delimiter lines (RFC 2046 §5.1.1): the CRLF before each
/// delimiter belongs to the delimiter; preamble and epilogue are dropped.
fn multipart_bodies<'a>(body: &'a [u8], boundary: &str) -> Vec<&'a [u8]> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut start: Option<usize> = None;
    let mut pos = 0;
    while pos <= body.len() {
        let line_end = body[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(body.len(), |i| pos + i + 1);
        let line = trim_eol(&body[pos..line_end]);
        let line = {
            let end = line
                .iter()
                .rposition(|&b| b != b' ' && b != b'\t')
                .map_or(0, |i| i + 1);
            &line[..end]
        };
        let is_close = line == format!("{delimiter}--").as_bytes();
        if line == delimiter.as_bytes() || is_close {
            if let Some(s) = start {
                // Drop the line break that precedes the delimiter.
                let mut end = pos;
                if end > s && body[end - 1] == b'\n' {
                    end -= 1;
                    if end > s && body[end - 1] == b'\r' {
                        end -= 1;
                    }
                }
                parts.push(&body[s..end.max(s)]);
            }
            if is_close {
                break;
            }
            start = Some(line_end);
        }
        if line_end >= body.len() {
            break;
        }
        pos = line_end;
    }
    parts
}

fn walk(entity: &[u8], default_type: &str, out: &mut Parsed) {
    let (head, body) = split_head_body(entity);
    let headers = raw_headers(head);
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    let (media, params) = content_type(get("Content-Type").unwrap_or(default_type));
    if media.starts_with("multipart/") {
        let boundary = param(&params, "boundary")
            .unwrap_or_else(|| panic!("{media} without a boundary"))
            .to_string();
        // RFC 2046 §5.1.5: parts of multipart/digest default to message/rfc822.
        let child_default = if media == "multipart/digest" {
            "message/rfc822"
        } else {
            "text/plain; charset=us-ascii"
        };
        for part in multipart_bodies(body, &boundary) {
            walk(part, child_default, out);
        }
        return;
    }
    out.part_types.push(media.clone());
    let encoding = get("Content-Transfer-Encoding")
        .unwrap_or("7bit")
        .trim()
        .to_ascii_lowercase();
    let decoded = match encoding.as_str() {
        "quoted-printable" => decode_quoted_printable(body),
        "base64" => decode_base64(body),
        _ => body.to_vec(),
    };
    let charset = param(&params, "charset").unwrap_or("us-ascii");
    let text = || charset_decode(&decoded, charset).replace("\r\n", "\n");
    match media.as_str() {
        "text/plain" if out.text.is_none() => out.text = Some(text()),
        "text/html" if out.html.is_none() => out.html = Some(text()),
        _ => {}
    }
}

/// Takes a message apart; see [`Parsed`]. Panics on a multipart type without a boundary or a
/// base64 part that does not decode: a test should see that, not an empty part.
pub fn parse_message(data: &[u8]) -> Parsed {
    let (head, _) = split_head_body(data);
    let mut parsed = Parsed {
        headers: raw_headers(head)
            .into_iter()
            .map(|(n, v)| {
                let v = decode_header_value(&v);
                (n, v)
            })
            .collect(),
        ..Parsed::default()
    };
    walk(data, "text/plain; charset=us-ascii", &mut parsed);
    parsed
}
