//! End-to-end: a real gateway (comet, logic, job) on loopback, real goim clients over TCP and
//! WebSocket, pushes through logic's real HTTP API.
//!
//! Absence is proven with a sentinel: after a push that must not reach a client, a second push
//! of the same kind that must reach it is sent; the client's first message has to be the
//! sentinel, because both travel the same ordered path.

mod support;

use std::time::Duration;

use imgate::client::{Client, Transport};
use imgate_shared::frame::{self, op};
use support::*;

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn tcp_and_websocket_auth_and_heartbeat_carry_the_room_count() {
    let g = gateway();
    let mut a = client(g.tcp_addr(), Transport::Tcp, 1, "", "live://hb", &[1000]);
    let mut b = client(
        g.ws_addr(),
        Transport::WebSocket,
        2,
        "",
        "live://hb",
        &[1000],
    );
    let mut lonely = client(g.tcp_addr(), Transport::Tcp, 3, "", "", &[1000]);
    assert!(a.heartbeat(1).unwrap() >= 1);
    // Once the shards have reported, both see the cluster-wide count of the room.
    eventually(
        5 * SECOND,
        "heartbeat replies to count both members",
        || a.heartbeat(2).unwrap() == 2 && b.heartbeat(2).unwrap() == 2,
    );
    assert_eq!(lonely.heartbeat(1).unwrap(), 0);
    // The reply echoes ver and seq.
    a.send(7, op::HEARTBEAT, 99, &[]).unwrap();
    let reply = a.recv_op(op::HEARTBEAT_REPLY, 5 * SECOND).unwrap();
    assert_eq!((reply.ver, reply.seq, reply.body.len()), (7, 99, 4));
    g.shutdown();
}

#[test]
fn push_to_keys_reaches_exactly_that_connection() {
    let g = gateway();
    let http = g.http_addr();
    let mut a = client(g.tcp_addr(), Transport::Tcp, 1, "key-a", "", &[1000]);
    let mut b = client(g.ws_addr(), Transport::WebSocket, 2, "key-b", "", &[1000]);
    let answer = push(http, "/goim/push/keys?operation=1000&keys=key-a", "for a");
    assert_eq!(answer["data"]["connections"], 1);
    assert_eq!(next_push(&mut a), (1000, "for a".into()));
    push(http, "/goim/push/keys?operation=1000&keys=key-b", "for b");
    assert_eq!(
        next_push(&mut b),
        (1000, "for b".into()),
        "b saw a's push first"
    );
    // Two keys in one request, one of them unknown.
    let answer = push(
        http,
        "/goim/push/keys?operation=1000&keys=key-a&keys=key-b&keys=nobody",
        "both",
    );
    assert_eq!(answer["data"]["connections"], 2);
    assert_eq!(next_push(&mut a).1, "both");
    assert_eq!(next_push(&mut b).1, "both");
    let answer = push(http, "/goim/push/keys?operation=1000&keys=nobody", "lost");
    assert_eq!(
        answer["data"]["connections"], 0,
        "a push that reaches nobody says so"
    );
    g.shutdown();
}

#[test]
fn push_to_mids_reaches_every_device_of_that_user_only() {
    let g = gateway();
    let http = g.http_addr();
    let mut phone = client(g.tcp_addr(), Transport::Tcp, 42, "", "", &[1000]);
    let mut web = client(g.ws_addr(), Transport::WebSocket, 42, "", "", &[1000]);
    let mut other = client(g.tcp_addr(), Transport::Tcp, 43, "", "", &[1000]);
    let answer = push(http, "/goim/push/mids?operation=1000&mids=42", "hello 42");
    assert_eq!(answer["data"]["connections"], 2);
    assert_eq!(next_push(&mut phone), (1000, "hello 42".into()));
    assert_eq!(next_push(&mut web), (1000, "hello 42".into()));
    push(http, "/goim/push/mids?operation=1000&mids=43", "hello 43");
    assert_eq!(next_push(&mut other).1, "hello 43");
    assert_eq!(
        push(http, "/goim/push/mids?operation=1000&mids=44", "x")["data"]["connections"],
        0
    );
    g.shutdown();
}

#[test]
fn room_push_reaches_members_in_order_and_nobody_else() {
    let g = gateway();
    let http = g.http_addr();
    let mut members: Vec<Client> = (0..4)
        .map(|i| {
            let t = if i % 2 == 0 {
                Transport::Tcp
            } else {
                Transport::WebSocket
            };
            // Room pushes ignore the watch set (goim): members accept nothing.
            client(
                if i % 2 == 0 {
                    g.tcp_addr()
                } else {
                    g.ws_addr()
                },
                t,
                i,
                "",
                "live://1000",
                &[],
            )
        })
        .collect();
    let mut outsider = client(g.tcp_addr(), Transport::Tcp, 9, "", "live://2000", &[]);
    for i in 0..30 {
        push(
            http,
            "/goim/push/room?operation=1000&type=live&room=1000",
            &format!("{{\"n\":{i}}}"),
        );
    }
    push(
        http,
        "/goim/push/room?operation=1001&type=live&room=2000",
        "sentinel",
    );
    for m in &mut members {
        for i in 0..30 {
            assert_eq!(next_push(m), (1000, format!("{{\"n\":{i}}}")));
        }
    }
    assert_eq!(next_push(&mut outsider), (1001, "sentinel".into()));
    g.shutdown();
}

#[test]
fn broadcast_honours_the_watch_set() {
    let g = gateway();
    let http = g.http_addr();
    let mut watcher = client(g.tcp_addr(), Transport::Tcp, 1, "", "", &[1000, 1001]);
    let mut ws_watcher = client(g.ws_addr(), Transport::WebSocket, 2, "", "", &[1000, 1001]);
    let mut other = client(g.tcp_addr(), Transport::Tcp, 3, "", "", &[1001]);
    push(http, "/goim/push/all?operation=1000", "to 1000 watchers");
    push(http, "/goim/push/all?operation=1001", "to 1001 watchers");
    assert_eq!(next_push(&mut watcher), (1000, "to 1000 watchers".into()));
    assert_eq!(next_push(&mut watcher), (1001, "to 1001 watchers".into()));
    assert_eq!(
        next_push(&mut ws_watcher),
        (1000, "to 1000 watchers".into())
    );
    assert_eq!(
        next_push(&mut ws_watcher),
        (1001, "to 1001 watchers".into())
    );
    assert_eq!(next_push(&mut other), (1001, "to 1001 watchers".into()));
    // A paced broadcast still reaches everyone.
    push(http, "/goim/push/all?operation=1001&speed=100", "paced");
    for c in [&mut watcher, &mut ws_watcher, &mut other] {
        assert_eq!(next_push(c).1, "paced");
    }
    g.shutdown();
}

#[test]
fn sub_and_unsub_change_what_a_connection_receives() {
    let g = gateway();
    let http = g.http_addr();
    let mut c = client(g.tcp_addr(), Transport::Tcp, 5, "subber", "", &[]);
    c.send(1, op::SUB, 3, b"1005,1006").unwrap();
    let reply = c.recv_op(op::SUB_REPLY, 5 * SECOND).unwrap();
    assert_eq!((reply.seq, reply.body.as_slice()), (3, &b"1005,1006"[..]));
    push(http, "/goim/push/keys?operation=1005&keys=subber", "a");
    assert_eq!(next_push(&mut c), (1005, "a".into()));
    c.send(1, op::UNSUB, 4, b"1005").unwrap();
    assert_eq!(
        c.recv_op(op::UNSUB_REPLY, 5 * SECOND).unwrap().body,
        b"1005"
    );
    // An invalid list is ignored as a whole (goim), but still answered.
    c.send(1, op::UNSUB, 5, b"1006,x").unwrap();
    c.recv_op(op::UNSUB_REPLY, 5 * SECOND).unwrap();
    push(
        http,
        "/goim/push/keys?operation=1005&keys=subber",
        "filtered",
    );
    push(http, "/goim/push/keys?operation=1006&keys=subber", "b");
    assert_eq!(next_push(&mut c), (1006, "b".into()));
    g.shutdown();
}

#[test]
fn change_room_moves_the_connection() {
    let g = gateway();
    let http = g.http_addr();
    let mut c = client(g.ws_addr(), Transport::WebSocket, 5, "", "live://a", &[]);
    c.send(1, op::CHANGE_ROOM, 8, b"live://b").unwrap();
    let reply = c.recv_op(op::CHANGE_ROOM_REPLY, 5 * SECOND).unwrap();
    assert_eq!((reply.seq, reply.body.as_slice()), (8, &b"live://b"[..]));
    push(
        http,
        "/goim/push/room?operation=1000&type=live&room=a",
        "old room",
    );
    push(
        http,
        "/goim/push/room?operation=1000&type=live&room=b",
        "new room",
    );
    assert_eq!(next_push(&mut c).1, "new room");
    // Leaving every room: a room push no longer arrives, a key push still does.
    c.send(1, op::CHANGE_ROOM, 9, b"").unwrap();
    c.recv_op(op::CHANGE_ROOM_REPLY, 5 * SECOND).unwrap();
    assert_eq!(c.heartbeat(10).unwrap(), 0);
    g.shutdown();
}

#[test]
fn unknown_ops_are_acknowledged_with_an_empty_body() {
    let g = gateway();
    let mut c = client(g.tcp_addr(), Transport::Tcp, 5, "", "", &[]);
    c.send(1, 2000, 77, b"upstream chat").unwrap();
    let ack = c.recv_op(2000, 5 * SECOND).unwrap();
    assert_eq!((ack.seq, ack.body.len()), (77, 0));
    g.shutdown();
}

#[test]
fn duplicate_key_kicks_the_old_connection_and_keeps_the_new_session() {
    let g = gateway();
    let http = g.http_addr();
    let mut old = client(g.tcp_addr(), Transport::Tcp, 7, "dup", "", &[1000]);
    let mut new = client(g.ws_addr(), Transport::WebSocket, 7, "dup", "", &[1000]);
    assert!(old.wait_closed(5 * SECOND), "the old connection is closed");
    eventually(5 * SECOND, "the kick to be counted", || {
        g.comet().stats().kicked_duplicate == 1
    });
    // The old connection's disconnect must not have removed the new session.
    let answer = push(
        http,
        "/goim/push/keys?operation=1000&keys=dup",
        "to the new one",
    );
    assert_eq!(answer["data"]["connections"], 1);
    assert_eq!(next_push(&mut new).1, "to the new one");
    g.shutdown();
}

#[test]
fn malformed_frames_close_only_that_connection() {
    let g = gateway();
    let http = g.http_addr();
    let mut good = client(g.tcp_addr(), Transport::Tcp, 1, "good", "", &[1000]);
    let before = g.comet().stats().closed_malformed;
    let oversized = {
        let mut f = frame::encode(1, op::HEARTBEAT, 1, &[]).to_vec();
        f[..4].copy_from_slice(&(1_000_000i32).to_be_bytes());
        f
    };
    let wrong_header_len = {
        let mut f = frame::encode(1, op::HEARTBEAT, 1, &[]).to_vec();
        f[5] = 12;
        f
    };
    let negative = {
        let mut f = frame::encode(1, op::HEARTBEAT, 1, &[]).to_vec();
        f[..4].copy_from_slice(&(-5i32).to_be_bytes());
        f
    };
    let garbage = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let bad_inputs = [oversized, wrong_header_len, negative, garbage];
    for (i, bytes) in bad_inputs.iter().enumerate() {
        // Before auth and after auth.
        let mut fresh = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
        fresh.send_bytes(bytes).unwrap();
        assert!(
            fresh.wait_closed(5 * SECOND),
            "bad input {i} before auth closes"
        );
        let mut authed = client(g.tcp_addr(), Transport::Tcp, 2, "", "", &[1000]);
        authed.send_bytes(bytes).unwrap();
        assert!(
            authed.wait_closed(5 * SECOND),
            "bad input {i} after auth closes"
        );
    }
    // The same over WebSocket: a message whose goim frame is malformed, and one that is not
    // a whole frame.
    let mut ws = client(g.ws_addr(), Transport::WebSocket, 3, "", "", &[1000]);
    ws.send_raw_frame(&bad_inputs[0]).unwrap();
    assert!(ws.wait_closed(5 * SECOND));
    let mut ws = client(g.ws_addr(), Transport::WebSocket, 3, "", "", &[1000]);
    ws.send_raw_frame(&frame::encode(1, op::HEARTBEAT, 1, b"xyz")[..18])
        .unwrap();
    assert!(ws.wait_closed(5 * SECOND));
    let expected = before + 2 * bad_inputs.len() as u64 + 2;
    eventually(5 * SECOND, "malformed closes to be counted", || {
        g.comet().stats().closed_malformed >= expected
    });
    push(
        http,
        "/goim/push/keys?operation=1000&keys=good",
        "still here",
    );
    assert_eq!(next_push(&mut good).1, "still here");
    assert!(good.heartbeat(1).is_ok());
    g.shutdown();
}

#[test]
fn half_frames_and_silence_run_into_the_handshake_timeout() {
    let g = gateway();
    let mut silent = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    let mut half = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    half.send_bytes(&frame::encode(1, op::AUTH, 1, b"{\"mid\":1}")[..10])
        .unwrap();
    let mut ws_silent = Client::connect(g.ws_addr(), Transport::WebSocket).unwrap();
    // Handshake timeout is 1 s in the test configuration.
    assert!(silent.wait_closed(5 * SECOND));
    assert!(half.wait_closed(5 * SECOND));
    assert!(ws_silent.wait_closed(5 * SECOND));
    assert!(g.comet().stats().handshake_timeouts >= 3);
    g.shutdown();
}

#[test]
fn connections_without_heartbeats_expire_while_others_live() {
    let mut config = test_config();
    config.logic.heartbeat = Duration::from_millis(500);
    config.logic.heartbeat_max = 2;
    let g = imgate::standalone::Gateway::start(config).unwrap();
    let mut quiet = client(g.tcp_addr(), Transport::Tcp, 1, "", "", &[]);
    let mut alive = client(g.ws_addr(), Transport::WebSocket, 2, "alive", "", &[1000]);
    let start = std::time::Instant::now();
    let mut seq = 1;
    // Expiry is 1 s; keep the other client heartbeating every 200 ms for 2.5 s.
    while start.elapsed() < Duration::from_millis(2500) {
        alive.heartbeat(seq).unwrap();
        seq += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(quiet.wait_closed(SECOND), "the silent connection expired");
    assert!(g.comet().stats().heartbeat_expired >= 1);
    push(
        g.http_addr(),
        "/goim/push/keys?operation=1000&keys=alive",
        "ok",
    );
    assert_eq!(next_push(&mut alive).1, "ok");
    g.shutdown();
}

#[test]
fn slow_consumers_are_closed_and_counted() {
    let mut config = test_config();
    config.comet.send_queue = 4;
    let g = imgate::standalone::Gateway::start(config).unwrap();
    let http_addr = g.http_addr();
    // Never reads its socket; big bodies fill the kernel buffers and then its queue.
    let _stuck = client(g.tcp_addr(), Transport::Tcp, 1, "stuck", "", &[1000]);
    let big = "x".repeat(60_000);
    eventually(
        20 * SECOND,
        "the stuck connection to be closed as slow",
        || {
            let a = http(
                http_addr,
                "POST",
                "/goim/push/keys?operation=1000&keys=stuck",
                big.as_bytes(),
            );
            assert_eq!(a.status, 200, "{:?}", a.json);
            g.comet().stats().closed_slow >= 1
        },
    );
    g.shutdown();
}

#[test]
fn bad_http_parameters_are_400_with_a_reason() {
    let g = gateway();
    let http_addr = g.http_addr();
    for path in [
        "/goim/push/keys?operation=abc&keys=k",
        "/goim/push/keys?operation=1000",
        "/goim/push/mids?operation=1000&mids=notanumber",
        "/goim/push/mids?operation=1000",
        "/goim/push/room?operation=1000&room=1",
        "/goim/push/room?operation=0&type=live&room=1",
        "/goim/push/all",
        "/goim/push/all?operation=1000&speed=-1",
    ] {
        let a = http(http_addr, "POST", path, b"x");
        assert_eq!(a.status, 400, "{path}: {:?}", a.json);
        assert_eq!(a.json["code"], -400, "{path}");
        assert!(
            !a.json["message"].as_str().unwrap_or("").is_empty(),
            "{path} has a reason"
        );
    }
    for path in [
        "/goim/online/top?type=live",
        "/goim/online/top?type=live&limit=0",
        "/goim/online/room?type=live",
    ] {
        let a = http(http_addr, "GET", path, b"");
        assert_eq!(a.status, 400, "{path}: {:?}", a.json);
    }
    g.shutdown();
}

#[test]
fn online_and_node_endpoints_describe_the_cluster() {
    let g = gateway();
    let http_addr = g.http_addr();
    let _a = client(g.tcp_addr(), Transport::Tcp, 1, "", "live://7", &[]);
    let _b = client(g.ws_addr(), Transport::WebSocket, 2, "", "live://7", &[]);
    let _c = client(g.tcp_addr(), Transport::Tcp, 3, "", "live://8", &[]);
    eventually(5 * SECOND, "online counts to reach logic", || {
        let a = http(
            http_addr,
            "GET",
            "/goim/online/room?type=live&rooms=7&rooms=8&rooms=9",
            b"",
        );
        a.json["data"]["7"] == 2 && a.json["data"]["8"] == 1 && a.json["data"]["9"] == 0
    });
    let top = http(http_addr, "GET", "/goim/online/top?type=live&limit=1", b"");
    assert_eq!(
        top.json["data"],
        serde_json::json!([{"room_id": "7", "count": 2}])
    );
    let total = http(http_addr, "GET", "/goim/online/total", b"");
    assert_eq!(total.json["data"]["conn_count"], 3);
    let nodes = http(http_addr, "GET", "/goim/nodes/weighted?platform=ios", b"");
    assert_eq!(nodes.json["code"], 0);
    assert_eq!(nodes.json["data"]["heartbeat_max"], 2);
    assert!(!nodes.json["data"]["nodes"].as_array().unwrap().is_empty());
    let instances = http(http_addr, "GET", "/goim/nodes/instances", b"");
    assert_eq!(instances.json["data"][0]["hostname"], g.comet().id());
    g.shutdown();
}

/// `/goim/nodes/weighted` names the ports the comet listens on, not goim's fixed 3101/3102.
#[test]
fn the_node_list_advertises_the_ports_the_comet_listens_on() {
    let g = gateway();
    let (tcp, ws) = (g.tcp_addr().port(), g.ws_addr().port());
    assert!(tcp != 3101 && ws != 3102, "the test needs other ports");
    let mut nodes = serde_json::Value::Null;
    eventually(5 * SECOND, "the comet in the node list", || {
        nodes = http(
            g.http_addr(),
            "GET",
            "/goim/nodes/weighted?platform=ios",
            b"",
        )
        .json;
        nodes["data"]["nodes"] == serde_json::json!(["127.0.0.1"])
    });
    let data = &nodes["data"];
    assert_eq!(
        (&data["tcp_port"], &data["ws_port"], &data["wss_port"]),
        (
            &serde_json::json!(tcp),
            &serde_json::json!(ws),
            &serde_json::json!(0)
        ),
        "{data}"
    );
    let web = http(
        g.http_addr(),
        "GET",
        "/goim/nodes/weighted?platform=web",
        b"",
    )
    .json;
    assert_eq!(web["data"]["ws_port"], ws);
    assert_eq!(
        web["data"]["nodes"],
        serde_json::json!([format!("{}.goim.io", g.comet().id())])
    );
    g.shutdown();
}

/// comet counts its own socket writes and the bytes they sent (what the benchmarks divide its
/// CPU by): every byte clients read was counted once, and a room push to idle members is
/// written by the fan-out itself.
#[test]
fn comet_counts_every_byte_it_writes_and_fans_out_inline() {
    use std::io::{Read, Write};
    let g = gateway();
    let mut raw: Vec<std::net::TcpStream> = (0..4)
        .map(|i| {
            let mut s = std::net::TcpStream::connect(g.tcp_addr()).unwrap();
            s.set_read_timeout(Some(5 * SECOND)).unwrap();
            let auth = auth_body(0, &format!("w{i}"), "live://w", &[]);
            s.write_all(&frame::encode(1, op::AUTH, 1, auth.as_bytes()))
                .unwrap();
            let mut reply = [0u8; 16];
            s.read_exact(&mut reply).unwrap();
            assert_eq!(&reply[8..12], &op::AUTH_REPLY.to_be_bytes());
            s
        })
        .collect();
    eventually(5 * SECOND, "every client registered", || {
        g.comet().stats().connections == 4
    });
    let bodies = ["a", "bb", "ccc", "dddd", "eeeee"];
    for body in bodies {
        push(
            g.http_addr(),
            "/goim/push/room?operation=1000&type=live&room=w",
            body,
        );
        // One at a time, so each is its own room batch and its own write.
        for s in &mut raw {
            let mut frame = vec![0u8; 16 + body.len()];
            s.read_exact(&mut frame).unwrap();
            assert_eq!(&frame[16..], body.as_bytes());
        }
    }
    let per_client: usize = 16 + bodies.iter().map(|b| 16 + b.len()).sum::<usize>();
    // A write is counted just after the syscall that a client may already have read from.
    eventually(5 * SECOND, "every byte counted", || {
        g.comet().stats().bytes_sent == (4 * per_client) as u64
    });
    let stats = g.comet().stats();
    assert_eq!(stats.bytes_sent, (4 * per_client) as u64, "counted once");
    // The auth replies and the pushes: at most one write each, at least one per client.
    assert!(
        (4..=4 * 6).contains(&stats.writes),
        "writes {}",
        stats.writes
    );
    assert!(
        stats.frames_written_at_once >= 4,
        "written at once: {}",
        stats.frames_written_at_once
    );
    g.shutdown();
}

/// A client message (op 4) is answered with op 5 and the same seq, never a hang or a close:
/// with no business configured, the answer is empty and counted.
#[test]
fn a_client_message_without_a_business_is_answered_empty() {
    let g = gateway();
    let mut c = client(g.tcp_addr(), Transport::Tcp, 5, "", "", &[]);
    c.send(1, op::SEND_MSG, 41, b"hello business").unwrap();
    let answer = c.recv_op(op::SEND_MSG_REPLY, 5 * SECOND).unwrap();
    assert_eq!((answer.seq, answer.body.len()), (41, 0));
    eventually(5 * SECOND, "the failure counted", || {
        g.comet().stats().upstream_failed == 1
    });
    // Still connected and served.
    assert!(c.heartbeat(42).is_ok());
    g.shutdown();
}
