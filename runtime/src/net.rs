//! Sockets on the runtime's epoll set (see the reactor): a socket is its descriptor and a
//! token, 16 bytes; reads, writes, accepts and connects are non-blocking syscalls made on the
//! runtime's thread, and only one that would block leaves the task's waker behind.

use std::io;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::future::poll_fn;
use futures_lite::{AsyncRead, AsyncWrite};
use socket2::{Domain, Protocol, SockAddr, Type};

use crate::executor::{try_with_core, with_core};
use crate::ring::SendDone;
use bytes::Bytes;

/// A non-blocking socket registered with its runtime's epoll instance. It belongs to the
/// runtime thread that made it, and cannot leave it: dropped on another thread, it would free
/// a slot of that thread's reactor, whose generation may name a live socket there. To hand a
/// connection to another runtime, take its descriptor out with [`Socket::into_fd`].
///
/// ```compile_fail
/// fn must_be_send<T: Send>() {}
/// must_be_send::<imgate_runtime::net::Socket>();
/// ```
pub struct Socket {
    fd: OwnedFd,
    token: u64,
    /// `!Send` and `!Sync`: its token names a slot of this thread's reactor.
    _thread_bound: PhantomData<*const ()>,
}

impl Socket {
    /// Takes `fd` into this runtime's epoll set. It must already be non-blocking: accepted
    /// sockets are (`accept4` with `SOCK_NONBLOCK`), and so must listening sockets be.
    pub fn new(fd: OwnedFd) -> io::Result<Socket> {
        let token = with_core(|core| core.reactor.register(fd.as_raw_fd()))?;
        Ok(Socket {
            fd,
            token,
            _thread_bound: PhantomData,
        })
    }

    /// Connects to `addr`, giving up after `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<Socket> {
        let socket = socket2::Socket::new(
            Domain::for_address(addr),
            Type::STREAM.nonblocking().cloexec(),
            Some(Protocol::TCP),
        )?;
        match socket.connect(&SockAddr::from(addr)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let socket = Socket::new(OwnedFd::from(socket))?;
        let writable = poll_fn(|cx| {
            if with_core(|core| core.reactor.ready_or_wait(socket.token, cx.waker(), true)) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        // A fresh slot starts writable: wait for the connect's own event first.
        with_core(|core| core.reactor.wait_for(socket.token, None, true));
        crate::time::timeout(timeout, writable).await.map_err(|_| {
            io::Error::new(io::ErrorKind::TimedOut, format!("connecting to {addr}"))
        })?;
        match socket2::SockRef::from(&socket.fd).take_error()? {
            Some(e) => Err(e),
            None => Ok(socket),
        }
    }

    /// Accepts one connection (for a listening socket), non-blocking and close-on-exec,
    /// with its peer's address.
    ///
    /// On the io_uring engine, one multishot accept in the ring takes every connection the
    /// listener gets (no syscall each, and none to learn that one is waiting); the peer's
    /// address is then asked of the new socket. Where the kernel refuses multishot accepts
    /// (before 5.19), `accept4` as on epoll.
    pub async fn accept(&self) -> io::Result<(OwnedFd, Option<SocketAddr>)> {
        let ringed = poll_fn(|cx| {
            with_core(|core| match core.reactor.ring() {
                Some(ring) => match ring.poll_accept(self.token, self.fd.as_raw_fd(), cx) {
                    crate::ring::Accepted::Ready(accepted) => Poll::Ready(Some(accepted)),
                    crate::ring::Accepted::Pending => Poll::Pending,
                    crate::ring::Accepted::Unsupported => Poll::Ready(None),
                },
                None => Poll::Ready(None),
            })
        })
        .await;
        if let Some(accepted) = ringed {
            let fd = accepted?;
            let peer = socket2::SockRef::from(&fd)
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket());
            return Ok((fd, peer));
        }
        poll_fn(|cx| {
            if !self.ready_or_wait(cx.waker(), false) {
                return Poll::Pending;
            }
            // SAFETY: all-zero is a valid sockaddr_storage.
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
                match self.failed(Some(cx.waker()), false) {
                    Failed::Retry => continue,
                    Failed::Wait => return Poll::Pending,
                    Failed::Error(e) => return Poll::Ready(Err(e)),
                }
            }
        })
        .await
    }

    /// Takes the socket out of this runtime's epoll set and gives its descriptor back, to be
    /// handed to another runtime (`Socket::new` there).
    pub fn into_fd(self) -> io::Result<OwnedFd> {
        let token = self.token;
        // SAFETY: `self` is forgotten right after, so the descriptor is moved out exactly once.
        let fd = unsafe { std::ptr::read(&self.fd) };
        std::mem::forget(self);
        let removed = with_core(|core| {
            core.reactor.release(token);
            // As in `drop`: queued ring sends reach the kernel while the number is still
            // this socket's.
            core.reactor.submit_ring();
            core.reactor.deregister(fd.as_raw_fd())
        });
        removed.map(|()| fd)
    }

    pub fn set_nodelay(&self) -> io::Result<()> {
        socket2::SockRef::from(&self.fd).set_nodelay(true)
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<Option<SocketAddr>> {
        Ok(socket2::SockRef::from(&self.fd).peer_addr()?.as_socket())
    }

    /// Writes what the socket takes of `buf` now, without waiting: `Ok(None)` when it would
    /// block (the socket then waits for its next output event, and whoever writes next must
    /// leave a waker with [`AsyncWrite::poll_write`]). Skips the syscall when the last write
    /// already met a full socket and no event came since.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<Option<usize>> {
        if !with_core(|core| core.reactor.is_writable(self.token)) {
            return Ok(None);
        }
        loop {
            match send(&self.fd, buf) {
                Ok(n) => return Ok(Some(n)),
                Err(_) => match self.failed(None, true) {
                    Failed::Retry => continue,
                    Failed::Wait => return Ok(None),
                    Failed::Error(e) => return Err(e),
                },
            }
        }
    }

    /// Queues a send of `buf` through the runtime's io_uring, to be reported by
    /// [`take_ring_sends`] with `tag`. It goes to the kernel with the next
    /// [`submit_ring_sends`], at the end of the loop's turn or when the loop parks, whichever
    /// is first; it never waits in the kernel for room (`MSG_DONTWAIT`: a full socket reports
    /// `WouldBlock`, and the socket then waits for its next output event, as after a
    /// [`Socket::try_write`] that would block; see [`Socket::would_block`]). `Err(buf)` on
    /// the epoll engine, or when the ring is full.
    ///
    /// Order: sends to one socket in flight at once may complete in any order; keep at most
    /// one in flight per socket.
    pub fn send_in_ring(&self, buf: Bytes, tag: u64) -> Result<(), Bytes> {
        with_core(|core| match core.reactor.ring() {
            Some(ring) => ring.queue_send(self.fd.as_raw_fd(), buf, tag),
            None => Err(buf),
        })
    }

    /// Whether a write syscall (or ring send) may succeed now: false from a `WouldBlock`
    /// until the socket's next output event.
    pub fn may_write(&self) -> bool {
        with_core(|core| core.reactor.is_writable(self.token))
    }

    /// A write made elsewhere (a ring send) found the socket full: no write is tried until
    /// its next output event, which wakes whoever then waits in
    /// [`AsyncWrite::poll_write`].
    pub fn would_block(&self) {
        with_core(|core| core.reactor.wait_for(self.token, None, true));
    }

    fn ready_or_wait(&self, waker: &Waker, write: bool) -> bool {
        with_core(|core| core.reactor.ready_or_wait(self.token, waker, write))
    }

    /// After a syscall failed (errno still set): wait (leaving `waker`), retry, or give up.
    fn failed(&self, waker: Option<&Waker>, write: bool) -> Failed {
        let error = io::Error::last_os_error();
        match error.kind() {
            io::ErrorKind::WouldBlock => {
                with_core(|core| core.reactor.wait_for(self.token, waker, write));
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

/// One non-blocking `send`; the error leaves errno set for [`Socket::failed`].
fn send(fd: &OwnedFd, buf: &[u8]) -> Result<usize, ()> {
    // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
    let n = unsafe {
        libc::send(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n >= 0 {
        Ok(n as usize)
    } else {
        Err(())
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // The fd closes after this (field drop), which takes it out of the epoll set; events
        // already reported carry this generation and find the slot reused or free. Sends
        // queued in the ring go to the kernel first, which takes its own reference to the
        // file: its number, freed by the close, may name another socket by the next submit.
        let token = self.token;
        try_with_core(|core| {
            // Releasing cancels a listener's multishot accept, submitted with the rest.
            core.reactor.release(token);
            core.reactor.submit_ring();
        });
    }
}

/// Submits the sends queued in this runtime's ring ([`Socket::send_in_ring`]) with one
/// `io_uring_enter`, and reaps what completed meanwhile (a send to a socket with room
/// completes within the call). Nothing to do on the epoll engine.
pub fn submit_ring_sends() {
    with_core(|core| core.reactor.submit_ring());
}

/// Moves the ring sends that completed into `out`.
pub fn take_ring_sends(out: &mut Vec<SendDone>) {
    with_core(|core| {
        if let Some(ring) = core.reactor.ring() {
            ring.take_done(out);
        }
    });
}

/// Completes when ring sends have completed (to be taken with [`take_ring_sends`]); never on
/// the epoll engine.
pub async fn ring_sends_done() {
    poll_fn(|cx| {
        with_core(|core| match core.reactor.ring() {
            Some(ring) => ring.poll_done(cx),
            None => Poll::Pending,
        })
    })
    .await
}

/// Whether this thread runs a runtime that can send through a ring (the io_uring engine).
pub fn has_ring() -> bool {
    try_with_core(|core| core.reactor.ring().is_some()).unwrap_or(false)
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        if !self.ready_or_wait(cx.waker(), false) {
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
            match self.failed(Some(cx.waker()), false) {
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
        if !self.ready_or_wait(cx.waker(), true) {
            return Poll::Pending;
        }
        loop {
            match send(&self.fd, buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(()) => match self.failed(Some(cx.waker()), true) {
                    Failed::Retry => continue,
                    Failed::Wait => return Poll::Pending,
                    Failed::Error(e) => return Poll::Ready(Err(e)),
                },
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

    use futures_lite::{AsyncReadExt, AsyncWriteExt};

    use crate::time::timeout;
    use crate::Runtime;

    /// A connected pair: the server end as a registered [`Socket`], the client as std.
    fn pair() -> (Socket, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (Socket::new(OwnedFd::from(server)).unwrap(), client)
    }

    #[test]
    fn a_waiting_read_and_a_blocked_write_are_woken() {
        for rt in crate::engine::test_runtimes() {
            rt.block_on(async {
                let (mut socket, mut client) = pair();

                // A read that has to wait for the peer.
                let writer = std::thread::spawn({
                    let mut client = client.try_clone().unwrap();
                    move || {
                        std::thread::sleep(Duration::from_millis(50));
                        client.write_all(b"ping").unwrap();
                    }
                });
                let mut buf = [0u8; 16];
                let n = timeout(Duration::from_secs(5), socket.read(&mut buf))
                    .await
                    .expect("the read was never woken")
                    .unwrap();
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
                })
                .await
                .expect("a blocked write was never woken");
                assert_eq!(reader.join().unwrap(), total);
            });
        }
    }

    /// Counts the wake-ups of the waker made from it.
    #[derive(Default)]
    struct WakeCount(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for WakeCount {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The old socket's file stays open (a duplicate descriptor), so the kernel keeps its
    /// epoll registration and really reports an event under the old token after its slot
    /// went to a new socket: the reactor must not take it for the new one's.
    #[test]
    fn a_reused_slot_ignores_the_old_sockets_events() {
        for rt in crate::engine::test_runtimes() {
            rt.block_on(async {
                let (first, mut old_peer) = pair();
                let old = first.token;
                // SAFETY: plain syscall; the duplicate is owned right away.
                let old_file = unsafe { OwnedFd::from_raw_fd(libc::dup(first.as_raw_fd())) };
                drop(first);
                let (second, _c2) = pair();
                let (old_index, _) = crate::reactor::split(old);
                assert_eq!(crate::reactor::split(second.token).0, old_index, "reused");
                assert_ne!(second.token, old);
                let woken = std::sync::Arc::new(WakeCount::default());
                let waker = Waker::from(woken.clone());
                with_core(|core| {
                    core.reactor.wait_for(second.token, Some(&waker), false);
                    assert!(!core.reactor.ready_or_wait(second.token, &waker, false));
                });
                // The new socket's first (writable) event is not what this test is about.
                with_core(|core| core.reactor.poll_sockets(true));
                // The old socket's peer writes: its still-registered file becomes readable.
                old_peer.write_all(b"x").unwrap();
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                let mut events = 0;
                while events == 0 && std::time::Instant::now() < deadline {
                    events = with_core(|core| core.reactor.poll_sockets(false));
                }
                assert_eq!(events, 1, "the kernel reported the old token's event");
                // It changed nothing of the new socket: not readable, its waker not woken.
                with_core(|core| {
                    assert!(!core.reactor.ready_or_wait(second.token, &waker, false));
                });
                assert_eq!(
                    woken.0.load(std::sync::atomic::Ordering::SeqCst),
                    0,
                    "the new socket's waker was woken"
                );
                drop(old_file);
            });
        }
    }

    /// A socket that read EAGAIN makes no read syscall until an input event arrives, and a
    /// blocked read does not stop writes.
    #[test]
    fn a_drained_direction_waits_for_its_event() {
        for rt in crate::engine::test_runtimes() {
            rt.block_on(async {
                let (mut socket, mut client) = pair();
                let waker = poll_fn(|cx| Poll::Ready(cx.waker().clone())).await;
                let mut cx = Context::from_waker(&waker);
                let mut buf = [0u8; 8];
                assert!(Pin::new(&mut socket)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending());
                assert!(!socket.ready_or_wait(&waker, false));
                assert!(socket.ready_or_wait(&waker, true), "writes unaffected");
                // Data alone does not make it try again; the event does.
                client.write_all(b"x").unwrap();
                std::thread::sleep(Duration::from_millis(20));
                assert!(Pin::new(&mut socket)
                    .poll_read(&mut cx, &mut buf)
                    .is_pending());
                with_core(|core| core.reactor.poll_sockets(false));
                match Pin::new(&mut socket).poll_read(&mut cx, &mut buf) {
                    Poll::Ready(Ok(1)) => assert_eq!(buf[0], b'x'),
                    other => panic!("{other:?}"),
                }
            });
        }
    }

    #[test]
    fn accept_reports_the_peer_and_connect_reaches_it() {
        for rt in crate::engine::test_runtimes() {
            rt.block_on(async {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.set_nonblocking(true).unwrap();
                let addr = listener.local_addr().unwrap();
                let listener = Socket::new(OwnedFd::from(listener)).unwrap();
                let accepting = crate::spawn_local(async move { listener.accept().await });
                let mut client = Socket::connect(addr, Duration::from_secs(5)).await.unwrap();
                let (fd, peer) = timeout(Duration::from_secs(5), accepting)
                    .await
                    .expect("accept was never woken")
                    .unwrap();
                let local = socket2::SockRef::from(&client.fd)
                    .local_addr()
                    .unwrap()
                    .as_socket();
                assert_eq!(peer, local);
                let mut server = Socket::new(fd).unwrap();
                client.write_all(b"hello").await.unwrap();
                let mut buf = [0u8; 5];
                server.read_exact(&mut buf).await.unwrap();
                assert_eq!(&buf, b"hello");
                // Nobody listens here (a port just freed): refused, not hung.
                let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let gone = closed.local_addr().unwrap();
                drop(closed);
                assert!(Socket::connect(gone, Duration::from_secs(5)).await.is_err());
            });
        }
    }

    #[test]
    fn a_socket_handed_to_another_runtime_works_there_and_not_here() {
        for rt in crate::engine::test_runtimes() {
            let (fd, mut client) = rt.block_on(async {
                let (socket, client) = pair();
                (socket.into_fd().unwrap(), client)
            });
            // Another thread's runtime takes it over and reads what the peer sends.
            let engine = rt.engine();
            let got = std::thread::spawn(move || {
                Runtime::with_engine(engine).unwrap().block_on(async move {
                    let mut socket = Socket::new(fd).unwrap();
                    let mut buf = [0u8; 4];
                    timeout(Duration::from_secs(5), socket.read_exact(&mut buf))
                        .await
                        .expect("the new runtime was never woken")
                        .unwrap();
                    buf
                })
            });
            std::thread::sleep(Duration::from_millis(50));
            client.write_all(b"moved").unwrap();
            assert_eq!(&got.join().unwrap(), b"move");
            // The first runtime no longer watches it: its epoll set is empty.
            rt.block_on(async {
                assert_eq!(with_core(|core| core.reactor.poll_sockets(false)), 0)
            });
        }
    }

    #[test]
    fn try_write_takes_what_fits_and_then_says_it_would_block() {
        for rt in crate::engine::test_runtimes() {
            rt.block_on(async {
                let (socket, _client) = pair();
                let chunk = vec![1u8; 1 << 20];
                let mut total = 0usize;
                let blocked = loop {
                    match socket.try_write(&chunk).unwrap() {
                        Some(n) => total += n,
                        None => break true,
                    }
                    if total > 256 << 20 {
                        break false;
                    }
                };
                assert!(blocked && total > 0, "wrote {total} bytes without blocking");
                // Without an event since, it does not even try.
                assert!(!with_core(|core| core.reactor.is_writable(socket.token)));
                assert_eq!(socket.try_write(b"x").unwrap(), None);
            });
        }
    }

    #[test]
    fn a_ring_send_reaches_the_peer_and_reports_what_it_sent() {
        Runtime::with_engine(crate::Engine::IoUring)
            .unwrap()
            .block_on(async {
                assert!(has_ring());
                let (socket, mut client) = pair();
                socket
                    .send_in_ring(Bytes::from_static(b"through the ring"), 7)
                    .unwrap();
                // A task waiting for completions is woken by them.
                let waiting = crate::spawn_local(ring_sends_done());
                submit_ring_sends();
                timeout(Duration::from_secs(5), waiting)
                    .await
                    .expect("the waiting task was woken");
                let mut done = Vec::new();
                take_ring_sends(&mut done);
                assert_eq!(done.len(), 1);
                assert_eq!(done[0].tag, 7);
                assert_eq!(done[0].result.as_ref().ok(), Some(&16));
                assert_eq!(&done[0].buf[..], b"through the ring");
                let mut buf = [0u8; 16];
                client.read_exact(&mut buf).unwrap();
                assert_eq!(&buf, b"through the ring");
            });
    }

    #[test]
    fn a_ring_send_to_a_full_socket_would_block_instead_of_waiting() {
        Runtime::with_engine(crate::Engine::IoUring)
            .unwrap()
            .block_on(async {
                let (socket, _client) = pair();
                let chunk = Bytes::from(vec![1u8; 1 << 20]);
                let mut blocked = false;
                for _ in 0..512 {
                    socket.send_in_ring(chunk.clone(), 1).unwrap();
                    submit_ring_sends();
                    let mut done = Vec::new();
                    take_ring_sends(&mut done);
                    assert_eq!(done.len(), 1, "completed within the submit");
                    match &done[0].result {
                        Ok(n) => assert!(*n > 0),
                        Err(e) => {
                            assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "{e}");
                            blocked = true;
                            break;
                        }
                    }
                }
                assert!(blocked, "512 MiB went into a socket nobody reads");
                socket.would_block();
                assert!(!socket.may_write());
            });
    }

    /// A send queued and not submitted when its socket is dropped goes to the kernel before
    /// the descriptor closes (after the close, its number may name another socket): the peer
    /// gets it, then the end of the stream.
    #[test]
    fn queued_ring_sends_are_submitted_before_their_socket_closes() {
        Runtime::with_engine(crate::Engine::IoUring)
            .unwrap()
            .block_on(async {
                let (socket, mut client) = pair();
                socket
                    .send_in_ring(Bytes::from_static(b"last words"), 1)
                    .unwrap();
                drop(socket);
                client
                    .set_read_timeout(Some(Duration::from_secs(5)))
                    .unwrap();
                let mut buf = Vec::new();
                client.read_to_end(&mut buf).unwrap();
                assert_eq!(buf, b"last words");
            });
    }

    #[test]
    fn the_epoll_engine_has_no_ring_to_send_through() {
        Runtime::with_engine(crate::Engine::Epoll)
            .unwrap()
            .block_on(async {
                let (socket, _client) = pair();
                assert!(!has_ring());
                let back = socket
                    .send_in_ring(Bytes::from_static(b"x"), 1)
                    .unwrap_err();
                assert_eq!(&back[..], b"x");
            });
    }

    /// A burst of connections is taken by one multishot accept, each with its peer; dropping
    /// the listener cancels the accept, so the port is free again at once (the request held
    /// the listening socket open).
    #[test]
    fn a_multishot_accept_takes_a_burst_and_a_dropped_listener_frees_its_port() {
        Runtime::with_engine(crate::Engine::IoUring)
            .unwrap()
            .block_on(async {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.set_nonblocking(true).unwrap();
                let addr = listener.local_addr().unwrap();
                let listener = Socket::new(OwnedFd::from(listener)).unwrap();
                // Armed before the burst: the first accept waits.
                let first = crate::spawn_local(async move {
                    let got = listener.accept().await;
                    (listener, got)
                });
                crate::time::sleep(Duration::from_millis(10)).await;
                let clients: Vec<_> = (0..50)
                    .map(|_| std::net::TcpStream::connect(addr).unwrap())
                    .collect();
                let (listener, got) = timeout(Duration::from_secs(5), first)
                    .await
                    .expect("the first accept was woken");
                let mut peers = vec![got.unwrap().1.expect("a peer")];
                for _ in 1..50 {
                    let (_fd, peer) = timeout(Duration::from_secs(5), listener.accept())
                        .await
                        .expect("accepted")
                        .unwrap();
                    peers.push(peer.expect("a peer"));
                }
                let mut expected: Vec<_> =
                    clients.iter().map(|c| c.local_addr().unwrap()).collect();
                peers.sort();
                expected.sort();
                assert_eq!(peers, expected);
                drop(listener);
                std::net::TcpListener::bind(addr).expect("the port is free again");
            });
    }
}
