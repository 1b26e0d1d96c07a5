//! A real HTTP/1.1 webhook receiver for the notification tests (hyper on 127.0.0.1 and a free
//! port, plain or TLS with the test [`Pki`]): it records every request as received (method,
//! path, headers, body bytes; nothing decompressed) and answers from a script, one reply per
//! request in order, the last one repeating: a status and body, an answer after a delay, or a
//! connection dropped without an answer.
//!
//! Like [`super::smtp::SmtpServer`] it runs on its own thread and runtime, so it answers while
//! a test blocks or runs a current-thread runtime.
#![allow(dead_code)] // each test file uses a different part

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body as _, Incoming};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use super::Pki;

/// How the server answers one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// This status with this body (`text/plain; charset=utf-8`).
    Status(u16, &'static str),
    /// This status, these extra header fields (e.g. `Retry-After`) and this body.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Waits this long, then answers `200 ok` (a receiver that is slow, for timeouts).
    Hang(Duration),
    /// Reads the whole request, then drops the connection without a byte of answer.
    Close,
}

/// One request as the server received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// Path and query, as in the request line.
    pub path: String,
    /// Header fields in order, names lowercased (HTTP/1.1 names are case-insensitive), values
    /// as sent (lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// The body as received: de-chunked if `Transfer-Encoding: chunked`, never decompressed.
    pub body: Vec<u8>,
    /// The `Content-Encoding` header, if any: then `body` is still compressed.
    pub content_encoding: Option<String>,
    /// The reply the script chose for this request.
    pub reply: Reply,
    /// Which connection (numbered from 0 in accept order) carried the request.
    pub connection: u64,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8; panics if it is not.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("the request body is UTF-8")
    }

    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "the request body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

#[derive(Default)]
struct State {
    script: Vec<Reply>,
    next: usize,
    requests: Vec<Request>,
    connections: u64,
}

type Shared = Arc<Mutex<State>>;

fn lock(state: &Shared) -> MutexGuard<'_, State> {
    state.lock().expect("webhook server state lock")
}

/// A running receiver; stopped on drop.
pub struct WebhookServer {
    port: u16,
    tls: bool,
    state: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// tokio's IO as hyper's (hyper 1 has its own Read/Write traits).
struct Io<T>(T);

impl<T: AsyncRead + Unpin> hyper::rt::Read for Io<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut tmp = vec![0u8; buf.remaining().min(64 * 1024)];
        let mut read = tokio::io::ReadBuf::new(&mut tmp);
        match Pin::new(&mut self.0).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                buf.put_slice(read.filled());
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<T: AsyncWrite + Unpin> hyper::rt::Write for Io<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl WebhookServer {
    /// A plain HTTP receiver answering from `script` (at least one reply).
    pub fn start(script: Vec<Reply>) -> WebhookServer {
        Self::spawn(script, None)
    }

    /// An HTTPS receiver with `pki`'s server certificate (127.0.0.1 and localhost).
    pub fn start_tls(script: Vec<Reply>, pki: &Pki) -> WebhookServer {
        Self::spawn(script, Some(super::smtp::tls_acceptor(pki)))
    }

    fn spawn(script: Vec<Reply>, tls: Option<tokio_rustls::TlsAcceptor>) -> WebhookServer {
        assert!(!script.is_empty(), "a webhook script needs a reply");
        let is_tls = tls.is_some();
        let state: Shared = Arc::new(Mutex::new(State {
            script,
            ..State::default()
        }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("webhook-test-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("webhook server runtime");
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind the webhook server on 127.0.0.1");
                    let port = listener.local_addr().expect("webhook address").port();
                    ready_tx.send(port).expect("report the webhook port");
                    let mut connections = tokio::task::JoinSet::new();
                    let mut stopped = stopped;
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let _ = stream.set_nodelay(true);
                                let number = {
                                    let mut s = lock(&thread_state);
                                    s.connections += 1;
                                    s.connections - 1
                                };
                                let state = thread_state.clone();
                                let tls = tls.clone();
                                connections.spawn(async move {
                                    match tls {
                                        None => serve(stream, state, number).await,
                                        Some(acceptor) => {
                                            if let Ok(Ok(stream)) = tokio::time::timeout(
                                                Duration::from_secs(30),
                                                acceptor.accept(stream),
                                            )
                                            .await
                                            {
                                                serve(stream, state, number).await;
                                            }
                                        }
                                    }
                                });
                            }
                            Some(_) = connections.join_next(), if !connections.is_empty() => {}
                        }
                    }
                });
            })
            .expect("spawn the webhook server thread");
        let port = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the webhook server starts");
        WebhookServer {
            port,
            tls: is_tls,
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/path` (`https://localhost:PORT/path` for [`Self::start_tls`],
    /// the name the certificate is for besides the address). `path` starts with `/`.
    pub fn url(&self, path: &str) -> String {
        assert!(
            path.starts_with('/'),
            "a webhook path starts with /: {path}"
        );
        if self.tls {
            format!("https://localhost:{}{path}", self.port)
        } else {
            format!("http://127.0.0.1:{}{path}", self.port)
        }
    }

    /// Every request received so far, in order of arrival.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.state).requests.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        lock(&self.state).connections
    }

    /// Replaces the script; the next request gets its first reply.
    pub fn set_script(&self, script: Vec<Reply>) {
        assert!(!script.is_empty(), "a webhook script needs a reply");
        let mut s = lock(&self.state);
        s.script = script;
        s.next = 0;
    }

    /// Waits until at least `n` requests have arrived and returns them all; panics with what
    /// has arrived if they do not within `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if tokio::time::Instant::now() > deadline {
                self.timed_out(n, timeout, &requests);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Self::wait_for`] for code outside a tokio runtime.
    pub fn wait_for_blocking(&self, n: usize, timeout: Duration) -> Vec<Request> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= n {
                return requests;
            }
            if std::time::Instant::now() > deadline {
                self.timed_out(n, timeout, &requests);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn timed_out(&self, n: usize, timeout: Duration, requests: &[Request]) -> ! {
        let mut report = String::new();
        for (i, r) in requests.iter().enumerate() {
            report.push_str(&format!(
                "--- request {i}: {} {} -> {:?}\n{:?}\n{}\n",
                r.method,
                r.path,
                r.reply,
                r.headers,
                String::from_utf8_lossy(&r.body)
            ));
        }
        panic!(
            "the webhook server got {} of {n} requests within {timeout:?} ({} connections)\n{report}",
            requests.len(),
            self.connections()
        );
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads a request body to its end.
async fn collect(mut body: Incoming) -> Result<Vec<u8>, hyper::Error> {
    let mut out = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

fn response(status: u16, headers: &[(String, String)], body: String) -> hyper::Response<String> {
    let mut builder = hyper::Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8");
    for (name, value) in headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(body)
        .unwrap_or_else(|e| panic!("a webhook reply with status {status}: {e}"))
}

/// Serves one connection; a [`Reply::Close`] drops it (and whatever it was doing).
async fn serve<T>(stream: T, state: Shared, connection: u64)
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (kill, killed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut killed = killed;
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let state = state.clone();
        let kill = kill.clone();
        async move {
            let method = request.method().to_string();
            let path = request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().to_string(), |p| p.to_string());
            let headers: Vec<(String, String)> = request
                .headers()
                .iter()
                .map(|(n, v)| {
                    (
                        n.as_str().to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let content_encoding = request
                .headers()
                .get(hyper::header::CONTENT_ENCODING)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let body = match collect(request.into_body()).await {
                Ok(body) => body,
                // A client that went away mid-body: nothing to record or answer.
                Err(_) => std::future::pending().await,
            };
            let reply = {
                let mut s = lock(&state);
                let index = s.next.min(s.script.len() - 1);
                s.next += 1;
                let reply = s.script[index].clone();
                s.requests.push(Request {
                    method,
                    path,
                    headers,
                    body,
                    content_encoding,
                    reply: reply.clone(),
                    connection,
                });
                reply
            };
            let answer = match reply {
                Reply::Status(status, body) => response(status, &[], body.to_string()),
                Reply::Full {
                    status,
                    headers,
                    body,
                } => response(status, &headers, body),
                Reply::Hang(delay) => {
                    tokio::time::sleep(delay).await;
                    response(200, &[], "ok".into())
                }
                Reply::Close => {
                    let _ = kill.send(());
                    std::future::pending().await
                }
            };
            Ok::<_, Infallible>(answer)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(Io(stream), service);
    tokio::select! {
        _ = connection => {}
        // Dropping the connection future drops the socket: the client sees the connection
        // closed with no answer.
        _ = killed.recv() => {}
    }
}
