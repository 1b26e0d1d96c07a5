//! Issue 9 "Performance": replay of a backlog of 1,000,000 queued alerts to a local TCP
//! receiver; records/s (target: at least ~50,000/s, `send`'s rate on a 2-core machine) and the
//! peak memory of the process doing the replay (target: under 50 MB, however long the backlog).
//!
//! cargo bench --bench replay
//! REPLAY_RECORDS=100000 REPLAY_RUNS=1 cargo bench --bench replay     (a quick look)
//! REPLAY_FORMAT=json REPLAY_DESTINATION_EXTRA='queue_capacity = 1000' cargo bench --bench replay
//!     (another format; more lines for the `[[destination]]` block)
//!
//! Set-up (not timed): a queue (`queue.redb`) is filled through the queue's public API
//! ([`Queue::append_records`], 10,000 records per transaction) with `REPLAY_RECORDS` alert
//! versions, each an MDE alert of about 1.2 KB (`tests/data/mde-alert-get-docs.json` without
//! its null fields and evidence) with its own id, behind the cursor of a destination named
//! `bench` that has delivered nothing: a SIEM that was down while the backlog built up.
//!
//! Each run (`REPLAY_RUNS`, 3 by default) copies that queue into a fresh state directory and
//! starts the real binary, `defender-bridge run`, on it: its one tenant's sign-in endpoint is
//! a closed port on 127.0.0.1 (so nothing new is polled; the tenant retries with backoff), its
//! one destination is `tcp://` (LF framing, ArcSight CEF with an RFC 5424 header) to a reader
//! in this process that counts LF-terminated records and discards them. So what is measured
//! is the daemon's own path: the forwarder reading its cursor, decoding each stored alert,
//! encoding it, the TCP writer, and the cursor's acknowledgements with space reclaimed.
//!
//! Measured: the time from starting the process to the last record read by the receiver
//! (records/s), and the process's VmHWM (peak RSS, /proc/PID/status) read once every record
//! has arrived, before it is stopped. Then SIGTERM; the run fails unless the process exits
//! cleanly, exactly `REPLAY_RECORDS` records arrived (none missing, none twice) and the
//! reopened queue shows the destination's cursor at the head with every record reclaimed.
//! Prints each run and the medians. Exits 1 when a run failed or a target was missed, 2 when
//! the bench itself could not run.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use defender_bridge::queue::{Queue, Record};
use support::{alert_template, env_number, median};

const DEFAULT_RECORDS: u64 = 1_000_000;
const DEFAULT_RUNS: usize = 3;
/// Records per append (one transaction each): a large grouped append, as a catch-up makes.
const FILL_CHUNK: u64 = 10_000;
const DESTINATION: &str = "bench";
const TENANT: &str = "contoso";
const TARGET_RATE: f64 = 50_000.0;
const TARGET_PEAK_MB: f64 = 50.0;
/// A run fails when no record arrives for this long.
const STALL: Duration = Duration::from_secs(60);
/// /proc reports CPU times in USER_HZ ticks, 100 per second on Linux (proc(5)).
const TICKS_PER_SEC: f64 = 100.0;

fn main() -> ExitCode {
    bench().unwrap_or_else(|e| {
        eprintln!("replay: {e:#}");
        ExitCode::from(2)
    })
}

/// Fills `<dir>/queue.redb` with `n` alert versions behind the cursor of [`DESTINATION`].
/// Returns the bytes of one alert and of one stored record.
fn fill(dir: &Path, n: u64) -> anyhow::Result<(usize, usize)> {
    let template = alert_template()?;
    let (before, after) = template
        .split_once("@ID@")
        .context("the template has no id")?;
    let last_update = chrono::DateTime::parse_from_rfc3339("2021-01-26T20:33:59.2Z")?.to_utc();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut sizes = (0, 0);
    rt.block_on(async {
        let queue = Queue::open(dir, u64::MAX)?;
        // The destination exists before the backlog: a new one would start at the head.
        queue.attach(&[DESTINATION.to_string()])?;
        let mut next = 0u64;
        while next < n {
            let end = (next + FILL_CHUNK).min(n);
            let mut records = Vec::with_capacity((end - next) as usize);
            for i in next..end {
                let id = format!("da{i:018}_1364969609");
                let json = format!("{before}{id}{after}");
                let record = Record {
                    tenant_name: TENANT.into(),
                    tenant_id: "a839b112-1253-6432-9bf6-94542403f21c".into(),
                    api: "mde".into(),
                    alert_id: id,
                    last_update,
                    alert: serde_json::value::RawValue::from_string(json)?,
                    only: None,
                }
                .encode();
                if i == 0 {
                    sizes = (before.len() + after.len() + 30, record.len());
                }
                records.push(record);
            }
            queue.append_records(records).await?;
            next = end;
        }
        let head = queue.stats().head;
        queue.close().await;
        if head != n {
            bail!("the filled queue's head is {head}, not {n}");
        }
        anyhow::Ok(())
    })?;
    Ok(sizes)
}

/// The SIEM: counts LF-terminated records on every connection and notes when the `want`th
/// arrived.
struct Receiver {
    port: u16,
    records: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    all_in: Arc<Mutex<Option<Instant>>>,
}

impl Receiver {
    fn start(want: u64) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let records = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let all_in = Arc::new(Mutex::new(None));
        let (r, c, a) = (records.clone(), connections.clone(), all_in.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                c.fetch_add(1, Ordering::Relaxed);
                let (r, a) = (r.clone(), a.clone());
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 256 * 1024];
                    while let Ok(k) = conn.read(&mut buf) {
                        if k == 0 {
                            break;
                        }
                        let lines = buf[..k].iter().filter(|&&b| b == b'\n').count() as u64;
                        let total = r.fetch_add(lines, Ordering::Relaxed) + lines;
                        if total >= want && lines > 0 {
                            let mut at = a.lock().unwrap_or_else(|p| p.into_inner());
                            at.get_or_insert_with(Instant::now);
                        }
                    }
                });
            }
        });
        Ok(Receiver {
            port,
            records,
            connections,
            all_in,
        })
    }

    fn all_in(&self) -> Option<Instant> {
        *self.all_in.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn config(state: &Path, port: u16) -> String {
    let format = std::env::var("REPLAY_FORMAT").unwrap_or_else(|_| "arcsight".into());
    let extra = std::env::var("REPLAY_DESTINATION_EXTRA").unwrap_or_default();
    format!(
        r#"state_dir = "{state}"
log_level = "warn"
shutdown_timeout = "30s"
# The backlog (about 1.4 GB for a million alerts) is above the 1 GiB default; polling would
# pause, which changes nothing here (the tenant cannot sign in), but keep the queue's own view.
queue_max_bytes = 4294967296

[[tenant]]
name = "{TENANT}"
tenant_id = "a839b112-1253-6432-9bf6-94542403f21c"
client_id = "11111111-2222-3333-4444-555555555555"
client_secret = {{ env = "REPLAY_SECRET" }}
api = "mde"
# Nothing listens there: nothing new is polled, the backlog is all there is.
authority_host = "https://127.0.0.1:9"
api_base_url = "https://127.0.0.1:9"

[[destination]]
name = "{DESTINATION}"
url = "tcp://127.0.0.1:{port}"
format = "{format}"
syslog = "rfc5424"
hostname = "bridge"
{extra}
"#,
        state = state.display()
    )
}

struct Run {
    seconds: f64,
    rate: f64,
    peak_kb: u64,
    rss_end_kb: u64,
    cpu_s: f64,
    /// CPU seconds by thread name (tokio's workers, the queue's committer, ...).
    threads: std::collections::BTreeMap<String, f64>,
}

/// utime + stime (fields 14 and 15 of a /proc stat file), in ticks.
fn cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces; count from the closing parenthesis.
    let f: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU seconds of each live thread of `pid`, summed by thread name.
fn thread_cpu(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        let ticks = std::fs::read_to_string(path.join("stat"))
            .ok()
            .and_then(|s| cpu_ticks(&s))
            .unwrap_or(0);
        *by_name.entry(name.trim().to_string()).or_insert(0.0) += ticks as f64 / TICKS_PER_SEC;
    }
    by_name
}

fn one_run(template: &Path, dir: &Path, n: u64) -> anyhow::Result<Run> {
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    std::fs::copy(template.join("queue.redb"), state.join("queue.redb"))?;
    // On disk before the clock starts: the daemon's first commit would otherwise wait for
    // the kernel to write the whole copy out (seconds), which a real backlog never costs.
    std::fs::File::open(state.join("queue.redb"))?.sync_all()?;
    let receiver = Receiver::start(n)?;
    let cfg = dir.join("config.toml");
    std::fs::write(&cfg, config(&state, receiver.port))?;
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path)?;

    let t0 = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .arg("run")
        .arg("--config")
        .arg(&cfg)
        .env("REPLAY_SECRET", "not-a-secret")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting defender-bridge run")?;
    let result = watch(&mut child, &receiver, t0, n);
    let outcome = match result {
        Ok(r) => stop(&mut child).map(|()| r),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    };
    let run = outcome.map_err(|e| {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(10).collect();
        anyhow::anyhow!("{e:#}; the daemon's last log lines:\n{}", tail.join("\n"))
    })?;

    // The tail of the stream was read before the stop; anything after it is a duplicate.
    std::thread::sleep(Duration::from_millis(200));
    let got = receiver.records.load(Ordering::Relaxed);
    if got != n {
        bail!(
            "{got} records received, {n} expected ({} connection(s))",
            receiver.connections.load(Ordering::Relaxed)
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let queue = Queue::open(&state, u64::MAX)?;
        let (cursor, stats) = (queue.cursor(DESTINATION)?, queue.stats());
        queue.close().await;
        if cursor != n || stats.head != n || stats.bytes != 0 {
            bail!(
                "after the stop the cursor is at {cursor} of {} with {} bytes still queued",
                stats.head,
                stats.bytes
            );
        }
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&state);
    Ok(run)
}

/// Waits until every record has arrived; then reads the process's peak memory and CPU time.
fn watch(child: &mut Child, receiver: &Receiver, t0: Instant, n: u64) -> anyhow::Result<Run> {
    let pid = child.id();
    let mut last = (0u64, Instant::now());
    let end = loop {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(at) = receiver.all_in() {
            break at;
        }
        if let Some(status) = child.try_wait()? {
            bail!("the daemon exited ({status}) before every record arrived");
        }
        let got = receiver.records.load(Ordering::Relaxed);
        if got != last.0 {
            last = (got, Instant::now());
        } else if last.1.elapsed() > STALL {
            bail!("no record for {} s: {got} of {n} arrived", STALL.as_secs());
        }
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| format!("no {key} in /proc/{pid}/status"))
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = cpu_ticks(&stat)
        .with_context(|| format!("cannot read the CPU times in /proc/{pid}/stat"))?;
    let threads = thread_cpu(pid);
    let seconds = end.duration_since(t0).as_secs_f64();
    Ok(Run {
        seconds,
        rate: n as f64 / seconds,
        peak_kb: kb("VmHWM:")?,
        rss_end_kb: kb("VmRSS:")?,
        cpu_s: ticks as f64 / TICKS_PER_SEC,
        threads,
    })
}

/// SIGTERM, and a clean exit within 30 s.
fn stop(child: &mut Child) -> anyhow::Result<()> {
    let pid = libc::pid_t::try_from(child.id())?;
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        bail!("kill: {}", std::io::Error::last_os_error());
    }
    let asked = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("the daemon exited with {status} after SIGTERM");
            }
            return Ok(());
        }
        if asked.elapsed() > Duration::from_secs(30) {
            bail!("the daemon did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bench() -> anyhow::Result<ExitCode> {
    let n: u64 = env_number("REPLAY_RECORDS", DEFAULT_RECORDS)?;
    let runs: usize = env_number("REPLAY_RUNS", DEFAULT_RUNS)?;
    let dir = tempfile::tempdir()?;
    let template = dir.path().join("template");
    std::fs::create_dir_all(&template)?;
    let filling = Instant::now();
    let (alert_size, record_size) = fill(&template, n)?;
    let file_size = std::fs::metadata(template.join("queue.redb"))?.len();
    println!(
        "replay: {n} queued MDE alerts ({alert_size} bytes each, {record_size} stored) → `defender-bridge run` → ArcSight CEF, RFC 5424, LF framing over TCP to 127.0.0.1"
    );
    println!(
        "  fill (not timed below)    {:.1} s, queue.redb {:.0} MB",
        filling.elapsed().as_secs_f64(),
        file_size as f64 / 1e6
    );
    let mut done = Vec::new();
    let mut failures = Vec::new();
    for i in 1..=runs {
        let run_dir = dir.path().join(format!("run-{i}"));
        match one_run(&template, &run_dir, n) {
            Ok(r) => {
                println!(
                    "  run {i}: {:>9.0} records/s ({:.2} s), peak RSS (VmHWM) {:.1} MB, RSS at the end {:.1} MB, CPU {:.1} s = {:.1} µs/record",
                    r.rate,
                    r.seconds,
                    r.peak_kb as f64 * 1024.0 / 1e6,
                    r.rss_end_kb as f64 * 1024.0 / 1e6,
                    r.cpu_s,
                    r.cpu_s * 1e6 / n as f64
                );
                let threads: Vec<String> = r
                    .threads
                    .iter()
                    .filter(|(_, &s)| s >= 0.05)
                    .map(|(name, s)| format!("{name} {s:.1} s"))
                    .collect();
                println!("         CPU by thread: {}", threads.join(", "));
                done.push(r);
            }
            Err(e) => {
                println!("  run {i}: FAILED: {e:#}");
                failures.push(format!("run {i}: {e:#}"));
            }
        }
    }
    if !done.is_empty() {
        let rate = median(done.iter().map(|r| r.rate).collect());
        let peak = median(
            done.iter()
                .map(|r| r.peak_kb as f64 * 1024.0 / 1e6)
                .collect(),
        );
        let cpu = median(done.iter().map(|r| r.cpu_s).collect());
        println!(
            "  median of {} run(s): {rate:.0} records/s, peak RSS {peak:.1} MB, CPU {cpu:.1} s; every record arrived once",
            done.len()
        );
        if rate < TARGET_RATE {
            failures.push(format!(
                "{rate:.0} records/s, under the {TARGET_RATE:.0}/s target"
            ));
        }
        if peak >= TARGET_PEAK_MB {
            failures.push(format!(
                "peak RSS {peak:.1} MB, over the {TARGET_PEAK_MB:.0} MB target"
            ));
        }
    }
    if failures.is_empty() {
        println!("replay: OK");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("replay: FAILED: {}", failures.join("; "));
        Ok(ExitCode::FAILURE)
    }
}
