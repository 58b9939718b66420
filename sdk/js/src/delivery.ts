/**
 * Delivery and resume: the logs the client keeps (the user's inbox and the history of each
 * room it is in), each handing its messages over once and in order, mending gaps by asking the
 * server (op 22), catching up after a reconnect, acknowledging the inbox (op 20), and saying
 * where it stands (`checkpoint`) so a later client can resume from there.
 */
import { ImgateError } from "./errors.js";
import type { Frame } from "./frame.js";
import { ImgateMessage } from "./message.js";
import { SequenceLog } from "./sequence.js";

/** Where the logs stand: save it, and resume with the `inboxSeq` and `roomSeqs` options. */
export interface Checkpoint {
  /** The inbox's floor: every message up to it was handed over. */
  inboxSeq: number | undefined;
  /** Each room's floor, by room. */
  roomSeqs: Record<string, number>;
}

/** What delivery needs from the client. */
export interface DeliveryHost {
  /** Hands messages to the application, in order. */
  deliver(messages: ImgateMessage[]): void;
  /** Sends op 22 with `body`; resolves with whether the server served it (op 23 not empty). */
  sync(body: string): Promise<boolean>;
  /** Sends op 20 with `floor`. */
  ack(floor: number): void;
  /** Whether the client is connected and authenticated. */
  connected(): boolean;
  report(error: ImgateError): void;
}

type Timer = ReturnType<typeof setTimeout>;

/**
 * A sequenced log the client keeps: the inbox (target "") or the history of a room the client
 * is in (one track per room, kept across reconnects until the client leaves the room).
 */
interface Track {
  target: string;
  log: SequenceLog<ImgateMessage>;
  gapTimer?: Timer;
}

export class Delivery {
  private readonly inbox: Track;
  /** The logs of the rooms the client has been in and not left, by room. */
  private readonly roomTracks = new Map<string, Track>();
  /** Room floors from the `roomSeqs` option not taken yet: each starts a room's log on entry. */
  private readonly resumeFloors: Map<string, number>;
  private lastAcked = 0;

  constructor(
    private readonly host: DeliveryHost,
    private readonly settings: { gapTimeout: number; acks: boolean },
    resume: { inboxSeq?: number; roomSeqs?: Record<string, number> },
  ) {
    this.inbox = { target: "", log: new SequenceLog(resume.inboxSeq) };
    this.resumeFloors = new Map(Object.entries(resume.roomSeqs ?? {}));
  }

  /** Where the logs stand now. */
  get checkpoint(): Checkpoint {
    const roomSeqs: Record<string, number> = Object.fromEntries(this.resumeFloors);
    for (const [room, track] of this.roomTracks) {
      if (track.log.floor !== undefined) {
        roomSeqs[room] = track.log.floor;
      }
    }
    return { inboxSeq: this.inbox.log.floor, roomSeqs };
  }

  /**
   * A new connection is authenticated. A room the client was in without seeing one of its
   * stored messages has no floor: any message the room keeps may have come while the
   * connection was down, so it starts from 0. The new connection has acknowledged nothing.
   */
  connectionStarted(): void {
    this.lastAcked = 0;
    for (const track of this.roomTracks.values()) {
      if (track.log.floor === undefined) track.log.floor = 0;
    }
  }

  /**
   * The inbox is caught up: the server sends the unacknowledged backlog by itself; what came
   * after what the application has is asked for (messages written to a socket that died never
   * reached the application), then acknowledged.
   */
  catchUpInbox(): void {
    if (this.inbox.log.floor !== undefined) {
      this.sync(this.inbox);
    }
    this.watchGap(this.inbox);
    this.flushAck();
  }

  /**
   * The connection is in `room` now: the room's log starts (from a saved floor, if there is
   * one) or goes on. A room is caught up when its log has a floor and it was just entered
   * (`fresh`, on a new connection) or newly started; a room the connection is in already is
   * not asked for again.
   */
  enterRoom(room: string, fresh: boolean): void {
    let track = this.roomTracks.get(room);
    const started = track === undefined;
    if (!track) {
      track = { target: room, log: new SequenceLog(this.resumeFloors.get(room)) };
      this.resumeFloors.delete(room);
      this.roomTracks.set(room, track);
    }
    if ((fresh || started) && track.log.floor !== undefined) {
      this.sync(track);
    }
    this.watchGap(track);
  }

  /** The client is no longer in `room`: its log ends (a later join starts a new one). */
  leaveRoom(room: string): void {
    this.resumeFloors.delete(room);
    const track = this.roomTracks.get(room);
    if (track) {
      this.stopGapTimer(track);
      this.roomTracks.delete(room);
    }
  }

  /** A push that names no room: to the user (stored, with a seq), to a key or to everyone. */
  onPush(frame: Frame): void {
    if (frame.seq === 0) {
      this.host.deliver([new ImgateMessage(frame.op, 0, "push", undefined, frame.body)]);
      return;
    }
    const message = new ImgateMessage(frame.op, frame.seq, "inbox", undefined, frame.body);
    this.take(this.inbox, frame.seq, message);
  }

  /** A push to `room` (op 28): live, or its history answering a sync. */
  onRoomPush(room: string, frame: Frame): void {
    const track = this.roomTracks.get(room);
    if (!track) {
      return; // history the client asked for before it left the room
    }
    const message = new ImgateMessage(frame.op, frame.seq, "room", room, frame.body);
    if (frame.seq === 0) {
      this.host.deliver([message]); // the room keeps no history of it
      return;
    }
    // A room's pushes arrive in order: with no starting point, the first one is it.
    if (track.log.floor === undefined) track.log.floor = frame.seq - 1;
    this.take(track, frame.seq, message);
  }

  /** Acknowledges the inbox up to what the application has had, once per advance. */
  flushAck(): void {
    const floor = this.inbox.log.floor;
    if (this.settings.acks && this.host.connected() && floor !== undefined && floor > this.lastAcked) {
      this.lastAcked = floor;
      this.host.ack(floor);
    }
  }

  /** Stops every gap timer (the client was closed). */
  stop(): void {
    for (const track of [this.inbox, ...this.roomTracks.values()]) {
      this.stopGapTimer(track);
    }
  }

  private take(track: Track, seq: number, message: ImgateMessage): void {
    this.host.deliver(track.log.offer(seq, message));
    this.watchGap(track);
  }

  /** Asks for a log's messages after its floor; `then` runs with whether it was served. */
  private sync(track: Track, then?: (served: boolean) => void): void {
    const body = track.target === "" ? `${track.log.floor}` : `${track.target} ${track.log.floor}`;
    this.host.sync(body).then(
      (served) => {
        if (!served) {
          this.host.report(new ImgateError("refused", `the server could not serve sync ${body}`));
        }
        then?.(served);
      },
      (error: ImgateError) => {
        if (error.code !== "disconnected") this.host.report(error);
        then?.(false);
      },
    );
  }

  /** Keeps a gap timer running exactly while the log waits on a gap. */
  private watchGap(track: Track): void {
    if (track.log.waiting) {
      this.armGap(track);
    } else {
      this.stopGapTimer(track);
    }
  }

  /**
   * A log waits on a gap: after `gapTimeout` ask the server for what is after the floor; when
   * its answer made no progress, the missing messages are gone and the rest is handed over (a
   * request that failed or filled part of the gap is tried again).
   * A log with no starting point (a fresh inbox) just waits `gapTimeout` for stragglers.
   */
  private armGap(track: Track): void {
    if (track.gapTimer !== undefined) return;
    track.gapTimer = setTimeout(() => {
      track.gapTimer = undefined;
      if (!track.log.waiting) return;
      if (track.log.floor === undefined) {
        this.host.deliver(track.log.skipGap());
        this.flushAck();
        this.watchGap(track);
        return;
      }
      if (!this.host.connected()) return; // the next auth catches up and re-arms
      const before = track.log.floor;
      this.sync(track, (answered) => {
        if (!track.log.waiting || !this.host.connected()) return;
        if (answered && (track.log.floor ?? 0) === before) {
          this.host.deliver(track.log.skipGap());
          this.flushAck();
        }
        this.watchGap(track);
      });
    }, this.settings.gapTimeout);
  }

  private stopGapTimer(track: Track): void {
    if (track.gapTimer !== undefined) {
      clearTimeout(track.gapTimer);
      track.gapTimer = undefined;
    }
  }
}

