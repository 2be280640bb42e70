/** The engine's byte limit (`KvEngine.limitBytes`): what it counts, what it refuses, what it lets through. */

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import fc from "fast-check";
import { ErrorCode } from "../errors.js";
import { KvEngine, StoreFullError } from "./kv-engine.js";

const b = (s: string): Uint8Array => Buffer.from(s, "latin1");

/** The bytes the limit counts, recounted from the engine's contents. */
function recount(engine: KvEngine): number {
  let bytes = 0;
  for (const key of engine.keys()) bytes += key.length + engine.get(key)!.length;
  for (const [key, items] of engine.queueEntries()) {
    bytes += key.length;
    for (const item of items) bytes += item.length;
  }
  return bytes;
}

/** The engine's contents, to compare before and after a refused write. */
function contents(engine: KvEngine): string {
  const keys = engine.keys().sort();
  const queues = [...engine.queueEntries()].map(([k, items]) => [
    k,
    items.map((i) => Buffer.from(i).toString("latin1")),
  ]);
  return JSON.stringify([keys.map((k) => [k, Buffer.from(engine.get(k)!).toString("latin1")]), queues]);
}

describe("KvEngine byte limit", () => {
  it("refuses writes that grow the data past the limit, naming it; lets shrinking writes and deletes through", () => {
    const engine = new KvEngine();
    engine.set("a", b("12345")); // 6 bytes before the limit: counted when it is set
    engine.limitBytes(20);
    assert.equal(engine.bytes, 6);
    engine.set("bb", b("1234567890")); // 18
    assert.equal(engine.bytes, 18);
    assert.throws(
      () => engine.set("c", b("xx")),
      (e: StoreFullError) =>
        e.code === ErrorCode.LimitExceeded &&
        e.message === 'store full: writing "c" would take the data to 21 bytes, past its limit of 20',
    );
    assert.equal(engine.has("c"), false);
    assert.throws(() => engine.append("a", b("123")), StoreFullError);
    assert.throws(() => engine.queuePush("q", b("xx")), StoreFullError);
    assert.throws(() => engine.multiSet(["x", "y"], [b(""), b("1")]), StoreFullError);
    assert.equal(engine.bytes, 18);
    // Up to the limit exactly, and writes that do not grow: fine.
    engine.set("a", b("1234567")); // 20
    engine.set("a", b("7654321"));
    engine.set("bb", b("1")); // 11
    assert.equal(engine.add("n", 5n), 5n); // 13
    assert.equal(engine.bytes, 13);
    engine.delete("bb"); // 10
    engine.queuePush("q", b("1234")); // 15
    assert.deepEqual(engine.queuePop("q"), b("1234")); // 10
    assert.equal(engine.bytes, 10);
    assert.equal(engine.bytes, recount(engine));
  });

  it("lets data past a lowered limit be read, shrunk and deleted", () => {
    const engine = new KvEngine();
    engine.set("big", b("x".repeat(100)));
    engine.limitBytes(10);
    assert.equal(engine.bytes, 103);
    assert.throws(() => engine.append("big", b("y")), StoreFullError);
    engine.set("big", b("x".repeat(50))); // shrinks: allowed though still past the limit
    assert.equal(engine.bytes, 53);
    assert.equal(engine.delete("big"), true);
    assert.equal(engine.bytes, 0);
    engine.set("k", b("1234567"));
  });

  it("lifts the limit for `unlimited` writes, still counting them; limitBytes(undefined) lifts it", () => {
    const engine = new KvEngine();
    engine.limitBytes(4);
    engine.unlimited(() => engine.set("marker", b("1")));
    assert.equal(engine.bytes, 7);
    assert.throws(() => engine.set("k", b("1")), StoreFullError);
    engine.limitBytes(undefined);
    assert.equal(engine.bytes, undefined);
    engine.set("k", b("1"));
    assert.throws(() => engine.limitBytes(0), RangeError);
  });

  it("a refused write reaches no mutation hook (a journal records nothing)", () => {
    const engine = new KvEngine();
    const seen: string[] = [];
    engine.setMutationHook((m) => seen.push(m.op));
    engine.limitBytes(3);
    assert.throws(() => engine.set("key", b("v")), StoreFullError);
    assert.throws(() => engine.compareSet("key", b(""), b("v")), StoreFullError);
    assert.deepEqual(seen, []);
  });

  it("keeps its count equal to the contents under random operations, and refuses exactly the writes past it", () => {
    const key = fc.constantFrom("a", "bb", "ccc", "q");
    const value = fc.uint8Array({ maxLength: 12 });
    const op = fc.oneof(
      fc.record({ t: fc.constant("set" as const), key, value }),
      fc.record({ t: fc.constant("append" as const), key, value }),
      fc.record({ t: fc.constant("add" as const), key, delta: fc.integer({ min: -1000, max: 1000 }) }),
      fc.record({ t: fc.constant("delete" as const), key }),
      fc.record({ t: fc.constant("cas" as const), key, expected: value, value }),
      fc.record({ t: fc.constant("multi" as const), keys: fc.array(key, { maxLength: 3 }), value }),
      fc.record({ t: fc.constant("push" as const), key, value }),
      fc.record({ t: fc.constant("pop" as const), key }),
    );
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 60 }), fc.array(op, { maxLength: 60 }), (limit, ops) => {
        const engine = new KvEngine();
        engine.limitBytes(limit);
        for (const o of ops) {
          const before = contents(engine);
          const bytesBefore = engine.bytes!;
          try {
            switch (o.t) {
              case "set":
                engine.set(o.key, o.value);
                break;
              case "append":
                engine.append(o.key, o.value);
                break;
              case "add":
                engine.add(o.key, BigInt(o.delta));
                break;
              case "delete":
                engine.delete(o.key);
                break;
              case "cas":
                engine.compareSet(o.key, o.expected, o.value);
                break;
              case "multi":
                engine.multiSet(
                  o.keys,
                  o.keys.map(() => o.value),
                );
                break;
              case "push":
                engine.queuePush(o.key, o.value);
                break;
              case "pop":
                engine.queuePop(o.key);
                break;
            }
          } catch (err) {
            // add on a non-integer value: refused for that, changing nothing.
            if (!(err instanceof StoreFullError)) {
              assert.equal(contents(engine), before);
              continue;
            }
            assert.equal(contents(engine), before, "a refused write changed nothing");
            assert.equal(engine.bytes, bytesBefore);
            assert.ok(err.bytes > limit && err.bytes > bytesBefore, `${err.bytes} vs ${limit}`);
            continue;
          }
          assert.equal(engine.bytes, recount(engine), JSON.stringify(o));
          assert.ok(engine.bytes! <= Math.max(limit, bytesBefore), "growth only up to the limit");
        }
      }),
      { numRuns: 500 },
    );
  });
});
