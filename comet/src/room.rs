//! Room membership of one shard: room key → the connection ids of this shard in it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::rc::Rc;

/// The rooms of one shard. A room exists only while it has members, so leaving the last
/// member removes it and a later join starts a fresh one (no "dropped room" state to trip on).
#[derive(Debug, Default)]
pub(crate) struct Rooms {
    rooms: HashMap<Rc<str>, HashSet<u64>>,
}

impl Rooms {
    /// Adds `conn_id` to `room` and returns the shared room key for the connection to keep.
    pub fn join(&mut self, room: &str, conn_id: u64) -> Rc<str> {
        let key = match self.rooms.get_key_value(room) {
            Some((key, _)) => key.clone(),
            None => Rc::from(room),
        };
        self.rooms.entry(key.clone()).or_default().insert(conn_id);
        key
    }

    /// The shared key of `room`, if it has members.
    pub fn key(&self, room: &str) -> Option<Rc<str>> {
        self.rooms.get_key_value(room).map(|(key, _)| key.clone())
    }

    /// Removes `conn_id` from `room`; unknown rooms or members are ignored.
    pub fn leave(&mut self, room: &str, conn_id: u64) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&conn_id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Members of `room` on this shard.
    pub fn count(&self, room: &str) -> u32 {
        self.rooms.get(room).map_or(0, |m| m.len() as u32)
    }

    /// Connection ids in `room`.
    pub fn members(&self, room: &str) -> impl Iterator<Item = u64> + '_ {
        self.rooms.get(room).into_iter().flatten().copied()
    }

    /// Room key → local member count, for the online report (empty rooms never appear).
    pub fn counts(&self) -> BTreeMap<String, u32> {
        self.rooms
            .iter()
            .map(|(k, m)| (k.to_string(), m.len() as u32))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_leave_and_rejoin() {
        let mut rooms = Rooms::default();
        let a = rooms.join("live://1", 1);
        rooms.join("live://1", 2);
        assert_eq!(&*a, "live://1");
        assert_eq!(rooms.count("live://1"), 2);
        rooms.leave("live://1", 1);
        rooms.leave("live://1", 1);
        assert_eq!(rooms.count("live://1"), 1);
        rooms.leave("live://1", 2);
        assert_eq!(rooms.count("live://1"), 0);
        assert!(rooms.counts().is_empty());
        // A room emptied and joined again works (goim bug: the dropped room refused joins).
        rooms.join("live://1", 3);
        assert_eq!(rooms.members("live://1").collect::<Vec<_>>(), vec![3]);
        rooms.leave("unknown", 3);
        assert_eq!(rooms.counts().get("live://1"), Some(&1));
    }
}
