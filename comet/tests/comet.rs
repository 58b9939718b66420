//! Starts a real comet on port 0 against a tiny in-test logic responder and talks to it over
//! real sockets: goim TCP and WebSocket clients, and a job-style link connection.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use imgate_shared::config::CometConfig;
use imgate_shared::frame::{self, op};
use imgate_shared::link::{
    self, Body, ConnectReply, Envelope, Failure, PushKeys, PushRoom, ShardKeys,
};
use imgate_shared::ws::{self, opcode};

const WAIT: Duration = Duration::from_secs(5);

/// A logic stand-in: token "bad" is refused, token "short" gets a 300 ms heartbeat, any other
/// token becomes the key; everyone joins room `live://1` watching op 1000.
fn fake_logic(disconnects: Arc<Mutex<Vec<String>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let disconnects = disconnects.clone();
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
                                    })
                                } else {
                                    Body::ConnectReply(ConnectReply {
                                        mid: 1,
                                        heartbeat_ms: if token == "short" { 300 } else { 60_000 },
                                        key: token,
                                        room: "live://1".into(),
                                        accepts: vec![1000],
                                    })
                                }
                            }
                            Some(Body::RenewOnline(_)) => {
                                Body::RenewOnlineReply(link::RenewOnlineReply {
                                    rooms: BTreeMap::from([("live://1".to_string(), 42)]),
                                })
                            }
                            Some(Body::Disconnect(d)) => {
                                disconnects.lock().unwrap().push(d.key);
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
    let auth = frame::encode(1, op::AUTH, 1, token.as_bytes());
    s.write_all(&ws::encode_client_frame(
        opcode::BINARY,
        &auth,
        [7, 7, 7, 7],
    ))
    .unwrap();
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
    let disconnects = Arc::new(Mutex::new(Vec::new()));
    let logic = fake_logic(disconnects.clone());
    let config = CometConfig {
        tcp_bind: vec!["127.0.0.1:0".into()],
        ws_bind: vec!["127.0.0.1:0".into()],
        link_bind: "127.0.0.1:0".into(),
        logic_addrs: vec![logic.to_string()],
        shards: 2,
        pin: false,
        handshake_timeout: Duration::from_millis(500),
        online_interval: Duration::from_millis(100),
        logic_timeout: Duration::from_secs(2),
        io_memory: 256 << 10,
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
        }),
    );
    let hello = frame::encode(1, 1000, 0, b"hello");
    send_link(
        &mut link,
        Body::PushKeys(PushKeys {
            targets,
            op: 1000,
            frame: hello.clone(),
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

    // Refused auth, handshake timeout, heartbeat expiry, bad upgrade.
    let mut dave = tcp_client(tcp, "bad");
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

fn small_config(logic: SocketAddr) -> CometConfig {
    CometConfig {
        tcp_bind: vec!["127.0.0.1:0".into()],
        ws_bind: vec!["127.0.0.1:0".into()],
        link_bind: "127.0.0.1:0".into(),
        logic_addrs: vec![logic.to_string()],
        shards: 1,
        pin: false,
        send_queue: 4,
        io_memory: 256 << 10,
        ..CometConfig::default()
    }
}

#[test]
fn several_comets_in_one_process_and_slow_consumers() {
    let logic = fake_logic(Arc::new(Mutex::new(Vec::new())));
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
