//! A client connection's state: who it is, its outgoing queue and the bookkeeping of its
//! reading and writing. The connection task (`connection.rs`) holds only references to it, so
//! an idle connection's task stays small, and the shard's indexes hold the same `Conn`.

use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;

use bytes::Bytes;

use crate::delivery::Delivery;
use crate::heartbeat;
use crate::limits::{now_ms, RateLimit};
use crate::reassembly::Reassembly;
use crate::stats::ShardStats;
use crate::stream::ClientStream;
use crate::watch::Watched;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client closed (EOF or a WebSocket close).
    Quiet,
    /// A socket error.
    Io,
    Malformed,
    HandshakeTimeout,
    AuthFailed,
    HeartbeatExpired,
    /// The outgoing queue was full.
    Slow,
    /// A newer connection authenticated with the same key (logic named this one as the
    /// connection it replaced).
    Kicked,
    /// The business kicked it (`POST /goim/kick`).
    KickedByBusiness,
    /// Its token's `exp` (and `auth.leeway`) passed without a fresh token (op 30).
    TokenExpired,
    /// The fresh token it sent (op 30) was refused.
    RefreshRefused,
    /// The client sent frames faster than `upstream_rate` / `upstream_burst`.
    RateLimited,
    /// The TLS handshake failed.
    TlsFailed,
    Shutdown,
    /// One of the connection's tasks panicked (a bug): the connection is closed, the shard
    /// goes on.
    Panic,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
    /// Written to the socket at once, whole.
    Written,
    Queued,
    /// The connection is already closing; nothing queued.
    Closed,
    /// The queue was full: the connection is now closing as too slow.
    Overflow,
}

/// How much a connection's outgoing queue may hold (`comet.send_queue`,
/// `comet.send_queue_bytes`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub entries: usize,
    pub bytes: usize,
}

impl CloseReason {
    /// Counts a close for this reason (the quiet ones are not counted).
    pub fn count(self, stats: &ShardStats) {
        let s = stats;
        match self {
            CloseReason::Malformed => s.closed_malformed.inc(),
            CloseReason::HandshakeTimeout => s.handshake_timeouts.inc(),
            CloseReason::AuthFailed => s.auth_failed.inc(),
            CloseReason::HeartbeatExpired => s.heartbeat_expired.inc(),
            CloseReason::Slow => s.closed_slow.inc(),
            CloseReason::Kicked => s.kicked_duplicate.inc(),
            CloseReason::KickedByBusiness => s.closed_kicked.inc(),
            CloseReason::TokenExpired => s.closed_token_expired.inc(),
            CloseReason::RefreshRefused => s.closed_refresh_refused.inc(),
            CloseReason::RateLimited => s.closed_rate_limited.inc(),
            CloseReason::TlsFailed => s.tls_failed.inc(),
            CloseReason::Panic => s.closed_panic.inc(),
            CloseReason::Quiet | CloseReason::Io | CloseReason::Shutdown => {}
        }
    }

    /// How logic's disconnect events name it.
    pub fn name(self) -> &'static str {
        match self {
            CloseReason::Quiet => "client_closed",
            CloseReason::Io => "socket_error",
            CloseReason::Malformed => "malformed",
            CloseReason::HandshakeTimeout => "handshake_timeout",
            CloseReason::AuthFailed => "auth_failed",
            CloseReason::HeartbeatExpired => "heartbeat_expired",
            CloseReason::Slow => "slow",
            CloseReason::Kicked => "replaced",
            CloseReason::KickedByBusiness => "kicked",
            CloseReason::TokenExpired => "token_expired",
            CloseReason::RefreshRefused => "refresh_refused",
            CloseReason::RateLimited => "rate_limited",
            CloseReason::TlsFailed => "tls_failed",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Panic => "panic",
        }
    }
}

/// One entry of a connection's outgoing queue.
pub(crate) struct Queued {
    pub(crate) bytes: Bytes,
    /// For stored messages of a client that does not ack: the sequences these bytes carry,
    /// reported to logic once they are written.
    pub(crate) report: Option<(u64, u64)>,
}

/// Bytes a full socket did not take (rare, so boxed: idle connections do not carry it).
pub(crate) struct Unsent {
    pub(crate) bytes: Bytes,
    /// The stored sequences these bytes report once completely written.
    pub(crate) report: Vec<(u64, u64)>,
}

/// Where the reading side of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reading {
    /// Bytes that came with the auth frame wait in the reassembly buffer.
    Buffered,
    Open,
    /// A WebSocket close arrived: nothing more is read while the answer is flushed.
    Closed,
}

/// Everything an authenticated connection keeps: what the shard sees, and the socket with its
/// reading and writing state (the connection task itself holds only references to it).
pub(crate) struct Conn {
    pub id: u64,
    pub mid: i64,
    /// Shared with the shard's key index.
    pub key: Rc<str>,
    pub peer_ip: Option<IpAddr>,
    /// Its main room (goim's one room: op 12, the heartbeat reply's count).
    pub(crate) room: Cell<Option<Arc<str>>>,
    /// The other rooms it joined (op 24); rare, so boxed.
    #[allow(clippy::box_collection)]
    pub(crate) joined: RefCell<Option<Box<Vec<Arc<str>>>>>,
    /// The rooms this connection may change to (its token's `rooms` claim); `None`: any.
    /// Boxed: a thin pointer costs every connection 8 bytes, the list itself is rare. A fresh
    /// token (op 30) replaces it.
    #[allow(clippy::box_collection)]
    pub(crate) allowed_rooms: Cell<Option<Box<Vec<String>>>>,
    /// When its token expires (its `exp` and `auth.leeway`), Unix seconds; 0: never. Looked
    /// at on the heartbeat wheel; a fresh token (op 30) moves it.
    pub(crate) expire_at: Cell<u32>,
    /// The ops this connection watches.
    pub(crate) watch: Watched,
    pub(crate) delivery: Delivery,
    pub(crate) queue: RefCell<VecDeque<Queued>>,
    /// Bytes of the entries in `queue`.
    pub(crate) queued_bytes: Cell<u32>,
    /// A stored-message reader waits (in the shard's `drain_waiters`) for the queue to empty.
    pub(crate) awaits_drain: Cell<bool>,
    pub(crate) unsent: Cell<Option<Box<Unsent>>>,
    pub(crate) writer: Cell<Option<Waker>>,
    pub(crate) stream: RefCell<ClientStream>,
    pub(crate) rx: RefCell<Reassembly>,
    pub(crate) upstream: Cell<RateLimit>,
    /// Heartbeat expiry.
    pub(crate) heartbeat_ms: u32,
    /// [`stamp`]s of the last heartbeat and of the last one passed on to logic.
    pub(crate) last_heartbeat: Cell<u32>,
    pub(crate) last_logic_heartbeat: Cell<u32>,
    pub(crate) close: Cell<Option<CloseReason>>,
    pub(crate) reading: Cell<Reading>,
    /// Close with this reason once everything queued is written (a WebSocket close answered,
    /// an op 6 told): nothing more is queued meanwhile.
    pub(crate) flush_then_close: Cell<Option<CloseReason>>,
    /// A frame of it is in the shard's io_uring (submitted or about to be): nothing else is
    /// written until its completion has been handled, so the order holds.
    pub(crate) in_ring: Cell<bool>,
    pub websocket: bool,
    /// The client asked for room pushes tagged with their room (op 28).
    pub room_tags: bool,
}

impl Conn {
    /// Whether key pushes and broadcasts with `op` reach this connection.
    pub fn watches(&self, op: i32) -> bool {
        self.watch.contains(op)
    }

    /// Queues `frame`, or closes the connection as too slow if its queue is over `limits`.
    pub fn push(&self, frame: Bytes, limits: QueueLimits) -> Pushed {
        self.push_items(
            std::iter::once(Queued {
                bytes: frame,
                report: None,
            }),
            limits,
        )
    }

    /// Takes a live stored push of this connection's user with inbox sequence `seq`: `None`
    /// when the connection already has it, else the sequences the push reports once written
    /// (for a client that does not ack).
    pub fn claim_stored(&self, seq: u64) -> Option<Option<(u64, u64)>> {
        if !self.delivery.take_push(seq) {
            return None;
        }
        Some(self.delivery.report_for(seq, seq))
    }

    /// Queues batches of stored messages (from [`stored_batches`]). `inbox`: they are the
    /// user's own (counted as delivered, reported when written by a client that does not
    /// ack); otherwise room history, never reported. The entry limit is checked once, before
    /// the first batch: one page of stored messages never overflows a queue that had room.
    pub fn push_stored_batches(
        &self,
        batches: Vec<(Bytes, u64, u64)>,
        inbox: bool,
        limits: QueueLimits,
    ) {
        if batches.is_empty() {
            return;
        }
        let items = batches.into_iter().map(|(bytes, first, last)| {
            let mut report = None;
            if inbox {
                self.delivery.queued(first, last);
                report = self.delivery.report_for(first, last);
            }
            Queued { bytes, report }
        });
        self.push_items(items, limits);
    }

    /// Queues `items` unless the queue already holds `limits.entries`; a queue that was not
    /// empty and now holds more than `limits.bytes` closes the connection as too slow.
    pub(crate) fn push_items(
        &self,
        items: impl Iterator<Item = Queued>,
        limits: QueueLimits,
    ) -> Pushed {
        if self.is_closing() {
            return Pushed::Closed;
        }
        let mut queue = self.queue.borrow_mut();
        let was_empty = queue.is_empty();
        if queue.len() >= limits.entries {
            drop(queue);
            self.close(CloseReason::Slow);
            return Pushed::Overflow;
        }
        let mut bytes = self.queued_bytes.get() as usize;
        for item in items {
            bytes += item.bytes.len();
            queue.push_back(item);
        }
        self.queued_bytes
            .set(u32::try_from(bytes).unwrap_or(u32::MAX));
        drop(queue);
        if !was_empty && bytes > limits.bytes {
            self.close(CloseReason::Slow);
            return Pushed::Overflow;
        }
        self.wake_writer();
        Pushed::Queued
    }

    /// Whether the connection is closing (at once, or once what is queued is written).
    pub fn is_closing(&self) -> bool {
        self.close.get().is_some() || self.flush_then_close.get().is_some()
    }

    /// Stops reading, lets what is queued (a last word to the client) be written, then closes
    /// for `reason`; nothing more is queued meanwhile.
    pub fn close_after_flush(&self, reason: CloseReason) {
        if self.is_closing() {
            return;
        }
        self.reading.set(Reading::Closed);
        self.flush_then_close.set(Some(reason));
        self.wake_writer();
    }

    /// When its token expires, in milliseconds from `unix_now_ms`: `None` for never, 0 when
    /// it has.
    pub fn token_left_ms(&self, unix_now_ms: u64) -> Option<u64> {
        match self.expire_at.get() {
            0 => None,
            at => Some((u64::from(at) * 1000).saturating_sub(unix_now_ms)),
        }
    }

    /// Asks the connection task to close (the first reason wins).
    pub fn close(&self, reason: CloseReason) {
        if self.close.get().is_none() {
            self.close.set(Some(reason));
            self.queue.borrow_mut().clear();
            self.queued_bytes.set(0);
            self.wake_writer();
        }
    }

    /// Whether everything queued has gone to the socket.
    pub(crate) fn drained(&self) -> bool {
        !self.in_ring.get() && self.queue.borrow().is_empty() && {
            let unsent = self.unsent.take();
            let none = unsent.is_none();
            self.unsent.set(unsent);
            none
        }
    }

    /// Whether nothing waits to be written: a new frame may go to the socket at once.
    pub(crate) fn is_idle(&self) -> bool {
        self.drained()
    }

    /// Entries left the queue with `bytes` bytes.
    pub(crate) fn dequeued(&self, bytes: usize) {
        let left = (self.queued_bytes.get() as usize).saturating_sub(bytes);
        self.queued_bytes.set(left as u32);
    }

    /// How many rooms it is in, its main room included.
    pub fn room_count(&self) -> usize {
        let main = self.room();
        main.is_some() as usize + self.joined.borrow().as_ref().map_or(0, |j| j.len())
    }

    /// Every room it is in, its main room first.
    pub fn rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self.room().iter().map(|r| r.to_string()).collect();
        if let Some(joined) = self.joined.borrow().as_ref() {
            rooms.extend(joined.iter().map(|r| r.to_string()));
        }
        rooms
    }

    /// Whether it is in `room`, as its main room or a joined one.
    pub fn in_room(&self, room: &str) -> bool {
        self.room().as_deref() == Some(room) || self.is_joined(room)
    }

    /// Whether it joined `room` (besides its main room).
    pub fn is_joined(&self, room: &str) -> bool {
        self.joined
            .borrow()
            .as_ref()
            .is_some_and(|j| j.iter().any(|r| &**r == room))
    }

    /// Forgets joined room `room`; true if it was joined.
    pub fn unjoin(&self, room: &str) -> bool {
        let mut joined = self.joined.borrow_mut();
        let Some(list) = joined.as_mut() else {
            return false;
        };
        let Some(i) = list.iter().position(|r| &**r == room) else {
            return false;
        };
        list.swap_remove(i);
        if list.is_empty() {
            *joined = None;
        }
        true
    }

    /// Remembers joined room `room` (the shard's key for it).
    pub fn add_joined(&self, room: Arc<str>) {
        self.joined
            .borrow_mut()
            .get_or_insert_with(Default::default)
            .push(room);
    }

    /// Every joined room (besides the main one), forgotten.
    pub fn take_joined(&self) -> Vec<Arc<str>> {
        self.joined
            .borrow_mut()
            .take()
            .map(|j| *j)
            .unwrap_or_default()
    }

    /// The room this connection is in.
    pub fn room(&self) -> Option<Arc<str>> {
        let room = self.room.take();
        self.room.set(room.clone());
        room
    }

    /// Puts the connection in `room` (the shard's key for it) or none; returns the room it
    /// was in.
    pub fn set_room(&self, room: Option<Arc<str>>) -> Option<Arc<str>> {
        self.room.replace(room)
    }

    /// When this connection expires without another heartbeat, as of `now_ms`; `None` if it
    /// already has.
    pub fn heartbeat_deadline(&self, now_ms: u64) -> Option<u64> {
        heartbeat::deadline(now_ms, self.last_heartbeat.get(), self.heartbeat_ms)
    }

    pub(crate) fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    /// Whether this connection's token lets it into `room` (join it, or read its history).
    pub fn may_enter(&self, room: &str) -> bool {
        let allowed = self.allowed_rooms.take();
        let may = allowed
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room));
        self.allowed_rooms.set(allowed);
        may
    }

    /// Counts one frame from the client against its rate (`rate` per second, `burst` at
    /// once); false when it is over.
    pub fn allow_upstream(&self, rate: u32, burst: u32) -> bool {
        let mut bucket = self.upstream.get();
        let allowed = bucket.allow(rate, burst, now_ms());
        self.upstream.set(bucket);
        allowed
    }
}

/// One op-22 request of a client: what it asked for, and the header to answer with.
pub(crate) struct SyncRequest {
    pub(crate) ver: i16,
    pub(crate) seq: i32,
    pub(crate) body: Bytes,
    /// Empty: the user's inbox.
    pub(crate) room: String,
    pub(crate) after: u64,
}

/// A connection in a set keyed by its id (the shard's id index, a room's members).
#[derive(Clone)]
pub(crate) struct ById(pub Rc<Conn>);

impl Borrow<u64> for ById {
    fn borrow(&self) -> &u64 {
        &self.0.id
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

#[cfg(test)]
impl ById {
    /// A connection with id `id` and no socket, for tests of what holds connections.
    pub fn for_test(id: u64) -> ById {
        ById(Rc::new(Conn {
            id,
            mid: 0,
            key: Rc::from(""),
            peer_ip: None,
            room: Cell::new(None),
            joined: RefCell::new(None),
            allowed_rooms: Cell::new(None),
            expire_at: Cell::new(0),
            watch: Watched::default(),
            delivery: Delivery::new(false, 0),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            awaits_drain: Cell::new(false),
            unsent: Cell::new(None),
            writer: Cell::new(None),
            stream: RefCell::new(ClientStream::Closed),
            rx: RefCell::new(Reassembly::new(false, 4096)),
            upstream: Cell::new(RateLimit::new(1, 0)),
            heartbeat_ms: 1000,
            last_heartbeat: Cell::new(0),
            last_logic_heartbeat: Cell::new(0),
            close: Cell::new(None),
            reading: Cell::new(Reading::Open),
            flush_then_close: Cell::new(None),
            in_ring: Cell::new(false),
            websocket: false,
            room_tags: false,
        }))
    }
}
