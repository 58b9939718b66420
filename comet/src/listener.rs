//! Listening sockets, bound with socket2 on the caller's thread: one socket per shard on the
//! same address with SO_REUSEPORT, so the kernel spreads connections over the shards.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::CometError;

/// The sockets of one configured address, one per shard, all bound to `addr`.
pub(crate) struct BoundGroup {
    /// The address actually bound (port 0 resolved).
    pub addr: SocketAddr,
    pub sockets: Vec<Socket>,
}

/// Binds `shards` listening sockets to `addr`. With port 0 the first socket picks the port and
/// the others join it.
pub(crate) fn bind_group(
    addr: SocketAddr,
    shards: usize,
    backlog: u32,
) -> Result<BoundGroup, CometError> {
    let bind_err = |source| CometError::Bind {
        addr: addr.to_string(),
        source,
    };
    let first = bind_one(addr, backlog).map_err(bind_err)?;
    let bound = first
        .local_addr()
        .map_err(bind_err)?
        .as_socket()
        .ok_or_else(|| CometError::Address(addr.to_string()))?;
    let mut sockets = vec![first];
    for _ in 1..shards {
        sockets.push(bind_one(bound, backlog).map_err(bind_err)?);
    }
    Ok(BoundGroup {
        addr: bound,
        sockets,
    })
}

fn bind_one(addr: SocketAddr, backlog: u32) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_shared_by_every_shard() {
        let group = bind_group(SocketAddr::from(([127, 0, 0, 1], 0)), 3, 128).unwrap();
        assert_ne!(group.addr.port(), 0);
        for s in &group.sockets {
            assert_eq!(s.local_addr().unwrap().as_socket(), Some(group.addr));
        }
    }
}
