//! The business controls live connections, checked from outside: a gateway with signed tokens,
//! an API key and `auth.leeway = "1s"`, real clients over TCP and WebSocket, and logic's real
//! HTTP API: server-side join, leave and kick; a token's expiry; a fresh token (op 30).
//!
//! Absence is proven with a sentinel, as in e2e.rs: after a push that must not reach a client,
//! a push that must reach it is sent, and it has to be the client's next message.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use imgate::client::http::HttpClient;
use imgate::client::{Client, Transport};
use imgate::standalone::Gateway;
use imgate_shared::config::Config;
use imgate_shared::frame::op;
use support::business::{Business, Reply};
use support::process::sample;
use support::*;

const SECRET: &str = "control-secret";
const API_KEY: &str = "control-api-key";
const WAIT: Duration = Duration::from_secs(5);

fn secure_gateway(max_rooms: usize) -> Gateway {
    secure_gateway_with(max_rooms, |_| {})
}

fn secure_gateway_with(max_rooms: usize, more: impl FnOnce(&mut Config)) -> Gateway {
    let mut config = test_config();
    config.auth.jwt_secret = Some(SECRET.into());
    config.auth.api_key = Some(API_KEY.into());
    config.auth.leeway = Duration::from_secs(1);
    config.comet.max_rooms_per_conn = max_rooms;
    more(&mut config);
    Gateway::start(config).expect("secure gateway starts")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `mid` signed with `secret`, expiring at `exp` (Unix seconds).
fn signed(secret: &str, mid: i64, exp: u64, rooms: Option<&[&str]>) -> String {
    let mut claims = serde_json::json!({"sub": mid.to_string(), "exp": exp});
    if let Some(rooms) = rooms {
        claims["rooms"] = serde_json::json!(rooms);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

fn token(mid: i64, ttl_secs: u64) -> String {
    signed(SECRET, mid, unix_now() + ttl_secs, None)
}

/// Connects and authenticates with a signed token.
fn connect(g: &Gateway, transport: Transport, token: &str, key: &str, room: &str) -> Client {
    let addr = match transport {
        Transport::Tcp => g.tcp_addr(),
        Transport::WebSocket => g.ws_addr(),
    };
    let mut c = Client::connect(addr, transport).unwrap();
    let auth = serde_json::json!({"token": token, "key": key, "room_id": room, "accepts": [1000]});
    c.auth(&auth.to_string()).expect("auth accepted");
    c
}

/// An authorised POST with `body` of `content_type` (none: an empty body); HTTP 200 and code 0
/// expected.
fn post(addr: SocketAddr, path: &str, content_type: Option<&str>, body: &str) -> serde_json::Value {
    let answer = post_any(addr, path, content_type, body);
    assert_eq!(answer.status, 200, "{path}: {:?}", answer.json);
    assert_eq!(answer.json["code"], 0, "{path}: {:?}", answer.json);
    answer.json
}

fn post_any(addr: SocketAddr, path: &str, content_type: Option<&str>, body: &str) -> Answer {
    let bearer = format!("Bearer {API_KEY}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    if let Some(t) = content_type {
        headers.push(("Content-Type", t));
    }
    request(addr, "POST", path, &headers, body.as_bytes())
}

fn room_push(g: &Gateway, room: &str, body: &str) {
    post(
        g.http_addr(),
        &format!("/goim/push/room?operation=1000&type=live&room={room}"),
        None,
        body,
    );
}

/// The next frame of `c` that is not a heartbeat reply.
fn next_frame(c: &mut Client) -> (i32, i32, String) {
    let f = c.recv(WAIT).expect("a frame arrives");
    (f.op, f.seq, String::from_utf8_lossy(&f.body).into_owned())
}

fn metrics(g: &Gateway) -> String {
    let bearer = format!("Bearer {API_KEY}");
    let r = HttpClient::new(g.http_addr())
        .request("GET", "/metrics", &[("Authorization", &bearer)], b"")
        .unwrap();
    assert_eq!(r.status, 200);
    String::from_utf8(r.body).unwrap()
}

#[test]
fn join_by_key_and_by_mid_delivers_the_rooms_pushes_and_leave_stops_them() {
    let g = secure_gateway(4);
    let http = g.http_addr();
    let mut a = connect(
        &g,
        Transport::Tcp,
        &token(11, 600),
        "key-a",
        "live://home-a",
    );
    let mut b = connect(
        &g,
        Transport::WebSocket,
        &token(12, 600),
        "key-b",
        "live://home-b",
    );

    // By key, in the query: told with op 25 (seq 0, the room as body), as if it had sent op 24.
    let answer = post(
        http,
        "/goim/rooms/join?type=live&room=j1&keys=key-a",
        None,
        "",
    );
    assert_eq!(answer["data"]["connections"], 1);
    assert_eq!(next_frame(&mut a), (op::JOIN_REPLY, 0, "live://j1".into()));
    // By mid, in a JSON body.
    let answer = post(
        http,
        "/goim/rooms/join",
        Some("application/json"),
        r#"{"mids": [12], "type": "live", "room": "j1"}"#,
    );
    assert_eq!(answer["data"]["connections"], 1);
    assert_eq!(next_frame(&mut b), (op::JOIN_REPLY, 0, "live://j1".into()));

    room_push(&g, "j1", "to both");
    assert_eq!(next_push(&mut a), (1000, "to both".into()));
    assert_eq!(next_push(&mut b), (1000, "to both".into()));

    // Leave by key, in a form body: op 27, and the room's pushes stop.
    let answer = post(
        http,
        "/goim/rooms/leave",
        Some("application/x-www-form-urlencoded"),
        "keys=key-a&type=live&room=j1",
    );
    assert_eq!(answer["data"]["connections"], 1);
    assert_eq!(next_frame(&mut a), (op::LEAVE_REPLY, 0, "live://j1".into()));
    room_push(&g, "j1", "only b");
    assert_eq!(next_push(&mut b), (1000, "only b".into()));
    room_push(&g, "home-a", "sentinel");
    assert_eq!(
        next_push(&mut a),
        (1000, "sentinel".into()),
        "a still got j1"
    );

    // Nobody online: zero connections, said so.
    let answer = post(
        http,
        "/goim/rooms/join?type=live&room=j1&keys=nobody",
        None,
        "",
    );
    assert_eq!(answer["data"]["connections"], 0);
    g.shutdown();
}

#[test]
fn a_join_respects_the_rooms_per_connection_limit() {
    let g = secure_gateway(2);
    let http = g.http_addr();
    // Its main room and one joined room fill its two.
    let mut c = connect(
        &g,
        Transport::Tcp,
        &token(21, 600),
        "key-l",
        "live://main-l",
    );
    post(
        http,
        "/goim/rooms/join?type=live&room=l1&keys=key-l",
        None,
        "",
    );
    assert_eq!(next_frame(&mut c), (op::JOIN_REPLY, 0, "live://l1".into()));
    post(
        http,
        "/goim/rooms/join?type=live&room=l2&keys=key-l",
        None,
        "",
    );
    eventually(WAIT, "the refused join to be counted", || {
        g.comet().stats().room_limit >= 1
    });
    room_push(&g, "l2", "over the limit");
    room_push(&g, "l1", "sentinel");
    assert_eq!(
        next_frame(&mut c),
        (1000, 0, "sentinel".into()),
        "no op 25 for a refused join"
    );
    g.shutdown();
}

#[test]
fn bad_join_leave_and_kick_requests_are_refused_with_a_reason() {
    let g = secure_gateway(4);
    let http = g.http_addr();
    // Without the API key.
    let a = http_post_plain(http, "/goim/kick?mids=1");
    assert_eq!(a.status, 401);
    for (path, content_type, body, why) in [
        (
            "/goim/rooms/join?type=live&room=1",
            None,
            "",
            "keys or mids",
        ),
        ("/goim/rooms/join?keys=a&room=1", None, "", "type"),
        ("/goim/rooms/leave?keys=a&type=live", None, "", "room"),
        ("/goim/kick?keys=a&mids=1", None, "", "not both"),
        ("/goim/kick?mids=x", None, "", "mids"),
        (
            "/goim/kick",
            Some("application/json"),
            r#"{"mids": [1], "why": "x"}"#,
            "unexpected field",
        ),
        (
            "/goim/kick",
            Some("text/plain"),
            "mids=1",
            "application/json",
        ),
    ] {
        let a = post_any(http, path, content_type, body);
        assert_eq!(a.status, 400, "{path}: {:?}", a.json);
        let message = a.json["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(why),
            "{path}: {message:?} does not say {why:?}"
        );
    }
    let long = "r".repeat(300);
    let a = post_any(
        http,
        &format!("/goim/rooms/join?keys=a&type=live&room={long}"),
        None,
        "",
    );
    assert_eq!(a.status, 400);
    let a = post_any(
        http,
        &format!("/goim/kick?keys=a&reason={}", "x".repeat(200)),
        None,
        "",
    );
    assert_eq!(a.status, 400);
    g.shutdown();
}

fn http_post_plain(addr: SocketAddr, path: &str) -> Answer {
    request(addr, "POST", path, &[], b"")
}

#[test]
fn kick_by_mid_sends_op_6_with_the_reason_then_closes_and_is_counted() {
    let g = secure_gateway(4);
    let http = g.http_addr();
    // Two devices of user 31 (TCP and WebSocket), one of user 32.
    let mut tcp = connect(&g, Transport::Tcp, &token(31, 600), "kick-tcp", "");
    let mut ws = connect(&g, Transport::WebSocket, &token(31, 600), "kick-ws", "");
    let mut other = connect(&g, Transport::Tcp, &token(32, 600), "kick-other", "");
    let answer = post(
        http,
        "/goim/kick",
        Some("application/json"),
        r#"{"mids": [31], "reason": "banned for spam"}"#,
    );
    assert_eq!(answer["data"]["connections"], 2);
    for c in [&mut tcp, &mut ws] {
        assert_eq!(
            next_frame(c),
            (op::DISCONNECT_REPLY, 0, "banned for spam".into())
        );
        assert!(c.wait_closed(WAIT), "a kicked connection stays open");
    }
    // The other user is untouched.
    assert!(other.heartbeat(1).is_ok());
    eventually(WAIT, "the kicks to be counted", || {
        sample(&metrics(&g), "imgate_closes_total", "reason=\"kicked\"") == Some(2.0)
    });
    // Their sessions are gone: a push to user 31 reaches nobody.
    eventually(WAIT, "the kicked sessions to go", || {
        let a = post(
            http,
            "/goim/push/keys?operation=1000&keys=kick-tcp&keys=kick-ws",
            None,
            "x",
        );
        a["data"]["connections"] == 0
    });
    g.shutdown();
}

#[test]
fn a_token_past_its_exp_and_the_leeway_gets_op_6_naming_the_expiry() {
    let g = secure_gateway(4);
    let started = Instant::now();
    let mut c = connect(&g, Transport::Tcp, &token(41, 3), "exp-tcp", "");
    let mut ws = connect(&g, Transport::WebSocket, &token(42, 3), "exp-ws", "");
    for c in [&mut c, &mut ws] {
        // Nothing comes but the expiry: exp + 1 s of leeway, about 4 s from now.
        let f = c.recv(Duration::from_secs(10)).expect("op 6 within 10 s");
        assert_eq!(
            (f.op, String::from_utf8_lossy(&f.body).into_owned()),
            (op::DISCONNECT_REPLY, "token expired".into())
        );
        assert!(c.wait_closed(WAIT), "an expired connection stays open");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "closed before its token expired: {:?}",
        started.elapsed()
    );
    eventually(WAIT, "the expiries to be counted", || {
        g.comet().stats().closed_token_expired >= 2
    });
    g.shutdown();
}

#[test]
fn a_fresh_token_gets_op_31_and_the_connection_outlives_the_old_exp() {
    let g = secure_gateway(4);
    let http = g.http_addr();
    for (transport, mid, key) in [
        (Transport::Tcp, 51, "fresh-tcp"),
        (Transport::WebSocket, 52, "fresh-ws"),
    ] {
        let old_exp_at = Instant::now() + Duration::from_secs(3);
        let mut c = connect(&g, transport, &token(mid, 3), key, "");
        // The fresh token limits its rooms to live://ok.
        let exp = unix_now() + 600;
        let fresh = signed(SECRET, mid, exp, Some(&["live://ok"]));
        c.send(1, op::REFRESH, 77, fresh.as_bytes()).unwrap();
        let reply = c.recv_op(op::REFRESH_REPLY, WAIT).expect("op 31");
        assert_eq!(reply.seq, 77);
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body, serde_json::json!({ "exp": exp }));
        // The rooms claim is the fresh token's.
        c.send(1, op::JOIN, 78, b"live://other").unwrap();
        assert_eq!(c.recv_op(op::JOIN_REPLY, WAIT).unwrap().body, b"");
        c.send(1, op::JOIN, 79, b"live://ok").unwrap();
        assert_eq!(c.recv_op(op::JOIN_REPLY, WAIT).unwrap().body, b"live://ok");
        // Past the old exp and its leeway, heartbeating, it is still there and gets pushes.
        let past = old_exp_at + Duration::from_secs(2);
        while Instant::now() < past {
            assert!(c.heartbeat(1).is_ok(), "closed after a fresh token");
            std::thread::sleep(Duration::from_millis(250));
        }
        let a = post(
            http,
            &format!("/goim/push/mids?operation=1000&mids={mid}"),
            None,
            "still here",
        );
        assert_eq!(a["data"]["connections"], 1);
        assert_eq!(next_push(&mut c), (1000, "still here".into()));
    }
    g.shutdown();
}

#[test]
fn a_forged_expired_or_other_users_fresh_token_gets_op_6_then_the_close() {
    let g = secure_gateway(4);
    let far = unix_now() + 600;
    for (fresh, why) in [
        (signed(SECRET, 99, far, None), "user 99"),
        (signed("not-the-secret", 61, far, None), "signature"),
        (signed(SECRET, 61, 1_000, None), "expired"),
        ("not a token".to_string(), "fresh token refused"),
    ] {
        let mut c = connect(&g, Transport::Tcp, &token(61, 600), "", "");
        c.send(1, op::REFRESH, 5, fresh.as_bytes()).unwrap();
        let (op_got, _, body) = next_frame(&mut c);
        assert_eq!(op_got, op::DISCONNECT_REPLY, "{why}: {body}");
        assert!(body.contains(why), "{body:?} does not say {why:?}");
        assert!(c.wait_closed(WAIT), "{why}: the connection stays open");
    }
    eventually(WAIT, "the refusals to be counted", || {
        g.comet().stats().closed_refresh_refused >= 4
    });
    g.shutdown();
}

/// Every room of `mid`'s first connection, as presence lists them.
fn presence_rooms(g: &Gateway, mid: i64) -> Vec<String> {
    let bearer = format!("Bearer {API_KEY}");
    let a = request(
        g.http_addr(),
        "GET",
        &format!("/goim/online/mids?mids={mid}"),
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(a.status, 200, "{:?}", a.json);
    a.json["data"][mid.to_string()][0]["rooms"]
        .as_array()
        .map(|rooms| {
            rooms
                .iter()
                .map(|r| r.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn presence_lists_every_room_joined_by_the_client_or_the_server_and_events_say_so() {
    let business = Business::start(|_| Reply::With(204, Vec::new()));
    let g = secure_gateway_with(4, |config| {
        config.logic.events_url = Some(business.url("/events"));
        config.logic.events_interval = Duration::from_millis(100);
    });
    let http = g.http_addr();
    let mut c = connect(&g, Transport::Tcp, &token(71, 600), "pres", "live://p-main");
    assert_eq!(presence_rooms(&g, 71), vec!["live://p-main"]);
    // The client joins one room (op 24), the server another.
    c.send(1, op::JOIN, 2, b"live://p-client").unwrap();
    assert_eq!(
        c.recv_op(op::JOIN_REPLY, WAIT).unwrap().body,
        b"live://p-client"
    );
    post(
        http,
        "/goim/rooms/join?type=live&room=p-server&mids=71",
        None,
        "",
    );
    assert_eq!(
        next_frame(&mut c),
        (op::JOIN_REPLY, 0, "live://p-server".into())
    );
    eventually(WAIT, "presence to list every room", || {
        presence_rooms(&g, 71) == ["live://p-main", "live://p-client", "live://p-server"]
    });
    // Online counts count the joined members.
    eventually(WAIT, "the joined rooms to be counted", || {
        let bearer = format!("Bearer {API_KEY}");
        let a = request(
            http,
            "GET",
            "/goim/online/room?type=live&rooms=p-client&rooms=p-server",
            &[("Authorization", &bearer)],
            b"",
        );
        a.json["data"]["p-client"] == 1 && a.json["data"]["p-server"] == 1
    });
    // The client leaves its main room (op 26), the server takes the other one away.
    c.send(1, op::LEAVE, 3, b"live://p-main").unwrap();
    assert_eq!(
        c.recv_op(op::LEAVE_REPLY, WAIT).unwrap().body,
        b"live://p-main"
    );
    post(
        http,
        "/goim/rooms/leave?type=live&room=p-server&keys=pres",
        None,
        "",
    );
    assert_eq!(
        next_frame(&mut c),
        (op::LEAVE_REPLY, 0, "live://p-server".into())
    );
    eventually(WAIT, "presence to follow the leaves", || {
        presence_rooms(&g, 71) == ["live://p-client"]
    });
    let mut rooms = Vec::new();
    eventually(WAIT, "the join and leave events", || {
        rooms = business
            .received()
            .iter()
            .flat_map(|r| r.json().as_array().unwrap().clone())
            .filter(|e| e["event"] == "join" || e["event"] == "leave")
            .map(|e| {
                assert_eq!(e["mid"], 71);
                assert_eq!(e["key"], "pres");
                format!(
                    "{} {} {}",
                    e["event"].as_str().unwrap(),
                    e["room"].as_str().unwrap(),
                    e["reason"].as_str().unwrap()
                )
            })
            .collect();
        rooms.len() >= 4
    });
    assert_eq!(
        rooms,
        [
            "join live://p-client client",
            "join live://p-server server",
            "leave live://p-main client",
            "leave live://p-server server",
        ]
    );
    g.shutdown();
}

#[test]
fn the_connect_hooks_expire_at_expires_a_connection_and_refresh_goes_through_the_hook() {
    let soon = unix_now() + 3;
    let later = unix_now() + 600;
    let business = Business::start(move |r| {
        let answer = match r.json()["auth"]["token"].as_str().unwrap_or_default() {
            "session-soon" => serde_json::json!({"mid": 81, "expire_at": soon}),
            "session-later" => serde_json::json!({"mid": 81, "expire_at": later}),
            "session-other" => serde_json::json!({"mid": 82}),
            _ => return Reply::With(403, Vec::new()),
        };
        Reply::With(200, answer.to_string().into_bytes())
    });
    let mut config = test_config();
    config.auth.connect_url = Some(business.url("/connect"));
    config.auth.api_key = Some(API_KEY.into());
    config.auth.leeway = Duration::from_secs(1);
    let g = Gateway::start(config).expect("gateway starts");
    let hook_client = |token: &str| {
        let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
        c.auth(&serde_json::json!({ "token": token }).to_string())
            .expect("admitted by the hook");
        c
    };
    let mut refreshed = hook_client("session-soon");
    let mut expiring = hook_client("session-soon");
    let mut refused = hook_client("session-soon");
    // Through the hook: the same user, a later expire_at.
    refreshed.send(1, op::REFRESH, 3, b"session-later").unwrap();
    let reply = refreshed.recv_op(op::REFRESH_REPLY, WAIT).expect("op 31");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body, serde_json::json!({ "exp": later }));
    // Another user, and a token the hook refuses.
    refused.send(1, op::REFRESH, 4, b"session-other").unwrap();
    let (op_got, _, why) = next_frame(&mut refused);
    assert_eq!(op_got, op::DISCONNECT_REPLY);
    assert!(why.contains("user 82"), "{why}");
    assert!(refused.wait_closed(WAIT));
    // Without a fresh token, the hook's expire_at (and the leeway) closes it.
    let f = expiring
        .recv(Duration::from_secs(10))
        .expect("op 6 within 10 s");
    assert_eq!(
        (f.op, String::from_utf8_lossy(&f.body).into_owned()),
        (op::DISCONNECT_REPLY, "token expired".into())
    );
    assert!(expiring.wait_closed(WAIT));
    // The refreshed one outlives it and still gets pushes.
    while unix_now() <= soon + 2 {
        assert!(refreshed.heartbeat(1).is_ok(), "closed after a fresh token");
        std::thread::sleep(Duration::from_millis(250));
    }
    let a = post(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=81",
        None,
        "alive",
    );
    assert_eq!(a["data"]["connections"], 1);
    assert_eq!(next_push(&mut refreshed), (1000, "alive".into()));
    let hook_calls = business
        .received()
        .iter()
        .filter(|r| r.path == "/connect")
        .count();
    assert_eq!(
        hook_calls, 5,
        "three connects and two refreshes went through the hook"
    );
    g.shutdown();
}
