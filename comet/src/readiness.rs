//! Client sockets and their readiness, through one epoll instance per shard instead of an
//! io_uring poll per socket.
//!
//! glommio keeps a 496-byte `Source` for every pending poll and a 120-byte stream around each
//! socket, so an idle connection, always waiting to read, carried 616 bytes of runtime state.
//! Here a socket is its descriptor, a token and the shard's [`Readiness`] (24 bytes), plus a
//! 40-byte slot holding the wakers of the task waiting on it.
//!
//! Every socket joins the shard's epoll instance once, edge-triggered, for input and output.
//! Reads and writes are plain non-blocking syscalls; only when one would block does the task
//! leave its waker in the socket's slot. A thread per shard blocks in `epoll_wait` and hands
//! each batch of ready tokens to the shard over a channel; the shard's dispatcher wakes the
//! waiting tasks. Tokens carry a generation, so an event for a closed socket whose slot was
//! reused is ignored.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};

/// Most events one `epoll_wait` returns.
const MAX_EVENTS: usize = 1024;
/// Batches in flight from the waiting thread to the shard; the thread blocks beyond that and
/// the kernel keeps the rest ready.
const BATCHES: usize = 64;
/// The token of the eventfd that stops the waiting thread.
const STOP: u64 = u64::MAX;

const READABLE: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
const WRITABLE: u32 = (libc::EPOLLOUT | libc::EPOLLHUP | libc::EPOLLERR) as u32;

/// One shard's epoll instance and the wakers of the tasks waiting on its sockets.
pub(crate) struct Readiness {
    epoll: OwnedFd,
    stop: OwnedFd,
    slots: RefCell<Slots>,
    thread: RefCell<Option<std::thread::JoinHandle<()>>>,
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
    /// Whether a read (write) may succeed: false from a syscall's EAGAIN until the next
    /// event for that direction, so a task woken for one direction does not spend a syscall
    /// on the other.
    readable: bool,
    writable: bool,
}

/// What the waiting thread hands over: (token, epoll events).
type Batch = Vec<(u64, u32)>;

impl Readiness {
    /// Creates the epoll instance and its waiting thread; the returned receiver must be
    /// driven by [`Readiness::dispatch`] on the shard.
    pub(crate) fn new(name: String) -> io::Result<(Rc<Self>, async_channel::Receiver<Batch>)> {
        // SAFETY: plain syscalls; each fd is checked and owned right away.
        let epoll = unsafe { owned(libc::epoll_create1(libc::EPOLL_CLOEXEC))? };
        let stop = unsafe { owned(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))? };
        ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            stop.as_raw_fd(),
            libc::EPOLLIN as u32,
            STOP,
        )?;
        let (tx, rx) = async_channel::bounded(BATCHES);
        let epoll_fd = epoll.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || wait_loop(epoll_fd, tx))?;
        let readiness = Rc::new(Readiness {
            epoll,
            stop,
            slots: RefCell::new(Slots::default()),
            thread: RefCell::new(Some(thread)),
        });
        Ok((readiness, rx))
    }

    /// Wakes the tasks waiting on the sockets the waiting thread reports, until it stops.
    pub(crate) async fn dispatch(self: Rc<Self>, batches: async_channel::Receiver<Batch>) {
        while let Ok(batch) = batches.recv().await {
            for (token, events) in batch {
                let (read, write) = self.take_wakers(token, events);
                if let Some(w) = read {
                    w.wake();
                }
                if let Some(w) = write {
                    w.wake();
                }
            }
        }
    }

    /// Stops the waiting thread and waits for it (at shutdown).
    pub(crate) fn stop(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd this struct owns.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
        }
        if let Some(thread) = self.thread.borrow_mut().take() {
            let _ = thread.join();
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
    fn register(&self, fd: RawFd) -> io::Result<u64> {
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
        if let Err(e) = ctl(
            self.epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd,
            events,
            token,
        ) {
            self.release(token);
            return Err(e);
        }
        Ok(token)
    }

    /// Frees a socket's slot (its fd is closed, which takes it out of the epoll set).
    fn release(&self, token: u64) {
        let mut slots = self.slots.borrow_mut();
        let (index, generation) = split(token);
        if let Some(slot) = slots.entries.get_mut(index as usize) {
            if slot.generation == generation {
                slot.read = None;
                slot.write = None;
                slots.free.push(index);
            }
        }
    }

    /// Whether a syscall in that direction may succeed; if not, leaves `waker` to be woken
    /// by the next event.
    fn ready_or_wait(&self, token: u64, waker: &Waker, write: bool) -> bool {
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

    /// After EAGAIN: not ready in that direction until the next event, which wakes `waker`.
    fn wait_for(&self, token: u64, waker: &Waker, write: bool) {
        let mut slots = self.slots.borrow_mut();
        let (index, generation) = split(token);
        if let Some(slot) = slots.entries.get_mut(index as usize) {
            if slot.generation == generation {
                if write {
                    slot.writable = false;
                    store(&mut slot.write, waker);
                } else {
                    slot.readable = false;
                    store(&mut slot.read, waker);
                }
            }
        }
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The waiting thread: blocks in `epoll_wait` and forwards what is ready to the shard.
fn wait_loop(epoll: RawFd, tx: async_channel::Sender<Batch>) {
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS];
    loop {
        // SAFETY: the buffer holds MAX_EVENTS events; the epoll fd outlives this thread
        // (`Readiness` joins it before closing the fd).
        let n =
            unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), MAX_EVENTS as libc::c_int, -1) };
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!("epoll_wait failed: {}", io::Error::last_os_error());
            return;
        }
        let mut batch = Batch::with_capacity(n as usize);
        for e in &events[..n as usize] {
            let (token, ready) = (e.u64, e.events);
            if token == STOP {
                return;
            }
            batch.push((token, ready));
        }
        if tx.send_blocking(batch).is_err() {
            return;
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

fn split(token: u64) -> (u32, u32) {
    (token as u32, (token >> 32) as u32)
}

fn ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: `event` is a valid epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// # Safety
/// `fd` must be a fresh descriptor (or -1 with errno set) that nothing else owns.
unsafe fn owned(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// A non-blocking socket registered with its shard's [`Readiness`].
pub(crate) struct Socket {
    fd: OwnedFd,
    token: u64,
    readiness: Rc<Readiness>,
}

impl Socket {
    /// Takes `fd` into the shard's epoll set. It must already be non-blocking: accepted
    /// sockets are (`accept4` with `SOCK_NONBLOCK`), and so are comet's listening sockets.
    pub(crate) fn new(fd: OwnedFd, readiness: &Rc<Readiness>) -> io::Result<Socket> {
        let token = readiness.register(fd.as_raw_fd())?;
        Ok(Socket {
            fd,
            token,
            readiness: readiness.clone(),
        })
    }

    /// Accepts one connection (for a listening socket), non-blocking and close-on-exec,
    /// with its peer's address.
    pub(crate) async fn accept(&self) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
        poll_fn(|cx| {
            if !self.readiness.ready_or_wait(self.token, cx.waker(), false) {
                return Poll::Pending;
            }
            let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            loop {
                // SAFETY: `storage` and `len` describe a buffer large enough for any address.
                let fd = unsafe {
                    libc::accept4(
                        self.fd.as_raw_fd(),
                        (&mut storage as *mut libc::sockaddr_storage).cast(),
                        &mut len,
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if fd >= 0 {
                    // SAFETY: accept4 returned a fresh descriptor.
                    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                    return Poll::Ready(Ok((fd, address(&storage))));
                }
                match self.failed(cx, false) {
                    Failed::Retry => continue,
                    Failed::Wait => return Poll::Pending,
                    Failed::Error(e) => return Poll::Ready(Err(e)),
                }
            }
        })
        .await
    }

    pub(crate) fn set_nodelay(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.fd).set_nodelay(true)
    }

    /// After a syscall failed: wait (the waker is left in the slot), retry, or give up.
    fn failed(&self, cx: &Context<'_>, write: bool) -> Failed {
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock => {
                self.readiness.wait_for(self.token, cx.waker(), write);
                Failed::Wait
            }
            io::ErrorKind::Interrupted => Failed::Retry,
            _ => Failed::Error(error),
        }
    }
}

enum Failed {
    Wait,
    Retry,
    Error(io::Error),
}

impl Drop for Socket {
    fn drop(&mut self) {
        // The fd closes after this (field drop), which takes it out of the epoll set; events
        // already reported carry this generation and find the slot reused or free.
        self.readiness.release(self.token);
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if !self.readiness.ready_or_wait(self.token, cx.waker(), false) {
            return Poll::Pending;
        }
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Poll::Ready(Ok(n as usize));
            }
            match self.failed(cx, false) {
                Failed::Retry => continue,
                Failed::Wait => return Poll::Pending,
                Failed::Error(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if !self.readiness.ready_or_wait(self.token, cx.waker(), true) {
            return Poll::Pending;
        }
        loop {
            // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return Poll::Ready(Ok(n as usize));
            }
            match self.failed(cx, true) {
                Failed::Retry => continue,
                Failed::Wait => return Poll::Pending,
                Failed::Error(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // SAFETY: plain syscall on an owned fd.
        if unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_WR) } < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::NotConnected {
                return Poll::Ready(Err(error));
            }
        }
        Poll::Ready(Ok(()))
    }
}

fn address(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match libc::c_int::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let a =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let a = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::time::Duration;

    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    use glommio::timer::timeout;

    fn executor() -> glommio::LocalExecutor {
        glommio::LocalExecutorBuilder::default()
            .io_memory(128 << 10)
            .make()
            .unwrap()
    }

    /// A connected pair: the server end as a registered [`Socket`], the client as std.
    fn pair(readiness: &Rc<Readiness>) -> (Socket, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (
            Socket::new(OwnedFd::from(server), readiness).unwrap(),
            client,
        )
    }

    #[test]
    fn a_waiting_read_and_a_blocked_write_are_woken() {
        executor().run(async {
            let (readiness, batches) = Readiness::new("test-epoll".into()).unwrap();
            glommio::spawn_local(readiness.clone().dispatch(batches)).detach();
            let (mut socket, mut client) = pair(&readiness);

            // A read that has to wait for the peer.
            let writer = std::thread::spawn({
                let mut client = client.try_clone().unwrap();
                move || {
                    std::thread::sleep(Duration::from_millis(50));
                    client.write_all(b"ping").unwrap();
                }
            });
            let mut buf = [0u8; 16];
            let n = timeout(Duration::from_secs(5), async {
                Ok(socket.read(&mut buf).await.unwrap())
            })
            .await
            .expect("the read was never woken");
            assert_eq!(&buf[..n], b"ping");
            writer.join().unwrap();

            // Writes until the socket is full, then one that must wait for the peer to read.
            client.set_nonblocking(false).unwrap();
            let chunk = vec![7u8; 64 << 10];
            let total = 64 << 20;
            let reader = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let mut got = 0usize;
                let mut buf = vec![0u8; 64 << 10];
                while got < total {
                    let n = client.read(&mut buf).unwrap();
                    assert!(n > 0, "closed after {got} bytes");
                    got += n;
                }
                got
            });
            timeout(Duration::from_secs(20), async {
                let mut sent = 0;
                while sent < total {
                    socket.write_all(&chunk).await.unwrap();
                    sent += chunk.len();
                }
                Ok(())
            })
            .await
            .expect("a blocked write was never woken");
            assert_eq!(reader.join().unwrap(), total);
            readiness.stop();
        });
    }

    #[test]
    fn a_reused_slot_ignores_the_old_sockets_events() {
        executor().run(async {
            let (readiness, _batches) = Readiness::new("test-epoll".into()).unwrap();
            let (first, _c1) = pair(&readiness);
            let old = first.token;
            drop(first);
            let (second, _c2) = pair(&readiness);
            assert_eq!(split(second.token).0, split(old).0, "the slot is reused");
            assert_ne!(second.token, old);
            let waker = futures_lite::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
            readiness.wait_for(second.token, &waker, false);
            assert!(matches!(readiness.take_wakers(old, READABLE), (None, None)));
            assert!(readiness.take_wakers(second.token, READABLE).0.is_some());
            readiness.stop();
        });
    }

    /// A socket that read EAGAIN makes no read syscall until an input event arrives, and a
    /// blocked read does not stop writes.
    #[test]
    fn a_drained_direction_waits_for_its_event() {
        executor().run(async {
            let (readiness, _batches) = Readiness::new("test-epoll".into()).unwrap();
            let (mut socket, mut client) = pair(&readiness);
            let waker = futures_lite::future::poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
            let mut cx = Context::from_waker(&waker);
            let mut buf = [0u8; 8];
            assert!(Pin::new(&mut socket)
                .poll_read(&mut cx, &mut buf)
                .is_pending());
            assert!(!readiness.ready_or_wait(socket.token, &waker, false));
            assert!(
                readiness.ready_or_wait(socket.token, &waker, true),
                "writes unaffected"
            );
            // Data alone does not make it try again; the event does.
            client.write_all(b"x").unwrap();
            std::thread::sleep(Duration::from_millis(20));
            assert!(Pin::new(&mut socket)
                .poll_read(&mut cx, &mut buf)
                .is_pending());
            let (read, write) = readiness.take_wakers(socket.token, libc::EPOLLIN as u32);
            assert!(read.is_some() && write.is_none());
            match Pin::new(&mut socket).poll_read(&mut cx, &mut buf) {
                Poll::Ready(Ok(1)) => assert_eq!(buf[0], b'x'),
                other => panic!("{other:?}"),
            }
            readiness.stop();
        });
    }

    #[test]
    fn accept_reports_the_peer() {
        executor().run(async {
            let (readiness, batches) = Readiness::new("test-epoll".into()).unwrap();
            glommio::spawn_local(readiness.clone().dispatch(batches)).detach();
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let listener = Socket::new(OwnedFd::from(listener), &readiness).unwrap();
            let client = std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                let c = std::net::TcpStream::connect(addr).unwrap();
                c.local_addr().unwrap()
            });
            let (_fd, peer) = timeout(Duration::from_secs(5), async {
                Ok(listener.accept().await.unwrap())
            })
            .await
            .expect("accept was never woken");
            assert_eq!(peer, Some(client.join().unwrap()));
            readiness.stop();
        });
    }
}
