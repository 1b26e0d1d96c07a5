//! Issue 4: "1,000 tenants against the fake API with 20 ms latency: every tenant polled within
//! one 60 s interval; report peak memory and CPU for that run."
//!
//! cargo bench --bench many_tenants
//! MANY_TENANTS=100 cargo bench --bench many_tenants     (fewer tenants; still ~65 s)
//!
//! The real `daemon::run` (one poller and one handler task per tenant, default 60 s interval and
//! 10 min overlap) polls N Graph tenants of the HTTPS fake, each with its own secret and two
//! alerts, and sends ArcSight CEF over TCP to a receiver task on 127.0.0.1 that counts lines.
//! The fake runs in a child process (this binary again, `MANY_TENANTS_ROLE=fake-api`), so the
//! memory and CPU figures of this process are the daemon's (plus the small receiver), not the
//! fake's; the fake's are printed apart. The run ends when every tenant has been polled twice
//! and every record has arrived, or after two intervals and 10 s.
//!
//! Measured from the fake's request log: the first full sweep (start until every tenant's
//! first alert list was answered) and the gap between a tenant's two polls. `poll_interval` is
//! counted from the start of one poll to the start of the next (`Poller::run`); a tenant counts
//! as late when its gap exceeds the interval by more than `SLACK` (scheduling jitter). Exits 1
//! when a tenant was late or not polled, or records are missing or doubled; 2 when the bench
//! itself could not run.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use chrono::Utc;
use defender_bridge::config::{Config, Destination, Tenant};
use defender_bridge::fake_api::samples::graph_alert;
use defender_bridge::fake_api::{FakeApi, FakeCredential};
use defender_bridge::format::{HeaderKind, SyslogHeader};
use defender_bridge::output::OutputConfig;
use defender_bridge::sink::{Framing, SinkConfig};
use defender_bridge::source::{Api, Credential, HttpSettings, SecretString, TenantSettings};
use tokio::io::AsyncReadExt;
use tokio_util::sync::CancellationToken;

const DEFAULT_TENANTS: usize = 1000;
const LATENCY: Duration = Duration::from_millis(20);
const INTERVAL: Duration = Duration::from_secs(60);
/// How much longer than the interval a tenant's gap may be: its own poll time.
const SLACK: Duration = Duration::from_secs(5);
const ALERTS_PER_TENANT: usize = 2;
const CLIENT_ID: &str = "b3nc4c11-0000-4000-8000-000000000001";
const LIST_PATH: &str = "/v1.0/security/alerts_v2";
const TOKEN_PATH: &str = "/oauth2/v2.0/token";
/// /proc reports CPU times in USER_HZ ticks, 100 per second on Linux (proc(5)).
const TICKS_PER_SEC: f64 = 100.0;

fn tenant_id(i: usize) -> String {
    format!("bbbbbbbb-0000-4000-8000-{:012}", i + 1)
}

fn secret(seed: &str, i: usize) -> String {
    format!("bench-secret-{seed}-{i}")
}

fn main() -> ExitCode {
    let result = if std::env::var("MANY_TENANTS_ROLE").as_deref() == Ok("fake-api") {
        fake_process().map(|()| ExitCode::SUCCESS)
    } else {
        bench()
    };
    result.unwrap_or_else(|e| {
        eprintln!("many_tenants: {e:#}");
        ExitCode::from(2)
    })
}

// ---- the fake API's process -------------------------------------------------------------------

/// Serves the fake and answers the bench on stdin/stdout: `start` (time zero, resets the peak
/// memory), `status` (tenants polled at least once, at least twice), `dump` (the request log).
fn fake_process() -> anyhow::Result<()> {
    let n: usize = std::env::var("MANY_TENANTS_N")?.parse()?;
    let seed = std::env::var("MANY_TENANTS_SEED")?;
    let dir = std::path::PathBuf::from(std::env::var("MANY_TENANTS_DIR")?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let fake = rt.block_on(FakeApi::start())?;
    fake.set_latency(LATENCY);
    let now = Utc::now();
    for i in 0..n {
        let t = tenant_id(i);
        fake.add_tenant(&t, CLIENT_ID, FakeCredential::Secret(secret(&seed, i)));
        for a in 0..ALERTS_PER_TENANT {
            let at = now - chrono::Duration::minutes(5 + a as i64);
            let id = format!("da{i:06}_{a}");
            fake.upsert_alert(&t, Api::Graph, graph_alert(&t, &id, at, "new", a));
        }
    }
    let ca = fake.write_ca_file(&dir)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready {} {}", fake.base_url(), ca.display())?;
    out.flush()?;
    let mut zero = Instant::now();
    for line in std::io::stdin().lock().lines() {
        match line?.as_str() {
            "start" => {
                zero = Instant::now();
                reset_peak_memory("/proc/self/clear_refs");
                writeln!(out, "started")?;
            }
            "status" => {
                let mut lists: BTreeMap<String, u32> = BTreeMap::new();
                for r in fake.requests() {
                    if r.path == LIST_PATH && r.status == 200 {
                        *lists.entry(r.tenant.unwrap_or_default()).or_default() += 1;
                    }
                }
                let once = lists.len();
                let twice = lists.values().filter(|&&c| c >= 2).count();
                writeln!(out, "status {once} {twice}")?;
            }
            "dump" => {
                for r in fake.requests() {
                    let micros =
                        r.at.checked_duration_since(zero)
                            .map_or(-1, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
                    let tenant = r.tenant.as_deref().unwrap_or("-");
                    writeln!(
                        out,
                        "req {micros} {tenant} {} {} {}",
                        r.method, r.status, r.path
                    )?;
                }
                writeln!(out, "end")?;
            }
            other => bail!("unknown command {other:?}"),
        }
        out.flush()?;
    }
    drop(fake);
    rt.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// The bench's handle on the fake's process.
struct FakeProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl FakeProcess {
    fn command(&mut self, cmd: &str) -> anyhow::Result<String> {
        writeln!(self.stdin, "{cmd}")?;
        self.stdin.flush()?;
        self.line()
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut s = String::new();
        if self.stdout.read_line(&mut s)? == 0 {
            bail!("the fake API's process exited");
        }
        Ok(s.trim_end().to_string())
    }

    /// Tenants with at least one and at least two answered alert lists.
    fn status(&mut self) -> anyhow::Result<(usize, usize)> {
        let s = self.command("status")?;
        let mut f = s.split(' ').skip(1).map(str::parse::<usize>);
        match (f.next(), f.next()) {
            (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
            _ => bail!("unexpected status line {s:?}"),
        }
    }

    fn dump(&mut self) -> anyhow::Result<Vec<Req>> {
        writeln!(self.stdin, "dump")?;
        self.stdin.flush()?;
        let mut reqs = Vec::new();
        loop {
            let l = self.line()?;
            if l == "end" {
                return Ok(reqs);
            }
            let f: Vec<&str> = l.split(' ').collect();
            let [_, micros, tenant, method, status, path] = f[..] else {
                bail!("unexpected request line {l:?}");
            };
            reqs.push(Req {
                at: Duration::from_micros(micros.parse::<i64>()?.max(0).unsigned_abs()),
                tenant: tenant.to_string(),
                method: method.to_string(),
                status: status.parse()?,
                path: path.to_string(),
            });
        }
    }
}

/// A request of the fake's log, timed from `start`.
struct Req {
    at: Duration,
    tenant: String,
    method: String,
    status: u16,
    path: String,
}

// ---- the bench --------------------------------------------------------------------------------

/// Warnings and errors the daemon logged: counted by kind (the message without its digits).
#[derive(Default)]
struct Logged {
    warnings: u64,
    errors: u64,
    kinds: BTreeMap<String, u64>,
}

struct CountingLayer(Arc<Mutex<Logged>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountingLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let level = *event.metadata().level();
        if level > tracing::Level::WARN {
            return;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{v:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        let kind: String = format!("{level} {}", message.0)
            .chars()
            .filter(|c| !c.is_ascii_digit())
            .collect();
        let mut l = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if level == tracing::Level::ERROR {
            l.errors += 1;
        } else {
            l.warnings += 1;
        }
        *l.kinds.entry(kind).or_default() += 1;
    }
}

fn bench() -> anyhow::Result<ExitCode> {
    let n: usize = match std::env::var("MANY_TENANTS") {
        Ok(v) => v
            .parse()
            .ok()
            .filter(|&n| n > 0)
            .context("MANY_TENANTS must be a positive number")?,
        Err(_) => DEFAULT_TENANTS,
    };
    let expected_records = (n * ALERTS_PER_TENANT) as u64;
    let dir = tempfile::tempdir()?;
    let seed = uuid::Uuid::new_v4().simple().to_string();

    let mut child = Command::new(std::env::current_exe()?)
        .env("MANY_TENANTS_ROLE", "fake-api")
        .env("MANY_TENANTS_N", n.to_string())
        .env("MANY_TENANTS_SEED", &seed)
        .env("MANY_TENANTS_DIR", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the fake API's process")?;
    let mut fake = FakeProcess {
        stdin: child.stdin.take().context("child stdin")?,
        stdout: BufReader::new(child.stdout.take().context("child stdout")?),
        child,
    };
    let ready = fake.line()?;
    let (base, ca) = match ready.split(' ').collect::<Vec<_>>()[..] {
        ["ready", base, ca] => (url::Url::parse(base)?, std::path::PathBuf::from(ca)),
        _ => bail!("unexpected first line from the fake: {ready:?}"),
    };

    let logged = Arc::new(Mutex::new(Logged::default()));
    {
        use tracing_subscriber::layer::SubscriberExt;
        let subscriber = tracing_subscriber::registry().with(CountingLayer(logged.clone()));
        tracing::subscriber::set_global_default(subscriber)?;
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // The SIEM: counts LF-terminated records on every connection, discards them.
    let records = Arc::new(AtomicU64::new(0));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let receiver_addr = listener.local_addr()?;
    let counted = records.clone();
    rt.spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(k) = conn.read(&mut buf).await {
                    if k == 0 {
                        break;
                    }
                    let lines = buf[..k].iter().filter(|&&b| b == b'\n').count();
                    counted.fetch_add(lines as u64, Ordering::Relaxed);
                }
            });
        }
    });

    let mut sink = SinkConfig::new(format!("tcp://{receiver_addr}").parse()?);
    sink.framing = Some(Framing::Lf);
    let config = Config {
        state_dir: dir.path().join("state"),
        dead_letter: dir.path().join("state").join("dead-letter.ndjson"),
        http: HttpSettings {
            extra_ca_file: Some(ca),
            ..HttpSettings::default()
        },
        log_level: "warn".to_string(),
        shutdown_timeout: Duration::from_secs(10),
        queue_max_bytes: defender_bridge::config::DEFAULT_QUEUE_MAX_BYTES,
        max_concurrent_requests: std::env::var("MANY_TENANTS_REQUESTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(defender_bridge::config::DEFAULT_MAX_CONCURRENT_REQUESTS),
        metrics_listen: None,
        shard: None,
        tenants_in_file: 0,
        tenants: (0..n)
            .map(|i| {
                let mut s = TenantSettings::new(
                    format!("tenant-{i:04}"),
                    tenant_id(i),
                    CLIENT_ID,
                    Credential::Secret(SecretString::new(secret(&seed, i))),
                );
                s.authority_host = Some(base.clone());
                s.api_base_url = Some(base.clone());
                s.poll_interval = INTERVAL;
                // The alerts are 5 and 6 minutes old: inside the first window and, with the
                // default 10 min overlap, read again (and de-duplicated) by the second poll.
                s.overlap = Duration::from_secs(10 * 60);
                s.initial_lookback = Duration::from_secs(3600);
                Tenant {
                    settings: s,
                    syslog_hostname: None,
                }
            })
            .collect(),
        destinations: vec![Destination {
            name: "bench".to_string(),
            output: OutputConfig {
                sink,
                format: "arcsight".to_string(),
                header: SyslogHeader::new(HeaderKind::Rfc5424, 20, "bench", "defender-bridge"),
            },
            tenants: None,
            min_severity: None,
        }],
        notifications: Default::default(),
        warnings: Vec::new(),
    };

    // Time zero: the peak memory of both processes restarts from here.
    let peak_reset = reset_peak_memory("/proc/self/clear_refs");
    let me = ProcFiles::open("self")?;
    let fake_proc = ProcFiles::open(&fake.child.id().to_string())?;
    let rss_before = me.status_kb("VmRSS:")?;
    let cpu_before = me.cpu_ticks()?;
    fake.command("start")?;
    let t0 = Instant::now();
    let stop = CancellationToken::new();
    let daemon = rt.spawn(defender_bridge::daemon::run(config, stop.clone()));

    let deadline = t0 + 2 * INTERVAL + Duration::from_secs(10);
    let mut cpu_at_sweep = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let (once, twice) = fake.status()?;
        if once == n && cpu_at_sweep.is_none() {
            cpu_at_sweep = Some(me.cpu_ticks()?);
        }
        let got = records.load(Ordering::Relaxed);
        if (twice == n && got >= expected_records) || Instant::now() >= deadline {
            break;
        }
        if daemon.is_finished() {
            break;
        }
    }
    let wall = t0.elapsed();
    let cpu_after = me.cpu_ticks()?;
    let peak = me.status_kb("VmHWM:")?;
    let rss_end = me.status_kb("VmRSS:")?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map(Iterator::count);
    let fake_peak = fake_proc.status_kb("VmHWM:")?;
    let fake_cpu = fake_proc.cpu_ticks()?;

    stop.cancel();
    let stopping = Instant::now();
    let outcome = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), daemon)
            .await
            .map_err(|_| anyhow::anyhow!("the daemon did not stop within 30 s"))?
            .context("the daemon task")?
    });
    let stop_time = stopping.elapsed();
    // The output shut down with everything flushed; let the receiver read the tail.
    let settle = Instant::now();
    while records.load(Ordering::Relaxed) < expected_records
        && settle.elapsed() < Duration::from_secs(2)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let reqs = fake.dump()?;
    drop(fake.stdin);
    let _ = fake.child.wait();
    rt.shutdown_timeout(Duration::from_secs(5));

    // ---- figures ----
    let mut lists: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    let mut tokens: BTreeMap<&str, u32> = BTreeMap::new();
    let mut not_ok: BTreeMap<(String, u16), u32> = BTreeMap::new();
    for r in &reqs {
        if r.status != 200 {
            *not_ok.entry((r.path.clone(), r.status)).or_default() += 1;
            continue;
        }
        match (r.method.as_str(), r.path.as_str()) {
            ("GET", LIST_PATH) => lists.entry(&r.tenant).or_default().push(r.at),
            ("POST", TOKEN_PATH) => *tokens.entry(&r.tenant).or_default() += 1,
            _ => {}
        }
    }
    let polls: usize = lists.values().map(Vec::len).sum();
    let mut firsts: Vec<Duration> = lists.values().map(|v| v[0]).collect();
    firsts.sort();
    let sweep = if lists.len() == n {
        firsts.last().copied()
    } else {
        None
    };
    let mut gaps: Vec<(Duration, &str)> = lists
        .iter()
        .filter(|(_, v)| v.len() >= 2)
        .map(|(t, v)| {
            (
                v.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default(),
                *t,
            )
        })
        .collect();
    gaps.sort();
    let polled_twice = gaps.len();
    let got = records.load(Ordering::Relaxed);
    let secs = |ticks: u64| ticks as f64 / TICKS_PER_SEC;
    let cpu_total = secs(cpu_after.saturating_sub(cpu_before));
    let token_counts: Vec<u32> = tokens.values().copied().collect();

    println!("many_tenants: {n} Graph tenants, {} ms latency per answer, poll interval {} s, {ALERTS_PER_TENANT} alerts each, ArcSight CEF over TCP to 127.0.0.1",
        LATENCY.as_millis(), INTERVAL.as_secs());
    println!("  wall time                 {:.1} s", wall.as_secs_f64());
    match sweep {
        Some(s) => println!(
            "  first full sweep          {:.2} s (median tenant's first poll {:.2} s)",
            s.as_secs_f64(),
            median(&firsts).as_secs_f64()
        ),
        None => println!(
            "  first full sweep          INCOMPLETE: {} of {n} tenants polled",
            lists.len()
        ),
    }
    match gaps.last() {
        Some((max, tenant)) => println!(
            "  gap between polls         max {:.3} s ({tenant}), median {:.3} s; {polled_twice} of {n} tenants polled twice",
            max.as_secs_f64(),
            median(&gaps.iter().map(|g| g.0).collect::<Vec<_>>()).as_secs_f64()
        ),
        None => println!("  gap between polls         none: no tenant was polled twice"),
    }
    println!("  alert-list requests       {polls} answered with 200");
    println!(
        "  token requests            {} (per tenant: min {}, max {})",
        token_counts.iter().sum::<u32>(),
        token_counts.iter().min().unwrap_or(&0),
        token_counts.iter().max().unwrap_or(&0)
    );
    if !not_ok.is_empty() {
        println!("  non-200 answers           {not_ok:?}");
    }
    println!("  records received          {got} of {expected_records}");
    if let Ok(report) = &outcome {
        for (dest, s) in &report.outputs {
            println!(
                "  output {dest}   {} sent, {} rejected, {} reconnects",
                s.sink.messages_sent, s.sink.rejected, s.sink.reconnects
            );
        }
        let q = &report.queue;
        println!(
            "  queue                     {} commits (fsyncs), {:.0} per minute; {} records queued in all",
            q.commits,
            q.commits as f64 * 60.0 / wall.as_secs_f64(),
            q.head
        );
    }
    println!(
        "  daemon peak memory        VmHWM {:.1} MiB{}, {:.1} MiB above the RSS before start ({:.1} MiB); RSS at the end {:.1} MiB; this process = daemon + receiver task",
        peak as f64 / 1024.0,
        if peak_reset { "" } else { " (peak not reset: includes set-up)" },
        peak.saturating_sub(rss_before) as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    match open_fds {
        Ok(k) => println!("  open file descriptors     {k} at the end of the run (mostly pooled HTTPS connections to the fake)"),
        Err(e) => println!("  open file descriptors     cannot count them: {e}"),
    }
    println!(
        "  stop (cancel to return)   {:.2} s",
        stop_time.as_secs_f64()
    );
    println!(
        "  daemon CPU (user+sys)     {cpu_total:.2} s over the run = {:.2} ms per poll",
        if polls > 0 {
            cpu_total * 1000.0 / polls as f64
        } else {
            0.0
        }
    );
    if let Some(at_sweep) = cpu_at_sweep {
        let first = secs(at_sweep.saturating_sub(cpu_before));
        let rest = secs(cpu_after.saturating_sub(at_sweep));
        let later_polls = polls.saturating_sub(n);
        println!(
            "    first sweep (sign-in, TLS, {n} polls, records): {first:.2} s = {:.2} ms per tenant",
            first * 1000.0 / n as f64
        );
        if later_polls > 0 {
            println!(
                "    after it ({later_polls} polls, idle time included): {rest:.2} s = {:.2} ms per poll",
                rest * 1000.0 / later_polls as f64
            );
        }
    }
    println!(
        "  fake API process          VmHWM {:.1} MiB, CPU {:.2} s (not counted above)",
        fake_peak as f64 / 1024.0,
        secs(fake_cpu)
    );
    {
        let l = logged.lock().unwrap_or_else(|p| p.into_inner());
        println!(
            "  daemon log                {} error(s), {} warning(s)",
            l.errors, l.warnings
        );
        let mut kinds: Vec<_> = l.kinds.iter().collect();
        kinds.sort_by(|a, b| b.1.cmp(a.1));
        for (kind, count) in kinds.into_iter().take(8) {
            println!("    {count:>6} x {kind}");
        }
    }

    let mut failures = Vec::new();
    if let Err(e) = &outcome {
        failures.push(format!("the daemon failed: {e:#}"));
    }
    match sweep {
        Some(s) if s <= INTERVAL => {}
        Some(s) => failures.push(format!(
            "the first sweep took {:.1} s, longer than the {} s interval",
            s.as_secs_f64(),
            INTERVAL.as_secs()
        )),
        None => failures.push(format!("{} tenant(s) never polled", n - lists.len())),
    }
    if polled_twice < n {
        failures.push(format!(
            "{} tenant(s) not polled a second time",
            n - polled_twice
        ));
    }
    let late = gaps.iter().filter(|g| g.0 > INTERVAL + SLACK).count();
    if late > 0 {
        failures.push(format!(
            "{late} tenant(s) polled more than {} s after their previous poll",
            (INTERVAL + SLACK).as_secs()
        ));
    }
    if got != expected_records {
        failures.push(format!(
            "{got} records received, {expected_records} expected"
        ));
    }
    if failures.is_empty() {
        println!("many_tenants: OK");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("many_tenants: FAILED: {}", failures.join("; "));
        Ok(ExitCode::FAILURE)
    }
}

fn median(sorted: &[Duration]) -> Duration {
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS (proc(5), Linux 4.0).
fn reset_peak_memory(path: &str) -> bool {
    std::fs::write(path, "5").is_ok()
}

/// /proc/PID/stat and /proc/PID/status, opened once and read again through the same
/// descriptors: the figures stay readable when the daemon has used up the descriptor limit.
struct ProcFiles {
    stat: std::fs::File,
    status: std::fs::File,
}

impl ProcFiles {
    fn open(pid: &str) -> anyhow::Result<ProcFiles> {
        let open = |name: &str| {
            let path = format!("/proc/{pid}/{name}");
            std::fs::File::open(&path).with_context(|| format!("opening {path}"))
        };
        Ok(ProcFiles {
            stat: open("stat")?,
            status: open("status")?,
        })
    }

    fn read(mut f: &std::fs::File) -> anyhow::Result<String> {
        use std::io::{Read, Seek};
        f.seek(std::io::SeekFrom::Start(0))?;
        let mut s = String::new();
        f.read_to_string(&mut s)?;
        Ok(s)
    }

    /// A `kB` field of status, e.g. `VmHWM:`.
    fn status_kb(&self, key: &str) -> anyhow::Result<u64> {
        Self::read(&self.status)?
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in /proc status"))
    }

    /// utime + stime of stat (fields 14 and 15, in ticks), all threads, live and ended.
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        let s = Self::read(&self.stat)?;
        // The command name (field 2) may hold spaces; count from the closing parenthesis.
        let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = rest.split_whitespace().collect();
        match (
            f.get(11).map(|v| v.parse::<u64>()),
            f.get(12).map(|v| v.parse::<u64>()),
        ) {
            (Some(Ok(u)), Some(Ok(s))) => Ok(u + s),
            _ => bail!("cannot read the CPU times in /proc stat"),
        }
    }
}
