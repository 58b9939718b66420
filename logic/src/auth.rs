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
    /// The client wants room pushes tagged with their room (auth JSON `"room_tags": true`).
    pub room_tags: bool,
    /// The rooms the connection may join (a token's `rooms` claim); `None`: any room.
    pub allowed_rooms: Option<Vec<String>>,
    /// When the identity expires, Unix seconds (a token's `exp`, the connect hook's
    /// `expire_at`); 0: never.
    pub exp: u64,
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
/// every field optional, nothing verified (docs/goim-compatibility.md, "Who a client is").
#[derive(Debug, Clone, Copy, Default)]
pub struct GoimJsonAuth;

/// The auth frame's JSON: goim's fields, plus imgate's `acks` and (signed deployments) `token`.
#[derive(Deserialize)]
struct AuthBody {
    #[serde(default)]
    mid: i64,
    #[serde(default)]
    token: Option<String>,
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
    /// imgate: room pushes come tagged with their room (op 28).
    #[serde(default)]
    room_tags: Option<bool>,
}

impl AuthBody {
    /// The connection this body asks for, as user `mid`.
    fn into_identity(self, mid: i64, allowed_rooms: Option<Vec<String>>) -> Identity {
        Identity {
            mid,
            key: self.key.filter(|k| !k.is_empty()),
            room: self.room_id.unwrap_or_default(),
            accepts: self.accepts.unwrap_or_default(),
            platform: self.platform.unwrap_or_default(),
            acks: self.acks.unwrap_or(false),
            room_tags: self.room_tags.unwrap_or(false),
            allowed_rooms,
            exp: 0,
        }
    }
}

impl Authenticator for GoimJsonAuth {
    fn authenticate(&self, token: &[u8], _cookie: &str) -> Result<Identity, AuthError> {
        let body: AuthBody = serde_json::from_slice(token).map_err(|e| {
            AuthError::Invalid(format!(
                "expected a JSON object with mid, key, room_id, platform, accepts: {e}"
            ))
        })?;
        let mid = body.mid;
        Ok(body.into_identity(mid, None))
    }
}

/// Verifies signed tokens (JWT, HS256 with a shared secret or RS256/ES256 with a public key):
/// the user is the token's `sub`, never the JSON's `mid`; an `exp` claim is required and an
/// `nbf` claim, when present, is honoured (both with [`CLOCK_LEEWAY_SECS`], or the leeway
/// [`JwtAuth::with_leeway`] sets); a `rooms` claim, when present, lists the rooms the
/// connection may join.
pub struct JwtAuth {
    key: jsonwebtoken::DecodingKey,
    validation: jsonwebtoken::Validation,
}

/// Clock skew tolerated between the token issuer and logic, for `exp` and `nbf` alike, unless
/// `auth.leeway` says otherwise (its default is the same).
pub const CLOCK_LEEWAY_SECS: u64 = 60;

/// What every token must satisfy: the algorithm of the key, `exp` required and in the future,
/// `nbf` (if any) in the past, each give or take [`CLOCK_LEEWAY_SECS`].
fn validation(algorithm: jsonwebtoken::Algorithm) -> jsonwebtoken::Validation {
    let mut v = jsonwebtoken::Validation::new(algorithm);
    v.leeway = CLOCK_LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = true;
    v
}

#[derive(Deserialize)]
struct Claims {
    sub: serde_json::Value,
    /// Required and checked by the validation.
    exp: u64,
    #[serde(default)]
    rooms: Option<Vec<String>>,
}

impl JwtAuth {
    /// The clock skew tolerated for `exp` and `nbf` (`auth.leeway`), whole seconds.
    pub fn with_leeway(mut self, leeway: std::time::Duration) -> JwtAuth {
        self.validation.leeway = leeway.as_secs();
        self
    }

    /// Tokens signed with HS256 and this secret.
    pub fn hs256(secret: &[u8]) -> JwtAuth {
        JwtAuth {
            key: jsonwebtoken::DecodingKey::from_secret(secret),
            validation: validation(jsonwebtoken::Algorithm::HS256),
        }
    }

    /// Tokens signed with the private half of this PEM public key: RSA (RS256) or EC (ES256).
    pub fn public_key_pem(pem: &[u8]) -> Result<JwtAuth, AuthError> {
        use jsonwebtoken::{Algorithm, DecodingKey};
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(JwtAuth {
                key,
                validation: validation(Algorithm::RS256),
            });
        }
        match DecodingKey::from_ec_pem(pem) {
            Ok(key) => Ok(JwtAuth {
                key,
                validation: validation(Algorithm::ES256),
            }),
            Err(e) => Err(AuthError::Invalid(format!(
                "jwt_public_key_file is neither an RSA nor an EC public key in PEM: {e}"
            ))),
        }
    }
}

impl Authenticator for JwtAuth {
    fn authenticate(&self, token: &[u8], _cookie: &str) -> Result<Identity, AuthError> {
        let mut body: AuthBody = serde_json::from_slice(token).map_err(|e| {
            AuthError::Invalid(format!(
                "expected a JSON object with a signed \"token\": {e}"
            ))
        })?;
        let jwt = body
            .token
            .take()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::Invalid("auth needs a signed \"token\"".into()))?;
        let claims = jsonwebtoken::decode::<Claims>(&jwt, &self.key, &self.validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                AuthError::Invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired".to_string(),
                    ErrorKind::ImmatureSignature => "token not valid yet (nbf)".to_string(),
                    ErrorKind::InvalidSignature => "token signature is invalid".to_string(),
                    _ => format!("invalid token: {e}"),
                })
            })?
            .claims;
        let mid = match &claims.sub {
            serde_json::Value::String(s) => s.parse::<i64>().ok(),
            serde_json::Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .filter(|m| *m > 0)
        .ok_or_else(|| AuthError::Invalid("token sub must be a positive user id".into()))?;
        let mut identity = body.into_identity(mid, claims.rooms);
        identity.exp = claims.exp;
        if let Some(allowed) = &identity.allowed_rooms {
            if !identity.room.is_empty() && !allowed.contains(&identity.room) {
                return Err(AuthError::Invalid(format!(
                    "room {:?} is not allowed by the token",
                    identity.room
                )));
            }
        }
        Ok(identity)
    }
}

/// Mints an HS256 token for `mid` (what `imgate token` prints), valid for `ttl`.
pub fn mint_hs256(
    secret: &[u8],
    mid: i64,
    rooms: Option<Vec<String>>,
    ttl: std::time::Duration,
) -> Result<String, AuthError> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| AuthError::Invalid(e.to_string()))?
        + ttl;
    let mut claims = serde_json::json!({"sub": mid.to_string(), "exp": exp.as_secs()});
    if let Some(rooms) = rooms {
        claims["rooms"] = serde_json::json!(rooms);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
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
                room_tags: false,
                allowed_rooms: None,
                exp: 0,
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

    fn signed(secret: &[u8], claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn body(token: &str, room: &str) -> Vec<u8> {
        serde_json::json!({"mid": 999, "token": token, "room_id": room})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn the_user_comes_from_the_token_not_the_json() {
        let token = mint_hs256(b"s3cret", 42, None, std::time::Duration::from_secs(60)).unwrap();
        let id = JwtAuth::hs256(b"s3cret")
            .authenticate(&body(&token, "live://1"), "")
            .unwrap();
        assert_eq!((id.mid, id.room.as_str()), (42, "live://1"));
    }

    #[test]
    fn forged_expired_missing_and_foreign_room_tokens_are_refused() {
        let auth = JwtAuth::hs256(b"s3cret");
        let err = |b: Vec<u8>| match auth.authenticate(&b, "") {
            Err(AuthError::Invalid(m)) => m,
            Ok(id) => panic!("accepted {id:?}"),
        };
        let forged = mint_hs256(b"other", 42, None, std::time::Duration::from_secs(60)).unwrap();
        assert!(err(body(&forged, "")).contains("signature"));
        let expired = signed(b"s3cret", serde_json::json!({"sub": "42", "exp": 1000}));
        assert!(err(body(&expired, "")).contains("expired"));
        let no_exp = signed(b"s3cret", serde_json::json!({"sub": "42"}));
        assert!(err(body(&no_exp, "")).contains("invalid token"));
        assert!(err(br#"{"mid": 42}"#.to_vec()).contains("token"));
        let rooms = mint_hs256(
            b"s3cret",
            42,
            Some(vec!["live://1".into()]),
            std::time::Duration::from_secs(60),
        )
        .unwrap();
        assert!(err(body(&rooms, "live://2")).contains("not allowed"));
        assert!(auth.authenticate(&body(&rooms, "live://1"), "").is_ok());
        let anonymous = mint_hs256(b"s3cret", 0, None, std::time::Duration::from_secs(60)).unwrap();
        assert!(err(body(&anonymous, "")).contains("positive"));
    }

    fn unix_now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// A token minted for later (`nbf`) does not work before its time.
    #[test]
    fn a_token_not_valid_yet_is_refused_within_the_same_leeway_as_exp() {
        let auth = JwtAuth::hs256(b"s3cret");
        let now = unix_now();
        let with_nbf = |nbf: u64| {
            let t = signed(
                b"s3cret",
                serde_json::json!({"sub": "42", "exp": now + 3600, "nbf": nbf}),
            );
            auth.authenticate(&body(&t, ""), "")
        };
        let later = with_nbf(now + 600).expect_err("nbf ten minutes ahead is refused");
        assert!(later.to_string().contains("not valid yet"), "{later}");
        // Beyond the leeway by a margin, so a slow test cannot cross it.
        assert!(with_nbf(now + CLOCK_LEEWAY_SECS + 30).is_err());
        // Within the leeway (clock skew), now, and past: accepted.
        assert_eq!(with_nbf(now + CLOCK_LEEWAY_SECS - 30).unwrap().mid, 42);
        assert_eq!(with_nbf(now).unwrap().mid, 42);
        assert_eq!(with_nbf(now - 3600).unwrap().mid, 42);
        // exp gets the same leeway: just expired is still within it, long expired is not.
        let exp = |exp: u64| {
            let t = signed(b"s3cret", serde_json::json!({"sub": "42", "exp": exp}));
            auth.authenticate(&body(&t, ""), "")
        };
        assert!(exp(now - (CLOCK_LEEWAY_SECS - 30)).is_ok());
        assert!(exp(now - (CLOCK_LEEWAY_SECS + 30)).is_err());
        // An nbf that is not a number is refused, not ignored.
        let t = signed(
            b"s3cret",
            serde_json::json!({"sub": "42", "exp": now + 3600, "nbf": "soon"}),
        );
        assert!(auth.authenticate(&body(&t, ""), "").is_err());
    }
}
