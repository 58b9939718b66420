//! A shard's connection to logic's cluster link: pipelined requests matched to replies by id,
//! plus one-way notices. The connection is re-established with backoff when it drops; requests
//! made meanwhile wait in the queue until their deadline.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_lite::future::{self, poll_fn};
use imgate_runtime::net::Socket;
use imgate_runtime::time::sleep;
use imgate_shared::link::{self, Body, Envelope};

use crate::socket_io::{read_with, write_all};
use crate::stats::ShardStats;
use imgate_shared::log_limit::RateLimit;

/// Queued messages kept while logic is unreachable or slow; the oldest are dropped beyond
/// either bound (and counted), so upstream frames clients send meanwhile cannot grow it
/// without limit.
const MAX_OUTGOING: usize = 100_000;
const MAX_OUTGOING_BYTES: usize = 16 << 20;
/// Largest batch written to logic in one write.
const WRITE_BATCH: usize = 64 << 10;

/// Why a request to logic got no usable answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LogicError {
    #[error("logic did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the connection to logic was lost")]
    Disconnected,
    /// Logic answered with a failure: its message, and what failed
    /// ([`link::failure_cause`]; empty: refused).
    #[error("logic refused: {message}")]
    Refused { message: String, cause: String },
}

#[derive(Default)]
struct Slot {
    value: RefCell<Option<Result<Body, LogicError>>>,
    waker: RefCell<Option<Waker>>,
}

impl Slot {
    fn fill(&self, value: Result<Body, LogicError>) {
        *self.value.borrow_mut() = Some(value);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }
}

struct Outgoing {
    id: u64,
    /// A request whose caller waits for a reply (skipped if the caller gave up).
    awaited: bool,
    frame: Bytes,
}

struct ForgetOnDrop<'a> {
    client: &'a LogicClient,
    id: u64,
}

impl Drop for ForgetOnDrop<'_> {
    fn drop(&mut self) {
        self.client.pending.borrow_mut().remove(&self.id);
    }
}

/// One shard's client of logic.
pub(crate) struct LogicClient {
    next_id: Cell<u64>,
    outgoing: RefCell<VecDeque<Outgoing>>,
    /// Bytes of the frames in `outgoing`.
    outgoing_bytes: Cell<usize>,
    stats: Arc<ShardStats>,
    pending: RefCell<HashMap<u64, Rc<Slot>>>,
    writer: RefCell<Option<Waker>>,
}

impl LogicClient {
    pub fn new(stats: Arc<ShardStats>) -> Self {
        LogicClient {
            next_id: Cell::new(1),
            outgoing: RefCell::new(VecDeque::new()),
            outgoing_bytes: Cell::new(0),
            stats,
            pending: RefCell::new(HashMap::new()),
            writer: RefCell::new(None),
        }
    }

    fn enqueue(&self, id: u64, awaited: bool, body: Body) {
        let frame = Envelope::new(id, body).to_frame();
        let mut queue = self.outgoing.borrow_mut();
        let mut bytes = self.outgoing_bytes.get() + frame.len();
        queue.push_back(Outgoing { id, awaited, frame });
        let mut dropped = 0u64;
        while queue.len() > MAX_OUTGOING || bytes > MAX_OUTGOING_BYTES {
            let Some(oldest) = queue.pop_front() else {
                break;
            };
            bytes -= oldest.frame.len();
            dropped += 1;
        }
        self.outgoing_bytes.set(bytes);
        drop(queue);
        // Warn at most every 10 s (with how many warnings were held back); the counter tells
        // the rest.
        if dropped > 0 {
            static DROPPING: RateLimit = RateLimit::per_secs(10);
            self.stats.logic_dropped.add(dropped);
            imgate_shared::warn_limited!(
                DROPPING,
                "logic unreachable or slow: dropping the oldest queued messages"
            );
        }
        if let Some(w) = self.writer.borrow_mut().take() {
            w.wake();
        }
    }

    fn take_id(&self) -> u64 {
        let id = self.next_id.get();
        self.next_id.set(id.wrapping_add(1).max(1));
        id
    }

    /// Sends a one-way notice (disconnect, heartbeat, upstream); replies are ignored.
    pub fn notify(&self, body: Body) {
        let id = self.take_id();
        self.enqueue(id, false, body);
    }

    /// Sends a request and waits for its reply, at most `deadline`.
    pub async fn request(&self, body: Body, deadline: Duration) -> Result<Body, LogicError> {
        let id = self.take_id();
        let slot = Rc::new(Slot::default());
        self.pending.borrow_mut().insert(id, slot.clone());
        // Removes the entry however this future ends (answered, timed out or dropped by a
        // caller that gave up), so an abandoned request is neither kept nor sent.
        let _forget = ForgetOnDrop { client: self, id };
        self.enqueue(id, true, body);
        let answer = poll_fn(|cx| match slot.value.borrow_mut().take() {
            Some(v) => Poll::Ready(v),
            None => {
                *slot.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        });
        let result = future::or(answer, async {
            sleep(deadline).await;
            Err(LogicError::Timeout(deadline))
        })
        .await;
        match result {
            Ok(Body::Error(failure)) => Err(LogicError::Refused {
                message: failure.message,
                cause: failure.cause,
            }),
            other => other,
        }
    }

    /// Keeps a connection to the first reachable of `addrs` and moves messages over it until
    /// the task is dropped.
    pub async fn run(self: Rc<Self>, addrs: Vec<String>, scratch: Rc<RefCell<Vec<u8>>>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if let Some(stream) = connect_first(&addrs).await {
                backoff = Duration::from_millis(50);
                let _ = stream.set_nodelay();
                let stream = RefCell::new(stream);
                self.stats.logic_linked.set(1);
                let reason =
                    future::or(self.read_loop(&stream, &scratch), self.write_loop(&stream)).await;
                self.stats.logic_linked.set(0);
                // Every shard loses its link at once and retries every second: at most one
                // warning per 10 s, with a count of the rest.
                static LOST: RateLimit = RateLimit::per_secs(10);
                imgate_shared::warn_limited!(LOST, "connection to logic lost: {reason}");
                // Requests already sent will never be answered.
                let sent: Vec<Rc<Slot>> = {
                    let queued: std::collections::HashSet<u64> =
                        self.outgoing.borrow().iter().map(|o| o.id).collect();
                    self.pending
                        .borrow()
                        .iter()
                        .filter(|(id, _)| !queued.contains(id))
                        .map(|(_, s)| s.clone())
                        .collect()
                };
                for slot in sent {
                    slot.fill(Err(LogicError::Disconnected));
                }
            }
            sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    async fn read_loop(&self, stream: &RefCell<Socket>, scratch: &RefCell<Vec<u8>>) -> String {
        let mut buf = BytesMut::new();
        loop {
            match read_with(stream, scratch, |data| buf.extend_from_slice(data)).await {
                Ok(Some(())) => {}
                Ok(None) => return "logic closed the connection".into(),
                Err(e) => return format!("read error: {e}"),
            }
            loop {
                match link::decode_frame(&mut buf) {
                    Ok(Some(envelope)) => self.answer(envelope),
                    Ok(None) => break,
                    Err(e) => return format!("bad frame from logic: {e}"),
                }
            }
        }
    }

    fn answer(&self, envelope: Envelope) {
        let slot = self.pending.borrow_mut().remove(&envelope.id);
        if let (Some(slot), Some(body)) = (slot, envelope.body) {
            slot.fill(Ok(body));
        }
    }

    async fn write_loop(&self, stream: &RefCell<Socket>) -> String {
        let mut batch: Vec<u8> = Vec::new();
        loop {
            // A frame as large as a whole batch goes out as it is, not copied into one (an
            // online report with many rooms is megabytes).
            let mut alone: Option<Bytes> = None;
            poll_fn(|cx| {
                let mut queue = self.outgoing.borrow_mut();
                let pending = self.pending.borrow();
                while let Some(item) = queue.front() {
                    if !batch.is_empty() && batch.len() + item.frame.len() > WRITE_BATCH {
                        break;
                    }
                    if batch.is_empty() && item.frame.len() >= WRITE_BATCH {
                        if !item.awaited || pending.contains_key(&item.id) {
                            alone = Some(item.frame.clone());
                        }
                        self.outgoing_bytes
                            .set(self.outgoing_bytes.get() - item.frame.len());
                        queue.pop_front();
                        if alone.is_some() {
                            break;
                        }
                        continue;
                    }
                    if !item.awaited || pending.contains_key(&item.id) {
                        batch.extend_from_slice(&item.frame);
                    }
                    self.outgoing_bytes
                        .set(self.outgoing_bytes.get() - item.frame.len());
                    queue.pop_front();
                }
                if batch.is_empty() && alone.is_none() {
                    *self.writer.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            let out: &[u8] = alone.as_deref().unwrap_or(&batch);
            if let Err(e) = write_all(stream, out).await {
                return format!("write error: {e}");
            }
            batch.clear();
            if batch.capacity() > 4 * WRITE_BATCH {
                batch = Vec::new();
            }
        }
    }
}

async fn connect_first(addrs: &[String]) -> Option<Socket> {
    for spec in addrs {
        let resolved: Vec<SocketAddr> = match spec.to_socket_addrs() {
            Ok(a) => a.collect(),
            Err(e) => {
                tracing::warn!("cannot resolve logic address {spec}: {e}");
                continue;
            }
        };
        for addr in resolved {
            match Socket::connect(addr, Duration::from_secs(1)).await {
                Ok(stream) => return Some(stream),
                Err(e) => tracing::debug!("logic at {addr} unreachable: {e}"),
            }
        }
    }
    None
}

impl LogicClient {
    /// Whether messages are still waiting to be written to logic.
    pub fn has_queued(&self) -> bool {
        !self.outgoing.borrow().is_empty()
    }
}
