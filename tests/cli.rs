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
