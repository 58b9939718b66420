//! The wake-up path under stress: another thread wakes a task on the runtime a million times
//! per engine, racing with the loop as it parks and unparks. A lost wake-up (the eventfd not
//! written while the loop parks, or written and not seen) shows as a round trip that never
//! completes; each one has a deadline, so the test fails rather than hangs.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use imgate_runtime::{Engine, Runtime};

const ROUND_TRIPS: u64 = 1_000_000;
/// A round trip slower than this is a lost wake-up (they take microseconds).
const DEADLINE: Duration = Duration::from_secs(10);

fn race(engine: Engine) {
    let (ping_tx, ping_rx) = async_channel::bounded::<u64>(1);
    let (pong_tx, pong_rx) = mpsc::sync_channel::<u64>(1);
    let runtime = std::thread::spawn(move || {
        let rt = Runtime::with_engine(engine)
            .unwrap_or_else(|e| panic!("a runtime on {engine} cannot start here: {e}"));
        let served = rt.block_on(async move {
            let mut served = 0u64;
            while let Ok(n) = ping_rx.recv().await {
                // Every other round trip, park on a timer too, so the wake-up races with
                // a timed park as well as an untimed one.
                if n % 2 == 0 {
                    let _ = imgate_runtime::time::timeout(
                        Duration::from_millis(50),
                        futures_lite::future::yield_now(),
                    )
                    .await;
                }
                pong_tx.send(n).expect("the waker thread left");
                served += 1;
            }
            served
        });
        (served, rt.stats().parks())
    });
    let started = Instant::now();
    for n in 0..ROUND_TRIPS {
        ping_tx.send_blocking(n).expect("the runtime thread left");
        match pong_rx.recv_timeout(DEADLINE) {
            Ok(m) => assert_eq!(m, n),
            Err(_) => {
                panic!("{engine}: round trip {n} lost its wake-up (no answer in {DEADLINE:?})")
            }
        }
    }
    drop(ping_tx);
    let (served, parks) = runtime.join().expect("the runtime thread panicked");
    assert_eq!(served, ROUND_TRIPS);
    // The loop must really have parked (and been woken from there) for the races to happen.
    assert!(
        parks > ROUND_TRIPS / 10,
        "{engine}: parked only {parks} times"
    );
    eprintln!(
        "{engine}: {ROUND_TRIPS} cross-thread wake-ups, {parks} parks, {:?}",
        started.elapsed()
    );
}

#[test]
fn a_million_cross_thread_wakes_lose_none_on_io_uring() {
    race(Engine::IoUring);
}

#[test]
fn a_million_cross_thread_wakes_lose_none_on_epoll() {
    race(Engine::Epoll);
}
