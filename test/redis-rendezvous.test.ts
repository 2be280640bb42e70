/**
 * The dynamic rendezvous behaviour suite over a real redis-server, through the store-backed backend on
 * `RedisStore` (one Redis client pair per node; a node "crashes" by dropping its connections).
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
import { createRedisRendezvousHandler, redisConnectOptions } from "../src/backends/redis.js";
import { StoreRendezvousBackend } from "../src/backends/store-backend.js";
import { ErrorCode } from "../src/errors.js";
import { resolveRendezvousSettings } from "../src/rendezvous/parameters.js";
import { connectRedisStore } from "../src/store/redis/connect.js";
import type { RedisStore } from "../src/store/redis/store.js";
import { RedisTestServer } from "./helpers/redis.js";
import {
  CrashableStore,
  defineRendezvousBehaviourSuite,
  type TestCluster,
} from "./helpers/rendezvous-suite.js";

let redis: RedisTestServer;
let runs = 0;

before(async () => {
  redis = await RedisTestServer.start();
});

after(async () => {
  await redis?.stop();
});

async function redisCluster(): Promise<TestCluster> {
  const prefix = `rdzv-test:${runs++}:`;
  const connect = () => connectRedisStore({ endpoint: redis.endpoint, prefix, timeoutMs: 30_000 });
  const observer = await connect();
  const clients: RedisStore[] = [observer];
  return {
    name: "Redis",
    observer,
    async connect() {
      const client = await connect();
      clients.push(client);
      return new CrashableStore(client, () => client.close());
    },
    async close() {
      await Promise.all(clients.map((c) => c.close()));
    },
  };
}

defineRendezvousBehaviourSuite(redisCluster, "Redis");

describe("redis backend: keys another Redis client wrote", () => {
  const node = { id: "n0", addr: "127.0.0.1", pid: 1 };

  /** A backend of run `run` on a fresh prefix, after `forge` wrote through a plain client. */
  async function forged(
    forge: (raw: import("ioredis").Redis, key: (path: string) => string) => Promise<unknown>,
    check: (backend: StoreRendezvousBackend) => Promise<void>,
  ): Promise<void> {
    const { Redis } = await import("ioredis");
    const prefix = `rdzv-forged:${runs++}:`;
    const raw = new Redis({ host: "127.0.0.1", port: redis.port });
    const store = await connectRedisStore({ endpoint: redis.endpoint, prefix, timeoutMs: 5000 });
    try {
      await forge(raw, (path) => `${prefix}rdzv/run/${path}`);
      await check(new StoreRendezvousBackend(store, "run", { name: "redis" }));
    } finally {
      raw.disconnect();
      await store.close();
    }
  }

  it("an open-round hint that is no number, or no string, is searched past: the node joins the open round", async () => {
    for (const forge of [
      (raw: import("ioredis").Redis, key: (p: string) => string) => raw.set(key("open"), "abc"),
      (raw: import("ioredis").Redis, key: (p: string) => string) => raw.rpush(key("open"), "1"),
    ]) {
      await forged(forge, async (backend) => {
        // Before: add's parse error (or WRONGTYPE) failed every node's join.
        assert.deepEqual(await backend.getState(), { openRound: 0 });
        assert.deepEqual(await backend.enter(node), { round: 0, slot: 0 });
      });
    }
  });

  it("a negative ticket counter fails the join at once, naming the key, instead of a slot nobody counts", async () => {
    await forged(
      (raw, key) => raw.set(key("r0/tickets"), "-5"),
      async (backend) => {
        // Before: slot -5, in a round that never completed (the join timed out).
        await assert.rejects(backend.enter(node), (err: { code?: string; message?: string }) => {
          assert.equal(err.code, ErrorCode.State);
          assert.match(String(err.message), /"rdzv\/run\/r0\/tickets"/);
          return true;
        });
      },
    );
  });

  it("an outcome that is a list, or not an outcome, fails at once naming its key", async () => {
    await forged(
      (raw, key) => raw.rpush(key("r0/outcome"), "x"),
      async (backend) => {
        // Before: MGET read the list as missing, and the read waited out the store's timeout.
        await assert.rejects(backend.getState(), (err: { code?: string; message?: string }) => {
          assert.equal(err.code, ErrorCode.Store);
          assert.match(String(err.message), /"rdzv\/run\/r0\/outcome"/);
          return true;
        });
      },
    );
    await forged(
      (raw, key) => raw.set(key("r0/outcome"), "garbage"),
      async (backend) => {
        await assert.rejects(backend.getState(), (err: { code?: string; message?: string }) => {
          assert.equal(err.code, ErrorCode.State);
          assert.match(String(err.message), /"rdzv\/run\/r0\/outcome"/);
          return true;
        });
      },
    );
  });
});

describe("redis backend: a Redis URL as the endpoint", () => {
  const settingsOf = (endpoint: string, config: Record<string, string> = {}) =>
    resolveRendezvousSettings({ backend: "redis", endpoint, runId: "u", minNodes: 1, maxNodes: 1, config });

  it("takes scheme, user, password (percent-decoded), host, port and db from it", () => {
    const o = redisConnectOptions(settingsOf("rediss://alice:p%40ss@redis.example:6380/4"));
    assert.equal(o.endpoint, "redis.example:6380");
    assert.deepEqual([o.username, o.password, o.db, o.tls], ["alice", "p@ss", 4, {}]);
    const plain = redisConnectOptions(settingsOf("redis://:secret@[::1]"));
    assert.deepEqual(
      [plain.endpoint, plain.username, plain.password, plain.db, plain.tls],
      ["[::1]", undefined, "secret", undefined, undefined],
    );
    // host:port keeps working as before.
    assert.equal(redisConnectOptions(settingsOf("10.0.0.1:7000")).endpoint, "10.0.0.1:7000");
  });

  it("refuses a bad db, a query, and config keys that contradict the URL, hiding the password", () => {
    for (const [endpoint, config] of [
      ["redis://h/x", {}],
      ["redis://u:hunter2@h/0?timeout=5", {}],
      ["redis://h/1", { db: "2" }],
      ["rediss://h", { protocol: "redis" }],
    ] as const) {
      assert.throws(
        () => redisConnectOptions(settingsOf(endpoint, config)),
        (err: { code?: string; message?: string }) => {
          assert.equal(err.code, ErrorCode.InvalidArgument);
          assert.doesNotMatch(String(err.message), /hunter2/);
          return true;
        },
      );
    }
  });

  it("a handler rendezvous through redis://host:port/db, with its keys in that db", async () => {
    const { Redis } = await import("ioredis");
    const runId = `url-${runs++}`;
    const handler = await createRedisRendezvousHandler({
      backend: "redis",
      endpoint: `redis://${redis.endpoint}/5`,
      runId,
      minNodes: 1,
      maxNodes: 1,
    });
    const raw = new Redis({ host: "127.0.0.1", port: redis.port, db: 5 });
    try {
      assert.equal((await handler.nextRendezvous()).worldSize, 1);
      assert.equal(await raw.exists(`rdzv/${runId}/r0/outcome`), 1, "the outcome is not in db 5");
    } finally {
      raw.disconnect();
      await handler.shutdown();
    }
  });
});

describe("redis backend: old rounds' keys", () => {
  it("keeps only the outcome of a round once the round two after it completed", async () => {
    const { Redis } = await import("ioredis");
    const runId = `clean-${runs++}`;
    const prefix = `rdzv-clean:${runs++}:`;
    const create = (i: number) =>
      createRedisRendezvousHandler({
        backend: "redis",
        endpoint: redis.endpoint,
        runId,
        minNodes: 2,
        maxNodes: 2,
        localAddr: `node-${i}`,
        config: { key_prefix: prefix, last_call_timeout: 0.1, keep_alive_interval: 1 },
      });
    const handlers = [await create(0), await create(1)];
    const raw = new Redis({ host: "127.0.0.1", port: redis.port });
    const roundKeys = async (round: number): Promise<string[]> =>
      (await raw.keys(`${prefix}rdzv/${runId}/r${round}/*`)).map((k) => k.slice(prefix.length)).sort();
    try {
      for (let r = 0; r < 6; r++) await Promise.all(handlers.map((h) => h.nextRendezvous()));
      // The winner of round 5's decision deletes round 3's keys in the background.
      for (let i = 0; i < 100 && (await roundKeys(3)).length > 1; i++) await delay(50);
      for (let round = 0; round <= 3; round++) {
        // Before: every key of every round stayed (12 per round of 2 nodes).
        assert.deepEqual(await roundKeys(round), [`rdzv/${runId}/r${round}/outcome`], `round ${round}`);
      }
      // The last two rounds keep theirs: the members of round 5 use them.
      assert.ok((await roundKeys(5)).includes(`rdzv/${runId}/r5/node/1`));
      assert.ok((await roundKeys(4)).length > 1);
    } finally {
      raw.disconnect();
      await Promise.all(handlers.map((h) => h.shutdown()));
    }
  });
});
