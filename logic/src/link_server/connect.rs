//! `Connect`: who the client is (a signed token, the connect hook, or goim's JSON), then its
//! session, claimed within the per-user limit, and its stored backlog.

use imgate_shared::counters::Counter;
use imgate_shared::link::{self, failure_cause, Body, ConnRef, ConnectReply, RefreshReply, Stored};
use imgate_store::{Connected, KeyPolicy, Rules, Session, StoredMessage};

use super::{bare_conn, LinkError, LinkHandler};
use crate::auth::{AuthError, Authenticator, Identity};
use crate::hooks::{self, PostError};

/// The business's answer to the connect hook (a JSON object; see [`parse_hook_answer`]).
#[derive(serde::Deserialize)]
struct HookAnswer {
    /// A number or a decimal string (checked by [`canonical_mid`]).
    mid: serde_json::Value,
    #[serde(default)]
    key: Option<String>,
    /// The rooms the connection may join; absent: any.
    #[serde(default)]
    rooms: Option<Vec<String>>,
    #[serde(default)]
    accepts: Option<Vec<i32>>,
    #[serde(default)]
    platform: Option<String>,
    /// When the connection expires, Unix seconds (closed `auth.leeway` later unless the
    /// client sends a fresh token, op 30, which goes through the hook too).
    #[serde(default)]
    expire_at: Option<u64>,
}

impl LinkHandler {
    /// Authenticates the client, records its connection (closing whatever it replaced or
    /// pushed out) and answers with who it is and its stored backlog.
    pub(super) async fn connect(&self, req: link::Connect) -> Result<Body, LinkError> {
        let conn = req.conn.ok_or(LinkError::missing("Connect", "conn"))?;
        let identity = self
            .identify(&req.token, &req.cookie, &req.remote_addr, &conn)
            .await?;
        let key = identity
            .key
            .clone()
            .filter(|k| !k.is_empty())
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let session = Session {
            mid: identity.mid,
            key,
            conn,
        };
        let rules = Rules {
            policy: if self.protect_keys {
                KeyPolicy::SameUser
            } else {
                KeyPolicy::AnyUser
            },
            limit: self.user_limit,
            kick_oldest: self.kick_oldest,
        };
        let connected = self
            .stores
            .sessions
            .connect(&session, &identity.platform, &identity.room, rules)
            .await?;
        let (replaced, kicked) = match connected {
            Connected::Admitted { replaced, kicked } => (replaced, kicked),
            Connected::KeyHeld { .. } => {
                return Err(LinkError::Refused(format!(
                    "connection key {:?} is held by another user's connection",
                    session.key
                )))
            }
            Connected::UserFull { held } => {
                self.counters.user_limit_refused.inc();
                return Err(LinkError::Refused(format!(
                    "user {} already has {held} connections, the most allowed",
                    session.mid
                )));
            }
        };
        if let Some(old) = replaced
            .as_ref()
            .filter(|r| r.conn.comet != session.conn.comet)
        {
            // The connecting comet closes a replaced connection of its own; one on another
            // comet is closed through the bus.
            self.close_elsewhere(old.conn.clone()).await;
        }
        for gone in kicked {
            // Whichever comet holds it, through the bus (job delivers it to that one). The
            // store removed its session already: nothing by key or user reaches it any more.
            self.counters.user_limit_kicked.inc();
            self.event("disconnect", session.mid, &gone, "kicked").await;
            self.close_elsewhere(gone.conn).await;
        }
        if let Some(old) = &replaced {
            self.event(
                "disconnect",
                old.mid,
                &bare_conn(&old.key, &old.conn),
                "replaced",
            )
            .await;
        }
        let mut joined = bare_conn(&session.key, &session.conn);
        joined.platform = identity.platform.clone();
        self.event("connect", session.mid, &joined, "auth").await;
        let (backlog, inbox_floor) = self.backlog(session.mid).await?;
        tracing::debug!(mid = session.mid, key = %session.key, remote = %req.remote_addr, "connect");
        Ok(Body::ConnectReply(ConnectReply {
            mid: session.mid,
            key: session.key,
            room: identity.room,
            accepts: identity.accepts,
            heartbeat_ms: self.heartbeat.as_millis() as u64,
            acks: identity.acks,
            room_tags: identity.room_tags,
            backlog,
            inbox_floor,
            rooms_limited: identity.allowed_rooms.is_some(),
            allowed_rooms: identity.allowed_rooms.unwrap_or_default(),
            replaced: replaced.map(|s| s.conn),
            expire_at: self.expire_at(identity.exp),
        }))
    }

    /// When a connection whose identity expires at `exp` is closed as expired: `auth.leeway`
    /// later; 0 (never) for an identity that does not expire.
    fn expire_at(&self, exp: u64) -> u64 {
        match exp {
            0 => 0,
            exp => exp.saturating_add(self.leeway.as_secs()),
        }
    }

    /// A client's fresh token (op 30): verified as at connect (a JWT, or the connect hook with
    /// `{"token": …}` as the auth JSON), it must name the connection's user. The connection
    /// takes its expiry and rooms claim; its session is renewed.
    pub(super) async fn refresh(&self, req: link::Refresh) -> Result<Body, LinkError> {
        let conn = req.conn.ok_or(LinkError::missing("Refresh", "conn"))?;
        if !self.tokens && self.connect_hook.is_none() {
            return Err(LinkError::Refused(
                "token refresh needs signed tokens or the connect hook".into(),
            ));
        }
        let token = std::str::from_utf8(&req.token)
            .map_err(|_| LinkError::Refused("the fresh token is not UTF-8".into()))?
            .trim();
        if token.is_empty() {
            return Err(LinkError::Refused("the fresh token is empty".into()));
        }
        let auth = serde_json::json!({ "token": token }).to_string();
        let identity = self
            .identify(auth.as_bytes(), "", &req.remote_addr, &conn)
            .await
            .map_err(|e| match e {
                LinkError::Refused(why) => {
                    let why = why.strip_prefix("invalid auth body: ").unwrap_or(&why);
                    LinkError::Refused(format!("fresh token refused: {why}"))
                }
                other => other,
            })?;
        if identity.mid != req.mid {
            return Err(LinkError::Refused(format!(
                "fresh token refused: it is for user {}, not {}",
                identity.mid, req.mid
            )));
        }
        let session = Session {
            mid: req.mid,
            key: req.key,
            conn,
        };
        self.stores.sessions.refresh(&session).await?;
        tracing::debug!(mid = session.mid, key = %session.key, exp = identity.exp, "token refreshed");
        Ok(Body::RefreshReply(RefreshReply {
            exp: identity.exp,
            expire_at: self.expire_at(identity.exp),
            rooms_limited: identity.allowed_rooms.is_some(),
            allowed_rooms: identity.allowed_rooms.unwrap_or_default(),
        }))
    }

    /// The first page of a connecting user's unacknowledged stored messages, and the inbox
    /// floor below which nothing more will come. Read only after the session exists: a push
    /// stored meanwhile is either in this backlog or routed to the new session (or both:
    /// comet drops the second copy by its sequence), never neither.
    async fn backlog(&self, mid: i64) -> Result<(Vec<Stored>, u64), LinkError> {
        if mid <= 0 {
            return Ok((Vec::new(), 0));
        }
        let state = self.stores.messages.inbox_state(mid).await?;
        let mut backlog: Vec<Stored> = self
            .stores
            .messages
            .inbox_read(
                mid,
                state.acked_seq,
                self.inbox_limit.min(link::STORED_PAGE_MESSAGES),
            )
            .await?
            .into_iter()
            .map(stored)
            .collect();
        // One page at most: comet reads the rest as the client takes it in.
        link::cut_to_page(&mut backlog, link::STORED_PAGE_BYTES);
        // Below the backlog (or, with none, up to the last sequence) nothing more will come.
        let floor = backlog.first().map_or(state.last_seq, |m| m.seq - 1);
        Ok((backlog, floor))
    }
    /// else the connect hook (when configured), else the configured authenticator.
    async fn identify(
        &self,
        token: &[u8],
        cookie: &str,
        remote_addr: &str,
        conn: &ConnRef,
    ) -> Result<Identity, LinkError> {
        let Some(hook) = &self.connect_hook else {
            return self
                .auth
                .authenticate(token, cookie)
                .map_err(LinkError::from);
        };
        let auth: serde_json::Value = serde_json::from_slice(token)
            .ok()
            .filter(serde_json::Value::is_object)
            .ok_or_else(|| AuthError::Invalid("expected a JSON object".into()))?;
        // A JWT is three base64url parts joined by dots; any other token is the business's.
        let presents_jwt = auth.get("token").and_then(|t| t.as_str()).is_some_and(|t| {
            let parts: Vec<&str> = t.split('.').collect();
            parts.len() == 3
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && p.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
        });
        if self.tokens && presents_jwt {
            return self
                .auth
                .authenticate(token, cookie)
                .map_err(LinkError::from);
        }
        // The client's own choices (room, accepts, acks…) as goim's JSON gives them; the
        // business decides the user and may override the rest.
        let mut identity = crate::auth::GoimJsonAuth.authenticate(token, cookie)?;
        // Bounded: a hook that stops answering holds at most this many connects (and
        // connections to it); the rest are refused at once rather than queued behind them.
        let Ok(_permit) = hook.permits.clone().try_acquire_owned() else {
            self.counters.connect_hook_busy.inc();
            return Err(LinkError::Hook {
                message: "connect hook busy".into(),
                cause: failure_cause::HOOK_BUSY,
            });
        };
        let request = serde_json::json!({
            "auth": auth,
            "remote_addr": remote_addr,
            "comet": conn.comet,
        });
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let failed = |counter: &Counter, cause: &'static str, message: String| {
            counter.inc();
            LinkError::Hook { message, cause }
        };
        let c = &self.counters;
        let answer = match hooks::post_json(&hook.endpoint, body, hook.timeout, 64 << 10).await {
            Ok(answer) => answer,
            Err(PostError::Status(status)) => {
                c.connect_hook_refused.inc();
                return Err(LinkError::Refused(format!(
                    "refused by the connect hook (HTTP {status})"
                )));
            }
            Err(e) => {
                tracing::warn!(error = %e, "connect hook failed");
                let message = format!("connect hook unavailable: {e}");
                return Err(match e {
                    PostError::Timeout(_) => failed(
                        &c.connect_hook_timeout,
                        failure_cause::HOOK_TIMEOUT,
                        message,
                    ),
                    PostError::Unreachable(_) => failed(
                        &c.connect_hook_unreachable,
                        failure_cause::HOOK_UNREACHABLE,
                        message,
                    ),
                    PostError::TooLarge(_) | PostError::Failed(_) | PostError::Status(_) => failed(
                        &c.connect_hook_bad_answer,
                        failure_cause::HOOK_BAD_ANSWER,
                        format!("connect hook answered badly: {e}"),
                    ),
                });
            }
        };
        let (answer, mid) = parse_hook_answer(&answer).map_err(|why| {
            failed(
                &c.connect_hook_bad_answer,
                failure_cause::HOOK_BAD_ANSWER,
                format!("connect hook answered badly: {why}"),
            )
        })?;
        identity.mid = mid;
        if let Some(key) = answer.key.filter(|k| !k.is_empty()) {
            identity.key = Some(key);
        }
        if let Some(accepts) = answer.accepts {
            identity.accepts = accepts;
        }
        if let Some(platform) = answer.platform {
            identity.platform = platform;
        }
        identity.exp = answer.expire_at.unwrap_or(0);
        if let Some(rooms) = answer.rooms {
            if !identity.room.is_empty() && !rooms.contains(&identity.room) {
                c.connect_hook_refused.inc();
                return Err(LinkError::Refused(format!(
                    "room {:?} is not allowed by the connect hook",
                    identity.room
                )));
            }
            identity.allowed_rooms = Some(rooms);
        }
        c.connect_hook_ok.inc();
        Ok(identity)
    }
}

/// A stored message as the link carries it.
pub(super) fn stored(m: StoredMessage) -> Stored {
    Stored {
        seq: m.seq,
        op: m.op,
        body: m.body,
    }
}

/// Reads a connect hook's answer strictly: a JSON object (serde would read `[7]` as a struct
/// too) whose `mid` is a canonical positive user id ([`canonical_mid`]); the optional fields
/// must have their types. The answer is trusted like a token, so anything else is refused.
fn parse_hook_answer(answer: &[u8]) -> Result<(HookAnswer, i64), String> {
    let value: serde_json::Value =
        serde_json::from_slice(answer).map_err(|e| format!("not JSON: {e}"))?;
    if !value.is_object() {
        return Err("not a JSON object".into());
    }
    let answer: HookAnswer =
        serde_json::from_value(value).map_err(|e| format!("unexpected JSON: {e}"))?;
    let mid = canonical_mid(&answer.mid)
        .ok_or("no positive mid (a number or a decimal string without sign or leading zeros)")?;
    Ok((answer, mid))
}

/// A user id as a positive integer, either a JSON integer or a decimal string in canonical form
/// (digits only, no sign, no leading zero, no blanks): `"+7"` and `"007"` are not user 7.
fn canonical_mid(mid: &serde_json::Value) -> Option<i64> {
    let mid = match mid {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => {
            let canonical =
                !s.is_empty() && !s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit());
            canonical.then(|| s.parse::<i64>().ok()).flatten()
        }
        _ => None,
    };
    mid.filter(|m| *m > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hook_answer_is_a_json_object_with_a_canonical_positive_mid() {
        let mid = |answer: &str| parse_hook_answer(answer.as_bytes()).map(|(_, mid)| mid);
        assert_eq!(mid(r#"{"mid": 7}"#), Ok(7));
        assert_eq!(mid(r#"{"mid": "7", "platform": "web"}"#), Ok(7));
        assert_eq!(mid(r#"{"mid": "9223372036854775807"}"#), Ok(i64::MAX));
        for bad in [
            "[7]",
            "7",
            r#""7""#,
            r#"{"mid": "+7"}"#,
            r#"{"mid": "007"}"#,
            r#"{"mid": "0"}"#,
            r#"{"mid": 0}"#,
            r#"{"mid": -1}"#,
            r#"{"mid": 7.5}"#,
            r#"{"mid": 7e0}"#,
            r#"{"mid": "7e0"}"#,
            r#"{"mid": ""}"#,
            r#"{"mid": "9223372036854775808"}"#,
            r#"{"mid": null}"#,
            r#"{"key": "k"}"#,
            r#"{"mid": 7, "accepts": "1000"}"#,
            "not json",
        ] {
            assert!(mid(bad).is_err(), "{bad} was accepted");
        }
    }
}
