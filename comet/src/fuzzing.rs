//! Fuzz harness body for [`Reassembly`], the code that turns a client's bytes into frames.
//!
//! The cargo-fuzz target `reassembly` in `fuzz/` and `tests/fuzz_corpus.rs` both call
//! [`fuzz_reassembly`], so the fuzzer and the stable test suite run the same checks. Not part
//! of the API.

use crate::reassembly::{Event, Flow, Reassembly};
use imgate_shared::frame::HEADER_LEN;

/// Body limits a connection may be configured with (1 byte to 16 MiB), plus 0 and the
/// extreme that must not overflow.
const MAX_BODIES: [usize; 8] = [0, 1, 16, 100, 4096, 65536, 1 << 24, usize::MAX];

/// Largest WebSocket frame header: 2 bytes, a 64-bit length and a mask.
const WS_MAX_FRAME_HEADER: usize = 14;

/// `reassembly`: feeds a client's bytes to a connection's [`Reassembly`] in pieces.
///
/// `data[0]`: bit 0 WebSocket (else TCP), bits 1-3 the body limit, bits 4-7 which events the
/// handler answers with [`Flow::Stop`] (as the handshake does after the auth frame).
/// `data[1]`: seeds the sizes of the reads; for WebSocket, part of the first read arrives with
/// the upgrade head and is preloaded. `data[2..]`: the bytes the client sent.
///
/// Checks that the events do not depend on how the bytes were split into reads, that no
/// frame exceeds the limit, and that between reads only one incomplete frame is kept.
pub fn fuzz_reassembly(data: &[u8]) {
    let [mode, seed, stream @ ..] = data else {
        return;
    };
    let websocket = mode & 1 == 1;
    let max_body = MAX_BODIES[usize::from(mode >> 1 & 7)];
    let stop_mask = mode >> 4;

    let whole = run(websocket, max_body, stop_mask, &[stream.len()], 0, stream);
    let reads = read_sizes(*seed, stream.len());
    let preload = if websocket {
        usize::from(*seed % 7).min(stream.len())
    } else {
        0
    };
    let split = run(websocket, max_body, stop_mask, &reads, preload, stream);
    assert_eq!(
        whole, split,
        "events depend on how the bytes were split (reads {reads:?}, preload {preload})"
    );
}

/// What a client's bytes amounted to: the events in order and whether they ended malformed.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    events: Vec<Owned>,
    malformed: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Owned {
    Frame(i16, i32, i32, Vec<u8>),
    Ping(Vec<u8>),
    Close(Vec<u8>),
    Partial,
}

fn run(
    websocket: bool,
    max_body: usize,
    stop_mask: u8,
    reads: &[usize],
    preload: usize,
    stream: &[u8],
) -> Outcome {
    let mut rx = Reassembly::new(websocket, max_body);
    let mut events = Vec::new();
    let closed = std::cell::Cell::new(false);
    let mut on = |event: Event<'_>| {
        let owned = match event {
            Event::Frame(header, body) => {
                assert_eq!(header.pack_len, HEADER_LEN + body.len());
                assert!(body.len() <= max_body, "frame body above the limit");
                Owned::Frame(header.ver, header.op, header.seq, body.to_vec())
            }
            Event::Ping(payload) => {
                assert!(websocket && payload.len() <= 125);
                Owned::Ping(payload.to_vec())
            }
            Event::Close(payload) => {
                assert!(websocket && payload.len() <= 125);
                closed.set(true);
                Owned::Close(payload.to_vec())
            }
            Event::Partial => {
                assert!(websocket, "only WebSocket frames can be partial");
                Owned::Partial
            }
        };
        events.push(owned);
        if closed.get() || stop_mask >> (events.len() % 4) & 1 == 1 {
            Flow::Stop
        } else {
            Flow::Continue
        }
    };

    let (head, rest) = stream.split_at(preload);
    rx.preload(head);
    let mut pending = rest;
    let mut read_sizes = reads.iter().copied();
    // The first feed is empty: what came with the upgrade head is processed first.
    let mut next: Vec<u8> = Vec::new();
    loop {
        let mut result = rx.feed(&mut next, &mut on);
        // Stop means "handle what you have, then ask again without new bytes".
        while result == Ok(Flow::Stop) && !closed.get() {
            result = rx.feed(&mut [], &mut on);
        }
        match result {
            Err(_) => {
                return Outcome {
                    events,
                    malformed: true,
                }
            }
            Ok(_) if closed.get() => break,
            Ok(_) => {}
        }
        let (buffered, message) = rx.buffered();
        // Only an incomplete frame (TCP) or WebSocket frame plus a fragmented message is kept.
        let frame_limit = if websocket {
            max_body
                .saturating_add(HEADER_LEN)
                .saturating_add(WS_MAX_FRAME_HEADER)
        } else {
            max_body.saturating_add(HEADER_LEN)
        };
        assert!(
            buffered < frame_limit,
            "{buffered} bytes kept between reads"
        );
        assert!(message <= max_body.saturating_add(HEADER_LEN));
        if pending.is_empty() {
            break;
        }
        let size = read_sizes
            .next()
            .unwrap_or(pending.len())
            .clamp(1, pending.len());
        let (read, after) = pending.split_at(size);
        next = read.to_vec();
        pending = after;
    }
    Outcome {
        events,
        malformed: false,
    }
}

/// Read sizes from a seed: a small xorshift generator, reads of 1 to 64 bytes mixed with
/// larger ones, enough to cover `len` bytes.
fn read_sizes(seed: u8, len: usize) -> Vec<usize> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761) | 1;
    let mut sizes = Vec::new();
    let mut covered = 0;
    while covered < len {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = if state % 5 == 0 {
            (state >> 8) as usize % 4096 + 1
        } else {
            (state >> 8) as usize % 64 + 1
        };
        sizes.push(size);
        covered += size;
    }
    sizes
}
