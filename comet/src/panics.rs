//! Panics in a connection's tasks stop at the task: that connection is closed (reason
//! `panic`) and counted, the panic is logged at most every 10 s with its message, and the
//! shard goes on serving its other connections. A panic anywhere else in a shard (its loop,
//! its accept loops, its link to logic) ends the process, so that its supervisor restarts it
//! (`imgate_runtime::Builder::exit_on_loop_panic`, and [`critical`] for the tasks the shard
//! cannot do without).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use futures_lite::FutureExt;
use imgate_runtime::spawn_local;
use imgate_shared::log_limit::RateLimit;

use crate::conn::{CloseReason, Conn};
use crate::shard::Shard;

/// A panic's own message.
pub(crate) fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into())
}

/// Counts and logs (rate-limited) a panic caught in connection `conn_id`'s task.
pub(crate) fn caught(shard: &Shard, conn_id: Option<u64>, payload: &(dyn Any + Send)) {
    shard.stats.task_panics.inc();
    static LOGGED: RateLimit = RateLimit::per_secs(10);
    if let Some(suppressed) = LOGGED.check() {
        tracing::error!(
            shard = shard.index,
            conn_id,
            suppressed,
            "a connection's task panicked; that connection is closed and the shard goes on: {}",
            message(payload)
        );
    }
}

/// Spawns a task that works for `conn` (a sync, a client message waiting for the business):
/// if it panics, `conn` is closed as `panic` and the panic counted.
pub(crate) fn spawn_for_conn(
    shard: &Rc<Shard>,
    conn: &Rc<Conn>,
    future: impl Future<Output = ()> + 'static,
) {
    let shard = shard.clone();
    let conn_id = conn.id;
    let conn = Rc::downgrade(conn);
    spawn_local(async move {
        if let Err(panic) = AssertUnwindSafe(future).catch_unwind().await {
            caught(&shard, Some(conn_id), &*panic);
            if let Some(conn) = conn.upgrade() {
                conn.close(CloseReason::Panic);
            }
        }
    })
    .detach();
}

/// Runs a task the shard cannot do without (accepting, its link to logic, its reports and
/// heartbeat expiry): if it panics, the process ends with status 101, as a panic of the
/// loop does, rather than living on with a shard that no longer accepts or reports.
pub(crate) async fn critical(what: &'static str, shard: u32, future: impl Future<Output = ()>) {
    if let Err(panic) = AssertUnwindSafe(future).catch_unwind().await {
        tracing::error!(
            shard,
            "the shard's {what} task panicked: {}; ending the process so that its supervisor \
             restarts it",
            message(&*panic)
        );
        std::process::exit(101);
    }
}

/// The op the test-only panic hook listens to, from `IMGATE_TEST_PANIC_OP` (debug builds
/// only: a release build has no hook at all).
#[cfg(debug_assertions)]
pub(crate) fn test_panic_op() -> Option<i32> {
    std::env::var("IMGATE_TEST_PANIC_OP").ok()?.parse().ok()
}

/// The test-only hook (debug builds): a client frame with the hook's op and the body
/// `connection` panics in its connection's task; with `loop`, in its shard's loop.
#[cfg(debug_assertions)]
pub(crate) fn test_hook(shard: &Shard, op: i32, body: &[u8]) {
    if shard.comet.test_panic_op != Some(op) {
        return;
    }
    match body {
        b"connection" => panic!("test panic injected into a connection's task"),
        b"loop" => {
            let inbox = &shard.comet.inboxes[shard.index as usize];
            let _ = inbox.try_send(crate::setup::ShardCommand::TestPanic);
        }
        _ => {}
    }
}
