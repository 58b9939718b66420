/** Every error the client reports, by event or by a rejected promise. */
export class ImgateError extends Error {
    constructor(code, message, options) {
        super(message);
        this.code = code;
        this.name = "ImgateError";
        if (options && "cause" in options) {
            this.cause = options.cause;
        }
    }
}
