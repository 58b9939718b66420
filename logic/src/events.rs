//! Connect, disconnect, join and leave events for the business (`logic.events_url`): queued without waiting
//! (a full queue drops the event and counts it), POSTed as a JSON array in batches of up to
//! `logic.events_batch` or every `logic.events_interval`, and retried with backoff while the
//! endpoint fails. Clients never wait for any of it.
//!
//! **Not lost.** One task sends the batches, one at a time: a batch the endpoint fails (5xx,
//! 408, 429, no answer, refused) is tried again with backoff until it answers 2xx, and nothing
//! queued after it is sent meanwhile, so a user's later event never overtakes an earlier one.
//! Another 4xx is the business refusing those events: retrying would not change the answer, so
//! the batch is dropped, counted and logged. On a graceful stop the task keeps delivering what is
//! queued until `logic.events_drain_timeout`, then drops the rest, counted.
//!
//! **Bounded.** The queue is full at `logic.events_queue` events or at
//! `logic.events_queue_bytes` of them, whichever comes first: an event carries the client's key,
//! which the client chooses (up to a frame's size), so a count alone let 10,000 events with
//! 3,800-byte keys hold ~40 MB while the endpoint was down. An event's bytes count from its
//! queueing until its batch is delivered.
//!
//! Every drop is counted by reason (`imgate_events_dropped_total{reason}`, [`Drops`]) and
//! logged, at most once per [`DROP_LOG_EVERY`].
//!
//! In cluster mode the same events travel through the bus instead ([`BusEvents`]), and the
//! process running job POSTs them ([`consume`]), with the same retries.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use imgate_bus::{BusConsumer, BusEvent, BusMessage, BusProducer, ConnEvent, DeliveryGuard, Push};

use crate::hooks::{self, Endpoint, PostError};
use crate::stats::Counters;

/// Longest a failing batch waits before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Longest one POST of a batch may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a link request waits for the bus to take one of its events (cluster mode): a broker
/// that is down must not make connects outlast `comet.logic_timeout` (3 s), so past this the
/// event counts as dropped (`bus`; the broker may still take it later, so it may yet arrive).
const BUS_WAIT: Duration = Duration::from_secs(1);
/// Drops are logged at most this often (each line says how many since the last one).
pub(crate) const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// One connect, disconnect, join or leave, as the business receives it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(crate) struct Event {
    /// `connect`, `disconnect`, `join` or `leave`.
    pub event: String,
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
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub room: String,
}

impl Event {
    /// The memory it holds, as the queue's byte bound counts it.
    fn size(&self) -> usize {
        std::mem::size_of::<Event>()
            + self.event.len()
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

/// Why events were dropped: the `reason` label of `imgate_events_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The queue was full (`logic.events_queue` events or `logic.events_queue_bytes`).
    QueueFull,
    /// The endpoint answered a 4xx other than 408 and 429: the business refuses them.
    Rejected,
    /// Still undelivered when a graceful stop's `logic.events_drain_timeout` passed.
    Shutdown,
    /// Cluster mode: the bus did not take the event.
    Bus,
}

impl DropReason {
    /// Every reason, in the order of [`Drops`]' counts.
    pub(crate) const ALL: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::Shutdown,
        DropReason::Bus,
    ];

    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
            DropReason::Bus => "bus",
        }
    }
}

/// Dropped events by reason, and the rate-limited log of them.
#[derive(Default)]
pub(crate) struct Drops {
    counts: [AtomicU64; 4],
    /// When a drop was last logged, and the drops since then by reason.
    log: Mutex<(Option<Instant>, [u64; 4])>,
}

impl Drops {
    /// Counts `n` events dropped for `reason` (also in logic's `events_dropped` total) and logs
    /// them, unless a drop was logged less than [`DROP_LOG_EVERY`] ago (the next line then
    /// includes them).
    pub(crate) fn record(&self, reason: DropReason, n: u64, counters: &Counters) {
        if n == 0 {
            return;
        }
        counters.events_dropped.add(n);
        self.counts[reason as usize].fetch_add(n, Ordering::Relaxed);
        let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
        log.1[reason as usize] += n;
        let now = Instant::now();
        if log
            .0
            .is_none_or(|at| now.duration_since(at) >= DROP_LOG_EVERY)
        {
            let since = std::mem::take(&mut log.1);
            log.0 = Some(now);
            tracing::warn!(
                queue_full = since[0],
                rejected = since[1],
                shutdown = since[2],
                bus = since[3],
                "events for logic.events_url dropped (logged at most every {DROP_LOG_EVERY:?})"
            );
        }
    }

    /// Events dropped so far, by reason.
    pub(crate) fn snapshot(&self) -> [(DropReason, u64); 4] {
        DropReason::ALL.map(|r| (r, self.counts[r as usize].load(Ordering::Relaxed)))
    }
}

/// Where events are queued; cheap to clone.
#[derive(Clone)]
pub(crate) struct Events {
    queue: mpsc::Sender<Event>,
    counters: Arc<Counters>,
    drops: Arc<Drops>,
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
            self.drops.record(DropReason::QueueFull, 1, &self.counters);
            return;
        }
        if let Err(e) = self.queue.try_send(event) {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => DropReason::QueueFull,
                // The sending task ended: logic is stopping.
                mpsc::error::TrySendError::Closed(_) => DropReason::Shutdown,
            };
            self.drops.record(reason, 1, &self.counters);
        }
    }
}

/// The queue's bounds: `logic.events_queue` events, `logic.events_queue_bytes` bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueueLimits {
    pub events: usize,
    pub bytes: usize,
}

/// How the sending task batches: `logic.events_batch`, `logic.events_interval`, and how long it
/// keeps delivering once logic stops (`logic.events_drain_timeout`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batching {
    pub batch: usize,
    pub interval: Duration,
    pub drain: Duration,
}

/// The queue and the task that drains it into `endpoint`.
pub(crate) fn start(
    endpoint: Endpoint,
    limits: QueueLimits,
    batching: Batching,
    counters: Arc<Counters>,
    drops: Arc<Drops>,
    shutdown: watch::Receiver<bool>,
) -> (Events, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(limits.events.max(1));
    let bytes = Arc::new(AtomicUsize::new(0));
    let events = Events {
        queue: tx,
        counters: counters.clone(),
        drops: drops.clone(),
        bytes: bytes.clone(),
        max_bytes: limits.bytes,
    };
    let sender = Sender {
        endpoint,
        counters,
        drops,
        stop: Stop::new(shutdown, batching.drain),
    };
    let task = tokio::spawn(sender.run(rx, bytes, batching.batch.max(1), batching.interval));
    (events, task)
}

/// The stop of the task delivering events: it notices the shutdown signal, and from then on
/// has until the drain deadline.
struct Stop {
    shutdown: watch::Receiver<bool>,
    drain: Duration,
    deadline: Option<Instant>,
}

impl Stop {
    fn new(shutdown: watch::Receiver<bool>, drain: Duration) -> Stop {
        let mut stop = Stop {
            shutdown,
            drain,
            deadline: None,
        };
        if *stop.shutdown.borrow_and_update() {
            stop.deadline = Some(Instant::now() + drain);
        }
        stop
    }

    /// Whether logic is stopping (the task then only drains).
    fn stopping(&self) -> bool {
        self.deadline.is_some()
    }

    /// Resolves when the stop begins (at once if it has).
    async fn begun(&mut self) {
        while self.deadline.is_none() {
            // A dropped sender is a stop too.
            let _ = self.shutdown.changed().await;
            if self.shutdown.has_changed().is_err() || *self.shutdown.borrow_and_update() {
                self.deadline = Some(Instant::now() + self.drain);
            }
        }
    }

    /// Resolves when the drain deadline has passed.
    async fn expired(&mut self) {
        self.begun().await;
        if let Some(deadline) = self.deadline {
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// What became of one batch.
#[derive(Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Answered 2xx.
    Delivered,
    /// Answered this 4xx: the business does not want them.
    Rejected(u16),
    /// The stop's drain deadline passed first.
    GaveUp,
}

/// POSTs one batch until `endpoint` answers it.
struct Sender {
    endpoint: Endpoint,
    counters: Arc<Counters>,
    drops: Arc<Drops>,
    stop: Stop,
}

impl Sender {
    /// POSTs `body` until the endpoint answers 2xx, retrying with backoff whatever may succeed
    /// later (5xx, 408, 429, no answer, refused, a broken exchange); until the stop's drain
    /// deadline at most.
    async fn deliver(&mut self, body: Vec<u8>, events: usize) -> Outcome {
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = hooks::post_json(&self.endpoint, body.clone(), POST_TIMEOUT, 64 << 10);
            let answer = tokio::select! {
                answer = attempt => answer,
                _ = self.stop.expired() => return Outcome::GaveUp,
            };
            match answer {
                // A 2xx whose answer is over the cap still took the events.
                Ok(_) | Err(PostError::TooLarge(_)) => {
                    self.counters.events_sent.add(events as u64);
                    return Outcome::Delivered;
                }
                Err(PostError::Status(status))
                    if (400..500).contains(&status) && status != 408 && status != 429 =>
                {
                    return Outcome::Rejected(status)
                }
                Err(e) => {
                    self.counters.events_post_failed.inc();
                    tracing::debug!(error = %e, events, ?backoff, "events POST failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.expired() => return Outcome::GaveUp,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Counts what became of a batch of `n` events that was not delivered.
    fn lost(&self, outcome: &Outcome, n: usize) {
        match outcome {
            Outcome::Delivered => {}
            Outcome::Rejected(status) => {
                tracing::warn!(
                    status,
                    events = n,
                    "logic.events_url refused a batch of events"
                );
                self.drops
                    .record(DropReason::Rejected, n as u64, &self.counters);
            }
            Outcome::GaveUp => self
                .drops
                .record(DropReason::Shutdown, n as u64, &self.counters),
        }
    }

    async fn run(
        mut self,
        mut queue: mpsc::Receiver<Event>,
        bytes: Arc<AtomicUsize>,
        batch_max: usize,
        interval: Duration,
    ) {
        let mut batch: Vec<Event> = Vec::with_capacity(batch_max);
        loop {
            // The first event of a batch, then whatever arrives until it is full or due; once
            // stopping, only what is queued already.
            if self.stop.stopping() {
                match queue.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => return,
                }
            } else {
                tokio::select! {
                    event = queue.recv() => match event {
                        Some(e) => batch.push(e),
                        None => return,
                    },
                    _ = self.stop.begun() => continue,
                }
            }
            let due = Instant::now() + interval;
            while batch.len() < batch_max {
                if self.stop.stopping() {
                    match queue.try_recv() {
                        Ok(e) => batch.push(e),
                        Err(_) => break,
                    }
                    continue;
                }
                tokio::select! {
                    event = queue.recv() => match event {
                        Some(e) => batch.push(e),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(due) => break,
                    _ = self.stop.begun() => {}
                }
            }
            let body = serde_json::to_vec(&batch).unwrap_or_default();
            let outcome = self.deliver(body, batch.len()).await;
            self.lost(&outcome, batch.len());
            // Delivered or dropped: its bytes leave the queue's account.
            let done: usize = batch.drain(..).map(|e| e.size()).sum();
            bytes.fetch_sub(done, Ordering::AcqRel);
            if outcome == Outcome::GaveUp {
                // The deadline passed: what is still queued is dropped, counted.
                queue.close();
                let mut left = 0u64;
                while queue.try_recv().is_ok() {
                    left += 1;
                }
                self.drops
                    .record(DropReason::Shutdown, left, &self.counters);
                return;
            }
        }
    }
}

/// Where the link handler puts events: logic's queue, or (cluster mode) the bus.
#[derive(Clone)]
pub(crate) enum EventSink {
    Queue(Events),
    Bus(BusEvents),
}

impl EventSink {
    /// Queues `event` (never waits), or publishes it to the bus and returns once the bus took
    /// it or refused it (counted, reason `bus`).
    pub(crate) async fn send(&self, event: Event) {
        match self {
            EventSink::Queue(events) => events.send(event),
            EventSink::Bus(bus) => bus.send(event).await,
        }
    }
}

/// Cluster mode: events are published to the events topic ([`BusConfig::events`]), keyed by
/// their user, and whichever process runs job POSTs them ([`consume`]).
///
/// [`BusConfig::events`]: imgate_shared::config::BusConfig::events
#[derive(Clone)]
pub(crate) struct BusEvents {
    pub bus: Arc<dyn BusProducer>,
    pub counters: Arc<Counters>,
    pub drops: Arc<Drops>,
}

impl BusEvents {
    async fn send(&self, event: Event) {
        let json = match serde_json::to_vec(&event) {
            Ok(json) => json,
            Err(_) => return,
        };
        let message = BusMessage::new(Push::Event(ConnEvent {
            mid: event.mid,
            key: event.key,
            json: json.into(),
        }));
        let error = match tokio::time::timeout(BUS_WAIT, self.bus.publish(message)).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no acknowledgement within {BUS_WAIT:?}"),
        };
        tracing::debug!(%error, "the bus did not take an event");
        self.drops.record(DropReason::Bus, 1, &self.counters);
    }
}

/// Delivers the events logics published to the bus (cluster mode) to `logic.events_url`, run
/// by the process that runs job. A message is acknowledged (its guard dropped, so the bus may
/// commit it) only once the business answered its batch 2xx (or refused it with a 4xx,
/// counted): an events poster that dies or stops leaves the rest to the next one.
pub struct EventsConsumer {
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<Counters>,
    drops: Arc<Drops>,
    abandoned: Arc<AtomicU64>,
    drain: Duration,
}

impl EventsConsumer {
    /// Stops taking events, gives the batch in hand until `logic.events_drain_timeout`, hands
    /// back what was not delivered (the next consumer delivers it) and leaves the group.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let mut task = self.task;
        if tokio::time::timeout(self.drain + Duration::from_secs(5), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }

    /// A Prometheus collector of what it delivered.
    pub fn collector(&self) -> Arc<dyn imgate_shared::metrics::Collector> {
        Arc::new(EventsCollector {
            counters: self.counters.clone(),
            drops: self.drops.clone(),
            abandoned: self.abandoned.clone(),
        })
    }
}

#[derive(Debug)]
struct EventsCollector {
    counters: Arc<Counters>,
    drops: Arc<Drops>,
    abandoned: Arc<AtomicU64>,
}

impl std::fmt::Debug for Drops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Drops")
    }
}

impl imgate_shared::metrics::Collector for EventsCollector {
    fn encode(&self, mut e: imgate_shared::metrics::Encoder) -> std::fmt::Result {
        use std::borrow::Cow;
        let outcome = |o: &'static str, n: u64| (vec![("outcome", Cow::Borrowed(o))], n);
        imgate_shared::metrics::counter_family(
            &mut e,
            "imgate_bus_events",
            "Events taken from the bus and POSTed to logic.events_url, by outcome (delivered: \
             answered 2xx; rejected: answered 4xx, dropped; abandoned: undelivered at a stop, \
             left on the bus for the next consumer).",
            [
                outcome("delivered", self.counters.events_sent.get()),
                outcome("rejected", self.drops.snapshot()[1].1),
                outcome("abandoned", self.abandoned.load(Ordering::Relaxed)),
            ],
        )?;
        imgate_shared::metrics::counter_family(
            &mut e,
            "imgate_bus_events_post_failed",
            "POSTs of a batch of bus events that failed (each retried with backoff).",
            [(Vec::new(), self.counters.events_post_failed.get())],
        )
    }
}

/// Starts delivering the events on `consumer` (the events topic, [`BusConfig::events`]) to
/// `logic.events_url`, batched and retried as logic's own queue is.
///
/// [`BusConfig::events`]: imgate_shared::config::BusConfig::events
pub fn consume(
    config: &imgate_shared::config::Config,
    consumer: Box<dyn BusConsumer>,
) -> Result<EventsConsumer, crate::LogicError> {
    let logic = &config.logic;
    let url = logic
        .events_url
        .as_deref()
        .ok_or_else(|| crate::LogicError::Hook("logic.events_url is not set".into()))?;
    let endpoint = Endpoint::parse("logic.events_url", url).map_err(crate::LogicError::Hook)?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let counters = Arc::new(Counters::default());
    let drops = Arc::new(Drops::default());
    let abandoned = Arc::new(AtomicU64::new(0));
    let sender = Sender {
        endpoint,
        counters: counters.clone(),
        drops: drops.clone(),
        stop: Stop::new(shutdown_rx, logic.events_drain_timeout),
    };
    let task = tokio::spawn(sender.consume(
        consumer,
        logic.events_batch.max(1),
        logic.events_interval,
        abandoned.clone(),
    ));
    Ok(EventsConsumer {
        shutdown,
        task,
        counters,
        drops,
        abandoned,
        drain: logic.events_drain_timeout,
    })
}

/// Takes one bus event into `batch`; answers a rebalance at once (the bus waits, bounded, for
/// the guards of the partitions it takes away). Returns false once the bus is closed.
fn take(event: Option<BusEvent>, batch: &mut Vec<(bytes::Bytes, DeliveryGuard)>) -> bool {
    match event {
        Some(BusEvent::Message(message, guard)) => match message.push {
            Some(Push::Event(event)) => batch.push((event.json, guard)),
            // Not an event: nothing to deliver here (the guard's drop acknowledges it).
            _ => tracing::warn!("a bus message that is not an event on the events topic; skipped"),
        },
        Some(BusEvent::Revoking { done, .. }) => {
            let _ = done.send(());
        }
        None => return false,
    }
    true
}

impl Sender {
    /// The loop of [`consume`]: a batch at a time, each retried until answered, its guards
    /// dropped only then.
    async fn consume(
        mut self,
        mut consumer: Box<dyn BusConsumer>,
        batch_max: usize,
        interval: Duration,
        abandoned: Arc<AtomicU64>,
    ) {
        let mut batch: Vec<(bytes::Bytes, DeliveryGuard)> = Vec::with_capacity(batch_max);
        let mut open = true;
        while open && !self.stop.stopping() {
            tokio::select! {
                event = consumer.recv() => open = take(event, &mut batch),
                _ = self.stop.begun() => break,
            }
            if batch.is_empty() {
                continue;
            }
            let due = Instant::now() + interval;
            while open && batch.len() < batch_max && !self.stop.stopping() {
                tokio::select! {
                    event = consumer.recv() => open = take(event, &mut batch),
                    _ = tokio::time::sleep_until(due) => break,
                    _ = self.stop.begun() => {}
                }
            }
            let mut body =
                Vec::with_capacity(batch.iter().map(|(j, _)| j.len() + 1).sum::<usize>() + 2);
            body.push(b'[');
            for (i, (json, _)) in batch.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(json);
            }
            body.push(b']');
            let outcome = self.deliver(body, batch.len()).await;
            self.lost(&outcome, batch.len());
            if outcome == Outcome::GaveUp {
                // Not delivered: the bus keeps them for whoever consumes next.
                abandoned.fetch_add(batch.len() as u64, Ordering::Relaxed);
                for (_, guard) in batch.drain(..) {
                    guard.abandon();
                }
                break;
            }
            // Answered: acknowledged.
            batch.clear();
        }
        for (_, guard) in batch.drain(..) {
            guard.abandon();
        }
        consumer.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key_len: usize) -> Event {
        Event {
            event: "connect".into(),
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
            Batching {
                batch: 100,
                interval: Duration::from_millis(10),
                drain: Duration::from_secs(1),
            },
            counters.clone(),
            Arc::new(Drops::default()),
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

    /// A stop gives the queue `logic.events_drain_timeout` and no more: against an endpoint
    /// that refuses every connection, the task ends soon after the deadline and every event it
    /// held is counted as dropped at shutdown.
    #[tokio::test]
    async fn a_stop_drops_what_the_drain_deadline_leaves_counted() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let counters = Arc::new(Counters::default());
        let drops = Arc::new(Drops::default());
        let (shutdown_tx, shutdown) = watch::channel(false);
        let (events, task) = start(
            Endpoint::parse("events", &format!("http://127.0.0.1:{port}/events")).unwrap(),
            QueueLimits {
                events: 100,
                bytes: 1 << 20,
            },
            Batching {
                batch: 2,
                interval: Duration::from_millis(5),
                drain: Duration::from_millis(300),
            },
            counters.clone(),
            drops.clone(),
            shutdown,
        );
        for _ in 0..5 {
            events.send(event(10));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(counters.events_post_failed.get() >= 1, "retrying");
        let stopped = tokio::time::Instant::now();
        shutdown_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(3), task)
            .await
            .expect("the task ends after the drain deadline")
            .unwrap();
        assert!(
            stopped.elapsed() >= Duration::from_millis(300),
            "drained until the deadline"
        );
        assert_eq!(drops.snapshot()[2], (DropReason::Shutdown, 5));
        assert_eq!(counters.events_dropped.get(), 5);
        // Events after the stop are counted too.
        events.send(event(10));
        assert_eq!(drops.snapshot()[2], (DropReason::Shutdown, 6));
    }
}
