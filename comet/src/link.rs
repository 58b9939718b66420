//! The cluster-link server where job delivers pushes. Each push is encoded once into its TCP
//! and WebSocket variants and handed to the shards that need it; nothing is answered.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use futures_lite::future;
use imgate_runtime::net::Socket;
use imgate_runtime::spawn_local;
use imgate_runtime::time::sleep;
use imgate_shared::link::{self, Body, Envelope};

use crate::outbound::ws_variant;
use crate::shard::{Shard, ShardCommand};
use crate::socket_io::read_with;
use crate::stats;

/// Accepts link connections on one shard's socket until the task is dropped.
pub(crate) async fn accept_links(shard: Rc<Shard>, listener: Socket) {
    loop {
        match listener
            .accept()
            .await
            .and_then(|(fd, peer)| Ok((Socket::new(fd)?, peer)))
        {
            Ok((stream, peer)) => {
                spawn_local(serve_link(shard.clone(), stream, peer)).detach();
            }
            Err(_) if shard.is_stopping() => return,
            Err(e) => {
                tracing::warn!(shard = shard.index, "link accept failed: {e}");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve_link(shard: Rc<Shard>, stream: Socket, peer: Option<std::net::SocketAddr>) {
    let _ = stream.set_nodelay();
    let stop = shard.stop.clone();
    let outcome = future::or(read_pushes(&shard, stream), async {
        let _ = stop.recv().await;
        Ok(())
    })
    .await;
    if let Err(e) = outcome {
        tracing::warn!(shard = shard.index, ?peer, "closing link: {e}");
    }
}

async fn read_pushes(shard: &Shard, stream: Socket) -> Result<(), String> {
    let stream = RefCell::new(stream);
    let mut buf = BytesMut::new();
    loop {
        match read_with(&stream, &shard.read_scratch, |data| {
            buf.extend_from_slice(data)
        })
        .await
        {
            Ok(Some(())) => {}
            Ok(None) => return Ok(()),
            Err(e) => return Err(format!("read error: {e}")),
        }
        loop {
            match link::decode_frame(&mut buf) {
                Ok(Some(envelope)) => dispatch(shard, envelope).await,
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        if buf.is_empty() && buf.capacity() > 1 << 20 {
            buf = BytesMut::new();
        }
    }
}

/// Splits one push over the shards' inboxes (waiting when an inbox is full, so job's queue
/// absorbs the backpressure).
async fn dispatch(shard: &Shard, envelope: Envelope) {
    let inboxes = &shard.comet.inboxes;
    match envelope.body {
        Some(Body::PushKeys(push)) => {
            let ws = ws_variant(&push.frame);
            for target in push.targets {
                match inboxes.get(target.shard as usize) {
                    Some(inbox) => {
                        let _ = inbox
                            .send(ShardCommand::PushKeys {
                                keys: target.keys,
                                op: push.op,
                                tcp: push.frame.clone(),
                                ws: ws.clone(),
                                seq: push.seq,
                                mid: push.mid,
                            })
                            .await;
                    }
                    None => {
                        tracing::warn!(
                            "push for shard {} but this comet has {}",
                            target.shard,
                            inboxes.len()
                        );
                        for _ in &target.keys {
                            stats::inc(&shard.stats.push_dropped_no_key);
                        }
                    }
                }
            }
        }
        Some(Body::PushRoom(push)) => {
            let ws = ws_variant(&push.frames);
            for inbox in inboxes {
                let _ = inbox
                    .send(ShardCommand::PushRoom {
                        room: push.room.clone(),
                        tcp: push.frames.clone(),
                        ws: ws.clone(),
                    })
                    .await;
            }
        }
        Some(Body::Broadcast(push)) => {
            let ws = ws_variant(&push.frame);
            let speed = match push.speed {
                0 => 0,
                s => (s / inboxes.len() as u32).max(1),
            };
            for inbox in inboxes {
                let _ = inbox
                    .send(ShardCommand::Broadcast {
                        op: push.op,
                        tcp: push.frame.clone(),
                        ws: ws.clone(),
                        speed,
                    })
                    .await;
            }
        }
        Some(Body::CloseConn(close)) => {
            let Some(conn) = close.conn.filter(|c| c.comet == shard.comet.id) else {
                return;
            };
            if let Some(inbox) = inboxes.get(conn.shard as usize) {
                let _ = inbox
                    .send(ShardCommand::CloseReplaced {
                        conn_id: conn.conn_id,
                    })
                    .await;
            }
        }
        other => tracing::debug!("ignoring unexpected link message {:?}", other.is_some()),
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use imgate_shared::link::{
        decode_frame, Body, Envelope, InboxAck, InboxMessages, InboxRead, Stored,
    };

    /// The stored-message bodies comet sends and receives must survive the link envelope
    /// (every `Body` tag must be listed on `Envelope`'s oneof, or prost skips it as unknown).
    #[test]
    fn inbox_messages_survive_the_link_envelope() {
        let bodies = [
            Body::InboxAck(InboxAck {
                conn: None,
                mid: 7,
                seq: 3,
            }),
            Body::InboxRead(InboxRead {
                conn: None,
                mid: 7,
                room: "live://1".into(),
                after: 2,
                max_bytes: 1 << 16,
            }),
            Body::InboxMessages(InboxMessages {
                messages: vec![Stored {
                    seq: 3,
                    op: 1000,
                    body: Bytes::from_static(b"m3"),
                }],
                more: true,
            }),
        ];
        for body in bodies {
            let sent = Envelope::new(5, body);
            let mut buf = BytesMut::from(&sent.to_frame()[..]);
            assert_eq!(decode_frame(&mut buf).unwrap(), Some(sent));
        }
    }
}
