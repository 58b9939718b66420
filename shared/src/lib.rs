//! Pieces every imgate service shares: the goim frame codec, WebSocket framing, the
//! cluster-link messages, configuration, and the bus and store seams with their embedded
//! implementations.

pub mod bus;
pub mod config;
pub mod frame;
/// Fuzz harness bodies shared by `fuzz/` and the corpus replay tests; not part of the API.
#[doc(hidden)]
pub mod fuzzing;
pub mod link;
pub mod store;
pub mod tls;
pub mod ws;
