//! `notify-test RULE`: one clearly marked test message through each of a rule's actions.

use std::process::ExitCode;

use anyhow::Result;

use super::load_config;
use defender_bridge::notify::NotifyError;
use defender_bridge::source::build_http_client;

/// Sends the test message; exits 0 when every action delivered it, 1 otherwise.
pub(crate) async fn notify_test(args: crate::cli::NotifyTestArgs) -> Result<ExitCode> {
    let config = load_config(&args.config.config)?;
    let http = build_http_client(&config.http)?;
    let results = defender_bridge::notify::test(&config.notifications, &args.rule, &http).await?;
    let mut failed = false;
    for r in results {
        match r.result {
            Ok(()) => println!("{} to {}: sent", r.action, r.target),
            Err(e) => {
                failed = true;
                println!("{} to {}: FAILED: {e}", r.action, r.target);
                println!("  {}", hint(&e));
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What to look at, by the step that failed.
fn hint(e: &NotifyError) -> &'static str {
    match e {
        NotifyError::Dns(_) => "check the host name (server in [smtp], or the webhook URL) and this machine's DNS",
        NotifyError::Connect(_) => "check the port, that the server runs, and the firewall or proxy between",
        NotifyError::Tls(_) => "check tls = \"starttls\" (587) or \"tls\" (465) for the port, and ca_file if the server's certificate is from a private CA",
        NotifyError::Auth(_) => "check username and the password in its env variable or file",
        NotifyError::Refused(_) => "the server took the connection but not the message: check from = and the recipients, and whether the server relays for this sender",
        NotifyError::Http { status: 401 | 403, .. } => "the webhook refused the credentials: check the URL (Teams and Slack URLs carry their signature) and its headers",
        NotifyError::Http { status: 404, .. } => "no webhook at this URL: it may have been deleted; make a new one",
        NotifyError::Http { .. } => "the webhook answered an error: its first line is above",
        NotifyError::Message(_) | NotifyError::NoSmtp => "check the rule in the configuration",
    }
}
