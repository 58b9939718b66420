//! imgate job: consumes pushes from the bus and delivers them to the comets over the cluster
//! link.
//!
//! One task owns the routing: keys pushes go to the comet that holds the keys, room messages
//! are batched per room ([`room`]) and each batch goes to every comet, broadcasts go to every
//! comet with the speed split between them. Every comet has its own link task and bounded
//! queue ([`comet_link`]), so a slow comet fills its own queue (counted) instead of stalling the
//! others.
//!
//! Delivery is tracked end to end for the Kafka and NATS buses: every bus message's
//! [`DeliveryGuard`] travels with the link frames it became and is dropped only once every
//! comet it was for wrote it to its socket (or it was given up on, counted), so the bus commits
//! nothing before it was delivered (at least once). With the embedded bus the guards are
//! untracked and change nothing.

mod comet_link;
mod metrics;
mod pacing;
mod registry;
mod room;
mod stats;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use imgate_bus::{BusConsumer, BusEvent, BusMessage, DeliveryGuard, Push};
use imgate_shared::config::{Config, JobConfig};
use imgate_shared::frame;
use imgate_shared::link::{Body, Broadcast, ConnControl, PushKeys};
use imgate_store::RegistryStore;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use comet_link::{Guards, LinkFrame};
use pacing::Budget;
use registry::Registry;
use room::{Batch, Pacing, RoomBatcher};
use stats::Counters;

pub use stats::JobStats;

/// Least time between registry reads triggered by pushes for unknown comets.
const ON_DEMAND_REFRESH_GAP: Duration = Duration::from_millis(50);

/// A running job.
pub struct JobHandle {
    counters: Arc<Counters>,
    /// The bus consumer's lag, when its bus can tell.
    lag: Option<imgate_bus::LagProbe>,
    /// Asks the consumer's bus whether it can consume, when there is a broker to ask.
    ready: Option<imgate_bus::ReadyProbe>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl JobHandle {
    /// Comets with an open (connected) link right now.
    pub fn comet_count(&self) -> usize {
        self.counters.connected.get() as usize
    }

    /// The readiness probe of the bus job consumes (a broker's round trip), when it has one.
    pub fn bus_probe(&self) -> Option<imgate_bus::ReadyProbe> {
        self.ready.clone()
    }

    /// Counters since start.
    pub fn stats(&self) -> JobStats {
        self.counters.snapshot()
    }

    /// Reads job's counters when called (for status figures).
    pub fn counters(&self) -> impl Fn() -> JobStats + Send + Sync + 'static {
        let counters = self.counters.clone();
        move || counters.snapshot()
    }

    /// A Prometheus collector reading job's counters at scrape time.
    pub fn collector(&self) -> Arc<dyn imgate_shared::metrics::Collector> {
        Arc::new(metrics::JobCollector {
            counters: self.counters.clone(),
            lag: self.lag.clone(),
        })
    }

    /// Stops consuming, flushes pending room batches and closes the links once they have
    /// written what they hold (bounded).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Starts job on the current tokio runtime: reads the comet registry, links every comet and
/// consumes `consumer` until shutdown or until the bus closes. `config` is as
/// [`Config::validate`] accepts it.
pub async fn start(
    config: &Config,
    registry: Arc<dyn RegistryStore>,
    consumer: Box<dyn BusConsumer>,
) -> JobHandle {
    let job = config.job.clone();
    let lag = consumer.lag_probe();
    let ready = consumer.ready_probe();
    let counters = Arc::new(Counters::default());
    counters.room_budget_permille.set(1000);
    let limits = comet_link::QueueLimits {
        frames: job.comet_queue,
        bytes: job.comet_queue_bytes.max(1),
    };
    let mut registry = Registry::new(registry, counters.clone(), limits);
    registry.refresh().await;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let router = Router {
        batcher: RoomBatcher::new(Pacing {
            batch: job.room_batch,
            max_delay: job.room_max_delay,
            writes_per_shard: job.room_writes_per_shard,
            max_interval: job.room_max_interval,
        }),
        budget: Budget::new(job.room_busy_target),
        registry,
        counters: counters.clone(),
        logged: None,
        room_accepted: HashMap::new(),
    };
    let task = tokio::spawn(router.run(job, consumer, shutdown_rx));
    JobHandle {
        counters,
        lag,
        ready,
        shutdown,
        task,
    }
}

struct Router {
    registry: Registry,
    batcher: RoomBatcher,
    budget: Budget,
    counters: Arc<Counters>,
    /// When the pacing state was last logged, and the share it had then.
    logged: Option<(Instant, f64)>,
    /// When logic accepted the oldest message of each room's pending batch (Unix µs), for
    /// the push latency comet measures.
    room_accepted: HashMap<String, u64>,
}

/// Reports older than this are not counted (a shard that stopped reporting is not "idle").
const LOAD_MAX_AGE: Duration = Duration::from_millis(500);
/// A comet does not keep up, whatever its busy share, when this much waits in job's queue to
/// it, or when its fan-out is this far behind what job wrote to it (a room batch to ten
/// thousand members takes tens of milliseconds).
const LINK_BACKLOG: usize = 1 << 20;
const FANOUT_LAG: Duration = Duration::from_millis(300);
/// A paced room flushed within this long: big rooms are spending the budget.
const BUDGET_SPENT_WITHIN: Duration = Duration::from_secs(2);
/// How often the pacing state is logged at most (when it changed).
const PACING_LOG_EVERY: Duration = Duration::from_secs(10);

impl Router {
    async fn run(
        mut self,
        config: JobConfig,
        mut consumer: Box<dyn BusConsumer>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut registry_tick = tokio::time::interval_at(
            Instant::now() + config.registry_interval,
            config.registry_interval.max(Duration::from_millis(10)),
        );
        registry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pacing_tick = tokio::time::interval(pacing::LOOK);
        pacing_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.batcher.next_deadline();
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                biased;
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                    for batch in self.batcher.expired(Instant::now()) {
                        self.send_room(batch);
                    }
                }
                _ = pacing_tick.tick() => self.pace(config.room_writes_per_shard),
                _ = registry_tick.tick() => {
                    self.registry.refresh().await;
                    if let Some((sizes, shards)) = self.registry.room_sizes().await {
                        self.batcher.set_sizes(sizes, shards);
                    }
                }
                event = consumer.recv() => match event {
                    // The guard travels with what the message becomes; its drop reports delivery.
                    Some(BusEvent::Message(message, guard)) => self.route(message, guard).await,
                    Some(BusEvent::Revoking { done, .. }) => {
                        for batch in self.batcher.drain() {
                            self.send_room(batch);
                        }
                        let _ = done.send(());
                    }
                    None => {
                        tracing::info!("bus closed; job stops");
                        break;
                    }
                },
            }
        }
        for batch in self.batcher.drain() {
            self.send_room(batch);
        }
        self.registry.close().await;
        // The links wrote what they could: the bus records it and lets the other jobs take over.
        consumer.close().await;
    }

    /// One look at the comets' load: the budget learns from the busiest shard and from the
    /// links' backlog, and big rooms' intervals follow.
    fn pace(&mut self, writes_per_shard: u64) {
        let every = self.batcher.biggest_paced().map(|(_, _, every)| every);
        self.counters
            .paced_interval_ms
            .set(every.map_or(0, |every| every.as_millis() as u64));
        let busy = self.registry.busiest_shard(LOAD_MAX_AGE);
        let backlog = self.registry.backlogged(LINK_BACKLOG, FANOUT_LAG);
        let Some(busy) = busy
            .map(|b| f64::from(b) / 1000.0)
            .or(backlog.then_some(1.0))
        else {
            return;
        };
        let spent = self
            .batcher
            .last_paced_flush()
            .is_some_and(|at| at.elapsed() < BUDGET_SPENT_WITHIN);
        self.budget.pace_every(every);
        let share = self.budget.observe(busy, backlog, spent);
        tracing::trace!(busy, backlog, share, "room pacing look");
        self.batcher.set_share(share);
        self.counters
            .room_budget_permille
            .set((share * 1000.0).round() as u64);
        self.counters
            .busiest_shard_permille
            .set((self.budget.busy().unwrap_or(busy) * 1000.0).round() as u64);
        let now = Instant::now();
        let due = self.logged.is_none_or(|(at, logged)| {
            now.duration_since(at) >= PACING_LOG_EVERY && (share / logged - 1.0).abs() > 0.05
        });
        if due {
            self.logged = Some((now, share));
            let biggest = self.batcher.biggest_paced().map(|(room, members, every)| {
                format!("{room} ({members} members) every {every:?}")
            });
            tracing::info!(
                busiest_shard = format!("{:.0}%", self.budget.busy().unwrap_or(busy) * 100.0),
                writes_per_shard = (writes_per_shard as f64 * share).round() as u64,
                share = format!("{share:.2}"),
                backlog,
                biggest_paced_room = biggest.as_deref().unwrap_or("none"),
                "room pacing"
            );
        }
    }

    async fn route(&mut self, message: BusMessage, guard: DeliveryGuard) {
        self.counters.consumed.add(1);
        let accepted_us = message.accepted_us;
        match message.push {
            Some(Push::Keys(push)) => {
                // A stored push carries the user's inbox sequence in the header's seq field.
                let frame = frame::encode(frame::PUSH_VER, push.op, push.seq as i32, &push.body);
                if !self.registry.contains(&push.comet) {
                    // It may have joined since the last registry read.
                    self.registry
                        .refresh_unless_fresh(ON_DEMAND_REFRESH_GAP)
                        .await;
                }
                if !self.registry.contains(&push.comet) {
                    self.counters.undeliverable.add(1);
                    tracing::warn!(comet = %push.comet, "keys push for an unknown comet is undeliverable");
                } else {
                    // Each shard's keys go on that shard's link; the guard drops after the
                    // last of them is written.
                    let guards: Guards = Arc::new(vec![guard]);
                    let mut sent = false;
                    for target in push.targets {
                        let shard = target.shard;
                        let link_frame = LinkFrame::accepted(
                            Body::PushKeys(PushKeys {
                                targets: vec![target],
                                op: push.op,
                                frame: frame.clone(),
                                seq: push.seq,
                                mid: push.mid,
                            }),
                            accepted_us,
                        );
                        sent |=
                            self.registry
                                .send_to(&push.comet, shard, &link_frame, guards.clone());
                    }
                    if sent {
                        self.counters.keys_pushes.add(1);
                    }
                }
            }
            Some(Push::Room(push)) => {
                self.counters.room_messages.add(1);
                // A batch is as old as its oldest message.
                if accepted_us > 0 {
                    self.room_accepted
                        .entry(push.room.clone())
                        .or_insert(accepted_us);
                }
                if let Some(batch) = self.batcher.push(
                    &push.room,
                    push.op,
                    push.seq,
                    &push.body,
                    guard,
                    Instant::now(),
                ) {
                    self.send_room(batch);
                }
            }
            Some(Push::All(push)) => {
                let comets = self.registry.len();
                if comets == 0 {
                    self.counters.undeliverable.add(1);
                    tracing::warn!(
                        op = push.op,
                        "broadcast with no comet known is undeliverable"
                    );
                    return;
                }
                // Each shard's link carries its own share of the speed.
                let shards = self.registry.linked_shards().max(1);
                let speed = push.speed.div_ceil(shards as u32);
                let frame = frame::encode(frame::PUSH_VER, push.op, 0, &push.body);
                let link_frame = LinkFrame::accepted(
                    Body::Broadcast(Broadcast {
                        op: push.op,
                        frame,
                        speed,
                    }),
                    accepted_us,
                );
                self.registry
                    .send_to_all(&link_frame, &Arc::new(vec![guard]));
                self.counters.broadcasts.add(1);
            }
            Some(Push::Close(close)) => {
                // A comet that left has closed its connections already.
                let Some((comet, shard)) = close.conn.as_ref().map(|c| (c.comet.clone(), c.shard))
                else {
                    return;
                };
                let link_frame = LinkFrame::new(Body::CloseConn(close));
                self.registry
                    .send_to(&comet, shard, &link_frame, Arc::new(vec![guard]));
            }
            Some(Push::Control(control)) => {
                // Like a keys push: each shard's part on that shard's link, in the comet's
                // order (a join then a push to the room arrive in that order).
                if !self.registry.contains(&control.comet) {
                    self.registry
                        .refresh_unless_fresh(ON_DEMAND_REFRESH_GAP)
                        .await;
                }
                if !self.registry.contains(&control.comet) {
                    self.counters.undeliverable.add(1);
                    tracing::warn!(comet = %control.comet, "connection control for an unknown comet is undeliverable");
                    return;
                }
                let guards: Guards = Arc::new(vec![guard]);
                let ConnControl {
                    comet,
                    targets,
                    action,
                    room,
                    reason,
                } = control;
                for target in targets {
                    let shard = target.shard;
                    let link_frame = LinkFrame::new(Body::Control(ConnControl {
                        comet: comet.clone(),
                        targets: vec![target],
                        action,
                        room: room.clone(),
                        reason: reason.clone(),
                    }));
                    self.registry
                        .send_to(&comet, shard, &link_frame, guards.clone());
                }
            }
            Some(Push::Event(_)) => {
                // Events travel on their own topic, consumed by the events poster; one here
                // was published by something else.
                self.counters.undeliverable.add(1);
                tracing::warn!("an event for the business among the pushes; skipped");
            }
            None => {
                self.counters.undeliverable.add(1);
                tracing::warn!("bus message without a push; skipped");
            }
        }
    }

    /// Encodes the batch once and queues the same bytes (and one shared set of the messages'
    /// guards) to every comet.
    fn send_room(&mut self, batch: Batch) {
        let Batch { push, guards } = batch;
        let accepted_us = self.room_accepted.remove(&push.room).unwrap_or(0);
        if self.registry.len() == 0 {
            self.counters.undeliverable.add(u64::from(push.count));
            tracing::warn!(room = %push.room, messages = push.count, "room batch with no comet known is undeliverable");
            return;
        }
        let link_frame = LinkFrame::accepted(Body::PushRoom(push), accepted_us);
        let guards: Guards = Arc::new(guards);
        self.registry.send_to_all(&link_frame, &guards);
        self.counters.room_batches.add(1);
    }
}
