//! Scale-out (issue 13): three processes of the real binary share 1,000 tenants of the fake
//! API with `--shard I/3`, each with its own state directory, all sending to one receiver.
//! Every tenant is polled by exactly one instance; a SIGKILL of one loses nothing; going from
//! 3 to 4 shards with `state export` / `state import` (README "Scale-out") delivers every
//! version of every alert and repeats none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use defender_bridge::fake_api::samples::graph_alert;
use defender_bridge::fake_api::{FakeApi, FakeCredential};
use defender_bridge::shard::Shard;
use defender_bridge::source::Api;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

const TENANTS: usize = 1000;
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";
const SECRET: &str = "s3cret-shared";

fn tenant_id(i: usize) -> String {
    format!("cccccccc-0000-4000-8000-{:012}", i + 1)
}

/// An alert version: its id and lastUpdateDateTime, as an instant. Not the text: the API
/// writes 7 fractional digits and a record 0, 3, 6 or 9 (RFC 3339 as chrono writes it), so
/// `.0145890Z` arrives as `.014589Z` — whenever the 7th digit is 0, for every alert of a
/// publication stamped from one instant, which made this test fail one run in a few.
type Version = (String, chrono::DateTime<chrono::Utc>);

/// Every line the receiver read, as versions → times seen.
type Seen = Arc<Mutex<BTreeMap<Version, usize>>>;

fn instant(t: &str) -> chrono::DateTime<chrono::Utc> {
    t.parse()
        .unwrap_or_else(|e| panic!("{t:?} is not an RFC 3339 time: {e}"))
}

/// A TCP receiver of JSON records, one per line, from any number of connections.
async fn receiver() -> (u16, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            // EMFILE and the like pass: a receiver that stopped accepting would look like loss.
            let conn = match listener.accept().await {
                Ok((conn, _)) => conn,
                Err(e) => {
                    eprintln!("receiver: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let s = s.clone();
            eprintln!("receiver: connection from {:?}", conn.peer_addr());
            tokio::spawn(async move {
                let mut lines = tokio::io::BufReader::new(conn).lines();
                loop {
                    let line = match lines.next_line().await {
                        Ok(Some(line)) => line,
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("receiver: read: {e}");
                            break;
                        }
                    };
                    // A killed instance may leave half a line at the end of its connection.
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                        eprintln!("not a whole record: {line:.80}");
                        continue;
                    };
                    let key = (
                        v["id"].as_str().unwrap().to_string(),
                        instant(v["lastUpdateDateTime"].as_str().unwrap()),
                    );
                    *s.lock().unwrap().entry(key).or_default() += 1;
                }
            });
        }
    });
    (port, seen)
}

fn write_config(
    dir: &Path,
    fake: &FakeApi,
    ca: &Path,
    port: u16,
    tenants: usize,
    extra: &str,
) -> PathBuf {
    let base = fake.base_url();
    let mut c = format!(
        r#"
{extra}
poll_interval = "2s"
initial_lookback = "1h"
ca_file = "{ca}"
log_level = "error"

[[destination]]
url = "tcp://127.0.0.1:{port}"
format = "json"
syslog = "none"
"#,
        ca = ca.display()
    );
    for i in 0..tenants {
        c.push_str(&format!(
            "\n[[tenant]]\nname = \"t{i:04}\"\ntenant_id = \"{}\"\nclient_id = \"{CLIENT}\"\nclient_secret = {{ env = \"SHARED_SECRET\" }}\nauthority_host = \"{base}\"\napi_base_url = \"{base}\"\n",
            tenant_id(i)
        ));
    }
    let path = dir.join("config.toml");
    std::fs::write(&path, c).unwrap();
    path
}

struct Setup {
    fake: FakeApi,
    dir: tempfile::TempDir,
    seen: Seen,
    config: PathBuf,
}

/// The fake API with `tenants` tenants answering after `latency`, a receiver, and a
/// configuration of them all (`extra`: more top-level settings).
async fn setup(tenants: usize, latency: Duration, extra: &str) -> Setup {
    let fake = FakeApi::start().await.unwrap();
    fake.set_latency(latency);
    for i in 0..tenants {
        fake.add_tenant(&tenant_id(i), CLIENT, FakeCredential::Secret(SECRET.into()));
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = fake.write_ca_file(dir.path()).unwrap();
    let (port, seen) = receiver().await;
    let config = write_config(dir.path(), &fake, &ca, port, tenants, extra);
    Setup {
        fake,
        dir,
        seen,
        config,
    }
}

fn start(config: &Path, state: &Path, shard: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args(["run", "--config", config.to_str().unwrap()])
        .args(["--shard", shard, "--state-dir", state.to_str().unwrap()])
        .args(["--metrics-listen", ""])
        .env("SHARED_SECRET", SECRET)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn stop(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("the daemon stops on SIGTERM")
        .unwrap();
    assert!(status.success(), "{status}");
}

/// Version `v` of every alert (one alert per tenant), stamped about now (as the API stamps a
/// new version; the overlap reaches back 10 minutes only) and later than version `v - 1`
/// (`last`: the time of the previous publication), whose time a poller keeps as the alert's.
fn publish(
    fake: &FakeApi,
    v: u32,
    last: &mut chrono::DateTime<chrono::Utc>,
    tenants: usize,
) -> Vec<Version> {
    let t0 = (chrono::Utc::now() - chrono::Duration::seconds(2))
        .max(*last + chrono::Duration::seconds(2));
    *last = t0;
    (0..tenants)
        .map(|i| {
            let tid = tenant_id(i);
            let id = format!("da-{i:05}");
            let t = t0 + chrono::Duration::milliseconds(i as i64);
            let a = graph_alert(
                &tid,
                &id,
                t,
                ["new", "inProgress", "resolved"][v as usize % 3],
                i,
            );
            let last = instant(a["lastUpdateDateTime"].as_str().unwrap());
            fake.upsert_alert(&tid, Api::Graph, a);
            (id, last)
        })
        .collect()
}

async fn wait_for(fake: &FakeApi, seen: &Seen, want: &[Version], what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let missing: Vec<&Version> = {
            let s = seen.lock().unwrap();
            want.iter().filter(|k| !s.contains_key(*k)).collect()
        };
        if missing.is_empty() {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            // Served by the fake and not received is the daemon's loss; not served, its windows'.
            let served: std::collections::HashSet<Version> = fake
                .served()
                .into_iter()
                .map(|s| (s.id, s.last_update))
                .collect();
            let (id, at) = missing[0];
            let i: usize = id.trim_start_matches("da-").parse().unwrap();
            let requests: Vec<String> = fake
                .requests()
                .into_iter()
                .filter(|r| r.tenant.as_deref() == Some(tenant_id(i).as_str()))
                .map(|r| format!("{} {:?} {}", r.status, r.query, r.path))
                .collect();
            let (received, of_first) = {
                let s = seen.lock().unwrap();
                let of: Vec<String> = s
                    .keys()
                    .filter(|(i, _)| i == &missing[0].0)
                    .map(|(_, t)| t.to_rfc3339())
                    .collect();
                (s.len(), of)
            };
            panic!(
                "{what}: {} of {} versions missing ({} of them served by the fake, {received} \
                 received in all); the first, \
                 {id} at {at} (received at {of_first:?}), tenant {i}: {} requests: {:#?}",
                missing.len(),
                want.len(),
                missing.iter().filter(|k| served.contains(**k)).count(),
                requests.len(),
                &requests[requests.len().saturating_sub(4)..],
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn duplicates(seen: &Seen) -> usize {
    seen.lock().unwrap().values().map(|n| n - 1).sum()
}

fn export(config: &Path, state: &Path) -> Vec<u8> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args(["state", "export", "--config", config.to_str().unwrap()])
        .args(["--state-dir", state.to_str().unwrap()])
        .env("SHARED_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_shards_share_the_tenants_survive_a_kill_9_and_grow_to_four() {
    // This process serves the API to three or four daemons of 250+ tenants each, one HTTPS
    // connection per polling tenant: more than a soft limit of 1,024 open files (CI's), which
    // the daemons raise for themselves as well.
    defender_bridge::limits::raise_open_files();
    let Setup {
        fake,
        dir,
        seen,
        config,
    } = setup(TENANTS, Duration::ZERO, "").await;
    let state = |i: usize| dir.path().join(format!("state-{i}"));

    // `check` shows the shard's share.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args([
            "check",
            "--config",
            config.to_str().unwrap(),
            "--shard",
            "1/3",
        ])
        .env("SHARED_SECRET", SECRET)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let owned = (0..TENANTS)
        .filter(|&i| Shard::owner(&tenant_id(i), Api::Graph, 3) == 1)
        .count();
    assert!(
        text.contains(&format!("shard 1/3: {owned} of {TENANTS} tenant(s)")),
        "{text}"
    );

    // 1. Three shards: every first version arrives, each tenant signed in by one instance.
    let mut last = chrono::Utc::now() - chrono::Duration::minutes(5);
    let mut want = publish(&fake, 0, &mut last, TENANTS);
    let mut shards: Vec<Child> = (0..3)
        .map(|i| start(&config, &state(i), &format!("{i}/3")))
        .collect();
    wait_for(&fake, &seen, &want, "three shards").await;
    for i in 0..TENANTS {
        assert_eq!(
            fake.tokens_issued(&tenant_id(i)),
            1,
            "tenant {i}: one instance, one token"
        );
    }
    assert_eq!(duplicates(&seen), 0);

    // 2. SIGKILL of shard 1 while new versions come; restarted, it loses nothing.
    want.extend(publish(&fake, 1, &mut last, TENANTS));
    let mut killed = shards.remove(1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    killed.start_kill().unwrap();
    let _ = killed.wait().await;
    shards.insert(1, start(&config, &state(1), "1/3"));
    wait_for(&fake, &seen, &want, "after the SIGKILL").await;
    let after_kill = duplicates(&seen);
    // At most what shard 1 had sent and not yet moved its cursor past: its share of one version.
    assert!(after_kill <= owned, "{after_kill} duplicates");

    // 3. From 3 to 4 shards: stop, export every instance's checkpoints, import them into the
    //    four instances (the new one takes the moved tenants'), start with 4.
    for c in shards.drain(..) {
        stop(c).await;
    }
    let mut files = Vec::new();
    for i in 0..3 {
        let f = dir.path().join(format!("export-{i}.json"));
        std::fs::write(&f, export(&config, &state(i))).unwrap();
        files.push(f);
    }
    for i in 0..4 {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
            .args(["state", "import", "--config", config.to_str().unwrap()])
            .args([
                "--shard",
                &format!("{i}/4"),
                "--state-dir",
                state(i).to_str().unwrap(),
            ])
            .args(&files)
            .env("SHARED_SECRET", SECRET)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tokens_before: Vec<u32> = (0..TENANTS)
        .map(|i| fake.tokens_issued(&tenant_id(i)))
        .collect();
    let shards: Vec<Child> = (0..4)
        .map(|i| start(&config, &state(i), &format!("{i}/4")))
        .collect();
    // The moved tenants' current versions were delivered by their old owners: the new owner,
    // resuming from their checkpoints, does not send them again (without the import it would
    // start from initial_lookback and repeat every one of them).
    tokio::time::sleep(Duration::from_secs(8)).await;
    want.extend(publish(&fake, 2, &mut last, TENANTS));
    wait_for(&fake, &seen, &want, "four shards").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        duplicates(&seen),
        after_kill,
        "moving tenants to the new shard repeated versions"
    );
    let moved: Vec<usize> = (0..TENANTS)
        .filter(|&i| {
            Shard::owner(&tenant_id(i), Api::Graph, 3) != Shard::owner(&tenant_id(i), Api::Graph, 4)
        })
        .collect();
    assert!((150..=350).contains(&moved.len()), "{}", moved.len());
    for &i in &moved {
        // Polled by its new owner (a token of its own) and by no one else.
        assert_eq!(
            fake.tokens_issued(&tenant_id(i)),
            tokens_before[i] + 1,
            "tenant {i}"
        );
    }
    assert_eq!(seen.lock().unwrap().len(), 3 * TENANTS);
    for c in shards {
        stop(c).await;
    }
}

/// Issue 13 §5: the requests in flight, and with them the pooled connections and their
/// descriptors, stay under `max_concurrent_requests` however many tenants poll at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_stay_under_max_concurrent_requests() {
    const N: usize = 200;
    const SLOTS: usize = 8;
    defender_bridge::limits::raise_open_files();
    let Setup {
        fake,
        dir,
        seen,
        config,
    } = setup(
        N,
        Duration::from_millis(50),
        &format!("max_concurrent_requests = {SLOTS}"),
    )
    .await;
    let mut last = chrono::Utc::now() - chrono::Duration::minutes(5);
    let want = publish(&fake, 0, &mut last, N);
    let child = start(&config, &dir.path().join("state"), "0/1");
    wait_for(&fake, &seen, &want, "every tenant's alert").await;
    // A second sweep or more, from the pooled connections.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id().unwrap()))
        .unwrap()
        .count();
    let most = fake.most_concurrent_requests();
    stop(child).await;
    assert!(
        (2..=SLOTS).contains(&most),
        "{most} requests in flight at once, {SLOTS} allowed"
    );
    // Without the bound: one connection per tenant, over 200 descriptors.
    assert!(fds < 64, "{fds} open descriptors for {N} tenants");
    assert_eq!(duplicates(&seen), 0);
}
