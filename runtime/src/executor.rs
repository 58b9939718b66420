//! The executor: a queue of ready tasks on the runtime's thread, a queue other threads wake
//! tasks through, and the loop that runs them, drives the reactor and parks.
//!
//! A task's panic stops at the task: the task is dropped (with whatever it owned), counted
//! ([`LoopStats::task_panics`]) and logged, and the loop goes on. A panic of the loop itself
//! (its main future, the reactor) leaves [`Runtime::block_on`]; a runtime thread started with
//! [`Builder::exit_on_loop_panic`] then ends the process, so that its supervisor restarts it
//! rather than leaving a process that serves part of its sockets.
//!
//! Every spawned task is known to the runtime until it ends, so that the tasks still pending
//! when [`Runtime::block_on`] returns are dropped there, on their thread, and whatever they
//! hold (sockets, timers) is released rather than leaked.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use async_task::{Runnable, Task};

use crate::engine::Engine;
use crate::reactor::Reactor;

/// Tasks run between two looks at the sockets, at most: a long queue of ready tasks does not
/// keep the loop from noticing input.
const TASKS_PER_TURN: usize = 256;
/// Local tasks run between two looks at the tasks other threads woke, at most: a long local
/// backlog does not keep a task woken from elsewhere waiting for the whole backlog.
pub(crate) const REMOTE_EVERY: usize = 32;
/// Panics of tasks are logged at most this often (each is counted).
const PANIC_LOG_EVERY: Duration = Duration::from_secs(10);

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
    /// Tasks that panicked (and were dropped).
    task_panics: AtomicU64,
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

    /// Tasks that panicked since the loop started: each was dropped, and the loop went on.
    pub fn task_panics(&self) -> u64 {
        self.task_panics.load(Ordering::Relaxed)
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
    // The reactor first: it is dropped before the eventfd it may poll closes.
    pub(crate) reactor: Reactor,
    shared: Arc<Shared>,
    local: RefCell<VecDeque<Runnable>>,
    /// Every task not ended yet.
    tasks: RefCell<Tasks>,
    /// The runtime is dropping its pending tasks: a task polled now drops its future.
    closing: Cell<bool>,
    stats: Arc<LoopStats>,
    started: Instant,
    /// When a task's panic was last logged, and how many were not logged since.
    panic_logged: Cell<Option<Instant>>,
    panics_unlogged: Cell<u64>,
}

/// The tasks of a runtime that have not ended: a waker of each, by slot. 16 bytes a task,
/// and 4 in the task itself (its slot).
#[derive(Default)]
struct Tasks {
    wakers: Vec<Option<Waker>>,
    free: Vec<u32>,
}

impl Tasks {
    fn insert(&mut self, waker: Waker) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.wakers[slot as usize] = Some(waker);
                slot
            }
            None => {
                self.wakers.push(Some(waker));
                (self.wakers.len() - 1) as u32
            }
        }
    }

    fn remove(&mut self, slot: u32) -> Option<Waker> {
        let waker = self.wakers.get_mut(slot as usize)?.take();
        self.free.push(slot);
        waker
    }

    /// The wakers of every task still registered (their slots stay taken until the tasks'
    /// futures are dropped).
    fn take_wakers(&mut self) -> Vec<Waker> {
        self.wakers.iter_mut().filter_map(Option::take).collect()
    }
}

/// A spawned future with its slot in [`Tasks`]: it leaves the slot when it is dropped (done or
/// cancelled), and drops its future unpolled once the runtime is closing.
struct Tracked<F> {
    future: Option<F>,
    slot: u32,
}

impl<F: Future> Future for Tracked<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is never moved out of the pinned struct: it is polled in place or
        // dropped in place (set to None); `slot` is plain data.
        let this = unsafe { self.get_unchecked_mut() };
        if try_with_core(|core| core.closing.get()).unwrap_or(false) {
            this.future = None;
            return Poll::Pending;
        }
        match this.future.as_mut() {
            // SAFETY: as above, the future stays where it is until dropped.
            Some(future) => unsafe { Pin::new_unchecked(future) }.poll(cx),
            None => Poll::Pending,
        }
    }
}

impl<F> Drop for Tracked<F> {
    fn drop(&mut self) {
        // The future first, while the task still holds its slot.
        self.future = None;
        let slot = self.slot;
        // The waker is dropped outside the borrow: it may be the task's last reference.
        let waker = try_with_core(|core| core.tasks.borrow_mut().remove(slot)).flatten();
        drop(waker);
    }
}

/// A runtime for the current thread. See the crate documentation.
pub struct Runtime {
    core: Rc<Core>,
}

impl Runtime {
    /// A runtime on the engine [`Engine::auto`] picks: io_uring where this process may use
    /// it, else epoll.
    pub fn new() -> io::Result<Runtime> {
        Runtime::with_engine(Engine::auto())
    }

    /// A runtime parking in `engine`: creates its epoll instance, its eventfd and, for
    /// [`Engine::IoUring`], its ring (an error when io_uring cannot be used here).
    pub fn with_engine(engine: Engine) -> io::Result<Runtime> {
        // SAFETY: plain syscall; the fd is checked and owned right away.
        let eventfd = unsafe {
            let fd = libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let reactor = Reactor::new(engine, eventfd.as_raw_fd())?;
        let shared = Arc::new(Shared {
            remote: Mutex::new(Vec::new()),
            remote_pending: AtomicBool::new(false),
            main_woken: AtomicBool::new(true),
            sleeping: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            eventfd,
        });
        Ok(Runtime {
            core: Rc::new(Core {
                reactor,
                shared,
                local: RefCell::new(VecDeque::new()),
                tasks: RefCell::default(),
                closing: Cell::new(false),
                stats: Arc::default(),
                started: Instant::now(),
                panic_logged: Cell::new(None),
                panics_unlogged: Cell::new(0),
            }),
        })
    }

    /// The engine this runtime parks in.
    pub fn engine(&self) -> Engine {
        self.core.reactor.engine()
    }

    /// The loop's counters (shareable with other threads).
    pub fn stats(&self) -> Arc<LoopStats> {
        self.core.stats.clone()
    }

    /// Runs `future` to completion on this thread, running every task spawned meanwhile.
    /// Tasks still pending when it completes are dropped before it returns, on this thread.
    ///
    /// # Panics
    /// When this thread already runs a runtime, and when `future` or the loop itself panics
    /// (a spawned task's panic drops that task only).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        CORE.with(|slot| {
            let mut slot = slot.borrow_mut();
            assert!(slot.is_none(), "this thread already runs a runtime");
            *slot = Some(self.core.clone());
        });
        self.core.shared.closed.store(false, Ordering::Release);
        self.core.closing.set(false);
        self.core.shared.main_woken.store(true, Ordering::SeqCst);
        struct Uninstall;
        impl Drop for Uninstall {
            fn drop(&mut self) {
                let core = CORE.with(|slot| slot.borrow().clone());
                if let Some(core) = core {
                    // Still installed: the tasks' destructors may need the runtime.
                    core.drop_pending_tasks();
                    core.shared.closed.store(true, Ordering::Release);
                    // What is queued now is dropped here, on its thread.
                    let local: Vec<Runnable> = core.local.borrow_mut().drain(..).collect();
                    let remote = core.shared.take_remote();
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
            // What the turn's tasks queued in the ring goes to the kernel now, in one call.
            self.reactor.submit_ring();
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

    /// Runs ready tasks, up to a turn's worth, looking at the tasks other threads woke first
    /// and again every [`REMOTE_EVERY`] local ones (those run next). Returns how many ran.
    fn run_tasks(&self) -> usize {
        let mut ran = 0;
        while ran < TASKS_PER_TURN {
            if ran % REMOTE_EVERY == 0 {
                self.take_remote_first();
            }
            let next = self.local.borrow_mut().pop_front();
            let runnable = match next {
                Some(r) => r,
                None if ran % REMOTE_EVERY != 0 && self.take_remote_first() => continue,
                None => break,
            };
            self.run_one(runnable);
            ran += 1;
        }
        self.stats.tasks.fetch_add(ran as u64, Ordering::Relaxed);
        ran
    }

    /// Puts the tasks other threads woke at the front of the local queue, in the order they
    /// were woken. Returns whether there were any.
    fn take_remote_first(&self) -> bool {
        let remote = self.shared.take_remote();
        if remote.is_empty() {
            return false;
        }
        let mut local = self.local.borrow_mut();
        for runnable in remote.into_iter().rev() {
            local.push_front(runnable);
        }
        true
    }

    /// Runs one task; a panic drops that task (async-task drops its future while the panic
    /// unwinds) and is counted and logged, and the loop goes on.
    fn run_one(&self, runnable: Runnable) {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| runnable.run())) {
            self.stats.task_panics.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            match self.panic_logged.get() {
                Some(last) if now.duration_since(last) < PANIC_LOG_EVERY => {
                    self.panics_unlogged.set(self.panics_unlogged.get() + 1);
                }
                _ => {
                    self.panic_logged.set(Some(now));
                    let suppressed = self.panics_unlogged.replace(0);
                    tracing::error!(
                        suppressed,
                        "a task panicked and was dropped; the loop goes on: {}",
                        panic_message(&*panic)
                    );
                }
            }
        }
    }

    /// Drops every task that has not ended: each is woken and, polled while the runtime is
    /// closing, drops its future (and with it its sockets and timers). Repeated for tasks
    /// those destructors spawn, a few rounds at most.
    fn drop_pending_tasks(&self) {
        self.closing.set(true);
        for _ in 0..4 {
            let wakers = self.tasks.borrow_mut().take_wakers();
            if wakers.is_empty() {
                break;
            }
            for waker in wakers {
                waker.wake();
            }
            loop {
                self.take_remote_first();
                let next = self.local.borrow_mut().pop_front();
                match next {
                    Some(runnable) => self.run_one(runnable),
                    None => break,
                }
            }
        }
    }

    fn park(&self, timeout: Option<Duration>) {
        let parked = Instant::now();
        if !self.shared.prepare_park() {
            return;
        }
        self.reactor.park(timeout);
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
        let mut tasks = self.tasks.borrow_mut();
        // The slot is taken before the task exists, so the task can name it.
        let slot = tasks.insert(Waker::noop().clone());
        let tracked = Tracked {
            future: Some(future),
            slot,
        };
        let (runnable, task) =
            async_task::spawn_local(tracked, move |runnable| shared.schedule(runnable));
        tasks.wakers[slot as usize] = Some(runnable.waker());
        drop(tasks);
        self.local.borrow_mut().push_back(runnable);
        task
    }
}

/// A panic's own message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into())
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
    engine: Option<Engine>,
    exit_on_loop_panic: bool,
}

impl Builder {
    /// A runtime thread named `name`.
    pub fn new(name: impl Into<String>) -> Builder {
        Builder {
            name: name.into(),
            cpu: None,
            engine: None,
            exit_on_loop_panic: false,
        }
    }

    /// Pins the thread to `cpu` before its runtime starts.
    pub fn pin_to(mut self, cpu: Option<usize>) -> Builder {
        self.cpu = cpu;
        self
    }

    /// The engine the runtime parks in ([`Engine::auto`] by default).
    pub fn engine(mut self, engine: Engine) -> Builder {
        self.engine = Some(engine);
        self
    }

    /// With `true`, a panic that leaves the loop (not a task's, which the loop survives) is
    /// logged and ends the process with status 101, so that a supervisor restarts it; a
    /// process whose other threads go on would keep this thread's sockets open and serve
    /// none of them.
    pub fn exit_on_loop_panic(mut self, exit: bool) -> Builder {
        self.exit_on_loop_panic = exit;
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
        let Builder {
            name,
            cpu,
            engine,
            exit_on_loop_panic,
        } = self;
        let thread = name.clone();
        std::thread::Builder::new().name(name).spawn(move || {
            let run = move || {
                if let Some(cpu) = cpu {
                    crate::pin_current_thread(cpu)?;
                }
                let runtime = Runtime::with_engine(engine.unwrap_or_else(Engine::auto))?;
                let stats = runtime.stats();
                Ok(runtime.block_on(start(stats)))
            };
            if !exit_on_loop_panic {
                return run();
            }
            match catch_unwind(AssertUnwindSafe(run)) {
                Ok(output) => output,
                Err(panic) => {
                    tracing::error!(
                        thread,
                        "the event loop panicked: {}; ending the process so that its supervisor \
                         restarts it",
                        panic_message(&*panic)
                    );
                    std::process::exit(101);
                }
            }
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
        for rt in crate::engine::test_runtimes() {
            let out = rt.block_on(async {
                let a = spawn_local(async { 1 });
                let b = spawn_local(async { 2 });
                a.await + b.await
            });
            assert_eq!(out, 3);
        }
    }

    #[test]
    fn a_task_woken_from_another_thread_runs() {
        for rt in crate::engine::test_runtimes() {
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
    }

    #[test]
    fn the_main_future_woken_from_another_thread_completes() {
        for rt in crate::engine::test_runtimes() {
            let (tx, rx) = async_channel::bounded::<u32>(1);
            let sender = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                tx.send_blocking(5).unwrap();
            });
            assert_eq!(rt.block_on(rx.recv()).unwrap(), 5);
            sender.join().unwrap();
        }
    }

    #[test]
    fn dropping_a_task_cancels_it_and_a_detached_one_runs_on() {
        for rt in crate::engine::test_runtimes() {
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
    }

    #[test]
    fn a_yielding_task_lets_the_others_run() {
        for rt in crate::engine::test_runtimes() {
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

    #[test]
    fn a_panicking_task_is_dropped_counted_and_the_loop_goes_on() {
        for rt in crate::engine::test_runtimes() {
            let dropped = Rc::new(Cell::new(false));
            let survivor = rt.block_on({
                let dropped = dropped.clone();
                async move {
                    struct Flag(Rc<Cell<bool>>);
                    impl Drop for Flag {
                        fn drop(&mut self) {
                            self.0.set(true);
                        }
                    }
                    let survivor = spawn_local(async {
                        crate::time::sleep(Duration::from_millis(20)).await;
                        "still running"
                    });
                    spawn_local(async move {
                        let _flag = Flag(dropped);
                        crate::time::sleep(Duration::from_millis(5)).await;
                        panic!("injected by the test");
                    })
                    .detach();
                    survivor.await
                }
            });
            assert_eq!(survivor, "still running");
            assert!(dropped.get(), "the panicking task's state was dropped");
            assert_eq!(rt.stats().task_panics(), 1);
        }
    }

    /// A task woken from another thread while the loop works through a long local backlog
    /// runs within a few local tasks, not after the whole backlog.
    #[test]
    fn a_remote_wake_is_served_while_a_long_local_backlog_runs() {
        for rt in crate::engine::test_runtimes() {
            const BACKLOG: usize = 200;
            const ROUNDS: usize = 2_000;
            let (tx, rx) = async_channel::bounded::<()>(1);
            let polls = Arc::new(AtomicU64::new(0));
            let (woke_at, ran_at) = rt.block_on({
                let polls = polls.clone();
                async move {
                    let remote = spawn_local({
                        let polls = polls.clone();
                        async move {
                            let woke_at = rx.recv().await.map(|()| 0);
                            (woke_at, polls.load(Ordering::SeqCst))
                        }
                    });
                    // Give the remote task its first poll (it waits on the channel).
                    futures_lite::future::yield_now().await;
                    let busy: Vec<_> = (0..BACKLOG)
                        .map(|_| {
                            let polls = polls.clone();
                            spawn_local(async move {
                                for _ in 0..ROUNDS {
                                    polls.fetch_add(1, Ordering::SeqCst);
                                    futures_lite::future::yield_now().await;
                                }
                            })
                        })
                        .collect();
                    let sender = {
                        let polls = polls.clone();
                        std::thread::spawn(move || {
                            // Wake it once the backlog is well under way.
                            let until = Instant::now() + Duration::from_secs(30);
                            while polls.load(Ordering::SeqCst) < (BACKLOG * 10) as u64
                                && Instant::now() < until
                            {
                                std::thread::yield_now();
                            }
                            let at = polls.load(Ordering::SeqCst);
                            tx.send_blocking(()).unwrap();
                            at
                        })
                    };
                    let (_, ran_at) = remote.await;
                    for task in busy {
                        task.await;
                    }
                    (sender.join().unwrap(), ran_at)
                }
            });
            let total = (BACKLOG * ROUNDS) as u64;
            assert!(woke_at < total / 2, "woken at {woke_at} of {total}");
            // Between the wake and the run: at most a look's worth of local tasks, plus the
            // ones that ran while the sender's store raced with the loop.
            assert!(
                ran_at - woke_at <= (REMOTE_EVERY * 4) as u64,
                "woken after {woke_at} local polls, ran after {ran_at}"
            );
        }
    }

    /// Tasks still pending when `block_on` returns are dropped then, with what they own: a
    /// socket's peer sees it closed, and the tasks' destructors ran.
    #[test]
    fn pending_tasks_are_dropped_when_block_on_returns() {
        for rt in crate::engine::test_runtimes() {
            const TASKS: usize = 20;
            let dropped = Rc::new(Cell::new(0));
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (never_tx, never_rx) = async_channel::bounded::<()>(1);
            let peers: Vec<std::net::TcpStream> = rt.block_on({
                let dropped = dropped.clone();
                async move {
                    struct Count(Rc<Cell<usize>>);
                    impl Drop for Count {
                        fn drop(&mut self) {
                            self.0.set(self.0.get() + 1);
                        }
                    }
                    let mut peers = Vec::new();
                    for i in 0..TASKS {
                        let peer = std::net::TcpStream::connect(addr).unwrap();
                        let (server, _) = listener.accept().unwrap();
                        server.set_nonblocking(true).unwrap();
                        let mut socket = crate::net::Socket::new(OwnedFd::from(server)).unwrap();
                        let count = Count(dropped.clone());
                        let never = never_rx.clone();
                        // Pending forever in three ways: a read, a channel, a far timer.
                        spawn_local(async move {
                            let _count = count;
                            match i % 3 {
                                0 => {
                                    let mut buf = [0u8; 8];
                                    let _ = futures_lite::AsyncReadExt::read(&mut socket, &mut buf)
                                        .await;
                                }
                                1 => {
                                    let _ = never.recv().await;
                                }
                                _ => crate::time::sleep(Duration::from_secs(3600)).await,
                            }
                            unreachable!("nothing ends these tasks");
                        })
                        .detach();
                        peers.push(peer);
                    }
                    crate::time::sleep(Duration::from_millis(10)).await;
                    peers
                }
            });
            assert_eq!(dropped.get(), TASKS, "every pending task was dropped");
            for mut peer in peers {
                peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut buf = [0u8; 1];
                let n = std::io::Read::read(&mut peer, &mut buf).expect("closed, not timed out");
                assert_eq!(n, 0, "the task's socket was closed");
            }
            drop(never_tx);
        }
    }
}
