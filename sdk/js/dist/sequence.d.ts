/**
 * One sequenced log as a client sees it: the user's inbox, or a room's history. The server
 * numbers each log's messages 1, 2, 3, … and may send a message more than once (the backlog
 * after auth, a catch-up, a live push) or out of order (pushes racing through the gateway).
 * This hands each sequence to the application once, in order, and says when something is
 * missing so the client can ask for it.
 */
export declare class SequenceLog<T> {
    private readonly maxPending;
    /**
     * Highest sequence handed to the application with nothing missing below it since tracking
     * began; undefined until the log has a starting point.
     */
    floor: number | undefined;
    /** Received above a gap, waiting for the gap to fill. */
    private readonly pending;
    /** Messages dropped because they had been handed over already (or were waiting). */
    duplicates: number;
    /** `floor` resumes a log (say, from storage); without it the first message sets the start. */
    constructor(floor?: number, maxPending?: number);
    /** Whether messages wait above a gap (or for a starting point). */
    get waiting(): boolean;
    /**
     * Takes message `seq` and returns what can be handed over now, in order (empty for a
     * duplicate, or when it must wait for a gap below it).
     */
    offer(seq: number, item: T): T[];
    /**
     * Gives up on what is missing: hands over everything waiting, lowest first, as if the gap
     * had been filled (the missing messages are gone from the server, or the log had no start).
     */
    skipGap(): T[];
    /** Hands over the run of waiting messages that starts right above the floor. */
    private drain;
}
