//! `RenewOnline`: a shard's online report (its rooms in parts), stored whole in the registry
//! and answered with the cluster-wide counts of its rooms that have members elsewhere too.

use imgate_shared::link::{self, Body, RenewOnlineReply, RoomCount};
use imgate_store::OnlineReport;

use super::{lock, LinkError, LinkHandler, PartialRooms};

impl LinkHandler {
    /// Stores a report once its last part has come, and answers each part.
    pub(super) async fn renew_online(&self, req: link::RenewOnline) -> Result<Body, LinkError> {
        let comet = req
            .comet
            .ok_or(LinkError::missing("RenewOnline", "comet"))?;
        let cached = self.rooms.snapshot();
        // The registry keeps the process's one copy of each name. The answer names only
        // the rooms with members elsewhere too, taking the decoded names themselves: for
        // the others the shard's own count is the cluster's (a heartbeat answers the
        // larger of the two), and a shard of many small rooms is not sent them all
        // back. The cache lags the report just received; the cluster holds at least
        // what this shard reports.
        let mut reported = PartialRooms::new();
        let rooms = req
            .rooms
            .into_iter()
            .filter_map(|room| {
                let name = room.name()?;
                reported.insert(imgate_shared::intern::room(name), room.count);
                let total = cached.get(name).copied().unwrap_or(0);
                let total = u32::try_from(total).unwrap_or(u32::MAX);
                (total > room.count).then_some(RoomCount {
                    name: room.name,
                    count: total,
                })
            })
            .collect();
        // A report in parts is stored whole, with its last part (a comet sends the
        // next part once this one is answered).
        let whole = {
            let mut partial = lock(&self.partial_reports);
            let key = (comet.id.clone(), req.shard);
            let mut whole = match partial.remove(&key) {
                Some(earlier) if req.part > 0 => earlier,
                _ => PartialRooms::new(),
            };
            whole.extend(reported);
            if req.more {
                partial.insert(key, whole);
                None
            } else {
                Some(whole)
            }
        };
        if let Some(rooms) = whole {
            self.stores
                .registry
                .report_online(OnlineReport {
                    comet,
                    shard: req.shard,
                    conn_count: req.conn_count,
                    ip_count: req.ip_count,
                    rooms,
                    lag_us: req.lag_us,
                })
                .await?;
        }
        Ok(Body::RenewOnlineReply(RenewOnlineReply { rooms }))
    }
}
