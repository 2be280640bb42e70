/**
 * The shared behaviour suite of every `Store`: PyTorch `test_store.py` semantics (spec §7.1) plus rdzv's
 * own guarantees (push-woken blocking calls, timeouts and aborts with stable codes, binary values, many
 * concurrent blocking calls on one handle). Run it against a store with `storeBehaviourSuite`.
 */

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { afterEach, beforeEach, describe, it } from "node:test";
import { ErrorCode } from "../../src/errors.js";
import { isQueueStore, type QueueStore, type Store } from "../../src/store/store.js";

/** What a suite run needs: a store, a way to open more clients of the same data, and a cleanup. */
export interface StoreFixture {
  /** The store under test. Its default `timeoutMs` should be a few seconds, so bugs fail fast. */
  store: Store;
  /** Another client of the same data (the cleanup closes it). */
  other: () => Promise<Store>;
  cleanup: () => Promise<void>;
}

/**
 * Optional commands a store may lack (a v1 TCPStore has none of them): the suite then checks that they
 * throw RDZV_INVALID_ARGUMENT.
 */
export interface StoreFeatures {
  append: boolean;
  listKeys: boolean;
  queues: boolean;
  /**
   * `add` on a value that is not an integer fails with RDZV_STORE naming the key. False for a TCPStore
   * without tagged replies (v1): its server can only close the connection (RDZV_CONNECTION).
   */
  addErrors: boolean;
}

const text = (bytes: Uint8Array): string => Buffer.from(bytes).toString("utf8");

/** Asserts that `promise` rejects with an rdzv error whose code is one of `codes`. */
export async function rejectsWithCode(promise: Promise<unknown>, ...codes: string[]): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    const code = (err as { code?: unknown }).code;
    assert.ok(
      codes.includes(code as string),
      `expected code ${codes.join(" or ")}, got ${String(code)}: ${String(err)}`,
    );
    return true;
  });
}

/** The message of the RDZV_TIMEOUT that `promise` rejects with. */
async function timeoutMessage(promise: Promise<unknown>): Promise<string> {
  let message = "";
  await assert.rejects(promise, (err: unknown) => {
    assert.equal((err as { code?: unknown }).code, ErrorCode.Timeout, String(err));
    message = (err as Error).message;
    return true;
  });
  return message;
}

/** True once `promise` settled (checked after letting I/O run for `ms`). */
async function settledWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let settled = false;
  promise.then(
    () => {
      settled = true;
    },
    () => {
      settled = true;
    },
  );
  await new Promise((resolve) => setTimeout(resolve, ms));
  return settled;
}

function queueStore(store: Store): QueueStore {
  assert.ok(isQueueStore(store), "the store has no queue operations");
  return store;
}

/**
 * Defines node:test cases for every `Store` method against the stores `factory` makes (a fresh fixture per
 * test). `features` marks optional commands the store lacks (default: all present).
 */
export function storeBehaviourSuite(
  name: string,
  factory: () => Promise<StoreFixture>,
  features: Partial<StoreFeatures> = {},
): void {
  const has: StoreFeatures = { append: true, listKeys: true, queues: true, addErrors: true, ...features };

  describe(`Store behaviour: ${name}`, () => {
    let fx: StoreFixture;
    let store: Store;
    beforeEach(async () => {
      fx = await factory();
      store = fx.store;
    });
    afterEach(async () => {
      await fx.cleanup();
    });

    describe("set / get", () => {
      it("round-trips strings and bytes, and set overwrites", async () => {
        await store.set("k1", "v1");
        assert.equal(text(await store.get("k1")), "v1");
        await store.set("k1", new Uint8Array([1, 2, 3]));
        assert.deepEqual([...(await store.get("k1"))], [1, 2, 3]);
      });

      it("a get blocks until another client sets the key", async () => {
        const other = await fx.other();
        const pending = store.get("late", { timeoutMs: 10_000 });
        assert.equal(await settledWithin(pending, 50), false);
        await other.set("late", "here");
        assert.equal(text(await pending), "here");
      });

      it("a get times out with RDZV_TIMEOUT", async () => {
        await rejectsWithCode(store.get("missing", { timeoutMs: 50 }), ErrorCode.Timeout);
      });

      it("the store's timeoutMs is the default timeout and can be changed", async () => {
        const before = store.timeoutMs;
        store.timeoutMs = 50;
        try {
          assert.equal(store.timeoutMs, 50);
          await rejectsWithCode(store.get("missing"), ErrorCode.Timeout);
        } finally {
          store.timeoutMs = before;
        }
        assert.throws(() => {
          store.timeoutMs = -1;
        });
      });

      it("a call's own timeout holds when it is longer than the store's", async () => {
        const other = await fx.other();
        const before = store.timeoutMs;
        store.timeoutMs = 0;
        try {
          const later = new Promise((resolve) => setTimeout(resolve, 100)).then(() => other.set("slow", "v"));
          assert.equal(text(await store.get("slow", { timeoutMs: 10_000 })), "v");
          await store.wait(["slow"], { timeoutMs: 10_000 });
          assert.deepEqual((await store.multiGet(["slow"], { timeoutMs: 10_000 })).map(text), ["v"]);
          await later;
        } finally {
          store.timeoutMs = before;
        }
      });

      it("a get aborted by its signal rejects with RDZV_ABORTED", async () => {
        const controller = new AbortController();
        const pending = store.get("missing", { timeoutMs: 10_000, signal: controller.signal });
        setTimeout(() => controller.abort(new Error("stop")), 20);
        await rejectsWithCode(pending, ErrorCode.Aborted);
        await rejectsWithCode(store.get("missing", { signal: AbortSignal.abort() }), ErrorCode.Aborted);
      });

      it("a timed-out get does not break the client (PyTorch test_tcp_store_timeout_doest_break_client)", async () => {
        await rejectsWithCode(store.get("x", { timeoutMs: 50 }), ErrorCode.Timeout);
        await rejectsWithCode(store.wait(["x", "y"], { timeoutMs: 20 }), ErrorCode.Timeout);
        await store.set("x", "x");
        assert.equal(text(await store.get("x")), "x");
        assert.equal(await store.add("after", 2), 2);
        assert.equal(await store.check(["x"]), true);
      });
    });

    describe("timeout messages", () => {
      // One form in every store: the call, the user's keys (any PrefixStore prefix included) and the
      // call's whole timeout. Keys are bounded: 8 shown, each cut at 100 characters.
      const key = (name: string): string => `(?:\\S+/)?${name}`;
      it("a timed-out get, wait and multiGet say the call, the keys and the timeout", async () => {
        assert.match(
          await timeoutMessage(store.get("missing", { timeoutMs: 50 })),
          new RegExp(`^get timeout after 50ms, keys: ${key("missing")}$`),
        );
        await store.set("here", "x");
        assert.match(
          await timeoutMessage(store.wait(["here", "gone"], { timeoutMs: 60 })),
          new RegExp(`^wait timeout after 60ms, keys: ${key("here")}, ${key("gone")}$`),
        );
        assert.match(
          await timeoutMessage(store.multiGet(["here", "gone"], { timeoutMs: 70 })),
          new RegExp(`^multiGet timeout after 70ms, keys: ${key("here")}, ${key("gone")}$`),
        );
      });

      it("a timed-out wait on many or long keys shows 8 keys, each at most 100 characters", async () => {
        const keys = ["k".repeat(3000), ...Array.from({ length: 9 }, (_, i) => `w${i}`)];
        const message = await timeoutMessage(store.wait(keys, { timeoutMs: 50 }));
        assert.match(
          message,
          new RegExp(`^wait timeout after 50ms, keys: ${key("k+")}\\.\\.\\. \\(\\d+ characters\\), `),
        );
        assert.match(message, new RegExp(`, ${key("w6")} \\(and 2 more\\)$`));
        assert.ok(message.length < 1000, message);
      });

      if (has.queues) {
        it("a timed-out blocking queuePop says queuePop, the queue and the timeout", async () => {
          assert.match(
            await timeoutMessage(queueStore(store).queuePop("nothing", { timeoutMs: 50 })),
            new RegExp(`^queuePop timeout after 50ms, keys: ${key("nothing")}$`),
          );
        });
      }
    });

    describe("add", () => {
      it("counts from a missing key, takes negative deltas and stores decimal ASCII", async () => {
        assert.equal(await store.add("cnt", 5), 5);
        assert.equal(await store.add("cnt", -7), -2);
        assert.equal(text(await store.get("cnt")), "-2");
        assert.equal(await store.add("neg", -5), -5);
        assert.equal(text(await store.get("neg")), "-5");
        assert.equal(await store.add("cnt", 0), -2);
      });

      it("parses the stored value as C++ stoll does: '5abc' + 1 = 6", async () => {
        await store.set("num", "5abc");
        assert.equal(await store.add("num", 1), 6);
        await store.set("spaced", "  41");
        assert.equal(await store.add("spaced", 1), 42);
      });

      it("PyTorch test_set_get_check: counters and sets add up", async () => {
        for (const d of [1, 2, 3]) await store.add("key", d);
        for (let d = 1; d <= 6; d++) await store.add("key3", d);
        await store.set("key4", "x");
        assert.equal(text(await store.get("key")), "6");
        assert.equal(text(await store.get("key3")), "21");
        assert.equal(await store.check(["key3"]), true);
        assert.equal(await store.check(["key0"]), false);
      });

      it("fails on a non-numeric value, and the store keeps working", async () => {
        await store.set("word", "abc");
        if (has.addErrors) {
          // One error in every store: RDZV_STORE, naming the key (any PrefixStore prefix included).
          await assert.rejects(store.add("word", 1), (err: Error & { code?: string }) => {
            assert.equal(err.code, ErrorCode.Store, String(err));
            assert.equal(err.name, "CounterValueError");
            assert.match(err.message, /^add "(?:\S+\/)?word": the stored value "abc" is not an integer$/);
            return true;
          });
        } else {
          await rejectsWithCode(store.add("word", 1), ErrorCode.Connection);
        }
        assert.equal(text(await store.get("word")), "abc");
        assert.equal(await store.add("fine", 1), 1);
      });

      it("sums as PyTorch: exact up to 2^53, wrapping at 64 bits, '-0' and '007' read as std::stoll", async () => {
        assert.equal(await store.add("big", 9_007_199_254_740_991), 9_007_199_254_740_991);
        assert.equal(await store.add("odd", 9_007_199_254_740_989), 9_007_199_254_740_989);
        assert.equal(await store.add("low", -9_007_199_254_740_991), -9_007_199_254_740_991);
        await store.set("max", "9223372036854775807");
        await store.add("max", 1);
        assert.equal(text(await store.get("max")), "-9223372036854775808");
        await store.set("zero", "-0");
        assert.equal(await store.add("zero", 1), 1);
        await store.set("padded", "007");
        assert.equal(await store.add("padded", 0), 7);
        assert.equal(text(await store.get("padded")), "7");
      });

      it("wakes a get blocked on the counter", async () => {
        const other = await fx.other();
        const pending = store.get("counter", { timeoutMs: 10_000 });
        await other.add("counter", 3);
        assert.equal(text(await pending), "3");
      });
    });

    describe("compareSet", () => {
      it("creates a missing key when expected is empty", async () => {
        assert.equal(text(await store.compareSet("cs", "", "first")), "first");
        assert.equal(text(await store.get("cs")), "first");
      });

      it("returns expected (and creates nothing) for a missing key and a non-empty expected", async () => {
        assert.equal(text(await store.compareSet("cs-missing", "wrong_old_value", "new")), "wrong_old_value");
        assert.equal(await store.check(["cs-missing"]), false);
      });

      it("swaps on a match and returns the new value", async () => {
        await store.set("cs", "old");
        assert.equal(text(await store.compareSet("cs", "old", "new")), "new");
        assert.equal(text(await store.get("cs")), "new");
      });

      it("returns the current value and changes nothing on a mismatch", async () => {
        await store.set("cs", "current");
        assert.equal(text(await store.compareSet("cs", "other", "new")), "current");
        assert.equal(text(await store.get("cs")), "current");
      });

      it("wakes a get blocked on the key it creates", async () => {
        const other = await fx.other();
        const pending = store.get("cs-wake", { timeoutMs: 10_000 });
        assert.equal(await settledWithin(pending, 20), false);
        await other.compareSet("cs-wake", "", "made");
        assert.equal(text(await pending), "made");
      });
    });

    describe("wait / check", () => {
      it("waits until every key exists", async () => {
        const other = await fx.other();
        const pending = store.wait(["w1", "w2"], { timeoutMs: 10_000 });
        await other.set("w1", "1");
        assert.equal(await settledWithin(pending, 30), false);
        await other.set("w2", "2");
        await pending;
      });

      it("returns at once for present keys and for no keys", async () => {
        await store.set("p", "1");
        await store.wait(["p"], { timeoutMs: 1000 });
        await store.wait([], { timeoutMs: 1000 });
      });

      it("PyTorch test_simple_wait: times out, then returns once the key exists", async () => {
        await rejectsWithCode(store.wait(["bad_key"], { timeoutMs: 50 }), ErrorCode.Timeout);
        await store.add("good_key", 1);
        await store.wait(["good_key"], { timeoutMs: 1000 });
      });

      it("check is true only when every key exists (and for no keys)", async () => {
        await store.set("c1", "1");
        assert.equal(await store.check(["c1"]), true);
        assert.equal(await store.check(["c1", "c2"]), false);
        assert.equal(await store.check([]), true);
      });
    });

    describe("deleteKey / numKeys", () => {
      it("deleteKey returns whether the key existed; a deleted key blocks again", async () => {
        await store.set("d", "1");
        assert.equal(await store.deleteKey("d"), true);
        assert.equal(await store.deleteKey("d"), false);
        assert.equal(await store.check(["d"]), false);
        await rejectsWithCode(store.get("d", { timeoutMs: 30 }), ErrorCode.Timeout);
      });

      it("numKeys counts sets and deletes (relative to a baseline)", async () => {
        const base = await store.numKeys();
        await store.set("n1", "1");
        await store.set("n2", "2");
        await store.add("n3", 1);
        await store.set("n1", "again");
        assert.equal(await store.numKeys(), base + 3);
        await store.deleteKey("n2");
        assert.equal(await store.numKeys(), base + 2);
        await store.deleteKey("n-missing");
        assert.equal(await store.numKeys(), base + 2);
      });
    });

    describe("multiGet / multiSet", () => {
      it("multiSet sets every pair and multiGet returns values in request order", async () => {
        await store.multiSet(["m1", "m2", "m3"], ["a", new Uint8Array([0xff]), ""]);
        const values = await store.multiGet(["m3", "m1", "m2", "m1"]);
        assert.deepEqual(
          values.map((v) => [...v]),
          [[], [0x61], [0xff], [0x61]],
        );
        assert.deepEqual(await store.multiGet([]), []);
      });

      it("multiGet waits until every key exists", async () => {
        const other = await fx.other();
        await store.set("mg1", "1");
        const pending = store.multiGet(["mg1", "mg2"], { timeoutMs: 10_000 });
        assert.equal(await settledWithin(pending, 20), false);
        await other.set("mg2", "2");
        assert.deepEqual((await pending).map(text), ["1", "2"]);
        await rejectsWithCode(store.multiGet(["mg1", "nope"], { timeoutMs: 30 }), ErrorCode.Timeout);
      });

      it("multiSet of a repeated key keeps its last value", async () => {
        await store.multiSet(["dup", "other", "dup"], ["1", "x", "2"]);
        assert.deepEqual((await store.multiGet(["dup", "other"])).map(text), ["2", "x"]);
      });

      it("multiSet rejects mismatched lengths", async () => {
        await rejectsWithCode(store.multiSet(["a", "b"], ["1"]), ErrorCode.InvalidArgument);
      });
    });

    describe("append", () => {
      if (!has.append) {
        it("is not supported (RDZV_INVALID_ARGUMENT)", async () => {
          await rejectsWithCode(store.append("k", "v"), ErrorCode.InvalidArgument);
        });
        return;
      }

      it("appends, and creates a missing key (PyTorch test_append)", async () => {
        await store.set("ap", "po");
        await store.append("ap", "tato");
        assert.equal(text(await store.get("ap")), "potato");
        await store.append("ap-new", "x");
        assert.equal(text(await store.get("ap-new")), "x");
      });

      it("wakes a get blocked on the key", async () => {
        const other = await fx.other();
        const pending = store.get("ap-wake", { timeoutMs: 10_000 });
        await other.append("ap-wake", "made");
        assert.equal(text(await pending), "made");
      });
    });

    describe("listKeys", () => {
      if (!has.listKeys) {
        it("is not supported (RDZV_INVALID_ARGUMENT)", async () => {
          await rejectsWithCode(store.listKeys(), ErrorCode.InvalidArgument);
        });
        return;
      }

      it("lists set keys (unicode included) and drops deleted ones", async () => {
        const before = new Set(await store.listKeys());
        await store.set("lk1", "1");
        await store.add("lk2", 1);
        await store.set("lk/ключ 🔑", "2");
        await store.set("lk3", "3");
        await store.deleteKey("lk3");
        const added = (await store.listKeys()).filter((k) => !before.has(k)).sort();
        assert.deepEqual(added, ["lk/ключ 🔑", "lk1", "lk2"].sort());
      });
    });

    describe("queues", () => {
      if (!has.queues) {
        it("are not supported (RDZV_INVALID_ARGUMENT)", async () => {
          if (!isQueueStore(store)) return;
          await rejectsWithCode(store.queuePush("q", "v"), ErrorCode.InvalidArgument);
          await rejectsWithCode(store.queuePop("q", { block: false }), ErrorCode.InvalidArgument);
          await rejectsWithCode(store.queueLen("q"), ErrorCode.InvalidArgument);
        });
        return;
      }

      it("PyTorch test_queues: FIFO, length, check", async () => {
        const q = queueStore(store);
        assert.equal(await q.check(["q"]), false);
        assert.equal(await q.queueLen("q"), 0);
        await q.queuePush("q", "1");
        await q.queuePush("q", new Uint8Array([0x32]));
        assert.equal(await q.check(["q"]), true);
        assert.equal(await q.queueLen("q"), 2);
        await q.wait(["q"], { timeoutMs: 1000 });
        assert.equal(text(await q.queuePop("q")), "1");
        assert.equal(text(await q.queuePop("q")), "2");
        assert.equal(await q.queueLen("q"), 0);
      });

      it("a non-blocking pop of an empty queue rejects with RDZV_QUEUE_EMPTY", async () => {
        const q = queueStore(store);
        await rejectsWithCode(q.queuePop("empty", { block: false }), ErrorCode.QueueEmpty);
        await q.queuePush("empty", "v");
        assert.equal(text(await q.queuePop("empty", { block: false })), "v");
      });

      it("a blocking pop is woken by a push from another client, and times out otherwise", async () => {
        const q = queueStore(store);
        const other = queueStore(await fx.other());
        const pending = q.queuePop("bq", { timeoutMs: 10_000 });
        assert.equal(await settledWithin(pending, 20), false);
        await other.queuePush("bq", "pushed");
        assert.equal(text(await pending), "pushed");
        await rejectsWithCode(q.queuePop("bq", { timeoutMs: 30 }), ErrorCode.Timeout);
      });

      it("a blocking pop waits for a value while a plain key of the queue's name exists", async () => {
        const q = queueStore(store);
        const other = queueStore(await fx.other());
        await q.set("shadow", "plain");
        const pending = q.queuePop("shadow", { timeoutMs: 10_000 });
        assert.equal(await settledWithin(pending, 50), false);
        await other.queuePush("shadow", "item");
        assert.equal(text(await pending), "item");
        await rejectsWithCode(q.queuePop("shadow", { timeoutMs: 50 }), ErrorCode.Timeout);
      });

      it("queues are a namespace of their own (not keys)", async () => {
        const q = queueStore(store);
        const base = await q.numKeys();
        await q.queuePush("ns", "v");
        assert.equal(await q.numKeys(), base);
        await q.set("ns", "plain");
        assert.equal(text(await q.queuePop("ns")), "v");
        assert.equal(text(await q.get("ns")), "plain");
      });
    });

    describe("values and keys", () => {
      it("stores every byte value, the empty value and 1 MiB", async () => {
        const all = new Uint8Array(256).map((_, i) => i);
        const big = new Uint8Array(randomBytes(1024 * 1024));
        await store.set("all", all);
        await store.set("empty", new Uint8Array(0));
        await store.set("big", big);
        assert.deepEqual(await store.get("all"), all);
        assert.equal((await store.get("empty")).length, 0);
        assert.equal(Buffer.compare(await store.get("big"), big), 0);
        assert.equal(text(await store.compareSet("empty", "", "filled")), "filled");
      });

      it("handles unicode keys and values", async () => {
        const other = await fx.other();
        await store.set("ключ/🔑", "значение ✓");
        assert.equal(text(await other.get("ключ/🔑")), "значение ✓");
        assert.equal(await other.check(["ключ/🔑"]), true);
        assert.equal(await other.add("счётчик", 2), 2);
      });

      it("refuses keys with a lone UTF-16 surrogate (UTF-8 would make them another key)", async () => {
        for (const key of ["a\ud800c", "z\udfff"]) {
          await rejectsWithCode(store.set(key, "v"), ErrorCode.InvalidArgument);
          await rejectsWithCode(store.get(key, { timeoutMs: 50 }), ErrorCode.InvalidArgument);
          await rejectsWithCode(store.check(["ok", key]), ErrorCode.InvalidArgument);
          await rejectsWithCode(store.add(key, 1), ErrorCode.InvalidArgument);
        }
        await store.set("a\ufffdc", "replacement");
        await store.set("pair\ud83d\udd11", "a whole pair is fine");
        assert.equal(text(await store.get("pair🔑")), "a whole pair is fine");
      });
    });

    describe("concurrency", () => {
      it("serves many concurrent blocking calls on one handle, and normal calls meanwhile", async (t) => {
        // Each pending call may listen on a signal of the store's own; 50 of them are no leak to warn of.
        const warnings: string[] = [];
        const onWarning = (w: Error): void => {
          if (w.name === "MaxListenersExceededWarning") warnings.push(w.message);
        };
        process.on("warning", onWarning);
        t.after(() => process.off("warning", onWarning));
        const other = await fx.other();
        const n = 50;
        const gets = Array.from({ length: n }, (_, i) => store.get(`many/${i}`, { timeoutMs: 10_000 }));
        const waits = Array.from({ length: 5 }, () =>
          store.wait(["many/0", "many/49"], { timeoutMs: 10_000 }),
        );
        assert.equal(await store.add("meanwhile", 1), 1);
        await store.set("meanwhile2", "ok");
        assert.equal(text(await store.get("meanwhile2")), "ok");
        for (let i = n - 1; i >= 0; i--) await other.set(`many/${i}`, String(i));
        assert.deepEqual(
          (await Promise.all(gets)).map(text),
          Array.from({ length: n }, (_, i) => String(i)),
        );
        await Promise.all(waits);
        await new Promise((resolve) => setImmediate(resolve)); // warnings are emitted on a later tick
        assert.deepEqual(warnings, []);
      });

      it("keeps replies in order under many concurrent calls", async () => {
        const results = await Promise.all(Array.from({ length: 500 }, () => store.add("order", 1)));
        assert.deepEqual(
          [...results].sort((a, b) => a - b),
          Array.from({ length: 500 }, (_, i) => i + 1),
        );
        const sets = Array.from({ length: 100 }, (_, i) => store.set(`o/${i}`, String(i)));
        const gets = Array.from({ length: 100 }, (_, i) => store.get(`o/${i}`));
        await Promise.all(sets);
        assert.deepEqual(
          (await Promise.all(gets)).map(text),
          Array.from({ length: 100 }, (_, i) => String(i)),
        );
      });

      it("close() is idempotent", async () => {
        const other = await fx.other();
        await other.close();
        await other.close();
        await other[Symbol.asyncDispose]();
      });
    });
  });
}
