//! The session seam: which connection holds which connection key, for which user, on which
//! platform and in which rooms.
//!
//! A connection is one record as far as logic is concerned: [`SessionStore::connect`] claims its
//! key and counts it among its user's connections (within the per-user limit) in one call,
//! heartbeats [`refresh`](SessionStore::refresh) it, room changes
//! [`set_rooms`](SessionStore::set_rooms) on it, and [`disconnect`](SessionStore::disconnect)
//! removes it. The embedded store keeps exactly one entry per connection; Redis keeps a key
//! entry and a field of the user's hash, each changed by its own script (one cluster slot each).

use imgate_shared::link::ConnRef;

use crate::StoreError;

/// One authenticated connection: the key it holds, its user (0: anonymous) and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub mid: i64,
    pub key: String,
    pub conn: ConnRef,
}

/// Who may take a connection key that a live session holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyPolicy {
    /// Anyone: the newer connection replaces the holder, whoever its user (goim's model, the
    /// development mode).
    AnyUser,
    /// Only the holder's own user (signed-token deployments); another user is refused.
    SameUser,
}

/// The rules a connect is admitted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    pub policy: KeyPolicy,
    /// Most connections one user (mid > 0) may hold (`comet.max_conns_per_user`); 0: no limit.
    pub limit: usize,
    /// Over the limit, the user's oldest connections are dropped instead of refusing the new
    /// one (`comet.kick_oldest`).
    pub kick_oldest: bool,
}

impl Rules {
    /// goim's rules: any user takes a key over, no limit per user.
    pub const GOIM: Rules = Rules {
        policy: KeyPolicy::AnyUser,
        limit: 0,
        kick_oldest: false,
    };
}

/// What [`SessionStore::connect`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connected {
    /// Recorded. `replaced` is the session that held the key until now (the same connection
    /// claiming its key again is not a replacement): that connection must be closed, as
    /// nothing reaches it under this key any more. `kicked` are the user's oldest connections
    /// dropped to keep within the limit (only with `kick_oldest`): their sessions are gone
    /// too, and they must be closed.
    Admitted {
        replaced: Option<Session>,
        kicked: Vec<UserConn>,
    },
    /// A live session of another user (`holder`) holds the key ([`KeyPolicy::SameUser`]);
    /// nothing was changed.
    KeyHeld { holder: i64 },
    /// The user already holds `held` connections, the limit; nothing was changed.
    UserFull { held: usize },
}

/// One connection of a user, as presence and the per-user connection limit see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConn {
    pub key: String,
    pub conn: ConnRef,
    /// The platform its auth named (`web`, `android`, …); may be empty.
    pub platform: String,
    /// Every room it is in: the one it named at auth, then as its comet reports changes
    /// (ops 12, 24, 26 and the business's joins and leaves).
    pub rooms: Vec<String>,
    /// When it was admitted, Unix milliseconds (by the store's clock).
    pub connected_ms: u64,
}

/// Sessions: recorded at connect, refreshed by heartbeats, removed at disconnect, looked up by
/// the pushes to keys and users, and read by presence.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// Records a new connection: claims `session.key` (with [`KeyPolicy::SameUser`], a live
    /// session of another user refuses it) and, for a user (mid > 0), counts it among the
    /// user's connections within `rules.limit` (a connection with the same key is replaced,
    /// not counted). Decided atomically: two connects racing for one key, or for a user's
    /// last place, never both win. `platform` and `room` (the room it named at auth, may be
    /// empty) are what presence shows.
    async fn connect(
        &self,
        session: &Session,
        platform: &str,
        room: &str,
        rules: Rules,
    ) -> Result<Connected, StoreError>;

    /// Removes the connection if its key still names it (a replaced connection's late
    /// disconnect leaves its successor alone); returns what was recorded of it, `None` if
    /// nothing named it any more.
    async fn disconnect(&self, session: &Session) -> Result<Option<UserConn>, StoreError>;

    /// Extends the connection's lifetime (a heartbeat). When the store lost it (expired, or a
    /// Redis restarted without its data) it is recorded again, platform and rooms unknown,
    /// unless another connection holds the key now.
    async fn refresh(&self, session: &Session) -> Result<(), StoreError>;

    /// Replaces the rooms the connection is in (its comet reports every change); returns the
    /// connection's entry as it is now, `None` when the store keeps none naming it (a
    /// replaced connection; in Redis, an anonymous one: only users have entries there).
    async fn set_rooms(
        &self,
        session: &Session,
        rooms: &[String],
    ) -> Result<Option<UserConn>, StoreError>;

    /// The live sessions for these keys (unknown keys are left out).
    async fn sessions_by_keys(&self, keys: &[String]) -> Result<Vec<Session>, StoreError>;

    /// The live sessions of these users, every device of each.
    async fn sessions_by_mids(&self, mids: &[i64]) -> Result<Vec<Session>, StoreError>;

    /// The live connections of these users whose key still names them, oldest first, in
    /// the order of `mids`.
    async fn user_conns(&self, mids: &[i64]) -> Result<Vec<Vec<UserConn>>, StoreError>;
}
