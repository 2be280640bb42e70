/** Encoders: golden bytes from the spec, dialect checks, and reply round trips through `ReplyDecoder`. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ErrorCode } from "../../errors.js";
import {
  encodeI64Reply,
  encodeKeyListReply,
  encodeQueuePopReply,
  encodeRequest,
  encodeU8Reply,
  encodeU32Reply,
  encodeValueReply,
  encodeValuesReply,
  encodeWatchNotification,
} from "./encode.js";
import { V1_OPCODES, V2_OPCODES, VALIDATION_MAGIC, WatchResponse } from "./protocol.js";
import { type Reply, ReplyDecoder, type ReplyShape } from "./reply-decoder.js";

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");
const b = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, "latin1"));

describe("encodeRequest", () => {
  it("uses each dialect's opcode (spec §3.1)", () => {
    assert.deepEqual(encodeRequest("v1", { type: "getNumKeys" }), hex("06"));
    assert.deepEqual(encodeRequest("v2", { type: "getNumKeys" }), hex("07"));
    assert.deepEqual(encodeRequest("v2", { type: "cancelWait" }), hex("0C"));
    assert.deepEqual(encodeRequest("v2", { type: "listKeys" }), hex("11"));
    assert.deepEqual(
      encodeRequest("v2", { type: "validate", magic: VALIDATION_MAGIC }),
      hex("00 CE F7 85 3C"),
    );
    assert.equal(V1_OPCODES.watchKey, 0x07);
    assert.equal(V2_OPCODES.barrier, 0x12);
  });

  it("golden bytes: v1 and v2 set(k1, v1) differ only in the opcode (§3.3)", () => {
    const tail = "03 00 00 00 00 00 00 00 2F 6B 31 02 00 00 00 00 00 00 00 76 31";
    assert.deepEqual(encodeRequest("v1", { type: "set", key: "/k1", value: b("v1") }), hex(`00 ${tail}`));
    assert.deepEqual(encodeRequest("v2", { type: "set", key: "/k1", value: b("v1") }), hex(`01 ${tail}`));
  });

  it("encodes MULTI_SET's count as i64 and BARRIER's world size", () => {
    assert.deepEqual(
      encodeRequest("v2", { type: "multiSet", keys: ["a"], values: [b("x")] }),
      hex("0B 01 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 61 01 00 00 00 00 00 00 00 78"),
    );
    assert.deepEqual(
      encodeRequest("v2", { type: "barrier", key: "b", worldSize: 4n }),
      hex("12 01 00 00 00 00 00 00 00 62 04 00 00 00 00 00 00 00"),
    );
  });

  it("refuses commands the dialect lacks, with RDZV_INVALID_ARGUMENT", () => {
    for (const req of [
      { type: "append", key: "k", value: b("") },
      { type: "validate", magic: VALIDATION_MAGIC },
      { type: "cancelWait" },
      { type: "onDisconnectSet", key: "k", value: b("") },
    ] as const) {
      assert.throws(() => encodeRequest("v1", req), { code: ErrorCode.InvalidArgument });
    }
    assert.throws(() => encodeRequest("v2", { type: "watchKey", key: "k" }), {
      code: ErrorCode.InvalidArgument,
    });
  });

  it("keeps key bytes exact (byte strings, not UTF-8)", () => {
    assert.deepEqual(
      encodeRequest("v2", { type: "get", key: "\u00ff\u0000" }),
      hex("03 02 00 00 00 00 00 00 00 FF 00"),
    );
  });
});

describe("reply encoders", () => {
  it("golden bytes from the spec", () => {
    assert.deepEqual(encodeU32Reply(0x4945), hex("45 49 00 00"));
    assert.deepEqual(encodeI64Reply(1), hex("01 00 00 00 00 00 00 00"));
    assert.deepEqual(encodeI64Reply(-(2n ** 63n)), hex("00 00 00 00 00 00 00 80"));
    assert.deepEqual(encodeValueReply(b("x")), hex("01 00 00 00 00 00 00 00 78"));
    assert.deepEqual(encodeValueReply(new Uint8Array(0)), hex("00 00 00 00 00 00 00 00"));
    assert.deepEqual(
      encodeQueuePopReply(2, b("1")),
      hex("02 00 00 00 00 00 00 00 01 00 00 00 00 00 00 00 31"),
    );
    assert.deepEqual(encodeQueuePopReply(0, undefined), hex("00 00 00 00 00 00 00 00"));
    assert.deepEqual(encodeU8Reply(3), hex("03"));
    assert.deepEqual(
      encodeWatchNotification(WatchResponse.KeyCreated, "/wk", new Uint8Array(0), b("v1")),
      hex("01 03 00 00 00 00 00 00 00 2F 77 6B 00 00 00 00 00 00 00 00 02 00 00 00 00 00 00 00 76 31"),
    );
    assert.deepEqual(
      encodeKeyListReply(["init/", "/a"]),
      hex("02 00 00 00 00 00 00 00 05 00 00 00 00 00 00 00 69 6E 69 74 2F 02 00 00 00 00 00 00 00 2F 61"),
    );
  });

  const bytes = fc.uint8Array({ maxLength: 24 });
  const key = bytes.map((x) => Buffer.from(x).toString("latin1"));
  interface Case {
    buf: Buffer;
    shape: ReplyShape;
    expected: Reply;
  }
  /** A reply, how it encodes, and the shape a client would ask for. */
  const reply: fc.Arbitrary<Case> = fc.oneof<fc.Arbitrary<Case>[]>(
    fc
      .nat({ max: 255 })
      .map((v) => ({ buf: encodeU8Reply(v), shape: { kind: "u8" }, expected: { kind: "u8", value: v } })),
    fc.nat({ max: 0xffffffff }).map((v) => ({
      buf: encodeU32Reply(v),
      shape: { kind: "u32" },
      expected: { kind: "u32", value: v },
    })),
    fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }).map((v) => ({
      buf: encodeI64Reply(v),
      shape: { kind: "i64" },
      expected: { kind: "i64", value: v },
    })),
    bytes.map((v) => ({
      buf: encodeValueReply(v),
      shape: { kind: "value" },
      expected: { kind: "value", value: v },
    })),
    fc.array(bytes, { maxLength: 4 }).map((v) => ({
      buf: encodeValuesReply(v),
      shape: { kind: "values", count: v.length },
      expected: { kind: "values", value: v },
    })),
    fc.option(bytes, { nil: undefined }).map((v) => ({
      buf: encodeQueuePopReply(v === undefined ? 0 : 3, v),
      shape: { kind: "queuePop" },
      expected: { kind: "queuePop", value: v },
    })),
    fc.array(key, { maxLength: 4 }).map((v) => ({
      buf: encodeKeyListReply(v),
      shape: { kind: "keyList" },
      expected: { kind: "keyList", value: v },
    })),
  );

  it("round trip through ReplyDecoder, replies concatenated and split anywhere", () => {
    fc.assert(
      fc.property(
        fc.array(reply, { minLength: 1, maxLength: 10 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        (rs, at) => {
          const stream = Buffer.concat(rs.map((r) => r.buf));
          const points = [...new Set(at.map((p) => p % (stream.length + 1)))].sort((x, y) => x - y);
          const decoder = new ReplyDecoder();
          const out: Reply[] = [];
          let start = 0;
          for (const p of [...points, stream.length]) {
            decoder.push(stream.subarray(start, Math.max(start, p)));
            start = Math.max(start, p);
            for (let r = decoder.next(rs[out.length]?.shape ?? { kind: "u8" }); r !== undefined; ) {
              out.push(r);
              r = out.length < rs.length ? decoder.next(rs[out.length]!.shape) : undefined;
            }
          }
          assert.deepEqual(
            out,
            rs.map((r) => r.expected),
          );
          assert.equal(decoder.bufferedBytes, 0);
        },
      ),
      { numRuns: 300 },
    );
  });
});
