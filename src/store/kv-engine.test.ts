/**
 * `parseCounter` against a reference of C++ `std::stoll` (as PyTorch's servers parse ADD's stored
 * value), over arbitrary bytes and over the counters the store writes itself (its fast path). An engine
 * whose key table splits into shards against one whose table is a plain `Map`.
 */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { StoreError } from "../errors.js";
import { type KeyMutation, KvEngine, type Mutation, parseCounter } from "./kv-engine.js";

/** std::stoll by the book: whitespace, sign, digits, the rest ignored; no digits or out of range throws. */
function stoll(value: Uint8Array): bigint | "error" {
  const text = Buffer.from(value).toString("latin1");
  const m = /^[ \t\n\v\f\r]*([+-]?[0-9]+)/.exec(text);
  if (m === null) return "error";
  const n = BigInt(m[1]!);
  return n < -(2n ** 63n) || n > 2n ** 63n - 1n ? "error" : n;
}

function parsed(value: Uint8Array): bigint | "error" {
  try {
    return parseCounter(value, "k");
  } catch (err) {
    assert.ok(err instanceof StoreError);
    return "error";
  }
}

const bytesOf = (chars: string) =>
  fc.array(fc.constantFrom(...chars), { maxLength: 24 }).map((cs) => Buffer.from(cs.join(""), "latin1"));

describe("parseCounter", () => {
  it("agrees with std::stoll on arbitrary bytes, and on digits, signs and spaces", () => {
    fc.assert(
      fc.property(
        fc.oneof(fc.uint8Array({ maxLength: 24 }), bytesOf("0123456789-+ \tx"), bytesOf("0123456789-")),
        (value) => {
          assert.equal(parsed(value), stoll(value));
        },
      ),
      { numRuns: 5000 },
    );
  });

  it("reads every counter the store writes, up to 64-bit bounds", () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), (n) => {
        assert.equal(parseCounter(Buffer.from(n.toString(), "latin1"), "k"), n);
      }),
    );
    for (const text of ["0", "-0", "999999999999999", "-999999999999999", "1000000000000000", "-", ""]) {
      assert.equal(parsed(Buffer.from(text)), stoll(Buffer.from(text)), text);
    }
  });

  it("lets add count across the fast path's 15 digits", () => {
    const engine = new KvEngine();
    engine.set("k", Buffer.from("999999999999998"));
    assert.equal(engine.add("k", 1n), 999_999_999_999_999n);
    assert.equal(engine.add("k", 1n), 1_000_000_000_000_000n);
    assert.equal(engine.add("k", 2n ** 62n), 2n ** 62n + 1_000_000_000_000_000n);
    assert.equal(engine.add("k", -(2n ** 62n) - 1_000_000_000_000_001n), -1n);
  });
});

type EngineOp =
  | { op: "set" | "append"; key: string; value: string }
  | { op: "add"; key: string; delta: number }
  | { op: "compareSet"; key: string; expected: string; desired: string }
  | { op: "delete" | "wait"; key: string }
  | { op: "multiSet"; keys: string[]; value: string };

const engineKey = fc.oneof(
  fc.constantFrom("/a", "/b", "/n", "init/"),
  fc.nat({ max: 400 }).map((n) => `/rdzv/run/r0/slot/${n}/hb`),
);
const engineValue = fc.constantFrom("", "1", "x", "41");
const engineOp: fc.Arbitrary<EngineOp> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constantFrom("set" as const, "append" as const),
      key: engineKey,
      value: engineValue,
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("add" as const),
      key: engineKey,
      delta: fc.integer({ min: -3, max: 3 }),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant("compareSet" as const),
      key: engineKey,
      expected: engineValue,
      desired: engineValue,
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({ op: fc.constantFrom("delete" as const, "wait" as const), key: engineKey }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant("multiSet" as const),
      keys: fc.array(engineKey, { maxLength: 4 }),
      value: engineValue,
    }),
  },
);

/** An engine and what it told: results, change events, mutations, wakes. */
function observed(engine: KvEngine) {
  const log: unknown[] = [];
  engine.onChange((key, oldValue, newValue) =>
    log.push(["change", key, oldValue?.toString(), newValue?.toString()]),
  );
  engine.setMutationHook((m: Mutation) => {
    const keys = (k: KeyMutation) => [k.op, k.key];
    log.push(["mutation", ...(m.op === "batch" ? m.mutations.flatMap(keys) : keys(m))]);
  });
  const run = (o: EngineOp, i: number): void => {
    const b = (text: string) => Buffer.from(text);
    try {
      if (o.op === "set") engine.set(o.key, b(o.value));
      else if (o.op === "append") engine.append(o.key, b(o.value));
      else if (o.op === "add") log.push(engine.add(o.key, BigInt(o.delta)));
      else if (o.op === "compareSet")
        log.push(Buffer.from(engine.compareSet(o.key, b(o.expected), b(o.desired))).toString());
      else if (o.op === "delete") log.push(engine.delete(o.key));
      else if (o.op === "multiSet")
        engine.multiSet(
          o.keys,
          o.keys.map(() => b(o.value)),
        );
      else log.push(engine.addWaiter([o.key], { wake: () => log.push(["woken", i]) }));
    } catch (err) {
      log.push(["error", err instanceof StoreError, (err as Error).message]);
    }
  };
  return { log, run };
}

describe("KvEngine's key table", () => {
  it("behaves as one plain Map through splits into shards: results, events, waiters, listing", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 64 }),
        fc.array(engineOp, { maxLength: 400, size: "max" }),
        (splitAt, ops) => {
          const sharded = new KvEngine({ keyTable: { shards: 16, splitAt } });
          const plain = new KvEngine({ keyTable: { shards: 1 } });
          const a = observed(sharded);
          const b = observed(plain);
          ops.forEach((o, i) => {
            a.run(o, i);
            b.run(o, i);
          });
          assert.deepEqual(a.log, b.log);
          assert.equal(sharded.size, plain.size);
          assert.equal(sharded.waiterCount, plain.waiterCount);
          assert.deepEqual(sharded.keys().sort(), plain.keys().sort());
          for (const key of plain.keys()) assert.deepEqual(sharded.get(key), plain.get(key));
        },
      ),
      { numRuns: 200 },
    );
  });
});
