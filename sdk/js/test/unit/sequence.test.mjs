// SequenceLog: each sequence handed over once, in order, whatever the arrival order.
import { test } from "node:test";
import assert from "node:assert/strict";
import fc from "fast-check";
import { SequenceLog } from "../../dist/index.js";

test("in-order messages pass straight through and duplicates are dropped", () => {
  const log = new SequenceLog(0);
  assert.deepEqual(log.offer(1, "a"), ["a"]);
  assert.deepEqual(log.offer(1, "a"), []);
  assert.deepEqual(log.offer(2, "b"), ["b"]);
  assert.equal(log.duplicates, 1);
  assert.equal(log.floor, 2);
});

test("a message above a gap waits until the gap fills", () => {
  const log = new SequenceLog(0);
  assert.deepEqual(log.offer(3, "c"), []);
  assert.equal(log.waiting, true);
  assert.deepEqual(log.offer(3, "c"), [], "a waiting message offered again is a duplicate");
  assert.deepEqual(log.offer(1, "a"), ["a"]);
  assert.deepEqual(log.offer(2, "b"), ["b", "c"]);
  assert.equal(log.waiting, false);
});

test("skipping a gap hands over what waits, lowest first, and moves the floor", () => {
  const log = new SequenceLog(4);
  log.offer(9, "i");
  log.offer(7, "g");
  log.offer(8, "h");
  assert.deepEqual(log.skipGap(), ["g", "h", "i"]);
  assert.equal(log.floor, 9);
  assert.deepEqual(log.offer(5, "e"), [], "below the floor now");
});

test("a log without a start waits for skipGap to pick the lowest as its start", () => {
  const log = new SequenceLog();
  assert.deepEqual(log.offer(12, "l"), []);
  assert.deepEqual(log.offer(11, "k"), []);
  assert.deepEqual(log.skipGap(), ["k", "l"]);
  assert.deepEqual(log.offer(13, "m"), ["m"]);
});

test("too many waiting messages are handed over instead of piling up", () => {
  const log = new SequenceLog(0, 3);
  for (const seq of [2, 3, 4]) assert.deepEqual(log.offer(seq, seq), []);
  assert.deepEqual(log.offer(5, 5), [2, 3, 4, 5]);
});

test("property: any arrival order with duplicates hands over 1..n once each, in order", () => {
  fc.assert(
    fc.property(
      fc.integer({ min: 1, max: 60 }).chain((n) =>
        fc.tuple(
          fc.constant(n),
          fc.shuffledSubarray(
            Array.from({ length: n * 2 }, (_, i) => (i % n) + 1),
            { minLength: n * 2, maxLength: n * 2 },
          ),
        ),
      ),
      ([n, arrivals]) => {
        const log = new SequenceLog(0);
        const out = [];
        for (const seq of arrivals) out.push(...log.offer(seq, seq));
        assert.deepEqual(out, Array.from({ length: n }, (_, i) => i + 1));
        assert.equal(log.waiting, false);
        assert.equal(log.duplicates, n);
      },
    ),
  );
});

test("property: with some sequences lost, skipping gaps still hands over the rest once, in order", () => {
  fc.assert(
    fc.property(fc.array(fc.integer({ min: 1, max: 80 }), { maxLength: 120 }), (arrivals) => {
      const log = new SequenceLog(0);
      const out = [];
      for (const seq of arrivals) {
        out.push(...log.offer(seq, seq));
        if (seq % 7 === 0) out.push(...log.skipGap());
      }
      out.push(...log.skipGap());
      assert.deepEqual(out, [...out].sort((a, b) => a - b), "in order");
      assert.equal(new Set(out).size, out.length, "once each");
    }),
  );
});
