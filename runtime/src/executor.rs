//! The executor: a queue of ready tasks on the runtime's thread, a queue other threads wake
//! tasks through, and the loop that runs them, drives the reactor and parks.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use async_task::{Runnable, Task};

use crate::reactor::Reactor;

/// Tasks run between two looks at the sockets, at most: a long queue of ready tasks does not
/// keep the loop from noticing input.
const TASKS_PER_TURN: usize = 256;

thread_local! {
    static CORE: RefCell<Option<Rc<Core>>> = const { RefCell::new(None) };
}

/// Runs `f` with the runtime of this thread.
///
/// # Panics
/// When the thread runs no [`Runtime`]: spawning, timers and sockets only exist on one.
pub(crate) fn with_core<R>(f: impl FnOnce(&Core) -> R) -> R {
    CORE.with(|core| {
        let core = core.borrow();
        let core = core
            .as_ref()
            .expect("not on an imgate runtime thread (Runtime::block_on)");
        f(core)
    })
}

/// Like [`with_core`], but `None` off a runtime thread or while its thread-locals are torn
/// down (for destructors).
pub(crate) fn try_with_core<R>(f: impl FnOnce(&Core) -> R) -> Option<R> {
    CORE.try_with(|core| core.borrow().as_ref().map(|core| f(core)))
        .ok()
        .flatten()
}

/// Counters of one event loop, written by its thread and readable from any.
#[derive(Debug, Default)]
pub struct LoopStats {
    /// Nanoseconds spent parked, waiting for something to do, since the loop started.
    parked_ns: AtomicU64,
    /// Nanoseconds since the loop started, as of its last park or wake-up.
    elapsed_ns: AtomicU64,
    /// Tasks run.
    tasks: AtomicU64,
    /// Times the loop parked.
    parks: AtomicU64,
}

impl LoopStats {
    /// Nanoseconds the loop spent parked since it started.
    pub fn parked_ns(&self) -> u64 {
        self.parked_ns.load(Ordering::Relaxed)
    }

    /// Nanoseconds since the loop started, as of its last park or wake-up (the time base that
    /// [`LoopStats::parked_ns`] is a part of).
    pub fn elapsed_ns(&self) -> u64 {
        self.elapsed_ns.load(Ordering::Relaxed)
    }

    /// Tasks run since the loop started.
    pub fn tasks(&self) -> u64 {
        self.tasks.load(Ordering::Relaxed)
    }

    /// Times the loop parked since it started.
    pub fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }
}

/// What other threads may touch: the queue they wake tasks through and the means to wake the
/// loop when it is parked.
pub(crate) struct Shared {
    remote: Mutex<Vec<Runnable>>,
    /// Something is in `remote` (checked without the lock).
    remote_pending: AtomicBool,
    /// The main future was woken.
    main_woken: AtomicBool,
    /// The loop is parked (or about to): a waker from elsewhere must write the eventfd.
    sleeping: AtomicBool,
    /// The runtime has ended; what is woken now is never run (and never dropped on the wrong
    /// thread).
    closed: AtomicBool,
    pub(crate) eventfd: OwnedFd,
}

impl Shared {
    fn schedule(self: &Arc<Self>, runnable: Runnable) {
        let mut runnable = Some(runnable);
        try_with_core(|core| {
            if Arc::ptr_eq(&core.shared, self) {
                core.local.borrow_mut().extend(runnable.take());
            }
        });
        let Some(runnable) = runnable else {
            return;
        };
        if self.closed.load(Ordering::Acquire) {
            // A local task can only be dropped on its own thread, which has left.
            std::mem::forget(runnable);
            return;
        }
        self.remote
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(runnable);
        self.remote_pending.store(true, Ordering::SeqCst);
        self.notify();
    }

    /// Wakes the loop if it is parked.
    fn notify(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to the eventfd this struct owns.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
    }

    fn take_remote(&self) -> Vec<Runnable> {
        if !self.remote_pending.swap(false, Ordering::SeqCst) {
            return Vec::new();
        }
        std::mem::take(&mut *self.remote.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Whether work arrived that a park would sleep through.
    fn has_work(&self) -> bool {
        self.remote_pending.load(Ordering::SeqCst) || self.main_woken.load(Ordering::SeqCst)
    }

    /// Marks the loop parked; returns false (and leaves it awake) if work arrived first.
    pub(crate) fn prepare_park(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.has_work() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub(crate) fn unpark(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

/// The main future's waker.
impl Wake for Shared {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.main_woken.store(true, Ordering::SeqCst);
        let here = try_with_core(|core| Arc::ptr_eq(&core.shared, self)).unwrap_or(false);
        if !here {
            self.notify();
        }
    }
}

/// The runtime state of one thread.
pub(crate) struct Core {
    shared: Arc<Shared>,
    local: RefCell<VecDeque<Runnable>>,
    pub(crate) reactor: Reactor,
    stats: Arc<LoopStats>,
    started: Instant,
}

/// A runtime for the current thread. See the crate documentation.
pub struct Runtime {
    core: Rc<Core>,
}

impl Runtime {
    /// Creates the runtime's io_uring, epoll instance and eventfd.
    pub fn new() -> io::Result<Runtime> {
        // SAFETY: plain syscall; the fd is checked and owned right away.
        let eventfd = unsafe {
            let fd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let shared = Arc::new(Shared {
            remote: Mutex::new(Vec::new()),
            remote_pending: AtomicBool::new(false),
            main_woken: AtomicBool::new(true),
            sleeping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            eventfd,
        });
        let reactor = Reactor::new()?;
        Ok(Runtime {
            core: Rc::new(Core {
                shared,
                local: RefCell::new(VecDeque::new()),
                reactor,
                stats: Arc::default(),
                started: Instant::now(),
            }),
        })
    }

    /// The loop's counters (shareable with other threads).
    pub fn stats(&self) -> Arc<LoopStats> {
        self.core.stats.clone()
    }

    /// Runs `future` to completion on this thread, running every task spawned meanwhile.
    /// Tasks still pending when it completes are dropped with the runtime.
    ///
    /// # Panics
    /// When this thread already runs a runtime.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        CORE.with(|slot| {
            let mut slot = slot.borrow_mut();
            assert!(slot.is_none(), "this thread already runs a runtime");
            *slot = Some(self.core.clone());
        });
        self.core.shared.closed.store(false, Ordering::Release);
        self.core.shared.main_woken.store(true, Ordering::SeqCst);
        struct Uninstall;
        impl Drop for Uninstall {
            fn drop(&mut self) {
                let core = CORE.with(|slot| slot.borrow_mut().take());
                if let Some(core) = core {
                    core.shared.closed.store(true, Ordering::Release);
                    // Drop the queued tasks here, on their thread, while the runtime still
                    // exists for their destructors.
                    let local: Vec<Runnable> = core.local.borrow_mut().drain(..).collect();
                    let remote = core.shared.take_remote();
                    CORE.with(|slot| *slot.borrow_mut() = Some(core.clone()));
                    drop(local);
                    drop(remote);
                    CORE.with(|slot| slot.borrow_mut().take());
                }
            }
        }
        let _uninstall = Uninstall;
        self.core.run(future)
    }
}

impl Core {
    fn run<F: Future>(&self, future: F) -> F::Output {
        let mut future = pin!(future);
        let waker = Waker::from(self.shared.clone());
        let mut cx = Context::from_waker(&waker);
        loop {
            if self.shared.main_woken.swap(false, Ordering::SeqCst) {
                if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                    return output;
                }
            }
            let ran = self.run_tasks();
            let now = Instant::now();
            let fired = self.reactor.fire_timers(now);
            if ran > 0 || fired > 0 {
                // Busy: look at the sockets without waiting, then go round again.
                self.reactor.poll_sockets(false);
                continue;
            }
            if !self.local.borrow().is_empty() {
                continue;
            }
            let timeout = self
                .reactor
                .next_timer()
                .map(|deadline| deadline.saturating_duration_since(now));
            if timeout == Some(Duration::ZERO) {
                continue;
            }
            self.park(timeout);
        }
    }

    /// Runs ready tasks, local ones first, up to a turn's worth. Returns how many ran.
    fn run_tasks(&self) -> usize {
        let mut ran = 0;
        while ran < TASKS_PER_TURN {
            let next = self.local.borrow_mut().pop_front();
            let runnable = match next {
                Some(r) => r,
                None => {
                    let remote = self.shared.take_remote();
                    if remote.is_empty() {
                        break;
                    }
                    self.local.borrow_mut().extend(remote);
                    continue;
                }
            };
            runnable.run();
            ran += 1;
        }
        self.stats.tasks.fetch_add(ran as u64, Ordering::Relaxed);
        ran
    }

    fn park(&self, timeout: Option<Duration>) {
        let parked = Instant::now();
        if !self.shared.prepare_park() {
            return;
        }
        self.reactor.park(self.shared.eventfd.as_raw_fd(), timeout);
        self.shared.unpark();
        let woke = Instant::now();
        let stats = &self.stats;
        let parked_ns = woke.duration_since(parked).as_nanos() as u64;
        stats.parked_ns.fetch_add(parked_ns, Ordering::Relaxed);
        stats.parks.fetch_add(1, Ordering::Relaxed);
        stats.elapsed_ns.store(
            woke.duration_since(self.started).as_nanos() as u64,
            Ordering::Relaxed,
        );
    }

    pub(crate) fn spawn<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + 'static,
        F::Output: 'static,
    {
        let shared = self.shared.clone();
        let (runnable, task) =
            async_task::spawn_local(future, move |runnable| shared.schedule(runnable));
        self.local.borrow_mut().push_back(runnable);
        task
    }
}

/// Spawns `future` on this thread's runtime. Dropping the returned [`Task`] cancels it;
/// `detach()` lets it run to its end.
///
/// # Panics
/// Off a runtime thread.
pub fn spawn_local<F>(future: F) -> Task<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    with_core(|core| core.spawn(future))
}

/// Starts runtime threads.
pub struct Builder {
    name: String,
    cpu: Option<usize>,
}

impl Builder {
    /// A runtime thread named `name`.
    pub fn new(name: impl Into<String>) -> Builder {
        Builder {
            name: name.into(),
            cpu: None,
        }
    }

    /// Pins the thread to `cpu` before its runtime starts.
    pub fn pin_to(mut self, cpu: Option<usize>) -> Builder {
        self.cpu = cpu;
        self
    }

    /// Starts the thread: pins it, creates its [`Runtime`] and runs the future `start` makes
    /// on it. The handle's result is the future's output, or the error that kept the runtime
    /// from starting.
    pub fn spawn<S, F>(self, start: S) -> io::Result<std::thread::JoinHandle<io::Result<F::Output>>>
    where
        S: FnOnce(Arc<LoopStats>) -> F + Send + 'static,
        F: Future,
        F::Output: Send + 'static,
    {
        let cpu = self.cpu;
        std::thread::Builder::new().name(self.name).spawn(move || {
            if let Some(cpu) = cpu {
                crate::pin_current_thread(cpu)?;
            }
            let runtime = Runtime::new()?;
            let stats = runtime.stats();
            Ok(runtime.block_on(start(stats)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::time::Duration;

    #[test]
    fn spawned_tasks_run_and_their_output_is_awaited() {
        let rt = Runtime::new().unwrap();
        let out = rt.block_on(async {
            let a = spawn_local(async { 1 });
            let b = spawn_local(async { 2 });
            a.await + b.await
        });
        assert_eq!(out, 3);
    }

    #[test]
    fn a_task_woken_from_another_thread_runs() {
        let rt = Runtime::new().unwrap();
        let (tx, rx) = async_channel::bounded::<u32>(1);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            tx.send_blocking(7).unwrap();
        });
        let got = rt.block_on(async move { spawn_local(async move { rx.recv().await }).await });
        assert_eq!(got.unwrap(), 7);
        sender.join().unwrap();
        let stats = rt.stats();
        assert!(stats.parks() >= 1, "the loop parked while it waited");
        assert!(stats.parked_ns() >= 20_000_000, "{}", stats.parked_ns());
    }

    #[test]
    fn the_main_future_woken_from_another_thread_completes() {
        let rt = Runtime::new().unwrap();
        let (tx, rx) = async_channel::bounded::<u32>(1);
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send_blocking(5).unwrap();
        });
        assert_eq!(rt.block_on(rx.recv()).unwrap(), 5);
        sender.join().unwrap();
    }

    #[test]
    fn dropping_a_task_cancels_it_and_a_detached_one_runs_on() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let ran = Rc::new(Cell::new(0));
            let r = ran.clone();
            let cancelled = spawn_local(async move {
                crate::time::sleep(Duration::from_millis(30)).await;
                r.set(r.get() + 1);
            });
            drop(cancelled);
            let r = ran.clone();
            spawn_local(async move {
                crate::time::sleep(Duration::from_millis(10)).await;
                r.set(r.get() + 10);
            })
            .detach();
            crate::time::sleep(Duration::from_millis(60)).await;
            assert_eq!(ran.get(), 10);
        });
    }

    #[test]
    fn a_yielding_task_lets_the_others_run() {
        let rt = Runtime::new().unwrap();
        rt.block_on(async {
            let order = Rc::new(RefCell::new(Vec::new()));
            let tasks: Vec<_> = (0..3)
                .map(|i| {
                    let order = order.clone();
                    spawn_local(async move {
                        for step in 0..2 {
                            order.borrow_mut().push((i, step));
                            futures_lite::future::yield_now().await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            assert_eq!(
                *order.borrow(),
                vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
            );
        });
    }

    #[test]
    fn runtime_threads_start_pinned_and_return_their_output() {
        let cpu = *crate::allowed_cpus().unwrap().last().unwrap();
        let handle = Builder::new("rt-test")
            .pin_to(Some(cpu))
            .spawn(move |_stats| async move {
                crate::time::sleep(Duration::from_millis(1)).await;
                crate::allowed_cpus().unwrap()
            })
            .unwrap();
        assert_eq!(handle.join().unwrap().unwrap(), vec![cpu]);
    }
}
