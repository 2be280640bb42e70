/** `StreamBuffer` against a model (one array of the unconsumed bytes), and `ByteReader`'s reuse. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ByteReader, StreamBuffer } from "./byte-reader.js";

type Step = { push: Uint8Array } | { consume: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  fc.record({ push: fc.uint8Array({ maxLength: 16 }) }),
  fc.record({ consume: fc.double({ min: 0, max: 1, noNaN: true }) }),
);

describe("StreamBuffer", () => {
  it("holds exactly the bytes pushed and not consumed, however pushes and consumes interleave", () => {
    fc.assert(
      fc.property(fc.array(step, { maxLength: 40 }), (steps) => {
        const sb = new StreamBuffer();
        let model: number[] = [];
        for (const s of steps) {
          if ("push" in s) {
            sb.push(Buffer.from(s.push));
            model.push(...s.push);
          } else {
            // Consume part of what is buffered, as a decoder does after reading a message.
            const n = Math.floor(s.consume * model.length);
            const buf = sb.contiguous();
            assert.deepEqual([...buf.subarray(sb.start)], model);
            sb.consume(n);
            model = model.slice(n);
          }
          assert.equal(sb.bufferedBytes, model.length);
        }
        assert.deepEqual([...sb.contiguous().subarray(sb.start)], model);
      }),
      { numRuns: 300 },
    );
  });

  it("returns the chunk itself while one chunk holds everything (no copy per message)", () => {
    const sb = new StreamBuffer();
    const chunk = Buffer.from([1, 2, 3, 4, 5, 6]);
    sb.push(chunk);
    assert.equal(sb.contiguous(), chunk);
    sb.consume(2);
    assert.equal(sb.contiguous(), chunk);
    assert.equal(sb.start, 2);
    sb.push(Buffer.from([7]));
    assert.deepEqual([...sb.contiguous().subarray(sb.start)], [3, 4, 5, 6, 7]);
    sb.consume(5);
    assert.equal(sb.bufferedBytes, 0);
    assert.equal(sb.start, 0);
  });
});

describe("ByteReader", () => {
  it("reads each buffer it is reset to, and its bytes are copies", () => {
    const r = new ByteReader();
    const a = Buffer.from([9, 1, 2, 3]);
    r.reset(a, 1);
    const fromA = r.bytes(2)!;
    assert.deepEqual([...fromA], [1, 2]);
    const b = Buffer.from([7, 7, 8, 8]);
    r.reset(b, 2);
    assert.deepEqual([...r.bytes(2)!], [8, 8]);
    assert.equal(r.bytes(1), undefined);
    assert.equal(r.needed, 5);
    a.fill(0);
    assert.deepEqual([...fromA], [1, 2]);
    r.release();
    assert.equal(r.buf.length, 0);
  });
});
