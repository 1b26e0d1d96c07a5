//! Test helpers for the sink tests: real syslog receivers (rsyslog, syslog-ng) started on
//! 127.0.0.1 and a free port with their own configuration in a temporary directory, a test
//! PKI made with rcgen, and realistic CEF/LEEF records.
//!
//! The daemons come from `.ci/install-daemons.sh`. Their locations can be overridden with
//! `RSYSLOGD` (default /usr/sbin/rsyslogd) and `SYSLOG_NG_ROOT` (default /opt/syslog-ng, the
//! `dpkg -x` root of syslog-ng-core). A missing daemon fails the test; it is never skipped.
#![allow(dead_code)] // each test file uses a different part

pub mod hec;
pub mod kafka;
pub mod proxy;
pub mod schemas;
pub mod smtp;
pub mod webhook;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tempfile::TempDir;

/// How long a receiver may take to start or to write what was sent.
pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port(proto: Proto) -> u16 {
    match proto {
        Proto::Tcp => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind a TCP port")
            .port(),
        Proto::Udp => std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("bind a UDP port")
            .port(),
    }
}

/// True if a socket listens (TCP) or is bound (UDP) on `port`, read from /proc/net so that
/// probing does not open a session on the receiver.
fn listening(proto: Proto, port: u16) -> bool {
    let (files, state) = match proto {
        Proto::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], "0A"),
        Proto::Udp => (["/proc/net/udp", "/proc/net/udp6"], "07"),
    };
    let suffix = format!(":{port:04X}");
    files.iter().any(|f| {
        std::fs::read_to_string(f)
            .unwrap_or_default()
            .lines()
            .any(|line| {
                let cols: Vec<&str> = line.split_whitespace().collect();
                cols.len() > 3 && cols[1].ends_with(&suffix) && cols[3] == state
            })
    })
}

/// A receiver daemon running in the foreground with its own config; killed on drop.
pub struct Daemon {
    name: &'static str,
    command: Vec<String>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    pub dir: TempDir,
    pub out: PathBuf,
    pub port: u16,
    proto: Proto,
}

impl Daemon {
    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).expect("daemon log");
        let mut cmd = Command::new(&self.command[0]);
        cmd.args(&self.command[1..])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("daemon log"))
            .stderr(log);
        self.child = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.name)),
        );
    }

    /// Starts (again) and waits until the port listens.
    pub async fn start(&mut self) {
        self.spawn();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !listening(self.proto, self.port) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("{} exited with {status}:\n{}", self.name, self.log());
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} does not listen on {}:\n{}",
                    self.name,
                    self.port,
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the daemon (SIGKILL) and waits for it; the port is then closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn output(&self) -> Vec<u8> {
        std::fs::read(&self.out).unwrap_or_default()
    }

    /// Waits until the output file holds at least `len` bytes and returns it.
    pub async fn wait_for_bytes(&self, len: usize) -> Vec<u8> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let out = self.output();
            if out.len() >= len {
                return out;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} wrote {} of {len} bytes within {WAIT:?}:\n{}",
                    self.name,
                    out.len(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the last complete line of the output is `last`, and returns all lines.
    pub async fn wait_for_last_line(&self, last: &[u8]) -> Vec<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let lines = split_lines(&self.output());
            if lines.last().is_some_and(|l| l[..] == *last) {
                return lines;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} did not write the last record within {WAIT:?} ({} lines):\n{}",
                    self.name,
                    lines.len(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the output file holds at least `n` complete lines and returns all lines.
    pub async fn wait_for_lines(&self, n: usize) -> Vec<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let out = self.output();
            let lines = split_lines(&out);
            if lines.len() >= n {
                return lines;
            }
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "{} wrote {} of {n} lines within {WAIT:?}:\n{}",
                    self.name,
                    lines.len(),
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Complete lines (without their LF) of a receiver's output.
pub fn split_lines(out: &[u8]) -> Vec<Vec<u8>> {
    let complete = match out.iter().rposition(|&b| b == b'\n') {
        Some(i) => &out[..=i],
        None => return Vec::new(),
    };
    complete[..complete.len() - 1]
        .split(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn rsyslogd() -> String {
    let path = std::env::var("RSYSLOGD").unwrap_or_else(|_| "/usr/sbin/rsyslogd".into());
    assert!(
        Path::new(&path).exists(),
        "rsyslogd not found at {path}: run .ci/install-daemons.sh (or set RSYSLOGD)"
    );
    path
}

fn syslog_ng_root() -> PathBuf {
    let root =
        PathBuf::from(std::env::var("SYSLOG_NG_ROOT").unwrap_or_else(|_| "/opt/syslog-ng".into()));
    assert!(
        root.join("usr/sbin/syslog-ng").exists(),
        "syslog-ng not found under {}: run .ci/install-daemons.sh (or set SYSLOG_NG_ROOT)",
        root.display()
    );
    root
}

/// rsyslog input kinds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum RsyslogInput {
    /// imtcp: auto-detects LF and octet-counted framing.
    Tcp,
    /// imudp.
    Udp,
    /// imtcp over TLS with the gtls driver (rsyslog-gnutls), server-authenticated only:
    /// CA file, certificate, key.
    Tls {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
    /// imrelp (rsyslog-relp), plain.
    Relp,
    /// imrelp over TLS (`tls="on"`, librelp's default TLS library). imrelp with a certificate
    /// requires one of the client too: mutual TLS, the client's name must be `defender-bridge`
    /// (the name of [`Pki::client`]'s certificate).
    RelpTls {
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
    },
}

/// Starts rsyslogd writing every message's raw bytes plus LF to `out.log`.
/// `%rawmsg%` is the message exactly as received, without framing; control characters are
/// kept (`parser.escapeControlCharactersOnReceive="off"`, formats.md §6) and messages up to
/// 64 KiB are accepted whole.
pub async fn rsyslog(input: RsyslogInput) -> Daemon {
    rsyslog_with(input, "").await
}

/// [`rsyslog`] with a disk main queue that survives SIGKILL: every message is on disk
/// (fsynced, `syncqueuefiles`) before the input hands it on, and imrelp answers only then
/// (delivery.md §1). Restart it with [`Daemon::start`]: the queue files stay in its directory.
pub async fn rsyslog_durable(input: RsyslogInput) -> Daemon {
    rsyslog_with(
        input,
        r#"main_queue(queue.type="Disk" queue.filename="mq" queue.syncqueuefiles="on"
           queue.checkpointInterval="1" queue.saveOnShutdown="on")"#,
    )
    .await
}

async fn rsyslog_with(input: RsyslogInput, extra: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.log");
    let (proto, input_conf) = match input {
        RsyslogInput::Tcp => (
            Proto::Tcp,
            r#"module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="PORT" ruleset="r")"#
                .to_string(),
        ),
        RsyslogInput::Tls { ca, cert, key } => (
            Proto::Tcp,
            format!(
                r#"global(DefaultNetstreamDriver="gtls" DefaultNetstreamDriverCAFile="{}"
       DefaultNetstreamDriverCertFile="{}" DefaultNetstreamDriverKeyFile="{}")
module(load="imtcp" StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon")
input(type="imtcp" address="127.0.0.1" port="PORT" ruleset="r")"#,
                ca.display(),
                cert.display(),
                key.display()
            ),
        ),
        // maxDataSize: imrelp's default is maxMessageSize; oversize frames would be truncated.
        RsyslogInput::Relp => (
            Proto::Tcp,
            r#"module(load="imrelp")
input(type="imrelp" address="127.0.0.1" port="PORT" ruleset="r" maxDataSize="64k")"#
                .to_string(),
        ),
        RsyslogInput::RelpTls { ca, cert, key } => (
            Proto::Tcp,
            format!(
                r#"module(load="imrelp")
input(type="imrelp" address="127.0.0.1" port="PORT" ruleset="r" maxDataSize="64k"
      tls="on" tls.caCert="{}" tls.myCert="{}" tls.myPrivKey="{}"
      tls.authMode="name" tls.permittedPeer=["defender-bridge"])"#,
                ca.display(),
                cert.display(),
                key.display()
            ),
        ),
        // A large receive buffer (SO_RCVBUFFORCE as root): a burst of datagrams must not
        // overflow the socket while rsyslog starts reading.
        RsyslogInput::Udp => (
            Proto::Udp,
            r#"module(load="imudp")
input(type="imudp" address="127.0.0.1" port="PORT" ruleset="r" rcvbufSize="64m")"#
                .to_string(),
        ),
    };
    let port = free_port(proto);
    let conf = format!(
        r#"global(workDirectory="{dir}" maxMessageSize="64k" parser.escapeControlCharactersOnReceive="off")
{extra}
{input}
template(name="raw" type="string" string="%rawmsg%\n")
ruleset(name="r") {{ action(type="omfile" file="{out}" template="raw") }}
"#,
        dir = dir.path().display(),
        input = input_conf.replace("PORT", &port.to_string()),
        out = out.display(),
    );
    let conf_path = dir.path().join("rsyslog.conf");
    std::fs::write(&conf_path, conf).expect("write rsyslog.conf");
    let mut d = Daemon {
        name: "rsyslogd",
        command: vec![
            rsyslogd(),
            "-n".into(),
            "-f".into(),
            conf_path.display().to_string(),
            "-i".into(),
            dir.path().join("rsyslogd.pid").display().to_string(),
        ],
        env: Vec::new(),
        child: None,
        dir,
        out,
        port,
        proto,
    };
    d.start().await;
    d
}

/// Starts syslog-ng with `body` as its configuration after the version line and global
/// options. `body` may use `PORT`, `DIR` and `OUT` (the output file), replaced here.
pub async fn syslog_ng(proto: Proto, body: &str) -> Daemon {
    let root = syslog_ng_root();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out.log");
    let port = free_port(proto);
    let conf = format!(
        "@version: 3.38\noptions {{ log-msg-size(65536); stats-freq(0); }};\n{}\n",
        body.replace("PORT", &port.to_string())
            .replace("DIR", &dir.path().display().to_string())
            .replace("OUT", &out.display().to_string())
    );
    let conf_path = dir.path().join("syslog-ng.conf");
    std::fs::write(&conf_path, conf).expect("write syslog-ng.conf");
    let path = |p: &str| dir.path().join(p).display().to_string();
    let libs = format!(
        "{r}/usr/lib/syslog-ng:{r}/usr/lib/x86_64-linux-gnu:{r}/usr/lib",
        r = root.display()
    );
    let mut d = Daemon {
        name: "syslog-ng",
        command: vec![
            root.join("usr/sbin/syslog-ng").display().to_string(),
            "--foreground".into(),
            "--no-caps".into(),
            format!("--cfgfile={}", conf_path.display()),
            format!(
                "--module-path={}",
                root.join("usr/lib/syslog-ng/3.38").display()
            ),
            format!("--pidfile={}", path("syslog-ng.pid")),
            format!("--persist-file={}", path("syslog-ng.persist")),
            format!("--control={}", path("syslog-ng.ctl")),
        ],
        env: vec![("LD_LIBRARY_PATH".into(), libs)],
        child: None,
        dir,
        out,
        port,
        proto,
    };
    d.start().await;
    d
}

/// A test PKI: a CA and a server certificate for 127.0.0.1 and localhost that it signed,
/// written as PEM files into a temp dir.
pub struct Pki {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
        let (cert, key) = Self::leaf(&ca_cert, &ca_key, "localhost", true);
        let write = |file: &str, pem: &str| {
            let p = dir.path().join(file);
            std::fs::write(&p, pem).expect("write PEM");
            p
        };
        let ca = write("ca.pem", &ca_cert.pem());
        let cert = write("server.pem", &cert);
        let key = write("server.key", &key);
        Pki {
            dir,
            ca,
            cert,
            key,
            ca_cert,
            ca_key,
        }
    }

    fn leaf(
        ca: &rcgen::Certificate,
        ca_key: &rcgen::KeyPair,
        cn: &str,
        server: bool,
    ) -> (String, String) {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, SanType};
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::new(vec![cn.to_string()]).expect("leaf params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let cert = params.signed_by(&key, ca, ca_key).expect("sign leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate and key signed by this CA, for mutual TLS.
    pub fn client(&self) -> (PathBuf, PathBuf) {
        let (cert, key) = Self::leaf(&self.ca_cert, &self.ca_key, "defender-bridge", false);
        let c = self.dir.path().join("client.pem");
        let k = self.dir.path().join("client.key");
        std::fs::write(&c, cert).expect("write client cert");
        std::fs::write(&k, key).expect("write client key");
        (c, k)
    }
}

/// CEF extension escaping (CEF spec ch. 1, formats.md §0 rule 3): `\`, `=`, LF, CR.
pub fn cef_escape_ext(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '=' => s.push_str("\\="),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            c => s.push(c),
        }
    }
    s
}

/// The inverse of [`cef_escape_ext`].
pub fn cef_unescape_ext(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => s.push('\n'),
                Some('r') => s.push('\r'),
                Some(other) => s.push(other),
                None => s.push('\\'),
            }
        } else {
            s.push(c);
        }
    }
    s
}

/// One CEF record's fields, unescaped, as they "went in".
#[derive(Debug, Clone, PartialEq)]
pub struct CefFields {
    pub header: [String; 7],
    pub ext: Vec<(String, String)>,
}

const WORDS: &[&str] = &[
    "Suspicious",
    "PowerShell",
    "command",
    "line",
    "ランサムウェア",
    "の検出",
    "Подозрительный",
    "процесс",
    "可疑的",
    "行为",
    "مشبوه",
    "x=1",
    "C:\\Windows\\System32\\cmd.exe",
    "a|b",
    "line1\nline2",
    "cr\r",
    "🛡️",
    "naïve",
    "über",
    "[brackets]",
    "said:\"quoted\"",
];

fn text(rng: &mut StdRng, target: usize) -> String {
    let mut s = String::new();
    while s.len() < target {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    s.trim().to_string()
}

/// Deterministic CEF-like alerts, each with its sequence number in `externalId`: non-Latin
/// text, `\=`, `\\`, `\n`, `\r` escapes, and a few long `msg`/`cs1` values. `budget` bounds
/// the extension's escaped length so that records stay under a transport's size.
pub fn cef_fields(count: usize, budget: usize, seed: u64) -> Vec<CefFields> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count)
        .map(|i| {
            let long = i % 97 == 0;
            let msg_len = if long {
                budget / 2
            } else {
                rng.random_range(20..300)
            };
            let sev = [1, 3, 5, 8][i % 4];
            let header = [
                "0".to_string(),
                "Microsoft".into(),
                "Microsoft Defender for Endpoint".into(),
                "1.0".into(),
                format!("WindowsDefenderAv-{}", i % 13),
                text(&mut rng, 40)
                    .replace(['|', '\\'], "/")
                    .replace(['\n', '\r'], " "),
                sev.to_string(),
            ];
            let mut ext = vec![
                (
                    "rt".to_string(),
                    (1_764_374_400_000u64 + i as u64).to_string(),
                ),
                ("externalId".into(), format!("da638{i:010}")),
                ("dvchost".into(), format!("host-{}.contoso.local", i % 50)),
                ("suser".into(), "CONTOSO\\alice".into()),
                ("msg".into(), text(&mut rng, msg_len)),
                ("cs1Label".into(), "Recommended action".into()),
                (
                    "cs1".into(),
                    text(&mut rng, if long { budget / 4 } else { 60 }),
                ),
                (
                    "filePath".into(),
                    "C:\\Users\\alice\\AppData\\Local\\Temp\\a=b.ps1".into(),
                ),
            ];
            // Keep the escaped extension within the budget (values end without spaces).
            while ext_text(&ext).len() > budget {
                let (_, v) = ext.iter_mut().find(|(k, _)| k == "msg").unwrap();
                let cut = v
                    .char_indices()
                    .nth(v.chars().count() * 3 / 4)
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                v.truncate(cut);
                *v = v.trim_end().to_string();
                if v.is_empty() {
                    v.push('x');
                }
            }
            CefFields { header, ext }
        })
        .collect()
}

fn ext_text(ext: &[(String, String)]) -> String {
    let mut s = String::new();
    for (k, v) in ext {
        if !s.is_empty() {
            s.push(' ');
        }
        let _ = write!(s, "{k}={}", cef_escape_ext(v));
    }
    s
}

/// An RFC 5424 header (formats.md §3.1) for record `i`.
pub fn syslog5424(i: usize) -> String {
    format!(
        "<134>1 2026-11-29T00:{:02}:{:02}.{:06}Z bridge-01 defender-bridge - alert - ",
        (i / 60) % 60,
        i % 60,
        i % 1_000_000
    )
}

/// A complete syslog message with a CEF body.
pub fn cef_message(i: usize, f: &CefFields) -> Bytes {
    let mut s = syslog5424(i);
    s.push_str("CEF:");
    s.push_str(&f.header.join("|"));
    s.push('|');
    s.push_str(&ext_text(&f.ext));
    Bytes::from(s)
}

/// A complete syslog message with a LEEF 2.0 body, caret-delimited (formats.md §0 rule 8).
pub fn leef_message(i: usize, rng_seed: u64) -> Bytes {
    let mut rng = StdRng::seed_from_u64(rng_seed ^ i as u64);
    let clean = |s: String| s.replace(['^', '\n', '\r', '|'], " ");
    Bytes::from(format!(
        "{}LEEF:2.0|Microsoft|Defender for Endpoint|1.0|ThreatAlert|^|devTime={}^sev={}^externalId=da638{i:010}^usrName=CONTOSO\\bob^msg={}",
        syslog5424(i),
        1_764_374_400_000u64 + i as u64,
        1 + i % 10,
        clean(text(&mut rng, 120)),
    ))
}

/// A mixed stream of CEF and LEEF records, every `budget` bytes or less, none with a raw LF.
pub fn mixed_records(count: usize, budget: usize, seed: u64) -> Vec<Bytes> {
    // The syslog header is ~70 bytes and the CEF header ~120; leave room.
    let fields = cef_fields(count, budget.saturating_sub(400), seed);
    fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let m = if i % 5 == 4 {
                leef_message(i, seed)
            } else {
                cef_message(i, f)
            };
            assert!(m.len() <= budget, "record {i} is {} bytes", m.len());
            assert!(!m.contains(&b'\n'));
            m
        })
        .collect()
}

/// Asserts at-least-once delivery with one break: `got` is `want[..a] ++ want[b..]` with
/// `b <= a`, i.e. every record arrived, in order, and the only duplicates are one run that
/// was sent again after the break.
pub fn assert_in_order_at_least_once(got: &[Vec<u8>], want: &[Bytes]) {
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(g, w)| g[..] != w[..])
        .unwrap_or(got.len().min(want.len()));
    if first_diff == got.len() && got.len() == want.len() {
        return;
    }
    assert!(
        first_diff < got.len(),
        "records {first_diff}.. missing (got {} of {})",
        got.len(),
        want.len()
    );
    let resume = want[..first_diff]
        .iter()
        .rposition(|w| w[..] == got[first_diff][..])
        .unwrap_or_else(|| {
            panic!(
                "record at position {first_diff} is neither next nor a resend: {:?}",
                String::from_utf8_lossy(&got[first_diff])
            )
        });
    let rest = &got[first_diff..];
    assert_eq!(
        rest.len(),
        want.len() - resume,
        "after the break (resent from {resume}), the rest must follow in order"
    );
    for (k, (g, w)) in rest.iter().zip(&want[resume..]).enumerate() {
        assert!(
            g[..] == w[..],
            "after the break, position {} differs",
            first_diff + k
        );
    }
}

async fn send_all(sink: &defender_bridge::sink::Sink, records: &[Bytes]) {
    for r in records {
        sink.send(r.clone()).await.expect("send");
    }
}

/// Sends 40% of `records`, kills the receiver once it has written them, goes on sending
/// while it is down, starts it again on the same port, and checks that every record
/// arrived, in order, with duplicates (if any) only around the break.
///
/// Plain syslog over TCP or TLS has no acknowledgement: what a receiver holds unread when it
/// dies is lost to any sender. So the kill comes once the receiver has written what it was
/// sent; the rest of the stream is sent while it is away.
pub async fn restart_mid_stream(
    daemon: &mut Daemon,
    cfg: defender_bridge::sink::SinkConfig,
    records: &[Bytes],
) {
    use defender_bridge::sink::Status;
    let (before, after) = records.split_at(records.len() * 2 / 5);
    let sink = std::sync::Arc::new(cfg.build().expect("build sink"));
    let mut status = sink.status();

    send_all(&sink, before).await;
    sink.flush(WAIT).await.expect("flush before the kill");
    daemon.wait_for_lines(before.len()).await;
    daemon.kill();

    // The idle writer notices the dead connection without writing into it.
    tokio::time::timeout(WAIT, status.wait_for(|s| matches!(s, Status::Down { .. })))
        .await
        .expect("the sink reports the destination down")
        .expect("status");

    let sender = {
        let sink = sink.clone();
        let after = after.to_vec();
        tokio::spawn(async move { send_all(&sink, &after).await })
    };
    tokio::time::timeout(
        WAIT,
        status.wait_for(|s| matches!(s, Status::Down { reason } if reason.contains("refused"))),
    )
    .await
    .expect("reconnects are refused while the receiver is down")
    .expect("status");

    daemon.start().await;
    sender.await.expect("sender task");
    sink.flush(WAIT).await.expect("flush after the restart");

    let lines = daemon
        .wait_for_last_line(records.last().expect("records"))
        .await;
    assert_in_order_at_least_once(&lines, records);
    let stats = sink.stats();
    assert_eq!(stats.messages_sent, records.len() as u64);
    assert!(stats.reconnects >= 1);
    assert!(matches!(*status.borrow(), Status::Up { .. }));
    std::sync::Arc::into_inner(sink)
        .expect("the sender task is done")
        .shutdown(WAIT)
        .await
        .expect("shutdown");
}
