//! The registry in Redis: one `online` hash, field `<comet>/<shard>`, each report stamped with
//! the Redis server's clock; see the key schema in [`super`].

use imgate_shared::link::{RenewOnline, RoomCount};
use prost::Message;
use redis::Script;

use super::RedisStore;
use crate::registry::{comet_statuses, room_totals};
use crate::{CometStatus, OnlineReport, RegistryStore, RoomTotals, StoreError};

/// Stores a shard's report stamped with the server clock; keeps the hash for `online_ttl`.
/// KEYS[1] = online hash; ARGV[1] = field; ARGV[2] = encoded report; ARGV[3] = TTL ms.
const REPORT_ONLINE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d', now) .. '|' .. ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Returns the live reports (`<unix ms>|<report>`) and deletes the stale ones.
/// KEYS[1] = online hash; ARGV[1] = TTL ms.
const READ_ONLINE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sep = string.find(v, '|', 1, true)
  local ts = sep and tonumber(string.sub(v, 1, sep - 1))
  if ts == nil or now - ts >= ttl then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live[#live + 1] = v
  end
end
return live
";

/// The registry scripts, loaded once per store.
pub(super) struct RegistryScripts {
    report_online: Script,
    read_online: Script,
}

impl RegistryScripts {
    pub(super) fn new() -> Self {
        RegistryScripts {
            report_online: Script::new(REPORT_ONLINE),
            read_online: Script::new(READ_ONLINE),
        }
    }
}

/// Splits a stored report into its server time and report.
fn decode_report(v: &[u8]) -> Option<(u64, OnlineReport)> {
    let sep = v.iter().position(|b| *b == b'|')?;
    let at = std::str::from_utf8(&v[..sep]).ok()?.parse().ok()?;
    let r = RenewOnline::decode(&v[sep + 1..]).ok()?;
    Some((
        at,
        OnlineReport {
            comet: r.comet.unwrap_or_default(),
            shard: r.shard,
            conn_count: r.conn_count,
            ip_count: r.ip_count,
            // Not interned: read again at every refresh, they live until the next one.
            rooms: r
                .rooms
                .iter()
                .filter_map(|room| Some((room.name()?.into(), room.count)))
                .collect(),
            lag_us: r.lag_us,
        },
    ))
}

impl RedisStore {
    fn online_key(&self) -> String {
        format!("{}online", self.prefix)
    }

    /// The live reports with their server times.
    async fn live_reports(&self) -> Result<Vec<(u64, OnlineReport)>, StoreError> {
        let mut c = self.conn.clone();
        let mut inv = self.registry.read_online.prepare_invoke();
        inv.key(self.online_key()).arg(self.online_ttl_ms);
        let raw: Vec<Vec<u8>> = self
            .run("HGETALL (online)", inv.invoke_async(&mut c))
            .await?;
        Ok(raw
            .iter()
            .filter_map(|v| {
                let r = decode_report(v);
                if r.is_none() {
                    tracing::warn!("ignoring an undecodable online report in Redis");
                }
                r
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl RegistryStore for RedisStore {
    async fn report_online(&self, report: OnlineReport) -> Result<(), StoreError> {
        let field = format!("{}/{}", report.comet.id, report.shard);
        let payload = RenewOnline {
            comet: Some(report.comet),
            shard: report.shard,
            conn_count: report.conn_count,
            rooms: report
                .rooms
                .into_iter()
                .map(|(name, count)| RoomCount::new(name, count))
                .collect(),
            ip_count: report.ip_count,
            lag_us: report.lag_us,
            ..Default::default()
        }
        .encode_to_vec();
        let mut c = self.conn.clone();
        let mut inv = self.registry.report_online.prepare_invoke();
        inv.key(self.online_key())
            .arg(field)
            .arg(payload)
            .arg(self.online_ttl_ms);
        self.run("HSET (online)", inv.invoke_async::<()>(&mut c))
            .await
    }

    async fn room_counts(&self) -> Result<RoomTotals, StoreError> {
        let reports = self.live_reports().await?;
        Ok(std::sync::Arc::new(room_totals(
            reports.iter().map(|(_, r)| r),
        )))
    }

    async fn comets(&self) -> Result<Vec<CometStatus>, StoreError> {
        let reports = self.live_reports().await?;
        Ok(comet_statuses(reports.iter().map(|(at, r)| (*at, r))))
    }
}
