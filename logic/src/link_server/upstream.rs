//! `Upstream`: client frames with a business op. A client message (op 4) is POSTed to
//! `logic.upstream_url` and the business's answer is op 5's body.

use imgate_shared::link::{self, Body, Empty};

use super::LinkHandler;
use crate::hooks::{self, PostError};

/// A client message as the business receives it.
#[derive(serde::Serialize)]
struct UpstreamMessage<'a> {
    mid: i64,
    key: &'a str,
    room: &'a str,
    op: i32,
    seq: i32,
    platform: &'a str,
    /// Base64 (standard, padded).
    body: String,
}

impl LinkHandler {
    /// A client frame with a business op: op 4 goes to the business (`logic.upstream_url`) and
    /// its answer comes back for op 5; any other op is only logged.
    pub(super) async fn upstream(&self, req: link::Upstream) -> Body {
        self.counters.upstream_frames.inc();
        tracing::debug!(mid = req.mid, key = %req.key, op = req.op, seq = req.seq, len = req.body.len(), "upstream frame");
        if req.op != imgate_shared::frame::op::SEND_MSG {
            // goim's other upstream ops: logged, answered with nothing.
            return Body::Ok(Empty {});
        }
        Body::UpstreamReply(self.send_message(req).await)
    }

    /// Passes a client message (op 4) to the business; its answer (or nothing) is op 5's body.
    async fn send_message(&self, req: link::Upstream) -> link::UpstreamReply {
        use base64::Engine;
        let Some(hook) = &self.upstream else {
            self.counters.upstream_unconfigured.inc();
            return link::UpstreamReply::default();
        };
        let Ok(_permit) = hook.permits.clone().try_acquire_owned() else {
            self.counters.upstream_refused.inc();
            return link::UpstreamReply::default();
        };
        let platform = match (req.mid > 0, &req.conn) {
            (true, Some(conn)) => self
                .stores
                .sessions
                .user_conns(&[req.mid])
                .await
                .ok()
                .and_then(|mut users| users.pop())
                .and_then(|conns| conns.into_iter().find(|c| &c.conn == conn))
                .map(|c| c.platform)
                .unwrap_or_default(),
            _ => String::new(),
        };
        let message = UpstreamMessage {
            mid: req.mid,
            key: &req.key,
            room: &req.room,
            op: req.op,
            seq: req.seq,
            platform: &platform,
            body: base64::engine::general_purpose::STANDARD.encode(&req.body),
        };
        let body = serde_json::to_vec(&message).unwrap_or_default();
        match hooks::post_json(&hook.endpoint, body, hook.timeout, hook.max_body).await {
            Ok(answer) => {
                self.counters.upstream_ok.inc();
                link::UpstreamReply {
                    body: answer,
                    delivered: true,
                }
            }
            Err(e) => {
                match e {
                    PostError::Timeout(_) => self.counters.upstream_timeout.inc(),
                    PostError::TooLarge(_) => self.counters.upstream_too_large.inc(),
                    PostError::Status(_) | PostError::Unreachable(_) | PostError::Failed(_) => {
                        self.counters.upstream_failed.inc()
                    }
                }
                tracing::debug!(error = %e, mid = req.mid, "client message not delivered to the business");
                link::UpstreamReply::default()
            }
        }
    }
}
