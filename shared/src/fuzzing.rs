//! Fuzz harness bodies for the parsers in this crate that read bytes from the network.
//!
//! Each function takes arbitrary bytes, runs every entry point on them and panics if one
//! panics or breaks a promise its documentation makes. The cargo-fuzz targets in `fuzz/` call
//! them, and `tests/fuzz_corpus.rs` replays the committed corpus through them on stable, so the
//! two always run the same checks. Not part of the API.

use crate::frame::{self, FrameError, Header, HEADER_LEN};
use crate::ws::{self, Role, WsError};

/// Body limits the frame decoder is run with: none, goim's, comet's upper bound, and the
/// extremes that must not overflow.
const MAX_BODIES: [usize; 6] = [
    0,
    1,
    frame::DEFAULT_MAX_BODY,
    1 << 24,
    usize::MAX - HEADER_LEN,
    usize::MAX,
];

/// `frame_decode`: `decode_header`, `decode`, `decode_exact` and `split_frames` on `data`.
pub fn fuzz_frame_decode(data: &[u8]) {
    for max_body in MAX_BODIES {
        check_decode(data, max_body);
    }
    check_split(data);
    check_encode_round_trip(data);
}

fn check_decode(data: &[u8], max_body: usize) {
    let header = frame::decode_header(data, max_body);
    match &header {
        Ok(None) => assert!(data.len() < HEADER_LEN, "a full header was not decoded"),
        Ok(Some(h)) => {
            assert!(data.len() >= HEADER_LEN);
            assert!(h.pack_len >= HEADER_LEN && h.pack_len <= i32::MAX as usize);
            assert!(h.body_len() <= max_body, "body above max_body accepted");
            let mut again = Vec::with_capacity(HEADER_LEN);
            frame::put_header(&mut again, h.pack_len, h.ver, h.op, h.seq);
            assert_eq!(
                again,
                data[..HEADER_LEN],
                "header does not re-encode to its bytes"
            );
        }
        Err(FrameError::BodyTooLarge { body_len, .. }) => assert!(*body_len > max_body),
        Err(_) => assert!(data.len() >= HEADER_LEN),
    }

    match frame::decode(data, max_body) {
        Ok(Some((h, body))) => {
            assert_eq!(header, Ok(Some(h)));
            assert!(h.pack_len <= data.len());
            assert_eq!(body.len(), h.body_len());
            assert!(body.len() <= max_body);
            assert_eq!(body, &data[HEADER_LEN..h.pack_len]);
        }
        Ok(None) => match header {
            Ok(None) => {}
            Ok(Some(h)) => assert!(h.pack_len > data.len(), "complete frame not decoded"),
            Err(e) => panic!("decode waits where decode_header refused: {e}"),
        },
        Err(e) => assert_eq!(header, Err(e)),
    }

    match frame::decode_exact(data, max_body) {
        Ok((h, body)) => {
            assert_eq!(header, Ok(Some(h)));
            assert_eq!(h.pack_len, data.len());
            assert_eq!(body, &data[HEADER_LEN..]);
            assert!(body.len() <= max_body);
        }
        Err(_) => {
            if let Ok(Some(h)) = header {
                assert_ne!(h.pack_len, data.len(), "exact frame refused");
            }
        }
    }
}

fn check_split(data: &[u8]) {
    let mut rebuilt = Vec::with_capacity(data.len());
    let mut failed = false;
    for item in frame::split_frames(data) {
        assert!(!failed, "split_frames went on after an error");
        match item {
            Ok((h, body)) => {
                assert_eq!(body.len(), h.body_len());
                frame::put_header(&mut rebuilt, h.pack_len, h.ver, h.op, h.seq);
                rebuilt.extend_from_slice(body);
                assert!(rebuilt.len() <= data.len());
            }
            Err(_) => failed = true,
        }
    }
    assert_eq!(
        rebuilt,
        data[..rebuilt.len()],
        "frames are not the input's bytes"
    );
    assert_eq!(
        failed,
        rebuilt.len() < data.len(),
        "split_frames stopped early without an error, or failed on whole frames"
    );
}

/// Reads a header's fields from the start of `data` (zero-padded), encodes a frame with them
/// around the rest, and decodes it back.
fn check_encode_round_trip(data: &[u8]) {
    let mut fields = [0u8; 10];
    let n = data.len().min(fields.len());
    fields[..n].copy_from_slice(&data[..n]);
    let body = &data[n..];
    let ver = i16::from_be_bytes([fields[0], fields[1]]);
    let op = i32::from_be_bytes([fields[2], fields[3], fields[4], fields[5]]);
    let seq = i32::from_be_bytes([fields[6], fields[7], fields[8], fields[9]]);
    let encoded = frame::encode(ver, op, seq, body);
    let expected = Header {
        pack_len: HEADER_LEN + body.len(),
        ver,
        op,
        seq,
    };
    assert_eq!(
        frame::decode_exact(&encoded, body.len()),
        Ok((expected, body))
    );
    if !body.is_empty() {
        assert!(matches!(
            frame::decode(&encoded, body.len() - 1),
            Err(FrameError::BodyTooLarge { .. })
        ));
    }
}

/// Header limits the upgrade parser is run with.
const MAX_HEADERS: [usize; 6] = [0, 16, 64, 512, 8192, usize::MAX];

/// `ws_handshake`: `parse_upgrade` on `data` and on prefixes of it, as a socket would deliver
/// it, with several header limits.
pub fn fuzz_ws_handshake(data: &[u8]) {
    for max_header in MAX_HEADERS {
        let full = ws::parse_upgrade(data, max_header);
        if let Ok(Some(up)) = &full {
            assert!(up.consumed <= data.len());
            assert!(up.consumed <= max_header.saturating_add(4));
            assert_eq!(&data[up.consumed - 4..up.consumed], b"\r\n\r\n");
            assert!(up.target == "/sub" || up.target.starts_with("/sub?"));
            assert!(!up.key.is_empty());
            let response = ws::upgrade_response(&up.key);
            assert!(response.ends_with("\r\n\r\n"));
        }
        if let Err(e) = &full {
            let _ = ws::error_response("400 Bad Request", &e.to_string());
        }
        // A reader calls the parser each time more bytes arrive: an answer given on a prefix
        // must be the answer for the whole.
        for cut in prefix_cuts(data.len()) {
            match ws::parse_upgrade(&data[..cut], max_header) {
                Ok(None) => {}
                Ok(Some(up)) => assert_eq!(full, Ok(Some(up)), "prefix of {cut} bytes"),
                Err(e) => assert!(
                    full.is_err(),
                    "prefix of {cut} bytes refused ({e}), the whole request is {full:?}"
                ),
            }
        }
    }
}

/// Payload limits the WebSocket frame parser is run with.
const MAX_PAYLOADS: [usize; 7] = [
    0,
    125,
    126,
    frame::DEFAULT_MAX_BODY + HEADER_LEN,
    65536,
    1 << 24,
    usize::MAX,
];

/// `ws_frame`: `parse_frame` in both roles with several limits, on `data` and on prefixes of
/// it; then an encode/parse round trip of the bytes as a payload.
pub fn fuzz_ws_frame(data: &[u8]) {
    for role in [Role::Server, Role::Client] {
        for max_payload in MAX_PAYLOADS {
            check_ws_frame(data, max_payload, role);
        }
    }
    check_ws_round_trip(data);
}

fn check_ws_frame(data: &[u8], max_payload: usize, role: Role) {
    let mut buf = data.to_vec();
    let full = ws::parse_frame(&mut buf, max_payload, role);
    match &full {
        Ok(Some(f)) => {
            assert!(f.payload_start <= f.frame_len && f.frame_len <= data.len());
            assert!([2, 4, 6, 8, 10, 14].contains(&f.payload_start));
            let payload_len = f.frame_len - f.payload_start;
            assert!(
                payload_len <= max_payload,
                "payload above max_payload accepted"
            );
            let masked = data[1] & 0x80 != 0;
            assert!(
                masked || role == Role::Client,
                "unmasked client frame accepted"
            );
            assert_eq!(f.opcode, data[0] & 0x0f);
            if f.opcode >= 0x8 {
                assert!(f.fin && payload_len <= 125, "bad control frame accepted");
            }
            // Only the payload changes, and only by the mask.
            assert_eq!(buf[..f.payload_start], data[..f.payload_start]);
            assert_eq!(buf[f.frame_len..], data[f.frame_len..]);
            let mut payload = f.payload(&buf).to_vec();
            if masked {
                let m = &data[f.payload_start - 4..f.payload_start];
                ws::apply_mask(&mut payload, [m[0], m[1], m[2], m[3]]);
            }
            assert_eq!(payload, data[f.payload_start..f.frame_len]);
        }
        Ok(None) => assert_eq!(buf, data, "bytes changed while waiting for more"),
        Err(WsError::TooLarge { len, max }) => assert!(*len > *max as u64),
        Err(_) => {}
    }
    for cut in prefix_cuts(data.len()) {
        let mut prefix = data[..cut].to_vec();
        match ws::parse_frame(&mut prefix, max_payload, role) {
            Ok(None) => {
                if let Ok(Some(f)) = &full {
                    assert!(
                        cut < f.frame_len,
                        "complete frame of {cut} bytes not parsed"
                    );
                }
            }
            Ok(Some(f)) => assert_eq!(full, Ok(Some(f)), "prefix of {cut} bytes"),
            Err(e) => assert_eq!(full, Err(e), "prefix of {cut} bytes"),
        }
    }
}

/// Encodes `data` (after a 4-byte mask and an opcode byte) as client and server frames and
/// parses them back.
fn check_ws_round_trip(data: &[u8]) {
    let Some((head, payload)) = data.split_first_chunk::<5>() else {
        return;
    };
    let mask = [head[0], head[1], head[2], head[3]];
    let opcode = [
        ws::opcode::TEXT,
        ws::opcode::BINARY,
        ws::opcode::CONTINUATION,
    ][head[4] as usize % 3];
    let mut client = ws::encode_client_frame(opcode, payload, mask);
    assert_eq!(
        client.len(),
        ws::header_len(payload.len(), true) + payload.len()
    );
    let f = ws::parse_frame(&mut client, payload.len(), Role::Server)
        .expect("own client frame refused")
        .expect("own client frame incomplete");
    assert_eq!((f.fin, f.opcode, f.frame_len), (true, opcode, client.len()));
    assert_eq!(f.payload(&client), payload);

    let mut server = ws::encode_server_frame(opcode, payload);
    assert_eq!(
        server.len(),
        ws::header_len(payload.len(), false) + payload.len()
    );
    let f = ws::parse_frame(&mut server, payload.len(), Role::Client)
        .expect("own server frame refused")
        .expect("own server frame incomplete");
    assert_eq!(f.payload(&server), payload);
    if !payload.is_empty() {
        assert!(matches!(
            ws::parse_frame(&mut server, payload.len() - 1, Role::Client),
            Err(WsError::TooLarge { .. })
        ));
    }
}

/// Where to cut an input to try its prefixes: every length for short inputs, a spread of them
/// (always including the shortest ones) for long ones, so one run stays fast.
pub fn prefix_cuts(len: usize) -> impl Iterator<Item = usize> {
    const ALL_BELOW: usize = 64;
    let step = if len <= ALL_BELOW { 1 } else { len / ALL_BELOW };
    (0..len).filter(move |&cut| cut < 20 || cut % step == 0 || cut + 4 >= len)
}

/// Runs `harness` on every file in `dir` (a target's committed seed corpus) and panics naming
/// each file whose run panicked. An absent or empty folder is a failure, so a replay can never
/// pass by having nothing to run. Returns how many inputs were replayed.
pub fn replay_corpus(dir: &std::path::Path, harness: fn(&[u8])) -> usize {
    let entries = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus folder {} cannot be read: {e}", dir.display()));
    let mut files: Vec<_> = entries
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| panic!("corpus folder {} cannot be listed: {e}", dir.display()));
    files.retain(|path| path.is_file());
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus folder {} holds no inputs",
        dir.display()
    );
    let mut failures = Vec::new();
    for path in &files {
        let data = std::fs::read(path)
            .unwrap_or_else(|e| panic!("corpus input {} cannot be read: {e}", path.display()));
        if let Err(panic) = std::panic::catch_unwind(|| harness(&data)) {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            failures.push(format!("{}: {message}", path.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus inputs panicked:\n{}",
        failures.len(),
        files.len(),
        failures.join("\n")
    );
    files.len()
}
