//! A shard's state: the connections, key index, rooms and timers one core owns outright, and
//! what every shard of a comet shares. Other shards reach a shard only through its inbox.

use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::Waker;
use std::time::Duration;

use bytes::Bytes;
use imgate_runtime::LoopStats;
use imgate_shared::link::{Body, ConnRef, RenewOnline, RoomCount, RoomsChanged, REPORT_PART_BYTES};

use crate::backlink::LinkBack;
use crate::conn::{ById, CloseReason, Conn, QueueLimits, SyncRequest};
use crate::heartbeat::{clock_ms, Wheel};
use crate::load::{Busy, Lag};
use crate::logic_client::LogicClient;
use crate::room::{in_accept_order, Rooms};
use crate::setup::{CometShared, ShardCommand};
use crate::stats::ShardStats;

/// Size of the per-shard read scratch and of one coalesced write.
pub(crate) const SCRATCH_SIZE: usize = 64 << 10;

/// The state one shard owns.
pub(crate) struct Shard {
    pub index: u32,
    pub comet: Arc<CometShared>,
    pub stats: Arc<ShardStats>,
    pub logic: Rc<LogicClient>,
    /// Read buffer shared by every connection of the shard, borrowed only inside a poll.
    pub read_scratch: Rc<RefCell<Vec<u8>>>,
    /// Buffer for coalescing queued frames into one write, borrowed only inside a poll.
    pub write_scratch: RefCell<Vec<u8>>,
    /// Closed when the shard stops; tasks not in `conns` race against it.
    pub stop: async_channel::Receiver<()>,
    /// The shard's event loop: how much of its time it spends parked.
    pub loop_stats: Arc<LoopStats>,
    /// Fan-outs send through the shard's io_uring (the io_uring engine).
    pub ring_sends: bool,
    /// Completed ring sends being handled (kept, to reuse its buffer).
    pub ring_done: RefCell<Vec<imgate_runtime::SendDone>>,
    /// The shard's connections by id, and by key (the current holder of each key). Both hold
    /// the connection itself, looked up through its own id and key: 8 bytes an entry.
    conns: RefCell<HashSet<ById>>,
    keys: RefCell<HashSet<ByKey>>,
    /// Open connections whose key another connection registered on this shard later although
    /// logic has not named them replaced (yet): auth replies can be handled in another order
    /// than logic gave them. Normally empty; when the key index loses its holder, the newest
    /// of these with that key takes its place.
    shadowed: RefCell<Vec<Rc<Conn>>>,
    /// Connections waiting for logic's answer to their auth, and whether a newer connection's
    /// claim has already replaced them.
    authenticating: RefCell<HashMap<u64, bool>>,
    /// Heartbeat deadlines of the connections in `conns`.
    heartbeats: RefCell<Wheel>,
    rooms: RefCell<Rooms<ById>>,
    /// Tasks waiting for a connection's queue to empty (stored messages are sent a page at a
    /// time), by connection id; few at once, so kept here rather than in every connection.
    drain_waiters: RefCell<HashMap<u64, Waker>>,
    /// Op-22 requests waiting behind the one a connection's sync task serves.
    syncs: RefCell<HashMap<u64, VecDeque<SyncRequest>>>,
    /// This shard's own links from job (to tell each job how loaded the shard is).
    job_links: RefCell<Vec<Weak<LinkBack>>>,
    /// Client messages (op 4) waiting for the business, per connection.
    upstream: RefCell<HashMap<u64, u32>>,
    next_conn: Cell<u64>,
    stopping: Cell<bool>,
    /// How late the shard's ticks ran since the last online report.
    lag: Lag,
    /// How busy its loop was since the last online report, and since the last tick.
    busy: Busy,
    tick_busy: Busy,
}

/// A connection in the key index.
struct ByKey(Rc<Conn>);

impl Borrow<str> for ByKey {
    fn borrow(&self) -> &str {
        &self.0.key
    }
}

impl Hash for ByKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so lookups by `&str` find it.
        str::hash(&self.0.key, state);
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

impl Shard {
    pub(crate) fn new(
        index: u32,
        comet: Arc<CometShared>,
        stats: Arc<ShardStats>,
        stop: async_channel::Receiver<()>,
        loop_stats: Arc<LoopStats>,
    ) -> Self {
        let early_members = comet.config.online_early_members;
        Shard {
            index,
            comet,
            logic: Rc::new(LogicClient::new(stats.clone())),
            stats,
            read_scratch: Rc::new(RefCell::new(vec![0; SCRATCH_SIZE])),
            write_scratch: RefCell::new(Vec::with_capacity(SCRATCH_SIZE)),
            stop,
            conns: RefCell::new(HashSet::new()),
            keys: RefCell::new(HashSet::new()),
            shadowed: RefCell::new(Vec::new()),
            authenticating: RefCell::new(HashMap::new()),
            heartbeats: RefCell::new(Wheel::new(clock_ms())),
            rooms: RefCell::new(Rooms::new(early_members)),
            drain_waiters: RefCell::new(HashMap::new()),
            syncs: RefCell::new(HashMap::new()),
            job_links: RefCell::new(Vec::new()),
            upstream: RefCell::new(HashMap::new()),
            next_conn: Cell::new(0),
            stopping: Cell::new(false),
            lag: Lag::default(),
            busy: Busy::new(&loop_stats),
            tick_busy: Busy::new(&loop_stats),
            loop_stats,
            ring_sends: imgate_runtime::net::has_ring(),
            ring_done: RefCell::new(Vec::new()),
        }
    }

    /// A shard outside any comet, for measuring per-connection state in tests.
    #[cfg(test)]
    pub fn detached(config: imgate_shared::config::CometConfig) -> Rc<Self> {
        let comet = Arc::new(CometShared {
            id: "test".into(),
            config,
            info: imgate_shared::link::CometInfo::default(),
            inboxes: Vec::new(),
            tls: None,
            limits: crate::limits::ConnLimits::new(0, 0),
            addresses: crate::limits::OnlineAddresses::default(),
            #[cfg(debug_assertions)]
            test_panic_op: None,
        });
        let (_, stop) = async_channel::bounded(1);
        Rc::new(Shard::new(0, comet, Arc::default(), stop, Arc::default()))
    }

    /// How much each connection's outgoing queue may hold.
    pub fn queue_limits(&self) -> QueueLimits {
        let config = &self.comet.config;
        QueueLimits {
            entries: config.send_queue,
            bytes: config.send_queue_bytes,
        }
    }

    /// Leaves `waker` to be woken when connection `conn_id`'s queue has emptied (or it left).
    pub fn wait_for_drain(&self, conn_id: u64, waker: &Waker) {
        self.drain_waiters
            .borrow_mut()
            .insert(conn_id, waker.clone());
    }

    /// Wakes whoever waits for connection `conn_id`'s queue to empty.
    pub fn drained(&self, conn_id: u64) {
        let waker = self.drain_waiters.borrow_mut().remove(&conn_id);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Adds an op-22 request to connection `conn_id`'s. `Some(request)`: none is being
    /// served, so the caller starts serving this one; `None`: it waits its turn. `Err`: too
    /// many wait already.
    pub fn enqueue_sync(
        &self,
        conn_id: u64,
        request: SyncRequest,
        most_waiting: usize,
    ) -> Result<Option<SyncRequest>, SyncRequest> {
        let mut syncs = self.syncs.borrow_mut();
        match syncs.get_mut(&conn_id) {
            None => {
                syncs.insert(conn_id, VecDeque::new());
                Ok(Some(request))
            }
            Some(waiting) if waiting.len() < most_waiting => {
                waiting.push_back(request);
                Ok(None)
            }
            Some(_) => Err(request),
        }
    }

    /// The next op-22 request of connection `conn_id`, or `None` (and its turn ends).
    pub fn next_sync(&self, conn_id: u64) -> Option<SyncRequest> {
        let mut syncs = self.syncs.borrow_mut();
        let next = syncs.get_mut(&conn_id).and_then(VecDeque::pop_front);
        if next.is_none() {
            syncs.remove(&conn_id);
        }
        next
    }

    /// A comet-wide unique connection id: the shard index in the high bits.
    pub fn next_conn_id(&self) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        ((self.index as u64) << 40) | n
    }

    /// Whether the shard is shutting down.
    pub fn is_stopping(&self) -> bool {
        self.stopping.get()
    }

    /// Registers an authenticated connection: key, room, peer address and heartbeat deadline.
    /// An earlier holder of the key on this shard is not closed here: logic names the
    /// connection each claim replaced, and exactly that one is closed
    /// ([`Shard::close_replaced`]).
    pub fn register(&self, conn: &Rc<Conn>, room: &str) {
        if !conn.key.is_empty() {
            let old = self.keys.borrow_mut().replace(ByKey(conn.clone()));
            if let Some(ByKey(old)) = old.filter(|old| !old.0.is_closing()) {
                self.shadowed.borrow_mut().push(old);
            }
        }
        self.conns.borrow_mut().insert(ById(conn.clone()));
        let now = clock_ms();
        let mut deadline = conn.heartbeat_deadline(now).unwrap_or(now);
        if let Some(left) = conn.token_left_ms(crate::control::unix_now_ms()) {
            deadline = deadline.min(now + left);
        }
        self.heartbeats.borrow_mut().insert(conn.id, deadline);
        if !room.is_empty() {
            let key = self.rooms.borrow_mut().join(room, ById(conn.clone()));
            conn.set_room(Some(key));
        }
        if let Some(ip) = conn.peer_ip {
            self.comet.addresses.enter(ip);
        }
        self.stats.connections.inc();
        self.stats.connects.inc();
        if conn.websocket {
            self.stats.connections_ws.inc();
        }
    }

    /// Forgets a closed connection. The key entry is removed only if it still names this
    /// connection (a newer one with the same key keeps it).
    pub fn unregister(&self, conn: &Conn) {
        if !self.conns.borrow_mut().remove(&conn.id) {
            return;
        }
        {
            let mut keys = self.keys.borrow_mut();
            let mut shadowed = self.shadowed.borrow_mut();
            if keys.get(&*conn.key).is_some_and(|c| c.0.id == conn.id) {
                keys.remove(&*conn.key);
                if let Some(i) = shadowed
                    .iter()
                    .rposition(|c| c.key == conn.key && !c.is_closing())
                {
                    keys.insert(ByKey(shadowed.remove(i)));
                }
            } else if let Some(i) = shadowed.iter().position(|c| c.id == conn.id) {
                shadowed.remove(i);
            }
        }
        if let Some(room) = conn.set_room(None) {
            self.rooms.borrow_mut().leave(&room, conn.id);
        }
        for room in conn.take_joined() {
            self.rooms.borrow_mut().leave(&room, conn.id);
        }
        if let Some(ip) = conn.peer_ip {
            self.comet.addresses.leave(ip);
        }
        // A sync waiting for this connection's queue to drain learns that it left.
        self.drained(conn.id);
        self.stats.connections.sub(1);
        if conn.websocket {
            self.stats.connections_ws.sub(1);
        }
    }

    /// Moves a connection's main room to `room` (empty = leave its main room). A room it had
    /// joined becomes its main room (it stays in it once).
    pub fn change_room(&self, conn: &Rc<Conn>, room: &str) {
        let current = conn.room();
        if current.as_deref() == Some(room) {
            return;
        }
        let mut rooms = self.rooms.borrow_mut();
        if let Some(old) = current {
            rooms.leave(&old, conn.id);
        }
        let main = if room.is_empty() {
            None
        } else if conn.unjoin(room) {
            rooms.key(room)
        } else {
            Some(rooms.join(room, ById(conn.clone())))
        };
        conn.set_room(main);
    }

    /// Adds `room` to a connection's rooms (op 24). Joining a room it is in already changes
    /// nothing; past `comet.max_rooms_per_conn` rooms it is refused (false).
    pub fn join_room(&self, conn: &Rc<Conn>, room: &str) -> bool {
        if conn.in_room(room) {
            return true;
        }
        if conn.room_count() >= self.comet.config.max_rooms_per_conn {
            return false;
        }
        let key = self.rooms.borrow_mut().join(room, ById(conn.clone()));
        conn.add_joined(key);
        true
    }

    /// Takes a connection out of `room` (op 26), its main room or a joined one; false if it was
    /// not in it.
    pub fn leave_room(&self, conn: &Rc<Conn>, room: &str) -> bool {
        if conn.room().as_deref() == Some(room) {
            self.change_room(conn, "");
            return true;
        }
        if !conn.unjoin(room) {
            return false;
        }
        self.rooms.borrow_mut().leave(room, conn.id);
        true
    }

    /// A user's connection's rooms before a change, for [`Shard::rooms_changed`]; `None` for
    /// an anonymous connection (mid 0), which has no presence: nothing is reported for it.
    pub fn rooms_before(conn: &Conn) -> Option<Vec<String>> {
        (conn.mid > 0).then(|| conn.rooms())
    }

    /// Tells logic that a user's connection's rooms changed from `before` (from
    /// [`Shard::rooms_before`]) to what they are now, so presence lists every room and the
    /// business gets join and leave events; `by_server`: the business's join or leave asked
    /// for it, not the client. Nothing is sent when nothing changed.
    pub fn rooms_changed(&self, conn: &Conn, before: Option<Vec<String>>, by_server: bool) {
        let Some(before) = before else {
            return;
        };
        let rooms = conn.rooms();
        let joined: Vec<String> = rooms
            .iter()
            .filter(|r| !before.contains(r))
            .cloned()
            .collect();
        let left: Vec<String> = before
            .iter()
            .filter(|r| !rooms.contains(r))
            .cloned()
            .collect();
        if joined.is_empty() && left.is_empty() {
            return;
        }
        self.logic.notify(Body::RoomsChanged(RoomsChanged {
            conn: self.conn_ref(conn),
            mid: conn.mid,
            key: conn.key.to_string(),
            rooms,
            joined,
            left,
            by_server,
        }));
    }

    /// Whether a room grew enough since the last online report to be reported early.
    pub fn rooms_outgrown(&self) -> bool {
        self.rooms.borrow().outgrown()
    }

    /// The online count a heartbeat reply reports for `room`.
    pub fn room_online(&self, room: &str) -> u32 {
        self.rooms.borrow().online(room)
    }

    /// A connection starts waiting for logic's answer to its auth.
    pub fn auth_started(&self, conn_id: u64) {
        self.authenticating.borrow_mut().insert(conn_id, false);
    }

    /// The wait ends (answered or not); says whether a newer connection replaced this one
    /// meanwhile, in which case it must not start.
    pub fn auth_ended(&self, conn_id: u64) -> bool {
        self.authenticating
            .borrow_mut()
            .remove(&conn_id)
            .unwrap_or(false)
    }

    /// Closes the connection a newer one's claim replaced, if it is on this comet: on this
    /// shard directly, on another through its inbox. One on another comet is closed by logic
    /// through the bus.
    pub async fn close_replaced(&self, replaced: &ConnRef) {
        if replaced.comet != self.comet.id {
            return;
        }
        if replaced.shard == self.index {
            self.close_replaced_here(replaced.conn_id);
        } else if let Some(inbox) = self.comet.inboxes.get(replaced.shard as usize) {
            let _ = inbox
                .send(ShardCommand::CloseReplaced {
                    conn_id: replaced.conn_id,
                })
                .await;
        }
    }

    /// Closes connection `conn_id` of this shard as replaced, or marks it so if it is still
    /// authenticating; a connection that is gone already is left alone.
    pub fn close_replaced_here(&self, conn_id: u64) {
        let conn = self.conns.borrow().get(&conn_id).map(|c| c.0.clone());
        match conn {
            Some(conn) => conn.close(CloseReason::Kicked),
            None => {
                if let Some(replaced) = self.authenticating.borrow_mut().get_mut(&conn_id) {
                    *replaced = true;
                }
            }
        }
    }

    /// The cluster-link reference to `conn`.
    pub fn conn_ref(&self, conn: &Conn) -> Option<ConnRef> {
        Some(ConnRef {
            comet: self.comet.id.clone(),
            shard: self.index,
            conn_id: conn.id,
        })
    }

    /// Queues a reply (or any frame) to `conn` under the shard's queue limits.
    pub fn reply(&self, conn: &Conn, frame: Bytes) {
        conn.push(frame, self.queue_limits());
    }

    /// The open connection with id `conn_id`.
    pub fn conn(&self, conn_id: u64) -> Option<Rc<Conn>> {
        self.conns.borrow().get(&conn_id).map(|c| c.0.clone())
    }

    /// The connection holding `key` on this shard.
    pub fn key_holder(&self, key: &str) -> Option<Rc<Conn>> {
        self.keys.borrow().get(key).map(|c| c.0.clone())
    }

    /// The members of `room` on this shard, in the order they connected (see
    /// [`Rooms::members`]).
    pub fn room_members(&self, room: &str) -> Rc<[ById]> {
        self.rooms.borrow_mut().members(room)
    }

    /// The ids of the connections watching `op`, in the order they connected.
    pub fn watcher_ids(&self, op: i32) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .conns
            .borrow()
            .iter()
            .filter(|c| c.0.watches(op))
            .map(|c| c.0.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The connections watching `op`, in the order they connected.
    pub fn watchers(&self, op: i32) -> Vec<Rc<Conn>> {
        in_accept_order(
            self.conns
                .borrow()
                .iter()
                .filter(|c| c.0.watches(op))
                .map(|c| c.0.clone()),
            |c| c.id,
        )
    }

    /// Every open connection.
    pub fn open_conns(&self) -> Vec<Rc<Conn>> {
        self.conns.borrow().iter().map(|c| c.0.clone()).collect()
    }

    /// How many connections are open.
    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// The shard is shutting down: accept loops stop, new connections are not admitted.
    pub fn set_stopping(&self) {
        self.stopping.set(true);
    }

    /// Keeps the cluster-wide room counts logic answered the last online report with, in the
    /// rooms themselves (no second copy of their names).
    pub fn set_cluster_rooms(&self, rooms: Vec<RoomCount>) {
        self.rooms
            .borrow_mut()
            .set_cluster_counts(rooms.iter().filter_map(|r| Some((r.name()?, r.count))));
    }

    /// How late a heartbeat tick ran (the shard's lag, reported to logic).
    pub fn record_tick_lag(&self, late: Duration) {
        self.lag.record(late);
    }

    /// Thousandths of the time since the last call that the shard's loop was busy.
    pub fn take_tick_busy(&self) -> u32 {
        self.tick_busy.take_permille(&self.loop_stats)
    }

    /// A client message of connection `conn_id` starts waiting for the business; false (and
    /// nothing changes) if it has `most` waiting already, or the shard
    /// `comet.upstream_concurrency`.
    pub fn start_upstream(&self, conn_id: u64, most: u32) -> bool {
        let mut waiting = self.upstream.borrow_mut();
        let total: u32 = waiting.values().sum();
        if total as usize >= self.comet.config.upstream_concurrency {
            return false;
        }
        let n = waiting.entry(conn_id).or_default();
        if *n >= most {
            return false;
        }
        *n += 1;
        true
    }

    /// One of connection `conn_id`'s client messages got its answer (or gave up).
    pub fn end_upstream(&self, conn_id: u64) {
        let mut waiting = self.upstream.borrow_mut();
        if let Some(n) = waiting.get_mut(&conn_id) {
            *n -= 1;
            if *n == 0 {
                waiting.remove(&conn_id);
            }
        }
    }

    /// Remembers one of this shard's own links from job.
    pub fn add_job_link(&self, link: Weak<LinkBack>) {
        self.job_links.borrow_mut().push(link);
    }

    /// This shard's open links from job (forgetting the closed ones).
    pub fn job_links(&self) -> Vec<Rc<LinkBack>> {
        let mut links = self.job_links.borrow_mut();
        links.retain(|l| l.strong_count() > 0);
        links.iter().filter_map(Weak::upgrade).collect()
    }

    /// Closes the connections whose heartbeat expired by `now_ms`, tells those whose token
    /// expired (op 6, then the close), and files the others that came due under their next
    /// deadline (the heartbeat's or the token's, whichever comes first). A connection closing
    /// after its last word stays filed: if its client never takes that word in, its heartbeat
    /// expiry closes it.
    pub fn expire_heartbeats(&self, now_ms: u64) {
        let due = self.heartbeats.borrow_mut().due(now_ms);
        if due.is_empty() {
            return;
        }
        let unix_ms = crate::control::unix_now_ms();
        let conns = self.conns.borrow();
        let mut wheel = self.heartbeats.borrow_mut();
        for id in due {
            // Connections that left since are skipped (ids are never reused).
            if let Some(ById(conn)) = conns.get(&id) {
                let Some(mut later) = conn.heartbeat_deadline(now_ms) else {
                    conn.close(CloseReason::HeartbeatExpired);
                    continue;
                };
                if !conn.is_closing() {
                    match conn.token_left_ms(unix_ms) {
                        Some(0) => crate::control::expire(self, conn),
                        Some(left) => later = later.min(now_ms + left),
                        None => {}
                    }
                }
                wheel.insert(id, later);
            }
        }
    }

    /// Reports this shard to logic (its rooms in parts, [`report_parts`]) and keeps the
    /// cluster-wide room counts of the answers; false if logic did not answer every part.
    pub(crate) async fn report_online(&self) -> bool {
        if self.index == 0 {
            // Names of rooms that emptied since, unless another service of the process holds
            // them (one shard sweeps for the comet; logic sweeps its own).
            imgate_shared::intern::sweep();
        }
        let rooms = self.rooms.borrow_mut().counts();
        // Refreshed with each report: a scrape reads it, the shard's thread keeps the rooms.
        self.stats.rooms.set(rooms.len() as u64);
        let parts = report_parts(rooms, REPORT_PART_BYTES);
        let last = parts.len() - 1;
        let mut cluster = Vec::new();
        for (i, rooms) in parts.into_iter().enumerate() {
            let part = RenewOnline {
                comet: Some(self.comet.info.clone()),
                shard: self.index,
                conn_count: self.conns.borrow().len() as u32,
                // The names themselves, not copies.
                rooms: rooms
                    .into_iter()
                    .map(|(name, count)| RoomCount::new(name, count))
                    .collect(),
                // Comet-wide: every shard reports the same figure, and the registry keeps one
                // per comet rather than summing shards.
                ip_count: self.comet.addresses.distinct() as u32,
                lag_us: if i == last {
                    self.lag.take_mean_us()
                } else {
                    0
                },
                busy_permille: if i == last {
                    self.busy.take_permille(&self.loop_stats)
                } else {
                    0
                },
                part: i as u32,
                more: i < last,
            };
            let timeout = self.comet.config.logic_timeout;
            match self.logic.request(Body::RenewOnline(part), timeout).await {
                Ok(Body::RenewOnlineReply(reply)) => cluster.extend(reply.rooms),
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(shard = self.index, "online report failed: {e}");
                    return false;
                }
            }
        }
        self.set_cluster_rooms(cluster);
        true
    }
}

/// `rooms` in parts of at most `budget` bytes of report each (a room larger than that alone
/// in its part); one empty part when there are none, so a report always reaches logic.
fn report_parts(rooms: Vec<(Arc<str>, u32)>, budget: usize) -> Vec<Vec<(Arc<str>, u32)>> {
    let mut parts = vec![Vec::new()];
    let mut used = 0;
    for (name, count) in rooms {
        let len = RoomCount::report_len(&name);
        if used + len > budget && used > 0 {
            parts.push(Vec::new());
            used = 0;
        }
        used += len;
        if let Some(part) = parts.last_mut() {
            part.push((name, count));
        }
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_comes_in_parts_of_a_bounded_size() {
        let room = |i: usize, len: usize| -> (Arc<str>, u32) { (format!("{i:0>len$}").into(), 1) };
        assert_eq!(
            report_parts(Vec::new(), 100),
            [Vec::new()],
            "one empty part"
        );
        let rooms: Vec<_> = (0..10).map(|i| room(i, 38)).collect(); // 50 bytes each
        let parts = report_parts(rooms.clone(), 100);
        assert_eq!(parts.len(), 5);
        assert!(parts.iter().all(|p| p.len() == 2));
        assert_eq!(parts.concat(), rooms, "all of them, in order");
        // A room larger than a part goes alone.
        let parts = report_parts(vec![room(1, 10), room(2, 500), room(3, 10)], 100);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1, 1]);
    }

    #[test]
    fn fan_outs_go_in_accept_order_whatever_the_hash_order() {
        let shard = Shard::detached(Default::default());
        let ids: Vec<u64> = (0..1000).map(|_| shard.next_conn_id()).collect();
        let hashed: HashSet<u64> = ids.iter().copied().collect();
        assert_ne!(
            hashed.iter().copied().collect::<Vec<_>>(),
            ids,
            "a set keeps no order"
        );
        assert_eq!(in_accept_order(hashed.into_iter(), |id| *id), ids);
    }
}
