//! One simulated client: connect, upgrade (WebSocket), authenticate (a peer's client
//! subscribes instead), then read and count until the run ends, reconnecting when the server
//! closes it. Every read lands in the executor's scratch buffer and is decoded there
//! ([`codec::feed`], or a peer's decoder through [`peer::feed`]); only an unfinished frame is
//! kept.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::future::{self, poll_fn};
use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use glommio::timer::sleep;
use imgate_client::codec::{self, Sink, Transport, WireError};
use imgate_client::upgrade;
use imgate_shared::frame::op;
use socket2::{Domain, Protocol, Socket, Type};

use crate::cli::System;
use crate::exec::{bump, Exec};
use crate::messages::{Counters, MAX_PHASES};
use crate::payload;
use crate::peer::{self, Event, PeerError};
use crate::tally::{self, Order, SeqTrack};
use crate::{nats, resp};

/// One simulated client's connection, owned by its task (no `Rc`, nothing else points at it).
pub(crate) struct Conn {
    stream: Option<TcpStream>,
    /// Unfinished frame bytes (usually empty, with no allocation).
    pending: Vec<u8>,
    track: SeqTrack,
    authed: bool,
}

impl Conn {
    fn fd(&self) -> RawFd {
        self.stream.as_ref().map_or(-1, |s| s.as_raw_fd())
    }

    fn close(&mut self) {
        self.authed = false;
        self.stream = None;
        self.pending = Vec::new();
    }
}

/// A write that either goes out whole at once or not at all (heartbeats, pongs).
pub(crate) fn send_now(fd: RawFd, bytes: &[u8]) -> bool {
    if fd < 0 {
        return false;
    }
    // SAFETY: `bytes` is valid for its length; `fd` is an open socket of this executor.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    n == bytes.len() as isize
}

/// Why a connect attempt failed.
enum ConnectFailure {
    /// No connection (refused, reset, timed out before the server answered).
    Connect(String),
    /// The server closed the connection instead of accepting the auth.
    Auth(String),
}

/// Why an authenticated connection ended.
enum Ended {
    Eof,
    Io(io::Error),
    Protocol(ReadError),
}

/// Bytes from the server that cannot be read any further.
pub(crate) enum ReadError {
    Goim(WireError),
    Peer(PeerError),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Goim(e) => e.fmt(f),
            ReadError::Peer(e) => e.fmt(f),
        }
    }
}

/// One client from connect to the end of the run. Its task is the client's whole state:
/// the connection, an `Rc` of the executor and the slot.
pub(crate) async fn client_task(exec: Rc<Exec>, slot: u32) {
    let mut conn = Conn {
        stream: None,
        pending: Vec::new(),
        track: SeqTrack::default(),
        authed: false,
    };
    let index = exec.first + u64::from(slot);
    loop {
        exec.in_flight.set(exec.in_flight.get() + 1);
        bump(&exec.shared.connecting, 1);
        let started = Instant::now();
        // Boxed: the connect state lives on the heap only while connecting, so the task of an
        // idle client stays small.
        let result = Box::pin(connect(&exec, index, &mut conn)).await;
        exec.in_flight.set(exec.in_flight.get() - 1);
        bump(&exec.shared.connecting, u64::MAX);
        if exec.finishing.get() {
            return;
        }
        match result {
            Ok(()) => {
                let us = started.elapsed().as_micros() as u64;
                tally::record(&mut exec.connect.borrow_mut(), us);
                bump(&exec.shared.connects, 1);
                bump(&exec.shared.connected, 1);
                exec.set_authed_fd(slot, conn.fd());
                let ended = Reading {
                    exec: &exec,
                    conn: &mut conn,
                }
                .await;
                exec.set_authed_fd(slot, -1);
                conn.close();
                bump(&exec.shared.connected, u64::MAX);
                if exec.finishing.get() {
                    return;
                }
                bump(&exec.shared.disconnected, 1);
                let why = match ended {
                    Ended::Eof => "closed by the server".to_string(),
                    Ended::Io(e) => format!("socket error: {e}"),
                    Ended::Protocol(e) => {
                        bump(&exec.shared.protocol_errors, 1);
                        e.to_string()
                    }
                };
                exec.note_error(format!("client {index}: {why}"));
            }
            Err(failure) => {
                conn.close();
                let why = match failure {
                    ConnectFailure::Connect(why) => {
                        bump(&exec.shared.connect_failed, 1);
                        why
                    }
                    ConnectFailure::Auth(why) => {
                        bump(&exec.shared.auth_failed, 1);
                        why
                    }
                };
                exec.note_error(format!("client {index}: {why}"));
            }
        }
        if !exec.config.reconnect {
            return;
        }
        sleep(Duration::from_secs(1)).await;
        if exec.finishing.get() {
            return;
        }
        bump(&exec.shared.reconnects, 1);
    }
}

/// Lets an IPv4 socket bound to a source address pick its port at connect time, per
/// destination, not at bind time: the 4-tuple must be unique, not the port, so one source
/// address serves many connections. Best effort (an older kernel keeps bind-time ports).
pub(crate) fn bind_address_no_port(socket: &Socket) {
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Opens a socket from the worker's source address, starts a non-blocking connect and hands
/// it to glommio; the first write completes when the connection does.
fn open(source: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let domain = if target.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    if target.is_ipv4() {
        bind_address_no_port(&socket);
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.set_nodelay(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    // SAFETY: we own the descriptor and hand it over whole.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Connects, upgrades (WebSocket) and authenticates within the connect timeout.
async fn connect(exec: &Exec, index: u64, conn: &mut Conn) -> Result<(), ConnectFailure> {
    let timeout = Duration::from_millis(exec.config.connect_timeout_ms.max(1));
    let attempt = async {
        let config = &exec.config;
        let target = config.targets[(index % config.targets.len() as u64) as usize];
        let connect_err = |e: io::Error| ConnectFailure::Connect(format!("connect {target}: {e}"));
        conn.stream = Some(open(config.source_ip, target).map_err(connect_err)?);

        if config.transport == Transport::WebSocket {
            let request = upgrade::upgrade_request(&target.to_string());
            write_all(conn, request.as_bytes())
                .await
                .map_err(connect_err)?;
            loop {
                let got = read_once(exec, conn, |conn, bytes| {
                    conn.pending.extend_from_slice(bytes)
                })
                .await
                .map_err(connect_err)?;
                if got.is_none() {
                    return Err(ConnectFailure::Auth("closed during the upgrade".into()));
                }
                match upgrade::upgrade_response(&conn.pending) {
                    Ok(Some(n)) => {
                        conn.pending.drain(..n);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => return Err(ConnectFailure::Auth(e)),
                }
            }
        }

        // A peer's client subscribes; its confirmation stands for goim's auth reply.
        let hello = match config.system {
            System::Imgate => None,
            System::Redis => Some(resp::subscribe(&config.channel)),
            System::Nats => Some(nats::hello(&config.channel)),
        };
        if let Some(hello) = hello {
            write_all(conn, &hello).await.map_err(connect_err)?;
            return wait_for_auth(exec, conn, "the subscription").await;
        }

        let g = index as i64;
        let auth = serde_json::json!({
            "mid": config.mid_base + g,
            "key": format!("{}{}", config.key_prefix, g),
            "room_id": config.room,
            "platform": "web",
            "accepts": config.accepts,
        })
        .to_string();
        let frame = codec::client_frame(config.transport, op::AUTH, 1, auth.as_bytes());
        write_all(conn, &frame).await.map_err(connect_err)?;
        wait_for_auth(exec, conn, "op 8").await
    };
    future::or(attempt, async {
        sleep(timeout).await;
        Err(ConnectFailure::Connect(format!(
            "no auth reply within {timeout:?}"
        )))
    })
    .await
}

/// Reads until the server confirmed the auth (or the subscription): `what` it waits for.
async fn wait_for_auth(exec: &Exec, conn: &mut Conn, what: &str) -> Result<(), ConnectFailure> {
    while !conn.authed {
        let got = read_once(exec, conn, |conn, bytes| deliver(exec, conn, bytes))
            .await
            .map_err(|e| ConnectFailure::Auth(format!("waiting for {what}: {e}")))?;
        match got {
            None => return Err(ConnectFailure::Auth(format!("closed before {what}"))),
            Some(Err(e)) => return Err(ConnectFailure::Auth(e.to_string())),
            Some(Ok(())) => {}
        }
    }
    Ok(())
}

/// Reads and delivers until the connection ends. Hand-written rather than an `async fn` so
/// the idle client's task holds just these two references.
struct Reading<'a> {
    exec: &'a Exec,
    conn: &'a mut Conn,
}

impl std::future::Future for Reading<'_> {
    type Output = Ended;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Ended> {
        let this = self.get_mut();
        // A few reads per wake-up, then let the other clients run.
        for _ in 0..4 {
            match poll_read_into(this.exec, this.conn, cx, |conn, bytes| {
                deliver(this.exec, conn, bytes)
            }) {
                Poll::Ready(Ok(Some(Ok(())))) => {}
                Poll::Ready(Ok(Some(Err(e)))) => return Poll::Ready(Ended::Protocol(e)),
                Poll::Ready(Ok(None)) => return Poll::Ready(Ended::Eof),
                Poll::Ready(Err(e)) => return Poll::Ready(Ended::Io(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// One `recv` into the executor's scratch buffer; `on_bytes` sees the bytes inside the same
/// poll, so no connection owns a read buffer. `Ok(None)` at end of stream.
fn poll_read_into<R>(
    exec: &Exec,
    conn: &mut Conn,
    cx: &mut std::task::Context<'_>,
    on_bytes: impl FnOnce(&mut Conn, &mut [u8]) -> R,
) -> Poll<io::Result<Option<R>>> {
    let mut scratch = exec.scratch.borrow_mut();
    let polled = match conn.stream.as_mut() {
        Some(stream) => Pin::new(stream).poll_read(cx, &mut scratch[..]),
        None => Poll::Ready(Ok(0)),
    };
    match polled {
        Poll::Ready(Ok(0)) => Poll::Ready(Ok(None)),
        Poll::Ready(Ok(n)) => {
            bump(&exec.shared.reads, 1);
            bump(&exec.shared.bytes, n as u64);
            Poll::Ready(Ok(Some(on_bytes(conn, &mut scratch[..n]))))
        }
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

async fn read_once<R>(
    exec: &Exec,
    conn: &mut Conn,
    mut on_bytes: impl FnMut(&mut Conn, &mut [u8]) -> R,
) -> io::Result<Option<R>> {
    poll_fn(|cx| poll_read_into(exec, conn, cx, &mut on_bytes)).await
}

async fn write_all(conn: &mut Conn, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let n = poll_fn(|cx| match conn.stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_write(cx, data),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        data = &data[n..];
    }
    Ok(())
}

/// Decodes one read's bytes and counts what they hold.
fn deliver(exec: &Exec, conn: &mut Conn, bytes: &mut [u8]) -> Result<(), ReadError> {
    let mut pending = std::mem::take(&mut conn.pending);
    let mut counting = Counting {
        exec,
        conn,
        now_ns: payload::now_ns(),
        counts: Counters::default(),
        messages_at_last_outer: 0,
    };
    let result = match exec.config.system {
        System::Imgate => codec::feed(exec.config.transport, &mut pending, bytes, &mut counting)
            .map_err(ReadError::Goim),
        System::Redis => peer::feed(&mut pending, bytes, |buf| {
            resp::decode(buf, |e| counting.event(e))
        })
        .map_err(ReadError::Peer),
        System::Nats => peer::feed(&mut pending, bytes, |buf| {
            nats::decode(buf, |e| counting.event(e))
        })
        .map_err(ReadError::Peer),
    };
    let c = counting.counts;
    conn.pending = pending;
    let s = &exec.shared;
    for (field, n) in [
        (&s.messages, c.messages),
        (&s.stamped, c.stamped),
        (&s.foreign, c.foreign),
        (&s.frames, c.frames),
        (&s.heartbeat_replies, c.heartbeat_replies),
        (&s.seq_gaps, c.seq_gaps),
        (&s.seq_behind, c.seq_behind),
    ] {
        if n > 0 {
            bump(field, n);
        }
    }
    result
}

/// The [`Sink`] of one read: counts into plain fields, added to the executor's counters once.
struct Counting<'a> {
    exec: &'a Exec,
    conn: &'a mut Conn,
    now_ns: u64,
    counts: Counters,
    messages_at_last_outer: u64,
}

impl Counting<'_> {
    /// A peer's event, counted as its goim counterpart: the subscription is the auth reply,
    /// a message is a push of the run's op written alone, a pong is a heartbeat reply.
    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::Subscribed => self.conn.authed = true,
            // NATS confirms the SUB with the PONG to the PING sent after it.
            Event::Pong if !self.conn.authed => self.conn.authed = true,
            Event::Pong => self.counts.heartbeat_replies += 1,
            Event::Message(payload) => {
                self.frame(1, self.exec.config.push_op, 0, payload);
                self.outer();
            }
            Event::Ping => {
                send_now(self.conn.fd(), nats::PONG);
            }
            Event::Other => {}
        }
    }
}

impl Sink for Counting<'_> {
    fn frame(&mut self, _ver: i16, frame_op: i32, _seq: i32, body: &[u8]) {
        match frame_op {
            op::AUTH_REPLY => self.conn.authed = true,
            op::HEARTBEAT_REPLY => self.counts.heartbeat_replies += 1,
            _ => {
                self.counts.messages += 1;
                let config = &self.exec.config;
                let stamp = (frame_op == config.push_op)
                    .then(|| payload::parse(body))
                    .flatten()
                    .filter(|s| {
                        s.run == config.run_id
                            && s.seq <= tally::MAX_SEQ
                            && (s.phase as usize) < MAX_PHASES
                    });
                let Some(stamp) = stamp else {
                    self.counts.foreign += 1;
                    return;
                };
                self.counts.stamped += 1;
                let us = self.now_ns.saturating_sub(stamp.sent_ns) / 1000;
                let mut latency = self.exec.latency.borrow_mut();
                while latency.len() <= stamp.phase as usize {
                    latency.push(tally::new_histogram());
                }
                tally::record(&mut latency[stamp.phase as usize], us);
                self.exec.pushes.borrow_mut().record(stamp.seq);
                if config.ordered {
                    match self.conn.track.observe(stamp.seq) {
                        Order::InOrder => {}
                        Order::Gap(n) => self.counts.seq_gaps += u64::from(n),
                        Order::Behind => self.counts.seq_behind += 1,
                    }
                }
            }
        }
    }

    fn outer(&mut self) {
        // Units carrying messages only: a heartbeat reply is not a push write.
        if self.counts.messages > self.messages_at_last_outer {
            self.counts.frames += 1;
            self.messages_at_last_outer = self.counts.messages;
        }
    }

    fn ping(&mut self, payload: &[u8]) {
        send_now(self.conn.fd(), &codec::pong(payload));
    }
}
