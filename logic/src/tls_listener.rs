//! HTTPS for the business API: an [`axum::serve::Listener`] that yields connections whose TLS
//! handshake has completed.
//!
//! Accepting never waits for a handshake: each runs in its own task, bounded in time
//! ([`HANDSHAKE_TIMEOUT`]), and at most [`MAX_HANDSHAKES`] run at once. A connection accepted
//! beyond that does not wait and is not refused: the oldest handshake of the address holding
//! the most ends instead, so a flood of silent connections evicts its own and a well-behaved
//! client's handshake starts at once: idle connections that never start their handshake cannot
//! hold up other clients' requests.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use imgate_shared::tls::rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinHandle};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Handshakes in progress at once; a connection beyond it ends the oldest handshake of the
/// busiest address.
const MAX_HANDSHAKES: usize = 1024;

pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: Arc<ServerConfig>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let acceptor = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(config),
            tx,
            MAX_HANDSHAKES,
            HANDSHAKE_TIMEOUT,
        ));
        Ok(TlsListener {
            ready,
            addr,
            acceptor,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// The handshakes in progress: by age (ids grow) and by peer address.
#[derive(Default)]
struct Handshakes {
    next_id: u64,
    by_age: BTreeMap<u64, (IpAddr, AbortHandle)>,
    per_address: HashMap<IpAddr, usize>,
}

impl Handshakes {
    fn len(&self) -> usize {
        self.by_age.len()
    }

    fn add(&mut self, peer: IpAddr, task: AbortHandle) -> u64 {
        self.next_id += 1;
        self.by_age.insert(self.next_id, (peer, task));
        *self.per_address.entry(peer).or_default() += 1;
        self.next_id
    }

    /// Forgets handshake `id` (finished, failed or evicted); says whether it was there.
    fn remove(&mut self, id: u64) -> bool {
        let Some((peer, _)) = self.by_age.remove(&id) else {
            return false;
        };
        if let Some(n) = self.per_address.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_address.remove(&peer);
            }
        }
        true
    }

    /// Ends the oldest handshake of the address with the most in progress.
    fn evict(&mut self) {
        let Some(busiest) = self
            .per_address
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(ip, _)| *ip)
        else {
            return;
        };
        let oldest = self
            .by_age
            .iter()
            .find(|(_, (peer, _))| *peer == busiest)
            .map(|(id, (_, task))| (*id, task.clone()));
        if let Some((id, task)) = oldest {
            task.abort();
            self.remove(id);
        }
    }
}

fn lock(handshakes: &Mutex<Handshakes>) -> std::sync::MutexGuard<'_, Handshakes> {
    handshakes.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    max_handshakes: usize,
    timeout: Duration,
) {
    let handshakes = Arc::new(Mutex::new(Handshakes::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                static ACCEPT: imgate_shared::log_limit::RateLimit =
                    imgate_shared::log_limit::RateLimit::per_secs(10);
                imgate_shared::warn_limited!(ACCEPT, "HTTPS accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut running = lock(&handshakes);
        while running.len() >= max_handshakes {
            running.evict();
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        let finished = handshakes.clone();
        // The task waits for its registration (the lock held here) before it can remove it.
        let (registered_tx, registered) = tokio::sync::oneshot::channel::<u64>();
        let task = tokio::spawn(async move {
            let handshake = tokio::time::timeout(timeout, acceptor.accept(stream)).await;
            if let Ok(id) = registered.await {
                lock(&finished).remove(id);
            }
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, "HTTPS handshake failed: {e}"),
                Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
            }
        });
        let id = running.add(peer.ip(), task.abort_handle());
        drop(running);
        let _ = registered_tx.send(id);
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The accept loop ended (it only does when dropped): nothing will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_busiest_address_loses_its_oldest_handshake() {
        let mut running = Handshakes::default();
        let idle = || tokio::spawn(std::future::pending::<()>());
        let flood: IpAddr = "10.0.0.1".parse().unwrap();
        let client: IpAddr = "10.0.0.2".parse().unwrap();
        let mut tasks = Vec::new();
        let first = {
            let t = idle();
            let id = running.add(client, t.abort_handle());
            tasks.push(t);
            id
        };
        let mut flood_ids = Vec::new();
        for _ in 0..3 {
            let t = idle();
            flood_ids.push(running.add(flood, t.abort_handle()));
            tasks.push(t);
        }
        running.evict();
        assert_eq!(running.len(), 3);
        assert!(!running.remove(flood_ids[0]), "the flood's oldest went");
        assert!(running.by_age.contains_key(&first), "the client's stays");
        let evicted = tasks.remove(1).await;
        assert!(evicted.unwrap_err().is_cancelled(), "its task was aborted");
        assert!(running.remove(first));
        assert!(running.remove(flood_ids[1]) && running.remove(flood_ids[2]));
        assert!(running.per_address.is_empty());
    }
}
