//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the same harness the
//! cargo-fuzz targets run, on stable and without libFuzzer. Fails if a target's corpus is
//! missing or empty, and names every input that panicked.

use std::path::PathBuf;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn frame_decode_corpus_replays_without_panic() {
    let n = imgate_shared::fuzzing::replay_corpus(
        &corpus("frame_decode"),
        imgate_shared::fuzzing::fuzz_frame_decode,
    );
    println!("replayed {n} frame_decode inputs");
}

#[test]
fn ws_handshake_corpus_replays_without_panic() {
    let n = imgate_shared::fuzzing::replay_corpus(
        &corpus("ws_handshake"),
        imgate_shared::fuzzing::fuzz_ws_handshake,
    );
    println!("replayed {n} ws_handshake inputs");
}

#[test]
fn ws_frame_corpus_replays_without_panic() {
    let n = imgate_shared::fuzzing::replay_corpus(
        &corpus("ws_frame"),
        imgate_shared::fuzzing::fuzz_ws_frame,
    );
    println!("replayed {n} ws_frame inputs");
}
