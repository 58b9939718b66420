//! Connect and disconnect events for the business (`logic.events_url`): queued without waiting
//! (a full queue drops the event and counts it), POSTed as a JSON array in batches of up to
//! `logic.events_batch` or every `logic.events_interval`, and retried with backoff while the
//! endpoint fails. Clients never wait for any of it.

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

/// One connect or disconnect, as the business receives it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Event {
    /// `connect` or `disconnect`.
    pub event: &'static str,
    pub mid: i64,
    pub key: String,
    pub comet: String,
    pub platform: String,
    /// Unix milliseconds, logic's clock.
    pub time: u64,
    /// Why: `auth` for a connect; for a disconnect, `replaced` (a newer connection took its
    /// key), `kicked` (over the user's connection limit), or the reason comet gave
    /// (`client_closed`, `heartbeat_expired`, `slow`, …; `closed` when it gave none).
    pub reason: String,
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
}

impl Events {
    /// Queues `event`; a full queue drops it, counted.
    pub(crate) fn send(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            self.counters.events_dropped.inc();
        }
    }
}

/// The queue and the task that drains it into `endpoint`.
pub(crate) fn start(
    endpoint: Endpoint,
    queue: usize,
    batch: usize,
    interval: Duration,
    counters: Arc<Counters>,
    shutdown: watch::Receiver<bool>,
) -> (Events, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let events = Events {
        queue: tx,
        counters: counters.clone(),
    };
    let task = tokio::spawn(run(
        endpoint,
        rx,
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
        batch.clear();
    }
}
