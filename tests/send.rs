//! `defender-bridge send` and `send-test`, the real binary, to real rsyslog and syslog-ng
//! receivers on 127.0.0.1.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::{rsyslog, split_lines, syslog_ng, Pki, Proto, RsyslogInput};

const SAMPLES: &[&str] = &[
    "tests/data/graph-alerts-v2-list-docs.json",
    "tests/data/realistic-graph-alert.json",
    "tests/data/hostile-graph-alert.json",
    "tests/data/mde-alerts-list-docs-expand-evidence.json",
    "tests/data/graph-alerts-v2-demisto-linux-and-air.json",
];

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_defender-bridge"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::null())
        .env("RUST_LOG", "warn");
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// What `convert` makes of the samples with the same options: the oracle for what the
/// receiver must have written.
fn converted(format: &str, extra: &[&str]) -> Vec<Vec<u8>> {
    let out = bin()
        .args([
            "convert",
            "-f",
            format,
            "--syslog",
            "rfc5424",
            "--hostname",
            "bridge-test",
        ])
        .args(extra)
        .args(SAMPLES)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    split_lines(&out.stdout)
}

async fn run(cmd: &mut Command) -> Output {
    let cmd = std::mem::replace(cmd, Command::new("true"));
    let mut cmd = tokio::process::Command::from(cmd);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("the command finishes")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_writes_exactly_what_convert_makes() {
    let tcp = rsyslog(RsyslogInput::Tcp).await;
    let udp = rsyslog(RsyslogInput::Udp).await;
    let out = run(bin()
        .args([
            "send",
            "-f",
            "sentinel",
            "--hostname",
            "bridge-test",
            "--tenant-name",
            "Contoso",
        ])
        .args(["--to", &format!("tcp://127.0.0.1:{}", tcp.port)])
        .args([
            "--to",
            &format!("udp://127.0.0.1:{}", udp.port),
            "--max-size",
            "8192",
        ])
        .args(SAMPLES))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = converted("sentinel", &["--tenant-name", "Contoso"]);
    assert_eq!(want.len(), 6);
    assert_eq!(tcp.wait_for_lines(want.len()).await, want);
    assert_eq!(udp.wait_for_lines(want.len()).await, want);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{} record(s) written", want.len())),
        "{stderr}"
    );
}

/// `send --to relp://…` and `send-test` to rsyslog's imrelp: every record as `convert` makes it,
/// each counted once answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_and_send_test_over_relp() {
    let relp = rsyslog(RsyslogInput::Relp).await;
    let to = format!("relp://127.0.0.1:{}", relp.port);
    let out = run(bin()
        .args(["send", "-f", "sentinel", "--hostname", "bridge-test"])
        .args(["--to", &to])
        .args(SAMPLES))
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let want = converted("sentinel", &[]);
    assert_eq!(relp.wait_for_lines(want.len()).await, want);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!("{to}: {} record(s) written", want.len())),
        "{stderr}"
    );

    let out = run(bin().args(["send-test", "-f", "splunk", "--to", &to])).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("{to}: OK: sent test alert")));
    let got = relp.wait_for_lines(want.len() + 1).await;
    assert!(text(&got[want.len()]).contains("defender-bridge test alert"));

    // A port that does not speak RELP: send-test says so.
    let tcp = rsyslog(RsyslogInput::Tcp).await;
    let to = format!("relp://127.0.0.1:{}", tcp.port);
    let out = run(bin().args(["send-test", "-f", "splunk", "--to", &to, "--timeout", "2s"])).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{to}: FAILED: RELP session with 127.0.0.1:{}",
            tcp.port
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_destination_holds_up_no_other_and_fails_the_run() {
    let live = syslog_ng(
        Proto::Tcp,
        r#"source s { syslog(ip(127.0.0.1) port(PORT) transport(tcp) flags(no-parse)); };
destination d { file("OUT" template("${MSG}\n")); };
log { source(s); destination(d); };"#,
    )
    .await;
    let dead = support::free_port(Proto::Tcp);
    let out = run(bin()
        .args([
            "send",
            "-f",
            "qradar",
            "--hostname",
            "bridge-test",
            "--framing",
            "octet-counting",
        ])
        .args(["--to", &format!("tcp://127.0.0.1:{dead}")])
        .args(["--to", &format!("tcp://127.0.0.1:{}", live.port)])
        .args(["--timeout", "2s"])
        .args(SAMPLES))
    .await;
    assert_eq!(out.status.code(), Some(1));
    let want = converted("qradar", &[]);
    assert_eq!(live.wait_for_lines(want.len()).await, want);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "tcp://127.0.0.1:{dead}: {} message(s) not written within 2s",
            want.len()
        )),
        "{stderr}"
    );
}

/// `send` counts a record as written once the receiver's TCP has acknowledged it, not when it
/// was copied into the sender's kernel (issue 8): to a receiver that takes a few KB and then
/// reads nothing, the run fails, and the "written" line and the error add up to the input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_counts_only_what_the_receiver_acknowledged() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(4).unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        std::future::pending::<()>().await; // holds the connection, reads nothing
        drop(conn);
    });

    // 200 alerts of ~1.5 KB records: far more than the receiver takes, far less than the
    // sender's send queue on loopback, so every write returns at once.
    let alert: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/data/realistic-graph-alert.json").unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("alerts.ndjson");
    let mut lines = String::new();
    for i in 0..200 {
        let mut a = alert.clone();
        a["id"] = serde_json::Value::String(format!("da{i:08}-stalled"));
        lines.push_str(&a.to_string());
        lines.push('\n');
    }
    std::fs::write(&input, lines).unwrap();

    let to = format!("tcp://{addr}");
    let out = run(bin()
        .args(["send", "-f", "sentinel", "--to", &to, "--timeout", "2s"])
        .arg(&input))
    .await;
    holder.abort();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let written: usize = stderr
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{to}: "))?
                .split_once(" record(s) written")
        })
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("no written line: {stderr}"));
    assert!(written < 200, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{to}: {} message(s) not written within 2s",
            200 - written
        )),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_size_records_are_cut_or_dead_lettered() {
    let udp = rsyslog(RsyslogInput::Udp).await;
    let dir = tempfile::tempdir().unwrap();
    let dead_letter = dir.path().join("dead.jsonl");
    // 1500 bytes: the hostile alert's record is cut to fit; at 400 bytes its header and
    // must-keep keys alone are too long, so it goes to the dead-letter file.
    for (max, expect_dead) in [("1500", false), ("400", true)] {
        let out = run(bin()
            .args(["send", "-f", "arcsight", "--hostname", "bridge-test"])
            .args([
                "--to",
                &format!("udp://127.0.0.1:{}", udp.port),
                "--max-size",
                max,
            ])
            .args(["--dead-letter", dead_letter.to_str().unwrap()])
            .arg("tests/data/hostile-graph-alert.json"))
        .await;
        let stderr = text(&out.stderr);
        if expect_dead {
            assert_eq!(out.status.code(), Some(1), "{stderr}");
            assert!(
                stderr.contains("0 record(s) written, 0 value(s) truncated, 1 dead-lettered"),
                "{stderr}"
            );
        } else {
            assert!(out.status.success(), "{stderr}");
            assert!(stderr.contains("1 record(s) written"), "{stderr}");
            assert!(!stderr.contains(" 0 value(s) truncated"), "{stderr}");
        }
    }
    let got = udp.wait_for_lines(1).await;
    assert!(
        got[0].len() <= 1500 && got[0].len() > 1400,
        "{}",
        got[0].len()
    );
    assert!(text(&got[0]).contains("externalId=da0000hostile-0001_1"));
    assert!(text(&got[0]).contains('…'));

    let letters = std::fs::read_to_string(&dead_letter).unwrap();
    let lines: Vec<&str> = letters.lines().collect();
    assert_eq!(lines.len(), 1);
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["alertId"], "da0000hostile-0001_1");
    assert_eq!(v["destination"], format!("udp://127.0.0.1:{}", udp.port));
    assert!(v["reason"]
        .as_str()
        .unwrap()
        .contains("the limit is 400 bytes"));
    let whole = converted_one("arcsight", "tests/data/hostile-graph-alert.json");
    assert_eq!(v["record"].as_str().unwrap().as_bytes(), whole.as_slice());
}

fn converted_one(format: &str, file: &str) -> Vec<u8> {
    let out = bin()
        .args([
            "convert",
            "-f",
            format,
            "--syslog",
            "rfc5424",
            "--hostname",
            "bridge-test",
            file,
        ])
        .output()
        .unwrap();
    split_lines(&out.stdout).remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_reaches_a_tls_receiver_and_names_a_wrong_ca() {
    let pki = Pki::new("receiver");
    let other = Pki::new("someone else");
    let tls = rsyslog(RsyslogInput::Tls {
        ca: pki.ca.clone(),
        cert: pki.cert.clone(),
        key: pki.key.clone(),
    })
    .await;
    let to = format!("tls://localhost:{}", tls.port);
    let send_test = |ca: &std::path::Path| {
        let mut c = bin();
        c.args([
            "send-test",
            "-f",
            "splunk",
            "--to",
            &to,
            "--ca",
            ca.to_str().unwrap(),
        ]);
        c
    };
    let out = run(&mut send_test(&pki.ca)).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("{to}: OK: sent test alert defender-bridge-test-"))
    );
    let got = tls.wait_for_lines(1).await;
    let record = text(&got[0]);
    assert!(record.contains("CEF:0|Microsoft|Defender for Endpoint|1.0|defender-bridge-test|defender-bridge test alert (not a real detection)|1|"), "{record}");

    let out = run(&mut send_test(&other.ca)).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{to}: FAILED: TLS handshake with 127.0.0.1:{} failed: invalid peer certificate: UnknownIssuer", tls.port)), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flushes_within_the_timeout_and_says_what_was_lost() {
    let dead = support::free_port(Proto::Tcp);
    let mut child = tokio::process::Command::from({
        let mut c = bin();
        c.args([
            "send",
            "-f",
            "json",
            "--to",
            &format!("tcp://127.0.0.1:{dead}"),
            "--timeout",
            "1s",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    })
    .spawn()
    .unwrap();
    // Keep stdin open so the run is waiting for input, as a pipe from a slow producer would.
    let stdin = child.stdin.take();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap() as i32;
    assert_eq!(unsafe_kill(pid), 0);
    let out = tokio::time::timeout(Duration::from_secs(20), child.wait_with_output())
        .await
        .expect("exits soon after SIGTERM")
        .unwrap();
    drop(stdin);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("interrupted; flushing what was accepted"),
        "{}",
        text(&out.stderr)
    );
}

/// SIGTERM through the `kill` command (no libc dependency for one call).
fn unsafe_kill(pid: i32) -> i32 {
    Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .map(|s| s.code().unwrap_or(-1))
        .unwrap_or(-1)
}

/// Alerts of the MDE sample, each with its own id, as NDJSON lines.
fn mde_lines(n: usize, tag: &str) -> Vec<String> {
    let alert: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("tests/data/mde-alert-get-docs.json").unwrap(),
    )
    .unwrap();
    (0..n)
        .map(|i| {
            let mut a = alert.clone();
            a["id"] = serde_json::Value::String(format!("da{i:08}-{tag}"));
            a.to_string()
        })
        .collect()
}

/// `tail -f alerts.ndjson | defender-bridge send`: each alert goes out as it arrives, while
/// stdin stays open, and the rest when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_streams_stdin_without_waiting_for_its_end() {
    use tokio::io::AsyncWriteExt;
    let tcp = rsyslog(RsyslogInput::Tcp).await;
    let to = format!("tcp://127.0.0.1:{}", tcp.port);
    let mut cmd = tokio::process::Command::from({
        let mut c = bin();
        c.args(["send", "-f", "arcsight", "--to", &to])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped());
        c
    });
    let mut child = cmd.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let lines = mde_lines(3, "piped");
    for (i, line) in lines.iter().enumerate() {
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        stdin.flush().await.unwrap();
        // Arrived at the SIEM with stdin still open.
        let got = tcp.wait_for_lines(i + 1).await;
        let last = text(got.last().unwrap());
        assert!(last.contains(&format!("da{i:08}-piped")), "{last}");
    }
    drop(stdin);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("{to}: 3 record(s) written")),
        "{stderr}"
    );
    assert_eq!(tcp.wait_for_lines(3).await.len(), 3);
}

/// A large input on several workers: every record arrives once, in input order, exactly as
/// `convert` makes it; the bad lines in it are reported with their line numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_input_on_all_workers_arrives_whole_and_in_order() {
    let tcp = rsyslog(RsyslogInput::Tcp).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("backlog.ndjson");
    let mut lines = mde_lines(8_000, "backlog");
    // Bad lines here and there (line numbers 1-based).
    for at in [0, 4_999, 7_345] {
        lines.insert(at, "{\"id\": broken".to_string());
    }
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let oracle = bin()
        .args([
            "convert",
            "-f",
            "arcsight",
            "--syslog",
            "rfc5424",
            "--hostname",
            "h",
            "--jobs",
            "1",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(oracle.status.code(), Some(1));
    let want = split_lines(&oracle.stdout);
    assert_eq!(want.len(), 8_000);
    let to = format!("tcp://127.0.0.1:{}", tcp.port);
    let out = run(bin()
        .args([
            "send",
            "-f",
            "arcsight",
            "--hostname",
            "h",
            "--jobs",
            "3",
            "--to",
            &to,
        ])
        .arg(&input))
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for line in [1, 5_000, 7_346] {
        assert!(
            stderr.contains(&format!("{}:{line}: invalid JSON", input.display())),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains(&format!("{to}: 8000 record(s) written")),
        "{stderr}"
    );
    assert!(
        stderr.contains("8000 alert(s) read, 3 input(s) rejected"),
        "{stderr}"
    );
    let got = tcp.wait_for_lines(8_000).await;
    // rsyslog writes the message as received (its template in support), so the records must
    // be the oracle's, in order, each once.
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            g.ends_with(strip_header(w)),
            "record {i}: {} vs {}",
            text(g),
            text(w)
        );
    }
}

/// The record after its RFC 5424 header's timestamp (made at send time, not equal).
fn strip_header(record: &[u8]) -> &[u8] {
    let s = std::str::from_utf8(record).unwrap();
    let cef = s.find("CEF:").unwrap();
    &record[cef..]
}
