//! Sessions in process: one compact record per connection serving the session (key → user and
//! connection), presence (platform, rooms, connected time) and the per-user limit.
//!
//! Before, a connection was a session entry, a field of its user's key set and an entry of its
//! user's connection map, each with its own copy of the key, the comet's name and a hash map
//! of its own: about 1.1 KB a connection. Now it is one [`Record`] of about 100 bytes in a slab
//! of fixed-size chunks, reached through two hash tables of 4-byte slot numbers (by key, and
//! by user: the user's newest record, the others chained from it). Comet names, platforms and
//! rooms are interned (`imgate_shared::intern`), so a record holds pointers to the process's
//! one copy of each.

use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hashbrown::HashTable;
use imgate_shared::intern;
use imgate_shared::link::ConnRef;

use super::lock;
use crate::{Connected, KeyPolicy, Rules, Session, SessionStore, StoreError, UserConn};

/// Expired records are dropped at most this often (reads skip them anyway).
const PURGE_EVERY: Duration = Duration::from_secs(5);

/// Records per slab chunk: a chunk is allocated whole (about 100 KB) and never moves, so the
/// store grows without copying what it holds.
const CHUNK: usize = 1024;

/// No record (the end of a user's chain).
const NIL: u32 = u32::MAX;

/// The embedded [`SessionStore`].
pub struct EmbeddedSessions {
    ttl_ms: u64,
    epoch: Instant,
    table: Mutex<Table>,
}

/// One connection.
struct Record {
    key: Box<str>,
    /// Every room it is in (interned names); `None`: none.
    rooms: Option<Box<[Arc<str>]>>,
    /// Interned; `None`: unknown or empty.
    platform: Option<Arc<str>>,
    /// Interned comet name.
    comet: Arc<str>,
    mid: i64,
    conn_id: u64,
    /// Unix milliseconds, strictly increasing per user, so "oldest" is always well defined.
    connected_ms: u64,
    /// Milliseconds since the store's epoch.
    expires_ms: u64,
    shard: u32,
    /// The next (older) record of the same user, or [`NIL`].
    next_of_user: u32,
}

impl Record {
    fn names(&self, conn: &ConnRef) -> bool {
        self.conn_id == conn.conn_id && self.shard == conn.shard && *self.comet == *conn.comet
    }

    fn live(&self, now_ms: u64) -> bool {
        self.expires_ms > now_ms
    }

    fn conn_ref(&self) -> ConnRef {
        ConnRef {
            comet: self.comet.to_string(),
            shard: self.shard,
            conn_id: self.conn_id,
        }
    }

    fn session(&self) -> Session {
        Session {
            mid: self.mid,
            key: self.key.to_string(),
            conn: self.conn_ref(),
        }
    }

    fn user_conn(&self) -> UserConn {
        UserConn {
            key: self.key.to_string(),
            conn: self.conn_ref(),
            platform: self.platform.as_deref().unwrap_or_default().to_string(),
            rooms: self
                .rooms
                .iter()
                .flat_map(|r| r.iter())
                .map(|r| r.to_string())
                .collect(),
            connected_ms: self.connected_ms,
        }
    }
}

/// Records in fixed-size chunks, addressed by slot number; freed slots are reused.
#[derive(Default)]
struct Slab {
    chunks: Vec<Vec<Option<Record>>>,
    free: Vec<u32>,
}

impl Slab {
    fn get(&self, slot: u32) -> Option<&Record> {
        let slot = slot as usize;
        self.chunks.get(slot / CHUNK)?.get(slot % CHUNK)?.as_ref()
    }

    fn get_mut(&mut self, slot: u32) -> Option<&mut Record> {
        let slot = slot as usize;
        self.chunks
            .get_mut(slot / CHUNK)?
            .get_mut(slot % CHUNK)?
            .as_mut()
    }

    fn insert(&mut self, record: Record) -> u32 {
        if let Some(slot) = self.free.pop() {
            let s = slot as usize;
            self.chunks[s / CHUNK][s % CHUNK] = Some(record);
            return slot;
        }
        if self.chunks.last().is_none_or(|c| c.len() == CHUNK) {
            self.chunks.push(Vec::with_capacity(CHUNK));
        }
        let index = self.chunks.len() - 1;
        let chunk = &mut self.chunks[index];
        chunk.push(Some(record));
        (index * CHUNK + chunk.len() - 1) as u32
    }

    fn remove(&mut self, slot: u32) -> Option<Record> {
        let s = slot as usize;
        let record = self.chunks.get_mut(s / CHUNK)?.get_mut(s % CHUNK)?.take();
        if record.is_some() {
            self.free.push(slot);
        }
        record
    }

    /// The slots in use.
    fn slots(&self) -> impl Iterator<Item = (u32, &Record)> {
        self.chunks.iter().enumerate().flat_map(|(c, chunk)| {
            chunk
                .iter()
                .enumerate()
                .filter_map(move |(i, r)| r.as_ref().map(|r| ((c * CHUNK + i) as u32, r)))
        })
    }
}

/// The records and their two indexes.
struct Table {
    slab: Slab,
    /// Slots by their record's key.
    by_key: HashTable<u32>,
    /// The newest record of each user (mid > 0), by mid.
    by_mid: HashTable<u32>,
    hasher: RandomState,
    next_purge_ms: u64,
}

impl Table {
    fn key_hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn mid_hash(&self, mid: i64) -> u64 {
        self.hasher.hash_one(mid)
    }

    fn slot_of_key(&self, key: &str) -> Option<u32> {
        let slab = &self.slab;
        self.by_key
            .find(self.key_hash(key), |&s| {
                slab.get(s).is_some_and(|r| &*r.key == key)
            })
            .copied()
    }

    fn head_of_user(&self, mid: i64) -> Option<u32> {
        let slab = &self.slab;
        self.by_mid
            .find(self.mid_hash(mid), |&s| {
                slab.get(s).is_some_and(|r| r.mid == mid)
            })
            .copied()
    }

    /// The slots of user `mid`'s records, newest first.
    fn user_slots(&self, mid: i64) -> Vec<u32> {
        let mut slots = Vec::new();
        let mut next = self.head_of_user(mid).unwrap_or(NIL);
        while next != NIL {
            slots.push(next);
            next = self.slab.get(next).map_or(NIL, |r| r.next_of_user);
        }
        slots
    }

    fn insert(&mut self, mut record: Record) -> u32 {
        let key_hash = self.key_hash(&record.key);
        let mid = record.mid;
        if mid > 0 {
            record.next_of_user = self.head_of_user(mid).unwrap_or(NIL);
        }
        let slot = self.slab.insert(record);
        let Table {
            slab,
            by_key,
            by_mid,
            hasher,
            ..
        } = self;
        by_key.insert_unique(key_hash, slot, |&s| {
            slab.get(s).map_or(0, |r| hasher.hash_one(&*r.key))
        });
        if mid > 0 {
            let mid_hash = hasher.hash_one(mid);
            match by_mid.find_mut(mid_hash, |&s| slab.get(s).is_some_and(|r| r.mid == mid)) {
                Some(head) => *head = slot,
                None => {
                    by_mid.insert_unique(mid_hash, slot, |&s| {
                        slab.get(s).map_or(0, |r| hasher.hash_one(r.mid))
                    });
                }
            }
        }
        slot
    }

    fn remove(&mut self, slot: u32) -> Option<Record> {
        let (key_hash, mid, next) = {
            let r = self.slab.get(slot)?;
            (self.key_hash(&r.key), r.mid, r.next_of_user)
        };
        if let Ok(entry) = self.by_key.find_entry(key_hash, |&s| s == slot) {
            entry.remove();
        }
        if mid > 0 {
            let mid_hash = self.mid_hash(mid);
            let head = self.head_of_user(mid);
            if head == Some(slot) {
                let entry = self.by_mid.find_entry(mid_hash, |&s| s == slot);
                match (entry, next) {
                    (Ok(entry), NIL) => {
                        entry.remove();
                    }
                    (Ok(mut entry), next) => *entry.get_mut() = next,
                    (Err(_), _) => {}
                }
            } else {
                // Unlink it from the chain (a user has a few connections at most).
                let mut at = head.unwrap_or(NIL);
                while at != NIL {
                    let Some(record) = self.slab.get_mut(at) else {
                        break;
                    };
                    if record.next_of_user == slot {
                        record.next_of_user = next;
                        break;
                    }
                    at = record.next_of_user;
                }
            }
        }
        self.slab.remove(slot)
    }

    /// Drops expired records, at most every [`PURGE_EVERY`].
    fn purge_expired(&mut self, now_ms: u64) {
        if now_ms < self.next_purge_ms {
            return;
        }
        self.next_purge_ms = now_ms + PURGE_EVERY.as_millis() as u64;
        let expired: Vec<u32> = self
            .slab
            .slots()
            .filter(|(_, r)| !r.live(now_ms))
            .map(|(s, _)| s)
            .collect();
        for slot in expired {
            self.remove(slot);
        }
        if self.by_key.capacity() > 4 * self.by_key.len().max(64) {
            let Table {
                slab,
                by_key,
                by_mid,
                hasher,
                ..
            } = self;
            by_key.shrink_to_fit(|&s| slab.get(s).map_or(0, |r| hasher.hash_one(&*r.key)));
            by_mid.shrink_to_fit(|&s| slab.get(s).map_or(0, |r| hasher.hash_one(r.mid)));
        }
        // Platform and comet names no record holds any more.
        intern::sweep_labels();
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn interned_rooms(rooms: impl IntoIterator<Item = impl AsRef<str>>) -> Option<Box<[Arc<str>]>> {
    let rooms: Box<[Arc<str>]> = rooms
        .into_iter()
        .filter(|r| !r.as_ref().is_empty())
        .map(|r| intern::room(r.as_ref()))
        .collect();
    (!rooms.is_empty()).then_some(rooms)
}

impl EmbeddedSessions {
    /// Connections live `ttl` after their connect or last refresh.
    pub fn new(ttl: Duration) -> Self {
        EmbeddedSessions {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1),
            epoch: Instant::now(),
            table: Mutex::new(Table {
                slab: Slab::default(),
                by_key: HashTable::new(),
                by_mid: HashTable::new(),
                hasher: RandomState::new(),
                next_purge_ms: PURGE_EVERY.as_millis() as u64,
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn record(&self, session: &Session, platform: &str, rooms: Option<Box<[Arc<str>]>>) -> Record {
        Record {
            key: session.key.as_str().into(),
            rooms,
            platform: (!platform.is_empty()).then(|| intern::label(platform)),
            comet: intern::label(&session.conn.comet),
            mid: session.mid,
            conn_id: session.conn.conn_id,
            connected_ms: 0,
            expires_ms: self.now_ms().saturating_add(self.ttl_ms),
            shard: session.conn.shard,
            next_of_user: NIL,
        }
    }

    /// Records `record`, its connected time after every other record of its user's.
    fn insert_new(&self, table: &mut Table, mut record: Record) {
        let newest = if record.mid > 0 {
            table
                .user_slots(record.mid)
                .into_iter()
                .filter_map(|s| table.slab.get(s))
                .map(|r| r.connected_ms)
                .max()
                .unwrap_or(0)
        } else {
            0
        };
        record.connected_ms = unix_ms().max(newest + 1);
        table.insert(record);
    }
}

#[async_trait::async_trait]
impl SessionStore for EmbeddedSessions {
    async fn connect(
        &self,
        session: &Session,
        platform: &str,
        room: &str,
        rules: Rules,
    ) -> Result<Connected, StoreError> {
        let now = self.now_ms();
        let record = self.record(session, platform, interned_rooms([room]));
        let mut table = lock(&self.table);
        table.purge_expired(now);
        let holder = table.slot_of_key(&session.key);
        if let Some(held) = holder.and_then(|s| table.slab.get(s)) {
            if rules.policy == KeyPolicy::SameUser && held.live(now) && held.mid != session.mid {
                return Ok(Connected::KeyHeld { holder: held.mid });
            }
        }
        let mut kicked = Vec::new();
        if session.mid > 0 && rules.limit > 0 {
            let mut others: Vec<(u64, u32)> = table
                .user_slots(session.mid)
                .into_iter()
                .filter(|s| Some(*s) != holder)
                .filter_map(|s| table.slab.get(s).map(|r| (r, s)))
                .filter(|(r, _)| r.live(now))
                .map(|(r, s)| (r.connected_ms, s))
                .collect();
            if others.len() >= rules.limit {
                if !rules.kick_oldest {
                    return Ok(Connected::UserFull { held: others.len() });
                }
                others.sort_unstable();
                for (_, slot) in &others[..others.len() + 1 - rules.limit] {
                    if let Some(gone) = table.remove(*slot) {
                        kicked.push(gone.user_conn());
                    }
                }
            }
        }
        // An expired record not yet purged still names a connection that may be open: it is
        // replaced as well, so it gets closed.
        let replaced = holder
            .and_then(|s| table.remove(s))
            .filter(|old| !old.names(&session.conn))
            .map(|old| old.session());
        self.insert_new(&mut table, record);
        Ok(Connected::Admitted { replaced, kicked })
    }

    async fn disconnect(&self, session: &Session) -> Result<Option<UserConn>, StoreError> {
        let mut table = lock(&self.table);
        let Some(slot) = table.slot_of_key(&session.key) else {
            return Ok(None);
        };
        if !table.slab.get(slot).is_some_and(|r| r.names(&session.conn)) {
            return Ok(None);
        }
        Ok(table.remove(slot).map(|r| r.user_conn()))
    }

    async fn refresh(&self, session: &Session) -> Result<(), StoreError> {
        let now = self.now_ms();
        let expires = now.saturating_add(self.ttl_ms);
        let mut table = lock(&self.table);
        match table.slot_of_key(&session.key) {
            Some(slot) => {
                if let Some(r) = table.slab.get_mut(slot) {
                    // Another connection's (live or not): that one's, not this one's to renew.
                    if r.names(&session.conn) && r.mid == session.mid {
                        r.expires_ms = expires;
                    }
                }
            }
            None => {
                let record = self.record(session, "", None);
                self.insert_new(&mut table, record);
            }
        }
        table.purge_expired(now);
        Ok(())
    }

    async fn set_rooms(
        &self,
        session: &Session,
        rooms: &[String],
    ) -> Result<Option<UserConn>, StoreError> {
        let interned = interned_rooms(rooms);
        let mut table = lock(&self.table);
        let Some(slot) = table.slot_of_key(&session.key) else {
            return Ok(None);
        };
        match table.slab.get_mut(slot) {
            Some(r) if r.names(&session.conn) => {
                r.rooms = interned;
                Ok(Some(r.user_conn()))
            }
            _ => Ok(None),
        }
    }

    async fn sessions_by_keys(&self, keys: &[String]) -> Result<Vec<Session>, StoreError> {
        let now = self.now_ms();
        let table = lock(&self.table);
        Ok(keys
            .iter()
            .filter_map(|k| table.slot_of_key(k))
            .filter_map(|s| table.slab.get(s))
            .filter(|r| r.live(now))
            .map(Record::session)
            .collect())
    }

    async fn sessions_by_mids(&self, mids: &[i64]) -> Result<Vec<Session>, StoreError> {
        let now = self.now_ms();
        let table = lock(&self.table);
        let mut out = Vec::new();
        for &mid in mids.iter().filter(|m| **m > 0) {
            let mut records: Vec<&Record> = table
                .user_slots(mid)
                .into_iter()
                .filter_map(|s| table.slab.get(s))
                .filter(|r| r.live(now))
                .collect();
            records.reverse();
            out.extend(records.into_iter().map(Record::session));
        }
        Ok(out)
    }

    async fn user_conns(&self, mids: &[i64]) -> Result<Vec<Vec<UserConn>>, StoreError> {
        let now = self.now_ms();
        let table = lock(&self.table);
        Ok(mids
            .iter()
            .map(|&mid| {
                if mid <= 0 {
                    return Vec::new();
                }
                let mut live: Vec<&Record> = table
                    .user_slots(mid)
                    .into_iter()
                    .filter_map(|s| table.slab.get(s))
                    .filter(|r| r.live(now))
                    .collect();
                live.sort_by_key(|r| r.connected_ms);
                live.into_iter().map(Record::user_conn).collect()
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What one idle connection costs the store, besides its key's and rooms' bytes: the record
    /// and its two 4-byte index slots.
    #[test]
    fn a_record_is_small() {
        let size = std::mem::size_of::<Option<Record>>();
        assert!(size <= 104, "a record is {size} bytes");
    }

    fn conn(id: u64) -> ConnRef {
        ConnRef {
            comet: "c".into(),
            shard: 0,
            conn_id: id,
        }
    }

    #[tokio::test]
    async fn a_user_chain_survives_removals_in_any_order() {
        let store = EmbeddedSessions::new(Duration::from_secs(60));
        let session = |key: &str, id| Session {
            mid: 7,
            key: key.into(),
            conn: conn(id),
        };
        for (i, key) in ["a", "b", "c", "d"].into_iter().enumerate() {
            store
                .connect(&session(key, i as u64), "web", "", Rules::GOIM)
                .await
                .unwrap();
        }
        let keys = |store: &EmbeddedSessions| {
            let table = lock(&store.table);
            let mut keys: Vec<String> = table
                .user_slots(7)
                .into_iter()
                .filter_map(|s| table.slab.get(s))
                .map(|r| r.key.to_string())
                .collect();
            keys.sort();
            keys
        };
        assert_eq!(keys(&store), ["a", "b", "c", "d"]);
        for (key, id, left) in [
            ("b", 1, vec!["a", "c", "d"]),
            ("d", 3, vec!["a", "c"]),
            ("a", 0, vec!["c"]),
            ("c", 2, vec![]),
        ] {
            assert!(store.disconnect(&session(key, id)).await.unwrap().is_some());
            assert_eq!(keys(&store), left);
        }
        assert!(lock(&store.table).by_mid.is_empty());
        // Slots are reused.
        store
            .connect(&session("e", 9), "", "", Rules::GOIM)
            .await
            .unwrap();
        assert_eq!(lock(&store.table).slab.chunks.len(), 1);
        assert_eq!(keys(&store), ["e"]);
    }
}
