//! The way back on job's links to a shard: every tick the shard tells each job linked to it
//! how busy its event loop was and which of that job's pushes it has handled, so job can pace
//! big rooms by how loaded the comets really are and how far behind its fan-out is.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use bytes::BytesMut;
use imgate_runtime::net::Socket;
use imgate_shared::link::{Body, Envelope, Load};

/// The way back on a job link: what the shard tells job (its load) and the bytes of that a
/// full socket did not take yet.
pub(crate) struct LinkBack {
    socket: RefCell<Socket>,
    unsent: RefCell<BytesMut>,
    /// The id of the last push the link's reader finished handling.
    pub handled: Cell<u64>,
}

impl LinkBack {
    pub fn new(socket: RefCell<Socket>) -> Self {
        LinkBack {
            socket,
            unsent: RefCell::new(BytesMut::new()),
            handled: Cell::new(0),
        }
    }

    /// The link's socket (its reader reads pushes from it).
    pub fn socket(&self) -> &RefCell<Socket> {
        &self.socket
    }
}

/// Load reports a jammed link may hold unsent; newer ones are dropped beyond that.
const MAX_UNSENT_REPORTS: usize = 4 << 10;

/// Tells every job linked to this shard how busy its loop was since the last report. Called
/// on the shard's tick; never waits (a report a full socket does not take waits for the next
/// tick, and a jammed link drops reports rather than grow).
pub(crate) fn report_load(links: &[Rc<LinkBack>], busy_permille: u32) {
    for back in links {
        let report = Envelope::new(
            0,
            Body::Load(Load {
                busy_permille,
                handled: back.handled.get(),
            }),
        )
        .to_frame();
        let mut unsent = back.unsent.borrow_mut();
        if unsent.len() + report.len() <= MAX_UNSENT_REPORTS {
            unsent.extend_from_slice(&report);
        }
        let socket = back.socket.borrow();
        while !unsent.is_empty() {
            match socket.try_write(&unsent) {
                Ok(Some(n)) => {
                    let _ = unsent.split_to(n);
                }
                // Full, or broken: the link's reader finds out about the latter.
                Ok(None) | Err(_) => break,
            }
        }
    }
}
