//! The reactor of one runtime: the epoll instance its sockets wait on, the wakers of the tasks
//! waiting on them, its timers, and the io_uring the loop parks in.
//!
//! Sockets: every socket joins the epoll set once, edge-triggered, for input and output, under
//! a token (slot index and generation, so an event for a closed socket whose slot was reused is
//! ignored). A slot remembers, per direction, whether a syscall may succeed: false from an
//! EAGAIN until the next event, so a task woken for one direction spends no syscall on the
//! other.
//!
//! Parking: the ring holds one poll on the epoll fd and one on the eventfd other threads write
//! to wake the loop; the wait's timeout is the next timer's deadline. Both polls stay armed
//! until they complete and are re-armed at the next park, so a busy loop makes no ring
//! syscall at all.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::Waker;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

/// Most events one `epoll_wait` returns.
const MAX_EVENTS: usize = 1024;
/// Ring entries: two polls in flight, never more.
const RING_ENTRIES: u32 = 8;
const EPOLL_POLL: u64 = 1;
const WAKE_POLL: u64 = 2;

pub(crate) const READABLE: u32 =
    (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
pub(crate) const WRITABLE: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

pub(crate) struct Reactor {
    ring: RefCell<IoUring>,
    epoll: OwnedFd,
    slots: RefCell<Slots>,
    events: RefCell<Vec<libc::epoll_event>>,
    timers: RefCell<Timers>,
    epoll_armed: Cell<bool>,
    wake_armed: Cell<bool>,
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
    pub(crate) fn new() -> io::Result<Reactor> {
        // SAFETY: plain syscall; the fd is checked and owned right away.
        let epoll = unsafe {
            let fd = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        let ring = IoUring::new(RING_ENTRIES)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create an io_uring: {e}")))?;
        Ok(Reactor {
            ring: RefCell::new(ring),
            epoll,
            slots: RefCell::new(Slots::default()),
            events: RefCell::new(vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS]),
            timers: RefCell::new(Timers::default()),
            epoll_armed: Cell::new(false),
            wake_armed: Cell::new(false),
        })
    }

    /// Asks the epoll instance what became ready, without waiting, and wakes the tasks that
    /// wait on it. Returns how many events there were. With `drain`, repeats until none is
    /// left (a full batch may hide more).
    pub(crate) fn poll_sockets(&self, drain: bool) -> usize {
        let mut total = 0;
        loop {
            let mut events = self.events.borrow_mut();
            // SAFETY: the buffer holds MAX_EVENTS events.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    MAX_EVENTS as libc::c_int,
                    0,
                )
            };
            if n <= 0 {
                return total;
            }
            // Waking only queues tasks; nothing it does touches the event buffer.
            for event in &events[..n as usize] {
                let (token, ready) = (event.u64, event.events);
                let (read, write) = self.take_wakers(token, ready);
                if let Some(w) = read {
                    w.wake();
                }
                if let Some(w) = write {
                    w.wake();
                }
            }
            total += n as usize;
            if !drain || (n as usize) < MAX_EVENTS {
                return total;
            }
        }
    }

    /// Waits in the ring until a socket is ready, another thread wakes the loop (by writing
    /// `wake_fd`, an eventfd), or `timeout` passes; then wakes what became ready.
    pub(crate) fn park(&self, wake_fd: RawFd, timeout: Option<Duration>) {
        {
            let mut ring = self.ring.borrow_mut();
            let mut sq = ring.submission();
            if !self.epoll_armed.get() {
                let poll =
                    opcode::PollAdd::new(types::Fd(self.epoll.as_raw_fd()), libc::POLLIN as u32)
                        .build()
                        .user_data(EPOLL_POLL);
                // SAFETY: the polled fd outlives the ring (both are fields of this reactor,
                // and the ring is dropped first).
                if unsafe { sq.push(&poll) }.is_ok() {
                    self.epoll_armed.set(true);
                }
            }
            if !self.wake_armed.get() {
                let poll = opcode::PollAdd::new(types::Fd(wake_fd), libc::POLLIN as u32)
                    .build()
                    .user_data(WAKE_POLL);
                // SAFETY: the eventfd outlives the runtime's loop (the executor owns it).
                if unsafe { sq.push(&poll) }.is_ok() {
                    self.wake_armed.set(true);
                }
            }
        }
        let waited = {
            let ring = self.ring.borrow();
            let submitter = ring.submitter();
            match timeout {
                Some(timeout) => {
                    let ts = types::Timespec::new()
                        .sec(timeout.as_secs())
                        .nsec(timeout.subsec_nanos());
                    let args = types::SubmitArgs::new().timespec(&ts);
                    submitter.submit_with_args(1, &args)
                }
                None => submitter.submit_and_wait(1),
            }
        };
        if let Err(e) = waited {
            match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                _ => tracing::error!("io_uring wait failed: {e}"),
            }
        }
        let mut woken = false;
        {
            let mut ring = self.ring.borrow_mut();
            for cqe in ring.completion() {
                match cqe.user_data() {
                    EPOLL_POLL => self.epoll_armed.set(false),
                    WAKE_POLL => {
                        self.wake_armed.set(false);
                        woken = true;
                    }
                    _ => {}
                }
            }
        }
        if woken {
            let mut count = 0u64;
            // SAFETY: reads 8 bytes into a live u64 from the non-blocking eventfd.
            unsafe {
                libc::read(
                    wake_fd,
                    (&mut count as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                );
            }
        }
        self.poll_sockets(true);
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
