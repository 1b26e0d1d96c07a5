//! `defender-bridge run`, the real binary, with a configuration file: the in-process HTTPS fake
//! of Entra ID and both alert APIs, and a real rsyslog receiver on loopback. Each test checks
//! the exact set of alert versions the receiver got against what the fake served.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use chrono::{DateTime, Utc};
use defender_bridge::fake_api::samples::{graph_alert, mde_alert};
use defender_bridge::fake_api::{FakeApi, FakeCredential};
use defender_bridge::source::Api;
use support::{rsyslog, RsyslogInput};

const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const T1: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const T2: &str = "aaaaaaaa-0000-4000-8000-000000000002";
const T3: &str = "aaaaaaaa-0000-4000-8000-000000000003";

/// (tenant name, alert id, lastUpdate) as the SIEM sees it.
type Version = (String, String, DateTime<Utc>);

fn ago(secs: i64) -> DateTime<Utc> {
    use chrono::SubsecRound;
    (Utc::now() - chrono::Duration::seconds(secs)).trunc_subsecs(3)
}

struct Setup {
    fake: FakeApi,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

/// Three tenants (two Graph, one MDE; secrets from an environment variable and from files) and
/// one JSON destination.
async fn setup(receiver_port: u16, extra_destination: &str) -> Setup {
    let fake = FakeApi::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = fake.write_ca_file(dir.path()).unwrap();
    for (t, secret) in [(T1, "secret-one"), (T2, "secret-two"), (T3, "secret-three")] {
        fake.add_tenant(t, CLIENT, FakeCredential::Secret(secret.to_string()));
    }
    let secret_file = |name: &str, value: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("{value}\n")).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        p
    };
    let two = secret_file("fabrikam.secret", "secret-two");
    let three = secret_file("northwind.secret", "secret-three");
    let base = fake.base_url();
    let config = format!(
        r#"
state_dir = "{state}"
poll_interval = "300ms"
overlap = "2m"
initial_lookback = "1h"
page_size = 10
ca_file = "{ca}"
shutdown_timeout = "10s"

[[tenant]]
name = "contoso"
tenant_id = "{T1}"
client_id = "{CLIENT}"
client_secret = {{ env = "CONTOSO_SECRET" }}
authority_host = "{base}"
api_base_url = "{base}"

[[tenant]]
name = "fabrikam"
tenant_id = "{T2}"
client_id = "{CLIENT}"
client_secret = {{ file = "{two}" }}
authority_host = "{base}"
api_base_url = "{base}"
syslog_hostname = "fabrikam-collector"

[[tenant]]
name = "northwind"
tenant_id = "{T3}"
client_id = "{CLIENT}"
client_secret = {{ file = "{three}" }}
api = "mde"
authority_host = "{base}"
api_base_url = "{base}"

[[destination]]
url = "tcp://127.0.0.1:{receiver_port}"
format = "json"
syslog = "rfc5424"
hostname = "bridge"
{extra_destination}
"#,
        state = dir.path().join("state").display(),
        ca = ca.display(),
        two = two.display(),
        three = three.display(),
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).unwrap();
    Setup {
        fake,
        dir,
        config: path,
    }
}

fn start(config: &Path) -> tokio::process::Child {
    start_with(config, &[])
}

fn start_with(config: &Path, extra: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args(["run", "--config", config.to_str().unwrap()])
        .args(extra)
        .env("CONTOSO_SECRET", "secret-one")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
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

/// The records the receiver wrote, as versions, with the syslog HOSTNAME of each.
fn received(lines: &[Vec<u8>]) -> Vec<(Version, String)> {
    lines
        .iter()
        .map(|l| {
            let l = String::from_utf8_lossy(l);
            let host = l.split(' ').nth(2).unwrap().to_string();
            let json = &l[l.find('{').expect("a JSON record")..];
            let v: serde_json::Value = serde_json::from_str(json).unwrap();
            let t = DateTime::parse_from_rfc3339(v["lastUpdateDateTime"].as_str().unwrap())
                .unwrap()
                .with_timezone(&Utc);
            (
                (
                    v["tenantName"].as_str().unwrap().to_string(),
                    v["id"].as_str().unwrap().to_string(),
                    t,
                ),
                host,
            )
        })
        .collect()
}

/// Puts an alert version at the fake and into the expected set.
fn put(
    fake: &FakeApi,
    want: &mut BTreeSet<Version>,
    (tenant_id, name, api, id, t, status): (&str, &str, Api, &str, DateTime<Utc>, &str),
) {
    let alert = match api {
        Api::Graph => graph_alert(tenant_id, id, t, status, 1),
        Api::Mde => mde_alert(tenant_id, id, t, status),
    };
    fake.upsert_alert(tenant_id, api, alert);
    want.insert((name.to_string(), id.to_string(), t));
}

fn assert_exactly(got: &[Version], want: &BTreeSet<Version>) {
    let set: BTreeSet<Version> = got.iter().cloned().collect();
    assert_eq!(set.len(), got.len(), "duplicates: {got:#?}");
    let missing: Vec<_> = want.difference(&set).collect();
    let extra: Vec<_> = set.difference(want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:#?}\nextra {extra:#?}"
    );
}

async fn wait_lines(r: &support::Daemon, n: usize) -> Vec<Vec<u8>> {
    r.wait_for_lines(n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_version_of_every_tenant_arrives_once_across_restarts() {
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let s = setup(receiver.port, "").await;
    let mut want = BTreeSet::new();
    let mut add =
        |tenant_id: &str, name: &str, api: Api, id: &str, t: DateTime<Utc>, status: &str| {
            put(&s.fake, &mut want, (tenant_id, name, api, id, t, status))
        };
    // 12 alerts for contoso, with a page size of 10, and a few for the others.
    for i in 0..12 {
        add(
            T1,
            "contoso",
            Api::Graph,
            &format!("da-c-{i}"),
            ago(600 - i),
            "new",
        );
    }
    add(T2, "fabrikam", Api::Graph, "da-f-1", ago(300), "new");
    add(T3, "northwind", Api::Mde, "da638-n-1", ago(200), "New");

    let child = start(&s.config);
    let lines = wait_lines(&receiver, want.len()).await;
    let stderr = stop(child).await;
    let got = received(&lines);
    assert_exactly(&got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), &want);
    // The per-tenant syslog hostname, and the destination's elsewhere.
    for ((tenant, _, _), host) in &got {
        let expected = if tenant == "fabrikam" {
            "fabrikam-collector"
        } else {
            "bridge"
        };
        assert_eq!(host, expected);
    }
    assert!(
        !stderr.contains("secret-one") && !stderr.contains("secret-two"),
        "{stderr}"
    );

    // While stopped: a status update, a new alert, and a late alert: one that becomes visible
    // only now although its lastUpdate is a minute old, before the last poll (the overlap of
    // two minutes covers it).
    let mut want2 = BTreeSet::new();
    let mut add2 =
        |tenant_id: &str, name: &str, api: Api, id: &str, t: DateTime<Utc>, status: &str| {
            put(&s.fake, &mut want2, (tenant_id, name, api, id, t, status))
        };
    add2(T1, "contoso", Api::Graph, "da-c-0", ago(10), "resolved");
    add2(T2, "fabrikam", Api::Graph, "da-f-2", ago(5), "new");
    add2(T3, "northwind", Api::Mde, "da638-n-0", ago(60), "New");
    let child = start(&s.config);
    let lines = wait_lines(&receiver, want.len() + want2.len()).await;
    // Let it poll a few more times: nothing already sent may come again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop(child).await;
    let all: Vec<Version> = received(
        &receiver
            .output()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect::<Vec<_>>(),
    )
    .into_iter()
    .map(|g| g.0)
    .collect();
    assert_eq!(lines.len(), want.len() + want2.len());
    let every: BTreeSet<Version> = want.union(&want2).cloned().collect();
    assert_exactly(&all, &every);
}

/// The log says, per tenant at start, where it signs in and where it goes on from, and sums up
/// at stop; `--log-format json` makes every line one JSON object; no line holds a secret
/// (issue 10 §6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_says_where_tenants_resume_and_sums_up_at_stop_in_text_or_json() {
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let s = setup(receiver.port, "").await;
    let mut want = BTreeSet::new();
    put(
        &s.fake,
        &mut want,
        (T1, "contoso", Api::Graph, "da-log-1", ago(100), "new"),
    );
    let child = start(&s.config);
    wait_lines(&receiver, 1).await;
    let text = stop(child).await;
    for name in ["contoso", "fabrikam", "northwind"] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("tenant={name}")) && l.contains("polling the"))
            .unwrap_or_else(|| panic!("no start line for {name}:\n{text}"));
        assert!(line.contains("sign-in https://localhost:"), "{line}");
        assert!(
            line.contains("has no checkpoint yet: starts 1h back"),
            "{line}"
        );
    }
    assert!(
        text.contains("stopped: 1 alert version(s) queued this run"),
        "{text}"
    );
    assert!(text.contains("delivered 1 record(s)"), "{text}");

    let child = start_with(&s.config, &["--log-format", "json"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let json = stop(child).await;
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let start_line = lines
        .iter()
        .find(|l| {
            l["fields"]["tenant"] == "contoso"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("polling the"))
        })
        .unwrap_or_else(|| panic!("no start line:\n{json}"));
    assert!(
        start_line["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("resumes from ")),
        "{start_line}"
    );
    assert_eq!(start_line["level"], "INFO");
    assert!(lines.iter().any(|l| l["fields"]["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("stopped: 0 alert version(s)"))));
    for secret in ["secret-one", "secret-two", "secret-three"] {
        assert!(
            !text.contains(secret) && !json.contains(secret),
            "{secret} in the log"
        );
    }
}

/// One scrape of the daemon's endpoint: (status code, body).
async fn get(port: u16, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    match client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// A Prometheus text exposition as (name and sorted labels) → value.
fn samples(text: &str) -> std::collections::HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let key = match key.split_once('{') {
                None => key.to_string(),
                Some((name, labels)) => {
                    let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                    labels.sort();
                    format!("{name}{{{}}}", labels.join(","))
                }
            };
            Some((key, value.parse().ok()?))
        })
        .collect()
}

/// Waits until `f` holds for the answer to `path`.
async fn wait_for(port: u16, path: &str, what: &str, f: impl Fn(u16, &str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = get(port, path).await;
        if f(code, &body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The metrics endpoint counts what was polled, forwarded and delivered, exactly; `/readyz`
/// and `status` flip when the SIEM goes down and back; nothing on it holds a secret
/// (issue 10 §4, §5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_readiness_and_status_follow_the_run() {
    let mut receiver = rsyslog(RsyslogInput::Tcp).await;
    let s = setup(receiver.port, "").await;
    let port = support::free_port(support::Proto::Tcp);
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!("metrics_listen = \"127.0.0.1:{port}\"\n{config}"),
    )
    .unwrap();
    let mut want = BTreeSet::new();
    for i in 0..3 {
        put(
            &s.fake,
            &mut want,
            (
                T1,
                "contoso",
                Api::Graph,
                &format!("da-m-{i}"),
                ago(100 - i),
                "new",
            ),
        );
    }
    put(
        &s.fake,
        &mut want,
        (T2, "fabrikam", Api::Graph, "da-m-f", ago(90), "new"),
    );
    put(
        &s.fake,
        &mut want,
        (T3, "northwind", Api::Mde, "da638-m-n", ago(80), "New"),
    );
    let child = start(&s.config);
    wait_lines(&receiver, 5).await;
    let dest = format!("destination=\"tcp://127.0.0.1:{}\"", receiver.port);
    let delivered = format!("defender_bridge_records_delivered_total{{{dest}}}");
    // Ready once every tenant has had a successful poll.
    wait_for(port, "/readyz", "ready", |c, _| c == 200).await;
    let metrics = wait_for(port, "/metrics", "5 delivered", |c, b| {
        c == 200 && samples(b).get(&delivered) == Some(&5.0)
    })
    .await;
    let m = samples(&metrics);
    let at = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in\n{metrics}"))
    };
    for (tenant, n) in [("contoso", 3.0), ("fabrikam", 1.0), ("northwind", 1.0)] {
        let t = format!("tenant=\"{tenant}\"");
        assert_eq!(
            at(&format!(
                "defender_bridge_alert_versions_forwarded_total{{{t}}}"
            )),
            n
        );
        assert!(at(&format!("defender_bridge_alerts_polled_total{{{t}}}")) >= n);
        assert!(
            at(&format!(
                "defender_bridge_api_requests_total{{status=\"200\",{t}}}"
            )) >= 1.0
        );
        assert_eq!(
            at(&format!("defender_bridge_token_refreshes_total{{{t}}}")),
            1.0
        );
        assert_eq!(
            at(&format!(
                "defender_bridge_tenant_consecutive_failures{{{t}}}"
            )),
            0.0
        );
        assert!(
            at(&format!(
                "defender_bridge_tenant_last_success_timestamp_seconds{{{t}}}"
            )) > 1.7e9
        );
    }
    assert!(at(&format!("defender_bridge_bytes_delivered_total{{{dest}}}")) > 500.0);
    assert_eq!(at(&format!("defender_bridge_queue_depth{{{dest}}}")), 0.0);
    assert_eq!(
        at(&format!("defender_bridge_destination_up{{{dest}}}")),
        1.0
    );
    assert_eq!(
        at(&format!(
            "defender_bridge_delivery_latency_seconds_count{{{dest}}}"
        )),
        5.0
    );
    assert!(
        metrics.contains("# HELP defender_bridge_queue_depth "),
        "{metrics}"
    );
    assert_eq!(get(port, "/healthz").await, (200, "ok\n".to_string()));
    let status = |code: i32| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
            .args(["status", "--config", s.config.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let table = status(0);
    assert!(
        table.contains("contoso") && table.contains("northwind"),
        "{table}"
    );
    assert!(table.contains("all well"), "{table}");

    // The SIEM goes down while an alert waits: not ready, and status says why.
    receiver.kill();
    put(
        &s.fake,
        &mut want,
        (T1, "contoso", Api::Graph, "da-m-late", ago(10), "new"),
    );
    let body = wait_for(port, "/readyz", "not ready", |c, _| c == 503).await;
    assert!(
        body.contains(&format!(
            "destination tcp://127.0.0.1:{}: down",
            receiver.port
        )),
        "{body}"
    );
    let table = status(1);
    assert!(
        table.contains("needs attention") && table.contains("down"),
        "{table}"
    );
    let m = samples(&get(port, "/metrics").await.1);
    assert_eq!(
        m.get(&format!("defender_bridge_destination_up{{{dest}}}")),
        Some(&0.0)
    );
    // And back: ready again, and the waiting alert delivered.
    receiver.start().await;
    wait_for(port, "/readyz", "ready again", |c, _| c == 200).await;
    // Every version arrives; the kill makes resend_on_reconnect send the last ones again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got: BTreeSet<Version> = received(&support::split_lines(&receiver.output()))
            .into_iter()
            .map(|g| g.0)
            .collect();
        if got.len() >= want.len() || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let metrics = get(port, "/metrics").await.1;
    let status_json = get(port, "/status").await.1;
    stop(child).await;
    assert_eq!(got, want);
    for secret in ["secret-one", "secret-two", "secret-three"] {
        assert!(
            !metrics.contains(secret) && !status_json.contains(secret),
            "{secret}"
        );
    }
    // Stopped: status cannot reach it, and says so with its own exit code.
    status(2);
}

/// SIGHUP reloads the configuration: a tenant added starts polling, one removed stops, a new
/// destination gets what is queued from then on, and nothing of the running ones is lost or
/// sent twice; a configuration that does not validate is refused and the old one runs on
/// (issue 10 §3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_starts_and_stops_tenants_and_destinations_and_refuses_a_broken_config() {
    const T4: &str = "aaaaaaaa-0000-4000-8000-000000000004";
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let added = rsyslog(RsyslogInput::Tcp).await;
    let s = setup(receiver.port, "").await;
    s.fake
        .add_tenant(T4, CLIENT, FakeCredential::Secret("secret-four".into()));
    let four = s.dir.path().join("woodgrove.secret");
    std::fs::write(&four, "secret-four\n").unwrap();
    let mut first = BTreeSet::new();
    put(
        &s.fake,
        &mut first,
        (T1, "contoso", Api::Graph, "da-r-1", ago(100), "new"),
    );
    put(
        &s.fake,
        &mut first,
        (T3, "northwind", Api::Mde, "da638-r-1", ago(100), "New"),
    );
    let child = start(&s.config);
    let pid = child.id().unwrap().to_string();
    wait_lines(&receiver, 2).await;
    let hup = || {
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
    };

    // northwind out, woodgrove in, a second destination.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let start_nw = text.find("[[tenant]]\nname = \"northwind\"").unwrap();
    let end_nw = start_nw + text[start_nw..].find("\n[[destination]]").unwrap();
    let base = s.fake.base_url();
    let reloaded = format!(
        "{}[[tenant]]\nname = \"woodgrove\"\ntenant_id = \"{T4}\"\nclient_id = \"{CLIENT}\"\nclient_secret = {{ file = \"{}\" }}\nauthority_host = \"{base}\"\napi_base_url = \"{base}\"\n{}\n[[destination]]\nname = \"added\"\nurl = \"tcp://127.0.0.1:{}\"\nformat = \"json\"\n",
        &text[..start_nw],
        four.display(),
        &text[end_nw..],
        added.port
    );
    // The first destination changes (its syslog host name): it restarts with its cursor.
    let reloaded = reloaded.replace("hostname = \"bridge\"", "hostname = \"bridge-2\"");
    std::fs::write(&s.config, &reloaded).unwrap();
    hup();
    // Wait for the reload to be done before new alerts appear, so the set each destination
    // must get is exact.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut second = BTreeSet::new();
    put(
        &s.fake,
        &mut second,
        (T1, "contoso", Api::Graph, "da-r-2", ago(50), "new"),
    );
    put(
        &s.fake,
        &mut second,
        (T4, "woodgrove", Api::Graph, "da-r-w", ago(50), "new"),
    );
    // northwind is no longer polled: this one goes nowhere.
    s.fake
        .upsert_alert(T3, Api::Mde, mde_alert(T3, "da638-r-2", ago(50), "New"));
    wait_lines(&receiver, 4).await;
    wait_lines(&added, 2).await;

    // A broken file is refused; the daemon runs on with what it had.
    std::fs::write(&s.config, format!("{reloaded}\ncolour = \"blue\"\n")).unwrap();
    hup();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut third = BTreeSet::new();
    put(
        &s.fake,
        &mut third,
        (T4, "woodgrove", Api::Graph, "da-r-w2", ago(20), "new"),
    );
    wait_lines(&receiver, 5).await;
    wait_lines(&added, 3).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stderr = stop(child).await;
    assert!(
        stderr.contains("configuration reloaded: 2 started, 1 stopped, 1 restarted"),
        "{stderr}"
    );
    assert!(
        stderr.contains("reload refused, the running configuration stays"),
        "{stderr}"
    );
    assert!(stderr.contains("unknown field `colour`"), "{stderr}");
    let all: BTreeSet<Version> = first.iter().chain(&second).chain(&third).cloned().collect();
    let got = received(&support::split_lines(&receiver.output()));
    assert_exactly(&got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), &all);
    for (version, host) in &got {
        let want = if first.contains(version) {
            "bridge"
        } else {
            "bridge-2"
        };
        assert_eq!(host, want, "{version:?}");
    }
    let later: BTreeSet<Version> = second.iter().chain(&third).cloned().collect();
    let got = received(&support::split_lines(&added.output()));
    assert_exactly(&got.iter().map(|g| g.0.clone()).collect::<Vec<_>>(), &later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_tenant_and_a_wrong_secret_never_hold_up_the_others() {
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let s = setup(receiver.port, "").await;
    // fabrikam's API answers 500 for the first 20 seconds; northwind's secret is wrong.
    s.fake.fail_for(T2, Duration::from_secs(20));
    std::fs::write(s.dir.path().join("northwind.secret"), "not-the-secret").unwrap();
    let t = ago(60);
    s.fake
        .upsert_alert(T1, Api::Graph, graph_alert(T1, "da-ok", t, "new", 1));
    s.fake
        .upsert_alert(T2, Api::Graph, graph_alert(T2, "da-500", t, "new", 1));
    s.fake
        .upsert_alert(T3, Api::Mde, mde_alert(T3, "da638-bad", t, "New"));
    let child = start(&s.config);
    // contoso's alert arrives while fabrikam fails.
    let lines = wait_lines(&receiver, 1).await;
    let got = received(&lines);
    assert_eq!(got[0].0 .1, "da-ok");
    let stderr = stop(child).await;
    assert!(stderr.contains("fabrikam"), "{stderr}");
    assert!(
        stderr.contains("northwind") && stderr.contains("wrong client secret"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-secret"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_filter_by_tenant_and_severity() {
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let high_only = rsyslog(RsyslogInput::Tcp).await;
    let extra = format!(
        "\n[[destination]]\nurl = \"tcp://127.0.0.1:{}\"\nformat = \"json\"\nhostname = \"bridge\"\ntenants = [\"contoso\"]\nmin_severity = \"high\"\n",
        high_only.port
    );
    let s = setup(receiver.port, &extra).await;
    // graph_alert's last argument picks the sample; find one high and one not.
    let mut high = None;
    let mut low = None;
    for i in 0..8 {
        let a = graph_alert(T1, &format!("da-s-{i}"), ago(100 - i as i64), "new", i);
        match a["severity"].as_str().unwrap() {
            "high" if high.is_none() => high = Some(a),
            "high" => {}
            _ if low.is_none() => low = Some(a),
            _ => {}
        }
    }
    let (high, low) = (high.expect("a high sample"), low.expect("another sample"));
    s.fake.upsert_alert(T1, Api::Graph, high.clone());
    s.fake.upsert_alert(T1, Api::Graph, low.clone());
    s.fake.upsert_alert(
        T2,
        Api::Graph,
        graph_alert(T2, "da-other-tenant", ago(50), "new", 0),
    );
    let child = start(&s.config);
    let all = wait_lines(&receiver, 3).await;
    let filtered = wait_lines(&high_only, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop(child).await;
    assert_eq!(all.len(), 3);
    assert_eq!(
        high_only.output().iter().filter(|&&b| b == b'\n').count(),
        1
    );
    let got = received(&filtered);
    assert_eq!(got[0].0 .1, high["id"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_and_tenants_verify_say_ok_or_what_is_wrong() {
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let s = setup(
        receiver.port,
        "\n[[destination]]\nurl = \"tcp://127.0.0.1:1\"\nformat = \"qradar\"\n\
         [[destination]]\nurl = \"tcp://no-such-siem.invalid:514\"\nformat = \"json\"\n",
    )
    .await;
    std::fs::write(s.dir.path().join("northwind.secret"), "wrong").unwrap();
    s.fake.set_roles(T2, &["User.Read.All"]);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
            .args(args)
            .args(["--config", s.config.to_str().unwrap()])
            .env("CONTOSO_SECRET", "secret-one")
            .output()
            .unwrap()
    };
    let out = tokio::task::block_in_place(|| run(&["check"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(": OK: 3 tenant(s), 3 destination(s)"),
        "{stdout}"
    );
    // A name that does not resolve (DNS not up yet at boot) is a warning offline, not a failure
    // that would keep the unit from starting.
    assert!(
        stdout.contains("destination tcp://no-such-siem.invalid:514: format json, WARNING: "),
        "{stdout}"
    );
    let resolved = format!(
        "destination tcp://127.0.0.1:{0}: format json, resolves to 127.0.0.1:{0}",
        receiver.port
    );
    assert!(stdout.contains(&resolved), "{stdout}");
    // The tests' tenants sign in at the fake: said as it is, not as "commercial cloud".
    assert!(
        stdout.contains("tenant northwind: mde API, sign-in https://localhost:"),
        "{stdout}"
    );
    assert!(stdout.contains("(custom endpoints)"), "{stdout}");
    assert!(!stdout.contains("commercial cloud"), "{stdout}");
    let out = tokio::task::block_in_place(|| run(&["check", "--online"]));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("tenant contoso: OK: signed in, 0 alert(s) on the first page"),
        "{stdout}"
    );
    assert!(
        stdout.contains("tenant northwind: FAILED: sign-in failed: wrong client secret"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "destination tcp://127.0.0.1:{}: OK: test alert defender-bridge-test-",
            receiver.port
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("destination tcp://127.0.0.1:1: FAILED: connecting to 127.0.0.1:1 failed"),
        "{stdout}"
    );
    assert!(!stdout.contains("wrong\n") && !stdout.contains("secret-one"));
    let out = tokio::task::block_in_place(|| run(&["tenants", "verify"]));
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "tenant contoso: OK: tenant {T1}, roles SecurityAlert.Read.All"
        )),
        "{stdout}"
    );
    assert!(
        stdout
            .contains("tenant fabrikam: FAILED: the app has no SecurityAlert.Read.All permission"),
        "{stdout}"
    );
    let got = receiver.wait_for_lines(1).await;
    assert!(String::from_utf8_lossy(&got[0]).contains("defender-bridge test alert"));
    // --no-send: connected, and nothing more arrives at the SIEM.
    let out = tokio::task::block_in_place(|| run(&["check", "--online", "--no-send"]));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "destination tcp://127.0.0.1:{}: OK: connected (no test record: --no-send)",
            receiver.port
        )),
        "{stdout}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(support::split_lines(&receiver.output()).len(), 1);
}

/// A second `run` on the same state directory refuses to start and says why, while the first
/// keeps it; the first, under its lock, has removed a temp file left by an interrupted save.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_one_state_dir_refuses_and_leftover_temp_files_go() {
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let s = setup(receiver.port, "").await;
    let state = s.dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let leftover = state.join(format!("{T1}-graph.json.tmp4242"));
    std::fs::write(&leftover, b"{ half a checkp").unwrap();
    let first = start(&s.config);
    tokio::time::timeout(Duration::from_secs(30), async {
        while leftover.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the first run removes the leftover temp file");
    let second = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
            .args(["run", "--config", s.config.to_str().unwrap()])
            .env("CONTOSO_SECRET", "secret-one")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the second run exits")
    .unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the state directory {} is in use by another defender-bridge",
            state.display()
        )),
        "{stderr}"
    );
    // The first is unharmed: it still polls and delivers.
    let t = ago(30);
    s.fake
        .upsert_alert(T1, Api::Graph, graph_alert(T1, "da-lock", t, "new", 1));
    let got = received(&wait_lines(&receiver, 1).await);
    assert_eq!(got[0].0 .1, "da-lock");
    stop(first).await;
}

/// A tenant whose certificate is not there when the daemon starts (a secret volume mounted
/// late) is retried until the file appears, then polled: its alert arrives, and the failed
/// starts were reported with the tenant's name and the retry delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_whose_certificate_appears_later_starts_polling() {
    const T4: &str = "aaaaaaaa-0000-4000-8000-000000000004";
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let pem = tempfile::tempdir().unwrap();
    let cert_path = pem.path().join("app.pem");
    let extra = format!(
        "\n[[tenant]]\nname = \"late-cert\"\ntenant_id = \"{T4}\"\nclient_id = \"{CLIENT}\"\ncertificate = {{ pem = \"{}\" }}\nauthority_host = \"{{BASE}}\"\napi_base_url = \"{{BASE}}\"\n",
        cert_path.display()
    );
    let s = setup(receiver.port, &extra).await;
    // setup() knows the fake's address only once it runs; put it into the extra block now.
    let config = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("{BASE}", s.fake.base_url().as_str());
    std::fs::write(&s.config, config).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "defender-bridge test app");
    let cert = params.self_signed(&key).unwrap();
    s.fake
        .add_tenant(T4, CLIENT, FakeCredential::Certificate(cert.pem()));
    s.fake.upsert_alert(
        T4,
        Api::Graph,
        graph_alert(T4, "da-late-cert", ago(30), "new", 1),
    );

    let child = start(&s.config);
    // The other tenants run meanwhile (nothing to send), and this one fails to start.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    let got = received(&wait_lines(&receiver, 1).await);
    assert_eq!(
        got[0].0,
        (
            "late-cert".to_string(),
            "da-late-cert".to_string(),
            got[0].0 .2
        )
    );
    let stderr = stop(child).await;
    assert!(
        stderr.contains("late-cert")
            && stderr.contains("cannot start polling")
            && stderr.contains("retrying in"),
        "{stderr}"
    );
}

/// A certificate (its notAfter) or a client secret (`secret_expires`) that expires within 30
/// days is warned in the log and kept as a metric; one further off is not (issue 10 §7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_about_to_expire_are_warned() {
    use chrono::Datelike;
    const T4: &str = "aaaaaaaa-0000-4000-8000-000000000004";
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let pem = tempfile::tempdir().unwrap();
    let cert_path = pem.path().join("app.pem");
    let extra = format!(
        "\n[[tenant]]\nname = \"expiring-cert\"\ntenant_id = \"{T4}\"\nclient_id = \"{CLIENT}\"\ncertificate = {{ pem = \"{}\" }}\nauthority_host = \"{{BASE}}\"\napi_base_url = \"{{BASE}}\"\n",
        cert_path.display()
    );
    let s = setup(receiver.port, &extra).await;
    let day = |days: i64| {
        (Utc::now() + chrono::Duration::days(days))
            .format("%Y-%m-%d")
            .to_string()
    };
    let port = support::free_port(support::Proto::Tcp);
    let config = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("{BASE}", s.fake.base_url().as_str())
        .replacen(
            "client_secret = { env = \"CONTOSO_SECRET\" }",
            &format!(
                "client_secret = {{ env = \"CONTOSO_SECRET\" }}\nsecret_expires = \"{}\"",
                day(5)
            ),
            1,
        )
        .replacen(
            "syslog_hostname = \"fabrikam-collector\"",
            &format!(
                "syslog_hostname = \"fabrikam-collector\"\nsecret_expires = \"{}\"",
                day(100)
            ),
            1,
        );
    std::fs::write(
        &s.config,
        format!("metrics_listen = \"127.0.0.1:{port}\"\n{config}"),
    )
    .unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "defender-bridge test app");
    let expires = Utc::now() + chrono::Duration::days(10);
    params.not_after =
        rcgen::date_time_ymd(expires.year(), expires.month() as u8, expires.day() as u8);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(&cert_path, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    s.fake
        .add_tenant(T4, CLIENT, FakeCredential::Certificate(cert.pem()));
    let child = start(&s.config);
    let metrics = wait_for(port, "/metrics", "the expiry gauge", |c, b| {
        c == 200
            && b.contains(
                "defender_bridge_credential_expiry_timestamp_seconds{tenant=\"expiring-cert\"}",
            )
    })
    .await;
    let stderr = stop(child).await;
    let line = |tenant: &str| {
        stderr
            .lines()
            .find(|l| l.contains(&format!("tenant={tenant}")) && l.contains("expires in"))
            .map(str::to_string)
    };
    let cert_line = line("expiring-cert").unwrap_or_else(|| panic!("no warning:\n{stderr}"));
    assert!(
        cert_line.contains("WARN") && cert_line.contains("the certificate of app"),
        "{cert_line}"
    );
    let secret_line = line("contoso").unwrap_or_else(|| panic!("no warning:\n{stderr}"));
    assert!(
        secret_line.contains("the client secret of app"),
        "{secret_line}"
    );
    assert!(line("fabrikam").is_none(), "{stderr}");
    let m = samples(&metrics);
    let at = |t: &str| {
        m.get(&format!(
            "defender_bridge_credential_expiry_timestamp_seconds{{tenant=\"{t}\"}}"
        ))
        .copied()
    };
    let cert_at = at("expiring-cert").expect("cert gauge");
    assert!(
        (cert_at - expires.timestamp() as f64).abs() < 2.0 * 86_400.0,
        "{cert_at}"
    );
    assert!(at("fabrikam").is_some() && at("northwind").is_none());
}

/// Secrets in the environment, in files, a proxy password, and one (wrongly) written inline:
/// through a failing sign-in, a proxy, debug logging, the metrics and status endpoints and the
/// config error, none of them appears anywhere, nor any access token (issue 10 §6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_a_metric_or_an_error() {
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let s = setup(receiver.port, "").await;
    // fabrikam's file holds a wrong secret: its sign-in fails, again and again.
    std::fs::write(s.dir.path().join("fabrikam.secret"), "wrong-file-S3cret\n").unwrap();
    let (proxy, seen) =
        support::proxy::start_proxy(s.fake.local_addr(), "user", "pr0xy-S3cret").await;
    let port = support::free_port(support::Proto::Tcp);
    let config = std::fs::read_to_string(&s.config).unwrap();
    std::fs::write(
        &s.config,
        format!(
            "metrics_listen = \"127.0.0.1:{port}\"\nproxy = \"http://{proxy}\"\nproxy_username = \"user\"\nproxy_password = {{ env = \"PROXY_PASSWORD\" }}\n{config}"
        ),
    )
    .unwrap();
    let mut want = BTreeSet::new();
    put(
        &s.fake,
        &mut want,
        (T1, "contoso", Api::Graph, "da-s-1", ago(50), "new"),
    );
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args(["run", "--config", s.config.to_str().unwrap()])
        .env("CONTOSO_SECRET", "secret-one")
        .env("PROXY_PASSWORD", "pr0xy-S3cret")
        // Every crate's debug lines: the widest net for a leak.
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_lines(&receiver, 1).await;
    let status_body = wait_for(port, "/status", "fabrikam failing", |c, b| {
        c == 200 && b.contains("wrong client secret")
    })
    .await;
    let metrics = get(port, "/metrics").await.1;
    let stderr = stop(child).await;
    assert!(
        !seen.lock().unwrap().is_empty(),
        "nothing went through the proxy"
    );
    assert!(stderr.contains("wrong client secret"), "{stderr}");
    // Inline: refused by check, without repeating it.
    let inline = s.dir.path().join("inline.toml");
    std::fs::write(
        &inline,
        config.replacen(
            "client_secret = { env = \"CONTOSO_SECRET\" }",
            "client_secret = \"inline-S3cret\"",
            1,
        ),
    )
    .unwrap();
    let checked = std::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args(["check", "--config", inline.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!checked.status.success());
    let check_out = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        check_out.contains("cannot be written in the configuration file"),
        "{check_out}"
    );
    for (what, text) in [
        ("the log", &stderr),
        ("the metrics", &metrics),
        ("the status", &status_body),
        ("check", &check_out),
    ] {
        for secret in [
            "secret-one",
            "wrong-file-S3cret",
            "secret-three",
            "pr0xy-S3cret",
            "pr0xy%2DS3cret",
            "inline-S3cret",
        ] {
            assert!(!text.contains(secret), "{secret} in {what}");
        }
        // The fake's tokens are JWTs: a header of one starts so.
        assert!(!text.contains("eyJ"), "a token in {what}");
    }
}
