/** What a message is, as far as the client can tell. */
export type MessageKind = 
/** A push by user, stored in the user's inbox: `seq` is the inbox sequence. */
"inbox"
/** A room push kept in the room's history (`history=1`): `seq` is the room's sequence. */
 | "room"
/** Any other push (by key, to a room without history, to everyone): `seq` is 0. */
 | "push";
/** A pushed message handed to the application. */
export declare class ImgateMessage {
    /** The business op the push was sent with. */
    readonly op: number;
    /** The inbox or room sequence (see `kind`), 0 for pushes that are not stored. */
    readonly seq: number;
    readonly kind: MessageKind;
    /** The room of a room-history message; undefined for the other kinds. */
    readonly room: string | undefined;
    /** The body exactly as pushed. */
    readonly body: Uint8Array;
    constructor(
    /** The business op the push was sent with. */
    op: number, 
    /** The inbox or room sequence (see `kind`), 0 for pushes that are not stored. */
    seq: number, kind: MessageKind, 
    /** The room of a room-history message; undefined for the other kinds. */
    room: string | undefined, 
    /** The body exactly as pushed. */
    body: Uint8Array);
    /** The body as UTF-8 text. */
    text(): string;
    /** The body parsed as JSON (throws a SyntaxError when it is not JSON). */
    json<T = unknown>(): T;
}
/** The business's answer to `send()`. */
export declare class Reply {
    readonly body: Uint8Array;
    constructor(body: Uint8Array);
    text(): string;
    json<T = unknown>(): T;
}
