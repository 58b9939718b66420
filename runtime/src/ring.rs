//! The io_uring side of a runtime ([`Engine::IoUring`](crate::Engine::IoUring)): the ring the
//! loop parks in, and the sends made through it.
//!
//! Parking: one poll on the epoll instance and one on the wake-up eventfd, each re-armed only
//! after it completed, and the next timer as the wait's timeout.
//!
//! Sends ([`crate::net::Socket::send_in_ring`]): a send is queued as an `IORING_OP_SEND` with
//! `MSG_DONTWAIT` (a full socket completes at once with `EAGAIN` rather than waiting in the
//! kernel), keeps its buffer alive in the ring's table until its completion is reaped, and is
//! submitted with everything else queued by one `io_uring_enter`: when its owner asks
//! ([`crate::net::submit_ring_sends`]), at the end of the loop's turn, or when the loop
//! parks. A socket about to be closed first submits what is queued, so a queued send never
//! reaches a descriptor number that was closed and reused meanwhile (the kernel takes its own
//! reference to the file when the send is submitted).
//!
//! Accepts ([`crate::net::Socket::accept`] on a listening socket): one multishot accept per
//! listener (Linux 5.19) hands every new connection's descriptor to the ring's queue for that
//! listener, re-armed when the kernel ends it; a listener dropped cancels it (the request holds
//! the listening socket open until then), and descriptors that arrive after are closed. A
//! kernel that refuses multishot accepts leaves that listener on `accept4`.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::RawFd;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};

/// Submission entries: a fan-out slice's sends (256) fit several times over.
const RING_ENTRIES: u32 = 1024;
const EPOLL_POLL: u64 = 1;
const WAKE_POLL: u64 = 2;
/// A send's user data: this bit, and its slot in the table of sends in flight.
const SEND: u64 = 1 << 63;
/// A multishot accept's user data: this bit, and its listener's place in `accepts`.
const ACCEPT: u64 = 1 << 62;
/// A cancellation's own completion (nothing to do with it).
const CANCEL: u64 = 3;

/// What became of a send made through the ring.
#[derive(Debug)]
pub struct SendDone {
    /// The tag the send was queued with.
    pub tag: u64,
    /// Bytes sent (possibly fewer than the buffer holds), or why none were: `WouldBlock` when
    /// the socket was full.
    pub result: io::Result<usize>,
    /// The buffer, given back.
    pub buf: Bytes,
}

pub(crate) struct Ring {
    ring: RefCell<IoUring>,
    epoll_armed: Cell<bool>,
    wake_armed: Cell<bool>,
    sends: RefCell<Sends>,
    /// The listeners accepting through the ring (a few per thread).
    accepts: RefCell<Vec<Option<Accepting>>>,
}

/// A listener's multishot accept.
struct Accepting {
    /// The listening socket's token (its reactor slot).
    token: u64,
    /// Connections accepted and not taken yet, or the error the accept ended with.
    ready: std::collections::VecDeque<io::Result<std::os::fd::OwnedFd>>,
    /// Whether the kernel holds a multishot accept for it now.
    armed: bool,
    /// The kernel refused multishot accepts: `accept4` instead.
    unsupported: bool,
    waker: Option<Waker>,
}

/// What [`Ring::poll_accept`] found.
pub(crate) enum Accepted {
    Ready(io::Result<std::os::fd::OwnedFd>),
    Pending,
    /// Multishot accepts are not available: accept with a syscall.
    Unsupported,
}

#[derive(Default)]
struct Sends {
    /// Buffers and tags of the sends queued or in the kernel, by slot.
    in_flight: Vec<Option<(Bytes, u64)>>,
    free: Vec<u32>,
    /// Completed sends not taken yet.
    done: Vec<SendDone>,
    /// Who waits for completions.
    waker: Option<Waker>,
}

impl Ring {
    pub(crate) fn new() -> io::Result<Ring> {
        let ring = IoUring::new(RING_ENTRIES)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot create an io_uring: {e}")))?;
        crate::engine::missing_features(ring.params().is_feature_ext_arg())
            .map_err(|why| io::Error::new(io::ErrorKind::Unsupported, why))?;
        Ok(Ring {
            ring: RefCell::new(ring),
            epoll_armed: Cell::new(false),
            wake_armed: Cell::new(false),
            sends: RefCell::default(),
            accepts: RefCell::default(),
        })
    }

    /// Arms the polls the loop parks on (those that completed since), then waits until one
    /// completes or `timeout` passes, submitting whatever else is queued on the way.
    pub(crate) fn wait(
        &self,
        epoll_fd: RawFd,
        wake_fd: RawFd,
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        {
            let mut ring = self.ring.borrow_mut();
            let mut sq = ring.submission();
            if !self.epoll_armed.get() {
                let poll = opcode::PollAdd::new(types::Fd(epoll_fd), libc::POLLIN as u32)
                    .build()
                    .user_data(EPOLL_POLL);
                // SAFETY: the polled fd outlives the ring (the reactor drops the ring first).
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
    }

    /// Takes what completed: the park's polls (returns whether the wake-up eventfd's did) and
    /// the sends, which wait in `done` for their owner, woken.
    pub(crate) fn reap(&self) -> bool {
        let mut woken = false;
        let mut sends = self.sends.borrow_mut();
        let mut any_send = false;
        {
            let mut ring = self.ring.borrow_mut();
            for cqe in ring.completion() {
                match cqe.user_data() {
                    EPOLL_POLL => self.epoll_armed.set(false),
                    WAKE_POLL => {
                        self.wake_armed.set(false);
                        woken = true;
                    }
                    data if data & ACCEPT != 0 => {
                        self.accepted((data & !ACCEPT) as usize, cqe.result(), cqe.flags());
                    }
                    data if data & SEND != 0 => {
                        let slot = (data & !SEND) as u32;
                        let taken = sends
                            .in_flight
                            .get_mut(slot as usize)
                            .and_then(Option::take);
                        if let Some((buf, tag)) = taken {
                            sends.free.push(slot);
                            let result = match cqe.result() {
                                n if n >= 0 => Ok(n as usize),
                                errno => Err(io::Error::from_raw_os_error(-errno)),
                            };
                            sends.done.push(SendDone { tag, result, buf });
                            any_send = true;
                        }
                    }
                    _ => {}
                }
            }
        }
        if any_send {
            if let Some(waker) = sends.waker.take() {
                drop(sends);
                waker.wake();
            }
        }
        woken
    }

    /// A multishot accept's completion: a new connection (`result` its descriptor), or the
    /// end of the request (without `IORING_CQE_F_MORE`), with an error or cancelled.
    fn accepted(&self, place: usize, result: i32, flags: u32) {
        let mut accepts = self.accepts.borrow_mut();
        let Some(Some(listener)) = accepts.get_mut(place) else {
            if result >= 0 {
                // SAFETY: the kernel made this descriptor for us; nobody else knows it.
                drop(unsafe {
                    <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(result)
                });
            }
            return;
        };
        if !io_uring::cqueue::more(flags) {
            listener.armed = false;
        }
        match result {
            fd if fd >= 0 => listener.ready.push_back(Ok(
                // SAFETY: as above.
                unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) },
            )),
            errno if errno == -libc::EINVAL || errno == -libc::EOPNOTSUPP => {
                listener.unsupported = true
            }
            // The request ended by cancellation: the listener is going away.
            errno if errno == -libc::ECANCELED => {}
            errno => listener
                .ready
                .push_back(Err(io::Error::from_raw_os_error(-errno))),
        }
        if let Some(waker) = listener.waker.take() {
            drop(accepts);
            waker.wake();
        }
    }

    /// The next connection the listener `fd` (reactor token `token`) accepted through the
    /// ring, arming its multishot accept the first time and whenever the kernel ended it.
    pub(crate) fn poll_accept(&self, token: u64, fd: RawFd, cx: &mut Context<'_>) -> Accepted {
        let mut accepts = self.accepts.borrow_mut();
        let place = match accepts
            .iter()
            .position(|a| a.as_ref().is_some_and(|a| a.token == token))
        {
            Some(place) => place,
            None => {
                // A place is never reused: a cancelled accept's last completions may still
                // come, and must not be taken for another listener's.
                accepts.push(Some(Accepting {
                    token,
                    ready: Default::default(),
                    armed: false,
                    unsupported: false,
                    waker: None,
                }));
                accepts.len() - 1
            }
        };
        let Some(listener) = accepts[place].as_mut() else {
            return Accepted::Unsupported;
        };
        if let Some(next) = listener.ready.pop_front() {
            return Accepted::Ready(next);
        }
        if listener.unsupported {
            return Accepted::Unsupported;
        }
        match &listener.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => listener.waker = Some(cx.waker().clone()),
        }
        if !listener.armed {
            let entry = opcode::AcceptMulti::new(types::Fd(fd))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(ACCEPT | place as u64);
            let mut ring = self.ring.borrow_mut();
            // SAFETY: the request refers to no memory of ours; the listener is cancelled
            // before its descriptor closes ([`Ring::forget_listener`]).
            let pushed = unsafe { ring.submission().push(&entry) }.is_ok()
                || (ring.submit().is_ok() && unsafe { ring.submission().push(&entry) }.is_ok());
            if !pushed {
                return Accepted::Unsupported;
            }
            listener.armed = true;
        }
        Accepted::Pending
    }

    /// The listener with reactor token `token` is about to close: its multishot accept is
    /// cancelled (queued with what is submitted next, before the close), and what it accepted
    /// and nobody took is closed.
    pub(crate) fn forget_listener(&self, token: u64) {
        let mut accepts = self.accepts.borrow_mut();
        let Some(place) = accepts
            .iter()
            .position(|a| a.as_ref().is_some_and(|a| a.token == token))
        else {
            return;
        };
        let listener = accepts[place].take();
        if listener.as_ref().is_some_and(|l| l.armed) {
            let cancel = opcode::AsyncCancel::new(ACCEPT | place as u64)
                .build()
                .user_data(CANCEL);
            let mut ring = self.ring.borrow_mut();
            // SAFETY: a cancellation refers to no memory.
            if unsafe { ring.submission().push(&cancel) }.is_err() {
                let _ = ring.submit();
                // SAFETY: as above.
                let _ = unsafe { ring.submission().push(&cancel) };
            }
        }
        drop(accepts);
        drop(listener);
    }

    /// Queues a send of `buf` on `fd`, reported with `tag`. `Err(buf)` when the submission
    /// queue is full even after submitting what it held.
    pub(crate) fn queue_send(&self, fd: RawFd, buf: Bytes, tag: u64) -> Result<(), Bytes> {
        let Ok(len) = u32::try_from(buf.len()) else {
            return Err(buf);
        };
        let mut sends = self.sends.borrow_mut();
        let slot = match sends.free.pop() {
            Some(slot) => slot,
            None => {
                sends.in_flight.push(None);
                (sends.in_flight.len() - 1) as u32
            }
        };
        let entry = opcode::Send::new(types::Fd(fd), buf.as_ptr(), len)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(SEND | u64::from(slot));
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the buffer stays alive (and unmoved: `Bytes` never moves its bytes) in
        // `in_flight` until the completion for this slot is reaped.
        let mut pushed = unsafe { ring.submission().push(&entry) }.is_ok();
        if !pushed {
            // Full: submit what is there, then try once more.
            if ring.submit().is_ok() {
                // SAFETY: as above.
                pushed = unsafe { ring.submission().push(&entry) }.is_ok();
            }
        }
        if !pushed {
            sends.free.push(slot);
            return Err(buf);
        }
        sends.in_flight[slot as usize] = Some((buf, tag));
        Ok(())
    }

    /// Whether entries wait in the submission queue (the kernel has not taken them yet).
    pub(crate) fn has_queued(&self) -> bool {
        !self.ring.borrow_mut().submission().is_empty()
    }

    /// Submits what is queued (one `io_uring_enter`, no wait) and reaps what completed (sends
    /// on a socket with room complete within the call). A submission the kernel refuses now
    /// (`EBUSY`, `EAGAIN`: completions to reap first) stays queued for the next one.
    pub(crate) fn submit(&self) {
        if self.has_queued() {
            // Refused now: the entries stay in the queue for the next submission.
            let _ = self.ring.borrow().submit();
        }
        self.reap();
    }

    /// Moves the completed sends into `out`.
    pub(crate) fn take_done(&self, out: &mut Vec<SendDone>) {
        out.append(&mut self.sends.borrow_mut().done);
    }

    /// Ready when completed sends wait; else leaves `cx`'s waker for the next completion.
    pub(crate) fn poll_done(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut sends = self.sends.borrow_mut();
        if !sends.done.is_empty() {
            return Poll::Ready(());
        }
        match &sends.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => sends.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}
