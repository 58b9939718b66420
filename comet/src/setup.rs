//! What a comet's shards are made from and told: the state every shard of a comet shares, what
//! each shard thread starts from, its client listeners' kinds, and the commands its inbox
//! carries.

use std::sync::Arc;

use bytes::Bytes;
use imgate_shared::config::CometConfig;
use imgate_shared::link::CometInfo;
use socket2::Socket;

use crate::limits::{ConnLimits, OnlineAddresses};
use crate::stats::ShardStats;

/// Inbox commands a shard handles before it lets its other tasks run.
pub(crate) const COMMANDS_PER_TURN: u32 = 32;
/// Capacity of each shard's inbox.
pub(crate) const INBOX_CAPACITY: usize = 4096;

/// Work sent to a shard by link readers, other shards and the handle.
pub(crate) enum ShardCommand {
    /// Deliver to these keys of the shard if their connection watches `op`. A stored push
    /// (`seq > 0`, the inbox sequence of user `mid`) goes to every connection of that user
    /// that does not have it yet, watched or not.
    PushKeys {
        keys: Vec<String>,
        op: i32,
        tcp: Bytes,
        ws: Bytes,
        seq: u64,
        mid: i64,
    },
    /// Deliver to every member of `room` on the shard.
    PushRoom { room: String, tcp: Bytes, ws: Bytes },
    /// Deliver to every connection watching `op`, about `speed` per second (0 = at once).
    Broadcast {
        op: i32,
        tcp: Bytes,
        ws: Bytes,
        speed: u32,
    },
    /// Close connection `conn_id` of this shard: a newer connection took its key over. If it
    /// is still authenticating, it is closed as soon as its handshake ends.
    CloseReplaced { conn_id: u64 },
    /// The business joins, leaves or kicks these connections of this shard.
    Control {
        action: imgate_shared::link::ControlAction,
        room: String,
        reason: String,
        conn_ids: Vec<u64>,
    },
    /// Serve a cluster link job opened for this shard, which another shard accepted (with
    /// the bytes read past its hello).
    AdoptLink {
        fd: std::os::fd::OwnedFd,
        buffered: bytes::BytesMut,
        peer: Option<std::net::SocketAddr>,
    },
    /// Close everything and let the executor return.
    Shutdown,
    /// Panic in the shard's loop (the test-only hook, debug builds).
    #[cfg(debug_assertions)]
    TestPanic,
}

/// What every shard of one comet shares (immutable after start, but for the limit counts).
pub(crate) struct CometShared {
    pub id: String,
    pub config: CometConfig,
    pub info: CometInfo,
    pub inboxes: Vec<async_channel::Sender<ShardCommand>>,
    /// Accepts TLS on the `wss://` and TLS TCP listeners.
    pub tls: Option<futures_rustls::TlsAcceptor>,
    pub limits: ConnLimits,
    /// The addresses of the comet's connections, counted once whichever shard holds them.
    pub addresses: OnlineAddresses,
    /// The op of the test-only panic hook (`IMGATE_TEST_PANIC_OP`, debug builds only).
    #[cfg(debug_assertions)]
    pub test_panic_op: Option<i32>,
}

/// What a client listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listen {
    pub websocket: bool,
    pub tls: bool,
}

impl Listen {
    pub const TCP: Listen = Listen {
        websocket: false,
        tls: false,
    };
    pub const WS: Listen = Listen {
        websocket: true,
        tls: false,
    };
    pub const WSS: Listen = Listen {
        websocket: true,
        tls: true,
    };
    pub const TCP_TLS: Listen = Listen {
        websocket: false,
        tls: true,
    };
}

/// Everything a shard thread starts from.
pub(crate) struct ShardSetup {
    pub index: u32,
    pub comet: Arc<CometShared>,
    pub stats: Arc<ShardStats>,
    pub inbox: async_channel::Receiver<ShardCommand>,
    /// This shard's socket of every client listener.
    pub clients: Vec<(Socket, Listen)>,
    pub link: Socket,
    pub ready: std::sync::mpsc::Sender<Result<(), String>>,
}
