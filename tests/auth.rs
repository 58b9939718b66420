//! Signed-token auth and the API key, end to end: a gateway with `auth.jwt_secret` and
//! `auth.api_key`, real clients, real HTTP, and the binary's secure-by-default start.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use imgate::client::{Client, Transport};
use support::*;

const SECRET: &str = "test-secret";
const API_KEY: &str = "test-api-key";
const IMGATE: &str = env!("CARGO_BIN_EXE_imgate");

fn secure_gateway() -> imgate::standalone::Gateway {
    let mut config = test_config();
    config.auth.jwt_secret = Some(SECRET.into());
    config.auth.api_key = Some(API_KEY.into());
    imgate::standalone::Gateway::start(config).expect("secure gateway starts")
}

fn token(mid: i64, rooms: Option<Vec<String>>) -> String {
    imgate_logic::mint_hs256(SECRET.as_bytes(), mid, rooms, Duration::from_secs(60)).unwrap()
}

fn auth_with(token: &str, mid_claimed: i64, key: &str, room: &str) -> String {
    serde_json::json!({"mid": mid_claimed, "token": token, "key": key, "room_id": room, "accepts": [1000]})
        .to_string()
}

/// An authorised POST: logic's envelope, HTTP 200 expected.
fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> serde_json::Value {
    let bearer = format!("Bearer {API_KEY}");
    let answer = request(
        addr,
        "POST",
        path,
        &[("Authorization", &bearer)],
        body.as_bytes(),
    );
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    answer.json
}

#[test]
fn the_user_is_the_tokens_not_the_one_the_json_claims() {
    let g = secure_gateway();
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    // Claims mid 1 in the JSON; the token says 42.
    c.auth(&auth_with(&token(42, None), 1, "", "")).unwrap();
    let a = post(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=1",
        "for 1",
    );
    assert_eq!(a["data"]["connections"], 0, "the JSON's mid is ignored");
    let a = post(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=42",
        "for 42",
    );
    assert_eq!(a["data"]["connections"], 1);
    assert_eq!(next_push(&mut c).1, "for 42");
    g.shutdown();
}

#[test]
fn forged_expired_and_missing_tokens_are_refused_and_counted() {
    let g = secure_gateway();
    let forged =
        imgate_logic::mint_hs256(b"not-the-secret", 42, None, Duration::from_secs(60)).unwrap();
    // Expired long ago (tokens get 60 s of leeway for clock skew).
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"sub": "42", "exp": 1000}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let bodies = [
        auth_with(&forged, 42, "", ""),
        auth_with(&expired, 42, "", ""),
        serde_json::json!({"mid": 42}).to_string(),
        auth_with(
            &token(42, Some(vec!["live://1".into()])),
            42,
            "",
            "live://2",
        ),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let mut c = Client::connect(g.ws_addr(), Transport::WebSocket).unwrap();
        assert!(c.auth(body).is_err(), "body {i} was accepted");
        assert!(
            c.wait_closed(Duration::from_secs(5)),
            "body {i}: connection stays open"
        );
    }
    eventually(Duration::from_secs(5), "refusals to be counted", || {
        g.comet().stats().auth_failed >= bodies.len() as u64
    });
    g.shutdown();
}

#[test]
fn a_connection_key_cannot_be_taken_over_by_another_user() {
    let g = secure_gateway();
    let mut owner = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    owner
        .auth(&auth_with(&token(7, None), 7, "shared-key", ""))
        .unwrap();
    let mut thief = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    assert!(thief
        .auth(&auth_with(&token(8, None), 8, "shared-key", ""))
        .is_err());
    let a = post(
        g.http_addr(),
        "/goim/push/keys?operation=1000&keys=shared-key",
        "still mine",
    );
    assert_eq!(a["data"]["connections"], 1);
    assert_eq!(next_push(&mut owner).1, "still mine");
    g.shutdown();
}

#[test]
fn the_business_api_needs_the_api_key_and_the_weighted_node_list_does_not() {
    let g = secure_gateway();
    let without = http(g.http_addr(), "POST", "/goim/push/all?operation=1000", b"x");
    assert_eq!(without.status, 401, "{:?}", without.json);
    assert!(without.json["message"].as_str().unwrap().contains("Bearer"));
    for path in [
        "/goim/online/total",
        "/goim/inbox/state?mids=1",
        // Lists the comets' unauthenticated cluster-link addresses.
        "/goim/nodes/instances",
    ] {
        assert_eq!(http(g.http_addr(), "GET", path, b"").status, 401, "{path}");
    }
    assert_eq!(
        http(g.http_addr(), "GET", "/goim/nodes/weighted", b"").status,
        200
    );
    assert_eq!(
        post(g.http_addr(), "/goim/push/all?operation=1000", "x")["code"],
        0
    );
    g.shutdown();
}

#[test]
fn a_configured_deployment_refuses_to_start_insecure_and_imgate_token_mints_a_working_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("imgate.toml");
    std::fs::write(&file, "[comet]\nshards = 1\n").unwrap();
    let out = Command::new(IMGATE)
        .args(["--config", file.to_str().unwrap()])
        .env_remove("IMGATE_JWT_SECRET")
        .env_remove("IMGATE_API_KEY")
        .stdout(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs signed client tokens"));

    let out = Command::new(IMGATE)
        .args(["token", "--mid", "5", "--ttl", "60s"])
        .env("IMGATE_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let g = secure_gateway();
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    c.auth(&auth_with(&minted, 0, "", "")).unwrap();
    assert_eq!(
        post(g.http_addr(), "/goim/push/mids?operation=1000&mids=5", "hi")["data"]["connections"],
        1
    );
    g.shutdown();
}

#[test]
fn room_changes_are_limited_to_the_tokens_rooms() {
    use imgate_shared::frame::op;
    let g = secure_gateway();
    let rooms = vec!["live://1".to_string(), "live://2".to_string()];
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    c.auth(&auth_with(&token(9, Some(rooms)), 9, "", "live://1"))
        .unwrap();
    c.send(1, op::CHANGE_ROOM, 2, b"live://2").unwrap();
    assert_eq!(
        c.recv_op(op::CHANGE_ROOM_REPLY, Duration::from_secs(5))
            .unwrap()
            .body,
        b"live://2"
    );
    c.send(1, op::CHANGE_ROOM, 3, b"live://3").unwrap();
    let refused = c
        .recv_op(op::CHANGE_ROOM_REPLY, Duration::from_secs(5))
        .unwrap();
    assert_eq!(
        (refused.seq, refused.body.len()),
        (3, 0),
        "a refusal answers with an empty body"
    );
    assert_eq!(g.comet().stats().room_refused, 1);
    // Still in live://2: its push arrives, live://3's does not come first.
    post(
        g.http_addr(),
        "/goim/push/room?operation=1000&type=live&room=3",
        "not for me",
    );
    post(
        g.http_addr(),
        "/goim/push/room?operation=1000&type=live&room=2",
        "for live://2",
    );
    assert_eq!(next_push(&mut c).1, "for live://2");
    g.shutdown();
}

/// A room's history is read under the same rule as entering the room: a token limited to
/// `live://1` cannot read `live://secret`'s history with op 22, though it can read its own.
#[test]
fn room_history_is_read_only_in_the_tokens_rooms() {
    use imgate_shared::frame::op;
    let g = secure_gateway();
    for (room, body) in [("secret", "classified"), ("1", "public")] {
        post(
            g.http_addr(),
            &format!("/goim/push/room?operation=1000&type=live&room={room}&history=1"),
            body,
        );
    }
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    let rooms = Some(vec!["live://1".to_string()]);
    c.auth(&auth_with(&token(9, rooms), 9, "", "live://1"))
        .unwrap();

    c.send(1, op::SYNC, 5, b"live://secret 0").unwrap();
    let refused = c.recv(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (refused.op, refused.seq, refused.body.len()),
        (op::SYNC_REPLY, 5, 0),
        "the refusal comes first and alone, with an empty body"
    );
    assert_eq!(g.comet().stats().room_refused, 1);

    c.send(1, op::SYNC, 6, b"live://1 0").unwrap();
    let history = c.recv(Duration::from_secs(5)).unwrap();
    assert_eq!((history.op, history.body), (1000, b"public".to_vec()));
    let answered = c.recv(Duration::from_secs(5)).unwrap();
    assert_eq!(
        (answered.op, answered.seq, answered.body),
        (op::SYNC_REPLY, 6, b"live://1 0".to_vec())
    );
    g.shutdown();
}

/// A token's `rooms` claim limits joins (op 24) exactly as it limits op 12.
#[test]
fn joins_are_limited_to_the_tokens_rooms() {
    use imgate_shared::frame::op;
    let g = secure_gateway();
    let rooms = vec!["live://1".to_string(), "live://2".to_string()];
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    c.auth(&auth_with(&token(9, Some(rooms)), 9, "", "live://1"))
        .unwrap();
    c.send(1, op::JOIN, 2, b"live://2").unwrap();
    assert_eq!(
        c.recv_op(op::JOIN_REPLY, Duration::from_secs(5))
            .unwrap()
            .body,
        b"live://2"
    );
    c.send(1, op::JOIN, 3, b"live://secret").unwrap();
    let refused = c.recv_op(op::JOIN_REPLY, Duration::from_secs(5)).unwrap();
    assert_eq!((refused.seq, refused.body.len()), (3, 0));
    assert_eq!(g.comet().stats().room_refused, 1);
    post(
        g.http_addr(),
        "/goim/push/room?operation=1000&type=live&room=secret",
        "classified",
    );
    post(
        g.http_addr(),
        "/goim/push/room?operation=1000&type=live&room=2",
        "for live://2",
    );
    assert_eq!(next_push(&mut c).1, "for live://2");
    g.shutdown();
}
