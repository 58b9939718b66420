//! NATS core, as much as the benchmark needs: a subscriber's `CONNECT`, `SUB` and `PING`, what
//! it reads ([`decode`]: `MSG`, `PING`, `PONG`, `INFO`, `+OK`, `-ERR`), and a blocking
//! [`Publisher`] that follows each `PUB` with a `PING` and waits for the `PONG`, so a publish
//! is answered (as an HTTP push or a Redis `PUBLISH` is) once the server has handled it.
//!
//! ```text
//! < INFO {"server_id":...}\r\n
//! > CONNECT {"verbose":false,"pedantic":false}\r\nSUB live.1000 1\r\nPING\r\n
//! < PONG\r\n                                   (the SUB is in place)
//! < MSG live.1000 1 60\r\n{"test":1,...}\r\n
//! ```

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::peer::{self, Event, PeerError, MAX_PEER_REPLY};

/// Longest control line accepted (`INFO` is the long one).
const MAX_LINE: usize = 64 * 1024;

/// `CONNECT` without acknowledgements (`verbose` off: no `+OK` per command).
const CONNECT: &str =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"bench-harness\"}\r\n";

/// What a subscriber sends first: connect, subscribe with sid 1, and a `PING` whose `PONG`
/// says the subscription is in place.
pub fn hello(subject: &str) -> Vec<u8> {
    format!("{CONNECT}SUB {subject} 1\r\nPING\r\n").into_bytes()
}

/// A subscriber's heartbeat.
pub const PING: &[u8] = b"PING\r\n";
/// The answer to the server's `PING`.
pub const PONG: &[u8] = b"PONG\r\n";

fn invalid(expected: &str, got: &[u8]) -> PeerError {
    PeerError::Invalid(format!("expected {expected}, got {}", peer::excerpt(got)))
}

/// Decodes every complete operation at the start of `buf`, hands each to `on_event`, and
/// returns the bytes they took. `PONG` is [`Event::Pong`] whether it confirms the `SUB` or
/// answers a heartbeat: the caller knows which it waits for.
pub fn decode(buf: &[u8], mut on_event: impl FnMut(Event<'_>)) -> Result<usize, PeerError> {
    let mut used = 0;
    while let Some((line, took)) = peer::line(&buf[used..], MAX_LINE)? {
        let (event, took) = if let Some(args) = line.strip_prefix(b"MSG ") {
            // MSG <subject> <sid> [reply-to] <#bytes>
            // Counted without collecting: this is the subscribers' hot path.
            let (mut words, mut last): (usize, &[u8]) = (0, b"");
            for word in args
                .split(|b| *b == b' ' || *b == b'\t')
                .filter(|w| !w.is_empty())
            {
                words += 1;
                last = word;
            }
            let size = match words {
                3 | 4 => peer::number(last)
                    .filter(|n| (0..=MAX_PEER_REPLY as i64).contains(n))
                    .ok_or_else(|| invalid("a payload size up to 16 MiB", line))?
                    as usize,
                _ => return Err(invalid("MSG <subject> <sid> [reply-to] <size>", line)),
            };
            let start = used + took;
            if buf.len() < start + size + 2 {
                break;
            }
            if &buf[start + size..start + size + 2] != b"\r\n" {
                return Err(invalid(
                    "CRLF after a payload",
                    &buf[start + size..start + size + 2],
                ));
            }
            (Event::Message(&buf[start..start + size]), took + size + 2)
        } else if line == b"PING" {
            (Event::Ping, took)
        } else if line == b"PONG" {
            (Event::Pong, took)
        } else if line == b"+OK" || line.starts_with(b"INFO ") {
            (Event::Other, took)
        } else if let Some(text) = line.strip_prefix(b"-ERR") {
            return Err(peer::server_error(text));
        } else {
            return Err(invalid("MSG, PING, PONG, INFO, +OK or -ERR", line));
        };
        used += took;
        on_event(event);
    }
    Ok(used)
}

/// A publisher on one connection: `PUB` then `PING`, answered by `PONG`. Connects on first
/// use and again after an error.
pub struct Publisher {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Publisher {
    pub fn new(addr: SocketAddr) -> Publisher {
        Publisher {
            addr,
            stream: None,
            buf: Vec::new(),
        }
    }

    /// Connects now and waits for the server's `PONG`.
    pub fn connect(&mut self) -> io::Result<()> {
        self.round_trip(PING)
    }

    /// Publishes `body` on `subject` and waits until the server has handled it.
    pub fn publish(&mut self, subject: &str, body: &[u8]) -> io::Result<()> {
        let mut out = format!("PUB {subject} {}\r\n", body.len()).into_bytes();
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\nPING\r\n");
        self.round_trip(&out)
    }

    /// Sends `out`, which ends with a `PING`, and waits for the `PONG`.
    fn round_trip(&mut self, out: &[u8]) -> io::Result<()> {
        let result = self.try_round_trip(out);
        if result.is_err() {
            self.stream = None;
            self.buf.clear();
        }
        result
    }

    fn try_round_trip(&mut self, out: &[u8]) -> io::Result<()> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let mut s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                s.write_all(CONNECT.as_bytes())?;
                self.stream.insert(s)
            }
        };
        stream.write_all(out)?;
        let mut chunk = [0u8; 4096];
        loop {
            let (mut pongs, mut pings) = (0, 0);
            let used = decode(&self.buf, |e| match e {
                Event::Pong => pongs += 1,
                Event::Ping => pings += 1,
                _ => {}
            })
            .map_err(io::Error::other)?;
            self.buf.drain(..used);
            for _ in 0..pings {
                stream.write_all(PONG)?;
            }
            if pongs > 0 {
                return Ok(());
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(buf: &[u8]) -> Result<(Vec<String>, usize), PeerError> {
        let mut seen = Vec::new();
        let used = decode(buf, |e| {
            seen.push(match e {
                Event::Message(p) => format!("message {}", String::from_utf8_lossy(p)),
                other => format!("{other:?}"),
            })
        })?;
        Ok((seen, used))
    }

    #[test]
    fn a_subscriber_says_hello_in_one_write() {
        let hello = String::from_utf8(hello("live.1000")).unwrap();
        assert!(hello.starts_with("CONNECT {\"verbose\":false"), "{hello}");
        assert!(
            hello.ends_with("\r\nSUB live.1000 1\r\nPING\r\n"),
            "{hello}"
        );
    }

    #[test]
    fn a_subscriber_reads_info_messages_pings_and_pongs() {
        let wire = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\nMSG live.1000 1 5\r\nhe\r\no\r\n\
            MSG live.1000 1 _INBOX.r 2\r\nhi\r\nPING\r\n+OK\r\n";
        let (seen, used) = events(wire).unwrap();
        assert_eq!(
            seen,
            [
                "Other",
                "Pong",
                "message he\r\no",
                "message hi",
                "Ping",
                "Other"
            ]
        );
        assert_eq!(used, wire.len());
    }

    #[test]
    fn a_message_split_anywhere_waits_for_the_rest() {
        let wire = b"MSG s 1 5\r\nhello\r\n";
        for cut in 0..wire.len() {
            let (seen, used) = events(&wire[..cut]).unwrap();
            assert!(seen.is_empty() && used == 0, "cut at {cut}");
            let mut pending = Vec::new();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                peer::feed(&mut pending, part, |b| {
                    decode(b, |e| {
                        if let Event::Message(p) = e {
                            got.push(p.to_vec())
                        }
                    })
                })
                .unwrap();
            }
            assert_eq!(got, [b"hello".to_vec()], "cut at {cut}");
        }
    }

    #[test]
    fn errors_and_garbage_are_told_apart_from_waiting() {
        assert_eq!(
            events(b"-ERR 'maximum connections exceeded'\r\n").unwrap_err(),
            PeerError::Server("'maximum connections exceeded'".into())
        );
        assert!(events(b"MSG s 1 2\r\nhello\r\n").is_err());
        assert!(events(b"MSG s\r\n").is_err());
        assert!(events(b"MSG s 1 x\r\n").is_err());
        assert!(events(b"HELLO\r\n").is_err());
        assert!(events(&[b'x'; MAX_LINE + 1]).is_err());
    }
}
