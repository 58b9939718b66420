//! Many rooms per connection (ops 24–27) end to end: a connection in its main room and joined
//! rooms gets each room's pushes once and in order, online counts count it in every room, op 12
//! keeps goim's meaning, and joins are bounded by `max_rooms_per_conn`, the token's `rooms`
//! claim and the room name's length.

mod support;

use std::time::Duration;

use imgate::client::{Client, Transport};
use imgate_shared::frame::op;
use support::*;

const WAIT: Duration = Duration::from_secs(5);

fn room_push(g: &imgate::standalone::Gateway, room: &str, body: &str) {
    push(
        g.http_addr(),
        &format!("/goim/push/room?operation=1000&type=live&room={room}"),
        body,
    );
}

/// Sends `op` with `body` and returns the reply's body (the reply must be `reply_op`).
fn ask(c: &mut Client, op: i32, reply_op: i32, seq: i32, body: &[u8]) -> Vec<u8> {
    c.send(1, op, seq, body).unwrap();
    let f = c.recv_op(reply_op, WAIT).expect("a reply");
    assert_eq!(f.seq, seq);
    f.body
}

fn online(g: &imgate::standalone::Gateway, rooms: &[&str]) -> serde_json::Value {
    let query: Vec<String> = rooms.iter().map(|r| format!("rooms={r}")).collect();
    let a = http(
        g.http_addr(),
        "GET",
        &format!("/goim/online/room?type=live&{}", query.join("&")),
        b"",
    );
    a.json["data"].clone()
}

#[test]
fn a_connection_gets_every_room_it_joined_once_and_in_order() {
    let g = gateway();
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let addr = match transport {
            Transport::Tcp => g.tcp_addr(),
            Transport::WebSocket => g.ws_addr(),
        };
        let mut c = client(addr, transport, 0, "", "live://main", &[]);
        assert_eq!(
            ask(&mut c, op::JOIN, op::JOIN_REPLY, 2, b"live://a"),
            b"live://a"
        );
        assert_eq!(
            ask(&mut c, op::JOIN, op::JOIN_REPLY, 3, b"live://b"),
            b"live://b"
        );
        // Joining again (or joining the main room) changes nothing and is not refused.
        assert_eq!(
            ask(&mut c, op::JOIN, op::JOIN_REPLY, 4, b"live://a"),
            b"live://a"
        );
        assert_eq!(
            ask(&mut c, op::JOIN, op::JOIN_REPLY, 5, b"live://main"),
            b"live://main"
        );

        for i in 0..3 {
            for room in ["main", "a", "b"] {
                room_push(&g, room, &format!("{room}{i}"));
            }
        }
        let mut got: Vec<String> = (0..9).map(|_| next_push(&mut c).1).collect();
        // In order within each room, once each.
        for room in ["main", "a", "b"] {
            let mine: Vec<&String> = got.iter().filter(|b| b.starts_with(room)).collect();
            assert_eq!(
                mine,
                [
                    &format!("{room}0"),
                    &format!("{room}1"),
                    &format!("{room}2")
                ]
            );
        }
        got.sort();
        got.dedup();
        assert_eq!(got.len(), 9);

        // Leaving a joined room stops it; a room it is not in is answered empty.
        assert_eq!(
            ask(&mut c, op::LEAVE, op::LEAVE_REPLY, 6, b"live://a"),
            b"live://a"
        );
        assert_eq!(ask(&mut c, op::LEAVE, op::LEAVE_REPLY, 7, b"live://a"), b"");
        room_push(&g, "a", "gone");
        room_push(&g, "b", "sentinel");
        assert_eq!(next_push(&mut c).1, "sentinel");
        drop(c);
    }
    g.shutdown();
}

#[test]
fn online_counts_count_a_connection_in_every_room_and_op_12_keeps_goims_meaning() {
    let g = gateway();
    let mut c = client(g.tcp_addr(), Transport::Tcp, 0, "", "live://x", &[]);
    ask(&mut c, op::JOIN, op::JOIN_REPLY, 2, b"live://y");
    eventually(WAIT, "both rooms counted", || {
        let data = online(&g, &["x", "y"]);
        data["x"] == 1 && data["y"] == 1
    });
    // The heartbeat reply carries the main room's count.
    assert_eq!(c.heartbeat(3).unwrap(), 1);

    // Op 12 to a joined room makes it the main room; the connection is in it once.
    assert_eq!(
        ask(
            &mut c,
            op::CHANGE_ROOM,
            op::CHANGE_ROOM_REPLY,
            4,
            b"live://y"
        ),
        b"live://y"
    );
    room_push(&g, "y", "once");
    room_push(&g, "x", "not any more");
    room_push(&g, "y", "sentinel");
    assert_eq!(next_push(&mut c).1, "once");
    assert_eq!(next_push(&mut c).1, "sentinel");
    eventually(WAIT, "x left", || {
        let data = online(&g, &["x", "y"]);
        data["x"] == 0 && data["y"] == 1
    });
    // Leaving the main room leaves it.
    assert_eq!(
        ask(&mut c, op::LEAVE, op::LEAVE_REPLY, 5, b"live://y"),
        b"live://y"
    );
    eventually(WAIT, "y left", || online(&g, &["y"])["y"] == 0);
    g.shutdown();
}

#[test]
fn joins_are_bounded_by_the_limit_and_the_name_and_wait_for_auth() {
    let mut config = test_config();
    config.comet.max_rooms_per_conn = 3;
    let g = imgate::standalone::Gateway::start(config).expect("gateway starts");
    // A join before auth is not served (goim ignores everything before auth).
    let mut c = Client::connect(g.tcp_addr(), Transport::Tcp).unwrap();
    c.send(1, op::JOIN, 9, b"live://early").unwrap();
    c.auth(&auth_body(0, "", "live://m", &[])).unwrap();
    assert_eq!(
        ask(&mut c, op::JOIN, op::JOIN_REPLY, 2, b"live://1"),
        b"live://1"
    );
    assert_eq!(
        ask(&mut c, op::JOIN, op::JOIN_REPLY, 3, b"live://2"),
        b"live://2"
    );
    // Main room plus two joined: the fourth is refused, with an empty reply, and counted.
    assert_eq!(ask(&mut c, op::JOIN, op::JOIN_REPLY, 4, b"live://3"), b"");
    assert_eq!(g.comet().stats().room_limit, 1);
    // Not a valid name: empty, over-long, not UTF-8.
    let long = format!("live://{}", "r".repeat(300));
    assert_eq!(
        ask(&mut c, op::LEAVE, op::LEAVE_REPLY, 5, b"live://1"),
        b"live://1"
    );
    assert_eq!(
        ask(&mut c, op::JOIN, op::JOIN_REPLY, 6, long.as_bytes()),
        b""
    );
    assert_eq!(ask(&mut c, op::JOIN, op::JOIN_REPLY, 7, b""), b"");
    assert_eq!(ask(&mut c, op::JOIN, op::JOIN_REPLY, 8, &[0xff, 0xfe]), b"");
    // The early join never took effect: its room's pushes do not come.
    room_push(&g, "early", "no");
    room_push(&g, "2", "yes");
    assert_eq!(next_push(&mut c).1, "yes");
    g.shutdown();
}

/// Found by probing: op 12 read its name lossily, so `\xff\xfeabc` and `\xfd\xfcabc` landed
/// in one room. A name that is not UTF-8 is refused like op 24's: an empty op 13, counted,
/// and the connection stays in its room.
#[test]
fn a_room_change_to_a_name_that_is_not_utf8_is_refused() {
    let g = gateway();
    let mut a = client(g.tcp_addr(), Transport::Tcp, 0, "", "live://m", &[]);
    let mut b = client(g.tcp_addr(), Transport::Tcp, 0, "", "live://m", &[]);
    assert_eq!(
        ask(
            &mut a,
            op::CHANGE_ROOM,
            op::CHANGE_ROOM_REPLY,
            2,
            b"\xff\xfeabc"
        ),
        b""
    );
    assert_eq!(
        ask(
            &mut b,
            op::CHANGE_ROOM,
            op::CHANGE_ROOM_REPLY,
            2,
            b"\xfd\xfcabc"
        ),
        b""
    );
    assert_eq!(g.comet().stats().room_refused, 2);
    // Both are still in their room, and a valid change still works.
    room_push(&g, "m", "still here");
    assert_eq!(next_push(&mut a).1, "still here");
    assert_eq!(next_push(&mut b).1, "still here");
    assert_eq!(
        ask(
            &mut a,
            op::CHANGE_ROOM,
            op::CHANGE_ROOM_REPLY,
            3,
            b"live://n"
        ),
        b"live://n"
    );
    eventually(WAIT, "one in each room", || {
        let data = online(&g, &["m", "n"]);
        data["m"] == 1 && data["n"] == 1
    });
    g.shutdown();
}

/// A shard of many rooms reports them in parts (a report of one frame had no bound: past 16 MiB
/// of room names the link refused it, every report); logic counts every room either way.
#[test]
fn a_shard_with_many_rooms_reports_them_all() {
    const ROOMS: usize = 600;
    let mut config = test_config();
    config.comet.max_rooms_per_conn = ROOMS;
    config.comet.upstream_burst = 2 * ROOMS as u32;
    config.comet.upstream_rate = 10 * ROOMS as u32;
    let g = imgate::standalone::Gateway::start(config).expect("gateway starts");
    let mut c = client(g.tcp_addr(), Transport::Tcp, 0, "", "", &[]);
    // 600 rooms of 256-byte names: ~160 KB of report, three parts.
    let name = |i: usize| format!("{i:0>249}");
    for i in 0..ROOMS {
        let room = format!("live://{}", name(i));
        assert_eq!(
            ask(&mut c, op::JOIN, op::JOIN_REPLY, i as i32, room.as_bytes()),
            room.as_bytes()
        );
    }
    let sample = [0, 1, ROOMS / 2, ROOMS - 2, ROOMS - 1].map(name);
    eventually(WAIT, "every part counted", || {
        let data = online(&g, &sample.iter().map(String::as_str).collect::<Vec<_>>());
        sample.iter().all(|r| data[r] == 1)
    });
    eventually(WAIT, "all the rooms counted", || {
        let a = http(g.http_addr(), "GET", "/status.json", b"");
        a.json["logic"]["rooms"] == ROOMS
    });
    g.shutdown();
}

/// Splits an op-28 body into its room and its frames (op, seq, body).
fn tagged(body: &[u8]) -> (String, Vec<(i32, i32, String)>) {
    let len = u16::from_be_bytes([body[0], body[1]]) as usize;
    let room = String::from_utf8(body[2..2 + len].to_vec()).unwrap();
    let frames = imgate_shared::frame::split_frames(&body[2 + len..])
        .map(|f| {
            let (h, b) = f.unwrap();
            (h.op, h.seq, String::from_utf8_lossy(b).to_string())
        })
        .collect();
    (room, frames)
}

/// A client that asks for room tags (auth `"room_tags": true`) gets each room's pushes and
/// history in an op-28 frame naming the room; one that does not gets goim's forms.
#[test]
fn room_pushes_and_history_come_tagged_with_their_room_when_asked() {
    let g = gateway();
    for transport in [Transport::Tcp, Transport::WebSocket] {
        let addr = match transport {
            Transport::Tcp => g.tcp_addr(),
            Transport::WebSocket => g.ws_addr(),
        };
        let mut c = Client::connect(addr, transport).unwrap();
        let auth = serde_json::json!({"mid": 0, "room_id": "live://t1", "room_tags": true});
        c.auth(&auth.to_string()).unwrap();
        ask(&mut c, op::JOIN, op::JOIN_REPLY, 2, b"live://t2");
        let mut plain = client(addr, transport, 0, "", "live://t1", &[]);

        push(
            g.http_addr(),
            "/goim/push/room?operation=1000&type=live&room=t2&history=1",
            "two",
        );
        let f = c.recv_op(op::ROOM, WAIT).unwrap();
        let (room, frames) = tagged(&f.body);
        assert_eq!(room, "live://t2");
        assert_eq!(frames.len(), 1);
        let (op, seq, body) = &frames[0];
        assert_eq!((*op, body.as_str()), (1000, "two"));
        assert!(*seq >= 1, "with its room sequence");
        room_push(&g, "t1", "one");
        let (room, frames) = tagged(&c.recv_op(op::ROOM, WAIT).unwrap().body);
        assert_eq!((room.as_str(), frames[0].2.as_str()), ("live://t1", "one"));
        // goim's form for the client that did not ask.
        assert_eq!(next_push(&mut plain), (1000, "one".to_string()));

        // A room's history by op 22 comes tagged too.
        c.send(1, op::SYNC, 9, b"live://t2 0").unwrap();
        let (room, frames) = tagged(&c.recv_op(op::ROOM, WAIT).unwrap().body);
        assert_eq!(room, "live://t2");
        assert!(frames.iter().all(|(op, seq, _)| *op == 1000 && *seq >= 1));
        assert_eq!(c.recv_op(op::SYNC_REPLY, WAIT).unwrap().seq, 9);
    }
    g.shutdown();
}
