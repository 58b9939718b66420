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

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use imgate_bus::DeliveryGuard;
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

/// One queued link frame and the guards it releases once written.
pub(crate) type Item = (Bytes, Guards);

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

/// The sending side of one comet link.
pub(crate) struct CometLink {
    pub addr: String,
    queue: mpsc::Sender<Item>,
    /// Bytes queued and not yet written, shared with the link task.
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
    task: JoinHandle<()>,
}

impl CometLink {
    /// Starts the link task for comet `id` at `addr`.
    pub(crate) fn spawn(
        id: String,
        addr: String,
        limits: QueueLimits,
        counters: Arc<Counters>,
    ) -> Self {
        let (queue, frames) = mpsc::channel(limits.frames.max(1));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(run(
            id,
            addr.clone(),
            frames,
            queued_bytes.clone(),
            counters,
        ));
        CometLink {
            addr,
            queue,
            queued_bytes,
            max_bytes: limits.bytes,
            task,
        }
    }

    /// Queues one link frame without waiting. A refused frame's guards drop with it.
    pub(crate) fn send(&self, frame: Bytes, guards: Guards) -> Result<(), QueueError> {
        let len = frame.len();
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if queued > 0 && queued.saturating_add(len) > self.max_bytes {
            return Err(QueueError::Full);
        }
        self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        self.queue.try_send((frame, guards)).map_err(|e| {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            match e {
                TrySendError::Full(_) => QueueError::Full,
                TrySendError::Closed(_) => QueueError::Closed,
            }
        })
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

async fn run(
    id: String,
    addr: String,
    mut frames: mpsc::Receiver<Item>,
    queued_bytes: Arc<AtomicUsize>,
    counters: Arc<Counters>,
) {
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
        tracing::info!(comet = %id, %addr, "comet link connected");
        counters.connected.inc();
        let ended = pump(stream, &mut frames, &queued_bytes, &counters).await;
        counters.connected.sub(1);
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
) -> Ended {
    let (mut reader, writer) = stream.into_split();
    let mut writer = BufWriter::with_capacity(64 << 10, writer);
    // The comet sends nothing on this link; reading only notices that it closed.
    let mut scratch = [0u8; 256];
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
                // Released once the whole write is flushed to the socket.
                let mut delivered: Vec<Guards> = Vec::new();
                let mut next = Some(item);
                let mut result = Ok(());
                while let Some((frame, guards)) = next.take() {
                    in_batch += 1;
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
            }
            read = reader.read(&mut scratch) => match read {
                Ok(0) | Err(_) => return Ended::Broken,
                Ok(_) => {}
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let link = CometLink::spawn("c".into(), addr, limits, Arc::default());
        let frame = |len: usize| Bytes::from(vec![0u8; len]);
        let guards = || Guards::default();
        assert_eq!(link.send(frame(400), guards()), Ok(()));
        assert_eq!(link.send(frame(600), guards()), Ok(()));
        assert_eq!(link.send(frame(1), guards()), Err(QueueError::Full));
        link.close(Duration::from_millis(10)).await;

        // One frame above the limit still goes when nothing else waits.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap().to_string();
        drop(closed);
        let link = CometLink::spawn("c".into(), addr, limits, Arc::default());
        assert_eq!(link.send(frame(5000), guards()), Ok(()));
        assert_eq!(link.send(frame(1), guards()), Err(QueueError::Full));
        link.close(Duration::from_millis(10)).await;
    }
}
