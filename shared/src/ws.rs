//! RFC 6455 WebSocket pieces: the upgrade request, the accept key, and frame headers in both
//! directions (server frames unmasked, client frames masked). The frame parser is hand-written
//! because it runs for every client frame and unmasks in place without copying; the upgrade
//! head, parsed once per connection, goes through httparse.
//!
//! Parsers return `Ok(None)` for "need more bytes" and `Err` for bytes that can never become
//! valid, and never panic on input.

use base64::Engine;
use bytes::BufMut;
use sha1::{Digest, Sha1};

const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// WebSocket opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// Close status codes (RFC 6455 §7.4.1) a server sends of its own.
pub mod close_code {
    /// The peer broke the protocol (here: a close frame no peer may send).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A close reason that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
}

/// Why an upgrade request or a frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    #[error("upgrade request headers exceed {0} bytes")]
    HeadersTooLarge(usize),
    #[error("malformed upgrade request: {0}")]
    BadRequest(&'static str),
    #[error("path {0:?} is not /sub")]
    NotFound(String),
    #[error("reserved bits set in frame header")]
    ReservedBits,
    #[error("unknown opcode {0:#x}")]
    UnknownOpcode(u8),
    #[error("client frames must be masked")]
    Unmasked,
    #[error("control frame is fragmented or longer than 125 bytes")]
    BadControlFrame,
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
}

/// A parsed `GET /sub` upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upgrade {
    /// `Sec-WebSocket-Key`, to be answered with [`accept_key`].
    pub key: String,
    /// The request target, query string included.
    pub target: String,
    /// The `Cookie` header, passed to logic as goim does.
    pub cookie: Option<String>,
    /// Bytes of `buf` the request occupied (the frames start after them).
    pub consumed: usize,
}

/// Most headers an upgrade request may carry.
const MAX_UPGRADE_HEADERS: usize = 64;

/// Parses an HTTP/1.1 upgrade request at the start of `buf` (the head with httparse; the
/// WebSocket rules here).
///
/// The path must be `/sub` (a query string is allowed, unlike goim). `max_header` bounds the
/// request head, so a client cannot make the server buffer without limit. Lines must end with
/// CRLF.
pub fn parse_upgrade(buf: &[u8], max_header: usize) -> Result<Option<Upgrade>, WsError> {
    // The head may be up to `max_header` bytes, then its blank line: only that much is parsed,
    // and a buffer that holds that much without the blank line can never become a request.
    let longest = max_header.saturating_add(4);
    let window = &buf[..buf.len().min(longest)];
    let mut headers = [httparse::EMPTY_HEADER; MAX_UPGRADE_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let consumed = match request.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= longest => {
            return Err(WsError::HeadersTooLarge(max_header))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WsError::BadRequest("more than 64 headers"))
        }
        Err(httparse::Error::Version) => return Err(WsError::BadRequest("not HTTP/1.x")),
        Err(_) => return Err(WsError::BadRequest("malformed request head")),
    };
    if !window[..consumed].ends_with(b"\r\n\r\n") {
        return Err(WsError::BadRequest("lines must end with CRLF"));
    }
    // RFC 6455 §4.1: the opening handshake is an HTTP/1.1 (or later) GET; an HTTP/1.0 client
    // cannot have asked for an upgrade.
    if request.version != Some(1) {
        return Err(WsError::BadRequest("the upgrade must be HTTP/1.1"));
    }
    if request.method != Some("GET") {
        return Err(WsError::BadRequest("method must be GET"));
    }
    let target = request
        .path
        .ok_or(WsError::BadRequest("no request target"))?;
    let path = target.split('?').next().unwrap_or_default();
    if path != "/sub" {
        return Err(WsError::NotFound(path.chars().take(64).collect()));
    }
    let text = |value: &[u8]| {
        std::str::from_utf8(value)
            .map(|v| v.trim().to_string())
            .map_err(|_| WsError::BadRequest("not UTF-8"))
    };
    let (mut key, mut cookie) = (None, None);
    let (mut upgrade, mut connection, mut version13) = (false, false, false);
    for header in request.headers.iter() {
        let value = header.value.trim_ascii();
        match header.name.to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = value.eq_ignore_ascii_case(b"websocket"),
            "connection" => {
                connection = value
                    .split(|b| *b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
            }
            "sec-websocket-version" => version13 = value == b"13",
            "sec-websocket-key" => key = Some(text(value)?),
            "cookie" => cookie = Some(text(value)?),
            _ => {}
        }
    }
    if !upgrade {
        return Err(WsError::BadRequest("missing Upgrade: websocket"));
    }
    if !connection {
        return Err(WsError::BadRequest("missing Connection: upgrade"));
    }
    if !version13 {
        return Err(WsError::BadRequest("Sec-WebSocket-Version must be 13"));
    }
    let key = key
        .filter(|k| !k.is_empty())
        .ok_or(WsError::BadRequest("missing Sec-WebSocket-Key"))?;
    Ok(Some(Upgrade {
        key,
        target: target.to_string(),
        cookie,
        consumed,
    }))
}

/// `Sec-WebSocket-Accept` for a client key.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// The `101 Switching Protocols` answer to an upgrade.
pub fn upgrade_response(key: &str) -> String {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
}

/// A plain HTTP error answer for a refused upgrade (goim just closes the socket).
pub fn error_response(status: &str, reason: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reason}",
        reason.len()
    )
}

/// The payload of the close frame answering a client's close frame whose payload was `payload`
/// (RFC 6455 §5.5.1, §7.4): its status code echoed when it is one a peer may send; nothing when
/// it carried none; [`close_code::PROTOCOL_ERROR`] when it cannot be a close payload (one byte,
/// or a code reserved or out of range); [`close_code::INVALID_PAYLOAD`] when its reason is not
/// UTF-8.
pub fn close_answer(payload: &[u8]) -> Vec<u8> {
    let code = match payload {
        [] => return Vec::new(),
        [_] => close_code::PROTOCOL_ERROR,
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            // 1004-1006 and 1015 are never sent on the wire; 1016-2999 are reserved for the
            // protocol; 3000-4999 belong to libraries and applications. 1012-1014 were
            // registered with IANA after the RFC.
            let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !sendable {
                close_code::PROTOCOL_ERROR
            } else if std::str::from_utf8(reason).is_err() {
                close_code::INVALID_PAYLOAD
            } else {
                code
            }
        }
    };
    code.to_be_bytes().to_vec()
}

/// A WebSocket frame located in a buffer; its payload is already unmasked in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    /// Offset of the payload within the buffer.
    pub payload_start: usize,
    /// Total bytes of the frame (header and payload).
    pub frame_len: usize,
}

impl Frame {
    pub fn payload<'a>(&self, buf: &'a [u8]) -> &'a [u8] {
        &buf[self.payload_start..self.frame_len]
    }
}

/// Longest frame header: 2 bytes, a 64-bit length and a 4-byte mask.
const MAX_FRAME_HEADER: usize = 14;

/// Which side's frames are being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Reading client frames: a mask is required (RFC 6455 §5.1).
    Server,
    /// Reading server frames: no mask expected.
    Client,
}

/// Parses one frame at the start of `buf`, unmasking its payload in place.
///
/// Checks the header (reserved bits, opcode, control-frame rules, `max_payload`) before waiting
/// for the payload, so an oversized frame is refused from its first bytes.
pub fn parse_frame(
    buf: &mut [u8],
    max_payload: usize,
    role: Role,
) -> Result<Option<Frame>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x70 != 0 {
        return Err(WsError::ReservedBits);
    }
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0f;
    match opcode {
        opcode::CONTINUATION | opcode::TEXT | opcode::BINARY => {}
        opcode::CLOSE | opcode::PING | opcode::PONG => {
            if !fin || (b1 & 0x7f) > 125 {
                return Err(WsError::BadControlFrame);
            }
        }
        other => return Err(WsError::UnknownOpcode(other)),
    }
    let masked = b1 & 0x80 != 0;
    if role == Role::Server && !masked {
        return Err(WsError::Unmasked);
    }
    let (len, mut pos) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as u64, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Ok(None),
        },
        n => (n as u64, 2),
    };
    // No frame can outgrow the address space, whatever limit the caller asked for.
    let max_payload = max_payload.min(usize::MAX - MAX_FRAME_HEADER);
    if len > max_payload as u64 {
        return Err(WsError::TooLarge {
            len,
            max: max_payload,
        });
    }
    let mask = if masked {
        let Some(m) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        let m = [m[0], m[1], m[2], m[3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    let frame_len = pos + len as usize;
    if buf.len() < frame_len {
        return Ok(None);
    }
    if let Some(mask) = mask {
        apply_mask(&mut buf[pos..frame_len], mask);
    }
    Ok(Some(Frame {
        fin,
        opcode,
        payload_start: pos,
        frame_len,
    }))
}

/// XORs `data` with the 4-byte mask (masking and unmasking are the same operation).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// Length of the header [`put_header`] writes for a payload of `len` bytes.
pub fn header_len(len: usize, masked: bool) -> usize {
    let base = match len {
        0..=125 => 2,
        126..=65535 => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 }
}

/// Writes a final-fragment frame header. With `mask`, the caller must mask the payload.
pub fn put_header(out: &mut impl BufMut, opcode: u8, len: usize, mask: Option<[u8; 4]>) {
    out.put_u8(0x80 | opcode);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.put_u8(mask_bit | len as u8),
        126..=65535 => {
            out.put_u8(mask_bit | 126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(mask_bit | 127);
            out.put_u64(len as u64);
        }
    }
    if let Some(m) = mask {
        out.put_slice(&m);
    }
}

/// Encodes a complete client (masked) frame.
pub fn encode_client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len(), true) + payload.len());
    put_header(&mut out, opcode, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
    out
}

/// Encodes a complete server (unmasked) frame.
pub fn encode_server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(header_len(payload.len(), false) + payload.len());
    put_header(&mut out, opcode, payload.len(), None);
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const REQUEST: &str = "GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nCookie: a=b\r\n\r\n";

    #[test]
    fn rfc_accept_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn parses_upgrade_and_waits_for_the_rest() {
        let up = parse_upgrade(REQUEST.as_bytes(), 4096).unwrap().unwrap();
        assert_eq!(up.key, "dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(up.cookie.as_deref(), Some("a=b"));
        assert_eq!(up.consumed, REQUEST.len());
        assert_eq!(parse_upgrade(&REQUEST.as_bytes()[..40], 4096), Ok(None));
    }

    #[test]
    fn refuses_bad_upgrades() {
        let wrong_path = REQUEST.replace("/sub", "/other");
        assert!(matches!(
            parse_upgrade(wrong_path.as_bytes(), 4096),
            Err(WsError::NotFound(_))
        ));
        let no_key = REQUEST.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert!(parse_upgrade(no_key.as_bytes(), 4096).is_err());
        let post = REQUEST.replace("GET", "POST");
        assert!(parse_upgrade(post.as_bytes(), 4096).is_err());
        let bare_lf = REQUEST.replace("\r\n", "\n");
        assert!(parse_upgrade(bare_lf.as_bytes(), 4096).is_err());
        let http2 = REQUEST.replace("HTTP/1.1", "HTTP/2.0");
        assert_eq!(
            parse_upgrade(http2.as_bytes(), 4096),
            Err(WsError::BadRequest("not HTTP/1.x"))
        );
        let with_query = REQUEST.replace("/sub", "/sub?room=live://1");
        let up = parse_upgrade(with_query.as_bytes(), 4096).unwrap().unwrap();
        assert_eq!(up.target, "/sub?room=live://1");
        assert_eq!(
            parse_upgrade(&[b'a'; 5000], 4096),
            Err(WsError::HeadersTooLarge(4096))
        );
    }

    /// Found by probing: an HTTP/1.0 request was upgraded (RFC 6455 needs HTTP/1.1).
    #[test]
    fn an_http_1_0_upgrade_is_refused() {
        let old = REQUEST.replace("HTTP/1.1", "HTTP/1.0");
        assert_eq!(
            parse_upgrade(old.as_bytes(), 4096),
            Err(WsError::BadRequest("the upgrade must be HTTP/1.1"))
        );
    }

    /// Found by probing: a close with code 999 or a one-byte payload was echoed back; RFC
    /// 6455 asks for 1002 (and 1007 for a reason that is not UTF-8).
    #[test]
    fn a_close_is_answered_with_its_code_only_when_a_peer_may_send_it() {
        let close = |code: u16, reason: &[u8]| {
            let mut payload = code.to_be_bytes().to_vec();
            payload.extend_from_slice(reason);
            close_answer(&payload)
        };
        assert_eq!(close_answer(b""), b"");
        for valid in [1000, 1001, 1003, 1008, 1011, 1014, 3000, 4999] {
            assert_eq!(close(valid, b"bye"), valid.to_be_bytes(), "{valid}");
        }
        for invalid in [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(close(invalid, b""), 1002u16.to_be_bytes(), "{invalid}");
        }
        assert_eq!(close_answer(&[3]), 1002u16.to_be_bytes());
        assert_eq!(close(1000, &[0xff, 0xfe]), 1007u16.to_be_bytes());
    }

    #[test]
    fn client_frame_round_trip_through_server_parser() {
        for len in [0usize, 5, 125, 126, 300, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut wire = encode_client_frame(opcode::BINARY, &payload, [1, 2, 3, 4]);
            let frame = parse_frame(&mut wire, 1 << 20, Role::Server)
                .unwrap()
                .unwrap();
            assert_eq!(frame.payload(&wire), &payload[..]);
            assert!(frame.fin);
            assert_eq!(frame.frame_len, wire.len());
        }
    }

    #[test]
    fn server_refuses_unmasked_oversized_and_reserved() {
        let mut unmasked = encode_server_frame(opcode::BINARY, b"x");
        assert_eq!(
            parse_frame(&mut unmasked, 100, Role::Server),
            Err(WsError::Unmasked)
        );
        let mut big = encode_client_frame(opcode::BINARY, &[0; 200], [0; 4]);
        assert!(matches!(
            parse_frame(&mut big, 100, Role::Server),
            Err(WsError::TooLarge { .. })
        ));
        // The size check fires on the header alone.
        assert!(matches!(
            parse_frame(&mut big[..4], 100, Role::Server),
            Err(WsError::TooLarge { .. })
        ));
        let mut rsv = encode_client_frame(opcode::BINARY, b"x", [0; 4]);
        rsv[0] |= 0x40;
        assert_eq!(
            parse_frame(&mut rsv, 100, Role::Server),
            Err(WsError::ReservedBits)
        );
    }

    /// Found by the `ws_handshake` fuzz target: a head of exactly `max_header` bytes was
    /// accepted when it arrived at once but refused when a read ended inside its blank line.
    #[test]
    fn head_at_the_limit_is_accepted_however_it_arrives() {
        let max = REQUEST.len() - 4;
        assert!(parse_upgrade(REQUEST.as_bytes(), max).unwrap().is_some());
        for cut in 0..REQUEST.len() {
            assert_eq!(
                parse_upgrade(&REQUEST.as_bytes()[..cut], max),
                Ok(None),
                "cut at {cut}"
            );
        }
        assert_eq!(
            parse_upgrade(REQUEST.as_bytes(), max - 1),
            Err(WsError::HeadersTooLarge(max - 1))
        );
        let mut unfinished = REQUEST.as_bytes()[..REQUEST.len() - 4].to_vec();
        unfinished.extend_from_slice(b"\r\nX-More: 1");
        assert_eq!(
            parse_upgrade(&unfinished, max),
            Err(WsError::HeadersTooLarge(max))
        );
    }

    /// Found by the `ws_frame` fuzz target: a 64-bit length near `u64::MAX` with no
    /// effective limit overflowed the frame length instead of being refused.
    #[test]
    fn huge_length_with_no_limit_is_refused_not_overflowed() {
        let mut frame = vec![0x82, 0xff];
        frame.extend_from_slice(&[0xff; 8]);
        frame.extend_from_slice(&[1, 2, 3, 4]);
        for role in [Role::Server, Role::Client] {
            assert!(matches!(
                parse_frame(&mut frame.clone(), usize::MAX, role),
                Err(WsError::TooLarge { len: u64::MAX, .. })
            ));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_upgrade(&bytes, 128);
            if let Ok(Some(f)) = parse_frame(&mut bytes, 1000, Role::Server) {
                prop_assert!(f.frame_len <= bytes.len());
            }
        }
    }
}
