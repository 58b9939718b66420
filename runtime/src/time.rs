//! Timers on the runtime's thread.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::executor::{try_with_core, with_core};

/// Completes once `duration` has passed.
pub fn sleep(duration: Duration) -> Sleep {
    sleep_until(Instant::now() + duration)
}

/// Completes once `deadline` has passed.
pub fn sleep_until(deadline: Instant) -> Sleep {
    Sleep {
        deadline,
        timer: None,
        _thread_bound: PhantomData,
    }
}

/// The future of [`sleep`]. It holds a timer only while it waits; dropping it cancels the
/// timer. Its timer is in the reactor of the thread that polled it, so it stays on that
/// thread:
///
/// ```compile_fail
/// fn must_be_send<T: Send>() {}
/// must_be_send::<imgate_runtime::time::Sleep>();
/// ```
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    timer: Option<u64>,
    /// `!Send` and `!Sync`: its timer id names an entry of this thread's reactor.
    _thread_bound: PhantomData<*const ()>,
}

impl Sleep {
    /// When it completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        if Instant::now() >= deadline {
            if let Some(id) = self.timer.take() {
                with_core(|core| core.reactor.cancel_timer(deadline, id));
            }
            return Poll::Ready(());
        }
        with_core(|core| {
            core.reactor
                .set_timer(deadline, &mut self.timer, cx.waker())
        });
        Poll::Pending
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Some(id) = self.timer.take() {
            let deadline = self.deadline;
            try_with_core(|core| core.reactor.cancel_timer(deadline, id));
        }
    }
}

/// `future`'s output, or `Err(Elapsed)` if `duration` passes first.
pub async fn timeout<F: Future>(duration: Duration, future: F) -> Result<F::Output, Elapsed> {
    futures_lite::future::or(async { Ok(future.await) }, async {
        sleep(duration).await;
        Err(Elapsed(duration))
    })
    .await
}

/// A [`timeout`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed(pub Duration);

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timed out after {:?}", self.0)
    }
}

impl std::error::Error for Elapsed {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spawn_local;

    #[test]
    fn sleeps_end_in_deadline_order_and_not_before() {
        for rt in crate::engine::test_runtimes() {
            rt.block_on(async {
                let start = Instant::now();
                let order = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
                let tasks: Vec<_> = [30u64, 10, 20]
                    .into_iter()
                    .map(|ms| {
                        let order = order.clone();
                        spawn_local(async move {
                            sleep(Duration::from_millis(ms)).await;
                            assert!(start.elapsed() >= Duration::from_millis(ms));
                            order.borrow_mut().push(ms);
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
                assert_eq!(*order.borrow(), vec![10, 20, 30]);
            });
        }
    }

    #[test]
    fn a_timeout_ends_a_future_that_takes_too_long() {
        for rt in crate::engine::test_runtimes() {
            rt.block_on(async {
                let slow = timeout(Duration::from_millis(10), sleep(Duration::from_secs(10))).await;
                assert_eq!(slow, Err(Elapsed(Duration::from_millis(10))));
                let quick = timeout(Duration::from_secs(10), async { 3 }).await;
                assert_eq!(quick, Ok(3));
            });
            // The abandoned ten-second timer was cancelled, not left to fire.
            rt.block_on(async {
                crate::executor::with_core(|core| assert_eq!(core.reactor.next_timer(), None));
            });
        }
    }
}
