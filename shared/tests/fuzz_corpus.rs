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

#[test]
#[should_panic(expected = "cannot be read")]
fn replay_of_a_missing_corpus_fails() {
    imgate_shared::fuzzing::replay_corpus(&corpus("no_such_target"), |_| {});
}

#[test]
#[should_panic(expected = "holds no inputs")]
fn replay_of_an_empty_corpus_fails() {
    let empty = tempfile::tempdir().expect("a temporary folder");
    imgate_shared::fuzzing::replay_corpus(empty.path(), |_| {});
}

#[test]
fn replay_names_each_input_that_panicked() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    std::fs::write(dir.path().join("fine"), b"ok").unwrap();
    std::fs::write(dir.path().join("bad-one"), b"boom").unwrap();
    std::fs::write(dir.path().join("bad-two"), b"boom").unwrap();
    let replay = std::panic::catch_unwind(|| {
        imgate_shared::fuzzing::replay_corpus(dir.path(), |data| {
            assert_ne!(data, b"boom", "harness")
        })
    });
    let panic = replay.expect_err("a panicking input must fail the replay");
    let message = panic.downcast_ref::<String>().expect("a formatted message");
    assert!(
        message.contains("2 of 3 corpus inputs panicked"),
        "{message}"
    );
    assert!(
        message.contains("bad-one") && message.contains("bad-two"),
        "{message}"
    );
    assert!(!message.contains("fine"), "{message}");
}
