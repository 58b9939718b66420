//! The writing side of a connection: what is queued goes to the socket, coalesced into one
//! write through the shard's scratch buffer.

use std::cell::Cell;
use std::collections::VecDeque;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use imgate_runtime::SendDone;
use imgate_shared::link::{Body, InboxAck};

use crate::conn::{CloseReason, Conn, Pushed, Queued, Unsent};
use crate::shard::{Shard, SCRATCH_SIZE};
use crate::socket_io::{poll_flush, poll_write};
use crate::stream::ClientStream;

/// Hands `frame` to `conn` from a fan-out loop: written to the socket at once when nothing is
/// queued before it and the socket takes it (no task wake-up, no queue entry, no reference
/// count touched), queued for the connection's writer otherwise. `report`: the stored
/// sequences the frame carries, reported once written (a client that does not ack).
pub(crate) fn write_or_queue(
    shard: &Shard,
    conn: &Conn,
    frame: &Bytes,
    report: Option<(u64, u64)>,
) -> Pushed {
    if conn.is_closing() {
        return Pushed::Closed;
    }
    if conn.is_idle() {
        let attempt = match &*conn.stream.borrow() {
            // Through the ring: the fan-out submits its slice's sends in one call. Frames
            // that report stored sequences keep the plain path, which reports them at once.
            ClientStream::Plain(socket) if shard.ring_sends && report.is_none() => {
                if !socket.may_write() {
                    None
                } else if socket.send_in_ring(frame.clone(), conn.id).is_ok() {
                    conn.in_ring.set(true);
                    return Pushed::Written;
                } else {
                    Some(socket.try_write(frame))
                }
            }
            ClientStream::Plain(socket) => Some(socket.try_write(frame)),
            // TLS needs its records flushed by the writer.
            _ => None,
        };
        match attempt {
            Some(Ok(Some(n))) => {
                count_write(shard, n);
                if n == frame.len() {
                    if let Some(report) = report {
                        written(shard, conn, &[report]);
                    }
                    return Pushed::Written;
                }
                conn.unsent.set(Some(Box::new(Unsent {
                    bytes: frame.slice(n..),
                    report: report.into_iter().collect(),
                })));
                conn.wake_writer();
                return Pushed::Queued;
            }
            Some(Err(_)) => {
                conn.close(CloseReason::Io);
                return Pushed::Closed;
            }
            // Would block, or TLS: the writer takes it from the queue.
            Some(Ok(None)) | None => {}
        }
    }
    conn.push_items(
        std::iter::once(Queued {
            bytes: frame.clone(),
            report,
        }),
        shard.queue_limits(),
    )
}

/// What a send through the ring did ([`write_or_queue`]): counted as a write; what the socket
/// did not take (all of it, if it was full) goes first to the connection's writer, which is
/// woken when there is anything to write or someone waits for the queue to drain.
pub(crate) fn ring_sent(shard: &Shard, done: SendDone) {
    // A connection closed meanwhile: its frame is dropped with it.
    let Some(conn) = shard.conn(done.tag) else {
        return;
    };
    conn.in_ring.set(false);
    let rest = match done.result {
        Ok(n) => {
            count_write(shard, n);
            shard.stats.ring_sends.inc();
            (n < done.buf.len()).then(|| done.buf.slice(n..))
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            if let ClientStream::Plain(socket) = &*conn.stream.borrow() {
                socket.would_block();
            }
            Some(done.buf)
        }
        Err(_) => {
            conn.close(CloseReason::Io);
            return;
        }
    };
    if let Some(bytes) = rest {
        conn.unsent.set(Some(Box::new(Unsent {
            bytes,
            report: Vec::new(),
        })));
    }
    if !conn.drained() || conn.awaits_drain.get() || conn.flush_then_close.get().is_some() {
        conn.wake_writer();
    }
}

/// Submits the ring sends queued so far and handles every completion there is (sends to
/// sockets with room complete within the submission).
pub(crate) fn flush_ring(shard: &Shard) {
    if !shard.ring_sends {
        return;
    }
    imgate_runtime::net::submit_ring_sends();
    handle_ring_completions(shard);
}

/// Handles the ring sends that completed.
pub(crate) fn handle_ring_completions(shard: &Shard) {
    let mut done = std::mem::take(&mut *shard.ring_done.borrow_mut());
    imgate_runtime::net::take_ring_sends(&mut done);
    for sent in done.drain(..) {
        ring_sent(shard, sent);
    }
    // The buffer is kept for the next time (the same size every fan-out).
    *shard.ring_done.borrow_mut() = done;
}

/// One socket write of `bytes` bytes to a client.
fn count_write(shard: &Shard, bytes: usize) {
    shard.stats.writes.inc();
    shard.stats.bytes_sent.add(bytes as u64);
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
            conn: shard.conn_ref(conn),
            mid: conn.mid,
            seq,
        }));
    }
}

/// Drains the queue, coalescing queued frames into one write through the shard's scratch
/// buffer. Only bytes a full socket did not take are copied into a connection-owned buffer,
/// and a drained queue gives its buffer back, so an idle connection holds none.
pub(crate) fn poll_write_side(
    shard: &Shard,
    conn: &Conn,
    cx: &mut Context<'_>,
) -> Poll<CloseReason> {
    let stream = &conn.stream;
    loop {
        if let Some(reason) = conn.close.get() {
            return Poll::Ready(reason);
        }
        if conn.in_ring.get() {
            // Its completion wakes the writer again when there is something to do.
            register(&conn.writer, cx.waker());
            return Poll::Pending;
        }
        if let Some(mut pending) = conn.unsent.take() {
            match poll_write(stream, cx, &pending.bytes) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Poll::Ready(CloseReason::Io),
                Poll::Ready(Ok(n)) => {
                    count_write(shard, n);
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
                if let Some(reason) = conn.flush_then_close.get() {
                    return Poll::Ready(reason);
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
                        count_write(shard, n);
                        written(shard, conn, report.as_slice());
                    }
                    Poll::Ready(Ok(n)) => {
                        count_write(shard, n);
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
                    Poll::Ready(Ok(n)) if n == scratch.len() => {
                        count_write(shard, n);
                        written(shard, conn, &report)
                    }
                    Poll::Ready(Ok(n)) => {
                        count_write(shard, n);
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
}
