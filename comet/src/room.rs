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
    rooms: HashMap<Rc<str>, Room<M>>,
    /// Members from which a room that doubled since the last report is due early (0: never).
    early_members: u32,
    /// A room has outgrown what the last report said of it.
    outgrown: bool,
}

/// One room's members, and the list fan-outs walk: the members in id order (the order the
/// shard accepted them, which is how the kernel laid out their sockets), made when a fan-out
/// first asks and kept until a member joins or leaves. A room nobody pushes to has none, and a
/// leaving member is let go at once.
#[derive(Debug)]
struct Room<M> {
    members: HashSet<M>,
    ordered: Option<Rc<[M]>>,
    /// Members at the last report ([`Rooms::counts`]).
    reported: u32,
}

impl<M> Default for Rooms<M> {
    fn default() -> Self {
        Rooms::new(0)
    }
}

impl<M> Rooms<M> {
    /// Rooms whose growth past `early_members` (and past twice their last report) is flagged
    /// by [`Rooms::outgrown`]; 0 never flags.
    pub fn new(early_members: u32) -> Self {
        Rooms {
            rooms: HashMap::new(),
            early_members,
            outgrown: false,
        }
    }

    /// Whether a room reached `early_members` and twice what the last report said of it.
    pub fn outgrown(&self) -> bool {
        self.outgrown
    }
}

impl<M: Borrow<u64> + Hash + Eq + Clone> Rooms<M> {
    /// Adds `member` to `room` and returns the shared room key for the connection to keep.
    pub fn join(&mut self, room: &str, member: M) -> Rc<str> {
        let key = match self.rooms.get_key_value(room) {
            Some((key, _)) => key.clone(),
            None => Rc::from(room),
        };
        let entry = self.rooms.entry(key.clone()).or_insert_with(|| Room {
            members: HashSet::new(),
            ordered: None,
            reported: 0,
        });
        if entry.members.insert(member) {
            entry.ordered = None;
            let members = entry.members.len() as u32;
            if self.early_members > 0
                && members >= self.early_members
                && members >= entry.reported.saturating_mul(2)
            {
                self.outgrown = true;
            }
        }
        key
    }

    /// The shared key of `room`, if it has members.
    pub fn key(&self, room: &str) -> Option<Rc<str>> {
        self.rooms.get_key_value(room).map(|(key, _)| key.clone())
    }

    /// Removes member `id` from `room`; unknown rooms or members are ignored.
    pub fn leave(&mut self, room: &str, id: u64) {
        if let Some(entry) = self.rooms.get_mut(room) {
            if entry.members.remove(&id) {
                entry.ordered = None;
            }
            if entry.members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Members of `room` on this shard.
    pub fn count(&self, room: &str) -> u32 {
        self.rooms.get(room).map_or(0, |r| r.members.len() as u32)
    }

    /// The members of `room` in id order (empty if it has none). A fan-out writes in this
    /// order: consecutive writes then touch neighbouring sockets and connections, which on
    /// this box makes a loopback write a fifth to a quarter cheaper than hash order
    /// (BENCHMARKS.md, "Writing in accept order").
    pub fn members(&mut self, room: &str) -> Rc<[M]> {
        let Some(entry) = self.rooms.get_mut(room) else {
            return Rc::new([]);
        };
        entry
            .ordered
            .get_or_insert_with(|| {
                in_accept_order(entry.members.iter().cloned(), |m| *m.borrow()).into()
            })
            .clone()
    }

    /// Room key → local member count, for the online report (empty rooms never appear); what
    /// the next growth is measured against.
    pub fn counts(&mut self) -> BTreeMap<String, u32> {
        self.outgrown = false;
        self.rooms
            .iter_mut()
            .map(|(k, r)| {
                r.reported = r.members.len() as u32;
                (k.to_string(), r.reported)
            })
            .collect()
    }
}

/// `items` sorted by connection id, that is in the order the shard accepted them (ids count up
/// per shard): fan-outs write in this order ([`Rooms::members`], the shard's broadcasts). The
/// kernel allocated the sockets (and comet their connections) in accept order, so
/// consecutive writes touch neighbouring memory and pages.
pub(crate) fn in_accept_order<T>(items: impl Iterator<Item = T>, id: impl Fn(&T) -> u64) -> Vec<T> {
    // Keyed first: comparing ids inside the connections would jump around memory again.
    let mut keyed: Vec<(u64, T)> = items.map(|item| (id(&item), item)).collect();
    keyed.sort_unstable_by_key(|(id, _)| *id);
    keyed.into_iter().map(|(_, item)| item).collect()
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
        assert_eq!(&*rooms.members("live://1"), &[3]);
        rooms.leave("unknown", 3);
        assert_eq!(rooms.counts().get("live://1"), Some(&1));
    }

    #[test]
    fn members_come_in_id_order_and_follow_joins_and_leaves() {
        let mut rooms = Rooms::<u64>::default();
        let ids: Vec<u64> = (1..=1000).collect();
        for id in ids.iter().rev() {
            rooms.join("r", *id);
        }
        let first = rooms.members("r");
        assert_eq!(&*first, &ids[..]);
        // Kept while nothing changes: the same list, not a new one.
        assert!(Rc::ptr_eq(&first, &rooms.members("r")));
        rooms.leave("r", 500);
        rooms.join("r", 1001);
        rooms.join("r", 1); // already in: no change
        let after = rooms.members("r");
        assert_eq!(after.len(), 1000);
        assert!(!after.contains(&500) && after.last() == Some(&1001));
        assert!(after.windows(2).all(|w| w[0] < w[1]));
        // A fan-out still walking the old list keeps it; the room has moved on.
        assert_eq!(first.len(), 1000);
        assert!(first.contains(&500));
        assert!(rooms.members("unknown").is_empty());
    }

    #[test]
    fn a_room_that_doubles_past_the_threshold_is_flagged_until_reported() {
        let mut rooms = Rooms::<u64>::new(4);
        for id in 1..=3 {
            rooms.join("r", id);
        }
        assert!(!rooms.outgrown(), "under the threshold");
        rooms.join("r", 4);
        assert!(rooms.outgrown(), "at the threshold, never reported");
        assert_eq!(rooms.counts().get("r"), Some(&4));
        assert!(!rooms.outgrown(), "a report clears it");
        for id in 5..=7 {
            rooms.join("r", id);
        }
        rooms.join("r", 7); // already in
        assert!(!rooms.outgrown(), "7 is under twice the 4 reported");
        rooms.join("r", 8);
        assert!(rooms.outgrown(), "twice the 4 reported");
        // Off: never flagged.
        let mut off = Rooms::<u64>::default();
        for id in 1..=100 {
            off.join("r", id);
        }
        assert!(!off.outgrown());
    }
}
