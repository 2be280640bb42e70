/**
 * fast-check arbitraries for TCPStore protocol fuzzing: well-formed request streams of both dialects,
 * mutations of them (bit flips, cuts, insertions, duplicated ranges, length fields set to edge values) and
 * arbitrary splits of a byte stream into chunks. Shared by the pure decoder fuzz and the live-server fuzz.
 */

import fc from "fast-check";
import { encodeRequest } from "../../src/store/tcp/encode.js";
import { type Dialect, type Request, VALIDATION_MAGIC } from "../../src/store/tcp/protocol.js";

/** The v2 handshake every v2 stream starts with. */
export const VALIDATE: Request = { type: "validate", magic: VALIDATION_MAGIC };

const key = fc.uint8Array({ maxLength: 12 }).map((b) => Buffer.from(b).toString("latin1"));
const value = fc.uint8Array({ maxLength: 24 });
const keys = fc.array(key, { maxLength: 4 });
const i64 = fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n });

const common: fc.Arbitrary<Request>[] = [
  fc.record({ type: fc.constant("set" as const), key, value }),
  fc.record({ type: fc.constant("compareSet" as const), key, expected: value, desired: value }),
  fc.record({ type: fc.constant("get" as const), key }),
  fc.record({ type: fc.constant("add" as const), key, delta: i64 }),
  fc.record({ type: fc.constant("check" as const), keys }),
  fc.record({ type: fc.constant("wait" as const), keys }),
  fc.constant({ type: "getNumKeys" as const }),
  fc.record({ type: fc.constant("deleteKey" as const), key }),
];

/** One v1 request (PyTorch <= 2.0). */
export const v1Request: fc.Arbitrary<Request> = fc.oneof(
  ...common,
  fc.record({ type: fc.constant("watchKey" as const), key }),
);

/** One v2 request (PyTorch >= 2.1 and rdzv's extensions), VALIDATE excluded. */
export const v2Request: fc.Arbitrary<Request> = fc.oneof(
  ...common,
  fc.record({ type: fc.constant("append" as const), key, value }),
  fc.record({ type: fc.constant("multiGet" as const), keys }),
  fc.array(fc.tuple(key, value), { maxLength: 4 }).map((pairs) => ({
    type: "multiSet" as const,
    keys: pairs.map((p) => p[0]),
    values: pairs.map((p) => p[1]),
  })),
  fc.constant({ type: "cancelWait" as const }),
  fc.record({ type: fc.constant("ping" as const), nonce: fc.nat({ max: 0xffffffff }) }),
  fc.record({ type: fc.constant("queuePush" as const), key, value }),
  fc.record({ type: fc.constant("queuePop" as const), key }),
  fc.record({ type: fc.constant("queueLen" as const), key }),
  fc.constant({ type: "listKeys" as const }),
  fc.record({ type: fc.constant("barrier" as const), key, worldSize: i64 }),
  fc.record({ type: fc.constant("onDisconnectSet" as const), key, value }),
  fc.record({ type: fc.constant("onDisconnectClear" as const), key }),
  fc.record({ type: fc.constant("auth" as const), token: value }),
);

/** A client's request stream in `dialect` (v2 starts with VALIDATE), as decoded objects. */
export function requestStream(dialect: Dialect, maxLength = 12): fc.Arbitrary<Request[]> {
  return (
    fc
      .array(dialect === "v1" ? v1Request : v2Request, { minLength: 1, maxLength })
      // fc.record builds null-prototype objects; the decoder builds plain ones.
      .map((reqs) => reqs.map((r) => ({ ...r }) as Request))
      .map((reqs) => (dialect === "v2" ? [VALIDATE, ...reqs] : reqs))
  );
}

/** The frames of `reqs`, each encoded on its own. */
export function encodeStream(dialect: Dialect, reqs: readonly Request[]): Buffer[] {
  return reqs.map((r) => encodeRequest(dialect, r));
}

/** Length-field values at and around the interesting edges (limits, 2^32, 2^53, 2^63, 2^64 - 1). */
const EDGE_LENGTHS = [
  0n,
  1n,
  64n,
  1024n,
  1025n,
  4096n,
  4097n,
  2n ** 32n,
  2n ** 53n,
  2n ** 63n,
  2n ** 64n - 1n,
];

/** One way to damage a byte stream. Positions are taken modulo the stream length when applied. */
export type Mutation =
  | { readonly kind: "set"; readonly at: number; readonly byte: number }
  | { readonly kind: "flip"; readonly at: number; readonly bit: number }
  | { readonly kind: "cut"; readonly at: number }
  | { readonly kind: "insert"; readonly at: number; readonly bytes: Uint8Array }
  | { readonly kind: "delete"; readonly at: number; readonly length: number }
  | { readonly kind: "duplicate"; readonly at: number; readonly length: number }
  | { readonly kind: "length"; readonly at: number; readonly value: bigint };

const at = fc.nat();
/** A mutation of any kind. */
export const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant("set" as const), at, byte: fc.nat({ max: 255 }) }),
  fc.record({ kind: fc.constant("flip" as const), at, bit: fc.nat({ max: 7 }) }),
  fc.record({ kind: fc.constant("cut" as const), at }),
  fc.record({
    kind: fc.constant("insert" as const),
    at,
    bytes: fc.uint8Array({ minLength: 1, maxLength: 16 }),
  }),
  fc.record({ kind: fc.constant("delete" as const), at, length: fc.integer({ min: 1, max: 16 }) }),
  fc.record({ kind: fc.constant("duplicate" as const), at, length: fc.integer({ min: 1, max: 32 }) }),
  fc.record({ kind: fc.constant("length" as const), at, value: fc.constantFrom(...EDGE_LENGTHS) }),
);

/** Applies `mutations` to a copy of `bytes`, one after another. */
export function mutate(bytes: Buffer, mutations: readonly Mutation[]): Buffer {
  let out = Buffer.from(bytes);
  for (const m of mutations) {
    if (out.length === 0) break;
    const p = m.at % out.length;
    switch (m.kind) {
      case "set":
        out[p] = m.byte;
        break;
      case "flip":
        out[p] = out[p]! ^ (1 << m.bit);
        break;
      case "cut":
        out = out.subarray(0, p);
        break;
      case "insert":
        out = Buffer.concat([out.subarray(0, p), m.bytes, out.subarray(p)]);
        break;
      case "delete":
        out = Buffer.concat([out.subarray(0, p), out.subarray(p + m.length)]);
        break;
      case "duplicate":
        out = Buffer.concat([out.subarray(0, p + m.length), out.subarray(p)]);
        break;
      case "length":
        if (p + 8 <= out.length) out.writeBigUInt64LE(m.value, p);
        break;
    }
  }
  return out;
}

/** A damaged client stream: a well-formed one of either dialect with 1 to 4 mutations. */
export const mutatedStream: fc.Arbitrary<Buffer> = fc
  .constantFrom<Dialect>("v1", "v2")
  .chain((d) => fc.tuple(fc.constant(d), requestStream(d)))
  .chain(([d, reqs]) =>
    fc
      .array(mutation, { minLength: 1, maxLength: 4 })
      .map((ms) => mutate(Buffer.concat(encodeStream(d, reqs)), ms)),
  );

/** Raw garbage: random bytes, sometimes after a valid v2 handshake. */
export const garbageStream: fc.Arbitrary<Buffer> = fc
  .tuple(fc.boolean(), fc.uint8Array({ maxLength: 300 }))
  .map(([handshake, bytes]) =>
    Buffer.concat([handshake ? encodeRequest("v2", VALIDATE) : Buffer.alloc(0), Buffer.from(bytes)]),
  );

/** Cut points as fractions of a stream's length. */
export const cuts: fc.Arbitrary<number[]> = fc.array(fc.double({ min: 0, max: 1, noNaN: true }), {
  maxLength: 20,
});

/** Splits `bytes` at the given fractions of its length (in any order, duplicates ignored). */
export function split(bytes: Buffer, fractions: readonly number[]): Buffer[] {
  const points = [...new Set(fractions.map((c) => Math.floor(c * bytes.length)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let start = 0;
  for (const p of [...points, bytes.length]) {
    if (p > start) out.push(bytes.subarray(start, p));
    start = Math.max(start, p);
  }
  return out;
}

/** A fuzz run's seed: `fixed`, unless `RDZV_FUZZ_SEED` gives another (to explore on demand). */
export function fuzzSeed(fixed: number): number {
  const given = process.env.RDZV_FUZZ_SEED;
  if (given === undefined || given === "") return fixed;
  const seed = Number(given);
  if (!Number.isSafeInteger(seed)) throw new Error(`RDZV_FUZZ_SEED must be an integer, got ${given}`);
  return seed;
}

/** Scales a fuzz run count by `RDZV_FUZZ_SCALE` (default 1), for long runs on demand. */
export function fuzzRuns(base: number): number {
  const scale = Number(process.env.RDZV_FUZZ_SCALE ?? "1");
  if (!Number.isFinite(scale) || scale <= 0)
    throw new Error(`RDZV_FUZZ_SCALE must be a positive number, got ${scale}`);
  return Math.max(1, Math.round(base * scale));
}
