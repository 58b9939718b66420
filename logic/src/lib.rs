//! imgate logic: goim's business HTTP API, sessions, online counts and node lists.
//!
//! [`start`] binds the HTTP listener and the cluster-link listener comets talk to, and spawns
//! their tasks on the current tokio runtime. Pushes leave through the bus to job; sessions and
//! online counts live in the store.

mod auth;
mod control;
mod counted_store;
mod demo;
mod events;
/// Fuzz harness bodies shared by `fuzz/` and the corpus replay tests (feature `fuzzing`).
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod hooks;
mod http;
mod http_server;
mod link_server;
mod nodes;
mod online;
pub mod ops;
mod query;
mod stats;
mod tls_listener;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use imgate_bus::BusProducer;
use imgate_shared::config::Config;
use imgate_store::Stores;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::{mint_hs256, AuthError, Authenticator, GoimJsonAuth, Identity, JwtAuth};
pub use events::{consume as consume_events, EventsConsumer};
pub use stats::LogicStats;

/// How long [`LogicHandle::shutdown`] waits for in-flight work before abandoning it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Why logic could not start.
#[derive(Debug, thiserror::Error)]
pub enum LogicError {
    #[error("cannot bind the {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("auth configuration: {0}")]
    Auth(String),
    #[error("{0}")]
    Hook(String),
    #[error("HTTPS: {0}")]
    Tls(#[from] imgate_shared::tls::TlsError),
}

/// A running logic: its bound addresses and the way to stop it.
pub struct LogicHandle {
    counters: Arc<stats::Counters>,
    ops: Arc<ops::Ops>,
    http_addr: SocketAddr,
    link_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The task delivering events, and its drain deadline (`logic.events_drain_timeout`): it
    /// may outlast [`SHUTDOWN_GRACE`].
    events_task: Option<(JoinHandle<()>, Duration)>,
}

impl LogicHandle {
    /// Where the HTTP API listens (port 0 resolved).
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where comets connect their cluster links (port 0 resolved).
    pub fn link_addr(&self) -> SocketAddr {
        self.link_addr
    }

    /// Counters since start.
    pub fn stats(&self) -> LogicStats {
        self.counters.snapshot()
    }

    /// This process's metrics, readiness checks and status figures, served on the HTTP
    /// listener: the other services of the process add theirs.
    pub fn ops(&self) -> Arc<ops::Ops> {
        self.ops.clone()
    }

    /// Stops accepting, lets in-flight requests finish (bounded), delivers the queued events
    /// (within `logic.events_drain_timeout`) and ends every task.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let events = self
            .events_task
            .map(|(task, drain)| (task, drain + Duration::from_secs(1)));
        for (mut task, grace) in self
            .tasks
            .into_iter()
            .map(|t| (t, SHUTDOWN_GRACE))
            .chain(events)
        {
            if tokio::time::timeout(grace, &mut task).await.is_err() {
                task.abort();
            }
        }
    }
}

/// Connections the kernel queues for a listener before logic accepts them (capped by
/// `net.core.somaxconn`). tokio's default of 128 overflowed in a burst of connections (each
/// dropped SYN costs its client a second), so a request behind a flood waited.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr`, with a backlog of [`LISTEN_BACKLOG`].
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Starts logic with goim's JSON auth: binds `logic.http_bind` and `logic.link_bind` and spawns
/// its tasks on the current tokio runtime.
pub async fn start(
    config: &Config,
    stores: Stores,
    bus: Arc<dyn BusProducer>,
) -> Result<LogicHandle, LogicError> {
    start_with_events_bus(config, stores, bus, None).await
}

/// [`start`], publishing the events for `logic.events_url` to `events_bus` (cluster mode: the
/// events topic, [`imgate_shared::config::BusConfig::events`]) instead of POSTing them itself.
/// A link request that produced an event is answered only once the bus has it.
pub async fn start_with_events_bus(
    config: &Config,
    stores: Stores,
    bus: Arc<dyn BusProducer>,
    events_bus: Option<Arc<dyn BusProducer>>,
) -> Result<LogicHandle, LogicError> {
    let auth: Arc<dyn Authenticator> =
        match (&config.auth.jwt_secret, &config.auth.jwt_public_key_file) {
            (Some(secret), _) => {
                Arc::new(JwtAuth::hs256(secret.as_bytes()).with_leeway(config.auth.leeway))
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    LogicError::Auth(format!("cannot read {}: {e}", path.display()))
                })?;
                Arc::new(
                    JwtAuth::public_key_pem(&pem)
                        .map_err(|e| LogicError::Auth(e.to_string()))?
                        .with_leeway(config.auth.leeway),
                )
            }
            (None, None) => Arc::new(GoimJsonAuth),
        };
    start_inner(config, stores, bus, auth, events_bus).await
}

/// [`start`] with another [`Authenticator`].
pub async fn start_with_auth(
    config: &Config,
    stores: Stores,
    bus: Arc<dyn BusProducer>,
    auth: Arc<dyn Authenticator>,
) -> Result<LogicHandle, LogicError> {
    start_inner(config, stores, bus, auth, None).await
}

async fn start_inner(
    config: &Config,
    stores: Stores,
    bus: Arc<dyn BusProducer>,
    auth: Arc<dyn Authenticator>,
    events_bus: Option<Arc<dyn BusProducer>>,
) -> Result<LogicHandle, LogicError> {
    let logic = &config.logic;
    // Read the certificate before anything starts, so a bad one fails cleanly.
    let tls = match logic.tls_files() {
        None => None,
        Some((cert, key)) => Some(imgate_shared::tls::server_config(
            cert,
            key,
            &[b"http/1.1"],
        )?),
    };
    let bind = |what: &'static str, addr: SocketAddr| {
        listen(addr)
            .and_then(|l| l.local_addr().map(|a| (l, a)))
            .map_err(|source| LogicError::Bind { what, addr, source })
    };
    let (http_listener, http_addr) = bind("HTTP", logic.http_bind)?;
    let (link_listener, link_addr) = bind("cluster-link", logic.link_bind)?;

    let (shutdown, shutdown_rx) = watch::channel(false);
    let counters = Arc::new(stats::Counters::default());
    let store_counters = Arc::new(counted_store::StoreCounters::default());
    let stores = counted_store::wrap(stores, &store_counters);
    let rooms = online::RoomCounts::default();
    rooms.refresh(stores.registry.as_ref()).await;

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(rooms.clone().run(
        stores.registry.clone(),
        logic.online_refresh,
        shutdown_rx.clone(),
    )));

    let endpoint = |what: &str, url: &Option<String>| {
        url.as_deref()
            .map(|url| hooks::Endpoint::parse(what, url).map_err(LogicError::Hook))
            .transpose()
    };
    let upstream = endpoint("logic.upstream_url", &logic.upstream_url)?.map(|endpoint| {
        link_server::UpstreamHook {
            endpoint,
            timeout: logic.upstream_timeout,
            max_body: logic.upstream_max_body,
            permits: Arc::new(tokio::sync::Semaphore::new(
                logic.upstream_concurrency.max(1),
            )),
        }
    });
    let connect_hook = endpoint("auth.connect_url", &config.auth.connect_url)?.map(|endpoint| {
        link_server::ConnectHook {
            endpoint,
            timeout: config.auth.connect_timeout,
            permits: Arc::new(tokio::sync::Semaphore::new(config.auth.connect_concurrency)),
        }
    });
    let drops = Arc::new(events::Drops::default());
    let mut events_task = None;
    let events = match endpoint("logic.events_url", &logic.events_url)? {
        Some(_) if events_bus.is_some() => events_bus.map(|bus| {
            events::EventSink::Bus(events::BusEvents {
                bus,
                counters: counters.clone(),
                drops: drops.clone(),
            })
        }),
        Some(endpoint) => {
            let (events, task) = events::start(
                endpoint,
                events::QueueLimits {
                    events: logic.events_queue,
                    bytes: logic.events_queue_bytes,
                },
                events::Batching {
                    batch: logic.events_batch,
                    interval: logic.events_interval,
                    drain: logic.events_drain_timeout,
                },
                counters.clone(),
                drops.clone(),
                shutdown_rx.clone(),
            );
            events_task = Some((task, logic.events_drain_timeout));
            Some(events::EventSink::Queue(events))
        }
        None => None,
    };
    let handler = Arc::new(link_server::LinkHandler {
        stores: stores.clone(),
        auth,
        rooms: rooms.clone(),
        heartbeat: logic.heartbeat * logic.heartbeat_max,
        counters: counters.clone(),
        inbox_limit: config.store.inbox_max_messages.max(1),
        protect_keys: config.auth.clients_verified(),
        bus: bus.clone(),
        upstream,
        connect_hook,
        tokens: config.auth.tokens_required(),
        user_limit: config.comet.max_conns_per_user,
        kick_oldest: config.comet.kick_oldest,
        leeway: config.auth.leeway,
        events,
        partial_reports: Default::default(),
    });
    tasks.push(tokio::spawn(link_server::serve(
        link_listener,
        handler,
        shutdown_rx.clone(),
    )));

    let registry = stores.registry.clone();
    let push_counters = Arc::new(ops::PushCounters::default());
    let ops = ops::Ops::new(config.auth.api_key.clone());
    ops.add_collector(Arc::new(ops::LogicCollector {
        bus: bus.clone(),
        pushes: push_counters.clone(),
        store: store_counters,
        rooms: rooms.clone(),
        counters: counters.clone(),
        event_drops: drops,
    }));
    ops::add_logic_checks(&ops, &bus, &registry, &rooms, &push_counters);
    let api = Arc::new(http::Api {
        config: logic.clone(),
        stores,
        bus,
        rooms,
        api_key: config.auth.api_key.clone(),
    });
    let mut app = http::router(api)
        .merge(ops::router(ops.clone(), true, true))
        .layer(axum::middleware::from_fn_with_state(
            push_counters,
            ops::count_pushes,
        ));
    if logic.demo {
        app = app.merge(demo::router(registry));
        tracing::info!("demo app at {}", demo::url(http_addr, tls.is_some()));
    }
    let header_timeout = logic.http_header_timeout;
    let served = if let Some(tls) = tls {
        let listener = tls_listener::TlsListener::new(http_listener, tls).map_err(|source| {
            LogicError::Bind {
                what: "HTTPS",
                addr: logic.http_bind,
                source,
            }
        })?;
        tokio::spawn(http_server::serve(
            listener,
            app,
            header_timeout,
            shutdown_rx,
        ))
    } else {
        tokio::spawn(http_server::serve(
            http_listener,
            app,
            header_timeout,
            shutdown_rx,
        ))
    };
    tasks.push(served);

    tracing::info!(%http_addr, %link_addr, "logic started");
    Ok(LogicHandle {
        counters,
        ops,
        http_addr,
        link_addr,
        shutdown,
        tasks,
        events_task,
    })
}
