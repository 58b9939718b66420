//! Bytes the comet sends to clients: replies to client frames and the two wire variants of a
//! push (reference §1.6), each encoded once and shared by every recipient.

use bytes::{BufMut, Bytes, BytesMut};
use imgate_shared::frame::{self, op, HEADER_LEN, PUSH_VER};
use imgate_shared::ws::{self, opcode};

/// The WebSocket variant of a push: one binary message holding an `OpRaw` frame whose body is
/// the inner frame(s), exactly as goim clients unpack it.
pub(crate) fn ws_variant(inner: &[u8]) -> Bytes {
    let outer = HEADER_LEN + inner.len();
    let mut out = BytesMut::with_capacity(ws::header_len(outer, false) + outer);
    ws::put_header(&mut out, opcode::BINARY, outer, None);
    frame::put_header(&mut out, outer, PUSH_VER, op::RAW, 0);
    out.put_slice(inner);
    out.freeze()
}

/// A reply to a client frame: the plain goim frame on TCP, one binary message holding it on
/// WebSocket.
pub(crate) fn reply(websocket: bool, ver: i16, op: i32, seq: i32, body: &[u8]) -> Bytes {
    let len = HEADER_LEN + body.len();
    let ws_len = if websocket {
        ws::header_len(len, false)
    } else {
        0
    };
    let mut out = BytesMut::with_capacity(ws_len + len);
    if websocket {
        ws::put_header(&mut out, opcode::BINARY, len, None);
    }
    frame::encode_into(&mut out, ver, op, seq, body);
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
    fn ws_variant_matches_reference_batch() {
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
}
