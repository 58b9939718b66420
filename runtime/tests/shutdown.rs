//! What a runtime leaves behind: tasks still pending when `block_on` returns are dropped,
//! so the sockets they own are closed. Counted as descriptors of this process, which runs
//! only this test (an integration test binary of its own), on both engines in turn.

use std::os::fd::OwnedFd;
use std::time::Duration;

use imgate_runtime::net::Socket;
use imgate_runtime::{spawn_local, Engine, Runtime};

fn open_descriptors() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[test]
fn pending_tasks_release_their_descriptors_at_shutdown() {
    for engine in [Engine::IoUring, Engine::Epoll] {
        const PAIRS: usize = 50;
        let before = open_descriptors();
        let rt = Runtime::with_engine(engine)
            .unwrap_or_else(|e| panic!("a runtime on {engine} cannot start here: {e}"));
        let with_runtime = open_descriptors();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            for _ in 0..PAIRS {
                let client = std::net::TcpStream::connect(addr).unwrap();
                let (server, _) = listener.accept().unwrap();
                for end in [client, server] {
                    end.set_nonblocking(true).unwrap();
                    let mut socket = Socket::new(OwnedFd::from(end)).unwrap();
                    // Each end waits for bytes the other never sends: pending forever.
                    spawn_local(async move {
                        let mut buf = [0u8; 1];
                        let _ = futures_lite::AsyncReadExt::read(&mut socket, &mut buf).await;
                        unreachable!("no byte is ever sent");
                    })
                    .detach();
                }
            }
            imgate_runtime::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(
                open_descriptors(),
                with_runtime + 2 * PAIRS + 1,
                "{engine}: the sockets and the listener are open while the tasks run"
            );
        });
        assert_eq!(
            open_descriptors(),
            with_runtime,
            "{engine}: every pending task's socket was closed when block_on returned"
        );
        drop(rt);
        assert_eq!(
            open_descriptors(),
            before,
            "{engine}: the runtime's own descriptors"
        );
    }
}
