//! Which kernel interface a runtime parks in, and the probe that tells whether io_uring can
//! be used here.
//!
//! io_uring is refused in many places a gateway is deployed: Docker (since 25) and
//! containerd refuse `io_uring_setup` in their default seccomp profiles, gVisor does not
//! implement it, and `kernel.io_uring_disabled` turns it off host-wide. A runtime that cannot
//! have a ring parks in `epoll_wait` instead, with the same sockets, timers and wake-ups. The
//! probe runs once per process and asks for everything the ring loop uses, so that a kernel
//! that has io_uring but lacks a feature is found at start, not at the first park.

use std::sync::OnceLock;

use io_uring::{opcode, IoUring};

/// The kernel interface a runtime's loop parks in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    /// Parks in an io_uring: one poll on the epoll instance, one on the wake-up eventfd, and
    /// the next timer as the wait's timeout.
    IoUring,
    /// Parks in `epoll_wait` on the epoll instance, which also holds the wake-up eventfd,
    /// bounded by the next timer. Needs nothing beyond epoll and eventfd.
    Epoll,
}

impl Engine {
    /// The engine's name as configuration and metrics spell it (`io_uring`, `epoll`).
    pub fn name(self) -> &'static str {
        match self {
            Engine::IoUring => "io_uring",
            Engine::Epoll => "epoll",
        }
    }

    /// io_uring where [`probe_io_uring`] says it can be used, else epoll.
    pub fn auto() -> Engine {
        match probe_io_uring() {
            Ok(()) => Engine::IoUring,
            Err(_) => Engine::Epoll,
        }
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether this process can run its loops on io_uring: `Err` says why not. The answer is
/// found once (a ring is created, its features read, and one no-op submitted and waited for
/// with a timeout) and kept.
pub fn probe_io_uring() -> Result<(), String> {
    static PROBED: OnceLock<Result<(), String>> = OnceLock::new();
    PROBED
        .get_or_init(|| {
            // On a thread of its own: a thread that has used a ring keeps an io_uring context,
            // and the ring's teardown may later interrupt that thread's blocking syscalls
            // (a socket read with a timeout fails with EINTR). The caller's thread stays clean.
            std::thread::Builder::new()
                .name("io_uring-probe".into())
                .spawn(probe)
                .map_err(|e| format!("cannot start a thread to probe io_uring: {e}"))?
                .join()
                .unwrap_or_else(|_| Err("the io_uring probe panicked".into()))
        })
        .clone()
}

fn probe() -> Result<(), String> {
    let mut ring = IoUring::new(2).map_err(|e| format!("cannot create an io_uring: {e}"))?;
    missing_features(ring.params().is_feature_ext_arg())?;
    let nop = opcode::Nop::new().build().user_data(7);
    // SAFETY: a no-op refers to no memory.
    unsafe { ring.submission().push(&nop) }
        .map_err(|_| "cannot queue on a fresh io_uring".to_string())?;
    let ts = io_uring::types::Timespec::new().sec(1);
    let args = io_uring::types::SubmitArgs::new().timespec(&ts);
    ring.submitter()
        .submit_with_args(1, &args)
        .map_err(|e| format!("io_uring_enter failed: {e}"))?;
    let completed = ring.completion().next();
    match completed {
        Some(cqe) if cqe.user_data() == 7 && cqe.result() >= 0 => Ok(()),
        Some(cqe) => Err(format!(
            "io_uring answered a no-op with {}",
            std::io::Error::from_raw_os_error(-cqe.result())
        )),
        None => Err("io_uring did not complete a no-op within 1 s".into()),
    }
}

/// The features the ring loop needs, given what the kernel reports: `Err` names the first
/// one missing.
pub(crate) fn missing_features(ext_arg: bool) -> Result<(), String> {
    if !ext_arg {
        // The park's timeout travels with io_uring_enter (IORING_ENTER_EXT_ARG).
        return Err(
            "io_uring lacks IORING_FEAT_EXT_ARG (timeouts on io_uring_enter, Linux 5.11)".into(),
        );
    }
    Ok(())
}

/// A runtime on each engine, for tests that must hold on both. io_uring is not skipped where
/// it is refused: such a machine fails these tests, naming why.
#[cfg(test)]
pub(crate) fn test_runtimes() -> Vec<crate::Runtime> {
    [Engine::IoUring, Engine::Epoll]
        .into_iter()
        .map(|engine| {
            crate::Runtime::with_engine(engine)
                .unwrap_or_else(|e| panic!("a runtime on {engine} cannot start here: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_without_enter_timeouts_is_refused_by_name() {
        assert!(missing_features(true).is_ok());
        let why = missing_features(false).unwrap_err();
        assert!(why.contains("EXT_ARG"), "{why}");
    }

    #[test]
    fn auto_follows_the_probe() {
        let expected = match probe_io_uring() {
            Ok(()) => Engine::IoUring,
            Err(_) => Engine::Epoll,
        };
        assert_eq!(Engine::auto(), expected);
        assert_eq!(Engine::IoUring.to_string(), "io_uring");
        assert_eq!(Engine::Epoll.name(), "epoll");
    }
}
