//! What a shard does with the pushes it is given: to keys, to a room's members, to everyone
//! watching an op (paced, when asked), and closing replaced connections. Free functions over
//! the [`Shard`], whose own methods (its state) all live in `shard.rs`.

use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use imgate_runtime::spawn_local;
use imgate_runtime::time::sleep;

use crate::conn::{ById, Conn, Pushed};
use crate::outbound::room_tagged;
use crate::setup::ShardCommand;
use crate::shard::Shard;
use crate::writer::{flush_ring, write_or_queue};

/// Connections a fan-out writes to before it lets the shard's other tasks run (a few
/// milliseconds of socket writes).
const FANOUT_SLICE: usize = 256;

/// The forms a room push takes on this shard: goim's two (TCP, WebSocket), encoded once by
/// the link, and the room-tagged two (op 28), made once when a member first asks for them.
struct RoomForms<'a> {
    room: &'a str,
    tcp: &'a Bytes,
    ws: &'a Bytes,
    tagged: [std::cell::OnceCell<Option<Bytes>>; 2],
}

impl<'a> RoomForms<'a> {
    fn new(room: &'a str, tcp: &'a Bytes, ws: &'a Bytes) -> Self {
        RoomForms {
            room,
            tcp,
            ws,
            tagged: Default::default(),
        }
    }

    fn pick(&self, conn: &Conn) -> &Bytes {
        let plain = if conn.websocket { self.ws } else { self.tcp };
        if !conn.room_tags {
            return plain;
        }
        self.tagged[usize::from(conn.websocket)]
            .get_or_init(|| room_tagged(conn.websocket, self.room, self.tcp))
            .as_ref()
            .unwrap_or(plain)
    }
}

fn deliver(shard: &Shard, conn: &Conn, tcp: &Bytes, ws: &Bytes) {
    let frame = if conn.websocket { ws } else { tcp };
    count_delivery(shard, write_or_queue(shard, conn, frame, None));
}

/// A stored push: dropped if the connection already has `seq`.
fn deliver_stored(shard: &Shard, conn: &Conn, tcp: &Bytes, ws: &Bytes, seq: u64) {
    if conn.is_closing() {
        return;
    }
    let frame = if conn.websocket { ws } else { tcp };
    match conn.claim_stored(seq) {
        Some(report) => count_delivery(shard, write_or_queue(shard, conn, frame, report)),
        None => shard.stats.push_dropped_duplicate.inc(),
    }
}

fn count_delivery(shard: &Shard, pushed: Pushed) {
    match pushed {
        Pushed::Written => {
            shard.stats.frames_queued.inc();
            shard.stats.frames_written_at_once.inc();
        }
        Pushed::Queued => shard.stats.frames_queued.inc(),
        Pushed::Closed | Pushed::Overflow => {}
    }
}

/// Does what `command` asks. A fan-out to many connections lets the shard's other tasks
/// (timers, heartbeats, reads, load reports) run every [`FANOUT_SLICE`] members, so one
/// big room never holds the loop for long; the next command waits until it is done, so
/// pushes keep their order.
pub(crate) async fn handle(shard: &Rc<Shard>, command: ShardCommand) {
    match command {
        ShardCommand::PushKeys {
            keys,
            op,
            tcp,
            ws,
            seq,
            mid,
        } => {
            for key in &keys {
                match shard.key_holder(key) {
                    Some(conn) if seq > 0 && mid > 0 && conn.mid == mid => {
                        deliver_stored(shard, &conn, &tcp, &ws, seq)
                    }
                    Some(conn) if conn.watches(op) => deliver(shard, &conn, &tcp, &ws),
                    Some(_) => {}
                    None => shard.stats.push_dropped_no_key.inc(),
                }
            }
            flush_ring(shard);
        }
        ShardCommand::PushRoom { room, tcp, ws } => {
            let forms = RoomForms::new(&room, &tcp, &ws);
            let members = shard.room_members(&room);
            for (i, slice) in members.chunks(FANOUT_SLICE).enumerate() {
                if i > 0 {
                    futures_lite::future::yield_now().await;
                }
                for ById(conn) in slice {
                    let frame = forms.pick(conn);
                    count_delivery(shard, write_or_queue(shard, conn, frame, None));
                }
                // The slice's ring sends go to the kernel in one call.
                flush_ring(shard);
            }
        }
        ShardCommand::Broadcast { op, tcp, ws, speed } => {
            broadcast(shard, op, tcp, ws, speed).await
        }
        ShardCommand::CloseReplaced { conn_id } => shard.close_replaced_here(conn_id),
        ShardCommand::Control {
            action,
            room,
            reason,
            conn_ids,
        } => crate::control::control(shard, action, &room, &reason, &conn_ids),
        // The shard's run loop takes these itself.
        ShardCommand::AdoptLink { .. } | ShardCommand::Shutdown => {}
        #[cfg(debug_assertions)]
        ShardCommand::TestPanic => {}
    }
}

/// Delivers to every connection of `members`, letting other tasks run between slices.
async fn deliver_all(shard: &Shard, members: &[Rc<Conn>], tcp: &Bytes, ws: &Bytes) {
    for (i, slice) in members.chunks(FANOUT_SLICE).enumerate() {
        if i > 0 {
            futures_lite::future::yield_now().await;
        }
        for conn in slice {
            deliver(shard, conn, tcp, ws);
        }
        flush_ring(shard);
    }
}

async fn broadcast(shard: &Rc<Shard>, op: i32, tcp: Bytes, ws: Bytes, speed: u32) {
    if speed == 0 {
        deliver_all(shard, &shard.watchers(op), &tcp, &ws).await;
        return;
    }
    // Paced: about `speed` connections per second, in chunks of a twentieth of that. The
    // task keeps ids, not connections: a connection that closes meanwhile is forgotten at
    // once instead of being kept alive until the broadcast ends.
    let targets = shard.watcher_ids(op);
    let shard = shard.clone();
    let chunk = (speed as usize / 20).max(1);
    let pause = Duration::from_secs_f64(chunk as f64 / speed as f64);
    spawn_local(async move {
        for (i, part) in targets.chunks(chunk).enumerate() {
            if i > 0 {
                sleep(pause).await;
            }
            if shard.is_stopping() {
                return;
            }
            for id in part {
                if let Some(conn) = shard.conn(*id) {
                    deliver(&shard, &conn, &tcp, &ws);
                }
            }
            flush_ring(&shard);
        }
    })
    .detach();
}
