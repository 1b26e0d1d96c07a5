//! Where a sink sends: `udp://host:514`, `tcp://host:514`, `tls://host:6514`,
//! `relp://host:2514`, `relp+tls://host:2514`, `hec+https://splunk:8088`,
//! `kafka://broker1:9092,broker2:9092/topic` and `kafka+tls://…/topic`.
//!
//! Hosts are IPv4 literals, IPv6 literals in brackets (`tcp://[::1]:514`) or names. Names are
//! kept as written and resolved again on every (re)connect, so a SIEM that moves behind a DNS
//! name is followed without a restart.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use super::Error;

/// The transport named by the URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// RFC 5426: one message per datagram.
    Udp,
    /// RFC 6587: a plain TCP stream.
    Tcp,
    /// RFC 5425: a TLS stream.
    Tls,
    /// RELP, rsyslog's acknowledged protocol (librelp `doc/relp.md`), over TCP.
    Relp,
    /// RELP over TLS (imrelp's `tls="on"`: TLS from the first byte, not `starttls`).
    RelpTls,
    /// Splunk's HTTP Event Collector over HTTPS (`hec+https://splunk:8088`).
    Hec,
    /// HEC over plain HTTP (`hec+http://`): a collector on this machine or a test.
    HecHttp,
    /// Kafka (`kafka://broker:9092,…/topic`), plaintext.
    Kafka,
    /// Kafka over TLS (`kafka+tls://`; Azure Event Hubs: port 9093 with SASL PLAIN).
    KafkaTls,
}

impl Transport {
    /// The scheme as written in a URL.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Relp => "relp",
            Transport::RelpTls => "relp+tls",
            Transport::Hec => "hec+https",
            Transport::HecHttp => "hec+http",
            Transport::Kafka => "kafka",
            Transport::KafkaTls => "kafka+tls",
        }
    }

    /// Whether the connection is TLS.
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            Transport::Tls | Transport::RelpTls | Transport::Hec | Transport::KafkaTls
        )
    }

    /// Whether the destination is a Kafka topic.
    pub fn is_kafka(self) -> bool {
        matches!(self, Transport::Kafka | Transport::KafkaTls)
    }

    /// Whether the destination is a Splunk HTTP Event Collector.
    pub fn is_hec(self) -> bool {
        matches!(self, Transport::Hec | Transport::HecHttp)
    }

    /// Whether the protocol is RELP.
    pub fn is_relp(self) -> bool {
        matches!(self, Transport::Relp | Transport::RelpTls)
    }

    /// Port used when the URL has none: 514 for UDP (RFC 5426 §3.3) and for TCP (the de-facto
    /// port, formats.md §4), 6514 for TLS (RFC 5425 §4.1). RELP has no registered port; 2514 is
    /// the one of rsyslog's imrelp examples.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Udp | Transport::Tcp => 514,
            Transport::Tls => 6514,
            Transport::Relp | Transport::RelpTls => 2514,
            // Splunk's default HEC port (docs.splunk.com "Set up and use HTTP Event Collector").
            Transport::Hec | Transport::HecHttp => 8088,
            // Kafka's default listener port; Event Hubs listens on 9093 (written out).
            Transport::Kafka | Transport::KafkaTls => 9092,
        }
    }
}

/// A host as written in the URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, resolved on every connect.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(name) => f.write_str(name),
        }
    }
}

/// A parsed destination URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub transport: Transport,
    /// The (first) host and its port.
    pub host: Host,
    pub port: u16,
    /// Kafka: every bootstrap broker and the topic.
    pub kafka: Option<KafkaTarget>,
}

/// The brokers and topic of a Kafka URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaTarget {
    /// `host:port` of each bootstrap broker, in the URL's order.
    pub brokers: Vec<String>,
    pub topic: String,
}

impl Destination {
    /// Resolves the host now (names through the system resolver), in the resolver's order.
    pub async fn resolve(&self) -> Result<Vec<SocketAddr>, Error> {
        match &self.host {
            Host::Ip(ip) => Ok(vec![SocketAddr::new(*ip, self.port)]),
            Host::Name(name) => {
                let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), self.port))
                    .await
                    .map_err(|source| Error::Resolve {
                        host: name.clone(),
                        source,
                    })?
                    .collect();
                if addrs.is_empty() {
                    return Err(Error::Resolve {
                        host: name.clone(),
                        source: std::io::Error::other("no addresses"),
                    });
                }
                Ok(addrs)
            }
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(k) = &self.kafka {
            return write!(
                f,
                "{}://{}/{}",
                self.transport.scheme(),
                k.brokers.join(","),
                k.topic
            );
        }
        write!(
            f,
            "{}://{}:{}",
            self.transport.scheme(),
            self.host,
            self.port
        )
    }
}

impl FromStr for Destination {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::Destination {
            url: s.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = s.strip_prefix("kafka://") {
            return parse_kafka(Transport::Kafka, rest).map_err(|r| bad(&r));
        }
        if let Some(rest) = s.strip_prefix("kafka+tls://") {
            return parse_kafka(Transport::KafkaTls, rest).map_err(|r| bad(&r));
        }
        let url = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        let transport = match url.scheme() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "relp" => Transport::Relp,
            "relp+tls" => Transport::RelpTls,
            "hec+https" => Transport::Hec,
            "hec+http" => Transport::HecHttp,
            _ => {
                return Err(bad(
                    "the scheme must be udp, tcp, tls, relp, relp+tls, hec+https, hec+http, kafka or kafka+tls",
                ))
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("a user name or password has no meaning here"));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            return Err(bad(
                "only scheme://host:port is allowed (no path, query or fragment)",
            ));
        }
        // For non-special schemes the url crate keeps IPv4 literals as opaque names; IPv6
        // literals come back parsed.
        let host = match url.host() {
            None => return Err(bad("the host is missing")),
            Some(url::Host::Ipv6(ip)) => Host::Ip(IpAddr::V6(ip)),
            Some(url::Host::Ipv4(ip)) => Host::Ip(IpAddr::V4(ip)),
            Some(url::Host::Domain("")) => return Err(bad("the host is missing")),
            Some(url::Host::Domain(name)) => match name.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) => Host::Name(name.to_owned()),
            },
        };
        let port = url.port().unwrap_or_else(|| transport.default_port());
        if port == 0 {
            return Err(bad("port 0 is not a destination"));
        }
        Ok(Destination {
            transport,
            host,
            port,
            kafka: None,
        })
    }
}

/// `broker1:9092,broker2:9092/topic` (a comma-separated broker list is not a URL host, so
/// this is parsed by hand). Topic names: Kafka's legal characters, at most 249
/// (`org.apache.kafka.common.internals.Topic`).
fn parse_kafka(transport: Transport, rest: &str) -> Result<Destination, String> {
    let (hosts, topic) = rest
        .split_once('/')
        .ok_or("a Kafka URL names its topic: kafka://broker:9092/topic")?;
    if topic.is_empty()
        || topic.len() > 249
        || topic == "."
        || topic == ".."
        || !topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(format!(
            "{topic:?} is not a Kafka topic name (1 to 249 of a-z, A-Z, 0-9, '.', '_', '-')"
        ));
    }
    let mut brokers = Vec::new();
    let mut first = None;
    for h in hosts.split(',') {
        // Each broker as a URL authority, so that names, IPv4 and [IPv6] parse as elsewhere.
        let d: Destination = format!("tcp://{h}").parse().map_err(|e: Error| match e {
            Error::Destination { reason, .. } => format!("broker {h:?}: {reason}"),
            e => e.to_string(),
        })?;
        if h.contains(['/', '?', '#', '@']) || h.is_empty() {
            return Err(format!("broker {h:?} is not host:port"));
        }
        let port = if h.rsplit_once(':').is_some_and(|(_, p)| !p.contains(']')) {
            d.port
        } else {
            transport.default_port()
        };
        brokers.push(format!("{}:{port}", d.host));
        first.get_or_insert((d.host, port));
    }
    let (host, port) = first.ok_or("no broker")?;
    Ok(Destination {
        transport,
        host,
        port,
        kafka: Some(KafkaTarget {
            brokers,
            topic: topic.to_string(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Destination {
        s.parse().unwrap()
    }

    #[test]
    fn parses_all_forms() {
        let d = parse("udp://127.0.0.1:5514");
        assert_eq!(d.transport, Transport::Udp);
        assert_eq!(d.host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(d.port, 5514);

        let d = parse("tcp://[::1]:601");
        assert_eq!(d.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(d.to_string(), "tcp://[::1]:601");

        let d = parse("tls://siem.example.net");
        assert_eq!(d.host, Host::Name("siem.example.net".into()));
        assert_eq!(d.port, 6514);
        assert_eq!(parse("tcp://siem").port, 514);
        assert_eq!(parse("udp://siem/").port, 514);

        let d = parse("relp+tls://[::1]:20514");
        assert_eq!(d.transport, Transport::RelpTls);
        assert_eq!(d.to_string(), "relp+tls://[::1]:20514");
        assert_eq!(parse("relp://siem").to_string(), "relp://siem:2514");
    }

    #[test]
    fn rejects_what_is_not_a_destination() {
        for bad in [
            "http://host:514",
            "relp+udp://host:514",
            "tcp://",
            "tcp://host:70000",
            "tcp://host:0",
            "tcp://user:pw@host:514",
            "tcp://host:514/path",
            "tcp://host:514?x=1",
            "tcp://[::1:514",
            "host:514",
        ] {
            let err = bad.parse::<Destination>().unwrap_err().to_string();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn parses_kafka_urls() {
        let d = parse("kafka://b1:9092,[::1]:9093,b3/alerts.v1");
        assert_eq!(d.transport, Transport::Kafka);
        let k = d.kafka.as_ref().unwrap();
        assert_eq!(k.brokers, ["b1:9092", "[::1]:9093", "b3:9092"]);
        assert_eq!(k.topic, "alerts.v1");
        assert_eq!((d.host.to_string(), d.port), ("b1".to_string(), 9092));
        assert_eq!(
            d.to_string(),
            "kafka://b1:9092,[::1]:9093,b3:9092/alerts.v1"
        );
        let d = parse("kafka+tls://ns.servicebus.windows.net:9093/defender");
        assert!(d.transport.is_tls() && d.transport.is_kafka());
        assert_eq!(
            d.to_string(),
            "kafka+tls://ns.servicebus.windows.net:9093/defender"
        );
        for (bad, says) in [
            ("kafka://b1:9092", "names its topic"),
            ("kafka://b1:9092/", "not a Kafka topic"),
            ("kafka://b1:9092/a b", "not a Kafka topic"),
            ("kafka://b1:9092,,b2/t", "broker"),
            ("kafka://b1:0/t", "port 0"),
            ("kafka://u:p@b1/t", "broker"),
            ("kafka:///t", "broker"),
        ] {
            let err = bad.parse::<Destination>().unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(bad), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn resolves_names_and_literals() {
        let d = parse("tcp://localhost:514");
        let addrs = d.resolve().await.unwrap();
        assert!(addrs
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 514));
        let d = parse("tcp://[::1]:99");
        assert_eq!(
            d.resolve().await.unwrap(),
            vec!["[::1]:99".parse().unwrap()]
        );
    }
}
