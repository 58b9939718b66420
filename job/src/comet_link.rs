//! One comet's cluster link as job sees it: a bounded FIFO of ready-to-write link frames and a
//! task that keeps a TCP connection to the comet and writes them, several per syscall.
//!
//! Frames queued while the link is (re)connecting wait in the queue, which is bounded in frames
//! and in bytes. A full queue is reported to the caller, who counts it; nothing is dropped
//! silently. Dropping the [`CometLink`] lets the
//! task write out what is queued and then close.
//!
//! Every frame carries the [`Guards`] of the bus messages in it. They are dropped (which tells
//! the bus the messages are delivered, so it may commit them) only once the frame has been
//! written and flushed to the comet's socket, or once the frame is given up (write failed,
//! comet unreachable when its link closes; counted and logged). A frame queued to several
//! comets shares one [`Guards`], so the messages count as delivered after the last comet.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use imgate_bus::DeliveryGuard;
use imgate_shared::link::{self, Body, Envelope, LinkHello};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;

use crate::stats::Counters;

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes written between flushes at most, so one busy link still flushes regularly.
const MAX_WRITE_BATCH: usize = 1 << 20;

/// The delivery guards of the bus messages in one link frame, shared by every comet it goes to.
pub(crate) type Guards = Arc<Vec<DeliveryGuard>>;

/// One queued link frame, the guards it releases once written, and its stamp.
pub(crate) type Item = (Bytes, Guards, u64);

/// A link frame ready to queue: the encoded envelope, whose id is the stamp job gave it (its
/// own clock, microseconds; never 0). The comet echoes the stamp of the last push it handled
/// in its load reports, so job sees how far behind what it sent each shard is.
#[derive(Clone)]
pub(crate) struct LinkFrame {
    pub bytes: Bytes,
    pub stamp: u64,
}

impl LinkFrame {
    pub(crate) fn new(body: Body) -> Self {
        Self::accepted(body, 0)
    }

    /// A push logic accepted at `accepted_us` (Unix µs; 0: unknown).
    pub(crate) fn accepted(body: Body, accepted_us: u64) -> Self {
        let stamp = now_us().max(1);
        let mut envelope = Envelope::new(stamp, body);
        envelope.accepted_us = accepted_us;
        LinkFrame {
            bytes: envelope.to_frame(),
            stamp,
        }
    }
}

/// How much one comet link may hold unwritten.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub frames: usize,
    /// A single frame larger than this is still taken when nothing else waits.
    pub bytes: usize,
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueError {
    Full,
    Closed,
}

/// Where one comet's links stand: a comet counts as linked (`Counters::connected`) while all
/// of its shards' links are up.
pub(crate) struct LinkedShards {
    shards: usize,
    up: AtomicUsize,
}

impl LinkedShards {
    pub(crate) fn new(shards: usize) -> Arc<Self> {
        Arc::new(LinkedShards {
            shards,
            up: AtomicUsize::new(0),
        })
    }

    fn connected(&self, counters: &Counters) {
        if self.up.fetch_add(1, Ordering::Relaxed) + 1 == self.shards {
            counters.connected.inc();
        }
    }

    fn disconnected(&self, counters: &Counters) {
        if self.up.fetch_sub(1, Ordering::Relaxed) == self.shards {
            counters.connected.sub(1);
        }
    }
}

/// Unhandled stamps a link remembers; older ones are forgotten (the lag then reads low, but
/// a shard that far behind is over the line long before).
const MAX_UNHANDLED: usize = 4096;

/// The latest load report of one comet shard, written by its link's reader.
#[derive(Default)]
pub(crate) struct ShardLoad {
    busy_permille: AtomicU32,
    /// Stamps of the pushes written to the shard that it has not said it handled yet, oldest
    /// first (at most [`MAX_UNHANDLED`]).
    unhandled: std::sync::Mutex<std::collections::VecDeque<u64>>,
    /// Milliseconds since `EPOCH` when it arrived; 0: none yet.
    at_ms: AtomicU64,
}

impl ShardLoad {
    fn set(&self, report: &link::Load) {
        self.busy_permille
            .store(report.busy_permille, Ordering::Relaxed);
        let mut unhandled = self.unhandled.lock().unwrap_or_else(|e| e.into_inner());
        while unhandled
            .front()
            .is_some_and(|&stamp| stamp <= report.handled)
        {
            unhandled.pop_front();
        }
        self.at_ms.store(now_ms().max(1), Ordering::Relaxed);
    }

    /// Pushes with these stamps were written to the shard.
    fn written(&self, stamps: &[u64]) {
        let mut unhandled = self.unhandled.lock().unwrap_or_else(|e| e.into_inner());
        unhandled.extend(stamps);
        let over = unhandled.len().saturating_sub(MAX_UNHANDLED);
        unhandled.drain(..over);
    }

    /// How far behind what job wrote to it the shard's fan-out is: the age of the oldest push
    /// written to it that it has not said it handled; zero when there is none.
    pub(crate) fn lag(&self) -> Duration {
        let unhandled = self.unhandled.lock().unwrap_or_else(|e| e.into_inner());
        match unhandled.front() {
            Some(&oldest) => Duration::from_micros(now_us().saturating_sub(oldest)),
            None => Duration::ZERO,
        }
    }

    /// The shard's busy share: its last report if it came within `max_age`; fully busy if
    /// a shard that reports has been silent longer (too busy to run its tick, or hung);
    /// `None` if it never reported (a comet that does not).
    pub(crate) fn busy_permille(&self, max_age: Duration) -> Option<u32> {
        let at = self.at_ms.load(Ordering::Relaxed);
        if at == 0 {
            return None;
        }
        let age = now_ms().saturating_sub(at);
        Some(if age <= max_age.as_millis() as u64 {
            self.busy_permille.load(Ordering::Relaxed)
        } else {
            1000
        })
    }
}

fn now_ms() -> u64 {
    now_us() / 1000
}

/// Microseconds on job's own monotonic clock.
fn now_us() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    EPOCH
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_micros() as u64
}

/// The sending side of one link to one comet shard.
pub(crate) struct CometLink {
    queue: mpsc::Sender<Item>,
    /// Bytes queued and not yet written, shared with the link task.
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    /// What the shard last said of its load.
    pub load: Arc<ShardLoad>,
    task: JoinHandle<()>,
}

impl CometLink {
    /// Starts the link task for shard `shard` of comet `id` at `addr`; every connection it
    /// makes starts with a `LinkHello` naming the shard.
    pub(crate) fn spawn(
        id: String,
        addr: String,
        shard: u32,
        linked: Arc<LinkedShards>,
        limits: QueueLimits,
        counters: Arc<Counters>,
    ) -> Self {
        let (queue, frames) = mpsc::channel(limits.frames.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let load = Arc::new(ShardLoad::default());
        let task = tokio::spawn(run(
            Target {
                id,
                addr: addr.clone(),
                shard,
                linked,
                load: load.clone(),
            },
            frames,
            queued_bytes.clone(),
            counters,
        ));
        CometLink {
            queue,
            queued_bytes,
            max_bytes: limits.bytes,
            load,
            task,
        }
    }

    /// Queues one link frame without waiting. A refused frame's guards drop with it.
    pub(crate) fn send(&self, frame: &LinkFrame, guards: Guards) -> Result<(), QueueError> {
        let len = frame.bytes.len();
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if queued > 0 && queued.saturating_add(len) > self.max_bytes {
            return Err(QueueError::Full);
        }
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        let item = (frame.bytes.clone(), guards, frame.stamp);
        self.queue.try_send(item).map_err(|e| {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => QueueError::Full,
                TrySendError::Closed(_) => QueueError::Closed,
            }
        })
    }

    /// Bytes queued and not written yet.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Closes the queue and waits (at most `grace`) for the queued frames to be written.
    pub(crate) async fn close(self, grace: Duration) {
        let CometLink {
            queue, mut task, ..
        } = self;
        drop(queue);
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

enum Ended {
    /// The queue was closed and everything in it written.
    Drained,
    /// The connection broke; reconnect.
    Broken,
}

/// Which comet shard a link task serves.
struct Target {
    id: String,
    addr: String,
    shard: u32,
    linked: Arc<LinkedShards>,
    load: Arc<ShardLoad>,
}

async fn run(
    target: Target,
    mut frames: mpsc::Receiver<Item>,
    queued_bytes: Arc<AtomicUsize>,
    counters: Arc<Counters>,
) {
    let Target {
        id,
        addr,
        shard,
        linked,
        load,
    } = target;
    let hello = Envelope::new(0, Body::LinkHello(LinkHello { shard })).to_frame();
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    loop {
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&addr)).await;
        let stream = match connected {
            Ok(Ok(stream)) => stream,
            Ok(Err(_)) | Err(_) => {
                let error = match connected {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {CONNECT_TIMEOUT:?}"),
                };
                if frames.is_closed() {
                    let lost = frames.len() as u64;
                    if lost > 0 {
                        counters.link_write_failed.add(lost);
                        tracing::warn!(comet = %id, %addr, lost, %error, "comet link closed while unreachable; queued frames lost");
                    }
                    return;
                }
                failures += 1;
                if failures == 1 {
                    tracing::warn!(comet = %id, %addr, %error, "cannot connect to comet; retrying");
                } else {
                    tracing::debug!(comet = %id, %addr, %error, failures, "cannot connect to comet");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = MIN_BACKOFF;
        failures = 0;
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        if let Err(e) = stream.write_all(&hello).await {
            tracing::warn!(comet = %id, %addr, shard, error = %e, "comet link broke at its hello; reconnecting");
            tokio::time::sleep(backoff).await;
            continue;
        }
        tracing::info!(comet = %id, %addr, shard, "comet link connected");
        linked.connected(&counters);
        let ended = pump(stream, &mut frames, &queued_bytes, &counters, &load).await;
        linked.disconnected(&counters);
        match ended {
            Ended::Drained => {
                tracing::debug!(comet = %id, "comet link closed");
                return;
            }
            Ended::Broken => {
                tracing::warn!(comet = %id, %addr, "comet link broke; reconnecting");
            }
        }
    }
}

/// Writes queued frames until the queue closes or the connection breaks.
async fn pump(
    stream: TcpStream,
    frames: &mut mpsc::Receiver<Item>,
    queued_bytes: &AtomicUsize,
    counters: &Counters,
    load: &Arc<ShardLoad>,
) -> Ended {
    let (reader, writer) = stream.into_split();
    let mut writer = BufWriter::with_capacity(64 << 10, writer);
    // The comet's load reports are read on their own task, so they keep arriving while a
    // write waits for a slow comet (exactly when they matter); it ends with the connection.
    let mut closed = tokio::spawn(read_loads(reader, load.clone()));
    let _stop_reading = AbortOnDrop(closed.abort_handle());
    loop {
        tokio::select! {
            biased;
            frame = frames.recv() => {
                let Some(item) = frame else {
                    let _ = writer.flush().await;
                    let _ = writer.shutdown().await;
                    return Ended::Drained;
                };
                let mut written = 0usize;
                let mut in_batch = 0u64;
                let mut stamps = Vec::new();
                // Released once the whole write is flushed to the socket.
                let mut delivered: Vec<Guards> = Vec::new();
                let mut next = Some(item);
                let mut result = Ok(());
                while let Some((frame, guards, stamp)) = next.take() {
                    in_batch += 1;
                    stamps.push(stamp);
                    written += frame.len();
                    delivered.push(guards);
                    if let Err(e) = writer.write_all(&frame).await {
                        result = Err(e);
                        break;
                    }
                    if written < MAX_WRITE_BATCH {
                        next = frames.try_recv().ok();
                    }
                }
                if result.is_ok() {
                    result = writer.flush().await;
                }
                // Taken off the queue either way: written, or given up with the connection.
                queued_bytes.fetch_sub(written, Ordering::Relaxed);
                if let Err(e) = result {
                    counters.link_write_failed.add(in_batch);
                    tracing::warn!(error = %e, frames = in_batch, "comet link write failed; frames of this write given up");
                    return Ended::Broken;
                }
                drop(delivered);
                load.written(&stamps);
            }
            _ = &mut closed => return Ended::Broken,
        }
    }
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads what the comet sends back on the link (its load reports) until it closes.
async fn read_loads(mut reader: tokio::net::tcp::OwnedReadHalf, load: Arc<ShardLoad>) {
    let mut buf = bytes::BytesMut::new();
    loop {
        match reader.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            match link::decode_frame(&mut buf) {
                Ok(Some(envelope)) => {
                    if let Some(Body::Load(report)) = envelope.body {
                        load.set(&report);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "bad frame from a comet on its link");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard is behind by the age of the oldest push written to it that it has not handled,
    /// and not behind once it has handled the last one written.
    #[test]
    fn a_shard_lags_by_the_age_of_the_oldest_push_it_has_not_handled() {
        let load = ShardLoad::default();
        assert_eq!(load.lag(), Duration::ZERO, "nothing written");
        let first = now_us().max(1);
        std::thread::sleep(Duration::from_millis(30));
        let second = now_us();
        load.written(&[first, second]);
        assert!(load.lag() >= Duration::from_millis(30), "{:?}", load.lag());
        // The first handled: the lag is the second's age, younger.
        load.set(&link::Load {
            busy_permille: 900,
            handled: first,
        });
        assert!(load.lag() < Duration::from_millis(30), "{:?}", load.lag());
        load.set(&link::Load {
            busy_permille: 900,
            handled: second,
        });
        assert_eq!(load.lag(), Duration::ZERO, "caught up");
    }

    /// A comet that cannot be reached keeps frames queued: the queue must stop at its byte
    /// limit as well as at its frame limit.
    #[tokio::test]
    async fn a_link_queue_is_bounded_in_bytes() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let limits = QueueLimits {
            frames: 100,
            bytes: 1000,
        };
        let link = CometLink::spawn(
            "c".into(),
            addr,
            0,
            LinkedShards::new(1),
            limits,
            Arc::default(),
        );
        let frame = |len: usize| LinkFrame {
            bytes: Bytes::from(vec![0u8; len]),
            stamp: 1,
        };
        let guards = || Guards::default();
        assert_eq!(link.send(&frame(400), guards()), Ok(()));
        assert_eq!(link.send(&frame(600), guards()), Ok(()));
        assert_eq!(link.send(&frame(1), guards()), Err(QueueError::Full));
        link.close(Duration::from_millis(10)).await;

        // One frame above the limit still goes when nothing else waits.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let link = CometLink::spawn(
            "c".into(),
            addr,
            0,
            LinkedShards::new(1),
            limits,
            Arc::default(),
        );
        assert_eq!(link.send(&frame(5000), guards()), Ok(()));
        assert_eq!(link.send(&frame(1), guards()), Err(QueueError::Full));
        link.close(Duration::from_millis(10)).await;
    }
}
