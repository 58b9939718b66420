/**
 * The rooms a client is in, or will be in on its next connection: the main room (auth's
 * `room_id`, op 12) and the rooms joined besides (op 24, by the client or by the server),
 * which every new connection joins again. The client changes this as the server confirms.
 */
export declare class RoomSet {
    /** The main room, "" for none. */
    private primaryRoom;
    /** Rooms joined besides the main room, in the order joined. */
    private readonly joined;
    constructor(primary: string);
    get primary(): string;
    /** Rooms joined besides the main one. */
    get extra(): string[];
    /** Every room, the main room first. */
    get all(): string[];
    has(room: string): boolean;
    /** Whether `room` is joined besides the main room. */
    isExtra(room: string): boolean;
    /** Joins `room` besides the main room; false when the client is in it already. */
    add(room: string): boolean;
    /** Leaves `room`, joined or the main one; false when the client was not in it. */
    remove(room: string): boolean;
    /**
     * Makes `room` the main room, as the server does for op 12: the old main room is left (and
     * returned, "" for none), a joined room that becomes the main one stays.
     */
    setPrimary(room: string): string;
}
