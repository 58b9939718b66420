//! Query-string parsing and validation for the goim HTTP API.
//!
//! goim encodes lists as repeated parameters (`keys=a&keys=b`), so the raw query is parsed into
//! pairs and every parameter is checked by hand; each failure names the parameter and what was
//! wrong with it.

/// A request that failed validation; the text is returned to the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadRequest(pub String);

/// The decoded `name=value` pairs of one query string, in order.
#[derive(Debug, Default)]
pub(crate) struct Query {
    pairs: Vec<(String, String)>,
}

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Result<Query, BadRequest> {
        let pairs = match raw {
            None | Some("") => Vec::new(),
            Some(raw) => serde_urlencoded::from_str::<Vec<(String, String)>>(raw)
                .map_err(|e| BadRequest(format!("malformed query string: {e}")))?,
        };
        Ok(Query { pairs })
    }

    /// Whether `name` is given at all.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == name)
    }

    /// The first value of `name`, if present.
    fn first(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn required_str(&self, name: &str) -> Result<&str, BadRequest> {
        match self.first(name) {
            Some(v) if !v.is_empty() => Ok(v),
            Some(_) => Err(BadRequest(format!("{name} must not be empty"))),
            None => Err(BadRequest(format!("{name} is required"))),
        }
    }

    fn optional_number<T: std::str::FromStr>(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, BadRequest> {
        match self.first(name) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse()
                .map(Some)
                .map_err(|_| BadRequest(format!("{name} must be {what}, got {v:?}"))),
        }
    }

    fn required_nonzero_op(&self) -> Result<i32, BadRequest> {
        match self.optional_number::<i32>("operation", "a 32-bit integer")? {
            None => Err(BadRequest("operation is required".into())),
            Some(0) => Err(BadRequest("operation must not be 0".into())),
            Some(op) => Ok(op),
        }
    }

    /// The values of a repeated list parameter: at least one, at most `max`, none empty,
    /// duplicates removed (order kept).
    fn list<'a>(&'a self, name: &str, max: usize) -> Result<Vec<&'a str>, BadRequest> {
        let mut out: Vec<&str> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (_, v) in self.pairs.iter().filter(|(k, _)| k == name) {
            let v = v.as_str();
            if v.is_empty() {
                return Err(BadRequest(format!(
                    "{name} must not contain an empty value"
                )));
            }
            if seen.insert(v) {
                out.push(v);
            }
        }
        if out.is_empty() {
            return Err(BadRequest(format!(
                "{name} is required (repeat it for several: {name}=a&{name}=b)"
            )));
        }
        if out.len() > max {
            return Err(BadRequest(format!(
                "too many {name}: {} given, at most {max} allowed",
                out.len()
            )));
        }
        Ok(out)
    }
}

/// `POST /goim/push/mids`.
#[derive(Debug, PartialEq)]
pub(crate) struct MidsQuery {
    pub op: i32,
    pub mids: Vec<i64>,
}

/// `POST /goim/push/room`.
#[derive(Debug, PartialEq)]
pub(crate) struct RoomQuery {
    pub op: i32,
    /// `type://room`.
    pub room: String,
    /// Keep the message in the room's recent history (`history=1`).
    pub history: bool,
}

/// `POST /goim/push/all`.
#[derive(Debug, PartialEq)]
pub(crate) struct AllQuery {
    pub op: i32,
    pub speed: u32,
}

/// `GET /goim/online/top`.
#[derive(Debug, PartialEq)]
pub(crate) struct TopQuery {
    pub room_type: String,
    pub limit: usize,
}

/// `GET /goim/online/room`.
#[derive(Debug, PartialEq)]
pub(crate) struct RoomsQuery {
    pub room_type: String,
    pub rooms: Vec<String>,
}

impl Query {
    /// `operation` of a keys or mids push: optional, 0 by default (goim).
    pub(crate) fn push_op(&self) -> Result<i32, BadRequest> {
        Ok(self
            .optional_number("operation", "a 32-bit integer")?
            .unwrap_or(0))
    }

    /// The `keys` list of a keys push.
    pub(crate) fn keys(&self, max_targets: usize) -> Result<Vec<String>, BadRequest> {
        Ok(self
            .list("keys", max_targets)?
            .into_iter()
            .map(str::to_owned)
            .collect())
    }

    /// The `mids` list of a mids push, each user once.
    pub(crate) fn mids(&self, max_targets: usize) -> Result<Vec<i64>, BadRequest> {
        let mids = self
            .list("mids", max_targets)?
            .into_iter()
            .map(|m| {
                m.parse::<i64>()
                    .map_err(|_| BadRequest(format!("mids must be 64-bit integers, got {m:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Distinct strings can name one user (`1`, `01`, `+1`); each mid is stored and pushed once.
        Ok(distinct(mids))
    }

    pub(crate) fn push_room(&self) -> Result<RoomQuery, BadRequest> {
        let op = self.required_nonzero_op()?;
        let room_type = self.required_str("type")?;
        let room = self.required_str("room")?;
        let history = match self.first("history") {
            None | Some("") | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(v) => {
                return Err(BadRequest(format!(
                    "history must be 1, true, 0 or false, got {v:?}"
                )))
            }
        };
        Ok(RoomQuery {
            op,
            room: room_key(room_type, room),
            history,
        })
    }

    /// `GET /goim/online/mids?mids=1&mids=2` or `mids=1,2`: positive user ids, each once.
    pub(crate) fn online_mids(&self, max: usize) -> Result<Vec<i64>, BadRequest> {
        self.positive_mids(max, true)
    }

    /// `GET /goim/inbox/state?mids=…`: positive user ids.
    pub(crate) fn inbox_mids(&self, max: usize) -> Result<Vec<i64>, BadRequest> {
        self.positive_mids(max, false)
    }

    /// The `mids` parameters as positive user ids, each once: at least one, at most `max`.
    /// With `commas`, a value may list several (`mids=1,2`; blanks around them ignored).
    fn positive_mids(&self, max: usize, commas: bool) -> Result<Vec<i64>, BadRequest> {
        let mut mids = Vec::new();
        for (_, v) in self.pairs.iter().filter(|(k, _)| k == "mids") {
            let values: Vec<&str> = if commas {
                v.split(',')
                    .map(str::trim)
                    .filter(|m| !m.is_empty())
                    .collect()
            } else {
                vec![v.as_str()]
            };
            for m in values {
                match m.parse::<i64>() {
                    Ok(mid) if mid > 0 => mids.push(mid),
                    _ => {
                        return Err(BadRequest(format!(
                            "mids must be positive 64-bit integers, got {m:?}"
                        )))
                    }
                }
            }
        }
        let mids = distinct(mids);
        if mids.is_empty() {
            return Err(BadRequest("mids is required".into()));
        }
        if mids.len() > max {
            return Err(BadRequest(format!(
                "at most {max} mids per request, got {}",
                mids.len()
            )));
        }
        Ok(mids)
    }

    pub(crate) fn push_all(&self) -> Result<AllQuery, BadRequest> {
        let op = self.required_nonzero_op()?;
        let speed = self
            .optional_number("speed", "a non-negative 32-bit integer")?
            .unwrap_or(0);
        Ok(AllQuery { op, speed })
    }

    pub(crate) fn online_top(&self) -> Result<TopQuery, BadRequest> {
        let room_type = self.required_str("type")?.to_owned();
        let limit = match self.optional_number::<usize>("limit", "a positive integer")? {
            None => return Err(BadRequest("limit is required".into())),
            Some(0) => return Err(BadRequest("limit must be greater than 0".into())),
            Some(n) => n,
        };
        Ok(TopQuery { room_type, limit })
    }

    pub(crate) fn online_rooms(&self, max: usize) -> Result<RoomsQuery, BadRequest> {
        let room_type = self.required_str("type")?.to_owned();
        let rooms = self
            .list("rooms", max)?
            .into_iter()
            .map(str::to_owned)
            .collect();
        Ok(RoomsQuery { room_type, rooms })
    }

    pub(crate) fn platform(&self) -> &str {
        self.first("platform").unwrap_or("")
    }
}

/// A push body that carries its own targets: what it holds besides the message.
#[derive(Debug)]
pub(crate) struct BodyTargets {
    /// The target list (`keys` or `mids`), as the query would have carried it.
    pub targets: Query,
    /// The message to push (what the whole body is in goim's form).
    pub message: bytes::Bytes,
}

/// The field of a body that carries targets which holds the message.
pub(crate) const MESSAGE_FIELD: &str = "message";

/// What a keys or mids push without targets is told.
fn targets_required(list: &str) -> BadRequest {
    BadRequest(format!(
        "{list} is required: in the query ({list}=a&{list}=b, the body being the message) or, \
         with the message as \"{MESSAGE_FIELD}\", in an application/x-www-form-urlencoded or \
         application/json body"
    ))
}

/// Reads a push body that carries its targets (`list`: `keys` or `mids`) and its message:
/// `application/x-www-form-urlencoded` (`mids=1&mids=2&message=hi`, lists repeated as in the
/// query) or `application/json` (`{"mids": [1, 2], "message": "hi"}`; a message that is not a
/// string is pushed as its JSON text; mids may be numbers or decimal strings). A body that
/// names no `list` at all is not one of these (it is goim's message, its targets forgotten).
pub(crate) fn body_targets(
    content_type: Option<&str>,
    body: &[u8],
    list: &str,
) -> Result<BodyTargets, BadRequest> {
    let media = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let (pairs, message) = match media.as_str() {
        "application/x-www-form-urlencoded" => form_targets(body, list)?,
        "application/json" => json_targets(body, list)?,
        _ => return Err(targets_required(list)),
    };
    let message = message.ok_or_else(|| {
        BadRequest(format!(
            "a body that carries {list} must carry the message too, as \"{MESSAGE_FIELD}\""
        ))
    })?;
    Ok(BodyTargets {
        targets: Query { pairs },
        message,
    })
}

type Pairs = Vec<(String, String)>;

fn form_targets(body: &[u8], list: &str) -> Result<(Pairs, Option<bytes::Bytes>), BadRequest> {
    let fields = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .map_err(|_| targets_required(list))?;
    if !fields.iter().any(|(name, _)| name == list) {
        return Err(targets_required(list));
    }
    let mut pairs = Vec::new();
    let mut message = None;
    for (name, value) in fields {
        if name == MESSAGE_FIELD {
            if message.is_some() {
                return Err(BadRequest(format!("{MESSAGE_FIELD} is given twice")));
            }
            message = Some(bytes::Bytes::from(value));
        } else if name == list {
            pairs.push((name, value));
        } else {
            return Err(BadRequest(format!(
                "unexpected form field {name:?}: the body carries {list} and {MESSAGE_FIELD}"
            )));
        }
    }
    Ok((pairs, message))
}

fn json_targets(body: &[u8], list: &str) -> Result<(Pairs, Option<bytes::Bytes>), BadRequest> {
    use serde_json::Value;
    let fields = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(fields)) if fields.contains_key(list) => fields,
        _ => return Err(targets_required(list)),
    };
    let mut pairs = Vec::new();
    let mut message = None;
    for (name, value) in fields {
        if name == MESSAGE_FIELD {
            message = Some(match value {
                Value::String(text) => bytes::Bytes::from(text),
                other => bytes::Bytes::from(other.to_string()),
            });
        } else if name == list {
            let Value::Array(items) = value else {
                return Err(BadRequest(format!("{list} must be a JSON array")));
            };
            for item in items {
                let text = match item {
                    Value::String(text) => text,
                    Value::Number(n) if list == "mids" => n.to_string(),
                    other => {
                        return Err(BadRequest(format!(
                            "{list} must hold {}, got {other}",
                            if list == "mids" {
                                "integers (or decimal strings)"
                            } else {
                                "strings"
                            }
                        )))
                    }
                };
                pairs.push((list.to_string(), text));
            }
        } else {
            return Err(BadRequest(format!(
                "unexpected JSON field {name:?}: the body carries {list} and {MESSAGE_FIELD}"
            )));
        }
    }
    Ok((pairs, message))
}

/// Longest room name the business may join connections to or take them out of, in bytes
/// (what a client may name with op 24).
pub(crate) const MAX_ROOM_LEN: usize = 256;
/// Longest kick reason, in bytes: what a WebSocket close frame carries beside its status.
pub(crate) const MAX_REASON_LEN: usize = 123;
/// The fields a join, leave or kick body may carry.
const CONTROL_FIELDS: [&str; 5] = ["keys", "mids", "type", "room", "reason"];

/// Whose connections a join, leave or kick names.
#[derive(Debug, PartialEq)]
pub(crate) enum Targets {
    Keys(Vec<String>),
    Mids(Vec<i64>),
}

impl Targets {
    /// What the answer calls them when none is online.
    pub(crate) fn noun(&self) -> &'static str {
        match self {
            Targets::Keys(_) => "keys",
            Targets::Mids(_) => "mids",
        }
    }
}

/// The parameters of `POST /goim/rooms/join`, `/goim/rooms/leave` and `/goim/kick`: the query's,
/// and those of a form or JSON body (`{"mids": [1, 2], "type": "live", "room": "1"}`; lists
/// repeated in a form as in the query). Unknown body fields are refused, so a misspelt one
/// is not silently ignored.
pub(crate) fn control_params(
    query: Query,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Query, BadRequest> {
    let mut pairs = query.pairs;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Query { pairs });
    }
    let media = content_type
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let unexpected = |name: &str| {
        BadRequest(format!(
            "unexpected field {name:?}: the body may carry {}",
            CONTROL_FIELDS.join(", ")
        ))
    };
    match media.as_str() {
        "application/x-www-form-urlencoded" => {
            let fields = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
                .map_err(|e| BadRequest(format!("malformed form body: {e}")))?;
            for (name, value) in fields {
                if !CONTROL_FIELDS.contains(&name.as_str()) {
                    return Err(unexpected(&name));
                }
                pairs.push((name, value));
            }
        }
        "application/json" => {
            use serde_json::Value;
            let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
                return Err(BadRequest("the body must be a JSON object".into()));
            };
            for (name, value) in fields {
                if !CONTROL_FIELDS.contains(&name.as_str()) {
                    return Err(unexpected(&name));
                }
                let items = match value {
                    Value::Array(items) => items,
                    one => vec![one],
                };
                for item in items {
                    let text = match item {
                        Value::String(text) => text,
                        Value::Number(n) => n.to_string(),
                        other => {
                            return Err(BadRequest(format!(
                                "{name} must hold strings or numbers, got {other}"
                            )))
                        }
                    };
                    pairs.push((name.clone(), text));
                }
            }
        }
        _ => {
            return Err(BadRequest(
                "the body must be application/x-www-form-urlencoded or application/json \
                 (or empty, the parameters in the query)"
                    .into(),
            ))
        }
    }
    Ok(Query { pairs })
}

impl Query {
    /// `keys` or `mids` (one of them) of a join, leave or kick, at most `max`.
    pub(crate) fn targets(&self, max: usize) -> Result<Targets, BadRequest> {
        match (self.has("keys"), self.has("mids")) {
            (true, true) => Err(BadRequest("give keys or mids, not both".into())),
            (true, false) => Ok(Targets::Keys(self.keys(max)?)),
            (false, true) => Ok(Targets::Mids(self.mids(max)?)),
            (false, false) => Err(BadRequest(
                "keys or mids is required, in the query or in a form or JSON body".into(),
            )),
        }
    }

    /// The room (`type` and `room`) of a join or leave, as `type://room`.
    pub(crate) fn control_room(&self) -> Result<String, BadRequest> {
        let room = room_key(self.required_str("type")?, self.required_str("room")?);
        if room.len() > MAX_ROOM_LEN {
            return Err(BadRequest(format!(
                "the room {:?}… is {} bytes long, at most {MAX_ROOM_LEN} allowed",
                room.chars().take(32).collect::<String>(),
                room.len()
            )));
        }
        Ok(room)
    }

    /// A kick's `reason` (optional: "kicked"), what the client's op 6 says.
    pub(crate) fn kick_reason(&self) -> Result<String, BadRequest> {
        match self.first("reason") {
            None | Some("") => Ok("kicked".into()),
            Some(r) if r.len() > MAX_REASON_LEN => Err(BadRequest(format!(
                "reason is {} bytes long, at most {MAX_REASON_LEN} allowed",
                r.len()
            ))),
            Some(r) => Ok(r.to_string()),
        }
    }
}

/// `values` without repeats, first occurrences in order.
fn distinct(values: Vec<i64>) -> Vec<i64> {
    let mut seen = std::collections::HashSet::with_capacity(values.len());
    values.into_iter().filter(|v| seen.insert(*v)).collect()
}

/// goim's room key: `type://id`.
pub(crate) fn room_key(room_type: &str, room: &str) -> String {
    format!("{room_type}://{room}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(raw: &str) -> Query {
        Query::parse(Some(raw)).unwrap()
    }

    fn err<T: std::fmt::Debug>(r: Result<T, BadRequest>) -> String {
        r.expect_err("should be refused").0
    }

    /// What the keys push handler reads from a query that names its targets.
    fn push_keys(q: Query, max: usize) -> Result<(i32, Vec<String>), BadRequest> {
        Ok((q.push_op()?, q.keys(max)?))
    }

    /// What the mids push handler reads from a query that names its targets.
    fn push_mids(q: Query, max: usize) -> Result<MidsQuery, BadRequest> {
        Ok(MidsQuery {
            op: q.push_op()?,
            mids: q.mids(max)?,
        })
    }

    #[test]
    fn keys_are_repeated_parameters_and_operation_defaults_to_zero() {
        assert_eq!(
            push_keys(q("keys=a&keys=b%20c&keys=a"), 10).unwrap(),
            (0, vec!["a".to_string(), "b c".to_string()])
        );
        assert_eq!(push_keys(q("operation=1000&keys=a"), 10).unwrap().0, 1000);
        // Comma-separated values are not split, as in goim.
        assert_eq!(push_keys(q("keys=a,b"), 10).unwrap().1, vec!["a,b"]);
    }

    #[test]
    fn bad_keys_requests_name_the_parameter() {
        assert!(err(push_keys(q("operation=1"), 10)).contains("keys is required"));
        assert!(err(push_keys(q(""), 10)).contains("keys"));
        assert!(err(push_keys(Query::parse(None).unwrap(), 10)).contains("keys"));
        assert!(err(push_keys(q("keys="), 10)).contains("empty"));
        assert!(err(push_keys(q("operation=x&keys=a"), 10)).contains("operation must be"));
        assert!(err(push_keys(q("operation=99999999999&keys=a"), 10)).contains("operation"));
        let too_many = err(push_keys(q("keys=a&keys=b&keys=c"), 2));
        assert!(too_many.contains("too many keys: 3"), "{too_many}");
    }

    #[test]
    fn mids_must_be_integers() {
        assert_eq!(
            push_mids(q("operation=5&mids=1&mids=-2"), 10).unwrap(),
            MidsQuery {
                op: 5,
                mids: vec![1, -2],
            }
        );
        assert!(err(push_mids(q("mids=1&mids=x"), 10)).contains("mids must be 64-bit integers"));
        assert!(err(push_mids(q("mids=1&mids=2"), 1)).contains("too many mids"));
        assert!(err(push_mids(q("operation=5"), 10)).contains("mids is required"));
    }

    /// Found by the `http_query` fuzz target: `mids=1&mids=01` named user 1 twice, so a push
    /// was stored in (and later resent from) its inbox twice.
    #[test]
    fn a_user_named_twice_is_pushed_once() {
        assert_eq!(
            push_mids(q("operation=5&mids=1&mids=01&mids=%2B1&mids=2"), 10)
                .unwrap()
                .mids,
            vec![1, 2]
        );
    }

    /// Found by the `http_query` fuzz target: only adjacent repeats were dropped, so
    /// `mids=1&mids=2&mids=1` listed user 1 twice.
    #[test]
    fn inbox_state_lists_each_user_once() {
        assert_eq!(
            q("mids=1&mids=2&mids=1&mids=01").inbox_mids(10).unwrap(),
            vec![1, 2]
        );
        assert_eq!(q("mids=7&mids=7&mids=7").inbox_mids(1).unwrap(), vec![7]);
        assert!(err(q("mids=1&mids=2").inbox_mids(1)).contains("at most 1 mids"));
        assert!(err(q("mids=0").inbox_mids(10)).contains("positive"));
    }

    fn body(content_type: &str, body: &str, list: &str) -> Result<BodyTargets, BadRequest> {
        body_targets(Some(content_type), body.as_bytes(), list)
    }

    fn bad(r: Result<BodyTargets, BadRequest>) -> String {
        r.expect_err("should be refused").0
    }

    #[test]
    fn targets_and_message_in_a_form_or_json_body() {
        let form = body(
            "application/x-www-form-urlencoded",
            "mids=1&mids=2&message=hi%20there",
            "mids",
        )
        .unwrap();
        assert_eq!(form.targets.mids(10).unwrap(), vec![1, 2]);
        assert_eq!(&form.message[..], b"hi there");
        let json = body(
            "application/json; charset=utf-8",
            r#"{"mids": [1, "2", 1], "message": "hi"}"#,
            "mids",
        )
        .unwrap();
        assert_eq!(json.targets.mids(10).unwrap(), vec![1, 2]);
        assert_eq!(&json.message[..], b"hi");
        // A message that is not a string is pushed as its JSON text.
        let json = body(
            "application/json",
            r#"{"keys": ["a", "b"], "message": {"n": 1}}"#,
            "keys",
        )
        .unwrap();
        assert_eq!(json.targets.keys(10).unwrap(), vec!["a", "b"]);
        assert_eq!(&json.message[..], br#"{"n":1}"#);
        // The limits of the query apply as they are.
        assert!(body(
            "application/json",
            r#"{"keys":["a","b","c"],"message":""}"#,
            "keys"
        )
        .unwrap()
        .targets
        .keys(2)
        .unwrap_err()
        .0
        .contains("too many keys: 3"));
    }

    #[test]
    fn bad_target_bodies_say_what_is_wrong() {
        const JSON: &str = "application/json";
        const FORM: &str = "application/x-www-form-urlencoded";
        // No targets anywhere: goim's message with its targets forgotten.
        for (ty, text) in [
            ("text/plain", "hi"),
            (FORM, "mid message"),
            (JSON, r#"{"hello": 1}"#),
            (JSON, "[1]"),
            (JSON, "{"),
        ] {
            let refused = bad(body(ty, text, "mids"));
            assert!(
                refused.starts_with("mids is required"),
                "{ty} {text}: {refused}"
            );
        }
        assert!(bad(body_targets(None, b"mids=1", "mids")).contains("is required"));
        assert!(bad(body(JSON, r#"{"mids":[1]}"#, "mids")).contains("message too"));
        assert!(bad(body(JSON, r#"{"mids":1,"message":""}"#, "mids")).contains("array"));
        let fraction = body(JSON, r#"{"mids":[1.5],"message":""}"#, "mids").unwrap();
        assert!(fraction
            .targets
            .mids(10)
            .unwrap_err()
            .0
            .contains("64-bit integers"));
        assert!(bad(body(JSON, r#"{"keys":[1],"message":""}"#, "keys")).contains("strings"));
        assert!(bad(body(
            JSON,
            r#"{"mids":[1],"message":"","operation":5}"#,
            "mids"
        ))
        .contains("unexpected JSON field"));
        assert!(
            bad(body(FORM, "mids=1&keys=a&message=x", "mids")).contains("unexpected form field")
        );
        assert!(bad(body(FORM, "mids=1&message=a&message=b", "mids")).contains("twice"));
    }

    #[test]
    fn control_parameters_come_from_the_query_or_a_form_or_json_body() {
        let params = |raw: &str, content_type: Option<&str>, body: &str| {
            control_params(q(raw), content_type, body.as_bytes())
        };
        let p = params("type=live&room=1&keys=a&keys=b", None, "").unwrap();
        assert_eq!(
            p.targets(10),
            Ok(Targets::Keys(vec!["a".into(), "b".into()]))
        );
        assert_eq!(p.control_room().unwrap(), "live://1");
        let p = params(
            "type=live",
            Some("application/json; charset=utf-8"),
            r#"{"mids": [1, "2", 1], "room": 7, "reason": "bye"}"#,
        )
        .unwrap();
        assert_eq!(p.targets(10), Ok(Targets::Mids(vec![1, 2])));
        assert_eq!(p.control_room().unwrap(), "live://7");
        assert_eq!(p.kick_reason().unwrap(), "bye");
        let p = params(
            "",
            Some("application/x-www-form-urlencoded"),
            "mids=3&mids=4",
        )
        .unwrap();
        assert_eq!(p.targets(10), Ok(Targets::Mids(vec![3, 4])));
        assert_eq!(p.kick_reason().unwrap(), "kicked");
        assert!(err(p.targets(1)).contains("too many mids"));
        assert!(err(params("", None, "").unwrap().targets(10)).contains("keys or mids"));
        assert!(err(params("keys=a&mids=1", None, "").unwrap().targets(10)).contains("not both"));
        assert!(err(params("", Some("application/json"), "[1]")).contains("JSON object"));
        assert!(
            err(params("", Some("application/json"), r#"{"mids": [null]}"#))
                .contains("strings or numbers")
        );
        assert!(err(params("", Some("application/json"), r#"{"mid": [1]}"#))
            .contains("unexpected field"));
        assert!(err(params("", Some("text/plain"), "mids=1")).contains("form"));
        let long = format!("type=live&room={}", "r".repeat(MAX_ROOM_LEN));
        assert!(err(params(&long, None, "").unwrap().control_room()).contains("at most"));
        let long = format!("reason={}", "r".repeat(MAX_REASON_LEN + 1));
        assert!(err(params(&long, None, "").unwrap().kick_reason()).contains("at most"));
    }

    #[test]
    fn room_push_needs_operation_type_and_room() {
        assert_eq!(
            q("operation=1000&type=live&room=1000").push_room().unwrap(),
            RoomQuery {
                op: 1000,
                room: "live://1000".into(),
                history: false,
            }
        );
        assert!(
            q("operation=1&type=live&room=1&history=1")
                .push_room()
                .unwrap()
                .history
        );
        assert!(err(q("operation=1&type=live&room=1&history=yes").push_room()).contains("history"));
        assert_eq!(
            err(q("type=live&room=1").push_room()),
            "operation is required"
        );
        assert_eq!(
            err(q("operation=0&type=live&room=1").push_room()),
            "operation must not be 0"
        );
        assert_eq!(err(q("operation=1&room=1").push_room()), "type is required");
        assert_eq!(
            err(q("operation=1&type=&room=1").push_room()),
            "type must not be empty"
        );
        assert_eq!(
            err(q("operation=1&type=live").push_room()),
            "room is required"
        );
    }

    #[test]
    fn broadcast_speed_is_optional_and_non_negative() {
        assert_eq!(
            q("operation=7").push_all().unwrap(),
            AllQuery { op: 7, speed: 0 }
        );
        assert_eq!(q("operation=7&speed=100").push_all().unwrap().speed, 100);
        assert!(err(q("operation=7&speed=-1").push_all()).contains("speed"));
        assert!(err(q("speed=1").push_all()).contains("operation is required"));
    }

    #[test]
    fn online_queries() {
        assert_eq!(
            q("type=live&limit=3").online_top().unwrap(),
            TopQuery {
                room_type: "live".into(),
                limit: 3,
            }
        );
        assert!(err(q("type=live").online_top()).contains("limit is required"));
        assert!(err(q("type=live&limit=0").online_top()).contains("limit must be greater"));
        assert!(err(q("limit=1").online_top()).contains("type is required"));
        assert_eq!(
            q("type=live&rooms=1&rooms=2")
                .online_rooms(10)
                .unwrap()
                .rooms,
            vec!["1", "2"]
        );
        assert!(err(q("type=live").online_rooms(10)).contains("rooms is required"));
    }
}
