//! What operators ask a process: `/metrics` (Prometheus), `/healthz` and `/readyz` (load
//! balancers, systemd), and on logic `/status` (a page) with `/status.json` (its figures).
//!
//! One [`Ops`] per process gathers what the services in it contribute: their metric
//! collectors (a [`Hub`]), their readiness checks and their parts of the status figures.
//! Logic serves it on its HTTP listener; a comet or job process can serve it on its own
//! `metrics_bind` ([`serve`]).

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::Engine;
use imgate_shared::counters::Counter;
use imgate_shared::metrics::{counter_family, gauge_family, Collector, Encoder, Hub};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::task::JoinHandle;

use crate::counted_store::{StoreCounters, OPS};
use crate::online::RoomCounts;

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A readiness check: `Ok` when that part can serve, else why not.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// A part of `/status.json`, computed when asked.
pub type StatusPart = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Value> + Send>> + Send + Sync>;

/// A process's metrics, readiness checks and status figures.
pub struct Ops {
    hub: Hub,
    checks: Mutex<Vec<(&'static str, Check)>>,
    parts: Mutex<Vec<(&'static str, StatusPart)>>,
    /// When set, `/metrics` and `/status*` need it (bearer, or basic auth's password).
    api_key: Option<String>,
}

impl Ops {
    /// An empty set (with the process collector), guarded by `api_key` when given.
    pub fn new(api_key: Option<String>) -> Arc<Ops> {
        let ops = Arc::new(Ops {
            hub: Hub::new(),
            checks: Mutex::default(),
            parts: Mutex::default(),
            api_key,
        });
        ops.add_status(
            "process",
            Arc::new(|| {
                Box::pin(async {
                    let p = imgate_shared::metrics::ProcessStats::read();
                    json!({
                        "cpu_seconds": p.cpu_seconds,
                        "resident_bytes": p.resident_bytes,
                        "open_fds": p.open_fds,
                        "max_fds": p.max_fds,
                        "threads": p.threads,
                    })
                })
            }),
        );
        ops
    }

    /// Adds a collector read at every scrape.
    pub fn add_collector(&self, collector: Arc<dyn Collector>) {
        self.hub.add(collector);
    }

    /// Adds a readiness check named `name`.
    pub fn add_check(&self, name: &'static str, check: Check) {
        lock(&self.checks).push((name, check));
    }

    /// Adds `/status.json`'s field `name`.
    pub fn add_status(&self, name: &'static str, part: StatusPart) {
        lock(&self.parts).push((name, part));
    }

    /// The metrics in the OpenMetrics text format.
    pub fn render_metrics(&self) -> String {
        self.hub.render()
    }

    /// Runs every check (concurrently, each bounded): `(name, Ok or why not)`.
    pub async fn readiness(&self) -> Vec<(&'static str, Result<(), String>)> {
        let checks: Vec<_> = lock(&self.checks).clone();
        let runs = checks.into_iter().map(|(name, check)| async move {
            let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(r) => r,
                Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
            };
            (name, result)
        });
        futures_util::future::join_all(runs).await
    }

    /// Every status part.
    pub async fn status(&self) -> Value {
        let parts: Vec<_> = lock(&self.parts).clone();
        let mut out = serde_json::Map::new();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        out.insert("time_ms".into(), json!(now_ms));
        for (name, part) in parts {
            out.insert(name.into(), part().await);
        }
        Value::Object(out)
    }

    fn authorized(&self, headers: &axum::http::HeaderMap) -> bool {
        let Some(expected) = self.api_key.as_deref() else {
            return true;
        };
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let given = if let Some(token) = value.strip_prefix("Bearer ") {
            token.as_bytes().to_vec()
        } else if let Some(basic) = value.strip_prefix("Basic ") {
            // A browser's login prompt: any user name, the key as the password.
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(basic.trim())
                .unwrap_or_default();
            match decoded.iter().position(|&b| b == b':') {
                Some(i) => decoded[i + 1..].to_vec(),
                None => return false,
            }
        } else {
            return false;
        };
        bool::from(given.ct_eq(expected.as_bytes()))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The ops routes. `guarded`: whether `/metrics` needs the API key (a separate metrics bind
/// on loopback may leave it open). `/status` is only on logic's listener (`with_status`).
pub(crate) fn router(ops: Arc<Ops>, guarded: bool, with_status: bool) -> Router {
    let mut private = Router::new().route("/metrics", get(metrics));
    if with_status {
        private = private
            .route("/status", get(status_page))
            .route("/status.json", get(status_json))
            .route("/status.js", get(status_script));
    }
    if guarded {
        private = private.route_layer(middleware::from_fn_with_state(ops.clone(), require_key));
    }
    Router::new()
        .merge(private)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(ops)
}

async fn require_key(State(ops): State<Arc<Ops>>, request: Request, next: Next) -> Response {
    if ops.authorized(request.headers()) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [
            (header::WWW_AUTHENTICATE, "Basic realm=\"imgate\""),
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        ],
        "this needs the API key: \"Authorization: Bearer <api key>\" (or any user name and the \
         key as password)\n",
    )
        .into_response()
}

async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    let text = ops.render_metrics();
    (
        [(header::CONTENT_TYPE, imgate_shared::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    let results = ops.readiness().await;
    let ready = results.iter().all(|(_, r)| r.is_ok());
    let mut body = String::new();
    for (name, result) in &results {
        match result {
            Ok(()) => body += &format!("{name}: ok\n"),
            Err(why) => body += &format!("{name}: {why}\n"),
        }
    }
    body += if ready { "ready\n" } else { "not ready\n" };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn status_page() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("../status/status.html"),
    )
        .into_response()
}

async fn status_script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../status/status.js"),
    )
        .into_response()
}

async fn status_json(State(ops): State<Arc<Ops>>) -> Response {
    let mut status = ops.status().await;
    let ready = ops.readiness().await;
    status["ready"] = json!(ready
        .iter()
        .map(|(name, r)| json!({ "check": name, "ok": r.is_ok(), "error": r.as_ref().err() }))
        .collect::<Vec<_>>());
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_vec(&status).unwrap_or_default(),
    )
        .into_response()
}

/// Serves the ops routes on `addr` (a comet or job process's `metrics_bind`): `/metrics` needs
/// the API key unless the address is a loopback one.
pub async fn serve(
    addr: SocketAddr,
    ops: Arc<Ops>,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let guarded = !addr.ip().is_loopback();
    let app = router(ops, guarded, false);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(%bound, "metrics listener ended: {e}");
        }
    });
    Ok((bound, task))
}

/// Push kinds, by route.
const KINDS: [&str; 4] = ["keys", "mids", "room", "all"];
/// Why a push failed, by answer.
const REASONS: [&str; 6] = [
    "bad_request",
    "unauthorized",
    "too_large",
    "bus",
    "store",
    "other",
];

/// logic's own counters for the metrics: pushes by kind and outcome.
#[derive(Debug, Default)]
pub(crate) struct PushCounters {
    accepted: [Counter; KINDS.len()],
    failed: [[Counter; REASONS.len()]; KINDS.len()],
}

impl PushCounters {
    /// `(kind, accepted, failed)`.
    pub fn totals(&self) -> Vec<(&'static str, u64, u64)> {
        KINDS
            .iter()
            .enumerate()
            .map(|(i, &k)| {
                let failed = self.failed[i].iter().map(Counter::get).sum();
                (k, self.accepted[i].get(), failed)
            })
            .collect()
    }
}

/// Counts every push request by its answer (a layer on logic's router, so the handlers stay
/// as they are).
pub(crate) async fn count_pushes(
    State(counters): State<Arc<PushCounters>>,
    request: Request,
    next: Next,
) -> Response {
    let kind = request
        .uri()
        .path()
        .strip_prefix("/goim/push/")
        .and_then(|k| KINDS.iter().position(|&known| known == k));
    let response = next.run(request).await;
    if let Some(kind) = kind {
        let status = response.status();
        if status.is_success() {
            counters.accepted[kind].inc();
        } else {
            let reason = match status {
                StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => 0,
                StatusCode::UNAUTHORIZED => 1,
                StatusCode::PAYLOAD_TOO_LARGE => 2,
                StatusCode::SERVICE_UNAVAILABLE => 3,
                StatusCode::INTERNAL_SERVER_ERROR => 4,
                _ => 5,
            };
            counters.failed[kind][reason].inc();
        }
    }
    response
}

/// logic's metrics.
pub(crate) struct LogicCollector {
    pub bus: Arc<dyn imgate_bus::BusProducer>,
    pub pushes: Arc<PushCounters>,
    pub store: Arc<StoreCounters>,
    pub rooms: RoomCounts,
    pub counters: Arc<crate::stats::Counters>,
    /// Events for the business dropped, by reason.
    pub event_drops: Arc<crate::events::Drops>,
}

impl std::fmt::Debug for LogicCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogicCollector")
    }
}

impl Collector for LogicCollector {
    fn encode(&self, mut e: Encoder) -> std::fmt::Result {
        let kind = |k: &'static str| vec![("kind", Cow::Borrowed(k))];
        counter_family(
            &mut e,
            "imgate_pushes",
            "Pushes logic accepted (answered 2xx), by kind.",
            KINDS
                .iter()
                .enumerate()
                .map(|(i, &k)| (kind(k), self.pushes.accepted[i].get())),
        )?;
        let mut errors = Vec::new();
        for (i, &k) in KINDS.iter().enumerate() {
            for (j, &r) in REASONS.iter().enumerate() {
                let mut labels = kind(k);
                labels.push(("reason", Cow::Borrowed(r)));
                errors.push((labels, self.pushes.failed[i][j].get()));
            }
        }
        counter_family(
            &mut e,
            "imgate_push_errors",
            "Pushes logic refused, by kind and reason (bus: full or unreachable, 503; store: \
             500).",
            errors,
        )?;
        gauge_family(
            &mut e,
            "imgate_rooms",
            "Rooms with members, cluster-wide (logic's cache of the online reports).",
            [(Vec::new(), self.rooms.snapshot().len() as u64)],
        )?;
        counter_family(
            &mut e,
            "imgate_store_errors",
            "Store calls by logic that failed, by operation.",
            OPS.iter()
                .enumerate()
                .map(|(i, &op)| (vec![("op", Cow::Borrowed(op))], self.store.errors[i].get())),
        )?;
        if let Some(backlog) = self.bus.backlog() {
            gauge_family(
                &mut e,
                "imgate_bus_lag_messages",
                "Pushes on the embedded bus that job has not taken yet.",
                [(Vec::new(), backlog)],
            )?;
        }
        counter_family(
            &mut e,
            "imgate_inbox_stored",
            "Messages stored in users' inboxes.",
            [(Vec::new(), self.store.inbox_stored.get())],
        )?;
        counter_family(
            &mut e,
            "imgate_inbox_resent",
            "Stored messages read back (inboxes and room histories) to send to clients.",
            [(Vec::new(), self.store.inbox_resent.get())],
        )?;
        counter_family(
            &mut e,
            "imgate_events_dropped",
            "Events for logic.events_url dropped, by reason (queue_full: the queue's bound; \
             rejected: the endpoint answered 4xx; shutdown: undelivered at a stop's drain \
             deadline; bus: the bus did not take it, cluster mode).",
            self.event_drops
                .snapshot()
                .map(|(r, n)| (vec![("reason", Cow::Borrowed(r.label()))], n)),
        )?;
        imgate_shared::metrics::snapshot_samples(
            &mut e,
            "imgate_logic",
            &[],
            self.counters.snapshot().samples(),
        )
    }
}

/// The readiness check "store": the store answers a registry read. logic adds it, and so does a
/// job-only process, which has no logic to check the store for it.
pub fn store_check(registry: Arc<dyn imgate_store::RegistryStore>) -> Check {
    Arc::new(move || {
        let registry = registry.clone();
        Box::pin(async move {
            registry
                .comets()
                .await
                .map(|_| ())
                .map_err(|e| format!("unreachable: {e}"))
        })
    })
}

/// logic's readiness checks (the bus takes pushes: a broker answers; the store answers;
/// comets are linked, i.e. report to the registry) and its part of the status figures.
pub(crate) fn add_logic_checks(
    ops: &Arc<Ops>,
    bus: &Arc<dyn imgate_bus::BusProducer>,
    registry: &Arc<dyn imgate_store::RegistryStore>,
    rooms: &RoomCounts,
    pushes: &Arc<PushCounters>,
) {
    let b = bus.clone();
    ops.add_check(
        "bus",
        Arc::new(move || {
            let b = b.clone();
            Box::pin(async move { b.ready().await })
        }),
    );
    ops.add_check("store", store_check(registry.clone()));
    let r = registry.clone();
    ops.add_check(
        "comets",
        Arc::new(move || {
            let r = r.clone();
            Box::pin(async move {
                match r.comets().await {
                    Ok(c) if !c.is_empty() => Ok(()),
                    Ok(_) => Err("no comet has reported to the registry".into()),
                    Err(e) => Err(format!("cannot read the registry: {e}")),
                }
            })
        }),
    );
    let (r, rooms, pushes) = (registry.clone(), rooms.clone(), pushes.clone());
    ops.add_status(
        "logic",
        Arc::new(move || {
            let (r, rooms, pushes) = (r.clone(), rooms.clone(), pushes.clone());
            Box::pin(async move {
                let comets: Vec<Value> = match r.comets().await {
                    Ok(comets) => comets
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.info.id,
                                "connections": c.conn_count,
                                "addresses": c.ip_count,
                                "lag_us": c.lag_us,
                                "updated_ms": c.updated_ms,
                                "tcp": c.info.tcp_addrs,
                                "ws": c.info.ws_addrs,
                            })
                        })
                        .collect(),
                    Err(_) => Vec::new(),
                };
                let counts = rooms.snapshot();
                let mut top: Vec<(&std::sync::Arc<str>, &u64)> = counts.iter().collect();
                top.sort_by(|a, b| b.1.cmp(a.1).then_with(|| a.0.cmp(b.0)));
                top.truncate(10);
                let pushes: serde_json::Map<String, Value> = pushes
                    .totals()
                    .into_iter()
                    .map(|(k, ok, failed)| (k.into(), json!({ "accepted": ok, "failed": failed })))
                    .collect();
                json!({
                    "comets": comets,
                    "rooms": counts.len(),
                    "busiest_rooms": top
                        .into_iter()
                        .map(|(room, n)| json!({ "room": &**room, "online": n }))
                        .collect::<Vec<_>>(),
                    "pushes": pushes,
                })
            })
        }),
    );
}
