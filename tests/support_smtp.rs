//! The test SMTP server of tests/support/smtp.rs against a real client, lettre (the one
//! defender-bridge sends with): plain SMTP, STARTTLS and implicit TLS with the test CA, AUTH
//! PLAIN and LOGIN with right and wrong passwords, a multipart/alternative message whose parts
//! come back exactly through `parse_message`, and the down switch (421, 451, refused) and
//! recovery on the same port. If these pass, a notification test that fails is about the
//! daemon, not about its receiver.

mod support;

use std::time::Duration;

use lettre::message::{header::ContentType, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use support::smtp::{
    decode_header_value, decode_quoted_printable, parse_message, Mode, SmtpOptions, SmtpServer,
    SmtpTls,
};
use support::Pki;

const WAIT: Duration = Duration::from_secs(10);

type Transport = AsyncSmtpTransport<Tokio1Executor>;

fn plain(server: &SmtpServer) -> Transport {
    Transport::builder_dangerous("127.0.0.1")
        .port(server.port())
        .timeout(Some(WAIT))
        .build()
}

fn tls_parameters(pki: &Pki) -> TlsParameters {
    let ca = std::fs::read(&pki.ca).expect("read the test CA");
    TlsParameters::builder("localhost".to_string())
        .add_root_certificate(Certificate::from_pem(&ca).expect("the test CA is PEM"))
        .build()
        .expect("TLS parameters")
}

fn with_tls(server: &SmtpServer, tls: Tls) -> lettre::transport::smtp::AsyncSmtpTransportBuilder {
    Transport::builder_dangerous("localhost")
        .port(server.port())
        .timeout(Some(WAIT))
        .tls(tls)
}

fn mailbox(s: &str) -> Mailbox {
    s.parse().expect("a mailbox")
}

fn simple(subject: &str) -> Message {
    Message::builder()
        .from(mailbox("Defender Bridge <bridge@mssp.example>"))
        .to(mailbox("soc@mssp.example"))
        .cc(mailbox("Oncall <oncall@mssp.example>"))
        .subject(subject)
        .header(ContentType::TEXT_PLAIN)
        .body("one line\n".to_string())
        .expect("build a message")
}

#[tokio::test]
async fn plain_smtp_records_the_envelope_and_the_message() {
    let server = SmtpServer::start(SmtpOptions::default());
    let mailer = plain(&server);
    let response = mailer
        .send(simple("Plain"))
        .await
        .expect("send over plain SMTP");
    assert_eq!(response.code().to_string(), "250");

    let got = server.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(m.mail_from, "bridge@mssp.example");
    // lettre's envelope: To, then Cc.
    assert_eq!(m.rcpt_to, ["soc@mssp.example", "oncall@mssp.example"]);
    assert_eq!(m.authenticated_as, None);
    assert!(!m.tls);
    assert!(!m.helo.is_empty());
    let parsed = m.parsed();
    assert_eq!(parsed.header("Subject"), Some("Plain"));
    assert_eq!(
        parsed.header("From"),
        Some("\"Defender Bridge\" <bridge@mssp.example>")
    );
    assert_eq!(parsed.header("To"), Some("soc@mssp.example"));
    // lettre ends DATA with CRLF.CRLF after a message that ends in CRLF already: the
    // receiver sees one more (empty) line, as any MTA would (RFC 5321 §4.1.1.4).
    assert_eq!(parsed.text.as_deref(), Some("one line\n\n"));
    assert_eq!(parsed.html, None);
    assert_eq!(parsed.part_types, ["text/plain"]);
    assert!(
        m.data.ends_with(b"\r\n\r\none line\r\n\r\n"),
        "{:?}",
        m.data
    );
    assert_eq!(server.connections(), 1);
    assert_eq!(server.auth_failures(), 0);
}

#[tokio::test]
async fn starttls_with_the_test_ca() {
    let pki = Pki::new("smtp");
    let server = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls(&pki),
        ..SmtpOptions::default()
    });
    let mailer = with_tls(&server, Tls::Required(tls_parameters(&pki))).build();
    mailer
        .send(simple("Over STARTTLS"))
        .await
        .expect("send over STARTTLS");
    let got = server.wait_for(1, WAIT).await;
    assert!(got[0].tls);
    assert_eq!(got[0].parsed().header("Subject"), Some("Over STARTTLS"));
    let commands = server.commands();
    let starttls = commands
        .iter()
        .position(|c| c == "STARTTLS")
        .expect("the client sent STARTTLS");
    // RFC 3207 §4.2: a new EHLO after the handshake, and the transaction only then.
    assert!(commands[..starttls].iter().all(|c| !c.starts_with("MAIL")));
    assert!(commands[starttls + 1].starts_with("EHLO "), "{commands:?}");

    // A CA that did not sign the server's certificate: no message goes.
    let other = Pki::new("someone else");
    let err = with_tls(&server, Tls::Required(tls_parameters(&other)))
        .build()
        .send(simple("Must not arrive"))
        .await
        .expect_err("an unknown CA fails the handshake");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn implicit_tls_with_the_test_ca() {
    let pki = Pki::new("smtps");
    let server = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::Implicit(&pki),
        ..SmtpOptions::default()
    });
    let mailer = with_tls(&server, Tls::Wrapper(tls_parameters(&pki))).build();
    mailer
        .send(simple("Implicit TLS"))
        .await
        .expect("send over implicit TLS");
    let got = server.wait_for(1, WAIT).await;
    assert!(got[0].tls);
    assert!(!server.commands().iter().any(|c| c == "STARTTLS"));

    assert_eq!(server.messages().len(), 1);
    assert_eq!(server.connections(), 1);
}

fn auth_server(pki: &Pki) -> SmtpServer {
    SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls(pki),
        auth: Some(("bridge".into(), "s3cret pässword".into())),
        require_tls_before_auth: true,
    })
}

async fn send_with(
    server: &SmtpServer,
    pki: &Pki,
    mechanism: Mechanism,
    password: &str,
) -> Result<(), lettre::transport::smtp::Error> {
    with_tls(server, Tls::Required(tls_parameters(pki)))
        .credentials(Credentials::new("bridge".into(), password.into()))
        .authentication(vec![mechanism])
        .build()
        .send(simple(&format!("{mechanism:?}")))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn auth_plain_and_login_with_right_and_wrong_passwords() {
    let pki = Pki::new("smtp-auth");
    let server = auth_server(&pki);
    for mechanism in [Mechanism::Plain, Mechanism::Login] {
        send_with(&server, &pki, mechanism, "s3cret pässword")
            .await
            .unwrap_or_else(|e| panic!("AUTH {mechanism:?} with the right password: {e}"));
        let err = send_with(&server, &pki, mechanism, "wrong")
            .await
            .expect_err("a wrong password is refused");
        assert!(err.is_permanent(), "{err}");
        assert_eq!(err.status().map(|c| c.to_string()).as_deref(), Some("535"));
    }
    let got = server.messages();
    assert_eq!(got.len(), 2);
    for (m, subject) in got.iter().zip(["Plain", "Login"]) {
        assert_eq!(m.authenticated_as.as_deref(), Some("bridge"));
        assert!(m.tls);
        assert_eq!(m.parsed().header("Subject"), Some(subject));
    }
    assert_eq!(server.auth_failures(), 2);
    assert_eq!(server.connections(), 4);
    // No password in what the server logs.
    assert!(server
        .commands()
        .iter()
        .all(|c| !c.contains("s3cret") && !c.contains("wrong")));
    let auth_lines: Vec<String> = server
        .commands()
        .into_iter()
        .filter(|c| c.starts_with("AUTH"))
        .collect();
    assert_eq!(
        auth_lines,
        [
            "AUTH PLAIN ***",
            "AUTH PLAIN ***",
            "AUTH LOGIN",
            "AUTH LOGIN"
        ]
    );
}

/// One SMTP reply, all its lines.
async fn read_reply(stream: &mut tokio::io::BufReader<tokio::net::TcpStream>) -> Vec<String> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.expect("read a reply");
        let done = line.as_bytes().get(3) != Some(&b'-');
        lines.push(line.trim_end().to_string());
        if done {
            return lines;
        }
    }
}

/// Before TLS the server offers STARTTLS and no AUTH; after, AUTH and no STARTTLS. Spoken by
/// hand, since lettre never tries AUTH on a plain session it was told to encrypt.
#[tokio::test]
async fn ehlo_offers_starttls_before_and_auth_only_after_tls() {
    use tokio::io::{AsyncWriteExt, BufReader};
    let pki = Pki::new("smtp-ehlo");
    let server = auth_server(&pki);
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", server.port()))
        .await
        .expect("connect");
    let mut stream = BufReader::new(stream);
    assert!(read_reply(&mut stream).await[0].starts_with("220 "));
    stream
        .get_mut()
        .write_all(b"EHLO client.example\r\n")
        .await
        .expect("write");
    let ehlo = read_reply(&mut stream).await;
    assert_eq!(
        ehlo.last().map(String::as_str),
        Some("250 STARTTLS"),
        "{ehlo:?}"
    );
    assert!(!ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
    stream
        .get_mut()
        .write_all(b"AUTH PLAIN AGJyaWRnZQB4\r\nMAIL FROM:<a@b>\r\n")
        .await
        .expect("write");
    assert_eq!(
        read_reply(&mut stream).await,
        ["538 5.7.11 Encryption required for requested authentication mechanism"]
    );
    assert_eq!(
        read_reply(&mut stream).await,
        ["530 5.7.0 Authentication required"]
    );
    stream
        .get_mut()
        .write_all(b"QUIT\r\n")
        .await
        .expect("write");
    assert_eq!(read_reply(&mut stream).await, ["221 2.0.0 Bye"]);

    // After STARTTLS: lettre logs in, so AUTH was on offer (checked by the AUTH test); here
    // the offer itself, through the server's record of a TLS session.
    send_with(&server, &pki, Mechanism::Plain, "s3cret pässword")
        .await
        .expect("AUTH after STARTTLS");
    assert_eq!(server.auth_failures(), 0);
}

#[tokio::test]
async fn multipart_alternative_parts_come_back_exactly() {
    let server = SmtpServer::start(SmtpOptions::default());
    let long_line = "Mimikatz credential theft tool detected on host-17.contoso.local ".repeat(8);
    let text = format!(
        "Kunde: Contoso GmbH — Schweregrad: Hoch\n\
         Ransomware ランサムウェア подозрительный процесс 🛡️\n\
         .a line that begins with a dot\n\
         ..and one with two\n\
         .\n\
         {long_line}\n\
         trailing spaces   \n\
         tab\tin the middle\n\
         =3D is not an escape here\n\
         last line without newline"
    );
    let html = format!(
        "<!DOCTYPE html>\n<html><body>\n<h1>Kunde: Contoso GmbH — Hoch</h1>\n\
         <p>ランサムウェア &amp; подозрительный процесс</p>\n\
         .<p>dot at the start of a line</p>\n<p>{long_line}</p>\n</body></html>\n"
    );
    let subject = "[Defender] Hoch: 3 Warnungen für Contoso — ランサムウェア검출 🛡️ \
                   and a subject long enough to be folded over several header lines by the client";
    let message = Message::builder()
        .from(mailbox("Défender Bridge <bridge@mssp.example>"))
        .to(mailbox("soc@mssp.example"))
        .subject(subject)
        .multipart(MultiPart::alternative_plain_html(
            text.clone(),
            html.clone(),
        ))
        .expect("build a multipart message");
    plain(&server).send(message).await.expect("send");
    let got = server.wait_for(1, WAIT).await;
    let raw = String::from_utf8_lossy(&got[0].data).into_owned();
    let parsed = parse_message(&got[0].data);
    assert_eq!(parsed.header("Subject"), Some(subject), "{raw}");
    assert_eq!(
        parsed.header("From"),
        Some("Défender Bridge <bridge@mssp.example>")
    );
    assert_eq!(parsed.part_types, ["text/plain", "text/html"]);
    // Both parts went encoded (non-ASCII, long lines), so the decoders were exercised.
    let encodings: Vec<&str> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("Content-Transfer-Encoding: "))
        .collect();
    assert_eq!(encodings.len(), 2, "{raw}");
    assert!(
        encodings
            .iter()
            .all(|e| *e == "quoted-printable" || *e == "base64"),
        "{encodings:?}"
    );
    assert_eq!(parsed.text.as_deref(), Some(text.as_str()), "{raw}");
    assert_eq!(parsed.html.as_deref(), Some(html.as_str()), "{raw}");
    assert!(parsed
        .header("Content-Type")
        .is_some_and(|v| v.starts_with("multipart/alternative;")));
    // Every line as sent is at most 998 octets (RFC 5322 §2.1.1): lettre encodes long lines.
    assert!(got[0].data.split(|&b| b == b'\n').all(|l| l.len() <= 1000));
}

/// Each transfer encoding lettre may choose, forced one by one, decodes to the same text.
#[tokio::test]
async fn every_transfer_encoding_decodes() {
    use lettre::message::header::ContentTransferEncoding as Cte;
    let server = SmtpServer::start(SmtpOptions::default());
    let text = "Ümlaut and ランサム\n.dot line\nend\n".to_string();
    let encodings = [Cte::QuotedPrintable, Cte::Base64, Cte::EightBit];
    for encoding in encodings {
        let message = Message::builder()
            .from(mailbox("bridge@mssp.example"))
            .to(mailbox("soc@mssp.example"))
            .subject(format!("{encoding:?}"))
            .singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_PLAIN)
                    .header(encoding)
                    .body(text.clone()),
            )
            .expect("build");
        plain(&server).send(message).await.expect("send");
    }
    let got = server.wait_for(3, WAIT).await;
    for (m, encoding) in got.iter().zip(encodings) {
        let parsed = m.parsed();
        assert_eq!(
            parsed.header("Content-Transfer-Encoding"),
            Some(match encoding {
                Cte::QuotedPrintable => "quoted-printable",
                Cte::Base64 => "base64",
                _ => "8bit",
            })
        );
        // A top-level SinglePart: lettre's CRLF after the body, and the one of CRLF.CRLF;
        // after base64 they are outside the encoded text.
        let want = match encoding {
            Cte::Base64 => text.clone(),
            _ => format!("{text}\n\n"),
        };
        assert_eq!(
            parsed.text,
            Some(want),
            "{encoding:?}: {:?}",
            String::from_utf8_lossy(&m.data)
        );
    }
}

#[test]
fn decoders_follow_the_rfcs() {
    // RFC 2047 §8 examples.
    assert_eq!(decode_header_value("=?ISO-8859-1?Q?a?="), "a");
    assert_eq!(decode_header_value("=?ISO-8859-1?Q?a?= b"), "a b");
    assert_eq!(
        decode_header_value("=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?="),
        "ab"
    );
    assert_eq!(
        decode_header_value("=?ISO-8859-1?Q?a?=  \t =?ISO-8859-1?Q?b?="),
        "ab"
    );
    assert_eq!(decode_header_value("=?ISO-8859-1?Q?a_b?="), "a b");
    assert_eq!(
        decode_header_value("=?UTF-8?B?w5xtbGF1dA==?= x"),
        "Ümlaut x"
    );
    assert_eq!(decode_header_value("=?utf-8?q?=C3=9Cmlaut?="), "Ümlaut");
    assert_eq!(decode_header_value("plain =?bogus"), "plain =?bogus");
    // RFC 2045 §6.7: soft breaks, =XX, trailing white space dropped.
    assert_eq!(
        decode_quoted_printable(b"a=3Db =\r\nc  \r\nd=C3=BC"),
        "a=b c\r\ndü".as_bytes()
    );
    let parsed = parse_message(
        b"Subject: folded\r\n  over =?UTF-8?B?w5w=?=\r\n\tlines\r\nX-Empty:\r\n\r\nbody\r\n",
    );
    assert_eq!(
        parsed.headers,
        [
            ("Subject".to_string(), "folded  over Ü\tlines".to_string()),
            ("X-Empty".to_string(), String::new()),
        ]
    );
    assert_eq!(parsed.text.as_deref(), Some("body\n"));
}

#[tokio::test]
async fn temp_fail_then_accept() {
    let server = SmtpServer::start(SmtpOptions::default());
    let mailer = plain(&server);

    server.set_mode(Mode::TempFail);
    let err = mailer
        .send(simple("during 421"))
        .await
        .expect_err("421 at the greeting");
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.status().map(|c| c.to_string()).as_deref(), Some("421"));

    server.set_mode(Mode::TempFailAtData);
    let err = mailer
        .send(simple("during 451"))
        .await
        .expect_err("451 after the data");
    assert!(err.is_transient(), "{err}");
    assert_eq!(err.status().map(|c| c.to_string()).as_deref(), Some("451"));
    assert!(server.messages().is_empty());
    assert_eq!(server.temp_failures(), 2);

    server.set_mode(Mode::Accept);
    mailer
        .send(simple("after"))
        .await
        .expect("send after recovery");
    let got = server.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].parsed().header("Subject"), Some("after"));
    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn closed_then_accept_on_the_same_port() {
    let pki = Pki::new("smtp-closed");
    let server = SmtpServer::start(SmtpOptions {
        tls: SmtpTls::StartTls(&pki),
        ..SmtpOptions::default()
    });
    let port = server.port();
    let mailer = with_tls(&server, Tls::Required(tls_parameters(&pki))).build();
    mailer.send(simple("before")).await.expect("send before");

    server.set_mode(Mode::Closed);
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    let err = mailer
        .send(simple("while closed"))
        .await
        .expect_err("connection refused");
    assert!(!err.is_response(), "{err}");
    assert!(format!("{err:?}").contains("ConnectionRefused"), "{err:?}");

    // Back, twice in a row, on the same port.
    server.set_mode(Mode::Accept);
    server.set_mode(Mode::Accept);
    assert_eq!(server.port(), port);
    mailer.send(simple("after")).await.expect("send after");
    let got = server.wait_for(2, WAIT).await;
    let subjects: Vec<String> = got
        .iter()
        .map(|m| m.parsed().header("Subject").unwrap_or_default().to_string())
        .collect();
    assert_eq!(subjects, ["before", "after"]);
    assert!(got.iter().all(|m| m.tls));
    assert_eq!(server.connections(), 2);
}

/// wait_for reports what arrived when it gives up.
#[tokio::test]
#[should_panic(expected = "the SMTP server got 1 of 2 messages")]
async fn wait_for_panics_with_what_it_has() {
    let server = SmtpServer::start(SmtpOptions::default());
    plain(&server).send(simple("only one")).await.expect("send");
    server.wait_for(2, Duration::from_millis(300)).await;
}

/// A server in a blocking test: it runs on its own thread.
#[test]
fn works_from_a_blocking_test() {
    let server = SmtpServer::start(SmtpOptions::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let port = server.port();
    // The client runs on another thread; this one blocks in wait_for_blocking.
    let client = std::thread::spawn(move || {
        runtime.block_on(async {
            Transport::builder_dangerous("127.0.0.1")
                .port(port)
                .build()
                .send(simple("blocking"))
                .await
                .expect("send");
        })
    });
    let got = server.wait_for_blocking(1, WAIT);
    client.join().expect("client thread");
    assert_eq!(got[0].parsed().header("Subject"), Some("blocking"));
}
