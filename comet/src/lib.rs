//! imgate comet: the goim-compatible connection server, thread-per-core on `imgate-runtime`.
//!
//! [`start`] binds every listener on the caller's thread (one SO_REUSEPORT socket per shard),
//! starts one executor thread per shard and returns a [`CometHandle`]. Each shard owns its
//! connections, key index and rooms; shards talk only through bounded inboxes.

mod backlink;
mod conn;
mod connection;
mod control;
mod delivery;
mod error;
mod fanout;
/// Fuzz harness bodies shared by `fuzz/` and the corpus replay tests (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod handshake;
mod heartbeat;
mod limits;
mod link;
mod listener;
mod load;
mod logic_client;
#[cfg(test)]
mod memory_probe;
mod metrics;
mod ops;
mod outbound;
mod panics;
mod reassembly;
mod room;
mod run;
mod setup;
mod shard;
mod socket_io;
mod stats;
mod stream;
mod sync;
mod watch;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imgate_runtime::Engine;
use imgate_shared::config::{CometConfig, IoEngine};
use imgate_shared::link::CometInfo;

use crate::limits::{ConnLimits, OnlineAddresses};
use crate::setup::{CometShared, Listen, ShardCommand, ShardSetup, INBOX_CAPACITY};
use crate::stats::ShardStats;

pub use crate::error::CometError;
pub use crate::stats::Stats;

/// A running comet. Dropping it shuts it down as [`CometHandle::shutdown`] does.
pub struct CometHandle {
    id: String,
    tcp_addrs: Vec<SocketAddr>,
    ws_addrs: Vec<SocketAddr>,
    wss_addrs: Vec<SocketAddr>,
    tcp_tls_addrs: Vec<SocketAddr>,
    link_addr: SocketAddr,
    engine: Engine,
    stats: Vec<Arc<ShardStats>>,
    inboxes: Vec<async_channel::Sender<ShardCommand>>,
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

impl CometHandle {
    /// The comet id used in the registry and in connection references.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bound goim TCP listener addresses (port 0 resolved), in configuration order.
    pub fn tcp_addrs(&self) -> &[SocketAddr] {
        &self.tcp_addrs
    }

    /// The bound WebSocket listener addresses, in configuration order.
    pub fn ws_addrs(&self) -> &[SocketAddr] {
        &self.ws_addrs
    }

    /// The bound `wss://` listener addresses (none without a TLS certificate).
    pub fn wss_addrs(&self) -> &[SocketAddr] {
        &self.wss_addrs
    }

    /// The bound TLS TCP listener addresses.
    pub fn tcp_tls_addrs(&self) -> &[SocketAddr] {
        &self.tcp_tls_addrs
    }

    /// The bound cluster-link address where job delivers pushes.
    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }

    /// The counters of every shard, summed.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for s in &self.stats {
            s.add_to(&mut total);
        }
        total
    }

    /// A Prometheus collector reading every shard's counters at scrape time.
    pub fn collector(&self) -> Arc<dyn imgate_shared::metrics::Collector> {
        Arc::new(self.metrics())
    }

    /// The push latency histogram, summed over the shards.
    pub fn push_latency(&self) -> imgate_shared::metrics::HistogramSnapshot {
        self.metrics().sum().1
    }

    /// What the shards' event loops park in (`comet.io`, resolved at start).
    pub fn io_engine(&self) -> Engine {
        self.engine
    }

    /// Whether every shard has its link to logic up now (what a comet process's `/readyz`
    /// asks).
    pub fn linked_to_logic(&self) -> bool {
        self.stats.iter().all(|s| s.logic_linked.get() == 1)
    }

    /// [`linked_to_logic`](Self::linked_to_logic), callable from another thread later.
    pub fn logic_link_probe(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let stats = self.stats.clone();
        move || stats.iter().all(|s| s.logic_linked.get() == 1)
    }

    /// How many shards' loops are not running (stopped, or on their way to ending the
    /// process after a panic), callable from another thread: `/readyz` fails unless 0.
    pub fn stopped_shards_probe(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let stats = self.stats.clone();
        move || stats.iter().filter(|s| s.running.get() == 0).count()
    }

    /// The fan-out latency histogram (link read to last member), summed over the shards.
    pub fn fanout_latency(&self) -> imgate_shared::metrics::HistogramSnapshot {
        self.metrics().sum().2
    }

    /// Reads this comet's figures when called (for status pages): its id, connections, rooms,
    /// the totals rates are derived from, and push latency percentiles.
    pub fn status_source(&self) -> impl Fn() -> serde_json::Value + Send + Sync + 'static {
        let metrics = self.metrics();
        move || {
            let (s, latency, fanout) = metrics.sum();
            serde_json::json!({
                "id": metrics.id,
                "connections": s.connections,
                "connections_ws": s.connections_ws,
                "rooms": s.rooms,
                "connects": s.connects,
                "messages_sent": s.frames_queued,
                "writes": s.writes,
                "bytes_sent": s.bytes_sent,
                "heartbeats": s.heartbeats,
                "io": metrics.engine.name(),
                "task_panics": metrics.task_panics(),
                "latency": {
                    "count": latency.count(),
                    "p50": latency.quantile(0.5),
                    "p90": latency.quantile(0.9),
                    "p99": latency.quantile(0.99),
                },
                "fanout": {
                    "count": fanout.count(),
                    "p50": fanout.quantile(0.5),
                    "p99": fanout.quantile(0.99),
                },
            })
        }
    }

    fn metrics(&self) -> metrics::CometCollector {
        metrics::CometCollector {
            id: self.id.clone(),
            engine: self.engine,
            shards: self.stats.clone(),
        }
    }

    /// Stops accepting, closes every connection, joins every shard thread and releases the
    /// ports.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        for inbox in &self.inboxes {
            let _ = inbox.send_blocking(ShardCommand::Shutdown);
        }
        for thread in self.threads.drain(..) {
            match thread.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("comet shard ended with an error: {e}"),
                Err(_) => tracing::warn!("comet shard panicked"),
            }
        }
    }
}

impl Drop for CometHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop();
        }
    }
}

/// Binds the configured listeners and starts the shards. Returns once every listener is bound
/// and every shard runs, so clients can connect immediately.
pub fn start(config: &CometConfig) -> Result<CometHandle, CometError> {
    // The CPUs this process may use (taskset, a cpuset, systemd's CPUAffinity): one shard on
    // each by default, and shards are pinned within them.
    let cpus = imgate_runtime::allowed_cpus()
        .ok()
        .filter(|cpus| !cpus.is_empty())
        .unwrap_or_else(|| {
            (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
        });
    let shards = if config.shards == 0 {
        cpus.len()
    } else {
        config.shards
    };
    let io = match std::env::var(IO_ENV) {
        Ok(value) if !value.is_empty() => value
            .parse::<IoEngine>()
            .map_err(|why| CometError::Io(format!("{IO_ENV}: {why}")))?,
        _ => config.io,
    };
    let engine = choose_engine(io, imgate_runtime::probe_io_uring())?;
    let tls = match config.tls_files() {
        None => None,
        Some((cert, key)) => {
            let server = imgate_shared::tls::server_config(cert, key, &[])?;
            Some(futures_rustls::TlsAcceptor::from(server))
        }
    };
    let no_tls: &[SocketAddr] = &[];
    let (wss_bind, tcp_tls_bind) = match tls {
        Some(_) => (&config.wss_bind[..], &config.tcp_tls_bind[..]),
        None => (no_tls, no_tls),
    };
    let client_options = listener::ClientOptions::from_config(config);
    let bind_all = |addrs: &[SocketAddr]| {
        addrs
            .iter()
            .map(|a| listener::bind_group(*a, shards, config.backlog, client_options))
            .collect::<Result<Vec<_>, _>>()
    };
    let tcp = bind_all(&config.tcp_bind)?;
    let ws = bind_all(&config.ws_bind)?;
    let wss = bind_all(wss_bind)?;
    let tcp_tls = bind_all(tcp_tls_bind)?;
    let link = listener::bind_group(
        config.link_bind,
        shards,
        config.backlog,
        listener::ClientOptions::default(),
    )?;

    let id = config
        .id
        .clone()
        .unwrap_or_else(|| format!("comet-{}-{}", hostname(), link.addr.port()));
    let link_advertise = config
        .link_advertise
        .clone()
        .unwrap_or_else(|| link.addr.to_string());
    let tcp_addrs: Vec<SocketAddr> = tcp.iter().map(|g| g.addr).collect();
    let ws_addrs: Vec<SocketAddr> = ws.iter().map(|g| g.addr).collect();
    let wss_addrs: Vec<SocketAddr> = wss.iter().map(|g| g.addr).collect();
    let tcp_tls_addrs: Vec<SocketAddr> = tcp_tls.iter().map(|g| g.addr).collect();
    // What clients are told: the configured public addresses of each kind, or the bound ones.
    let advertised = |configured: &[String], bound: &[SocketAddr]| {
        if configured.is_empty() {
            bound.iter().map(|a| advertisable(*a).to_string()).collect()
        } else {
            configured.to_vec()
        }
    };
    let info = CometInfo {
        id: id.clone(),
        link_addr: link_advertise,
        tcp_addrs: advertised(&config.addrs, &tcp_addrs),
        ws_addrs: advertised(&config.ws_addrs, &ws_addrs),
        wss_addrs: advertised(&config.wss_addrs, &wss_addrs),
        weight: config.weight,
        shards: shards as u32,
    };

    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards)
        .map(|_| async_channel::bounded(INBOX_CAPACITY))
        .unzip();
    let comet = Arc::new(CometShared {
        id: id.clone(),
        config: config.clone(),
        info,
        inboxes: senders.clone(),
        tls,
        limits: ConnLimits::new(config.max_conns, config.max_conns_per_ip),
        addresses: OnlineAddresses::default(),
        #[cfg(debug_assertions)]
        test_panic_op: panics::test_panic_op(),
    });
    let stats: Vec<Arc<ShardStats>> = (0..shards).map(|_| Arc::default()).collect();

    // Hand socket i of every group to shard i.
    let kinds = [
        (tcp, Listen::TCP),
        (ws, Listen::WS),
        (wss, Listen::WSS),
        (tcp_tls, Listen::TCP_TLS),
    ];
    let mut client_sockets: Vec<_> = kinds
        .into_iter()
        .flat_map(|(groups, listen)| {
            groups
                .into_iter()
                .map(move |g| g.sockets.into_iter().map(move |s| (s, listen)))
        })
        .collect();
    let mut link_sockets = link.sockets.into_iter();

    let mut handle = CometHandle {
        id,
        tcp_addrs,
        ws_addrs,
        wss_addrs,
        tcp_tls_addrs,
        link_addr: link.addr,
        engine,
        stats: stats.clone(),
        inboxes: senders,
        threads: Vec::with_capacity(shards),
    };
    // One channel per shard: a shard whose executor dies before it runs drops its sender
    // unused, and then its thread's error says why.
    let mut ready = Vec::with_capacity(shards);
    for (index, inbox) in receivers.into_iter().enumerate() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        ready.push(ready_rx);
        let setup = ShardSetup {
            index: index as u32,
            comet: comet.clone(),
            stats: stats[index].clone(),
            inbox,
            clients: client_sockets
                .iter_mut()
                .filter_map(Iterator::next)
                .collect(),
            link: link_sockets.next().ok_or_else(|| CometError::Shard {
                shard: index,
                reason: "no link socket".into(),
            })?,
            ready: ready_tx,
        };
        let cpu = config.pin.then(|| cpus[index % cpus.len()]);
        let spawned = imgate_runtime::Builder::new(format!("comet-shard-{index}"))
            .pin_to(cpu)
            .engine(engine)
            .exit_on_loop_panic(true)
            .spawn(move |loop_stats| run::run(setup, loop_stats));
        match spawned {
            Ok(thread) => handle.threads.push(thread),
            Err(e) => {
                return Err(CometError::Shard {
                    shard: index,
                    reason: e.to_string(),
                })
            }
        }
    }
    for (index, ready_rx) in ready.into_iter().enumerate() {
        let reason = match ready_rx.recv_timeout(SHARD_START_TIMEOUT) {
            Ok(Ok(())) => continue,
            Ok(Err(reason)) => reason,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                format!("not ready within {SHARD_START_TIMEOUT:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                // The runtime ended before running the shard: its thread has the reason.
                match handle.threads.remove(index).join() {
                    Ok(Err(e)) => format!("its runtime could not start: {e}"),
                    Err(panic) => format!("its thread panicked: {}", panics::message(&*panic)),
                    Ok(Ok(())) => "its runtime ended before it started".into(),
                }
            }
        };
        return Err(CometError::Shard {
            shard: index,
            reason,
        });
    }
    Ok(handle)
}

/// The environment variable that overrides `comet.io` (an operator's switch, and how the
/// test suite runs on each engine).
pub const IO_ENV: &str = "IMGATE_COMET_IO";

/// How long a shard may take to report ready.
const SHARD_START_TIMEOUT: Duration = Duration::from_secs(10);

/// The engine the shards park in for `comet.io`, given whether io_uring can be used here
/// (`probe`): `auto` falls back to epoll with one warning line; `io_uring` refuses to start.
fn choose_engine(io: IoEngine, probe: Result<(), String>) -> Result<Engine, CometError> {
    match (io, probe) {
        (IoEngine::Epoll, _) => Ok(Engine::Epoll),
        (IoEngine::Auto | IoEngine::IoUring, Ok(())) => Ok(Engine::IoUring),
        (IoEngine::IoUring, Err(why)) => Err(CometError::IoUringRefused(why)),
        (IoEngine::Auto, Err(why)) => {
            tracing::warn!(
                "io_uring cannot be used here ({why}); comet's shards run on epoll \
                 (comet.io = \"auto\")"
            );
            Ok(Engine::Epoll)
        }
    }
}

/// The address clients are told for a bound one: an unspecified address (`0.0.0.0`, `::`)
/// becomes the host's primary address (the one its default route leaves from), since clients
/// cannot dial `0.0.0.0`. `comet.addrs` overrides all of this.
fn advertisable(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    // Connecting a UDP socket sends nothing; it only picks the route and so the source address.
    let probe: SocketAddr = if bound.is_ipv4() {
        "192.0.2.1:9".parse().expect("literal")
    } else {
        "[2001:db8::1]:9".parse().expect("literal")
    };
    let local = std::net::UdpSocket::bind(SocketAddr::new(bound.ip(), 0))
        .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()));
    match local {
        Ok(local) if !local.ip().is_unspecified() => SocketAddr::new(local.ip(), bound.port()),
        _ => {
            tracing::warn!(
                %bound,
                "no route to tell clients this comet's address; set comet.addrs"
            );
            bound
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn unspecified_addresses_are_advertised_as_the_host_address() {
        let specific: std::net::SocketAddr = "127.0.0.1:3101".parse().unwrap();
        assert_eq!(super::advertisable(specific), specific);
        let any: std::net::SocketAddr = "0.0.0.0:3101".parse().unwrap();
        let told = super::advertisable(any);
        assert_eq!(told.port(), 3101);
        // A host without any route keeps 0.0.0.0 (and says so in the log); one with a route
        // advertises the address that route leaves from.
        let routed = std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.connect("192.0.2.1:9").and_then(|()| s.local_addr()))
            .ok();
        match routed {
            Some(local) => assert_eq!(told.ip(), local.ip()),
            None => assert_eq!(told, any),
        }
    }

    #[test]
    fn comet_io_picks_the_engine_and_io_uring_alone_refuses_to_start_without_it() {
        use super::{choose_engine, CometError, Engine, IoEngine};
        let refused = || Err("cannot create an io_uring: Operation not permitted".to_string());
        assert_eq!(
            choose_engine(IoEngine::Auto, Ok(())).unwrap(),
            Engine::IoUring
        );
        assert_eq!(
            choose_engine(IoEngine::Auto, refused()).unwrap(),
            Engine::Epoll
        );
        assert_eq!(
            choose_engine(IoEngine::Epoll, Ok(())).unwrap(),
            Engine::Epoll
        );
        assert_eq!(
            choose_engine(IoEngine::Epoll, refused()).unwrap(),
            Engine::Epoll
        );
        assert_eq!(
            choose_engine(IoEngine::IoUring, Ok(())).unwrap(),
            Engine::IoUring
        );
        let error = choose_engine(IoEngine::IoUring, refused()).unwrap_err();
        assert!(matches!(error, CometError::IoUringRefused(_)));
        let said = error.to_string();
        assert!(
            said.contains("comet.io")
                && said.contains("io_uring")
                && said.contains("not permitted"),
            "{said}"
        );
    }

    #[test]
    fn handle_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::CometHandle>();
        assert_send_sync::<super::Stats>();
    }
}
