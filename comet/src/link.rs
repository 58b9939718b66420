//! The cluster-link server where job delivers pushes; nothing is answered.
//!
//! Job opens one link per comet shard and names the shard in its first message
//! (`LinkHello`). The kernel hands the connection to whichever shard's listener it picks; if
//! that is not the shard named, it passes the socket to that shard's inbox: one hand-off per
//! link, never per push. Each shard then reads its own link, decodes its pushes into its own
//! memory, makes their WebSocket variant once and fans them out itself, so no shard does
//! per-push or per-member work for another.
//!
//! A link that does not start with a hello (an older job, a hand-written tool) is served as
//! before: each push is split over the shards' inboxes.

use imgate_shared::log_limit::RateLimit;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::future;
use imgate_runtime::net::Socket;
use imgate_runtime::spawn_local;
use imgate_runtime::time::sleep;
use imgate_shared::link::{self, Body, Envelope};

use crate::backlink::LinkBack;
use crate::fanout;
use crate::outbound::ws_variant;
use crate::setup::ShardCommand;
use crate::shard::Shard;
use crate::socket_io::read_with;

/// Pushes a shard handles from its link before it lets its other tasks run.
const PUSHES_PER_TURN: u32 = 32;

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
                static ACCEPT: RateLimit = RateLimit::per_secs(10);
                imgate_shared::warn_limited!(
                    ACCEPT,
                    shard = shard.index,
                    "link accept failed: {e}"
                );
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// How a link's pushes reach the connections.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    /// The link is this shard's: it handles the pushes itself.
    Own,
    /// A link without a hello: every push is split over the shards' inboxes.
    Split,
}

async fn serve_link(shard: Rc<Shard>, stream: Socket, peer: Option<SocketAddr>) {
    let _ = stream.set_nodelay();
    until_stopped(&shard, peer, open_link(&shard, stream, peer)).await;
}

/// Serves a link another shard accepted and passed on (with what it had read past the hello).
pub(crate) async fn serve_adopted(
    shard: Rc<Shard>,
    fd: OwnedFd,
    buffered: BytesMut,
    peer: Option<SocketAddr>,
) {
    let served = async {
        let stream = Socket::new(fd).map_err(|e| format!("cannot watch the link: {e}"))?;
        serve_own(&shard, RefCell::new(stream), buffered).await
    };
    until_stopped(&shard, peer, served).await;
}

async fn until_stopped(
    shard: &Shard,
    peer: Option<SocketAddr>,
    served: impl std::future::Future<Output = Result<(), String>>,
) {
    let stop = shard.stop.clone();
    let outcome = future::or(served, async {
        let _ = stop.recv().await;
        Ok(())
    })
    .await;
    if let Err(e) = outcome {
        tracing::warn!(shard = shard.index, ?peer, "closing link: {e}");
    }
}

/// Reads the link's first message and serves the link here, passes it to the shard it names,
/// or serves it the old way.
async fn open_link(
    shard: &Rc<Shard>,
    stream: Socket,
    peer: Option<SocketAddr>,
) -> Result<(), String> {
    let stream = RefCell::new(stream);
    let mut buf = BytesMut::new();
    let first = loop {
        match link::decode_frame(&mut buf) {
            Ok(Some(envelope)) => break envelope,
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        if !read_more(shard, &stream, &mut buf).await? {
            return Ok(());
        }
    };
    match first.body {
        Some(Body::LinkHello(hello)) if hello.shard == shard.index => {
            serve_own(shard, stream, buf).await
        }
        Some(Body::LinkHello(hello)) => {
            let inboxes = &shard.comet.inboxes;
            let Some(inbox) = inboxes.get(hello.shard as usize) else {
                return Err(format!(
                    "a link for shard {} but this comet has {}",
                    hello.shard,
                    inboxes.len()
                ));
            };
            let fd = stream
                .into_inner()
                .into_fd()
                .map_err(|e| format!("cannot pass the link on: {e}"))?;
            let _ = inbox
                .send(ShardCommand::AdoptLink {
                    fd,
                    buffered: buf,
                    peer,
                })
                .await;
            Ok(())
        }
        _ => {
            split(shard, first).await;
            read_pushes(shard, &stream, buf, Route::Split, None).await
        }
    }
}

/// Serves one of this shard's own links: its pushes are handled here, and the shard tells
/// job on it how loaded it is (`backlink::report_load`).
async fn serve_own(
    shard: &Rc<Shard>,
    stream: RefCell<Socket>,
    buf: BytesMut,
) -> Result<(), String> {
    let back = Rc::new(LinkBack::new(stream));
    shard.add_job_link(Rc::downgrade(&back));
    read_pushes(shard, back.socket(), buf, Route::Own, Some(&back)).await
}

/// Reads more link bytes into `buf`; false at the end of the stream.
async fn read_more(
    shard: &Shard,
    stream: &RefCell<Socket>,
    buf: &mut BytesMut,
) -> Result<bool, String> {
    match read_with(stream, &shard.read_scratch, |data| {
        buf.extend_from_slice(data)
    })
    .await
    {
        Ok(Some(())) => Ok(true),
        Ok(None) => Ok(false),
        Err(e) => Err(format!("read error: {e}")),
    }
}

async fn read_pushes(
    shard: &Rc<Shard>,
    stream: &RefCell<Socket>,
    mut buf: BytesMut,
    route: Route,
    back: Option<&LinkBack>,
) -> Result<(), String> {
    let mut handled = 0u32;
    let mut ready: VecDeque<Envelope> = VecDeque::new();
    // When the bytes being handled were read: a push's latency starts there.
    let mut read_at = Instant::now();
    loop {
        // Everything complete that was read, decoded first: when the shard falls behind, the
        // room pushes waiting for it are merged below.
        loop {
            match link::decode_frame(&mut buf) {
                Ok(Some(envelope)) => ready.push_back(envelope),
                Ok(None) => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        while let Some(envelope) = ready.pop_front() {
            let envelope = match route {
                Route::Own => merge_room_pushes(envelope, &mut ready),
                Route::Split => envelope,
            };
            let id = envelope.id;
            let accepted_us = envelope.accepted_us;
            let push = matches!(route, Route::Own)
                && matches!(
                    envelope.body,
                    Some(Body::PushKeys(_) | Body::PushRoom(_) | Body::Broadcast(_))
                );
            match route {
                Route::Own => handle_own(shard, envelope).await,
                Route::Split => split(shard, envelope).await,
            }
            if push {
                let us = read_at.elapsed().as_micros() as u64;
                shard.stats.fanout_latency.observe_us(us);
                if accepted_us > 0 {
                    // Across processes this trusts the hosts' clocks; a stamp from the future
                    // (skew) counts as no time.
                    let us = link::unix_us().saturating_sub(accepted_us);
                    shard.stats.push_latency.observe_us(us);
                }
            }
            if let Some(back) = back {
                back.handled.set(id);
            }
            // Let the connections' writers (and this shard's other tasks) run between bursts.
            handled += 1;
            if handled == PUSHES_PER_TURN {
                handled = 0;
                futures_lite::future::yield_now().await;
            }
        }
        if buf.is_empty() && buf.capacity() > 1 << 20 {
            buf = BytesMut::new();
        }
        if !read_more(shard, stream, &mut buf).await? {
            return Ok(());
        }
        read_at = Instant::now();
    }
}

/// Most bytes of frames one merged room push carries.
const MAX_MERGED_FRAMES: usize = 256 << 10;

/// A room push followed, in what was read, by more pushes to the same room becomes one push
/// carrying all their frames (in order), so a shard that fell behind writes each member once
/// for all of them instead of once each: the further behind, the bigger its batches. The
/// merged push keeps the id of the last one in it (the stamp job is told was handled).
fn merge_room_pushes(first: Envelope, ready: &mut VecDeque<Envelope>) -> Envelope {
    let Some(Body::PushRoom(mut push)) = first.body else {
        return first;
    };
    let mut id = first.id;
    // The merged push is as old as its oldest part.
    let mut accepted_us = first.accepted_us;
    let mut merged: Option<BytesMut> = None;
    while let Some(Envelope {
        id: next_id,
        body: Some(Body::PushRoom(next)),
        accepted_us: next_accepted,
    }) = ready.front()
    {
        let total = merged.as_ref().map_or(push.frames.len(), BytesMut::len);
        if next.room != push.room || total + next.frames.len() > MAX_MERGED_FRAMES {
            break;
        }
        let frames = merged.get_or_insert_with(|| BytesMut::from(&push.frames[..]));
        frames.extend_from_slice(&next.frames);
        push.count += next.count;
        id = *next_id;
        if accepted_us == 0 || (*next_accepted > 0 && *next_accepted < accepted_us) {
            accepted_us = *next_accepted;
        }
        ready.pop_front();
    }
    if let Some(frames) = merged {
        push.frames = frames.freeze();
    }
    Envelope {
        id,
        body: Some(Body::PushRoom(push)),
        accepted_us,
    }
}

/// A push on this shard's own link: handled here, in this shard's memory.
async fn handle_own(shard: &Rc<Shard>, envelope: Envelope) {
    match envelope.body {
        Some(Body::PushKeys(push)) => {
            let ws = ws_variant(&push.frame);
            for target in push.targets {
                let command = ShardCommand::PushKeys {
                    keys: target.keys,
                    op: push.op,
                    tcp: push.frame.clone(),
                    ws: ws.clone(),
                    seq: push.seq,
                    mid: push.mid,
                };
                to_shard(shard, target.shard, command).await;
            }
        }
        Some(Body::PushRoom(push)) => {
            fanout::handle(
                shard,
                ShardCommand::PushRoom {
                    ws: ws_variant(&push.frames),
                    tcp: push.frames,
                    room: push.room,
                },
            )
            .await
        }
        Some(Body::Broadcast(push)) => {
            fanout::handle(
                shard,
                ShardCommand::Broadcast {
                    op: push.op,
                    ws: ws_variant(&push.frame),
                    tcp: push.frame,
                    speed: push.speed,
                },
            )
            .await
        }
        Some(Body::CloseConn(close)) => close_conn(shard, close).await,
        Some(Body::Control(control)) => {
            // Meant for another comet (a registry that named this address for it): ignored.
            if !control.comet.is_empty() && control.comet != shard.comet.id {
                return;
            }
            let action = link::ControlAction::try_from(control.action)
                .unwrap_or(link::ControlAction::Unknown);
            for target in control.targets {
                let command = ShardCommand::Control {
                    action,
                    room: control.room.clone(),
                    reason: control.reason.clone(),
                    conn_ids: target.conn_ids,
                };
                to_shard(shard, target.shard, command).await;
            }
        }
        Some(Body::LinkHello(_)) | Some(Body::Load(_)) => {}
        other => tracing::debug!("ignoring unexpected link message {:?}", other.is_some()),
    }
}

/// Hands `command` to shard `index`: handled at once when it is this one, else through that
/// shard's inbox (waiting when it is full, so job's queue absorbs the backpressure).
async fn to_shard(shard: &Rc<Shard>, index: u32, command: ShardCommand) {
    if index == shard.index {
        fanout::handle(shard, command).await;
        return;
    }
    let inboxes = &shard.comet.inboxes;
    match inboxes.get(index as usize) {
        Some(inbox) => {
            let _ = inbox.send(command).await;
        }
        None => {
            tracing::warn!(
                "push for shard {index} but this comet has {}",
                inboxes.len()
            );
            if let ShardCommand::PushKeys { keys, .. } = command {
                for _ in &keys {
                    shard.stats.push_dropped_no_key.inc();
                }
            }
        }
    }
}

async fn close_conn(shard: &Rc<Shard>, close: link::CloseConn) {
    let Some(conn) = close.conn.filter(|c| c.comet == shard.comet.id) else {
        return;
    };
    let command = ShardCommand::CloseReplaced {
        conn_id: conn.conn_id,
    };
    to_shard(shard, conn.shard, command).await;
}

/// A push on a link without a hello: split over every shard's inbox, this one's included.
async fn split(shard: &Rc<Shard>, envelope: Envelope) {
    let inboxes = &shard.comet.inboxes;
    match envelope.body {
        Some(Body::PushKeys(_)) | Some(Body::CloseConn(_)) | Some(Body::Control(_)) => {
            handle_own(shard, envelope).await
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
            // The speed is the whole comet's here.
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
        other => tracing::debug!("ignoring unexpected link message {:?}", other.is_some()),
    }
}

#[cfg(test)]
mod tests {
    use super::merge_room_pushes;
    use bytes::{Bytes, BytesMut};
    use imgate_shared::link::{PushKeys, PushRoom};
    use std::collections::VecDeque;

    fn room(id: u64, room: &str, frames: &'static [u8]) -> Envelope {
        Envelope {
            // Later ids accepted earlier: a merge keeps the oldest stamp, not the first.
            accepted_us: 100 - id,
            id,
            body: Some(Body::PushRoom(PushRoom {
                room: room.into(),
                frames: Bytes::from_static(frames),
                count: 1,
            })),
        }
    }

    /// Adjacent pushes to one room merge into one, in order, up to the next push that is for
    /// another room or is not a room push; what is left stays queued.
    #[test]
    fn adjacent_pushes_to_one_room_merge() {
        let mut ready: VecDeque<Envelope> = [
            room(2, "a", b"2"),
            room(3, "a", b"3"),
            room(4, "b", b"4"),
            room(5, "a", b"5"),
        ]
        .into();
        let merged = merge_room_pushes(room(1, "a", b"1"), &mut ready);
        let Some(Body::PushRoom(push)) = merged.body else {
            panic!("not a room push");
        };
        assert_eq!(
            (merged.id, push.count, &push.frames[..]),
            (3, 3, &b"123"[..])
        );
        assert_eq!(merged.accepted_us, 97, "the oldest part's accept time");
        assert_eq!(ready.len(), 2);
        // Not a room push: unchanged.
        let keys = Envelope::new(9, Body::PushKeys(PushKeys::default()));
        let mut rest: VecDeque<Envelope> = [room(10, "a", b"x")].into();
        assert_eq!(merge_room_pushes(keys.clone(), &mut rest), keys);
        assert_eq!(rest.len(), 1);
    }
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
