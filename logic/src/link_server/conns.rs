//! A connection's life after its connect: `Disconnect` and `Heartbeat`.

use imgate_shared::link::{self, Body, Empty};
use imgate_store::Session;

use super::{LinkError, LinkHandler};

impl LinkHandler {
    /// Removes the connection's session if it still names it, and tells the business.
    pub(super) async fn disconnect(&self, req: link::Disconnect) -> Result<Body, LinkError> {
        let conn = req.conn.ok_or(LinkError::missing("Disconnect", "conn"))?;
        let session = Session {
            mid: req.mid,
            key: req.key,
            conn,
        };
        let gone = self.stores.sessions.disconnect(&session).await?;
        if let Some(gone) = &gone {
            let reason = if req.reason.is_empty() {
                "closed"
            } else {
                req.reason.as_str()
            };
            self.event("disconnect", session.mid, gone, reason);
        }
        tracing::debug!(mid = session.mid, key = %session.key, removed = gone.is_some(), "disconnect");
        Ok(Body::Ok(Empty {}))
    }

    /// Keeps the connection's session alive (re-creating it if the store lost it).
    pub(super) async fn heartbeat(&self, req: link::Heartbeat) -> Result<Body, LinkError> {
        let conn = req.conn.ok_or(LinkError::missing("Heartbeat", "conn"))?;
        let session = Session {
            mid: req.mid,
            key: req.key,
            conn,
        };
        self.stores.sessions.refresh(&session).await?;
        Ok(Body::Ok(Empty {}))
    }
}
