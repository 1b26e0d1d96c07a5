//! Side by side: syslog-ng 3.38 and defender-bridge turning the same NDJSON file of MDE alerts
//! into ArcSight CEF over syslog TCP, as real programs (child processes), one after the other.
//!
//! cargo bench --bench vs_syslog_ng
//! VS_RECORDS=20000 VS_RUNS=1 cargo bench --bench vs_syslog_ng        (a quick look)
//! VS_RECORDS=1000000 cargo bench --bench vs_syslog_ng    (peak memory on a ~1.2 GB file)
//! VS_JOBS=2 ... passes `--jobs 2` to `send` and `convert` (an error if they have no --jobs).
//! syslog-ng comes from $SYSLOG_NG_ROOT (default /opt/syslog-ng: `bash .ci/install-daemons.sh`).
//!
//! Set-up (not timed): `VS_RECORDS` (100,000 by default) alerts as NDJSON in a temp file, each
//! the MDE docs' example (`tests/data/mde-alert-get-docs.json`) without its null fields and
//! evidence (about 1.2 KB) with its own id.
//!
//! Each run (`VS_RUNS`, 3 by default) times, in this order:
//! - syslog-ng: a `file()` source (no-parse), `json-parser()`, date-parser/regexp-parser/
//!   rewrite rules and `$(format-cef-extension)` making the fields of defender-bridge's
//!   `arcsight` format, to a `network()` TCP destination, with flow control (nothing dropped)
//!   and windows tuned for speed (`benches/vs_syslog_ng.conf`);
//! - `defender-bridge send --format arcsight --syslog none --framing lf` to the same kind of
//!   receiver;
//! - `defender-bridge convert -f arcsight FILE > /dev/null` (no network: the encoding alone).
//!
//! The receiver, in this process, counts LF-terminated records by alert id (`externalId=`):
//! every record must arrive exactly once. Measured: from starting the process to the last
//! record received (`convert`: to its exit), and from `wait4`'s rusage the child's peak RSS
//! (`ru_maxrss`) and CPU time (user + system: steadier than the wall clock on a busy machine).
//! syslog-ng never ends by itself (a file source follows the file): SIGTERM once all arrived.
//! Prints each run and the medians. Exits 1 when a run failed (a record lost or received twice,
//! a stall of 60 s, an unclean exit), 2 when the bench itself could not run.

mod support;

use std::io::{BufWriter, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use memchr::memmem;
use support::{alert_template, env_number, median};

const DEFAULT_RECORDS: u64 = 100_000;
const DEFAULT_RUNS: usize = 3;
/// A run fails when no record arrives for this long.
const STALL: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_defender-bridge");

/// syslog-ng's configuration, with `@INPUT@` and `@PORT@` to replace; how it is tuned and why
/// is in the file.
const SYSLOG_NG_CONF: &str = include_str!("vs_syslog_ng.conf");

fn main() -> ExitCode {
    bench().unwrap_or_else(|e| {
        eprintln!("vs_syslog_ng: {e:#}");
        ExitCode::from(2)
    })
}

/// Writes `n` alerts as NDJSON; alert `i` has the id `da<i, 18 digits>_1364969609` (what
/// [`alert_index`] reads back). Returns the bytes of one alert.
fn write_input(path: &Path, n: u64) -> anyhow::Result<usize> {
    let template = alert_template()?;
    let (before, after) = template.split_once("@ID@").context("no id")?;
    let file = std::fs::File::create(path).with_context(|| path.display().to_string())?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    for i in 0..n {
        writeln!(out, "{before}da{i:018}_1364969609{after}")?;
    }
    out.into_inner()?.sync_all()?;
    Ok(before.len() + after.len() + 30)
}

/// The alert number in a record's `externalId=da<18 digits>_...`.
fn alert_index(finder: &memmem::Finder, line: &[u8]) -> Option<usize> {
    let at = finder.find(line)? + finder.needle().len();
    let digits = line.get(at..at + 18)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One connection of the receiver: LF-terminated records, counted into `tally` once per
/// read. The receiver shares the two cores with the program measured, so it is kept cheap (a
/// lock and a clock read per read, not per record; memchr for the search) and says what its
/// threads cost (`Tally::cpu_s`).
fn read_records(mut conn: std::net::TcpStream, tally: &Mutex<Tally>) {
    let finder = memmem::Finder::new(b"externalId=da");
    let mut buf = vec![0u8; 1 << 20];
    let mut filled = 0;
    let mut found: Vec<Option<usize>> = Vec::new();
    // Ends at EOF or an error; a last line without LF is not a record.
    while let Ok(n @ 1..) = conn.read(&mut buf[filled..]) {
        filled += n;
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &buf[..filled]) {
            found.push(alert_index(&finder, &buf[start..end]));
            start = end + 1;
        }
        if start == 0 && filled == buf.len() {
            // 1 MiB without an LF: not a record of ours.
            found.push(None);
            start = filled;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if found.is_empty() {
            continue;
        }
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        t.records += found.len() as u64;
        t.last = Some(Instant::now());
        for index in found.drain(..) {
            match index.and_then(|i| t.seen.get_mut(i)) {
                Some(seen) if *seen => t.duplicates += 1,
                Some(seen) => *seen = true,
                None => t.unknown += 1,
            }
        }
    }
    // SAFETY: rusage is plain integers; getrusage fills it for this thread.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } == 0 {
        let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
        t.cpu_s += cpu_seconds(&usage);
    }
}

/// User + system CPU seconds of a rusage.
fn cpu_seconds(usage: &libc::rusage) -> f64 {
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

#[derive(Default)]
struct Tally {
    records: u64,
    /// Which alert ids arrived.
    seen: Vec<bool>,
    duplicates: u64,
    /// Records without a known alert id.
    unknown: u64,
    last: Option<Instant>,
    /// CPU seconds of the connections' threads, added as each connection ends.
    cpu_s: f64,
}

/// The SIEM: counts the LF-terminated records of every connection, by alert id.
struct Receiver {
    port: u16,
    tally: Arc<Mutex<Tally>>,
}

impl Receiver {
    fn start(n: u64) -> anyhow::Result<Receiver> {
        let listener = TcpListener::bind("127.0.0.1:0").context("receiver: bind")?;
        let port = listener.local_addr()?.port();
        let seen = vec![false; usize::try_from(n)?];
        let tally = Arc::new(Mutex::new(Tally {
            seen,
            ..Tally::default()
        }));
        let t = tally.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let t = t.clone();
                std::thread::spawn(move || read_records(conn, &t));
            }
        });
        Ok(Receiver { port, tally })
    }

    /// CPU seconds of the connections that have ended.
    fn cpu_s(&self) -> f64 {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).cpu_s
    }

    fn records(&self) -> u64 {
        self.tally.lock().unwrap_or_else(|p| p.into_inner()).records
    }

    /// The instant of the last record, if every alert arrived exactly once.
    fn check(&self, n: u64) -> anyhow::Result<Instant> {
        let t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        let distinct = t.seen.iter().filter(|&&seen| seen).count() as u64;
        if distinct != n || t.duplicates > 0 || t.unknown > 0 {
            bail!(
                "{} records received: {distinct} distinct alert ids of {n} ({} missing), {} duplicate(s), {} without a known id",
                t.records, n - distinct, t.duplicates, t.unknown
            );
        }
        t.last.context("no record")
    }

    /// What [`Receiver::check`] says is wrong.
    fn wrong(&self, n: u64) -> String {
        self.check(n)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }
}

/// What is measured of one program's run.
struct Run {
    /// From the start to the last record received (`convert`: to its exit).
    seconds: f64,
    /// `ru_maxrss`, KiB.
    peak_kib: f64,
    /// User + system CPU seconds.
    cpu_s: f64,
    /// The receiver's CPU seconds in the same run (0 without one): taken from the same two
    /// cores, so a receiver on another machine would leave that to the program.
    receiver_cpu_s: f64,
}

/// How a child ended: status, when it was seen, its rusage.
type Exited = (ExitStatus, Instant, libc::rusage);

/// A child reaped with `wait4` (std's `Child` is never waited for); killed if dropped running.
struct Proc {
    pid: libc::pid_t,
    exit: Option<Exited>,
}

impl Proc {
    /// How it ended, once it has; `block`: wait for that.
    fn poll(&mut self, block: bool) -> anyhow::Result<Option<Exited>> {
        while self.exit.is_none() {
            let mut status = 0;
            // SAFETY: rusage is plain integers, all-zero is a valid value.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            let flags = if block { 0 } else { libc::WNOHANG };
            // SAFETY: wait4 on our own child, with pointers to live locals.
            match unsafe { libc::wait4(self.pid, &mut status, flags, &mut usage) } {
                0 => return Ok(None),
                r if r == self.pid => {
                    self.exit = Some((ExitStatus::from_raw(status), Instant::now(), usage));
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        return Err(e).context("wait4");
                    }
                }
            }
        }
        Ok(self.exit)
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child, not yet reaped; no memory is involved.
        unsafe { libc::kill(self.pid, signal) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.poll(true);
        }
    }
}

/// Runs `cmd` with stderr to `log`. With a receiver, until the `n`th record arrived (`stop`:
/// the program does not end by itself, SIGTERM then); without, until it exits.
fn timed(
    cmd: &mut Command,
    log: &Path,
    n: u64,
    receiver: Option<&Receiver>,
    stop: bool,
) -> anyhow::Result<Run> {
    let file = std::fs::File::create(log).with_context(|| log.display().to_string())?;
    let cmd = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(file);
    let t0 = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    let mut child = Proc {
        pid: libc::pid_t::try_from(child.id())?,
        exit: None,
    };
    let outcome = (|| {
        let (status, end, usage) = match receiver {
            Some(receiver) => watch(&mut child, receiver, n, stop)?,
            None => child.poll(true)?.context("wait4: no exit")?,
        };
        // syslog-ng may end by SIGTERM's default action rather than with exit 0.
        let stopped = stop && status.signal() == Some(libc::SIGTERM);
        if !status.success() && !stopped {
            bail!("it exited with {status}");
        }
        let (end, receiver_cpu_s) = match receiver {
            // Anything still in flight would be a duplicate; the connection has ended by now.
            Some(receiver) => {
                std::thread::sleep(Duration::from_millis(200));
                (receiver.check(n)?, receiver.cpu_s())
            }
            None => (end, 0.0),
        };
        Ok(Run {
            seconds: end.duration_since(t0).as_secs_f64(),
            peak_kib: usage.ru_maxrss as f64,
            cpu_s: cpu_seconds(&usage),
            receiver_cpu_s,
        })
    })();
    outcome.map_err(|e| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(8)..].join("\n");
        anyhow::anyhow!("{e:#}; its stderr ends:\n{tail}")
    })
}

/// Waits for the `n`th record, then (SIGTERM if `stop`) for the exit.
fn watch(child: &mut Proc, receiver: &Receiver, n: u64, stop: bool) -> anyhow::Result<Exited> {
    let mut progress = (0, Instant::now());
    while receiver.records() < n {
        std::thread::sleep(Duration::from_millis(20));
        let got = receiver.records();
        if got != progress.0 {
            progress = (got, Instant::now());
        }
        let exited = child.poll(false)?;
        if let Some((status, ..)) = exited.filter(|e| !e.0.success()) {
            bail!("it exited with {status}: {}", receiver.wrong(n));
        }
        // After a clean exit, what it wrote is read within moments.
        let stall = exited.map_or(STALL, |_| Duration::from_secs(2));
        if progress.1.elapsed() > stall {
            bail!("no record for {} s: {}", stall.as_secs(), receiver.wrong(n));
        }
    }
    if stop {
        child.signal(libc::SIGTERM);
    }
    let asked = Instant::now();
    while asked.elapsed() < Duration::from_secs(30) {
        if let Some(exit) = child.poll(false)? {
            return Ok(exit);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("still running 30 s after the last record")
}

/// Writes [`SYSLOG_NG_CONF`] into `dir`.
fn syslog_ng_conf(dir: &Path, input: &Path, port: u16) -> anyhow::Result<PathBuf> {
    let conf = dir.join("syslog-ng.conf");
    let text = SYSLOG_NG_CONF.replace("@INPUT@", &input.display().to_string());
    std::fs::write(&conf, text.replace("@PORT@", &port.to_string()))
        .with_context(|| conf.display().to_string())?;
    Ok(conf)
}

/// syslog-ng unpacked under `root` (as tests/support/mod.rs runs it): its own modules and
/// libraries, no capabilities, its state files in `dir`, its own messages to stderr.
fn syslog_ng(root: &Path, dir: &Path, conf: &Path) -> Command {
    let mut cmd = Command::new(root.join("usr/sbin/syslog-ng"));
    let at = |f: &str| dir.join(f).display().to_string();
    let modules = root.join("usr/lib/syslog-ng/3.38");
    let r = root.display();
    cmd.args(["--foreground", "--stderr", "--no-caps"])
        .arg(format!("--cfgfile={}", conf.display()))
        .arg(format!("--module-path={}", modules.display()))
        .arg(format!("--pidfile={}", at("syslog-ng.pid")))
        .arg(format!("--persist-file={}", at("syslog-ng.persist")))
        .arg(format!("--control={}", at("syslog-ng.ctl")))
        .env(
            "LD_LIBRARY_PATH",
            format!("{r}/usr/lib/syslog-ng:{r}/usr/lib/x86_64-linux-gnu:{r}/usr/lib"),
        )
        // Unset, glibc stats /etc/localtime at every localtime(): 4 times per message here
        // (the date-parsers). The input's times carry their offset, so UTC changes nothing else.
        .env("TZ", "UTC");
    cmd
}

/// `--jobs N` for a subcommand when `VS_JOBS` is set; an error if it has no such option.
fn jobs_arg(subcommand: &str) -> anyhow::Result<Vec<String>> {
    let Ok(jobs) = std::env::var("VS_JOBS") else {
        return Ok(Vec::new());
    };
    let help = Command::new(BIN).args([subcommand, "--help"]).output()?;
    if !String::from_utf8_lossy(&help.stdout).contains("--jobs") {
        bail!("VS_JOBS is set but `defender-bridge {subcommand}` has no --jobs");
    }
    Ok(vec![format!("--jobs={jobs}")])
}

/// One run of each, in order: syslog-ng, send, convert.
fn one_run(
    root: &Path,
    dir: &Path,
    input: &Path,
    n: u64,
    jobs: &[Vec<String>; 2],
) -> anyhow::Result<[anyhow::Result<Run>; 3]> {
    // A fresh state directory: with the last persist file, the file source would start at EOF.
    let ng_dir = dir.join("syslog-ng");
    std::fs::create_dir_all(&ng_dir)?;
    let receiver = Receiver::start(n)?;
    let conf = syslog_ng_conf(&ng_dir, input, receiver.port)?;
    let mut cmd = syslog_ng(root, &ng_dir, &conf);
    let ng = timed(
        &mut cmd,
        &ng_dir.join("stderr.log"),
        n,
        Some(&receiver),
        true,
    );

    let receiver = Receiver::start(n)?;
    let mut cmd = Command::new(BIN);
    cmd.arg("send")
        .arg(format!("--to=tcp://127.0.0.1:{}", receiver.port));
    cmd.args(["--format=arcsight", "--syslog=none", "--framing=lf"]);
    cmd.args(&jobs[0]).arg(input);
    let send = timed(&mut cmd, &dir.join("send.log"), n, Some(&receiver), false);

    let mut cmd = Command::new(BIN);
    cmd.args(["convert", "-f", "arcsight"])
        .args(&jobs[1])
        .arg(input);
    let convert = timed(&mut cmd, &dir.join("convert.log"), n, None, false);
    Ok([ng, send, convert])
}

fn figures(n: u64, r: &Run) -> String {
    let receiver = if r.receiver_cpu_s > 0.0 {
        format!(" (receiver: {:.2} s)", r.receiver_cpu_s)
    } else {
        String::new()
    };
    format!(
        "{:>7.0} records/s ({:>5.2} s), peak RSS {:>6.1} MB, CPU {:>5.2} s = {:>4.1} µs/record{receiver}",
        n as f64 / r.seconds,
        r.seconds,
        r.peak_kib * 1024.0 / 1e6,
        r.cpu_s,
        r.cpu_s * 1e6 / n as f64
    )
}

const NAMES: [&str; 3] = ["syslog-ng", "send", "convert"];

fn bench() -> anyhow::Result<ExitCode> {
    let n: u64 = env_number("VS_RECORDS", DEFAULT_RECORDS)?;
    let runs: usize = env_number("VS_RUNS", DEFAULT_RUNS)?;
    let root = PathBuf::from(std::env::var("SYSLOG_NG_ROOT").unwrap_or("/opt/syslog-ng".into()));
    if !root.join("usr/sbin/syslog-ng").exists() {
        bail!(
            "syslog-ng not found under {}: run `bash .ci/install-daemons.sh` (as root) or set SYSLOG_NG_ROOT",
            root.display()
        );
    }
    let jobs = [jobs_arg("send")?, jobs_arg("convert")?];
    let dir = tempfile::tempdir()?;
    let input = dir.path().join("alerts.ndjson");
    let alert_size = write_input(&input, n)?;
    let input_mb = std::fs::metadata(&input)?.len() as f64 / 1e6;

    // A configuration error is the bench's, not a run's: checked before any timing.
    let conf = syslog_ng_conf(dir.path(), &input, 9)?;
    let check = syslog_ng(&root, dir.path(), &conf)
        .arg("--syntax-only")
        .output();
    let check = check.context("running syslog-ng --syntax-only")?;
    if !check.status.success() {
        let why = String::from_utf8_lossy(&check.stderr);
        bail!("syslog-ng rejects the configuration: {}", why.trim());
    }

    println!(
        "vs_syslog_ng: {n} MDE alerts ({alert_size} bytes each, {input_mb:.0} MB of NDJSON) → ArcSight CEF, LF framing over TCP to 127.0.0.1"
    );
    let mut done: [Vec<Run>; 3] = Default::default();
    let mut failures = Vec::new();
    for i in 1..=runs {
        let run_dir = dir.path().join(format!("run-{i}"));
        std::fs::create_dir_all(&run_dir)?;
        let results = one_run(&root, &run_dir, &input, n, &jobs)?;
        for ((name, result), done) in NAMES.iter().zip(results).zip(&mut done) {
            match result {
                Ok(r) => {
                    println!("  run {i}: {name:<9} {}", figures(n, &r));
                    done.push(r);
                }
                Err(e) => {
                    println!("  run {i}: {name:<9} FAILED: {e:#}");
                    failures.push(format!("run {i} {name}: {e:#}"));
                }
            }
        }
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    let mut medians = Vec::new();
    for (name, done) in NAMES.iter().zip(&done) {
        if !done.is_empty() {
            let m = |f: fn(&Run) -> f64| median(done.iter().map(f).collect());
            let r = Run {
                seconds: m(|r| r.seconds),
                peak_kib: m(|r| r.peak_kib),
                cpu_s: m(|r| r.cpu_s),
                receiver_cpu_s: m(|r| r.receiver_cpu_s),
            };
            println!("  median of {}: {name:<9} {}", done.len(), figures(n, &r));
            medians.push((*name, r.seconds));
        }
    }
    if let [("syslog-ng", ng), ("send", send), ..] = medians[..] {
        println!("  send / syslog-ng: {:.2} times the records/s", ng / send);
    }
    if failures.is_empty() {
        println!("vs_syslog_ng: OK, every record arrived exactly once");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("vs_syslog_ng: FAILED: {}", failures.join("; "));
        Ok(ExitCode::FAILURE)
    }
}
