/**
 * Property-based fuzzing of the server's pure request decoder (no sockets): random, mutated and
 * well-formed streams, cut into arbitrary chunks. Every property records how many cases it ran
 * (`RDZV_FUZZ_SCALE` multiplies them; the totals are printed as test diagnostics).
 *
 * - Anything the decoder throws is a `ProtocolError` (codes RDZV_PROTOCOL, RDZV_LIMIT_EXCEEDED, RDZV_AUTH):
 *   never a RangeError or TypeError from reading past a buffer.
 * - Chunking never changes the outcome: the same requests, then the same error or the same remainder.
 * - It never over-reads: each request consumes exactly its own frame, and bytes after it stay buffered.
 * - An undecodable remainder never exceeds the largest frame the limits allow (lengths are checked before
 *   their data is awaited), so a client cannot make the server buffer more than one frame.
 */

import assert from "node:assert/strict";
import { describe, it, type TestContext } from "node:test";
import fc from "fast-check";
import { ErrorCode } from "../src/errors.js";
import { ProtocolError } from "../src/store/tcp/byte-reader.js";
import type { ProtocolLimits, Request } from "../src/store/tcp/protocol.js";
import { RequestDecoder } from "../src/store/tcp/request-decoder.js";
import {
  cuts,
  encodeStream,
  fuzzRuns,
  garbageStream,
  mutatedStream,
  requestStream,
  split,
} from "./helpers/protocol-arbitraries.js";

const LIMITS: ProtocolLimits = { maxKeyBytes: 1024, maxValueBytes: 4096, maxKeysPerRequest: 64 };
/** The largest frame LIMITS allow: MULTI_SET of the most keys, each of the largest key and value. */
const MAX_FRAME = 1 + 8 + LIMITS.maxKeysPerRequest * (8 + LIMITS.maxKeyBytes + 8 + LIMITS.maxValueBytes);
const ERROR_CODES: readonly string[] = [ErrorCode.Protocol, ErrorCode.LimitExceeded, ErrorCode.Auth];

/** What decoding a stream came to: the requests, then the error or the bytes left undecoded. */
interface Outcome {
  requests: Request[];
  error: string | undefined;
  remainder: number;
}

/** Feeds `chunks` one by one, draining after each; checks the invariants that hold at every step. */
function decode(chunks: readonly Buffer[]): Outcome {
  const decoder = new RequestDecoder(LIMITS);
  const requests: Request[] = [];
  try {
    for (const chunk of chunks) {
      decoder.push(chunk);
      for (let req = decoder.next(); req !== undefined; req = decoder.next()) requests.push(req);
      assert.ok(decoder.bufferedBytes < MAX_FRAME, `holds ${decoder.bufferedBytes} bytes of one frame`);
    }
  } catch (err) {
    if (!(err instanceof ProtocolError) || !ERROR_CODES.includes(err.code)) {
      throw new assert.AssertionError({ message: `the decoder threw ${String(err)}` });
    }
    return { requests, error: `${err.code}: ${err.message}`, remainder: -1 };
  }
  return { requests, error: undefined, remainder: decoder.bufferedBytes };
}

const counts = new Map<string, number>();

/** Runs a property `runs` times and reports the count (for docs/reliability figures). */
function check<T>(t: TestContext, name: string, arb: fc.Arbitrary<T>, body: (v: T) => void, runs: number) {
  fc.assert(fc.property(arb, body), { numRuns: runs });
  counts.set(name, runs);
  t.diagnostic(`${name}: ${runs} cases`);
}

describe("request decoder fuzzing", () => {
  it("garbage: only ProtocolErrors, and chunking changes nothing", (t) => {
    check(
      t,
      "garbage",
      fc.tuple(garbageStream, cuts),
      ([bytes, at]) => assert.deepEqual(decode(split(bytes, at)), decode([bytes])),
      fuzzRuns(10_000),
    );
  });

  it("mutated streams: only ProtocolErrors, and chunking changes nothing", (t) => {
    check(
      t,
      "mutated",
      fc.tuple(mutatedStream, cuts),
      ([bytes, at]) => assert.deepEqual(decode(split(bytes, at)), decode([bytes])),
      fuzzRuns(10_000),
    );
  });

  it("one byte at a time equals all at once, for mutated streams", (t) => {
    check(
      t,
      "bytewise",
      mutatedStream,
      (bytes) => assert.deepEqual(decode(Array.from(bytes, (b) => Buffer.from([b]))), decode([bytes])),
      fuzzRuns(1000),
    );
  });

  it("never over-reads: a valid stream decodes exactly, whatever follows it", (t) => {
    const arb = fc
      .constantFrom("v1" as const, "v2" as const)
      .chain((d) => fc.tuple(fc.constant(d), requestStream(d), garbageStream, cuts));
    check(
      t,
      "exact",
      arb,
      ([dialect, reqs, tail, at]) => {
        const frames = encodeStream(dialect, reqs);
        const bytes = Buffer.concat([...frames, tail]);
        const decoder = new RequestDecoder(LIMITS);
        let pushed = 0;
        let consumed = 0;
        const out: Request[] = [];
        for (const chunk of split(bytes, at)) {
          decoder.push(chunk);
          pushed += chunk.length;
          while (out.length < reqs.length) {
            const req = decoder.next();
            if (req === undefined) break;
            consumed += frames[out.length]!.length;
            out.push(req);
            // Exactly the frame's bytes were taken: the rest (tail included) is still buffered.
            assert.equal(decoder.bufferedBytes, pushed - consumed);
          }
        }
        assert.deepEqual(out, reqs);
      },
      fuzzRuns(5000),
    );
  });

  it("reports the case counts", (t) => {
    const total = [...counts.values()].reduce((a, b) => a + b, 0);
    t.diagnostic(`decoder fuzz cases: ${total} (${[...counts].map(([k, v]) => `${k} ${v}`).join(", ")})`);
    assert.ok(total > 0);
  });
});
