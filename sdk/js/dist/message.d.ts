/** What a message is, as far as the client can tell. */
export type MessageKind = 
/** A push by user, stored in the user's inbox: `seq` is the inbox sequence. */
"inbox"
/**
 * A push to a room the connection is in (`room` names it): `seq` is the room's sequence
 * when the room keeps the push in its history (`history=1`), 0 when it does not.
 */
 | "room"
/** A push that is not stored and not to a room (by key, to everyone): `seq` is 0. */
 | "push";
/** A pushed message handed to the application. */
export declare class ImgateMessage {
    /** The business op the push was sent with. */
    readonly op: number;
    /** The inbox or room sequence (see `kind`), 0 for pushes that are not stored. */
    readonly seq: number;
    readonly kind: MessageKind;
    /** The room of a room message, `type://id`; undefined for the other kinds. */
    readonly room: string | undefined;
    /** The body exactly as pushed. */
    readonly body: Uint8Array;
    constructor(
    /** The business op the push was sent with. */
    op: number, 
    /** The inbox or room sequence (see `kind`), 0 for pushes that are not stored. */
    seq: number, kind: MessageKind, 
    /** The room of a room message, `type://id`; undefined for the other kinds. */
    room: string | undefined, 
    /** The body exactly as pushed. */
    body: Uint8Array);
    /** The body as UTF-8 text. */
    text(): string;
    /** The body parsed as JSON (throws a SyntaxError when it is not JSON). */
    json<T = unknown>(): T;
}
