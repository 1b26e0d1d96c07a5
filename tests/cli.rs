//! The `defender-bridge` binary as a SIEM admin runs it: `convert` and `formats`.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
}

fn run(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = bin();
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("the binary runs");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(input) = stdin {
        pipe.write_all(input).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn convert_reports_bad_lines_and_keeps_the_rest() {
    let out = run(
        &[
            "convert",
            "--format",
            "arcsight",
            "tests/data/mde-alerts-edge-cases.ndjson",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "rejected input means exit 1");
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 2);
    assert!(stdout.lines().all(|l| l.starts_with("CEF:0|Microsoft|")));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "tests/data/mde-alerts-edge-cases.ndjson:3: invalid JSON: EOF while parsing a value\n"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("tests/data/mde-alerts-edge-cases.ndjson:4: expected an alert object\n"),
        "{stderr}"
    );
    assert!(stderr.contains("2 input(s) rejected"), "{stderr}");
}

#[test]
fn convert_reads_stdin_and_adds_syslog_headers() {
    let input = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/mde-alert-get-docs.json"
    ))
    .unwrap();
    // The alert is Low: syslog severity notice (5) on local4 (20) is PRI 165.
    for (syslog, prefix) in [
        (
            "rfc5424",
            "<165>1 2021-01-26T20:33:59.200000Z edge-01 defender-bridge - - - LEEF:2.0|",
        ),
        ("rfc3164", "<165>Jan 26 20:33:59 edge-01 LEEF:2.0|"),
        ("none", "LEEF:2.0|"),
    ] {
        let out = run(
            &[
                "convert",
                "-f",
                "qradar",
                "--syslog",
                syslog,
                "--hostname",
                "edge-01",
                "--utc",
                "--facility",
                "local4",
                "-",
            ],
            Some(&input),
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        assert_eq!(stdout.lines().count(), 1);
        assert!(stdout.starts_with(prefix), "{syslog}: {stdout}");
    }
}

#[test]
fn convert_many_files_and_a_missing_one() {
    let out = run(
        &[
            "convert",
            "-f",
            "json",
            "tests/data/realistic-graph-alert.json",
            "no/such/file.json",
            "tests/data/mde-alert-legacy-2018-docs.json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 2);
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert!(v["id"].is_string());
    }
    assert!(text(&out.stderr).contains("no/such/file.json: cannot read: "));
}

#[test]
fn convert_with_a_size_limit_truncates_and_refuses_what_cannot_fit() {
    let out = run(
        &[
            "convert",
            "-f",
            "sentinel",
            "--syslog",
            "rfc5424",
            "--hostname",
            "h",
            "--max-size",
            "1200",
            "tests/data/hostile-graph-alert.json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    assert!(line.trim_end().len() <= 1200, "{}", line.len());
    assert!(line.contains("externalId=da0000hostile-0001_1"));
    let out = run(
        &[
            "convert",
            "-f",
            "sentinel",
            "--max-size",
            "200",
            "tests/data/hostile-graph-alert.json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(
        text(&out.stderr)
            .contains("hostile-graph-alert.json:1: alert da0000hostile-0001_1: the record is "),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_users_format_file_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("mine.toml");
    std::fs::write(&good, "syntax = \"json\"\n\n[[field]]\nkey = \"alert\"\npath = \"id\"\n\n[[field]]\nkey = \"host\"\npath = \"device.hostName\"\n").unwrap();
    let out = run(
        &[
            "convert",
            "-f",
            good.to_str().unwrap(),
            "tests/data/mde-alert-get-docs.json",
        ],
        None,
    );
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout),
        "{\"alert\":\"da637472900382838869_1364969609\",\"host\":\"temp123\"}\n"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "syntax = \"json\"\n\n[[field]]\nkey = \"alert\"\npath = \"alertIdentifier\"\n",
    )
    .unwrap();
    let out = run(
        &[
            "convert",
            "-f",
            bad.to_str().unwrap(),
            "tests/data/mde-alert-get-docs.json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:5: unknown path \"alertIdentifier\"",
            bad.display()
        )),
        "{stderr}"
    );

    let out = run(&["convert", "-f", "qradar2", "-"], Some(b""));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr)
        .contains("no built-in format of that name (arcsight, sentinel, splunk, qradar, json)"));
}

#[test]
fn formats_list_and_show() {
    let out = run(&["formats", "list"], None);
    assert!(out.status.success());
    let names: Vec<String> = text(&out.stdout)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["arcsight", "sentinel", "splunk", "qradar", "json"]);
    let out = run(&["formats", "show", "qradar"], None);
    assert!(out.status.success());
    let shown = text(&out.stdout);
    assert_eq!(
        shown,
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/formats/qradar.toml"))
            .unwrap()
    );
    let out = run(&["formats", "show", "cef"], None);
    assert_eq!(out.status.code(), Some(2));
}

/// The same alerts as NDJSON, as a JSON array and as a pretty-printed API page, with bad
/// elements among them, streamed on one worker and on several: the same records in input
/// order and the same problems, with their lines.
#[test]
fn convert_gives_the_same_records_in_order_on_any_number_of_workers() {
    let alert: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/data/mde-alert-get-docs.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let n = 2_000;
    let alerts: Vec<String> = (0..n)
        .map(|i| {
            let mut a = alert.clone();
            a["id"] = serde_json::Value::String(format!("da{i:08}"));
            // Sizes vary, so that workers finish out of order.
            a["description"] = serde_json::Value::String("d".repeat(i % 7 * 900));
            a.to_string()
        })
        .collect();
    let mut with_bad = alerts.clone();
    with_bad.insert(1_000, "[1, 2]".to_string());
    with_bad.insert(1_500, "{\"id\": \"x\", \"title\": oops}".to_string());
    let dir = tempfile::tempdir().unwrap();
    let shapes = [
        ("alerts.ndjson", with_bad.join("\n")),
        (
            "alerts-array.json",
            format!("[\n{}\n]", with_bad.join(",\n")),
        ),
        (
            "alerts-page.json",
            format!(
                "{{\n  \"@odata.context\": \"x\",\n  \"value\": [\n    {}\n  ]\n}}\n",
                with_bad.join(",\n    ")
            ),
        ),
    ];
    for (name, body) in shapes {
        let path = dir.path().join(name);
        std::fs::write(&path, body).unwrap();
        let path = path.to_str().unwrap();
        let one = run(&["convert", "-f", "qradar", "--jobs", "1", path], None);
        assert_eq!(one.status.code(), Some(1), "{name}");
        let records: Vec<&str> = std::str::from_utf8(&one.stdout).unwrap().lines().collect();
        assert_eq!(records.len(), n, "{name}");
        for (i, r) in records.iter().enumerate() {
            assert!(
                r.contains(&format!("da{i:08}")),
                "{name}: record {i} is {r}"
            );
        }
        let stderr = text(&one.stderr);
        let line = |l: usize| {
            if name.ends_with("ndjson") {
                l
            } else {
                l + 1 + usize::from(name.contains("page")) * 2
            }
        };
        assert!(
            stderr.contains(&format!(
                "{path}:{}: expected an alert object\n",
                line(1_001)
            )),
            "{name}: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "{path}:{}: invalid JSON: expected value",
                line(1_501)
            )),
            "{name}: {stderr}"
        );
        for jobs in ["2", "5"] {
            let many = run(&["convert", "-f", "qradar", "--jobs", jobs, path], None);
            assert_eq!(many.status.code(), Some(1));
            assert!(
                many.stdout == one.stdout,
                "{name}: --jobs {jobs} changed the records"
            );
            assert_eq!(text(&many.stderr), stderr, "{name}: --jobs {jobs}");
        }
    }
}
