//! The business's control over live connections: `POST /goim/rooms/join`, `/goim/rooms/leave`
//! and `/goim/kick`. Each names its connections like the keys and mids pushes (`keys=` or
//! `mids=`, in the query or in a form or JSON body) and goes, like them, through the bus and
//! job to the comets holding those connections (one `Control` per comet, its connections by
//! shard and id), which tell each client with a frame (op 25, op 27, or op 6 before the close).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use imgate_bus::{BusMessage, Push};
use imgate_shared::link::{ConnControl, ControlAction, ShardConns};
use imgate_store::Session;

use crate::http::{connections_reply, read_body, Api, ApiResult};
use crate::query::{control_params, Query, Targets};

/// `POST /goim/rooms/join?type=T&room=R&keys=…|mids=…`: makes those connections members of
/// room `T://R`, within `comet.max_rooms_per_conn`; each is told with an op-25 frame.
pub(crate) async fn join(
    state: State<Arc<Api>>,
    raw: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    control(state, raw, headers, body, ControlAction::Join).await
}

/// `POST /goim/rooms/leave?type=T&room=R&keys=…|mids=…`: takes them out of room `T://R`; each
/// that was in it is told with an op-27 frame.
pub(crate) async fn leave(
    state: State<Arc<Api>>,
    raw: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    control(state, raw, headers, body, ControlAction::Leave).await
}

/// `POST /goim/kick?keys=…|mids=…&reason=TEXT`: each connection gets op 6 with the reason
/// (on WebSocket then a close frame 1008) and is closed.
pub(crate) async fn kick(
    state: State<Arc<Api>>,
    raw: RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    control(state, raw, headers, body, ControlAction::Kick).await
}

async fn control(
    State(api): State<Arc<Api>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
    action: ControlAction,
) -> ApiResult {
    let query = Query::parse(raw.as_deref())?;
    let body = read_body(body, api.config.max_push_request)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let params = control_params(query, content_type, &body)?;
    let targets = params.targets(api.config.max_push_targets)?;
    let (room, reason) = match action {
        ControlAction::Kick => (String::new(), params.kick_reason()?),
        _ => (params.control_room()?, String::new()),
    };
    let sessions = match &targets {
        Targets::Keys(keys) => api.stores.sessions.sessions_by_keys(keys).await?,
        Targets::Mids(mids) => api.stores.sessions.sessions_by_mids(mids).await?,
    };
    let (controls, connections) = by_comet(sessions, action, &room, &reason);
    for control in controls {
        api.bus
            .publish(BusMessage::new(Push::Control(control)))
            .await?;
    }
    Ok(connections_reply(connections, targets.noun()))
}

/// One `Control` per comet holding some of `sessions`, their connections grouped by shard,
/// each connection once; and how many connections that is.
fn by_comet(
    sessions: Vec<Session>,
    action: ControlAction,
    room: &str,
    reason: &str,
) -> (Vec<ConnControl>, usize) {
    let mut grouped: BTreeMap<String, BTreeMap<u32, Vec<u64>>> = BTreeMap::new();
    let mut connections = 0;
    for session in sessions {
        let ids = grouped
            .entry(session.conn.comet)
            .or_default()
            .entry(session.conn.shard)
            .or_default();
        if !ids.contains(&session.conn.conn_id) {
            ids.push(session.conn.conn_id);
            connections += 1;
        }
    }
    let controls = grouped
        .into_iter()
        .map(|(comet, shards)| ConnControl {
            comet,
            targets: shards
                .into_iter()
                .map(|(shard, conn_ids)| ShardConns { shard, conn_ids })
                .collect(),
            action: action as i32,
            room: room.to_string(),
            reason: reason.to_string(),
        })
        .collect();
    (controls, connections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use imgate_shared::link::ConnRef;

    fn session(mid: i64, comet: &str, shard: u32, conn_id: u64) -> Session {
        Session {
            mid,
            key: format!("k{conn_id}"),
            conn: ConnRef {
                comet: comet.into(),
                shard,
                conn_id,
            },
        }
    }

    #[test]
    fn one_control_per_comet_with_its_connections_by_shard_each_once() {
        let sessions = vec![
            session(1, "b", 0, 5),
            session(1, "a", 1, 2),
            session(2, "a", 1, 3),
            session(2, "a", 0, 4),
            session(2, "a", 0, 4),
        ];
        let (controls, n) = by_comet(sessions, ControlAction::Join, "live://1", "");
        assert_eq!(n, 4);
        assert_eq!(controls.len(), 2);
        assert_eq!(controls[0].comet, "a");
        assert_eq!(
            controls[0].targets,
            vec![
                ShardConns {
                    shard: 0,
                    conn_ids: vec![4]
                },
                ShardConns {
                    shard: 1,
                    conn_ids: vec![2, 3]
                },
            ]
        );
        assert_eq!(controls[0].action, ControlAction::Join as i32);
        assert_eq!(controls[0].room, "live://1");
        assert_eq!(controls[1].comet, "b");
    }
}
