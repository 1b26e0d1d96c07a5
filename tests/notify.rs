//! Notifications end to end (issue 11): the real binary polls the in-process fake of Entra ID
//! and the Graph API, forwards to a real TCP receiver, and mails a real SMTP server
//! (STARTTLS, AUTH) or posts to a real HTTP receiver on loopback. Each test checks what
//! arrived: recipients, content, digests and their counts, against what the fake served.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use defender_bridge::fake_api::samples::graph_alert;
use defender_bridge::fake_api::{FakeApi, FakeCredential};
use defender_bridge::source::Api;
use support::smtp::{Mode, SmtpOptions, SmtpServer, SmtpTls};
use support::webhook::{Reply, WebhookServer};
use support::{rsyslog, RsyslogInput};

const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const T1: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const T2: &str = "aaaaaaaa-0000-4000-8000-000000000002";
/// Secrets that must never show in a message or a log line.
const SECRET_ONE: &str = "client-secret-one-XYZ";
const SECRET_TWO: &str = "client-secret-two-XYZ";
const SMTP_PASSWORD: &str = "smtp-password-QWE";
const HOOK_KEY: &str = "hook-key-ASD";
const HOOK_SIG: &str = "sig-ZXC";

fn ago(secs: i64) -> DateTime<Utc> {
    use chrono::SubsecRound;
    (Utc::now() - chrono::Duration::seconds(secs)).trunc_subsecs(3)
}

struct Setup {
    fake: FakeApi,
    dir: tempfile::TempDir,
    config: PathBuf,
}

/// Two Graph tenants (contoso, fabrikam), one JSON destination on `receiver_port`, and
/// `extra` (the [smtp] block and rules) after them.
async fn setup(receiver_port: u16, extra: &str) -> Setup {
    let fake = FakeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = fake.write_ca_file(dir.path()).unwrap();
    fake.add_tenant(T1, CLIENT, FakeCredential::Secret(SECRET_ONE.into()));
    fake.add_tenant(T2, CLIENT, FakeCredential::Secret(SECRET_TWO.into()));
    let base = fake.base_url();
    let config = format!(
        r#"
state_dir = "{state}"
poll_interval = "300ms"
overlap = "2m"
initial_lookback = "1h"
page_size = 50
ca_file = "{ca}"
shutdown_timeout = "10s"
metrics_listen = "127.0.0.1:{metrics}"

[[tenant]]
name = "contoso"
tenant_id = "{T1}"
client_id = "{CLIENT}"
client_secret = {{ env = "SECRET_ONE" }}
authority_host = "{base}"
api_base_url = "{base}"

[[tenant]]
name = "fabrikam"
tenant_id = "{T2}"
client_id = "{CLIENT}"
client_secret = {{ env = "SECRET_TWO" }}
authority_host = "{base}"
api_base_url = "{base}"

[[destination]]
name = "siem"
url = "tcp://127.0.0.1:{receiver_port}"
format = "json"
{extra}
"#,
        state = dir.path().join("state").display(),
        ca = ca.display(),
        metrics = support::free_port(support::Proto::Tcp),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    Setup {
        fake,
        dir,
        config: path,
    }
}

fn command(config: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"));
    c.args(args)
        .args(["--config", config.to_str().unwrap()])
        .env("SECRET_ONE", SECRET_ONE)
        .env("SECRET_TWO", SECRET_TWO)
        .env("SMTP_PASSWORD", SMTP_PASSWORD)
        .env("HOOK_KEY", HOOK_KEY)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

fn start(config: &Path) -> tokio::process::Child {
    command(config, &["run"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn stop(child: tokio::process::Child) -> String {
    let pid = child.id().unwrap();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("stops after SIGTERM")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{stderr}");
    stderr
}

/// No secret of the setup in `text` (a message, a request, a log).
fn assert_no_secret(what: &str, text: &str) {
    for s in [SECRET_ONE, SECRET_TWO, SMTP_PASSWORD, HOOK_KEY, HOOK_SIG] {
        assert!(!text.contains(s), "{what} holds the secret {s}:\n{text}");
    }
}

/// Puts a Graph alert at the fake: (tenant id, id, severity, title).
fn put(fake: &FakeApi, tenant_id: &str, id: &str, severity: &str, title: &str) {
    let mut a = graph_alert(tenant_id, id, ago(30), "new", 0);
    a["severity"] = severity.into();
    a["title"] = title.into();
    fake.upsert_alert(tenant_id, Api::Graph, a);
}

/// `[smtp]` for a server on `port` with STARTTLS, the test CA and AUTH.
fn smtp_block(port: u16, ca: &Path) -> String {
    format!(
        "[smtp]\nserver = \"localhost\"\nport = {port}\ntls = \"starttls\"\nca_file = \"{}\"\nusername = \"bridge\"\npassword = {{ env = \"SMTP_PASSWORD\" }}\nfrom = \"Defender Bridge <bridge@mssp.example>\"\n",
        ca.display()
    )
}

/// Alerts matched by a rule arrive in one digest mail over STARTTLS with AUTH: the right
/// envelope and header recipients, the customer (tenant) name, title, severity, device,
/// MITRE technique, the tenant-specific portal link, counts by tenant and severity, a plain
/// text and an HTML part; alerts below the rule's severity are not in it; a second rule
/// without device and user information leaves them out; no secret in any message or log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matched_alerts_arrive_in_one_digest_mail() {
    let pki = support::Pki::new("smtp");
    let smtp = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls(&pki),
        auth: Some(("bridge".into(), SMTP_PASSWORD.into())),
        require_tls_before_auth: true,
    });
    let mut receiver = rsyslog(RsyslogInput::Tcp).await;
    let rules = format!(
        "{}\n[[notification]]\nname = \"soc\"\nmin_severity = \"medium\"\nwindow = \"2s\"\nemail = {{ to = [\"soc@mssp.example\", \"Night Shift <night@mssp.example>\"], cc = [\"lead@mssp.example\"] }}\n\n[[notification]]\nname = \"private\"\ntenants = [\"fabrikam\"]\ninclude_device_user = false\nwindow = \"2s\"\nemail = {{ to = [\"customer@fabrikam.example\"] }}\n",
        smtp_block(smtp.port(), &pki.ca)
    );
    let s = setup(receiver.port, &rules).await;
    put(
        &s.fake,
        T1,
        "da-c-high",
        "high",
        "Ransomware behavior detected",
    );
    put(&s.fake, T1, "da-c-low", "low", "Suspicious sign-in");
    put(
        &s.fake,
        T2,
        "da-f-medium",
        "medium",
        "Mimikatz credential theft tool",
    );
    let child = start(&s.config);
    let got = receiver.wait_for_lines(3).await;
    assert_eq!(got.len(), 3);
    let mails = smtp.wait_for(2, Duration::from_secs(30)).await;
    // Nothing more comes: one digest per rule.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = stop(child).await;
    let mails = {
        let all = smtp.messages();
        assert_eq!(all.len(), 2, "{all:#?}");
        assert_eq!(all, mails);
        all
    };
    let soc = mails
        .iter()
        .find(|m| m.rcpt_to.contains(&"soc@mssp.example".to_string()))
        .expect("the soc digest");
    assert_eq!(soc.mail_from, "bridge@mssp.example");
    assert_eq!(
        soc.rcpt_to.iter().collect::<BTreeSet<_>>(),
        [
            "lead@mssp.example",
            "night@mssp.example",
            "soc@mssp.example"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .iter()
        .collect::<BTreeSet<_>>()
    );
    assert!(soc.tls, "sent after STARTTLS");
    assert_eq!(soc.authenticated_as.as_deref(), Some("bridge"));
    let p = soc.parsed();
    assert_eq!(
        p.header("Subject"),
        Some("[defender-bridge] 2 alerts (1 high, 1 medium) at contoso, fabrikam")
    );
    let to = p.header("To").unwrap();
    assert!(
        to.contains("Night Shift") && to.contains("<night@mssp.example>"),
        "{to}"
    );
    assert_eq!(p.header("Cc"), Some("lead@mssp.example"));
    assert_eq!(p.header("Auto-Submitted"), Some("auto-generated"));
    let text = p.text.clone().expect("a plain-text part");
    let html = p.html.clone().expect("an HTML part");
    for want in [
        "2 alert(s):",
        "  contoso: 1 (high 1)",
        "  fabrikam: 1 (medium 1)",
        "High | contoso | Ransomware behavior detected",
        "Medium | fabrikam | Mimikatz credential theft tool",
        &format!("https://security.microsoft.com/alerts/da-c-high?tid={T1}"),
        &format!("https://security.microsoft.com/alerts/da-f-medium?tid={T2}"),
        "Status: new",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    assert!(!text.contains("Suspicious sign-in"), "a low alert: {text}");
    assert!(html.contains(&format!(
        "<a href=\"https://security.microsoft.com/alerts/da-c-high?tid={T1}\">Ransomware behavior detected</a>"
    )));
    // The sample alert names its device and MITRE techniques; the text shows what it has.
    let sample = graph_alert(T1, "x", ago(0), "new", 0);
    let device = sample["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e["deviceDnsName"].as_str())
        .expect("the sample has device evidence")
        .to_string();
    assert!(text.contains(&format!("Device: {device}")), "{text}");
    if let Some(t) = sample["mitreTechniques"].as_array().and_then(|a| a.first()) {
        assert!(text.contains(t.as_str().unwrap()), "{text}");
    }
    // The private rule: fabrikam only, and no device name.
    let private = mails
        .iter()
        .find(|m| m.rcpt_to == ["customer@fabrikam.example"])
        .expect("the private digest");
    let pp = private.parsed();
    assert_eq!(
        pp.header("Subject"),
        Some("[defender-bridge] Medium alert at fabrikam: Mimikatz credential theft tool")
    );
    let ptext = pp.text.unwrap();
    assert!(
        !ptext.contains(&device) && !ptext.contains("Device:"),
        "{ptext}"
    );
    assert!(!pp.html.unwrap().contains(&device));
    for m in &mails {
        assert_no_secret("a mail", &String::from_utf8_lossy(&m.data));
    }
    assert_no_secret("the log", &log);
    assert!(
        log.contains("notification sent to soc@mssp.example"),
        "{log}"
    );
    receiver.kill();
}

/// A storm of 1,000 alerts over two tenants sends a handful of messages, never 1,000: their
/// counts add up to exactly the alerts served, by tenant and severity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_a_thousand_alerts_sends_a_handful_of_messages() {
    let hook = WebhookServer::start(vec![Reply::Status(200, "ok")]);
    let mut receiver = rsyslog(RsyslogInput::Tcp).await;
    let rules = format!(
        "[[notification]]\nname = \"storm\"\nwindow = \"3s\"\nmax_per_hour = 5\nwebhook = {{ url = \"{}\" }}\n",
        hook.url("/hook")
    );
    let s = setup(receiver.port, &rules).await;
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for i in 0..1000 {
        let (tid, tenant) = if i % 3 == 0 {
            (T2, "fabrikam")
        } else {
            (T1, "contoso")
        };
        let severity = ["low", "medium", "high"][i % 3 / 2 + (i % 5 == 0) as usize];
        put(
            &s.fake,
            tid,
            &format!("da-storm-{i:04}"),
            severity,
            &format!("storm {i}"),
        );
        *want
            .entry((tenant.to_string(), severity.to_string()))
            .or_default() += 1;
    }
    let child = start(&s.config);
    receiver.wait_for_lines(1000).await;
    // Every alert counted once over the messages.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let bodies = loop {
        let bodies: Vec<serde_json::Value> = hook.requests().iter().map(|r| r.json()).collect();
        let total: u64 = bodies
            .iter()
            .map(|b| b["alertCount"].as_u64().unwrap())
            .sum();
        if total >= 1000 {
            break bodies;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{total} of 1000 notified"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(4)).await;
    let log = stop(child).await;
    let bodies_after: Vec<serde_json::Value> = hook.requests().iter().map(|r| r.json()).collect();
    assert_eq!(
        bodies_after.len(),
        bodies.len(),
        "more messages after the storm"
    );
    assert!(
        (1..=5).contains(&bodies.len()),
        "{} messages for a storm",
        bodies.len()
    );
    let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for b in &bodies {
        assert_eq!(b["schema"], "defender-bridge.notification/1");
        assert_eq!(b["rule"], "storm");
        let listed = b["alerts"].as_array().unwrap();
        assert!(listed.len() <= 50, "a message lists at most 50 alerts");
        assert_eq!(
            b["moreAlerts"].as_u64().unwrap() + listed.len() as u64,
            b["alertCount"].as_u64().unwrap()
        );
        for a in listed {
            assert!(
                ids.insert(a["id"].as_str().unwrap().to_string()),
                "{a} twice"
            );
        }
        for c in b["counts"].as_array().unwrap() {
            *counts
                .entry((
                    c["tenant"].as_str().unwrap().to_string(),
                    c["severity"].as_str().unwrap().to_string(),
                ))
                .or_default() += c["count"].as_u64().unwrap();
        }
    }
    assert_eq!(counts, want);
    assert_no_secret("the log", &log);
    receiver.kill();
}

/// A mail server that is down is tried again with a backoff, the records reach the SIEM
/// meanwhile, and once the server is back the digest arrives once with every alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_that_is_down_is_retried_and_holds_up_no_record() {
    let pki = support::Pki::new("smtp");
    let smtp = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls(&pki),
        auth: Some(("bridge".into(), SMTP_PASSWORD.into())),
        require_tls_before_auth: true,
    });
    smtp.set_mode(Mode::Closed);
    let mut receiver = rsyslog(RsyslogInput::Tcp).await;
    let rules = format!(
        "{}\n[[notification]]\nname = \"soc\"\nwindow = \"1s\"\nemail = {{ to = [\"soc@mssp.example\"] }}\n",
        smtp_block(smtp.port(), &pki.ca)
    );
    let s = setup(receiver.port, &rules).await;
    for i in 0..20 {
        put(
            &s.fake,
            T1,
            &format!("da-down-{i:02}"),
            "high",
            &format!("alert {i}"),
        );
    }
    let child = start(&s.config);
    // Every record is delivered while the mail server refuses connections.
    let lines = receiver.wait_for_lines(20).await;
    assert_eq!(lines.len(), 20);
    assert!(smtp.messages().is_empty());
    // A first attempt has failed (window 1 s, then the message).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while smtp.connections() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    smtp.set_mode(Mode::Accept);
    let mails = smtp.wait_for(1, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let log = stop(child).await;
    assert_eq!(smtp.messages().len(), 1, "one digest");
    let text = mails[0].parsed().text.unwrap();
    assert!(text.contains("20 alert(s):"), "{text}");
    for i in 0..20 {
        assert!(
            text.contains(&format!("| alert {i}\n")),
            "alert {i}: {text}"
        );
    }
    assert!(
        log.contains("notification to soc@mssp.example failed (1 in a row)"),
        "{log}"
    );
    assert!(log.contains("connection"), "{log}");
    assert_no_secret("the log", &log);
    receiver.kill();
}

/// A webhook that answers 500 gets the same message again after a backoff, and once it
/// answers 200, nothing more: the message arrived once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_that_answers_500_then_200_gets_the_message_once() {
    let hook = WebhookServer::start(vec![
        Reply::Status(500, "upstream exploded\nstack trace line"),
        Reply::Status(200, "ok"),
    ]);
    let mut receiver = rsyslog(RsyslogInput::Tcp).await;
    let rules = format!(
        "[[notification]]\nname = \"hook\"\nwindow = \"1s\"\nwebhook = {{ url = \"{}?sig={HOOK_SIG}\", headers = {{ \"X-Api-Key\" = {{ env = \"HOOK_KEY\" }} }} }}\n",
        hook.url("/hook")
    );
    let s = setup(receiver.port, &rules).await;
    put(&s.fake, T1, "da-hook-1", "high", "first");
    put(&s.fake, T2, "da-hook-2", "low", "second");
    let child = start(&s.config);
    receiver.wait_for_lines(2).await;
    let reqs = hook.wait_for(2, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let log = stop(child).await;
    let all = hook.requests();
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(reqs[0].body, reqs[1].body, "the same message again");
    assert_eq!(all[1].reply, Reply::Status(200, "ok"));
    for r in &all {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, format!("/hook?sig={HOOK_SIG}"));
        assert_eq!(r.header("x-api-key"), Some(HOOK_KEY));
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    let b = reqs[1].json();
    assert_eq!(b["alertCount"], 2);
    let ids: BTreeSet<&str> = b["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, BTreeSet::from(["da-hook-1", "da-hook-2"]));
    // The failure is said with the status and the body's first line, never the URL's secret.
    assert!(
        log.contains("HTTP 500 from 127.0.0.1: upstream exploded"),
        "{log}"
    );
    assert!(!log.contains("stack trace line"), "{log}");
    assert_no_secret("the log", &log);
    receiver.kill();
}

/// Pending digests live in the state store: alerts matched, the daemon killed with SIGKILL
/// before the window ends, started again: the digest arrives once, with every alert once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_digests_survive_a_kill_9() {
    let hook = WebhookServer::start(vec![Reply::Status(200, "ok")]);
    let mut receiver = rsyslog(RsyslogInput::Tcp).await;
    let rules = format!(
        "[[notification]]\nname = \"slow\"\nwindow = \"12s\"\nwebhook = {{ url = \"{}\" }}\n",
        hook.url("/hook")
    );
    let s = setup(receiver.port, &rules).await;
    let metrics_port: u16 = std::fs::read_to_string(&s.config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("metrics_listen = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse().ok())
        .unwrap();
    for i in 0..30 {
        put(
            &s.fake,
            if i % 2 == 0 { T1 } else { T2 },
            &format!("da-kill-{i:02}"),
            "medium",
            &format!("k{i}"),
        );
    }
    let mut child = start(&s.config);
    receiver.wait_for_lines(30).await;
    // All 30 are matched and committed to the pending digest.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let body = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
            .send()
            .await
            .ok();
        let text = match body {
            Some(b) => b.text().await.unwrap_or_default(),
            None => String::new(),
        };
        if text
            .lines()
            .any(|l| l.starts_with("defender_bridge_notifications_pending{") && l.ends_with(" 30"))
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not pending: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.start_kill().unwrap();
    let _ = child.wait().await;
    assert!(hook.requests().is_empty(), "sent before the window ended");
    let child = start(&s.config);
    let reqs = hook.wait_for(1, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = stop(child).await;
    assert_eq!(hook.requests().len(), 1);
    let b = reqs[0].json();
    assert_eq!(b["alertCount"], 30, "{b}");
    let ids: BTreeSet<String> = b["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 30);
    assert!(
        log.contains("30 pending alert(s) and event(s) from before the restart"),
        "{log}"
    );
    receiver.kill();
}

/// The Teams body is a Workflows message whose card validates against the Adaptive Card
/// schema; the Slack body keeps Block Kit's rules; both with hostile alert text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teams_and_slack_bodies_validate() {
    let teams = WebhookServer::start(vec![Reply::Status(202, "")]);
    let slack = WebhookServer::start(vec![Reply::Status(200, "ok")]);
    let mut receiver = rsyslog(RsyslogInput::Tcp).await;
    let rules = format!(
        "[[notification]]\nname = \"teams\"\nwindow = \"2s\"\nwebhook = {{ url = \"{}\", shape = \"teams\" }}\n\n[[notification]]\nname = \"slack\"\nwindow = \"2s\"\nwebhook = {{ url = \"{}\", shape = \"slack\" }}\n",
        teams.url("/teams"),
        slack.url("/slack")
    );
    let s = setup(receiver.port, &rules).await;
    let hostile = format!(
        "<!channel> & <script>alert(1)</script> \u{7}bell {}",
        "x".repeat(4000)
    );
    put(&s.fake, T1, "da-hostile", "high", &hostile);
    for i in 0..14 {
        put(
            &s.fake,
            T2,
            &format!("da-many-{i:02}"),
            "medium",
            &format!("many {i}"),
        );
    }
    let child = start(&s.config);
    receiver.wait_for_lines(15).await;
    let t = teams.wait_for(1, Duration::from_secs(30)).await;
    let sl = slack.wait_for(1, Duration::from_secs(30)).await;
    let log = stop(child).await;
    let tb = t[0].json();
    let errors = support::schemas::teams_errors(&tb);
    assert!(errors.is_empty(), "{errors:#?}\n{tb:#}");
    let card = &tb["attachments"][0]["content"];
    let texts = tb.to_string();
    assert!(
        texts.contains("15 alerts (1 high, 14 medium) at contoso, fabrikam"),
        "{card:#}"
    );
    assert!(texts.contains(&format!(
        "https://security.microsoft.com/alerts/da-hostile?tid={T1}"
    )));
    assert!(
        texts.contains("and 5 more alert(s)"),
        "10 listed, 5 counted"
    );
    let sb = sl[0].json();
    let errors = support::schemas::slack_errors(&sb);
    assert!(errors.is_empty(), "{errors:#?}\n{sb:#}");
    let st = sb.to_string();
    assert!(st.contains("&lt;!channel&gt; &amp; &lt;script&gt;"), "{st}");
    assert!(!st.contains("<!channel>"));
    assert_no_secret("the log", &log);
    receiver.kill();
}

/// The collector's own health: a customer's secret expired and a SIEM down for longer than
/// `down_for` and back are notified in plain words, by an events-only rule (no alerts in it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_events_are_notified_in_plain_words() {
    let hook = WebhookServer::start(vec![Reply::Status(200, "ok")]);
    let mut receiver = rsyslog(RsyslogInput::Tcp).await;
    let rules = format!(
        "[[notification]]\nname = \"ops\"\nevents = [\"tenant_failing\", \"destination_down\", \"destination_recovered\"]\nfailing_polls = 1\ndown_for = \"2s\"\nwindow = \"1s\"\nwebhook = {{ url = \"{}\" }}\n",
        hook.url("/ops")
    );
    let s = setup(receiver.port, &rules).await;
    s.fake.expire_secret(T2);
    put(&s.fake, T1, "da-h-1", "high", "one");
    let child = start(&s.config);
    receiver.wait_for_lines(1).await;
    // The SIEM goes away for a while; an alert waits for it.
    receiver.kill();
    put(&s.fake, T1, "da-h-2", "high", "two");
    let failed_and_down = {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let texts: Vec<String> = hook.requests().iter().map(|r| r.text()).collect();
            let all = texts.join("\n");
            if all.contains("poll failed") && all.contains("is down") {
                break all;
            }
            assert!(tokio::time::Instant::now() < deadline, "{all}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    receiver.start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let back = loop {
        let texts: Vec<String> = hook.requests().iter().map(|r| r.text()).collect();
        let all = texts.join("\n");
        if all.contains("takes records again") {
            break all;
        }
        assert!(tokio::time::Instant::now() < deadline, "{all}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let log = stop(child).await;
    assert!(
        failed_and_down.contains("tenant fabrikam: poll failed (1 in a row)")
            && failed_and_down.contains("client secret expired (AADSTS7000222)"),
        "{failed_and_down}"
    );
    assert!(
        failed_and_down.contains("destination siem is down"),
        "{failed_and_down}"
    );
    assert!(
        failed_and_down.contains("(down for 2s") || failed_and_down.contains("(down for 3s"),
        "{failed_and_down}"
    );
    assert!(
        back.contains("destination siem takes records again"),
        "{back}"
    );
    for r in hook.requests() {
        let b = r.json();
        assert_eq!(b["alertCount"], 0, "an events-only rule: {b}");
    }
    assert_no_secret("the messages", &back);
    assert_no_secret("the log", &log);
    receiver.kill();
}

/// `notify-test` sends a marked test message through each action, and when one fails says
/// which step failed, with the server's answer, and never a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_sends_a_marked_message_and_says_what_went_wrong() {
    let pki = support::Pki::new("smtp");
    let smtp = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls(&pki),
        auth: Some(("bridge".into(), SMTP_PASSWORD.into())),
        require_tls_before_auth: true,
    });
    let hook = WebhookServer::start(vec![Reply::Status(200, "ok")]);
    let gone = WebhookServer::start(vec![Reply::Status(404, "no such workflow\nsecond line")]);
    let other_ca = support::Pki::new("other");
    let rules = |smtp: &str| {
        format!(
            "{smtp}\n[[notification]]\nname = \"soc\"\nemail = {{ to = [\"soc@mssp.example\"] }}\nwebhook = {{ url = \"{}?sig={HOOK_SIG}\", headers = {{ \"X-Api-Key\" = {{ env = \"HOOK_KEY\" }} }} }}\n\n[[notification]]\nname = \"gone\"\nwebhook = {{ url = \"{}?sig={HOOK_SIG}\" }}\n",
            hook.url("/ok"),
            gone.url("/gone")
        )
    };
    let s = setup(9, &rules(&smtp_block(smtp.port(), &pki.ca))).await;
    let run = |config: PathBuf, rule: &'static str, password: &'static str| async move {
        let out = command(&config, &["notify-test", rule])
            .env("SMTP_PASSWORD", password)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let (code, out) = run(s.config.clone(), "soc", SMTP_PASSWORD).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("email to soc@mssp.example: sent"), "{out}");
    assert!(out.contains("webhook to http://127.0.0.1/…: sent"), "{out}");
    let mail = smtp.wait_for(1, Duration::from_secs(10)).await;
    let p = mail[0].parsed();
    assert!(
        p.header("Subject")
            .unwrap()
            .starts_with("[defender-bridge TEST] "),
        "{p:?}"
    );
    assert!(p
        .text
        .unwrap()
        .contains("This is a test message of notification rule \"soc\""));
    let body = hook.wait_for(1, Duration::from_secs(10)).await[0].json();
    assert_eq!(body["test"], true);
    assert_no_secret("notify-test's output", &out);

    // Wrong password: authentication, said as such.
    let (code, out) = run(s.config.clone(), "soc", "wrong-password-RTY").await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("email to soc@mssp.example: FAILED: authentication:"),
        "{out}"
    );
    assert!(!out.contains("wrong-password-RTY"), "{out}");
    // A webhook that answers 404: the status and the body's first line.
    let (code, out) = run(s.config.clone(), "gone", SMTP_PASSWORD).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAILED: HTTP 404 from 127.0.0.1: no such workflow"),
        "{out}"
    );
    assert!(!out.contains("second line"), "{out}");
    assert_no_secret("notify-test's output", &out);
    // An unknown rule names the ones there are.
    let (code, out) = run(s.config.clone(), "nope", SMTP_PASSWORD).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("no notification rule is named \"nope\" (the rules are: soc, gone)"),
        "{out}"
    );

    // Implicit TLS (port 465 style): the same message through a server that speaks TLS
    // from the first byte.
    let implicit = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::Implicit(&pki),
        auth: Some(("bridge".into(), SMTP_PASSWORD.into())),
        require_tls_before_auth: true,
    });
    let starttls_config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        starttls_config
            .replace(
                &format!("port = {}", smtp.port()),
                &format!("port = {}", implicit.port()),
            )
            .replace("tls = \"starttls\"", "tls = \"tls\""),
    )
    .unwrap();
    let (code, out) = run(s.config.clone(), "soc", SMTP_PASSWORD).await;
    assert_eq!(code, Some(0), "{out}");
    let m = implicit.wait_for(1, Duration::from_secs(10)).await;
    assert!(m[0].tls && m[0].authenticated_as.as_deref() == Some("bridge"));
    std::fs::write(&s.config, starttls_config).unwrap();

    // A mail server whose certificate is from a CA we do not trust: TLS.
    std::fs::write(
        &s.config,
        std::fs::read_to_string(&s.config).unwrap().replace(
            &pki.ca.display().to_string(),
            &other_ca.ca.display().to_string(),
        ),
    )
    .unwrap();
    let (code, out) = run(s.config.clone(), "soc", SMTP_PASSWORD).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("email to soc@mssp.example: FAILED: TLS:"),
        "{out}"
    );
    // A name that does not resolve: DNS.
    std::fs::write(
        &s.config,
        std::fs::read_to_string(&s.config).unwrap().replace(
            "server = \"localhost\"",
            "server = \"no-such-host.invalid\"",
        ),
    )
    .unwrap();
    let (code, out) = run(s.config.clone(), "soc", SMTP_PASSWORD).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("email to soc@mssp.example: FAILED: DNS:"),
        "{out}"
    );
    assert_no_secret("notify-test's output", &out);
    drop(s.dir);
}

/// SIGHUP with changed rules: the notifier starts again with the new ones (a new webhook URL
/// gets the next digest, the old one nothing more), and rules removed stop notifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_the_rules() {
    let old = WebhookServer::start(vec![Reply::Status(200, "ok")]);
    let new = WebhookServer::start(vec![Reply::Status(200, "ok")]);
    let mut receiver = rsyslog(RsyslogInput::Tcp).await;
    let rule = |url: &str| {
        format!(
            "[[notification]]\nname = \"r\"\nwindow = \"1s\"\nwebhook = {{ url = \"{url}\" }}\n"
        )
    };
    let s = setup(receiver.port, &rule(&old.url("/old"))).await;
    put(&s.fake, T1, "da-before", "high", "before");
    let child = start(&s.config);
    receiver.wait_for_lines(1).await;
    old.wait_for(1, Duration::from_secs(30)).await;
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        config.replace(&old.url("/old"), &new.url("/new")),
    )
    .unwrap();
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    // Let the reload happen before the next alert comes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    put(&s.fake, T2, "da-after", "high", "after");
    receiver.wait_for_lines(2).await;
    let got = new.wait_for(1, Duration::from_secs(30)).await;
    let ids: Vec<String> = got[0].json()["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["da-after"]);
    assert_eq!(old.requests().len(), 1, "the old URL got nothing more");
    // Rules removed: nothing more is sent anywhere.
    std::fs::write(&s.config, config.split("[[notification]]").next().unwrap()).unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    put(&s.fake, T1, "da-none", "high", "none");
    receiver.wait_for_lines(3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = stop(child).await;
    assert_eq!(new.requests().len(), 1);
    assert_eq!(old.requests().len(), 1);
    assert!(log.contains("reload: notification rules changed"), "{log}");
    receiver.kill();
}
