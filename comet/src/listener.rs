//! Listening sockets, bound with socket2 on the caller's thread: one socket per shard on the
//! same address with SO_REUSEPORT, so the kernel spreads connections over the shards.

use std::net::SocketAddr;

use std::time::Duration;

use imgate_shared::config::CometConfig;
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};

use crate::error::CometError;

/// The sockets of one configured address, one per shard, all bound to `addr`.
pub(crate) struct BoundGroup {
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    pub sockets: Vec<Socket>,
}

/// Socket options client connections inherit from their listening socket, so accepting
/// costs no extra syscall.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ClientOptions {
    /// Keep-alive idle time and probe interval.
    pub keepalive: Option<(Duration, Duration)>,
    /// Kernel buffer sizes; 0 = autotuning.
    pub sndbuf: usize,
    pub rcvbuf: usize,
}

impl ClientOptions {
    pub fn from_config(config: &CometConfig) -> Self {
        ClientOptions {
            keepalive: config
                .tcp_keepalive
                .then_some((config.tcp_keepalive_idle, config.tcp_keepalive_interval)),
            sndbuf: config.sndbuf,
            rcvbuf: config.rcvbuf,
        }
    }

    fn apply(&self, socket: &Socket) -> std::io::Result<()> {
        if let Some((idle, interval)) = self.keepalive {
            let keepalive = TcpKeepalive::new().with_time(idle).with_interval(interval);
            socket.set_tcp_keepalive(&keepalive)?;
        }
        if self.sndbuf > 0 {
            socket.set_send_buffer_size(self.sndbuf)?;
        }
        if self.rcvbuf > 0 {
            socket.set_recv_buffer_size(self.rcvbuf)?;
        }
        Ok(())
    }
}

/// Binds `shards` listening sockets to `addr` with `options` for the connections they accept.
/// With port 0 the first socket picks the port and the others join it.
pub(crate) fn bind_group(
    addr: SocketAddr,
    shards: usize,
    backlog: u32,
    options: ClientOptions,
) -> Result<BoundGroup, CometError> {
    let bind_err = |source| CometError::Bind {
        addr: addr.to_string(),
        source,
    };
    let first = bind_one(addr, backlog, options).map_err(bind_err)?;
    let bound = first
        .local_addr()
        .map_err(bind_err)?
        .as_socket()
        .ok_or_else(|| CometError::Address(addr.to_string()))?;
    let mut sockets = vec![first];
    for _ in 1..shards {
        sockets.push(bind_one(bound, backlog, options).map_err(bind_err)?);
    }
    Ok(BoundGroup {
        addr: bound,
        sockets,
    })
}

fn bind_one(addr: SocketAddr, backlog: u32, options: ClientOptions) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Before listen: the receive buffer sets the window scale the handshake offers.
    options.apply(&socket)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepted connections carry the keep-alive and buffer sizes the configuration asks for
    /// (goim's tcp.keepalive, tcp.sndbuf, tcp.rcvbuf), inherited from their listener.
    #[test]
    fn accepted_sockets_inherit_keepalive_and_buffer_sizes() {
        let options = ClientOptions {
            keepalive: Some((Duration::from_secs(60), Duration::from_secs(7))),
            sndbuf: 8192,
            rcvbuf: 8192,
        };
        let group = bind_group("127.0.0.1:0".parse().unwrap(), 1, 128, options).unwrap();
        let _client = std::net::TcpStream::connect(group.addr).unwrap();
        let listener = &group.sockets[0];
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(accepted.keepalive().unwrap());
        assert_eq!(accepted.keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(
            accepted.keepalive_interval().unwrap(),
            Duration::from_secs(7)
        );
        // The kernel doubles what it is given, for its bookkeeping.
        assert_eq!(accepted.send_buffer_size().unwrap(), 16384);
        assert_eq!(accepted.recv_buffer_size().unwrap(), 16384);

        let plain = bind_group(
            "127.0.0.1:0".parse().unwrap(),
            1,
            128,
            ClientOptions::default(),
        )
        .unwrap();
        let _client = std::net::TcpStream::connect(plain.addr).unwrap();
        plain.sockets[0].set_nonblocking(false).unwrap();
        let (accepted, _) = plain.sockets[0].accept().unwrap();
        assert!(!accepted.keepalive().unwrap());
    }

    #[test]
    fn port_zero_is_shared_by_every_shard() {
        let group = bind_group(
            "127.0.0.1:0".parse().unwrap(),
            3,
            128,
            ClientOptions::default(),
        )
        .unwrap();
        assert_ne!(group.addr.port(), 0);
        for s in &group.sockets {
            assert_eq!(s.local_addr().unwrap().as_socket(), Some(group.addr));
        }
    }
}
