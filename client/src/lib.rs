//! The client side of imgate in Rust, shared by `imgate sub`, the load generator
//! (`bench-harness`) and the tests, so that all three read the server's bytes the same way.
//!
//! | module | what it is |
//! | --- | --- |
//! | [`codec`] | goim frames and WebSocket messages as a client reads and writes them: an allocation-free decoder fed one read at a time |
//! | [`upgrade`] | the WebSocket upgrade request and the check of its answer |
//! | [`blocking`] | a blocking goim client over TCP or WebSocket, plain or TLS |
//! | [`http`] | a blocking HTTP/1.1 client for logic's API |
//!
//! The JavaScript SDK (`sdk/js`) is the client for applications; this crate is for tools and
//! tests written in Rust.

pub mod blocking;
pub mod codec;
pub mod http;
pub mod upgrade;

pub use blocking::{Client, ClientError, Frame, TlsClient};
pub use codec::Transport;
