//! Fuzz harness body for the HTTP API's query-string parsing ([`Query`]).
//!
//! The cargo-fuzz target `http_query` in `fuzz/` and `tests/fuzz_corpus.rs` both call
//! [`fuzz_http_query`], so the fuzzer and the stable test suite run the same checks. Not part
//! of the API.

use std::collections::HashSet;
use std::hash::Hash;

use crate::query::{body_targets, room_key, Query};

/// List limits the accessors are run with: the smallest, small ones, and the default
/// `logic.max_push_targets`.
const MAX_TARGETS: [usize; 4] = [1, 2, 3, 10_000];

/// `http_query`: `data` is the raw query string of a request (the part after `?`); it is
/// parsed and every endpoint's accessor is run on it. The same bytes are also read as a push
/// body that carries its targets (form and JSON).
///
/// A query string that reaches logic is valid UTF-8 (axum hands over the URI's text), so other
/// bytes are replaced first. Checks the promises the handlers rely on: lists within their
/// limit and without duplicates or empty values, non-zero operations, positive limits.
pub fn fuzz_http_query(data: &[u8]) {
    let raw = String::from_utf8_lossy(data);
    let Ok(query) = Query::parse(Some(&raw)) else {
        return;
    };
    let _ = query.platform();
    for max in MAX_TARGETS {
        if let Ok(keys) = query.keys(max) {
            check_list(&keys, max);
            assert!(keys.iter().all(|k| !k.is_empty()));
        }
        if let Ok(mids) = query.mids(max) {
            check_list(&mids, max);
        }
        if let Ok(rooms) = query.online_rooms(max) {
            check_list(&rooms.rooms, max);
            assert!(rooms.rooms.iter().all(|r| !r.is_empty()));
            assert!(!rooms.room_type.is_empty());
        }
        if let Ok(mids) = query.inbox_mids(max) {
            check_list(&mids, max);
            assert!(mids.iter().all(|&m| m > 0));
        }
    }
    if let Ok(room) = query.push_room() {
        assert_ne!(room.op, 0);
        assert!(room.room.contains("://"));
        assert!(!room.room.starts_with("://") && !room.room.ends_with("://"));
    }
    if let Ok(all) = query.push_all() {
        assert_ne!(all.op, 0);
    }
    if let Ok(top) = query.online_top() {
        assert!(top.limit > 0);
        assert!(!top.room_type.is_empty());
    }
    let _ = room_key(&raw, &raw);
    // The same bytes as a push body carrying its targets, in either format.
    for content_type in ["application/x-www-form-urlencoded", "application/json"] {
        for list in ["keys", "mids"] {
            let Ok(carried) = body_targets(Some(content_type), data, list) else {
                continue;
            };
            for max in MAX_TARGETS {
                if let Ok(keys) = carried.targets.keys(max) {
                    check_list(&keys, max);
                    assert!(keys.iter().all(|k| !k.is_empty()));
                }
                if let Ok(mids) = carried.targets.mids(max) {
                    check_list(&mids, max);
                }
            }
        }
    }
}

/// A target list the handlers act on once per entry: one to `max` entries, each once.
fn check_list<T: Eq + Hash + std::fmt::Debug>(list: &[T], max: usize) {
    assert!(!list.is_empty(), "empty list accepted");
    assert!(
        list.len() <= max,
        "{} entries above the limit {max}",
        list.len()
    );
    let mut seen = HashSet::new();
    for item in list {
        assert!(seen.insert(item), "{item:?} listed twice in {list:?}");
    }
}
