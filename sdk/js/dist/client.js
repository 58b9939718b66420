/**
 * The imgate client: one WebSocket to comet, authenticated with goim's auth JSON, kept alive
 * with heartbeats, reconnected with backoff, back in its rooms after each reconnect and caught
 * up so that the application sees every stored message once, in order: the user's inbox and
 * each room's history, told apart by imgate's room tags (op 28).
 */
import { ImgateError } from "./errors.js";
import { decodeMessage, decodeRoomFrames, encodeFrame, FrameError, Op } from "./frame.js";
import { ImgateMessage } from "./message.js";
import { SequenceLog } from "./sequence.js";
/** Ops up to here are the protocol's; a frame with one of them is never a business push. */
const LAST_PROTOCOL_OP = 31;
/** A connection authenticated this long counts as good: the next reconnect starts over. */
const STABLE_MS = 10000;
const OPEN = 1;
const noop = () => { };
const decoder = new TextDecoder();
/** A client of imgate; see the README for a quick start. */
export class ImgateClient {
    constructor(options) {
        /** Rooms joined with op 24 besides the main room; joined again on every connection. */
        this.joined = new Set();
        /** The logs of the rooms the client has been in and not left, by room. */
        this.roomTracks = new Map();
        this.listeners = new Map();
        this.requests = new Map();
        this.phase = "idle";
        this.nextSeqValue = 0;
        this.authSeq = 0;
        this.attempt = 0;
        this.everConnected = false;
        this.connectedAt = 0;
        this.lastAcked = 0;
        this.waiters = [];
        if (!options || typeof options.url !== "string" || options.url === "") {
            throw new TypeError("ImgateClient needs options.url, e.g. ws://127.0.0.1:3102/sub");
        }
        const WebSocketClass = options.WebSocket ?? globalThis.WebSocket;
        if (!WebSocketClass) {
            throw new TypeError("no global WebSocket here: pass options.WebSocket (on Node 20, the ws package's)");
        }
        this.options = options;
        this.WebSocketClass = WebSocketClass;
        this.key = options.key ?? randomKey();
        this.accepts = new Set(checkOps(options.accepts ?? []));
        this.primaryRoom = options.room ?? "";
        this.inbox = { target: "", log: new SequenceLog(options.inboxSeq) };
        this.resumeFloors = new Map(Object.entries(options.roomSeqs ?? {}));
    }
    // ----- public API -----
    /** Subscribes to an event; returns the function that unsubscribes. */
    on(event, listener) {
        let set = this.listeners.get(event);
        if (!set) {
            set = new Set();
            this.listeners.set(event, set);
        }
        set.add(listener);
        return () => this.off(event, listener);
    }
    off(event, listener) {
        this.listeners.get(event)?.delete(listener);
    }
    /**
     * Starts connecting (and reconnecting after every loss until `close()`). Resolves at the
     * next successful auth; rejects only if `close()` comes first.
     */
    connect() {
        const connected = new Promise((resolve, reject) => {
            if (this.phase === "connected") {
                resolve();
            }
            else {
                this.waiters.push({ resolve, reject });
            }
        });
        if (this.phase === "idle") {
            this.attempt = 0;
            this.open();
        }
        return connected;
    }
    /**
     * Closes the connection and stops reconnecting. Rooms and sequence state are kept for
     * `connect()`.
     */
    close() {
        const wasActive = this.phase !== "idle";
        this.clearTimer("reconnectTimer");
        for (const track of this.tracks()) {
            this.stopGapTimer(track);
        }
        const closed = new ImgateError("closed", "the client was closed");
        for (const waiter of this.waiters.splice(0)) {
            waiter.reject(closed);
        }
        if (this.socket) {
            this.drop("closed by the application", false);
        }
        else if (wasActive) {
            this.phase = "idle";
            this.emit("disconnected", { reason: "closed by the application", willReconnect: false });
        }
    }
    /** Whether the client is connected and authenticated now. */
    get connected() {
        return this.phase === "connected";
    }
    /** The main room (auth / op 12), "" for none. */
    get room() {
        return this.primaryRoom;
    }
    /** Rooms joined with `join()`, besides `room`. */
    get joinedRooms() {
        return [...this.joined];
    }
    /** Every room the client is in (or will be in on its next connection): `room` first. */
    get rooms() {
        return this.primaryRoom === "" ? [...this.joined] : [this.primaryRoom, ...this.joined];
    }
    /** Where the logs stand: save it to resume with the `inboxSeq` and `roomSeqs` options. */
    get state() {
        const roomSeqs = Object.fromEntries(this.resumeFloors);
        for (const [room, track] of this.roomTracks) {
            if (track.log.floor !== undefined) {
                roomSeqs[room] = track.log.floor;
            }
        }
        return { inboxSeq: this.inbox.log.floor, roomSeqs };
    }
    /**
     * Moves the connection to another main room (op 12); "" leaves it. The old main room is
     * left; a room joined with `join()` becomes the main room. While disconnected the room is
     * taken at the next auth. Rejects with `refused` when the server keeps the connection where
     * it was (a token that does not allow the room).
     */
    async switchRoom(room) {
        checkRoom(room, true);
        if (this.phase !== "connected") {
            this.setPrimaryRoom(room);
            return;
        }
        await this.request(Op.ChangeRoom, room, Op.ChangeRoomReply, (reply) => {
            if (room !== "" && reply.body.length === 0) {
                throw new ImgateError("refused", `the server refused room ${room}`);
            }
            this.setPrimaryRoom(room);
        });
    }
    /**
     * Joins one more room (op 24) and resolves with the server's echo of its name. Rejects
     * with `refused` when the server answers empty (the token's rooms, the gateway's
     * `max_rooms_per_conn`, a name it does not take). While disconnected the room is joined at
     * the next auth and this resolves at once (a refusal then comes as an `error` event).
     */
    async join(room) {
        checkRoom(room, false);
        if (this.phase !== "connected") {
            if (room !== this.primaryRoom)
                this.joined.add(room);
            return room;
        }
        return this.request(Op.Join, room, Op.JoinReply, (reply) => {
            if (reply.body.length === 0) {
                throw new ImgateError("refused", `the server refused to join ${room}`);
            }
            if (room !== this.primaryRoom)
                this.joined.add(room);
            this.enterRoom(room, false);
            return decoder.decode(reply.body);
        });
    }
    /**
     * Leaves a room (op 26), joined or the main one, and resolves with the server's echo of its
     * name. Rejects with `refused` when the server says the connection was not in it (the client
     * forgets the room either way). While disconnected it is forgotten at once.
     */
    async leave(room) {
        checkRoom(room, false);
        if (this.phase !== "connected") {
            this.forgetRoom(room);
            return room;
        }
        return this.request(Op.Leave, room, Op.LeaveReply, (reply) => {
            this.forgetRoom(room);
            if (reply.body.length === 0) {
                throw new ImgateError("refused", `the server says the connection is not in ${room}`);
            }
            return decoder.decode(reply.body);
        });
    }
    /** Adds business ops to receive from pushes by key and broadcasts (op 14). */
    async watch(ops) {
        checkOps(ops);
        if (this.phase === "connected" && ops.length > 0) {
            await this.request(Op.Sub, ops.join(","), Op.SubReply, noop);
        }
        for (const op of ops) {
            this.accepts.add(op);
        }
    }
    /** Stops receiving these business ops from pushes by key and broadcasts (op 16). */
    async unwatch(ops) {
        checkOps(ops);
        if (this.phase === "connected" && ops.length > 0) {
            await this.request(Op.Unsub, ops.join(","), Op.UnsubReply, noop);
        }
        for (const op of ops) {
            this.accepts.delete(op);
        }
    }
    /**
     * Sends a message to the business (op 4) and resolves with its answer, the body of the
     * op-5 reply with the same seq. An empty answer means the business gave none (it failed,
     * took too long, is not configured, or 8 of this connection's messages wait already).
     * Rejects with `timeout`, `disconnected` or `not_connected`; the client never sends a
     * message twice, so a message in flight when the connection drops is not resent.
     */
    async send(body) {
        if (typeof body !== "string" && !ArrayBuffer.isView(body)) {
            throw new TypeError("send() takes a string or a Uint8Array");
        }
        const bytes = typeof body === "string" ? body : new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
        return this.request(Op.SendMsg, bytes, Op.SendMsgReply, (reply) => reply.body);
    }
    // ----- connection lifecycle -----
    open() {
        this.reconnectTimer = undefined;
        let ws;
        try {
            ws = new this.WebSocketClass(this.options.url);
            ws.binaryType = "arraybuffer";
        }
        catch (cause) {
            this.phase = "connecting";
            this.report("socket", `cannot open ${this.options.url}: ${String(cause)}`, cause);
            this.afterLoss("the WebSocket could not be created");
            return;
        }
        this.socket = ws;
        this.phase = "connecting";
        const authTimeout = this.options.authTimeout ?? 10000;
        this.authTimer = setTimeout(() => this.drop(`not authenticated within ${authTimeout} ms`), authTimeout);
        ws.onopen = () => {
            if (ws !== this.socket)
                return;
            this.phase = "authenticating";
            this.authSeq = this.nextSeq();
            this.sendFrame(Op.Auth, this.authSeq, JSON.stringify(this.authBody()));
        };
        ws.onmessage = (event) => {
            if (ws !== this.socket)
                return;
            this.onData(event.data);
        };
        ws.onclose = (event) => {
            if (ws !== this.socket)
                return;
            const code = event?.code ?? 0;
            const why = event?.reason ? ` ${event.reason}` : "";
            this.drop(this.phase === "connected"
                ? `the connection closed (code ${code}${why})`
                : `the connection closed before auth was accepted (code ${code}${why})`);
        };
        // A close event always follows an error event.
        ws.onerror = noop;
    }
    authBody() {
        const body = {
            mid: this.options.mid ?? 0,
            key: this.key,
            room_id: this.primaryRoom,
            platform: this.options.platform ?? "web",
            accepts: [...this.accepts],
            acks: this.options.acks ?? true,
            // Room pushes and room history come in op-28 frames naming their room: the only way to
            // tell a room's sequence from the inbox's, and one room's from another's.
            room_tags: true,
        };
        if (this.options.token !== undefined) {
            body.token = this.options.token;
        }
        return body;
    }
    onAuthenticated() {
        this.clearTimer("authTimer");
        this.phase = "connected";
        this.connectedAt = Date.now();
        const reconnected = this.everConnected;
        this.everConnected = true;
        this.lastAcked = 0;
        this.startHeartbeat();
        this.catchUp();
        this.emit("connected", { reconnected });
        for (const waiter of this.waiters.splice(0)) {
            waiter.resolve();
        }
    }
    /**
     * Back in every room and caught up. The main room came with auth (its `room_id`); each
     * joined room is joined again (op 24) and, once in, caught up. The server sends the inbox's
     * unacknowledged backlog by itself; ask for what came after what the application has, in
     * the inbox and in each room that keeps history (messages written to a socket that died
     * never reached the application), then acknowledge.
     */
    catchUp() {
        // A room the client was in without seeing one of its stored messages has no floor: any
        // message the room keeps may have come while the connection was down.
        for (const track of this.roomTracks.values()) {
            if (track.log.floor === undefined)
                track.log.floor = 0;
        }
        if (this.primaryRoom !== "") {
            this.enterRoom(this.primaryRoom, true);
        }
        for (const room of this.joined) {
            this.request(Op.Join, room, Op.JoinReply, (reply) => {
                if (reply.body.length === 0) {
                    if (room !== this.primaryRoom)
                        this.forgetRoom(room);
                    throw new ImgateError("refused", `the server refused to join ${room} again`);
                }
                if (this.joined.has(room))
                    this.enterRoom(room, true);
            }).catch((error) => {
                // A lost connection joins again on the next one.
                if (error.code !== "disconnected")
                    this.emitError(error);
            });
        }
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
    enterRoom(room, fresh) {
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
    forgetRoom(room) {
        if (room === this.primaryRoom)
            this.primaryRoom = "";
        this.joined.delete(room);
        this.resumeFloors.delete(room);
        this.dropTrack(room);
    }
    dropTrack(room) {
        const track = this.roomTracks.get(room);
        if (track) {
            this.stopGapTimer(track);
            this.roomTracks.delete(room);
        }
    }
    /** Asks for a log's messages after its floor; `then` runs with the op-23 reply. */
    sync(track, then) {
        const body = track.target === "" ? `${track.log.floor}` : `${track.target} ${track.log.floor}`;
        this.request(Op.Sync, body, Op.SyncReply, (reply) => reply.body.length > 0).then((served) => {
            if (!served) {
                this.report("refused", `the server could not serve sync ${body}`);
            }
            then?.(served);
        }, (error) => {
            if (error.code !== "disconnected")
                this.emitError(error);
            then?.(false);
        });
    }
    /**
     * Drops the socket (if any) and reconnects unless the application closed the client or
     * turned reconnecting off.
     */
    drop(reason, reconnect = true) {
        const ws = this.socket;
        if (ws) {
            this.socket = undefined;
            ws.onopen = noop;
            ws.onmessage = noop;
            ws.onclose = noop;
            ws.onerror = noop;
            try {
                ws.close(reconnect ? 4000 : 1000);
            }
            catch {
                // Already closing or closed.
            }
        }
        if (this.phase === "connected" && Date.now() - this.connectedAt >= STABLE_MS) {
            this.attempt = 0;
        }
        this.clearTimer("authTimer");
        this.clearTimer("deadTimer");
        if (this.heartbeatTimer !== undefined) {
            clearInterval(this.heartbeatTimer);
            this.heartbeatTimer = undefined;
        }
        for (const [seq, request] of this.requests) {
            this.requests.delete(seq);
            clearTimeout(request.timer);
            request.reject(new ImgateError("disconnected", `the connection was lost: ${reason}`));
        }
        if (reconnect) {
            this.afterLoss(reason);
        }
        else {
            this.phase = "idle";
            this.emit("disconnected", { reason, willReconnect: false });
        }
    }
    afterLoss(reason) {
        const settings = this.options.reconnect ?? true;
        if (settings === false) {
            this.phase = "idle";
            this.emit("disconnected", { reason, willReconnect: false });
            return;
        }
        const { minDelay = 500, maxDelay = 30000 } = settings === true ? {} : settings;
        const ceiling = Math.min(maxDelay, minDelay * 2 ** Math.min(this.attempt, 30));
        // Half fixed, half random: clients dropped together do not come back together.
        const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
        this.attempt++;
        this.phase = "waiting";
        this.reconnectTimer = setTimeout(() => this.open(), delay);
        this.emit("disconnected", { reason, willReconnect: true, delay });
    }
    startHeartbeat() {
        const interval = this.options.heartbeat ?? 30000;
        const timeout = this.options.heartbeatTimeout ?? 10000;
        const beat = () => {
            this.sendFrame(Op.Heartbeat, this.nextSeq());
            if (this.deadTimer === undefined) {
                this.deadTimer = setTimeout(() => this.drop(`no answer to a heartbeat within ${timeout} ms`), timeout);
            }
        };
        beat();
        this.heartbeatTimer = setInterval(beat, interval);
    }
    // ----- receiving -----
    onData(data) {
        this.clearTimer("deadTimer");
        const received = [];
        try {
            for (const frame of decodeMessage(toBytes(data))) {
                if (frame.op === Op.Room) {
                    const { room, frames } = decodeRoomFrames(frame.body);
                    for (const inner of frames)
                        received.push({ frame: inner, room });
                }
                else {
                    received.push({ frame });
                }
            }
        }
        catch (cause) {
            const detail = cause instanceof FrameError ? cause.message : String(cause);
            this.report("protocol", `malformed message from the server: ${detail}`, cause);
            this.drop(`protocol error: ${detail}`);
            return;
        }
        for (const { frame, room } of received) {
            if (this.socket === undefined)
                return; // a listener closed the client
            if (room === undefined) {
                this.onFrame(frame);
            }
            else if (this.phase === "connected") {
                this.onRoomPush(room, frame);
            }
        }
        this.flushAck();
    }
    onFrame(frame) {
        if (frame.op === Op.AuthReply) {
            if (this.phase === "authenticating" && frame.seq === this.authSeq)
                this.onAuthenticated();
            return;
        }
        if (this.phase !== "connected") {
            return; // nothing but the auth reply is expected before auth
        }
        if (frame.op === Op.HeartbeatReply) {
            const online = frame.body.length >= 4
                ? new DataView(frame.body.buffer, frame.body.byteOffset, 4).getInt32(0)
                : 0;
            this.emit("heartbeat", { online });
            return;
        }
        const request = this.requests.get(frame.seq);
        if (request && (frame.op === request.replyOp || frame.op === request.op)) {
            this.requests.delete(frame.seq);
            clearTimeout(request.timer);
            if (frame.op === request.op) {
                request.reject(new ImgateError("unsupported", `the server does not support op ${request.op}`));
            }
            else {
                request.answer(frame);
            }
            return;
        }
        if (frame.op >= 0 && frame.op <= LAST_PROTOCOL_OP) {
            return; // a late reply, or an op this client does not use
        }
        this.onPush(frame);
    }
    /** A push that names no room: to the user (stored, with a seq), to a key or to everyone. */
    onPush(frame) {
        if (frame.seq === 0) {
            this.deliver([new ImgateMessage(frame.op, 0, "push", undefined, frame.body)]);
            return;
        }
        const message = new ImgateMessage(frame.op, frame.seq, "inbox", undefined, frame.body);
        this.take(this.inbox, frame.seq, message);
    }
    /** A push to `room` (op 28): live, or its history answering a sync. */
    onRoomPush(room, frame) {
        const track = this.roomTracks.get(room);
        if (!track) {
            return; // history the client asked for before it left the room
        }
        const message = new ImgateMessage(frame.op, frame.seq, "room", room, frame.body);
        if (frame.seq === 0) {
            this.deliver([message]); // the room keeps no history of it
            return;
        }
        // A room's pushes arrive in order: with no starting point, the first one is it.
        if (track.log.floor === undefined)
            track.log.floor = frame.seq - 1;
        this.take(track, frame.seq, message);
    }
    take(track, seq, message) {
        this.deliver(track.log.offer(seq, message));
        this.watchGap(track);
    }
    /** Keeps a gap timer running exactly while the log waits on a gap. */
    watchGap(track) {
        if (track.log.waiting) {
            this.armGap(track);
        }
        else {
            this.stopGapTimer(track);
        }
    }
    /**
     * A log waits on a gap: after `gapTimeout` ask the server for what is after the floor; when
     * its answer made no progress, the missing messages are gone and the rest is handed over (a
     * request that failed or filled part of the gap is tried again).
     * A log with no starting point (a fresh inbox) just waits `gapTimeout` for stragglers.
     */
    armGap(track) {
        if (track.gapTimer !== undefined)
            return;
        track.gapTimer = setTimeout(() => {
            track.gapTimer = undefined;
            if (!track.log.waiting)
                return;
            if (track.log.floor === undefined) {
                this.deliver(track.log.skipGap());
                this.flushAck();
                this.watchGap(track);
                return;
            }
            if (this.phase !== "connected")
                return; // the next auth catches up and re-arms
            const before = track.log.floor;
            this.sync(track, (answered) => {
                if (!track.log.waiting || this.phase !== "connected")
                    return;
                if (answered && (track.log.floor ?? 0) === before) {
                    this.deliver(track.log.skipGap());
                    this.flushAck();
                }
                this.watchGap(track);
            });
        }, this.options.gapTimeout ?? 500);
    }
    stopGapTimer(track) {
        if (track.gapTimer !== undefined) {
            clearTimeout(track.gapTimer);
            track.gapTimer = undefined;
        }
    }
    deliver(messages) {
        for (const message of messages) {
            this.emit("message", message);
        }
    }
    /** Acknowledges the inbox up to what the application has had, once per advance. */
    flushAck() {
        const floor = this.inbox.log.floor;
        if ((this.options.acks ?? true) &&
            this.phase === "connected" &&
            floor !== undefined &&
            floor > this.lastAcked) {
            this.lastAcked = floor;
            this.sendFrame(Op.Ack, this.nextSeq(), `${floor}`);
        }
    }
    // ----- plumbing -----
    /**
     * The main room is now `room`, as the server does it for op 12: the old main room is left,
     * and a joined room that becomes the main one stays (with its log).
     */
    setPrimaryRoom(room) {
        if (room === this.primaryRoom)
            return;
        if (this.primaryRoom !== "")
            this.dropTrack(this.primaryRoom);
        this.primaryRoom = room;
        if (room === "")
            return;
        this.joined.delete(room);
        if (this.phase === "connected")
            this.enterRoom(room, false);
    }
    /**
     * Sends a request and settles it with `answer(reply)`, run as the reply is read (before any
     * frame after it), or with the error it throws.
     */
    request(op, body, replyOp, answer) {
        if (this.phase !== "connected") {
            return Promise.reject(new ImgateError("not_connected", "the client is not connected"));
        }
        const seq = this.nextSeq();
        const timeout = this.options.requestTimeout ?? 10000;
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => {
                this.requests.delete(seq);
                reject(new ImgateError("timeout", `no reply to op ${op} within ${timeout} ms`));
            }, timeout);
            const settle = (reply) => {
                try {
                    resolve(answer(reply));
                }
                catch (error) {
                    reject(error);
                }
            };
            this.requests.set(seq, { op, replyOp, answer: settle, reject, timer });
            this.sendFrame(op, seq, body);
        });
    }
    sendFrame(op, seq, body) {
        const ws = this.socket;
        if (!ws || ws.readyState !== OPEN)
            return;
        try {
            ws.send(encodeFrame(op, seq, body));
        }
        catch (cause) {
            this.report("socket", `sending failed: ${String(cause)}`, cause);
            this.drop("sending failed");
        }
    }
    /** Request seqs run 1…2^31−1 and skip the ones still waiting for a reply. */
    nextSeq() {
        do {
            this.nextSeqValue = this.nextSeqValue >= 0x7fffffff ? 1 : this.nextSeqValue + 1;
        } while (this.requests.has(this.nextSeqValue));
        return this.nextSeqValue;
    }
    tracks() {
        return [this.inbox, ...this.roomTracks.values()];
    }
    clearTimer(name) {
        const timer = this[name];
        if (timer !== undefined) {
            clearTimeout(timer);
            this[name] = undefined;
        }
    }
    report(code, message, cause) {
        this.emitError(new ImgateError(code, message, cause === undefined ? undefined : { cause }));
    }
    emitError(error) {
        this.emit("error", error);
    }
    /** Calls each listener; one that throws is reported and never breaks the client. */
    emit(event, value) {
        const set = this.listeners.get(event);
        if (!set)
            return;
        for (const listener of [...set]) {
            try {
                listener(value);
            }
            catch (cause) {
                if (event !== "error") {
                    this.report("listener", `a ${event} listener threw: ${String(cause)}`, cause);
                }
            }
        }
    }
}
function toBytes(data) {
    if (data instanceof ArrayBuffer) {
        return new Uint8Array(data);
    }
    if (ArrayBuffer.isView(data)) {
        return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    }
    if (typeof data === "string") {
        throw new FrameError("a text message (frames come as binary messages)");
    }
    throw new FrameError(`an unreadable message (${Object.prototype.toString.call(data)})`);
}
function checkOps(ops) {
    if (!Array.isArray(ops) || !ops.every((op) => Number.isInteger(op) && op >= -(2 ** 31) && op < 2 ** 31)) {
        throw new TypeError(`ops must be an array of 32-bit integers, got ${JSON.stringify(ops)}`);
    }
    return ops;
}
function checkRoom(room, emptyAllowed) {
    if (typeof room !== "string" || (!emptyAllowed && room === "")) {
        throw new TypeError(`a room is a string "type://id", got ${JSON.stringify(room)}`);
    }
}
function randomKey() {
    const crypto = globalThis.crypto;
    if (crypto?.randomUUID) {
        return crypto.randomUUID();
    }
    let key = "";
    for (let i = 0; i < 4; i++) {
        key += Math.floor(Math.random() * 2 ** 32).toString(16).padStart(8, "0");
    }
    return key;
}
