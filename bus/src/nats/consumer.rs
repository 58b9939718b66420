//! The consuming half of the NATS bus: which partitions this job holds, and for how long; see
//! the module docs of [`crate::nats`].
//!
//! A coordinator task runs every `session_timeout / 3` (at most every second):
//!
//! 1. renews this job's membership key and the lease of every partition it holds (a
//!    compare-and-set on the lease's revision: a lease that expired and was taken by another job
//!    is lost, and its partition stops at once);
//! 2. reads the members and computes this job's share: `partitions / members`, one more for the
//!    first `partitions % members` members by id;
//! 3. gives up partitions beyond its share (job flushes its room batches, the guards of those
//!    partitions drain, a last acknowledgement, the lease deleted so another job takes it
//!    at once), or takes free ones up to it (the lease created, a fresh consumer started at the
//!    last acknowledged floor, a pull loop started: [`super::partition`]).
//!
//! A job that dies stops renewing: its membership and leases expire after `session_timeout`,
//! and the others take its partitions.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::kv;
use async_nats::jetstream::{self, stream};
use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use imgate_shared::config::NatsConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::partition::{self, Ended, Track};
use super::producer::stream_ready;
use super::{connect, context, ensure_stream};
use crate::{BusConsumer, BusError, BusEvent};

/// Bound on each of a release's waits: for job's answer to the revoke, then for the guards.
pub const REVOKE_WAIT: Duration = Duration::from_secs(5);
/// Events (messages, revokes) buffered between the pull loops and job.
const EVENT_QUEUE: usize = 1024;
/// How often the lag (the held consumers' pending counts) is read.
const LAG_INTERVAL: Duration = Duration::from_secs(2);
/// Least time between two logged warnings of one consumer.
const WARN_EVERY: Duration = Duration::from_secs(1);
/// How long a redelivered message waits for its acknowledgement before JetStream sends it
/// again; a holder keeps messages as long as job needs, so this only bounds a lost pull.
const ACK_WAIT: Duration = Duration::from_secs(60);

/// What the coordinator, the pull loops and observers share.
pub(super) struct Shared {
    pub config: NatsConfig,
    pub client: Client,
    /// This job's id among the members.
    pub member: String,
    /// Messages acknowledged (confirmed by the server).
    pub acked: AtomicU64,
    pub ack_failures: AtomicU64,
    pub undecodable: AtomicU64,
    /// The held consumers' pending messages (not yet delivered to this job); `u64::MAX`
    /// until known.
    pub lag: AtomicU64,
    /// The partitions held now, with their tracking.
    pub held: Mutex<BTreeMap<u32, Arc<Track>>>,
    /// Set by [`NatsConsumer::kill`]: acknowledge nothing more.
    pub killed: AtomicBool,
    warned: Mutex<(Option<Instant>, u64)>,
}

impl Shared {
    /// Logs a warning, at most one every [`WARN_EVERY`] (a broker that is down makes many).
    pub fn warn(&self, message: &str) {
        let mut warned = self.warned.lock().unwrap_or_else(|e| e.into_inner());
        if warned.0.is_some_and(|at| at.elapsed() < WARN_EVERY) {
            warned.1 += 1;
            return;
        }
        let suppressed = std::mem::take(&mut warned.1);
        warned.0 = Some(Instant::now());
        tracing::warn!(suppressed, "{message}");
    }

    fn held(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Arc<Track>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Consumes the NATS bus as one of the jobs sharing its partitions; see the module docs.
pub struct NatsConsumer {
    events: mpsc::Receiver<BusEvent>,
    shared: Arc<Shared>,
    js: jetstream::Context,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl NatsConsumer {
    /// Starts consuming: joins the members and takes a share of the partitions as soon as the
    /// server answers (a job may start before NATS). Fails only on a configuration the client
    /// refuses (a bad URL). Runs on the current tokio runtime.
    pub async fn connect(config: &NatsConfig) -> Result<NatsConsumer, BusError> {
        let client = connect(config, "imgate job", true).await?;
        let js = context(client.clone(), config);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let shared = Arc::new(Shared {
            config: config.clone(),
            client,
            member: format!("job-{}-{nanos:08x}", std::process::id()),
            acked: AtomicU64::new(0),
            ack_failures: AtomicU64::new(0),
            undecodable: AtomicU64::new(0),
            lag: AtomicU64::new(u64::MAX),
            held: Mutex::default(),
            killed: AtomicBool::new(false),
            warned: Mutex::default(),
        });
        let (tx, events) = mpsc::channel(EVENT_QUEUE);
        let (stop, stopped) = watch::channel(false);
        let coordinator = Coordinator {
            tick: (config.session_timeout / 3)
                .clamp(Duration::from_millis(100), Duration::from_secs(1)),
            shared: shared.clone(),
            js: js.clone(),
            events: tx,
            held: BTreeMap::new(),
            setup: None,
        };
        let task = tokio::spawn(coordinator.run(stopped));
        Ok(NatsConsumer {
            events,
            shared,
            js,
            stop,
            task: Some(task),
        })
    }

    /// A view of this consumer's progress, for tests and metrics.
    pub fn progress(&self) -> NatsProgress {
        NatsProgress {
            shared: self.shared.clone(),
        }
    }

    /// Acknowledges what is delivered, gives up its partitions and membership (the other
    /// jobs take them at once) and waits for that (bounded). Dropping the consumer does the
    /// same without waiting.
    pub async fn close(mut self) {
        BusConsumer::close(&mut self).await;
    }

    /// Stops at once, as a job that dies would: nothing more is acknowledged and nothing is
    /// given up; the leases expire after `session_timeout`. For tests of what happens then.
    pub fn kill(mut self) {
        self.shared.killed.store(true, Ordering::Relaxed);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.shared.held().clear();
        self.events.close();
    }
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        crate::delivery::abandon_unread(&mut self.events);
        let _ = self.stop.send(true);
    }
}

#[async_trait::async_trait]
impl BusConsumer for NatsConsumer {
    async fn recv(&mut self) -> Option<BusEvent> {
        self.events.recv().await
    }

    async fn close(&mut self) {
        let _ = self.stop.send(true);
        crate::delivery::abandon_unread(&mut self.events);
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(REVOKE_WAIT * 2, task).await;
        }
    }

    fn lag_probe(&self) -> Option<crate::LagProbe> {
        let shared = self.shared.clone();
        Some(Arc::new(move || {
            let lag = shared.lag.load(Ordering::Relaxed);
            (lag != u64::MAX).then_some(lag)
        }))
    }

    /// A stream info request, with a timeout.
    fn ready_probe(&self) -> Option<crate::ReadyProbe> {
        let js = self.js.clone();
        let stream = self.shared.config.stream.clone();
        Some(Arc::new(move || {
            let (js, stream) = (js.clone(), stream.clone());
            Box::pin(async move { stream_ready(&js, &stream).await })
        }))
    }
}

/// What a [`NatsConsumer`] has done, read from another task.
#[derive(Clone)]
pub struct NatsProgress {
    shared: Arc<Shared>,
}

impl NatsProgress {
    /// Messages acknowledged to the server (and confirmed by it) since the consumer started.
    pub fn acked(&self) -> u64 {
        self.shared.acked.load(Ordering::Relaxed)
    }

    /// Messages handed to job and not yet delivered, over the partitions held now.
    pub fn outstanding(&self) -> usize {
        self.shared.held().values().map(|t| t.outstanding()).sum()
    }

    /// The partitions held now.
    pub fn held(&self) -> Vec<u32> {
        self.shared.held().keys().copied().collect()
    }

    /// Undecodable messages skipped (and acknowledged).
    pub fn undecodable(&self) -> u64 {
        self.shared.undecodable.load(Ordering::Relaxed)
    }

    /// This consumer's id among the jobs (its membership key is `member.<id>`).
    pub fn member(&self) -> &str {
        &self.shared.member
    }
}

/// A partition held: its lease's revision, its consumer and pull loop.
struct Held {
    revision: u64,
    consumer: PullConsumer,
    track: Arc<Track>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Ended>,
}

/// The lease bucket and the stream, once the server answered.
struct Setup {
    kv: kv::Store,
    stream: stream::Stream,
}

struct Coordinator {
    shared: Arc<Shared>,
    /// How often memberships and leases are renewed.
    tick: Duration,
    js: jetstream::Context,
    events: mpsc::Sender<BusEvent>,
    held: BTreeMap<u32, Held>,
    setup: Option<Setup>,
}

fn member_key(member: &str) -> String {
    format!("member.{member}")
}

fn lease_key(partition: u32) -> String {
    format!("partition.{partition}")
}

/// The lease bucket's name.
fn bucket(config: &NatsConfig) -> String {
    format!("{}-{}", config.durable, config.stream)
}

/// The share of `partitions` of the member at `index` among `members` (sorted by id).
fn share(partitions: u32, members: usize, index: usize) -> usize {
    let (partitions, members) = (partitions as usize, members.max(1));
    partitions / members + usize::from(index < partitions % members)
}

impl Coordinator {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let tick = self.tick;
        let mut next_lag = Instant::now();
        while !*stop.borrow() && !self.events.is_closed() {
            self.round().await;
            if Instant::now() >= next_lag {
                self.refresh_lag().await;
                next_lag = Instant::now() + LAG_INTERVAL;
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
        self.leave().await;
    }

    /// One round: renew, read the members, give up or take partitions.
    async fn round(&mut self) {
        // A pull loop that ended by itself lost its consumer (the server lost its state):
        // let the partition go, to be taken afresh.
        let ended: Vec<u32> = self
            .held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(&p, _)| p)
            .collect();
        for partition in ended {
            self.shared.warn(&format!(
                "nats: partition {partition}: its consumer is gone; taking it again"
            ));
            self.let_go(partition, true).await;
            self.setup = None;
        }
        if self.setup.is_none() {
            match self.set_up().await {
                Ok(setup) => self.setup = Some(setup),
                Err(e) => {
                    self.shared.warn(&format!("nats consumer: {e}"));
                    return;
                }
            }
        }
        if !self.renew().await {
            return;
        }
        let Some(kv) = self.setup.as_ref().map(|s| s.kv.clone()) else {
            return;
        };
        let member = self.shared.member.clone();
        let members = match self.members(&kv).await {
            Ok(members) => members,
            Err(e) => {
                self.shared
                    .warn(&format!("nats consumer: cannot read the members: {e}"));
                return;
            }
        };
        let (count, index) = match members.iter().position(|m| *m == member) {
            Some(index) => (members.len(), index),
            None => (members.len() + 1, members.len()),
        };
        let partitions = self.shared.config.partitions;
        let target = share(partitions, count, index);
        if self.held.len() > target {
            let extra: Vec<u32> = self
                .held
                .keys()
                .rev()
                .take(self.held.len() - target)
                .copied()
                .collect();
            self.release(extra).await;
        } else if self.held.len() < target {
            // Start looking at this member's own stretch, so joining jobs rarely race for one.
            let first = (index * partitions as usize / count.max(1)) as u32;
            for step in 0..partitions {
                if self.held.len() >= target {
                    break;
                }
                let partition = (first + step) % partitions;
                if self.held.contains_key(&partition) {
                    continue;
                }
                match kv
                    .create(lease_key(partition), Bytes::from(member.clone()))
                    .await
                {
                    Ok(revision) => self.take(partition, revision).await,
                    Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                    Err(e) => {
                        self.shared.warn(&format!(
                            "nats consumer: cannot take partition {partition}: {e}"
                        ));
                        break;
                    }
                }
            }
        }
    }

    /// Renews this job's membership and the lease of every partition it holds; a lease that
    /// expired and was taken by another job is lost, and its partition stops at once. False
    /// if the membership could not be renewed (the server is down or lost its store).
    async fn renew(&mut self) -> bool {
        let Some(kv) = self.setup.as_ref().map(|s| s.kv.clone()) else {
            return false;
        };
        let member = self.shared.member.clone();
        if let Err(e) = kv.put(member_key(&member), Bytes::new()).await {
            self.shared
                .warn(&format!("nats consumer: cannot renew its membership: {e}"));
            // The bucket may be gone with a server that lost its store.
            self.setup = None;
            return false;
        }
        let mut lost = Vec::new();
        for (&partition, held) in self.held.iter_mut() {
            match kv
                .update(
                    lease_key(partition),
                    Bytes::from(member.clone()),
                    held.revision,
                )
                .await
            {
                Ok(revision) => held.revision = revision,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    lost.push(partition)
                }
                Err(e) => self.shared.warn(&format!(
                    "nats consumer: cannot renew the lease of partition {partition}: {e}"
                )),
            }
        }
        for partition in lost {
            tracing::warn!(
                partition,
                "nats: lease lost (not renewed within bus.nats.session_timeout); another job may hold the partition"
            );
            self.let_go(partition, false).await;
        }
        true
    }

    /// Waits for `wait` until `deadline`, renewing every tick meanwhile: a long hand-over must
    /// not let the other partitions' leases expire. `None` if the deadline came first.
    async fn renewing<T>(
        &mut self,
        wait: impl std::future::Future<Output = T>,
        deadline: tokio::time::Instant,
    ) -> Option<T> {
        tokio::pin!(wait);
        loop {
            let slice = deadline.min(tokio::time::Instant::now() + self.tick);
            match tokio::time::timeout_at(slice, &mut wait).await {
                Ok(done) => return Some(done),
                Err(_) if tokio::time::Instant::now() >= deadline => return None,
                Err(_) => {
                    self.renew().await;
                }
            }
        }
    }

    /// The stream (created if missing) and the lease bucket (created, or its expiry updated).
    async fn set_up(&self) -> Result<Setup, String> {
        let config = &self.shared.config;
        let stream = ensure_stream(&self.js, config)
            .await
            .map_err(|e| e.to_string())?;
        // The bucket's stream as async-nats would make it, made here: its own call asks for the
        // account's details first, in a form nats-server 2.9 does not answer in.
        let name = bucket(config);
        self.js
            .create_or_update_stream(stream::Config {
                name: format!("KV_{name}"),
                description: Some("imgate: which job holds which partition of the bus".into()),
                subjects: vec![format!("$KV.{name}.>")],
                max_messages_per_subject: 1,
                max_age: config.session_timeout,
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("lease bucket {name}: {e}"))?;
        let kv = self
            .js
            .get_key_value(&name)
            .await
            .map_err(|e| format!("lease bucket {name}: {e}"))?;
        Ok(Setup { kv, stream })
    }

    /// Every live member's id, sorted.
    async fn members(&self, kv: &kv::Store) -> Result<Vec<String>, String> {
        let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
        let mut members = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| e.to_string())?;
            if let Some(member) = key.strip_prefix("member.") {
                members.push(member.to_string());
            }
        }
        members.sort();
        Ok(members)
    }

    /// Starts holding `partition`, whose lease is at `revision`: a fresh consumer at the last
    /// acknowledged floor, and its pull loop. On failure the lease goes back.
    async fn take(&mut self, partition: u32, revision: u64) {
        let consumer = match self.fresh_consumer(partition).await {
            Ok(consumer) => consumer,
            Err(e) => {
                self.shared
                    .warn(&format!("nats: partition {partition}: no consumer: {e}"));
                if let Some(setup) = &self.setup {
                    let _ = setup
                        .kv
                        .delete_expect_revision(lease_key(partition), Some(revision))
                        .await;
                }
                return;
            }
        };
        tracing::info!(partition, consumer = %consumer.cached_info().name, "nats: partition taken");
        let track = Arc::new(Track::new(self.shared.config.max_ack_pending));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(partition::run(
            partition,
            consumer.clone(),
            track.clone(),
            self.shared.clone(),
            self.events.clone(),
            stopped,
        ));
        self.shared.held().insert(partition, track.clone());
        self.held.insert(
            partition,
            Held {
                revision,
                consumer,
                track,
                stop,
                task,
            },
        );
    }

    /// Creates the next generation of `partition`'s consumer, starting after the highest
    /// floor any earlier generation acknowledged, and deletes the earlier ones.
    async fn fresh_consumer(&self, partition: u32) -> Result<PullConsumer, String> {
        let setup = self.setup.as_ref().ok_or("not set up")?;
        let config = &self.shared.config;
        let prefix = format!("{}-{partition}-", config.durable);
        let mut names = setup.stream.consumer_names();
        let mut earlier = Vec::new();
        while let Some(name) = names.next().await {
            let name = name.map_err(|e| e.to_string())?;
            if let Some(generation) = name
                .strip_prefix(&prefix)
                .and_then(|g| g.parse::<u64>().ok())
            {
                earlier.push((generation, name));
            }
        }
        let mut floor = 0;
        for (_, name) in &earlier {
            let info = setup
                .stream
                .consumer_info(name)
                .await
                .map_err(|e| format!("consumer {name}: {e}"))?;
            // A generation that acknowledged nothing yet reports a floor of 0: its floor is
            // just before where it started.
            let started_after = match info.config.deliver_policy {
                DeliverPolicy::ByStartSequence { start_sequence } => {
                    start_sequence.saturating_sub(1)
                }
                _ => 0,
            };
            floor = floor.max(info.ack_floor.stream_sequence).max(started_after);
        }
        let generation = earlier.iter().map(|(g, _)| g + 1).max().unwrap_or(1);
        let name = format!("{prefix}{generation}");
        let deliver_policy = if floor > 0 {
            DeliverPolicy::ByStartSequence {
                start_sequence: floor + 1,
            }
        } else {
            DeliverPolicy::All
        };
        let consumer = setup
            .stream
            .create_consumer(pull::Config {
                durable_name: Some(name.clone()),
                description: Some(format!("imgate job: partition {partition}")),
                deliver_policy,
                ack_policy: AckPolicy::All,
                ack_wait: ACK_WAIT,
                filter_subject: super::partition_subject(config, partition),
                max_ack_pending: i64::from(config.max_ack_pending),
                num_replicas: config.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("creating consumer {name}: {e}"))?;
        for (_, old) in earlier {
            if let Err(e) = setup.stream.delete_consumer(&old).await {
                tracing::debug!(consumer = %old, error = %e, "nats: an earlier consumer was not deleted");
            }
        }
        Ok(consumer)
    }

    /// Gives `partitions` up in order: job sends out what it holds (room batches), their
    /// guards drain (bounded), a last acknowledgement, and the leases go so another job takes
    /// them at once.
    async fn release(&mut self, partitions: Vec<u32>) {
        tracing::info!(?partitions, "nats: giving partitions up");
        for &partition in &partitions {
            if let Some(held) = self.held.get(&partition) {
                let _ = held.stop.send(true);
            }
        }
        let deadline = tokio::time::Instant::now() + REVOKE_WAIT;
        let (done, answered) = oneshot::channel();
        let event = BusEvent::Revoking {
            partitions: partitions.iter().map(|&p| p as i32).collect(),
            done,
        };
        let events = self.events.clone();
        let sent = self.renewing(events.send(event), deadline).await;
        if matches!(sent, Some(Ok(()))) && self.renewing(answered, deadline).await.is_none() {
            tracing::warn!("nats: job did not answer a revoke within {REVOKE_WAIT:?}");
        }
        let deadline = tokio::time::Instant::now() + REVOKE_WAIT;
        for &partition in &partitions {
            if let Some(track) = self.held.get(&partition).map(|h| h.track.clone()) {
                if self.renewing(track.drained(deadline), deadline).await != Some(true) {
                    tracing::warn!(
                        partition,
                        "nats: messages of a partition given up still undelivered after {REVOKE_WAIT:?}; its next holder consumes them again"
                    );
                }
            }
            self.let_go(partition, true).await;
        }
    }

    /// Stops holding `partition`: its loop ends (after a last acknowledgement), and with
    /// `release` its lease is deleted (a lost lease is another job's now).
    async fn let_go(&mut self, partition: u32, release: bool) {
        let Some(held) = self.held.remove(&partition) else {
            return;
        };
        self.shared.held().remove(&partition);
        let _ = held.stop.send(true);
        let mut task = held.task;
        if tokio::time::timeout(self.shared.config.publish_timeout * 2, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
        partition::acknowledge(&self.shared, &held.track).await;
        if release {
            if let Some(setup) = &self.setup {
                if let Err(e) = setup
                    .kv
                    .delete_expect_revision(lease_key(partition), Some(held.revision))
                    .await
                {
                    tracing::debug!(partition, error = %e, "nats: lease not deleted; it expires");
                }
            }
        }
    }

    /// Reads the held consumers' pending counts into the lag.
    async fn refresh_lag(&mut self) {
        let mut lag = 0;
        for (partition, held) in &self.held {
            match held.consumer.get_info().await {
                Ok(info) => lag += info.num_pending,
                Err(e) => {
                    self.shared
                        .warn(&format!("nats: partition {partition}: no lag: {e}"));
                    return;
                }
            }
        }
        self.shared.lag.store(lag, Ordering::Relaxed);
    }

    /// At shutdown: acknowledges what is delivered and gives every partition and the
    /// membership up, so the other jobs take them at once.
    async fn leave(mut self) {
        let partitions: Vec<u32> = self.held.keys().copied().collect();
        for partition in partitions {
            self.let_go(partition, true).await;
        }
        if let Some(setup) = &self.setup {
            let _ = setup.kv.delete(member_key(&self.shared.member)).await;
        }
        tracing::debug!("nats consumer closed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_every_partition() {
        for partitions in [1, 4, 8, 9] {
            for members in 1..=10 {
                let total: usize = (0..members).map(|i| share(partitions, members, i)).sum();
                assert_eq!(total, partitions as usize, "{partitions} over {members}");
            }
        }
        assert_eq!(share(8, 3, 0), 3);
        assert_eq!(share(8, 3, 2), 2);
        assert_eq!(share(2, 3, 2), 0);
    }
}
