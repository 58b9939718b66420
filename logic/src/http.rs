//! goim's business HTTP API (docs/goim-compatibility.md, "HTTP API"), with stricter validation: every bad request
//! is a 400 that says which parameter was wrong, a full bus is a 503, a store failure a 500.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use imgate_bus::{BroadcastPush, BusError, BusMessage, BusProducer, KeysPush, Push, RoomPush};
use imgate_shared::config::LogicConfig;
use imgate_shared::link::ShardKeys;
use imgate_store::{Session, StoreError, Stores};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::control;
use crate::nodes;
use crate::online::RoomCounts;
use crate::query::{body_targets, BadRequest, MidsQuery, Query};

/// Longest a request may take, body upload included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Most rooms in one `/goim/online/room` query.
const MAX_ONLINE_ROOMS: usize = 10_000;

/// What the handlers share.
pub(crate) struct Api {
    pub config: LogicConfig,
    pub stores: Stores,
    pub bus: Arc<dyn BusProducer>,
    pub rooms: RoomCounts,
    /// When set, every route but the node lists needs `Authorization: Bearer <api_key>`.
    pub api_key: Option<String>,
}

/// The router with every goim route.
pub(crate) fn router(api: Arc<Api>) -> Router {
    // Each handler checks its own limit (a body that is the message, or one that also carries
    // the targets); this bounds what is read at all.
    let body_limit = api.config.max_push_body.max(api.config.max_push_request);
    let business = Router::new()
        .route("/goim/push/keys", post(push_keys))
        .route("/goim/push/mids", post(push_mids))
        .route("/goim/push/room", post(push_room))
        .route("/goim/push/all", post(push_all))
        .route("/goim/rooms/join", post(control::join))
        .route("/goim/rooms/leave", post(control::leave))
        .route("/goim/kick", post(control::kick))
        .route("/goim/online/top", get(online_top))
        .route("/goim/online/room", get(online_room))
        .route("/goim/online/total", get(online_total))
        .route("/goim/inbox/state", get(inbox_state))
        .route("/goim/online/mids", get(online_mids))
        // Every comet's cluster-link address and load: for operators, not for clients (the
        // link is unauthenticated, so its address is not for everyone).
        .route("/goim/nodes/instances", get(nodes_instances))
        .route_layer(middleware::from_fn_with_state(api.clone(), require_api_key));
    // The weighted node list stays public: clients ask it before they connect.
    Router::new()
        .merge(business)
        .route("/goim/nodes/weighted", get(nodes_weighted))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(timeout))
        .with_state(api)
}

/// A failed request, rendered as goim's envelope.
#[derive(Debug)]
pub(crate) enum ApiError {
    BadRequest(String),
    TooLarge(usize),
    Bus(BusError),
    Store(StoreError),
}

impl From<BadRequest> for ApiError {
    fn from(e: BadRequest) -> Self {
        ApiError::BadRequest(e.0)
    }
}

impl From<BusError> for ApiError {
    fn from(e: BusError) -> Self {
        ApiError::Bus(e)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Store(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::BadRequest(m) => envelope(StatusCode::BAD_REQUEST, -400, m, None),
            ApiError::TooLarge(max) => envelope(
                StatusCode::PAYLOAD_TOO_LARGE,
                -400,
                format!("body exceeds the limit of {max} bytes"),
                None,
            ),
            ApiError::Bus(e) => {
                tracing::warn!(error = %e, "push refused by the bus");
                envelope(StatusCode::SERVICE_UNAVAILABLE, -500, e.to_string(), None)
            }
            ApiError::Store(e) => {
                tracing::warn!(error = %e, "store failed");
                envelope(StatusCode::INTERNAL_SERVER_ERROR, -500, e.to_string(), None)
            }
        }
    }
}

/// Longest `message` an answer carries, in bytes once written as a JSON string. Reasons echo
/// what the client sent (a bad mid, a field name, a JSON value); this bounds every echo in one
/// place, so 60 KB of bad parameters cost a 400 of a few hundred bytes, not their echo.
const MAX_MESSAGE_JSON: usize = 300;

/// `message`, cut where its JSON form would pass [`MAX_MESSAGE_JSON`] bytes (what was cut is
/// said, with its length).
fn bounded_message(message: String) -> String {
    // Bytes each character takes inside a JSON string.
    let json_len = |c: char| match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    };
    if message.chars().map(json_len).sum::<usize>() <= MAX_MESSAGE_JSON {
        return message;
    }
    let tail = format!("… ({} bytes)", message.len());
    let room = MAX_MESSAGE_JSON - tail.len();
    let mut used = 0;
    let end = message
        .char_indices()
        .find(|&(_, c)| {
            used += json_len(c);
            used > room
        })
        .map_or(message.len(), |(i, _)| i);
    format!("{}{tail}", &message[..end])
}

/// `{"code", "message", "data"}` with `data` left out when there is none; the message is
/// bounded ([`MAX_MESSAGE_JSON`]).
fn envelope(
    status: StatusCode,
    code: i32,
    message: impl Into<String>,
    data: Option<Value>,
) -> Response {
    let message = bounded_message(message.into());
    let mut body = json!({ "code": code, "message": message });
    if let Some(data) = data {
        body["data"] = data;
    }
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        bytes,
    )
        .into_response()
}

fn ok(message: impl Into<String>, data: Option<Value>) -> Response {
    envelope(StatusCode::OK, 0, message, data)
}

pub(crate) type ApiResult = Result<Response, ApiError>;

async fn timeout(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => envelope(
            StatusCode::REQUEST_TIMEOUT,
            -400,
            format!("request not completed within {REQUEST_TIMEOUT:?}"),
            None,
        ),
    }
}

/// Refuses business requests without the configured API key (401 with a reason).
async fn require_api_key(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let Some(expected) = api.api_key.as_deref() else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        // subtle's comparison takes the same time wherever the keys differ (the length is not
        // secret).
        Some(key) if bool::from(key.as_bytes().ct_eq(expected.as_bytes())) => {
            next.run(request).await
        }
        Some(_) => envelope(StatusCode::UNAUTHORIZED, -400, "wrong API key", None),
        None => envelope(
            StatusCode::UNAUTHORIZED,
            -400,
            "this API needs \"Authorization: Bearer <api key>\"",
            None,
        ),
    }
}

async fn not_found() -> Response {
    envelope(StatusCode::NOT_FOUND, -400, "no such route", None)
}

async fn method_not_allowed() -> Response {
    envelope(
        StatusCode::METHOD_NOT_ALLOWED,
        -400,
        "method not allowed on this route",
        None,
    )
}

fn push_body(api: &Api, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    read_body(body, api.config.max_push_body)
}

/// The body, refused with 413 beyond `limit` bytes.
pub(crate) fn read_body(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    match body {
        Ok(body) if body.len() > limit => Err(ApiError::TooLarge(limit)),
        Ok(body) => Ok(body),
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge(limit)),
        Err(e) => Err(ApiError::BadRequest(format!(
            "cannot read the body: {}",
            e.body_text()
        ))),
    }
}

/// Where a keys or mids push names its targets (`list`) and what it pushes: goim's form,
/// targets in the query and the whole body as the message; or, when the query names none,
/// a form or JSON body carrying both (for target lists too long for a URL).
fn push_targets(
    api: &Api,
    query: Query,
    list: &str,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(Query, Bytes), ApiError> {
    if query.has(list) {
        return Ok((query, push_body(api, body)?));
    }
    let body = read_body(body, api.config.max_push_request)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let carried = body_targets(content_type, &body, list)?;
    if carried.message.len() > api.config.max_push_body {
        return Err(ApiError::TooLarge(api.config.max_push_body));
    }
    Ok((carried.targets, carried.message))
}

/// Groups sessions by comet and shard and publishes one keys push per comet; returns how many
/// connections were targeted. `stored` names the user and inbox sequence of a stored push
/// (then every session must be that user's).
async fn publish_to_sessions(
    api: &Api,
    sessions: Vec<Session>,
    op: i32,
    body: Bytes,
    stored: Option<(i64, u64)>,
) -> Result<usize, ApiError> {
    let (mid, seq) = stored.unwrap_or((0, 0));
    let mut by_comet: BTreeMap<String, BTreeMap<u32, Vec<String>>> = BTreeMap::new();
    let mut connections = 0;
    for session in sessions {
        let keys = by_comet
            .entry(session.conn.comet)
            .or_default()
            .entry(session.conn.shard)
            .or_default();
        if !keys.contains(&session.key) {
            keys.push(session.key);
            connections += 1;
        }
    }
    for (comet, shards) in by_comet {
        let targets = shards
            .into_iter()
            .map(|(shard, keys)| ShardKeys { shard, keys })
            .collect();
        api.bus
            .publish(BusMessage::new(Push::Keys(KeysPush {
                comet,
                targets,
                op,
                body: body.clone(),
                seq,
                mid,
            })))
            .await?;
    }
    Ok(connections)
}

pub(crate) fn connections_reply(connections: usize, what: &str) -> Response {
    let message = if connections == 0 {
        format!("no online connection for these {what}")
    } else {
        String::new()
    };
    ok(message, Some(json!({ "connections": connections })))
}

async fn push_keys(
    State(api): State<Arc<Api>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let query = Query::parse(raw.as_deref())?;
    let op = query.push_op()?;
    let (targets, body) = push_targets(&api, query, "keys", &headers, body)?;
    let keys = targets.keys(api.config.max_push_targets)?;
    let sessions = api.stores.sessions.sessions_by_keys(&keys).await?;
    let n = publish_to_sessions(&api, sessions, op, body, None).await?;
    Ok(connections_reply(n, "keys"))
}

async fn push_mids(
    State(api): State<Arc<Api>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let query = Query::parse(raw.as_deref())?;
    let op = query.push_op()?;
    let (targets, body) = push_targets(&api, query, "mids", &headers, body)?;
    let query = MidsQuery {
        op,
        mids: targets.mids(api.config.max_push_targets)?,
    };
    // Store first, then look up sessions: a client connecting meanwhile either finds the
    // message in its backlog or is found here (comet drops a second copy by its sequence).
    let mut seqs = BTreeMap::new();
    for &mid in &query.mids {
        if mid > 0 {
            seqs.insert(
                mid,
                api.stores
                    .messages
                    .inbox_append(mid, query.op, body.clone())
                    .await?,
            );
        }
    }
    let sessions = api.stores.sessions.sessions_by_mids(&query.mids).await?;
    let mut by_mid: BTreeMap<i64, Vec<Session>> = BTreeMap::new();
    for session in sessions {
        by_mid.entry(session.mid).or_default().push(session);
    }
    let mut connections = 0;
    let mut offline = Vec::new();
    for &mid in &query.mids {
        let sessions = by_mid.remove(&mid).unwrap_or_default();
        if sessions.is_empty() {
            offline.push(mid);
            continue;
        }
        let stored = seqs.get(&mid).map(|&seq| (mid, seq));
        connections += publish_to_sessions(&api, sessions, query.op, body.clone(), stored).await?;
    }
    let message = if connections == 0 {
        "stored; no online connection for these mids".to_string()
    } else {
        String::new()
    };
    let stored: serde_json::Map<String, Value> = seqs
        .iter()
        .map(|(mid, seq)| (mid.to_string(), json!(seq)))
        .collect();
    Ok(ok(
        message,
        Some(json!({ "connections": connections, "stored": stored, "offline": offline })),
    ))
}

/// `GET /goim/online/mids?mids=1&mids=2` (or `mids=1,2`): each user's connections online now.
async fn online_mids(State(api): State<Arc<Api>>, RawQuery(raw): RawQuery) -> ApiResult {
    let mids = Query::parse(raw.as_deref())?.online_mids(api.config.max_push_targets)?;
    // Only connections whose key's session still names them (not replaced).
    let conns = api.stores.sessions.user_conns(&mids).await?;
    let mut out = serde_json::Map::new();
    for (mid, conns) in mids.iter().zip(conns) {
        let list: Vec<Value> = conns
            .iter()
            .map(|c| {
                json!({
                    "key": c.key,
                    "platform": c.platform,
                    // Every room it is in, as its comet reported them.
                    "rooms": c.rooms,
                    "comet": c.conn.comet,
                    "shard": c.conn.shard,
                    "connected_at": c.connected_ms,
                })
            })
            .collect();
        out.insert(mid.to_string(), Value::Array(list));
    }
    Ok(ok("", Some(Value::Object(out))))
}

/// `GET /goim/inbox/state?mids=…`: where each user's inbox stands.
async fn inbox_state(State(api): State<Arc<Api>>, RawQuery(raw): RawQuery) -> ApiResult {
    let mids = Query::parse(raw.as_deref())?.inbox_mids(api.config.max_push_targets)?;
    let mut out = serde_json::Map::new();
    for mid in mids {
        let state = api.stores.messages.inbox_state(mid).await?;
        out.insert(mid.to_string(), json!(state));
    }
    Ok(ok("", Some(Value::Object(out))))
}

async fn push_room(
    State(api): State<Arc<Api>>,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let query = Query::parse(raw.as_deref())?.push_room()?;
    let body = push_body(&api, body)?;
    let seq = if query.history {
        api.stores
            .messages
            .room_history_append(&query.room, query.op, body.clone())
            .await?
    } else {
        0
    };
    api.bus
        .publish(BusMessage::new(Push::Room(RoomPush {
            room: query.room.clone(),
            op: query.op,
            body,
            seq,
        })))
        .await?;
    let data = if query.history {
        json!({ "room": query.room, "seq": seq })
    } else {
        json!({ "room": query.room })
    };
    Ok(ok("", Some(data)))
}

async fn push_all(
    State(api): State<Arc<Api>>,
    RawQuery(raw): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let query = Query::parse(raw.as_deref())?.push_all()?;
    let body = push_body(&api, body)?;
    api.bus
        .publish(BusMessage::new(Push::All(BroadcastPush {
            op: query.op,
            body,
            speed: query.speed,
        })))
        .await?;
    Ok(ok("", None))
}

async fn online_top(State(api): State<Arc<Api>>, RawQuery(raw): RawQuery) -> ApiResult {
    let query = Query::parse(raw.as_deref())?.online_top()?;
    let prefix = format!("{}://", query.room_type);
    let counts = api.rooms.snapshot();
    let mut top: Vec<(&str, u64)> = counts
        .iter()
        .filter_map(|(room, &n)| room.strip_prefix(&prefix).map(|id| (id, n)))
        .collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    top.truncate(query.limit);
    let data: Vec<Value> = top
        .into_iter()
        .map(|(id, n)| json!({ "room_id": id, "count": n }))
        .collect();
    Ok(ok("", Some(Value::Array(data))))
}

async fn online_room(State(api): State<Arc<Api>>, RawQuery(raw): RawQuery) -> ApiResult {
    let query = Query::parse(raw.as_deref())?.online_rooms(MAX_ONLINE_ROOMS)?;
    let counts = api.rooms.snapshot();
    let data: serde_json::Map<String, Value> = query
        .rooms
        .into_iter()
        .map(|id| {
            let n = counts
                .get(crate::query::room_key(&query.room_type, &id).as_str())
                .copied()
                .unwrap_or(0);
            (id, json!(n))
        })
        .collect();
    Ok(ok("", Some(Value::Object(data))))
}

async fn online_total(State(api): State<Arc<Api>>) -> ApiResult {
    let comets = api.stores.registry.comets().await?;
    let ip_count: u64 = comets.iter().map(|c| c.ip_count).sum();
    let conn_count: u64 = comets.iter().map(|c| c.conn_count).sum();
    Ok(ok(
        "",
        Some(json!({ "ip_count": ip_count, "conn_count": conn_count })),
    ))
}

async fn nodes_weighted(State(api): State<Arc<Api>>, RawQuery(raw): RawQuery) -> ApiResult {
    let query = Query::parse(raw.as_deref())?;
    let comets = api.stores.registry.comets().await?;
    let config = &api.config;
    let nodes = nodes::nodes(&comets, query.platform(), config);
    Ok(ok(
        "",
        Some(json!({
            "domain": config.default_domain,
            "tcp_port": nodes.tcp_port,
            "ws_port": nodes.ws_port,
            "wss_port": nodes.wss_port,
            "heartbeat": config.heartbeat.as_secs(),
            "heartbeat_max": config.heartbeat_max,
            "nodes": nodes.names,
            "backoff": {
                "max_delay": config.backoff.max_delay,
                "base_delay": config.backoff.base_delay,
                "factor": f32_json(config.backoff.factor),
                "jitter": f32_json(config.backoff.jitter),
            },
        })),
    ))
}

/// An `f32` as the JSON number it reads as (`1.8`, not `1.7999999523162842`).
fn f32_json(x: f32) -> Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

async fn nodes_instances(State(api): State<Arc<Api>>) -> ApiResult {
    let comets = api.stores.registry.comets().await?;
    let data: Vec<Value> = comets
        .iter()
        .map(|c| {
            json!({
                "hostname": c.info.id,
                "addrs": [c.info.link_addr],
                "metadata": {
                    "weight": c.info.weight.to_string(),
                    "conn_count": c.conn_count.to_string(),
                    "ip_count": c.ip_count.to_string(),
                    "offline": "false",
                    "addrs": c.info.tcp_addrs.join(","),
                },
                "latest_timestamp": c.updated_ms.saturating_mul(1_000_000),
            })
        })
        .collect();
    Ok(ok("", Some(Value::Array(data))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_in_json_bytes_and_cut_between_characters() {
        assert_eq!(bounded_message("short".into()), "short");
        for unit in ["x", "é", "\u{1}", "\"", "😀"] {
            let long = unit.repeat(10_000);
            let cut = bounded_message(long.clone());
            let json = serde_json::to_string(&cut).unwrap();
            assert!(
                json.len() <= MAX_MESSAGE_JSON + 2,
                "{unit:?}: {}",
                json.len()
            );
            assert!(cut.ends_with(&format!("… ({} bytes)", long.len())), "{cut}");
            assert!(cut.starts_with(unit));
        }
    }
}
