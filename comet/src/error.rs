//! Why a comet could not start.

/// Why a comet could not start.
#[derive(Debug, thiserror::Error)]
pub enum CometError {
    /// An address in the configuration does not parse or resolve.
    #[error("invalid listen address {0:?}")]
    Address(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error("{0}")]
    Tls(#[from] imgate_shared::tls::TlsError),
    /// A shard's executor could not be created or did not come up.
    #[error("shard {shard} failed to start: {reason}")]
    Shard { shard: usize, reason: String },
}
