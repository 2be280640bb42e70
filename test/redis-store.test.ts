/**
 * RedisStore against a real redis-server: the shared Store behaviour suite (queues are not part of the
 * Redis store), prefixes, keyspace notifications being switched on, restarts with and without
 * persistence, and waits across a reconnect of the subscriber connection.
 */

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { setTimeout as delay } from "node:timers/promises";
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

describe("KeyspaceWaits across a reconnect of its subscriber", () => {
  it("sees a key created after the reconnect but before the subscriptions were sent again", async () => {
    const { Redis } = await import("ioredis");
    const { KeyspaceWaits } = await import("../src/store/redis/waits.js");
    const [host, port] = redis.endpoint.split(":");
    const options = { host: host!, port: Number(port), lazyConnect: false };
    const commands = new Redis(options);
    const subscriber = new Redis(options);
    try {
      await commands.config("SET", "notify-keyspace-events", "K$g");
      const key = `reconnect:${counter++}`;
      const waits = new KeyspaceWaits(subscriber, 0);
      let woke: () => void = () => {};
      const woken = new Promise<void>((resolve) => {
        woke = resolve;
      });
      const look = (): void => {
        void commands.exists(key).then((n) => {
          if (n === 1) woke();
        });
      };
      await waits.register([key], look, look);
      look();
      // ioredis says 'ready' before it subscribes again. The key is created in that window, and the
      // subscriptions of the reconnect are made slow (as on a loaded machine), so neither a look made at
      // 'ready' nor an event (nobody subscribed yet) sees it.
      subscriber.once("ready", () => {
        void commands.set(key, "v");
      });
      const subscribe = subscriber.subscribe.bind(subscriber) as (...channels: unknown[]) => Promise<unknown>;
      (subscriber as unknown as { subscribe: typeof subscribe }).subscribe = async (...channels) => {
        await new Promise((r) => setTimeout(r, 300));
        return subscribe(...channels);
      };
      subscriber.disconnect(true);
      const timer = new Promise<string>((resolve) => setTimeout(() => resolve("timeout"), 3000).unref());
      assert.equal(await Promise.race([woken.then(() => "woken"), timer]), "woken");
    } finally {
      commands.disconnect();
      subscriber.disconnect();
    }
  });
});

describe("RedisStore: keys another Redis client wrote", () => {
  /** A store under a fresh prefix and a plain ioredis client beside it. */
  async function withRaw<T>(
    run: (store: RedisStore, raw: import("ioredis").Redis, prefix: string) => Promise<T>,
  ): Promise<T> {
    const { Redis } = await import("ioredis");
    const prefix = `foreign:${counter++}:`;
    const store = await connectRedisStore({ endpoint: redis.endpoint, prefix, timeoutMs: 5000 });
    const raw = new Redis({ host: "127.0.0.1", port: redis.port });
    try {
      return await run(store, raw, prefix);
    } finally {
      raw.disconnect();
      await store.close();
    }
  }

  /** Rejects with RDZV_STORE naming `key` (not a timeout, not an unnamed WRONGTYPE). */
  async function namesKey(call: Promise<unknown>, key: string): Promise<void> {
    await assert.rejects(call, (err: { code?: string; message?: string }) => {
      assert.equal(err.code, ErrorCode.Store, String(err.message));
      assert.ok(err.message?.includes(JSON.stringify(key)), `the error does not name ${key}: ${err.message}`);
      return true;
    });
  }

  it("a key of another Redis type fails every call at once, naming the key; waits do not wait on it", async () => {
    await withRaw(async (store, raw, prefix) => {
      await raw.rpush(`${prefix}list`, "x");
      await store.set("here", "1");
      // MGET answered nil for a list: get and wait took it for missing and waited out their timeout.
      await namesKey(store.get("list", { timeoutMs: 4000 }), "list");
      await namesKey(store.wait(["here", "list"], { timeoutMs: 4000 }), "list");
      await namesKey(store.multiGet(["here", "list"], { timeoutMs: 4000 }), "list");
      await namesKey(store.add("list", 1), "list");
      await namesKey(store.compareSet("list", "", "v"), "list");
      await namesKey(store.append("list", "v"), "list");
      // The waits' subscriptions were dropped: the store still serves.
      assert.equal(Buffer.from(await store.get("here")).toString(), "1");
    });
  });

  it("a counter that is not an integer fails add, naming the key", async () => {
    await withRaw(async (store, raw, prefix) => {
      await raw.set(`${prefix}counter`, "abc");
      await namesKey(store.add("counter", 1), "counter");
    });
  });
});

describe("connectRedisStore: credentials, database and TLS", () => {
  let server: RedisTestServer;
  let tlsPort: number;
  let cert: import("./helpers/tls-cert.js").TestCertificate;

  before(async () => {
    const { makeTestCertificate } = await import("./helpers/tls-cert.js");
    const { pickFreePort } = await import("../src/rendezvous/free-port.js");
    cert = makeTestCertificate();
    tlsPort = await pickFreePort("127.0.0.1");
    server = await RedisTestServer.start({
      password: "default-pw",
      args: ["--requirepass", "default-pw", "--user", "alice", "on", ">alice-pw", "~*", "&*", "+@all"].concat(
        ["--tls-port", String(tlsPort), "--tls-auth-clients", "no"],
        ["--tls-cert-file", cert.certPath, "--tls-key-file", cert.keyPath],
      ),
    });
  });

  after(async () => {
    await server?.stop();
    cert?.remove();
  });

  it("a wrong or missing password fails with RDZV_AUTH at once, not RDZV_CONNECTION", async () => {
    // ioredis's connect said only "Connection is closed" (RDZV_CONNECTION); the refusal came as an event.
    for (const credentials of [
      { password: "wrong" },
      { username: "alice", password: "wrong" },
      { username: "nobody", password: "alice-pw" },
      {},
    ]) {
      await rejectsWithCode(
        connectRedisStore({ endpoint: server.endpoint, connectTimeoutMs: 5000, ...credentials }),
        ErrorCode.Auth,
      );
    }
  });

  it("an ACL user works in the database it names, waits included", async () => {
    const open = () =>
      connectRedisStore({
        endpoint: server.endpoint,
        username: "alice",
        password: "alice-pw",
        db: 3,
        prefix: "acl:",
        timeoutMs: 5000,
      });
    const [a, b] = [await open(), await open()];
    const { Redis } = await import("ioredis");
    const raw = new Redis({ host: "127.0.0.1", port: server.port, password: "default-pw", db: 3 });
    try {
      const waiting = a.get("k", { timeoutMs: 5000 });
      await b.set("k", "v");
      assert.equal(Buffer.from(await waiting).toString(), "v");
      assert.equal(await raw.exists("acl:k"), 1, "the key is not in database 3");
    } finally {
      raw.disconnect();
      await Promise.all([a.close(), b.close()]);
    }
  });

  it("TLS: trusts the CA it is given; without it the certificate does not verify (RDZV_AUTH)", async () => {
    const endpoint = `127.0.0.1:${tlsPort}`;
    const store = await connectRedisStore({
      endpoint,
      password: "default-pw",
      tls: { cacert: cert.certPath },
      timeoutMs: 5000,
    });
    try {
      const waiting = store.get("t", { timeoutMs: 5000 });
      await store.set("t", "1");
      assert.equal(Buffer.from(await waiting).toString(), "1");
    } finally {
      await store.close();
    }
    await assert.rejects(
      connectRedisStore({ endpoint, password: "default-pw", tls: {}, connectTimeoutMs: 5000 }),
      (err: { code?: string; message?: string }) => {
        assert.equal(err.code, ErrorCode.Auth, String(err.message));
        assert.match(String(err.message), /certificate/);
        return true;
      },
    );
  });
});

describe("connectRedisStore: TLS to a plain-text Redis", () => {
  it("says that TLS may be the cause when the server never answers the handshake", async () => {
    await assert.rejects(
      connectRedisStore({ endpoint: redis.endpoint, tls: {}, connectTimeoutMs: 500 }),
      (err: { code?: string; message?: string }) => {
        assert.equal(err.code, ErrorCode.Connection, String(err.message));
        assert.match(String(err.message), /did not answer within 500 ms \(TLS is on: .*plain text/);
        return true;
      },
    );
  });
});

describe("RedisStore while its server is away", () => {
  it("fails blocked waits with RDZV_CONNECTION once the server stays away past the grace, not at their timeout", async () => {
    const server = await RedisTestServer.start();
    const store = await connectRedisStore({
      endpoint: server.endpoint,
      timeoutMs: 30_000,
      reconnectGraceMs: 500,
    });
    try {
      const waiting = store.get("never", { timeoutMs: 30_000 });
      waiting.catch(() => undefined);
      // Blocked for real: subscribed to the key's events (a subscription cut short fails on its own).
      for (let i = 0; i < 500; i++) {
        const channels = (await store.client.pubsub("CHANNELS", "__keyspace@0__:never")) as unknown[];
        if (channels.length > 0) break;
        await delay(10);
      }
      await server.kill();
      // Before: the wait waited out its 30 s and failed with RDZV_TIMEOUT.
      await rejectsWithCode(waiting, ErrorCode.Connection);
      // A wait started while the server is still away fails as well, once its first read has.
      await rejectsWithCode(store.wait(["never"], { timeoutMs: 30_000 }), ErrorCode.Connection);
    } finally {
      await store.close();
      await server.stop();
    }
  });

  it("a call made while the connection is down is not failed as 'in flight' by a failed reconnect attempt", async () => {
    const server = await RedisTestServer.start({ persistent: true });
    const store = await connectRedisStore({ endpoint: server.endpoint, prefix: "gap:", timeoutMs: 10_000 });
    try {
      assert.equal(await store.add("n", 1), 1);
      await server.kill();
      // Wait until ioredis saw the drop, so the next call goes to its offline queue.
      for (let i = 0; i < 200 && store.client.status === "ready"; i++) await delay(10);
      const during = store.add("n", 1);
      during.catch(() => undefined);
      // Let the first reconnect attempts fail (each one emits 'close'), then bring the server back.
      await delay(250);
      await server.restart();
      // Before: the first failed attempt rejected it as "dropped with the command in flight". Now it is
      // sent once the server is back; on a machine so slow that ioredis's 5 attempts ran out first, it
      // fails saying so.
      const sum = await during.catch((err: { code?: string; message?: string }) => {
        assert.equal(err.code, ErrorCode.Connection);
        assert.doesNotMatch(String(err.message), /in flight/);
        return undefined;
      });
      if (sum !== undefined) assert.equal(sum, 2);
    } finally {
      await store.close();
      await server.stop();
    }
  });
});
