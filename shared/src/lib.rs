//! Pieces every imgate service shares: the goim frame codec, WebSocket framing, the
//! cluster-link messages, configuration, and the store seam with its embedded implementation.

pub mod config;
pub mod frame;
/// Fuzz harness bodies shared by `fuzz/` and the corpus replay tests (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod link;
pub mod store;
pub mod tls;
pub mod ws;
