//! TLS end to end: goim clients over `wss://` and over TLS TCP, and the HTTP API over HTTPS,
//! with a certificate generated for the test; plain-text and silent clients on TLS ports are
//! closed and counted.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use imgate::client::{Client, ClientError, TlsClient, Transport};
use imgate::standalone::Gateway;
use imgate_shared::config::Config;
use imgate_shared::tls::rustls::{ClientConnection, StreamOwned};
use support::{auth_body, eventually, test_config};

/// A self-signed certificate for `localhost` written to a fresh directory.
struct Certificate {
    dir: tempfile::TempDir,
}

impl Certificate {
    fn generate() -> Certificate {
        let dir = tempfile::tempdir().unwrap();
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("certificate generated");
        std::fs::write(dir.path().join("cert.pem"), generated.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            generated.signing_key.serialize_pem(),
        )
        .unwrap();
        Certificate { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn client(&self) -> TlsClient {
        TlsClient::from_ca_file(&self.cert(), "localhost").expect("client trusts the cert")
    }
}

fn tls_config(cert: &Certificate) -> Config {
    let mut c = test_config();
    c.comet.wss_bind = vec![([127, 0, 0, 1], 0).into()];
    c.comet.tcp_tls_bind = vec![([127, 0, 0, 1], 0).into()];
    c.comet.tls_cert_file = Some(cert.cert());
    c.comet.tls_key_file = Some(cert.key());
    c.logic.tls_cert_file = Some(cert.cert());
    c.logic.tls_key_file = Some(cert.key());
    c
}

/// One HTTPS request; returns (status, body).
fn https(addr: SocketAddr, tls: &TlsClient, method: &str, path: &str, body: &str) -> (u16, String) {
    let conn = ClientConnection::new(tls.config.clone(), tls.server_name.clone()).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = StreamOwned::new(conn, tcp);
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.flush().unwrap();
    let mut raw = Vec::new();
    // A peer that closes without close_notify ends the read with an error after the data.
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

fn tls_client(addr: SocketAddr, transport: Transport, tls: &TlsClient, mid: i64) -> Client {
    let mut c = Client::connect_with(addr, transport, Some(tls)).expect("TLS connect");
    c.auth(&auth_body(
        mid,
        &format!("tls-{mid}"),
        "live://tls",
        &[1000],
    ))
    .expect("auth over TLS");
    c
}

#[test]
fn goim_over_wss_and_tls_tcp_with_pushes_through_https() {
    let cert = Certificate::generate();
    let g = Gateway::start(tls_config(&cert)).expect("gateway with TLS starts");
    let tls = cert.client();
    let comet = g.comet();
    assert_eq!(comet.wss_addrs().len(), 1);
    assert_eq!(comet.tcp_tls_addrs().len(), 1);

    let mut wss = tls_client(comet.wss_addrs()[0], Transport::WebSocket, &tls, 1);
    let mut tcp = tls_client(comet.tcp_tls_addrs()[0], Transport::Tcp, &tls, 2);
    // Plain listeners keep working beside the TLS ones.
    let mut plain = support::client(
        g.tcp_addr(),
        Transport::Tcp,
        3,
        "plain",
        "live://tls",
        &[1000],
    );
    assert!(wss.heartbeat(1).unwrap() >= 0);

    let (status, body) = https(
        g.http_addr(),
        &tls,
        "POST",
        "/goim/push/room?operation=1000&type=live&room=tls",
        "over https",
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"code\":0"), "{body}");
    for c in [&mut wss, &mut tcp, &mut plain] {
        let f = c.recv(Duration::from_secs(5)).expect("room push arrives");
        assert_eq!(f.body, b"over https");
    }
    // Many pushes in a row: the TLS writer flushes every batch.
    for i in 0..50 {
        let (status, _) = https(
            g.http_addr(),
            &tls,
            "POST",
            "/goim/push/mids?operation=1000&mids=1",
            &format!("m{i}"),
        );
        assert_eq!(status, 200);
    }
    for i in 0..50 {
        let f = wss.recv(Duration::from_secs(5)).expect("mid push arrives");
        assert_eq!(f.body, format!("m{i}").as_bytes());
    }

    // The HTTP API no longer speaks plain HTTP.
    let mut s = TcpStream::connect(g.http_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(12))).unwrap();
    s.write_all(b"GET /goim/nodes/instances HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        !answer.starts_with(b"HTTP/1.1 200"),
        "plain HTTP served on the HTTPS port"
    );
    g.shutdown();
}

#[test]
fn plain_text_and_silent_clients_on_tls_ports_are_closed_and_counted() {
    let cert = Certificate::generate();
    let g = Gateway::start(tls_config(&cert)).expect("gateway with TLS starts");
    let comet = g.comet();

    // A goim client speaking plain TCP to the TLS port fails the TLS handshake.
    let mut plain = Client::connect(comet.tcp_tls_addrs()[0], Transport::Tcp).unwrap();
    let refused = plain.auth(&auth_body(1, "k", "", &[]));
    assert!(refused.is_err(), "plain auth on a TLS port: {refused:?}");
    eventually(Duration::from_secs(5), "tls_failed counted", || {
        g.comet().stats().tls_failed >= 1
    });

    // A client that connects and says nothing is closed at the handshake timeout (1 s here).
    let mut silent = TcpStream::connect(comet.wss_addrs()[0]).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf);
    assert!(matches!(n, Ok(0) | Err(_)), "silent TLS client got {n:?}");
    eventually(Duration::from_secs(5), "handshake timeout counted", || {
        g.comet().stats().handshake_timeouts >= 1
    });

    // A client that does not trust the certificate refuses the server.
    let other = Certificate::generate();
    let untrusted = Client::connect_with(
        comet.wss_addrs()[0],
        Transport::WebSocket,
        Some(&other.client()),
    );
    assert!(
        matches!(untrusted, Err(ClientError::Tls(_))),
        "{:?}",
        untrusted.err()
    );
    g.shutdown();
}

/// Idle TCP connections on the HTTPS port that never start a handshake must not hold up other
/// clients' HTTPS requests (accepting never waits for handshake permits).
#[test]
fn silent_connections_on_the_https_port_do_not_stall_other_requests() {
    const SILENT: usize = 1_100;
    let cert = Certificate::generate();
    let g = Gateway::start(tls_config(&cert)).expect("gateway with TLS starts");
    let tls = cert.client();
    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..SILENT)
        .map(|i| {
            TcpStream::connect(g.http_addr())
                .unwrap_or_else(|e| panic!("silent connection {i}: {e}"))
        })
        .collect();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "opening the silent connections took {:?}",
        started.elapsed()
    );
    for attempt in 0..3 {
        let asked = Instant::now();
        let (status, body) = https(g.http_addr(), &tls, "GET", "/goim/nodes/instances", "");
        let took = asked.elapsed();
        assert_eq!(status, 200, "{body}");
        assert!(
            took < Duration::from_secs(1),
            "request {attempt} behind {SILENT} silent connections took {took:?}"
        );
    }
    drop(silent);
    g.shutdown();
}

#[test]
fn a_bad_certificate_file_stops_start_with_its_path() {
    let cert = Certificate::generate();
    let mut config = tls_config(&cert);
    config.comet.tls_key_file = Some("/nonexistent/key.pem".into());
    let err = Gateway::start(config).err().expect("start refused");
    assert!(
        format!("{err:#}").contains("/nonexistent/key.pem"),
        "{err:#}"
    );
}
