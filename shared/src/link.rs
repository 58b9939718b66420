//! The cluster link: prost messages in length-prefixed frames over TCP.
//!
//! comet → logic: `Connect`, `Disconnect`, `Heartbeat`, `RenewOnline`, `Upstream`,
//! `RoomsChanged`, `Refresh` (requests carry an id and get a reply with the same id). job →
//! comet: `PushKeys`, `PushRoom`, `Broadcast`, `CloseConn`, `Control` (pipelined, id 0, no
//! reply). The messages are declared here with prost's derive macros, so
//! the build needs no `protoc`; the field tags are the schema and must never be reused.
//!
//! Wire framing: a 4-byte big-endian length, then that many bytes of an encoded [`Envelope`].

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Largest link frame accepted (a room batch or a broadcast body fits well inside).
pub const MAX_LINK_FRAME: usize = 16 << 20;

/// One cluster-link message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Envelope {
    /// Request id; a reply carries the id of its request. 0 for one-way messages.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(
        oneof = "Body",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 22, 23, 24, 25"
    )]
    pub body: Option<Body>,
    /// For pushes: when logic accepted the push (the oldest one of a room batch), Unix time in
    /// microseconds; 0 when unknown.
    #[prost(uint64, tag = "21")]
    pub accepted_us: u64,
}

/// Unix time now, in microseconds (0 before 1970).
pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    #[prost(message, tag = "2")]
    Connect(Connect),
    #[prost(message, tag = "3")]
    ConnectReply(ConnectReply),
    #[prost(message, tag = "4")]
    Disconnect(Disconnect),
    #[prost(message, tag = "5")]
    Heartbeat(Heartbeat),
    #[prost(message, tag = "6")]
    RenewOnline(RenewOnline),
    #[prost(message, tag = "7")]
    RenewOnlineReply(RenewOnlineReply),
    #[prost(message, tag = "8")]
    Upstream(Upstream),
    /// A successful reply with nothing to say.
    #[prost(message, tag = "9")]
    Ok(Empty),
    /// A failed request; the reason is for logs and close frames.
    #[prost(message, tag = "10")]
    Error(Failure),
    #[prost(message, tag = "11")]
    PushKeys(PushKeys),
    #[prost(message, tag = "12")]
    PushRoom(PushRoom),
    #[prost(message, tag = "13")]
    Broadcast(Broadcast),
    /// comet → logic: the user has processed (or, for a client that does not ack, was written)
    /// every stored message up to `seq`.
    #[prost(message, tag = "14")]
    InboxAck(InboxAck),
    /// comet → logic: stored messages after a seq (a client's SYNC).
    #[prost(message, tag = "15")]
    InboxRead(InboxRead),
    /// logic → comet: the answer to `InboxRead`.
    #[prost(message, tag = "16")]
    InboxMessages(InboxMessages),
    /// job → comet: close this connection, a newer one (on another comet) took its key.
    #[prost(message, tag = "17")]
    CloseConn(CloseConn),
    /// job → comet, first on a link: which of the comet's shards the link is for.
    #[prost(message, tag = "18")]
    LinkHello(LinkHello),
    /// comet → job, back on job's link to a shard, every 100 ms: how loaded the shard is.
    #[prost(message, tag = "19")]
    Load(Load),
    /// logic → comet: the answer to an `Upstream` request (a client's op 4).
    #[prost(message, tag = "20")]
    UpstreamReply(UpstreamReply),
    // Tag 21 is `Envelope::accepted_us`.
    /// job → comet: the business joins, leaves or kicks connections of this comet.
    #[prost(message, tag = "22")]
    Control(ConnControl),
    /// comet → logic: the rooms of a user's connection changed.
    #[prost(message, tag = "23")]
    RoomsChanged(RoomsChanged),
    /// comet → logic: a client presents a fresh token (op 30).
    #[prost(message, tag = "24")]
    Refresh(Refresh),
    /// logic → comet: the answer to a `Refresh` it accepted.
    #[prost(message, tag = "25")]
    RefreshReply(RefreshReply),
}

/// What the business asks of connections ([`ConnControl::action`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ControlAction {
    /// Nothing (what a message from a newer peer decodes to): ignored.
    Unknown = 0,
    /// Make them members of `room` (each is told with an op-25 frame, seq 0).
    Join = 1,
    /// Take them out of `room` (op 27, seq 0).
    Leave = 2,
    /// Send op 6 with `reason`, then close them.
    Kick = 3,
}

/// The business's join, leave or kick of some connections of one comet (logic publishes one
/// per comet on the bus; job sends each shard its part).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnControl {
    /// The comet they are on (for the bus; the link reaches that comet already).
    #[prost(string, tag = "1")]
    pub comet: String,
    /// Its connections, by shard.
    #[prost(message, repeated, tag = "2")]
    pub targets: Vec<ShardConns>,
    /// A [`ControlAction`].
    #[prost(enumeration = "ControlAction", tag = "3")]
    pub action: i32,
    /// The room joined or left.
    #[prost(string, tag = "4")]
    pub room: String,
    /// A kick's op-6 body.
    #[prost(string, tag = "5")]
    pub reason: String,
}

/// Connections of one shard, by id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShardConns {
    #[prost(uint32, tag = "1")]
    pub shard: u32,
    /// [`ConnRef::conn_id`]s on that shard.
    #[prost(uint64, repeated, tag = "2")]
    pub conn_ids: Vec<u64>,
}

/// The rooms of a user's connection changed: a client's op 12, 24 or 26, or the business's
/// join or leave. Logic records `rooms` (presence) and tells the business (events).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoomsChanged {
    /// The connection, with its user and key (its session).
    #[prost(message, optional, tag = "1")]
    pub conn: Option<ConnRef>,
    #[prost(int64, tag = "2")]
    pub mid: i64,
    #[prost(string, tag = "3")]
    pub key: String,
    /// Every room the connection is in now, its main room first.
    #[prost(string, repeated, tag = "4")]
    pub rooms: Vec<String>,
    /// The rooms it entered with this change (a `join` event each).
    #[prost(string, repeated, tag = "5")]
    pub joined: Vec<String>,
    /// The rooms it left with this change (a `leave` event each).
    #[prost(string, repeated, tag = "6")]
    pub left: Vec<String>,
    /// The business asked for it (its join and leave API), not the client.
    #[prost(bool, tag = "7")]
    pub by_server: bool,
}

/// A client's fresh token (op 30) for its connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Refresh {
    /// The connection, with its user and key: the token must be that user's.
    #[prost(message, optional, tag = "1")]
    pub conn: Option<ConnRef>,
    #[prost(int64, tag = "2")]
    pub mid: i64,
    #[prost(string, tag = "3")]
    pub key: String,
    /// The op-30 body: the token, as the client would put it in its auth JSON.
    #[prost(bytes = "bytes", tag = "4")]
    pub token: Bytes,
    /// The client's address, for the connect hook.
    #[prost(string, tag = "5")]
    pub remote_addr: String,
}

/// A fresh token accepted: the connection's new expiry and rooms claim.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RefreshReply {
    /// The token's `exp` (or the connect hook's `expire_at`), Unix seconds; 0: none. The
    /// client's op 31 says it.
    #[prost(uint64, tag = "1")]
    pub exp: u64,
    /// When the connection is closed as expired, Unix seconds (`exp` and `auth.leeway`);
    /// 0: never.
    #[prost(uint64, tag = "2")]
    pub expire_at: u64,
    /// The rooms the fresh token allows (when `rooms_limited`).
    #[prost(string, repeated, tag = "3")]
    pub allowed_rooms: Vec<String>,
    /// The fresh token limits the rooms; otherwise any room.
    #[prost(bool, tag = "4")]
    pub rooms_limited: bool,
}

/// How loaded a comet shard was over its last tick, as it tells each job linked to it (job
/// paces big rooms by the busiest shard).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Load {
    /// The share of the tick its event loop was busy (not parked), in thousandths.
    #[prost(uint32, tag = "1")]
    pub busy_permille: u32,
    /// The id of the last push the shard finished handling on this link. job stamps each
    /// push's envelope id with its own clock when it makes it, so it can tell how far behind
    /// what it sent the shard's fan-out is, without any clock shared with the comet.
    #[prost(uint64, tag = "2")]
    pub handled: u64,
}

/// The first message job sends on a link to a comet: job opens one link per comet shard, so
/// each shard reads and fans out its own pushes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LinkHello {
    #[prost(uint32, tag = "1")]
    pub shard: u32,
}

/// A connection to close because a newer connection's claim replaced its session.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CloseConn {
    #[prost(message, optional, tag = "1")]
    pub conn: Option<ConnRef>,
}

/// A message kept in a user's inbox or a room's history, with its sequence number.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stored {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(int32, tag = "2")]
    pub op: i32,
    #[prost(bytes = "bytes", tag = "3")]
    pub body: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InboxAck {
    #[prost(message, optional, tag = "1")]
    pub conn: Option<ConnRef>,
    #[prost(int64, tag = "2")]
    pub mid: i64,
    #[prost(uint64, tag = "3")]
    pub seq: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct InboxRead {
    #[prost(message, optional, tag = "1")]
    pub conn: Option<ConnRef>,
    #[prost(int64, tag = "2")]
    pub mid: i64,
    /// Empty: the user's inbox; otherwise this room's recent history.
    #[prost(string, tag = "3")]
    pub room: String,
    #[prost(uint64, tag = "4")]
    pub after: u64,
    /// Answer with about this many bytes of message bodies at most (at least one message);
    /// `more` then says whether to ask again. 0: no byte limit.
    #[prost(uint32, tag = "5")]
    pub max_bytes: u32,
}

/// Bytes of stored messages comet asks for at once (and the most of a connect backlog), so a
/// client catching up, or asking for a long history it never reads, holds at most about this
/// much of the gateway's memory at a time.
pub const STORED_PAGE_BYTES: u32 = 64 << 10;
/// Messages read from the store at once for a paged read.
pub const STORED_PAGE_MESSAGES: usize = 64;

#[derive(Clone, PartialEq, prost::Message)]
pub struct InboxMessages {
    /// Oldest first.
    #[prost(message, repeated, tag = "1")]
    pub messages: Vec<Stored>,
    /// A paged read (`max_bytes` set) stopped before the end: ask again after the last one.
    #[prost(bool, tag = "2")]
    pub more: bool,
}

/// Keeps the leading `messages` whose bodies fit in `max_bytes` (at least one); returns
/// whether any were cut off.
pub fn cut_to_page(messages: &mut Vec<Stored>, max_bytes: u32) -> bool {
    let mut total = 0usize;
    let keep = messages
        .iter()
        .position(|m| {
            total += m.body.len();
            total > max_bytes as usize
        })
        .map_or(messages.len(), |over| over.max(1));
    let cut = keep < messages.len();
    messages.truncate(keep);
    cut
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Empty {}

/// A request logic did not serve, and why.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Failure {
    /// Why, for the client (a refused connect's op 6 carries it).
    #[prost(string, tag = "1")]
    pub message: String,
    /// What failed, as a label comets count refused connects by (one of [`failure_cause`]);
    /// empty: the request was refused (a bad token, a key held by another user, the connect
    /// hook answering non-2xx, …). An older logic never sets it.
    #[prost(string, tag = "2")]
    pub cause: String,
}

/// The labels of [`Failure::cause`] that say something other than "refused".
pub mod failure_cause {
    /// The connect hook did not answer within `auth.connect_timeout`.
    pub const HOOK_TIMEOUT: &str = "hook_timeout";
    /// The connect hook could not be reached (connection refused, no route, …).
    pub const HOOK_UNREACHABLE: &str = "hook_unreachable";
    /// The connect hook answered 2xx with something that is not a valid answer (not a JSON
    /// object, no canonical positive mid, too large, a broken HTTP exchange).
    pub const HOOK_BAD_ANSWER: &str = "hook_bad_answer";
    /// `auth.connect_concurrency` connects were waiting for the hook already.
    pub const HOOK_BUSY: &str = "hook_busy";
    /// Logic could not decide (its store failed): nothing was refused, the request may be
    /// asked again.
    pub const UNAVAILABLE: &str = "unavailable";
}

/// Identifies one connection cluster-wide: which comet, which shard, which connection there.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct ConnRef {
    #[prost(string, tag = "1")]
    pub comet: String,
    #[prost(uint32, tag = "2")]
    pub shard: u32,
    /// Unique within the comet process; lets logic tell a reconnect with the same key apart.
    #[prost(uint64, tag = "3")]
    pub conn_id: u64,
}

/// A client sent its auth frame: logic authenticates it and opens a session.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Connect {
    #[prost(message, optional, tag = "1")]
    pub conn: Option<ConnRef>,
    /// The auth frame's body.
    #[prost(bytes = "bytes", tag = "2")]
    pub token: Bytes,
    /// The WebSocket `Cookie` header, if any.
    #[prost(string, tag = "3")]
    pub cookie: String,
    #[prost(string, tag = "4")]
    pub remote_addr: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ConnectReply {
    #[prost(int64, tag = "1")]
    pub mid: i64,
    #[prost(string, tag = "2")]
    pub key: String,
    #[prost(string, tag = "3")]
    pub room: String,
    #[prost(int32, repeated, tag = "4")]
    pub accepts: Vec<i32>,
    /// Server-side heartbeat expiry, in milliseconds.
    #[prost(uint64, tag = "5")]
    pub heartbeat_ms: u64,
    /// The client announced (auth JSON `"acks": true`) that it acknowledges stored messages
    /// with op 20; otherwise a stored message written to its socket counts as delivered.
    #[prost(bool, tag = "6")]
    pub acks: bool,
    /// Stored messages the user has not acknowledged, oldest first: comet sends them right
    /// after the auth reply.
    #[prost(message, repeated, tag = "7")]
    pub backlog: Vec<Stored>,
    /// Nothing at or below this inbox sequence will come from the store any more (it was
    /// acknowledged, trimmed or expired): where the connection's sequence window starts.
    #[prost(uint64, tag = "8")]
    pub inbox_floor: u64,
    /// When `rooms_limited`, the only rooms the connection may change to (its token's
    /// `rooms` claim); leaving every room is always allowed.
    #[prost(string, repeated, tag = "9")]
    pub allowed_rooms: Vec<String>,
    #[prost(bool, tag = "10")]
    pub rooms_limited: bool,
    /// The connection whose session this one replaced (same key), if any: comet closes exactly
    /// that connection when it is one of its own, never any other holder of the key. A
    /// replaced connection on another comet is closed through the bus ([`CloseConn`]).
    #[prost(message, optional, tag = "11")]
    pub replaced: Option<ConnRef>,
    /// The client asked for room pushes tagged with their room (op 28).
    #[prost(bool, tag = "12")]
    pub room_tags: bool,
    /// When the connection is closed as expired (its token's `exp` and `auth.leeway`, or the
    /// connect hook's `expire_at` and the leeway), Unix seconds; 0: never.
    #[prost(uint64, tag = "13")]
    pub expire_at: u64,
}

/// The connection closed; logic removes its session if it still belongs to this connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Disconnect {
    #[prost(message, optional, tag = "1")]
    pub conn: Option<ConnRef>,
    #[prost(int64, tag = "2")]
    pub mid: i64,
    #[prost(string, tag = "3")]
    pub key: String,
    /// Why it closed (`client_closed`, `heartbeat_expired`, `slow`, `replaced`, …), for
    /// logic's disconnect events; empty from older comets.
    #[prost(string, tag = "4")]
    pub reason: String,
}

/// The session is alive: logic refreshes (or re-creates) its TTL.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Heartbeat {
    #[prost(message, optional, tag = "1")]
    pub conn: Option<ConnRef>,
    #[prost(int64, tag = "2")]
    pub mid: i64,
    #[prost(string, tag = "3")]
    pub key: String,
}

/// What a comet tells the registry about itself.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CometInfo {
    #[prost(string, tag = "1")]
    pub id: String,
    /// Where job reaches this comet's cluster link.
    #[prost(string, tag = "2")]
    pub link_addr: String,
    #[prost(string, repeated, tag = "3")]
    pub tcp_addrs: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    pub ws_addrs: Vec<String>,
    #[prost(uint32, tag = "5")]
    pub weight: u32,
    #[prost(uint32, tag = "6")]
    pub shards: u32,
    /// `wss://` addresses (none without TLS).
    #[prost(string, repeated, tag = "7")]
    pub wss_addrs: Vec<String>,
}

/// A shard's periodic report: it is alive, how many connections it holds, who is in which room.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RenewOnline {
    #[prost(message, optional, tag = "1")]
    pub comet: Option<CometInfo>,
    #[prost(uint32, tag = "2")]
    pub shard: u32,
    #[prost(uint32, tag = "3")]
    pub conn_count: u32,
    /// Each room with connections of this shard in it, and how many.
    #[prost(message, repeated, tag = "4")]
    pub rooms: Vec<RoomCount>,
    /// Distinct client addresses of the shard's whole comet (goim's `ip_count`).
    #[prost(uint32, tag = "5")]
    pub ip_count: u32,
    /// How late, on average since the last report, the shard's 100 ms tick ran, in
    /// microseconds: how busy the shard (or the host under it) is. job paces big rooms by it.
    #[prost(uint32, tag = "6")]
    pub lag_us: u32,
    /// The share of the shard's time its event loop was busy (not parked) since its last
    /// report, in thousandths.
    #[prost(uint32, tag = "7")]
    pub busy_permille: u32,
    /// A report comes in parts of at most [`REPORT_PART_BYTES`] of rooms, each sent once the
    /// previous one is answered, so that a shard of many rooms needs no frame of megabytes
    /// (or over [`MAX_LINK_FRAME`]): this part's number, from 0.
    #[prost(uint32, tag = "8")]
    pub part: u32,
    /// More parts of this report follow; logic stores the report with its last part.
    #[prost(bool, tag = "9")]
    pub more: bool,
}

/// Most bytes of rooms (names and counts, as encoded) in one part of an online report.
pub const REPORT_PART_BYTES: usize = 64 << 10;

impl RoomCount {
    /// Bytes this entry takes in a report, near enough (its name and a few of framing).
    pub fn report_len(name: &str) -> usize {
        name.len() + 12
    }
}

/// Cluster-wide counts, only for the rooms the report named (goim answers with every room).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RenewOnlineReply {
    /// Rooms the report named, each with its connections across the cluster; a room left out
    /// has no more than the shard reported.
    #[prost(message, repeated, tag = "1")]
    pub rooms: Vec<RoomCount>,
}

/// A room and a count of its connections. On the wire it is a protobuf `map<string, uint32>`
/// entry (the name in field 1, the count in field 2), which is what reports and replies carried
/// before, so either side may be older. The name stays the bytes it came in (a slice of the
/// frame, or the sender's own name) rather than a `String` copied out: with many rooms, every
/// report and reply made a copy of every name on each side.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RoomCount {
    /// UTF-8 (a map key): [`RoomCount::name`] checks it.
    #[prost(bytes = "bytes", tag = "1")]
    pub name: Bytes,
    #[prost(uint32, tag = "2")]
    pub count: u32,
}

impl RoomCount {
    /// A room's entry, its name shared rather than copied.
    pub fn new(name: std::sync::Arc<str>, count: u32) -> RoomCount {
        RoomCount {
            name: Bytes::from_owner(SharedName(name)),
            count,
        }
    }

    /// The room's name; `None` if it is not UTF-8 (no imgate peer sends one).
    pub fn name(&self) -> Option<&str> {
        std::str::from_utf8(&self.name).ok()
    }
}

/// A shared room name as the owner of a [`Bytes`].
struct SharedName(std::sync::Arc<str>);

impl AsRef<[u8]> for SharedName {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// A client frame with a business op, forwarded to logic.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Upstream {
    #[prost(message, optional, tag = "1")]
    pub conn: Option<ConnRef>,
    #[prost(int64, tag = "2")]
    pub mid: i64,
    #[prost(string, tag = "3")]
    pub key: String,
    #[prost(int32, tag = "4")]
    pub op: i32,
    #[prost(int32, tag = "5")]
    pub seq: i32,
    #[prost(bytes = "bytes", tag = "6")]
    pub body: Bytes,
    /// The connection's main room.
    #[prost(string, tag = "7")]
    pub room: String,
}

/// logic → comet: the business's answer to a client message (op 4), for op 5. An empty body
/// when the business failed, did not answer in time, or is not configured.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UpstreamReply {
    #[prost(bytes = "bytes", tag = "1")]
    pub body: Bytes,
    /// Whether the business answered (2xx); false: the body is empty for that reason.
    #[prost(bool, tag = "2")]
    pub delivered: bool,
}

/// Keys of one shard.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShardKeys {
    #[prost(uint32, tag = "1")]
    pub shard: u32,
    #[prost(string, repeated, tag = "2")]
    pub keys: Vec<String>,
}

/// Deliver one encoded frame to the given connections of this comet, if they watch `op`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushKeys {
    #[prost(message, repeated, tag = "1")]
    pub targets: Vec<ShardKeys>,
    #[prost(int32, tag = "2")]
    pub op: i32,
    /// One complete goim frame (header and body).
    #[prost(bytes = "bytes", tag = "3")]
    pub frame: Bytes,
    /// The user's inbox sequence of a stored push (also in the frame header's seq); 0 when
    /// the push is not stored. comet drops a stored push a connection already has.
    #[prost(uint64, tag = "4")]
    pub seq: u64,
    /// The user the stored push belongs to (0 when not stored).
    #[prost(int64, tag = "5")]
    pub mid: i64,
}

/// Deliver a batch of room messages to every member of the room on this comet.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PushRoom {
    #[prost(string, tag = "1")]
    pub room: String,
    /// One or more complete goim frames, concatenated, in order.
    #[prost(bytes = "bytes", tag = "2")]
    pub frames: Bytes,
    /// How many frames `frames` holds.
    #[prost(uint32, tag = "3")]
    pub count: u32,
}

/// Deliver one frame to every connection of this comet that watches `op`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Broadcast {
    #[prost(int32, tag = "1")]
    pub op: i32,
    #[prost(bytes = "bytes", tag = "2")]
    pub frame: Bytes,
    /// Connections per second for what reads this link: its shard (a link opened with
    /// `LinkHello`), or the whole comet otherwise; 0 = unpaced.
    #[prost(uint32, tag = "3")]
    pub speed: u32,
}

/// Why link bytes could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link frame of {0} bytes exceeds the {MAX_LINK_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("undecodable link message: {0}")]
    Decode(#[from] prost::DecodeError),
}

impl Envelope {
    pub fn new(id: u64, body: Body) -> Self {
        Envelope {
            id,
            body: Some(body),
            accepted_us: 0,
        }
    }

    /// The envelope with its 4-byte length prefix, ready to write.
    pub fn to_frame(&self) -> Bytes {
        let len = self.encoded_len();
        let mut out = BytesMut::with_capacity(4 + len);
        out.put_u32(len as u32);
        self.encode(&mut out).expect("BytesMut grows as needed");
        out.freeze()
    }
}

/// Takes one whole envelope off the front of `buf`, or `Ok(None)` if more bytes are needed.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Envelope>, LinkError> {
    let Some(len) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_LINK_FRAME {
        return Err(LinkError::TooLarge(len));
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    let body = buf.split_to(len).freeze();
    if len > KEEP_READ_BUFFER && buf.is_empty() {
        // The rest of `buf` still points into the allocation the large frame came in, and
        // would keep it for the connection's life (an online report and its answer are
        // megabytes with many rooms); a fresh buffer lets it go with the frame.
        *buf = BytesMut::with_capacity(FRESH_READ_BUFFER);
    }
    Ok(Some(Envelope::decode(body)?))
}

/// Frames up to this size leave the read buffer as it is.
const KEEP_READ_BUFFER: usize = 64 << 10;
/// The buffer a large frame's leaves behind.
const FRESH_READ_BUFFER: usize = 8 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    /// What reports and replies carried before `RoomCount`: a map of names to counts.
    #[derive(Clone, PartialEq, prost::Message)]
    struct MapReport {
        #[prost(btree_map = "string, uint32", tag = "4")]
        rooms: std::collections::BTreeMap<String, u32>,
        #[prost(uint32, tag = "3")]
        conn_count: u32,
    }

    #[test]
    fn room_counts_are_a_map_on_the_wire_either_way() {
        let map = MapReport {
            rooms: [("live://1".to_string(), 3), ("chat://é".to_string(), 1)].into(),
            conn_count: 4,
        };
        let new = RenewOnline::decode(map.encode_to_vec().as_slice()).unwrap();
        let read: Vec<(&str, u32)> = new
            .rooms
            .iter()
            .map(|r| (r.name().unwrap(), r.count))
            .collect();
        assert_eq!(read, [("chat://é", 1), ("live://1", 3)]);
        assert_eq!(new.conn_count, 4);
        let back = MapReport::decode(new.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back, map);
        let shared: std::sync::Arc<str> = "live://2".into();
        let sent = RenewOnlineReply {
            rooms: vec![RoomCount::new(shared.clone(), 9)],
        };
        assert_eq!(
            std::sync::Arc::strong_count(&shared),
            2,
            "shared, not copied"
        );
        let old = MapReport::decode(sent.encode_to_vec().as_slice());
        // The reply's field is 1, the report's 4: read the reply as a map under tag 1.
        assert!(old.is_ok());
        #[derive(Clone, PartialEq, prost::Message)]
        struct MapReply {
            #[prost(btree_map = "string, uint32", tag = "1")]
            rooms: std::collections::BTreeMap<String, u32>,
        }
        let old = MapReply::decode(sent.encode_to_vec().as_slice()).unwrap();
        assert_eq!(old.rooms["live://2"], 9);
        let not_utf8 = RoomCount {
            name: Bytes::from_static(&[0xff]),
            count: 1,
        };
        assert_eq!(not_utf8.name(), None);
    }

    /// A large frame's buffer is not kept by the connection that read it (found measuring
    /// 15,000 rooms' online reports: their buffers stayed allocated, megabytes per link).
    #[test]
    fn a_large_frame_does_not_stay_in_the_read_buffer() {
        let big = Envelope::new(
            1,
            Body::RenewOnline(RenewOnline {
                rooms: (0..2000)
                    .map(|i| RoomCount::new(format!("live://{i:0>250}").into(), 1))
                    .collect(),
                ..Default::default()
            }),
        )
        .to_frame();
        let small = Envelope::new(2, Body::Ok(Empty {})).to_frame();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&big);
        let before = buf.capacity();
        assert!(decode_frame(&mut buf).unwrap().is_some());
        assert!(
            buf.is_empty() && buf.capacity() <= FRESH_READ_BUFFER && before > FRESH_READ_BUFFER
        );
        // A frame behind it stays where it is, and small frames keep the buffer.
        buf.extend_from_slice(&big);
        buf.extend_from_slice(&small);
        assert!(decode_frame(&mut buf).unwrap().is_some());
        assert_eq!(buf.len(), small.len());
        assert_eq!(decode_frame(&mut buf).unwrap().map(|e| e.id), Some(2));
    }

    #[test]
    fn a_page_keeps_what_fits_and_at_least_one() {
        let stored = |seq: u64, len: usize| Stored {
            seq,
            op: 1000,
            body: Bytes::from(vec![0u8; len]),
        };
        let seqs = |m: &[Stored]| m.iter().map(|m| m.seq).collect::<Vec<_>>();
        let mut all = vec![stored(1, 40), stored(2, 40), stored(3, 40)];
        assert!(!cut_to_page(&mut all, 120));
        assert_eq!(seqs(&all), [1, 2, 3]);
        assert!(cut_to_page(&mut all, 100));
        assert_eq!(seqs(&all), [1, 2]);
        let mut huge = vec![stored(5, 1000), stored(6, 1)];
        assert!(cut_to_page(&mut huge, 10));
        assert_eq!(seqs(&huge), [5], "one message even when it alone is over");
        let mut none = Vec::new();
        assert!(!cut_to_page(&mut none, 10));
    }

    #[test]
    fn round_trip_through_frames() {
        let msg = Envelope::new(
            7,
            Body::PushKeys(PushKeys {
                targets: vec![ShardKeys {
                    shard: 1,
                    keys: vec!["k".into()],
                }],
                op: 1000,
                frame: Bytes::from_static(b"abc"),
                seq: 3,
                mid: 9,
            }),
        );
        let mut buf = BytesMut::new();
        let frame = msg.to_frame();
        buf.extend_from_slice(&frame[..5]);
        assert!(decode_frame(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&frame[5..]);
        buf.extend_from_slice(&frame);
        assert_eq!(decode_frame(&mut buf).unwrap(), Some(msg.clone()));
        assert_eq!(decode_frame(&mut buf).unwrap(), Some(msg));
        assert!(buf.is_empty());
    }

    #[test]
    fn every_body_variant_survives_the_envelope() {
        // A variant whose tag is missing from the oneof list decodes as `None`, silently.
        let bodies = vec![
            Body::Connect(Connect::default()),
            Body::ConnectReply(ConnectReply {
                backlog: vec![Stored {
                    seq: 1,
                    op: 2,
                    body: Bytes::from_static(b"x"),
                }],
                ..Default::default()
            }),
            Body::Disconnect(Disconnect::default()),
            Body::Heartbeat(Heartbeat::default()),
            Body::RenewOnline(RenewOnline::default()),
            Body::RenewOnlineReply(RenewOnlineReply::default()),
            Body::Upstream(Upstream::default()),
            Body::Ok(Empty {}),
            Body::Error(Failure {
                message: "no".into(),
                cause: failure_cause::HOOK_BUSY.into(),
            }),
            Body::PushKeys(PushKeys::default()),
            Body::PushRoom(PushRoom::default()),
            Body::Broadcast(Broadcast::default()),
            Body::InboxAck(InboxAck {
                seq: 4,
                ..Default::default()
            }),
            Body::InboxRead(InboxRead {
                after: 2,
                ..Default::default()
            }),
            Body::InboxMessages(InboxMessages::default()),
            Body::CloseConn(CloseConn {
                conn: Some(ConnRef {
                    comet: "c".into(),
                    shard: 1,
                    conn_id: 2,
                }),
            }),
            Body::LinkHello(LinkHello { shard: 3 }),
            Body::Load(Load {
                busy_permille: 500,
                handled: 7,
            }),
            Body::UpstreamReply(UpstreamReply {
                body: Bytes::from_static(b"ok"),
                delivered: true,
            }),
            Body::Control(ConnControl {
                comet: "c".into(),
                targets: vec![ShardConns {
                    shard: 1,
                    conn_ids: vec![5, 6],
                }],
                action: ControlAction::Kick as i32,
                room: String::new(),
                reason: "bye".into(),
            }),
            Body::RoomsChanged(RoomsChanged {
                rooms: vec!["a://1".into()],
                joined: vec!["a://1".into()],
                by_server: true,
                ..Default::default()
            }),
            Body::Refresh(Refresh {
                token: Bytes::from_static(b"t"),
                ..Default::default()
            }),
            Body::RefreshReply(RefreshReply {
                exp: 9,
                expire_at: 10,
                ..Default::default()
            }),
        ];
        for body in bodies {
            let msg = Envelope::new(1, body);
            let mut buf = BytesMut::from(&msg.to_frame()[..]);
            assert_eq!(decode_frame(&mut buf).unwrap(), Some(msg));
        }
    }

    #[test]
    fn oversized_length_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_frame(&mut buf),
            Err(LinkError::TooLarge(_))
        ));
    }
}
