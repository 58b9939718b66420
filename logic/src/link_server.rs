//! The cluster-link listener comets talk to: connect, disconnect, heartbeat, online reports and
//! upstream frames.
//!
//! Each connection is read by one task; every request is handled in its own task (requests are
//! pipelined and independent), and the replies, each carrying its request's id, go out through
//! one writer task that coalesces whatever is ready into one write.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use imgate_bus::{BusMessage, BusProducer, Push};
use imgate_shared::link::{
    self, Body, CloseConn, ConnRef, ConnectReply, Empty, Envelope, Failure, InboxMessages,
    RenewOnlineReply, Stored,
};
use imgate_store::{Claim, KeyPolicy, OnlineReport, Session, StoredMessage, Stores};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::auth::Authenticator;
use crate::online::RoomCounts;
use crate::stats::Counters;

/// Requests one comet connection may have in flight before logic stops reading from it.
const MAX_IN_FLIGHT: usize = 1024;
/// Replies coalesced into one write, at most.
const MAX_WRITE_BATCH: usize = 256 << 10;
/// Bytes of replies one comet connection may have waiting to be written: a comet that stops
/// reading holds at most this much of logic's memory, whatever its requests asked for.
const MAX_QUEUED_REPLY_BYTES: usize = 64 << 20;
/// Body bytes of stored messages in one answer, whatever a comet asks for: well inside a link
/// frame however the inbox and history limits are set (`more` says where to go on from).
const MAX_STORED_BYTES: u32 = 4 << 20;

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
}

impl LinkHandler {
    /// Asks (through job) the comet holding `conn` to close it. A failure is only logged: the
    /// connection no longer owns its key, so nothing pushed by key or user reaches it, and its
    /// next heartbeat cannot re-create its session.
    async fn close_elsewhere(&self, conn: ConnRef) {
        let message = BusMessage::new(Push::Close(CloseConn { conn: Some(conn) }));
        if let Err(e) = self.bus.publish(message).await {
            tracing::warn!(error = %e, "cannot ask another comet to close a replaced connection");
        }
    }

    /// Answers one request.
    pub(crate) async fn handle(&self, body: Option<Body>) -> Body {
        match self.dispatch(body).await {
            Ok(body) => body,
            Err(message) => Body::Error(Failure { message }),
        }
    }

    async fn dispatch(&self, body: Option<Body>) -> Result<Body, String> {
        match body {
            Some(Body::Connect(req)) => {
                let conn = req.conn.ok_or("connect without conn")?;
                let identity = self
                    .auth
                    .authenticate(&req.token, &req.cookie)
                    .map_err(|e| e.to_string())?;
                let key = identity
                    .key
                    .filter(|k| !k.is_empty())
                    .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                let session = Session {
                    mid: identity.mid,
                    key,
                    conn,
                };
                let policy = if self.protect_keys {
                    KeyPolicy::SameUser
                } else {
                    KeyPolicy::AnyUser
                };
                let replaced = match self
                    .stores
                    .sessions
                    .claim_session(&session, policy)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Claim::Claimed { replaced } => replaced,
                    Claim::Refused { .. } => {
                        return Err(format!(
                            "connection key {:?} is held by another user's connection",
                            session.key
                        ));
                    }
                };
                if let Some(old) = replaced
                    .as_ref()
                    .filter(|r| r.conn.comet != session.conn.comet)
                {
                    // The connecting comet closes a replaced connection of its own; one on
                    // another comet is closed through the bus.
                    self.close_elsewhere(old.conn.clone()).await;
                }
                // Read the inbox only after the session exists: a push stored meanwhile is
                // either in this backlog or routed to the new session (or both: comet drops
                // the second copy by its sequence), never neither.
                let (backlog, inbox_floor) = if session.mid > 0 {
                    let state = self
                        .stores
                        .messages
                        .inbox_state(session.mid)
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut backlog: Vec<Stored> = self
                        .stores
                        .messages
                        .inbox_read(
                            session.mid,
                            state.acked_seq,
                            self.inbox_limit.min(link::STORED_PAGE_MESSAGES),
                        )
                        .await
                        .map_err(|e| e.to_string())?
                        .into_iter()
                        .map(stored)
                        .collect();
                    // One page at most: comet reads the rest as the client takes it in.
                    link::cut_to_page(&mut backlog, link::STORED_PAGE_BYTES);
                    // Below the backlog (or, with none, up to the last sequence) nothing more
                    // will come from the store.
                    let floor = backlog.first().map_or(state.last_seq, |m| m.seq - 1);
                    (backlog, floor)
                } else {
                    (Vec::new(), 0)
                };
                tracing::debug!(mid = session.mid, key = %session.key, remote = %req.remote_addr, "connect");
                Ok(Body::ConnectReply(ConnectReply {
                    mid: session.mid,
                    key: session.key,
                    room: identity.room,
                    accepts: identity.accepts,
                    heartbeat_ms: self.heartbeat.as_millis() as u64,
                    acks: identity.acks,
                    room_tags: identity.room_tags,
                    backlog,
                    inbox_floor,
                    rooms_limited: identity.allowed_rooms.is_some(),
                    allowed_rooms: identity.allowed_rooms.unwrap_or_default(),
                    replaced: replaced.map(|s| s.conn),
                }))
            }
            Some(Body::Disconnect(req)) => {
                let conn = req.conn.ok_or("disconnect without conn")?;
                let removed = self
                    .stores
                    .sessions
                    .remove_session(req.mid, &req.key, &conn)
                    .await
                    .map_err(|e| e.to_string())?;
                tracing::debug!(mid = req.mid, key = %req.key, removed, "disconnect");
                Ok(Body::Ok(Empty {}))
            }
            Some(Body::Heartbeat(req)) => {
                let conn = req.conn.ok_or("heartbeat without conn")?;
                let session = Session {
                    mid: req.mid,
                    key: req.key,
                    conn,
                };
                self.stores
                    .sessions
                    .refresh_session(&session)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Body::Ok(Empty {}))
            }
            Some(Body::RenewOnline(req)) => {
                let comet = req.comet.ok_or("renew_online without comet")?;
                let cached = self.rooms.snapshot();
                // The cache lags the report just received; the cluster holds at least what this
                // shard reports.
                let rooms = req
                    .rooms
                    .iter()
                    .map(|(room, &here)| {
                        let total = cached.get(room).copied().unwrap_or(0);
                        let total = u32::try_from(total).unwrap_or(u32::MAX).max(here);
                        (room.clone(), total)
                    })
                    .collect();
                self.stores
                    .registry
                    .report_online(OnlineReport {
                        comet,
                        shard: req.shard,
                        conn_count: req.conn_count,
                        ip_count: req.ip_count,
                        rooms: req.rooms,
                        lag_us: req.lag_us,
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(Body::RenewOnlineReply(RenewOnlineReply { rooms }))
            }
            Some(Body::Upstream(req)) => {
                self.counters.upstream_frames.inc();
                tracing::debug!(mid = req.mid, key = %req.key, op = req.op, seq = req.seq, len = req.body.len(), "upstream frame");
                if req.op == imgate_shared::frame::op::SEND_MSG {
                    // No business endpoint yet: the client is answered, with nothing.
                    return Ok(Body::UpstreamReply(link::UpstreamReply::default()));
                }
                Ok(Body::Ok(Empty {}))
            }
            Some(Body::InboxAck(req)) => {
                if req.mid > 0 {
                    self.stores
                        .messages
                        .inbox_ack(req.mid, req.seq)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(Body::Ok(Empty {}))
            }
            Some(Body::InboxRead(req)) => {
                // A paged read takes a page's worth of messages from the store; `more` tells
                // comet to ask again after the last one.
                let limit = match req.max_bytes {
                    0 => self.inbox_limit,
                    _ => self.inbox_limit.min(link::STORED_PAGE_MESSAGES),
                };
                let messages = if !req.room.is_empty() {
                    self.stores
                        .messages
                        .room_history_read(&req.room, req.after, limit)
                        .await
                } else if req.mid > 0 {
                    self.stores
                        .messages
                        .inbox_read(req.mid, req.after, limit)
                        .await
                } else {
                    Ok(Vec::new())
                }
                .map_err(|e| e.to_string())?;
                let full = messages.len() >= limit && limit < self.inbox_limit;
                let mut messages: Vec<Stored> = messages.into_iter().map(stored).collect();
                let max_bytes = match req.max_bytes {
                    0 => MAX_STORED_BYTES,
                    asked => asked.min(MAX_STORED_BYTES),
                };
                let cut = link::cut_to_page(&mut messages, max_bytes);
                Ok(Body::InboxMessages(InboxMessages {
                    messages,
                    more: cut || full,
                }))
            }
            Some(other) => Err(format!(
                "logic does not accept {} on its link",
                body_name(&other)
            )),
            None => Err("empty link message".into()),
        }
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
    }
}

fn stored(m: StoredMessage) -> Stored {
    Stored {
        seq: m.seq,
        op: m.op,
        body: m.body,
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
    let mut buf = BytesMut::with_capacity(8 << 10);
    'read: loop {
        loop {
            match link::decode_frame(&mut buf) {
                Ok(Some(envelope)) => {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        break 'read;
                    };
                    let handler = handler.clone();
                    let replies = replies.clone();
                    let reply_bytes = reply_bytes.clone();
                    tokio::spawn(async move {
                        let id = envelope.id;
                        let body = handler.handle(envelope.body).await;
                        let frame = Envelope::new(id, body).to_frame();
                        // Waits while the comet has too much unwritten; one reply larger than
                        // the whole budget takes all of it.
                        let cost = frame.len().clamp(1, MAX_QUEUED_REPLY_BYTES) as u32;
                        if let Ok(budget) = reply_bytes.acquire_many_owned(cost).await {
                            let _ = replies.send((frame, budget)).await;
                        }
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
    drop(replies);
    let _ = writer.await;
    tracing::debug!(%peer, "comet link closed");
}

/// A reply frame and its share of the connection's reply-byte budget, given back once written.
type Reply = (Bytes, OwnedSemaphorePermit);

async fn write_replies(mut writer: OwnedWriteHalf, mut queued: mpsc::Receiver<Reply>) {
    let mut batch = BytesMut::new();
    let mut budget = Vec::new();
    while let Some((first, cost)) = queued.recv().await {
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
