//! Pieces every imgate service shares: the goim frame codec, WebSocket framing, the
//! cluster-link messages, configuration and TLS.

pub mod config;
pub mod frame;
/// Fuzz harness bodies shared by `fuzz/` and the corpus replay tests (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod link;
pub mod tls;
pub mod ws;
