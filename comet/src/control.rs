//! What the business and the token do to a live connection: the business's join, leave and
//! kick (`POST /goim/rooms/join`, `/goim/rooms/leave`, `/goim/kick`, delivered by job as
//! `Control`), a token's expiry, and a fresh token (op 30). Each is told to the client with a
//! frame: op 25 or 27 (as if it had sent op 24 or 26, seq 0), op 31, or op 6 saying why just
//! before the connection closes.

use std::rc::Rc;

use bytes::Bytes;
use imgate_shared::frame::{op, PUSH_VER};
use imgate_shared::link::{Body, ControlAction, Refresh};

use crate::conn::{CloseReason, Conn};
use crate::logic_client::LogicError;
use crate::ops::parse_room;
use crate::outbound::{refusal, reply};
use crate::shard::Shard;

/// What a connection whose token expired is told (op 6) before it closes.
pub(crate) const TOKEN_EXPIRED: &str = "token expired";
/// Longest comet waits for logic's answer to a fresh token.
const REFRESH_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The business's join, leave or kick of these connections of this shard. A connection that
/// closed meanwhile is counted (`control_missed`); a join past `comet.max_rooms_per_conn` is
/// refused and counted (`room_limit`), the connection told nothing.
pub(crate) fn control(shard: &Shard, action: ControlAction, room: &str, reason: &str, ids: &[u64]) {
    for &id in ids {
        let Some(conn) = shard.conn(id).filter(|c| !c.is_closing()) else {
            shard.stats.control_missed.inc();
            continue;
        };
        match action {
            ControlAction::Join => {
                // Logic checks the name too; a link message is not trusted blindly.
                let before = Shard::rooms_before(&conn);
                if parse_room(room.as_bytes()).is_none() {
                    shard.stats.room_refused.inc();
                } else if shard.join_room(&conn, room) {
                    shard.rooms_changed(&conn, before, true);
                    tell(shard, &conn, op::JOIN_REPLY, room.as_bytes());
                } else {
                    shard.stats.room_limit.inc();
                }
            }
            ControlAction::Leave => {
                let before = Shard::rooms_before(&conn);
                if shard.leave_room(&conn, room) {
                    shard.rooms_changed(&conn, before, true);
                    tell(shard, &conn, op::LEAVE_REPLY, room.as_bytes());
                }
            }
            ControlAction::Kick => {
                let reason = if reason.is_empty() { "kicked" } else { reason };
                tell_and_close(shard, &conn, reason, CloseReason::KickedByBusiness);
            }
            ControlAction::Unknown => {}
        }
    }
}

/// A frame the server sends of itself (seq 0).
fn tell(shard: &Shard, conn: &Conn, op: i32, body: &[u8]) {
    shard.reply(conn, reply(conn.websocket, PUSH_VER, op, 0, body));
}

/// Tells the client why (op 6 with `why`; on WebSocket a close frame 1008 follows) and closes
/// the connection for `reason` once that is written.
pub(crate) fn tell_and_close(shard: &Shard, conn: &Conn, why: &str, reason: CloseReason) {
    if conn.is_closing() {
        return;
    }
    shard.reply(conn, refusal(conn.websocket, PUSH_VER, 0, why));
    conn.close_after_flush(reason);
}

/// A connection's token expired: op 6 "token expired", then the close.
pub(crate) fn expire(shard: &Shard, conn: &Conn) {
    tell_and_close(shard, conn, TOKEN_EXPIRED, CloseReason::TokenExpired);
}

/// Milliseconds since the Unix epoch.
pub(crate) fn unix_now_ms() -> u64 {
    imgate_shared::link::unix_us() / 1000
}

/// A client's fresh token (op 30): logic verifies it (same user; a token or the connect hook)
/// and the connection takes its expiry and rooms claim, answered with op 31 `{"exp": …}` under
/// the op-30 frame's seq. A token logic refuses is op 6 naming why, then the close. When logic
/// cannot say (unreachable, its store failing), op 31 comes with an empty body and nothing
/// changes: the client may try again before its token expires.
pub(crate) async fn refresh(shard: Rc<Shard>, conn: Rc<Conn>, ver: i16, seq: i32, token: Bytes) {
    let request = Body::Refresh(Refresh {
        conn: shard.conn_ref(&conn),
        mid: conn.mid,
        key: conn.key.to_string(),
        token,
        remote_addr: conn.peer_ip.map(|ip| ip.to_string()).unwrap_or_default(),
    });
    let answer = shard.logic.request(request, REFRESH_WAIT).await;
    shard.end_upstream(conn.id);
    if conn.is_closing() {
        return;
    }
    let body = match answer {
        Ok(Body::RefreshReply(r)) => {
            conn.expire_at
                .set(u32::try_from(r.expire_at).unwrap_or(u32::MAX));
            conn.allowed_rooms
                .set(r.rooms_limited.then(|| Box::new(r.allowed_rooms)));
            serde_json::json!({ "exp": r.exp }).to_string().into_bytes()
        }
        Err(LogicError::Refused { message, cause }) if cause.is_empty() => {
            tracing::debug!(conn_id = conn.id, "fresh token refused: {message}");
            tell_and_close(&shard, &conn, &message, CloseReason::RefreshRefused);
            return;
        }
        Err(LogicError::Refused { message, cause }) => {
            tracing::debug!(
                conn_id = conn.id,
                cause,
                "fresh token not checked: {message}"
            );
            Vec::new()
        }
        Ok(_) => {
            tracing::warn!("logic answered Refresh with an unexpected message");
            Vec::new()
        }
        Err(e) => {
            tracing::debug!(conn_id = conn.id, "fresh token not checked: {e}");
            Vec::new()
        }
    };
    shard.reply(
        &conn,
        reply(conn.websocket, ver, op::REFRESH_REPLY, seq, &body),
    );
}
