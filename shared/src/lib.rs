//! Pieces every imgate service shares: the goim frame codec, WebSocket framing, the
//! cluster-link messages, configuration, TLS, the counter type every service counts with, and
//! the process's one copy of each room name.

pub mod config;
pub mod counters;
pub mod frame;
/// Fuzz harness bodies shared by `fuzz/` and the corpus replay tests (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod intern;
pub mod link;
pub mod log_limit;
pub mod metrics;
pub mod tls;
pub mod ws;
