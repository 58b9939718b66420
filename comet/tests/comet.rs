//! Starts a real comet on port 0 against a tiny in-test logic responder and talks to it over
//! real sockets: goim TCP and WebSocket clients, and a job-style link connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use imgate_shared::config::CometConfig;
use imgate_shared::frame::{self, op};
use imgate_shared::link::{
    self, Body, ConnectReply, Envelope, Failure, InboxAck, InboxMessages, InboxRead, LinkHello,
    PushKeys, PushRoom, ShardKeys, Stored,
};
use imgate_shared::ws::{self, opcode};

const WAIT: Duration = Duration::from_secs(5);

/// What the logic stand-in was told.
#[derive(Clone, Default)]
struct Seen {
    disconnects: Arc<Mutex<Vec<String>>>,
    acks: Arc<Mutex<Vec<InboxAck>>>,
    reads: Arc<Mutex<Vec<InboxRead>>>,
    /// Connections whose connect catch-up read was answered.
    caught_up: Arc<Mutex<std::collections::HashSet<(String, u64)>>>,
    /// The connection holding each key, as logic's store would: a connect names the one it
    /// replaced.
    holders: Arc<Mutex<std::collections::HashMap<String, link::ConnRef>>>,
}

impl Seen {
    fn acks_of(&self, mid: i64) -> Vec<u64> {
        let acks = self.acks.lock().unwrap();
        acks.iter()
            .filter(|a| a.mid == mid)
            .map(|a| a.seq)
            .collect()
    }
}

fn stored(seq: u64, op: i32, body: String) -> Stored {
    Stored {
        seq,
        op,
        body: Bytes::from(body),
    }
}

/// A logic stand-in: token "bad" is refused, token "short" gets a 300 ms heartbeat, any other
/// token becomes the key; everyone joins room `live://1` watching op 1000.
///
/// Stored messages: token `inbox-<mid>[-acks]` is user `mid` (announcing acks with the
/// suffix) with backlog seqs 1..=3 (op 1000, body `m<seq>`); token `anon` has mid 0; others
/// mid 1 and no backlog. An inbox read after N answers seqs N+1..=5; a read of room `fail`
/// fails; any other room answers two op-2000 messages with seqs N+101, N+102.
fn fake_logic(seen: Seen) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut buf = BytesMut::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(env) = link::decode_frame(&mut buf).unwrap() {
                        let answer = match env.body {
                            Some(Body::Connect(c)) => {
                                let token = String::from_utf8_lossy(&c.token).to_string();
                                if token == "bad" {
                                    Body::Error(Failure {
                                        message: "refused".into(),
                                        ..Default::default()
                                    })
                                } else {
                                    let mut reply = ConnectReply {
                                        mid: 1,
                                        heartbeat_ms: if token == "short" { 300 } else { 60_000 },
                                        key: token.clone(),
                                        room: "live://1".into(),
                                        accepts: vec![1000],
                                        acks: false,
                                        backlog: Vec::new(),
                                        inbox_floor: 0,
                                        allowed_rooms: Vec::new(),
                                        rooms_limited: false,
                                        replaced: None,
                                        room_tags: false,
                                        expire_at: 0,
                                    };
                                    if let Some(conn) = c.conn.clone() {
                                        reply.replaced = seen
                                            .holders
                                            .lock()
                                            .unwrap()
                                            .insert(token.clone(), conn);
                                    }
                                    if token == "anon" {
                                        reply.mid = 0;
                                    }
                                    if let Some(rest) = token.strip_prefix("inbox-") {
                                        let mid = rest.split('-').next().unwrap();
                                        reply.mid = mid.parse().unwrap();
                                        reply.acks = rest.ends_with("-acks");
                                        reply.backlog = (1..=3)
                                            .map(|seq| stored(seq, 1000, format!("m{seq}")))
                                            .collect();
                                    }
                                    Body::ConnectReply(reply)
                                }
                            }
                            Some(Body::InboxAck(a)) => {
                                seen.acks.lock().unwrap().push(a);
                                Body::Ok(link::Empty {})
                            }
                            Some(Body::InboxRead(r))
                                if r.room.is_empty()
                                    && seen.caught_up.lock().unwrap().insert(
                                        r.conn
                                            .as_ref()
                                            .map(|c| (c.comet.clone(), c.conn_id))
                                            .unwrap_or_default(),
                                    ) =>
                            {
                                // Each connection's first inbox read is comet's connect
                                // catch-up: this stand-in stores nothing beyond the backlog.
                                Body::InboxMessages(InboxMessages::default())
                            }
                            Some(Body::InboxRead(r)) => {
                                seen.reads.lock().unwrap().push(r.clone());
                                if r.room == "fail" {
                                    Body::Error(Failure {
                                        message: "no such room".into(),
                                        ..Default::default()
                                    })
                                } else if r.room.is_empty() {
                                    Body::InboxMessages(InboxMessages {
                                        messages: (r.after + 1..=5)
                                            .map(|seq| stored(seq, 1000, format!("m{seq}")))
                                            .collect(),
                                        more: false,
                                    })
                                } else {
                                    Body::InboxMessages(InboxMessages {
                                        messages: (r.after + 101..=r.after + 102)
                                            .map(|seq| stored(seq, 2000, format!("h{seq}")))
                                            .collect(),
                                        more: false,
                                    })
                                }
                            }
                            Some(Body::RenewOnline(_)) => {
                                Body::RenewOnlineReply(link::RenewOnlineReply {
                                    rooms: vec![link::RoomCount::new("live://1".into(), 42)],
                                })
                            }
                            Some(Body::Disconnect(d)) => {
                                seen.disconnects.lock().unwrap().push(d.key);
                                Body::Ok(link::Empty {})
                            }
                            _ => Body::Ok(link::Empty {}),
                        };
                        if stream
                            .write_all(&Envelope::new(env.id, answer).to_frame())
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

fn tcp_client(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&frame::encode(1, op::AUTH, 1, token.as_bytes()))
        .unwrap();
    s
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<(i32, i32, Vec<u8>)> {
    let mut header = [0u8; 16];
    s.read_exact(&mut header)?;
    let h = frame::decode_header(&header, 1 << 20).unwrap().unwrap();
    let mut body = vec![0u8; h.body_len()];
    s.read_exact(&mut body)?;
    Ok((h.op, h.seq, body))
}

fn ws_client(addr: SocketAddr, token: &str) -> TcpStream {
    let mut s = ws_upgraded(addr);
    let auth = frame::encode(1, op::AUTH, 1, token.as_bytes());
    s.write_all(&ws::encode_client_frame(
        opcode::BINARY,
        &auth,
        [7, 7, 7, 7],
    ))
    .unwrap();
    s
}

/// A WebSocket connection past its upgrade, not authenticated.
fn ws_upgraded(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

fn read_ws_message(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut l = [0u8; 2];
            s.read_exact(&mut l)?;
            u16::from_be_bytes(l) as usize
        }
        127 => {
            let mut l = [0u8; 8];
            s.read_exact(&mut l)?;
            u64::from_be_bytes(l) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((h[0] & 0x0f, payload))
}

fn expect_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) => panic!("expected the server to close, got {e}"),
        }
    }
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn send_link(link: &mut TcpStream, body: Body) {
    link.write_all(&Envelope::new(0, body).to_frame()).unwrap();
}

#[test]
fn comet_serves_tcp_and_websocket_clients() {
    let seen = Seen::default();
    let disconnects = seen.disconnects.clone();
    let logic = fake_logic(seen);
    let config = CometConfig {
        tcp_bind: vec![([127, 0, 0, 1], 0).into()],
        ws_bind: vec![([127, 0, 0, 1], 0).into()],
        link_bind: ([127, 0, 0, 1], 0).into(),
        logic_addrs: vec![logic.to_string()],
        shards: 2,
        pin: false,
        handshake_timeout: Duration::from_millis(500),
        online_interval: Duration::from_millis(100),
        logic_timeout: Duration::from_secs(2),
        ..CometConfig::default()
    };
    let comet = imgate_comet::start(&config).unwrap();
    assert!(comet.id().starts_with("comet-"));
    let (tcp, wsa) = (comet.tcp_addrs()[0], comet.ws_addrs()[0]);

    // TCP auth and heartbeat.
    let mut alice = tcp_client(tcp, "alice");
    assert_eq!(read_frame(&mut alice).unwrap(), (op::AUTH_REPLY, 1, vec![]));
    alice
        .write_all(&frame::encode(1, op::HEARTBEAT, 2, b""))
        .unwrap();
    let (hb_op, hb_seq, hb_body) = read_frame(&mut alice).unwrap();
    assert_eq!((hb_op, hb_seq, hb_body.len()), (op::HEARTBEAT_REPLY, 2, 4));
    assert!(i32::from_be_bytes(hb_body.try_into().unwrap()) >= 1);

    // WebSocket auth.
    let mut bob = ws_client(wsa, "bob");
    let (code, payload) = read_ws_message(&mut bob).unwrap();
    assert_eq!(code, opcode::BINARY);
    assert_eq!(payload, frame::encode(1, op::AUTH_REPLY, 1, b"").to_vec());
    assert_eq!(comet.stats().connections, 2);

    // Key pushes over a real link connection: the raw frame on TCP, an OpRaw batch on WS.
    let mut link = TcpStream::connect(comet.link_addr()).unwrap();
    let targets: Vec<ShardKeys> = (0..2)
        .map(|shard| ShardKeys {
            shard,
            keys: vec!["alice".into(), "bob".into()],
        })
        .collect();
    let unwatched = frame::encode(1, 1001, 0, b"nope");
    send_link(
        &mut link,
        Body::PushKeys(PushKeys {
            targets: targets.clone(),
            op: 1001,
            frame: unwatched,
            seq: 0,
            mid: 0,
        }),
    );
    let hello = frame::encode(1, 1000, 0, b"hello");
    send_link(
        &mut link,
        Body::PushKeys(PushKeys {
            targets,
            op: 1000,
            frame: hello.clone(),
            seq: 0,
            mid: 0,
        }),
    );
    assert_eq!(
        read_frame(&mut alice).unwrap(),
        (1000, 0, b"hello".to_vec())
    );
    let (code, payload) = read_ws_message(&mut bob).unwrap();
    assert_eq!(code, opcode::BINARY);
    let mut expected = BytesMut::new();
    frame::put_header(&mut expected, 16 + hello.len(), 1, op::RAW, 0);
    expected.extend_from_slice(&hello);
    assert_eq!(payload, expected.to_vec());

    // A room batch reaches both members, whatever their watch set.
    let mut batch = BytesMut::new();
    frame::encode_into(&mut batch, 1, 2000, 0, b"r1");
    frame::encode_into(&mut batch, 1, 2000, 0, b"r2");
    send_link(
        &mut link,
        Body::PushRoom(PushRoom {
            room: "live://1".into(),
            frames: Bytes::from(batch.to_vec()),
            count: 2,
        }),
    );
    assert_eq!(read_frame(&mut alice).unwrap(), (2000, 0, b"r1".to_vec()));
    assert_eq!(read_frame(&mut alice).unwrap(), (2000, 0, b"r2".to_vec()));
    let (_, payload) = read_ws_message(&mut bob).unwrap();
    assert_eq!(&payload[16..], &batch[..]);

    // Sub/unsub and change-room replies echo the body.
    alice
        .write_all(&frame::encode(1, op::SUB, 3, b"1001,1002"))
        .unwrap();
    assert_eq!(
        read_frame(&mut alice).unwrap(),
        (op::SUB_REPLY, 3, b"1001,1002".to_vec())
    );
    alice
        .write_all(&frame::encode(1, op::CHANGE_ROOM, 4, b"live://2"))
        .unwrap();
    assert_eq!(
        read_frame(&mut alice).unwrap(),
        (op::CHANGE_ROOM_REPLY, 4, b"live://2".to_vec())
    );
    alice.write_all(&frame::encode(1, 5000, 5, b"up")).unwrap();
    assert_eq!(read_frame(&mut alice).unwrap(), (5000, 5, vec![]));

    // Garbage closes only that connection.
    let mut carol = tcp_client(tcp, "carol");
    assert_eq!(read_frame(&mut carol).unwrap().0, op::AUTH_REPLY);
    carol.write_all(&[0xde; 16]).unwrap();
    expect_closed(&mut carol);
    alice
        .write_all(&frame::encode(1, op::HEARTBEAT, 6, b""))
        .unwrap();
    assert_eq!(read_frame(&mut alice).unwrap().0, op::HEARTBEAT_REPLY);
    wait_for("malformed count", || comet.stats().closed_malformed == 1);
    wait_for("carol's disconnect", || {
        disconnects.lock().unwrap().contains(&"carol".to_string())
    });

    // Refused auth (told why with op 6), handshake timeout, heartbeat expiry, bad upgrade.
    let mut dave = tcp_client(tcp, "bad");
    let (refused_op, _, refusal) = read_frame(&mut dave).unwrap();
    assert_eq!(
        (refused_op, refusal.as_slice()),
        (op::DISCONNECT_REPLY, &b"refused"[..])
    );
    expect_closed(&mut dave);
    let mut idle = TcpStream::connect(tcp).unwrap();
    idle.set_read_timeout(Some(WAIT)).unwrap();
    expect_closed(&mut idle);
    let mut short = tcp_client(tcp, "short");
    assert_eq!(read_frame(&mut short).unwrap().0, op::AUTH_REPLY);
    expect_closed(&mut short);
    let mut lost = TcpStream::connect(wsa).unwrap();
    lost.set_read_timeout(Some(WAIT)).unwrap();
    lost.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    lost.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    // The same key again kicks the older connection.
    let mut alice2 = tcp_client(tcp, "alice");
    assert_eq!(read_frame(&mut alice2).unwrap().0, op::AUTH_REPLY);
    expect_closed(&mut alice);

    wait_for("counters", || {
        let s = comet.stats();
        s.auth_failed == 1
            && s.handshake_timeouts == 1
            && s.heartbeat_expired == 1
            && s.kicked_duplicate == 1
            && s.closed_malformed == 2
            && s.connections == 2
    });
    let stats = comet.stats();
    assert!(stats.frames_queued >= 4, "{stats:?}");
    assert!(stats.push_dropped_no_key >= 2, "{stats:?}");

    comet.shutdown();
    expect_closed(&mut bob);
    expect_closed(&mut alice2);
    // The ports are free again.
    TcpListener::bind(tcp).unwrap();
    TcpListener::bind(wsa).unwrap();
}

/// Found by probing: a close frame no peer may send (code 999, a one-byte payload) was echoed
/// back; RFC 6455 asks for 1002, and 1007 for a reason that is not UTF-8. Before auth as after.
#[test]
fn a_close_frame_no_peer_may_send_is_answered_with_a_protocol_error() {
    let logic = fake_logic(Seen::default());
    let comet = imgate_comet::start(&small_config(logic)).unwrap();
    let addr = comet.ws_addrs()[0];
    let cases: [(&[u8], u16); 4] = [
        (&999u16.to_be_bytes(), 1002),
        (&[3], 1002),
        (&[0x03, 0xe8, 0xff, 0xfe], 1007),
        (&[0x0f, 0xa0, b'o', b'k'], 4000),
    ];
    for (authenticated, (payload, answer)) in [false, true]
        .into_iter()
        .flat_map(|a| cases.iter().map(move |c| (a, c)))
    {
        let mut s = if authenticated {
            let mut s = ws_client(addr, "closer");
            assert_eq!(read_ws_message(&mut s).unwrap().0, opcode::BINARY);
            s
        } else {
            ws_upgraded(addr)
        };
        s.write_all(&ws::encode_client_frame(
            opcode::CLOSE,
            payload,
            [9, 8, 7, 6],
        ))
        .unwrap();
        assert_eq!(
            read_ws_message(&mut s).unwrap(),
            (opcode::CLOSE, answer.to_be_bytes().to_vec()),
            "{payload:?}, authenticated: {authenticated}"
        );
        expect_closed(&mut s);
    }
    comet.shutdown();
}

/// Found by probing: an HTTP/1.0 upgrade was answered 101; RFC 6455 needs HTTP/1.1.
#[test]
fn an_http_1_0_upgrade_gets_400() {
    let logic = fake_logic(Seen::default());
    let comet = imgate_comet::start(&small_config(logic)).unwrap();
    let mut s = TcpStream::connect(comet.ws_addrs()[0]).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(b"GET /sub HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("HTTP/1.1"), "says why: {answer}");
    wait_for("the malformed close counted", || {
        comet.stats().closed_malformed == 1
    });
    comet.shutdown();
}

fn small_config(logic: SocketAddr) -> CometConfig {
    CometConfig {
        tcp_bind: vec![([127, 0, 0, 1], 0).into()],
        ws_bind: vec![([127, 0, 0, 1], 0).into()],
        link_bind: ([127, 0, 0, 1], 0).into(),
        logic_addrs: vec![logic.to_string()],
        shards: 1,
        pin: false,
        send_queue: 4,
        ..CometConfig::default()
    }
}

#[test]
fn several_comets_in_one_process_and_slow_consumers() {
    let logic = fake_logic(Seen::default());
    let starters: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || imgate_comet::start(&small_config(logic)).unwrap()))
        .collect();
    let comets: Vec<_> = starters.into_iter().map(|t| t.join().unwrap()).collect();
    let mut ids: Vec<_> = comets.iter().map(|c| c.id().to_string()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 3);

    for comet in &comets {
        // WebSocket ping is answered with a pong, close with a close.
        let mut ws_conn = ws_client(comet.ws_addrs()[0], "w");
        assert_eq!(read_ws_message(&mut ws_conn).unwrap().0, opcode::BINARY);
        ws_conn
            .write_all(&ws::encode_client_frame(opcode::PING, b"p", [1, 2, 3, 4]))
            .unwrap();
        assert_eq!(
            read_ws_message(&mut ws_conn).unwrap(),
            (opcode::PONG, b"p".to_vec())
        );
        ws_conn
            .write_all(&ws::encode_client_frame(
                opcode::CLOSE,
                &1000u16.to_be_bytes(),
                [1, 2, 3, 4],
            ))
            .unwrap();
        assert_eq!(
            read_ws_message(&mut ws_conn).unwrap(),
            (opcode::CLOSE, 1000u16.to_be_bytes().to_vec())
        );
        expect_closed(&mut ws_conn);
    }

    // A client that never reads is closed once its queue overflows; a reading one is not.
    let comet = &comets[0];
    let mut sleeper = tcp_client(comet.tcp_addrs()[0], "sleeper");
    assert_eq!(read_frame(&mut sleeper).unwrap().0, op::AUTH_REPLY);
    let mut link = TcpStream::connect(comet.link_addr()).unwrap();
    let big = frame::encode(1, 1000, 0, &vec![b'x'; 60_000]);
    for _ in 0..600 {
        let push = PushKeys {
            targets: vec![ShardKeys {
                shard: 0,
                keys: vec!["sleeper".into()],
            }],
            op: 1000,
            frame: big.clone(),
            seq: 0,
            mid: 0,
        };
        if link
            .write_all(&Envelope::new(0, Body::PushKeys(push)).to_frame())
            .is_err()
        {
            break;
        }
        if comet.stats().closed_slow > 0 {
            break;
        }
    }
    wait_for("slow close", || comet.stats().closed_slow == 1);
    assert_eq!(comet.stats().connections, 0);
    drop(sleeper);

    for comet in comets {
        let tcp = comet.tcp_addrs()[0];
        let link_addr = comet.link_addr();
        comet.shutdown();
        TcpListener::bind(tcp).unwrap();
        TcpListener::bind(link_addr).unwrap();
    }
}

/// A stored message as a client sees it: (op, header seq, body).
fn m(seq: u64) -> (i32, i32, Vec<u8>) {
    (1000, seq as i32, format!("m{seq}").into_bytes())
}

/// A stored push of user `mid`'s message `seq` to `key` (shard 0).
fn stored_push(key: &str, seq: u64, mid: i64) -> Body {
    Body::PushKeys(PushKeys {
        targets: vec![ShardKeys {
            shard: 0,
            keys: vec![key.into()],
        }],
        op: 1000,
        frame: frame::encode(1, 1000, seq as i32, format!("m{seq}").as_bytes()),
        seq,
        mid,
    })
}

fn ws_send(s: &mut TcpStream, f: &[u8]) {
    s.write_all(&ws::encode_client_frame(opcode::BINARY, f, [3, 1, 4, 1]))
        .unwrap();
}

/// One WebSocket message's goim frames (an OpRaw batch unpacked).
fn read_ws_frames(s: &mut TcpStream) -> Vec<(i32, i32, Vec<u8>)> {
    let (code, payload) = read_ws_message(s).unwrap();
    assert_eq!(code, opcode::BINARY);
    let (h, body) = frame::decode_exact(&payload, 1 << 20).unwrap();
    if h.op != op::RAW {
        return vec![(h.op, h.seq, body.to_vec())];
    }
    frame::split_frames(body)
        .map(|f| f.unwrap())
        .map(|(h, b)| (h.op, h.seq, b.to_vec()))
        .collect()
}

/// Lets in-flight notices reach the logic stand-in.
fn settle() {
    std::thread::sleep(Duration::from_millis(200));
}

#[test]
fn stored_messages_backlog_dedup_acks_and_sync() {
    let seen = Seen::default();
    let comet = imgate_comet::start(&small_config(fake_logic(seen.clone()))).unwrap();
    let (tcp, wsa) = (comet.tcp_addrs()[0], comet.ws_addrs()[0]);
    let mut link = TcpStream::connect(comet.link_addr()).unwrap();

    // A plain goim client: the backlog follows the auth reply, in order, seqs in the headers,
    // and counts as delivered once written.
    let mut plain = tcp_client(tcp, "inbox-7");
    assert_eq!(read_frame(&mut plain).unwrap(), (op::AUTH_REPLY, 1, vec![]));
    for seq in 1..=3 {
        assert_eq!(read_frame(&mut plain).unwrap(), m(seq));
    }
    wait_for("the backlog's ack", || seen.acks_of(7) == vec![3]);
    {
        let acks = seen.acks.lock().unwrap();
        let conn = acks[0].conn.as_ref().unwrap();
        assert_eq!(conn.comet, comet.id());
    }
    // A stored push the backlog covered is dropped; a newer one arrives and is reported.
    send_link(&mut link, stored_push("inbox-7", 3, 7));
    send_link(&mut link, stored_push("inbox-7", 4, 7));
    assert_eq!(read_frame(&mut plain).unwrap(), m(4));
    wait_for("the push's ack", || seen.acks_of(7) == vec![3, 4]);
    assert_eq!(comet.stats().push_dropped_duplicate, 1);
    // Inbox sync: the messages, then the reply; what was written is reported.
    plain
        .write_all(&frame::encode(1, op::SYNC, 11, b"2"))
        .unwrap();
    for seq in 3..=5 {
        assert_eq!(read_frame(&mut plain).unwrap(), m(seq));
    }
    assert_eq!(
        read_frame(&mut plain).unwrap(),
        (op::SYNC_REPLY, 11, b"2".to_vec())
    );
    wait_for("the sync's ack", || seen.acks_of(7) == vec![3, 4, 5]);
    // The sync moved the connection past 5.
    send_link(&mut link, stored_push("inbox-7", 5, 7));
    send_link(&mut link, stored_push("inbox-7", 6, 7));
    assert_eq!(read_frame(&mut plain).unwrap(), m(6));
    wait_for("ack 6", || seen.acks_of(7) == vec![3, 4, 5, 6]);
    assert_eq!(comet.stats().push_dropped_duplicate, 2);
    // Room history is delivered but never reported.
    plain
        .write_all(&frame::encode(1, op::SYNC, 12, b"live://1 0"))
        .unwrap();
    assert_eq!(
        read_frame(&mut plain).unwrap(),
        (2000, 101, b"h101".to_vec())
    );
    assert_eq!(
        read_frame(&mut plain).unwrap(),
        (2000, 102, b"h102".to_vec())
    );
    assert_eq!(
        read_frame(&mut plain).unwrap(),
        (op::SYNC_REPLY, 12, b"live://1 0".to_vec())
    );
    // A failed read and an invalid body get an empty reply; the invalid one asks nothing.
    plain
        .write_all(&frame::encode(1, op::SYNC, 13, b"fail 0"))
        .unwrap();
    assert_eq!(
        read_frame(&mut plain).unwrap(),
        (op::SYNC_REPLY, 13, vec![])
    );
    plain
        .write_all(&frame::encode(1, op::SYNC, 14, b"x"))
        .unwrap();
    assert_eq!(
        read_frame(&mut plain).unwrap(),
        (op::SYNC_REPLY, 14, vec![])
    );
    settle();
    assert_eq!(seen.acks_of(7), vec![3, 4, 5, 6]);
    {
        let reads = seen.reads.lock().unwrap();
        let asked: Vec<_> = reads
            .iter()
            .map(|r| (r.mid, r.room.as_str(), r.after))
            .collect();
        assert_eq!(asked, vec![(7, "", 2), (7, "live://1", 0), (7, "fail", 0)]);
        assert!(reads.iter().all(|r| r.conn.is_some()));
    }

    // A client that acks: nothing is reported on write, op 20 reports and gets op 21.
    let mut acker = tcp_client(tcp, "inbox-8-acks");
    assert_eq!(read_frame(&mut acker).unwrap().0, op::AUTH_REPLY);
    for seq in 1..=3 {
        assert_eq!(read_frame(&mut acker).unwrap(), m(seq));
    }
    acker
        .write_all(&frame::encode(1, op::ACK, 9, b"2"))
        .unwrap();
    assert_eq!(
        read_frame(&mut acker).unwrap(),
        (op::ACK_REPLY, 9, b"2".to_vec())
    );
    wait_for("the client's ack", || seen.acks_of(8) == vec![2]);
    // An invalid ack is answered and reports nothing (the link to logic is ordered).
    acker
        .write_all(&frame::encode(1, op::ACK, 10, b"junk"))
        .unwrap();
    assert_eq!(
        read_frame(&mut acker).unwrap(),
        (op::ACK_REPLY, 10, b"junk".to_vec())
    );
    send_link(&mut link, stored_push("inbox-8-acks", 4, 8));
    assert_eq!(read_frame(&mut acker).unwrap(), m(4));
    acker
        .write_all(&frame::encode(1, op::SYNC, 11, b"3"))
        .unwrap();
    assert_eq!(read_frame(&mut acker).unwrap(), m(4));
    assert_eq!(read_frame(&mut acker).unwrap(), m(5));
    assert_eq!(
        read_frame(&mut acker).unwrap(),
        (op::SYNC_REPLY, 11, b"3".to_vec())
    );
    acker
        .write_all(&frame::encode(1, op::ACK, 12, b"5"))
        .unwrap();
    assert_eq!(read_frame(&mut acker).unwrap().0, op::ACK_REPLY);
    wait_for("the second ack", || seen.acks_of(8) == vec![2, 5]);

    // WebSocket, no acks: the backlog in one OpRaw message after the auth reply.
    let mut wplain = ws_client(wsa, "inbox-9");
    assert_eq!(
        read_ws_frames(&mut wplain),
        vec![(op::AUTH_REPLY, 1, vec![])]
    );
    assert_eq!(read_ws_frames(&mut wplain), vec![m(1), m(2), m(3)]);
    wait_for("the ws backlog's ack", || seen.acks_of(9) == vec![3]);
    send_link(&mut link, stored_push("inbox-9", 2, 9));
    send_link(&mut link, stored_push("inbox-9", 4, 9));
    assert_eq!(read_ws_frames(&mut wplain), vec![m(4)]);
    wait_for("the ws push's ack", || seen.acks_of(9) == vec![3, 4]);
    ws_send(&mut wplain, &frame::encode(1, op::SYNC, 5, b"4"));
    assert_eq!(read_ws_frames(&mut wplain), vec![m(5)]);
    assert_eq!(
        read_ws_frames(&mut wplain),
        vec![(op::SYNC_REPLY, 5, b"4".to_vec())]
    );
    wait_for("the ws sync's ack", || seen.acks_of(9) == vec![3, 4, 5]);

    // WebSocket with acks.
    let mut wacker = ws_client(wsa, "inbox-10-acks");
    assert_eq!(read_ws_frames(&mut wacker)[0].0, op::AUTH_REPLY);
    assert_eq!(read_ws_frames(&mut wacker), vec![m(1), m(2), m(3)]);
    ws_send(&mut wacker, &frame::encode(1, op::ACK, 6, b"3"));
    assert_eq!(
        read_ws_frames(&mut wacker),
        vec![(op::ACK_REPLY, 6, b"3".to_vec())]
    );
    wait_for("the ws client's ack", || seen.acks_of(10) == vec![3]);

    // No user, no inbox: ack and inbox sync are answered without asking logic; room
    // history still works.
    let mut anon = tcp_client(tcp, "anon");
    assert_eq!(read_frame(&mut anon).unwrap().0, op::AUTH_REPLY);
    anon.write_all(&frame::encode(1, op::ACK, 2, b"5")).unwrap();
    assert_eq!(
        read_frame(&mut anon).unwrap(),
        (op::ACK_REPLY, 2, b"5".to_vec())
    );
    anon.write_all(&frame::encode(1, op::SYNC, 3, b"0"))
        .unwrap();
    assert_eq!(
        read_frame(&mut anon).unwrap(),
        (op::SYNC_REPLY, 3, b"0".to_vec())
    );
    anon.write_all(&frame::encode(1, op::SYNC, 4, b"live://1 7"))
        .unwrap();
    assert_eq!(
        read_frame(&mut anon).unwrap(),
        (2000, 108, b"h108".to_vec())
    );
    assert_eq!(
        read_frame(&mut anon).unwrap(),
        (2000, 109, b"h109".to_vec())
    );
    assert_eq!(read_frame(&mut anon).unwrap().0, op::SYNC_REPLY);
    settle();
    assert!(seen.acks_of(0).is_empty());
    {
        let reads = seen.reads.lock().unwrap();
        let anon_reads: Vec<_> = reads.iter().filter(|r| r.mid == 0).collect();
        assert_eq!(anon_reads.len(), 1);
        assert_eq!(
            (anon_reads[0].room.as_str(), anon_reads[0].after),
            ("live://1", 7)
        );
    }
    // Everything reported so far, and nothing more: no write was reported twice or early.
    assert_eq!(seen.acks_of(7), vec![3, 4, 5, 6]);
    assert_eq!(seen.acks_of(8), vec![2, 5]);
    assert_eq!(seen.acks_of(9), vec![3, 4, 5]);
    assert_eq!(seen.acks_of(10), vec![3]);

    comet.shutdown();
}

/// job opens one link per shard and names it in a `LinkHello`; whichever shard's listener the
/// kernel hands the connection to, the pushes on it reach the members of the shard it names,
/// and only those (a shard that accepts another's link passes it on).
#[test]
fn each_shard_serves_the_links_opened_for_it() {
    let logic = fake_logic(Seen::default());
    let mut config = small_config(logic);
    config.shards = 2;
    let comet = imgate_comet::start(&config).unwrap();
    let mut clients: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut c = tcp_client(comet.tcp_addrs()[0], &format!("member-{i}"));
            assert_eq!(read_frame(&mut c).unwrap().0, op::AUTH_REPLY);
            c
        })
        .collect();
    wait_for("every member registered", || {
        comet.stats().connections == 20
    });
    // Eight links for each shard: the kernel spreads them, so some are passed on.
    let links: Vec<(u32, TcpStream)> = (0..16)
        .map(|i| {
            let shard = i % 2;
            let mut link = TcpStream::connect(comet.link_addr()).unwrap();
            send_link(&mut link, Body::LinkHello(LinkHello { shard }));
            (shard, link)
        })
        .collect();
    let mut open_links = Vec::new();
    for (i, (shard, mut link)) in links.into_iter().enumerate() {
        send_link(
            &mut link,
            Body::PushRoom(PushRoom {
                room: "live://1".into(),
                frames: frame::encode(1, 2000 + shard as i32, 0, format!("{i}").as_bytes()),
                count: 1,
            }),
        );
        open_links.push(link);
    }
    let mut per_shard = [0usize; 2];
    for client in &mut clients {
        let mut ops = Vec::new();
        for _ in 0..8 {
            ops.push(read_frame(client).unwrap().0);
        }
        assert!(
            ops.iter().all(|&op| op == ops[0]),
            "a member got pushes of both shards' links: {ops:?}"
        );
        per_shard[(ops[0] - 2000) as usize] += 1;
        // Nothing more: the other shard's eight never come.
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        assert!(read_frame(client).is_err(), "a ninth push arrived");
    }
    assert_eq!(per_shard[0] + per_shard[1], 20);
    assert!(per_shard[0] > 0 && per_shard[1] > 0, "{per_shard:?}");
    drop(open_links);
    comet.shutdown();
}

/// `/readyz` of a comet process asks this probe: 0 while every shard's loop runs, and each
/// shard that stopped counts (a panic on its way to ending the process, or a stop).
#[test]
fn the_stopped_shards_probe_counts_shards_whose_loop_ended() {
    let logic = fake_logic(Seen::default());
    let mut config = small_config(logic);
    config.shards = 2;
    let comet = imgate_comet::start(&config).unwrap();
    let stopped = comet.stopped_shards_probe();
    assert_eq!(stopped(), 0);
    comet.shutdown();
    assert_eq!(stopped(), 2);
}
