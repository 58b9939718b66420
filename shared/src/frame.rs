//! The goim v2 frame: a 16-byte big-endian header followed by an opaque body.
//!
//! ```text
//! offset 0  packLen   i32  header + body length
//! offset 4  headerLen i16  always 16
//! offset 6  ver       i16
//! offset 8  op        i32
//! offset 12 seq       i32
//! offset 16 body      packLen - 16 bytes
//! ```
//!
//! The decoder separates "not enough bytes yet" (`Ok(None)`) from "these bytes are wrong"
//! (`Err`), checks the header before it looks at the body, and never panics on input.

use bytes::{BufMut, Bytes, BytesMut};

/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 16;
/// The largest body goim accepts from a client (4096 bytes); imgate's default limit.
pub const DEFAULT_MAX_BODY: usize = 4096;
/// `ver` used on server-originated frames.
pub const PUSH_VER: i16 = 1;

/// goim's operation codes (docs/goim-compatibility.md, "Frames and ops"), and imgate's
/// additions. Business ops are any other value.
pub mod op {
    pub const HANDSHAKE: i32 = 0;
    pub const HANDSHAKE_REPLY: i32 = 1;
    pub const HEARTBEAT: i32 = 2;
    pub const HEARTBEAT_REPLY: i32 = 3;
    pub const SEND_MSG: i32 = 4;
    pub const SEND_MSG_REPLY: i32 = 5;
    pub const DISCONNECT_REPLY: i32 = 6;
    pub const AUTH: i32 = 7;
    pub const AUTH_REPLY: i32 = 8;
    pub const RAW: i32 = 9;
    pub const CHANGE_ROOM: i32 = 12;
    pub const CHANGE_ROOM_REPLY: i32 = 13;
    pub const SUB: i32 = 14;
    pub const SUB_REPLY: i32 = 15;
    pub const UNSUB: i32 = 16;
    pub const UNSUB_REPLY: i32 = 17;
    /// imgate: the client has processed every stored message up to the decimal seq in the body.
    pub const ACK: i32 = 20;
    pub const ACK_REPLY: i32 = 21;
    /// imgate: resend stored messages after a seq: body `<after>` (the user's inbox) or
    /// `<room> <after>` (a room's recent history). The messages come first, then the reply.
    pub const SYNC: i32 = 22;
    pub const SYNC_REPLY: i32 = 23;
    /// imgate: join a room besides the main one (body `type://id`); the reply echoes the body,
    /// empty when refused.
    pub const JOIN: i32 = 24;
    pub const JOIN_REPLY: i32 = 25;
    /// imgate: leave a room (body `type://id`); the reply echoes the body, empty when the
    /// connection was not in it.
    pub const LEAVE: i32 = 26;
    pub const LEAVE_REPLY: i32 = 27;
    /// imgate, S→C, for clients that asked for `room_tags`: room pushes, tagged with their
    /// room. Body: the room name's length (2 bytes, big-endian), the name, then the pushed
    /// frames (each with its room sequence in `seq` when the room keeps history).
    pub const ROOM: i32 = 28;
    /// imgate, C→S: a fresh token for this connection (body: the token, UTF-8), sent before
    /// the current one expires; S→C op 31 echoes the seq with `{"exp": <unix seconds>}`. A
    /// token refused is op 6 saying why, then the connection closes.
    pub const REFRESH: i32 = 30;
    /// imgate, S→C: a fresh token accepted (body `{"exp": <unix seconds>}`), or not checked
    /// (empty body: logic unavailable, nothing changed).
    pub const REFRESH_REPLY: i32 = 31;
}

/// Why a byte sequence is not a valid goim frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("headerLen must be 16, got {0}")]
    HeaderLen(i16),
    #[error("packLen {pack_len} is smaller than the 16-byte header")]
    PackLenTooSmall { pack_len: i32 },
    #[error("body of {body_len} bytes exceeds the limit of {max_body}")]
    BodyTooLarge { body_len: usize, max_body: usize },
    #[error("packLen {pack_len} does not match the {actual} bytes of the message")]
    LengthMismatch { pack_len: usize, actual: usize },
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Total frame length, header included.
    pub pack_len: usize,
    pub ver: i16,
    pub op: i32,
    pub seq: i32,
}

impl Header {
    /// Length of the body that follows the header.
    pub fn body_len(&self) -> usize {
        self.pack_len - HEADER_LEN
    }
}

/// Parses and validates a header from the start of `buf`.
///
/// Returns `Ok(None)` when fewer than 16 bytes are available. A `packLen` below 16 (goim
/// accepts it: docs/goim-compatibility.md, "Frame validation"), a `headerLen` other than 16 or a body above `max_body`
/// is an error.
pub fn decode_header(buf: &[u8], max_body: usize) -> Result<Option<Header>, FrameError> {
    let Some(raw) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let pack_len = i32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let header_len = i16::from_be_bytes([raw[4], raw[5]]);
    if header_len as usize != HEADER_LEN {
        return Err(FrameError::HeaderLen(header_len));
    }
    if pack_len < HEADER_LEN as i32 {
        return Err(FrameError::PackLenTooSmall { pack_len });
    }
    let pack_len = pack_len as usize;
    let body_len = pack_len - HEADER_LEN;
    if body_len > max_body {
        return Err(FrameError::BodyTooLarge { body_len, max_body });
    }
    Ok(Some(Header {
        pack_len,
        ver: i16::from_be_bytes([raw[6], raw[7]]),
        op: i32::from_be_bytes([raw[8], raw[9], raw[10], raw[11]]),
        seq: i32::from_be_bytes([raw[12], raw[13], raw[14], raw[15]]),
    }))
}

/// Decodes one complete frame from the start of `buf` (a TCP stream buffer).
///
/// Returns the header and the body slice, or `Ok(None)` when the frame is not complete yet.
pub fn decode(buf: &[u8], max_body: usize) -> Result<Option<(Header, &[u8])>, FrameError> {
    let Some(header) = decode_header(buf, max_body)? else {
        return Ok(None);
    };
    match buf.get(HEADER_LEN..header.pack_len) {
        Some(body) => Ok(Some((header, body))),
        None => Ok(None),
    }
}

/// Decodes a frame that must fill `message` exactly (one WebSocket message holds one frame).
///
/// Unlike goim (docs/goim-compatibility.md, "Frame validation") a `packLen` that disagrees with the message length is an
/// error, so a client can never make the server read past what it sent.
pub fn decode_exact(message: &[u8], max_body: usize) -> Result<(Header, &[u8]), FrameError> {
    match decode_header(message, max_body)? {
        Some(header) if header.pack_len == message.len() => Ok((header, &message[HEADER_LEN..])),
        Some(header) => Err(FrameError::LengthMismatch {
            pack_len: header.pack_len,
            actual: message.len(),
        }),
        None => Err(FrameError::LengthMismatch {
            pack_len: HEADER_LEN,
            actual: message.len(),
        }),
    }
}

/// Appends one frame to `out`.
pub fn encode_into(out: &mut BytesMut, ver: i16, op: i32, seq: i32, body: &[u8]) {
    out.reserve(HEADER_LEN + body.len());
    put_header(out, HEADER_LEN + body.len(), ver, op, seq);
    out.put_slice(body);
}

/// Appends only a header announcing a body of `body_len` bytes.
pub fn put_header(out: &mut impl BufMut, pack_len: usize, ver: i16, op: i32, seq: i32) {
    out.put_i32(pack_len as i32);
    out.put_i16(HEADER_LEN as i16);
    out.put_i16(ver);
    out.put_i32(op);
    out.put_i32(seq);
}

/// Encodes one frame into a new buffer.
pub fn encode(ver: i16, op: i32, seq: i32, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    encode_into(&mut out, ver, op, seq, body);
    out.freeze()
}

/// Iterates over the frames concatenated in an `OpRaw` body (or any run of whole frames).
///
/// Stops with an error at the first malformed or truncated frame; sizes are not limited.
pub fn split_frames(mut buf: &[u8]) -> impl Iterator<Item = Result<(Header, &[u8]), FrameError>> {
    std::iter::from_fn(move || {
        if buf.is_empty() {
            return None;
        }
        let item = match decode(buf, usize::MAX - HEADER_LEN) {
            Ok(Some((header, body))) => {
                buf = &buf[header.pack_len..];
                Ok((header, body))
            }
            Ok(None) => Err(FrameError::LengthMismatch {
                pack_len: decode_header(buf, usize::MAX - HEADER_LEN)
                    .ok()
                    .flatten()
                    .map_or(HEADER_LEN, |h| h.pack_len),
                actual: buf.len(),
            }),
            Err(e) => Err(e),
        };
        if item.is_err() {
            buf = &[];
        }
        Some(item)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heartbeat_matches_reference_bytes() {
        let hb = encode(1, op::HEARTBEAT, 1, &[]);
        assert_eq!(
            hb.as_ref(),
            &[0, 0, 0, 0x10, 0, 0x10, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1]
        );
        let reply = encode(1, op::HEARTBEAT_REPLY, 1, &5i32.to_be_bytes());
        assert_eq!(
            reply.as_ref(),
            &[0, 0, 0, 0x14, 0, 0x10, 0, 1, 0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 5]
        );
    }

    #[test]
    fn incomplete_is_not_an_error() {
        let frame = encode(1, 1000, 0, b"{\"test\":1}");
        for cut in 0..frame.len() {
            assert_eq!(
                decode(&frame[..cut], DEFAULT_MAX_BODY),
                Ok(None),
                "cut at {cut}"
            );
        }
        let (h, body) = decode(&frame, DEFAULT_MAX_BODY).unwrap().unwrap();
        assert_eq!(
            (h.op, h.seq, h.ver, body),
            (1000, 0, 1, &b"{\"test\":1}"[..])
        );
    }

    #[test]
    fn bad_headers_are_rejected() {
        let mut f = encode(1, 2, 1, &[]).to_vec();
        f[5] = 20;
        assert_eq!(decode(&f, 4096), Err(FrameError::HeaderLen(20)));
        let small = [0, 0, 0, 3, 0, 16, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1];
        assert_eq!(
            decode(&small, 4096),
            Err(FrameError::PackLenTooSmall { pack_len: 3 })
        );
        let negative = [0xff, 0xff, 0xff, 0xf0, 0, 16, 0, 1, 0, 0, 0, 2, 0, 0, 0, 1];
        assert!(matches!(
            decode(&negative, 4096),
            Err(FrameError::PackLenTooSmall { .. })
        ));
        let big = encode(1, 4, 1, &[0u8; 4097]);
        assert_eq!(
            decode(&big, 4096),
            Err(FrameError::BodyTooLarge {
                body_len: 4097,
                max_body: 4096
            })
        );
    }

    #[test]
    fn websocket_frame_must_fill_the_message() {
        let f = encode(1, 7, 1, b"{}");
        assert!(decode_exact(&f, 4096).is_ok());
        let mut longer = f.to_vec();
        longer.push(0);
        assert!(matches!(
            decode_exact(&longer, 4096),
            Err(FrameError::LengthMismatch { .. })
        ));
        assert!(decode_exact(&f[..17], 4096).is_err());
        assert!(decode_exact(&f[..3], 4096).is_err());
    }

    #[test]
    fn split_walks_a_batch() {
        let mut batch = BytesMut::new();
        encode_into(&mut batch, 1, 1000, 0, b"{\"test\":1}");
        encode_into(&mut batch, 1, 1000, 0, b"{\"test\":2}");
        let frames: Vec<_> = split_frames(&batch).collect::<Result<_, _>>().unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].1, b"{\"test\":2}");
        assert!(split_frames(&batch[..30]).any(|r| r.is_err()));
    }

    proptest! {
        #[test]
        fn round_trip(ver: i16, op: i32, seq: i32, body in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let f = encode(ver, op, seq, &body);
            match decode(&f, DEFAULT_MAX_BODY) {
                Ok(Some((h, b))) => {
                    prop_assert!(body.len() <= DEFAULT_MAX_BODY);
                    prop_assert_eq!((h.ver, h.op, h.seq, h.pack_len), (ver, op, seq, f.len()));
                    prop_assert_eq!(b, &body[..]);
                }
                Err(FrameError::BodyTooLarge { .. }) => prop_assert!(body.len() > DEFAULT_MAX_BODY),
                other => prop_assert!(false, "unexpected {:?}", other),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Some((h, b))) = decode(&bytes, DEFAULT_MAX_BODY) {
                prop_assert_eq!(h.pack_len, HEADER_LEN + b.len());
            }
            let _ = decode_exact(&bytes, DEFAULT_MAX_BODY);
            for item in split_frames(&bytes) { let _ = item; }
        }
    }
}
