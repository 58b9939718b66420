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
    /// `IMGATE_COMET_IO` names no engine.
    #[error("{0}")]
    Io(String),
    /// `comet.io = "io_uring"`, and io_uring cannot be used here.
    #[error(
        "comet.io = \"io_uring\", but this process cannot use io_uring: {0} (set comet.io to \"auto\" \
         or \"epoll\" to run on epoll)"
    )]
    IoUringRefused(String),
    /// A shard's executor could not be created or did not come up.
    #[error("shard {shard} failed to start: {reason}")]
    Shard { shard: usize, reason: String },
}
