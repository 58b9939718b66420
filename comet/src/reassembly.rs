//! Turns the bytes a client sends into goim frames, for TCP (a frame stream) and WebSocket
//! (one goim frame per message, possibly fragmented). Only the bytes of an incomplete frame are
//! kept between reads; an idle connection holds no buffer.

use bytes::{Buf, BytesMut};
use imgate_shared::frame::{self, Header, HEADER_LEN};
use imgate_shared::ws::{self, opcode, Role};

/// Something a client sent.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event<'a> {
    /// A complete goim frame.
    Frame(Header, &'a [u8]),
    /// A WebSocket ping with its payload.
    Ping(&'a [u8]),
    /// A WebSocket close with its payload; nothing after it is read.
    Close(&'a [u8]),
    /// A WebSocket frame that completes nothing by itself: a pong, or a fragment of a message
    /// still incomplete. Reported so that every frame a client sends counts against its rate.
    Partial,
}

/// Whether to keep reading frames out of the current bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// Stop here and keep the remaining bytes for the next call.
    Stop,
}

/// The client broke the framing rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub String);

/// Per-connection reassembly state; empty (no heap memory) between frames.
#[derive(Debug)]
pub(crate) struct Reassembly {
    websocket: bool,
    max_body: usize,
    /// Bytes of an incomplete frame (TCP) or WebSocket frame.
    partial: BytesMut,
    /// Payload gathered so far of a fragmented WebSocket message.
    message: BytesMut,
    in_message: bool,
}

impl Reassembly {
    /// State for a new connection of the given transport.
    pub fn new(websocket: bool, max_body: usize) -> Self {
        Reassembly {
            websocket,
            max_body,
            partial: BytesMut::new(),
            message: BytesMut::new(),
            in_message: false,
        }
    }

    /// Bytes held between reads: of an incomplete frame, and of a fragmented WebSocket
    /// message's payload so far (the fuzz harness checks that they stay bounded).
    #[cfg(feature = "fuzzing")]
    pub fn buffered(&self) -> (usize, usize) {
        (self.partial.len(), self.message.len())
    }

    /// Keeps bytes that arrived before framing started (after a WebSocket upgrade head).
    pub fn preload(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
    }

    /// Feeds newly read bytes (possibly none, to process what was kept) and calls `on` for
    /// each complete event until the bytes run out or `on` says stop.
    pub fn feed(
        &mut self,
        data: &mut [u8],
        on: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Flow, Malformed> {
        if self.partial.is_empty() {
            let (used, result) = self.walk(data, on);
            if result.is_ok() && used < data.len() {
                self.partial.extend_from_slice(&data[used..]);
            }
            result
        } else {
            self.partial.extend_from_slice(data);
            let mut buf = std::mem::take(&mut self.partial);
            let (used, result) = self.walk(&mut buf, on);
            buf.advance(used);
            if !buf.is_empty() {
                // Do not keep a large read's capacity around for a small remainder.
                self.partial = if buf.capacity() > 4 * buf.len() + 1024 {
                    BytesMut::from(&buf[..])
                } else {
                    buf
                };
            }
            result
        }
    }

    fn walk(
        &mut self,
        buf: &mut [u8],
        on: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> (usize, Result<Flow, Malformed>) {
        let mut offset = 0;
        while offset < buf.len() {
            let step = if self.websocket {
                self.ws_step(&mut buf[offset..], on)
            } else {
                match frame::decode(&buf[offset..], self.max_body) {
                    Ok(Some((header, body))) => {
                        Ok(Some((header.pack_len, on(Event::Frame(header, body)))))
                    }
                    Ok(None) => Ok(None),
                    Err(e) => Err(Malformed(e.to_string())),
                }
            };
            match step {
                Ok(Some((used, flow))) => {
                    offset += used;
                    if flow == Flow::Stop {
                        return (offset, Ok(Flow::Stop));
                    }
                }
                Ok(None) => break,
                Err(e) => return (offset, Err(e)),
            }
        }
        (offset, Ok(Flow::Continue))
    }

    /// One WebSocket frame: `Ok(None)` if incomplete, else the bytes it used and the flow.
    fn ws_step(
        &mut self,
        buf: &mut [u8],
        on: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Option<(usize, Flow)>, Malformed> {
        // A WebSocket message holds one goim frame: its header plus at most `max_body`.
        let limit = self.max_body.saturating_add(HEADER_LEN);
        let wsf = match ws::parse_frame(buf, limit, Role::Server) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => return Err(Malformed(e.to_string())),
        };
        let payload = wsf.payload(buf);
        let bad = |m: &str| Err(Malformed(m.to_string()));
        let flow = match wsf.opcode {
            opcode::TEXT | opcode::BINARY => {
                if self.in_message {
                    return bad("new data frame inside a fragmented message");
                }
                if wsf.fin {
                    self.deliver(payload, on)?
                } else {
                    self.message.extend_from_slice(payload);
                    self.in_message = true;
                    on(Event::Partial)
                }
            }
            opcode::CONTINUATION => {
                if !self.in_message {
                    return bad("continuation frame without a message");
                }
                if self.message.len() + payload.len() > limit {
                    return bad("fragmented message exceeds the size limit");
                }
                self.message.extend_from_slice(payload);
                if wsf.fin {
                    let message = std::mem::take(&mut self.message);
                    self.in_message = false;
                    self.deliver(&message, on)?
                } else {
                    on(Event::Partial)
                }
            }
            opcode::PING => on(Event::Ping(payload)),
            opcode::PONG => on(Event::Partial),
            opcode::CLOSE => {
                on(Event::Close(payload));
                Flow::Stop
            }
            other => return Err(Malformed(format!("unknown opcode {other:#x}"))),
        };
        Ok(Some((wsf.frame_len, flow)))
    }

    fn deliver(
        &self,
        message: &[u8],
        on: &mut dyn FnMut(Event<'_>) -> Flow,
    ) -> Result<Flow, Malformed> {
        match frame::decode_exact(message, self.max_body) {
            Ok((header, body)) => Ok(on(Event::Frame(header, body))),
            Err(e) => Err(Malformed(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgate_shared::frame::op;

    fn collect(r: &mut Reassembly, data: &[u8]) -> Result<Vec<(i32, Vec<u8>)>, Malformed> {
        let mut out = Vec::new();
        let mut data = data.to_vec();
        r.feed(&mut data, &mut |e| {
            match e {
                Event::Frame(h, b) => out.push((h.op, b.to_vec())),
                Event::Ping(p) => out.push((-1, p.to_vec())),
                Event::Close(p) => out.push((-2, p.to_vec())),
                Event::Partial => out.push((-3, Vec::new())),
            }
            Flow::Continue
        })?;
        Ok(out)
    }

    #[test]
    fn tcp_frames_split_anywhere() {
        let mut wire = frame::encode(1, op::AUTH, 1, b"{\"mid\":1}").to_vec();
        wire.extend_from_slice(&frame::encode(1, op::HEARTBEAT, 2, b""));
        for cut in 0..wire.len() {
            let mut r = Reassembly::new(false, 4096);
            let mut got = collect(&mut r, &wire[..cut]).unwrap();
            got.extend(collect(&mut r, &wire[cut..]).unwrap());
            assert_eq!(got.len(), 2, "cut {cut}");
            assert_eq!(got[0], (op::AUTH, b"{\"mid\":1}".to_vec()));
            assert_eq!(got[1].0, op::HEARTBEAT);
            assert!(r.partial.is_empty());
        }
    }

    #[test]
    fn tcp_garbage_and_oversize_are_malformed() {
        let mut r = Reassembly::new(false, 4096);
        assert!(collect(&mut r, &[0xde; 16]).is_err());
        let mut r = Reassembly::new(false, 10);
        assert!(collect(&mut r, &frame::encode(1, 4, 1, &[0; 11])).is_err());
    }

    #[test]
    fn stop_keeps_the_rest() {
        let mut wire = frame::encode(1, op::AUTH, 1, b"a").to_vec();
        wire.extend_from_slice(&frame::encode(1, op::HEARTBEAT, 2, b""));
        let mut r = Reassembly::new(false, 4096);
        let mut seen = 0;
        let flow = r
            .feed(&mut wire, &mut |_| {
                seen += 1;
                Flow::Stop
            })
            .unwrap();
        assert_eq!((flow, seen), (Flow::Stop, 1));
        assert_eq!(collect(&mut r, &[]).unwrap()[0].0, op::HEARTBEAT);
    }

    #[test]
    fn websocket_messages_fragments_and_control() {
        let f = frame::encode(1, op::HEARTBEAT, 7, b"");
        let mut wire = ws::encode_client_frame(opcode::BINARY, &f, [1, 2, 3, 4]);
        // A fragmented text message: first part, a ping in between, then the rest.
        let mut first = ws::encode_client_frame(opcode::TEXT, &f[..5], [9, 9, 9, 9]);
        first[0] &= 0x7f;
        wire.extend_from_slice(&first);
        wire.extend_from_slice(&ws::encode_client_frame(opcode::PING, b"hi", [0; 4]));
        wire.extend_from_slice(&ws::encode_client_frame(
            opcode::CONTINUATION,
            &f[5..],
            [5, 6, 7, 8],
        ));
        wire.extend_from_slice(&ws::encode_client_frame(opcode::CLOSE, b"", [0; 4]));
        let mut r = Reassembly::new(true, 4096);
        let got = collect(&mut r, &wire).unwrap();
        assert_eq!(
            got,
            vec![
                (op::HEARTBEAT, vec![]),
                (-3, vec![]),
                (-1, b"hi".to_vec()),
                (op::HEARTBEAT, vec![]),
                (-2, vec![])
            ]
        );
    }

    /// Every WebSocket frame is reported, so every one counts against the client's rate:
    /// pongs and fragments (empty ones included) complete nothing but are still frames.
    #[test]
    fn pongs_and_fragments_are_reported() {
        let mut wire = ws::encode_client_frame(opcode::PONG, b"", [1, 2, 3, 4]);
        let mut first = ws::encode_client_frame(opcode::BINARY, b"", [1, 2, 3, 4]);
        first[0] &= 0x7f;
        wire.extend_from_slice(&first);
        for _ in 0..3 {
            let mut empty = ws::encode_client_frame(opcode::CONTINUATION, b"", [0; 4]);
            empty[0] &= 0x7f;
            wire.extend_from_slice(&empty);
        }
        let got = collect(&mut Reassembly::new(true, 4096), &wire).unwrap();
        assert_eq!(got, vec![(-3, vec![]); 5]);
    }

    /// Found by the `reassembly` fuzz target: the WebSocket message limit was computed as
    /// `max_body + 16`, which overflowed for the largest body limit.
    #[test]
    fn websocket_with_the_largest_body_limit_does_not_overflow() {
        let f = frame::encode(1, op::HEARTBEAT, 7, b"");
        let wire = ws::encode_client_frame(opcode::BINARY, &f, [1, 2, 3, 4]);
        let mut r = Reassembly::new(true, usize::MAX);
        assert_eq!(
            collect(&mut r, &wire).unwrap(),
            vec![(op::HEARTBEAT, vec![])]
        );
    }

    #[test]
    fn websocket_message_must_be_one_exact_frame() {
        let mut f = frame::encode(1, op::HEARTBEAT, 7, b"").to_vec();
        f.push(0);
        let wire = ws::encode_client_frame(opcode::BINARY, &f, [1, 2, 3, 4]);
        assert!(collect(&mut Reassembly::new(true, 4096), &wire).is_err());
        let unmasked = ws::encode_server_frame(opcode::BINARY, &f[..16]);
        assert!(collect(&mut Reassembly::new(true, 4096), &unmasked).is_err());
        let cont = ws::encode_client_frame(opcode::CONTINUATION, &f[..16], [0; 4]);
        assert!(collect(&mut Reassembly::new(true, 4096), &cont).is_err());
    }
}
