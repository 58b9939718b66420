//! Client authentication: the one seam that turns a client's auth frame into an identity.
//!
//! goim trusts the JSON body as-is ([`GoimJsonAuth`]); a verifying authenticator (signed tokens)
//! plugs in behind the same trait.

use serde::Deserialize;

/// Who a connection is, as its auth frame established.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// User id; 0 when the client gave none.
    pub mid: i64,
    /// The connection key the client asked for; `None` (or empty) lets logic generate one.
    pub key: Option<String>,
    /// Room key (`type://id`) to join at once; empty = none.
    pub room: String,
    /// Business ops the connection wants to receive.
    pub accepts: Vec<i32>,
    pub platform: String,
    /// The client acknowledges stored messages itself (auth JSON `"acks": true`); otherwise a
    /// stored message written to its socket counts as delivered.
    pub acks: bool,
}

/// Why an auth frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid auth body: {0}")]
    Invalid(String),
}

/// Turns an auth frame body (and the WebSocket cookie, if any) into an [`Identity`].
pub trait Authenticator: Send + Sync {
    fn authenticate(&self, token: &[u8], cookie: &str) -> Result<Identity, AuthError>;
}

/// goim's auth: the body is a JSON object `{"mid", "key", "room_id", "platform", "accepts"}`,
/// every field optional, nothing verified (reference §1.4).
#[derive(Debug, Clone, Copy, Default)]
pub struct GoimJsonAuth;

#[derive(Deserialize)]
struct GoimAuthBody {
    #[serde(default)]
    mid: i64,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    room_id: Option<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    accepts: Option<Vec<i32>>,
    /// imgate: the client acknowledges stored messages with op 20.
    #[serde(default)]
    acks: Option<bool>,
}

impl Authenticator for GoimJsonAuth {
    fn authenticate(&self, token: &[u8], _cookie: &str) -> Result<Identity, AuthError> {
        let body: GoimAuthBody = serde_json::from_slice(token).map_err(|e| {
            AuthError::Invalid(format!(
                "expected a JSON object with mid, key, room_id, platform, accepts: {e}"
            ))
        })?;
        Ok(Identity {
            mid: body.mid,
            key: body.key.filter(|k| !k.is_empty()),
            room: body.room_id.unwrap_or_default(),
            accepts: body.accepts.unwrap_or_default(),
            platform: body.platform.unwrap_or_default(),
            acks: body.acks.unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goim_demo_body_is_accepted() {
        let id = GoimJsonAuth
            .authenticate(
                br#"{"mid":123, "room_id":"live://1000", "platform":"web", "accepts":[1000,1001,1002]}"#,
                "",
            )
            .unwrap();
        assert_eq!(
            id,
            Identity {
                mid: 123,
                key: None,
                room: "live://1000".into(),
                accepts: vec![1000, 1001, 1002],
                platform: "web".into(),
                acks: false,
            }
        );
    }

    #[test]
    fn given_key_is_kept_and_empty_key_is_none() {
        let id = GoimJsonAuth
            .authenticate(br#"{"mid":1,"key":"abc"}"#, "")
            .unwrap();
        assert_eq!(id.key.as_deref(), Some("abc"));
        let id = GoimJsonAuth
            .authenticate(br#"{"mid":1,"key":"","room_id":"test://1"}"#, "")
            .unwrap();
        assert_eq!(id.key, None);
        let id = GoimJsonAuth.authenticate(b"{}", "").unwrap();
        assert_eq!(id, Identity::default());
    }

    #[test]
    fn invalid_bodies_are_refused() {
        for bad in [
            &b"not json"[..],
            b"",
            b"[1,2]",
            b"42",
            br#"{"mid":"x"}"#,
            br#"{"accepts":1}"#,
        ] {
            assert!(
                GoimJsonAuth.authenticate(bad, "").is_err(),
                "{:?} should be refused",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
