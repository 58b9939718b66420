//! logic over real sockets: the cluster link as a comet speaks it, the HTTP API as a business
//! calls it, and the bus as job reads it.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use imgate_bus::{BusConsumer, BusEvent, EmbeddedConsumer, Push};
use imgate_client::http::HttpClient;
use imgate_logic::LogicHandle;
use imgate_shared::config::Config;
use imgate_shared::link::{
    self, Body, CometInfo, ConnRef, Connect, Disconnect, Envelope, RenewOnline, Upstream,
};
use imgate_store::{embedded, Stores};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

struct Harness {
    logic: LogicHandle,
    stores: Stores,
    consumer: EmbeddedConsumer,
}

async fn start_logic() -> Harness {
    let mut config = Config::default();
    config.logic.http_bind = ([127, 0, 0, 1], 0).into();
    config.logic.link_bind = ([127, 0, 0, 1], 0).into();
    config.logic.max_push_targets = 3;
    config.logic.max_push_body = 1024;
    config.logic.online_refresh = Duration::from_millis(20);
    let stores = embedded::stores(&config.store);
    let (producer, consumer) = imgate_bus::embedded(64, Duration::from_millis(100));
    let logic = imgate_logic::start(&config, stores.clone(), Arc::new(producer))
        .await
        .expect("logic starts");
    Harness {
        logic,
        stores,
        consumer,
    }
}

/// A comet's side of the cluster link.
struct LinkClient {
    stream: TcpStream,
    buf: BytesMut,
    next_id: u64,
}

impl LinkClient {
    async fn connect(logic: &LogicHandle) -> Self {
        LinkClient {
            stream: TcpStream::connect(logic.link_addr()).await.unwrap(),
            buf: BytesMut::new(),
            next_id: 1,
        }
    }

    async fn request(&mut self, body: Body) -> Body {
        let id = self.next_id;
        self.next_id += 1;
        self.stream
            .write_all(&Envelope::new(id, body).to_frame())
            .await
            .unwrap();
        let reply = tokio::time::timeout(WAIT, self.read())
            .await
            .expect("reply within the deadline");
        assert_eq!(reply.id, id);
        reply.body.expect("reply has a body")
    }

    async fn read(&mut self) -> Envelope {
        loop {
            if let Some(env) = link::decode_frame(&mut self.buf).unwrap() {
                return env;
            }
            let n = self.stream.read_buf(&mut self.buf).await.unwrap();
            assert!(n > 0, "logic closed the link");
        }
    }
}

fn conn(conn_id: u64) -> ConnRef {
    ConnRef {
        comet: "comet-a".into(),
        shard: 2,
        conn_id,
    }
}

/// One request to logic's HTTP API; the status and the JSON body.
async fn http(logic: &LogicHandle, method: &str, path: &str, body: &[u8]) -> (u16, Value) {
    let (addr, method, path, body) = (
        logic.http_addr(),
        method.to_string(),
        path.to_string(),
        body.to_vec(),
    );
    let answer = tokio::task::spawn_blocking(move || {
        HttpClient::new(addr)
            .timeout(WAIT)
            .request(&method, &path, &[], &body)
    })
    .await
    .unwrap()
    .expect("an HTTP answer within the deadline");
    let json = serde_json::from_slice(&answer.body)
        .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&answer.body)));
    (answer.status, json)
}

async fn next_push(consumer: &mut EmbeddedConsumer) -> Push {
    match tokio::time::timeout(WAIT, consumer.recv())
        .await
        .expect("a bus message within the deadline")
        .expect("bus open")
    {
        BusEvent::Message(msg, _) => msg.push.expect("a push"),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_then_push_to_the_generated_key_reaches_the_bus() {
    let mut h = start_logic().await;
    let mut comet = LinkClient::connect(&h.logic).await;
    let reply = comet
        .request(Body::Connect(Connect {
            conn: Some(conn(7)),
            token: Bytes::from_static(br#"{"mid":123,"room_id":"live://1000","accepts":[1000]}"#),
            cookie: String::new(),
            remote_addr: "10.0.0.9:5555".into(),
        }))
        .await;
    let Body::ConnectReply(reply) = reply else {
        panic!("expected ConnectReply, got {reply:?}");
    };
    assert_eq!(reply.mid, 123);
    assert_eq!(reply.room, "live://1000");
    assert_eq!(reply.accepts, vec![1000]);
    assert_eq!(reply.heartbeat_ms, 480_000);
    assert_eq!(reply.key.len(), 36, "a generated UUID: {:?}", reply.key);

    let (status, json) = http(
        &h.logic,
        "POST",
        &format!("/goim/push/keys?operation=1000&keys={}", reply.key),
        b"hello",
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["code"], 0);
    assert_eq!(json["message"], "");
    assert_eq!(json["data"]["connections"], 1);
    match next_push(&mut h.consumer).await {
        Push::Keys(push) => {
            assert_eq!(push.comet, "comet-a");
            assert_eq!(push.op, 1000);
            assert_eq!(&push.body[..], b"hello");
            assert_eq!(push.targets.len(), 1);
            assert_eq!(push.targets[0].shard, 2);
            assert_eq!(push.targets[0].keys, vec![reply.key.clone()]);
        }
        other => panic!("expected a keys push, got {other:?}"),
    }

    // Same user by mid.
    let (status, json) = http(
        &h.logic,
        "POST",
        "/goim/push/mids?operation=5&mids=123",
        b"m",
    )
    .await;
    assert_eq!(
        (status, json["data"]["connections"].clone()),
        (200, 1.into())
    );
    assert!(matches!(next_push(&mut h.consumer).await, Push::Keys(p) if p.op == 5));

    // Unknown key: code 0, nothing published, the message says why.
    let (status, json) = http(&h.logic, "POST", "/goim/push/keys?keys=nobody", b"x").await;
    assert_eq!((status, json["code"].clone()), (200, 0.into()));
    assert_eq!(json["data"]["connections"], 0);
    assert!(json["message"]
        .as_str()
        .unwrap()
        .contains("no online connection"));
    h.logic.shutdown().await;
}

#[tokio::test]
async fn bad_requests_are_400_with_a_reason() {
    let h = start_logic().await;
    let (status, json) = http(
        &h.logic,
        "POST",
        "/goim/push/room?operation=1000&room=1",
        b"x",
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json["code"], -400);
    assert_eq!(json["message"], "type is required");
    assert!(json.get("data").is_none());

    let (status, json) = http(
        &h.logic,
        "POST",
        "/goim/push/keys?operation=abc&keys=k",
        b"x",
    )
    .await;
    assert_eq!((status, json["code"].clone()), (400, (-400).into()));
    assert!(json["message"].as_str().unwrap().contains("operation"));

    let (status, json) = http(
        &h.logic,
        "POST",
        "/goim/push/keys?keys=a&keys=b&keys=c&keys=d",
        b"x",
    )
    .await;
    assert_eq!(status, 400);
    assert!(json["message"].as_str().unwrap().contains("too many keys"));

    let (status, json) = http(&h.logic, "POST", "/goim/push/all?operation=1", &[0u8; 2000]).await;
    assert_eq!((status, json["code"].clone()), (413, (-400).into()));

    let (status, json) = http(&h.logic, "GET", "/goim/nope", b"").await;
    assert_eq!((status, json["code"].clone()), (404, (-400).into()));
    h.logic.shutdown().await;
}

/// Found by probing: `/goim/inbox/state` with 60 KB of bad mids echoed all of them in its 400.
/// Every reason is bounded where answers are made, whatever parameter or body it echoes.
#[tokio::test]
async fn a_huge_bad_parameter_is_not_echoed_whole() {
    let h = start_logic().await;
    let bad = "x".repeat(60 << 10);
    let control = "\u{1}".repeat(20 << 10);
    let cases = [
        format!("GET /goim/inbox/state?mids={bad} HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("GET /goim/online/mids?mids=1,{bad} HTTP/1.1\r\nHost: x\r\n\r\n"),
        format!("POST /goim/push/keys?operation={bad}&keys=k HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx"),
        // Characters JSON has to escape: the bound is on what goes out, not on the text.
        format!(
            "GET /goim/inbox/state?mids={} HTTP/1.1\r\nHost: x\r\n\r\n",
            control.replace('\u{1}', "%01")
        ),
    ];
    for request in cases {
        let mut s = TcpStream::connect(h.logic.http_addr()).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0u8; 4096];
        // The whole answer: its head, then as many body bytes as it announced.
        let done = |a: &[u8]| {
            let text = String::from_utf8_lossy(a);
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                return false;
            };
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .expect("a content-length");
            body.len() >= length
        };
        while !done(&answer) {
            let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                .await
                .expect("an answer")
                .unwrap();
            assert!(
                n > 0,
                "closed early: {:?}",
                String::from_utf8_lossy(&answer)
            );
            answer.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 400"), "{text}");
        assert!(answer.len() <= 512, "{} bytes: {text}", answer.len());
        let body: Value = serde_json::from_str(text.split_once("\r\n\r\n").unwrap().1).unwrap();
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("must be"),
            "still says what is wrong: {message}"
        );
        assert!(
            message.ends_with(" bytes)"),
            "and that it was cut: {message}"
        );
    }
    h.logic.shutdown().await;
}

#[tokio::test]
async fn room_and_broadcast_pushes_are_published() {
    let mut h = start_logic().await;
    let (status, json) = http(
        &h.logic,
        "POST",
        "/goim/push/room?operation=1000&type=live&room=1000",
        b"r",
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["data"]["room"], "live://1000");
    assert!(
        matches!(next_push(&mut h.consumer).await, Push::Room(p) if p.room == "live://1000" && p.op == 1000)
    );
    let (status, _) = http(
        &h.logic,
        "POST",
        "/goim/push/all?operation=9&speed=100",
        b"b",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        matches!(next_push(&mut h.consumer).await, Push::All(p) if p.op == 9 && p.speed == 100)
    );
    h.logic.shutdown().await;
}

#[tokio::test]
async fn full_bus_is_503() {
    let h = start_logic().await;
    // Nobody reads the bus: fill its 64 slots, then the next publish times out.
    let mut last = (0, Value::Null);
    for _ in 0..65 {
        last = http(&h.logic, "POST", "/goim/push/all?operation=1", b"x").await;
    }
    assert_eq!(last.0, 503, "{}", last.1);
    assert_eq!(last.1["code"], -500);
    assert!(last.1["message"].as_str().unwrap().contains("full"));
    drop(h.consumer);
    h.logic.shutdown().await;
}

#[tokio::test]
async fn disconnect_of_another_connection_keeps_the_session() {
    let h = start_logic().await;
    let mut comet = LinkClient::connect(&h.logic).await;
    let reply = comet
        .request(Body::Connect(Connect {
            conn: Some(conn(1)),
            token: Bytes::from_static(br#"{"mid":5,"key":"k5"}"#),
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(&reply, Body::ConnectReply(r) if r.key == "k5"),
        "{reply:?}"
    );

    let reply = comet
        .request(Body::Disconnect(Disconnect {
            conn: Some(conn(2)),
            mid: 5,
            key: "k5".into(),
            reason: "client_closed".into(),
        }))
        .await;
    assert!(matches!(reply, Body::Ok(_)), "{reply:?}");
    assert_eq!(
        h.stores
            .sessions
            .sessions_by_keys(&["k5".into()])
            .await
            .unwrap()
            .len(),
        1
    );

    let reply = comet
        .request(Body::Disconnect(Disconnect {
            conn: Some(conn(1)),
            mid: 5,
            key: "k5".into(),
            reason: "client_closed".into(),
        }))
        .await;
    assert!(matches!(reply, Body::Ok(_)), "{reply:?}");
    assert!(h
        .stores
        .sessions
        .sessions_by_keys(&["k5".into()])
        .await
        .unwrap()
        .is_empty());
    h.logic.shutdown().await;
}

#[tokio::test]
async fn bad_auth_and_missing_conn_are_errors() {
    let h = start_logic().await;
    let mut comet = LinkClient::connect(&h.logic).await;
    let reply = comet
        .request(Body::Connect(Connect {
            conn: Some(conn(1)),
            token: Bytes::from_static(b"not json"),
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(&reply, Body::Error(e) if e.message.contains("auth")),
        "{reply:?}"
    );
    let reply = comet
        .request(Body::Connect(Connect {
            conn: None,
            token: Bytes::from_static(b"{}"),
            ..Default::default()
        }))
        .await;
    assert!(matches!(reply, Body::Error(_)), "{reply:?}");
    h.logic.shutdown().await;
}

#[tokio::test]
async fn online_reports_feed_the_counts_and_the_node_list() {
    let h = start_logic().await;
    let mut comet = LinkClient::connect(&h.logic).await;
    let info = CometInfo {
        id: "comet-a".into(),
        link_addr: "127.0.0.1:1".into(),
        tcp_addrs: vec!["10.1.1.1:3101".into()],
        ws_addrs: vec![],
        wss_addrs: vec![],
        weight: 10,
        shards: 1,
    };
    let report = |shard: u32, conn_count: u32, rooms: &[(&str, u32)]| {
        Body::RenewOnline(RenewOnline {
            comet: Some(info.clone()),
            shard,
            conn_count,
            rooms: rooms
                .iter()
                .map(|&(name, n)| link::RoomCount::new(name.into(), n))
                .collect(),
            ip_count: 3,
            ..Default::default()
        })
    };
    let reply_rooms = |reply: Body| {
        let Body::RenewOnlineReply(reply) = reply else {
            panic!("expected RenewOnlineReply, got {reply:?}");
        };
        reply
            .rooms
            .iter()
            .map(|r| (r.name().unwrap().to_string(), r.count))
            .collect::<Vec<_>>()
    };
    let shard_0 = [("live://1", 5), ("live://2", 2), ("livex://9", 9)];
    let reply = comet.request(report(0, 7, &shard_0)).await;
    // Nobody else has members in them: the shard's own counts are the cluster's, and the
    // answer does not repeat them.
    assert_eq!(reply_rooms(reply), []);

    // The cache refreshes every 20 ms; poll until it shows the report.
    let deadline = tokio::time::Instant::now() + WAIT;
    let top = loop {
        let (status, json) = http(&h.logic, "GET", "/goim/online/top?type=live&limit=5", b"").await;
        assert_eq!(status, 200);
        if json["data"].as_array().is_some_and(|a| !a.is_empty()) {
            break json;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "room counts never showed up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        top["data"],
        serde_json::json!([{"room_id": "1", "count": 5}, {"room_id": "2", "count": 2}])
    );
    let (_, json) = http(
        &h.logic,
        "GET",
        "/goim/online/room?type=live&rooms=1&rooms=3",
        b"",
    )
    .await;
    assert_eq!(json["data"], serde_json::json!({"1": 5, "3": 0}));
    let (_, json) = http(&h.logic, "GET", "/goim/online/total", b"").await;
    assert_eq!(
        json["data"],
        serde_json::json!({"ip_count": 3, "conn_count": 7})
    );
    let (_, json) = http(
        &h.logic,
        "GET",
        "/goim/nodes/weighted?platform=android",
        b"",
    )
    .await;
    assert_eq!(json["data"]["nodes"], serde_json::json!(["10.1.1.1"]));
    assert_eq!(json["data"]["heartbeat"], 240);
    assert_eq!(
        json["data"]["backoff"],
        serde_json::json!({"max_delay": 300, "base_delay": 3, "factor": 1.8, "jitter": 0.3})
    );
    let (_, json) = http(&h.logic, "GET", "/goim/nodes/weighted?platform=web", b"").await;
    assert_eq!(
        json["data"]["nodes"],
        serde_json::json!(["comet-a.goim.io"])
    );
    let (_, json) = http(&h.logic, "GET", "/goim/nodes/instances", b"").await;
    assert_eq!(json["data"][0]["hostname"], "comet-a");
    assert_eq!(json["data"][0]["metadata"]["conn_count"], "7");

    // Another shard with members in live://1 hears of shard 0's (the cache lags its own
    // report), and shard 0 then hears of both, and only of that room.
    let reply = comet.request(report(1, 0, &[("live://1", 3)])).await;
    assert_eq!(reply_rooms(reply), [("live://1".to_string(), 5)]);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, json) = http(&h.logic, "GET", "/goim/online/room?type=live&rooms=1", b"").await;
        if json["data"]["1"] == 8 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{json}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = comet.request(report(0, 7, &shard_0)).await;
    assert_eq!(reply_rooms(reply), [("live://1".to_string(), 8)]);
    h.logic.shutdown().await;
}

/// A shard with many rooms reports them in parts (each a small frame); logic keeps the parts
/// and stores the report whole with the last one.
#[tokio::test]
async fn a_report_in_parts_is_stored_whole() {
    let h = start_logic().await;
    let mut comet = LinkClient::connect(&h.logic).await;
    let part = |part: u32, more: bool, rooms: &[(&str, u32)]| {
        Body::RenewOnline(RenewOnline {
            comet: Some(CometInfo {
                id: "comet-p".into(),
                ..Default::default()
            }),
            shard: 3,
            rooms: rooms
                .iter()
                .map(|&(name, n)| link::RoomCount::new(name.into(), n))
                .collect(),
            part,
            more,
            ..Default::default()
        })
    };
    let stored = || async {
        let counts = h.stores.registry.room_counts().await.unwrap();
        let mut rooms: Vec<(String, u64)> =
            counts.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        rooms.sort();
        rooms
    };
    comet.request(part(0, true, &[("live://p1", 1)])).await;
    assert_eq!(stored().await, [], "not stored before its last part");
    comet.request(part(1, false, &[("live://p2", 2)])).await;
    let whole = [("live://p1".to_string(), 1), ("live://p2".to_string(), 2)];
    assert_eq!(stored().await, whole);
    // A report that starts again (the comet restarted it) leaves the unfinished one behind.
    comet.request(part(0, true, &[("live://stale", 1)])).await;
    comet.request(part(0, true, &[("live://p3", 3)])).await;
    assert_eq!(
        stored().await,
        whole,
        "the last whole report until the next is whole"
    );
    comet.request(part(1, false, &[])).await;
    assert_eq!(stored().await, [("live://p3".to_string(), 3)]);
    h.logic.shutdown().await;
}

#[tokio::test]
async fn malformed_link_frame_closes_the_link_connection() {
    let h = start_logic().await;
    let mut stream = TcpStream::connect(h.logic.link_addr()).await.unwrap();
    // A length prefix followed by bytes that are not a valid envelope.
    stream
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("logic closes within the deadline");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    h.logic.shutdown().await;
}

#[tokio::test]
async fn upstream_frames_are_answered_and_counted() {
    let h = start_logic().await;
    let mut comet = LinkClient::connect(&h.logic).await;
    for seq in 1..=3 {
        let reply = comet
            .request(Body::Upstream(Upstream {
                conn: Some(conn(1)),
                mid: 5,
                key: "k5".into(),
                op: 1000,
                seq,
                body: Bytes::from_static(b"hi"),
                room: String::new(),
            }))
            .await;
        assert!(matches!(reply, Body::Ok(_)), "{reply:?}");
    }
    assert_eq!(h.logic.stats().upstream_frames, 3);
    h.logic.shutdown().await;
}
