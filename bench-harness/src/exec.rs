//! One glommio executor of a worker: the state its client tasks share, written only on that
//! executor's thread.

use std::cell::{Cell, RefCell};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hdrhistogram::Histogram;

use crate::messages::{Shared, WorkerConfig};
use crate::tally::PushCounts;

/// Bytes read per `recv`: one buffer per executor, shared by all its clients.
pub(crate) const SCRATCH_SIZE: usize = 64 * 1024;
/// What the worker hands an executor it starts.
pub(crate) struct ExecSetup {
    pub(crate) config: Arc<WorkerConfig>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) first: u64,
    pub(crate) count: u64,
    pub(crate) rate: f64,
    pub(crate) finish: async_channel::Receiver<()>,
}

/// One executor's state, shared by its tasks.
pub(crate) struct Exec {
    pub(crate) config: Arc<WorkerConfig>,
    pub(crate) shared: Arc<Shared>,
    /// Global index of this executor's first client.
    pub(crate) first: u64,
    pub(crate) scratch: RefCell<Vec<u8>>,
    pub(crate) latency: RefCell<Vec<Histogram<u64>>>,
    pub(crate) connect: RefCell<Histogram<u64>>,
    pub(crate) pushes: RefCell<PushCounts>,
    /// Per client (by slot): the socket of its authenticated connection, or -1. All the
    /// heartbeat ticker needs: 4 bytes a client.
    pub(crate) authed_fds: RefCell<Vec<RawFd>>,
    pub(crate) in_flight: Cell<usize>,
    pub(crate) finishing: Cell<bool>,
    pub(crate) heartbeat: Vec<u8>,
    pub(crate) errors: RefCell<Vec<String>>,
}

/// Adds `n` (wrapping: `u64::MAX` subtracts one) to a counter of this executor. Only the
/// executor writes its counters: a plain load and store, no locked add.
pub(crate) fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

impl Exec {
    pub(crate) fn note_error(&self, what: String) {
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 10 {
            errors.push(what);
        }
    }

    pub(crate) fn set_authed_fd(&self, slot: u32, fd: RawFd) {
        if let Some(entry) = self.authed_fds.borrow_mut().get_mut(slot as usize) {
            *entry = fd;
        }
    }
}
