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
fn reassembly_corpus_replays_without_panic() {
    let n = imgate_shared::fuzzing::replay_corpus(
        &corpus("reassembly"),
        imgate_comet::fuzzing::fuzz_reassembly,
    );
    println!("replayed {n} reassembly inputs");
}
