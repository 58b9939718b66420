//! Bytes the comet sends to clients: replies to client frames and the two wire variants of a
//! push (docs/goim-compatibility.md, "Frames and ops"), each encoded once and shared by every
//! recipient.

use bytes::{BufMut, Bytes, BytesMut};
use imgate_shared::frame::{self, op, HEADER_LEN, PUSH_VER};
use imgate_shared::link::Stored;
use imgate_shared::ws::{self, opcode};

/// Stored messages encoded for one connection: each a goim push frame whose header `seq`
/// carries the message's sequence, packed into batches of about `limit` bytes (a WebSocket
/// batch is one `OpRaw` message, as for pushes; with `tag`, a room's history for a client
/// that asked for room tags, one op-28 frame naming the room). Each batch comes with the
/// first and last seq it holds. Oldest first, as given.
pub(crate) fn stored_batches(
    websocket: bool,
    tag: Option<&str>,
    messages: &[Stored],
    limit: usize,
) -> Vec<(Bytes, u64, u64)> {
    // Each batch comes with the first and last sequence it holds (the messages of one answer
    // are consecutive, oldest first).
    let mut batches = Vec::new();
    let mut inner = BytesMut::new();
    let (mut first, mut last) = (0u64, 0u64);
    for m in messages {
        let len = HEADER_LEN + m.body.len();
        if !inner.is_empty() && inner.len() + len > limit {
            batches.push((finish_batch(websocket, tag, &inner), first, last));
            inner.clear();
        }
        if inner.is_empty() {
            first = m.seq;
        }
        frame::encode_into(&mut inner, PUSH_VER, m.op, m.seq as i32, &m.body);
        last = m.seq;
    }
    if !inner.is_empty() {
        batches.push((finish_batch(websocket, tag, &inner), first, last));
    }
    batches
}

fn finish_batch(websocket: bool, tag: Option<&str>, inner: &[u8]) -> Bytes {
    if let Some(tagged) = tag.and_then(|room| room_tagged(websocket, room, inner)) {
        return tagged;
    }
    if websocket {
        ws_variant(inner)
    } else {
        Bytes::copy_from_slice(inner)
    }
}

/// A buffer sized for one goim frame of `len` bytes, holding the header of the binary
/// WebSocket message around it already when `websocket`.
fn frame_buffer(websocket: bool, len: usize) -> BytesMut {
    if !websocket {
        return BytesMut::with_capacity(len);
    }
    let mut out = BytesMut::with_capacity(ws::header_len(len, false) + len);
    ws::put_header(&mut out, opcode::BINARY, len, None);
    out
}

/// The WebSocket variant of a push: one binary message holding an `OpRaw` frame whose body is
/// the inner frame(s), exactly as goim clients unpack it.
pub(crate) fn ws_variant(inner: &[u8]) -> Bytes {
    let outer = HEADER_LEN + inner.len();
    let mut out = frame_buffer(true, outer);
    frame::put_header(&mut out, outer, PUSH_VER, op::RAW, 0);
    out.put_slice(inner);
    out.freeze()
}

/// Room pushes for a client that asked for room tags: one op-28 frame whose body is the
/// room name (2-byte length, then the name) and the pushed frames; on WebSocket, one binary
/// message holding it. `None` for a name too long to tag (the client gets the plain form).
pub(crate) fn room_tagged(websocket: bool, room: &str, frames: &[u8]) -> Option<Bytes> {
    let name_len = u16::try_from(room.len()).ok()?;
    let len = HEADER_LEN + 2 + room.len() + frames.len();
    let mut out = frame_buffer(websocket, len);
    frame::put_header(&mut out, len, PUSH_VER, op::ROOM, 0);
    out.put_u16(name_len);
    out.put_slice(room.as_bytes());
    out.put_slice(frames);
    Some(out.freeze())
}

/// A reply to a client frame: the plain goim frame on TCP, one binary message holding it on
/// WebSocket.
pub(crate) fn reply(websocket: bool, ver: i16, op: i32, seq: i32, body: &[u8]) -> Bytes {
    let len = HEADER_LEN + body.len();
    let mut out = frame_buffer(websocket, len);
    frame::encode_into(&mut out, ver, op, seq, body);
    out.freeze()
}

/// Longest reason a refusal carries: what fits a WebSocket close frame beside its status code.
const MAX_REASON: usize = 123;

/// WebSocket close status "policy violation" (RFC 6455 §7.4.1).
const WS_POLICY_VIOLATION: u16 = 1008;

/// The answer to a refused auth, sent just before the connection is closed: an op-6 frame
/// (goim's `OpDisconnectReply`, defined by goim but never sent) echoing the auth frame's ver
/// and seq, whose body says why in UTF-8; on WebSocket it is followed by a close frame with
/// status 1008 and the same reason.
pub(crate) fn refusal(websocket: bool, ver: i16, seq: i32, reason: &str) -> Bytes {
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let reason = &reason.as_bytes()[..cut];
    let mut out = BytesMut::from(&reply(websocket, ver, op::DISCONNECT_REPLY, seq, reason)[..]);
    if websocket {
        let mut close = WS_POLICY_VIOLATION.to_be_bytes().to_vec();
        close.extend_from_slice(reason);
        out.extend_from_slice(&ws::encode_server_frame(opcode::CLOSE, &close));
    }
    out.freeze()
}

/// A server WebSocket control frame (pong, close).
pub(crate) fn ws_control(code: u8, payload: &[u8]) -> Bytes {
    Bytes::from(ws::encode_server_frame(code, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgate_shared::ws::Role;

    #[test]
    fn ws_variant_is_one_binary_message_holding_an_op9_batch() {
        let mut inner = BytesMut::new();
        frame::encode_into(&mut inner, 1, 1000, 0, b"{\"test\":1}");
        frame::encode_into(&mut inner, 1, 1000, 0, b"{\"test\":2}");
        let mut msg = ws_variant(&inner).to_vec();
        let wsf = ws::parse_frame(&mut msg, 1 << 20, Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!(wsf.opcode, opcode::BINARY);
        assert!(wsf.fin);
        let payload = wsf.payload(&msg);
        assert_eq!(payload.len(), 68);
        assert_eq!(
            &payload[..16],
            &[0, 0, 0, 0x44, 0, 0x10, 0, 1, 0, 0, 0, 9, 0, 0, 0, 0]
        );
        assert_eq!(&payload[16..], &inner[..]);
    }

    #[test]
    fn stored_messages_carry_their_seq_in_batches() {
        let stored = |seq: u64, body: &'static [u8]| Stored {
            seq,
            op: 1000,
            body: Bytes::from_static(body),
        };
        let messages = vec![stored(3, b"aaaa"), stored(5, b"bb"), stored(9, b"c")];
        assert!(stored_batches(false, None, &[], 100).is_empty());
        let one = stored_batches(false, None, &messages, 1 << 16);
        assert_eq!(one.len(), 1);
        assert_eq!((one[0].1, one[0].2), (3, 9));
        let frames: Vec<_> = frame::split_frames(&one[0].0)
            .map(|f| f.unwrap())
            .map(|(h, b)| (h.op, h.seq, h.ver, b.to_vec()))
            .collect();
        assert_eq!(
            frames,
            vec![
                (1000, 3, 1, b"aaaa".to_vec()),
                (1000, 5, 1, b"bb".to_vec()),
                (1000, 9, 1, b"c".to_vec())
            ]
        );
        // A small limit splits between messages, never inside one.
        let split = stored_batches(false, None, &messages, 20);
        assert_eq!(
            split.iter().map(|b| (b.1, b.2)).collect::<Vec<_>>(),
            vec![(3, 3), (5, 5), (9, 9)]
        );
        assert_eq!(split[0].0, frame::encode(1, 1000, 3, b"aaaa"));
        // WebSocket: one OpRaw message per batch holding the same frames.
        let ws_batches = stored_batches(true, None, &messages, 1 << 16);
        let mut msg = ws_batches[0].0.to_vec();
        let wsf = ws::parse_frame(&mut msg, 1 << 20, Role::Client)
            .unwrap()
            .unwrap();
        let payload = wsf.payload(&msg);
        assert_eq!(&payload[8..12], &op::RAW.to_be_bytes());
        assert_eq!(&payload[16..], &one[0].0[..]);
    }

    #[test]
    fn tagged_room_pushes_carry_the_room_then_the_frames() {
        let mut frames = BytesMut::new();
        frame::encode_into(&mut frames, 1, 1000, 7, b"hi");
        let tcp = room_tagged(false, "live://1", &frames).unwrap();
        let (h, body) = frame::decode_exact(&tcp, 1 << 20).unwrap();
        assert_eq!((h.op, h.seq), (op::ROOM, 0));
        assert_eq!(&body[..2], &8u16.to_be_bytes());
        assert_eq!(&body[2..10], b"live://1");
        assert_eq!(&body[10..], &frames[..]);
        let mut msg = room_tagged(true, "live://1", &frames).unwrap().to_vec();
        let wsf = ws::parse_frame(&mut msg, 1 << 20, Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!(wsf.payload(&msg), &tcp[..]);
        assert!(room_tagged(false, &"r".repeat(70_000), &frames).is_none());
    }

    #[test]
    fn replies_on_both_transports() {
        let tcp = reply(false, 1, op::HEARTBEAT_REPLY, 1, &5i32.to_be_bytes());
        assert_eq!(
            tcp.as_ref(),
            &[0, 0, 0, 0x14, 0, 0x10, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 5]
        );
        let mut wsr = reply(true, 1, op::HEARTBEAT_REPLY, 1, &5i32.to_be_bytes()).to_vec();
        let f = ws::parse_frame(&mut wsr, 100, Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!(f.payload(&wsr), tcp.as_ref());
    }

    #[test]
    fn a_refusal_says_why_and_fits_a_close_frame() {
        let tcp = refusal(false, 1, 7, "key taken");
        assert_eq!(tcp, frame::encode(1, op::DISCONNECT_REPLY, 7, b"key taken"));
        // WebSocket: the same frame in a binary message, then a 1008 close with the reason.
        let long = "é".repeat(100);
        let mut ws_bytes = refusal(true, 1, 7, &long).to_vec();
        let first = ws::parse_frame(&mut ws_bytes, 1 << 20, Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!(first.opcode, opcode::BINARY);
        let mut rest = ws_bytes.split_off(first.frame_len);
        let (h, body) = frame::decode_exact(first.payload(&ws_bytes), 1 << 20).unwrap();
        assert_eq!(h.op, op::DISCONNECT_REPLY);
        let reason = std::str::from_utf8(body).expect("cut at a character boundary");
        assert!(reason.len() <= MAX_REASON && long.starts_with(reason));
        let close = ws::parse_frame(&mut rest, 1 << 20, Role::Client)
            .unwrap()
            .unwrap();
        assert_eq!(close.opcode, opcode::CLOSE);
        let payload = close.payload(&rest);
        assert!(payload.len() <= 125);
        assert_eq!(&payload[..2], &1008u16.to_be_bytes());
        assert_eq!(&payload[2..], reason.as_bytes());
    }
}
