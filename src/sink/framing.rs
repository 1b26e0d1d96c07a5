//! How syslog messages are delimited on a stream (TCP or TLS). UDP needs no framing: a
//! datagram is one message (RFC 5426 §3.1).

use std::fmt::{self, Write as _};
use std::str::FromStr;

use bytes::{BufMut, BytesMut};

use super::Error;

/// Stream framing of syslog messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `MSG-LEN SP SYSLOG-MSG` (RFC 6587 §3.4.1, the only framing of RFC 5425 §4.3). The
    /// message may contain LF. The default for TLS.
    OctetCounting,
    /// `SYSLOG-MSG LF`, RFC 6587 §3.4.2 non-transparent framing: what the classic "network"
    /// TCP ports expect (ArcSight, QRadar, SC4S 514, Sentinel's rsyslog; formats.md §0 rule 12).
    /// A message must not contain LF. The default for TCP.
    Lf,
}

impl Framing {
    /// Checks that `msg` can be framed: octet counting needs at least one octet
    /// (`MSG-LEN = NONZERO-DIGIT *DIGIT`), and LF framing cannot carry an LF inside a message.
    pub fn check(self, msg: &[u8]) -> Result<(), Error> {
        if msg.is_empty() {
            return Err(Error::Empty);
        }
        // memchr's vector search: `<[u8]>::contains` reads a word at a time, and took 2.4 % of
        // `send`'s instructions (callgrind), on the thread that hands the messages over.
        if self == Framing::Lf && memchr::memchr(b'\n', msg).is_some() {
            return Err(Error::ContainsLf);
        }
        Ok(())
    }

    /// Appends the framed message to `dst`. The caller has checked it with [`Framing::check`].
    pub fn encode(self, msg: &[u8], dst: &mut BytesMut) {
        match self {
            Framing::OctetCounting => {
                dst.reserve(self.overhead(msg.len()) + msg.len());
                // Writing into a BytesMut cannot fail.
                let _ = write!(dst, "{} ", msg.len());
                dst.put_slice(msg);
            }
            Framing::Lf => {
                dst.reserve(msg.len() + 1);
                dst.put_slice(msg);
                dst.put_u8(b'\n');
            }
        }
    }

    /// Bytes that framing adds to a message of `len` bytes.
    pub fn overhead(self, len: usize) -> usize {
        match self {
            Framing::OctetCounting => len.checked_ilog10().map_or(1, |d| d as usize + 1) + 1,
            Framing::Lf => 1,
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Framing::OctetCounting => "octet-counting",
            Framing::Lf => "lf",
        })
    }
}

impl FromStr for Framing {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "octet-counting" => Ok(Framing::OctetCounting),
            "lf" => Ok(Framing::Lf),
            _ => Err(Error::Config(format!(
                "unknown framing {s:?}: expected \"octet-counting\" or \"lf\""
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(f: Framing, msgs: &[&[u8]]) -> Vec<u8> {
        let mut dst = BytesMut::new();
        for m in msgs {
            f.check(m).unwrap();
            f.encode(m, &mut dst);
        }
        dst.to_vec()
    }

    #[test]
    fn octet_counting_prefixes_the_length_in_octets() {
        let msg = "<13>1 - - - - - - é\nx".as_bytes();
        assert_eq!(
            framed(Framing::OctetCounting, &[msg, b"a"]),
            b"22 <13>1 - - - - - - \xc3\xa9\nx1 a".to_vec()
        );
        for len in [1usize, 9, 10, 99, 100, 8192, 65536] {
            assert_eq!(
                Framing::OctetCounting.overhead(len),
                len.to_string().len() + 1
            );
            let msg = vec![b'x'; len];
            let out = framed(Framing::OctetCounting, &[&msg]);
            assert_eq!(out.len(), len + Framing::OctetCounting.overhead(len));
            assert!(out.starts_with(format!("{len} x").as_bytes()));
        }
    }

    #[test]
    fn lf_appends_a_newline_and_refuses_embedded_ones() {
        assert_eq!(framed(Framing::Lf, &[b"a", b"bc"]), b"a\nbc\n".to_vec());
        assert!(matches!(Framing::Lf.check(b"a\nb"), Err(Error::ContainsLf)));
        assert!(Framing::OctetCounting.check(b"a\nb").is_ok());
        assert!(matches!(Framing::Lf.check(b""), Err(Error::Empty)));
        assert!(matches!(
            Framing::OctetCounting.check(b""),
            Err(Error::Empty)
        ));
    }

    #[test]
    fn names_round_trip() {
        for f in [Framing::OctetCounting, Framing::Lf] {
            assert_eq!(f.to_string().parse::<Framing>().unwrap(), f);
        }
        assert!("crlf".parse::<Framing>().is_err());
    }
}
