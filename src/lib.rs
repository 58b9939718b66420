//! The `imgate` binary's library side: running services in one process ([`standalone`]) and a
//! small blocking goim client ([`client`]) for `imgate sub` and the end-to-end tests.

pub mod client;
pub mod standalone;
