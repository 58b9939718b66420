//! Helpers shared by job's integration tests.

use imgate_shared::link::CometInfo;
use imgate_store::embedded::EmbeddedRegistry;
use imgate_store::{OnlineReport, RegistryStore};

/// Registers a fake comet whose link is `link_addr`, as its online report would.
pub async fn register(store: &EmbeddedRegistry, id: &str, link_addr: String) {
    store
        .report_online(OnlineReport {
            comet: CometInfo {
                id: id.into(),
                link_addr,
                weight: 10,
                shards: 1,
                ..Default::default()
            },
            shard: 0,
            conn_count: 0,
            ip_count: 0,
            rooms: Default::default(),
            lag_us: 0,
        })
        .await
        .unwrap();
}
