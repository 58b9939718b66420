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
fn http_query_corpus_replays_without_panic() {
    let n = imgate_shared::fuzzing::replay_corpus(
        &corpus("http_query"),
        imgate_logic::fuzzing::fuzz_http_query,
    );
    println!("replayed {n} http_query inputs");
}
