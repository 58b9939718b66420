//! The reactor of one runtime: the epoll instance its sockets wait on, the wakers of the tasks
//! waiting on them, its timers, and what the loop parks in (an io_uring or epoll itself, see
//! [`Engine`]).
//!
//! Sockets: every socket joins the epoll set once, edge-triggered, for input and output, under
//! a token (slot index and generation, so an event for a closed socket whose slot was reused is
//! ignored). A slot remembers, per direction, whether a syscall may succeed: false from an
//! EAGAIN until the next event, so a task woken for one direction spends no syscall on the
//! other.
//!
//! Parking on io_uring: the ring holds one poll on the epoll fd and one on the eventfd other
//! threads write to wake the loop; the wait's timeout is the next timer's deadline. Both polls
//! stay armed until they complete and are re-armed at the next park, so a busy loop makes no
//! ring syscall at all. Parking on epoll: the eventfd is in the epoll set under its own token,
//! and the loop waits in `epoll_wait` with the next timer's deadline (rounded up to the
//! millisecond) as its timeout.
//!
//! What each syscall's failure leads to: `EINTR` is retried by the loop's next turn; a ring
//! wait that fails otherwise (`EAGAIN`, `ENOMEM`: the kernel short of memory) waits in `poll`
//! instead, warned about at most every 10 s; an `epoll_wait` that fails otherwise means the
//! runtime's own descriptors are broken, and ends the loop (a panic: the process's supervisor
//! restarts it).

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::Waker;
use std::time::{Duration, Instant};

use crate::engine::Engine;
use crate::ring::Ring;

/// Most events one `epoll_wait` returns.
const MAX_EVENTS: usize = 1024;
/// The epoll token of the wake-up eventfd (epoll engine). Socket tokens never reach it: their
/// slot index would have to be `u32::MAX`.
const WAKE_TOKEN: u64 = u64::MAX;
/// Warnings that could repeat on every loop turn are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

pub(crate) const READABLE: u32 =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
pub(crate) const WRITABLE: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

pub(crate) struct Reactor {
    parker: Parker,
    epoll: OwnedFd,
    /// The eventfd other threads write to wake the loop (owned by the executor's shared
    /// state, which outlives the loop).
    wake_fd: RawFd,
    slots: RefCell<Slots>,
    events: RefCell<Vec<libc::epoll_event>>,
    timers: RefCell<Timers>,
    park_failures: Limited,
}

/// What the loop waits in when it has nothing to do. One per thread, so the size of the ring
/// variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Parker {
    Ring(Ring),
    Epoll,
}

/// A warning that may repeat: let through at most once per [`WARN_EVERY`], counting the rest.
#[derive(Default)]
struct Limited {
    last: Cell<Option<Instant>>,
    suppressed: Cell<u64>,
}

impl Limited {
    /// `Some(suppressed since the last one)` when a warning may be logged now.
    fn allow(&self, now: Instant) -> Option<u64> {
        match self.last.get() {
            Some(last) if now.duration_since(last) < WARN_EVERY => {
                self.suppressed.set(self.suppressed.get() + 1);
                None
            }
            _ => {
                self.last.set(Some(now));
                Some(self.suppressed.replace(0))
            }
        }
    }
}

#[derive(Default)]
struct Slots {
    entries: Vec<Slot>,
    free: Vec<u32>,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    read: Option<Waker>,
    write: Option<Waker>,
    readable: bool,
    writable: bool,
}

/// Timers by deadline; the second part of the key tells timers with one deadline apart.
#[derive(Default)]
struct Timers {
    wakers: BTreeMap<(Instant, u64), Waker>,
    next_id: u64,
}

impl Reactor {
    /// A reactor parking in `engine`; `wake_fd` is the eventfd other threads write to wake
    /// the loop.
    pub(crate) fn new(engine: Engine, wake_fd: RawFd) -> io::Result<Reactor> {
        // SAFETY: plain syscall; the fd is checked and owned right away.
        let epoll = unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let parker = match engine {
            Engine::IoUring => Parker::Ring(Ring::new()?),
            Engine::Epoll => {
                // Level-triggered: it stays ready until the loop reads it.
                let mut event = libc::epoll_event {
                    events: libc::EPOLLIN as u32,
                    u64: WAKE_TOKEN,
                };
                // SAFETY: `event` is a valid epoll_event for the duration of the call.
                if unsafe {
                    libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, wake_fd, &mut event)
                } < 0
                {
                    return Err(io::Error::last_os_error());
                }
                Parker::Epoll
            }
        };
        Ok(Reactor {
            parker,
            epoll,
            wake_fd,
            slots: RefCell::new(Slots::default()),
            events: RefCell::new(vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS]),
            timers: RefCell::new(Timers::default()),
            park_failures: Limited::default(),
        })
    }

    /// What the loop parks in.
    pub(crate) fn engine(&self) -> Engine {
        match self.parker {
            Parker::Ring(_) => Engine::IoUring,
            Parker::Epoll => Engine::Epoll,
        }
    }

    /// Asks the epoll instance what became ready, without waiting, and wakes the tasks that
    /// wait on it. Returns how many events there were. With `drain`, repeats until none is
    /// left (a full batch may hide more).
    pub(crate) fn poll_sockets(&self, drain: bool) -> usize {
        let mut total = 0;
        loop {
            let n = self.wait_epoll(0);
            total += n;
            if !drain || n < MAX_EVENTS {
                return total;
            }
        }
    }

    /// One `epoll_wait` of at most `timeout_ms` (-1: no limit); wakes what it reports and
    /// returns how many events there were.
    fn wait_epoll(&self, timeout_ms: libc::c_int) -> usize {
        let mut events = self.events.borrow_mut();
        // SAFETY: the buffer holds MAX_EVENTS events.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.as_raw_fd(),
                events.as_mut_ptr(),
                MAX_EVENTS as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                return 0;
            }
            // Only a broken epoll descriptor (EBADF, EINVAL) or buffer (EFAULT) fails here:
            // the loop cannot go on.
            panic!("epoll_wait on the runtime's own epoll instance failed: {error}");
        }
        // Waking only queues tasks; nothing it does touches the event buffer.
        for event in &events[..n as usize] {
            let (token, ready) = (event.u64, event.events);
            if token == WAKE_TOKEN {
                self.drain_wake_fd();
                continue;
            }
            let (read, write) = self.take_wakers(token, ready);
            if let Some(w) = read {
                w.wake();
            }
            if let Some(w) = write {
                w.wake();
            }
        }
        n as usize
    }

    /// Waits until a socket is ready, another thread wakes the loop (by writing the eventfd),
    /// or `timeout` passes; then wakes what became ready.
    pub(crate) fn park(&self, timeout: Option<Duration>) {
        match &self.parker {
            Parker::Epoll => {
                if self.wait_epoll(epoll_timeout(timeout)) == MAX_EVENTS {
                    self.poll_sockets(true);
                }
            }
            Parker::Ring(ring) => {
                let waited = ring.wait(self.epoll.as_raw_fd(), self.wake_fd, timeout);
                if let Err(e) = waited {
                    match e.raw_os_error() {
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                        _ => {
                            // EAGAIN, ENOMEM: the kernel could not take the wait now. Wait
                            // in poll instead, so the loop neither spins nor stops.
                            if let Some(suppressed) = self.park_failures.allow(Instant::now()) {
                                tracing::warn!(
                                    suppressed,
                                    "io_uring wait failed, waiting in poll: {e}"
                                );
                            }
                            self.park_in_poll(timeout);
                        }
                    }
                }
                if ring.reap() {
                    self.drain_wake_fd();
                }
                self.poll_sockets(true);
            }
        }
    }

    /// The ring, on the io_uring engine.
    pub(crate) fn ring(&self) -> Option<&Ring> {
        match &self.parker {
            Parker::Ring(ring) => Some(ring),
            Parker::Epoll => None,
        }
    }

    /// Submits the sends queued in the ring during the loop's turn, if any.
    pub(crate) fn submit_ring(&self) {
        if let Parker::Ring(ring) = &self.parker {
            if ring.has_queued() {
                ring.submit();
            }
        }
    }

    /// `poll` on the epoll instance and the eventfd: the wait when the ring cannot take one.
    fn park_in_poll(&self, timeout: Option<Duration>) {
        let mut fds = [
            libc::pollfd {
                fd: self.epoll.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.wake_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` holds two valid pollfds for the duration of the call. Its outcome
        // needs no handling: whatever is ready is read by the caller either way.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, epoll_timeout(timeout)) };
        if fds[1].revents != 0 {
            self.drain_wake_fd();
        }
    }

    /// Empties the wake-up eventfd (non-blocking: nothing to read is fine).
    fn drain_wake_fd(&self) {
        let mut count = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from the non-blocking eventfd.
        unsafe {
            libc::read(
                self.wake_fd,
                (&mut count as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
    }

    fn take_wakers(&self, token: u64, events: u32) -> (Option<Waker>, Option<Waker>) {
        let mut slots = self.slots.borrow_mut();
        let (index, generation) = split(token);
        match slots.entries.get_mut(index as usize) {
            Some(slot) if slot.generation == generation => {
                slot.readable |= events & READABLE != 0;
                slot.writable |= events & WRITABLE != 0;
                (
                    (events & READABLE != 0).then(|| slot.read.take()).flatten(),
                    (events & WRITABLE != 0)
                        .then(|| slot.write.take())
                        .flatten(),
                )
            }
            _ => (None, None),
        }
    }

    /// Adds `fd` (non-blocking) to the epoll instance under a fresh token.
    pub(crate) fn register(&self, fd: RawFd) -> io::Result<u64> {
        let token = {
            let mut slots = self.slots.borrow_mut();
            let index = match slots.free.pop() {
                Some(index) => index,
                None => {
                    slots.entries.push(Slot::default());
                    (slots.entries.len() - 1) as u32
                }
            };
            let slot = &mut slots.entries[index as usize];
            slot.generation = slot.generation.wrapping_add(1);
            slot.readable = true;
            slot.writable = true;
            join(index, slot.generation)
        };
        let events = (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
        let mut event = libc::epoll_event { events, u64: token };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) }
            < 0
        {
            let error = io::Error::last_os_error();
            self.release(token);
            return Err(error);
        }
        Ok(token)
    }

    /// Takes `fd` out of the epoll set (for a socket handed to another runtime; closing a
    /// socket takes it out by itself).
    pub(crate) fn deregister(&self, fd: RawFd) -> io::Result<()> {
        // SAFETY: plain syscall; a null event is allowed for EPOLL_CTL_DEL.
        let done = unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd,
                std::ptr::null_mut(),
            )
        };
        if done < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Frees a socket's slot (its fd is about to close, which takes it out of the epoll set).
    pub(crate) fn release(&self, token: u64) {
        if let Parker::Ring(ring) = &self.parker {
            ring.forget_listener(token);
        }
        let mut slots = self.slots.borrow_mut();
        let (index, generation) = split(token);
        if let Some(slot) = slots.entries.get_mut(index as usize) {
            if slot.generation == generation {
                slot.read = None;
                slot.write = None;
                slot.readable = false;
                slot.writable = false;
                slots.free.push(index);
            }
        }
    }

    /// Whether a syscall in that direction may succeed; if not, leaves `waker` to be woken
    /// by the next event.
    pub(crate) fn ready_or_wait(&self, token: u64, waker: &Waker, write: bool) -> bool {
        let mut slots = self.slots.borrow_mut();
        let (index, generation) = split(token);
        let Some(slot) = slots.entries.get_mut(index as usize) else {
            return true;
        };
        let ready = if write { slot.writable } else { slot.readable };
        if slot.generation != generation || ready {
            return true;
        }
        store(
            if write {
                &mut slot.write
            } else {
                &mut slot.read
            },
            waker,
        );
        false
    }

    /// Whether the last write syscall on `token` did not meet EAGAIN since its last event.
    pub(crate) fn is_writable(&self, token: u64) -> bool {
        let slots = self.slots.borrow();
        let (index, generation) = split(token);
        slots
            .entries
            .get(index as usize)
            .is_some_and(|slot| slot.generation == generation && slot.writable)
    }

    /// After EAGAIN: not ready in that direction until the next event, which wakes `waker`.
    pub(crate) fn wait_for(&self, token: u64, waker: Option<&Waker>, write: bool) {
        let mut slots = self.slots.borrow_mut();
        let (index, generation) = split(token);
        if let Some(slot) = slots.entries.get_mut(index as usize) {
            if slot.generation == generation {
                let place = if write {
                    slot.writable = false;
                    &mut slot.write
                } else {
                    slot.readable = false;
                    &mut slot.read
                };
                if let Some(waker) = waker {
                    store(place, waker);
                }
            }
        }
    }

    /// Registers a timer for `deadline` (or moves the waker of the one `key` names).
    pub(crate) fn set_timer(&self, deadline: Instant, key: &mut Option<u64>, waker: &Waker) {
        let mut timers = self.timers.borrow_mut();
        match key {
            Some(id) => match timers.wakers.get_mut(&(deadline, *id)) {
                Some(w) if w.will_wake(waker) => {}
                Some(w) => *w = waker.clone(),
                None => {
                    timers.wakers.insert((deadline, *id), waker.clone());
                }
            },
            None => {
                let id = timers.next_id;
                timers.next_id += 1;
                timers.wakers.insert((deadline, id), waker.clone());
                *key = Some(id);
            }
        }
    }

    pub(crate) fn cancel_timer(&self, deadline: Instant, id: u64) {
        self.timers.borrow_mut().wakers.remove(&(deadline, id));
    }

    /// Wakes every timer due by `now`; returns how many.
    pub(crate) fn fire_timers(&self, now: Instant) -> usize {
        let mut fired = 0;
        loop {
            let due = {
                let mut timers = self.timers.borrow_mut();
                match timers.wakers.first_key_value() {
                    Some((&(deadline, _), _)) if deadline <= now => timers.wakers.pop_first(),
                    _ => None,
                }
            };
            match due {
                Some((_, waker)) => {
                    waker.wake();
                    fired += 1;
                }
                None => return fired,
            }
        }
    }

    /// The earliest timer's deadline.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers
            .borrow()
            .wakers
            .first_key_value()
            .map(|(&(deadline, _), _)| deadline)
    }
}

/// A park's timeout in `epoll_wait`'s and `poll`'s milliseconds: rounded up, so a timer is
/// never woken for early and spun on; -1 waits without limit.
fn epoll_timeout(timeout: Option<Duration>) -> libc::c_int {
    match timeout {
        None => -1,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            ms.min(libc::c_int::MAX as u128) as libc::c_int
        }
    }
}

fn store(place: &mut Option<Waker>, waker: &Waker) {
    match place {
        Some(w) if w.will_wake(waker) => {}
        _ => *place = Some(waker.clone()),
    }
}

fn join(index: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(index)
}

pub(crate) fn split(token: u64) -> (u32, u32) {
    (token as u32, (token >> 32) as u32)
}
