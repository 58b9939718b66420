#![no_main]
//! The harness body lives in the library so the corpus replay test runs the same checks.

libfuzzer_sys::fuzz_target!(|data: &[u8]| imgate_comet::fuzzing::fuzz_reassembly(data));
