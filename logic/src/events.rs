//! Connect, disconnect, join and leave events for the business (`logic.events_url`): queued without waiting
//! (a full queue drops the event and counts it), POSTed as a JSON array in batches of up to
//! `logic.events_batch` or every `logic.events_interval`, and retried with backoff while the
//! endpoint fails. Clients never wait for any of it.
//!
//! The queue is full at `logic.events_queue` events or at `logic.events_queue_bytes` of them,
//! whichever comes first: an event carries the client's key, which the client chooses (up to a
//! frame's size), so a count alone let 10,000 events with 3,800-byte keys hold ~40 MB while the
//! endpoint was down. An event's bytes count from its queueing until its batch is delivered.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::hooks::{self, Endpoint};
use crate::stats::Counters;

/// Longest a failing batch waits before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest one POST of a batch may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// One connect, disconnect, join or leave, as the business receives it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    /// `connect`, `disconnect`, `join` or `leave`.
    pub event: &'static str,
    pub mid: i64,
    pub key: String,
    pub comet: String,
    pub platform: String,
    /// Unix milliseconds, logic's clock.
    pub time: u64,
    /// Why: `auth` for a connect; for a disconnect, `replaced` (a newer connection took its
    /// key), `kicked` (over the user's connection limit), or the reason comet gave
    /// (`client_closed`, `heartbeat_expired`, `slow`, …; `closed` when it gave none); for a
    /// join or leave, `client` (op 12, 24, 26) or `server` (the business's join or leave).
    pub reason: String,
    /// The room joined or left (join and leave only).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub room: String,
}

impl Event {
    /// The memory it holds, as the queue's byte bound counts it.
    fn size(&self) -> usize {
        std::mem::size_of::<Event>()
            + self.key.len()
            + self.comet.len()
            + self.platform.len()
            + self.reason.len()
            + self.room.len()
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Where events are queued; cheap to clone.
#[derive(Clone)]
pub(crate) struct Events {
    queue: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    /// Bytes of the events queued or in the batch being sent ([`Event::size`]).
    bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl Events {
    /// Queues `event`; a full queue (in events or in bytes) drops it, counted.
    pub(crate) fn send(&self, event: Event) {
        let size = event.size();
        let reserved = self
            .bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(size)
                    .filter(|total| *total <= self.max_bytes)
            })
            .is_ok();
        if !reserved {
            self.counters.events_dropped.inc();
            return;
        }
        if self.queue.try_send(event).is_err() {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            self.counters.events_dropped.inc();
        }
    }
}

/// The queue's bounds: `logic.events_queue` events, `logic.events_queue_bytes` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub events: usize,
    pub bytes: usize,
}

/// The queue and the task that drains it into `endpoint`.
pub(crate) fn start(
    endpoint: Endpoint,
    limits: QueueLimits,
    batch: usize,
    interval: Duration,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
) -> (Events, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(limits.events.max(1));
    let bytes = Arc::new(AtomicUsize::new(0));
    let events = Events {
        queue: tx,
        counters: counters.clone(),
        bytes: bytes.clone(),
        max_bytes: limits.bytes,
    };
    let task = tokio::spawn(run(
        endpoint,
        rx,
        bytes,
        batch.max(1),
        interval,
        counters,
        shutdown,
    ));
    (events, task)
}

async fn run(
    endpoint: Endpoint,
    mut queue: mpsc::Receiver<Event>,
    bytes: Arc<AtomicUsize>,
    batch_max: usize,
    interval: Duration,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batch: Vec<Event> = Vec::with_capacity(batch_max);
    loop {
        // The first event of a batch, then whatever arrives until it is full or due.
        tokio::select! {
            event = queue.recv() => match event {
                Some(e) => batch.push(e),
                None => return,
            },
            _ = shutdown.changed() => return,
        }
        let due = tokio::time::Instant::now() + interval;
        while batch.len() < batch_max {
            tokio::select! {
                event = queue.recv() => match event {
                    Some(e) => batch.push(e),
                    None => break,
                },
                _ = tokio::time::sleep_until(due) => break,
                _ = shutdown.changed() => return,
            }
        }
        let body = serde_json::to_vec(&batch).unwrap_or_default();
        let mut backoff = Duration::from_millis(100);
        loop {
            match hooks::post_json(&endpoint, body.clone(), POST_TIMEOUT, 64 << 10).await {
                Ok(_) => {
                    counters.events_sent.add(batch.len() as u64);
                    break;
                }
                Err(e) => {
                    counters.events_post_failed.inc();
                    tracing::debug!(error = %e, events = batch.len(), "events POST failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        // Delivered: its bytes leave the queue's account.
        let delivered: usize = batch.drain(..).map(|e| e.size()).sum();
        bytes.fetch_sub(delivered, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key_len: usize) -> Event {
        Event {
            event: "connect",
            mid: 1,
            key: "k".repeat(key_len),
            comet: "c".into(),
            platform: String::new(),
            time: 0,
            reason: "auth".into(),
            room: String::new(),
        }
    }

    /// Answers 200 to every request once `open` says so, and counts the events it received.
    async fn endpoint(open: watch::Receiver<bool>) -> (String, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let received = Arc::new(AtomicUsize::new(0));
        let counted = received.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let (counted, mut open) = (counted.clone(), open.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 65536];
                    loop {
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + 4 + len {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let body: Vec<serde_json::Value> =
                            serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap();
                        buf.drain(..end + 4 + len);
                        while !*open.borrow_and_update() {
                            if open.changed().await.is_err() {
                                return;
                            }
                        }
                        counted.fetch_add(body.len(), Ordering::SeqCst);
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (url, received)
    }

    /// Found by probing: the queue was bounded in events only, so events with 3,800-byte keys
    /// held ~40 MB while the endpoint was down. Its bytes are bounded too, and given back once
    /// a batch is delivered.
    #[tokio::test]
    async fn the_queue_is_bounded_in_bytes_until_its_events_are_delivered() {
        let (open_tx, open) = watch::channel(false);
        let (url, received) = endpoint(open).await;
        let counters = Arc::new(Counters::default());
        let (_shutdown_tx, shutdown) = watch::channel(false);
        let big = event(500).size();
        let (events, _task) = start(
            Endpoint::parse("events", &url).unwrap(),
            QueueLimits {
                events: 1000,
                bytes: 3 * big + big / 2,
            },
            100,
            Duration::from_millis(10),
            counters.clone(),
            shutdown,
        );
        // The endpoint holds its answer: nothing is delivered, three fit, the rest are dropped.
        for _ in 0..10 {
            events.send(event(500));
        }
        assert_eq!(counters.events_dropped.get(), 7);
        assert_eq!(events.bytes.load(Ordering::SeqCst), 3 * big);
        // Delivered: the bytes are given back and the queue takes events again.
        open_tx.send(true).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::SeqCst) < 3 || events.bytes.load(Ordering::SeqCst) > 0 {
            assert!(tokio::time::Instant::now() < deadline, "not delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        events.send(event(500));
        assert_eq!(counters.events_dropped.get(), 7);
        assert_eq!(counters.events_sent.get(), 3);
    }
}
