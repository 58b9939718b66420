//! Room membership of one shard: room key → the shard's members of it, held as themselves so
//! a fan-out walks them without looking each one up. A room's name is the process's one copy
//! ([`imgate_shared::intern`]), shared with its members' own lists.

use std::borrow::Borrow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::rc::Rc;
use std::sync::Arc;

/// The rooms of one shard, each a set of members found by their id (`M` is the connection,
/// keyed by its id). A room exists only while it has members, so leaving the last member
/// removes it and a later join starts a fresh one (no "dropped room" state to trip on).
#[derive(Debug)]
pub(crate) struct Rooms<M> {
    rooms: HashMap<Arc<str>, Room<M>>,
    /// Members from which a room that doubled since the last report is due early (0: never).
    early_members: u32,
    /// A room has outgrown what the last report said of it.
    outgrown: bool,
}

/// One room's members, and the list fan-outs walk: the members in id order (the order the
/// shard accepted them, which is how the kernel laid out their sockets), made when a fan-out
/// first asks and kept until a member joins or leaves. A room nobody pushes to has none, and a
/// leaving member is let go at once. 40 bytes beside its name: most rooms have one member (a
/// user's own channel, a private chat), and a client may make up to `comet.max_rooms_per_conn`
/// of them, so a room costs little until it has company.
#[derive(Debug)]
struct Room<M> {
    members: Members<M>,
    ordered: Option<Rc<[M]>>,
    /// Members at the last report ([`Rooms::counts`]).
    reported: u32,
    /// Members across the cluster, as logic answered the last report (0 until it has).
    cluster: u32,
}

/// A room's members: one inline, a set from the second on (and back to one inline when all
/// but one have left).
#[derive(Debug)]
enum Members<M> {
    One(M),
    #[allow(clippy::box_collection)]
    Many(Box<HashSet<M>>),
}

impl<M: Borrow<u64> + Hash + Eq + Clone> Members<M> {
    fn len(&self) -> usize {
        match self {
            Members::One(_) => 1,
            Members::Many(set) => set.len(),
        }
    }

    /// Adds `member`; false if it was in already.
    fn insert(&mut self, member: M) -> bool {
        match self {
            Members::One(only) if Borrow::<u64>::borrow(only) == member.borrow() => false,
            Members::One(only) => {
                let mut set = HashSet::with_capacity(2);
                set.insert(only.clone());
                set.insert(member);
                *self = Members::Many(Box::new(set));
                true
            }
            Members::Many(set) => set.insert(member),
        }
    }

    /// Removes member `id`; false if it was not in. The last member is not removed here: the
    /// room goes with it ([`Rooms::leave`]).
    fn remove(&mut self, id: u64) -> bool {
        let Members::Many(set) = self else {
            return false;
        };
        let removed = set.remove(&id);
        if set.len() == 1 {
            if let Some(last) = set.iter().next().cloned() {
                *self = Members::One(last);
            }
        }
        removed
    }

    fn iter(&self) -> Box<dyn Iterator<Item = &M> + '_> {
        match self {
            Members::One(only) => Box::new(std::iter::once(only)),
            Members::Many(set) => Box::new(set.iter()),
        }
    }
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
    pub fn join(&mut self, room: &str, member: M) -> Arc<str> {
        let key = match self.rooms.get_key_value(room) {
            Some((key, _)) => key.clone(),
            None => imgate_shared::intern::room(room),
        };
        let entry = match self.rooms.entry(key.clone()) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(entry) => {
                entry.insert(Room {
                    members: Members::One(member),
                    ordered: None,
                    reported: 0,
                    cluster: 0,
                });
                self.flag_if_outgrown(1, 0);
                return key;
            }
        };
        if entry.members.insert(member) {
            entry.ordered = None;
            let (members, reported) = (entry.members.len() as u32, entry.reported);
            self.flag_if_outgrown(members, reported);
        }
        key
    }

    /// Flags a room of `members` that reached `early_members` and twice the `reported`.
    fn flag_if_outgrown(&mut self, members: u32, reported: u32) {
        if self.early_members > 0
            && members >= self.early_members
            && members >= reported.saturating_mul(2)
        {
            self.outgrown = true;
        }
    }

    /// The shared key of `room`, if it has members.
    pub fn key(&self, room: &str) -> Option<Arc<str>> {
        self.rooms.get_key_value(room).map(|(key, _)| key.clone())
    }

    /// Removes member `id` from `room`; unknown rooms or members are ignored.
    pub fn leave(&mut self, room: &str, id: u64) {
        let Some(entry) = self.rooms.get_mut(room) else {
            return;
        };
        match &entry.members {
            Members::One(only) if *only.borrow() == id => {
                self.rooms.remove(room);
            }
            Members::One(_) => {}
            Members::Many(_) => {
                if entry.members.remove(id) {
                    entry.ordered = None;
                }
            }
        }
    }

    /// Members of `room` on this shard.
    #[cfg(test)]
    pub fn count(&self, room: &str) -> u32 {
        self.rooms.get(room).map_or(0, |r| r.members.len() as u32)
    }

    /// Members of `room` as a heartbeat reply counts them: the cluster's, as logic last
    /// answered, or this shard's if more (0 for a room the shard does not have).
    pub fn online(&self, room: &str) -> u32 {
        self.rooms
            .get(room)
            .map_or(0, |r| r.cluster.max(r.members.len() as u32))
    }

    /// Keeps the cluster-wide counts logic answered the last report with, for the rooms this
    /// shard still has (a room that emptied since is gone, and takes its count with it).
    pub fn set_cluster_counts<'a>(&mut self, counts: impl IntoIterator<Item = (&'a str, u32)>) {
        for room in self.rooms.values_mut() {
            room.cluster = 0;
        }
        for (name, count) in counts {
            if let Some(room) = self.rooms.get_mut(name) {
                room.cluster = count;
            }
        }
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

    /// Each room (its shared name) and its local member count, for the online report (empty
    /// rooms never appear); what the next growth is measured against.
    pub fn counts(&mut self) -> Vec<(Arc<str>, u32)> {
        self.outgrown = false;
        self.rooms
            .iter_mut()
            .map(|(k, r)| {
                r.reported = r.members.len() as u32;
                (k.clone(), r.reported)
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
        let count = |rooms: &mut Rooms<u64>, name: &str| {
            let counts = rooms.counts();
            counts.iter().find(|(k, _)| &**k == name).map(|(_, n)| *n)
        };
        // A room emptied and joined again works (goim bug: the dropped room refused joins).
        rooms.join("live://1", 3);
        assert_eq!(&*rooms.members("live://1"), &[3]);
        rooms.leave("unknown", 3);
        assert_eq!(count(&mut rooms, "live://1"), Some(1));
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
    fn a_room_keeps_one_member_inline_and_goes_back_to_it() {
        let mut rooms = Rooms::<u64>::default();
        rooms.join("r", 1);
        assert!(matches!(rooms.rooms["r"].members, Members::One(1)));
        rooms.join("r", 1);
        rooms.join("r", 2);
        assert!(matches!(rooms.rooms["r"].members, Members::Many(_)));
        assert_eq!(&*rooms.members("r"), &[1, 2]);
        rooms.leave("r", 1);
        assert!(matches!(rooms.rooms["r"].members, Members::One(2)));
        assert_eq!(&*rooms.members("r"), &[2]);
        rooms.leave("r", 1);
        assert_eq!(rooms.count("r"), 1);
        rooms.leave("r", 2);
        assert!(rooms.rooms.is_empty());
    }

    #[test]
    fn a_heartbeat_counts_the_cluster_while_the_room_lasts() {
        let mut rooms = Rooms::<u64>::default();
        rooms.join("a", 1);
        rooms.join("b", 2);
        rooms.join("b", 3);
        rooms.set_cluster_counts([("a", 10), ("gone", 5), ("b", 1)]);
        assert_eq!(rooms.online("a"), 10);
        assert_eq!(
            rooms.online("b"),
            2,
            "the shard's own count when it is more"
        );
        assert_eq!(rooms.online("gone"), 0, "no room kept for a count");
        rooms.leave("a", 1);
        rooms.join("a", 4);
        assert_eq!(
            rooms.online("a"),
            1,
            "an emptied room forgot the cluster's count"
        );
        rooms.set_cluster_counts([]);
        assert_eq!(rooms.online("b"), 2);
    }

    /// Found by probing: a client making single-member rooms (up to
    /// `comet.max_rooms_per_conn` each) cost ~2.7 KB a room across the process. On the shard
    /// such a room is its name, once, and its entry: no set, no second copy of the name for
    /// the cluster's count. Counted with the test allocator (memory_probe.rs), on this thread.
    #[test]
    fn a_single_member_room_costs_its_name_and_little_more() {
        const ROOMS: u64 = 10_000;
        const NAME: usize = 256;
        let mut rooms = Rooms::<crate::conn::ById>::default();
        let conns: Vec<_> = (0..ROOMS).map(crate::conn::ById::for_test).collect();
        let with_conns = crate::memory_probe::thread_bytes();
        for (i, conn) in conns.iter().enumerate() {
            let name = format!("live://{i:0>249}");
            assert_eq!(name.len(), NAME);
            rooms.join(&name, conn.clone());
        }
        let names: Vec<String> = (0..ROOMS).map(|i| format!("live://{i:0>249}")).collect();
        let before_counts = crate::memory_probe::thread_bytes();
        rooms.set_cluster_counts(names.iter().map(|n| (n.as_str(), 2)));
        let with_conns = with_conns + crate::memory_probe::thread_bytes() - before_counts;
        drop(names);
        let held = crate::memory_probe::thread_bytes() - with_conns;
        // The name with its reference counts (Arc<str>), then the rest: the shard's entry (56
        // bytes in a table 44-88 % full) and the process table's (16 bytes, as full).
        let beside_name = held as f64 / ROOMS as f64 - (NAME + 16) as f64;
        println!("a single-member room: its name and {beside_name:.0} bytes");
        // A set per room, or a second copy of its name, would cost over 250 more.
        assert!(
            beside_name <= 200.0,
            "{beside_name:.0} bytes beside its name"
        );
        assert!(std::mem::size_of::<Room<crate::conn::ById>>() <= 40);
        drop(rooms);
        imgate_shared::intern::sweep();
        assert!(
            crate::memory_probe::thread_bytes() - with_conns < held / 4,
            "the names were let go"
        );
        drop(conns);
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
        assert_eq!(rooms.counts(), [("r".into(), 4)]);
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
