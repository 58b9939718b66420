//! Helpers shared by job's integration tests.

use imgate_shared::link::CometInfo;
use imgate_store::embedded::EmbeddedRegistry;
use imgate_store::{OnlineReport, RegistryStore};

/// Registers a fake comet of one shard whose link is `link_addr`, as its report would.
#[allow(dead_code)]
pub async fn register(store: &EmbeddedRegistry, id: &str, link_addr: String) {
    register_shards(store, id, link_addr, 1).await;
}

/// Registers a fake comet of `shards` shards whose link is `link_addr`.
pub async fn register_shards(store: &EmbeddedRegistry, id: &str, link_addr: String, shards: u32) {
    store
        .report_online(OnlineReport {
            comet: CometInfo {
                id: id.into(),
                link_addr,
                weight: 10,
                shards,
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
