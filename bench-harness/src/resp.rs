//! Redis pub/sub in RESP2, as much as the benchmark needs: a subscriber's `SUBSCRIBE` and
//! `PING`, the replies it reads ([`decode`]: `subscribe`, `message`, `pong`, errors), and a
//! blocking [`Publisher`] whose `PUBLISH` answers how many subscribers Redis handed the
//! message to.
//!
//! ```text
//! > *2\r\n$9\r\nSUBSCRIBE\r\n$9\r\nlive.1000\r\n
//! < *3\r\n$9\r\nsubscribe\r\n$9\r\nlive.1000\r\n:1\r\n
//! < *3\r\n$7\r\nmessage\r\n$9\r\nlive.1000\r\n$60\r\n{"test":1,...}\r\n
//! ```

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::peer::{self, Event, PeerError, MAX_PEER_REPLY};

/// Longest header or status line accepted.
const MAX_LINE: usize = 64 * 1024;
/// Most elements of an array reply read (`message` has 3, `pmessage` 4).
const MAX_ITEMS: usize = 4;

/// A command as a RESP array of bulk strings.
pub fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// What a subscriber sends first.
pub fn subscribe(channel: &str) -> Vec<u8> {
    command(&[b"SUBSCRIBE", channel.as_bytes()])
}

/// A subscriber's heartbeat (answered `pong` in subscribed mode).
pub fn ping() -> Vec<u8> {
    command(&[b"PING"])
}

/// An element of an array reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Item<'a> {
    Bulk(&'a [u8]),
    Int(i64),
    Nil,
}

/// One top-level reply.
#[derive(Debug, PartialEq, Eq)]
enum Reply<'a> {
    Array {
        items: [Item<'a>; MAX_ITEMS],
        len: usize,
    },
    Int(i64),
    Simple(&'a [u8]),
    Error(&'a [u8]),
}

fn invalid(expected: &str, got: &[u8]) -> PeerError {
    PeerError::Invalid(format!("expected {expected}, got {}", peer::excerpt(got)))
}

/// The reply at the start of `buf` and the bytes it took; `None` while incomplete.
fn reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, PeerError> {
    let Some((head, mut used)) = peer::line(buf, MAX_LINE)? else {
        return Ok(None);
    };
    let Some((&kind, rest)) = head.split_first() else {
        return Err(invalid("a reply", head));
    };
    let reply = match kind {
        b'+' => Reply::Simple(rest),
        b'-' => Reply::Error(rest),
        b':' => Reply::Int(peer::number(rest).ok_or_else(|| invalid("an integer", head))?),
        b'*' => {
            let len = peer::number(rest)
                .filter(|n| (0..=MAX_ITEMS as i64).contains(n))
                .ok_or_else(|| invalid("an array of at most 4 elements", head))?
                as usize;
            let mut items = [Item::Nil; MAX_ITEMS];
            for slot in items.iter_mut().take(len) {
                let Some((item, took)) = item(&buf[used..])? else {
                    return Ok(None);
                };
                *slot = item;
                used += took;
            }
            Reply::Array { items, len }
        }
        _ => return Err(invalid("+, -, : or *", head)),
    };
    Ok(Some((reply, used)))
}

/// One array element at the start of `buf`: a bulk string, an integer or nil.
fn item(buf: &[u8]) -> Result<Option<(Item<'_>, usize)>, PeerError> {
    let Some((head, used)) = peer::line(buf, MAX_LINE)? else {
        return Ok(None);
    };
    match head.split_first() {
        Some((b':', rest)) => {
            let n = peer::number(rest).ok_or_else(|| invalid("an integer", head))?;
            Ok(Some((Item::Int(n), used)))
        }
        Some((b'$', rest)) => {
            let n = peer::number(rest).ok_or_else(|| invalid("a bulk length", head))?;
            if n == -1 {
                return Ok(Some((Item::Nil, used)));
            }
            if !(0..=MAX_PEER_REPLY as i64).contains(&n) {
                return Err(invalid("a bulk length up to 16 MiB", head));
            }
            let end = used + n as usize;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(invalid("CRLF after a bulk string", &buf[end..end + 2]));
            }
            Ok(Some((Item::Bulk(&buf[used..end]), end + 2)))
        }
        _ => Err(invalid("a bulk string or an integer", head)),
    }
}

/// Decodes every complete reply a subscriber reads at the start of `buf`, hands each to
/// `on_event`, and returns the bytes they took.
pub fn decode(buf: &[u8], mut on_event: impl FnMut(Event<'_>)) -> Result<usize, PeerError> {
    let mut used = 0;
    while let Some((reply, took)) = reply(&buf[used..])? {
        let event = match reply {
            Reply::Array { items, len: 3 } => match (items[0], items[2]) {
                (Item::Bulk(b"message"), Item::Bulk(payload)) => Event::Message(payload),
                (Item::Bulk(b"subscribe"), _) => Event::Subscribed,
                _ => {
                    return Err(invalid(
                        "a message or subscribe reply",
                        &buf[used..used + took],
                    ))
                }
            },
            Reply::Array {
                items: [Item::Bulk(b"pong"), ..],
                len: 2,
            } => Event::Pong,
            Reply::Error(text) => {
                return Err(peer::server_error(text));
            }
            _ => {
                return Err(invalid(
                    "a message, subscribe or pong reply",
                    &buf[used..used + took],
                ))
            }
        };
        used += took;
        on_event(event);
    }
    Ok(used)
}

/// A publisher on one connection: `PUBLISH`, then its integer reply. Connects on first use
/// and again after an error.
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

    /// Connects now and checks Redis took the connection (`PING`, `+PONG`): a server at
    /// `maxclients` accepts and then refuses with an error.
    pub fn connect(&mut self) -> io::Result<()> {
        let result = self.call(&ping(), |answer| match answer {
            Reply::Simple(b"PONG") => Ok(()),
            Reply::Error(text) => Err(io::Error::other(format!(
                "PING: {}",
                String::from_utf8_lossy(text)
            ))),
            other => Err(io::Error::other(format!(
                "PING: expected +PONG, got {other:?}"
            ))),
        });
        if result.is_err() {
            self.stream = None;
            self.buf.clear();
        }
        result
    }

    /// Publishes `body` on `channel`; returns the subscribers Redis gave it to.
    pub fn publish(&mut self, channel: &str, body: &[u8]) -> io::Result<u64> {
        let command = command(&[b"PUBLISH", channel.as_bytes(), body]);
        let result = self.call(&command, |answer| match answer {
            Reply::Int(n) if n >= 0 => Ok(n as u64),
            Reply::Error(text) => Err(io::Error::other(format!(
                "PUBLISH: {}",
                String::from_utf8_lossy(text)
            ))),
            other => Err(io::Error::other(format!(
                "PUBLISH: expected an integer reply, got {other:?}"
            ))),
        });
        if result.is_err() {
            self.stream = None;
            self.buf.clear();
        }
        result
    }

    /// Sends `command` (connecting first if need be) and hands its reply to `answer`.
    fn call<T>(
        &mut self,
        command: &[u8],
        answer: impl FnOnce(Reply<'_>) -> io::Result<T>,
    ) -> io::Result<T> {
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5))?;
                s.set_nodelay(true)?;
                // A PUBLISH to 50,000 subscribers is written to each before Redis answers.
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                self.stream.insert(s)
            }
        };
        stream.write_all(command)?;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some((got, took)) = reply(&self.buf).map_err(io::Error::other)? {
                let result = answer(got);
                self.buf.drain(..took);
                return result;
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
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            subscribe("live.1000"),
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$9\r\nlive.1000\r\n"
        );
        assert_eq!(ping(), b"*1\r\n$4\r\nPING\r\n");
    }

    #[test]
    fn a_subscriber_reads_its_confirmation_messages_and_pongs() {
        let wire = b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n\
            *3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nhe\r\no\r\n\
            *2\r\n$4\r\npong\r\n$0\r\n\r\n";
        let (seen, used) = events(wire).unwrap();
        assert_eq!(seen, ["Subscribed", "message he\r\no", "Pong"]);
        assert_eq!(used, wire.len());
    }

    #[test]
    fn a_reply_split_anywhere_waits_for_the_rest() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nhello\r\n";
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
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn errors_and_garbage_are_told_apart_from_waiting() {
        assert_eq!(
            events(b"-ERR max number of clients reached\r\n").unwrap_err(),
            PeerError::Server("ERR max number of clients reached".into())
        );
        let e = events(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhello\r\n").unwrap_err();
        assert!(e.to_string().contains("CRLF after a bulk string"), "{e}");
        assert!(events(b"hello\r\n").is_err());
        assert!(events(b"*9\r\n").is_err());
        assert!(events(b"*2\r\n$7\r\nmessage\r\n$1\r\nc\r\n").is_err());
        assert!(events(b"*1\r\n$99999999999\r\n").is_err());
        assert!(events(&[b'x'; MAX_LINE + 1]).is_err());
    }
}
