//! `run` under systemd's notify protocol (the unit is `Type=notify` with `WatchdogSec=`): the
//! test plays systemd's part with a datagram socket in NOTIFY_SOCKET.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One tenant whose sign-in host refuses connections (it retries in the background) and one
/// TCP destination that listens but is never read: enough for the daemon to start everything.
fn config(dir: &Path, port: u16) -> std::path::PathBuf {
    let text = format!(
        r#"
state_dir = "{state}"
shutdown_timeout = "2s"

[[tenant]]
name = "contoso"
tenant_id = "aaaaaaaa-0000-4000-8000-000000000001"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = {{ env = "NOTIFY_TEST_SECRET" }}
authority_host = "https://127.0.0.1:1"
api_base_url = "https://127.0.0.1:1"

[[destination]]
url = "tcp://127.0.0.1:{port}"
format = "json"
"#,
        state = dir.join("state").display()
    );
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start(config: &Path, socket: &Path, watchdog_usec: Option<u64>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_defender-bridge"));
    cmd.args(["run", "--config", config.to_str().unwrap()])
        .env("NOTIFY_TEST_SECRET", "secret")
        .env("NOTIFY_SOCKET", socket)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(usec) = watchdog_usec {
        cmd.env("WATCHDOG_USEC", usec.to_string());
    }
    cmd.spawn().unwrap()
}

fn stop(mut child: Child) {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The messages that arrive within `window`.
fn receive(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let end = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break,
            Err(e) => panic!("{e}"),
        }
    }
    got
}

/// Waits for READY=1; returns what came before it.
fn wait_ready(socket: &UnixDatagram) -> Vec<String> {
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut before = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = socket.recv(&mut buf).expect("READY=1 within 30 s");
        let msg = String::from_utf8_lossy(&buf[..n]).trim().to_string();
        if msg == "READY=1" {
            return before;
        }
        before.push(msg);
    }
}

#[test]
fn ready_once_started_then_watchdog_at_half_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = config(dir.path(), receiver.local_addr().unwrap().port());
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();

    // 400 ms: the daemon should feed it every 200 ms.
    let child = start(&config, &path, Some(400_000));
    let before = wait_ready(&socket);
    assert!(before.is_empty(), "sent before READY=1: {before:?}");
    // Ready means the state store is open.
    assert!(dir.path().join("state/queue.redb").exists());
    let fed = receive(&socket, Duration::from_millis(1500));
    let watchdogs = fed.iter().filter(|m| *m == "WATCHDOG=1").count();
    // 7 at 200 ms; fewer on a loaded machine, but clearly more often than the 400 ms interval.
    assert!(
        (4..=9).contains(&watchdogs),
        "{watchdogs} WATCHDOG=1 in 1.5 s: {fed:?}"
    );
    stop(child);
}

#[test]
fn ready_without_watchdog_sends_no_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let config = config(dir.path(), receiver.local_addr().unwrap().port());
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();

    let child = start(&config, &path, None);
    wait_ready(&socket);
    let later = receive(&socket, Duration::from_millis(800));
    assert!(
        !later.iter().any(|m| m == "WATCHDOG=1"),
        "watchdog without WATCHDOG_USEC: {later:?}"
    );
    stop(child);
}

#[test]
fn a_config_that_does_not_load_never_reports_ready() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "no_such_key = 1\n").unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    let mut child = start(&config, &path, Some(400_000));
    let status = child.wait().unwrap();
    assert!(!status.success());
    let got = receive(&socket, Duration::from_millis(200));
    assert!(got.is_empty(), "{got:?}");
}
