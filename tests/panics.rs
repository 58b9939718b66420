//! A panic never leaves a half-dead process. A panic in a connection's task closes that
//! connection (counted: `imgate_task_panics_total`, `imgate_closes_total{reason="panic"}`)
//! and the shard goes on serving its other connections; a panic in a shard's loop ends the
//! process with a non-zero status, so that its supervisor restarts it. Panics are injected
//! through comet's test-only hook (debug builds only): a client frame of the op named by
//! `IMGATE_TEST_PANIC_OP`, with the body `connection` or `loop`.

mod support;

use std::time::Duration;

use imgate::client::Transport;
use support::process::{sample, Imgate};
use support::*;

const PANIC_OP: i32 = 9999;

fn start() -> Imgate {
    let mut imgate = Imgate::start(
        false,
        1,
        &[],
        &[("IMGATE_TEST_PANIC_OP", &PANIC_OP.to_string())],
    );
    imgate.wait_log("logic http", Duration::from_secs(30));
    imgate
}

#[test]
fn a_panic_in_a_connection_closes_it_and_the_shard_serves_the_others() {
    let imgate = start();
    let bystander = Subscriber::start(imgate.tcp, Transport::Tcp, 1, "k1", "live://p", &[1000]);
    let ws_bystander = Subscriber::start(
        imgate.ws,
        Transport::WebSocket,
        2,
        "k2",
        "live://p",
        &[1000],
    );
    let mut victim = client(imgate.tcp, Transport::Tcp, 3, "k3", "live://p", &[1000]);
    victim
        .send(1, PANIC_OP, 1, b"connection")
        .expect("the frame is sent");
    assert!(
        victim.wait_closed(Duration::from_secs(5)),
        "the panicking connection is closed"
    );
    // The same shard (there is one) goes on: room pushes reach the others.
    for n in 0..3 {
        let body = format!("after the panic {n}");
        push(
            imgate.http,
            "/goim/push/room?operation=1000&type=live&room=p",
            &body,
        );
        assert_eq!(bystander.next(Duration::from_secs(5)), (1000, body.clone()));
        assert_eq!(ws_bystander.next(Duration::from_secs(5)), (1000, body));
    }
    let metrics = imgate.metrics();
    assert_eq!(
        sample(&metrics, "imgate_task_panics_total", "comet="),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "imgate_closes_total", "reason=\"panic\""),
        Some(1.0),
        "{metrics}"
    );
    let (status, ready) = imgate.readyz();
    assert_eq!(status, 200, "{ready}");
    assert!(ready.contains("shards: ok"), "{ready}");
    // The victim's session went with it, as for any close.
    eventually(
        Duration::from_secs(5),
        "the victim's session removed",
        || {
            push(imgate.http, "/goim/push/keys?operation=1000&keys=k3", "x")["data"]["connections"]
                == 0
        },
    );
}

#[test]
fn a_panic_in_a_shards_loop_ends_the_process() {
    let mut imgate = start();
    let mut c = client(imgate.tcp, Transport::Tcp, 1, "k", "", &[1000]);
    c.send(1, PANIC_OP, 1, b"loop").expect("the frame is sent");
    let (status, log) = imgate.exit_within(Duration::from_secs(15));
    assert_eq!(status.code(), Some(101), "{log}");
    assert!(
        log.contains("test panic injected into the shard's loop")
            && log.contains("ending the process"),
        "{log}"
    );
}
