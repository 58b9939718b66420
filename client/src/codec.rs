//! What a goim client reads and writes: goim frames on TCP, WebSocket messages each holding one
//! goim frame on WebSocket, and op-9 (`OpRaw`) batches whose inner frames are the messages.
//!
//! [`feed`] takes the bytes of one read. It decodes what is complete straight from the read
//! buffer and keeps only the unfinished tail in the connection's `pending` vector, so an idle
//! connection holds no buffer at all. This is hand-written on purpose: it is the load
//! generator's hot path (100,000+ clients on a few cores), and it allocates nothing per frame;
//! the frame and WebSocket parsing under it is the server's own (`imgate_shared`).

use imgate_shared::frame::{self, op, FrameError};
use imgate_shared::ws::{self, opcode, Role, WsError};
use serde::{Deserialize, Serialize};

/// Largest frame (or WebSocket message) the harness accepts from the server. Server frames
/// have no limit of their own (batches), so this only stops a runaway.
pub const MAX_SERVER_FRAME: usize = 16 << 20;

/// Transport a client speaks: goim's TCP protocol, or WebSocket (`/sub`). Named `tcp` and
/// `ws` where it is written down (JSON, the command line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Transport {
    #[serde(rename = "tcp")]
    Tcp,
    #[serde(rename = "ws")]
    #[cfg_attr(feature = "clap", value(name = "ws"))]
    WebSocket,
}

/// Why a connection's bytes cannot be read any further.
#[derive(Debug, PartialEq, Eq)]
pub enum WireError {
    Frame(FrameError),
    Ws(WsError),
    /// The server sent a WebSocket close.
    Closed,
    /// A WebSocket text or fragmented message: comet never sends one.
    Unexpected(&'static str),
    TooLarge(usize),
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Frame(e) => write!(f, "bad goim frame: {e}"),
            WireError::Ws(e) => write!(f, "bad WebSocket frame: {e}"),
            WireError::Closed => write!(f, "WebSocket close from the server"),
            WireError::Unexpected(what) => write!(f, "unexpected {what}"),
            WireError::TooLarge(n) => write!(f, "{n} bytes pending without a complete frame"),
        }
    }
}

/// Receives what a connection decodes.
pub trait Sink {
    /// One goim frame: a reply, or a message (inner frames of a batch come one by one).
    fn frame(&mut self, ver: i16, op: i32, seq: i32, body: &[u8]);
    /// One unit as the server wrote it: a WebSocket message, or a top-level goim frame on TCP.
    fn outer(&mut self);
    /// A WebSocket ping: the connection must answer with a pong carrying `payload`.
    fn ping(&mut self, payload: &[u8]);
}

/// Decodes the bytes of one read. `pending` holds the unfinished tail of earlier reads and is
/// left holding this read's unfinished tail (and no allocation when there is none).
pub fn feed(
    transport: Transport,
    pending: &mut Vec<u8>,
    data: &mut [u8],
    sink: &mut impl Sink,
) -> Result<(), WireError> {
    if pending.is_empty() {
        let used = decode(transport, data, sink)?;
        if used < data.len() {
            pending.extend_from_slice(&data[used..]);
        }
    } else {
        pending.extend_from_slice(data);
        let used = decode(transport, pending, sink)?;
        pending.drain(..used);
        if pending.is_empty() {
            *pending = Vec::new();
        }
    }
    if pending.len() > MAX_SERVER_FRAME + 16 {
        return Err(WireError::TooLarge(pending.len()));
    }
    Ok(())
}

/// Decodes every complete unit at the start of `buf`; returns how many bytes they took.
pub fn decode(
    transport: Transport,
    buf: &mut [u8],
    sink: &mut impl Sink,
) -> Result<usize, WireError> {
    let mut used = 0;
    loop {
        let rest = &mut buf[used..];
        let step = match transport {
            Transport::Tcp => match frame::decode(rest, MAX_SERVER_FRAME) {
                Ok(Some((header, body))) => {
                    goim_frame(header, body, sink)?;
                    sink.outer();
                    header.pack_len
                }
                Ok(None) => return Ok(used),
                Err(e) => return Err(WireError::Frame(e)),
            },
            Transport::WebSocket => match ws::parse_frame(rest, MAX_SERVER_FRAME, Role::Client) {
                Ok(Some(f)) => {
                    if !f.fin {
                        return Err(WireError::Unexpected("fragmented WebSocket message"));
                    }
                    let payload = f.payload(rest);
                    match f.opcode {
                        opcode::BINARY => {
                            let (header, body) = frame::decode_exact(payload, MAX_SERVER_FRAME)
                                .map_err(WireError::Frame)?;
                            goim_frame(header, body, sink)?;
                            sink.outer();
                        }
                        opcode::PING => sink.ping(payload),
                        opcode::PONG => {}
                        opcode::CLOSE => return Err(WireError::Closed),
                        _ => return Err(WireError::Unexpected("WebSocket text message")),
                    }
                    f.frame_len
                }
                Ok(None) => return Ok(used),
                Err(e) => return Err(WireError::Ws(e)),
            },
        };
        used += step;
    }
}

/// One goim frame: an op-9 batch is unpacked into its inner frames.
fn goim_frame(header: frame::Header, body: &[u8], sink: &mut impl Sink) -> Result<(), WireError> {
    if header.op != op::RAW {
        sink.frame(header.ver, header.op, header.seq, body);
        return Ok(());
    }
    for inner in frame::split_frames(body) {
        let (header, body) = inner.map_err(WireError::Frame)?;
        sink.frame(header.ver, header.op, header.seq, body);
    }
    Ok(())
}

/// The frame a client sends, wrapped for its transport (WebSocket: one masked binary message).
pub fn client_frame(transport: Transport, op: i32, seq: i32, body: &[u8]) -> Vec<u8> {
    let goim = frame::encode(1, op, seq, body);
    match transport {
        Transport::Tcp => goim.to_vec(),
        Transport::WebSocket => ws_message(&goim),
    }
}

/// `bytes` as one masked binary WebSocket message: how a client sends a goim frame (or, in a
/// test, anything it likes) on WebSocket.
pub fn ws_message(bytes: &[u8]) -> Vec<u8> {
    ws::encode_client_frame(opcode::BINARY, bytes, MASK)
}

/// The pong answering a ping with `payload`.
pub fn pong(payload: &[u8]) -> Vec<u8> {
    ws::encode_client_frame(opcode::PONG, payload, MASK)
}

/// A fixed mask: masking is there for proxies, not secrecy, and a load generator needs no
/// per-message randomness.
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x08];

#[cfg(test)]
mod tests {
    use super::*;
    use bytes_free::*;

    /// Helpers that build server-side bytes without the `bytes` crate.
    mod bytes_free {
        use imgate_shared::frame;
        use imgate_shared::ws::{self, opcode};

        pub fn goim(op: i32, body: &[u8]) -> Vec<u8> {
            frame::encode(1, op, 0, body).to_vec()
        }

        pub fn batch(bodies: &[&[u8]]) -> Vec<u8> {
            let inner: Vec<u8> = bodies.iter().flat_map(|b| goim(1000, b)).collect();
            goim(9, &inner)
        }

        pub fn ws_binary(payload: &[u8]) -> Vec<u8> {
            ws::encode_server_frame(opcode::BINARY, payload)
        }
    }

    #[derive(Default)]
    struct Recorder {
        frames: Vec<(i32, Vec<u8>)>,
        outer: usize,
        pings: Vec<Vec<u8>>,
    }

    impl Sink for Recorder {
        fn frame(&mut self, _ver: i16, op: i32, _seq: i32, body: &[u8]) {
            self.frames.push((op, body.to_vec()));
        }
        fn outer(&mut self) {
            self.outer += 1;
        }
        fn ping(&mut self, payload: &[u8]) {
            self.pings.push(payload.to_vec());
        }
    }

    /// Feeds `stream` in pieces of `chunk` bytes.
    fn feed_in_chunks(transport: Transport, stream: &[u8], chunk: usize) -> (Recorder, Vec<u8>) {
        let mut rec = Recorder::default();
        let mut pending = Vec::new();
        for piece in stream.chunks(chunk) {
            let mut copy = piece.to_vec();
            feed(transport, &mut pending, &mut copy, &mut rec).unwrap();
        }
        (rec, pending)
    }

    #[test]
    fn tcp_frames_split_anywhere_are_counted_once_each() {
        let mut stream = goim(8, b"");
        stream.extend(goim(1000, b"a"));
        stream.extend(batch(&[b"b", b"cc", b"ddd"]));
        stream.extend(goim(3, &7i32.to_be_bytes()));
        for chunk in 1..=stream.len() {
            let (rec, pending) = feed_in_chunks(Transport::Tcp, &stream, chunk);
            let ops: Vec<i32> = rec.frames.iter().map(|f| f.0).collect();
            assert_eq!(ops, [8, 1000, 1000, 1000, 1000, 3], "chunk {chunk}");
            assert_eq!(rec.frames[3].1, b"cc");
            assert_eq!(rec.outer, 4, "chunk {chunk}");
            assert!(pending.is_empty() && pending.capacity() == 0);
        }
    }

    #[test]
    fn websocket_batches_are_unpacked_and_pings_reported() {
        let mut stream = ws_binary(&goim(8, b""));
        stream.extend(ws::encode_server_frame(opcode::PING, b"hi"));
        stream.extend(ws_binary(&batch(&[b"x", b"y"])));
        for chunk in 1..=stream.len() {
            let (rec, pending) = feed_in_chunks(Transport::WebSocket, &stream, chunk);
            let ops: Vec<i32> = rec.frames.iter().map(|f| f.0).collect();
            assert_eq!(ops, [8, 1000, 1000], "chunk {chunk}");
            assert_eq!(rec.outer, 2);
            assert_eq!(rec.pings, [b"hi".to_vec()]);
            assert!(pending.is_empty());
        }
    }

    #[test]
    fn an_unfinished_frame_stays_pending() {
        let stream = goim(1000, b"hello");
        let (rec, pending) = feed_in_chunks(Transport::Tcp, &stream[..10], 3);
        assert!(rec.frames.is_empty());
        assert_eq!(pending, &stream[..10]);
    }

    #[test]
    fn broken_bytes_are_errors() {
        let mut rec = Recorder::default();
        let mut bad = goim(1000, b"x");
        bad[5] = 20; // headerLen 20
        assert!(matches!(
            feed(Transport::Tcp, &mut Vec::new(), &mut bad, &mut rec),
            Err(WireError::Frame(_))
        ));
        let mut close = ws::encode_server_frame(opcode::CLOSE, b"");
        assert_eq!(
            feed(Transport::WebSocket, &mut Vec::new(), &mut close, &mut rec),
            Err(WireError::Closed)
        );
        // A batch whose inner frame is cut short.
        let mut cut = goim(9, &goim(1000, b"abc")[..18]);
        assert!(feed(Transport::Tcp, &mut Vec::new(), &mut cut, &mut rec).is_err());
    }

    #[test]
    fn client_frames_are_what_the_server_parses() {
        let tcp = client_frame(Transport::Tcp, 2, 5, b"");
        assert_eq!(tcp.len(), 16);
        let mut ws_msg = client_frame(Transport::WebSocket, 7, 1, b"{}");
        let f = ws::parse_frame(&mut ws_msg, 1 << 20, Role::Server)
            .unwrap()
            .unwrap();
        let (h, body) = frame::decode_exact(f.payload(&ws_msg), 4096).unwrap();
        assert_eq!((h.op, h.seq, body), (7, 1, &b"{}"[..]));
    }
}
