//! What a connection does with each frame its client sends once authenticated: heartbeats,
//! room changes, op subscriptions, acknowledgements, syncs, and upstream ops for the business.

use std::rc::Rc;

use bytes::Bytes;
use imgate_shared::frame::{op, Header};
use imgate_shared::link::{Body, Heartbeat, InboxAck, Upstream};
use imgate_shared::ws::{self, opcode};

use crate::conn::{CloseReason, Conn, SyncRequest};
use crate::heartbeat::{clock_ms, stamp};
use crate::outbound::{reply, ws_control};
use crate::panics::spawn_for_conn;
use crate::reassembly::{Event, Flow};
use crate::shard::Shard;
use crate::sync::serve_syncs;

/// Op-22 requests one connection may have waiting behind the one being served; more are
/// answered at once with an empty reply and counted.
const MAX_WAITING_SYNCS: usize = 8;

/// Longest room name a client may join (op 24) or move to (op 12), in bytes.
pub(crate) const MAX_ROOM_LEN: usize = 256;

/// Parses an op-24/26 body: a room name, UTF-8, not empty, at most [`MAX_ROOM_LEN`] bytes.
pub(crate) fn parse_room(body: &[u8]) -> Option<&str> {
    let room = std::str::from_utf8(body).ok()?;
    (!room.is_empty() && room.len() <= MAX_ROOM_LEN).then_some(room)
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

pub(crate) fn on_event(shard: &Rc<Shard>, conn: &Rc<Conn>, event: Event<'_>) -> Flow {
    if !conn.allow_upstream(
        shard.comet.config.upstream_rate,
        shard.comet.config.upstream_burst,
    ) {
        conn.close(CloseReason::RateLimited);
        return Flow::Stop;
    }
    match event {
        Event::Frame(header, body) => {
            if let Some(answer) = on_frame(shard, conn, header, body) {
                shard.reply(conn, answer);
            }
            Flow::Continue
        }
        Event::Ping(payload) => {
            shard.reply(conn, ws_control(opcode::PONG, payload));
            Flow::Continue
        }
        Event::Close(payload) => {
            shard.reply(conn, ws_control(opcode::CLOSE, &ws::close_answer(payload)));
            Flow::Stop
        }
        Event::Partial => Flow::Continue,
    }
}

/// Handles one client frame; returns the reply to queue now (a SYNC queues its own later).
fn on_frame(shard: &Rc<Shard>, conn: &Rc<Conn>, h: Header, body: &[u8]) -> Option<Bytes> {
    #[cfg(debug_assertions)]
    crate::panics::test_hook(shard, h.op, body);
    let ws = conn.websocket;
    let answer = match h.op {
        op::HEARTBEAT => {
            shard.stats.heartbeats.inc();
            let now = stamp(clock_ms());
            conn.last_heartbeat.set(now);
            if now.wrapping_sub(conn.last_logic_heartbeat.get()) >= conn.heartbeat_ms {
                conn.last_logic_heartbeat.set(now);
                shard.logic.notify(Body::Heartbeat(Heartbeat {
                    conn: shard.conn_ref(conn),
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
            // Empty: leave the main room. A name that is not UTF-8 is refused like op 24's
            // (read lossily, two different names would land in one room).
            let room = match std::str::from_utf8(body) {
                Ok(room) if room.len() <= MAX_ROOM_LEN => room,
                _ => {
                    shard.stats.room_refused.inc();
                    return Some(reply(ws, h.ver, op::CHANGE_ROOM_REPLY, h.seq, &[]));
                }
            };
            if !room.is_empty() && !conn.may_enter(room) {
                // Refused: the connection stays where it is; the empty reply says so.
                shard.stats.room_refused.inc();
                return Some(reply(ws, h.ver, op::CHANGE_ROOM_REPLY, h.seq, &[]));
            }
            let before = Shard::rooms_before(conn);
            shard.change_room(conn, room);
            shard.rooms_changed(conn, before, false);
            reply(ws, h.ver, op::CHANGE_ROOM_REPLY, h.seq, body)
        }
        op::JOIN => {
            let room = parse_room(body);
            let joined = match room {
                None => false,
                Some(room) if !conn.may_enter(room) => {
                    shard.stats.room_refused.inc();
                    false
                }
                Some(room) => {
                    let before = Shard::rooms_before(conn);
                    let joined = shard.join_room(conn, room);
                    if joined {
                        shard.rooms_changed(conn, before, false);
                    } else {
                        shard.stats.room_limit.inc();
                    }
                    joined
                }
            };
            let echoed: &[u8] = if joined { body } else { &[] };
            reply(ws, h.ver, op::JOIN_REPLY, h.seq, echoed)
        }
        op::LEAVE => {
            let before = Shard::rooms_before(conn);
            let left = parse_room(body).is_some_and(|room| shard.leave_room(conn, room));
            if left {
                shard.rooms_changed(conn, before, false);
            }
            let echoed: &[u8] = if left { body } else { &[] };
            reply(ws, h.ver, op::LEAVE_REPLY, h.seq, echoed)
        }
        op::SUB => {
            if !conn.watch.is_full() {
                if let Some(mut ops) = parse_ops(body) {
                    conn.watch.subscribe(&mut ops);
                }
            }
            reply(ws, h.ver, op::SUB_REPLY, h.seq, body)
        }
        op::UNSUB => {
            if let Some(mut ops) = parse_ops(body) {
                conn.watch.unsubscribe(&mut ops);
            }
            reply(ws, h.ver, op::UNSUB_REPLY, h.seq, body)
        }
        op::ACK => {
            // A body that is not a decimal seq is answered but acknowledges nothing.
            if let Some(seq) = parse_ack(body).filter(|_| conn.mid > 0) {
                shard.logic.notify(Body::InboxAck(InboxAck {
                    conn: shard.conn_ref(conn),
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
                shard.stats.room_refused.inc();
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
                        spawn_for_conn(
                            shard,
                            conn,
                            serve_syncs(shard.clone(), conn.clone(), first),
                        );
                    }
                    Ok(None) => {}
                    Err(_) => {
                        // Too many waiting: the client asks faster than it takes answers in.
                        shard.stats.sync_refused.inc();
                        return Some(reply(ws, h.ver, op::SYNC_REPLY, h.seq, &[]));
                    }
                }
                return None;
            }
        },
        op::REFRESH => {
            // Counted with the client's messages waiting for logic: a client sending fresh
            // tokens in a loop holds a few requests, not one each.
            if !shard.start_upstream(conn.id, MAX_UPSTREAM_PER_CONN) {
                shard.stats.upstream_refused.inc();
                return Some(reply(ws, h.ver, op::REFRESH_REPLY, h.seq, &[]));
            }
            spawn_for_conn(
                shard,
                conn,
                crate::control::refresh(
                    shard.clone(),
                    conn.clone(),
                    h.ver,
                    h.seq,
                    Bytes::copy_from_slice(body),
                ),
            );
            return None;
        }
        op::SEND_MSG => {
            let upstream = upstream(shard, conn, h, body);
            if !shard.start_upstream(conn.id, MAX_UPSTREAM_PER_CONN) {
                // Too many of this client's (or of the shard's) messages wait for the
                // business: answered at once, with nothing, and counted.
                shard.stats.upstream_refused.inc();
                return Some(reply(ws, h.ver, op::SEND_MSG_REPLY, h.seq, &[]));
            }
            spawn_for_conn(
                shard,
                conn,
                send_upstream(shard.clone(), conn.clone(), h, upstream),
            );
            return None;
        }
        _ => {
            shard
                .logic
                .notify(Body::Upstream(upstream(shard, conn, h, body)));
            reply(ws, h.ver, h.op, h.seq, &[])
        }
    };
    Some(answer)
}

/// A client frame for the business.
fn upstream(shard: &Shard, conn: &Conn, h: Header, body: &[u8]) -> Upstream {
    Upstream {
        conn: shard.conn_ref(conn),
        mid: conn.mid,
        key: conn.key.to_string(),
        op: h.op,
        seq: h.seq,
        body: Bytes::copy_from_slice(body),
        room: conn.room().as_deref().unwrap_or_default().to_string(),
    }
}

/// Messages (op 4) one connection may have waiting for the business's answer; more are
/// answered at once with an empty op 5 and counted.
const MAX_UPSTREAM_PER_CONN: u32 = 8;
/// Longest comet waits for logic's answer to a client message (logic bounds the business's
/// own time with `logic.upstream_timeout`).
const UPSTREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Sends a client's message (op 4) to the business through logic and answers the client with
/// op 5: the same seq and the business's answer, or an empty body when there is none.
async fn send_upstream(shard: Rc<Shard>, conn: Rc<Conn>, h: Header, upstream: Upstream) {
    let answer = shard
        .logic
        .request(Body::Upstream(upstream), UPSTREAM_WAIT)
        .await;
    shard.end_upstream(conn.id);
    let body = match answer {
        Ok(Body::UpstreamReply(reply)) => {
            if !reply.delivered {
                shard.stats.upstream_failed.inc();
            }
            reply.body
        }
        Ok(_) => {
            tracing::warn!("logic answered Upstream with an unexpected message");
            shard.stats.upstream_failed.inc();
            Bytes::new()
        }
        Err(e) => {
            tracing::debug!(conn_id = conn.id, "client message not delivered: {e}");
            shard.stats.upstream_failed.inc();
            Bytes::new()
        }
    };
    // A body the client's frame limit cannot carry is not sent (logic caps it already).
    let body: &[u8] = if body.len() <= shard.comet.config.max_body.max(1 << 16) {
        &body
    } else {
        &[]
    };
    shard.reply(
        &conn,
        reply(conn.websocket, h.ver, op::SEND_MSG_REPLY, h.seq, body),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
