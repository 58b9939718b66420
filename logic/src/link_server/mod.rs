//! The cluster-link listener comets talk to: connect, disconnect, heartbeat, online reports,
//! room changes, token refreshes, stored messages and upstream frames.
//!
//! Each connection is read by one task; every request is handled in its own task (requests are
//! pipelined and independent), and the replies, each carrying its request's id, go out through
//! one writer task that coalesces whatever is ready into one write. [`LinkHandler::handle`]
//! hands each message to its own handler, one per message and file:
//!
//! | file | messages |
//! | --- | --- |
//! | `connect.rs` | `Connect` (who the client is: token, connect hook; the session and its limits), `Refresh` (a fresh token, op 30) |
//! | `conns.rs` | `Disconnect`, `Heartbeat`, `RoomsChanged` (a connection's life after connect) |
//! | `online.rs` | `RenewOnline` (the shards' online reports) |
//! | `inbox.rs` | `InboxAck`, `InboxRead` (stored messages) |
//! | `upstream.rs` | `Upstream` (client frames for the business) |

mod connect;
mod conns;
mod inbox;
mod online;
mod upstream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use imgate_bus::{BusMessage, BusProducer, Push};
use imgate_shared::link::{self, Body, CloseConn, ConnRef, Envelope, Failure};
use imgate_store::{StoreError, Stores, UserConn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::auth::{AuthError, Authenticator};
use crate::events::{unix_ms, Event, EventSink};
use crate::hooks::Endpoint;
use crate::online::RoomCounts;
use crate::stats::Counters;

/// Requests one comet connection may have in flight before logic stops reading from it.
const MAX_IN_FLIGHT: usize = 1024;
/// Replies coalesced into one write, at most.
const MAX_WRITE_BATCH: usize = 256 << 10;
/// Bytes of replies one comet connection may have waiting to be written: a comet that stops
/// reading holds at most this much of logic's memory, whatever its requests asked for.
const MAX_QUEUED_REPLY_BYTES: usize = 64 << 20;

/// What the link requests act on.
pub(crate) struct LinkHandler {
    pub stores: Stores,
    pub auth: Arc<dyn Authenticator>,
    pub rooms: RoomCounts,
    pub heartbeat: Duration,
    pub counters: Arc<Counters>,
    /// Most stored messages sent to a connecting client or a SYNC at once.
    pub inbox_limit: usize,
    /// Refuse a key another user's live session holds (signed-token deployments); otherwise
    /// a newer connection takes the key over from anyone, as in goim.
    pub protect_keys: bool,
    /// Carries the closing of replaced connections that live on another comet.
    pub bus: Arc<dyn BusProducer>,
    /// Where client messages (op 4) go.
    pub upstream: Option<UpstreamHook>,
    /// The business decides who connects (`auth.connect_url`).
    pub connect_hook: Option<ConnectHook>,
    /// Signed tokens are configured: a client presenting one is verified as a JWT, not by the
    /// connect hook.
    pub tokens: bool,
    /// Most connections per user (0 = none), and whether the oldest is closed instead.
    pub user_limit: usize,
    pub kick_oldest: bool,
    /// How long after its `exp` a connection is closed as expired (`auth.leeway`).
    pub leeway: Duration,
    /// Connect, disconnect, join and leave events for the business: logic's queue, or the bus
    /// in cluster mode.
    pub events: Option<EventSink>,
    /// The rooms of online reports whose parts are still arriving, by comet and shard.
    pub partial_reports: std::sync::Mutex<HashMap<(String, u32), PartialRooms>>,
}

/// Rooms of an online report as the registry keeps them.
pub(crate) type PartialRooms = std::collections::BTreeMap<std::sync::Arc<str>, u32>;

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// `logic.upstream_url` and its bounds.
pub(crate) struct UpstreamHook {
    pub endpoint: Endpoint,
    pub timeout: Duration,
    pub max_body: usize,
    pub permits: Arc<Semaphore>,
}

/// `auth.connect_url`, its deadline and its bound.
pub(crate) struct ConnectHook {
    pub endpoint: Endpoint,
    pub timeout: Duration,
    /// One per connect waiting for the hook (`auth.connect_concurrency`); none left: the
    /// connect is refused at once as busy.
    pub permits: Arc<Semaphore>,
}

/// Why logic did not serve a link request. The comet gets its text (a refused connect's op 6
/// carries it) and, for the connect hook's failures, a cause to count refusals by.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    /// A request without a field it cannot do without.
    #[error("{message} without {field}")]
    Missing {
        message: &'static str,
        field: &'static str,
    },
    /// The store could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The client is refused: a bad token, a key held by another user, over its limit, the
    /// connect hook answering non-2xx. The text is what the client is told.
    #[error("{0}")]
    Refused(String),
    /// The connect hook could not say (timeout, unreachable, a bad answer, busy).
    #[error("{message}")]
    Hook {
        message: String,
        /// One of [`link::failure_cause`].
        cause: &'static str,
    },
    /// A message comets never send to logic.
    #[error("logic does not accept {0} on its link")]
    Unexpected(&'static str),
    #[error("empty link message")]
    Empty,
}

impl LinkError {
    fn missing(message: &'static str, field: &'static str) -> LinkError {
        LinkError::Missing { message, field }
    }

    /// What failed, as comets count refused connects ([`link::failure_cause`]; empty: refused).
    fn cause(&self) -> &'static str {
        match self {
            LinkError::Hook { cause, .. } => cause,
            LinkError::Store(_) => link::failure_cause::UNAVAILABLE,
            _ => "",
        }
    }
}

impl From<AuthError> for LinkError {
    fn from(e: AuthError) -> Self {
        LinkError::Refused(e.to_string())
    }
}

impl LinkHandler {
    /// Answers one request: each message has its handler; a failure is a [`Failure`] saying why.
    pub(crate) async fn handle(&self, body: Option<Body>) -> Body {
        let answer = match body {
            Some(Body::Connect(req)) => self.connect(req).await,
            Some(Body::Disconnect(req)) => self.disconnect(req).await,
            Some(Body::Heartbeat(req)) => self.heartbeat(req).await,
            Some(Body::RenewOnline(req)) => self.renew_online(req).await,
            Some(Body::Upstream(req)) => Ok(self.upstream(req).await),
            Some(Body::InboxAck(req)) => self.inbox_ack(req).await,
            Some(Body::InboxRead(req)) => self.inbox_read(req).await,
            Some(Body::Refresh(req)) => self.refresh(req).await,
            Some(Body::RoomsChanged(req)) => self.rooms_changed(req).await,
            Some(other) => Err(LinkError::Unexpected(body_name(&other))),
            None => Err(LinkError::Empty),
        };
        answer.unwrap_or_else(|e| {
            Body::Error(Failure {
                cause: e.cause().to_string(),
                message: e.to_string(),
            })
        })
    }

    /// Asks (through job) the comet holding `conn` to close it. A failure is only logged: the
    /// connection no longer owns its key, so nothing pushed by key or user reaches it, and its
    /// next heartbeat cannot re-create its session.
    async fn close_elsewhere(&self, conn: ConnRef) {
        let message = BusMessage::new(Push::Close(CloseConn { conn: Some(conn) }));
        if let Err(e) = self.bus.publish(message).await {
            tracing::warn!(error = %e, "cannot ask another comet to close a replaced connection");
        }
    }

    /// Queues an event for the business, if it wants them; in cluster mode, returns once the
    /// bus has it (the request is answered after, so a logic that dies has taken nothing it
    /// could lose).
    async fn event(&self, event: &'static str, mid: i64, conn: &UserConn, reason: &str) {
        if let Some(events) = &self.events {
            events
                .send(Event {
                    event: event.to_string(),
                    mid,
                    key: conn.key.clone(),
                    comet: conn.conn.comet.clone(),
                    platform: conn.platform.clone(),
                    time: unix_ms(),
                    reason: reason.to_string(),
                    room: String::new(),
                })
                .await;
        }
    }

    /// Queues a join or leave event for the business, if it wants them (as [`Self::event`]).
    async fn room_event(
        &self,
        event: &'static str,
        mid: i64,
        conn: &UserConn,
        reason: &str,
        room: &str,
    ) {
        if let Some(events) = &self.events {
            events
                .send(Event {
                    event: event.to_string(),
                    mid,
                    key: conn.key.clone(),
                    comet: conn.conn.comet.clone(),
                    platform: conn.platform.clone(),
                    time: unix_ms(),
                    reason: reason.to_string(),
                    room: room.to_string(),
                })
                .await;
        }
    }
}

/// What a connection is known as when the store kept nothing else of it.
fn bare_conn(key: &str, conn: &ConnRef) -> UserConn {
    UserConn {
        key: key.to_string(),
        conn: conn.clone(),
        platform: String::new(),
        rooms: Vec::new(),
        connected_ms: 0,
    }
}

fn body_name(body: &Body) -> &'static str {
    match body {
        Body::Connect(_) => "Connect",
        Body::ConnectReply(_) => "ConnectReply",
        Body::Disconnect(_) => "Disconnect",
        Body::Heartbeat(_) => "Heartbeat",
        Body::RenewOnline(_) => "RenewOnline",
        Body::RenewOnlineReply(_) => "RenewOnlineReply",
        Body::Upstream(_) => "Upstream",
        Body::Ok(_) => "Ok",
        Body::Error(_) => "Error",
        Body::PushKeys(_) => "PushKeys",
        Body::PushRoom(_) => "PushRoom",
        Body::Broadcast(_) => "Broadcast",
        Body::InboxAck(_) => "InboxAck",
        Body::InboxRead(_) => "InboxRead",
        Body::InboxMessages(_) => "InboxMessages",
        Body::CloseConn(_) => "CloseConn",
        Body::LinkHello(_) => "LinkHello",
        Body::Load(_) => "Load",
        Body::UpstreamReply(_) => "UpstreamReply",
        Body::Control(_) => "Control",
        Body::RoomsChanged(_) => "RoomsChanged",
        Body::Refresh(_) => "Refresh",
        Body::RefreshReply(_) => "RefreshReply",
    }
}

/// Accepts comet connections until shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    handler: Arc<LinkHandler>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    tracing::debug!(%peer, "comet link connected");
                    tokio::spawn(connection(stream, handler.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    static ACCEPT: imgate_shared::log_limit::RateLimit =
                        imgate_shared::log_limit::RateLimit::per_secs(10);
                    imgate_shared::warn_limited!(ACCEPT, error = %e, "link accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

async fn connection(
    stream: TcpStream,
    handler: Arc<LinkHandler>,
    mut shutdown: watch::Receiver<bool>,
) {
    let peer = stream
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let (mut reader, writer) = stream.into_split();
    let (replies, queued) = mpsc::channel::<Reply>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_replies(writer, queued));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let reply_bytes = Arc::new(Semaphore::new(MAX_QUEUED_REPLY_BYTES));
    // Each report of a connection's rooms carries all of them, so they must be applied in the
    // order they were sent: one task takes them in turn (a connection stays on one link).
    let (in_order, ordered) = mpsc::channel::<(Envelope, OwnedSemaphorePermit)>(MAX_IN_FLIGHT);
    let ordered_task = tokio::spawn(handle_in_order(
        ordered,
        handler.clone(),
        replies.clone(),
        reply_bytes.clone(),
    ));
    let mut buf = BytesMut::with_capacity(8 << 10);
    'read: loop {
        loop {
            match link::decode_frame(&mut buf) {
                Ok(Some(envelope)) => {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break 'read;
                    };
                    if matches!(envelope.body, Some(Body::RoomsChanged(_))) {
                        // Never waits: the channel has room for every permit.
                        let _ = in_order.send((envelope, permit)).await;
                        continue;
                    }
                    let handler = handler.clone();
                    let replies = replies.clone();
                    let reply_bytes = reply_bytes.clone();
                    tokio::spawn(async move {
                        let id = envelope.id;
                        let body = handler.handle(envelope.body).await;
                        send_reply(id, body, &replies, &reply_bytes).await;
                        drop(permit);
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "malformed link frame; closing the link connection");
                    break 'read;
                }
            }
        }
        tokio::select! {
            read = reader.read_buf(&mut buf) => match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "link read failed");
                    break;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    // The writer ends once every in-flight request has replied and dropped its sender.
    drop(in_order);
    let _ = ordered_task.await;
    drop(replies);
    let _ = writer.await;
    tracing::debug!(%peer, "comet link closed");
}

/// Handles the requests that must be applied in the order they came, one after the other.
async fn handle_in_order(
    mut ordered: mpsc::Receiver<(Envelope, OwnedSemaphorePermit)>,
    handler: Arc<LinkHandler>,
    replies: mpsc::Sender<Reply>,
    reply_bytes: Arc<Semaphore>,
) {
    while let Some((envelope, permit)) = ordered.recv().await {
        let body = handler.handle(envelope.body).await;
        send_reply(envelope.id, body, &replies, &reply_bytes).await;
        drop(permit);
    }
}

/// Queues the reply to request `id` for the writer. Waits while the comet has too much
/// unwritten; one reply larger than the whole budget takes all of it.
async fn send_reply(
    id: u64,
    body: Body,
    replies: &mpsc::Sender<Reply>,
    reply_bytes: &Arc<Semaphore>,
) {
    let frame = Envelope::new(id, body).to_frame();
    let cost = frame.len().clamp(1, MAX_QUEUED_REPLY_BYTES) as u32;
    if let Ok(budget) = reply_bytes.clone().acquire_many_owned(cost).await {
        let _ = replies.send((frame, budget)).await;
    }
}

/// A reply frame and its share of the connection's reply-byte budget, given back once written.
type Reply = (Bytes, OwnedSemaphorePermit);

async fn write_replies(mut writer: OwnedWriteHalf, mut queued: mpsc::Receiver<Reply>) {
    let mut batch = BytesMut::new();
    let mut budget = Vec::new();
    while let Some((first, cost)) = queued.recv().await {
        if first.len() >= MAX_WRITE_BATCH {
            // As large as a whole batch (an online report's answer with many rooms): written
            // as it is rather than copied into one.
            if let Err(e) = writer.write_all(&first).await {
                tracing::debug!(error = %e, "link reply write failed");
                return;
            }
            drop((first, cost));
            continue;
        }
        batch.extend_from_slice(&first);
        budget.push(cost);
        while batch.len() < MAX_WRITE_BATCH {
            match queued.try_recv() {
                Ok((next, cost)) => {
                    batch.extend_from_slice(&next);
                    budget.push(cost);
                }
                Err(_) => break,
            }
        }
        if let Err(e) = writer.write_all(&batch).await {
            tracing::debug!(error = %e, "link reply write failed");
            return;
        }
        batch.clear();
        budget.clear();
        if batch.capacity() > 4 * MAX_WRITE_BATCH {
            batch = BytesMut::new();
        }
    }
    let _ = writer.shutdown().await;
}
