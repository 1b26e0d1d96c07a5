//! E-mail over SMTP (lettre): STARTTLS (RFC 3207) or implicit TLS (RFC 8314), certificates
//! checked against the system roots plus `ca_file`, AUTH with the password from env or file;
//! one multipart/alternative message (plain text and HTML) per digest.

use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::message::Digest;
use super::{NotifyError, SmtpSettings, SmtpTls};

/// RFC 3834 `Auto-Submitted: auto-generated`: vacation responders and mailing lists do not
/// answer a machine's mail.
#[derive(Clone)]
struct AutoSubmitted;

impl lettre::message::header::Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }
    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }
    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_string())
    }
}

/// The message of `digest` to `to` and `cc`.
pub fn message(
    s: &SmtpSettings,
    to: &[Mailbox],
    cc: &[Mailbox],
    digest: &Digest,
) -> Result<Message, NotifyError> {
    let mut b = Message::builder()
        .from(s.from.clone())
        .subject(digest.subject())
        .header(AutoSubmitted);
    for m in to {
        b = b.to(m.clone());
    }
    for m in cc {
        b = b.cc(m.clone());
    }
    b.multipart(MultiPart::alternative_plain_html(
        digest.text(),
        digest.html(),
    ))
    .map_err(|e| NotifyError::Message(e.to_string()))
}

fn transport(s: &SmtpSettings) -> Result<AsyncSmtpTransport<Tokio1Executor>, NotifyError> {
    let tls = || -> Result<TlsParameters, NotifyError> {
        let mut b = TlsParameters::builder(s.host.clone());
        if let Some(path) = &s.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                NotifyError::Tls(format!("cannot read ca_file {}: {e}", path.display()))
            })?;
            let cert = Certificate::from_pem(&pem).map_err(|e| {
                NotifyError::Tls(format!(
                    "ca_file {} holds no PEM certificate: {e}",
                    path.display()
                ))
            })?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls()
            .map_err(|e| NotifyError::Tls(e.to_string()))
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
        .port(s.port)
        .timeout(Some(s.timeout))
        .tls(match s.tls {
            SmtpTls::StartTls => Tls::Required(tls()?),
            SmtpTls::Implicit => Tls::Wrapper(tls()?),
            SmtpTls::None => Tls::None,
        });
    if let (Some(user), Some(pass)) = (&s.username, &s.password) {
        b = b.credentials(Credentials::new(user.clone(), pass.expose().to_string()));
    }
    Ok(b.build())
}

/// Sends `message`; the error says what failed, in the terms of the step that failed.
pub async fn send(s: &SmtpSettings, message: Message) -> Result<(), NotifyError> {
    // Resolved first, so that a name that does not resolve is said as such.
    match tokio::net::lookup_host((s.host.as_str(), s.port)).await {
        Ok(addrs) => {
            if addrs.count() == 0 {
                return Err(NotifyError::Dns(format!("{} has no address", s.host)));
            }
        }
        Err(e) => return Err(NotifyError::Dns(format!("cannot resolve {}: {e}", s.host))),
    }
    let t = transport(s)?;
    t.send(message)
        .await
        .map(|_| ())
        .map_err(|e| classify(s, &e))
}

fn classify(s: &SmtpSettings, e: &lettre::transport::smtp::Error) -> NotifyError {
    // lettre's own text names the step; its sources say why (a certificate's issuer unknown).
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let c = cause.to_string();
        if !text.contains(&c) {
            text = format!("{text}: {c}");
        }
        source = cause.source();
    }
    let code = e.status().map(|c| c.to_string());
    let lower = text.to_ascii_lowercase();
    if e.is_tls()
        || lower.contains("certificate")
        || lower.contains("tls")
        || lower.contains("handshake")
    {
        return NotifyError::Tls(format!("with {}:{}: {text}", s.host, s.port));
    }
    if code.as_deref().is_some_and(|c| c.starts_with("53")) {
        return NotifyError::Auth(format!(
            "{}:{} refused the login of {}: {text}",
            s.host,
            s.port,
            s.username.as_deref().unwrap_or("(none)")
        ));
    }
    if e.is_timeout() {
        return NotifyError::Connect(format!(
            "{}:{} did not answer in time: {text}",
            s.host, s.port
        ));
    }
    if e.is_transient() || e.is_permanent() {
        return NotifyError::Refused(format!("{}:{} answered {text}", s.host, s.port));
    }
    NotifyError::Connect(format!("with {}:{}: {text}", s.host, s.port))
}
