/** `RequestDecoder`: round trips of every command in both dialects, fragmentation, garbage and limits. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ErrorCode } from "../../errors.js";
import { ProtocolError } from "./byte-reader.js";
import { encodeRequest } from "./encode.js";
import { type Dialect, type ProtocolLimits, type Request, VALIDATION_MAGIC } from "./protocol.js";
import { RequestDecoder } from "./request-decoder.js";

const VALIDATE: Request = { type: "validate", magic: VALIDATION_MAGIC };
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");
const le64 = (n: bigint): string => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b.toString("hex");
};

const key = fc.uint8Array({ maxLength: 12 }).map((b) => Buffer.from(b).toString("latin1"));
const value = fc.uint8Array({ maxLength: 24 });
const keys = fc.array(key, { maxLength: 4 });
const i64 = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });
const u32 = fc.nat({ max: 0xffffffff });

const v1Request: fc.Arbitrary<Request> = fc.oneof(
  fc.record({ type: fc.constant("set" as const), key, value }),
  fc.record({ type: fc.constant("compareSet" as const), key, expected: value, desired: value }),
  fc.record({ type: fc.constant("get" as const), key }),
  fc.record({ type: fc.constant("add" as const), key, delta: i64 }),
  fc.record({ type: fc.constant("check" as const), keys }),
  fc.record({ type: fc.constant("wait" as const), keys }),
  fc.constant({ type: "getNumKeys" as const }),
  fc.record({ type: fc.constant("watchKey" as const), key }),
  fc.record({ type: fc.constant("deleteKey" as const), key }),
);

const v2Request: fc.Arbitrary<Request> = fc.oneof(
  fc.record({ type: fc.constant("set" as const), key, value }),
  fc.record({ type: fc.constant("compareSet" as const), key, expected: value, desired: value }),
  fc.record({ type: fc.constant("get" as const), key }),
  fc.record({ type: fc.constant("add" as const), key, delta: i64 }),
  fc.record({ type: fc.constant("check" as const), keys }),
  fc.record({ type: fc.constant("wait" as const), keys }),
  fc.constant({ type: "getNumKeys" as const }),
  fc.record({ type: fc.constant("deleteKey" as const), key }),
  fc.record({ type: fc.constant("append" as const), key, value }),
  fc.record({ type: fc.constant("multiGet" as const), keys }),
  fc.array(fc.tuple(key, value), { maxLength: 4 }).map((pairs) => ({
    type: "multiSet" as const,
    keys: pairs.map((p) => p[0]),
    values: pairs.map((p) => p[1]),
  })),
  fc.constant({ type: "cancelWait" as const }),
  fc.record({ type: fc.constant("ping" as const), nonce: u32 }),
  fc.record({ type: fc.constant("queuePush" as const), key, value }),
  fc.record({ type: fc.constant("queuePop" as const), key }),
  fc.record({ type: fc.constant("queueLen" as const), key }),
  fc.constant({ type: "listKeys" as const }),
  fc.record({ type: fc.constant("barrier" as const), key, worldSize: i64 }),
  fc.record({ type: fc.constant("onDisconnectSet" as const), key, value }),
  fc.record({ type: fc.constant("onDisconnectClear" as const), key }),
  fc.constant({ type: "taggedReplies" as const }),
  fc.record({ type: fc.constant("waitAsync" as const), id: u32, keys }),
  fc.record({ type: fc.constant("cancelAsync" as const), id: u32 }),
  fc.record({ type: fc.constant("getAsync" as const), id: u32, key }),
);

/** A stream of requests as a client would send it (v2 starts with VALIDATE). */
const stream = (dialect: Dialect): fc.Arbitrary<Request[]> =>
  fc
    .array(dialect === "v1" ? v1Request : v2Request, { minLength: 1, maxLength: 12 })
    // fc.record builds null-prototype objects; the decoder builds plain ones.
    .map((reqs) => reqs.map((r) => ({ ...r }) as Request))
    .map((reqs) => (dialect === "v2" ? [VALIDATE, ...reqs] : reqs));

/** Cuts `bytes` at the given (sorted, deduplicated) fractions. */
function split(bytes: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let start = 0;
  for (const p of [...points, bytes.length]) {
    if (p > start) out.push(bytes.subarray(start, p));
    start = Math.max(start, p);
  }
  return out;
}

/** Pushes each chunk and drains the decoder after each. */
function decodeAll(
  chunks: Buffer[],
  limits?: Partial<ProtocolLimits>,
): { decoder: RequestDecoder; out: Request[] } {
  const decoder = new RequestDecoder(limits);
  const out: Request[] = [];
  for (const chunk of chunks) {
    decoder.push(chunk);
    for (let req = decoder.next(); req !== undefined; req = decoder.next()) out.push(req);
  }
  return { decoder, out };
}

const cuts = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), { maxLength: 20 });

describe("RequestDecoder round trips", () => {
  for (const dialect of ["v1", "v2"] as const) {
    it(`${dialect}: encodeRequest -> decode is the identity, however the stream is split`, () => {
      fc.assert(
        fc.property(stream(dialect), cuts, (reqs, at) => {
          const bytes = Buffer.concat(reqs.map((r) => encodeRequest(dialect, r)));
          const { decoder, out } = decodeAll(split(bytes, at));
          assert.deepEqual(out, reqs);
          assert.equal(decoder.dialect, dialect);
          assert.equal(decoder.bufferedBytes, 0);
        }),
        { numRuns: 300 },
      );
    });

    it(`${dialect}: one byte at a time`, () => {
      fc.assert(
        fc.property(stream(dialect), (reqs) => {
          const bytes = Buffer.concat(reqs.map((r) => encodeRequest(dialect, r)));
          const chunks = Array.from(bytes, (byte) => Buffer.from([byte]));
          assert.deepEqual(decodeAll(chunks).out, reqs);
        }),
        { numRuns: 100 },
      );
    });
  }

  it("a truncated stream yields the complete requests and keeps the rest buffered", () => {
    fc.assert(
      fc.property(stream("v2"), fc.nat(), (reqs, cut) => {
        const encoded = reqs.map((r) => encodeRequest("v2", r));
        const bytes = Buffer.concat(encoded);
        const n = cut % (bytes.length + 1);
        const { decoder, out } = decodeAll([bytes.subarray(0, n)]);
        let whole = 0;
        let used = 0;
        while (whole < encoded.length && used + encoded[whole]!.length <= n) used += encoded[whole++]!.length;
        assert.deepEqual(out, reqs.slice(0, whole));
        assert.equal(decoder.bufferedBytes, n - used);
      }),
      { numRuns: 200 },
    );
  });
});

describe("RequestDecoder values", () => {
  it("are copies: the read they came from may be reused or freed, and no value shares bytes with another", () => {
    fc.assert(
      fc.property(
        fc.array(fc.uint8Array({ minLength: 1, maxLength: 6000, size: "max" }), {
          minLength: 1,
          maxLength: 8,
        }),
        (values) => {
          const reqs: Request[] = values.map((v, i) => ({ type: "set", key: `k${i}`, value: v }));
          const chunk = Buffer.concat([VALIDATE, ...reqs].map((r) => encodeRequest("v2", r)));
          const decoder = new RequestDecoder();
          decoder.push(chunk);
          const out: Request[] = [];
          for (let r = decoder.next(); r !== undefined; r = decoder.next()) out.push(r);
          chunk.fill(0xee); // the server reads every connection into one shared buffer
          assert.deepEqual(out.slice(1), reqs);
          const decoded = out.slice(1).map((r) => (r as { value: Uint8Array }).value);
          for (const v of decoded) {
            assert.notEqual(v.buffer, chunk.buffer, "a value must not keep the whole read alive");
            // Small values own their bytes; mid-sized ones share a slab of 16 KiB at most (byte-reader.ts).
            if (v.length <= 64 || v.length > 4096) assert.equal(v.buffer.byteLength, v.length);
            else assert.ok(v.buffer.byteLength <= 16 * 1024);
          }
          // Writing through one value changes no other.
          for (const v of decoded) v.fill(0xab);
          for (const v of decoded) assert.ok(v.every((b) => b === 0xab));
          for (const [i, v] of decoded.entries()) v.fill(i);
          for (const [i, v] of decoded.entries())
            assert.ok(
              v.every((b) => b === i),
              `value ${i} was overwritten`,
            );
        },
      ),
      { numRuns: 100 },
    );
  });
});

describe("RequestDecoder dialect detection", () => {
  it("decides v1 from a single non-zero first byte", () => {
    const { decoder, out } = decodeAll([hex("06")]);
    assert.equal(decoder.dialect, "v1");
    assert.deepEqual(out, [{ type: "getNumKeys" }]);
  });

  it("waits for 5 bytes when the first byte is 0x00", () => {
    const decoder = new RequestDecoder();
    decoder.push(hex("00 CE F7 85"));
    assert.equal(decoder.next(), undefined);
    assert.equal(decoder.dialect, undefined);
    decoder.push(hex("3C"));
    assert.deepEqual(decoder.next(), VALIDATE);
    assert.equal(decoder.dialect, "v2");
  });

  it("reads 0x00 without the magic as a v1 SET", () => {
    const bytes = encodeRequest("v1", { type: "set", key: "/k", value: new Uint8Array([1]) });
    const { decoder, out } = decodeAll([bytes.subarray(0, 5), bytes.subarray(5)]);
    assert.equal(decoder.dialect, "v1");
    assert.equal(out[0]?.type, "set");
  });

  it("rejects a second VALIDATE, unknown opcodes, v1-only and v2-only opcodes in the other dialect", () => {
    for (const bytes of [
      hex("00 CE F7 85 3C 00 CE F7 85 3C"),
      hex("2A"),
      hex("00 CE F7 85 3C 2A"),
      hex("09"), // APPEND is v2 only
      hex("40"), // rdzv extensions are v2 only
    ]) {
      assert.throws(() => decodeAll([bytes]), { code: ErrorCode.Protocol });
    }
    // ...and v1's WATCH_KEY number means GETNUMKEYS in v2.
    assert.deepEqual(decodeAll([hex("00 CE F7 85 3C 07")]).out, [VALIDATE, { type: "getNumKeys" }]);
  });

  it("rejects a negative MULTI_SET count", () => {
    assert.throws(() => decodeAll([hex(`00 CE F7 85 3C 0B ${le64(2n ** 64n - 1n)}`)]), {
      code: ErrorCode.Protocol,
    });
  });
});

describe("RequestDecoder limits", () => {
  const limits = { maxKeyBytes: 64, maxValueBytes: 256, maxKeysPerRequest: 8 };

  /** A request header whose length field at the end is `len`, per field kind. */
  const oversized = fc.oneof(
    fc.bigInt({ min: 65n, max: 2n ** 64n - 1n }).map((n) => hex(`02 ${le64(n)}`)), // v1 GET key
    fc.bigInt({ min: 65n, max: 2n ** 64n - 1n }).map((n) => hex(`00 CE F7 85 3C 0F ${le64(n)}`)), // v2 QUEUE_POP key
    fc.bigInt({ min: 257n, max: 2n ** 64n - 1n }).map((n) => hex(`00 ${le64(1n)} 41 ${le64(n)}`)), // v1 SET value
    fc.bigInt({ min: 257n, max: 2n ** 64n - 1n }).map((n) => hex(`00 CE F7 85 3C 01 ${le64(0n)} ${le64(n)}`)),
    fc.bigInt({ min: 9n, max: 2n ** 64n - 1n }).map((n) => hex(`05 ${le64(n)}`)), // v1 WAIT count
    fc.bigInt({ min: 9n, max: 2n ** 63n - 1n }).map((n) => hex(`00 CE F7 85 3C 0B ${le64(n)}`)), // MULTI_SET count
    fc.bigInt({ min: 9n, max: 2n ** 64n - 1n }).map((n) => hex(`00 CE F7 85 3C 0A ${le64(n)}`)), // MULTI_GET count
  );

  it("throws RDZV_LIMIT_EXCEEDED from the length field alone, before any data", () => {
    fc.assert(
      fc.property(oversized, (header) => {
        assert.throws(
          () => decodeAll([header], limits),
          (err: unknown) => {
            assert.ok(err instanceof ProtocolError);
            assert.equal(err.code, ErrorCode.LimitExceeded);
            return true;
          },
        );
      }),
      { numRuns: 300 },
    );
  });

  it("accepts fields exactly at the limits", () => {
    const req: Request = {
      type: "multiSet",
      keys: Array.from({ length: 8 }, (_, i) => String(i).repeat(64)),
      values: Array.from({ length: 8 }, () => new Uint8Array(256)),
    };
    assert.deepEqual(decodeAll([encodeRequest("v2", VALIDATE), encodeRequest("v2", req)], limits).out, [
      VALIDATE,
      req,
    ]);
  });
});

describe("RequestDecoder on garbage", () => {
  /** Decoding either yields requests, waits for more, or throws ProtocolError: nothing else, no hang. */
  function survives(chunks: Buffer[]): void {
    try {
      decodeAll(chunks, { maxKeyBytes: 1024, maxValueBytes: 4096, maxKeysPerRequest: 64 });
    } catch (err) {
      assert.ok(err instanceof ProtocolError, `unexpected ${String(err)}`);
      assert.ok(err.code === ErrorCode.Protocol || err.code === ErrorCode.LimitExceeded);
    }
  }

  it("random bytes, split anywhere", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), cuts, (bytes, at) =>
        survives(split(Buffer.from(bytes), at)),
      ),
      { numRuns: 1000 },
    );
  });

  it("random bytes after a valid v2 handshake", () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 200 }), cuts, (bytes, at) =>
        survives(split(Buffer.concat([hex("00 CE F7 85 3C"), bytes]), at)),
      ),
      { numRuns: 1000 },
    );
  });

  it("valid streams with corrupted bytes", () => {
    fc.assert(
      fc.property(
        fc.constantFrom("v1" as const, "v2" as const).chain((d) => fc.tuple(fc.constant(d), stream(d))),
        fc.array(fc.tuple(fc.nat(), fc.nat({ max: 255 })), { minLength: 1, maxLength: 4 }),
        cuts,
        ([dialect, reqs], flips, at) => {
          const bytes = Buffer.concat(reqs.map((r) => encodeRequest(dialect, r)));
          for (const [pos, byte] of flips) bytes[pos % bytes.length] = byte;
          survives(split(bytes, at));
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe("RequestDecoder golden bytes (the examples of the protocol design note, by its sections)", () => {
  const b = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "latin1"));
  const cases: [string, Dialect, string, Request[]][] = [
    [
      "§1.3 VALIDATE + PING",
      "v2",
      "00 CE F7 85 3C 0D 45 49 00 00",
      [VALIDATE, { type: "ping", nonce: 0x4945 }],
    ],
    [
      "§3.3 v1 set(k1, v1)",
      "v1",
      "00 03 00 00 00 00 00 00 00 2F 6B 31 02 00 00 00 00 00 00 00 76 31",
      [{ type: "set", key: "/k1", value: b("v1") }],
    ],
    [
      "§3.3 v2 wait + get(k1)",
      "v2",
      "00 CE F7 85 3C 06 01 00 00 00 00 00 00 00 03 00 00 00 00 00 00 00 2F 6B 31 03 03 00 00 00 00 00 00 00 2F 6B 31",
      [VALIDATE, { type: "wait", keys: ["/k1"] }, { type: "get", key: "/k1" }],
    ],
    [
      "§3.3 v1 add(cnt, -2)",
      "v1",
      "03 04 00 00 00 00 00 00 00 2F 63 6E 74 FE FF FF FF FF FF FF FF",
      [{ type: "add", key: "/cnt", delta: -2n }],
    ],
    [
      "§1.6 v2 add(init/, 1)",
      "v2",
      "00 CE F7 85 3C 04 05 00 00 00 00 00 00 00 69 6E 69 74 2F 01 00 00 00 00 00 00 00",
      [VALIDATE, { type: "add", key: "init/", delta: 1n }],
    ],
    [
      "§3.4 v1 delete_key(k1), num_keys()",
      "v1",
      "08 03 00 00 00 00 00 00 00 2F 6B 31 06",
      [{ type: "deleteKey", key: "/k1" }, { type: "getNumKeys" }],
    ],
    [
      "§3.4 v1 wait([cnt, cs1])",
      "v1",
      "05 02 00 00 00 00 00 00 00 04 00 00 00 00 00 00 00 2F 63 6E 74 04 00 00 00 00 00 00 00 2F 63 73 31",
      [{ type: "wait", keys: ["/cnt", "/cs1"] }],
    ],
    ["§3.4 v1 watch(/wk)", "v1", "07 03 00 00 00 00 00 00 00 2F 77 6B", [{ type: "watchKey", key: "/wk" }]],
    ["§3.3 v2 ping", "v2", "00 CE F7 85 3C 0D EF BE AD DE", [VALIDATE, { type: "ping", nonce: 0xdeadbeef }]],
  ];

  for (const [name, dialect, bytes, reqs] of cases) {
    it(name, () => {
      assert.deepEqual(decodeAll([hex(bytes)]).out, reqs);
      assert.deepEqual(Buffer.concat(reqs.map((r) => encodeRequest(dialect, r))), hex(bytes));
    });
  }
});
