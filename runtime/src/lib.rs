//! imgate's thread-per-core runtime: one thread, one executor and one io_uring per core.
//!
//! A [`Runtime`] runs on the thread that created it and owns everything on it: the tasks it
//! spawns with [`spawn_local`], its timers ([`time`]), and the sockets made on it ([`net`]).
//! Nothing of it is shared with other threads but the queue through which they wake its
//! tasks (a waker may be used from anywhere, as `std` requires).
//!
//! The event loop runs ready tasks, then asks the core's epoll instance what became ready
//! (one non-blocking `epoll_wait`) and fires due timers. With nothing left to do it parks: in
//! the core's io_uring ([`Engine::IoUring`]: one poll on the epoll instance, one on the eventfd
//! other threads write to wake it, and the next timer's deadline as the wait's timeout), or,
//! where io_uring is refused (container seccomp profiles, gVisor, `kernel.io_uring_disabled`),
//! in `epoll_wait` itself ([`Engine::Epoll`], the eventfd in the epoll set). [`probe_io_uring`]
//! finds out once which one this process can use. Every socket joins the
//! epoll set once, edge-triggered, and is read and written with plain non-blocking syscalls on
//! this thread; only a syscall that would block leaves a waker behind. So an idle socket costs
//! a few bytes here and one epoll entry in the kernel, and a busy core makes no syscall to
//! learn that sockets are ready beyond the one `epoll_wait` per turn.
//!
//! [`LoopStats`] counts the time the loop spent parked: what is not parked is the core's busy
//! time, the figure comet reports so that job can pace big rooms by how loaded each core is.

mod affinity;
mod engine;
mod executor;
pub mod net;
mod reactor;
mod ring;
pub mod time;

pub use affinity::{allowed_cpus, pin_current_thread};
pub use async_task::Task;
pub use engine::{probe_io_uring, Engine};
pub use executor::{spawn_local, Builder, LoopStats, Runtime};
pub use ring::SendDone;
