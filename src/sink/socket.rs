//! The TCP socket under a `tcp://` or `tls://` connection: the options that make a silently
//! dropped connection fail within seconds, and how much of what was written the receiver's TCP
//! has acknowledged.
//!
//! A write returns once the bytes are in the kernel's send queue, long before the receiver has
//! them; a connection that breaks then loses the queue. So [`Socket`] counts the bytes written to
//! the socket (for TLS these are the TLS records, not the messages), and [`Socket::acked`]
//! subtracts what the kernel still holds (`SIOCOUTQ`, tcp(7): sent but unacknowledged plus not
//! yet sent). DESIGN.md, "delivered": for TCP/TLS, written and drained from the send queue.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// TCP keepalive and `TCP_USER_TIMEOUT` of every TCP and TLS connection.
///
/// Without them a connection that a firewall or NAT dropped silently looks alive: writes go into
/// the send queue, are retransmitted for ~15 minutes (`tcp_retries2`), and an idle connection is
/// never probed at all. The defaults notice a dead receiver within about 30 s: an idle connection
/// is probed after 15 s and then every 5 s, and `TCP_USER_TIMEOUT` (30 s) ends a connection whose
/// data or probes have gone unacknowledged that long (it also caps the keepalive probes, tcp(7)).
/// Not shorter: a SIEM that pauses for a few seconds (a failover, a long GC) should not cost a
/// reconnect and the duplicates that re-sending brings. On Linux 5.11 and later the user timeout
/// also ends a connection whose receiver advertised a zero window (stopped reading) that long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Idle time before the first keepalive probe (`TCP_KEEPIDLE`).
    pub keepalive_time: Duration,
    /// Time between unanswered probes (`TCP_KEEPINTVL`).
    pub keepalive_interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub keepalive_retries: u32,
    /// Longest time written data may stay unacknowledged (`TCP_USER_TIMEOUT`, Linux).
    pub user_timeout: Duration,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            keepalive_time: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(5),
            keepalive_retries: 3,
            user_timeout: Duration::from_secs(30),
        }
    }
}

impl Liveness {
    pub(crate) fn validate(&self) -> Result<(), String> {
        // The kernel counts keepalive in whole seconds and refuses 0 (tcp(7)).
        if self.keepalive_time < Duration::from_secs(1)
            || self.keepalive_interval < Duration::from_secs(1)
            || self.keepalive_retries == 0
        {
            return Err(
                "keepalive needs a time and an interval of at least 1 s and at least 1 retry"
                    .into(),
            );
        }
        if self.user_timeout.is_zero() {
            return Err("the TCP user timeout must be above zero".into());
        }
        Ok(())
    }

    fn apply(&self, tcp: &TcpStream) -> io::Result<()> {
        let sock = SockRef::from(tcp);
        let keepalive = TcpKeepalive::new()
            .with_time(self.keepalive_time)
            .with_interval(self.keepalive_interval)
            .with_retries(self.keepalive_retries);
        sock.set_tcp_keepalive(&keepalive)?;
        #[cfg(target_os = "linux")]
        sock.set_tcp_user_timeout(Some(self.user_timeout))?;
        Ok(())
    }
}

/// A connected TCP stream that counts the bytes written to it.
pub(crate) struct Socket {
    tcp: TcpStream,
    written: u64,
}

impl Socket {
    /// Sets the options of a new connection.
    pub fn new(tcp: TcpStream, liveness: &Liveness) -> io::Result<Socket> {
        // We batch ourselves; Nagle would only delay the last partial segment of a batch.
        tcp.set_nodelay(true)?;
        liveness.apply(&tcp)?;
        Ok(Socket { tcp, written: 0 })
    }

    /// Bytes written to the socket since the connection was made.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Bytes written that the receiver's TCP has acknowledged. One `ioctl`.
    pub fn acked(&self) -> io::Result<u64> {
        // After our FIN the queue counts one more (the FIN's sequence number).
        Ok(self.written.saturating_sub(unacked(&self.tcp)?))
    }
}

/// Bytes in the send queue: sent and not acknowledged, or not sent yet.
#[cfg(target_os = "linux")]
fn unacked(tcp: &TcpStream) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut n: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (the same number as TIOCOUTQ, linux/sockios.h) stores one int at the
    // pointer; the descriptor is open for as long as `tcp` is borrowed.
    let r = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Elsewhere there is no portable way to ask: written means handed to the kernel.
#[cfg(not(target_os = "linux"))]
fn unacked(_: &TcpStream) -> io::Result<u64> {
    Ok(0)
}

impl AsyncRead for Socket {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written += n as u64;
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Both ends of a loopback connection.
    async fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (peer, _) = listener.accept().await.unwrap();
        (tcp, peer)
    }

    /// The options are on the socket, as the kernel reports them back (getsockopt).
    #[tokio::test]
    async fn keepalive_and_user_timeout_are_set() {
        let (tcp, _peer) = connected().await;
        let liveness = Liveness {
            keepalive_time: Duration::from_secs(7),
            keepalive_interval: Duration::from_secs(3),
            keepalive_retries: 4,
            user_timeout: Duration::from_millis(12_500),
        };
        let socket = Socket::new(tcp, &liveness).unwrap();
        let sock = SockRef::from(&socket.tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        #[cfg(target_os = "linux")]
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(12_500))
        );
        assert!(sock.tcp_nodelay().unwrap());
    }

    /// `acked` follows what the receiver's TCP has taken: everything once it reads, not more
    /// than was written.
    #[tokio::test]
    async fn acked_counts_what_the_receiver_took() {
        let (tcp, mut peer) = connected().await;
        let mut socket = Socket::new(tcp, &Liveness::default()).unwrap();
        socket.write_all(&[7u8; 100_000]).await.unwrap();
        assert_eq!(socket.written(), 100_000);
        let mut buf = vec![0u8; 100_000];
        peer.read_exact(&mut buf).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while socket.acked().unwrap() < 100_000 {
            assert!(tokio::time::Instant::now() < deadline, "never acknowledged");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(socket.acked().unwrap(), 100_000);
    }
}
