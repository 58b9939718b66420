//! The blocking goim client `imgate sub` runs and the end-to-end tests use; it lives in the
//! `imgate-client` crate, shared with the load generator.

pub use imgate_client::blocking::{Client, ClientError, Frame, TlsClient, Transport};
pub use imgate_client::http;
