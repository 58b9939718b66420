// The frame codec: byte layout, op-9 unwrapping, op-28 room frames, and refusal of every
// malformed message.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  decodeFrames,
  decodeMessage,
  decodeRoomFrames,
  encodeFrame,
  FrameError,
  HEADER_LEN,
  Op,
} from "../../dist/index.js";

const hex = (bytes) => Buffer.from(bytes).toString("hex");

test("a heartbeat is the 16-byte header goim's clients send", () => {
  assert.equal(hex(encodeFrame(Op.Heartbeat, 1)), "00000010001000010000000200000001");
});

test("a body is written after the header and packLen counts both", () => {
  const frame = encodeFrame(1000, 3, "hi");
  assert.equal(hex(frame), "0000001200100001000003e8000000036869");
  assert.deepEqual(decodeMessage(frame), [
    { ver: 1, op: 1000, seq: 3, body: new Uint8Array([0x68, 0x69]) },
  ]);
});

test("an op-9 batch is unwrapped into its frames", () => {
  const inner = Buffer.concat([encodeFrame(1000, 0, '{"test":1}'), encodeFrame(1000, 0, '{"test":2}')]);
  const batch = encodeFrame(Op.Raw, 0, inner);
  assert.equal(batch.length, 68);
  const frames = decodeMessage(batch);
  assert.deepEqual(
    frames.map((f) => [f.op, Buffer.from(f.body).toString()]),
    [
      [1000, '{"test":1}'],
      [1000, '{"test":2}'],
    ],
  );
});

test("sequences above 2^31 read back unsigned", () => {
  const [frame] = decodeMessage(encodeFrame(1000, 2 ** 31 + 5));
  assert.equal(frame.seq, 2 ** 31 + 5);
});

test("malformed messages are refused with a FrameError that says why", () => {
  const good = encodeFrame(1000, 1, "body");
  const cases = {
    "short header": good.subarray(0, 10),
    "packLen past the end": (() => {
      const b = Uint8Array.from(good);
      new DataView(b.buffer).setUint32(0, 100);
      return b;
    })(),
    "packLen short of the message": Buffer.concat([good, Buffer.from([0])]),
    "packLen below the header": (() => {
      const b = Uint8Array.from(good);
      new DataView(b.buffer).setUint32(0, 3);
      return b;
    })(),
    "wrong headerLen": (() => {
      const b = Uint8Array.from(good);
      new DataView(b.buffer).setUint16(4, 20);
      return b;
    })(),
    "a batch whose inner frame overruns it": encodeFrame(Op.Raw, 0, good.subarray(0, 18)),
    "a batch inside a batch": encodeFrame(Op.Raw, 0, encodeFrame(Op.Raw, 0, good)),
  };
  for (const [name, bytes] of Object.entries(cases)) {
    assert.throws(() => decodeMessage(bytes), FrameError, name);
  }
});

const frameArb = fc.record({
  ver: fc.integer({ min: -32768, max: 32767 }),
  op: fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }).filter((op) => op !== Op.Raw),
  seq: fc.nat({ max: 2 ** 32 - 1 }),
  body: fc.uint8Array({ maxLength: 300 }),
}).map((f) => ({ ...f }));

test("property: any frame decodes to what was encoded, alone or in a batch", () => {
  fc.assert(
    fc.property(fc.array(frameArb, { minLength: 1, maxLength: 8 }), (frames) => {
      const encoded = frames.map((f) => encodeFrame(f.op, f.seq, f.body, f.ver));
      assert.deepEqual(decodeMessage(encoded[0]), [frames[0]]);
      assert.deepEqual(decodeMessage(encodeFrame(Op.Raw, 0, Buffer.concat(encoded))), frames);
      assert.deepEqual(decodeFrames(new Uint8Array(Buffer.concat(encoded))), frames);
    }),
  );
});

test("property: arbitrary bytes either decode to frames that fit or throw a FrameError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      let frames;
      try {
        frames = decodeMessage(bytes);
      } catch (e) {
        assert.ok(e instanceof FrameError, `threw ${e}`);
        return;
      }
      for (const f of frames) assert.ok(f.body.length <= bytes.length - HEADER_LEN);
    }),
    { numRuns: 2000 },
  );
});

test("property: a valid message with one byte changed never throws anything but a FrameError", () => {
  fc.assert(
    fc.property(
      fc.array(frameArb, { minLength: 1, maxLength: 4 }),
      fc.nat(),
      fc.integer({ min: 0, max: 255 }),
      (frames, at, value) => {
        const inner = Buffer.concat(frames.map((f) => encodeFrame(f.op, f.seq, f.body, f.ver)));
        const bytes = Uint8Array.from(encodeFrame(Op.Raw, 0, inner));
        bytes[at % bytes.length] = value;
        try {
          decodeMessage(bytes);
        } catch (e) {
          assert.ok(e instanceof FrameError, `threw ${e}`);
        }
      },
    ),
  );
});

/** An op-28 body as imgate lays it out: name length (u16, big-endian), name, frames. */
function roomBody(room, frames) {
  const name = Buffer.from(room);
  const length = Buffer.alloc(2);
  length.writeUInt16BE(name.length);
  return Buffer.concat([length, name, ...frames.map((f) => encodeFrame(f.op, f.seq, f.body, f.ver))]);
}

test("an op-28 frame names its room, then carries the pushed frames", () => {
  const body = roomBody("live://1", [{ op: 1000, seq: 7, body: "hi", ver: 1 }]);
  assert.equal(
    hex(body),
    "0008" + Buffer.from("live://1").toString("hex") + "0000001200100001000003e8000000076869",
  );
  const [outer] = decodeMessage(encodeFrame(Op.Room, 0, body));
  assert.equal(outer.op, 28);
  assert.deepEqual(decodeRoomFrames(outer.body), {
    room: "live://1",
    frames: [{ ver: 1, op: 1000, seq: 7, body: new Uint8Array([0x68, 0x69]) }],
  });
});

test("malformed op-28 bodies are refused with a FrameError that says why", () => {
  const frame = { op: 1000, seq: 1, body: "x", ver: 1 };
  const good = roomBody("chat://a", [frame]);
  const cases = {
    "no length": Buffer.from([0]),
    "an empty name": roomBody("", [frame]),
    "a name past the end": Buffer.from([0, 50, 0x61, 0x62]),
    "a name that is not UTF-8": Buffer.concat([Buffer.from([0, 2, 0xff, 0xfe]), encodeFrame(1000, 1, "x")]),
    "a frame that overruns": good.subarray(0, good.length - 1),
    "a batch inside": roomBody("chat://a", [{ ...frame, op: Op.Raw }]),
    "a room frame inside": roomBody("chat://a", [{ ...frame, op: Op.Room }]),
  };
  for (const [name, bytes] of Object.entries(cases)) {
    assert.throws(() => decodeRoomFrames(new Uint8Array(bytes)), FrameError, name);
  }
});

test("property: any room name and frames decode to what was encoded", () => {
  const inner = frameArb.filter((f) => f.op !== Op.Room);
  const room = fc.string({ unit: "grapheme", minLength: 1, maxLength: 60 });
  fc.assert(
    fc.property(room, fc.array(inner, { maxLength: 6 }), (name, frames) => {
      const decoded = decodeRoomFrames(new Uint8Array(roomBody(name, frames)));
      assert.deepEqual(decoded, { room: name, frames });
    }),
  );
});

test("property: arbitrary op-28 bodies either decode or throw a FrameError", () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 120 }), (bytes) => {
      try {
        decodeRoomFrames(bytes);
      } catch (e) {
        assert.ok(e instanceof FrameError, `threw ${e}`);
      }
    }),
    { numRuns: 2000 },
  );
});
