//! Room membership of one shard: room key → the shard's members of it, held as themselves so
//! a fan-out walks them without looking each one up.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;
use std::rc::Rc;

/// The rooms of one shard, each a set of members found by their id (`M` is the connection,
/// keyed by its id). A room exists only while it has members, so leaving the last member
/// removes it and a later join starts a fresh one (no "dropped room" state to trip on).
#[derive(Debug)]
pub(crate) struct Rooms<M> {
    rooms: HashMap<Rc<str>, HashSet<M>>,
}

impl<M> Default for Rooms<M> {
    fn default() -> Self {
        Rooms {
            rooms: HashMap::new(),
        }
    }
}

impl<M: Borrow<u64> + Hash + Eq> Rooms<M> {
    /// Adds `member` to `room` and returns the shared room key for the connection to keep.
    pub fn join(&mut self, room: &str, member: M) -> Rc<str> {
        let key = match self.rooms.get_key_value(room) {
            Some((key, _)) => key.clone(),
            None => Rc::from(room),
        };
        self.rooms.entry(key.clone()).or_default().insert(member);
        key
    }

    /// The shared key of `room`, if it has members.
    pub fn key(&self, room: &str) -> Option<Rc<str>> {
        self.rooms.get_key_value(room).map(|(key, _)| key.clone())
    }

    /// Removes member `id` from `room`; unknown rooms or members are ignored.
    pub fn leave(&mut self, room: &str, id: u64) {
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(&id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Members of `room` on this shard.
    pub fn count(&self, room: &str) -> u32 {
        self.rooms.get(room).map_or(0, |m| m.len() as u32)
    }

    /// The members of `room`.
    pub fn members(&self, room: &str) -> impl Iterator<Item = &M> + '_ {
        self.rooms.get(room).into_iter().flatten()
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
        let mut rooms = Rooms::<u64>::default();
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
        assert_eq!(rooms.members("live://1").collect::<Vec<_>>(), vec![&3]);
        rooms.leave("unknown", 3);
        assert_eq!(rooms.counts().get("live://1"), Some(&1));
    }
}
