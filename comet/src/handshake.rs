//! From accept to a registered connection: TLS, the WebSocket upgrade, the auth frame and
//! logic's answer, bounded by the handshake deadline and by shutdown.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_lite::future;
use imgate_runtime::net::Socket;
use imgate_runtime::time::sleep;
use imgate_shared::frame::op;
use imgate_shared::link::{failure_cause, Body, ConnRef, Connect, ConnectReply, Disconnect};
use imgate_shared::ws::{self, opcode, WsError};

use crate::conn::{CloseReason, Conn, Reading};
use crate::delivery::Delivery;
use crate::heartbeat::{clock_ms, stamp, MAX_HEARTBEAT_MS};
use crate::limits::{now_ms, RateLimit};
use crate::logic_client::LogicError;
use crate::outbound::{refusal, reply, stored_batches, ws_control};
use crate::panics::spawn_for_conn;
use crate::reassembly::{Event, Flow, Reassembly};
use crate::setup::Listen;
use crate::shard::{Shard, SCRATCH_SIZE};
use crate::socket_io::{read_with, write_all};
use crate::stream::ClientStream;
use crate::sync::catch_up;
use crate::watch::Watched;

/// Heartbeat expiry used when logic returns none (goim's 4 min × 2), in milliseconds.
const DEFAULT_HEARTBEAT_MS: u32 = 480_000;
/// What a connection replaced before it started is told.
const REPLACED: &str = "replaced by a newer connection with the same key";
/// How long telling a client why it is refused may take.
const REFUSAL_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

struct Authed {
    ver: i16,
    seq: i32,
    reply: ConnectReply,
    /// What is left of the upstream rate after the handshake's frames.
    upstream: RateLimit,
}

/// From accept to a registered connection: TLS, the handshake (bounded by the handshake
/// timeout and by shutdown), auth, registration. `None` when the connection ended meanwhile
/// (already counted).
pub(crate) async fn open(
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
                reason.count(&shard.stats);
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
            reason.count(&shard.stats);
            return None;
        }
    };
    if replaced_meanwhile {
        // A newer connection claimed the key after this one did and was registered first:
        // this one lost its session already, so it never starts.
        CloseReason::Kicked.count(&shard.stats);
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
        spawn_for_conn(shard, &conn, catch_up(shard.clone(), conn.clone()));
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
        reason: "never_started".to_string(),
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
        joined: RefCell::new(None),
        allowed_rooms: Cell::new(
            r.rooms_limited
                .then(|| Box::new(std::mem::take(&mut r.allowed_rooms))),
        ),
        expire_at: Cell::new(u32::try_from(r.expire_at).unwrap_or(u32::MAX)),
        watch: Watched::default(),
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
        flush_then_close: Cell::new(None),
        in_ring: Cell::new(false),
        websocket,
        room_tags: r.room_tags,
    });
    conn.watch.subscribe(&mut r.accepts);
    shard.register(&conn, &r.room);
    shard.reply(&conn, reply(websocket, ver, op::AUTH_REPLY, seq, &[]));
    // The user's unacknowledged stored messages follow the auth reply.
    conn.push_stored_batches(
        stored_batches(websocket, None, &r.backlog, SCRATCH_SIZE),
        true,
        shard.queue_limits(),
    );
    Some(conn)
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
                    .push(ws_control(opcode::CLOSE, &ws::close_answer(payload)));
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
            shard.stats.auth_unavailable.inc();
            "auth could not be checked".to_string()
        }
        Err(LogicError::Refused { message, cause }) => {
            tracing::debug!(conn_id, cause, "auth refused: {message}");
            let stats = &shard.stats;
            match cause.as_str() {
                failure_cause::HOOK_TIMEOUT => stats.auth_hook_timeout.inc(),
                failure_cause::HOOK_UNREACHABLE => stats.auth_hook_unreachable.inc(),
                failure_cause::HOOK_BAD_ANSWER => stats.auth_hook_bad_answer.inc(),
                failure_cause::HOOK_BUSY => stats.auth_hook_busy.inc(),
                failure_cause::UNAVAILABLE => stats.auth_unavailable.inc(),
                _ => {}
            }
            message
        }
        Err(e) => {
            tracing::debug!(conn_id, "auth failed: {e}");
            shard.stats.auth_unavailable.inc();
            "auth could not be checked: logic is unavailable".to_string()
        }
    };
    // Tell the client why before closing (bounded by the handshake deadline like the rest).
    let _ = write_all(stream, &refusal(websocket, ver, seq, &reason)).await;
    Err(CloseReason::AuthFailed)
}
