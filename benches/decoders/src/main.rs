//! JSON decoder alternatives against the current decoder, measured in one process.
//!
//! ```text
//! cargo run --release --manifest-path benches/decoders/Cargo.toml [-- --rounds 31 --ms 15]
//! ```
//!
//! Inputs, compact (as `benches/encode.rs` and `replay.rs` make them, through a `Value`):
//! `tests/data/mde-alert-get-docs.json` without its null fields and its evidence (as
//! `replay.rs`'s `alert_template()` makes it), `tests/data/typical-graph-alert-3k.json`,
//! `tests/data/realistic-graph-alert.json`, and the latter with an evidence item of a kind the
//! model does not type first in its list (such an alert is decoded the thorough way: a second
//! pass). Every round times every candidate on every input once, a batch of `--ms` milliseconds
//! each, the order rotated from round to round; the table gives each one's median over the
//! rounds and the spread of its middle half. Copies that a decoder needs (simd-json parses a
//! mutable buffer) are counted in its time.
//!
//! Before any timing, each candidate that makes an `Alert` is compared with `Alert::from_json`
//! (`Debug` text, ArcSight and JSON records) on the timed inputs and on every alert of
//! `tests/data`. `--fingerprints` prints what `Alert::from_json` makes of them all, to compare
//! two builds of the library; `--only C --input I --iters N` runs one timed loop alone, for
//! `valgrind --tool=callgrind --toggle-collect='*measured*'` (instructions per alert: N-th of
//! "Collected").
//!
//! `Alert` has no `Deserialize` impl (`src/alert/wire.rs` decodes private wire structs, then
//! translates them), so `sonic_rs::from_str::<Alert>` and `simd_json::serde::from_slice::<Alert>`
//! do not compile. `--features wire-patch` adds the candidates that drive the wire structs with
//! sonic-rs and simd-json; it needs the hidden generic entry point
//! `defender_bridge::alert::decode_one_pass_with`, which the library does not have
//! (`git apply benches/decoders/wire-patch.diff` adds it).

use std::fmt::Display;
use std::hint::black_box;
use std::time::Instant;

use defender_bridge::alert::Alert;
use defender_bridge::format::{Context, Formatter};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

/// What the candidates may keep from one call to the next, as a collector would.
struct Scratch {
    buf: Vec<u8>,
    buffers: simd_json::Buffers,
    tree: sonic_rs::PointerTree,
}

/// One candidate: decodes `json`, hands the alert to `seen` if it makes one, and returns
/// something of what it decoded (for `black_box`).
type Decode = fn(&str, &mut Scratch, &mut dyn FnMut(&Alert)) -> Result<usize, String>;

fn text<T>(r: Result<T, impl Display>) -> Result<T, String> {
    r.map_err(|e| e.to_string())
}

fn current(json: &str, _: &mut Scratch, seen: &mut dyn FnMut(&Alert)) -> Result<usize, String> {
    let alert = text(Alert::from_json(json))?;
    seen(&alert);
    Ok(alert.evidence.len())
}

/// The copy that simd-json parses in place, in the buffer kept from the last call.
fn copy<'s>(json: &str, buf: &'s mut Vec<u8>) -> &'s mut [u8] {
    buf.clear();
    buf.extend_from_slice(json.as_bytes());
    buf
}

/// What a peek at an alert needs (its id, version and severity), in one lazy pass.
const PEEK: [&str; 4] = ["id", "lastUpdateDateTime", "lastUpdateTime", "severity"];

fn candidates() -> Vec<(&'static str, Decode)> {
    #[allow(unused_mut)]
    let mut c: Vec<(&'static str, Decode)> = vec![
        ("serde_json Alert::from_json (current)", current),
        ("serde_json IgnoredAny (scan floor)", |j, _, _| {
            text(serde_json::from_str::<IgnoredAny>(j)).map(|_| 0)
        }),
        ("serde_json &RawValue (validate pass)", |j, _, _| {
            text(serde_json::from_str::<&RawValue>(j)).map(|r| r.get().len())
        }),
        ("serde_json &RawValue, then from_json", |j, s, seen| {
            current(text(serde_json::from_str::<&RawValue>(j))?.get(), s, seen)
        }),
        ("sonic-rs IgnoredAny (scan floor)", |j, _, _| {
            text(sonic_rs::from_str::<IgnoredAny>(j)).map(|_| 0)
        }),
        ("sonic-rs get_many, 4 lazy fields", |j, s, _| {
            let found = text(sonic_rs::get_many(j, &s.tree))?;
            Ok(found.iter().flatten().map(|v| v.as_raw_str().len()).sum())
        }),
        ("simd-json tape (copy, kept buffers)", |j, s, _| {
            let buf = copy(j, &mut s.buf);
            text(simd_json::to_tape_with_buffers(buf, &mut s.buffers)).map(|t| t.0.len())
        }),
        ("simd-json tape (copy, to_tape)", |j, s, _| {
            text(simd_json::to_tape(copy(j, &mut s.buf))).map(|t| t.0.len())
        }),
        ("simd-json BorrowedValue (copy, kept)", |j, s, _| {
            let buf = copy(j, &mut s.buf);
            let v = simd_json::to_borrowed_value_with_buffers(buf, &mut s.buffers);
            Ok(std::mem::size_of_val(&text(v)?))
        }),
    ];
    #[cfg(feature = "wire-patch")]
    c.extend(wire::candidates());
    c
}

#[cfg(feature = "wire-patch")]
mod wire {
    use super::*;
    use defender_bridge::alert::decode_one_pass_with;

    fn one_pass(
        r: Result<Option<Alert>, String>,
        seen: &mut dyn FnMut(&Alert),
    ) -> Result<usize, String> {
        let alert = r?.ok_or("needs the thorough (serde_json RawValue) pass")?;
        seen(&alert);
        Ok(alert.evidence.len())
    }

    pub fn candidates() -> [(&'static str, Decode); 3] {
        [
            ("serde_json -> wire one-pass", |j, _, seen| {
                let mut d = serde_json::Deserializer::from_str(j);
                one_pass(decode_one_pass_with(&mut d), seen)
            }),
            ("sonic-rs -> wire one-pass", |j, _, seen| {
                let mut d = sonic_rs::Deserializer::from_str(j);
                one_pass(decode_one_pass_with(&mut d), seen)
            }),
            ("simd-json -> wire one-pass (copy, kept)", |j, s, seen| {
                let buf = copy(j, &mut s.buf);
                let mut d = text(simd_json::Deserializer::from_slice_with_buffers(
                    buf,
                    &mut s.buffers,
                ))?;
                one_pass(decode_one_pass_with(&mut d), seen)
            }),
        ]
    }
}

fn read(file: &str) -> String {
    let path = format!("{}/../../tests/data/{file}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The alert with an evidence item of a kind the model does not type (Graph has over 40) first.
fn with_untyped_evidence(alert: &str) -> String {
    let item =
        r##"{"@odata.type":"#microsoft.graph.security.cloudApplicationEvidence","appId":42}"##;
    alert.replacen(r#""evidence":["#, &format!(r#""evidence":[{item},"#), 1)
}

/// A fixture as `benches/encode.rs` and `replay.rs` make it: compact, through a `Value` (so its
/// keys sorted), with the top-level fields that `keep`.
fn compact(file: &str, keep: fn(&str, &serde_json::Value) -> bool) -> String {
    let Ok(serde_json::Value::Object(mut alert)) = serde_json::from_str(&read(file)) else {
        panic!("{file}: not an object");
    };
    alert.retain(|k, v| keep(k, v));
    serde_json::to_string(&alert).unwrap()
}

fn inputs() -> Vec<(String, String)> {
    let realistic = compact("realistic-graph-alert.json", |_, _| true);
    // `alert_template()`'s alert: without its null fields and its evidence.
    let mde = compact("mde-alert-get-docs.json", |k, v| {
        !v.is_null() && k != "evidence"
    });
    vec![
        ("mde-alert-get-docs (no nulls)".into(), mde),
        (
            "typical-graph-alert-3k".into(),
            compact("typical-graph-alert-3k.json", |_, _| true),
        ),
        (
            "realistic-graph-alert + untyped evidence".into(),
            with_untyped_evidence(&realistic),
        ),
        ("realistic-graph-alert".into(), realistic),
    ]
}

/// Every alert of the fixtures as written (one per file, list item or NDJSON line), and the
/// realistic alert with a `customDetails` object.
fn corpus(realistic: &str) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Page<'a> {
        #[serde(borrow)]
        value: Vec<&'a RawValue>,
    }
    let mut names: Vec<String> =
        std::fs::read_dir(format!("{}/../../tests/data", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("mde-") || n.starts_with("edge") || n.contains("graph-alert"))
            .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let text = read(&name);
        if name.ends_with(".ndjson") {
            let lines = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty());
            out.extend(lines.map(|(n, l)| (format!("{name}:{}", n + 1), l.to_string())));
        } else if let Ok(page) = serde_json::from_str::<Page>(&text) {
            let items = page.value.iter().enumerate();
            out.extend(items.map(|(n, a)| (format!("{name}[{n}]"), a.get().to_string())));
        } else {
            out.push((name, text));
        }
    }
    let details = format!(
        r#"{{"customDetails":{{"source":"probe"}},{}"#,
        &realistic[1..]
    );
    out.push(("realistic-graph-alert + customDetails".into(), details));
    out
}

/// What must be the same whichever decoder made the alert: its `Debug` text and its records.
/// (The records without a syslog header: an alert without a usable time takes the clock's.)
fn fingerprint(alert: &Alert, formats: &[Formatter]) -> Vec<u8> {
    let mut out = format!("{alert:?}\n").into_bytes();
    let ctx = Context {
        tenant_name: Some("Contoso"),
        hostname: None,
    };
    for f in formats {
        if let Err(err) = f.encode(alert, &ctx, 0, Some(8192), &mut out) {
            out.extend_from_slice(err.to_string().as_bytes());
        }
        out.push(b'\n');
    }
    out
}

/// What `f` makes of `json`: the alert's fingerprint, `None` if it makes no alert, or its error.
fn outcome(
    f: Decode,
    json: &str,
    s: &mut Scratch,
    formats: &[Formatter],
) -> Result<Option<Vec<u8>>, String> {
    let mut got = None;
    f(json, s, &mut |a| got = Some(fingerprint(a, formats))).map(|_| got)
}

/// The timed loop; its own function so that callgrind can count it alone (`--only`).
#[inline(never)]
fn measured(f: Decode, json: &str, s: &mut Scratch, n: usize) {
    for _ in 0..n {
        black_box(f(black_box(json), s, &mut |_| {}).unwrap());
    }
}

/// The number after `name` on the command line.
fn arg(name: &str) -> Option<usize> {
    let value = std::env::args().skip_while(|a| a != name).nth(1)?;
    Some(value.parse().expect("a number after the option"))
}

fn main() {
    let rounds = arg("--rounds").unwrap_or(31);
    let batch_ms = arg("--ms").unwrap_or(15) as f64;
    let formats: Vec<Formatter> = ["arcsight", "json"]
        .iter()
        .map(|f| Formatter::load(f).expect("built-in"))
        .collect();
    let mut tree = sonic_rs::PointerTree::new();
    PEEK.iter().for_each(|k| tree.add_path([*k]));
    let (buf, buffers) = (Vec::new(), simd_json::Buffers::new(8192));
    let mut s = Scratch { buf, buffers, tree };
    let (inputs, cands) = (inputs(), candidates());
    let corpus = corpus(&inputs[3].1);

    if let Some(c) = arg("--only") {
        let (input, n) = (
            &inputs[arg("--input").unwrap_or(0)].1,
            arg("--iters").unwrap_or(1000),
        );
        return measured(cands[c].1, input, &mut s, n);
    }
    if std::env::args().any(|a| a == "--fingerprints") {
        for (label, json) in inputs.iter().chain(&corpus) {
            let got = outcome(current, json, &mut s, &formats);
            let got = got.map_or_else(|e| e, |a| String::from_utf8_lossy(&a.unwrap()).into_owned());
            println!("== {label}\n{got}");
        }
        return;
    }

    println!("## Against Alert::from_json: the timed inputs, then every alert of tests/data");
    for (name, f) in cands.iter().skip(1) {
        let (mut made, mut same, mut notes) = (0, 0, Vec::new());
        for (label, json) in inputs.iter().chain(&corpus) {
            let (got, want) = (
                outcome(*f, json, &mut s, &formats),
                outcome(current, json, &mut s, &formats),
            );
            made += usize::from(matches!(got, Ok(Some(_))));
            match (got, want) {
                (Ok(None), _) => {}
                (Err(_), Err(_)) => same += 1,
                (Ok(a), Ok(b)) if a == b => same += 1,
                (Ok(_), Ok(_)) => notes.push(format!("{label}: DIFFERENT alert")),
                (Ok(_), Err(e)) => notes.push(format!("{label}: decodes what it rejects: {e}")),
                (Err(e), Ok(_)) => notes.push(format!("{label}: {}", e.lines().next().unwrap())),
            }
        }
        if made > 0 {
            println!(
                "{name}: {same} of {} identical",
                inputs.len() + corpus.len()
            );
            notes.iter().for_each(|n| println!("    {n}"));
        }
    }

    // The batch size of each (input, candidate) that works, then the rounds: every working
    // pair once per round, the order rotated.
    let mut pairs = Vec::new();
    for (i, (_, json)) in inputs.iter().enumerate() {
        for (c, (_, f)) in cands.iter().enumerate() {
            if f(json, &mut s, &mut |_| {}).is_ok() {
                let (start, mut n) = (Instant::now(), 0);
                while start.elapsed().as_secs_f64() < 0.002 {
                    measured(*f, json, &mut s, 1);
                    n += 1;
                }
                let per_ms = n as f64 / start.elapsed().as_secs_f64() / 1e3;
                pairs.push((i, c, ((batch_ms * per_ms) as usize).max(1)));
            }
        }
    }
    let mut ns = vec![vec![Vec::new(); cands.len()]; inputs.len()];
    for round in 0..rounds {
        for k in 0..pairs.len() {
            let (i, c, n) = pairs[(k + round * 7) % pairs.len()];
            let start = Instant::now();
            measured(cands[c].1, &inputs[i].1, &mut s, n);
            ns[i][c].push(start.elapsed().as_nanos() as f64 / n as f64);
        }
    }

    println!("\n## Medians of {rounds} rounds ({batch_ms} ms batches), one thread");
    for (i, (input, json)) in inputs.iter().enumerate() {
        println!("\n--input {i}: {input}, {} bytes", json.len());
        println!(
            " # candidate{:33}ns/alert  alerts/s   MB/s x faster          q1..q3",
            ""
        );
        let mut base = None;
        for (c, (name, _)) in cands.iter().enumerate() {
            let v = &mut ns[i][c];
            if v.is_empty() {
                println!("{c:>2} {name:<42}{:>9}", "fails");
                continue;
            }
            v.sort_by(f64::total_cmp);
            let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
            let m = at(0.5);
            let base = *base.get_or_insert(m);
            let spread = |p: f64| (at(p) / m - 1.0) * 100.0;
            println!(
                "{c:>2} {name:<42}{m:>9.0}{:>10.0}{:>7.0}{:>9.2}{:>8.1}%..{:+.1}%",
                1e9 / m,
                json.len() as f64 * 1e3 / m,
                base / m,
                spread(0.25),
                spread(0.75)
            );
        }
    }
}
