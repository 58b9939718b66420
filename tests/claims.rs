//! Claiming a connection key at the same instant, end to end: real clients
//! on their own threads send their auth frames together, many times over, against a gateway
//! on the embedded store and one on a real redis-server.
//!
//! - Two users, signed tokens: exactly one gets the key; the other is refused with a reason
//!   (op 6) and closed; pushes by key and by user reach the one that got it.
//! - One user twice (or two users in the development mode, goim's model): the newer claim
//!   replaces the older, so exactly one connection survives, and pushes by key and by user
//!   reach it. The same across two comets, where the replaced one is closed through the bus.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use imgate::client::{Client, ClientError, Transport};
use imgate::standalone::Gateway;
use imgate_shared::config::{RedisConfig, StoreBackend};
use imgate_testkit::Redis;
use support::*;

const SECRET: &str = "claims-secret";
const WAIT: Duration = Duration::from_secs(5);

/// How the gateway under test authenticates and stores.
struct Setup<'a> {
    tokens: bool,
    redis: Option<&'a Redis>,
}

fn start(setup: &Setup<'_>) -> Gateway {
    let mut config = test_config();
    if setup.tokens {
        config.auth.jwt_secret = Some(SECRET.into());
    }
    if let Some(redis) = setup.redis {
        config.store.backend = StoreBackend::Redis(RedisConfig {
            urls: vec![redis.url()],
            ..RedisConfig::default()
        });
    }
    Gateway::start(config).expect("gateway starts")
}

/// The auth body of user `mid` asking for `key`: a signed token, or goim's bare JSON.
fn auth(tokens: bool, mid: i64, key: &str) -> String {
    if tokens {
        let token =
            imgate_logic::mint_hs256(SECRET.as_bytes(), mid, None, Duration::from_secs(600))
                .unwrap();
        serde_json::json!({"token": token, "key": key, "accepts": [1000]}).to_string()
    } else {
        auth_body(mid, key, "", &[1000])
    }
}

/// Connects one client per address, then sends every auth frame at the same instant, each
/// from its own thread; returns the clients with what their auth got.
fn race(addrs: [SocketAddr; 2], auths: [String; 2]) -> Vec<(Client, Result<(), ClientError>)> {
    let start = Arc::new(Barrier::new(2));
    let threads: Vec<_> = addrs
        .into_iter()
        .zip(auths)
        .map(|(addr, body)| {
            let start = start.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr, Transport::Tcp).expect("connect");
                start.wait();
                let outcome = c.auth(&body);
                (c, outcome)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Pushes `body` and expects it routed to exactly one connection.
fn push_one(http: SocketAddr, path: &str, body: &str) {
    let answer = push(http, path, body);
    assert_eq!(
        answer["data"]["connections"], 1,
        "{path}: routed to {answer}"
    );
}

/// Two users claim one fresh key at once, `trials` times: exactly one is accepted, the other
/// is told why and closed, and the winner gets pushes by key and by user.
fn two_users_one_key(g: &Gateway, trials: usize) {
    let http = g.http_addr();
    for trial in 0..trials {
        let key = format!("fresh-{trial}");
        // Users of their own per trial: a push by mid is stored, and must not wait for a
        // later trial's connection.
        let mids = [10_000 + 2 * trial as i64, 10_001 + 2 * trial as i64];
        let mut outcomes = race(
            [g.tcp_addr(), g.tcp_addr()],
            [auth(true, mids[0], &key), auth(true, mids[1], &key)],
        );
        let winners: Vec<usize> = (0..2).filter(|&i| outcomes[i].1.is_ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "trial {trial}: {} of the two users got key {key}",
            winners.len()
        );
        let (won, lost) = (winners[0], 1 - winners[0]);
        match &outcomes[lost].1 {
            Err(ClientError::Refused(reason)) => assert!(
                reason.contains("another user"),
                "trial {trial}: refused with {reason:?}"
            ),
            other => panic!("trial {trial}: the loser was not told why: {other:?}"),
        }
        assert!(
            outcomes[lost].0.wait_closed(WAIT),
            "trial {trial}: the refused connection stays open"
        );
        let winner = &mut outcomes[won].0;
        push_one(
            http,
            &format!("/goim/push/keys?operation=1000&keys={key}"),
            "by key",
        );
        assert_eq!(next_push(winner).1, "by key", "trial {trial}");
        push_one(
            http,
            &format!("/goim/push/mids?operation=1000&mids={}", mids[won]),
            "by mid",
        );
        assert_eq!(next_push(winner).1, "by mid", "trial {trial}");
    }
}

/// Waits until one of the two clients has received `expected` and the other is closed;
/// returns the one that received it.
fn survivor(clients: &mut [Client], expected: &str, trial: usize) -> usize {
    let deadline = Instant::now() + WAIT;
    let mut got = [false; 2];
    let mut closed = [false; 2];
    loop {
        for i in 0..2 {
            if got[i] || closed[i] {
                continue;
            }
            match clients[i].recv(Duration::from_millis(10)) {
                Ok(f) => {
                    assert_eq!(
                        String::from_utf8_lossy(&f.body),
                        expected,
                        "trial {trial}: client {i} got op {}",
                        f.op
                    );
                    got[i] = true;
                }
                Err(ClientError::Timeout) => {}
                Err(_) => closed[i] = true,
            }
        }
        let settled = (got[0] && closed[1]) || (got[1] && closed[0]);
        if settled {
            return if got[0] { 0 } else { 1 };
        }
        assert!(
            !(closed[0] && closed[1]),
            "trial {trial}: both connections were closed"
        );
        assert!(
            Instant::now() < deadline,
            "trial {trial}: no single survivor (received {got:?}, closed {closed:?})"
        );
    }
}

/// Two connections claim one key at once (on `addrs`), both accepted, `trials` times: the
/// newer claim replaces the older, so exactly one survives and gets pushes by key and by
/// user. `mids` gives the two users of a trial (equal: one user twice).
fn one_key_replaced(
    g: &Gateway,
    addrs: [SocketAddr; 2],
    tokens: bool,
    trials: usize,
    mids: impl Fn(usize) -> [i64; 2],
) {
    let http = g.http_addr();
    for trial in 0..trials {
        let key = format!("twice-{trial}");
        let users = mids(trial);
        let outcomes = race(
            addrs,
            [auth(tokens, users[0], &key), auth(tokens, users[1], &key)],
        );
        // The older claim is replaced: after its auth reply (closed then), or before it (told
        // so instead of the reply).
        let mut replaced_early = None;
        let mut clients = Vec::new();
        for (i, (mut c, outcome)) in outcomes.into_iter().enumerate() {
            match outcome {
                Ok(()) => {}
                Err(ClientError::Refused(reason)) if reason.contains("replaced") => {
                    assert!(
                        replaced_early.replace(i).is_none(),
                        "trial {trial}: both replaced"
                    );
                    assert!(c.wait_closed(WAIT), "trial {trial}: left open");
                }
                Err(e) => panic!("trial {trial}: client {i} refused: {e}"),
            }
            clients.push(c);
        }
        push_one(
            http,
            &format!("/goim/push/keys?operation=1000&keys={key}"),
            "by key",
        );
        let alive = match replaced_early {
            Some(gone) => {
                let alive = 1 - gone;
                assert_eq!(next_push(&mut clients[alive]).1, "by key", "trial {trial}");
                alive
            }
            None => survivor(&mut clients, "by key", trial),
        };
        push_one(
            http,
            &format!("/goim/push/mids?operation=1000&mids={}", users[alive]),
            "by mid",
        );
        assert_eq!(next_push(&mut clients[alive]).1, "by mid", "trial {trial}");
    }
}

fn same_user(trial: usize) -> [i64; 2] {
    let mid = 20_000 + trial as i64;
    [mid, mid]
}

fn two_users(trial: usize) -> [i64; 2] {
    [30_000 + 2 * trial as i64, 30_001 + 2 * trial as i64]
}

#[test]
fn two_users_claiming_one_fresh_key_at_once_admit_exactly_one() {
    let g = start(&Setup {
        tokens: true,
        redis: None,
    });
    two_users_one_key(&g, 300);
    assert!(g.comet().stats().auth_failed >= 300, "refusals are counted");
    g.shutdown();
}

#[test]
fn two_users_claiming_one_fresh_key_at_once_admit_exactly_one_on_redis() {
    let redis = Redis::start();
    let g = start(&Setup {
        tokens: true,
        redis: Some(&redis),
    });
    two_users_one_key(&g, 300);
    g.shutdown();
}

#[test]
fn one_user_connecting_twice_at_once_keeps_exactly_one_connection() {
    let g = start(&Setup {
        tokens: true,
        redis: None,
    });
    one_key_replaced(&g, [g.tcp_addr(), g.tcp_addr()], true, 200, same_user);
    g.shutdown();
}

#[test]
fn one_user_connecting_twice_at_once_keeps_exactly_one_connection_on_redis() {
    let redis = Redis::start();
    let g = start(&Setup {
        tokens: true,
        redis: Some(&redis),
    });
    one_key_replaced(&g, [g.tcp_addr(), g.tcp_addr()], true, 200, same_user);
    g.shutdown();
}

/// The development mode keeps goim's model (a newer connection takes a key from anyone), but
/// atomically: never two survivors, and pushes reach the one left.
#[test]
fn without_tokens_two_users_claiming_one_key_leave_exactly_one_connection() {
    let g = start(&Setup {
        tokens: false,
        redis: None,
    });
    one_key_replaced(&g, [g.tcp_addr(), g.tcp_addr()], false, 200, two_users);
    g.shutdown();
}

/// On two comets neither can close the other's connection itself: logic has the replaced
/// one closed through the bus.
#[test]
fn one_user_connecting_twice_through_two_comets_keeps_exactly_one_connection() {
    let g = start(&Setup {
        tokens: true,
        redis: None,
    });
    let mut config = test_config().comet;
    config.id = Some("second-comet".into());
    config.logic_addrs = vec![g.logic_link_addr().to_string()];
    let second = imgate_comet::start(&config).expect("second comet starts");
    g.wait_for_links(2, WAIT).expect("job links both comets");
    one_key_replaced(
        &g,
        [g.tcp_addr(), second.tcp_addrs()[0]],
        true,
        100,
        same_user,
    );
    let kicked = g.comet().stats().kicked_duplicate + second.stats().kicked_duplicate;
    assert_eq!(kicked, 100, "each replaced connection is counted once");
    second.shutdown();
    g.shutdown();
}
