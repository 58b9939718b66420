//! A shard thread's life: its listeners' accept loops, its link listener, its connection to
//! logic, the online reports and heartbeat expiry, the inbox loop, and the orderly shutdown.

use imgate_shared::log_limit::RateLimit;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgate_runtime::net::Socket as ClientSocket;
use imgate_runtime::time::sleep;
use imgate_runtime::{spawn_local, LoopStats, Task};

use crate::backlink;
use crate::conn::CloseReason;
use crate::connection;
use crate::fanout;
use crate::heartbeat::{self, clock_ms};
use crate::link;
use crate::panics::critical;
use crate::setup::{Listen, ShardCommand, ShardSetup, COMMANDS_PER_TURN};
use crate::shard::Shard;
use crate::writer::handle_ring_completions;

/// The body of a shard thread: runs until a `Shutdown` command arrives.
pub(crate) async fn run(setup: ShardSetup, loop_stats: Arc<LoopStats>) {
    let ShardSetup {
        index,
        comet,
        stats,
        inbox,
        clients,
        link: link_socket,
        ready,
    } = setup;
    let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
    let _ = stats.loop_stats.set(loop_stats.clone());
    stats.running.set(1);
    // 0 again when this future ends, however it ends (an orderly stop, or a panic on its way
    // to ending the process).
    struct Stopped(Arc<crate::stats::ShardStats>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            self.0.running.set(0);
            self.0.logic_linked.set(0);
        }
    }
    let _stopped = Stopped(stats.clone());
    let shard = Rc::new(Shard::new(index, comet, stats, stop_rx, loop_stats));

    let mut listeners: Vec<Task<()>> = Vec::new();
    for (socket, listen) in clients {
        let listener = match ClientSocket::new(OwnedFd::from(socket)) {
            Ok(listener) => listener,
            Err(e) => {
                let _ = ready.send(Err(format!("listening socket: {e}")));
                return;
            }
        };
        listeners.push(spawn_local(critical(
            "accept",
            index,
            accept_clients(shard.clone(), listener, listen),
        )));
    }
    let link_listener = match ClientSocket::new(OwnedFd::from(link_socket)) {
        Ok(listener) => listener,
        Err(e) => {
            let _ = ready.send(Err(format!("link listening socket: {e}")));
            return;
        }
    };
    listeners.push(spawn_local(critical(
        "link accept",
        index,
        link::accept_links(shard.clone(), link_listener),
    )));
    let logic_task = spawn_local(critical(
        "logic link",
        index,
        shard.logic.clone().run(
            shard.comet.config.logic_addrs.clone(),
            shard.read_scratch.clone(),
        ),
    ));
    let renew_task = spawn_local(critical(
        "online report",
        index,
        renew_online(shard.clone()),
    ));
    let heartbeat_task = spawn_local(critical(
        "heartbeat",
        index,
        expire_heartbeats(shard.clone()),
    ));
    let ring_task = shard.ring_sends.then(|| {
        spawn_local(critical(
            "ring completions",
            index,
            ring_completions(shard.clone()),
        ))
    });
    let _ = ready.send(Ok(()));

    let mut handled = 0u32;
    while let Ok(command) = inbox.recv().await {
        match command {
            ShardCommand::Shutdown => break,
            #[cfg(debug_assertions)]
            ShardCommand::TestPanic => panic!("test panic injected into the shard's loop"),
            ShardCommand::AdoptLink { fd, buffered, peer } => {
                spawn_local(link::serve_adopted(shard.clone(), fd, buffered, peer)).detach()
            }
            command => fanout::handle(&shard, command).await,
        }
        // Let the connections' writers run between bursts: a full inbox handled in one go
        // would queue more than `send_queue` pushes to a busy connection before its writer
        // got a turn, and close it as slow although it reads everything.
        handled += 1;
        if handled == COMMANDS_PER_TURN {
            handled = 0;
            futures_lite::future::yield_now().await;
        }
    }

    // Shutdown: stop accepting (cancelling an accept loop drops, and so closes, its listening
    // socket at once), close every connection, give logic a moment to hear about it.
    shard.set_stopping();
    drop(stop_tx);
    for task in listeners {
        task.cancel().await;
    }
    for conn in shard.open_conns() {
        conn.close(CloseReason::Shutdown);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while shard.conn_count() > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_millis(300);
    while shard.logic.has_queued() && Instant::now() < deadline {
        sleep(Duration::from_millis(5)).await;
    }
    if let Some(task) = ring_task {
        task.cancel().await;
    }
    renew_task.cancel().await;
    heartbeat_task.cancel().await;
    logic_task.cancel().await;
}

async fn accept_clients(shard: Rc<Shard>, listener: ClientSocket, listen: Listen) {
    loop {
        match listener.accept().await {
            Ok((fd, peer)) => match ClientSocket::new(fd) {
                Ok(socket) => {
                    let accepted = Box::new((socket, peer));
                    spawn_local(connection::serve(shard.clone(), accepted, listen)).detach();
                }
                Err(e) => {
                    static WATCH: RateLimit = RateLimit::per_secs(10);
                    imgate_shared::warn_limited!(
                        WATCH,
                        shard = shard.index,
                        "cannot watch a client socket: {e}"
                    );
                }
            },
            Err(_) if shard.is_stopping() => return,
            Err(e) => {
                // EMFILE repeats for every pending connection: once per 10 s, with a count.
                static ACCEPT: RateLimit = RateLimit::per_secs(10);
                imgate_shared::warn_limited!(ACCEPT, shard = shard.index, "accept failed: {e}");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Handles ring sends that completed outside a fan-out's own submission (the loop submits
/// what a turn queued, and a park submits what is left).
async fn ring_completions(shard: Rc<Shard>) {
    loop {
        imgate_runtime::net::ring_sends_done().await;
        handle_ring_completions(&shard);
    }
}

/// How often the online report's wait looks whether a room grew enough to be reported early.
const EARLY_LOOK: Duration = Duration::from_secs(1);

/// Reports this shard to logic right away (retrying quickly until the registry has it), then
/// every `online_interval` or, when a room grew past `online_early_members` and twice its
/// last report, within [`EARLY_LOOK`]; keeps the cluster-wide room counts of the reply.
async fn renew_online(shard: Rc<Shard>) {
    let config = &shard.comet.config;
    loop {
        let ok = shard.report_online().await;
        let wait = if ok {
            config.online_interval
        } else {
            Duration::from_millis(100)
        };
        let since = Instant::now();
        loop {
            let left = wait.saturating_sub(since.elapsed());
            if left.is_zero() {
                break;
            }
            sleep(left.min(EARLY_LOOK)).await;
            if shard.rooms_outgrown() {
                break;
            }
        }
    }
}

/// Closes the connections whose heartbeat expired, looking at the wheel once a tick, records
/// how late each tick ran (the shard's lag, reported to logic), and tells job how busy the
/// shard was over the tick.
async fn expire_heartbeats(shard: Rc<Shard>) {
    let tick = Duration::from_millis(heartbeat::TICK_MS);
    loop {
        let asleep = Instant::now();
        sleep(tick).await;
        shard.record_tick_lag(asleep.elapsed().saturating_sub(tick));
        shard.expire_heartbeats(clock_ms());
        backlink::report_load(&shard.job_links(), shard.take_tick_busy());
    }
}
