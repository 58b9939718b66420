//! One client connection (TCP or WebSocket) from accept to close, run as one task: a
//! handshake bounded by a deadline (`handshake.rs`, boxed, so its state is freed once it is
//! done), then one small future that reads (`ops.rs`) and writes (`writer.rs`) through the
//! connection's [`Conn`]. The heartbeat deadline lives on the shard's wheel (`heartbeat.rs`).
//! Idle connections hold no read or write buffer, and all of an idle connection's state is its
//! `Conn`, its map entries, a task of about a hundred bytes and its socket (a descriptor and a
//! token).

use std::future::Future;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::{AsyncRead, FutureExt};
use imgate_runtime::net::Socket;
use imgate_shared::link::{Body, Disconnect};

use crate::conn::{CloseReason, Conn, Reading};
use crate::handshake::open;
use crate::limits::Refused;
use crate::ops::on_event;
use crate::panics::caught;
use crate::reassembly::Flow;
use crate::setup::Listen;
use crate::shard::Shard;
use crate::stream::ClientStream;
use crate::writer::poll_write_side;

/// Serves one accepted client connection (its socket and peer) until it closes. They come
/// boxed so that the task, which lives as long as the connection, does not keep room for them.
pub(crate) async fn serve(
    shard: Rc<Shard>,
    accepted: Box<(Socket, Option<SocketAddr>)>,
    listen: Listen,
) {
    shard.stats.accepted.inc();
    let accepted_at = Instant::now();
    let _ = accepted.0.set_nodelay();
    // Held until the connection ends: its place under the connection limits.
    let _slot = match shard.comet.limits.admit(accepted.1.map(|p| p.ip())) {
        Ok(slot) => slot,
        Err(refused) => {
            let counter = match refused {
                Refused::Comet => &shard.stats.refused_conn_limit,
                Refused::Ip => &shard.stats.refused_ip_limit,
            };
            counter.inc();
            return;
        }
    };
    // Boxed: the handshake's state is large and short-lived, so it must not size the task
    // that an idle connection keeps for its whole life. A panic in it drops what it held
    // (the socket among it) and is counted; the connection never started.
    let conn = match AssertUnwindSafe(Box::pin(open(&shard, accepted, listen, accepted_at)))
        .catch_unwind()
        .await
    {
        Ok(Some(conn)) => conn,
        Ok(None) => return,
        Err(panic) => {
            caught(&shard, None, &*panic);
            CloseReason::Panic.count(&shard.stats);
            return;
        }
    };
    let raced = Connected {
        shard: &shard,
        conn: &conn,
    }
    .await;
    let reason = conn.close.get().unwrap_or(raced);
    conn.close(reason);
    // Close the socket now: a task still holding the connection (a sync waiting for logic)
    // must not keep its descriptor open.
    drop(conn.stream.replace(ClientStream::Closed));
    shard.unregister(&conn);
    reason.count(&shard.stats);
    shard.logic.notify(Body::Disconnect(Disconnect {
        conn: shard.conn_ref(&conn),
        mid: conn.mid,
        key: conn.key.to_string(),
        reason: reason.name().to_string(),
    }));
}

/// An authenticated connection at work: reads client frames and answers them through the
/// queue, and writes what is queued. Ends with why the connection should close. Holds only
/// references, so an idle connection's task stays small; its state is in the [`Conn`].
struct Connected<'a> {
    shard: &'a Rc<Shard>,
    conn: &'a Rc<Conn>,
}

impl Future for Connected<'_> {
    type Output = CloseReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let (shard, conn) = (self.shard, self.conn);
        // A panic while the connection works closes it like any other reason to close. Caught
        // here, inside the poll, so that catching costs the connection's task no state.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| {
            if let Poll::Ready(reason) = poll_read_side(shard, conn, cx) {
                return Poll::Ready(reason);
            }
            poll_write_side(shard, conn, cx)
        }));
        polled.unwrap_or_else(|panic| {
            caught(shard, Some(conn.id), &*panic);
            Poll::Ready(CloseReason::Panic)
        })
    }
}

/// Reads client frames until the socket has nothing more (pending) or the connection should
/// end. Each read goes into the shard's scratch buffer and is handed to the reassembly inside
/// the same poll.
fn poll_read_side(shard: &Rc<Shard>, conn: &Rc<Conn>, cx: &mut Context<'_>) -> Poll<CloseReason> {
    loop {
        let fed = match conn.reading.get() {
            Reading::Closed => return Poll::Pending,
            Reading::Buffered => {
                // Frames that arrived together with the auth frame.
                conn.reading.set(Reading::Open);
                conn.rx
                    .borrow_mut()
                    .feed(&mut [], &mut |e| on_event(shard, conn, e))
            }
            Reading::Open => {
                let mut buf = shard.read_scratch.borrow_mut();
                let polled = Pin::new(&mut *conn.stream.borrow_mut()).poll_read(cx, &mut buf[..]);
                match polled {
                    Poll::Ready(Ok(0)) => return Poll::Ready(CloseReason::Quiet),
                    Poll::Ready(Ok(n)) => conn
                        .rx
                        .borrow_mut()
                        .feed(&mut buf[..n], &mut |e| on_event(shard, conn, e)),
                    Poll::Ready(Err(_)) => return Poll::Ready(CloseReason::Io),
                    Poll::Pending => return Poll::Pending,
                }
            }
        };
        match fed {
            Err(e) => {
                tracing::debug!(conn_id = conn.id, "malformed client data: {}", e.0);
                return Poll::Ready(CloseReason::Malformed);
            }
            Ok(Flow::Stop) if conn.close.get().is_some() => {
                // Closed while reading (over its rate).
                return Poll::Ready(conn.close.get().unwrap_or(CloseReason::Malformed));
            }
            Ok(Flow::Stop) => {
                // A WebSocket close: the writer sends the answer, then the connection ends.
                conn.reading.set(Reading::Closed);
                conn.flush_then_close.set(Some(CloseReason::Quiet));
                conn.wake_writer();
                return Poll::Pending;
            }
            Ok(Flow::Continue) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    /// Per-connection state budget: the connection task's future (everything an idle
    /// connection's task owns besides its `Conn`) and the `Conn` (all the rest of its state
    /// but its map entries and its socket's epoll slot).
    #[test]
    fn connection_state_is_small() {
        imgate_runtime::Runtime::new().unwrap().block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let stream = std::net::TcpStream::connect(addr).unwrap();
            stream.set_nonblocking(true).unwrap();
            let shard = Shard::detached(Default::default());
            let socket = Socket::new(OwnedFd::from(stream)).unwrap();
            let task = serve(shard, Box::new((socket, Some(addr))), Listen::WS);
            let future = std::mem::size_of_val(&task);
            let conn = std::mem::size_of::<Conn>();
            println!(
                "connection future {future} bytes, Conn {conn} bytes, Socket {}, Reassembly {}",
                std::mem::size_of::<Socket>(),
                std::mem::size_of::<crate::reassembly::Reassembly>()
            );
            assert!(future <= 96, "future {future}");
            // With its two reference counts, a `Conn` fills mimalloc's 448-byte class.
            assert!(conn + 16 <= 448, "conn {conn}");
        });
    }
}
