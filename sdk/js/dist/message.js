const decoder = new TextDecoder();
/** A pushed message handed to the application. */
export class ImgateMessage {
    constructor(
    /** The business op the push was sent with. */
    op, 
    /** The inbox or room sequence (see `kind`), 0 for pushes that are not stored. */
    seq, kind, 
    /** The room of a room message, `type://id`; undefined for the other kinds. */
    room, 
    /** The body exactly as pushed. */
    body) {
        this.op = op;
        this.seq = seq;
        this.kind = kind;
        this.room = room;
        this.body = body;
    }
    /** The body as UTF-8 text. */
    text() {
        return decoder.decode(this.body);
    }
    /** The body parsed as JSON (throws a SyntaxError when it is not JSON). */
    json() {
        return JSON.parse(this.text());
    }
}
