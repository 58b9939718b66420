/**
 * One WebSocket to comet: opened, written to frame by frame, its requests matched with their
 * replies by seq, kept alive with heartbeats, and closed. It knows nothing of auth, rooms or
 * sequences; the client makes a new one for every connection.
 */
import { ImgateError } from "./errors.js";
import { encodeFrame, Op } from "./frame.js";
const OPEN = 1;
const noop = () => { };
export class Transport {
    /** Opens the socket; throws what the WebSocket constructor throws. */
    constructor(WebSocketClass, url, events) {
        this.events = events;
        this.requests = new Map();
        this.nextSeqValue = 0;
        this.closed = false;
        const ws = new WebSocketClass(url);
        ws.binaryType = "arraybuffer";
        this.socket = ws;
        ws.onopen = () => this.closed || events.open();
        ws.onmessage = (event) => {
            if (this.closed)
                return;
            this.clearDeadTimer(); // anything from the server shows the connection is alive
            events.data(event.data);
        };
        ws.onclose = (event) => {
            if (this.closed)
                return;
            events.closed(event?.code ?? 0, event?.reason ?? "");
        };
        // A close event always follows an error event.
        ws.onerror = noop;
    }
    /** Whether `close()` was called or the socket closed. */
    get isClosed() {
        return this.closed;
    }
    /** Sends one frame; a failure to send gives the socket up (`lost`). */
    send(op, seq, body) {
        if (this.closed || this.socket.readyState !== OPEN)
            return;
        try {
            this.socket.send(encodeFrame(op, seq, body));
        }
        catch (cause) {
            this.giveUp("sending failed", cause);
        }
    }
    /** Sends a frame that expects no reply, under a seq of its own. */
    sendOneWay(op, body) {
        const seq = this.nextSeq();
        this.send(op, seq, body);
        return seq;
    }
    /**
     * Sends a request and settles it with `answer(reply)`, run as the reply is read (before any
     * frame after it), or with the error it throws. An echo of the request's own op means the
     * server does not know it (`unsupported`).
     */
    request(op, body, replyOp, timeout, answer) {
        if (this.closed) {
            return Promise.reject(new ImgateError("not_connected", "the client is not connected"));
        }
        const seq = this.nextSeq();
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
            this.send(op, seq, body);
        });
    }
    /** Settles the request this frame answers; false when it answers none. */
    settle(frame) {
        const request = this.requests.get(frame.seq);
        if (!request || (frame.op !== request.replyOp && frame.op !== request.op))
            return false;
        this.requests.delete(frame.seq);
        clearTimeout(request.timer);
        if (frame.op === request.op) {
            request.reject(new ImgateError("unsupported", `the server does not support op ${request.op}`));
        }
        else {
            request.answer(frame);
        }
        return true;
    }
    /**
     * Heartbeats now and every `interval` ms; one unanswered (nothing at all from the server)
     * for `timeout` ms gives the socket up.
     */
    startHeartbeat(interval, timeout) {
        const beat = () => {
            this.sendOneWay(Op.Heartbeat);
            if (this.deadTimer === undefined && !this.closed) {
                this.deadTimer = setTimeout(() => this.giveUp(`no answer to a heartbeat within ${timeout} ms`), timeout);
            }
        };
        beat();
        this.heartbeatTimer = setInterval(beat, interval);
    }
    /**
     * Closes the socket (`code` 4000 when the client means to come back, 1000 when not) and
     * rejects the requests waiting with `disconnected`. Nothing is reported after this.
     */
    close(reason, code = 1000) {
        const wasOpen = !this.closed;
        this.closed = true;
        const ws = this.socket;
        ws.onopen = noop;
        ws.onmessage = noop;
        ws.onclose = noop;
        if (wasOpen) {
            try {
                ws.close(code);
            }
            catch {
                // Already closing or closed.
            }
        }
        this.clearDeadTimer();
        if (this.heartbeatTimer !== undefined) {
            clearInterval(this.heartbeatTimer);
            this.heartbeatTimer = undefined;
        }
        const why = reason === "" ? "the connection closed" : reason;
        for (const [seq, request] of this.requests) {
            this.requests.delete(seq);
            clearTimeout(request.timer);
            request.reject(new ImgateError("disconnected", `the connection was lost: ${why}`));
        }
    }
    giveUp(reason, cause) {
        if (this.closed)
            return;
        this.events.lost(reason, cause);
    }
    clearDeadTimer() {
        if (this.deadTimer !== undefined) {
            clearTimeout(this.deadTimer);
            this.deadTimer = undefined;
        }
    }
    /** Request seqs run 1…2^31−1 and skip the ones still waiting for a reply. */
    nextSeq() {
        do {
            this.nextSeqValue = this.nextSeqValue >= 0x7fffffff ? 1 : this.nextSeqValue + 1;
        } while (this.requests.has(this.nextSeqValue));
        return this.nextSeqValue;
    }
}
