//! comet runs wherever Linux runs it: under a seccomp profile that refuses io_uring, as the
//! default profiles of Docker (25+) and containerd do, `imgate` starts on epoll, says so, and
//! serves TCP and WebSocket clients; `comet.io = "io_uring"` there refuses to start, naming
//! the option. The filter is installed in the child between fork and exec, as a container
//! runtime would (`imgate_testkit::seccomp`).

mod support;

use std::time::Duration;

use imgate::client::Transport;
use support::process::{sample, Imgate};
use support::*;

#[test]
fn where_io_uring_is_refused_imgate_serves_tcp_and_websocket_on_epoll() {
    let mut imgate = Imgate::start(true, 2, &[], &[]);
    let warning = imgate.wait_log("comet's shards run on epoll", Duration::from_secs(30));
    assert!(
        warning.contains("io_uring cannot be used here") && warning.contains("not permitted"),
        "{warning}"
    );
    imgate.wait_log("logic http", Duration::from_secs(30));
    let metrics = imgate.metrics();
    assert_eq!(
        sample(&metrics, "imgate_comet_io_engine", "engine=\"epoll\""),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "imgate_comet_io_engine", "engine=\"io_uring\""),
        Some(0.0)
    );

    let tcp = Subscriber::start(
        imgate.tcp,
        Transport::Tcp,
        1,
        "k-tcp",
        "live://box",
        &[1000],
    );
    let ws = Subscriber::start(
        imgate.ws,
        Transport::WebSocket,
        2,
        "k-ws",
        "live://box",
        &[1000],
    );
    // Each subscriber is registered in the room once its auth is answered.
    push(
        imgate.http,
        "/goim/push/room?operation=1000&type=live&room=box",
        "to the room",
    );
    for sub in [&tcp, &ws] {
        assert_eq!(
            sub.next(Duration::from_secs(5)),
            (1000, "to the room".into())
        );
    }
    // A broadcast does not wait for the room's batch: pushed after the room push arrived.
    push(imgate.http, "/goim/push/all?operation=1000", "to everyone");
    for sub in [&tcp, &ws] {
        assert_eq!(
            sub.next(Duration::from_secs(5)),
            (1000, "to everyone".into())
        );
    }
    let status = request(imgate.http, "GET", "/status.json", &[], b"");
    assert_eq!(status.json["comets"][0]["io"], "epoll", "{:?}", status.json);
}

#[test]
fn comet_io_io_uring_where_io_uring_is_refused_exits_naming_the_option() {
    let mut imgate = Imgate::start(true, 2, &["--comet-io", "io_uring"], &[]);
    let (status, log) = imgate.exit_within(Duration::from_secs(30));
    assert!(!status.success(), "{log}");
    assert!(
        log.contains("comet.io") && log.contains("io_uring") && log.contains("not permitted"),
        "{log}"
    );
}

#[test]
fn comet_io_epoll_serves_where_io_uring_would_be_allowed() {
    let mut imgate = Imgate::start(false, 2, &["--comet-io", "epoll"], &[]);
    imgate.wait_log("logic http", Duration::from_secs(30));
    let metrics = imgate.metrics();
    assert_eq!(
        sample(&metrics, "imgate_comet_io_engine", "engine=\"epoll\""),
        Some(2.0),
        "{metrics}"
    );
    let mut c = client(imgate.tcp, Transport::Tcp, 7, "", "live://e", &[1000]);
    push(
        imgate.http,
        "/goim/push/mids?operation=1000&mids=7",
        "on epoll",
    );
    assert_eq!(next_push(&mut c).1, "on epoll");
    push(
        imgate.http,
        "/goim/push/room?operation=1000&type=live&room=e",
        "room on epoll",
    );
    assert_eq!(next_push(&mut c).1, "room on epoll");
    let metrics = imgate.metrics();
    assert_eq!(
        sample(&metrics, "imgate_comet_ring_sends", "comet="),
        Some(0.0),
        "{metrics}"
    );
}

/// On io_uring, a fan-out's writes go through the ring, a slice per submission, and keep
/// their order with what follows them.
#[test]
fn comet_io_io_uring_sends_fan_outs_through_the_ring() {
    let mut imgate = Imgate::start(false, 1, &["--comet-io", "io_uring"], &[]);
    imgate.wait_log("logic http", Duration::from_secs(30));
    let subs: Vec<Subscriber> = (1..=3)
        .map(|mid| {
            let (addr, transport) = if mid == 2 {
                (imgate.ws, Transport::WebSocket)
            } else {
                (imgate.tcp, Transport::Tcp)
            };
            Subscriber::start(
                addr,
                transport,
                mid,
                &format!("r{mid}"),
                "live://r",
                &[1000],
            )
        })
        .collect();
    for n in 0..20 {
        push(
            imgate.http,
            "/goim/push/room?operation=1000&type=live&room=r",
            &format!("ring {n}"),
        );
    }
    let want: Vec<String> = (0..20).map(|n| format!("ring {n}")).collect();
    for sub in &subs {
        let got: Vec<String> = (0..20)
            .map(|_| sub.next(Duration::from_secs(5)).1)
            .collect();
        assert_eq!(got, want, "in order");
    }
    eventually(Duration::from_secs(5), "ring sends counted", || {
        let metrics = imgate.metrics();
        sample(&metrics, "imgate_comet_ring_sends", "comet=").unwrap_or(0.0) >= 3.0
    });
    let metrics = imgate.metrics();
    assert_eq!(
        sample(&metrics, "imgate_comet_io_engine", "engine=\"io_uring\""),
        Some(1.0),
        "{metrics}"
    );
}
