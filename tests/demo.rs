//! `defender-bridge demo`, the README's first command: the real pollers against the built-in
//! fake, records printed or sent to a real receiver.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use support::{rsyslog, RsyslogInput};

fn leef_attrs(line: &str) -> BTreeMap<String, String> {
    let body = &line[line.find("LEEF:2.0|").expect("a LEEF record")..];
    let attrs = body.splitn(7, '|').nth(6).expect("attributes");
    attrs
        .split('^')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn demo_prints_new_alerts_and_updates_of_every_tenant() {
    let out = Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args([
            "demo",
            "--format",
            "qradar",
            "--syslog",
            "none",
            "--tenants",
            "3",
        ])
        .args(["--every", "500ms", "--for", "8s"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let records: Vec<BTreeMap<String, String>> = stdout.lines().map(leef_attrs).collect();
    // Three alerts per tenant at the start, then one event every 500 ms.
    assert!(records.len() >= 12, "{} records:\n{stdout}", records.len());
    let tenants: BTreeSet<&str> = records.iter().map(|r| r["tenantName"].as_str()).collect();
    assert_eq!(
        tenants,
        BTreeSet::from(["contoso", "fabrikam", "northwind"])
    );
    // Every (alert, version) once; some alerts come again with a later version (updates).
    let versions: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["alertId"].as_str(), r["lastUpdateTime"].as_str()))
        .collect();
    let unique: BTreeSet<_> = versions.iter().collect();
    assert_eq!(unique.len(), versions.len(), "a version was sent twice");
    let ids: BTreeSet<&str> = versions.iter().map(|v| v.0).collect();
    assert!(ids.len() < versions.len(), "no status update was forwarded");
    assert!(stderr.contains("record(s) written"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_sends_to_a_real_receiver() {
    let receiver = rsyslog(RsyslogInput::Tcp).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_defender-bridge"))
        .args([
            "demo",
            "--format",
            "sentinel",
            "--syslog",
            "rfc3164",
            "--hostname",
            "demo",
        ])
        .args([
            "--to",
            &format!("tcp://127.0.0.1:{}", receiver.port),
            "--for",
            "4s",
        ])
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = receiver.wait_for_lines(6).await;
    for l in &lines {
        let l = String::from_utf8_lossy(l);
        assert!(
            l.contains(" demo CEF:0|Microsoft|Microsoft Defender for Endpoint|1.0|"),
            "{l}"
        );
    }
}
