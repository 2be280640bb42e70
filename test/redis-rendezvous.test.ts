/**
 * The dynamic rendezvous behaviour suite over a real redis-server, through the store-backed backend on
 * `RedisStore` (one Redis client pair per node; a node "crashes" by dropping its connections).
 */

import { after, before } from "node:test";
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
