//! One client connection (TCP or WebSocket) from accept to close, run as one task: a
//! handshake bounded by a deadline (boxed, so its state is freed once it is done), then one
//! small future that reads and writes through the connection's [`Conn`]. The heartbeat
//! deadline lives on the shard's wheel (`heartbeat.rs`). Idle connections hold no read or
//! write buffer, and all of an idle connection's state is its `Conn`, its map entries, a task
//! of about a hundred bytes and its socket (a descriptor and a token).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures_lite::future::{self, poll_fn};
use futures_lite::AsyncRead;
use imgate_runtime::net::Socket;
use imgate_runtime::spawn_local;
use imgate_runtime::time::sleep;
use imgate_shared::frame::{op, Header};
use imgate_shared::link::{
    Body, ConnRef, Connect, ConnectReply, Disconnect, Heartbeat, InboxAck, InboxRead, Upstream,
};
use imgate_shared::ws::{self, opcode, WsError};

use crate::delivery::Delivery;
use crate::heartbeat::{self, clock_ms, stamp, MAX_HEARTBEAT_MS};
use crate::limits::{now_ms, RateLimit, Refused};
use crate::logic_client::LogicError;
use crate::outbound::{refusal, reply, stored_batches, ws_control};
use crate::reassembly::{Event, Flow, Reassembly};
use crate::shard::{Listen, Shard, SCRATCH_SIZE};
use crate::socket_io::{poll_flush, poll_write, read_with, write_all};
use crate::stats;
use crate::stream::ClientStream;

/// Heartbeat expiry used when logic returns none (goim's 4 min × 2), in milliseconds.
const DEFAULT_HEARTBEAT_MS: u32 = 480_000;
/// What a connection replaced before it started is told.
const REPLACED: &str = "replaced by a newer connection with the same key";
/// How long telling a client why it is refused may take.
const REFUSAL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Most ops one connection may watch; further subscriptions are ignored.
const MAX_WATCHED_OPS: usize = 1024;

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
    /// The client sent frames faster than `upstream_rate` / `upstream_burst`.
    RateLimited,
    /// The TLS handshake failed.
    TlsFailed,
    Shutdown,
}

/// What a push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pushed {
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

/// Op-22 requests one connection may have waiting behind the one being served; more are
/// answered at once with an empty reply and counted.
const MAX_WAITING_SYNCS: usize = 8;

/// One entry of a connection's outgoing queue.
pub(crate) struct Queued {
    bytes: Bytes,
    /// For stored messages of a client that does not ack: the sequences these bytes carry,
    /// reported to logic once they are written.
    report: Option<(u64, u64)>,
}

/// Bytes a full socket did not take (rare, so boxed: idle connections do not carry it).
struct Unsent {
    bytes: Bytes,
    /// The stored sequences these bytes report once completely written.
    report: Vec<(u64, u64)>,
}

/// Where the reading side of a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
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
    /// The room it is in (see [`Conn::room`]).
    room: Cell<Option<Rc<str>>>,
    /// The rooms this connection may change to (its token's `rooms` claim); `None`: any.
    /// Boxed: a thin pointer costs every connection 8 bytes, the list itself is rare.
    #[allow(clippy::box_collection)]
    pub allowed_rooms: Option<Box<Vec<String>>>,
    /// The ops this connection watches (rarely changed, so an exact-size slice).
    watch: RefCell<Box<[i32]>>,
    delivery: Delivery,
    queue: RefCell<VecDeque<Queued>>,
    /// Bytes of the entries in `queue`.
    queued_bytes: Cell<u32>,
    /// A stored-message reader waits (in the shard's `drain_waiters`) for the queue to empty.
    awaits_drain: Cell<bool>,
    unsent: Cell<Option<Box<Unsent>>>,
    writer: Cell<Option<Waker>>,
    stream: RefCell<ClientStream>,
    rx: RefCell<Reassembly>,
    upstream: Cell<RateLimit>,
    /// Heartbeat expiry.
    heartbeat_ms: u32,
    /// [`stamp`]s of the last heartbeat and of the last one passed on to logic.
    last_heartbeat: Cell<u32>,
    last_logic_heartbeat: Cell<u32>,
    close: Cell<Option<CloseReason>>,
    reading: Cell<Reading>,
    flush_then_close: Cell<bool>,
    pub websocket: bool,
}

impl Conn {
    /// Whether key pushes and broadcasts with `op` reach this connection.
    pub fn watches(&self, op: i32) -> bool {
        self.watch.borrow().contains(&op)
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

    /// Queues a live stored push of this connection's user with inbox sequence `seq`, unless
    /// the connection already has it (`None`).
    pub fn push_stored(&self, frame: Bytes, seq: u64, limits: QueueLimits) -> Option<Pushed> {
        if self.close.get().is_some() {
            return Some(Pushed::Closed);
        }
        if !self.delivery.take_push(seq) {
            return None;
        }
        let report = self.delivery.report_for(seq, seq);
        Some(self.push_items(
            std::iter::once(Queued {
                bytes: frame,
                report,
            }),
            limits,
        ))
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
    fn push_items(&self, items: impl Iterator<Item = Queued>, limits: QueueLimits) -> Pushed {
        if self.close.get().is_some() {
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

    /// Whether the connection is closing.
    pub fn is_closing(&self) -> bool {
        self.close.get().is_some()
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
    fn drained(&self) -> bool {
        self.queue.borrow().is_empty() && {
            let unsent = self.unsent.take();
            let none = unsent.is_none();
            self.unsent.set(unsent);
            none
        }
    }

    /// Entries left the queue with `bytes` bytes.
    fn dequeued(&self, bytes: usize) {
        let left = (self.queued_bytes.get() as usize).saturating_sub(bytes);
        self.queued_bytes.set(left as u32);
    }

    /// The room this connection is in.
    pub fn room(&self) -> Option<Rc<str>> {
        let room = self.room.take();
        self.room.set(room.clone());
        room
    }

    /// Puts the connection in `room` (the shard's key for it) or none; returns the room it
    /// was in.
    pub fn set_room(&self, room: Option<Rc<str>>) -> Option<Rc<str>> {
        self.room.replace(room)
    }

    /// When this connection expires without another heartbeat, as of `now_ms`; `None` if it
    /// already has.
    pub fn heartbeat_deadline(&self, now_ms: u64) -> Option<u64> {
        heartbeat::deadline(now_ms, self.last_heartbeat.get(), self.heartbeat_ms)
    }

    fn wake_writer(&self) {
        if let Some(w) = self.writer.take() {
            w.wake();
        }
    }

    fn conn_ref(&self, shard: &Shard) -> Option<ConnRef> {
        Some(ConnRef {
            comet: shard.comet.id.clone(),
            shard: shard.index,
            conn_id: self.id,
        })
    }

    fn subscribe(&self, ops: &[i32]) {
        let mut watch = self.watch.borrow_mut();
        let mut grown = watch.to_vec();
        for op in ops {
            if !grown.contains(op) && grown.len() < MAX_WATCHED_OPS {
                grown.push(*op);
            }
        }
        if grown.len() != watch.len() {
            *watch = grown.into_boxed_slice();
        }
    }

    fn unsubscribe(&self, ops: &[i32]) {
        let mut watch = self.watch.borrow_mut();
        if watch.iter().any(|op| ops.contains(op)) {
            *watch = watch
                .iter()
                .filter(|op| !ops.contains(op))
                .copied()
                .collect();
        }
    }

    /// Whether this connection's token lets it into `room` (join it, or read its history).
    pub fn may_enter(&self, room: &str) -> bool {
        self.allowed_rooms
            .as_ref()
            .is_none_or(|rooms| rooms.iter().any(|r| r == room))
    }

    /// Counts one frame from the client against its rate; false when it is over.
    fn allow_upstream(&self, shard: &Shard) -> bool {
        let config = &shard.comet.config;
        let mut bucket = self.upstream.get();
        let allowed = bucket.allow(config.upstream_rate, config.upstream_burst, now_ms());
        self.upstream.set(bucket);
        allowed
    }
}

/// Parses an OpSub/OpUnsub body: comma-separated decimal int32 ops. Any invalid item voids
/// the whole list (goim).
pub(crate) fn parse_ops(body: &[u8]) -> Option<Vec<i32>> {
    let text = std::str::from_utf8(body).ok()?;
    text.split(',')
        .map(|item| item.trim().parse::<i32>().ok())
        .collect()
}

/// A decimal u64, surrounding ASCII whitespace allowed (no sign).
fn parse_seq(text: &str) -> Option<u64> {
    let text = text.trim_matches(|c: char| c.is_ascii_whitespace());
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// Parses an OpAck body: the decimal seq the client has processed everything up to.
pub(crate) fn parse_ack(body: &[u8]) -> Option<u64> {
    parse_seq(std::str::from_utf8(body).ok()?)
}

/// Parses an OpSync body: `<after>` (the user's inbox, room `""`) or `<room> <after>`.
pub(crate) fn parse_sync(body: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(body)
        .ok()?
        .trim_matches(|c: char| c.is_ascii_whitespace());
    match text.rsplit_once(' ') {
        None => Some(("", parse_seq(text)?)),
        Some((room, after)) => {
            let room = room.trim_matches(|c: char| c.is_ascii_whitespace());
            if room.is_empty() {
                return None;
            }
            Some((room, parse_seq(after)?))
        }
    }
}

struct Authed {
    ver: i16,
    seq: i32,
    reply: ConnectReply,
    /// What is left of the upstream rate after the handshake's frames.
    upstream: RateLimit,
}

/// Serves one accepted client connection (its socket and peer) until it closes. They come
/// boxed so that the task, which lives as long as the connection, does not keep room for them.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    accepted: Box<(Socket, Option<SocketAddr>)>,
    listen: Listen,
) {
    stats::inc(&shard.stats.accepted);
    let accepted_at = Instant::now();
    let _ = accepted.0.set_nodelay();
    // Held until the connection ends: its place under the connection limits.
    let _slot = match shard.comet.limits.admit(accepted.1.map(|p| p.ip())) {
        Ok(slot) => slot,
        Err(refused) => {
            let counter = match refused {
                Refused::Comet => &shard.stats.refused_conn_limit,
                Refused::Ip => &shard.stats.refused_ip_limit,
            };
            stats::inc(counter);
            return;
        }
    };
    // Boxed: the handshake's state is large and short-lived, so it must not size the task
    // that an idle connection keeps for its whole life.
    let Some(conn) = Box::pin(open(&shard, accepted, listen, accepted_at)).await else {
        return;
    };
    let raced = Connected {
        shard: &shard,
        conn: &conn,
    }
    .await;
    let reason = conn.close.get().unwrap_or(raced);
    conn.close(reason);
    // Close the socket now: a task still holding the connection (a sync waiting for logic)
    // must not keep its descriptor open.
    drop(conn.stream.replace(ClientStream::Closed));
    shard.unregister(&conn);
    count_close(&shard, reason);
    shard.logic.notify(Body::Disconnect(Disconnect {
        conn: conn.conn_ref(&shard),
        mid: conn.mid,
        key: conn.key.to_string(),
    }));
}

/// From accept to a registered connection: TLS, the handshake (bounded by the handshake
/// timeout and by shutdown), auth, registration. `None` when the connection ended meanwhile
/// (already counted).
async fn open(
    shard: &Rc<Shard>,
    accepted: Box<(Socket, Option<SocketAddr>)>,
    listen: Listen,
    accepted_at: Instant,
) -> Option<Rc<Conn>> {
    let (stream, peer) = *accepted;
    let websocket = listen.websocket;
    let stream = if listen.tls {
        // Boxed: rustls' handshake state is large; plain connections should not carry it.
        match Box::pin(tls_accept(shard, stream)).await {
            Ok(stream) => stream,
            Err(reason) => {
                count_close(shard, reason);
                return None;
            }
        }
    } else {
        ClientStream::Plain(stream)
    };
    let stream = RefCell::new(stream);
    let conn_id = shard.next_conn_id();
    // From here until the handshake ends, a newer connection's claim of the same key can
    // mark this one replaced (its auth reply may be handled before this one's).
    shard.auth_started(conn_id);
    let config = &shard.comet.config;
    let mut rx = Reassembly::new(websocket, config.max_body);

    let stop = shard.stop.clone();
    // The TLS handshake, if any, spent part of the time allowed.
    let handshake_deadline = config
        .handshake_timeout
        .saturating_sub(accepted_at.elapsed());
    let outcome = future::or(
        future::or(
            handshake(shard, &stream, &mut rx, websocket, conn_id, peer),
            async {
                sleep(handshake_deadline).await;
                Err(CloseReason::HandshakeTimeout)
            },
        ),
        async {
            let _ = stop.recv().await;
            Err(CloseReason::Shutdown)
        },
    )
    .await;
    drop(stop);
    let replaced_meanwhile = shard.auth_ended(conn_id);
    let mut authed = match outcome {
        Ok(authed) => authed,
        Err(reason) => {
            count_close(shard, reason);
            return None;
        }
    };
    if replaced_meanwhile {
        // A newer connection claimed the key after this one did and was registered first:
        // this one lost its session already, so it never starts.
        count_close(shard, CloseReason::Kicked);
        let told = refusal(websocket, authed.ver, authed.seq, REPLACED);
        let _ = future::or(write_all(&stream, &told), async {
            sleep(REFUSAL_WRITE_TIMEOUT).await;
            Ok(())
        })
        .await;
        disconnect_unregistered(shard, conn_id, authed.reply.mid, authed.reply.key);
        return None;
    }
    let replaced = authed.reply.replaced.take();
    let conn = admit(shard, conn_id, websocket, peer, authed, stream, rx)?;
    if conn.mid > 0 {
        spawn_local(catch_up(shard.clone(), conn.clone())).detach();
    }
    if let Some(replaced) = replaced {
        shard.close_replaced(&replaced).await;
    }
    Some(conn)
}

/// Tells logic that a connection it opened a session for never started (its session, if it
/// still names it, goes).
fn disconnect_unregistered(shard: &Shard, conn_id: u64, mid: i64, key: String) {
    shard.logic.notify(Body::Disconnect(Disconnect {
        conn: Some(ConnRef {
            comet: shard.comet.id.clone(),
            shard: shard.index,
            conn_id,
        }),
        mid,
        key,
    }));
}

/// The server side of a TLS handshake, bounded by the handshake timeout and by shutdown.
async fn tls_accept(shard: &Shard, stream: Socket) -> Result<ClientStream, CloseReason> {
    let Some(acceptor) = shard.comet.tls.clone() else {
        return Err(CloseReason::TlsFailed);
    };
    let stop = shard.stop.clone();
    let timeout = shard.comet.config.handshake_timeout;
    future::or(
        future::or(
            async {
                match acceptor.accept(stream).await {
                    Ok(tls) => Ok(ClientStream::Tls(Box::new(tls))),
                    Err(e) => {
                        tracing::debug!("TLS handshake failed: {e}");
                        Err(CloseReason::TlsFailed)
                    }
                }
            },
            async {
                sleep(timeout).await;
                Err(CloseReason::HandshakeTimeout)
            },
        ),
        async {
            let _ = stop.recv().await;
            Err(CloseReason::Shutdown)
        },
    )
    .await
}

/// Turns an authenticated handshake into a registered connection with its auth reply queued.
/// Synchronous, so none of the reply's fields stay in the connection task's state.
fn admit(
    shard: &Shard,
    conn_id: u64,
    websocket: bool,
    peer: Option<SocketAddr>,
    authed: Authed,
    stream: RefCell<ClientStream>,
    rx: Reassembly,
) -> Option<Rc<Conn>> {
    let Authed {
        ver,
        seq,
        reply: mut r,
        upstream,
    } = authed;
    if shard.is_stopping() {
        // Logic opened a session for it; close that too.
        disconnect_unregistered(shard, conn_id, r.mid, r.key);
        return None;
    }
    let heartbeat_ms = match r.heartbeat_ms {
        0 => DEFAULT_HEARTBEAT_MS,
        ms => ms.min(u64::from(MAX_HEARTBEAT_MS)) as u32,
    };
    let now = stamp(clock_ms());
    let conn = Rc::new(Conn {
        id: conn_id,
        mid: r.mid,
        key: Rc::from(r.key),
        peer_ip: peer.map(|p| p.ip()),
        room: Cell::new(None),
        allowed_rooms: r
            .rooms_limited
            .then(|| Box::new(std::mem::take(&mut r.allowed_rooms))),
        watch: RefCell::new(Box::default()),
        delivery: Delivery::new(!r.acks && r.mid > 0, r.inbox_floor),
        queue: RefCell::new(VecDeque::new()),
        queued_bytes: Cell::new(0),
        awaits_drain: Cell::new(false),
        unsent: Cell::new(None),
        writer: Cell::new(None),
        stream,
        rx: RefCell::new(rx),
        upstream: Cell::new(upstream),
        heartbeat_ms,
        last_heartbeat: Cell::new(now),
        last_logic_heartbeat: Cell::new(now),
        close: Cell::new(None),
        reading: Cell::new(Reading::Buffered),
        flush_then_close: Cell::new(false),
        websocket,
    });
    conn.subscribe(&r.accepts);
    shard.register(&conn, &r.room);
    push_reply(
        shard,
        &conn,
        reply(websocket, ver, op::AUTH_REPLY, seq, &[]),
    );
    // The user's unacknowledged stored messages follow the auth reply.
    conn.push_stored_batches(
        stored_batches(websocket, &r.backlog, SCRATCH_SIZE),
        true,
        shard.queue_limits(),
    );
    Some(conn)
}

fn count_close(shard: &Shard, reason: CloseReason) {
    let s = &shard.stats;
    match reason {
        CloseReason::Malformed => stats::inc(&s.closed_malformed),
        CloseReason::HandshakeTimeout => stats::inc(&s.handshake_timeouts),
        CloseReason::AuthFailed => stats::inc(&s.auth_failed),
        CloseReason::HeartbeatExpired => stats::inc(&s.heartbeat_expired),
        CloseReason::Slow => stats::inc(&s.closed_slow),
        CloseReason::Kicked => stats::inc(&s.kicked_duplicate),
        CloseReason::RateLimited => stats::inc(&s.closed_rate_limited),
        CloseReason::TlsFailed => stats::inc(&s.tls_failed),
        CloseReason::Quiet | CloseReason::Io | CloseReason::Shutdown => {}
    }
}

fn push_reply(shard: &Shard, conn: &Conn, frame: Bytes) {
    conn.push(frame, shard.queue_limits());
}

/// What the handshake saw in one batch of frames.
struct HandshakeFrames {
    auth: Option<(i16, i32, Bytes)>,
    control: Vec<Bytes>,
    closing: bool,
    /// Frames before auth count against the upstream rate too.
    upstream: RateLimit,
    rate: (u32, u32),
    over_rate: bool,
}

impl HandshakeFrames {
    fn new(shard: &Shard) -> Self {
        let config = &shard.comet.config;
        HandshakeFrames {
            auth: None,
            control: Vec::new(),
            closing: false,
            upstream: RateLimit::new(config.upstream_burst, now_ms()),
            rate: (config.upstream_rate, config.upstream_burst),
            over_rate: false,
        }
    }

    fn on_event(&mut self, event: Event<'_>) -> Flow {
        let (rate, burst) = self.rate;
        if !self.upstream.allow(rate, burst, now_ms()) {
            self.over_rate = true;
            return Flow::Stop;
        }
        match event {
            Event::Frame(h, body) if h.op == op::AUTH => {
                self.auth = Some((h.ver, h.seq, Bytes::copy_from_slice(body)));
                Flow::Stop
            }
            // goim ignores anything else before auth; only the deadline bounds it.
            Event::Frame(..) => Flow::Continue,
            Event::Ping(payload) => {
                self.control.push(ws_control(opcode::PONG, payload));
                Flow::Continue
            }
            Event::Close(payload) => {
                self.control
                    .push(ws_control(opcode::CLOSE, payload.get(..2).unwrap_or(&[])));
                self.closing = true;
                Flow::Stop
            }
            Event::Partial => Flow::Continue,
        }
    }
}

async fn handshake(
    shard: &Shard,
    stream: &RefCell<ClientStream>,
    rx: &mut Reassembly,
    websocket: bool,
    conn_id: u64,
    peer: Option<SocketAddr>,
) -> Result<Authed, CloseReason> {
    let config = &shard.comet.config;
    let mut cookie = String::new();
    if websocket {
        let mut head = BytesMut::new();
        let upgrade = loop {
            let parsed = read_with(stream, &shard.read_scratch, |data| {
                head.extend_from_slice(data);
                ws::parse_upgrade(&head, config.ws_max_header)
            })
            .await;
            match parsed {
                Ok(Some(Ok(Some(upgrade)))) => break upgrade,
                Ok(Some(Ok(None))) => continue,
                Ok(Some(Err(e))) => {
                    let status = match e {
                        WsError::NotFound(_) => "404 Not Found",
                        _ => "400 Bad Request",
                    };
                    let response = ws::error_response(status, &e.to_string());
                    let _ = write_all(stream, response.as_bytes()).await;
                    return Err(CloseReason::Malformed);
                }
                Ok(None) => return Err(CloseReason::Quiet),
                Err(_) => return Err(CloseReason::Io),
            }
        };
        rx.preload(&head[upgrade.consumed..]);
        write_all(stream, ws::upgrade_response(&upgrade.key).as_bytes())
            .await
            .map_err(|_| CloseReason::Io)?;
        cookie = upgrade.cookie.unwrap_or_default();
    }

    let mut seen = HandshakeFrames::new(shard);
    let mut fed = rx.feed(&mut [], &mut |e| seen.on_event(e));
    loop {
        if fed.is_err() {
            return Err(CloseReason::Malformed);
        }
        if seen.over_rate {
            return Err(CloseReason::RateLimited);
        }
        for frame in seen.control.drain(..) {
            write_all(stream, &frame)
                .await
                .map_err(|_| CloseReason::Io)?;
        }
        if seen.closing {
            return Err(CloseReason::Quiet);
        }
        if seen.auth.is_some() {
            break;
        }
        fed = match read_with(stream, &shard.read_scratch, |data| {
            rx.feed(data, &mut |e| seen.on_event(e))
        })
        .await
        {
            Ok(Some(result)) => result,
            Ok(None) => return Err(CloseReason::Quiet),
            Err(_) => return Err(CloseReason::Io),
        };
    }
    let Some((ver, seq, token)) = seen.auth else {
        return Err(CloseReason::Malformed);
    };

    let request = Body::Connect(Connect {
        conn: Some(ConnRef {
            comet: shard.comet.id.clone(),
            shard: shard.index,
            conn_id,
        }),
        token,
        cookie,
        remote_addr: peer.map(|p| p.to_string()).unwrap_or_default(),
    });
    let upstream = seen.upstream;
    let reason = match shard.logic.request(request, config.logic_timeout).await {
        Ok(Body::ConnectReply(reply)) => {
            return Ok(Authed {
                ver,
                seq,
                reply,
                upstream,
            })
        }
        Ok(_) => {
            tracing::warn!("logic answered Connect with an unexpected message");
            "auth could not be checked".to_string()
        }
        Err(LogicError::Refused(reason)) => {
            tracing::debug!(conn_id, "auth refused: {reason}");
            reason
        }
        Err(e) => {
            tracing::debug!(conn_id, "auth failed: {e}");
            "auth could not be checked: logic is unavailable".to_string()
        }
    };
    // Tell the client why before closing (bounded by the handshake deadline like the rest).
    let _ = write_all(stream, &refusal(websocket, ver, seq, &reason)).await;
    Err(CloseReason::AuthFailed)
}

/// An authenticated connection at work: reads client frames and answers them through the
/// queue, and writes what is queued. Ends with why the connection should close. Holds only
/// references, so an idle connection's task stays small; its state is in the [`Conn`].
struct Connected<'a> {
    shard: &'a Rc<Shard>,
    conn: &'a Rc<Conn>,
}

impl Future for Connected<'_> {
    type Output = CloseReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        if let Poll::Ready(reason) = poll_read_side(self.shard, self.conn, cx) {
            return Poll::Ready(reason);
        }
        poll_write_side(self.shard, self.conn, cx)
    }
}

/// Reads client frames until the socket has nothing more (pending) or the connection should
/// end. Each read goes into the shard's scratch buffer and is handed to the reassembly inside
/// the same poll.
fn poll_read_side(shard: &Rc<Shard>, conn: &Rc<Conn>, cx: &mut Context<'_>) -> Poll<CloseReason> {
    loop {
        let fed = match conn.reading.get() {
            Reading::Closed => return Poll::Pending,
            Reading::Buffered => {
                // Frames that arrived together with the auth frame.
                conn.reading.set(Reading::Open);
                conn.rx
                    .borrow_mut()
                    .feed(&mut [], &mut |e| on_event(shard, conn, e))
            }
            Reading::Open => {
                let mut buf = shard.read_scratch.borrow_mut();
                let polled = Pin::new(&mut *conn.stream.borrow_mut()).poll_read(cx, &mut buf[..]);
                match polled {
                    Poll::Ready(Ok(0)) => return Poll::Ready(CloseReason::Quiet),
                    Poll::Ready(Ok(n)) => conn
                        .rx
                        .borrow_mut()
                        .feed(&mut buf[..n], &mut |e| on_event(shard, conn, e)),
                    Poll::Ready(Err(_)) => return Poll::Ready(CloseReason::Io),
                    Poll::Pending => return Poll::Pending,
                }
            }
        };
        match fed {
            Err(e) => {
                tracing::debug!(conn_id = conn.id, "malformed client data: {}", e.0);
                return Poll::Ready(CloseReason::Malformed);
            }
            Ok(Flow::Stop) if conn.close.get().is_some() => {
                // Closed while reading (over its rate).
                return Poll::Ready(conn.close.get().unwrap_or(CloseReason::Malformed));
            }
            Ok(Flow::Stop) => {
                // A WebSocket close: the writer sends the answer, then the connection ends.
                conn.reading.set(Reading::Closed);
                conn.flush_then_close.set(true);
                conn.wake_writer();
                return Poll::Pending;
            }
            Ok(Flow::Continue) => {}
        }
    }
}

fn on_event(shard: &Rc<Shard>, conn: &Rc<Conn>, event: Event<'_>) -> Flow {
    if !conn.allow_upstream(shard) {
        conn.close(CloseReason::RateLimited);
        return Flow::Stop;
    }
    match event {
        Event::Frame(header, body) => {
            if let Some(answer) = on_frame(shard, conn, header, body) {
                push_reply(shard, conn, answer);
            }
            Flow::Continue
        }
        Event::Ping(payload) => {
            push_reply(shard, conn, ws_control(opcode::PONG, payload));
            Flow::Continue
        }
        Event::Close(payload) => {
            let code = payload.get(..2).unwrap_or(&[]);
            push_reply(shard, conn, ws_control(opcode::CLOSE, code));
            Flow::Stop
        }
        Event::Partial => Flow::Continue,
    }
}

/// Handles one client frame; returns the reply to queue now (a SYNC queues its own later).
fn on_frame(shard: &Rc<Shard>, conn: &Rc<Conn>, h: Header, body: &[u8]) -> Option<Bytes> {
    let ws = conn.websocket;
    let answer = match h.op {
        op::HEARTBEAT => {
            let now = stamp(clock_ms());
            conn.last_heartbeat.set(now);
            if now.wrapping_sub(conn.last_logic_heartbeat.get()) >= conn.heartbeat_ms {
                conn.last_logic_heartbeat.set(now);
                shard.logic.notify(Body::Heartbeat(Heartbeat {
                    conn: conn.conn_ref(shard),
                    mid: conn.mid,
                    key: conn.key.to_string(),
                }));
            }
            let online = conn
                .room()
                .as_deref()
                .map_or(0, |room| shard.room_online(room));
            let online = online.min(i32::MAX as u32) as i32;
            reply(ws, h.ver, op::HEARTBEAT_REPLY, h.seq, &online.to_be_bytes())
        }
        op::CHANGE_ROOM => {
            let room = String::from_utf8_lossy(body);
            if !room.is_empty() && !conn.may_enter(&room) {
                // Refused: the connection stays where it is; the empty reply says so.
                stats::inc(&shard.stats.room_refused);
                return Some(reply(ws, h.ver, op::CHANGE_ROOM_REPLY, h.seq, &[]));
            }
            shard.change_room(conn, &room);
            reply(ws, h.ver, op::CHANGE_ROOM_REPLY, h.seq, body)
        }
        op::SUB => {
            if let Some(ops) = parse_ops(body) {
                conn.subscribe(&ops);
            }
            reply(ws, h.ver, op::SUB_REPLY, h.seq, body)
        }
        op::UNSUB => {
            if let Some(ops) = parse_ops(body) {
                conn.unsubscribe(&ops);
            }
            reply(ws, h.ver, op::UNSUB_REPLY, h.seq, body)
        }
        op::ACK => {
            // A body that is not a decimal seq is answered but acknowledges nothing.
            if let Some(seq) = parse_ack(body).filter(|_| conn.mid > 0) {
                shard.logic.notify(Body::InboxAck(InboxAck {
                    conn: conn.conn_ref(shard),
                    mid: conn.mid,
                    seq,
                }));
            }
            reply(ws, h.ver, op::ACK_REPLY, h.seq, body)
        }
        op::SYNC => match parse_sync(body) {
            None => reply(ws, h.ver, op::SYNC_REPLY, h.seq, &[]),
            // No user, no inbox: nothing to resend.
            Some(("", _)) if conn.mid <= 0 => reply(ws, h.ver, op::SYNC_REPLY, h.seq, body),
            // A room's history is read under the same rule as entering the room.
            Some((room, _)) if !room.is_empty() && !conn.may_enter(room) => {
                stats::inc(&shard.stats.room_refused);
                reply(ws, h.ver, op::SYNC_REPLY, h.seq, &[])
            }
            Some((room, after)) => {
                let request = SyncRequest {
                    ver: h.ver,
                    seq: h.seq,
                    body: Bytes::copy_from_slice(body),
                    room: room.to_string(),
                    after,
                };
                match shard.enqueue_sync(conn.id, request, MAX_WAITING_SYNCS) {
                    Ok(Some(first)) => {
                        spawn_local(serve_syncs(shard.clone(), conn.clone(), first)).detach();
                    }
                    Ok(None) => {}
                    Err(_) => {
                        // Too many waiting: the client asks faster than it takes answers in.
                        stats::inc(&shard.stats.sync_refused);
                        return Some(reply(ws, h.ver, op::SYNC_REPLY, h.seq, &[]));
                    }
                }
                return None;
            }
        },
        other => {
            shard.logic.notify(Body::Upstream(Upstream {
                conn: conn.conn_ref(shard),
                mid: conn.mid,
                key: conn.key.to_string(),
                op: other,
                seq: h.seq,
                body: Bytes::copy_from_slice(body),
            }));
            reply(ws, h.ver, other, h.seq, &[])
        }
    };
    Some(answer)
}

/// One op-22 request of a client: what it asked for, and the header to answer with.
pub(crate) struct SyncRequest {
    ver: i16,
    seq: i32,
    body: Bytes,
    /// Empty: the user's inbox.
    room: String,
    after: u64,
}

/// Serves a connection's op-22 requests one after another, starting with `first`, until none
/// waits. Each runs beside the reader, so later frames of the client are served meanwhile.
async fn serve_syncs(shard: Rc<Shard>, conn: Rc<Conn>, first: SyncRequest) {
    let mut next = Some(first);
    while let Some(request) = next {
        if conn.close.get().is_some() {
            break;
        }
        serve_sync(&shard, &conn, request).await;
        next = shard.next_sync(conn.id);
    }
    // Whatever still waits is dropped with the connection.
    while shard.next_sync(conn.id).is_some() {}
}

/// Answers one SYNC: the stored messages after `after`, a page at a time, each page read from
/// logic only once the client has taken the previous one in; then the op-23 reply echoing the
/// request (empty when logic failed). A client that never reads holds one page.
async fn serve_sync(shard: &Rc<Shard>, conn: &Rc<Conn>, request: SyncRequest) {
    let SyncRequest {
        ver,
        seq,
        body,
        room,
        after,
    } = request;
    let inbox = room.is_empty();
    let served = read_stored(shard, conn, room, after, |page| {
        let batches = stored_batches(conn.websocket, page, SCRATCH_SIZE);
        conn.push_stored_batches(batches, inbox, shard.queue_limits());
    })
    .await;
    let echoed: &[u8] = if served { &body } else { &[] };
    push_reply(
        shard,
        conn,
        reply(conn.websocket, ver, op::SYNC_REPLY, seq, echoed),
    );
}

/// Reads stored messages after `after` (the user's inbox when `room` is empty) from logic, a
/// page at a time, handing each page to `queue` and waiting for the connection's queue to
/// drain before asking for the next. False when logic failed or the connection closed.
async fn read_stored(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    room: String,
    mut after: u64,
    mut queue: impl FnMut(&[imgate_shared::link::Stored]),
) -> bool {
    let config = &shard.comet.config;
    loop {
        let request = InboxRead {
            conn: conn.conn_ref(shard),
            mid: conn.mid,
            room: room.clone(),
            after,
            max_bytes: imgate_shared::link::STORED_PAGE_BYTES,
        };
        let found = match shard
            .logic
            .request(Body::InboxRead(request), config.logic_timeout)
            .await
        {
            Ok(Body::InboxMessages(found)) => found,
            Ok(_) => {
                tracing::warn!("logic answered InboxRead with an unexpected message");
                return false;
            }
            Err(e) => {
                tracing::debug!(conn_id = conn.id, "reading stored messages failed: {e}");
                return false;
            }
        };
        let Some(last) = found.messages.last().map(|m| m.seq) else {
            return true;
        };
        queue(&found.messages);
        // A log that started again (it expired) answers from its start, below `after`; the
        // next page then follows on from this one.
        if !found.more || last == after {
            return true;
        }
        after = last;
        if !queue_drained(shard, conn).await {
            return false;
        }
    }
}

/// Waits until everything queued to `conn` went to its socket; false if it closed first.
async fn queue_drained(shard: &Shard, conn: &Conn) -> bool {
    poll_fn(|cx| {
        if conn.close.get().is_some() {
            return Poll::Ready(false);
        }
        if conn.drained() {
            return Poll::Ready(true);
        }
        conn.awaits_drain.set(true);
        shard.wait_for_drain(conn.id, cx.waker());
        Poll::Pending
    })
    .await
}

/// Closes the connect race. logic read this connection's backlog (one page) before the shard
/// registered the connection; a push stored in between and routed here live before the
/// registration found no connection. Now that the connection is registered, read on from what
/// the connection has, a page at a time, and queue only what is new (a message that also
/// arrived live is not sent twice).
async fn catch_up(shard: Rc<Shard>, conn: Rc<Conn>) {
    let after = conn.delivery.queued_floor();
    read_stored(&shard, &conn, String::new(), after, |page| {
        // One batch per message: what is left after dropping the known ones may have gaps,
        // and a batch stands for a consecutive run.
        for m in page.iter().filter(|m| conn.delivery.is_new(m.seq)) {
            let batches = stored_batches(conn.websocket, std::slice::from_ref(m), SCRATCH_SIZE);
            conn.push_stored_batches(batches, true, shard.queue_limits());
        }
    })
    .await;
}

/// Moves queued entries into `scratch` until the next one would pass `limit` (at least one
/// entry is taken). Returns the stored sequences the taken entries report.
fn fill_batch(
    queue: &mut VecDeque<Queued>,
    scratch: &mut Vec<u8>,
    limit: usize,
) -> Vec<(u64, u64)> {
    let mut report = Vec::new();
    while let Some(front) = queue.front() {
        if !scratch.is_empty() && scratch.len() + front.bytes.len() > limit {
            break;
        }
        scratch.extend_from_slice(&front.bytes);
        report.extend(front.report);
        queue.pop_front();
    }
    report
}

/// Bytes carrying these stored sequences reached the socket: tell logic how far the written
/// messages now go without a gap (one notice per completed write at most).
fn written(shard: &Shard, conn: &Conn, report: &[(u64, u64)]) {
    if report.is_empty() {
        return;
    }
    if let Some(seq) = conn.delivery.written(report) {
        shard.logic.notify(Body::InboxAck(InboxAck {
            conn: conn.conn_ref(shard),
            mid: conn.mid,
            seq,
        }));
    }
}

/// Drains the queue, coalescing queued frames into one write through the shard's scratch
/// buffer. Only bytes a full socket did not take are copied into a connection-owned buffer,
/// and a drained queue gives its buffer back, so an idle connection holds none.
fn poll_write_side(shard: &Shard, conn: &Conn, cx: &mut Context<'_>) -> Poll<CloseReason> {
    let stream = &conn.stream;
    loop {
        if let Some(reason) = conn.close.get() {
            return Poll::Ready(reason);
        }
        if let Some(mut pending) = conn.unsent.take() {
            match poll_write(stream, cx, &pending.bytes) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(CloseReason::Io),
                Poll::Ready(Ok(n)) => {
                    pending.bytes.advance(n);
                    if pending.bytes.is_empty() {
                        written(shard, conn, &pending.report);
                    } else {
                        conn.unsent.set(Some(pending));
                    }
                    continue;
                }
                Poll::Pending => {
                    conn.unsent.set(Some(pending));
                    register(&conn.writer, cx.waker());
                    return Poll::Pending;
                }
            }
        }
        let mut queue = conn.queue.borrow_mut();
        match queue.len() {
            0 => {
                if queue.capacity() > 0 {
                    *queue = VecDeque::new();
                }
                drop(queue);
                if conn.awaits_drain.take() {
                    shard.drained(conn.id);
                }
                match poll_flush(stream, cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => return Poll::Ready(CloseReason::Io),
                    Poll::Pending => {
                        register(&conn.writer, cx.waker());
                        return Poll::Pending;
                    }
                }
                if conn.flush_then_close.get() {
                    return Poll::Ready(CloseReason::Quiet);
                }
                register(&conn.writer, cx.waker());
                return Poll::Pending;
            }
            1 => {
                let Some(item) = queue.pop_front() else {
                    continue;
                };
                drop(queue);
                conn.dequeued(item.bytes.len());
                let Queued { mut bytes, report } = item;
                match poll_write(stream, cx, &bytes) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(CloseReason::Io)
                    }
                    Poll::Ready(Ok(n)) if n == bytes.len() => {
                        written(shard, conn, report.as_slice());
                    }
                    Poll::Ready(Ok(n)) => {
                        bytes.advance(n);
                        conn.unsent.set(Some(Box::new(Unsent {
                            bytes,
                            report: report.into_iter().collect(),
                        })));
                    }
                    Poll::Pending => {
                        conn.unsent.set(Some(Box::new(Unsent {
                            bytes,
                            report: report.into_iter().collect(),
                        })));
                        register(&conn.writer, cx.waker());
                        return Poll::Pending;
                    }
                }
            }
            _ => {
                let mut scratch = shard.write_scratch.borrow_mut();
                scratch.clear();
                let report = fill_batch(&mut queue, &mut scratch, SCRATCH_SIZE);
                drop(queue);
                conn.dequeued(scratch.len());
                match poll_write(stream, cx, &scratch) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(CloseReason::Io)
                    }
                    Poll::Ready(Ok(n)) if n == scratch.len() => written(shard, conn, &report),
                    Poll::Ready(Ok(n)) => {
                        conn.unsent.set(Some(Box::new(Unsent {
                            bytes: Bytes::copy_from_slice(&scratch[n..]),
                            report,
                        })));
                    }
                    Poll::Pending => {
                        conn.unsent.set(Some(Box::new(Unsent {
                            bytes: Bytes::copy_from_slice(&scratch),
                            report,
                        })));
                        register(&conn.writer, cx.waker());
                        return Poll::Pending;
                    }
                }
                if scratch.capacity() > SCRATCH_SIZE * 2 {
                    *scratch = Vec::with_capacity(SCRATCH_SIZE);
                }
            }
        }
    }
}

fn register(slot: &Cell<Option<Waker>>, waker: &Waker) {
    let kept = match slot.take() {
        Some(w) if w.will_wake(waker) => w,
        _ => waker.clone(),
    };
    slot.set(Some(kept));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    #[test]
    fn op_lists() {
        assert_eq!(parse_ops(b"1000,1001"), Some(vec![1000, 1001]));
        assert_eq!(parse_ops(b"-5"), Some(vec![-5]));
        assert_eq!(parse_ops(b"1000,x"), None);
        assert_eq!(parse_ops(b""), None);
        assert_eq!(parse_ops(b"2147483648"), None);
        assert_eq!(parse_ops(&[0xff]), None);
    }

    #[test]
    fn ack_and_sync_bodies() {
        assert_eq!(parse_ack(b"42"), Some(42));
        assert_eq!(parse_ack(b" 7\n"), Some(7));
        assert_eq!(parse_ack(b"0"), Some(0));
        assert_eq!(parse_ack(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b"18446744073709551616",
            b"-1",
            b"+1",
            b"1 2",
            b"x",
            &[0xff],
        ] {
            assert_eq!(parse_ack(bad), None, "{bad:?}");
        }
        assert_eq!(parse_sync(b"5"), Some(("", 5)));
        assert_eq!(parse_sync(b"live://1 12"), Some(("live://1", 12)));
        assert_eq!(parse_sync(b" live://1  0 "), Some(("live://1", 0)));
        assert_eq!(parse_sync(b"my room 3"), Some(("my room", 3)));
        for bad in [
            &b""[..],
            b"room",
            b"room x",
            b" 5x",
            b"room -1",
            &[0xff, b' ', b'1'],
        ] {
            assert_eq!(parse_sync(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_batch_reports_the_sequences_of_the_entries_it_took() {
        let item = |len: usize, report: Option<(u64, u64)>| Queued {
            bytes: Bytes::from(vec![0u8; len]),
            report,
        };
        let mut queue: VecDeque<Queued> = [
            item(10, None),
            item(10, Some((4, 4))),
            item(10, None),
            item(10, Some((5, 7))),
            item(10, None),
        ]
        .into();
        let mut scratch = Vec::new();
        // Only the entries that fit are taken, and only their sequences count.
        assert_eq!(fill_batch(&mut queue, &mut scratch, 25), vec![(4, 4)]);
        assert_eq!((scratch.len(), queue.len()), (20, 3));
        scratch.clear();
        assert_eq!(fill_batch(&mut queue, &mut scratch, 100), vec![(5, 7)]);
        assert!(queue.is_empty());
        // One oversized entry is still taken alone.
        let mut queue: VecDeque<Queued> = [item(50, Some((2, 2))), item(1, Some((3, 3)))].into();
        scratch.clear();
        assert_eq!(fill_batch(&mut queue, &mut scratch, 25), vec![(2, 2)]);
        assert_eq!(queue.len(), 1);
    }

    /// Per-connection state budget: the connection task's future (everything an idle
    /// connection's task owns besides its `Conn`) and the `Conn` (all the rest of its state
    /// but its map entries and its socket's epoll slot).
    #[test]
    fn connection_state_is_small() {
        imgate_runtime::Runtime::new().unwrap().block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_nonblocking(true).unwrap();
            let shard = Shard::detached(Default::default());
            let socket = Socket::new(OwnedFd::from(stream)).unwrap();
            let task = serve(shard, Box::new((socket, Some(addr))), Listen::WS);
            let future = std::mem::size_of_val(&task);
            let conn = std::mem::size_of::<Conn>();
            println!(
                "connection future {future} bytes, Conn {conn} bytes, Socket {}, Reassembly {}",
                std::mem::size_of::<Socket>(),
                std::mem::size_of::<Reassembly>()
            );
            assert!(future <= 96, "future {future}");
            // With its two reference counts, a `Conn` fills mimalloc's 448-byte class.
            assert!(conn + 16 <= 448, "conn {conn}");
        });
    }
}
