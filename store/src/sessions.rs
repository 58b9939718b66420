//! The session seam: which connection holds which connection key, for which user.

use imgate_shared::link::ConnRef;

use crate::StoreError;

/// One authenticated connection.
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

/// What [`SessionStore::claim_session`] did, decided in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The session now holds the key. `replaced` is the session that held it until now (the
    /// same connection re-claiming its key is not a replacement): that connection must be
    /// closed, as nothing will reach it under this key any more.
    Claimed { replaced: Option<Session> },
    /// A live session of another user (`holder`) holds the key; nothing was changed.
    Refused { holder: i64 },
}

/// One connection of a user, as presence and the per-user connection limit see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserConn {
    pub key: String,
    pub conn: ConnRef,
    /// The platform its auth named (`web`, `android`, …); may be empty.
    pub platform: String,
    /// The room it named at auth (its main room then); may be empty.
    pub room: String,
    /// When it was admitted, Unix milliseconds (by the store's clock); 0 when asking.
    pub connected_ms: u64,
}

/// What [`SessionStore::admit_conn`] decided, in one atomic step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// Recorded. `kicked` are the user's oldest connections that had to go to keep within the
    /// limit (only when asked to kick the oldest); they are no longer counted.
    Admitted { kicked: Vec<UserConn> },
    /// The user already holds `held` connections, the limit; nothing was changed.
    Refused { held: usize },
}

/// Sessions: claimed at connect, refreshed by heartbeats, removed at disconnect, looked up by
/// the pushes to keys and users.
#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// Claims `session.key` for `session` in one atomic step: when a live session of another
    /// user holds the key and `policy` is [`KeyPolicy::SameUser`], refuses and changes
    /// nothing; otherwise records `session` and returns the session it replaced.
    async fn claim_session(
        &self,
        session: &Session,
        policy: KeyPolicy,
    ) -> Result<Claim, StoreError>;
    /// Records `session`, replacing whoever held the key ([`KeyPolicy::AnyUser`]).
    async fn add_session(&self, session: &Session) -> Result<(), StoreError> {
        self.claim_session(session, KeyPolicy::AnyUser)
            .await
            .map(|_| ())
    }
    /// Removes the session for `key` if it still belongs to `conn`; says whether it did.
    async fn remove_session(&self, mid: i64, key: &str, conn: &ConnRef)
        -> Result<bool, StoreError>;
    /// Extends the session's lifetime; re-creates it if it expired, unless another connection
    /// took the key in the meantime.
    async fn refresh_session(&self, session: &Session) -> Result<(), StoreError>;
    /// The live sessions for these keys (unknown keys are left out).
    async fn sessions_by_keys(&self, keys: &[String]) -> Result<Vec<Session>, StoreError>;
    /// The live sessions of these users, every device of each.
    async fn sessions_by_mids(&self, mids: &[i64]) -> Result<Vec<Session>, StoreError>;

    /// Records `conn` among user `mid`'s connections (mid > 0), in one atomic step with the
    /// check of the user's limit: with `limit` > 0 and that many other live connections
    /// (another connection with the same key is replaced, not counted), refuses, or with
    /// `kick_oldest` drops the oldest ones and returns them.
    async fn admit_conn(
        &self,
        mid: i64,
        conn: &UserConn,
        limit: usize,
        kick_oldest: bool,
    ) -> Result<Admit, StoreError>;
    /// Extends the lifetime of the user's connection entry for `key` if it names `conn`;
    /// re-creates it (platform and room unknown) if the user has no entry for `key` (the store
    /// lost it), so presence and the limit see the connection again.
    async fn refresh_conn(&self, mid: i64, key: &str, conn: &ConnRef) -> Result<(), StoreError>;
    /// Drops the user's connection entry for `key` if it names `conn`; returns it.
    async fn remove_conn(
        &self,
        mid: i64,
        key: &str,
        conn: &ConnRef,
    ) -> Result<Option<UserConn>, StoreError>;
    /// The live connection entries of these users, oldest first, in the order of `mids`.
    async fn user_conns(&self, mids: &[i64]) -> Result<Vec<Vec<UserConn>>, StoreError>;
}
