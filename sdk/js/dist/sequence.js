/**
 * One sequenced log as a client sees it: the user's inbox, or a room's history. The server
 * numbers each log's messages 1, 2, 3, … and may send a message more than once (the backlog
 * after auth, a catch-up, a live push) or out of order (pushes racing through the gateway).
 * This hands each sequence to the application once, in order, and says when something is
 * missing so the client can ask for it.
 */
export class SequenceLog {
    /** `floor` resumes a log (say, from storage); without it the first message sets the start. */
    constructor(floor, maxPending = 10000) {
        this.maxPending = maxPending;
        /** Received above a gap, waiting for the gap to fill. */
        this.pending = new Map();
        /** Messages dropped because they had been handed over already (or were waiting). */
        this.duplicates = 0;
        this.floor = floor;
    }
    /** Whether messages wait above a gap (or for a starting point). */
    get waiting() {
        return this.pending.size > 0;
    }
    /**
     * Takes message `seq` and returns what can be handed over now, in order (empty for a
     * duplicate, or when it must wait for a gap below it).
     */
    offer(seq, item) {
        if ((this.floor !== undefined && seq <= this.floor) || this.pending.has(seq)) {
            this.duplicates++;
            return [];
        }
        this.pending.set(seq, item);
        if (this.floor === undefined) {
            return this.pending.size > this.maxPending ? this.skipGap() : [];
        }
        const ready = this.drain();
        if (this.pending.size > this.maxPending) {
            ready.push(...this.skipGap());
        }
        return ready;
    }
    /**
     * Gives up on what is missing: hands over everything waiting, lowest first, as if the gap
     * had been filled (the missing messages are gone from the server, or the log had no start).
     */
    skipGap() {
        if (this.pending.size === 0) {
            return [];
        }
        this.floor = Math.min(...this.pending.keys()) - 1;
        return this.drain();
    }
    /** Hands over the run of waiting messages that starts right above the floor. */
    drain() {
        const ready = [];
        let floor = this.floor ?? 0;
        for (;;) {
            const next = this.pending.get(floor + 1);
            if (next === undefined) {
                break;
            }
            this.pending.delete(floor + 1);
            ready.push(next);
            floor++;
        }
        this.floor = floor;
        return ready;
    }
}
