/** `PendingReplies`: the bytes a batch of replies becomes, small values copied in and big ones referenced. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { PendingReplies } from "./server-replies.js";
import type { ReplyWriter } from "./server-writes.js";

function collect(): { writer: ReplyWriter; bytes: () => Buffer; writes: () => number } {
  const parts: Buffer[] = [];
  let writes = 0;
  const writer: ReplyWriter = {
    write: (buf) => {
      writes++;
      parts.push(Buffer.from(buf));
      return true;
    },
    writev: (bufs) => {
      writes++;
      for (const b of bufs) parts.push(Buffer.from(b));
      return true;
    },
  };
  return { writer, bytes: () => Buffer.concat(parts), writes: () => writes };
}

function lengthPrefixed(v: Uint8Array): Buffer {
  const header = Buffer.alloc(8);
  header.writeBigUInt64LE(BigInt(v.length));
  return Buffer.concat([header, v]);
}

describe("PendingReplies", () => {
  it("writes length-prefixed values and i64s in order, in one write, across the inline size", () => {
    const sizes = fc.constantFrom(0, 1, 64, 1023, 1024, 1025, 4096, 70_000);
    const reply = fc.oneof(
      sizes.chain((n) => fc.uint8Array({ minLength: n, maxLength: n }).map((v) => ({ value: v }))),
      fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((n) => ({ i64: n })),
    );
    fc.assert(
      fc.property(fc.array(reply, { minLength: 1, maxLength: 6 }), (replies) => {
        const out = new PendingReplies();
        const expected: Buffer[] = [];
        for (const r of replies) {
          if ("value" in r) {
            out.value(r.value);
            expected.push(lengthPrefixed(r.value));
          } else {
            out.i64(r.i64);
            const b = Buffer.alloc(8);
            b.writeBigInt64LE(r.i64);
            expected.push(b);
          }
        }
        const sink = collect();
        assert.equal(out.writeTo(sink.writer), true);
        assert.deepEqual(sink.bytes(), Buffer.concat(expected));
        assert.equal(sink.writes(), 1);
        assert.equal(out.bytes, 0);
      }),
      { numRuns: 100 },
    );
  });
});
