/**
 * RedisStore against a real redis-server: the shared Store behaviour suite (queues are not part of the
 * Redis store), prefixes, keyspace notifications being switched on, and a restart without persistence.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { ErrorCode } from "../src/errors.js";
import { connectRedisStore } from "../src/store/redis/connect.js";
import type { RedisStore } from "../src/store/redis/store.js";
import { RedisTestServer } from "./helpers/redis.js";
import { rejectsWithCode, type StoreFixture, storeBehaviourSuite } from "./helpers/store-suite.js";

let redis: RedisTestServer;
let counter = 0;

before(async () => {
  redis = await RedisTestServer.start();
});

after(async () => {
  await redis?.stop();
});

async function fixture(): Promise<StoreFixture> {
  const prefix = `test:${counter++}:`;
  const open = () => connectRedisStore({ endpoint: redis.endpoint, prefix, timeoutMs: 5000 });
  const stores: RedisStore[] = [await open()];
  return {
    store: stores[0]!,
    other: async () => {
      const s = await open();
      stores.push(s);
      return s;
    },
    cleanup: async () => {
      await Promise.all(stores.map((s) => s.close()));
    },
  };
}

storeBehaviourSuite("RedisStore", fixture, { queues: false });

describe("RedisStore specifics", () => {
  it("keeps prefixes apart (glob characters included) and counts under its prefix only", async () => {
    const a = await connectRedisStore({ endpoint: redis.endpoint, prefix: "iso[*]:", timeoutMs: 5000 });
    const b = await connectRedisStore({ endpoint: redis.endpoint, prefix: "iso[a]:", timeoutMs: 5000 });
    try {
      await a.set("k", "1");
      await b.set("x", "2");
      assert.deepEqual(await a.listKeys(), ["k"]);
      assert.equal(await a.numKeys(), 1);
      assert.equal(await b.check(["k"]), false);
    } finally {
      await Promise.all([a.close(), b.close()]);
    }
  });

  it("fails to connect to a port nobody serves with RDZV_CONNECTION", async () => {
    const { pickFreePort } = await import("../src/rendezvous/free-port.js");
    const port = await pickFreePort("127.0.0.1");
    await rejectsWithCode(
      connectRedisStore({ endpoint: `127.0.0.1:${port}`, connectTimeoutMs: 500 }),
      ErrorCode.Connection,
    );
  });

  it("stops with RDZV_CONNECTION after a restart that lost its data, waiters included", async () => {
    const server = await RedisTestServer.start({ persistent: false });
    const store = await connectRedisStore({ endpoint: server.endpoint, prefix: "p:", timeoutMs: 10_000 });
    try {
      assert.equal(await store.add("tickets", 5), 5);
      const waiting = store.get("never", { timeoutMs: 20_000 });
      waiting.catch(() => undefined);
      await server.restart();
      await rejectsWithCode(waiting, ErrorCode.Connection);
      await rejectsWithCode(store.add("tickets", 1), ErrorCode.Connection);
    } finally {
      await store.close();
      await server.stop();
    }
  });

  it("recovers across a restart of a persistent server: waits still wake, counters go on", async () => {
    const server = await RedisTestServer.start({ persistent: true });
    const store = await connectRedisStore({ endpoint: server.endpoint, prefix: "p:", timeoutMs: 10_000 });
    const other = await connectRedisStore({ endpoint: server.endpoint, prefix: "p:", timeoutMs: 10_000 });
    try {
      assert.equal(await store.add("tickets", 5), 5);
      const waiting = store.get("later", { timeoutMs: 20_000 });
      await server.restart();
      let sum: number | undefined;
      // A call racing the reconnect may fail with a clear connection error; it must never count wrong.
      for (let i = 0; i < 50 && sum === undefined; i++) {
        sum = await other.add("tickets", 0).catch(async (err: { code?: string }) => {
          assert.equal(err.code, ErrorCode.Connection);
          await new Promise((r) => setTimeout(r, 100));
          return undefined;
        });
      }
      assert.equal(sum, 5);
      await other.set("later", "woken");
      assert.equal(Buffer.from(await waiting).toString(), "woken");
    } finally {
      await Promise.all([store.close(), other.close()]);
      await server.stop();
    }
  });
});
