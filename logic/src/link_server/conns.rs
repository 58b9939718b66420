//! A connection's life after its connect: `Disconnect`, `Heartbeat` and `RoomsChanged`.

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
            self.event("disconnect", session.mid, gone, reason).await;
        }
        tracing::debug!(mid = session.mid, key = %session.key, removed = gone.is_some(), "disconnect");
        Ok(Body::Ok(Empty {}))
    }

    /// Records every room the connection is in now (presence) and tells the business what it
    /// joined and left. A connection the store no longer names (closed, replaced) is left
    /// alone, and no event is sent for it.
    pub(super) async fn rooms_changed(&self, req: link::RoomsChanged) -> Result<Body, LinkError> {
        let conn = req.conn.ok_or(LinkError::missing("RoomsChanged", "conn"))?;
        let session = Session {
            mid: req.mid,
            key: req.key,
            conn,
        };
        let Some(now) = self.stores.sessions.set_rooms(&session, &req.rooms).await? else {
            return Ok(Body::Ok(Empty {}));
        };
        let reason = if req.by_server { "server" } else { "client" };
        for room in &req.left {
            self.room_event("leave", session.mid, &now, reason, room)
                .await;
        }
        for room in &req.joined {
            self.room_event("join", session.mid, &now, reason, room)
                .await;
        }
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
