//! The cluster-link listener comets talk to: connect, disconnect, heartbeat, online reports and
//! upstream frames.
//!
//! Each connection is read by one task; every request is handled in its own task (requests are
//! pipelined and independent), and the replies, each carrying its request's id, go out through
//! one writer task that coalesces whatever is ready into one write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use imgate_bus::{BusMessage, BusProducer, Push};
use imgate_shared::counters::Counter;
use imgate_shared::link::{
    self, failure_cause, Body, CloseConn, ConnRef, ConnectReply, Empty, Envelope, Failure,
    InboxMessages, RenewOnlineReply, RoomCount, Stored,
};
use imgate_store::{
    Admit, Claim, KeyPolicy, OnlineReport, Session, StoredMessage, Stores, UserConn,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use crate::auth::{AuthError, Authenticator, Identity};
use crate::events::{unix_ms, Event, Events};
use crate::hooks::{self, Endpoint, PostError};
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
    /// Connect and disconnect events for the business.
    pub events: Option<Events>,
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

/// A request logic does not serve: what the client is told, and what failed
/// ([`link::failure_cause`]; empty: refused).
#[derive(Debug)]
struct Refusal {
    message: String,
    cause: &'static str,
}

impl From<String> for Refusal {
    fn from(message: String) -> Self {
        Refusal { message, cause: "" }
    }
}

impl From<&str> for Refusal {
    fn from(message: &str) -> Self {
        Refusal::from(message.to_string())
    }
}

/// The business's answer to the connect hook (a JSON object; see [`parse_hook_answer`]).
#[derive(serde::Deserialize)]
struct HookAnswer {
    /// A number or a decimal string (checked by [`canonical_mid`]).
    mid: serde_json::Value,
    #[serde(default)]
    key: Option<String>,
    /// The rooms the connection may join; absent: any.
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    accepts: Option<Vec<i32>>,
    #[serde(default)]
    platform: Option<String>,
}

/// A client message as the business receives it.
#[derive(serde::Serialize)]
struct UpstreamMessage<'a> {
    mid: i64,
    key: &'a str,
    room: &'a str,
    op: i32,
    seq: i32,
    platform: &'a str,
    /// Base64 (standard, padded).
    body: String,
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
            Err(Refusal { message, cause }) => Body::Error(Failure {
                message,
                cause: cause.to_string(),
            }),
        }
    }

    async fn dispatch(&self, body: Option<Body>) -> Result<Body, Refusal> {
        match body {
            Some(Body::Connect(req)) => {
                let conn = req.conn.ok_or("connect without conn")?;
                let identity = self
                    .identify(&req.token, &req.cookie, &req.remote_addr, &conn)
                    .await?;
                let key = identity
                    .key
                    .clone()
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
                let kicked = self.admit(&session, &identity).await?;
                let claim = self.stores.sessions.claim_session(&session, policy).await;
                let claim = match claim {
                    Ok(claim) => claim,
                    Err(e) => {
                        self.unadmit(&session, &kicked).await;
                        return Err(e.to_string().into());
                    }
                };
                let replaced = match claim {
                    Claim::Claimed { replaced } => replaced,
                    Claim::Refused { .. } => {
                        self.unadmit(&session, &kicked).await;
                        return Err(format!(
                            "connection key {:?} is held by another user's connection",
                            session.key
                        )
                        .into());
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
                for gone in kicked {
                    // Whichever comet holds it, through the bus (job delivers it to that one).
                    self.counters.user_limit_kicked.inc();
                    self.event("disconnect", session.mid, &gone, "kicked");
                    // Nothing by key or user reaches it from now on, before it is closed.
                    if let Err(e) = self
                        .stores
                        .sessions
                        .remove_session(session.mid, &gone.key, &gone.conn)
                        .await
                    {
                        tracing::warn!(error = %e, "cannot remove a kicked connection's session");
                    }
                    self.close_elsewhere(gone.conn).await;
                }
                if let Some(old) = &replaced {
                    let gone = UserConn {
                        key: old.key.clone(),
                        conn: old.conn.clone(),
                        platform: String::new(),
                        room: String::new(),
                        connected_ms: 0,
                    };
                    self.event("disconnect", old.mid, &gone, "replaced");
                }
                self.event(
                    "connect",
                    session.mid,
                    &UserConn {
                        key: session.key.clone(),
                        conn: session.conn.clone(),
                        platform: identity.platform.clone(),
                        room: identity.room.clone(),
                        connected_ms: 0,
                    },
                    "auth",
                );
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
                let gone = if req.mid > 0 {
                    self.stores
                        .sessions
                        .remove_conn(req.mid, &req.key, &conn)
                        .await
                        .map_err(|e| e.to_string())?
                } else {
                    None
                };
                if removed || gone.is_some() {
                    let gone = gone.unwrap_or(UserConn {
                        key: req.key.clone(),
                        conn,
                        platform: String::new(),
                        room: String::new(),
                        connected_ms: 0,
                    });
                    let reason = if req.reason.is_empty() {
                        "closed"
                    } else {
                        req.reason.as_str()
                    };
                    self.event("disconnect", req.mid, &gone, reason);
                }
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
                if session.mid > 0 {
                    self.stores
                        .sessions
                        .refresh_conn(session.mid, &session.key, &session.conn)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(Body::Ok(Empty {}))
            }
            Some(Body::RenewOnline(req)) => {
                let comet = req.comet.ok_or("renew_online without comet")?;
                let cached = self.rooms.snapshot();
                // The registry keeps the process's one copy of each name. The answer names only
                // the rooms with members elsewhere too, taking the decoded names themselves: for
                // the others the shard's own count is the cluster's (a heartbeat answers the
                // larger of the two), and a shard of many small rooms is not sent them all
                // back. The cache lags the report just received; the cluster holds at least
                // what this shard reports.
                let mut reported = PartialRooms::new();
                let rooms = req
                    .rooms
                    .into_iter()
                    .filter_map(|room| {
                        let name = room.name()?;
                        reported.insert(imgate_shared::intern::room(name), room.count);
                        let total = cached.get(name).copied().unwrap_or(0);
                        let total = u32::try_from(total).unwrap_or(u32::MAX);
                        (total > room.count).then_some(RoomCount {
                            name: room.name,
                            count: total,
                        })
                    })
                    .collect();
                // A report in parts is stored whole, with its last part (a comet sends the
                // next part once this one is answered).
                let whole = {
                    let mut partial = lock(&self.partial_reports);
                    let key = (comet.id.clone(), req.shard);
                    let mut whole = match partial.remove(&key) {
                        Some(earlier) if req.part > 0 => earlier,
                        _ => PartialRooms::new(),
                    };
                    whole.extend(reported);
                    if req.more {
                        partial.insert(key, whole);
                        None
                    } else {
                        Some(whole)
                    }
                };
                if let Some(rooms) = whole {
                    self.stores
                        .registry
                        .report_online(OnlineReport {
                            comet,
                            shard: req.shard,
                            conn_count: req.conn_count,
                            ip_count: req.ip_count,
                            rooms,
                            lag_us: req.lag_us,
                        })
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(Body::RenewOnlineReply(RenewOnlineReply { rooms }))
            }
            Some(Body::Upstream(req)) => {
                self.counters.upstream_frames.inc();
                tracing::debug!(mid = req.mid, key = %req.key, op = req.op, seq = req.seq, len = req.body.len(), "upstream frame");
                if req.op == imgate_shared::frame::op::SEND_MSG {
                    return Ok(Body::UpstreamReply(self.upstream(req).await));
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
            Some(other) => {
                Err(format!("logic does not accept {} on its link", body_name(&other)).into())
            }
            None => Err("empty link message".into()),
        }
    }
}

impl LinkHandler {
    /// Who the client is: its signed token (when tokens are configured and it presents one),
    /// else the connect hook (when configured), else the configured authenticator.
    async fn identify(
        &self,
        token: &[u8],
        cookie: &str,
        remote_addr: &str,
        conn: &ConnRef,
    ) -> Result<Identity, Refusal> {
        let Some(hook) = &self.connect_hook else {
            return self
                .auth
                .authenticate(token, cookie)
                .map_err(|e| e.to_string().into());
        };
        let auth: serde_json::Value = serde_json::from_slice(token)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| AuthError::Invalid("expected a JSON object".into()).to_string())?;
        // A JWT is three base64url parts joined by dots; any other token is the business's.
        let presents_jwt = auth.get("token").and_then(|t| t.as_str()).is_some_and(|t| {
            let parts: Vec<&str> = t.split('.').collect();
            parts.len() == 3
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        });
        if self.tokens && presents_jwt {
            return self
                .auth
                .authenticate(token, cookie)
                .map_err(|e| e.to_string().into());
        }
        // The client's own choices (room, accepts, acks…) as goim's JSON gives them; the
        // business decides the user and may override the rest.
        let mut identity = crate::auth::GoimJsonAuth
            .authenticate(token, cookie)
            .map_err(|e| e.to_string())?;
        // Bounded: a hook that stops answering holds at most this many connects (and
        // connections to it); the rest are refused at once rather than queued behind them.
        let Ok(_permit) = hook.permits.clone().try_acquire_owned() else {
            self.counters.connect_hook_busy.inc();
            return Err(Refusal {
                message: "connect hook busy".into(),
                cause: failure_cause::HOOK_BUSY,
            });
        };
        let request = serde_json::json!({
            "auth": auth,
            "remote_addr": remote_addr,
            "comet": conn.comet,
        });
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let failed = |counter: &Counter, cause: &'static str, message: String| {
            counter.inc();
            Refusal { message, cause }
        };
        let c = &self.counters;
        let answer = match hooks::post_json(&hook.endpoint, body, hook.timeout, 64 << 10).await {
            Ok(answer) => answer,
            Err(PostError::Status(status)) => {
                c.connect_hook_refused.inc();
                return Err(format!("refused by the connect hook (HTTP {status})").into());
            }
            Err(e) => {
                tracing::warn!(error = %e, "connect hook failed");
                let message = format!("connect hook unavailable: {e}");
                return Err(match e {
                    PostError::Timeout(_) => failed(
                        &c.connect_hook_timeout,
                        failure_cause::HOOK_TIMEOUT,
                        message,
                    ),
                    PostError::Unreachable(_) => failed(
                        &c.connect_hook_unreachable,
                        failure_cause::HOOK_UNREACHABLE,
                        message,
                    ),
                    PostError::TooLarge(_) | PostError::Failed(_) | PostError::Status(_) => failed(
                        &c.connect_hook_bad_answer,
                        failure_cause::HOOK_BAD_ANSWER,
                        format!("connect hook answered badly: {e}"),
                    ),
                });
            }
        };
        let (answer, mid) = parse_hook_answer(&answer).map_err(|why| {
            failed(
                &c.connect_hook_bad_answer,
                failure_cause::HOOK_BAD_ANSWER,
                format!("connect hook answered badly: {why}"),
            )
        })?;
        identity.mid = mid;
        if let Some(key) = answer.key.filter(|k| !k.is_empty()) {
            identity.key = Some(key);
        }
        if let Some(accepts) = answer.accepts {
            identity.accepts = accepts;
        }
        if let Some(platform) = answer.platform {
            identity.platform = platform;
        }
        if let Some(rooms) = answer.rooms {
            if !identity.room.is_empty() && !rooms.contains(&identity.room) {
                c.connect_hook_refused.inc();
                return Err(format!(
                    "room {:?} is not allowed by the connect hook",
                    identity.room
                )
                .into());
            }
            identity.allowed_rooms = Some(rooms);
        }
        c.connect_hook_ok.inc();
        Ok(identity)
    }

    /// Records the connection among its user's, within `comet.max_conns_per_user`; returns
    /// the oldest connections to close (`comet.kick_oldest`).
    async fn admit(&self, session: &Session, identity: &Identity) -> Result<Vec<UserConn>, String> {
        if session.mid <= 0 {
            return Ok(Vec::new());
        }
        let entry = UserConn {
            key: session.key.clone(),
            conn: session.conn.clone(),
            platform: identity.platform.clone(),
            room: identity.room.clone(),
            connected_ms: 0,
        };
        match self
            .stores
            .sessions
            .admit_conn(session.mid, &entry, self.user_limit, self.kick_oldest)
            .await
            .map_err(|e| e.to_string())?
        {
            Admit::Admitted { kicked } => Ok(kicked),
            Admit::Refused { held } => {
                self.counters.user_limit_refused.inc();
                Err(format!(
                    "user {} already has {held} connections, the most allowed",
                    session.mid
                ))
            }
        }
    }

    /// Takes back an admission whose key claim failed, and puts back the connections it had
    /// pushed out (nothing was done to them yet), so they stay counted.
    async fn unadmit(&self, session: &Session, kicked: &[UserConn]) {
        if session.mid <= 0 {
            return;
        }
        let sessions = &self.stores.sessions;
        let mut undone = sessions
            .remove_conn(session.mid, &session.key, &session.conn)
            .await
            .map(|_| ());
        for gone in kicked {
            if undone.is_ok() {
                undone = sessions
                    .admit_conn(session.mid, gone, 0, false)
                    .await
                    .map(|_| ());
            }
        }
        if let Err(e) = undone {
            tracing::warn!(error = %e, "cannot take back a connection's admission");
        }
    }

    fn event(&self, event: &'static str, mid: i64, conn: &UserConn, reason: &str) {
        if let Some(events) = &self.events {
            events.send(Event {
                event,
                mid,
                key: conn.key.clone(),
                comet: conn.conn.comet.clone(),
                platform: conn.platform.clone(),
                time: unix_ms(),
                reason: reason.to_string(),
            });
        }
    }

    /// Passes a client message (op 4) to the business; its answer (or nothing) is op 5's body.
    async fn upstream(&self, req: link::Upstream) -> link::UpstreamReply {
        use base64::Engine;
        let Some(hook) = &self.upstream else {
            self.counters.upstream_unconfigured.inc();
            return link::UpstreamReply::default();
        };
        let Ok(_permit) = hook.permits.clone().try_acquire_owned() else {
            self.counters.upstream_refused.inc();
            return link::UpstreamReply::default();
        };
        let platform = match (req.mid > 0, &req.conn) {
            (true, Some(conn)) => self
                .stores
                .sessions
                .user_conns(&[req.mid])
                .await
                .ok()
                .and_then(|mut users| users.pop())
                .and_then(|conns| conns.into_iter().find(|c| &c.conn == conn))
                .map(|c| c.platform)
                .unwrap_or_default(),
            _ => String::new(),
        };
        let message = UpstreamMessage {
            mid: req.mid,
            key: &req.key,
            room: &req.room,
            op: req.op,
            seq: req.seq,
            platform: &platform,
            body: base64::engine::general_purpose::STANDARD.encode(&req.body),
        };
        let body = serde_json::to_vec(&message).unwrap_or_default();
        match hooks::post_json(&hook.endpoint, body, hook.timeout, hook.max_body).await {
            Ok(answer) => {
                self.counters.upstream_ok.inc();
                link::UpstreamReply {
                    body: answer,
                    delivered: true,
                }
            }
            Err(e) => {
                match e {
                    PostError::Timeout(_) => self.counters.upstream_timeout.inc(),
                    PostError::TooLarge(_) => self.counters.upstream_too_large.inc(),
                    PostError::Status(_) | PostError::Unreachable(_) | PostError::Failed(_) => {
                        self.counters.upstream_failed.inc()
                    }
                }
                tracing::debug!(error = %e, mid = req.mid, "client message not delivered to the business");
                link::UpstreamReply::default()
            }
        }
    }
}

/// Reads a connect hook's answer strictly: a JSON object (serde would read `[7]` as a struct
/// too) whose `mid` is a canonical positive user id ([`canonical_mid`]); the optional fields
/// must have their types. The answer is trusted like a token, so anything else is refused.
fn parse_hook_answer(answer: &[u8]) -> Result<(HookAnswer, i64), String> {
    let value: serde_json::Value =
        serde_json::from_slice(answer).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    let answer: HookAnswer =
        serde_json::from_value(value).map_err(|e| format!("unexpected JSON: {e}"))?;
    let mid = canonical_mid(&answer.mid)
        .ok_or("no positive mid (a number or a decimal string without sign or leading zeros)")?;
    Ok((answer, mid))
}

/// A user id as a positive integer, either a JSON integer or a decimal string in canonical form
/// (digits only, no sign, no leading zero, no blanks): `"+7"` and `"007"` are not user 7.
fn canonical_mid(mid: &serde_json::Value) -> Option<i64> {
    let mid = match mid {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => {
            let canonical =
                !s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
            canonical.then(|| s.parse::<i64>().ok()).flatten()
        }
        _ => None,
    };
    mid.filter(|m| *m > 0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_answer_is_a_json_object_with_a_canonical_positive_mid() {
        let mid = |answer: &str| parse_hook_answer(answer.as_bytes()).map(|(_, mid)| mid);
        assert_eq!(mid(r#"{"mid": 7}"#), Ok(7));
        assert_eq!(mid(r#"{"mid": "7", "platform": "web"}"#), Ok(7));
        assert_eq!(mid(r#"{"mid": "9223372036854775807"}"#), Ok(i64::MAX));
        for bad in [
            "[7]",
            "7",
            r#""7""#,
            r#"{"mid": "+7"}"#,
            r#"{"mid": "007"}"#,
            r#"{"mid": "0"}"#,
            r#"{"mid": 0}"#,
            r#"{"mid": -1}"#,
            r#"{"mid": 7.5}"#,
            r#"{"mid": 7e0}"#,
            r#"{"mid": "7e0"}"#,
            r#"{"mid": ""}"#,
            r#"{"mid": "9223372036854775808"}"#,
            r#"{"mid": null}"#,
            r#"{"key": "k"}"#,
            r#"{"mid": 7, "accepts": "1000"}"#,
            "not json",
        ] {
            assert!(mid(bad).is_err(), "{bad} was accepted");
        }
    }
}
