//! A small blocking goim client over TCP or WebSocket, either optionally over TLS: what
//! `imgate sub` runs and what the end-to-end tests use to speak the real protocol over real
//! sockets. It reads with the same decoder as the load generator ([`crate::codec`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imgate_shared::frame::{self, op};
use imgate_shared::tls::rustls::pki_types::ServerName;
use imgate_shared::tls::rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::codec::{self, Sink, WireError};
use crate::upgrade;

pub use crate::codec::Transport;

/// One frame received from the server (inner frames of an op-9 batch are returned one by one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub ver: i16,
    pub op: i32,
    pub seq: i32,
    pub body: Vec<u8>,
}

/// TLS settings of a client: whom to trust and the name to verify.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl TlsClient {
    /// Trusts the certificates of a PEM file (a private CA or a self-signed server
    /// certificate) and verifies the server as `server_name`.
    pub fn from_ca_file(ca_file: &Path, server_name: &str) -> Result<TlsClient, ClientError> {
        let mut roots = RootCertStore::empty();
        let certs = imgate_shared::tls::read_certificates(ca_file)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| ClientError::Tls(e.to_string()))?;
        }
        let config = ClientConfig::builder_with_provider(imgate_shared::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| ClientError::Tls(format!("server name {server_name:?}: {e}")))?;
        Ok(TlsClient {
            config: Arc::new(config),
            server_name,
        })
    }
}

/// The client's socket, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// A connected goim client.
pub struct Client {
    stream: Stream,
    transport: Transport,
    /// Bytes read and not decoded yet (an unfinished frame).
    buf: Vec<u8>,
    pending: VecDeque<Frame>,
    /// Frames received from the server so far, batches counted per inner frame.
    pub received: u64,
}

/// Why the client stopped.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("server closed the connection")]
    Closed,
    #[error("timed out waiting for the server")]
    Timeout,
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("auth refused: expected op 8, got op {0}")]
    AuthRefused(i32),
    /// The server refused the auth and said why (op 6, then it closes the connection).
    #[error("auth refused by the server: {0}")]
    Refused(String),
    #[error("TLS: {0}")]
    Tls(String),
}

impl Client {
    /// Connects and, for WebSocket, performs the upgrade to `/sub`.
    pub fn connect(addr: SocketAddr, transport: Transport) -> Result<Client, ClientError> {
        Self::connect_with(addr, transport, None)
    }

    /// [`Client::connect`], over TLS when `tls` is given (the handshake completes before this
    /// returns).
    pub fn connect_with(
        addr: SocketAddr,
        transport: Transport,
        tls: Option<&TlsClient>,
    ) -> Result<Client, ClientError> {
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_nodelay(true)?;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(tls) => {
                let conn = ClientConnection::new(tls.config.clone(), tls.server_name.clone())
                    .map_err(|e| ClientError::Tls(e.to_string()))?;
                let mut stream = StreamOwned::new(conn, tcp);
                stream.sock.set_read_timeout(Some(Duration::from_secs(5)))?;
                while stream.conn.is_handshaking() {
                    stream
                        .conn
                        .complete_io(&mut stream.sock)
                        .map_err(|e| ClientError::Tls(e.to_string()))?;
                }
                Stream::Tls(Box::new(stream))
            }
        };
        let mut client = Client {
            stream,
            transport,
            buf: Vec::with_capacity(4096),
            pending: VecDeque::new(),
            received: 0,
        };
        if transport == Transport::WebSocket {
            client.upgrade(addr)?;
        }
        Ok(client)
    }

    fn upgrade(&mut self, addr: SocketAddr) -> Result<(), ClientError> {
        self.write_out(upgrade::upgrade_request(&addr.to_string()).as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(head_len) =
                upgrade::upgrade_response(&self.buf).map_err(ClientError::Protocol)?
            {
                self.buf.drain(..head_len);
                return Ok(());
            }
            self.fill(deadline)?;
        }
    }

    /// Writes all of `bytes` and flushes them (through TLS, when on).
    fn write_out(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Sends one goim frame.
    pub fn send(&mut self, ver: i16, op: i32, seq: i32, body: &[u8]) -> Result<(), ClientError> {
        let frame = frame::encode(ver, op, seq, body);
        self.send_raw_frame(&frame)
    }

    /// Sends bytes as one goim "frame": raw on TCP, one binary message on WebSocket.
    pub fn send_raw_frame(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        match self.transport {
            Transport::Tcp => self.write_out(bytes)?,
            Transport::WebSocket => self.write_out(&codec::ws_message(bytes))?,
        }
        Ok(())
    }

    /// Writes bytes to the socket as they are (for tests of malformed input).
    pub fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.write_out(bytes)?;
        Ok(())
    }

    /// Closes the sending half, as a client hanging up does (the server reads end of stream);
    /// what the server sends can still be read.
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Stream::Tls(s) = &mut self.stream {
            s.conn.send_close_notify();
            s.flush()?;
        }
        self.stream.tcp().shutdown(std::net::Shutdown::Write)
    }

    /// Sends the auth frame and waits for op 8.
    pub fn auth(&mut self, body: &str) -> Result<(), ClientError> {
        self.send(1, op::AUTH, 1, body.as_bytes())?;
        let reply = self.recv(Duration::from_secs(5))?;
        match reply.op {
            op::AUTH_REPLY => Ok(()),
            op::DISCONNECT_REPLY => Err(ClientError::Refused(
                String::from_utf8_lossy(&reply.body).into_owned(),
            )),
            other => Err(ClientError::AuthRefused(other)),
        }
    }

    /// Sends a heartbeat and returns the room online count from the reply, skipping pushes
    /// that arrive first (they stay queued for `recv`).
    pub fn heartbeat(&mut self, seq: i32) -> Result<i32, ClientError> {
        self.send(1, op::HEARTBEAT, seq, &[])?;
        let reply = self.recv_op(op::HEARTBEAT_REPLY, Duration::from_secs(5))?;
        let count: [u8; 4] = reply.body.as_slice().try_into().map_err(|_| {
            ClientError::Protocol(format!(
                "heartbeat reply body of {} bytes",
                reply.body.len()
            ))
        })?;
        Ok(i32::from_be_bytes(count))
    }

    /// Waits for a frame with `op`; frames with other ops received meanwhile stay queued.
    pub fn recv_op(&mut self, wanted: i32, timeout: Duration) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut skipped = VecDeque::new();
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(f) if f.op == wanted => break Ok(f),
                Ok(f) => skipped.push_back(f),
                Err(e) => break Err(e),
            }
        };
        while let Some(f) = skipped.pop_back() {
            self.pending.push_front(f);
        }
        result
    }

    /// The next frame, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Ok(f);
            }
            if self.parse_buffered()? {
                continue;
            }
            self.fill(deadline)?;
        }
    }

    /// Whether the server has closed the connection, waiting at most `timeout` for it.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Err(ClientError::Closed) => return true,
                Err(ClientError::Io(e)) if e.kind() != io::ErrorKind::WouldBlock => return true,
                Err(ClientError::Timeout) => return false,
                _ => self.buf.clear(),
            }
        }
    }

    fn fill(&mut self, deadline: Instant) -> Result<(), ClientError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout);
        }
        self.stream.tcp().set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(ClientError::Closed),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Err(ClientError::Timeout)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Moves complete frames from the buffer to `pending` (answering pings); says whether
    /// it found any.
    fn parse_buffered(&mut self) -> Result<bool, ClientError> {
        let before = self.pending.len();
        let mut found = Received {
            frames: &mut self.pending,
            count: &mut self.received,
            pongs: Vec::new(),
            any: false,
        };
        let used = codec::decode(self.transport, &mut self.buf, &mut found).map_err(|e| match e {
            WireError::Closed => ClientError::Closed,
            other => ClientError::Protocol(other.to_string()),
        });
        let (any, pongs) = (found.any, found.pongs);
        let used = match used {
            // A WebSocket close right after frames (op 6, then the close): the frames are
            // handed out first; the socket's end comes with the next read.
            Err(ClientError::Closed) if self.pending.len() > before => {
                self.buf.clear();
                return Ok(true);
            }
            used => used?,
        };
        self.buf.drain(..used);
        for pong in pongs {
            self.write_out(&pong)?;
        }
        Ok(any)
    }
}

/// Where [`codec::decode`] puts what it finds for a [`Client`].
struct Received<'a> {
    frames: &'a mut VecDeque<Frame>,
    count: &'a mut u64,
    pongs: Vec<Vec<u8>>,
    any: bool,
}

impl Sink for Received<'_> {
    fn frame(&mut self, ver: i16, op: i32, seq: i32, body: &[u8]) {
        if !matches!(op, op::AUTH_REPLY | op::HEARTBEAT_REPLY) {
            *self.count += 1;
        }
        self.any = true;
        self.frames.push_back(Frame {
            ver,
            op,
            seq,
            body: body.to_vec(),
        });
    }

    fn outer(&mut self) {
        self.any = true;
    }

    fn ping(&mut self, payload: &[u8]) {
        self.any = true;
        self.pongs.push(codec::pong(payload));
    }
}
