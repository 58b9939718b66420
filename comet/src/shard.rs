//! A shard: one thread running one runtime (`imgate-runtime`) that owns its listeners, connections, key
//! index, rooms and timers outright. Other shards reach it only through its inbox.

use std::borrow::Borrow;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::Bytes;
use imgate_runtime::net::Socket as ClientSocket;
use imgate_runtime::time::sleep;
use imgate_runtime::{spawn_local, LoopStats, Task};
use imgate_shared::config::CometConfig;
use imgate_shared::link::{Body, CometInfo, ConnRef, RenewOnline};
use socket2::Socket;

use crate::connection::{self, CloseReason, Conn, Pushed, QueueLimits, SyncRequest};
use crate::heartbeat::{self, clock_ms, Wheel};
use crate::limits::{ConnLimits, OnlineAddresses};
use crate::link;
use crate::logic_client::LogicClient;
use crate::room::Rooms;
use crate::stats::{self, ShardStats};

/// Inbox commands a shard handles before it lets its other tasks run.
const COMMANDS_PER_TURN: u32 = 32;
/// Capacity of each shard's inbox.
pub(crate) const INBOX_CAPACITY: usize = 4096;
/// Size of the per-shard read scratch and of one coalesced write.
pub(crate) const SCRATCH_SIZE: usize = 64 << 10;

/// Work sent to a shard by link readers, other shards and the handle.
pub(crate) enum ShardCommand {
    /// Deliver to these keys of the shard if their connection watches `op`. A stored push
    /// (`seq > 0`, the inbox sequence of user `mid`) goes to every connection of that user
    /// that does not have it yet, watched or not.
    PushKeys {
        keys: Vec<String>,
        op: i32,
        tcp: Bytes,
        ws: Bytes,
        seq: u64,
        mid: i64,
    },
    /// Deliver to every member of `room` on the shard.
    PushRoom { room: String, tcp: Bytes, ws: Bytes },
    /// Deliver to every connection watching `op`, about `speed` per second (0 = at once).
    Broadcast {
        op: i32,
        tcp: Bytes,
        ws: Bytes,
        speed: u32,
    },
    /// Close connection `conn_id` of this shard: a newer connection took its key over. If it
    /// is still authenticating, it is closed as soon as its handshake ends.
    CloseReplaced { conn_id: u64 },
    /// Close everything and let the executor return.
    Shutdown,
}

/// What every shard of one comet shares (immutable after start, but for the limit counts).
pub(crate) struct CometShared {
    pub id: String,
    pub config: CometConfig,
    pub info: CometInfo,
    pub inboxes: Vec<async_channel::Sender<ShardCommand>>,
    /// Accepts TLS on the `wss://` and TLS TCP listeners.
    pub tls: Option<futures_rustls::TlsAcceptor>,
    pub limits: ConnLimits,
    /// The addresses of the comet's connections, counted once whichever shard holds them.
    pub addresses: OnlineAddresses,
}

/// What a client listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Listen {
    pub websocket: bool,
    pub tls: bool,
}

impl Listen {
    pub const TCP: Listen = Listen {
        websocket: false,
        tls: false,
    };
    pub const WS: Listen = Listen {
        websocket: true,
        tls: false,
    };
    pub const WSS: Listen = Listen {
        websocket: true,
        tls: true,
    };
    pub const TCP_TLS: Listen = Listen {
        websocket: false,
        tls: true,
    };
}

/// Everything a shard thread starts from.
pub(crate) struct ShardSetup {
    pub index: u32,
    pub comet: Arc<CometShared>,
    pub stats: Arc<ShardStats>,
    pub inbox: async_channel::Receiver<ShardCommand>,
    /// This shard's socket of every client listener.
    pub clients: Vec<(Socket, Listen)>,
    pub link: Socket,
    pub ready: std::sync::mpsc::Sender<Result<(), String>>,
}

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
    rooms: RefCell<Rooms>,
    cluster_rooms: RefCell<HashMap<String, u32>>,
    /// Tasks waiting for a connection's queue to empty (stored messages are sent a page at a
    /// time), by connection id; few at once, so kept here rather than in every connection.
    drain_waiters: RefCell<HashMap<u64, Waker>>,
    /// Op-22 requests waiting behind the one a connection's sync task serves.
    syncs: RefCell<HashMap<u64, VecDeque<SyncRequest>>>,
    next_conn: Cell<u64>,
    stopping: Cell<bool>,
    /// How late the shard's ticks ran since the last online report.
    lag: Lag,
    /// How busy its loop was since the last online report.
    busy: Busy,
}

/// How busy the shard's event loop was between two online reports.
struct Busy {
    since: Cell<Instant>,
    parked_ns: Cell<u64>,
}

impl Busy {
    fn new(stats: &LoopStats) -> Self {
        Busy {
            since: Cell::new(Instant::now()),
            parked_ns: Cell::new(stats.parked_ns()),
        }
    }

    /// Thousandths of the time since the last call that the loop did not spend parked.
    /// Called on the shard's own thread, so the parked time is up to date.
    fn take_permille(&self, stats: &LoopStats) -> u32 {
        let now = Instant::now();
        let elapsed = now.duration_since(self.since.replace(now)).as_nanos() as u64;
        let parked_now = stats.parked_ns();
        let parked = parked_now.saturating_sub(self.parked_ns.replace(parked_now));
        if elapsed == 0 {
            return 0;
        }
        (elapsed.saturating_sub(parked) * 1000 / elapsed) as u32
    }
}

/// Sum and count of tick delays, taken (and reset) by each online report.
#[derive(Default)]
struct Lag {
    sum_us: Cell<u64>,
    ticks: Cell<u32>,
}

impl Lag {
    fn record(&self, late: Duration) {
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        self.sum_us.set(self.sum_us.get().saturating_add(us));
        self.ticks.set(self.ticks.get().saturating_add(1));
    }

    /// The mean delay since the last call, in microseconds (0 without ticks).
    fn take_mean_us(&self) -> u32 {
        let (sum, ticks) = (self.sum_us.take(), self.ticks.take());
        u32::try_from(sum / u64::from(ticks.max(1))).unwrap_or(u32::MAX)
    }
}

/// A connection in the id index.
struct ById(Rc<Conn>);

impl Borrow<u64> for ById {
    fn borrow(&self) -> &u64 {
        &self.0.id
    }
}

impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.id.hash(state);
    }
}

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

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

/// The body of a shard thread: runs until a `Shutdown` command arrives.
pub(crate) async fn run(setup: ShardSetup, loop_stats: Arc<LoopStats>) {
    let ShardSetup {
        index,
        comet,
        stats,
        inbox,
        clients,
        link: link_socket,
        ready,
    } = setup;
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let shard = Rc::new(Shard::new(index, comet, stats, stop_rx, loop_stats));

    let mut listeners: Vec<Task<()>> = Vec::new();
    for (socket, listen) in clients {
        let listener = match ClientSocket::new(OwnedFd::from(socket)) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(format!("listening socket: {e}")));
                return;
            }
        };
        listeners.push(spawn_local(accept_clients(shard.clone(), listener, listen)));
    }
    let link_listener = match ClientSocket::new(OwnedFd::from(link_socket)) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(format!("link listening socket: {e}")));
            return;
        }
    };
    listeners.push(spawn_local(link::accept_links(
        shard.clone(),
        link_listener,
    )));
    let logic_task = spawn_local(shard.logic.clone().run(
        shard.comet.config.logic_addrs.clone(),
        shard.read_scratch.clone(),
    ));
    let renew_task = spawn_local(renew_online(shard.clone()));
    let heartbeat_task = spawn_local(expire_heartbeats(shard.clone()));
    let _ = ready.send(Ok(()));

    let mut handled = 0u32;
    while let Ok(command) = inbox.recv().await {
        if let ShardCommand::Shutdown = command {
            break;
        }
        shard.handle(command);
        // Let the connections' writers run between bursts: a full inbox handled in one go
        // would queue more than `send_queue` pushes to a busy connection before its writer
        // got a turn, and close it as slow although it reads everything.
        handled += 1;
        if handled == COMMANDS_PER_TURN {
            handled = 0;
            futures_lite::future::yield_now().await;
        }
    }

    // Shutdown: stop accepting (cancelling an accept loop drops, and so closes, its listening
    // socket at once), close every connection, give logic a moment to hear about it.
    shard.stopping.set(true);
    drop(stop_tx);
    for task in listeners {
        task.cancel().await;
    }
    let open: Vec<Rc<Conn>> = shard.conns.borrow().iter().map(|c| c.0.clone()).collect();
    for conn in open {
        conn.close(CloseReason::Shutdown);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while !shard.conns.borrow().is_empty() && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_millis(300);
    while shard.logic.has_queued() && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    renew_task.cancel().await;
    heartbeat_task.cancel().await;
    logic_task.cancel().await;
}

async fn accept_clients(shard: Rc<Shard>, listener: ClientSocket, listen: Listen) {
    loop {
        match listener.accept().await {
            Ok((fd, peer)) => match ClientSocket::new(fd) {
                Ok(socket) => {
                    let accepted = Box::new((socket, peer));
                    spawn_local(connection::serve(shard.clone(), accepted, listen)).detach();
                }
                Err(e) => tracing::warn!(shard = shard.index, "cannot watch a client socket: {e}"),
            },
            Err(_) if shard.is_stopping() => return,
            Err(e) => {
                tracing::warn!(shard = shard.index, "accept failed: {e}");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reports this shard to logic right away (retrying quickly until the registry has it), then
/// every `online_interval`, and keeps the cluster-wide room counts of the reply.
async fn renew_online(shard: Rc<Shard>) {
    let config = &shard.comet.config;
    loop {
        let report = shard.online_report();
        let ok = match shard
            .logic
            .request(Body::RenewOnline(report), config.logic_timeout)
            .await
        {
            Ok(Body::RenewOnlineReply(reply)) => {
                *shard.cluster_rooms.borrow_mut() = reply.rooms.into_iter().collect();
                true
            }
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(shard = shard.index, "online report failed: {e}");
                false
            }
        };
        let wait = if ok {
            config.online_interval
        } else {
            Duration::from_millis(100)
        };
        sleep(wait).await;
    }
}

/// Closes the connections whose heartbeat expired, looking at the wheel once a tick, and
/// records how late each tick ran (the shard's lag, reported to logic).
async fn expire_heartbeats(shard: Rc<Shard>) {
    let tick = Duration::from_millis(heartbeat::TICK_MS);
    loop {
        let asleep = Instant::now();
        sleep(tick).await;
        shard.lag.record(asleep.elapsed().saturating_sub(tick));
        let now = clock_ms();
        let due = shard.heartbeats.borrow_mut().due(now);
        if due.is_empty() {
            continue;
        }
        let conns = shard.conns.borrow();
        let mut wheel = shard.heartbeats.borrow_mut();
        for id in due {
            // Connections that left since are skipped (ids are never reused).
            if let Some(ById(conn)) = conns.get(&id) {
                match conn.heartbeat_deadline(now) {
                    Some(later) => wheel.insert(id, later),
                    None => conn.close(CloseReason::HeartbeatExpired),
                }
            }
        }
    }
}

impl Shard {
    fn new(
        index: u32,
        comet: Arc<CometShared>,
        stats: Arc<ShardStats>,
        stop: async_channel::Receiver<()>,
        loop_stats: Arc<LoopStats>,
    ) -> Self {
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
            rooms: RefCell::new(Rooms::default()),
            cluster_rooms: RefCell::new(HashMap::new()),
            drain_waiters: RefCell::new(HashMap::new()),
            syncs: RefCell::new(HashMap::new()),
            next_conn: Cell::new(0),
            stopping: Cell::new(false),
            lag: Lag::default(),
            busy: Busy::new(&loop_stats),
            loop_stats,
        }
    }

    /// A shard outside any comet, for measuring per-connection state in tests.
    #[cfg(test)]
    pub fn detached(config: CometConfig) -> Rc<Self> {
        let comet = Arc::new(CometShared {
            id: "test".into(),
            config,
            info: CometInfo::default(),
            inboxes: Vec::new(),
            tls: None,
            limits: ConnLimits::new(0, 0),
            addresses: OnlineAddresses::default(),
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
        let deadline = conn.heartbeat_deadline(now).unwrap_or(now);
        self.heartbeats.borrow_mut().insert(conn.id, deadline);
        if !room.is_empty() {
            let key = self.rooms.borrow_mut().join(room, conn.id);
            conn.set_room(Some(key));
        }
        if let Some(ip) = conn.peer_ip {
            self.comet.addresses.enter(ip);
        }
        stats::inc(&self.stats.connections);
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
        if let Some(ip) = conn.peer_ip {
            self.comet.addresses.leave(ip);
        }
        // A sync waiting for this connection's queue to drain learns that it left.
        self.drained(conn.id);
        stats::dec(&self.stats.connections);
    }

    /// Moves a connection to `room` (empty = leave its room).
    pub fn change_room(&self, conn: &Conn, room: &str) {
        let current = conn.room();
        if current.as_deref() == Some(room) {
            return;
        }
        let mut rooms = self.rooms.borrow_mut();
        if let Some(old) = current {
            rooms.leave(&old, conn.id);
        }
        let joined = (!room.is_empty()).then(|| rooms.join(room, conn.id));
        conn.set_room(joined);
    }

    /// The online count a heartbeat reply reports for `room`.
    pub fn room_online(&self, room: &str) -> u32 {
        let cluster = self.cluster_rooms.borrow().get(room).copied().unwrap_or(0);
        cluster.max(self.rooms.borrow().count(room))
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

    fn online_report(&self) -> RenewOnline {
        RenewOnline {
            comet: Some(self.comet.info.clone()),
            shard: self.index,
            conn_count: self.conns.borrow().len() as u32,
            rooms: self.rooms.borrow().counts(),
            // Comet-wide: every shard reports the same figure, and the registry keeps one per
            // comet rather than summing shards.
            ip_count: self.comet.addresses.distinct() as u32,
            lag_us: self.lag.take_mean_us(),
            busy_permille: self.busy.take_permille(&self.loop_stats),
        }
    }

    fn deliver(&self, conn: &Conn, tcp: &Bytes, ws: &Bytes) {
        let frame = if conn.websocket { ws } else { tcp };
        if conn.push(frame.clone(), self.queue_limits()) == Pushed::Queued {
            stats::inc(&self.stats.frames_queued);
        }
    }

    /// A stored push: dropped if the connection already has `seq`.
    fn deliver_stored(&self, conn: &Conn, tcp: &Bytes, ws: &Bytes, seq: u64) {
        let frame = if conn.websocket { ws } else { tcp };
        match conn.push_stored(frame.clone(), seq, self.queue_limits()) {
            Some(Pushed::Queued) => stats::inc(&self.stats.frames_queued),
            Some(_) => {}
            None => stats::inc(&self.stats.push_dropped_duplicate),
        }
    }

    fn handle(self: &Rc<Self>, command: ShardCommand) {
        match command {
            ShardCommand::PushKeys {
                keys,
                op,
                tcp,
                ws,
                seq,
                mid,
            } => {
                for key in &keys {
                    let conn = self.keys.borrow().get(key.as_str()).map(|c| c.0.clone());
                    match conn {
                        Some(conn) if seq > 0 && mid > 0 && conn.mid == mid => {
                            self.deliver_stored(&conn, &tcp, &ws, seq)
                        }
                        Some(conn) if conn.watches(op) => self.deliver(&conn, &tcp, &ws),
                        Some(_) => {}
                        None => stats::inc(&self.stats.push_dropped_no_key),
                    }
                }
            }
            ShardCommand::PushRoom { room, tcp, ws } => {
                let members: Vec<Rc<Conn>> = {
                    let conns = self.conns.borrow();
                    self.rooms
                        .borrow()
                        .members(&room)
                        .filter_map(|id| conns.get(&id).map(|c| c.0.clone()))
                        .collect()
                };
                for conn in members {
                    self.deliver(&conn, &tcp, &ws);
                }
            }
            ShardCommand::Broadcast { op, tcp, ws, speed } => self.broadcast(op, tcp, ws, speed),
            ShardCommand::CloseReplaced { conn_id } => self.close_replaced_here(conn_id),
            ShardCommand::Shutdown => {}
        }
    }

    fn broadcast(self: &Rc<Self>, op: i32, tcp: Bytes, ws: Bytes, speed: u32) {
        if speed == 0 {
            let targets: Vec<Rc<Conn>> = self
                .conns
                .borrow()
                .iter()
                .filter(|c| c.0.watches(op))
                .map(|c| c.0.clone())
                .collect();
            for conn in &targets {
                self.deliver(conn, &tcp, &ws);
            }
            return;
        }
        // Paced: about `speed` connections per second, in chunks of a twentieth of that. The
        // task keeps ids, not connections: a connection that closes meanwhile is forgotten at
        // once instead of being kept alive until the broadcast ends.
        let targets: Vec<u64> = self
            .conns
            .borrow()
            .iter()
            .filter(|c| c.0.watches(op))
            .map(|c| c.0.id)
            .collect();
        let shard = self.clone();
        let chunk = (speed as usize / 20).max(1);
        let pause = Duration::from_secs_f64(chunk as f64 / speed as f64);
        spawn_local(async move {
            for (i, part) in targets.chunks(chunk).enumerate() {
                if i > 0 {
                    sleep(pause).await;
                }
                if shard.is_stopping() {
                    return;
                }
                for id in part {
                    let conn = shard.conns.borrow().get(id).map(|c| c.0.clone());
                    if let Some(conn) = conn {
                        shard.deliver(&conn, &tcp, &ws);
                    }
                }
            }
        })
        .detach();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_the_mean_since_the_last_report() {
        let lag = Lag::default();
        assert_eq!(lag.take_mean_us(), 0, "no ticks yet");
        lag.record(Duration::from_micros(100));
        lag.record(Duration::from_micros(300));
        assert_eq!(lag.take_mean_us(), 200);
        assert_eq!(lag.take_mean_us(), 0, "taking resets it");
        lag.record(Duration::from_secs(10_000));
        assert_eq!(lag.take_mean_us(), u32::MAX, "saturates");
    }
}
