//! The cluster-link listener comets talk to: connect, disconnect, heartbeat, online reports and
//! upstream frames.
//!
//! Each connection is read by one task; every request is handled in its own task (requests are
//! pipelined and independent), and the replies, each carrying its request's id, go out through
//! one writer task that coalesces whatever is ready into one write.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use imgate_shared::link::{
    self, Body, ConnectReply, Empty, Envelope, Failure, InboxMessages, RenewOnlineReply, Stored,
};
use imgate_shared::store::{OnlineReport, Session, Store, StoredMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::auth::Authenticator;
use crate::online::RoomCounts;

/// Requests one comet connection may have in flight before logic stops reading from it.
const MAX_IN_FLIGHT: usize = 1024;
/// Replies coalesced into one write, at most.
const MAX_WRITE_BATCH: usize = 256 << 10;

/// What the link requests act on.
pub(crate) struct LinkHandler {
    pub store: Arc<dyn Store>,
    pub auth: Arc<dyn Authenticator>,
    pub rooms: RoomCounts,
    pub heartbeat: Duration,
    pub upstream_frames: AtomicU64,
    /// Most stored messages sent to a connecting client or a SYNC at once.
    pub inbox_limit: usize,
    /// Refuse a key another user's connection holds (signed-token deployments; goim lets any
    /// client take over any key).
    pub protect_keys: bool,
}

impl LinkHandler {
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
                if self.protect_keys {
                    let holders = self
                        .store
                        .sessions_by_keys(std::slice::from_ref(&key))
                        .await
                        .map_err(|e| e.to_string())?;
                    if holders.iter().any(|s| s.mid != identity.mid) {
                        return Err(format!("connection key {key:?} belongs to another user"));
                    }
                }
                let session = Session {
                    mid: identity.mid,
                    key,
                    conn,
                };
                self.store
                    .add_session(&session)
                    .await
                    .map_err(|e| e.to_string())?;
                // Read the inbox only after the session exists: a push stored meanwhile is
                // either in this backlog or routed to the new session (or both: comet drops
                // the second copy by its sequence), never neither.
                let (backlog, inbox_floor) = if session.mid > 0 {
                    let state = self
                        .store
                        .inbox_state(session.mid)
                        .await
                        .map_err(|e| e.to_string())?;
                    let mut backlog: Vec<Stored> = self
                        .store
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
                    backlog,
                    inbox_floor,
                    rooms_limited: identity.allowed_rooms.is_some(),
                    allowed_rooms: identity.allowed_rooms.unwrap_or_default(),
                }))
            }
            Some(Body::Disconnect(req)) => {
                let conn = req.conn.ok_or("disconnect without conn")?;
                let removed = self
                    .store
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
                self.store
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
                self.store
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
                self.upstream_frames.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(mid = req.mid, key = %req.key, op = req.op, seq = req.seq, len = req.body.len(), "upstream frame");
                Ok(Body::Ok(Empty {}))
            }
            Some(Body::InboxAck(req)) => {
                if req.mid > 0 {
                    self.store
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
                    self.store
                        .room_history_read(&req.room, req.after, limit)
                        .await
                } else if req.mid > 0 {
                    self.store.inbox_read(req.mid, req.after, limit).await
                } else {
                    Ok(Vec::new())
                }
                .map_err(|e| e.to_string())?;
                let full = messages.len() >= limit && limit < self.inbox_limit;
                let mut messages: Vec<Stored> = messages.into_iter().map(stored).collect();
                let cut = req.max_bytes > 0 && link::cut_to_page(&mut messages, req.max_bytes);
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
                    tracing::warn!(error = %e, "link accept failed");
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
    let (replies, queued) = mpsc::channel::<Bytes>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_replies(writer, queued));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
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
                    tokio::spawn(async move {
                        let id = envelope.id;
                        let body = handler.handle(envelope.body).await;
                        let _ = replies.send(Envelope::new(id, body).to_frame()).await;
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

async fn write_replies(mut writer: OwnedWriteHalf, mut queued: mpsc::Receiver<Bytes>) {
    let mut batch = BytesMut::new();
    while let Some(first) = queued.recv().await {
        batch.extend_from_slice(&first);
        while batch.len() < MAX_WRITE_BATCH {
            match queued.try_recv() {
                Ok(next) => batch.extend_from_slice(&next),
                Err(_) => break,
            }
        }
        if let Err(e) = writer.write_all(&batch).await {
            tracing::debug!(error = %e, "link reply write failed");
            return;
        }
        batch.clear();
    }
    let _ = writer.shutdown().await;
}
