//! imgate and the business, end to end: client messages (op 4) POSTed to `logic.upstream_url`
//! and answered with op 5, the connect hook (`auth.connect_url`), presence
//! (`/goim/online/mids`), connect/disconnect events (`logic.events_url`) and the per-user
//! connection limit. The business is a real HTTP server in the test; clients speak goim's
//! protocol over TCP and WebSocket; the store is embedded or a real redis-server.

mod support;

use std::time::{Duration, Instant};

use base64::Engine;
use imgate::client::{Client, ClientError, Transport};
use imgate::standalone::Gateway;
use imgate_shared::config::{Config, RedisConfig, StoreBackend};
use imgate_shared::frame::op;
use imgate_testkit::Redis;
use support::business::{Business, Reply};
use support::*;

const WAIT: Duration = Duration::from_secs(5);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A business that answers each client message with `echo:` and its body.
fn echo_business() -> Business {
    Business::start(|r| {
        let body = r.json()["body"].as_str().unwrap_or_default().to_string();
        let body = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        let mut answer = b"echo:".to_vec();
        answer.extend_from_slice(&body);
        Reply::With(200, answer)
    })
}

fn with_upstream(url: String) -> Gateway {
    let mut config = test_config();
    config.logic.upstream_url = Some(url);
    config.logic.upstream_timeout = Duration::from_millis(500);
    Gateway::start(config).expect("gateway starts")
}

fn auth_as(mid: i64, key: &str, platform: &str) -> String {
    serde_json::json!({"mid": mid, "key": key, "room_id": "live://1", "platform": platform, "accepts": [1000]})
        .to_string()
}

#[test]
fn a_client_message_reaches_the_business_and_its_answer_comes_back_in_op_5() {
    let business = echo_business();
    let g = with_upstream(business.url("/upstream"));
    for (i, transport) in [Transport::Tcp, Transport::WebSocket]
        .into_iter()
        .enumerate()
    {
        let addr = if i == 0 { g.tcp_addr() } else { g.ws_addr() };
        let mut c = Client::connect(addr, transport).unwrap();
        c.auth(&auth_as(9, &format!("k{i}"), "android")).unwrap();
        c.send(1, op::SEND_MSG, 70 + i as i32, b"hi \x00 there")
            .unwrap();
        let answer = c.recv_op(op::SEND_MSG_REPLY, WAIT).unwrap();
        assert_eq!(answer.seq, 70 + i as i32);
        assert_eq!(answer.body, b"echo:hi \x00 there");
    }
    let got = business.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].path, "/upstream");
    let m = got[0].json();
    assert_eq!(m["mid"], 9);
    assert_eq!(m["key"], "k0");
    assert_eq!(m["room"], "live://1");
    assert_eq!(m["op"], 4);
    assert_eq!(m["seq"], 70);
    assert_eq!(m["platform"], "android");
    assert_eq!(m["body"], b64(b"hi \x00 there"));
    assert_eq!(g.logic_stats().upstream_ok, 2);
    g.shutdown();
}

#[test]
fn a_failing_silent_or_huge_answer_is_an_empty_op_5_and_the_client_stays() {
    let business = Business::start(|r| {
        let body = r.json()["body"].as_str().unwrap_or_default().to_string();
        match base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap()
            .as_slice()
        {
            b"fail" => Reply::With(500, b"boom".to_vec()),
            b"silent" => Reply::Never,
            b"huge" => Reply::With(200, vec![b'x'; 200 << 10]),
            _ => Reply::With(200, b"fine".to_vec()),
        }
    });
    let g = with_upstream(business.url("/up"));
    let mut c = client(g.tcp_addr(), Transport::Tcp, 3, "", "", &[1000]);
    for (seq, body) in [(1, "fail"), (2, "silent"), (3, "huge")] {
        let sent = Instant::now();
        c.send(1, op::SEND_MSG, seq, body.as_bytes()).unwrap();
        let answer = c.recv_op(op::SEND_MSG_REPLY, WAIT).unwrap();
        assert_eq!((answer.seq, answer.body.len()), (seq, 0), "{body}");
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "{body}: answered within the timeout"
        );
        assert!(c.heartbeat(10 + seq).is_ok(), "{body}: still connected");
    }
    // While the business sits on one message, the client is served: pushes, other messages.
    c.send(1, op::SEND_MSG, 20, b"silent").unwrap();
    push(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=3",
        "meanwhile",
    );
    c.send(1, op::SEND_MSG, 21, b"ok").unwrap();
    let pushed = c.recv_op(1000, WAIT).unwrap();
    assert_eq!(pushed.body, b"meanwhile");
    let first = c.recv_op(op::SEND_MSG_REPLY, WAIT).unwrap();
    assert_eq!((first.seq, first.body.as_slice()), (21, &b"fine"[..]));
    let late = c.recv_op(op::SEND_MSG_REPLY, WAIT).unwrap();
    assert_eq!((late.seq, late.body.len()), (20, 0));
    let stats = g.logic_stats();
    assert_eq!(stats.upstream_failed, 1);
    assert_eq!(stats.upstream_timeout, 2);
    assert_eq!(stats.upstream_too_large, 1);
    assert_eq!(stats.upstream_ok, 1);
    g.shutdown();
}

#[test]
fn an_unreachable_business_is_an_empty_op_5() {
    // A port nothing listens on.
    let port = imgate_testkit::free_port();
    let g = with_upstream(format!("http://127.0.0.1:{port}/up"));
    let mut c = client(g.ws_addr(), Transport::WebSocket, 4, "", "", &[]);
    c.send(1, op::SEND_MSG, 6, b"anyone?").unwrap();
    let answer = c.recv_op(op::SEND_MSG_REPLY, WAIT).unwrap();
    assert_eq!((answer.seq, answer.body.len()), (6, 0));
    assert!(c.heartbeat(7).is_ok());
    eventually(WAIT, "the failure counted", || {
        g.logic_stats().upstream_failed >= 1
    });
    g.shutdown();
}

/// The connect hook: answers for the token "good-<mid>", refuses the rest.
fn hook_business() -> Business {
    Business::start(|r| {
        let token = r.json()["auth"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match token.strip_prefix("good-") {
            Some(mid) => Reply::With(
                200,
                // A decimal string works as well as a number.
                serde_json::json!({"mid": mid, "platform": "ios", "rooms": ["live://1"]})
                    .to_string()
                    .into_bytes(),
            ),
            None if token == "slow" => Reply::Never,
            None => Reply::With(403, b"{}".to_vec()),
        }
    })
}

fn hook_config(hook: &Business) -> Config {
    let mut config = test_config();
    config.auth.connect_url = Some(hook.url("/connect"));
    config.auth.connect_timeout = Duration::from_millis(500);
    config
}

fn refusal(result: Result<(), ClientError>) -> String {
    match result {
        Err(ClientError::Refused(reason)) => reason,
        other => panic!("not refused with a reason: {other:?}"),
    }
}

#[test]
fn the_connect_hook_decides_who_connects() {
    let hook = hook_business();
    let g = Gateway::start(hook_config(&hook)).unwrap();
    let mut c = Client::connect(g.ws_addr(), Transport::WebSocket).unwrap();
    // The JSON's mid is ignored: the business says 77.
    c.auth(r#"{"mid": 1, "token": "good-77", "room_id": "live://1", "accepts": [1000]}"#)
        .unwrap();
    let sent = hook.received();
    assert_eq!(sent[0].path, "/connect");
    assert_eq!(sent[0].json()["auth"]["token"], "good-77");
    assert!(sent[0].json()["remote_addr"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let a = push(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=77",
        "hello 77",
    );
    assert_eq!(a["data"]["connections"], 1);
    assert_eq!(next_push(&mut c).1, "hello 77");
    let refused = |body: &str| {
        let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
        let reason = refusal(c.auth(body));
        assert!(c.wait_closed(WAIT));
        reason
    };
    assert!(refused(r#"{"token": "bad"}"#).contains("refused by the connect hook (HTTP 403)"));
    let sent = Instant::now();
    assert!(refused(r#"{"token": "slow"}"#).contains("connect hook unavailable: no answer"));
    assert!(sent.elapsed() < Duration::from_secs(3));
    assert!(refused(r#"{"token": "good-5", "room_id": "live://2"}"#).contains("not allowed"));
    let stats = g.logic_stats();
    assert_eq!(stats.connect_hook_ok, 1);
    assert_eq!(stats.connect_hook_refused, 2);
    assert_eq!(stats.connect_hook_timeout, 1);
    // comet counts the refusals by what failed: the timeout is the hook's, not a refusal.
    let comet = g.comet().stats();
    assert_eq!((comet.auth_failed, comet.auth_hook_timeout), (3, 1));
    // The platform the business named is the connection's.
    let a = http(g.http_addr(), "GET", "/goim/online/mids?mids=77", b"");
    assert_eq!(a.json["data"]["77"][0]["platform"], "ios", "{:?}", a.json);
    g.shutdown();
}

#[test]
fn a_jwt_is_verified_without_the_hook_and_anything_else_goes_to_the_hook() {
    let hook = hook_business();
    let mut config = hook_config(&hook);
    config.auth.jwt_secret = Some("hook-secret".into());
    let g = Gateway::start(config).unwrap();
    let token =
        imgate_logic::mint_hs256(b"hook-secret", 42, None, Duration::from_secs(60)).unwrap();
    let mut jwt = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    jwt.auth(&serde_json::json!({"token": token}).to_string())
        .unwrap();
    assert!(hook.received().is_empty(), "a JWT does not go to the hook");
    let mut hooked = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    hooked.auth(r#"{"token": "good-43"}"#).unwrap();
    assert_eq!(hook.received().len(), 1);
    let a = push(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=42&mids=43",
        "both",
    );
    assert_eq!(a["data"]["connections"], 2, "{a:?}");
    // A forged JWT is refused as a JWT, not passed on.
    let forged = imgate_logic::mint_hs256(b"other", 42, None, Duration::from_secs(60)).unwrap();
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    assert!(
        refusal(c.auth(&serde_json::json!({"token": forged}).to_string())).contains("signature")
    );
    assert_eq!(hook.received().len(), 1);
    g.shutdown();
}

/// Found by probing: `[7]` was read as `{"mid": 7}`, and `"+7"` and `"007"` as mid 7. The hook's
/// answer is trusted like a token, so only a JSON object with a canonical positive mid is.
#[test]
fn a_connect_hook_answer_is_read_strictly() {
    let hook = Business::start(|r| {
        let token = r.json()["auth"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        Reply::With(200, token.into_bytes())
    });
    let g = Gateway::start(hook_config(&hook)).unwrap();
    let auth = |answer: &str| {
        let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
        c.auth(&serde_json::json!({ "token": answer }).to_string())
    };
    let bad = [
        "[7]",
        r#"{"mid":"+7"}"#,
        r#"{"mid":"007"}"#,
        r#"{"mid":" 7"}"#,
        r#"{"mid":"7 "}"#,
        r#"{"mid":"-7"}"#,
        r#"{"mid":"0"}"#,
        r#"{"mid":7.0}"#,
        r#"{"mid":-7}"#,
        r#"{"mid":"9223372036854775808"}"#,
        r#"{"mid":[7]}"#,
        r#"{"mid":7,"rooms":"live://1"}"#,
        r#""7""#,
        "7",
        "",
    ];
    for answer in bad {
        let reason = refusal(auth(answer));
        assert!(
            reason.contains("connect hook answered badly"),
            "{answer}: {reason}"
        );
    }
    auth(r#"{"mid":7}"#).expect("a number");
    auth(r#"{"mid":"7","extra":true}"#).expect("a canonical decimal string");
    auth(r#"{"mid":"9223372036854775807"}"#).expect("the largest mid");
    let stats = g.logic_stats();
    assert_eq!(stats.connect_hook_bad_answer, bad.len() as u64);
    assert_eq!(stats.connect_hook_ok, 3);
    assert_eq!(g.comet().stats().auth_hook_bad_answer, bad.len() as u64);
    g.shutdown();
}

/// Found by probing: 3,000 auths against a hook that never answers opened 2,158 connections
/// to it at once and were counted "refused" and "unavailable". The hook's waiters are bounded
/// by `auth.connect_concurrency`: beyond it a connect is refused at once as busy, and every
/// failure is counted by what failed.
#[test]
fn connects_waiting_for_the_hook_are_bounded_and_failures_counted_by_cause() {
    const BOUND: usize = 4;
    const CLIENTS: usize = 10;
    let hook = Business::start(|_| Reply::Never);
    let mut config = hook_config(&hook);
    config.auth.connect_concurrency = BOUND;
    config.auth.connect_timeout = Duration::from_secs(2);
    config.comet.handshake_timeout = Duration::from_secs(5);
    let g = Gateway::start(config).unwrap();
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| {
            let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
            let auth = serde_json::json!({ "token": format!("t{i}") }).to_string();
            c.send(1, op::AUTH, 1, auth.as_bytes()).unwrap();
            c
        })
        .collect();
    // Refused without waiting for the hook: before any of the waiting ones times out.
    eventually(Duration::from_millis(1500), "the busy refusals", || {
        g.logic_stats().connect_hook_busy == (CLIENTS - BOUND) as u64
    });
    eventually(WAIT, "the bounded ones at the hook", || {
        hook.received().len() == BOUND
    });
    let mut busy = 0;
    let mut timed_out = 0;
    for c in &mut clients {
        let reply = c.recv(WAIT).expect("an answer");
        assert_eq!(reply.op, op::DISCONNECT_REPLY);
        match String::from_utf8_lossy(&reply.body).as_ref() {
            "connect hook busy" => busy += 1,
            r if r.starts_with("connect hook unavailable: no answer") => timed_out += 1,
            other => panic!("unexpected refusal {other:?}"),
        }
        assert!(c.wait_closed(WAIT));
    }
    assert_eq!((busy, timed_out), (CLIENTS - BOUND, BOUND));
    let stats = g.logic_stats();
    assert_eq!(
        (stats.connect_hook_busy, stats.connect_hook_timeout),
        ((CLIENTS - BOUND) as u64, BOUND as u64)
    );
    let comet = g.comet().stats();
    assert_eq!(
        (
            comet.auth_hook_busy,
            comet.auth_hook_timeout,
            comet.auth_unavailable
        ),
        ((CLIENTS - BOUND) as u64, BOUND as u64, 0)
    );
    // The bound is given back: the next connect reaches the hook again.
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    let reason = refusal(c.auth(r#"{"token": "again"}"#));
    assert!(reason.contains("no answer"), "{reason}");
    assert_eq!(hook.received().len(), BOUND + 1);
    g.shutdown();
}

#[test]
fn an_unreachable_connect_hook_is_counted_as_unreachable() {
    let mut config = test_config();
    config.auth.connect_url = Some(format!(
        "http://127.0.0.1:{}/connect",
        imgate_testkit::free_port()
    ));
    let g = Gateway::start(config).unwrap();
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    let reason = refusal(c.auth(r#"{"token": "x"}"#));
    assert!(reason.contains("unreachable"), "{reason}");
    assert_eq!(g.logic_stats().connect_hook_unreachable, 1);
    assert_eq!(g.comet().stats().auth_hook_unreachable, 1);
    g.shutdown();
}

fn redis_config(redis: &Redis) -> Config {
    let mut config = test_config();
    config.store.backend = StoreBackend::Redis(RedisConfig {
        urls: vec![redis.url()],
        prefix: format!("b{}:", imgate_testkit::free_port()),
        ..RedisConfig::default()
    });
    config
}

/// Presence: who is online now, per user, with each connection's key, platform and comet.
fn presence(config: Config) {
    let g = Gateway::start(config).unwrap();
    let mut web = Client::connect(g.ws_addr(), Transport::WebSocket).unwrap();
    web.auth(&auth_as(5, "web-5", "web")).unwrap();
    let mut phone = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    phone.auth(&auth_as(5, "phone-5", "android")).unwrap();
    let a = http(
        g.http_addr(),
        "GET",
        "/goim/online/mids?mids=5,6&mids=7",
        b"",
    );
    assert_eq!(a.status, 200, "{:?}", a.json);
    let conns = a.json["data"]["5"].as_array().unwrap();
    let mut seen: Vec<(String, String)> = conns
        .iter()
        .map(|c| {
            assert_eq!(c["comet"], g.comet().id());
            (
                c["key"].as_str().unwrap().to_string(),
                c["platform"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("phone-5".to_string(), "android".to_string()),
            ("web-5".to_string(), "web".to_string())
        ]
    );
    assert_eq!(conns[0]["rooms"], serde_json::json!(["live://1"]));
    assert_eq!(a.json["data"]["6"], serde_json::json!([]));
    assert_eq!(a.json["data"]["7"], serde_json::json!([]));
    // Bad input is a 400 with a reason.
    let bad = http(g.http_addr(), "GET", "/goim/online/mids?mids=x", b"");
    assert_eq!(bad.status, 400);
    let none = http(g.http_addr(), "GET", "/goim/online/mids", b"");
    assert_eq!(none.status, 400);
    drop(web);
    eventually(WAIT, "the closed connection to leave", || {
        let a = http(g.http_addr(), "GET", "/goim/online/mids?mids=5", b"");
        a.json["data"]["5"].as_array().unwrap().len() == 1
    });
    // The same key reconnecting is one connection, not two.
    let mut again = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    again.auth(&auth_as(5, "phone-5", "android")).unwrap();
    assert!(phone.wait_closed(WAIT), "the replaced one is closed");
    let a = http(g.http_addr(), "GET", "/goim/online/mids?mids=5", b"");
    assert_eq!(a.json["data"]["5"].as_array().unwrap().len(), 1);
    g.shutdown();
}

#[test]
fn presence_lists_each_users_connections() {
    presence(test_config());
}

#[test]
fn presence_lists_each_users_connections_on_redis() {
    let redis = Redis::start();
    presence(redis_config(&redis));
}

/// At most two connections per user: a third is refused, or with kick_oldest the oldest goes.
fn user_limit(mut config: Config) {
    config.comet.max_conns_per_user = 2;
    let mut kick = config.clone();
    kick.comet.kick_oldest = true;
    let g = Gateway::start(config).unwrap();
    let mut held: Vec<Client> = (0..2)
        .map(|i| {
            client(
                g.tcp_addr(),
                Transport::Tcp,
                8,
                &format!("k{i}"),
                "",
                &[1000],
            )
        })
        .collect();
    let mut third = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    let reason = refusal(third.auth(&auth_body(8, "k2", "", &[1000])));
    assert!(reason.contains("already has 2 connections"), "{reason}");
    assert!(third.wait_closed(WAIT));
    // Another user is not affected, and the same key reconnecting is not one more.
    let _other = client(g.tcp_addr(), Transport::Tcp, 9, "", "", &[]);
    let _again = client(g.tcp_addr(), Transport::Tcp, 8, "k1", "", &[1000]);
    assert!(
        held.pop().unwrap().wait_closed(WAIT),
        "k1's older connection replaced"
    );
    assert_eq!(g.logic_stats().user_limit_refused, 1);
    // A closed connection frees its place.
    drop(held);
    eventually(WAIT, "a place to free up", || {
        let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
        c.auth(&auth_body(8, "k3", "", &[])).is_ok()
    });
    g.shutdown();

    let g = Gateway::start(kick).unwrap();
    let mut oldest = client(g.tcp_addr(), Transport::Tcp, 8, "a", "", &[1000]);
    let _b = client(g.ws_addr(), Transport::WebSocket, 8, "b", "", &[1000]);
    let _c = client(g.tcp_addr(), Transport::Tcp, 8, "c", "", &[1000]);
    assert!(oldest.wait_closed(WAIT), "the oldest is closed");
    let a = push(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=8",
        "two left",
    );
    assert_eq!(a["data"]["connections"], 2, "{a:?}");
    assert_eq!(g.logic_stats().user_limit_kicked, 1);
    g.shutdown();
}

#[test]
fn a_users_connections_are_limited() {
    user_limit(test_config());
}

#[test]
fn a_users_connections_are_limited_on_redis() {
    let redis = Redis::start();
    user_limit(redis_config(&redis));
}

#[test]
fn connect_and_disconnect_events_reach_the_business_in_batches() {
    let business = Business::start(|_| Reply::With(204, Vec::new()));
    let mut config = test_config();
    config.logic.events_url = Some(business.url("/events"));
    config.logic.events_interval = Duration::from_millis(100);
    let g = Gateway::start(config).unwrap();
    let c = client(g.tcp_addr(), Transport::Tcp, 11, "ev", "", &[]);
    drop(c);
    let mut events = Vec::new();
    eventually(WAIT, "a connect and a disconnect event", || {
        events = business
            .received()
            .iter()
            .flat_map(|r| r.json().as_array().unwrap().clone())
            .collect();
        events.len() >= 2
    });
    assert_eq!(events[0]["event"], "connect");
    assert_eq!(events[0]["mid"], 11);
    assert_eq!(events[0]["key"], "ev");
    assert_eq!(events[0]["platform"], "test");
    assert_eq!(events[0]["comet"], g.comet().id());
    assert!(events[0]["time"].as_u64().unwrap() > 1_700_000_000_000);
    assert_eq!(events[1]["event"], "disconnect");
    assert_eq!(events[1]["reason"], "client_closed");
    assert_eq!(events[1]["platform"], "test");
    // A newer connection with the same key: the older one's disconnect says it was replaced.
    let _old = client(g.tcp_addr(), Transport::Tcp, 11, "ev2", "", &[]);
    let _new = client(g.ws_addr(), Transport::WebSocket, 11, "ev2", "", &[]);
    eventually(WAIT, "the replacement's events", || {
        events = business
            .received()
            .iter()
            .flat_map(|r| r.json().as_array().unwrap().clone())
            .collect();
        events.len() >= 5
    });
    let tail: Vec<(&str, &str)> = events[2..5]
        .iter()
        .map(|e| (e["event"].as_str().unwrap(), e["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(
        tail,
        [
            ("connect", "auth"),
            ("disconnect", "replaced"),
            ("connect", "auth")
        ]
    );
    assert!(events[2..5].iter().all(|e| e["key"] == "ev2"));
    g.shutdown();
}

#[test]
fn an_events_endpoint_that_is_down_drops_events_and_leaves_clients_alone() {
    let port = imgate_testkit::free_port();
    let mut config = test_config();
    config.logic.events_url = Some(format!("http://127.0.0.1:{port}/events"));
    config.logic.events_queue = 2;
    config.logic.events_batch = 1;
    let g = Gateway::start(config).unwrap();
    let clients: Vec<Client> = (0..6)
        .map(|i| client(g.tcp_addr(), Transport::Tcp, 20 + i, "", "", &[1000]))
        .collect();
    let a = push(
        g.http_addr(),
        "/goim/push/mids?operation=1000&mids=25",
        "still fine",
    );
    assert_eq!(a["data"]["connections"], 1);
    drop(clients);
    eventually(WAIT, "events dropped and failures counted", || {
        let s = g.logic_stats();
        s.events_dropped >= 3 && s.events_post_failed >= 1 && s.events_sent == 0
    });
    g.shutdown();
}

/// A connect refused for its key (another user's, with tokens) after it had pushed the user's
/// oldest connection out: the oldest stays connected and counted.
#[test]
fn a_refused_key_claim_kicks_nobody() {
    let mut config = test_config();
    config.auth.jwt_secret = Some("kick-secret".into());
    config.comet.max_conns_per_user = 1;
    config.comet.kick_oldest = true;
    let g = Gateway::start(config).unwrap();
    let auth = |mid: i64, key: &str| {
        let token =
            imgate_logic::mint_hs256(b"kick-secret", mid, None, Duration::from_secs(60)).unwrap();
        serde_json::json!({"token": token, "key": key, "accepts": [1000]}).to_string()
    };
    let mut mine = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    mine.auth(&auth(7, "mine")).unwrap();
    let mut theirs = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    theirs.auth(&auth(8, "theirs")).unwrap();
    let mut thief = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    let reason = refusal(thief.auth(&auth(7, "theirs")));
    assert!(reason.contains("held by another user"), "{reason}");
    assert!(!mine.wait_closed(Duration::from_millis(500)), "not kicked");
    assert!(mine.heartbeat(2).is_ok());
    let a = http(g.http_addr(), "GET", "/goim/online/mids?mids=7", b"");
    let listed = a.json["data"]["7"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["key"], "mine");
    // Still the one allowed: the next connection of user 7 kicks it, as it should.
    let _next = client_with(&g, &auth(7, "next"));
    assert!(mine.wait_closed(WAIT));
    assert_eq!(g.logic_stats().user_limit_kicked, 1);
    g.shutdown();
}

fn client_with(g: &Gateway, auth: &str) -> Client {
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    c.auth(auth).unwrap();
    c
}
