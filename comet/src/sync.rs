//! Stored messages sent to a client: op-22 syncs and the catch-up after connect, a page at a
//! time, each page read from logic only once the client has taken the previous one in.

use std::rc::Rc;
use std::task::Poll;

use futures_lite::future::poll_fn;
use imgate_shared::frame::op;
use imgate_shared::link::{Body, InboxRead};

use crate::conn::{Conn, SyncRequest};
use crate::outbound::{reply, stored_batches};
use crate::shard::{Shard, SCRATCH_SIZE};

/// Serves a connection's op-22 requests one after another, starting with `first`, until none
/// waits. Each runs beside the reader, so later frames of the client are served meanwhile.
pub(crate) async fn serve_syncs(shard: Rc<Shard>, conn: Rc<Conn>, first: SyncRequest) {
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
    let tag = (conn.room_tags && !inbox).then(|| room.clone());
    let served = read_stored(shard, conn, room, after, |page| {
        let batches = stored_batches(conn.websocket, tag.as_deref(), page, SCRATCH_SIZE);
        conn.push_stored_batches(batches, inbox, shard.queue_limits());
    })
    .await;
    let echoed: &[u8] = if served { &body } else { &[] };
    shard.reply(
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
            conn: shard.conn_ref(conn),
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
pub(crate) async fn catch_up(shard: Rc<Shard>, conn: Rc<Conn>) {
    let after = conn.delivery.queued_floor();
    read_stored(&shard, &conn, String::new(), after, |page| {
        // One batch per message: what is left after dropping the known ones may have gaps,
        // and a batch stands for a consecutive run.
        for m in page.iter().filter(|m| conn.delivery.is_new(m.seq)) {
            let batches =
                stored_batches(conn.websocket, None, std::slice::from_ref(m), SCRATCH_SIZE);
            conn.push_stored_batches(batches, true, shard.queue_limits());
        }
    })
    .await;
}
