//! Stored messages: `InboxAck` (what a user has processed) and `InboxRead` (a page of a user's
//! inbox or of a room's history, for a connect's catch-up or a client's op 22).

use imgate_shared::link::{self, Body, Empty, InboxMessages, Stored};

use super::connect::stored;
use super::{LinkError, LinkHandler};

/// Body bytes of stored messages in one answer, whatever a comet asks for: well inside a link
/// frame however the inbox and history limits are set (`more` says where to go on from).
const MAX_STORED_BYTES: u32 = 4 << 20;

impl LinkHandler {
    /// Records that the user processed everything up to `seq`.
    pub(super) async fn inbox_ack(&self, req: link::InboxAck) -> Result<Body, LinkError> {
        if req.mid > 0 {
            self.stores.messages.inbox_ack(req.mid, req.seq).await?;
        }
        Ok(Body::Ok(Empty {}))
    }

    /// The stored messages after `after`: the user's inbox, or the named room's history.
    pub(super) async fn inbox_read(&self, req: link::InboxRead) -> Result<Body, LinkError> {
        // A paged read takes a page's worth of messages from the store; `more` tells comet to
        // ask again after the last one.
        let limit = match req.max_bytes {
            0 => self.inbox_limit,
            _ => self.inbox_limit.min(link::STORED_PAGE_MESSAGES),
        };
        let messages = if !req.room.is_empty() {
            self.stores
                .messages
                .room_history_read(&req.room, req.after, limit)
                .await?
        } else if req.mid > 0 {
            self.stores
                .messages
                .inbox_read(req.mid, req.after, limit)
                .await?
        } else {
            Vec::new()
        };
        let full = messages.len() >= limit && limit < self.inbox_limit;
        let mut messages: Vec<Stored> = messages.into_iter().map(stored).collect();
        let max_bytes = match req.max_bytes {
            0 => MAX_STORED_BYTES,
            asked => asked.min(MAX_STORED_BYTES),
        };
        let cut = link::cut_to_page(&mut messages, max_bytes);
        Ok(Body::InboxMessages(InboxMessages {
            messages,
            more: cut || full,
        }))
    }
}
