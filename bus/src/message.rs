//! What travels on the bus: one push (or one connection to close) per [`BusMessage`].

use bytes::Bytes;
use imgate_shared::link::{CloseConn, ConnControl, ShardKeys};

/// One push, as logic publishes it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BusMessage {
    #[prost(oneof = "Push", tags = "1, 2, 3, 4, 6, 7")]
    pub push: Option<Push>,
    /// When logic accepted the push, Unix time in microseconds (0: unknown): comet measures
    /// `imgate_push_latency_seconds` from it.
    #[prost(uint64, tag = "5")]
    pub accepted_us: u64,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Push {
    #[prost(message, tag = "1")]
    Keys(KeysPush),
    #[prost(message, tag = "2")]
    Room(RoomPush),
    #[prost(message, tag = "3")]
    All(BroadcastPush),
    /// Not a push: close one connection of a comet (its session was replaced by a newer
    /// connection's claim on another comet).
    #[prost(message, tag = "4")]
    Close(CloseConn),
    // Tag 5 is `BusMessage::accepted_us`.
    /// Not a push: the business joins, leaves or kicks connections of one comet (keyed by
    /// that comet, so it keeps its order with the comet's keys pushes).
    #[prost(message, tag = "6")]
    Control(ConnControl),
    /// Not a push: one connect, disconnect, join or leave for the business's
    /// `logic.events_url`. It travels on the events topic (stream), never among the pushes, so
    /// a business that is down holds back only events.
    #[prost(message, tag = "7")]
    Event(ConnEvent),
}

/// One event for the business, as logic publishes it in cluster mode.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnEvent {
    /// The user; one user's events keep their order (one partition).
    #[prost(int64, tag = "1")]
    pub mid: i64,
    /// The connection's key: anonymous connections' (mid 0) events are ordered by it.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The event as the business receives it: one JSON object.
    #[prost(bytes = "bytes", tag = "3")]
    pub json: Bytes,
}

/// Connections on one comet, grouped by shard.
#[derive(Clone, PartialEq, prost::Message)]
pub struct KeysPush {
    #[prost(string, tag = "1")]
    pub comet: String,
    #[prost(message, repeated, tag = "2")]
    pub targets: Vec<ShardKeys>,
    #[prost(int32, tag = "3")]
    pub op: i32,
    #[prost(bytes = "bytes", tag = "4")]
    pub body: Bytes,
    /// Inbox sequence of a stored push to user `mid` (0: not stored).
    #[prost(uint64, tag = "5")]
    pub seq: u64,
    #[prost(int64, tag = "6")]
    pub mid: i64,
}

/// A message for every member of a room (`type://id`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoomPush {
    #[prost(string, tag = "1")]
    pub room: String,
    #[prost(int32, tag = "2")]
    pub op: i32,
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
    /// The room-history sequence when the push opted into history (0: none); it travels in
    /// the frame header's seq so a client can catch up with SYNC.
    #[prost(uint64, tag = "4")]
    pub seq: u64,
}

/// A message for every connection watching `op`, paced at `speed` connections per second.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BroadcastPush {
    #[prost(int32, tag = "1")]
    pub op: i32,
    #[prost(bytes = "bytes", tag = "2")]
    pub body: Bytes,
    #[prost(uint32, tag = "3")]
    pub speed: u32,
}

impl BusMessage {
    /// A message accepted now.
    pub fn new(push: Push) -> Self {
        BusMessage {
            push: Some(push),
            accepted_us: imgate_shared::link::unix_us(),
        }
    }

    /// The ordering key: one comet's, one room's, one user's events and the broadcasts'
    /// messages keep their order.
    pub fn partition_key(&self) -> String {
        match &self.push {
            Some(Push::Keys(k)) => format!("comet:{}", k.comet),
            Some(Push::Room(r)) => format!("room:{}", r.room),
            Some(Push::Close(c)) => format!("comet:{}", c.conn.as_ref().map_or("", |c| &c.comet)),
            Some(Push::Control(c)) => format!("comet:{}", c.comet),
            Some(Push::Event(e)) if e.mid > 0 => format!("user:{}", e.mid),
            Some(Push::Event(e)) => format!("key:{}", e.key),
            Some(Push::All(_)) | None => "all".to_string(),
        }
    }
}
